"""The federated job: fed_train -> eliminate -> fed_retrain -> baselines -> fed_shadow -> evaluate.

    python -m experiments.federated.main --workdir runs/fed
    python -m experiments.federated.main --config experiments/configs/federated/dirichlet.py \
        --workdir runs/fed_dirichlet

Each phase writes only its own directory under the workdir, reads upstream
phases read-only, and resumes from its last checkpoint: rerunning the command
after an interruption continues where it stopped and skips finished phases.
Ends by printing the audit's table (also in `<workdir>/evaluate/report.md`).
"""

from typing import Any

import ml_collections

from experiments import cli, common, relearn
from experiments.federated import baselines, eliminate, evaluate, fed_retrain, fed_train, shadow
from experiments.federated import federation as fedlib

PHASES = (("fed_train", fed_train.fed_train), ("eliminate", eliminate.eliminate),
          ("fed_retrain", fed_retrain.fed_retrain), ("baselines", baselines.run_baselines),
          ("fed_shadow", shadow.fed_shadow), ("evaluate", evaluate.evaluate))


def run_pipeline(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs every phase in order and returns the evaluate phase's metrics."""
  # Choices that later phases read fail here, not after the first phases ran.
  fedlib.check_config(config)
  baselines.check_config(config)
  shadow.check_config(config)
  relearn.check_config(config)
  return common.run_phases(PHASES, config, workdir, name="federated pipeline")


if __name__ == "__main__":
  cli.run(run_pipeline, default_config=fedlib.DEFAULT_CONFIG, default_workdir="runs/fed")
