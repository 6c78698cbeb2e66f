"""ROC metrics for membership inference.

Scores follow one convention throughout the package: higher means "more
likely a member", and the attack predicts member when `score >= threshold`.
Members are the positive class.

`roc_auc`, `tpr_at_fpr`, `best_balanced_accuracy` and `balanced_accuracy` have
static output shapes and can be jitted (`fpr` of `tpr_at_fpr` is static).
`roc_curve` returns one point per distinct threshold, a data-dependent size,
so it runs eagerly; `summarize` returns Python floats for reports.

Reference:
  Carlini et al. 2022, "Membership Inference Attacks From First Principles",
  https://arxiv.org/abs/2112.03570 (why TPR at low FPR is the headline number).
"""

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from forsaken_jax.mia.stats import _is_concrete


def _float_dtype():
  return jnp.result_type(float)


def _as_scores(x, name: str) -> jax.Array:
  """A non-empty 1-D float array without NaN (NaN checked when concrete)."""
  x = jnp.asarray(x)
  if x.ndim != 1:
    raise ValueError(f"{name} must be a 1-D array of scores; got shape {x.shape}")
  if x.shape[0] == 0:
    raise ValueError(f"{name} must not be empty; got shape {x.shape}")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    x = x.astype(_float_dtype())
  if _is_concrete(x):
    nan = np.isnan(np.asarray(x))
    if nan.any():
      raise ValueError(f"{name} contains NaN at index {int(np.argmax(nan))}")
  return x


def _as_bool(x, name: str) -> jax.Array:
  """A 1-D boolean array; integer input must hold only 0 and 1."""
  x = jnp.asarray(x)
  if x.ndim != 1:
    raise ValueError(f"{name} must be a 1-D boolean array; got shape {x.shape}")
  if x.dtype == jnp.bool_:
    return x
  if not jnp.issubdtype(x.dtype, jnp.integer):
    raise ValueError(f"{name} must be boolean (or 0/1 integers); got dtype {x.dtype}")
  if _is_concrete(x):
    values = np.unique(np.asarray(x))
    if not np.isin(values, (0, 1)).all():
      raise ValueError(f"{name} must hold only 0 and 1; got values {values[:10]}")
  return x.astype(bool)


def _promote(member_scores: jax.Array, nonmember_scores: jax.Array) -> tuple[jax.Array, jax.Array]:
  dtype = jnp.result_type(member_scores, nonmember_scores)
  return member_scores.astype(dtype), nonmember_scores.astype(dtype)


def _validate_pair(member_scores, nonmember_scores) -> tuple[jax.Array, jax.Array]:
  return _promote(_as_scores(member_scores, "member_scores"),
                  _as_scores(nonmember_scores, "nonmember_scores"))


@jax.jit
def _roc_points(member_scores: jax.Array, nonmember_scores: jax.Array):
  """All scores sorted descending, with cumulative TP/FP counts.

  Returns:
    `(scores_desc, tps, fps, is_end)`, each `[n_members + n_nonmembers]`.
    At position `i`, `tps[i]` / `fps[i]` count the members / non-members among
    the first `i + 1` scores. Only positions with `is_end` (the last of a run
    of equal scores) are achievable by a threshold: `score >= scores_desc[i]`
    selects exactly the first `i + 1` scores there.
  """
  scores = jnp.concatenate([member_scores, nonmember_scores])
  is_member = jnp.concatenate([
      jnp.ones(member_scores.shape, jnp.int32), jnp.zeros(nonmember_scores.shape, jnp.int32)])
  order = jnp.argsort(-scores, stable=True)
  scores_desc = scores[order]
  tps = jnp.cumsum(is_member[order])
  fps = jnp.arange(1, scores.shape[0] + 1) - tps
  is_end = jnp.concatenate([scores_desc[1:] != scores_desc[:-1], jnp.array([True])])
  return scores_desc, tps, fps, is_end


