"""The retrain phase: the exact-unlearning reference.

    python -m experiments.retrain --config experiments/configs/default.py --workdir runs/default

Trains a fresh model, with the same config, seed and number of steps as the
train phase, on the retained members only (members minus the forget set, as
stored in the train checkpoint). It is the ceiling every unlearning figure is
compared with, and its wall time is the baseline Forsaken's time is measured
against. Writes `<workdir>/retrain/`; resumable like the train phase.
"""

from typing import Any

import ml_collections

from experiments import cli, common
from experiments import train as train_phase


def retrain(config: ml_collections.ConfigDict, workdir: str,
            stop_after: int | None = None) -> dict[str, Any]:
  """Runs the retrain phase (see the module docstring)."""
  data, _ = common.load_upstream_data(config, workdir)
  summary = train_phase.run_training(config, workdir, phase="retrain", data=data,
                                     indices=data.splits.retain, stop_after=stop_after)
  common.log(f"[retrain] without the {len(data.splits.forget)} forget samples: test accuracy "
             f"{summary['test_accuracy']:.4f} after {summary['steps']} steps, "
             f"{summary['train_seconds']:.1f} s")
  return summary


if __name__ == "__main__":
  cli.run(retrain)
