"""Threshold attacks: member iff a per-example score clears a fitted threshold.

Any statistic from `forsaken_jax.mia.stats` works once it is oriented with
`membership_score` (higher = member): the loss attack of Yeom et al. 2018
thresholds `-loss`, the modified-entropy attack of Song & Mittal 2021
thresholds `-modified_entropy`, and so on. The threshold is fitted on examples
whose membership is known (shadow data, or a labelled audit split) and then
applied to the examples under audit.

References:
  Yeom et al. 2018, "Privacy Risk in Machine Learning: Analyzing the
  Connection to Overfitting", https://arxiv.org/abs/1709.01604.
  Song & Mittal 2021, "Systematic Evaluation of Privacy Risks of Machine
  Learning Models", https://arxiv.org/abs/2003.10595.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from forsaken_jax.mia.metrics import _best_point, _roc_points, _validate_pair


class ThresholdAttack(NamedTuple):
  """A fitted threshold attack (a pytree of scalars).

  Attributes:
    threshold: predict member iff `score >= threshold`; `+inf` when no
      threshold beat chance on the fitting data.
    balanced_accuracy: the balanced accuracy reached on the fitting data.
  """
  threshold: jax.Array
  balanced_accuracy: jax.Array


def fit_threshold(member_scores: ArrayLike,
                  nonmember_scores: ArrayLike) -> ThresholdAttack:
  """Fits the threshold that maximizes balanced accuracy on known examples.

  Among the thresholds that reach the best balanced accuracy, the highest
  (most conservative) cut is chosen, and the threshold is placed halfway
  between the lowest score predicted member and the next lower score, so a
  new example falling in that gap is split evenly rather than always lumped
  with one side. The result is deterministic. If nothing beats chance the
  threshold is `+inf` (predict no member).

  Args:
    member_scores: `[M]` membership scores (higher = member) of known members.
    nonmember_scores: `[N]` membership scores of known non-members.

  Returns:
    A `ThresholdAttack`.

  Example:
    >>> attack = fit_threshold(jnp.array([2.0, 3.0]), jnp.array([0.0, 1.0]))
    >>> float(attack.threshold), float(attack.balanced_accuracy)
    (1.5, 1.0)
  """
  return _fit_threshold(*_validate_pair(member_scores, nonmember_scores))


@jax.jit
def _fit_threshold(member_scores: jax.Array, nonmember_scores: jax.Array) -> ThresholdAttack:
  scores_desc, tps, fps, is_end = _roc_points(member_scores, nonmember_scores)
  acc, idx = _best_point(tps, fps, is_end, member_scores.shape[0], nonmember_scores.shape[0])
  n = scores_desc.shape[0]
  safe = jnp.clip(idx, 0, n - 1)
  lowest_in = scores_desc[safe]
  # The next score below the cut (the best point is the end of a tie run, so
  # it is strictly lower); at the very bottom there is none.
  next_out = scores_desc[jnp.minimum(safe + 1, n - 1)]
  midpoint = lowest_in / 2 + next_out / 2
  # Adjacent floats have no midpoint strictly above `next_out`: keep the score.
  usable = (safe + 1 < n) & jnp.isfinite(midpoint) & (midpoint > next_out)
  cut = jnp.where(usable, midpoint, lowest_in)
  threshold = jnp.where(idx < 0, jnp.inf, cut)
  return ThresholdAttack(threshold=threshold, balanced_accuracy=acc)


def predict_member(attack: ThresholdAttack, scores: ArrayLike) -> jax.Array:
  """Applies a fitted threshold attack.

  Args:
    attack: from `fit_threshold`.
    scores: membership scores of any shape (higher = member).

  Returns:
    Boolean array of the shape of `scores`: True where judged a member.
  """
  return jnp.asarray(scores) >= attack.threshold
