"""Deterministic, resumable batch selection.

A batch is a pure function of `(seed, step)`: epoch `e = step //
steps_per_epoch` visits the examples in the order
`np.random.default_rng([seed, e]).permutation(num_examples)`, and the last
`num_examples % batch_size` examples of each epoch's order are dropped. A run
resumed at step `s` therefore sees exactly the batches an uninterrupted run
sees, with no data-loader state in the checkpoint.
"""

import functools

import jax
import numpy as np


def _check_int(name: str, value, *, minimum: int) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
  return int(value)


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """Full batches per epoch (the remainder is dropped).

  Raises:
    ValueError: if `batch_size` is not in `[1, num_examples]`.
  """
  num_examples = _check_int("num_examples", num_examples, minimum=1)
  batch_size = _check_int("batch_size", batch_size, minimum=1)
  if batch_size > num_examples:
    raise ValueError(f"batch_size={batch_size} exceeds num_examples={num_examples}")
  return num_examples // batch_size


@functools.lru_cache(maxsize=8)
def _epoch_order(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  # Cached: consecutive steps of an epoch share one permutation.
  order = np.random.default_rng([seed, epoch]).permutation(num_examples)
  order.setflags(write=False)
  return order


def batch_indices(num_examples: int, batch_size: int, step: int, *, seed: int) -> np.ndarray:
  """Indices of the examples in batch `step`.

  Args:
    num_examples: size of the indexed collection.
    batch_size: examples per batch, in `[1, num_examples]`.
    step: global step, `>= 0`.
    seed: non-negative int seed of the epoch permutations.

  Returns:
    int64 `[batch_size]` indices into `[0, num_examples)`, without duplicates.

  Raises:
    ValueError: for a non-positive or too large `batch_size`, a negative
      step or seed.
  """
  per_epoch = steps_per_epoch(num_examples, batch_size)
  step = _check_int("step", step, minimum=0)
  seed = _check_int("seed", seed, minimum=0)
  epoch, i = divmod(step, per_epoch)
  order = _epoch_order(int(num_examples), seed, epoch)
  return order[i * batch_size:(i + 1) * batch_size].astype(np.int64)


def process_batch_slice(
    global_batch_size: int,
    *,
    process_index: int | None = None,
    process_count: int | None = None,
) -> slice:
  """The part of a global batch this process loads (multi-host input).

  Each process reads `global_batch_size // process_count` consecutive
  examples of the global batch; `jax.make_array_from_process_local_data`
  assembles the global array.

  Args:
    global_batch_size: examples per step over all processes.
    process_index: defaults to `jax.process_index()`.
    process_count: defaults to `jax.process_count()`.

  Returns:
    A slice into the global batch's index array.

  Raises:
    ValueError: if `global_batch_size` is not a positive multiple of the
      process count.
  """
  count = jax.process_count() if process_count is None else process_count
  index = jax.process_index() if process_index is None else process_index
  global_batch_size = _check_int("global_batch_size", global_batch_size, minimum=1)
  count = _check_int("process_count", count, minimum=1)
  index = _check_int("process_index", index, minimum=0)
  if index >= count:
    raise ValueError(f"process_index={index} must be < process_count={count}")
  if global_batch_size % count:
    raise ValueError(
        f"global_batch_size={global_batch_size} is not divisible by process_count={count}")
  per_process = global_batch_size // count
  return slice(index * per_process, (index + 1) * per_process)
