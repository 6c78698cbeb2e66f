r"""One FedAvg round of C clients: vmapped in one program vs the same clients one after another.

    python -m experiments.bench_federated --workdir runs/bench_federated \
        [--config experiments/bench_federated.py[:quick]] [--config.section.key=value ...]

The config is this module's `get_config`: the federated default's model and
local training (experiments/configs/federated/iid.py: MLP hidden 256, SGD
0.1, batch 32, 10 local epochs) on synthetic data of its users' size (its
members over its clients), for C = 20 and 100 clients; about 2 minutes on a
2-core CPU (docs/FEDERATED.md gives the measured figures). `:quick` (or
`:runlocal`) shrinks it to a smoke run of a few seconds (8x8 images, a tiny
MLP, C = 8).

For each C of `config.bench.clients`, C clients with synthetic data (random
uniform images and labels, `data.examples_per_client` each: timing does not
depend on the values) run one round from the same global model and key:

* vmapped: the library's compiled round, `federated.make_fedavg(...).round`
  over the stacked `ClientData` (one XLA program for all C clients);
* sequential: the same round's local training (`FedAvg.local_train`, jitted
  once) called for one client after another in a Python loop, each with the
  key the round gives it, then the same aggregation (`federated.weighted_mean`,
  or `secure_agg.secure_weighted_mean` with `federated.secure`) and
  `federated.apply_update`, jitted;
* with `bench.shard_clients` and more than one device: the vmapped round
  with the client axis split over a `federated.client_mesh` of d devices, d
  the largest divisor of C not above the device count.

The first call of each side compiles; its seconds are reported apart (and
JAX's own tracing + lowering + XLA compilation time in it). Then each side
is called `bench.repeats` more times, the sides alternating, and the median
of these warm calls is reported. Every call blocks on its outputs, and the
sequential side on each client's (as the experiments' loops do). Before any
warm call, the sides' new global models are compared: their largest
absolute difference is reported, and above `bench.tolerance` the benchmark
stops. JAX's persistent compilation cache is off while it runs, so the
first calls compile.

Writes `<workdir>/bench_federated/results.md` (the table, also printed) and
`results.json` (every call's seconds, the backend, the config). Runs
unchanged on any backend (the client data are placed on the default device,
or split over the mesh).
"""

import contextlib
import os
import platform
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from experiments import cli, common
from experiments.configs.federated import iid
from forsaken_jax import federated, losses, models, parallel
from forsaken_jax.federated import secure_agg

DEFAULT_CONFIG = os.path.abspath(__file__)  # get_config below
OPTIMIZERS = {"adam": optax.adam, "sgd": optax.sgd}
VMAPPED, SEQUENTIAL, SHARDED = "vmapped", "sequential", "vmapped_sharded"
TABLE_HEADER = ("| clients C | local steps per client | vmapped: compile s / warm s "
                "| sequential: compile s / warm s | sequential / vmapped (warm) "
                "| vmapped, clients sharded: devices, compile s / warm s "
                "| sequential / sharded (warm) | max abs diff of the new global model |")


# ----------------------------------------------------------------------------- config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The benchmark's config; `arg` "quick" (or "runlocal") shrinks it to a smoke run."""
  fed_default = iid.get_config()
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.model = fed_default.model.copy_and_resolve_references()

  # Synthetic client data: uniform [0, 1) images, uniform labels, every
  # example real (no padding). Timing does not depend on the values.
  config.data = ml_collections.ConfigDict()
  config.data.image_shape = (28, 28, 1)
  config.data.num_classes = 10
  config.data.examples_per_client = (fed_default.scenario.num_members
                                     // fed_default.federated.num_clients)

  # The clients' local training, as in the federated pipeline.
  fc = fed_default.federated
  config.federated = ml_collections.ConfigDict()
  config.federated.local_epochs = fc.local_epochs
  config.federated.batch_size = fc.batch_size
  config.federated.optimizer = fc.optimizer
  config.federated.learning_rate = fc.learning_rate
  # Both sides aggregate in the clear (False) or both through simulated
  # secure aggregation (True).
  config.federated.secure = False
  config.federated.fractional_bits = fc.fractional_bits
  config.federated.secure_neighbors = fc.secure_neighbors  # 0 = every pair

  config.bench = ml_collections.ConfigDict()
  config.bench.clients = (20, 100)
  config.bench.repeats = 3  # warm calls per side; the median is reported
  # With more than one device, also time the vmapped round with the client
  # axis split over them (federated.client_mesh).
  config.bench.shard_clients = True
  # The largest |difference| allowed between the sides' new global models.
  # Batched (vmapped) and single matmuls round differently, and many local
  # SGD steps on random labels can amplify that in a client or two
  # (docs/FEDERATED.md).
  config.bench.tolerance = 1e-3
  config.bench.progress = True

  if arg in ("quick", "runlocal"):
    config.model.kwargs.hidden = (32,)
    config.data.image_shape = (8, 8, 1)
    config.data.examples_per_client = 40
    config.federated.local_epochs = 1
    config.federated.batch_size = 16
    config.bench.clients = (8,)
    config.bench.repeats = 2
    config.bench.tolerance = 1e-5
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}; use 'quick' (or 'runlocal') or nothing")
  return config


