"""The main job: train -> shadow models -> unlearn -> retrain -> evaluate.

    python -m experiments.main                     # experiments/configs/default.py, runs/default
    python -m experiments.main --config experiments/configs/random10.py --workdir runs/random10

Each phase writes only its own directory under the workdir, reads upstream
phases read-only, and resumes from its last checkpoint: rerunning the command
after an interruption continues where it stopped, and skips finished phases.
Ends by printing the audit's summary table (also in
`<workdir>/evaluate/report.md`).
"""


from typing import Any

import ml_collections

from experiments import cli, common, relearn
from experiments import evaluate as evaluate_phase
from experiments import retrain as retrain_phase
from experiments import shadow as shadow_phase
from experiments import train as train_phase
from experiments import unlearn as unlearn_phase

def phases() -> tuple[tuple[str, Any], ...]:
  """The phases in order, `(name, function)`, looked up when called (tests patch them)."""
  return (("train", train_phase.train_and_evaluate), ("shadow", shadow_phase.train_shadows),
          ("unlearn", unlearn_phase.unlearn), ("retrain", retrain_phase.retrain),
          ("evaluate", evaluate_phase.evaluate))


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError for a choice a later phase reads, before any phase runs."""
  unlearn_phase.check_config(config)
  relearn.check_config(config)


def run_pipeline(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs every phase in order and returns the evaluate phase's metrics."""
  check_config(config)
  return common.run_phases(phases(), config, workdir)


if __name__ == "__main__":
  cli.run(run_pipeline, default_workdir="runs/default")
