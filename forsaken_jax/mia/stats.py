"""Per-example membership statistics computed from logits.

Every statistic maps `(logits [N, C], labels [N]) -> [N]` and is computed from
`jax.nn.log_softmax` (or directly from the logits), so it stays finite when a
probability rounds to 0 or 1 in float32. `membership_score` orients each
statistic so that a higher value always means "more likely a member".

References:
  Yeom et al. 2018, "Privacy Risk in Machine Learning" (loss threshold).
  Song & Mittal 2021, "Systematic Evaluation of Privacy Risks of Machine
  Learning Models", https://arxiv.org/abs/2003.10595 (modified entropy).
  Carlini et al. 2022, "Membership Inference Attacks From First Principles",
  https://arxiv.org/abs/2112.03570 (logit-scaled confidence).
"""

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

StatisticFn = Callable[..., jax.Array]


def _is_concrete(x) -> bool:
  """Whether `x` holds values (so data-dependent checks can run eagerly)."""
  return not isinstance(x, jax.core.Tracer)


def _check_logits_labels(logits, labels, *,
                         need_labels: bool = True) -> tuple[jax.Array, jax.Array | None]:
  """Validates shapes (always) and label range (when concrete)."""
  logits = jnp.asarray(logits)
  if not jnp.issubdtype(logits.dtype, jnp.floating):
    logits = logits.astype(jnp.result_type(float))
  if logits.ndim != 2:
    raise ValueError(f"logits must have shape [N, C]; got shape {logits.shape}")
  num_classes = logits.shape[1]
  if num_classes < 2:
    raise ValueError(f"logits must have at least 2 classes; got shape {logits.shape}")
  if labels is None:
    if need_labels:
      raise ValueError("labels must be given for this statistic; got None")
    return logits, None
  # Range-check the values before jnp.asarray: inside a trace, a host array
  # the caller closed over stays checkable, its jnp copy would not be.
  host_labels = np.asarray(labels) if _is_concrete(labels) else None
  labels = jnp.asarray(labels)
  if labels.ndim != 1 or labels.shape[0] != logits.shape[0]:
    raise ValueError(
        f"labels must have shape [N] = [{logits.shape[0]}] to match logits {logits.shape}; "
        f"got shape {labels.shape}")
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f"labels must be integers; got dtype {labels.dtype}")
  if host_labels is not None and host_labels.size:
    lo, hi = int(np.min(host_labels)), int(np.max(host_labels))
    if lo < 0 or hi >= num_classes:
      raise ValueError(f"labels must lie in [0, {num_classes}); got values in [{lo}, {hi}]")
  return logits, labels


def _true_class(x: jax.Array, labels: jax.Array) -> jax.Array:
  return jnp.take_along_axis(x, labels[:, None], axis=-1)[:, 0]


def _logsumexp_excluding(x: jax.Array, exclude: jax.Array) -> jax.Array:
  """`log(sum_{j not excluded} exp(x_j))` per row; `exclude` is a `[N, C]` bool mask."""
  return jax.nn.logsumexp(jnp.where(exclude, -jnp.inf, x), axis=-1)


def _log1m_probs(log_probs: jax.Array) -> jax.Array:
  """`log(1 - p_j)` for every class, accurate even when some `p_j` rounds to 1.

  Only the most likely class can have `p_j > 1/2`; for it, `1 - p_j` is the sum
  of the other probabilities, taken in log space. For every other class
  `log1p(-p_j)` has no cancellation.

  Args:
    log_probs: `[N, C]` log-probabilities.

  Returns:
    `[N, C]` values of `log(1 - p_j)`.
  """
  top = jax.nn.one_hot(jnp.argmax(log_probs, axis=-1), log_probs.shape[-1], dtype=bool)
  log_rest_of_top = _logsumexp_excluding(log_probs, top)
  # The top entry is masked before log1p so the unused branch cannot be
  # log(0) = -inf, whose gradient would turn into NaN through the `where`.
  probs_not_top = jnp.where(top, 0.0, jnp.exp(log_probs))
  return jnp.where(top, log_rest_of_top[:, None], jnp.log1p(-probs_not_top))


def loss(logits: ArrayLike, labels: ArrayLike) -> jax.Array:
  """Cross-entropy `-log p_y` per example (lower for members).

  Args:
    logits: `[N, C]` unnormalized scores.
    labels: `[N]` integer class labels.

  Returns:
    `[N]` losses.
  """
  return _loss(*_check_logits_labels(logits, labels))


@jax.jit
def _loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
  # `0.0 - x` rather than `-x` so a perfect prediction reads 0.0, not -0.0.
  return 0.0 - _true_class(jax.nn.log_softmax(logits, axis=-1), labels)


def top1_confidence(logits: ArrayLike, labels: ArrayLike | None = None) -> jax.Array:
  """The largest softmax probability `max_j p_j` (label-agnostic).

  Args:
    logits: `[N, C]` unnormalized scores.
    labels: ignored beyond a shape check; accepted so that every statistic has
      the same signature.

  Returns:
    `[N]` confidences in `(0, 1]`.
  """
  return _top1_confidence(_check_logits_labels(logits, labels, need_labels=False)[0])


@jax.jit
def _top1_confidence(logits: jax.Array) -> jax.Array:
  return jnp.exp(jnp.max(jax.nn.log_softmax(logits, axis=-1), axis=-1))


