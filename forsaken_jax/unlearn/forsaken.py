"""Forsaken: a trainable dummy-gradient generator that removes memorization.

One generator step (`make_generator_update`):

  features  = (theta, dD/dtheta, domega/dtheta, mean posterior on D_u) at theta
  g         = G_phi(features)                       (zero outside the mask)
  theta'    = theta - eta * g
  L(phi)    = D(f_theta'(D_u), reference)
              + lambda * omega(theta') * ||g||_1
              + retain_weight * omega(theta')
              + relearn_weight * relu(R(theta; D_n) - R(theta'; D_u))
  phi      <- Adam step on dL/dphi

R(theta; S) is the mean loss on S after `relearn_steps` steps of
fine-tuning on S alone, starting from theta: the relearning attack,
simulated, unrolled and differentiated through on the forget set D_u. The
yardstick, as many unseen look-alikes D_n relearned from the current model
theta, does not depend on phi. The term is zero unless the forget set would
be relearned faster than the look-alikes: it asks the dummy gradient to
remove what a short fine-tune could bring back, not only to hide it (the
idea of tamper-resistant training, Tamirisa et al. 2024).

D is the forget objective of `reference.py`; omega is the mean retain loss
(cross-entropy) on a retained batch D_r. L is differentiated *through* the
application theta' = theta - eta * G_phi(...): the meta-gradient reaches phi
via theta'. (The public PyTorch port rebuilt its layers on every call and
wrote the update outside autograd, so D never trained its generator.)

Choices of this reconstruction, with their knobs:
- `||g||_1` is the *mean* absolute value over the coordinates the generator
  may change (the masked ones), not the sum: a sum over millions of
  coordinates would make lambda (`l1_weight`) mean something different for
  every model and mask.
- `retain_weight * omega(theta')` is our addition (default 0 = the paper's
  loss): the paper's loss only uses omega to weight the L1 term, which does
  not by itself keep test accuracy within a couple of points.
- The relearning term is our addition too (default `relearn_weight=0`,
  the paper's loss). It needs the relative objective's reference batch:
  its first B_u examples are the look-alikes D_u is compared with.

The unlearning loop (`make_forsaken`) repeats generator steps from the
current model; the model keeps a step's theta' only if the step improved L,
i.e. its loss beats that of the current model on the same batches (greedy
acceptance; `acceptance="best_so_far"` compares with the best accepted loss
instead, as the port does), the generator trains every step, and the loop stops when
the forget set reaches a target membership rate, after `patience` steps
without improvement, or after `max_steps`. A step whose loss, meta-gradient
or candidate is not finite is rejected: neither the generator nor the model
changes, and it is counted.

References:
  Liu et al., "Learn to Forget: Machine Unlearning via Neuron Masking",
  https://arxiv.org/abs/2003.10933
"""

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from forsaken_jax import losses
from forsaken_jax.mia import relearn as relearn_lib
from forsaken_jax.unlearn import generators as generators_lib
from forsaken_jax.unlearn import masking
from forsaken_jax.unlearn import reference as reference_lib

Params = Any
Mask = Any
Batch = dict[str, jax.Array]
ApplyFn = Callable[[Params, jax.Array], jax.Array]
ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]

# Stop reasons (ForsakenState.stop_reason).
STOP_RUNNING = 0
STOP_TARGET = 1
STOP_PATIENCE = 2
STOP_MAX_STEPS = 3
STOP_REASONS = ("running", "target", "patience", "max_steps")
ACCEPTANCE_RULES = ("same_batch", "best_so_far")

__all__ = [
    "ACCEPTANCE_RULES", "Forsaken", "ForsakenState", "GeneratorState", "GeneratorUpdate", "STOP_MAX_STEPS",
    "STOP_PATIENCE", "STOP_REASONS", "STOP_RUNNING", "STOP_TARGET", "UnlearnResult",
    "apply_dummy_gradient", "make_forsaken", "make_generator_update", "make_simulated_relearn",
    "summarize", "unlearn",
]


# ----------------------------------------------------------------------------- checks


def _check_same_example_shape(a: Batch, b: Batch, a_name: str, b_name: str) -> None:
  a_shape = jnp.shape(a["image"])[jnp.ndim(a["label"]):]
  b_shape = jnp.shape(b["image"])[jnp.ndim(b["label"]):]
  if a_shape != b_shape:
    raise ValueError(f"{a_name} examples have shape {a_shape} but {b_name} examples have shape "
                     f"{b_shape}")


