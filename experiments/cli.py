"""Command-line entry shared by the phase runners and the main job.

Flags are defined here, at call time, so that phase modules can import each
other (the main pipeline imports every phase) without defining them twice.
"""

import os
from typing import Any, Callable

from absl import app
from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags

from experiments import common


DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "configs", "default.py")


def run(phase_fn: Callable[[ml_collections.ConfigDict, str], Any], *,
        default_config: str = DEFAULT_CONFIG, default_workdir: str | None = None) -> None:
  """Parses `--config path[:arg] --config.x=... --workdir dir` and calls `phase_fn`.

  Args:
    phase_fn: `(config, workdir) -> anything`.
    default_config: config file used when `--config` is not given.
    default_workdir: run directory used when `--workdir` is not given; None
      makes `--workdir` required.
  """
  config_flag = config_flags.DEFINE_config_file("config", default_config,
                                                "Experiment config file.", lock_config=True)
  workdir_flag = flags.DEFINE_string("workdir", default_workdir, "Run directory.")
  if default_workdir is None:
    flags.mark_flags_as_required(["workdir"])

  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    # Orbax logs every save at INFO and every read-only open at WARNING; the
    # progress bars and summaries say what matters, errors still show.
    logging.set_verbosity(logging.ERROR)
    common.enable_compilation_cache()
    common.maybe_initialize_distributed()
    phase_fn(config_flag.value, workdir_flag.value)

  app.run(main)
