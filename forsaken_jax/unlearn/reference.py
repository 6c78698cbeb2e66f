"""Reference distributions and the forget objective D.

Forsaken pushes the forget set's outputs towards the behaviour of
non-members. The reference describes that behaviour; it is computed once
from the original model `theta` on a non-member sample D_n (data from the
training distribution never used in training) and passed to the generator
update as a dict of arrays:

- `"paper"` (the default, a reconstruction of the paper): `{"probs": [C]}`,
  the per-class mean of the top-1 confidence on D_n, grouped by the predicted
  class and normalized to sum to 1. Classes nobody in D_n is predicted as get
  0; D is then `KL(mean softmax of f_theta'(D_u) || P)`. Note that P is not
  a frequency: a class that a single D_n example is (mis)predicted as gets a
  full share, so for class forgetting D_n should be predicted cleanly.
- `"mean_posterior"`: `{"probs": [C]}`, the mean softmax on D_n, with the
  same KL.
- `"confidence_matching"` (our improvement, not in the paper):
  `{"quantiles": [Q]}`, quantiles (at levels `(k + 0.5) / Q`) of the
  per-example logit-scaled confidence `log p_y - log sum_{j != y} p_j` on
  D_n. D is the squared 1-D
  Wasserstein-2 distance between the forget set's scores under theta' and
  these quantiles. Membership oracles (threshold attacks, LiRA) look at
  exactly this per-example statistic; a mean-posterior KL cannot control it
  when labels are arbitrary (OOD samples with random labels already have a
  near-uniform mean posterior while each one is memorized with high
  confidence in its own label).
- `"relative_confidence_matching"` (ours, the default of the experiments):
  the reference is D_n itself, `{"image", "label"}`, and D is the same
  Wasserstein distance, but to D_n's logit-scaled confidences under the
  *current* parameters theta' (held constant by a stop-gradient). Changing the
  model on the forget set also changes it on look-alike data (unlearning 200
  memorized photos moves every photo's confidence), so a reference frozen at
  theta is left behind and the forget set ends up *above* its unseen
  look-alikes; matching them under the same model is what makes the two
  indistinguishable to an auditor (docs/RESULTS.md has the comparison).
  Rank-preserving matching lets the most strongly memorized forget samples
  take the place of D_n's high tail (look-alikes whose label happens to be
  the model's natural prediction), where a membership oracle still calls them
  members; with `threshold_weight > 0` and a `"threshold"` entry in the
  reference (a membership threshold on the same statistic), D adds
  `threshold_weight * mean(relu(score - threshold))`, which pushes every
  forget sample below it.

KL smoothing: `P~ = (P + eps) / (1 + C * eps)` (eps = `kl_epsilon`, 1e-6 by
default) keeps the KL finite when a class has P_c = 0. Such a class costs
about `q_c * log(q_c / eps)`, so the KL drives the forget set's mass on class
c towards 0: that is what makes class forgetting work when D_n excludes the
forgotten class.
"""

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

# The membership statistic the objectives match; one implementation for the
# audit and the unlearner.
from forsaken_jax.mia.stats import logit_scaled_confidence

Params = Any
Batch = dict[str, jax.Array]
Reference = dict[str, jax.Array]

OBJECTIVES = ("paper", "mean_posterior", "confidence_matching", "relative_confidence_matching")
# Objectives whose reference is the non-member batch itself, scored by the
# model being changed rather than once by the original model.
RELATIVE_OBJECTIVES = ("relative_confidence_matching",)

__all__ = ["OBJECTIVES", "compute_reference", "logit_scaled_confidence", "objective_distance",
           "reference_from_logits"]


def at_least_float32(x: jax.Array) -> jax.Array:
  """Upcasts half-precision values to float32; float64 (under x64) stays float64."""
  x = jnp.asarray(x)
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def gather_explicit(x: jax.Array) -> jax.Array:
  """Replicates an array sharded over *explicit* mesh axes; anything else as is.

  Batches may arrive sharded over `P("data")` on a mesh with explicit axis
  types (the default of `jax.make_mesh`), where sorting, scatters and gathers
  along the sharded batch axis are refused. The per-example vectors this
  module sorts and groups are tiny (`[B]` or `[B, C]`), so all-gathering them
  costs nothing.

  Args:
    x: an array (traced or concrete).

  Returns:
    `x`, replicated if it was explicitly sharded.
  """
  x = jnp.asarray(x)
  sharding = jax.typeof(x).sharding
  spec = getattr(sharding, "spec", None)
  if spec is None or sharding.mesh.empty or all(p is None for p in spec):
    return x
  return jax.sharding.reshard(x, jax.NamedSharding(sharding.mesh, jax.P()))