def check_params_like(params: Params, like: Params, name: str, like_name: str) -> None:
  """Raises ValueError unless `params` has the structure and leaf shapes of `like`."""
  if jax.tree.structure(params) != jax.tree.structure(like):
    raise ValueError(f"{name} must have the structure of {like_name}; got "
                     f"{jax.tree.structure(params)}, expected {jax.tree.structure(like)}")
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(like)):
    if jnp.shape(a) != jnp.shape(b):
      raise ValueError(f"{name} leaf {jax.tree_util.keystr(path)} has shape {jnp.shape(a)}, "
                       f"expected {jnp.shape(b)} as in {like_name}")


def _all_finite(tree: Params) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def _tree_select(pred: jax.Array, on_true: Params, on_false: Params) -> Params:
  return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


# ----------------------------------------------------------------------------- apply


def apply_dummy_gradient(params: Params, dummy_grad: Params, *, lr: float | jax.Array,
                         mask: Mask | None = None) -> Params:
  """`theta' = theta - lr * g`, restricted to `mask`.

  Args:
    params: model parameters theta.
    dummy_grad: g, a pytree with params' structure and shapes.
    lr: eta, the application step size.
    mask: None (change everything) or a pytree with params' structure of
      bool / 0-1 leaves broadcastable to each parameter. Coordinates outside
      the mask are returned bit-identical.

  Returns:
    The updated parameters.
  """
  check_params_like(dummy_grad, params, "dummy_grad", "params")
  masking.check_mask(params, mask)

  def one(p, g, m=None):
    new = p - (lr * g).astype(p.dtype)
    return new if m is None else jnp.where(jnp.asarray(m) != 0, new, p)

  if mask is None:
    return jax.tree.map(one, params, dummy_grad)
  return jax.tree.map(one, params, dummy_grad, mask)


# ----------------------------------------------------------------------------- relearning


def make_simulated_relearn(apply_fn: ApplyFn, tx: optax.GradientTransformation, *,
                           num_steps: int, loss_fn: losses.LossFn = losses.cross_entropy
                           ) -> Callable[[Params, Batch], jax.Array]:
  """The relearning attack as a differentiable function of the starting model.

  Args:
    apply_fn: `(params, images) -> logits`.
    tx: the simulated attacker's optimizer (fresh state at every call).
    num_steps: full-batch fine-tuning steps (positive).
    loss_fn: per-example loss the attacker descends.

  Returns:
    `relearned_loss(params, batch) -> scalar`: the mean loss on `batch` after
    `num_steps` optimizer steps on `batch` from `params`: the audit's attack
    (`mia.make_finetune_scan`, under `jax.lax.scan`, so one compiled body
    serves any number of steps), differentiated through all of them.
  """
  if num_steps < 1:
    raise ValueError(f"relearn_steps must be positive, got {num_steps}")
  finetune = relearn_lib.make_finetune_scan(apply_fn, tx, num_steps=num_steps, loss_fn=loss_fn)

  def relearned_loss(params, batch):
    final, _ = finetune(params, batch)
    return jnp.mean(loss_fn(reference_lib.at_least_float32(apply_fn(final, batch["image"])),
                            batch["label"]))

  return relearned_loss


# ----------------------------------------------------------------------------- generator update


class GeneratorState(NamedTuple):
  """The generator's trainable state.

  Attributes:
    params: phi.
    opt_state: the generator optimizer's state.
  """

  params: Any
  opt_state: Any


class GeneratorUpdate(NamedTuple):
  """Jitted functions for one generator step (see `make_generator_update`).

  Attributes:
    init: `(key) -> GeneratorState`.
    update: `(gen_state, model_params, forget_batch, retain_batch, reference,
      mask=None) -> (new_gen_state, candidate_params, info)`; `mask`, a
      runtime `masking.PackedMask`, replaces the concrete mask the update was
      built with.
    loss: `(gen_params, model_params, forget_batch, retain_batch, reference,
      mask=None) -> (loss, aux)`: L(phi) at the given phi, aux holding its
      terms and the candidate.
    features: `(model_params, forget_batch, retain_batch, reference) ->
      (Features, baseline_loss)`: the generator's input at theta and the loss
      of leaving theta unchanged (g = 0).
  """

  init: Callable[..., GeneratorState]
  update: Callable[..., tuple[GeneratorState, Params, dict[str, jax.Array]]]
  loss: Callable[..., tuple[jax.Array, dict[str, Any]]]
  features: Callable[..., tuple[generators_lib.Features, jax.Array]]


