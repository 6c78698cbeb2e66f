"""Shared wiring of the federated phases: the federation, its rounds, their checkpoints.

Every phase rebuilds the same `Federation` from the config: the experiment
data (`experiments.common.load_experiment_data`, scenario "ood": the inserted
photos are the owner's private photos), the partition, and the FedAvg round
(`forsaken_jax.federated.make_fedavg`). Phases after `fed_train` read the
partition from its checkpoint and check it against the one the config builds
(`load_federation`).

A phase that runs rounds keeps a host pytree

  {"params": ..., "round": int32, "test_accuracy": [R], "client_loss": [R], "round_seconds": [R]}

and `run_rounds` advances it round by round, checkpointing every
`federated.checkpoint_every` rounds under `<workdir>/<phase>/checkpoints`
(`experiments.common.restore_or_init` resumes it, or refuses another run's
checkpoint).
"""

import functools
import json
import os
import time
import zlib
from typing import Any, Callable, NamedTuple

import jax
import ml_collections
import numpy as np
import optax

from experiments import common
from forsaken_jax import checkpoints, federated, losses, models, parallel, train
from forsaken_jax import data as fj_data

# Config sections that fix the federation and its original training.
SIGNATURE_SECTIONS = ("dataset", "scenario", "model", "federated")
COMPATIBILITY_KEYS = ("phase", "model", "dataset_fingerprint", "partition_fingerprint",
                      "signature")
# What an upstream phase's checkpoint must share with the reader.
UPSTREAM_KEYS = ("phase", "model", "dataset_fingerprint", "partition_fingerprint")
OPTIMIZERS = {"adam": optax.adam, "sgd": optax.sgd}
TRAIN_PHASE = "fed_train"
DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "configs", "federated", "iid.py")
# Independent PRNG streams of `config.seed`.
_STREAM_INIT, _STREAM_ROUNDS, _STREAM_ELIMINATE, _STREAM_BASELINES = 100, 101, 102, 103
_STREAM_SAMPLING = 104


class Federation(NamedTuple):
  """One federation, as every phase sees it (see `make_federation`)."""

  config: ml_collections.ConfigDict
  data: fj_data.ExperimentData
  spec: dict[str, Any]  # common.model_spec
  model: models.ModelFns
  partition: federated.Partition
  owner: int
  private: np.ndarray  # the owner's private photos (pool indices): D_u of request "private"
  holdout: np.ndarray  # photos the owner holds but never uploaded: its reference D_n
  lookalikes: np.ndarray  # unseen photos the audit compares the private ones with
  fedavg: federated.FedAvg
  num_slots: int
  mesh: jax.sharding.Mesh | None
  predict: Callable[..., np.ndarray]  # train.make_predict_fn on one device

  @property
  def images(self) -> np.ndarray:
    return self.data.pool.images

  @property
  def labels(self) -> np.ndarray:
    return self.data.pool.labels


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError for a choice the federated phases cannot run."""
  fc, ec = config.federated, config.eliminate
  if config.scenario.kind != "ood":
    raise ValueError(f"the federated pipeline needs scenario.kind 'ood' (the owner's private "
                     f"photos), got {config.scenario.kind!r}")
  if config.scenario.num_shadow < 1 or config.scenario.num_ood < config.scenario.num_forget_ood + 2:
    raise ValueError("the owner's held-out photos come from the shadow split: set "
                     "scenario.num_shadow >= 1 and num_ood >= num_forget_ood + 2")
  if fc.partition not in federated.SCHEMES:
    raise ValueError(f"federated.partition must be one of {federated.SCHEMES}, got "
                     f"{fc.partition!r}")
  if fc.optimizer not in OPTIMIZERS:
    raise ValueError(f"federated.optimizer must be one of {tuple(OPTIMIZERS)}, got "
                     f"{fc.optimizer!r}")
  try:  # 0 in the config = every pair (None in the library)
    federated.secure_agg.check_num_neighbors(fc.get("secure_neighbors", 0) or None)
  except ValueError as e:
    raise ValueError(f"federated.secure_neighbors (0 = every pair): {e}") from None
  if fc.num_rounds < 1 or fc.checkpoint_every < 1 or fc.store_every < 1:
    raise ValueError("federated.num_rounds, checkpoint_every and store_every must be positive")
  if ec.request not in federated.REQUESTS:
    raise ValueError(f"eliminate.request must be one of {federated.REQUESTS}, got "
                     f"{ec.request!r}")
  if ec.scaling not in federated.SCALINGS:
    raise ValueError(f"eliminate.scaling must be one of {federated.SCALINGS}, got "
                     f"{ec.scaling!r}")
  if ec.extra_rounds < 0:
    raise ValueError(f"eliminate.extra_rounds must be non-negative, got {ec.extra_rounds}")
  # The removal step; 1 and 0 (off) where a config predates it.
  shrink, perturb = ec.get("removal_shrink", 1.0), ec.get("removal_perturb", 0.0)
  if not 0.0 < shrink <= 1.0 or not perturb >= 0.0:
    raise ValueError(f"eliminate.removal_shrink must be in (0, 1] and removal_perturb "
                     f"non-negative (1 and 0: off), got {shrink!r} and {perturb!r}")


def build_data(config: ml_collections.ConfigDict) -> fj_data.ExperimentData:
  """The experiment data (the pool with the photos inserted, the splits).

  Loaded once per process and config: the phases of one job share it.
  """
  check_config(config)
  return _load_data(json.dumps({"seed": config.seed, "dataset": config.dataset.to_dict(),
                                "scenario": config.scenario.to_dict()}, sort_keys=True))


@functools.lru_cache(maxsize=2)
def _load_data(sections_json: str) -> fj_data.ExperimentData:
  return common.load_experiment_data(ml_collections.ConfigDict(json.loads(sections_json)))


def build_partition(config: ml_collections.ConfigDict,
                    data: fj_data.ExperimentData) -> federated.Partition:
  """The federation's partition of the members; the owner also holds the photos."""
  fc = config.federated
  members, private = data.splits.members, data.splits.forget
  partition = federated.private_data_partition(
      data.pool.labels, fc.num_clients, private=private, owner=fc.owner, seed=config.seed,
      scheme=fc.partition, alpha=fc.alpha if fc.partition == "dirichlet" else None,
      indices=members)
  federated.validate_partition(partition, indices=members, size=len(data.pool), private=private,
                               owner=fc.owner)
  return partition


