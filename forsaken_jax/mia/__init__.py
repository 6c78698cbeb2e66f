"""Membership inference: statistics, attacks, ROC metrics and the forgetting rate.

Scores are oriented so that higher always means "more likely a member".

* `stats`: per-example statistics from logits (loss, confidences, entropies,
  LiRA's logit-scaled confidence) and `membership_score`.
* `metrics`: ROC curve, AUC, TPR at a fixed FPR, balanced accuracy.
* `threshold`: threshold attacks on any statistic.
* `lira`: the likelihood-ratio attack (online/offline) and U-LiRA's
  unlearning distinguishability.
* `shokri`: the shadow-model attack classifier.
* `forgetting`: the forgetting rate of "Learn to Forget".
* `benchmark`: the unlearning benchmark's metrics (UA / RA / TA, SalUn's
  MIA-efficacy, the average gap to retraining, the NeurIPS 2023 challenge's
  forgetting quality and score).
* `shadow`: many shadow models trained at once (`jax.vmap` over stacked params).
* `relearn`: the relearning attack (fine-tune on the forget set, count the
  steps until its accuracy is back).
* `audit`: oracles fitted once and applied to original, unlearned and
  retrained models; forgetting rates per oracle.
"""

from forsaken_jax.mia.benchmark import (
    BENCHMARK_KEYS,
    ForgettingQuality,
    accuracy_metrics,
    average_gap,
    challenge_epsilons,
    challenge_score,
    epsilon_cutoff,
    epsilon_points,
    forgetting_quality,
    forgetting_quality_from_scores,
    max_finite_epsilon,
    mia_efficacy,
)
from forsaken_jax.mia.forgetting import ForgettingRate, forgetting_rate
from forsaken_jax.mia.lira import (
    balanced_keep_masks,
    lira_offline,
    lira_online,
    ulira_leave_one_out,
    unlearning_distinguishability,
)
from forsaken_jax.mia.metrics import (
    auc,
    auc_standard_error,
    balanced_accuracy,
    best_balanced_accuracy,
    roc_auc,
    roc_curve,
    summarize,
    tpr_at_fpr,
)
from forsaken_jax.mia.shokri import (
    FEATURE_MODES,
    ShokriAttack,
    attack_features,
    fit_shokri_attack,
    shokri_predict,
    shokri_scores,
)
from forsaken_jax.mia.stats import (
    MEMBERSHIP_SIGN,
    STATISTICS,
    compute_statistic,
    entropy,
    logit_scaled_confidence,
    loss,
    membership_score,
    modified_entropy,
    top1_confidence,
    true_class_confidence,
)
from forsaken_jax.mia.relearn import (
    RelearnAttack,
    RelearnCurve,
    make_finetune_scan,
    make_relearn_attack,
    relearn_summary,
    steps_to_accuracy,
)
from forsaken_jax.mia.shadow import (
    init_stacked_state,
    make_stacked_predict_fn,
    make_stacked_train_step,
    model_mesh,
    shadow_batch_indices,
    shard_stacked,
    stack,
    stacked_sharding,
    unstack,
)
from forsaken_jax.mia.threshold import ThresholdAttack, fit_threshold, predict_member

__all__ = [
    "BENCHMARK_KEYS",
    "FEATURE_MODES",
    "ForgettingQuality",
    "ForgettingRate",
    "MEMBERSHIP_SIGN",
    "RelearnAttack",
    "RelearnCurve",
    "STATISTICS",
    "ShokriAttack",
    "ThresholdAttack",
    "accuracy_metrics",
    "attack_features",
    "auc",
    "auc_standard_error",
    "average_gap",
    "balanced_accuracy",
    "balanced_keep_masks",
    "best_balanced_accuracy",
    "challenge_epsilons",
    "challenge_score",
    "compute_statistic",
    "entropy",
    "epsilon_cutoff",
    "epsilon_points",
    "fit_shokri_attack",
    "fit_threshold",
    "forgetting_quality",
    "forgetting_quality_from_scores",
    "init_stacked_state",
    "forgetting_rate",
    "lira_offline",
    "lira_online",
    "logit_scaled_confidence",
    "loss",
    "make_finetune_scan",
    "make_relearn_attack",
    "make_stacked_predict_fn",
    "make_stacked_train_step",
    "max_finite_epsilon",
    "mia_efficacy",
    "model_mesh",
    "membership_score",
    "modified_entropy",
    "predict_member",
    "relearn_summary",
    "roc_auc",
    "roc_curve",
    "shadow_batch_indices",
    "shard_stacked",
    "shokri_predict",
    "shokri_scores",
    "stack",
    "stacked_sharding",
    "steps_to_accuracy",
    "summarize",
    "top1_confidence",
    "tpr_at_fpr",
    "true_class_confidence",
    "unstack",
    "ulira_leave_one_out",
    "unlearning_distinguishability",
]
