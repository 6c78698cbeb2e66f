"""The unlearning audit: membership oracles fitted once, applied to any model.

An audit compares models that share one data population: the original
model, an unlearned one and one retrained without the forget set. Everything
here is a pure function of logits and index masks, so the audit runs on any
models, however they were trained.

Oracles (each a score, higher = member, and a decision threshold):

* `"shokri"`: the shadow-model attack classifier (Shokri et al. 2017), the
  oracle of Forsaken's papers; member when its probability is >= 0.5.
* `"lira"`: online LiRA (Carlini et al. 2022) on the logit-scaled confidence;
  member when the likelihood ratio exceeds 1 (score > 0), the Bayes decision
  with equal priors.
* `"loss"`: the loss-threshold attack (Yeom et al. 2018), with the threshold
  that best separates the original model's retained members from its
  non-members.

Thresholds are fixed on the original model and the shadow models, never on
the model being judged, so the forgetting rate of the unlearned model and of
the retrained model come from the same oracle.

Before any of this, `check_keep_alignment` asks the LiRA shadow models whether
their keep masks are theirs: keep masks that do not line up with the examples
(shifted columns, another run's masks) leave every LiRA score well-formed but
meaningless.
"""

from typing import Any, Mapping, NamedTuple

import jax
import numpy as np
import scipy.stats

from forsaken_jax.mia import forgetting, lira, metrics, shokri, stats, threshold

ORACLES = ("shokri", "lira", "loss")


class ShadowEvidence(NamedTuple):
  """What the shadow models say about the population.

  Attributes:
    lira_stats: `[K, P]` logit-scaled confidence of K LiRA shadow models on
      the P population examples.
    lira_keep: bool `[K, P]`, example in shadow model k's training set.
    shokri_member_features: `[M, F]` attack features of Shokri shadow models
      on their own training examples.
    shokri_nonmember_features: `[N, F]` the same on their held-out examples.
    shokri_member_labels: `[M]` true labels (used by per-class attacks).
    shokri_nonmember_labels: `[N]`.
  """

  lira_stats: np.ndarray
  lira_keep: np.ndarray
  shokri_member_features: np.ndarray
  shokri_nonmember_features: np.ndarray
  shokri_member_labels: np.ndarray
  shokri_nonmember_labels: np.ndarray


class KeepAlignment(NamedTuple):
  """How well LiRA keep masks fit the shadow models' own statistics.

  Attributes:
    auc: Wilcoxon's signed-rank statistic over examples of the gap "mean
      statistic of the in-models minus that of the out-models", scaled to
      `[0, 1]` (`W+ / (n (n + 1) / 2)`): the paired analogue of an AUC, 0.5
      when the masks say nothing about the statistics, 1 when every example's
      in-models beat its out-models.
    std: its standard deviation when the masks say nothing,
      `sqrt((2n + 1) / (6 n (n + 1)))`.
    num_examples: n, the examples with in and out models and a non-zero gap.
  """

  auc: float
  std: float
  num_examples: int


class FittedOracles(NamedTuple):
  """Oracles fitted on the original model and the shadow models."""

  shokri: shokri.ShokriAttack
  loss_threshold: threshold.ThresholdAttack
  shokri_mode: str
  shokri_per_class: bool
  lira_fixed_variance: bool


def shadow_evidence(*, lira_logits: np.ndarray, lira_keep: np.ndarray, population_labels: np.ndarray,
                    shokri_logits: np.ndarray, shokri_keep: np.ndarray,
                    shokri_labels: np.ndarray, shokri_mode: str = "sorted_label"
                    ) -> ShadowEvidence:
  """Turns shadow-model logits into the statistics the oracles need.

  Args:
    lira_logits: `[K, P, C]` LiRA shadow models' logits on the population.
    lira_keep: bool `[K, P]`.
    population_labels: `[P]` labels of the population.
    shokri_logits: `[S, Q, C]` Shokri shadow models' logits on their data.
    shokri_keep: bool `[S, Q]`.
    shokri_labels: `[Q]` labels of the Shokri shadow data.
    shokri_mode: `shokri.attack_features` mode.

  Returns:
    A `ShadowEvidence`.
  """
  lira_logits, shokri_logits = np.asarray(lira_logits), np.asarray(shokri_logits)
  lira_keep, shokri_keep = np.asarray(lira_keep, bool), np.asarray(shokri_keep, bool)
  if lira_logits.shape[:2] != lira_keep.shape:
    raise ValueError(f"lira_logits {lira_logits.shape} and lira_keep {lira_keep.shape} disagree")
  if shokri_logits.shape[:2] != shokri_keep.shape:
    raise ValueError(
        f"shokri_logits {shokri_logits.shape} and shokri_keep {shokri_keep.shape} disagree")
  labels = np.broadcast_to(population_labels, lira_keep.shape)
  lira_stats = np.asarray(jax.vmap(stats.logit_scaled_confidence)(lira_logits, labels))
  probs = np.asarray(jax.nn.softmax(shokri_logits, axis=-1))
  flat_probs = probs.reshape(-1, probs.shape[-1])
  flat_labels = np.broadcast_to(shokri_labels, shokri_keep.shape).reshape(-1)
  features = np.asarray(shokri.attack_features(flat_probs, flat_labels, mode=shokri_mode))
  member = shokri_keep.reshape(-1)
  return ShadowEvidence(lira_stats, lira_keep, features[member], features[~member],
                        flat_labels[member], flat_labels[~member])


