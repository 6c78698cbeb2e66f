"""The fed_train phase: the original federation, trained with FedAvg.

    python -m experiments.federated.fed_train --workdir runs/fed [--config ...]

Builds the data (the pool with the owner's private photos inserted), the
partition (IID or Dirichlet(alpha), the owner also holding its photos:
`federated.private_data_partition`), and runs `federated.num_rounds` FedAvg
rounds (`federated.make_fedavg`, through simulated secure aggregation when
`federated.secure`). Writes `<workdir>/fed_train/checkpoints` (the global
model, the round count, the test accuracy after every round; the data
splits and the partition arrays; the partition's fingerprint in the meta),
`metrics.jsonl` and `summary.json`. Checkpoints every
`federated.checkpoint_every` rounds; a killed run resumes where it stopped.

With `federated.store_updates` the server also keeps, for FedEraser, every
client's update of every `federated.store_every`-th round and the initial
model (their size is in the summary). The fed_retrain phase runs the same
loop on the federation without the eliminated data.
"""

import time
from typing import Any

import jax
import ml_collections
import numpy as np

from experiments import cli, common
from experiments.federated import federation as fedlib
from forsaken_jax import federated, parallel

PHASE = "fed_train"


def stored_rounds(config: ml_collections.ConfigDict) -> np.ndarray:
  """The rounds whose client updates the server keeps (for FedEraser)."""
  fc = config.federated
  if not fc.store_updates:
    return np.zeros((0,), np.int64)
  return np.arange(0, fc.num_rounds, fc.store_every)


def _storage(params: Any, num_stored: int, num_slots: int) -> dict[str, Any]:
  return {"initial_params": jax.device_get(params),
          "stored_updates": jax.tree.map(
              lambda p: np.zeros((num_stored, num_slots) + np.shape(p), np.float32), params),
          "stored_weights": np.zeros((num_stored, num_slots), np.float32),
          "stored_clients": np.full((num_stored, num_slots), federated.PADDING_CLIENT, np.int32)}


def _store_hook(fed: fedlib.Federation, rounds: np.ndarray) -> fedlib.RoundHook:
  """Before a stored round: the clients' updates as the server would receive them in the clear."""
  position = {int(r): j for j, r in enumerate(rounds)}

  def hook(r, state, data, key):
    if r not in position:
      return state
    j = position[r]
    # The round's local training uses fold_in(key, 0): these are its updates.
    updates, weights, _ = parallel.block(
        fed.fedavg.local_updates(state["params"], data, jax.random.fold_in(key, 0)))

    def put(stored, new):
      stored = np.array(stored)
      stored[j] = np.asarray(new)
      return stored

    return {**state,
            "stored_updates": jax.tree.map(put, state["stored_updates"], updates),
            "stored_weights": put(state["stored_weights"], weights),
            "stored_clients": put(state["stored_clients"], data.client_id)}

  return hook


def run_federation(config: ml_collections.ConfigDict, workdir: str, *, phase: str,
                   fed: fedlib.Federation, partition: federated.Partition,
                   signature: dict[str, Any], store: bool,
                   stop_after: int | None = None) -> dict[str, Any]:
  """Trains a federation from scratch on `partition`, resuming if possible.

  Args:
    config: the experiment config.
    workdir: the run directory; writes only `<workdir>/<phase>/`.
    phase: "fed_train" or "fed_retrain".
    fed: the federation (model, round, the original partition).
    partition: who holds what in this training.
    signature: the config's part that determines the result.
    store: keep the stored rounds' client updates (FedEraser's storage).
    stop_after: stop after this many rounds of this process (simulates a kill).

  Returns:
    The phase's summary (also written to `summary.json`).
  """
  num_rounds = config.federated.num_rounds
  params = fed.model.init_fn(fedlib.phase_key(config, "init"))
  rounds = stored_rounds(config) if store else np.zeros((0,), np.int64)
  extra = _storage(params, len(rounds), fed.num_slots) if len(rounds) else {}
  meta = fedlib.phase_meta(fed, phase, signature=signature, num_rounds=int(num_rounds),
                           stored_rounds=rounds.tolist())
  manager, state, elapsed_before = fedlib.open_phase(
      workdir, phase, init_state=fedlib.round_state(params, num_rounds, **extra), meta=meta)
  if int(state["round"]) >= num_rounds:
    common.log(f"[{phase}] already complete in {manager.directory}")
    summary = fedlib.read_summary(workdir, phase)
    if summary is not None:
      return summary
  splits = {**fed.data.splits.to_arrays(), **fedlib.partition_arrays(partition)}
  with common.compile_time_meter() as compile_times:
    state, seconds = fedlib.run_rounds(
        fed, phase=phase, manager=manager, meta=meta, state=state, num_rounds=num_rounds,
        first_round=0, partition=partition,
        before_round=_store_hook(fed, rounds) if len(rounds) else None, splits=splits,
        elapsed_before=elapsed_before, stop_after=stop_after)
  summary = {
      "phase": phase, "rounds": int(num_rounds), "seconds": seconds,
      "test_accuracy": float(state["test_accuracy"][-1]),
      "test_accuracy_per_round": np.asarray(state["test_accuracy"]).tolist(),
      "num_clients": int(partition.num_clients),
      "client_sizes": partition.sizes.tolist(),
      "label_skew": federated.label_skew(partition, fed.labels),
      "partition_fingerprint": partition.fingerprint(),
      "compile_seconds": compile_times,
  }
  if len(rounds):
    summary["stored_rounds"] = rounds.tolist()
    summary["stored_bytes"] = federated.tree_bytes(
        (state["stored_updates"], state["stored_weights"], state["initial_params"]))
  return fedlib.write_summary(workdir, phase, summary)


def fed_train(config: ml_collections.ConfigDict, workdir: str,
              stop_after: int | None = None) -> dict[str, Any]:
  """Runs the fed_train phase (see the module docstring)."""
  start = time.perf_counter()
  data = fedlib.build_data(config)
  partition = fedlib.build_partition(config, data)
  fed = fedlib.make_federation(config, data, partition)
  summary = run_federation(
      config, workdir, phase=PHASE, fed=fed, partition=partition,
      signature=common.signature(config, fedlib.SIGNATURE_SECTIONS), store=True,
      stop_after=stop_after)
  common.log(f"[{PHASE}] {partition.num_clients} clients ({config.federated.partition}, label "
             f"skew {summary['label_skew']:.3f}), {summary['rounds']} rounds: test accuracy "
             f"{summary['test_accuracy']:.4f}, {summary['seconds']:.1f} s "
             f"(phase {time.perf_counter() - start:.1f} s)")
  return summary


if __name__ == "__main__":
  cli.run(fed_train, default_config=fedlib.DEFAULT_CONFIG)