def make_generator_update(apply_fn: ApplyFn, generator: generators_lib.Generator, *,
                          objective: str = "paper", lr: float = 0.01, l1_weight: float = 0.01,
                          retain_weight: float = 0.0,
                          gen_optimizer: optax.GradientTransformation | None = None,
                          mask: Mask | None = None,
                          retain_loss_fn: losses.LossFn = losses.cross_entropy,
                          kl_epsilon: float = 1e-6,
                          threshold_weight: float = 0.0,
                          relearn_weight: float = 0.0,
                          relearn_steps: int = 20,
                          relearn_optimizer: optax.GradientTransformation | None = None
                          ) -> GeneratorUpdate:
  """Builds one step of the generator's training (the meta-gradient step).

  Args:
    apply_fn: `(params, images) -> logits`.
    generator: from `generators.make_*_generator`.
    objective: the forget objective D, one of `reference.OBJECTIVES`.
    lr: eta, the step size of `theta' = theta - eta * g`.
    l1_weight: lambda, the weight of `omega(theta') * mean|g|`.
    retain_weight: weight of an extra `omega(theta')` term (0 = the paper's
      loss); our knob for keeping accuracy.
    gen_optimizer: optimizer of phi; default `optax.adam(1e-4)`.
    mask: None or a concrete mask of the coordinates theta' may differ in;
      defaults to the generator's own mask. ||g||_1 is averaged over it. A
      `masking.PackedMask` passed to `update`/`loss` at run time takes its
      place (one compilation then serves every mask of that capacity).
    retain_loss_fn: per-example loss for omega.
    kl_epsilon: reference smoothing for the KL objectives.
    threshold_weight: "relative_confidence_matching" only: weight of the hinge
      that pushes forget samples below `reference["threshold"]`.
    relearn_weight: weight of the relearning term (0 = off); needs a
      relative objective, whose reference batch holds at least B_u examples.
    relearn_steps: fine-tuning steps of the simulated relearning attack.
    relearn_optimizer: its optimizer; default Adam 1e-3 (with `eps_root`, as
      differentiating through it needs).

  Returns:
    A `GeneratorUpdate` of jitted functions. `update` returns `info` with
    scalars `loss`, `distance` (D at theta'), `omega`, `l1` (mean |g| over the
    mask), `relearn_gap` (the relearning term before its weight; 0 when
    off), `finite` (bool: the step was applied), and `forget_logits`
    `[B_u, C]` at the candidate. When `finite` is False, the generator state
    is returned unchanged and the candidate equals `model_params`.
  """
  reference_lib.check_objective(objective)
  for name, value in (("lr", lr), ("l1_weight", l1_weight), ("retain_weight", retain_weight),
                      ("threshold_weight", threshold_weight), ("relearn_weight", relearn_weight)):
    if not value >= 0:
      raise ValueError(f"{name} must be non-negative, got {value!r}")
  if relearn_weight and objective not in reference_lib.RELATIVE_OBJECTIVES:
    raise ValueError(f"relearn_weight > 0 compares the forget set with the reference batch of a "
                     f"relative objective {reference_lib.RELATIVE_OBJECTIVES}; got objective "
                     f"{objective!r}")
  relearned_loss = None
  if relearn_weight:
    relearned_loss = make_simulated_relearn(
        apply_fn,
        optax.adam(1e-3, eps_root=1e-8) if relearn_optimizer is None else relearn_optimizer,
        num_steps=relearn_steps, loss_fn=retain_loss_fn)
  tx = optax.adam(1e-4) if gen_optimizer is None else gen_optimizer
  # The generator's own mask is the default; a different explicit mask is
  # rejected once the params' shapes are known (in `prepared_mask`).
  mask = generator.mask if mask is None else mask

  def prepared_mask(model_params):
    # Masks are concrete, so this runs at trace time and yields numpy constants.
    full = masking.concrete_mask(model_params, mask)
    if full is not None and generator.mask is not None and not masking.masks_equal(
        full, generator.mask):
      raise ValueError("mask differs from the mask the generator was built with")
    return full, masking.mask_size(model_params, full)

  def check_inputs(model_params, forget_batch, retain_batch):
    reference_lib.check_batch(forget_batch, "forget_batch")
    reference_lib.check_batch(retain_batch, "retain_batch")
    _check_same_example_shape(forget_batch, retain_batch, "forget_batch", "retain_batch")

  def forget_distance(p, forget_logits, forget_labels, reference):
    # Relative objectives score the reference batch with the same parameters.
    reference_logits = (apply_fn(p, reference["image"])
                        if objective in reference_lib.RELATIVE_OBJECTIVES else None)
    return reference_lib.objective_distance(
        forget_logits, forget_labels, reference, objective=objective, kl_epsilon=kl_epsilon,
        reference_logits=reference_logits, threshold_weight=threshold_weight)

  def retain_loss(p, batch):
    return jnp.mean(retain_loss_fn(apply_fn(p, batch["image"]), batch["label"]))

  def relearn_gap(model_params, p, forget_batch, reference):
    """How much faster D_u is relearned from p than look-alikes from model_params (>= 0)."""
    if relearned_loss is None:
      return jnp.zeros((), jnp.float32)
    size = jnp.shape(forget_batch["label"])[0]
    if jnp.shape(reference["label"])[0] < size:
      raise ValueError(f"relearn_weight > 0 needs at least {size} reference examples (as many "
                       f"as the forget batch), got {jnp.shape(reference['label'])[0]}")
    control = {"image": reference["image"][:size], "label": reference["label"][:size]}
    # The yardstick: look-alikes relearned from the current model, whatever phi.
    control_loss = relearned_loss(jax.lax.stop_gradient(model_params), control)
    return jax.nn.relu(control_loss - relearned_loss(p, forget_batch))

  def features(model_params, forget_batch, retain_batch, reference):
    check_inputs(model_params, forget_batch, retain_batch)
    model_params = jax.lax.stop_gradient(model_params)

    def forget_objective(p):
      logits = apply_fn(p, forget_batch["image"])
      return forget_distance(p, logits, forget_batch["label"], reference), logits

    (distance, logits), forget_grad = jax.value_and_grad(forget_objective, has_aux=True)(
        model_params)
    omega, retain_grad = jax.value_and_grad(retain_loss)(model_params, retain_batch)
    context = jnp.mean(jax.nn.softmax(reference_lib.at_least_float32(logits), axis=-1), axis=0)
    feats = generators_lib.Features(model_params, forget_grad, retain_grad, context)
    # With g = 0 the L1 term vanishes: the loss of leaving theta unchanged.
    baseline = distance + retain_weight * omega
    if relearned_loss is not None:
      baseline += relearn_weight * relearn_gap(model_params, model_params, forget_batch,
                                                reference)
    return feats, baseline

  def loss_at(gen_params, feats, model_params, forget_batch, retain_batch, reference,
              runtime_mask):
    if runtime_mask is None:
      full_mask, count = prepared_mask(model_params)
      dummy = generator.apply(gen_params, feats)
    else:
      full_mask, count = runtime_mask.mask, runtime_mask.count
      dummy = generator.apply(gen_params, feats, runtime_mask)
    check_params_like(dummy, model_params, "generator output", "model_params")
    dummy = masking.where_mask(full_mask, dummy)
    candidate = apply_dummy_gradient(model_params, dummy, lr=lr, mask=full_mask)
    forget_logits = apply_fn(candidate, forget_batch["image"])
    distance = forget_distance(candidate, forget_logits, forget_batch["label"], reference)
    omega = retain_loss(candidate, retain_batch)
    l1 = sum(jnp.sum(jnp.abs(reference_lib.at_least_float32(g)))
             for g in jax.tree.leaves(dummy)) / count
    gap = relearn_gap(model_params, candidate, forget_batch, reference)
    loss = distance + l1_weight * omega * l1 + retain_weight * omega + relearn_weight * gap
    aux = {"distance": distance, "omega": omega, "l1": l1, "relearn_gap": gap,
           "candidate": candidate, "forget_logits": forget_logits}
    return loss, aux

  def init(key: jax.Array) -> GeneratorState:
    gen_params = generator.init(key)
    return GeneratorState(gen_params, tx.init(gen_params))

  def loss(gen_params, model_params, forget_batch, retain_batch, reference, mask=None):
    feats, _ = features(model_params, forget_batch, retain_batch, reference)
    return loss_at(gen_params, feats, model_params, forget_batch, retain_batch, reference, mask)

  def update(gen_state, model_params, forget_batch, retain_batch, reference, mask=None):
    feats, baseline = features(model_params, forget_batch, retain_batch, reference)
    (value, aux), grads = jax.value_and_grad(loss_at, has_aux=True)(
        gen_state.params, feats, model_params, forget_batch, retain_batch, reference, mask)
    candidate = aux.pop("candidate")
    finite = jnp.isfinite(value) & _all_finite(grads) & _all_finite(candidate)
    updates, opt_state = tx.update(grads, gen_state.opt_state, gen_state.params)
    stepped = GeneratorState(optax.apply_updates(gen_state.params, updates), opt_state)
    # A non-finite step changes nothing: the model is never handed NaN and the
    # generator's Adam moments are not poisoned.
    new_state = _tree_select(finite, stepped, gen_state)
    candidate = _tree_select(finite, candidate, model_params)
    info = {"loss": value, **aux, "baseline": baseline, "finite": finite}
    return new_state, candidate, info

  return GeneratorUpdate(jax.jit(init), jax.jit(update), jax.jit(loss), jax.jit(features))


