"""The relearning attack: how fast fine-tuning brings a forgotten set back.

Output-level audits (the forgetting rate, LiRA, U-LiRA) ask whether a model
*looks* as if it never saw the forget set. The relearning attack asks whether
the association between each example and its label is still in the weights:
fine-tune the model on the forget set alone and count the steps until its
accuracy there is back. A model that merely suppressed its memorization
relearns the set in a few steps; one that never saw it (the retrained model)
needs as many steps as it needs to learn the same number of unseen
look-alikes, the attack's control. Relearn time as an unlearning probe:
Golatkar et al., "Eternal Sunshine of the Spotless Net" (CVPR 2020).

`make_relearn_attack` builds the attack as one compiled program (the
fine-tuning loop under `jax.lax.scan`), for one model or, with `jax.vmap`,
for a stack of models each fine-tuned on its own batch (several models, the
control's look-alikes, several optimizers' seeds) in one call.
`steps_to_accuracy` and `relearn_summary` turn curves into the figures the
audit reports.
"""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from forsaken_jax import losses

Params = Any
Batch = dict[str, jax.Array]
ApplyFn = Callable[[Params, jax.Array], jax.Array]

__all__ = ["RelearnAttack", "RelearnCurve", "make_finetune_scan", "make_relearn_attack",
           "relearn_summary", "steps_to_accuracy"]


class RelearnCurve(NamedTuple):
  """What fine-tuning did, measured before every step and after the last.

  Attributes:
    accuracy: `[..., num_steps + 1]` accuracy on the fine-tuning set;
      entry t is after t steps (entry 0: the model as given).
    loss: `[..., num_steps + 1]` mean loss on the fine-tuning set, likewise.
  """

  accuracy: jax.Array
  loss: jax.Array


class RelearnAttack(NamedTuple):
  """Jitted relearning attacks (see `make_relearn_attack`).

  Attributes:
    run: `(params, batch) -> RelearnCurve`: fine-tunes one model on `batch`.
    run_stacked: `(stacked_params, stacked_batch) -> RelearnCurve`: the same
      for models stacked on a leading axis, each on its batch of the stacked
      batch (`[M, B, ...]`), vmapped into one program; curves are `[M, T+1]`.
    num_steps: the step budget T.
  """

  run: Callable[[Params, Batch], RelearnCurve]
  run_stacked: Callable[[Params, Batch], RelearnCurve]
  num_steps: int


def make_finetune_scan(apply_fn: ApplyFn, tx: optax.GradientTransformation, *, num_steps: int,
                       loss_fn: losses.LossFn = losses.cross_entropy
                       ) -> Callable[[Params, Batch], tuple[Params, RelearnCurve]]:
  """Full-batch fine-tuning for `num_steps` steps under `jax.lax.scan`.

  The one loop behind the relearning attack and Forsaken's simulated attack
  (`unlearn.make_simulated_relearn`), which differentiates through it.

  Args:
    apply_fn: `(params, images) -> logits`.
    tx: the optimizer; its state starts fresh at every call.
    num_steps: the step budget (positive).
    loss_fn: per-example loss descended.

  Returns:
    `finetune(params, batch) -> (final_params, curve)`, `curve` holding the
    accuracy and mean loss on `batch` before each step (`[num_steps]`).
  """
  if num_steps < 1:
    raise ValueError(f"num_steps must be positive, got {num_steps}")

  def finetune(params, batch):
    def step(carry, _):
      p, opt_state = carry
      (loss, accuracy), grads = jax.value_and_grad(
          lambda q: _loss_and_accuracy(apply_fn, loss_fn, q, batch), has_aux=True)(p)
      updates, opt_state = tx.update(grads, opt_state, p)
      return (optax.apply_updates(p, updates), opt_state), RelearnCurve(accuracy, loss)

    (final, _), curve = jax.lax.scan(step, (params, tx.init(params)), None, length=num_steps)
    return final, curve

  return finetune


def _loss_and_accuracy(apply_fn: ApplyFn, loss_fn: losses.LossFn, params: Params,
                       batch: Batch) -> tuple[jax.Array, jax.Array]:
  """Mean loss (in at least float32) and accuracy of `params` on `batch`."""
  logits = apply_fn(params, batch["image"])
  accuracy = jnp.mean((jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32))
  logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
  return jnp.mean(loss_fn(logits, batch["label"])), accuracy


