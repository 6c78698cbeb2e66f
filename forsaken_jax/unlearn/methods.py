"""The field's unlearning baselines, all in one shape.

A method is a factory `make_<name>(apply_fn, **hyperparameters) -> Unlearner`
that closes over everything static (the model's `apply_fn`, the optimizer,
the hyperparameters) and returns three functions on an explicit
`UnlearnerState` pytree:

  method = methods.make_method("salun", apply_fn)      # the paper's defaults
  state = method.init(params, forget_set, retain_batch, key)
  state, metrics = method.step(state, forget_batch, retain_batch)
  state = method.run(state, forget_batches, retain_batches)  # [T, B, ...] stacked

`step` is one compiled update; `run` is the same update in one compiled
`jax.lax.scan` over the leading (step) axis of the stacked batches. The state
holds plain arrays only (params, the optimizer state, the step counter, the
PRNG key's raw data and what the method needs, e.g. theta_0 and a saliency
mask), so it can be checkpointed: running k steps, saving, and running the
rest from the restored state gives the result of running them all at once.
Per-step randomness is `fold_in(key, step)`.

Methods (`METHODS`), theta_0 the original model, D_f / D_r the forget and
retained data, CE the cross-entropy (`loss_fn`):

- `finetune` (FT): descend CE(D_r).
- `gradient_ascent` (GA): descend -CE(D_f).
- `random_labels` (RL): descend CE(D_f, random wrong labels) + CE(D_r).
- `neggrad_plus` (NegGrad+): descend alpha * CE(D_r) - (1 - alpha) * CE(D_f).
- `l1_sparse`: descend CE(D_r) + gamma_t * ||theta||_1, gamma_t decaying
  linearly from gamma to 0 over `num_steps`.
- `salun` (SalUn): RL restricted to a weight-saliency mask (the top
  `mask_fraction` of |grad CE(D_f)| at theta_0, computed by `init`); every
  weight outside the mask stays exactly at theta_0.
- `scrub` (SCRUB): teacher = theta_0; during the first `max_steps` steps a max
  update ascends KL(teacher || student) on D_f, then every step a min update
  descends gamma * CE(D_r) + alpha * KL(teacher || student) on D_r.
- `shrink_perturb`: Forsaken's removal step without the dummy gradient:
  `init` sets theta = shrink * theta_0 + perturb * theta_fresh (a fresh draw
  of `init_fn`), then descend CE(D_r) (the repair).
- `boundary_shrink` (Boundary Shrink): descend CE(D_f, y_near), y_near the
  wrong class theta_0 gives an FGSM neighbour of each forget example
  (`nearest_wrong_labels`; theta_0 is kept in the state).
- `influence_unlearning` (IU): theta += alpha * H^-1 v, v the forget
  gradient weighted against the retained one, H the damped empirical Fisher
  of the retained batch, solved exactly (`fisher_inverse_product`).

Defaults are each paper's (CIFAR-10 ResNet-18 recipes; see
docs/METHOD.md, "Baseline unlearning methods"): the default optimizer is
torch-style SGD (momentum 0.9, weight decay 5e-4 added to the gradient) at
`PAPER_LR[name]`, Adam with the same weight decay for SCRUB, SGD with
momentum and no weight decay for Boundary Shrink (its code's), and plain SGD
at lr 1 for IU (its step is set by `alpha`). Pass `tx` for any other
optimizer (then leave `lr` alone). A small problem needs its own
learning rate and step count, chosen on a validation split.

Batches are `{"image": [B, ...], "label": [B]}`. A method ignores a batch it
does not use (FT and l1-sparse never read the forget batch, GA and Boundary
Shrink never the retained one), which may then be None; any batch given is
checked: empty batches, image/label count mismatches, non-integer labels and
labels outside the model's classes raise ValueError (the label range is checked when the
labels are concrete, i.e. not when `step` is itself traced inside a caller's
`jax.jit`).
"""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from forsaken_jax import losses
from forsaken_jax.unlearn.reference import check_batch
from forsaken_jax.unlearn.removal import check_shrink_perturb, shrink_perturb

Params = Any
Batch = dict[str, jax.Array]
ApplyFn = Callable[[Params, jax.Array], jax.Array]
Metrics = dict[str, jax.Array]

# The learning rates of the default optimizers, from each method's paper.
PAPER_LR = {
    "finetune": 1e-2,
    "gradient_ascent": 1e-4,
    "random_labels": 1e-2,
    "neggrad_plus": 1e-2,
    "l1_sparse": 1e-2,
    "salun": 1.3e-2,
    "scrub": 5e-4,
    "shrink_perturb": 5e-3,  # the removal step's repair (Adam), docs/METHOD.md
    "boundary_shrink": 1e-5,  # Chen et al.'s code: SGD, momentum 0.9, no weight decay
    "influence_unlearning": 1.0,  # plain SGD applying alpha * H^-1 v as it is
}
PAPER_MOMENTUM = 0.9
PAPER_WEIGHT_DECAY = 5e-4

__all__ = [
    "METHODS", "PAPER_LR", "Unlearner", "UnlearnerState", "fisher_inverse_product",
    "make_boundary_shrink", "make_finetune", "make_gradient_ascent",
    "make_influence_unlearning", "make_l1_sparse", "make_method", "make_neggrad_plus",
    "make_random_labels", "make_salun", "make_scrub", "make_shrink_perturb",
    "nearest_wrong_labels", "paper_adam", "paper_sgd", "random_wrong_labels", "saliency_mask",
]


class UnlearnerState(NamedTuple):
  """The state of every method: a pytree of arrays.

  Attributes:
    params: the model's current parameters.
    opt_state: the optimizer's state.
    step: `int32 []`, updates done so far.
    key: `uint32` raw key data (`jax.random.key_data`) of the method's PRNG
      key; step t draws from `fold_in(key, t)`.
    extras: the method's own arrays (`{}` for most; SalUn: `{"theta_0",
      "mask"}`; SCRUB: `{"teacher"}`; Boundary Shrink: `{"theta_0"}`).
  """

  params: Params
  opt_state: Any
  step: jax.Array
  key: jax.Array
  extras: dict[str, Any]