@functools.lru_cache(maxsize=8)
def _fedavg(spec_json: str, optimizer: str, learning_rate: float, local_epochs: int,
            batch_size: int, secure: bool, fractional_bits: int, secure_neighbors: int,
            shard: bool) -> tuple[federated.FedAvg, jax.sharding.Mesh | None]:
  # One FedAvg per setting and process: phases run by one process share its
  # compiled rounds.
  spec = json.loads(spec_json)
  model = common.create_model(spec)
  mesh = federated.client_mesh() if shard else None
  fedavg = federated.make_fedavg(
      model.apply_fn, OPTIMIZERS[optimizer](learning_rate), local_epochs=local_epochs,
      batch_size=batch_size, loss_fn=losses.get_loss(models.default_loss(spec["name"])),
      secure=secure, fractional_bits=fractional_bits,
      secure_neighbors=secure_neighbors or None, mesh=mesh)
  return fedavg, mesh


def make_fedavg(config: ml_collections.ConfigDict, spec: dict[str, Any], *,
                local_epochs: int | None = None) -> tuple[federated.FedAvg, Any]:
  """The federation's round (`local_epochs` overrides the config's, e.g. FedEraser's)."""
  fc = config.federated
  return _fedavg(json.dumps(spec, sort_keys=True), fc.optimizer, float(fc.learning_rate),
                 int(local_epochs or fc.local_epochs), int(fc.batch_size), bool(fc.secure),
                 int(fc.fractional_bits), int(fc.get("secure_neighbors", 0)),
                 bool(fc.shard_clients))