# ----------------------------------------------------------------------------- the loop


class ForsakenState(NamedTuple):
  """State of the unlearning loop.

  Attributes:
    params: the model's current (last accepted) parameters.
    gen: the generator's `GeneratorState`.
    best_loss: the loss of the last accepted step; initially +inf, or with
      `acceptance="best_so_far"` the loss of not changing the model.
    step: steps run.
    since_improvement: consecutive steps without an accepted candidate.
    num_accepted: accepted steps.
    num_nonfinite: steps rejected because their loss or gradient was not finite.
    stop_reason: `STOP_RUNNING` (0) while running, else `STOP_TARGET`,
      `STOP_PATIENCE` or `STOP_MAX_STEPS`.
    loss_trace: `[max_steps]` generator loss of each step, NaN for steps not run.
    accepted_trace: `[max_steps]` bool, whether each step was accepted.
    rate_trace: `[max_steps]` fraction of the forget batch judged non-member
      (score below threshold) on the model after each step; NaN if not run.
    mask: the `masking.PackedMask` the loop restricts the dummy gradient
      to, or None for no mask. A runtime input, so a new mask (a new forget
      set) reuses the compiled loop when packed to the same capacity.
  """

  params: Params
  gen: GeneratorState
  best_loss: jax.Array
  step: jax.Array
  since_improvement: jax.Array
  num_accepted: jax.Array
  num_nonfinite: jax.Array
  stop_reason: jax.Array
  loss_trace: jax.Array
  accepted_trace: jax.Array
  rate_trace: jax.Array
  mask: Any = None