# ----------------------------------------------------------------------------- setup


def synthetic_clients(num_clients: int, config: ml_collections.ConfigDict) -> federated.ClientData:
  """C clients' stacked data: uniform images in [0, 1), uniform labels, no padding."""
  dc = config.data
  rng = np.random.default_rng([config.seed, num_clients])
  shape = (num_clients, dc.examples_per_client)
  return federated.ClientData(
      image=rng.uniform(size=shape + tuple(dc.image_shape)).astype(np.float32),
      label=rng.integers(0, dc.num_classes, size=shape).astype(np.int32),
      weight=np.ones(shape, np.float32),
      client_id=np.arange(num_clients, dtype=np.int32))


def _model(config: ml_collections.ConfigDict) -> models.ModelFns:
  kwargs = {k: tuple(v) if isinstance(v, (list, tuple)) else v
            for k, v in config.model.get("kwargs", {}).items()}
  return models.create_model(config.model.name, num_classes=config.data.num_classes,
                             input_shape=tuple(config.data.image_shape), **kwargs)


def make_round(apply_fn: models.ApplyFn, config: ml_collections.ConfigDict,
               mesh: jax.sharding.Mesh | None = None) -> federated.FedAvg:
  """The library's round with the config's local training and aggregation."""
  fc = config.federated
  if fc.optimizer not in OPTIMIZERS:
    raise ValueError(f"federated.optimizer must be one of {tuple(OPTIMIZERS)}, got "
                     f"{fc.optimizer!r}")
  return federated.make_fedavg(
      apply_fn, OPTIMIZERS[fc.optimizer](fc.learning_rate), local_epochs=fc.local_epochs,
      batch_size=fc.batch_size, loss_fn=losses.get_loss(models.default_loss(config.model.name)),
      secure=fc.secure, fractional_bits=fc.fractional_bits,
      secure_neighbors=fc.secure_neighbors or None, mesh=mesh)


def make_sequential(fedavg: federated.FedAvg, config: ml_collections.ConfigDict) -> Callable:
  """The round computed one client at a time with `fedavg`'s own local training.

  Returns:
    `(global_params, clients, key) -> new_params`, `clients` a list of
    per-client `ClientData` (unstacked: image `[N, ...]`, label and weight
    `[N]`, client_id a scalar) already on the device.
  """
  fc = config.federated

  @jax.jit
  def train_one(global_params, client, key):
    # The vmapped round gives client k the key fold_in(fold_in(key, 0), k).
    client_key = jax.random.fold_in(jax.random.fold_in(key, 0), jnp.maximum(client.client_id, 0))
    local, _ = fedavg.local_train(global_params, client.image, client.label, client.weight,
                                  client_key)
    return local

  @jax.jit
  def aggregate(global_params, local, clients, key):
    updates = jax.tree.map(lambda g, *ls: jnp.stack(ls) - g[None], global_params, *local)
    weights = jnp.stack([jnp.sum(c.weight) for c in clients])
    if fc.secure:
      ids = jnp.stack([c.client_id for c in clients])
      everyone = jnp.ones(ids.shape, bool)
      mean, _ = secure_agg.secure_weighted_mean(
          updates, weights, jax.random.fold_in(key, 1), ids, everyone, everyone,
          fractional_bits=fc.fractional_bits, num_neighbors=fc.secure_neighbors or None)
    else:
      mean = federated.weighted_mean(updates, weights)
    return federated.apply_update(global_params, mean)

  def run(global_params, clients, key):
    local = [parallel.block(train_one(global_params, client, key)) for client in clients]
    return parallel.block(aggregate(global_params, local, clients, key))

  return run