def roc_curve(member_scores: ArrayLike,
              nonmember_scores: ArrayLike) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The empirical ROC curve, one point per distinct threshold.

  Matches `sklearn.metrics.roc_curve(y, s, drop_intermediate=False)` with
  members as positives: the first point is `(0, 0)` at threshold `+inf`, then
  one point per distinct score in decreasing order; tied members and
  non-members enter together, giving a diagonal segment. Runs eagerly (the
  number of points depends on the data).

  Args:
    member_scores: `[M]` scores of known members.
    nonmember_scores: `[N]` scores of known non-members.

  Returns:
    `(fpr, tpr, thresholds)`, each of length `1 + number of distinct scores`;
    the attack `score >= thresholds[i]` has rates `(fpr[i], tpr[i])`.
  """
  member_scores, nonmember_scores = _validate_pair(member_scores, nonmember_scores)
  # The sort and counts are jitted; only the data-dependent selection of the
  # distinct thresholds happens on the host.
  scores_desc, tps, fps, is_end = jax.device_get(_roc_points(member_scores, nonmember_scores))
  dtype = _float_dtype()
  thresholds = np.concatenate([[np.inf], scores_desc[is_end]]).astype(scores_desc.dtype)
  tpr = np.concatenate([[0.0], tps[is_end] / member_scores.shape[0]])
  fpr = np.concatenate([[0.0], fps[is_end] / nonmember_scores.shape[0]])
  return jnp.asarray(fpr, dtype), jnp.asarray(tpr, dtype), jnp.asarray(thresholds)


def roc_auc(member_scores: ArrayLike, nonmember_scores: ArrayLike) -> jax.Array:
  """Area under the ROC curve: `P(s_member > s_nonmember) + P(tie) / 2`.

  Computed as the Mann-Whitney statistic with ties counted one half, which
  equals the trapezoidal area under `roc_curve` (and scikit-learn's
  `roc_auc_score`). 0.5 is chance; 1.0 perfect separation.

  Args:
    member_scores: `[M]` scores of known members.
    nonmember_scores: `[N]` scores of known non-members.

  Returns:
    A scalar in `[0, 1]`.
  """
  return _roc_auc(*_validate_pair(member_scores, nonmember_scores))


@jax.jit
def _roc_auc(member_scores: jax.Array, nonmember_scores: jax.Array) -> jax.Array:
  sorted_non = jnp.sort(nonmember_scores)
  below = jnp.searchsorted(sorted_non, member_scores, side="left")
  below_or_tied = jnp.searchsorted(sorted_non, member_scores, side="right")
  # Per member: (#non-members below + #tied / 2) / N, averaged over members.
  per_member = (below + below_or_tied).astype(_float_dtype()) / (2.0 * nonmember_scores.shape[0])
  return jnp.mean(per_member)


auc = roc_auc


def _max_false_positives(fpr: float, num_nonmembers: int) -> int:
  """The largest count `k` in `[0, N]` with `k / N <= fpr`, exactly."""
  k = min(max(math.floor(fpr * num_nonmembers), 0), num_nonmembers)
  # `fpr * N` can land just below an integer (0.29 * 100 = 28.999...); the
  # comparison below is the same `k / N <= fpr` a reader would evaluate.
  while k < num_nonmembers and (k + 1) / num_nonmembers <= fpr:
    k += 1
  while k > 0 and k / num_nonmembers > fpr:
    k -= 1
  return k


def tpr_at_fpr(member_scores: ArrayLike, nonmember_scores: ArrayLike,
               fpr: float) -> jax.Array:
  """The largest TPR of any threshold whose FPR is at most `fpr`.

  This is exact for the empirical ROC (no interpolation): with `N`
  non-members at most `k = floor(fpr * N)` of them may score at or above the
  threshold, so the best threshold lies just above the `(k + 1)`-th highest
  non-member score and the TPR is the fraction of members strictly above it.
  When `fpr * N < 1` this is the TPR at zero false positives; with few
  non-members, low-FPR figures are coarse and should be read with `N` in mind.

  Args:
    member_scores: `[M]` scores of known members.
    nonmember_scores: `[N]` scores of known non-members.
    fpr: target false-positive rate in `[0, 1]` (a Python float; static under
      `jax.jit`).

  Returns:
    A scalar TPR in `[0, 1]`.
  """
  member_scores, nonmember_scores = _validate_pair(member_scores, nonmember_scores)
  fpr = float(fpr)
  if not 0.0 <= fpr <= 1.0:
    raise ValueError(f"fpr must lie in [0, 1]; got {fpr}")
  num_non = nonmember_scores.shape[0]
  k = _max_false_positives(fpr, num_non)
  if k >= num_non:
    return jnp.ones((), _float_dtype())
  return _tpr_above_kth(member_scores, nonmember_scores, k)


@functools.partial(jax.jit, static_argnames="k")
def _tpr_above_kth(member_scores: jax.Array, nonmember_scores: jax.Array, k: int) -> jax.Array:
  """Fraction of members strictly above the `(k + 1)`-th highest non-member."""
  cutoff = jnp.sort(nonmember_scores)[::-1][k]
  return jnp.mean((member_scores > cutoff).astype(_float_dtype()))


def balanced_accuracy(predicted_member: ArrayLike, is_member: ArrayLike) -> jax.Array:
  """`(TPR + TNR) / 2` of hard membership predictions.

  Insensitive to the member/non-member ratio: 0.5 is chance.

  Args:
    predicted_member: `[N]` boolean predictions.
    is_member: `[N]` boolean ground truth; must contain both classes.

  Returns:
    A scalar in `[0, 1]`.
  """
  predicted_member = _as_bool(predicted_member, "predicted_member")
  is_member = _as_bool(is_member, "is_member")
  if predicted_member.shape != is_member.shape:
    raise ValueError(
        f"predicted_member and is_member must have the same shape; got "
        f"{predicted_member.shape} and {is_member.shape}")
  if _is_concrete(is_member):
    num_members = int(np.asarray(is_member).sum())
    if num_members in (0, is_member.shape[0]):
      raise ValueError(
          f"is_member must contain both members and non-members; got {num_members} "
          f"members out of {is_member.shape[0]}")
  dtype = _float_dtype()
  pos = is_member.astype(dtype)
  neg = 1.0 - pos
  pred = predicted_member.astype(dtype)
  tpr = jnp.sum(pred * pos) / jnp.sum(pos)
  tnr = jnp.sum((1.0 - pred) * neg) / jnp.sum(neg)
  return 0.5 * (tpr + tnr)


def best_balanced_accuracy(member_scores: ArrayLike,
                           nonmember_scores: ArrayLike) -> tuple[jax.Array, jax.Array]:
  """The best balanced accuracy over all thresholds, and that threshold.

  Balanced accuracy at a threshold is `(1 + TPR - FPR) / 2`. Ties between
  thresholds go to the highest one (the most conservative attack); when no
  threshold beats chance the threshold is `+inf` (predict no member).

  Args:
    member_scores: `[M]` scores of known members.
    nonmember_scores: `[N]` scores of known non-members.

  Returns:
    `(balanced_accuracy, threshold)`: scalars; predict member iff
    `score >= threshold`.
  """
  return _best_balanced_accuracy(*_validate_pair(member_scores, nonmember_scores))


@jax.jit
def _best_balanced_accuracy(member_scores: jax.Array, nonmember_scores: jax.Array):
  scores_desc, tps, fps, is_end = _roc_points(member_scores, nonmember_scores)
  acc, idx = _best_point(tps, fps, is_end, member_scores.shape[0], nonmember_scores.shape[0])
  threshold = jnp.where(idx < 0, jnp.inf, scores_desc[jnp.maximum(idx, 0)])
  return acc, threshold


def _best_point(tps, fps, is_end, num_members: int, num_nonmembers: int):
  """Index of the ROC point with the highest balanced accuracy (-1 = `(0, 0)`)."""
  dtype = _float_dtype()
  youden = tps.astype(dtype) / num_members - fps.astype(dtype) / num_nonmembers
  youden = jnp.where(is_end, youden, -jnp.inf)
  # argmax returns the first maximum, i.e. the highest threshold among ties;
  # the (0, 0) point (Youden 0) wins only when nothing is strictly better.
  idx = jnp.argmax(youden)
  best = youden[idx]
  idx = jnp.where(best > 0, idx, -1)
  return 0.5 * (1.0 + jnp.maximum(best, 0.0)), idx


def auc_standard_error(auc_value: float, num_members: int, num_nonmembers: int) -> float:
  """Standard error of an empirical AUC (Hanley & McNeil 1982).

  Uses the exponential approximation `Q1 = A / (2 - A)`, `Q2 = 2 A^2 / (1 + A)`:
  `SE^2 = (A (1 - A) + (M - 1)(Q1 - A^2) + (N - 1)(Q2 - A^2)) / (M N)`.
  With a few hundred examples per side it is about 0.03 near A = 0.5, which is
  the resolution at which two AUCs can be told apart.

  Args:
    auc_value: the AUC.
    num_members: M, the number of positives.
    num_nonmembers: N, the number of negatives.

  Returns:
    The standard error.

  References:
    Hanley & McNeil, "The meaning and use of the area under a receiver
    operating characteristic (ROC) curve", Radiology 143(1), 1982.
  """
  if num_members < 1 or num_nonmembers < 1:
    raise ValueError(f"need at least one member and one non-member; got {num_members} and "
                     f"{num_nonmembers}")
  a = float(auc_value)
  q1, q2 = a / (2.0 - a), 2.0 * a * a / (1.0 + a)
  var = (a * (1.0 - a) + (num_members - 1) * (q1 - a * a)
         + (num_nonmembers - 1) * (q2 - a * a)) / (num_members * num_nonmembers)
  return float(np.sqrt(max(var, 0.0)))


def summarize(member_scores: ArrayLike, nonmember_scores: ArrayLike, *,
              fprs: Sequence[float] = (0.001, 0.01)) -> dict[str, float]:
  """The standard membership-inference report as Python floats.

  Args:
    member_scores: `[M]` scores of known members.
    nonmember_scores: `[N]` scores of known non-members.
    fprs: false-positive rates at which to report the TPR.

  Returns:
    A dict with `auc`, `auc_std` (its standard error, `auc_standard_error`),
    `balanced_accuracy` (at the best threshold),
    `threshold` (that threshold), `tpr_at_fpr_<fpr>` for each of `fprs` (e.g.
    `tpr_at_fpr_0.001`), `num_members` and `num_nonmembers`.
  """
  member_scores, nonmember_scores = _validate_pair(member_scores, nonmember_scores)
  acc, threshold = best_balanced_accuracy(member_scores, nonmember_scores)
  out = {
      "auc": float(roc_auc(member_scores, nonmember_scores)),
      "balanced_accuracy": float(acc),
      "threshold": float(threshold),
  }
  for fpr in fprs:
    out[f"tpr_at_fpr_{fpr:g}"] = float(tpr_at_fpr(member_scores, nonmember_scores, fpr))
  out["num_members"] = int(member_scores.shape[0])
  out["num_nonmembers"] = int(nonmember_scores.shape[0])
  out["auc_std"] = auc_standard_error(out["auc"], out["num_members"], out["num_nonmembers"])
  return out