class Forsaken(NamedTuple):
  """Jitted functions of the unlearning loop (see `make_forsaken`).

  Attributes:
    init: `(key, params, forget_batch, retain_batch, reference, mask=None)
      -> ForsakenState`; `mask` (a concrete mask, packed to the loop's
      capacity, or a `masking.PackedMask`) replaces the mask the loop was
      built with.
    step: `(state, forget_batch, retain_batch, reference, threshold,
      target_rate) -> (state, info)`: one generator step with acceptance and
      stopping; drive it from Python (e.g. with a progress bar) until
      `state.stop_reason != STOP_RUNNING`.
    run: `(state, forget_batch, retain_batch, reference, threshold,
      target_rate, until_step=max_steps) -> state`: `step` in a
      `jax.lax.while_loop` until a stop rule fires or `state.step` reaches
      `until_step` (a runtime value: running in chunks for a progress bar or
      checkpoints does not recompile). Much faster than driving `step` from
      Python (no per-step dispatch and transfers).
    generator_update: the underlying `GeneratorUpdate`.
  """

  init: Callable[..., ForsakenState]
  step: Callable[..., tuple[ForsakenState, dict[str, jax.Array]]]
  run: Callable[..., ForsakenState]
  generator_update: GeneratorUpdate


def _select_batch(batch: Batch, step: jax.Array) -> Batch:
  """Batch `step % K` of a stacked `[K, B, ...]` batch; a plain batch as is."""
  if jnp.ndim(batch["label"]) == 1:
    return batch
  num = jnp.shape(batch["label"])[0]
  return jax.tree.map(lambda x: jax.lax.dynamic_index_in_dim(x, step % num, keepdims=False), batch)