def _unstack(data: federated.ClientData) -> list[federated.ClientData]:
  """Per-client device arrays, cut before any timing."""
  return [jax.device_put(federated.ClientData(data.image[k], data.label[k], data.weight[k],
                                              data.client_id[k]))
          for k in range(len(data.client_id))]


def shard_devices(num_clients: int, num_devices: int) -> int:
  """The largest divisor of `num_clients` not above `num_devices`."""
  return max(d for d in range(1, min(num_clients, num_devices) + 1) if num_clients % d == 0)


@contextlib.contextmanager
def no_persistent_cache():
  """Turns JAX's persistent compilation cache off, so that first calls compile."""
  # pylint: disable-next=g-import-not-at-top
  from jax.experimental.compilation_cache import compilation_cache as cc

  previous = jax.config.jax_enable_compilation_cache
  jax.config.update("jax_enable_compilation_cache", False)
  cc.reset_cache()
  try:
    yield
  finally:
    jax.config.update("jax_enable_compilation_cache", previous)
    cc.reset_cache()


# ----------------------------------------------------------------------------- timing


def _timed(call: Callable[[], Any]) -> tuple[Any, float]:
  start = time.perf_counter()
  out = parallel.block(call())
  return out, time.perf_counter() - start


def max_abs_diff(a: Any, b: Any) -> float:
  """The largest |a - b| over the leaves of two pytrees of one structure (on the host)."""
  a, b = jax.device_get((a, b))
  return max(float(np.max(np.abs(x - y))) for x, y in zip(jax.tree.leaves(a),
                                                          jax.tree.leaves(b)))


