r"""Shadow-model training: K models in one vmapped step vs one after another.

    python -m experiments.bench_shadow [--num_models 16] [--steps N] [--batch_size 128]
        [--model cnn,mlp] [--repeats 3] [--torch]

LiRA needs K shadow models, each trained on its own half of a population.
This script trains the same K models on the same per-model batches
(`forsaken_jax.mia.shadow.shadow_batch_indices` over balanced keep masks, on
random 28x28 data) three ways:

* vmapped: `shadow.make_stacked_train_step`, all K models in one compiled
  step (`jax.vmap` over stacked parameters);
* sequential: `train.make_train_step` jitted once and reused, model after
  model, each for all its steps (what the PyTorch tools do);
* PyTorch (`--torch`): a plain eager PyTorch loop over the same K models,
  model after model, in a separate process (see `run_torch_isolated`).

Models: the pipeline's small CNN (`features=(16, 32), dense=64`) and the
default MLP (`hidden=(512, 256)`), Adam 1e-3, softmax cross-entropy. Every
step blocks on its output, and the time includes the host gather of the
batch, identically for all three. "incl. compile" is the wall time of the
whole run from a freshly built (never compiled) step. "excl. compile"
replaces the first call, which traces and compiles, by a steady-state step
(the median of the others): it is the time a run with a warm compilation
cache would take. PyTorch's first call (kernel set-up, first allocations) is
set aside the same way. The three are run alternately, `--repeats` times, and
medians are reported. `--steps` defaults to 100 on accelerators and 10 on CPU,
where one CNN step of 16 models takes seconds.
"""

import argparse
import multiprocessing
import os
import platform
import time

import jax
import numpy as np
import optax

from forsaken_jax import models, parallel, train
from forsaken_jax.mia import lira, shadow

IMAGE_SHAPE = (28, 28, 1)
NUM_CLASSES = 10
ARCHITECTURES = {
    "cnn": ("cnn", {"features": (16, 32), "dense": 64}),
    "mlp": ("mlp", {"hidden": (512, 256)}),
}


def _data(num_models, population, batch_size, steps, seed):
  """Random population, balanced keep masks and every step's per-model indices."""
  rng = np.random.default_rng(seed)
  images = rng.uniform(size=(population, *IMAGE_SHAPE)).astype(np.float32)
  labels = rng.integers(0, NUM_CLASSES, size=population).astype(np.int32)
  keep = np.asarray(lira.balanced_keep_masks(jax.random.key(seed), num_models, population))
  indices = np.stack([shadow.shadow_batch_indices(keep, batch_size, s, seed=seed)
                      for s in range(steps)])  # [steps, K, B]
  return images, labels, indices


def _summarize(step_times):
  """(incl. compile, excl. compile, compile) seconds from per-call times."""
  step_times = np.asarray(step_times)
  steady = float(np.median(step_times[1:])) if len(step_times) > 1 else float(step_times[0])
  total = float(step_times.sum())
  return total, total - step_times[0] + steady, max(step_times[0] - steady, 0.0)


def run_vmapped(fns, tx, data, keys):
  images, labels, indices = data
  state = jax.block_until_ready(shadow.init_stacked_state(fns.init_fn, tx, keys))
  step = shadow.make_stacked_train_step(fns.apply_fn, tx)  # a fresh jit: compiles on first call
  times = []
  for idx in indices:
    start = time.perf_counter()
    state, metrics = parallel.block(step(state, {"image": images[idx], "label": labels[idx]}))
    times.append(time.perf_counter() - start)
  return _summarize(times), np.asarray(metrics["loss"])


def run_sequential(fns, tx, data, keys):
  images, labels, indices = data
  mesh = parallel.make_mesh()
  step = train.make_train_step(fns.apply_fn, tx, mesh=mesh)  # one jit, reused for every model
  states = [parallel.block(parallel.replicate(train.init_train_state(fns.init_fn, tx, key), mesh))
            for key in keys]
  times, final_losses = [], []
  for k, state in enumerate(states):
    for idx in indices[:, k]:
      start = time.perf_counter()
      batch = parallel.shard_batch({"image": images[idx], "label": labels[idx]}, mesh)
      state, metrics = parallel.block(step(state, batch))
      times.append(time.perf_counter() - start)
    final_losses.append(float(metrics["loss"]))
  return _summarize(times), np.asarray(final_losses)


def _torch_net(name):
  from torch import nn  # pylint: disable=g-import-not-at-top
  if name == "cnn":
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(7 * 7 * 32, 64), nn.ReLU(), nn.Linear(64, NUM_CLASSES))
  return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 256), nn.ReLU(), nn.Linear(256, 256),
                       nn.ReLU(), nn.Linear(256, NUM_CLASSES))


def run_torch(name, data, num_models):
  import torch  # pylint: disable=g-import-not-at-top
  images, labels, indices = data
  images_nchw = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
  labels_t = torch.from_numpy(labels).long()
  loss_fn = torch.nn.CrossEntropyLoss()
  times = []
  for k in range(num_models):
    torch.manual_seed(k)
    net = _torch_net(name)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    for idx in indices[:, k]:
      start = time.perf_counter()
      idx_t = torch.from_numpy(idx)
      optimizer.zero_grad(set_to_none=True)
      loss = loss_fn(net(images_nchw[idx_t]), labels_t[idx_t])
      loss.backward()
      optimizer.step()
      loss.item()  # the analogue of blocking on the step's output
      times.append(time.perf_counter() - start)
  # Nothing to compile, but the first call sets up kernels and allocations:
  # it is set aside the same way as JAX's compilation.
  return _summarize(times)