class Unlearner(NamedTuple):
  """A method's functions (see the module docstring).

  Attributes:
    init: `(params, forget, retain, key) -> UnlearnerState`. `forget` and
      `retain` are batches or stacks of batches (`[K, B, ...]`) of the whole
      sets; only methods that precompute from them read them (SalUn's mask
      reads `forget`), and either may be None where unused.
    step: `(state, forget_batch, retain_batch) -> (state, metrics)`: one
      compiled update; `metrics` are scalars measured before it
      (`"loss"` is the objective descended).
    run: `(state, forget_batches, retain_batches) -> state`: T updates in one
      compiled `lax.scan`, batches stacked `[T, B, ...]` (the same T for both).
  """

  init: Callable[..., UnlearnerState]
  step: Callable[..., tuple[UnlearnerState, Metrics]]
  run: Callable[..., UnlearnerState]


# ----------------------------------------------------------------------------- helpers


def paper_sgd(lr: float, *, momentum: float = PAPER_MOMENTUM,
              weight_decay: float = PAPER_WEIGHT_DECAY) -> optax.GradientTransformation:
  """`torch.optim.SGD(lr, momentum, weight_decay)`: decay added to the gradient first."""
  return optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(lr, momentum=momentum))


def paper_adam(lr: float, *,
               weight_decay: float = PAPER_WEIGHT_DECAY) -> optax.GradientTransformation:
  """`torch.optim.Adam(lr, weight_decay)`: coupled (L2) decay, not AdamW."""
  return optax.chain(optax.add_decayed_weights(weight_decay), optax.adam(lr))


def _check_positive(name: str, value: float) -> None:
  if not value > 0:
    raise ValueError(f"{name} must be positive, got {value!r}")


def _check_in(name: str, value: float, low: float, high: float, *, open_low: bool = False) -> None:
  ok = (low < value <= high) if open_low else (low <= value <= high)
  if not ok:
    interval = f"({low}, {high}]" if open_low else f"[{low}, {high}]"
    raise ValueError(f"{name} must lie in {interval}, got {value!r}")


def _optimizer(name: str, tx: optax.GradientTransformation | None, lr: float,
               build: Callable[[float], optax.GradientTransformation]
               ) -> optax.GradientTransformation:
  """`tx`, or the paper's optimizer `build(lr)`; refuses a changed `lr` beside `tx`."""
  _check_positive("lr", lr)
  if tx is None:
    return build(lr)
  if lr != PAPER_LR[name]:
    raise ValueError(f"pass either lr (for the default optimizer) or tx, not both; got lr={lr!r} "
                     "and a tx")
  return tx


def _mean_loss(loss_fn: losses.LossFn, logits: jax.Array, labels: jax.Array) -> jax.Array:
  return jnp.mean(loss_fn(logits, labels))


def _key_data(key: jax.Array) -> jax.Array:
  """The raw `uint32` data of a typed key; a raw key as is."""
  key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    return jax.random.key_data(key)
  if key.dtype != jnp.uint32:
    raise ValueError(f"key must be a jax.random.key or raw uint32 key data, got dtype {key.dtype}")
  return key


def _step_key(state: UnlearnerState) -> jax.Array:
  return jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)


def _descend(tx: optax.GradientTransformation, objective: Callable, params: Params,
             opt_state: Any) -> tuple[Params, Any, Metrics]:
  """One `tx` step down `objective(params) -> (loss, metrics)`.

  Returns:
    `(params, opt_state, {"loss": loss, **metrics})`, what a method's update returns.
  """
  (loss, metrics), grads = jax.value_and_grad(objective, has_aux=True)(params)
  updates, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, {"loss": loss, **metrics}


def random_wrong_labels(key: jax.Array, labels: jax.Array, num_classes: int, *,
                        exclude_true: bool = True) -> jax.Array:
  """Labels drawn uniformly from the classes other than `labels` (or from all).

  Args:
    key: PRNG key.
    labels: `[B]` true labels.
    num_classes: C.
    exclude_true: draw from the C - 1 wrong classes; False draws from all C
      (SalUn's public code).

  Returns:
    `[B]` labels of `labels`' dtype.
  """
  if exclude_true:
    shift = jax.random.randint(key, jnp.shape(labels), 1, num_classes)
    return ((labels + shift) % num_classes).astype(labels.dtype)
  return jax.random.randint(key, jnp.shape(labels), 0, num_classes).astype(labels.dtype)


def saliency_mask(saliency: Params, *, fraction: float) -> Params:
  """The top `fraction` of all coordinates by `|saliency|`, one global threshold.

  Exactly `int(fraction * n)` of the n coordinates are selected (SalUn's
  `threshold_index`); ties go to the coordinate that comes first in
  `jax.tree.leaves` order, flattened row-major.

  Args:
    saliency: a pytree of arrays (e.g. gradients).
    fraction: in (0, 1].

  Returns:
    A bool pytree of `saliency`'s structure and shapes.
  """
  _check_in("mask_fraction", fraction, 0.0, 1.0, open_low=True)
  leaves, treedef = jax.tree.flatten(saliency)
  flat = jnp.concatenate([jnp.abs(jnp.reshape(x, -1)).astype(jnp.float32) for x in leaves])
  count = int(fraction * flat.size)
  if count < 1:
    raise ValueError(f"mask_fraction={fraction!r} selects no weight out of {flat.size}")
  order = jnp.argsort(-flat, stable=True)
  selected = jnp.zeros(flat.shape, bool).at[order[:count]].set(True)
  out, start = [], 0
  for x in leaves:
    out.append(jnp.reshape(selected[start:start + x.size], jnp.shape(x)))
    start += x.size
  return jax.tree.unflatten(treedef, out)


# ----------------------------------------------------------------------------- the shape


def _check_same_example_shape(a: Batch | None, b: Batch | None, a_name: str, b_name: str) -> None:
  if a is None or b is None:
    return
  a_shape = jnp.shape(a["image"])[jnp.ndim(a["label"]):]
  b_shape = jnp.shape(b["image"])[jnp.ndim(b["label"]):]
  if a_shape != b_shape:
    raise ValueError(f"{a_name} examples have shape {a_shape} but {b_name} examples have shape "
                     f"{b_shape}")