def bench_clients(config: ml_collections.ConfigDict, num_clients: int, bar: Any) -> dict[str, Any]:
  """Times the sides on C = `num_clients` clients; see the module docstring."""
  model = _model(config)
  params = jax.jit(model.init_fn)(jax.random.key(config.seed))
  key = jax.random.key(config.seed + 1)
  data = synthetic_clients(num_clients, config)
  fedavg = make_round(model.apply_fn, config)
  sides: dict[str, tuple[Callable[[], Any], int]] = {}
  stacked = jax.device_put(data)
  sides[VMAPPED] = (lambda: fedavg.round(params, stacked, key)[0], 1)
  sequential, clients = make_sequential(fedavg, config), _unstack(data)
  sides[SEQUENTIAL] = (lambda: sequential(params, clients, key), 1)
  devices = shard_devices(num_clients, jax.device_count())
  if config.bench.shard_clients and devices > 1:
    mesh = federated.client_mesh(devices)
    sharded_round = make_round(model.apply_fn, config, mesh)
    split = jax.NamedSharding(mesh, jax.P(federated.CLIENT_AXIS))
    placed = jax.device_put(data, federated.ClientData(split, split, split, split))
    sides[SHARDED] = (lambda: sharded_round.round(params, placed, key)[0], devices)

  results: dict[str, dict[str, Any]] = {}
  outputs = {}
  for name, (call, num_devices) in sides.items():
    bar.set_postfix_str(f"C={num_clients} {name} (compiling)")
    with common.compile_time_meter() as meter:
      outputs[name], first = _timed(call)
    results[name] = {"devices": num_devices, "first_call_seconds": first,
                     "compile_seconds": sum(meter.values()), "compile_breakdown": dict(meter),
                     "warm_seconds": []}
    bar.update(1)
  diffs = {name: max_abs_diff(outputs[VMAPPED], out) for name, out in outputs.items()
           if name != VMAPPED}
  if max(diffs.values()) > config.bench.tolerance:
    raise RuntimeError(f"C={num_clients}: the sides' new global models differ by {diffs} "
                       f"(largest |difference|), above bench.tolerance={config.bench.tolerance}")
  for _ in range(config.bench.repeats):
    for name, (call, _) in sides.items():
      bar.set_postfix_str(f"C={num_clients} {name}")
      results[name]["warm_seconds"].append(_timed(call)[1])
      bar.update(1)
  for entry in results.values():
    entry["warm_median_seconds"] = statistics.median(entry["warm_seconds"])
  fc = config.federated
  steps = fc.local_epochs * -(-config.data.examples_per_client // fc.batch_size)
  warm = lambda name: results[name]["warm_median_seconds"]
  cell = {"clients": num_clients, "examples_per_client": int(config.data.examples_per_client),
          "local_steps_per_client": int(steps), "sides": results,
          "max_abs_diff_vs_vmapped": diffs,
          # For scale: the largest change the round made to a parameter.
          "max_abs_change": max_abs_diff(outputs[VMAPPED], params),
          "sequential_over_vmapped": warm(SEQUENTIAL) / warm(VMAPPED)}
  if SHARDED in results:
    cell["sequential_over_sharded"] = warm(SEQUENTIAL) / warm(SHARDED)
  return cell


# ----------------------------------------------------------------------------- report


def markdown_table(cells: list[dict[str, Any]]) -> str:
  """One row per C."""
  lines = [TABLE_HEADER, "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
  for cell in cells:
    sides = cell["sides"]
    times = lambda s: f"{s['compile_seconds']:.2f} / {s['warm_median_seconds']:.3f}"
    if SHARDED in sides:
      sharded = f"{sides[SHARDED]['devices']}, {times(sides[SHARDED])}"
      sharded_ratio = f"{cell['sequential_over_sharded']:.1f}x"
    else:
      sharded, sharded_ratio = "n/a", "n/a"
    lines.append(
        f"| {cell['clients']} | {cell['local_steps_per_client']} | {times(sides[VMAPPED])} "
        f"| {times(sides[SEQUENTIAL])} | {cell['sequential_over_vmapped']:.1f}x | {sharded} "
        f"| {sharded_ratio} | {max(cell['max_abs_diff_vs_vmapped'].values()):.1e} |")
  return "\n".join(lines)


def backend_info() -> dict[str, Any]:
  """What the figures were measured on."""
  return {"jax": jax.__version__, "backend": jax.default_backend(),
          "device_kind": jax.devices()[0].device_kind, "device_count": jax.device_count(),
          "cpu_count": os.cpu_count(), "machine": platform.processor() or platform.machine(),
          "load_average_start": list(os.getloadavg())}


def _loads(loads: list[float]) -> str:
  return " ".join(f"{x:.2f}" for x in loads)


def bench_federated(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Times every C of `bench.clients`, then writes the table and the JSON.

  Returns:
    `{"table", "cells", "backend"}`: the markdown table, one entry per C
    (see `bench_clients`) and `backend_info()`.
  """
  if config.bench.repeats < 1:
    raise ValueError(f"bench.repeats must be at least 1, got {config.bench.repeats}")
  out = os.path.join(workdir, "bench_federated")
  backend = backend_info()
  fc = config.federated
  common.log(f"[bench_federated] jax {backend['jax']} on {backend['backend']} "
             f"({backend['device_count']} x {backend['device_kind']}), {backend['cpu_count']} "
             f"CPU cores; {config.data.examples_per_client} examples per client, "
             f"{fc.local_epochs} local epochs of batch {fc.batch_size}, "
             f"{'secure' if fc.secure else 'plain'} aggregation")
  num_sides = lambda c: 2 + int(config.bench.shard_clients
                                and shard_devices(c, jax.device_count()) > 1)
  total = sum(num_sides(c) * (1 + config.bench.repeats) for c in config.bench.clients)
  bar = common.progress(total, desc="bench_federated", enabled=config.bench.progress)
  bar.unit = "call"
  bar.refresh()
  cells = []
  with no_persistent_cache():
    for num_clients in config.bench.clients:
      cells.append(bench_clients(config, num_clients, bar))
  bar.close()
  backend["load_average_end"] = list(os.getloadavg())
  table = markdown_table(cells)
  common.log(table)
  common.log(f"load average at start: {_loads(backend['load_average_start'])}; at end: "
             f"{_loads(backend['load_average_end'])}")
  if common.is_main_process():
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.md"), "w") as f:
      f.write(table + "\n")
    common.write_json(os.path.join(out, "results.json"),
                      {"backend": backend, "config": config.to_dict(), "cells": cells})
  return {"table": table, "cells": cells, "backend": backend}


if __name__ == "__main__":
  cli.run(bench_federated, default_config=DEFAULT_CONFIG)
