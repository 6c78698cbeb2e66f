"""The fed_retrain phase: the federation retrained from scratch without the eliminated data.

    python -m experiments.federated.fed_retrain --workdir runs/fed [--config ...]

The gold standard of the elimination: the same federation, initialization,
rounds and round keys as fed_train, on the partition without what the
request eliminates (`federation.remaining_partition`: without the owner's
private photos for request "private", without the owner for request "all").
Its wall time is the one the elimination is compared with. Writes
`<workdir>/fed_retrain/`; resumable like fed_train.
"""

from typing import Any

import ml_collections

from experiments import cli, common
from experiments.federated import fed_train as fed_train_phase
from experiments.federated import federation as fedlib

PHASE = "fed_retrain"


def fed_retrain(config: ml_collections.ConfigDict, workdir: str,
                stop_after: int | None = None) -> dict[str, Any]:
  """Runs the fed_retrain phase (see the module docstring)."""
  fed = fedlib.load_federation(config, workdir)
  remaining = fedlib.remaining_partition(fed)
  signature = {**common.signature(config, fedlib.SIGNATURE_SECTIONS),
               "request": config.eliminate.request}
  summary = fed_train_phase.run_federation(
      config, workdir, phase=PHASE, fed=fed, partition=remaining, signature=signature,
      store=False, stop_after=stop_after)
  common.log(f"[{PHASE}] without the request's data ({config.eliminate.request!r}): test "
             f"accuracy {summary['test_accuracy']:.4f} after {summary['rounds']} rounds, "
             f"{summary['seconds']:.1f} s")
  return summary


if __name__ == "__main__":
  cli.run(fed_retrain, default_config=fedlib.DEFAULT_CONFIG)
