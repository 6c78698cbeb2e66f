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
* `shadow`: many shadow models trained at once (`jax.vmap` over stacked params).
* `relearn`: the relearning attack (fine-tune on the forget set, count the
  steps until its accuracy is back).
* `audit`: oracles fitted once and applied to original, unlearned and
  retrained models; forgetting rates per oracle.
"""

from forsaken_jax.mia.forgetting import ForgettingRate, forgetting_rate
from forsaken_jax.mia.lira import (
    balanced_keep_masks,
    lira_offline,
    lira_online,
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
    "FEATURE_MODES",
    "ForgettingRate",
    "MEMBERSHIP_SIGN",
    "RelearnAttack",
    "RelearnCurve",
    "STATISTICS",
    "ShokriAttack",
    "ThresholdAttack",
    "attack_features",
    "auc",
    "auc_standard_error",
    "balanced_accuracy",
    "balanced_keep_masks",
    "best_balanced_accuracy",
    "compute_statistic",
    "entropy",
    "fit_shokri_attack",
    "fit_threshold",
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
    "unlearning_distinguishability",
]
