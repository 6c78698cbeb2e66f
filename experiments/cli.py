"""Command-line entry shared by the phase runners.

Flags are defined here, at call time, so that phase modules can import each
other (the main pipeline imports every phase) without defining them twice.
"""

from typing import Any, Callable

from absl import app
from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags

from experiments import common


def run(phase_fn: Callable[[ml_collections.ConfigDict, str], Any]) -> None:
  """Parses `--config path[:arg] --config.x=... --workdir dir` and calls `phase_fn`."""
  config_flag = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                                lock_config=True)
  workdir_flag = flags.DEFINE_string("workdir", None, "Run directory.")
  flags.mark_flags_as_required(["config", "workdir"])

  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    # Orbax logs every save at INFO; the progress bar and summaries say enough.
    logging.set_verbosity(logging.WARNING)
    common.maybe_initialize_distributed()
    phase_fn(config_flag.value, workdir_flag.value)

  app.run(main)