def _check_label_range(batch: Batch, name: str, num_classes: int) -> None:
  try:
    labels = np.asarray(batch["label"])
  except jax.errors.TracerArrayConversionError:
    return  # traced inside a caller's jit: the range cannot be checked here
  if labels.size == 0:
    return  # zero steps
  low, high = int(labels.min()), int(labels.max())
  if low < 0 or high >= num_classes:
    raise ValueError(f"{name}['label'] has values outside [0, {num_classes}) (the model has "
                     f"{num_classes} classes): min {low}, max {high}")


def _build(name: str, apply_fn: ApplyFn, tx: optax.GradientTransformation, *,
           update: Callable[[UnlearnerState, Batch | None, Batch | None],
                            tuple[Params, Any, Metrics]],
           uses_forget: bool = True, uses_retain: bool = True,
           init_extras: Callable[[Params, Batch | None, Batch | None], dict] | None = None,
           init_params: Callable[[Params, jax.Array], Params] | None = None
           ) -> Unlearner:
  """An `Unlearner` around `update(state, forget, retain) -> (params, opt_state, metrics)`.

  `init_params(params, key)`, when given, replaces the starting parameters
  (before the optimizer state is built from them).
  """
  classes_cache: dict[Any, int] = {}

  def num_classes(params, batch, stacked_dims):
    example = jax.ShapeDtypeStruct((1, *jnp.shape(batch["image"])[stacked_dims:]),
                                   jnp.result_type(batch["image"]))
    signature = (jax.tree.structure(params), example.shape, example.dtype,
                 tuple((jnp.shape(p), jnp.result_type(p)) for p in jax.tree.leaves(params)))
    if signature not in classes_cache:
      classes_cache[signature] = jax.eval_shape(apply_fn, params, example).shape[-1]
    return classes_cache[signature]

  def checked(params, forget, retain, *, mode):
    """Validates the batches; returns them with unused ones dropped (None)."""
    stacked = mode != "step"
    names = ("forget_batches", "retain_batches") if mode == "run" else (
        ("forget", "retain") if mode == "init" else ("forget_batch", "retain_batch"))
    for batch, batch_name, used in ((forget, names[0], uses_forget),
                                    (retain, names[1], uses_retain)):
      if batch is None:
        if used and mode != "init":
          raise ValueError(f"{name} needs {batch_name}, got None")
        continue
      check_batch(batch, batch_name, stacked=stacked)
      if mode == "run" and jnp.ndim(batch["label"]) != 2:
        raise ValueError(f"{batch_name} must be stacked on a leading step axis "
                         f"(label [T, B]), got label shape {jnp.shape(batch['label'])}")
      _check_label_range(batch, batch_name,
                         num_classes(params, batch, jnp.ndim(batch["label"])))
    _check_same_example_shape(forget, retain, names[0], names[1])
    if mode == "run" and forget is not None and retain is not None and uses_forget and uses_retain:
      steps = (jnp.shape(forget["label"])[0], jnp.shape(retain["label"])[0])
      if steps[0] != steps[1]:
        raise ValueError(f"{names[0]} has {steps[0]} steps but {names[1]} has {steps[1]}")
    return (forget if uses_forget else None), (retain if uses_retain else None)

  def one_step(state, forget, retain):
    params, opt_state, metrics = update(state, forget, retain)
    return state._replace(params=params, opt_state=opt_state, step=state.step + 1), metrics

  def run_all(state, forget, retain):
    return jax.lax.scan(lambda s, batches: (one_step(s, *batches)[0], None), state,
                        (forget, retain))[0]

  jitted_step, jitted_run = jax.jit(one_step), jax.jit(run_all)
  jitted_extras = None if init_extras is None else jax.jit(init_extras)
  jitted_init_params = None if init_params is None else jax.jit(init_params)

  def check_state(state):
    if not isinstance(state, UnlearnerState):
      raise ValueError(f"state must be the UnlearnerState from init, got {type(state).__name__}")

  def init(params, forget, retain, key):
    forget_used, retain_used = checked(params, forget, retain, mode="init")
    extras = {} if jitted_extras is None else jitted_extras(params, forget_used, retain_used)
    key = _key_data(key)
    if jitted_init_params is not None:
      params = jitted_init_params(params, key)
    return UnlearnerState(params=params, opt_state=tx.init(params),
                          step=jnp.zeros((), jnp.int32), key=key, extras=extras)

  def step(state, forget_batch, retain_batch):
    check_state(state)
    forget_batch, retain_batch = checked(state.params, forget_batch, retain_batch, mode="step")
    return jitted_step(state, forget_batch, retain_batch)

  def run(state, forget_batches, retain_batches):
    check_state(state)
    forget_batches, retain_batches = checked(state.params, forget_batches, retain_batches,
                                             mode="run")
    return jitted_run(state, forget_batches, retain_batches)

  return Unlearner(init, step, run)


def _retain_descent(apply_fn: ApplyFn, loss_fn: losses.LossFn,
                    tx: optax.GradientTransformation) -> Callable:
  """The update that descends CE(D_r) alone (FT's, and shrink-and-perturb's repair)."""

  def update(state, forget, retain):
    del forget

    def objective(p):
      loss = _mean_loss(loss_fn, apply_fn(p, retain["image"]), retain["label"])
      return loss, {"retain_loss": loss}

    return _descend(tx, objective, state.params, state.opt_state)

  return update


# ----------------------------------------------------------------------------- methods