def keep_alignment(lira_stats: np.ndarray, lira_keep: np.ndarray) -> KeepAlignment:
  """Whether the shadow models score their in-examples above their out-examples.

  Each example is compared with itself: a model's statistic varies far more
  between examples than between its in and out halves, so a per-model AUC of
  in against out barely leaves 0.5 on models that generalise, while the gap
  of one example's in-models over its out-models removes the example's
  difficulty. When the masks are unrelated to the statistics (e.g. another
  example's column) the gap is symmetric about zero, since a balanced column
  and its complement are equally likely, and the statistic is 0.5 +- `std`.

  Args:
    lira_stats: `[K, P]` shadow statistics (higher = member), e.g.
      `ShadowEvidence.lira_stats`.
    lira_keep: bool `[K, P]`, the keep masks claimed for them.

  Returns:
    A `KeepAlignment`.
  """
  stats, keep = np.asarray(lira_stats, np.float64), np.asarray(lira_keep, bool)
  if stats.ndim != 2 or stats.shape != keep.shape:
    raise ValueError(f"lira_stats {stats.shape} and lira_keep {keep.shape} must both be [K, P]")
  num_in, num_out = keep.sum(0), (~keep).sum(0)
  with np.errstate(invalid="ignore", divide="ignore"):
    gap = (np.where(keep, stats, 0.0).sum(0) / num_in
           - np.where(keep, 0.0, stats).sum(0) / num_out)
  # A zero gap has no sign: Wilcoxon drops it (and examples lacking a side).
  gap = gap[(num_in > 0) & (num_out > 0) & np.isfinite(gap) & (gap != 0)]
  n = gap.size
  if n == 0:
    raise ValueError("no example has in and out shadow models whose statistics differ: the "
                     "keep masks cannot be checked")
  ranks = scipy.stats.rankdata(np.abs(gap))
  return KeepAlignment(auc=float(ranks[gap > 0].sum() / (n * (n + 1) / 2)),
                       std=float(np.sqrt((2 * n + 1) / (6 * n * (n + 1)))), num_examples=int(n))


def check_keep_alignment(lira_stats: np.ndarray, lira_keep: np.ndarray, *,
                         z: float = 4.0) -> KeepAlignment:
  """Raises unless the keep masks clearly fit the shadow models (`keep_alignment`).

  Misaligned masks give an `auc` of 0.5 +- `std`; they pass only with
  probability `P(Z > z)`, about 3e-5 at the default z = 4.

  Args:
    lira_stats: `[K, P]` shadow statistics (higher = member).
    lira_keep: bool `[K, P]`, the keep masks claimed for them.
    z: standard deviations above 0.5 that `auc` must clear.

  Returns:
    The `KeepAlignment`, when it clears the bar.

  Raises:
    ValueError: if `auc < 0.5 + z * std`.
  """
  alignment = keep_alignment(lira_stats, lira_keep)
  excess = (alignment.auc - 0.5) / alignment.std
  if excess < z:
    raise ValueError(
        f"the LiRA keep masks do not fit the shadow models: over {alignment.num_examples} "
        f"examples, the in-models beat the out-models with paired AUC {alignment.auc:.3f}, "
        f"{excess:.1f} standard errors above 0.5 (need {z:g}). The keep "
        "masks are misaligned with the examples (another order, another shadow run), or the "
        "shadow models learned too little to audit with (train them longer)")
  return alignment