def check_batch(batch: Batch, name: str, *, stacked: bool = False) -> None:
  """Raises ValueError unless `batch` is `{"image": [B, ...], "label": [B]}`.

  Args:
    batch: the batch dict.
    name: argument name for the error message.
    stacked: also accept a leading "number of batches" axis (`label [K, B]`).
  """
  if not isinstance(batch, dict) or "image" not in batch or "label" not in batch:
    keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
    raise ValueError(f"{name} must be a dict with 'image' and 'label', got {keys}")
  image_shape, label_shape = jnp.shape(batch["image"]), jnp.shape(batch["label"])
  lead = len(label_shape)
  if lead not in ((1, 2) if stacked else (1,)):
    raise ValueError(f"{name}['label'] must be {'[B] or [K, B]' if stacked else '[B]'}, "
                     f"got shape {label_shape}")
  if image_shape[:lead] != label_shape:
    raise ValueError(f"{name}['image'] has shape {image_shape}, whose leading axes do not match "
                     f"{name}['label'] shape {label_shape}")
  if label_shape[-1] == 0:
    raise ValueError(f"{name} is empty (label shape {label_shape})")
  if not jnp.issubdtype(jnp.result_type(batch["label"]), jnp.integer):
    raise ValueError(f"{name}['label'] must be integer, got {jnp.result_type(batch['label'])}")


def check_objective(objective: str) -> None:
  if objective not in OBJECTIVES:
    raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")


def _quantile_levels(n: int) -> jax.Array:
  """Mid-point levels `(k + 0.5) / n`: the quantiles an n-sample empirical CDF represents."""
  return (jnp.arange(n, dtype=jnp.float32) + 0.5) / n


def empirical_quantiles(values: jax.Array, num: int) -> jax.Array:
  """Quantiles of `values` at levels `(k + 0.5) / num`, k = 0..num-1.

  The sorted sample is taken to sit at its mid-point levels `(i + 0.5) / N`
  and linearly interpolated (numpy's `method="hazen"`), the same convention
  `wasserstein_to_quantiles` reads the reference with, so that `num == N`
  returns the sorted sample itself.

  Args:
    values: `[N]` sample.
    num: number of quantiles.

  Returns:
    `[num]` sorted quantiles.
  """
  return jnp.interp(_quantile_levels(num), _quantile_levels(values.shape[0]), jnp.sort(values))


def reference_from_logits(logits: jax.Array, labels: jax.Array, *, objective: str = "paper",
                          num_quantiles: int = 128) -> Reference:
  """The reference from the original model's logits on the non-member sample.

  Args:
    logits: `[N, C]` logits of f_theta on D_n (concatenate several batches
      first if D_n is larger than one batch).
    labels: `[N]` labels of D_n (used by "confidence_matching" only).
    objective: one of `OBJECTIVES`.
    num_quantiles: number of quantiles kept for "confidence_matching".

  Returns:
    `{"probs": [C]}` for "paper" / "mean_posterior", `{"quantiles":
    [num_quantiles]}` (sorted) for "confidence_matching".
  """
  check_objective(objective)
  if objective in RELATIVE_OBJECTIVES:
    raise ValueError(f"objective {objective!r} has no fixed reference: its reference is the "
                     "non-member batch itself (use compute_reference)")
  if logits.ndim != 2 or labels.shape != logits.shape[:1]:
    raise ValueError(f"logits must be [N, C] with labels [N]; got logits {logits.shape}, "
                     f"labels {labels.shape}")
  num_classes = logits.shape[-1]
  logits, labels = gather_explicit(logits), gather_explicit(labels)
  if objective == "paper":
    probs = jax.nn.softmax(at_least_float32(logits), axis=-1)
    pred = jnp.argmax(probs, axis=-1)
    conf = jnp.max(probs, axis=-1)
    total = jax.ops.segment_sum(conf, pred, num_segments=num_classes)
    count = jax.ops.segment_sum(jnp.ones_like(conf), pred, num_segments=num_classes)
    per_class = jnp.where(count > 0, total / jnp.maximum(count, 1.0), 0.0)
    return {"probs": per_class / jnp.sum(per_class)}
  if objective == "mean_posterior":
    return {"probs": jnp.mean(jax.nn.softmax(at_least_float32(logits), axis=-1), axis=0)}
  if num_quantiles < 1:
    raise ValueError(f"num_quantiles must be positive, got {num_quantiles}")
  scores = logit_scaled_confidence(at_least_float32(logits), labels)
  return {"quantiles": empirical_quantiles(scores, num_quantiles)}


def compute_reference(apply_fn: Callable[[Params, jax.Array], jax.Array], params: Params,
                      batch: Batch, *, objective: str = "paper",
                      num_quantiles: int = 128) -> Reference:
  """`reference_from_logits` on `apply_fn(params, batch["image"])`.

  Args:
    apply_fn: `(params, images) -> logits`.
    params: the original (trained) parameters theta.
    batch: the non-member sample `{"image": [N, ...], "label": [N]}`.
    objective: one of `OBJECTIVES`.
    num_quantiles: number of quantiles kept for "confidence_matching".

  Returns:
    The reference dict (see `reference_from_logits`); for
    "relative_confidence_matching", the batch itself.
  """
  check_objective(objective)
  check_batch(batch, "batch")
  if objective in RELATIVE_OBJECTIVES:
    return {"image": batch["image"], "label": batch["label"]}
  return _compute_reference(apply_fn, params, batch, objective=objective,
                            num_quantiles=num_quantiles)