def make_finetune(apply_fn: ApplyFn, *, lr: float = PAPER_LR["finetune"],
                  tx: optax.GradientTransformation | None = None,
                  loss_fn: losses.LossFn = losses.cross_entropy) -> Unlearner:
  """FT: fine-tune on the retained data, relying on catastrophic forgetting.

  Args:
    apply_fn: `(params, images) -> logits`.
    lr: learning rate of the default optimizer (`paper_sgd`).
    tx: the optimizer instead of the default.
    loss_fn: per-example loss.

  Returns:
    An `Unlearner`; metrics `loss` (= `retain_loss`).

  References:
    Warnecke et al., "Machine Unlearning of Features and Labels", NDSS 2023,
    https://arxiv.org/abs/2108.11577 (as the FT baseline of SalUn).
  """
  tx = _optimizer("finetune", tx, lr, paper_sgd)
  return _build("finetune", apply_fn, tx, update=_retain_descent(apply_fn, loss_fn, tx),
                uses_forget=False)


def make_gradient_ascent(apply_fn: ApplyFn, *, lr: float = PAPER_LR["gradient_ascent"],
                         tx: optax.GradientTransformation | None = None,
                         loss_fn: losses.LossFn = losses.cross_entropy) -> Unlearner:
  """GA: ascend the forget loss (descend `-CE(D_f)`).

  Args:
    apply_fn: `(params, images) -> logits`.
    lr: learning rate of the default optimizer (`paper_sgd`); the papers use
      1e-4 to 1e-3, and at the low end GA often barely moves.
    tx: the optimizer instead of the default.
    loss_fn: per-example loss.

  Returns:
    An `Unlearner`; metrics `loss` (= -`forget_loss`), `forget_loss`.

  References:
    Thudi et al., "Unrolling SGD: Understanding Factors Influencing Machine
    Unlearning", EuroS&P 2022, https://arxiv.org/abs/2109.13398.
  """
  tx = _optimizer("gradient_ascent", tx, lr, paper_sgd)

  def update(state, forget, retain):
    del retain

    def objective(p):
      forget_loss = _mean_loss(loss_fn, apply_fn(p, forget["image"]), forget["label"])
      return -forget_loss, {"forget_loss": forget_loss}

    return _descend(tx, objective, state.params, state.opt_state)

  return _build("gradient_ascent", apply_fn, tx, update=update, uses_retain=False)


def _random_label_objective(apply_fn, loss_fn, key, forget, retain, exclude_true):
  """`objective(p)` of RL: CE of D_f under random wrong labels + CE of D_r."""

  def objective(p):
    forget_logits = apply_fn(p, forget["image"])
    labels = random_wrong_labels(key, forget["label"], forget_logits.shape[-1],
                                 exclude_true=exclude_true)
    forget_loss = _mean_loss(loss_fn, forget_logits, labels)
    retain_loss = _mean_loss(loss_fn, apply_fn(p, retain["image"]), retain["label"])
    return forget_loss + retain_loss, {"forget_random_label_loss": forget_loss,
                                       "retain_loss": retain_loss}

  return objective


def make_random_labels(apply_fn: ApplyFn, *, lr: float = PAPER_LR["random_labels"],
                       exclude_true: bool = True,
                       tx: optax.GradientTransformation | None = None,
                       loss_fn: losses.LossFn = losses.cross_entropy) -> Unlearner:
  """RL: learn random wrong labels on D_f while training on D_r.

  Each step descends `CE(D_f, y~) + CE(D_r, y)`, with `y~` drawn afresh every
  step from `fold_in(key, step)`, in one update. (SalUn's code, on CIFAR-10,
  makes a pass over the relabelled D_f, then a pass over D_r, with separate
  updates; on CIFAR-100 it mixes both into one loader.)

  Args:
    apply_fn: `(params, images) -> logits`.
    lr: learning rate of the default optimizer (`paper_sgd`).
    exclude_true: draw `y~` from the wrong classes only (Graves et al.);
      False draws from all classes, as SalUn's public code does.
    tx: the optimizer instead of the default.
    loss_fn: per-example loss.

  Returns:
    An `Unlearner`; metrics `loss`, `forget_random_label_loss`, `retain_loss`.

  References:
    Graves et al., "Amnesiac Machine Learning", AAAI 2021,
    https://arxiv.org/abs/2010.10981; Fan et al., "SalUn: Empowering Machine
    Unlearning via Gradient-based Weight Saliency in Both Image Classification
    and Generation", ICLR 2024, https://arxiv.org/abs/2310.12508.
  """
  tx = _optimizer("random_labels", tx, lr, paper_sgd)

  def update(state, forget, retain):
    objective = _random_label_objective(apply_fn, loss_fn, _step_key(state), forget, retain,
                                        exclude_true)
    return _descend(tx, objective, state.params, state.opt_state)

  return _build("random_labels", apply_fn, tx, update=update)


def make_neggrad_plus(apply_fn: ApplyFn, *, alpha: float = 0.95,
                      lr: float = PAPER_LR["neggrad_plus"],
                      tx: optax.GradientTransformation | None = None,
                      loss_fn: losses.LossFn = losses.cross_entropy) -> Unlearner:
  """NegGrad+: descend `alpha * CE(D_r) - (1 - alpha) * CE(D_f)`.

  Args:
    apply_fn: `(params, images) -> logits`.
    alpha: the retain weight, in [0, 1].
    lr: learning rate of the default optimizer (`paper_sgd`).
    tx: the optimizer instead of the default.
    loss_fn: per-example loss.

  Returns:
    An `Unlearner`; metrics `loss`, `forget_loss`, `retain_loss`.

  References:
    Kurmanji et al., "Towards Unbounded Machine Unlearning", NeurIPS 2023,
    https://arxiv.org/abs/2302.09880.
  """
  _check_in("alpha", alpha, 0.0, 1.0)
  tx = _optimizer("neggrad_plus", tx, lr, paper_sgd)

  def update(state, forget, retain):

    def objective(p):
      forget_loss = _mean_loss(loss_fn, apply_fn(p, forget["image"]), forget["label"])
      retain_loss = _mean_loss(loss_fn, apply_fn(p, retain["image"]), retain["label"])
      return (alpha * retain_loss - (1.0 - alpha) * forget_loss,
              {"forget_loss": forget_loss, "retain_loss": retain_loss})

    return _descend(tx, objective, state.params, state.opt_state)

  return _build("neggrad_plus", apply_fn, tx, update=update)