def make_forsaken(apply_fn: ApplyFn, generator: generators_lib.Generator, *,
                  objective: str = "paper", lr: float = 0.01, l1_weight: float = 0.01,
                  retain_weight: float = 0.0,
                  gen_optimizer: optax.GradientTransformation | None = None,
                  mask: Mask | None = None, max_steps: int = 100, patience: int = 10,
                  score_fn: ScoreFn | None = None,
                  acceptance: str = "same_batch",
                  retain_loss_fn: losses.LossFn = losses.cross_entropy,
                  kl_epsilon: float = 1e-6,
                  threshold_weight: float = 0.0,
                  relearn_weight: float = 0.0,
                  relearn_steps: int = 20,
                  relearn_optimizer: optax.GradientTransformation | None = None,
                  mask_capacity: int | None = None,
                  compiler_options: dict[str, Any] | None = None) -> Forsaken:
  """Builds the Forsaken unlearning loop.

  The retain batch passed to `init`/`step`/`run` may be one batch
  (`label [B]`) or a stack of K batches (`label [K, B]`), cycled by step. The
  forget batch is one batch: the forget set (or the part of it being
  forgotten), so that losses of successive steps are comparable.

  Target rule: after an accepted step, the membership score of every forget
  example is computed on the new model (`score_fn(logits, labels)`, default
  the logit-scaled confidence of the assigned label; large = member-like);
  the loop stops when the fraction with `score < threshold` reaches
  `target_rate`. `threshold` and `target_rate` are runtime arrays, so an
  oracle fitted elsewhere (e.g. the threshold at which the retrained model's
  forget-set rate is reached) plugs in without recompiling; pass
  `threshold=-inf` to disable the rule.

  The mask is a runtime input too: `init` packs it (`masking.pack_mask`) into
  the loop state, padded to `mask_capacity` coordinates. With a capacity that
  bounds every mask of interest (`masking.neuron_mask_capacity` for neuron
  masks of a given fraction), the compiled loop serves every forget set of
  the same size; without one, each mask size compiles its own loop.

  Args:
    apply_fn: `(params, images) -> logits`.
    generator: from `generators.make_*_generator`.
    objective, lr, l1_weight, retain_weight, gen_optimizer, mask,
      retain_loss_fn, kl_epsilon, threshold_weight, relearn_weight,
      relearn_steps, relearn_optimizer: see `make_generator_update`.
    max_steps: step budget (also the length of the traces).
    patience: stop after this many consecutive steps without acceptance.
    score_fn: per-example membership score `(logits, labels) -> [B]`.
    acceptance: when a candidate theta' replaces the model.
      `"same_batch"` (default): its loss is below the loss of the current
      model (g = 0) on the same forget and retained batches, i.e. the step
      improved L. `"best_so_far"` (the port): its loss is below the best
      accepted loss so far; with retained batches cycled, that compares
      losses measured on different batches, so batch noise rejects good
      steps.
    mask_capacity: the number of coordinates masks are padded to; default
      the generator's `capacity`, else each mask's own size.
    compiler_options: XLA options for `step` and `run`, e.g.
      `{"xla_backend_optimization_level": 0}` trades code quality for
      compile time (on CPU, docs/RESULTS.md measures what that buys).

  Returns:
    A `Forsaken` of jitted functions.
  """
  if acceptance not in ACCEPTANCE_RULES:
    raise ValueError(f"acceptance must be one of {ACCEPTANCE_RULES}, got {acceptance!r}")
  if max_steps < 1:
    raise ValueError(f"max_steps must be positive, got {max_steps}")
  if patience < 1:
    raise ValueError(f"patience must be positive, got {patience}")
  score_fn = reference_lib.logit_scaled_confidence if score_fn is None else score_fn
  default_mask = generator.mask if mask is None else mask
  if mask_capacity is None:
    mask_capacity = generator.capacity
  gen_update = make_generator_update(
      apply_fn, generator, objective=objective, lr=lr, l1_weight=l1_weight,
      retain_weight=retain_weight, gen_optimizer=gen_optimizer, mask=mask,
      retain_loss_fn=retain_loss_fn, kl_epsilon=kl_epsilon, threshold_weight=threshold_weight,
      relearn_weight=relearn_weight, relearn_steps=relearn_steps,
      relearn_optimizer=relearn_optimizer)

  def pack(params, chosen):
    """The loop's runtime mask: `chosen`, else the build-time mask, packed."""
    if isinstance(chosen, masking.PackedMask):
      if mask_capacity is not None and jnp.shape(chosen.indices) != (mask_capacity,):
        raise ValueError(f"mask packs {jnp.shape(chosen.indices)} coordinates, this loop was "
                         f"built for a capacity of {mask_capacity}")
      return chosen
    chosen = default_mask if chosen is None else chosen
    if chosen is None:
      if mask_capacity is not None:
        raise ValueError(f"this loop's generator takes runtime masks of capacity {mask_capacity}; "
                         "pass init(..., mask=...)")
      return None
    return masking.pack_mask(params, chosen, capacity=mask_capacity)

  def init(key, params, forget_batch, retain_batch, reference, packed_mask):
    reference_lib.check_batch(retain_batch, "retain_batch", stacked=True)
    if acceptance == "best_so_far":
      _, baseline = gen_update.features(params, forget_batch, _select_batch(retain_batch, 0),
                                        reference)
    else:
      # Each step compares with the current model's loss on its own batches;
      # nothing to precompute (and nothing extra to compile).
      reference_lib.check_batch(forget_batch, "forget_batch")
      baseline = jnp.array(jnp.inf, jnp.float32)
    return ForsakenState(
        params=params,
        gen=gen_update.init(key),
        best_loss=baseline.astype(jnp.float32),
        step=jnp.zeros((), jnp.int32),
        since_improvement=jnp.zeros((), jnp.int32),
        num_accepted=jnp.zeros((), jnp.int32),
        num_nonfinite=jnp.zeros((), jnp.int32),
        stop_reason=jnp.array(STOP_RUNNING, jnp.int32),
        loss_trace=jnp.full((max_steps,), jnp.nan, jnp.float32),
        accepted_trace=jnp.zeros((max_steps,), bool),
        rate_trace=jnp.full((max_steps,), jnp.nan, jnp.float32),
        mask=packed_mask,
    )

  def step(state, forget_batch, retain_batch, reference, threshold, target_rate):
    reference_lib.check_batch(retain_batch, "retain_batch", stacked=True)
    gen, candidate, info = gen_update.update(state.gen, state.params, forget_batch,
                                             _select_batch(retain_batch, state.step), reference,
                                             state.mask)
    loss = info["loss"].astype(jnp.float32)
    if acceptance == "best_so_far":
      bar = state.best_loss
    else:
      bar = info["baseline"].astype(jnp.float32)
    accepted = info["finite"] & (loss < bar)
    params = _tree_select(accepted, candidate, state.params)
    # Scores on the candidate are those of the model we keep only if accepted;
    # otherwise the model is unchanged and its rate was recorded earlier.
    scores = score_fn(reference_lib.gather_explicit(info["forget_logits"]),
                      reference_lib.gather_explicit(forget_batch["label"]))
    rate = jnp.mean((scores < threshold).astype(jnp.float32))
    previous_rate = jnp.where(state.step > 0,
                              state.rate_trace[jnp.maximum(state.step - 1, 0)], jnp.nan)
    rate = jnp.where(accepted, rate, previous_rate)
    num_steps = state.step + 1
    since = jnp.where(accepted, 0, state.since_improvement + 1)
    stop = jnp.where(
        accepted & (rate >= target_rate), STOP_TARGET,
        jnp.where(since >= patience, STOP_PATIENCE,
                  jnp.where(num_steps >= max_steps, STOP_MAX_STEPS, STOP_RUNNING)))
    new_state = ForsakenState(
        params=params,
        gen=gen,
        best_loss=jnp.where(accepted, loss, state.best_loss),
        step=num_steps,
        since_improvement=since.astype(jnp.int32),
        num_accepted=state.num_accepted + accepted.astype(jnp.int32),
        num_nonfinite=state.num_nonfinite + (~info["finite"]).astype(jnp.int32),
        stop_reason=stop.astype(jnp.int32),
        loss_trace=state.loss_trace.at[state.step].set(loss),
        accepted_trace=state.accepted_trace.at[state.step].set(accepted),
        rate_trace=state.rate_trace.at[state.step].set(rate),
        mask=state.mask,
    )
    info = {k: v for k, v in info.items() if k != "forget_logits"}
    info.update(accepted=accepted, nonmember_rate=rate, stop_reason=new_state.stop_reason)
    return new_state, info

  def run(state, forget_batch, retain_batch, reference, threshold, target_rate,
          until_step=max_steps):
    return jax.lax.while_loop(
        lambda s: (s.stop_reason == STOP_RUNNING) & (s.step < until_step),
        lambda s: step(s, forget_batch, retain_batch, reference, threshold, target_rate)[0],
        state)

  jit = functools.partial(jax.jit, compiler_options=compiler_options)
  # init is trivial to compile, and without options it can be traced inside
  # other transformations (jax.eval_shape of the loop's state).
  jitted_init = jax.jit(init)

  def init_with_mask(key, params, forget_batch, retain_batch, reference, mask=None):
    return jitted_init(key, params, forget_batch, retain_batch, reference, pack(params, mask))

  return Forsaken(init_with_mask, jit(step), jit(run), gen_update)


