"""Baselines to compare Forsaken against.

- Gradient ascent: SGD *up* the forget loss. Cheap, and the usual lower bar:
  it lowers the forget set's confidence but quickly damages the model.
- Fine-tuning: continue training on retained data only, relying on
  catastrophic forgetting of the forget set.
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from forsaken_jax import losses
from forsaken_jax.unlearn.reference import check_batch

Params = Any
Batch = dict[str, jax.Array]
ApplyFn = Callable[[Params, jax.Array], jax.Array]

__all__ = ["make_finetune_step", "make_gradient_ascent_step"]


def make_gradient_ascent_step(apply_fn: ApplyFn, *, lr: float,
                              loss_fn: losses.LossFn = losses.cross_entropy) -> Callable:
  """One step of gradient ascent on the mean forget loss.

  Args:
    apply_fn: `(params, images) -> logits`.
    lr: ascent step size.
    loss_fn: per-example loss.

  Returns:
    Jitted `step(params, forget_batch) -> (params, {"loss": loss before the step})`.
  """
  if not lr > 0:
    raise ValueError(f"lr must be positive, got {lr!r}")

  @jax.jit
  def step(params, forget_batch):
    check_batch(forget_batch, "forget_batch")
    loss, grads = jax.value_and_grad(
        lambda p: jnp.mean(loss_fn(apply_fn(p, forget_batch["image"]), forget_batch["label"])))(
            params)
    return jax.tree.map(lambda p, g: p + lr * g, params, grads), {"loss": loss}

  return step


def make_finetune_step(apply_fn: ApplyFn, tx: optax.GradientTransformation, *,
                       loss_fn: losses.LossFn = losses.cross_entropy) -> Callable:
  """One optimizer step descending the mean retain loss.

  Args:
    apply_fn: `(params, images) -> logits`.
    tx: the optimizer (initialize its state with `tx.init(params)`).
    loss_fn: per-example loss.

  Returns:
    Jitted `step(params, opt_state, retain_batch) -> (params, opt_state,
    {"loss": loss before the step})`.
  """

  @jax.jit
  def step(params, opt_state, retain_batch):
    check_batch(retain_batch, "retain_batch")
    loss, grads = jax.value_and_grad(
        lambda p: jnp.mean(loss_fn(apply_fn(p, retain_batch["image"]), retain_batch["label"])))(
            params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, {"loss": loss}

  return step