def _l1_norm(params: Params) -> jax.Array:
  return sum(jnp.sum(jnp.abs(x)) for x in jax.tree.leaves(params))


def make_l1_sparse(apply_fn: ApplyFn, *, num_steps: int, gamma: float = 5e-5,
                   lr: float = PAPER_LR["l1_sparse"],
                   tx: optax.GradientTransformation | None = None,
                   loss_fn: losses.LossFn = losses.cross_entropy) -> Unlearner:
  """l1-sparse: FT plus a decaying L1 penalty, `CE(D_r) + gamma_t * ||theta||_1`.

  `gamma_t = gamma * (1 - t / num_steps)` at step t (the paper decays it per
  epoch the same way), and 0 from step `num_steps` on. The norm sums over
  every parameter.

  Args:
    apply_fn: `(params, images) -> logits`.
    num_steps: the steps over which gamma decays to 0 (positive; no default,
      the paper counts epochs).
    gamma: the initial penalty weight (the paper searches 1e-6 to 1e-4).
    lr: learning rate of the default optimizer (`paper_sgd`).
    tx: the optimizer instead of the default.
    loss_fn: per-example loss.

  Returns:
    An `Unlearner`; metrics `loss`, `retain_loss`, `l1_norm`, `gamma`.

  References:
    Jia et al., "Model Sparsity Can Simplify Machine Unlearning", NeurIPS
    2023, https://arxiv.org/abs/2304.04934.
  """
  if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
    raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
  if not gamma >= 0:
    raise ValueError(f"gamma must be non-negative, got {gamma!r}")
  tx = _optimizer("l1_sparse", tx, lr, paper_sgd)

  def update(state, forget, retain):
    del forget
    gamma_t = gamma * jnp.maximum(0.0, 1.0 - state.step.astype(jnp.float32) / num_steps)

    def objective(p):
      retain_loss = _mean_loss(loss_fn, apply_fn(p, retain["image"]), retain["label"])
      norm = _l1_norm(p)
      return retain_loss + gamma_t * norm, {"retain_loss": retain_loss, "l1_norm": norm,
                                            "gamma": gamma_t}

    return _descend(tx, objective, state.params, state.opt_state)

  return _build("l1_sparse", apply_fn, tx, update=update, uses_forget=False)