def true_class_confidence(logits: ArrayLike, labels: ArrayLike) -> jax.Array:
  """The probability of the true class `p_y`.

  Args:
    logits: `[N, C]` unnormalized scores.
    labels: `[N]` integer class labels.

  Returns:
    `[N]` probabilities in `[0, 1]`.
  """
  return _true_class_confidence(*_check_logits_labels(logits, labels))


@jax.jit
def _true_class_confidence(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return jnp.exp(_true_class(jax.nn.log_softmax(logits, axis=-1), labels))


def entropy(logits: ArrayLike, labels: ArrayLike | None = None) -> jax.Array:
  """Shannon entropy `-sum_j p_j log p_j` of the prediction (label-agnostic).

  Args:
    logits: `[N, C]` unnormalized scores.
    labels: ignored beyond a shape check.

  Returns:
    `[N]` entropies in nats.
  """
  return _entropy(_check_logits_labels(logits, labels, need_labels=False)[0])


@jax.jit
def _entropy(logits: jax.Array) -> jax.Array:
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  probs = jnp.exp(log_probs)
  # 0 * log 0 = 0; the `where` also keeps -inf logits from producing 0 * -inf.
  return 0.0 - jnp.sum(jnp.where(probs > 0, probs * log_probs, 0.0), axis=-1)


def modified_entropy(logits: ArrayLike, labels: ArrayLike) -> jax.Array:
  """Song & Mittal's modified prediction entropy (lower for members).

  `Mentr = -(1 - p_y) log p_y - sum_{j != y} p_j log(1 - p_j)`.

  Unlike the entropy it uses the label: a confident wrong prediction gets a
  large value. Both `1 - p_y` and `log(1 - p_j)` are taken from sums of the
  other probabilities in log space, so the result stays finite when a
  probability rounds to 1 (a naive `log(1 - p)` gives `-inf` there).

  Args:
    logits: `[N, C]` unnormalized scores.
    labels: `[N]` integer class labels.

  Returns:
    `[N]` non-negative values.
  """
  return _modified_entropy(*_check_logits_labels(logits, labels))


@jax.jit
def _modified_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  probs = jnp.exp(log_probs)
  is_label = jax.nn.one_hot(labels, logits.shape[-1], dtype=bool)
  log1m = _log1m_probs(log_probs)
  true_term = -jnp.exp(_true_class(log1m, labels)) * _true_class(log_probs, labels)
  other_terms = jnp.where(is_label | (probs == 0), 0.0, probs * log1m)
  return true_term - jnp.sum(other_terms, axis=-1)


def logit_scaled_confidence(logits: ArrayLike, labels: ArrayLike) -> jax.Array:
  """LiRA's statistic `log p_y - log(sum_{j != y} p_j)` (higher for members).

  The softmax normalizer cancels, so it is computed from the logits as
  `z_y - logsumexp_{j != y} z_j`: finite even when `p_y` rounds to 1.

  Args:
    logits: `[N, C]` unnormalized scores.
    labels: `[N]` integer class labels.

  Returns:
    `[N]` real values.
  """
  return _logit_scaled_confidence(*_check_logits_labels(logits, labels))


@jax.jit
def _logit_scaled_confidence(logits: jax.Array, labels: jax.Array) -> jax.Array:
  is_label = jax.nn.one_hot(labels, logits.shape[-1], dtype=bool)
  return _true_class(logits, labels) - _logsumexp_excluding(logits, is_label)


STATISTICS: dict[str, StatisticFn] = {
    "loss": loss,
    "top1_confidence": top1_confidence,
    "true_class_confidence": true_class_confidence,
    "entropy": entropy,
    "modified_entropy": modified_entropy,
    "logit_scaled_confidence": logit_scaled_confidence,
}

# +1: the statistic is larger for members; -1: smaller for members.
MEMBERSHIP_SIGN: dict[str, float] = {
    "loss": -1.0,
    "top1_confidence": 1.0,
    "true_class_confidence": 1.0,
    "entropy": -1.0,
    "modified_entropy": -1.0,
    "logit_scaled_confidence": 1.0,
}


def _get(name: str) -> StatisticFn:
  if name not in STATISTICS:
    raise ValueError(f"unknown statistic {name!r}; choose one of {sorted(STATISTICS)}")
  return STATISTICS[name]


def compute_statistic(name: str, logits: ArrayLike, labels: ArrayLike) -> jax.Array:
  """Computes the statistic called `name` (see `STATISTICS`), unoriented.

  Args:
    name: a key of `STATISTICS`.
    logits: `[N, C]` unnormalized scores.
    labels: `[N]` integer class labels.

  Returns:
    `[N]` values of the statistic.
  """
  return _get(name)(logits, labels)


def membership_score(name: str, logits: ArrayLike, labels: ArrayLike) -> jax.Array:
  """The statistic `name`, signed so that higher means more likely a member.

  Losses and entropies are negated; confidences are returned as they are.

  Args:
    name: a key of `STATISTICS`.
    logits: `[N, C]` unnormalized scores.
    labels: `[N]` integer class labels.

  Returns:
    `[N]` membership scores.

  Example:
    >>> logits = jnp.array([[4.0, 0.0], [0.5, 0.0]])
    >>> s = membership_score("loss", logits, jnp.array([0, 0]))
    >>> bool(s[0] > s[1])  # the more confident prediction looks more like a member
    True
  """
  values = _get(name)(logits, labels)
  return MEMBERSHIP_SIGN[name] * values