@functools.partial(jax.jit, static_argnames=("apply_fn", "objective", "num_quantiles"))
def _compute_reference(apply_fn, params, batch, *, objective, num_quantiles):
  # Module-level jit with static apply_fn: repeated calls reuse the compilation.
  return reference_from_logits(apply_fn(params, batch["image"]), batch["label"],
                               objective=objective, num_quantiles=num_quantiles)


def check_reference(reference: Reference, objective: str, num_classes: int) -> None:
  """Raises ValueError unless `reference` fits `objective` and the model's classes."""
  if objective in RELATIVE_OBJECTIVES:
    check_batch({k: v for k, v in reference.items() if k != "threshold"}, "reference")
    return
  key = "quantiles" if objective == "confidence_matching" else "probs"
  if not isinstance(reference, dict) or set(reference) != {key}:
    keys = sorted(reference) if isinstance(reference, dict) else type(reference).__name__
    raise ValueError(f"reference for objective {objective!r} must be a dict with key {key!r}, "
                     f"got {keys}")
  shape = jnp.shape(reference[key])
  if key == "probs" and shape != (num_classes,):
    raise ValueError(f"reference['probs'] must have shape ({num_classes},) to match the "
                     f"model's logits, got {shape}")
  if key == "quantiles" and (len(shape) != 1 or shape[0] < 1):
    raise ValueError(f"reference['quantiles'] must be a non-empty 1-D array, got shape {shape}")


def kl_to_reference(logits: jax.Array, probs: jax.Array, *, eps: float = 1e-6) -> jax.Array:
  """`KL(mean softmax of logits || P~)` with the eps-smoothed reference P~.

  Args:
    logits: `[B, C]`.
    probs: `[C]` reference distribution P (may contain zeros).
    eps: smoothing, see the module docstring.

  Returns:
    Scalar KL in nats.
  """
  batch, num_classes = logits.shape
  # log of the mean posterior via logsumexp, so tiny probabilities keep their gradient.
  log_q = jax.nn.logsumexp(jax.nn.log_softmax(logits, axis=-1), axis=0) - jnp.log(batch)
  log_p = jnp.log((probs + eps) / (1.0 + num_classes * eps))
  return jnp.sum(jnp.exp(log_q) * (log_q - log_p))


def wasserstein_to_quantiles(scores: jax.Array, quantiles: jax.Array) -> jax.Array:
  """Squared 1-D Wasserstein-2 distance between samples and reference quantiles.

  The forget scores are sorted (differentiable: the gradient follows each
  value to its rank) and compared with the reference quantile function,
  linearly interpolated at the same mid-point levels, so forget sets and
  references of different sizes can be compared.

  Args:
    scores: `[B]` per-example statistics.
    quantiles: `[Q]` sorted reference quantiles at levels `(k + 0.5) / Q`.

  Returns:
    Scalar `mean_i (sorted(scores)_i - Q_ref((i + 0.5) / B))^2`.
  """
  target = jnp.interp(_quantile_levels(scores.shape[0]), _quantile_levels(quantiles.shape[0]),
                      quantiles)
  return jnp.mean(jnp.square(jnp.sort(scores) - target))


def objective_distance(logits: jax.Array, labels: jax.Array, reference: Reference, *,
                       objective: str, kl_epsilon: float = 1e-6,
                       reference_logits: jax.Array | None = None,
                       threshold_weight: float = 0.0) -> jax.Array:
  """The forget objective D between the forget set's outputs and the reference.

  Args:
    logits: `[B, C]` logits of the forget set.
    labels: `[B]` their (assigned) labels.
    reference: from `compute_reference`.
    objective: one of `OBJECTIVES`.
    kl_epsilon: KL smoothing for "paper" / "mean_posterior".
    reference_logits: "relative_confidence_matching" only: `[N, C]` logits of
      the reference batch under the same parameters as `logits`; no gradient
      flows through them.
    threshold_weight: "relative_confidence_matching" only: weight of the
      hinge above `reference["threshold"]` (see the module docstring).

  Returns:
    Scalar distance (0 when the forget set looks exactly like the reference).
  """
  check_objective(objective)
  check_reference(reference, objective, logits.shape[-1])
  logits, labels = gather_explicit(at_least_float32(logits)), gather_explicit(labels)
  if objective in RELATIVE_OBJECTIVES:
    if reference_logits is None:
      raise ValueError(f"objective {objective!r} needs reference_logits")
    ref_scores = logit_scaled_confidence(
        jax.lax.stop_gradient(gather_explicit(at_least_float32(reference_logits))),
        gather_explicit(reference["label"]))
    scores = logit_scaled_confidence(logits, labels)
    distance = wasserstein_to_quantiles(scores, jnp.sort(ref_scores))
    if threshold_weight:
      if "threshold" not in reference:
        raise ValueError("threshold_weight > 0 needs reference['threshold']")
      distance += threshold_weight * jnp.mean(jax.nn.relu(scores - reference["threshold"]))
    return distance
  if objective == "confidence_matching":
    return wasserstein_to_quantiles(logit_scaled_confidence(logits, labels),
                                    reference["quantiles"])
  return kl_to_reference(logits, reference["probs"], eps=kl_epsilon)