def make_salun(apply_fn: ApplyFn, *, mask_fraction: float = 0.5,
               lr: float = PAPER_LR["salun"], exclude_true: bool = True,
               tx: optax.GradientTransformation | None = None,
               loss_fn: losses.LossFn = losses.cross_entropy) -> Unlearner:
  """SalUn: random-label unlearning restricted to the salient weights.

  `init` computes the saliency `|sum over D_f's batches of grad mean CE|` at
  theta_0 (the gradient of SalUn's forgetting loss -CE, up to sign) and keeps
  the top `mask_fraction` of all coordinates (`saliency_mask`). Each step is
  RL's (`make_random_labels`) with the gradient multiplied by the mask, and
  every weight outside the mask is reset to theta_0 after the update, so it
  stays there exactly (SalUn's code lets weight decay move them).

  Args:
    apply_fn: `(params, images) -> logits`.
    mask_fraction: the share of weights updated, in (0, 1].
    lr: learning rate of the default optimizer (`paper_sgd`).
    exclude_true: as in `make_random_labels`.
    tx: the optimizer instead of the default.
    loss_fn: per-example loss.

  Returns:
    An `Unlearner` whose `init` needs the forget set (one batch or a stack
    `[K, B, ...]`); state extras `theta_0`, `mask`; metrics as RL's.

  References:
    Fan et al., "SalUn: Empowering Machine Unlearning via Gradient-based
    Weight Saliency in Both Image Classification and Generation", ICLR 2024,
    https://arxiv.org/abs/2310.12508.
  """
  _check_in("mask_fraction", mask_fraction, 0.0, 1.0, open_low=True)
  tx = _optimizer("salun", tx, lr, paper_sgd)

  def batch_grad(params, batch):
    return jax.grad(lambda p: _mean_loss(loss_fn, apply_fn(p, batch["image"]), batch["label"]))(
        params)

  def init_extras(params, forget, retain):
    del retain
    if forget is None:
      raise ValueError("salun needs the forget set in init (its saliency mask)")
    if jnp.ndim(forget["label"]) == 1:
      grads = batch_grad(params, forget)
    else:
      zeros = jax.tree.map(jnp.zeros_like, params)
      grads = jax.lax.scan(
          lambda acc, b: (jax.tree.map(jnp.add, acc, batch_grad(params, b)), None), zeros,
          forget)[0]
    return {"theta_0": params, "mask": saliency_mask(grads, fraction=mask_fraction)}

  def update(state, forget, retain):
    mask, theta_0 = state.extras["mask"], state.extras["theta_0"]
    objective = _random_label_objective(apply_fn, loss_fn, _step_key(state), forget, retain,
                                        exclude_true)
    (loss, metrics), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    grads = jax.tree.map(lambda m, g: jnp.where(m, g, jnp.zeros_like(g)), mask, grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = jax.tree.map(lambda m, new, old: jnp.where(m, new, old), mask,
                          optax.apply_updates(state.params, updates), theta_0)
    return params, opt_state, {"loss": loss, **metrics}

  return _build("salun", apply_fn, tx, update=update, init_extras=init_extras)


def _distill_kl(teacher_logits: jax.Array, student_logits: jax.Array,
                temperature: float) -> jax.Array:
  """`T^2 * mean_batch KL(softmax(z_t / T) || softmax(z_s / T))` (SCRUB's DistillKL)."""
  log_t = jax.nn.log_softmax(teacher_logits / temperature, axis=-1)
  log_s = jax.nn.log_softmax(student_logits / temperature, axis=-1)
  return jnp.mean(jnp.sum(jnp.exp(log_t) * (log_t - log_s), axis=-1)) * temperature ** 2


def make_scrub(apply_fn: ApplyFn, *, max_steps: int = 3, alpha: float = 0.5, gamma: float = 1.0,
               temperature: float = 2.0, lr: float = PAPER_LR["scrub"],
               tx: optax.GradientTransformation | None = None,
               loss_fn: losses.LossFn = losses.cross_entropy) -> Unlearner:
  """SCRUB: a student moves away from the original model on D_f, stays near it on D_r.

  The teacher is theta_0 (frozen, kept in the state). Step t is

  - if t < `max_steps`: a max update, one `tx` step descending
    `-KL(teacher || student)` on the forget batch; then
  - always: a min update descending `gamma * CE(D_r) + alpha * KL(teacher ||
    student)` on the retained batch,

  both KLs at temperature T (scaled by T^2), both through the one optimizer
  state. The paper alternates per epoch (a max pass over D_f in each of the
  first msteps = 3 of 10 epochs, then a min pass over D_r); with one forget
  batch per epoch, `max_steps=3` is that schedule step for step; otherwise
  scale it by the forget batches per epoch. At t = 0 student = teacher, where
  the KL's gradient is 0: the first max update moves nothing.

  Args:
    apply_fn: `(params, images) -> logits`.
    max_steps: steps with a max update (non-negative).
    alpha: weight of the retain KL (non-negative).
    gamma: weight of the retain CE (non-negative).
    temperature: the distillation temperature T (positive).
    lr: learning rate of the default optimizer (`paper_adam`, the
      small-scale setting's Adam; the paper also decays it 10x at epochs 5,
      8 and 9: pass a schedule in `tx` for that).
    tx: the optimizer instead of the default.
    loss_fn: per-example loss of the CE term.

  Returns:
    An `Unlearner`; state extras `teacher`; metrics `loss` (the min
    objective), `retain_loss`, `retain_kl`, `forget_kl` (before the step's
    updates), `max_step` (1.0 when the step made a max update).

  References:
    Kurmanji et al., "Towards Unbounded Machine Unlearning", NeurIPS 2023,
    https://arxiv.org/abs/2302.09880.
  """
  if isinstance(max_steps, bool) or not isinstance(max_steps, (int, np.integer)) or max_steps < 0:
    raise ValueError(f"max_steps must be a non-negative integer, got {max_steps!r}")
  for name, value in (("alpha", alpha), ("gamma", gamma)):
    if not value >= 0:
      raise ValueError(f"{name} must be non-negative, got {value!r}")
  _check_positive("temperature", temperature)
  tx = _optimizer("scrub", tx, lr, paper_adam)

  def init_extras(params, forget, retain):
    del forget, retain
    return {"teacher": params}

  def forget_kl(p, teacher, forget):
    return _distill_kl(apply_fn(teacher, forget["image"]), apply_fn(p, forget["image"]),
                       temperature)

  def update(state, forget, retain):
    teacher = state.extras["teacher"]
    is_max = state.step < max_steps

    def max_update(carry):
      params, opt_state = carry
      params, opt_state, metrics = _descend(
          tx, lambda p: (-forget_kl(p, teacher, forget), {}), params, opt_state)
      return params, opt_state, -metrics["loss"]

    def no_max_update(carry):
      params, opt_state = carry
      return params, opt_state, forget_kl(params, teacher, forget)

    params, opt_state, kl_f = jax.lax.cond(is_max, max_update, no_max_update,
                                           (state.params, state.opt_state))
    teacher_logits = apply_fn(teacher, retain["image"])

    def min_objective(p):
      logits = apply_fn(p, retain["image"])
      retain_loss = _mean_loss(loss_fn, logits, retain["label"])
      kl_r = _distill_kl(teacher_logits, logits, temperature)
      return gamma * retain_loss + alpha * kl_r, {"retain_loss": retain_loss, "retain_kl": kl_r}

    params, opt_state, metrics = _descend(tx, min_objective, params, opt_state)
    return params, opt_state, {**metrics, "forget_kl": kl_f, "max_step": is_max.astype(jnp.float32)}

  return _build("scrub", apply_fn, tx, update=update, init_extras=init_extras)


def make_shrink_perturb(apply_fn: ApplyFn, *, init_fn: Callable[[jax.Array], Params],
                        shrink: float = 0.1, perturb: float = 0.1, num_steps: int | None = None,
                        lr: float = PAPER_LR["shrink_perturb"],
                        tx: optax.GradientTransformation | None = None,
                        loss_fn: losses.LossFn = losses.cross_entropy) -> Unlearner:
  """Shrink-and-perturb, then fine-tune on the retained data: Forsaken's removal step alone.

  `init` replaces the model by `shrink * theta_0 + perturb * theta_fresh`,
  theta_fresh = `init_fn` of a key split off the method's key (a fresh
  initialization of the same model); every step then descends CE(D_r), the repair. The unlearn
  phase runs the same step after the dummy gradient (docs/METHOD.md).

  Args:
    apply_fn: `(params, images) -> logits`.
    init_fn: `(key) -> params`, the model's initializer.
    shrink: in (0, 1].
    perturb: non-negative.
    num_steps: given, the default optimizer's rate decays from `lr` to 0 on a
      cosine over that many steps, as the removal step's repair does.
    lr: learning rate of the default optimizer (Adam, the removal step's).
    tx: the optimizer instead of the default (e.g. with the removal step's
      cosine decay over its steps).
    loss_fn: per-example loss.

  Returns:
    An `Unlearner`; metrics `loss` (= `retain_loss`).

  References:
    Ash & Adams, "On Warm-Starting Neural Network Training", NeurIPS 2020,
    https://arxiv.org/abs/1910.08475 (shrink and perturb).
  """
  check_shrink_perturb(shrink, perturb)
  if num_steps is not None and (isinstance(num_steps, bool) or num_steps < 1):
    raise ValueError(f"num_steps must be a positive integer or None, got {num_steps!r}")
  tx = _optimizer("shrink_perturb", tx, lr, lambda rate: optax.adam(
      rate if num_steps is None else optax.cosine_decay_schedule(rate, num_steps)))

  def reset(params, key):
    fresh = init_fn(jax.random.split(jax.random.wrap_key_data(key))[1])
    return shrink_perturb(params, fresh, shrink=shrink, perturb=perturb)

  return _build("shrink_perturb", apply_fn, tx, update=_retain_descent(apply_fn, loss_fn, tx),
                uses_forget=False, init_params=reset)


def nearest_wrong_labels(apply_fn: ApplyFn, params: Params, images: jax.Array,
                         labels: jax.Array, *, eps: float,
                         clip: tuple[float, float] | None = (0.0, 1.0),
                         loss_fn: losses.LossFn = losses.cross_entropy
                         ) -> tuple[jax.Array, jax.Array]:
  """Boundary Shrink's neighbour search: the nearest wrong class of each example.

  An untargeted FGSM step on `params`, `x_adv = clip(x + eps * sign(grad_x
  CE(x, y)))`, and the class `params` gives `x_adv` among the classes other
  than y: the class `x_adv` is classified as when the attack flips the
  prediction, otherwise the runner-up class at `x_adv`.

  Args:
    apply_fn: `(params, images) -> logits`.
    params: the model attacked (Boundary Shrink: theta_0).
    images: `[B, ...]`.
    labels: `[B]` true labels.
    eps: the FGSM step (L-infinity), in the images' units.
    clip: `(low, high)` the images' range, or None for no clipping.
    loss_fn: per-example loss the attack ascends.

  Returns:
    `(nearest, flipped)`: `[B]` wrong labels of `labels`' dtype, and `[B]`
    bool, whether the attack changed the prediction to a wrong class.
  """
  grad_x = jax.grad(lambda x: jnp.sum(loss_fn(apply_fn(params, x), labels)))(images)
  adv = images + eps * jnp.sign(grad_x)
  if clip is not None:
    adv = jnp.clip(adv, clip[0], clip[1])
  logits = apply_fn(params, jax.lax.stop_gradient(adv))
  true = jax.nn.one_hot(labels, logits.shape[-1], dtype=bool)
  nearest = jnp.argmax(jnp.where(true, -jnp.inf, logits), axis=-1).astype(labels.dtype)
  return nearest, jnp.argmax(logits, axis=-1) != labels


def make_boundary_shrink(apply_fn: ApplyFn, *, eps: float = 0.1,
                         clip: tuple[float, float] | None = (0.0, 1.0),
                         lr: float = PAPER_LR["boundary_shrink"],
                         tx: optax.GradientTransformation | None = None,
                         loss_fn: losses.LossFn = losses.cross_entropy) -> Unlearner:
  """Boundary Shrink: fine-tune D_f towards each example's nearest wrong class.

  Each step labels the forget batch with `nearest_wrong_labels` under theta_0
  (frozen, kept in the state) and descends `CE(D_f, y_near)`. The paper's
  code trains on the attacked label as it is, which is the true label when
  FGSM does not flip theta_0's prediction; here that example takes the
  runner-up wrong class at `x_adv` instead, so every label trained on is
  wrong. Not reproduced: the code rounds `x_adv` to multiples of 1/255 (8-bit
  pixels), which only matters for such images.

  Args:
    apply_fn: `(params, images) -> logits`.
    eps: FGSM's step (the paper's code: 0.1 on images in [0, 1]; positive).
    clip: the images' range `(low, high)` (the code clamps to [0, 1]), or
      None for no clipping.
    lr: learning rate of the default optimizer, torch's `SGD(lr, momentum=0.9)`
      without weight decay (the paper: lr 1e-5 for 10 epochs over D_f).
    tx: the optimizer instead of the default.
    loss_fn: per-example loss (of the attack and of the fine-tuning).

  Returns:
    An `Unlearner` that reads only forget batches; state extras `theta_0`;
    metrics `loss` (= `forget_nearest_label_loss`), `attack_flip_rate` (the
    share of the batch whose label FGSM flipped).

  References:
    Chen et al., "Boundary Unlearning: Rapid Forgetting of Deep Networks via
    Shifting the Decision Space", CVPR 2023, https://arxiv.org/abs/2303.11570.
  """
  if not (np.isfinite(eps) and eps > 0):
    raise ValueError(f"eps must be positive and finite, got {eps!r}")
  if clip is not None and (len(clip) != 2 or not clip[0] < clip[1]):
    raise ValueError(f"clip must be None or (low, high) with low < high, got {clip!r}")
  tx = _optimizer("boundary_shrink", tx, lr,
                  lambda rate: optax.sgd(rate, momentum=PAPER_MOMENTUM))

  def init_extras(params, forget, retain):
    del forget, retain
    return {"theta_0": params}

  def update(state, forget, retain):
    del retain
    nearest, flipped = nearest_wrong_labels(apply_fn, state.extras["theta_0"], forget["image"],
                                            forget["label"], eps=eps, clip=clip,
                                            loss_fn=loss_fn)

    def objective(p):
      loss = _mean_loss(loss_fn, apply_fn(p, forget["image"]), nearest)
      return loss, {"forget_nearest_label_loss": loss,
                    "attack_flip_rate": jnp.mean(flipped.astype(jnp.float32))}

    return _descend(tx, objective, state.params, state.opt_state)

  return _build("boundary_shrink", apply_fn, tx, update=update, uses_retain=False,
                init_extras=init_extras)


def fisher_inverse_product(per_example_grads: jax.Array, vector: jax.Array, *,
                           damping: float) -> jax.Array:
  """`H^-1 v` for the damped empirical Fisher `H = damping * I + G^T G / n`.

  Exact, by the Woodbury identity: `H^-1 v = (v - G^T (n * damping * I +
  G G^T)^-1 G v) / damping`, one n x n Cholesky solve for the n per-example
  gradients (the rows of G). WoodFisher's Sherman-Morrison recursion adds the
  n rank-one terms one at a time and reaches the same vector.

  Args:
    per_example_grads: `[n, P]` G, one flattened gradient per example.
    vector: `[P]` v.
    damping: the positive damping (WoodFisher's starting `H_0 = damping * I`).

  Returns:
    `[P]`, `H^-1 v`.
  """
  n = per_example_grads.shape[0]
  gram = per_example_grads @ per_example_grads.T + n * damping * jnp.eye(n, dtype=vector.dtype)
  factor = jax.scipy.linalg.cho_factor(gram)
  coefficients = jax.scipy.linalg.cho_solve(factor, per_example_grads @ vector)
  return (vector - per_example_grads.T @ coefficients) / damping


def make_influence_unlearning(apply_fn: ApplyFn, *, alpha: float = 0.2, damping: float = 1.0,
                              lr: float = PAPER_LR["influence_unlearning"],
                              tx: optax.GradientTransformation | None = None,
                              loss_fn: losses.LossFn = losses.cross_entropy) -> Unlearner:
  """IU (influence unlearning): one Newton step towards the model without D_f.

  Each step, at the current parameters, with n_f forget and n_r retained
  examples in the batches:

    v = n_f / (n_f + n_r) * (grad mean CE(D_f) - grad mean CE(D_r))
    theta <- theta + alpha * H^-1 v,  H = damping * I + (1/n_r) sum_i g_i g_i^T

  g_i the per-example gradients of the retained batch: H is their damped
  empirical Fisher, standing in for the Hessian of the retained loss, and
  H^-1 v is solved exactly (`fisher_inverse_product`). At a minimum of the
  mean loss over D_f and D_r, v = (n_f / n_r) * grad mean CE(D_f) = -grad
  mean CE(D_r), so the step is a Newton step on the retained loss: the
  influence-function estimate of the model retrained without D_f (Koh &
  Liang; Izzo et al.). One step with the whole forget set and about 1000
  retained examples as the batches is SalUn's IU baseline (its `Wfisher`: v
  as here but with the retained gradient and n_r over the whole retained
  set; H^-1 v by WoodFisher's recursion over the first ~1000 retained
  examples, starting from the identity and dividing by N = 1000, i.e.
  damping 1 and a 1000-example Fisher). Its code carries a rescaled first
  retained gradient where the recursion needs H_(k-1)^-1 g_k; that is not
  reproduced. Later steps repeat the update from where the last one left.
  The Fisher holds the `[n_r, P]` per-example gradients in memory.

  Args:
    apply_fn: `(params, images) -> logits`.
    alpha: the step's scale (SalUn's `--alpha`, default 0.2, tuned on a grid;
      positive).
    damping: the Fisher's damping (positive).
    lr: learning rate of the default optimizer, plain SGD, which applies
      `alpha * H^-1 v` as it is at lr 1 (leave it; tune alpha).
    tx: the optimizer instead of the default; it receives `-alpha * H^-1 v`
      as the gradient.
    loss_fn: per-example loss.

  Returns:
    An `Unlearner`; metrics `loss` (= n_f / (n_f + n_r) * (`retain_loss` -
    `forget_loss`), whose preconditioned gradient the step descends),
    `forget_loss`, `retain_loss`, `step_norm` (`||alpha * H^-1 v||`).

  References:
    Koh & Liang, "Understanding Black-box Predictions via Influence
    Functions", ICML 2017, https://arxiv.org/abs/1703.04730; Izzo et al.,
    "Approximate Data Deletion from Machine Learning Models", AISTATS 2021,
    https://arxiv.org/abs/2002.10077; Singh & Alistarh, "WoodFisher:
    Efficient Second-Order Approximation for Neural Network Compression",
    NeurIPS 2020, https://arxiv.org/abs/2004.14340; Fan et al. (SalUn), ICLR
    2024, https://arxiv.org/abs/2310.12508.
  """
  _check_positive("alpha", alpha)
  _check_positive("damping", damping)
  if not (np.isfinite(alpha) and np.isfinite(damping)):
    raise ValueError(f"alpha and damping must be finite, got {alpha!r} and {damping!r}")
  tx = _optimizer("influence_unlearning", tx, lr, optax.sgd)

  def update(state, forget, retain):
    params = state.params
    flat, unravel = ravel_pytree(params)

    def example_grad(x, y):
      return jax.grad(lambda q: loss_fn(apply_fn(unravel(q), x[None]), y[None])[0])(flat)

    per_example = jax.vmap(example_grad)(retain["image"], retain["label"])
    forget_loss, forget_grad = jax.value_and_grad(
        lambda q: _mean_loss(loss_fn, apply_fn(unravel(q), forget["image"]), forget["label"]))(flat)
    retain_loss = _mean_loss(loss_fn, apply_fn(params, retain["image"]), retain["label"])
    n_f, n_r = forget["label"].shape[0], retain["label"].shape[0]
    weight = n_f / (n_f + n_r)
    direction = alpha * fisher_inverse_product(
        per_example, weight * (forget_grad - jnp.mean(per_example, axis=0)), damping=damping)
    updates, opt_state = tx.update(unravel(-direction), state.opt_state, params)
    return optax.apply_updates(params, updates), opt_state, {
        "loss": weight * (retain_loss - forget_loss), "forget_loss": forget_loss,
        "retain_loss": retain_loss, "step_norm": jnp.linalg.norm(direction)}

  return _build("influence_unlearning", apply_fn, tx, update=update)


METHODS: dict[str, Callable[..., Unlearner]] = {
    "finetune": make_finetune,
    "gradient_ascent": make_gradient_ascent,
    "random_labels": make_random_labels,
    "neggrad_plus": make_neggrad_plus,
    "l1_sparse": make_l1_sparse,
    "salun": make_salun,
    "scrub": make_scrub,
    "shrink_perturb": make_shrink_perturb,
    "boundary_shrink": make_boundary_shrink,
    "influence_unlearning": make_influence_unlearning,
}


def make_method(name: str, apply_fn: ApplyFn, **hyperparameters: Any) -> Unlearner:
  """`METHODS[name](apply_fn, **hyperparameters)`.

  Args:
    name: a key of `METHODS`.
    apply_fn: `(params, images) -> logits`.
    **hyperparameters: the factory's keyword arguments.

  Returns:
    The method's `Unlearner`.
  """
  if name not in METHODS:
    raise ValueError(f"unknown unlearning method {name!r}; choose one of {sorted(METHODS)}")
  return METHODS[name](apply_fn, **hyperparameters)