def summarize(state: ForsakenState) -> dict[str, Any]:
  """Host-side summary of a finished loop: counts, stop reason name and traces.

  Args:
    state: a `ForsakenState`.

  Returns:
    A dict of Python scalars and numpy traces (traces cut to the steps run).
  """
  steps = int(state.step)
  return {
      "steps": steps,
      "accepted": int(state.num_accepted),
      "nonfinite": int(state.num_nonfinite),
      "stop_reason": STOP_REASONS[int(state.stop_reason)],
      "best_loss": float(state.best_loss),
      "loss_trace": jax.device_get(state.loss_trace)[:steps],
      "accepted_trace": jax.device_get(state.accepted_trace)[:steps],
      "rate_trace": jax.device_get(state.rate_trace)[:steps],
  }


class UnlearnResult(NamedTuple):
  """Result of `unlearn`.

  Attributes:
    params: the unlearned model parameters.
    gen_state: the trained generator's `GeneratorState`.
    info: `summarize` of the final loop state.
  """

  params: Params
  gen_state: GeneratorState
  info: dict[str, Any]


def unlearn(apply_fn: ApplyFn, params: Params, forget_batch: Batch, retain_batch: Batch,
            nonmember_batch: Batch, *, key: jax.Array, generator: str = "coordinatewise",
            objective: str = "paper", mask: Mask | None = None,
            threshold: float | jax.Array | None = None, target_rate: float | jax.Array = 1.0,
            generator_kwargs: dict[str, Any] | None = None, num_quantiles: int = 128,
            **kwargs: Any) -> UnlearnResult:
  """Runs Forsaken end to end: reference, generator, loop.

  Args:
    apply_fn: `(params, images) -> logits`.
    params: the trained parameters theta.
    forget_batch: the forget set D_u as one batch.
    retain_batch: retained data D_r, one batch or stacked `[K, B, ...]`.
    nonmember_batch: the non-member sample D_n as one batch.
    key: PRNG key for the generator's initialization.
    generator: "dense" or "coordinatewise".
    objective: one of `reference.OBJECTIVES`.
    mask: None or a concrete mask (e.g. from `masking.neuron_mask`).
    threshold: membership-score threshold of the target rule; None disables it.
    target_rate: the non-member fraction of the forget set to stop at.
    generator_kwargs: passed to the generator's factory.
    num_quantiles: reference quantiles for "confidence_matching".
    **kwargs: passed to `make_forsaken` (lr, l1_weight, retain_weight,
      gen_optimizer, max_steps, patience, score_fn, ...).

  Returns:
    An `UnlearnResult`.
  """
  reference_lib.check_batch(nonmember_batch, "nonmember_batch")
  num_classes = jax.eval_shape(apply_fn, params, nonmember_batch["image"]).shape[-1]
  gen = generators_lib.make_generator(generator, params, num_classes=num_classes, mask=mask,
                                      **(generator_kwargs or {}))
  reference = reference_lib.compute_reference(apply_fn, params, nonmember_batch,
                                              objective=objective, num_quantiles=num_quantiles)
  forsaken = make_forsaken(apply_fn, gen, objective=objective, mask=mask, **kwargs)
  state = forsaken.init(key, params, forget_batch, retain_batch, reference)
  threshold = -jnp.inf if threshold is None else threshold
  state = forsaken.run(state, forget_batch, retain_batch, reference,
                       jnp.asarray(threshold, jnp.float32), jnp.asarray(target_rate, jnp.float32))
  return UnlearnResult(state.params, state.gen, summarize(state))
