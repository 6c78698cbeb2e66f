"""Federated unlearning baselines as pure steps: FedEraser and projected gradient ascent.

FedEraser (server side): the server stored, for some original rounds, the
global model and the clients' updates. To forget client u it rebuilds the
federation from the first stored round; for each later stored round the
remaining clients run calibration training from the new global model (about
half the original local epochs, e.g. a `fedavg.make_fedavg` with
`local_epochs // 2`), and the server moves the new model by the stored
update's length in the calibration's direction, leaf by leaf:

  new_{t+1} = new_t + ||old_t|| * calib_t / ||calib_t||     (`fed_eraser_step`)

Projected gradient ascent (client side): the leaving client ascends its own
loss from the global model, projected onto an L2 ball around the other
clients' average model (`pga_reference`), stopping early once its loss
passes a bound; a few ordinary rounds without it then recover accuracy.

References:
  Liu et al., "FedEraser: Enabling Efficient Client-Level Data Removal from
  Federated Learning Models", IWQoS 2021, https://arxiv.org/abs/2111.08096;
  Halimi et al., "Federated Unlearning: How to Efficiently Erase a Client in
  FL?", 2022, https://arxiv.org/abs/2207.05521
"""

import math
from typing import Callable

import jax
import jax.numpy as jnp

from forsaken_jax import losses
from forsaken_jax.models import ApplyFn, Params

Batch = dict[str, jax.Array]
PgaFn = Callable[[Params, Params, jax.Array, Batch], tuple[Params, dict[str, jax.Array]]]

__all__ = ["PgaFn", "fed_eraser_calibrate", "fed_eraser_step", "make_projected_gradient_ascent",
           "pga_radius", "pga_reference", "tree_bytes"]


def tree_bytes(tree: Params) -> int:
  """Bytes the leaves of a pytree occupy (e.g. FedEraser's stored updates)."""
  return int(sum(math.prod(jnp.shape(x)) * jnp.dtype(jnp.result_type(x)).itemsize
                 for x in jax.tree.leaves(tree)))


def fed_eraser_calibrate(old_update: Params, calibration_update: Params, *,
                         eps: float = 1e-12) -> Params:
  """The calibrated update: the calibration's direction with the stored update's length.

  Args:
    old_update: the stored aggregated update of the original round.
    calibration_update: the remaining clients' aggregated calibration update
      from the new global model.
    eps: guards a zero calibration leaf (which then stays zero).

  Returns:
    `||old|| * calib / ||calib||` for every leaf.
  """
  def one(old, calib):
    old_norm = jnp.sqrt(jnp.sum(jnp.square(old)))
    calib_norm = jnp.sqrt(jnp.sum(jnp.square(calib)))
    return calib * (old_norm / jnp.maximum(calib_norm, eps)).astype(calib.dtype)

  return jax.tree.map(one, old_update, calibration_update)


def fed_eraser_step(new_params: Params, old_update: Params, calibration_update: Params, *,
                    eps: float = 1e-12) -> Params:
  """`new + fed_eraser_calibrate(old_update, calibration_update)`."""
  calibrated = fed_eraser_calibrate(old_update, calibration_update, eps=eps)
  return jax.tree.map(lambda p, u: p + u.astype(p.dtype), new_params, calibrated)


def pga_reference(global_params: Params, user_params: Params, num_clients: int) -> Params:
  """The other clients' average model: `(N * theta - theta_u) / (N - 1)`.

  Args:
    global_params: theta, the (equally weighted) average of N client models.
    user_params: theta_u, the leaving client's last local model.
    num_clients: N, at least 2.

  Returns:
    The average of the other N - 1 client models.
  """
  if num_clients < 2:
    raise ValueError(f"num_clients must be at least 2, got {num_clients}")
  return jax.tree.map(lambda g, u: (num_clients * g - u) / (num_clients - 1), global_params,
                      user_params)


def _distance(a: Params, b: Params) -> jax.Array:
  return jnp.sqrt(sum(jnp.sum(jnp.square(x - y)) for x, y in
                      zip(jax.tree.leaves(a), jax.tree.leaves(b))))


def pga_radius(reference: Params, random_params: list[Params], *, fraction: float) -> jax.Array:
  """The ball's radius: `fraction` of the mean distance from the reference to random models.

  Args:
    reference: from `pga_reference`.
    random_params: freshly initialized models (e.g. a few `init_fn(key)`).
    fraction: in (0, 1]; Halimi et al. use a third.

  Returns:
    A scalar radius.
  """
  if not random_params:
    raise ValueError("random_params is empty; pass at least one freshly initialized model")
  if not 0 < fraction <= 1:
    raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
  return fraction * jnp.mean(jnp.stack([_distance(reference, r) for r in random_params]))


def make_projected_gradient_ascent(apply_fn: ApplyFn, *, lr: float,
                                   loss_fn: losses.LossFn = losses.cross_entropy,
                                   max_loss: float | None = None) -> PgaFn:
  """Builds the leaving client's projected gradient ascent.

  Args:
    apply_fn: `(params, images) -> logits`.
    lr: the ascent's step size.
    loss_fn: per-example loss; the batch mean is ascended.
    max_loss: stop once a batch's mean loss exceeds it, keeping that model
      (early stopping: a cross-entropy loss is unbounded above). None: never.

  Returns:
    A jitted `pga(params, reference, radius, batches) -> (params, info)`:
    one ascent step per batch of `batches` (`label [S, B]`), each followed by
    the projection onto `||params - reference|| <= radius`; steps after the
    stop leave the parameters alone. `info` holds `steps` (steps taken) and
    `loss` `[S]` (each batch's loss at the model it met; NaN after the stop).
  """
  if not lr > 0:
    raise ValueError(f"lr must be positive, got {lr!r}")
  bound = jnp.inf if max_loss is None else float(max_loss)

  def mean_loss(params, batch):
    return jnp.mean(loss_fn(apply_fn(params, batch["image"]), batch["label"]))

  def project(params, reference, radius):
    distance = _distance(params, reference)
    scale = jnp.minimum(1.0, radius / jnp.maximum(distance, 1e-30))
    return jax.tree.map(lambda p, r: r + (p - r) * scale.astype(p.dtype), params, reference)

  def pga(params, reference, radius, batches):
    if jnp.ndim(batches["label"]) != 2:
      raise ValueError(f"batches['label'] must be [S, B], got shape {jnp.shape(batches['label'])}")

    def step(carry, batch):
      params, stopped, steps = carry
      loss, grads = jax.value_and_grad(mean_loss)(params, batch)
      recorded = jnp.where(stopped, jnp.nan, loss)
      # The first model whose loss passes the bound is the result.
      stopped = stopped | (loss > bound)
      ascended = project(jax.tree.map(lambda p, g: p + lr * g, params, grads), reference, radius)
      params = jax.tree.map(lambda new, old: jnp.where(stopped, old, new), ascended, params)
      return (params, stopped, steps + (~stopped).astype(jnp.int32)), recorded

    init = (params, jnp.array(False), jnp.zeros((), jnp.int32))
    (params, _, steps), loss_trace = jax.lax.scan(step, init, batches)
    return params, {"steps": steps, "loss": loss_trace}

  return jax.jit(pga)
