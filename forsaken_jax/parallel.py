"""Device meshes and shardings.

One 1-D `("data",)` mesh over all devices is the default: batches are split
along it and parameters are replicated, so the same code runs on one CPU, 8
fake CPU devices, a GPU box or a TPU pod slice. Stacked shadow models use a
`("model",)` axis instead (see `forsaken_jax.mia.shadow.stacked_sharding`).
"""

from typing import Any, Iterator

import jax
import numpy as np

DATA_AXIS = "data"
MODEL_AXIS = "model"


def make_mesh(num_devices: int | None = None, axis: str = DATA_AXIS) -> jax.sharding.Mesh:
  """Builds a 1-D mesh over the first `num_devices` devices (default: all).

  Args:
    num_devices: how many devices to use; `None` uses `jax.device_count()`.
    axis: the mesh axis name.

  Returns:
    A `jax.sharding.Mesh` with one axis.
  """
  available = jax.device_count()
  num_devices = available if num_devices is None else num_devices
  if not 1 <= num_devices <= available:
    raise ValueError(f"num_devices must be in [1, {available}], got {num_devices}")
  return jax.make_mesh((num_devices,), (axis,), devices=jax.devices()[:num_devices])


def data_sharding(mesh: jax.sharding.Mesh) -> jax.NamedSharding:
  """Sharding that splits the leading (batch) axis over the mesh."""
  return jax.NamedSharding(mesh, jax.P(mesh.axis_names[0]))


def replicated(mesh: jax.sharding.Mesh) -> jax.NamedSharding:
  """Sharding that keeps a full copy on every device of the mesh."""
  return jax.NamedSharding(mesh, jax.P())


def check_batch_divisible(batch_size: int, mesh: jax.sharding.Mesh) -> None:
  """Raises ValueError unless `batch_size` splits evenly over the mesh."""
  if batch_size % mesh.size:
    raise ValueError(
        f"batch size {batch_size} is not divisible by the {mesh.size} devices of the mesh")


def shard_batch(batch: Any, mesh: jax.sharding.Mesh) -> Any:
  """Places a host batch on the mesh, split along its leading axis.

  Each process passes its own slice of the global batch (see
  `forsaken_jax.data.process_batch_slice`); with one process that is the
  whole batch.

  Args:
    batch: pytree of numpy arrays with a common leading dimension.
    mesh: the device mesh.

  Returns:
    The same pytree of global `jax.Array`s.
  """
  sharding = data_sharding(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


def replicate(tree: Any, mesh: jax.sharding.Mesh) -> Any:
  """Places a pytree on every device of the mesh."""
  return jax.device_put(tree, replicated(mesh))


def padded_chunks(images: np.ndarray, chunk: int) -> Iterator[tuple[np.ndarray, int]]:
  """Splits a host array into `chunk`-row pieces, zero-padding the last one.

  A jitted function then sees one shape and compiles once.

  Args:
    images: `[N, ...]` host array.
    chunk: rows per piece.

  Yields:
    `(piece [chunk, ...], number of real rows in it)`.
  """
  for start in range(0, len(images), chunk):
    part = np.asarray(images[start:start + chunk])
    real = len(part)
    if real < chunk:
      part = np.concatenate([part, np.zeros((chunk - real, *part.shape[1:]), part.dtype)])
    yield part, real


def block(tree: Any) -> Any:
  """Waits for a pytree's computations to finish and returns it.

  Called on each step's output inside Python loops: on the CPU backend with
  several (fake) devices, an unblocked chain of sharded steps can stall in a
  cross-device all-reduce rendezvous and abort the process.
  """
  return jax.block_until_ready(tree)
