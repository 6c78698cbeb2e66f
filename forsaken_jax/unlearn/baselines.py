"""Baselines to compare Forsaken against.

- Gradient ascent: SGD *up* the forget loss. Cheap, and the usual lower bar:
  it lowers the forget set's confidence but quickly damages the model.
- Fine-tuning: continue training on retained data only, relying on
  catastrophic forgetting of the forget set. `make_finetune_loop` runs it
  as one compiled program; Forsaken's optional repair (`unlearn.repair_steps`
  in the experiments) is this loop after the generator's steps.
"""

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from forsaken_jax import losses
from forsaken_jax.unlearn.reference import check_batch

Params = Any
Batch = dict[str, jax.Array]
ApplyFn = Callable[[Params, jax.Array], jax.Array]

__all__ = ["make_finetune_loop", "make_finetune_step", "make_gradient_ascent_step"]


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


def make_finetune_loop(apply_fn: ApplyFn, tx: optax.GradientTransformation, *, num_steps: int,
                       loss_fn: losses.LossFn = losses.cross_entropy,
                       steps_per_call: int | None = None) -> Callable:
  """`num_steps` optimizer steps on retained batches, cycled.

  Args:
    apply_fn: `(params, images) -> logits`.
    tx: the optimizer; its state starts fresh.
    num_steps: steps to run (positive).
    loss_fn: per-example loss.
    steps_per_call: None: all steps in one program (a `jax.lax.scan`, the
      fastest where loop bodies run at full speed, e.g. on accelerators).
      k: k steps per program, unrolled, called from Python until
      `num_steps` are done (at most two programs are compiled: k steps and
      the remainder). XLA:CPU runs convolutions inside a loop body several
      times slower than outside one, so a CNN on a CPU wants this.

  Returns:
    `run(params, retain_batches) -> (params, losses [num_steps])`,
    `retain_batches` stacked `[K, B, ...]`: step t uses batch t % K. Jitted
    (and traceable inside a caller's jit) when `steps_per_call` is None.
  """
  if num_steps < 1:
    raise ValueError(f"num_steps must be positive, got {num_steps}")
  if steps_per_call is not None and steps_per_call < 1:
    raise ValueError(f"steps_per_call must be positive or None, got {steps_per_call}")

  def check(retain_batches):
    check_batch(retain_batches, "retain_batches", stacked=True)
    if jnp.ndim(retain_batches["label"]) != 2:
      raise ValueError("retain_batches must be stacked [K, B, ...]")

  def steps(params, opt_state, retain_batches, first, count, unroll):
    num_batches = jnp.shape(retain_batches["label"])[0]

    def step(carry, t):
      p, opt_state = carry
      batch = jax.tree.map(lambda x: jax.lax.dynamic_index_in_dim(x, t % num_batches,
                                                                  keepdims=False),
                           retain_batches)
      loss, grads = jax.value_and_grad(
          lambda q: jnp.mean(loss_fn(apply_fn(q, batch["image"]), batch["label"])))(p)
      updates, opt_state = tx.update(grads, opt_state, p)
      return (optax.apply_updates(p, updates), opt_state), loss

    return jax.lax.scan(step, (params, opt_state), first + jnp.arange(count), unroll=unroll)

  if steps_per_call is None:
    @jax.jit
    def run(params, retain_batches):
      check(retain_batches)
      (params, _), step_losses = steps(params, tx.init(params), retain_batches, 0, num_steps, 1)
      return params, step_losses

    return run

  @functools.partial(jax.jit, static_argnames="count")
  def chunk(params, opt_state, retain_batches, first, count):
    return steps(params, opt_state, retain_batches, first, count, True)

  def run_in_chunks(params, retain_batches):
    check(retain_batches)
    carry, chunks = (params, tx.init(params)), []
    for first in range(0, num_steps, steps_per_call):
      carry, step_losses = chunk(*carry, retain_batches, jnp.int32(first),
                                 count=min(steps_per_call, num_steps - first))
      chunks.append(jax.block_until_ready(step_losses))
    return carry[0], jnp.concatenate(chunks)

  return run_in_chunks