def make_relearn_attack(apply_fn: ApplyFn, tx: optax.GradientTransformation, *, num_steps: int,
                        loss_fn: losses.LossFn = losses.cross_entropy) -> RelearnAttack:
  """Builds the relearning attack: full-batch fine-tuning for a step budget.

  Every step is one optimizer step on the mean loss of the whole batch, so
  the attack is deterministic given the model and the set: its figures
  differ between models only because the models differ.

  Args:
    apply_fn: `(params, images) -> logits`.
    tx: the attacker's optimizer (e.g. `optax.adam(1e-3)`); its state starts
      fresh for every model.
    num_steps: the step budget T (positive).
    loss_fn: per-example loss the attacker descends.

  Returns:
    A `RelearnAttack`.
  """
  finetune = make_finetune_scan(apply_fn, tx, num_steps=num_steps, loss_fn=loss_fn)

  def run(params, batch):
    if jnp.ndim(batch["label"]) != 1 or jnp.shape(batch["label"])[0] == 0:
      raise ValueError(f"batch labels must be a non-empty [B] vector, got shape "
                       f"{jnp.shape(batch['label'])}")
    if jnp.shape(batch["image"])[0] != jnp.shape(batch["label"])[0]:
      raise ValueError(f"batch has {jnp.shape(batch['image'])[0]} images but "
                       f"{jnp.shape(batch['label'])[0]} labels")
    last, curve = finetune(params, batch)
    loss, accuracy = _loss_and_accuracy(apply_fn, loss_fn, last, batch)  # after the last step
    return RelearnCurve(jnp.append(curve.accuracy, accuracy), jnp.append(curve.loss, loss))

  return RelearnAttack(jax.jit(run), jax.jit(jax.vmap(run)), num_steps)


def steps_to_accuracy(accuracy: np.ndarray | jax.Array, target: float) -> np.ndarray:
  """The first step at which a curve reaches `target` accuracy.

  Args:
    accuracy: `[..., T+1]` accuracy curves (`RelearnCurve.accuracy`).
    target: the accuracy to reach, in [0, 1].

  Returns:
    An int array of shape `accuracy.shape[:-1]`: the first t with
    `accuracy[..., t] >= target`, or -1 where the budget ran out first.
  """
  accuracy = np.asarray(accuracy)
  if not 0.0 <= target <= 1.0:
    raise ValueError(f"target accuracy must be in [0, 1], got {target!r}")
  # Accuracy is a fraction of examples: compare with a tolerance of a
  # fraction of one example so that 0.8 of 200 (160 correct) counts.
  reached = accuracy >= target - 1e-6
  first = np.argmax(reached, axis=-1)
  return np.where(reached.any(axis=-1), first, -1)


def relearn_summary(curve: RelearnCurve, *, original_accuracy: float,
                    accuracy_targets: tuple[float, ...] = (0.8,),
                    budgets: tuple[int, ...] = (10, 25, 50, 100)) -> dict[str, Any]:
  """One fine-tuning curve as the audit's figures.

  Args:
    curve: a single (unstacked) `RelearnCurve`.
    original_accuracy: the original model's accuracy on the attacked set;
      the first target (`steps_to_original`).
    accuracy_targets: further accuracy targets (`steps_to_<pct>`).
    budgets: step budgets at which the accuracy is read (`accuracy_at_<t>`);
      budgets beyond the curve are skipped.

  Returns:
    A JSON-friendly dict: `steps_to_original` and `steps_to_<pct>` (None when
    not reached within the budget), `accuracy_at_<t>`, `num_steps`, and the
    `accuracy` and `loss` curves as lists.
  """
  accuracy = np.asarray(curve.accuracy, np.float64)
  if accuracy.ndim != 1:
    raise ValueError(f"relearn_summary takes one curve; got accuracy of shape {accuracy.shape}")
  num_steps = len(accuracy) - 1

  def steps(target):
    value = int(steps_to_accuracy(accuracy, min(float(target), 1.0)))
    return None if value < 0 else value

  out: dict[str, Any] = {"num_steps": num_steps,
                         "steps_to_original": steps(original_accuracy)}
  for target in accuracy_targets:
    out[f"steps_to_{round(100 * target)}"] = steps(target)
  for budget in budgets:
    if budget <= num_steps:
      out[f"accuracy_at_{budget}"] = float(accuracy[budget])
  out["accuracy"] = accuracy.tolist()
  out["loss"] = np.asarray(curve.loss, np.float64).tolist()
  return out