def run_torch_isolated(name, data, num_models):
  """`run_torch` in a fresh process, with passive OpenMP waiting.

  The separate process keeps XLA's CPU thread pool out of PyTorch's way. On a
  busy 2-core machine, OpenMP's default spin-waiting made single PyTorch runs
  up to 100x slower (0.35 s vs 31 s for the same 16 MLPs), so unless
  OMP_WAIT_POLICY is already set, the child runs with OMP_WAIT_POLICY=PASSIVE
  (stable, about 1.3x slower than the best default-policy runs).
  """
  previous = os.environ.get("OMP_WAIT_POLICY")
  os.environ["OMP_WAIT_POLICY"] = previous or "PASSIVE"
  try:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
      return pool.apply(run_torch, (name, data, num_models))
  finally:
    if previous is None:
      del os.environ["OMP_WAIT_POLICY"]


def _fmt(values):
  return ", ".join(f"{v:.2f}" for v in values)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--num_models", type=int, default=16)
  parser.add_argument("--steps", type=int, default=None,
                      help="steps per model (default: 100 on accelerators, 10 on CPU)")
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--population", type=int, default=4096,
                      help="examples in the shadow population; each model trains on half")
  parser.add_argument("--model", default="cnn,mlp", help="comma-separated subset of cnn,mlp")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--torch", action="store_true", help="also time a PyTorch sequential loop")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  names = [n.strip() for n in args.model.split(",") if n.strip()]
  for name in names:
    if name not in ARCHITECTURES:
      parser.error(f"--model must name models from {sorted(ARCHITECTURES)}, got {name!r}")
  backend = jax.default_backend()
  steps = args.steps if args.steps is not None else (10 if backend == "cpu" else 100)

  device = jax.devices()[0]
  print(f"backend: {backend}; {jax.device_count()} device(s), kind {device.device_kind!r}; "
        f"jax {jax.__version__}; {os.cpu_count()} CPU cores "
        f"({platform.processor() or platform.machine()})")
  if args.torch:
    import torch  # pylint: disable=g-import-not-at-top
    print(f"torch {torch.__version__} with {torch.get_num_threads()} threads, in a separate "
          f"process, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'PASSIVE')}")
  print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
  print(f"K={args.num_models} models x {steps} steps, batch {args.batch_size} per model, "
        f"population {args.population} (each model in on half); {args.repeats} repeats, "
        f"medians; times in seconds for the whole run")

  rows, ratios = [], []
  for name in names:
    model, kwargs = ARCHITECTURES[name]
    fns = models.create_model(model, num_classes=NUM_CLASSES, input_shape=IMAGE_SHAPE, **kwargs)
    tx = optax.adam(1e-3)
    data = _data(args.num_models, args.population, args.batch_size, steps, args.seed)
    keys = jax.random.split(jax.random.key(args.seed), args.num_models)
    results = {"vmapped": [], "sequential": [], "torch": []}
    for repeat in range(args.repeats):
      # Alternate the order so that drifting machine load does not favour one side.
      order = ["vmapped", "sequential"] if repeat % 2 == 0 else ["sequential", "vmapped"]
      for which in order:
        if which == "vmapped":
          timing, vmapped_losses = run_vmapped(fns, tx, data, keys)
        else:
          timing, sequential_losses = run_sequential(fns, tx, data, keys)
        results[which].append(timing)
      if args.torch:
        results["torch"].append(run_torch_isolated(name, data, args.num_models))
    # Same models, same batches, same optimizer: the final losses must agree.
    loss_gap = float(np.max(np.abs(vmapped_losses - sequential_losses)))
    median = {k: np.median(np.asarray(v), axis=0) for k, v in results.items() if v}
    model_steps = args.num_models * steps
    labels = {"vmapped": "JAX vmapped, K models in one step",
              "sequential": "JAX sequential, one jitted step reused",
              "torch": "PyTorch eager, sequential"}
    for which, (incl, excl, compile_s) in median.items():
      runs = _fmt([r[0] for r in results[which]])
      rows.append(f"| {name} | {labels[which]} | {incl:.2f} | {excl:.2f} | {compile_s:.2f} | "
                  f"{model_steps / excl:,.1f} | {runs} |")
    seq, vm = median["sequential"], median["vmapped"]
    torch_cell = f"{median['torch'][1] / vm[1]:.2f}x" if "torch" in median else "-"
    ratios.append(f"| {name} | {seq[0] / vm[0]:.2f}x | {seq[1] / vm[1]:.2f}x | {torch_cell} | "
                  f"{loss_gap:.1e} |")

  print()
  print("| model | implementation | incl. compile (s) | excl. compile (s) | "
        "compile or first call (s) | model-steps/s (excl.) | runs, incl. compile (s) |")
  print("| --- | --- | ---: | ---: | ---: | ---: | --- |")
  print("\n".join(rows))
  print()
  print("| model | sequential / vmapped, incl. compile | sequential / vmapped, excl. compile | "
        "PyTorch / vmapped, excl. compile | max final-loss gap vmapped vs sequential |")
  print("| --- | ---: | ---: | ---: | ---: |")
  print("\n".join(ratios))
  print()
  print("ratios > 1 mean the vmapped step is faster")
  print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
  main()
