r"""Training throughput: the JAX train step vs an equivalent PyTorch CPU loop.

    python -m experiments.bench_train [--steps 200] [--batch_size 128]

Both sides train the same CNN (conv3x3-32, pool, conv3x3-64, pool, dense-128,
dense-10; "SAME" padding, ReLU, Adam 1e-3, softmax cross-entropy) on the same
28x28 batches, one step after another on this machine, and report examples/s
measured after a warm-up (which covers JAX's compilation and PyTorch's first
allocations). The ratio is JAX / PyTorch. Needs `pip install torch` (the
`bench` extra); runs JAX on whatever backend it finds (the CPU here).
"""

import argparse
import os
import time

import jax
import numpy as np
import optax

from forsaken_jax import models, parallel, train


def _batches(num_batches, batch_size, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.uniform(size=(num_batches, batch_size, 28, 28, 1)).astype(np.float32)
  labels = rng.integers(0, 10, size=(num_batches, batch_size)).astype(np.int32)
  return images, labels


def bench_jax(steps, warmup, batch_size):
  """Examples/s of `forsaken_jax.train.make_train_step` on the default CNN."""
  fns = models.create_model("cnn", num_classes=10, input_shape=(28, 28, 1))
  tx = optax.adam(1e-3)
  mesh = parallel.make_mesh()
  state = parallel.replicate(train.init_train_state(fns.init_fn, tx, jax.random.key(0)), mesh)
  step = train.make_train_step(fns.apply_fn, tx, mesh=mesh)
  images, labels = _batches(8, batch_size)
  batches = [parallel.shard_batch({"image": images[i], "label": labels[i]}, mesh) for i in range(8)]
  for i in range(warmup):
    state, metrics = parallel.block(step(state, batches[i % 8]))
  start = time.perf_counter()
  for i in range(steps):
    state, metrics = parallel.block(step(state, batches[i % 8]))
  elapsed = time.perf_counter() - start
  return steps * batch_size / elapsed, float(metrics["loss"])


def bench_torch(steps, warmup, batch_size):
  """Examples/s of a plain PyTorch loop on the same CNN."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top

  torch.manual_seed(0)
  net = nn.Sequential(
      nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
      nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
      nn.Flatten(), nn.Linear(7 * 7 * 64, 128), nn.ReLU(), nn.Linear(128, 10))
  optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
  loss_fn = nn.CrossEntropyLoss()
  images, labels = _batches(8, batch_size)
  images = torch.from_numpy(images).permute(0, 1, 4, 2, 3).contiguous()  # NCHW
  labels = torch.from_numpy(labels).long()

  def step(i):
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(net(images[i % 8]), labels[i % 8])
    loss.backward()
    optimizer.step()
    return loss

  for i in range(warmup):
    step(i)
  start = time.perf_counter()
  for i in range(steps):
    loss = step(i)
  elapsed = time.perf_counter() - start
  return steps * batch_size / elapsed, loss.item()


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=200)
  parser.add_argument("--warmup", type=int, default=20)
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=3,
                      help="alternate JAX and PyTorch this many times; report the median")
  args = parser.parse_args()
  import torch  # pylint: disable=g-import-not-at-top
  print(f"backend: jax {jax.__version__} on {jax.default_backend()} ({jax.device_count()} device(s)); "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads; "
        f"{os.cpu_count()} CPU cores; batch {args.batch_size}, {args.steps} timed steps")
  jax_rates, torch_rates = [], []
  for _ in range(args.repeats):
    jax_rates.append(bench_jax(args.steps, args.warmup, args.batch_size)[0])
    torch_rates.append(bench_torch(args.steps, args.warmup, args.batch_size)[0])
  jax_rate, torch_rate = float(np.median(jax_rates)), float(np.median(torch_rates))
  print("| implementation | examples/s (median) | runs |")
  print("| --- | ---: | --- |")
  print(f"| forsaken_jax (jax.jit train step) | {jax_rate:,.0f} | "
        f"{', '.join(f'{r:,.0f}' for r in jax_rates)} |")
  print(f"| PyTorch eager loop | {torch_rate:,.0f} | {', '.join(f'{r:,.0f}' for r in torch_rates)} |")
  print(f"ratio JAX / PyTorch: {jax_rate / torch_rate:.2f}x")


if __name__ == "__main__":
  main()
