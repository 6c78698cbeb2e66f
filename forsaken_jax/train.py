"""Training and evaluation steps.

The train state is a plain dict pytree `{"params", "opt_state", "step"}`.
`make_update_fn` returns the pure, unjitted update so that it can be jitted
for data-parallel training (`make_train_step`) or `jax.vmap`-ed over stacked
parameters to train many shadow models at once.
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from forsaken_jax import losses, parallel
from forsaken_jax.models import ApplyFn, Params

TrainState = dict[str, Any]
Batch = dict[str, jax.Array]
UpdateFn = Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]


def init_train_state(init_fn: Callable[[jax.Array], Params], tx: optax.GradientTransformation,
                     key: jax.Array) -> TrainState:
  """Creates a fresh train state.

  Args:
    init_fn: `(key) -> params`.
    tx: the optimizer.
    key: PRNG key for the parameters.

  Returns:
    `{"params", "opt_state", "step"}` with step 0.
  """
  params = init_fn(key)
  return {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}


def make_update_fn(apply_fn: ApplyFn, tx: optax.GradientTransformation, *,
                   loss_fn: losses.LossFn = losses.cross_entropy) -> UpdateFn:
  """Returns the pure (unjitted) training update.

  Args:
    apply_fn: `(params, images) -> logits`.
    tx: the optimizer.
    loss_fn: per-example loss `(logits, labels) -> [B]`; the batch mean is
      minimized.

  Returns:
    `update(state, batch) -> (new_state, metrics)`, with `batch` a dict of
    `"image"` `[B, H, W, C]` and `"label"` `[B]`, and metrics the batch
    `loss` and `accuracy`.
  """

  def loss_and_logits(params, batch):
    logits = apply_fn(params, batch["image"])
    return jnp.mean(loss_fn(logits, batch["label"])), logits

  def update(state, batch):
    (loss, logits), grads = jax.value_and_grad(loss_and_logits, has_aux=True)(
        state["params"], batch)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
    # Other entries (e.g. the run's PRNG key data) pass through unchanged.
    new_state = {**state, "params": params, "opt_state": opt_state, "step": state["step"] + 1}
    return new_state, {"loss": loss, "accuracy": accuracy}

  return update


def make_train_step(apply_fn: ApplyFn, tx: optax.GradientTransformation, *,
                    loss_fn: losses.LossFn = losses.cross_entropy,
                    mesh: jax.sharding.Mesh | None = None) -> UpdateFn:
  """Returns the data-parallel training step, jitted once.

  The state is replicated and donated; the batch is split along the mesh's
  data axis. XLA inserts the gradient all-reduce, so the result equals a
  single-device step on the same global batch up to float reassociation.

  Args:
    apply_fn: `(params, images) -> logits`.
    tx: the optimizer.
    loss_fn: per-example loss.
    mesh: device mesh; `None` uses all devices (`parallel.make_mesh()`).

  Returns:
    `step(state, batch) -> (new_state, metrics)`. Place batches with
    `parallel.shard_batch` and the state with `parallel.replicate`.
  """
  mesh = parallel.make_mesh() if mesh is None else mesh
  replicated = parallel.replicated(mesh)
  return jax.jit(
      make_update_fn(apply_fn, tx, loss_fn=loss_fn),
      in_shardings=(replicated, parallel.data_sharding(mesh)),
      out_shardings=(replicated, replicated),
      donate_argnums=0,
  )


def make_predict_fn(apply_fn: ApplyFn, mesh: jax.sharding.Mesh | None = None
                    ) -> Callable[[Params, np.ndarray], np.ndarray]:
  """Returns `predict(params, images) -> logits` over a whole host array.

  Images are fed in fixed-size chunks (the last one padded) so the jitted
  forward pass compiles once per chunk size; chunks are split over the mesh.

  Args:
    apply_fn: `(params, images) -> logits`.
    mesh: device mesh; `None` uses all devices.

  Returns:
    A function returning float32 numpy logits `[N, C]`; keyword `batch_size`
    (default 1024) sets the chunk size.
  """
  mesh = parallel.make_mesh() if mesh is None else mesh
  forward = jax.jit(apply_fn, in_shardings=(parallel.replicated(mesh), parallel.data_sharding(mesh)),
                    out_shardings=parallel.replicated(mesh))

  def predict(params, images, *, batch_size=1024):
    num = len(images)
    if num == 0:
      raise ValueError("predict needs at least one image, got an empty array")
    chunk = -(-min(batch_size, num) // mesh.size) * mesh.size  # a multiple of the devices
    outputs = [np.asarray(forward(params, parallel.shard_batch(part, mesh)))[:real]
               for part, real in parallel.padded_chunks(images, chunk)]
    return np.concatenate(outputs).astype(np.float32)

  return predict


def evaluate(predict: Callable[..., np.ndarray], params: Params, images: np.ndarray,
             labels: np.ndarray, *, loss_fn: losses.LossFn = losses.cross_entropy,
             batch_size: int = 1024) -> dict[str, float]:
  """Accuracy and mean loss of `params` on a labelled host array.

  Args:
    predict: from `make_predict_fn`.
    params: model parameters.
    images: `[N, H, W, C]` float32.
    labels: `[N]` int.
    loss_fn: per-example loss.
    batch_size: chunk size for `predict`.

  Returns:
    `{"accuracy", "loss"}` as Python floats.
  """
  if len(images) != len(labels):
    raise ValueError(f"images and labels differ in length: {len(images)} vs {len(labels)}")
  logits = predict(params, images, batch_size=batch_size)
  return {
      "accuracy": float(np.mean(np.argmax(logits, -1) == labels)),
      "loss": float(np.mean(loss_fn(jnp.asarray(logits), jnp.asarray(labels)))),
  }