def make_federation(config: ml_collections.ConfigDict, data: fj_data.ExperimentData,
                    partition: federated.Partition) -> Federation:
  """Assembles the `Federation` of a config on its data and partition."""
  spec = common.model_spec(config, data)
  fedavg, mesh = make_fedavg(config, spec)
  num_clients = partition.num_clients
  num_slots = num_clients if mesh is None else -(-num_clients // mesh.size) * mesh.size
  splits = data.splits
  return Federation(
      config=config, data=data, spec=spec, model=common.create_model(spec), partition=partition,
      owner=int(config.federated.owner), private=np.asarray(splits.forget),
      holdout=splits.shadow[data.is_ood[splits.shadow]],
      lookalikes=splits.nonmembers[common.matched_nonmembers(data, splits.nonmembers,
                                                             config.scenario)],
      fedavg=fedavg, num_slots=num_slots, mesh=mesh, predict=_predict(json.dumps(spec, sort_keys=True)))


@functools.lru_cache(maxsize=4)
def _predict(spec_json: str) -> Callable[..., np.ndarray]:
  model = common.create_model(json.loads(spec_json))
  return train.make_predict_fn(model.apply_fn, parallel.make_mesh(1))


def partition_arrays(partition: federated.Partition) -> dict[str, np.ndarray]:
  """The partition as the `splits` item of a checkpoint stores it."""
  return {f"partition_{k}": v for k, v in partition.to_arrays().items()}


def partition_from_arrays(splits: dict[str, np.ndarray]) -> federated.Partition:
  """Inverse of `partition_arrays` (other split arrays are ignored)."""
  return federated.Partition.from_arrays(
      {k: splits[f"partition_{k}"] for k in ("indices", "offsets")})


def load_federation(config: ml_collections.ConfigDict, workdir: str) -> Federation:
  """The federation of a run, checked against its fed_train checkpoint (read-only).

  Raises:
    checkpoints.CheckpointError: no fed_train checkpoint, or the config builds
      other data or another partition than the one it stores.
  """
  data = build_data(config)
  manager = checkpoints.open_manager(common.checkpoint_dir(workdir, TRAIN_PHASE), read_only=True)
  meta = checkpoints.read_meta(manager)
  partition = build_partition(config, data)
  for key, have, want in (("dataset_fingerprint", data.fingerprint(), meta.get("dataset_fingerprint")),
                          ("partition_fingerprint", partition.fingerprint(),
                           meta.get("partition_fingerprint"))):
    if have != want:
      raise checkpoints.CheckpointError(
          f"this config builds {key} {have}, the fed_train phase in {manager.directory} used "
          f"{want}: pass the config the federation was trained with")
  stored = partition_from_arrays(_read_splits(manager))
  if stored.fingerprint() != partition.fingerprint():
    raise checkpoints.CheckpointError(
        f"the partition stored in {manager.directory} differs from its meta's fingerprint")
  return make_federation(config, data, stored)


def _read_splits(manager) -> dict[str, np.ndarray]:
  return checkpoints.restore(manager)[1]


def load_partition(workdir: str) -> federated.Partition:
  """The partition stored with a run's fed_train checkpoint."""
  manager = checkpoints.open_manager(common.checkpoint_dir(workdir, TRAIN_PHASE), read_only=True)
  return partition_from_arrays(_read_splits(manager))


# ----------------------------------------------------------------------------- who takes part


def request_data(fed: Federation) -> federated.RequestData:
  """The owner's D_u, D_r and D_n for the configured request (`federated.request_indices`)."""
  request = fed.config.eliminate.request
  return federated.request_indices(
      fed.partition.client(fed.owner), holdout=fed.holdout, request=request,
      private=fed.private if request == "private" else None, seed=fed.config.seed)


def remaining_partition(fed: Federation) -> federated.Partition:
  """The federation without what the request eliminates.

  Request "private": the owner keeps its other data and keeps taking part;
  request "all": the owner holds nothing and takes part in no round.
  """
  forget = request_data(fed).forget
  return federated.Partition(tuple(
      np.setdiff1d(arr, forget) if k == fed.owner else arr
      for k, arr in enumerate(fed.partition.clients)))


def _base_key(config: ml_collections.ConfigDict, stream: int) -> jax.Array:
  return jax.random.fold_in(jax.random.key(config.seed), stream)


def round_key(config: ml_collections.ConfigDict, round_index: int) -> jax.Array:
  """The key of the federation's round `round_index` (0 = its first training round).

  Rounds after the original training continue the count, so the elimination
  round and a baseline's first round without the user draw the same local
  training randomness.
  """
  return jax.random.fold_in(_base_key(config, _STREAM_ROUNDS), round_index)


def phase_key(config: ml_collections.ConfigDict, name: str) -> jax.Array:
  """A key of its own for one phase's or one baseline's randomness."""
  stream = {"init": _STREAM_INIT, "eliminate": _STREAM_ELIMINATE}.get(name, _STREAM_BASELINES)
  key = _base_key(config, stream)
  if stream == _STREAM_BASELINES:
    key = jax.random.fold_in(key, zlib.crc32(name.encode()) & 0x7FFFFFFF)
  return key


def round_clients(fed: Federation, round_index: int, partition: federated.Partition, *,
                  include_owner: bool = False) -> np.ndarray:
  """The clients of a round: every client, or `federated.clients_per_round` sampled.

  Clients that hold no data in `partition` sit the round out; with
  `include_owner` the owner takes part whether sampled or not (the round of
  its request).
  """
  num_clients = partition.num_clients
  per_round = fed.config.federated.clients_per_round or num_clients
  if per_round >= num_clients:
    ids = np.arange(num_clients)
  else:
    key = jax.random.fold_in(_base_key(fed.config, _STREAM_SAMPLING), round_index)
    ids = federated.sample_clients(key, num_clients, per_round)
  if include_owner:
    ids = np.union1d(ids, [fed.owner])
  return ids[partition.sizes[ids] > 0]


_DATA_CACHE: dict[tuple, federated.ClientData] = {}


def client_data(fed: Federation, partition: federated.Partition,
                ids: np.ndarray) -> federated.ClientData:
  """The round's stacked data, padded to the federation's one shape (one compiled round)."""
  cache_key = (fed.data.fingerprint(), partition.fingerprint(), tuple(int(i) for i in ids),
               fed.num_slots)
  if cache_key not in _DATA_CACHE:
    if len(_DATA_CACHE) >= 4:
      _DATA_CACHE.pop(next(iter(_DATA_CACHE)))
    _DATA_CACHE[cache_key] = federated.gather_client_data(
        fed.images, fed.labels, partition, ids, size=int(fed.partition.sizes.max()),
        num_slots=fed.num_slots)
  return _DATA_CACHE[cache_key]


def accuracy(fed: Federation, params: Any, indices: np.ndarray | None = None) -> float:
  """Accuracy on pool examples `indices`, or on the test examples when None."""
  if indices is None:
    test = fed.data.test_examples
    images, labels = test.images, test.labels
  else:
    images, labels = fed.images[indices], fed.labels[indices]
  return float(np.mean(np.argmax(fed.predict(params, images), -1) == labels))


# ----------------------------------------------------------------------------- phase checkpoints


def phase_meta(fed: Federation, phase: str, *, signature: dict[str, Any],
               **fields: Any) -> dict[str, Any]:
  """The meta a phase writes (and compares with its own earlier checkpoint)."""
  return checkpoints.base_meta(
      phase, model=fed.spec, dataset_fingerprint=fed.data.fingerprint(),
      partition_fingerprint=fed.partition.fingerprint(), signature=signature,
      config=fed.config.to_dict(), complete=False, **fields)


def round_state(params: Any, num_rounds: int, **extra: Any) -> dict[str, Any]:
  """A fresh round-phase state (host arrays, float32 / int32 only).

  The per-round records have at least one entry (Orbax saves no empty
  array); a phase of no rounds leaves it NaN.
  """
  size = max(num_rounds, 1)
  return {"params": jax.device_get(params), "round": np.int32(0),
          "test_accuracy": np.full((size,), np.nan, np.float32),
          "client_loss": np.full((size,), np.nan, np.float32),
          "round_seconds": np.full((size,), np.nan, np.float32), **extra}


def open_phase(workdir: str, phase: str, *, init_state: dict[str, Any],
               meta: dict[str, Any]) -> tuple[Any, dict[str, Any], float]:
  """Opens a phase's own checkpoints: `(manager, state, elapsed_before)`.

  Resumes the phase's latest checkpoint when it was written for the same
  federation and config (`COMPATIBILITY_KEYS`), starts from `init_state`
  when there is none, and refuses (`checkpoints.CheckpointError`, nothing
  written) a checkpoint of another phase or another run.
  """
  manager = checkpoints.open_manager(common.checkpoint_dir(workdir, phase))
  state, elapsed = common.restore_or_init(
      phase=phase, manager=manager, init=lambda: init_state,
      sharding=parallel.replicated(parallel.make_mesh(1)), expected_meta=meta,
      check_keys=COMPATIBILITY_KEYS)
  return manager, jax.device_get(state), elapsed


def save(manager: Any, state: dict[str, Any], meta: dict[str, Any], *, complete: bool,
         elapsed: float, splits: dict[str, np.ndarray] | None = None) -> None:
  """Saves a round-phase state at its round count."""
  checkpoints.save(manager, int(state["round"]), state=state, splits=splits,
                   meta={**meta, "complete": complete, "elapsed_seconds": elapsed})


def load_phase_state(fed: Federation, workdir: str, phase: str
                     ) -> tuple[dict[str, Any], dict[str, Any]]:
  """Reads a finished upstream phase's state and meta (read-only).

  Raises:
    checkpoints.CheckpointError: missing, unfinished, or written for another
      federation.
  """
  manager = checkpoints.open_manager(common.checkpoint_dir(workdir, phase), read_only=True)
  expected = phase_meta(fed, phase, signature={})
  state, _, meta = checkpoints.restore(manager, expected_meta=expected, check_keys=UPSTREAM_KEYS)
  if not meta.get("complete"):
    raise checkpoints.CheckpointError(
        f"the {phase} phase in {manager.directory} did not finish: run it again to complete it")
  return jax.device_get(state), meta


def is_complete(workdir: str, phase: str) -> bool:
  """Whether a phase's latest checkpoint is marked complete (False if none)."""
  directory = common.checkpoint_dir(workdir, phase)
  if not os.path.isdir(directory) or not any(n.isdigit() for n in os.listdir(directory)):
    return False
  return bool(checkpoints.read_meta(checkpoints.open_manager(directory, read_only=True))
              .get("complete"))


# ----------------------------------------------------------------------------- rounds


RoundHook = Callable[[int, dict[str, Any], federated.ClientData, jax.Array], dict[str, Any]]


def run_rounds(fed: Federation, *, phase: str, manager: Any, meta: dict[str, Any],
               state: dict[str, Any], num_rounds: int, first_round: int,
               partition: federated.Partition | Callable[[int], federated.Partition],
               include_owner: Callable[[int], bool] = lambda r: False,
               override: Callable[[int, dict[str, Any], federated.ClientData], Any] | None = None,
               before_round: RoundHook | None = None,
               after_round: Callable[[int, dict[str, Any]], dict[str, Any]] | None = None,
               save_after: Callable[[int], bool] = lambda r: False,
               splits: dict[str, np.ndarray] | None = None,
               elapsed_before: float = 0.0, stop_after: int | None = None,
               fedavg: federated.FedAvg | None = None) -> tuple[dict[str, Any], float]:
  """Runs a phase's rounds from `state["round"]` to `num_rounds`, checkpointing as it goes.

  Args:
    fed: the federation.
    phase: the phase's name (messages, progress bar).
    manager: the phase's writable checkpoint manager.
    meta: the phase's meta; "complete" and "elapsed_seconds" are set at each save.
    state: from `round_state` / `open_phase`.
    num_rounds: the phase's rounds.
    first_round: the federation's round number of the phase's round 0 (keys,
      client sampling).
    partition: who holds what in these rounds, or `r -> partition`.
    include_owner: `r -> bool`, the owner takes part in round r whether
      sampled or not.
    override: `(r, state, data) -> ClientOverride or None`, a submission
      replacing a client's local training in round r.
    before_round: `(r, state, data, key) -> state`, run before each round
      (e.g. the server storing the clients' updates).
    after_round: `(r, state) -> state`, run after each round, before its
      checkpoint.
    save_after: `r -> bool`, also checkpoint after round r.
    splits: index arrays saved with every checkpoint.
    elapsed_before: seconds of earlier, interrupted runs.
    stop_after: raise `common.TrainingInterrupted` after this many rounds of
      this process without a further checkpoint (simulates a kill).
    fedavg: the rounds' FedAvg (default the federation's).

  Returns:
    `(state, seconds)`: the final state and the phase's wall time up to its
    last checkpoint, earlier runs included.
  """
  fc = fed.config.federated
  fedavg = fedavg or fed.fedavg
  start = int(state["round"])
  if start >= num_rounds:
    return state, elapsed_before
  bar = common.progress(num_rounds, desc=phase, initial=start, enabled=fc.get("progress", True))
  bar.unit = "round"
  writer = common.MetricWriter(os.path.dirname(str(manager.directory)))
  t0 = time.perf_counter()
  elapsed = elapsed_before
  for r in range(start, num_rounds):
    held = partition(r) if callable(partition) else partition
    ids = round_clients(fed, first_round + r, held, include_owner=include_owner(r))
    data = client_data(fed, held, ids)
    round_start = time.perf_counter()
    key = round_key(fed.config, first_round + r)
    if before_round is not None:
      state = before_round(r, state, data, key)
    submitted = override(r, state, data) if override is not None else None
    params, metrics = parallel.block(fedavg.round(state["params"], data, key, override=submitted))
    if not all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(params)):
      manager.wait_until_finished()
      bar.close()
      raise FloatingPointError(
          f"[{phase}] the global model became non-finite in round {r + 1}; lower "
          f"federated.learning_rate (now {fc.learning_rate}). The last good checkpoint "
          f"(round {manager.latest_step()}) in {manager.directory} is untouched.")
    slots = np.asarray(data.client_id) != federated.PADDING_CLIENT
    records = {name: np.array(state[name]) for name in ("test_accuracy", "client_loss",
                                                        "round_seconds")}
    records["round_seconds"][r] = time.perf_counter() - round_start
    records["test_accuracy"][r] = test_accuracy = accuracy(fed, params)
    records["client_loss"][r] = client_loss = float(np.mean(np.asarray(metrics["loss"])[slots]))
    state = {**state, "params": params, "round": np.int32(r + 1), **records}
    if after_round is not None:
      state = after_round(r, state)
    bar.update(1)
    bar.set_postfix(acc=f"{test_accuracy:.3f}", loss=f"{client_loss:.3f}")
    writer.write(r + 1, test_accuracy=test_accuracy, client_loss=client_loss,
                 clients=int(slots.sum()))
    now = elapsed_before + time.perf_counter() - t0
    if end_round(manager, state, meta, phase=phase, r=r, start=start, num_rounds=num_rounds,
                 checkpoint_every=fc.checkpoint_every, elapsed=now, splits=splits,
                 stop_after=stop_after, bar=bar, save_now=save_after(r)):
      elapsed = now
  bar.close()
  manager.wait_until_finished()
  return state, elapsed