def fit_oracles(key: jax.Array, evidence: ShadowEvidence, original_logits: np.ndarray,
                labels: np.ndarray, members: np.ndarray, nonmembers: np.ndarray, *,
                shokri_mode: str = "sorted_label", shokri_per_class: bool = False,
                shokri_steps: int = 1000, lira_fixed_variance: bool = False) -> FittedOracles:
  """Fits the oracles that need fitting (Shokri classifier, loss threshold).

  Args:
    key: PRNG key of the attack classifier.
    evidence: from `shadow_evidence`.
    original_logits: `[P, C]` the original model's logits on the population.
    labels: `[P]` population labels.
    members: bool `[P]`, the original model's members whose loss calibrates
      the loss threshold (pass the retained members: the forget set is what
      will be judged).
    nonmembers: bool `[P]`, known non-members.
    shokri_mode: feature mode of the attack classifier.
    shokri_per_class: one attack model per class (Shokri's original).
    shokri_steps: Adam steps of the attack classifier.
    lira_fixed_variance: use LiRA's global-variance variant.

  Returns:
    `FittedOracles`.
  """
  members, nonmembers = np.asarray(members, bool), np.asarray(nonmembers, bool)
  if not members.any() or not nonmembers.any():
    raise ValueError(f"fit_oracles needs known members and non-members; got {members.sum()} "
                     f"members and {nonmembers.sum()} non-members")
  kwargs = {}
  if shokri_per_class:
    kwargs = {"member_labels": evidence.shokri_member_labels,
              "nonmember_labels": evidence.shokri_nonmember_labels, "per_class": True,
              "num_classes": int(original_logits.shape[-1])}
  attack = shokri.fit_shokri_attack(key, evidence.shokri_member_features,
                                    evidence.shokri_nonmember_features, steps=shokri_steps,
                                    **kwargs)
  loss_score = np.asarray(stats.membership_score("loss", original_logits, labels))
  loss_threshold = threshold.fit_threshold(loss_score[members], loss_score[nonmembers])
  return FittedOracles(attack, loss_threshold, shokri_mode, shokri_per_class, lira_fixed_variance)


def oracle_scores(oracles: FittedOracles, evidence: ShadowEvidence, logits: np.ndarray,
                  labels: np.ndarray) -> dict[str, np.ndarray]:
  """Every oracle's membership score (higher = member) for one model.

  Args:
    oracles: from `fit_oracles`.
    evidence: from `shadow_evidence`.
    logits: `[P, C]` the judged model's logits on the population.
    labels: `[P]` population labels.

  Returns:
    `{"shokri", "lira", "lira_offline", "loss": [P] scores}`.
  """
  logits, labels = np.asarray(logits), np.asarray(labels)
  target = stats.logit_scaled_confidence(logits, labels)
  probs = jax.nn.softmax(logits, axis=-1)
  features = shokri.attack_features(probs, labels, mode=oracles.shokri_mode)
  fixed = oracles.lira_fixed_variance
  return {
      "shokri": np.asarray(shokri.shokri_scores(
          oracles.shokri, features, labels if oracles.shokri_per_class else None)),
      "lira": np.asarray(lira.lira_online(target, evidence.lira_stats, evidence.lira_keep,
                                          fixed_variance=fixed)),
      "lira_offline": np.asarray(lira.lira_offline(target, evidence.lira_stats,
                                                   evidence.lira_keep, fixed_variance=fixed)),
      "loss": np.asarray(stats.membership_score("loss", logits, labels)),
  }


def judged_member(oracles: FittedOracles, scores: Mapping[str, np.ndarray]
                  ) -> dict[str, np.ndarray]:
  """Each oracle's member / non-member decisions from its scores.

  Returns:
    `{oracle: bool [P]}` for every name in `ORACLES`.
  """
  return {
      "shokri": np.asarray(scores["shokri"]) >= 0.5,
      "lira": np.asarray(scores["lira"]) > 0.0,
      "loss": np.asarray(threshold.predict_member(oracles.loss_threshold, scores["loss"])),
  }


def forgetting_rates(before: Mapping[str, np.ndarray], after: Mapping[str, np.ndarray],
                     forget: np.ndarray) -> dict[str, forgetting.ForgettingRate]:
  """FR of every oracle on the forget set.

  Args:
    before: `judged_member` of the original model.
    after: `judged_member` of the unlearned (or retrained) model.
    forget: bool `[P]` or indices of the forget set in the population.

  Returns:
    `{oracle: ForgettingRate}`.
  """
  return {name: forgetting.forgetting_rate(before[name][forget], after[name][forget], oracle=name)
          for name in ORACLES}


def attack_summary(scores: Mapping[str, np.ndarray], positives: np.ndarray,
                   negatives: np.ndarray) -> dict[str, dict[str, float]]:
  """AUC, best balanced accuracy and TPR at 0.1% / 1% FPR of every score.

  Args:
    scores: `{name: [P] scores}`.
    positives: bool `[P]` or indices of the examples called members.
    negatives: bool `[P]` or indices of the examples called non-members.

  Returns:
    `{name: metrics.summarize(...)}`.
  """
  return {name: metrics.summarize(np.asarray(s)[positives], np.asarray(s)[negatives])
          for name, s in scores.items()}


def to_jsonable(results: Any) -> Any:
  """Converts audit results (ForgettingRate, numpy scalars) to JSON values."""
  if isinstance(results, forgetting.ForgettingRate):
    return {"rate": results.rate, "b_t": results.b_t, "b_f": results.b_f, "a_f": results.a_f,
            "n": results.n, "oracle": results.oracle, "text": str(results)}
  if isinstance(results, Mapping):
    return {str(k): to_jsonable(v) for k, v in results.items()}
  if isinstance(results, (list, tuple)):
    return [to_jsonable(v) for v in results]
  if isinstance(results, (np.generic, np.ndarray)):
    return np.asarray(results).tolist()
  return results