def end_round(manager: Any, state: dict[str, Any], meta: dict[str, Any], *, phase: str, r: int,
              start: int, num_rounds: int, checkpoint_every: int, elapsed: float,
              splits: dict[str, np.ndarray] | None, stop_after: int | None, bar: Any,
              save_now: bool = False) -> bool:
  """After round `r` of a round phase: its checkpoint when due, and the simulated kill.

  Checkpoints every `checkpoint_every` rounds, after the last round, and
  when `save_now`.

  Args:
    manager: the phase's writable checkpoint manager.
    state: the state after round `r`.
    meta: the phase's meta.
    phase: the phase's name (messages).
    r: the round just run (0-based); `start`, the first round of this process.
    num_rounds: the phase's rounds.
    checkpoint_every: rounds between checkpoints (`federated.checkpoint_every`).
    elapsed: the phase's wall time so far, earlier runs included.
    splits: index arrays saved with the checkpoint.
    stop_after: raise `common.TrainingInterrupted` once this process ran this
      many rounds short of the last (simulates a kill); None = never.
    bar: the progress bar, closed before a simulated kill.
    save_now: checkpoint after this round whatever the schedule.

  Returns:
    Whether it checkpointed.
  """
  saved = (r + 1) % checkpoint_every == 0 or r + 1 == num_rounds or save_now
  if saved:
    save(manager, state, meta, complete=r + 1 == num_rounds, elapsed=elapsed, splits=splits)
  if stop_after is not None and r + 1 - start >= stop_after and r + 1 < num_rounds:
    manager.wait_until_finished()
    bar.close()
    raise common.TrainingInterrupted(f"[{phase}] stopped after round {r + 1}")
  return saved


def write_summary(workdir: str, phase: str, summary: dict[str, Any]) -> dict[str, Any]:
  """Writes `<workdir>/<phase>/summary.json` (process 0) and returns the summary."""
  if common.is_main_process():
    common.write_json(os.path.join(workdir, phase, "summary.json"), summary)
  return summary


def read_summary(workdir: str, phase: str) -> dict[str, Any] | None:
  """A phase's `summary.json`, or None."""
  path = os.path.join(workdir, phase, "summary.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)
