"""The likelihood-ratio attack (LiRA) of Carlini et al. 2022, and U-LiRA.

Shadow models are trained on random halves of a data pool; `keep[k, n]` says
whether example `n` was in the training set of shadow model `k`. For every
example, the shadow models' statistics (normally `logit_scaled_confidence`,
which is close to Gaussian) give an "in" and an "out" distribution, each
modelled as a Gaussian. The target model's statistic `t` is then scored:

* online:  `log N(t; mu_in, s_in) - log N(t; mu_out, s_out)`, the
  log-likelihood ratio of "member" against "non-member";
* offline: `-log P(X >= t)`, `X ~ N(mu_out, s_out)`, i.e. minus the log of
  the one-sided p-value of the test "t is larger than an out model would
  give". It needs only out models (they can be trained before the target
  data is known) and is monotone in `(t - mu_out) / s_out`. The public
  reference scores offline with the two-sided `-log N(t; mu_out, s_out)`;
  the one-sided test follows the paper, since members have *higher*
  confidence, and keeps its resolution at large `t` where low-FPR results
  are decided.

Both scores are higher for members. Means are sample means (the reference
code uses medians) and per-example variances are unbiased (ddof=1).

`fixed_variance=True` replaces the per-example variances by one global
variance: the pooled within-example variance of the statistics around their
per-example means (in and out together online, out only offline). With a
shared variance the online score is the log-likelihood ratio up to one
global positive factor and the offline score is monotone in `t - mu_out`, so
the ROC does not depend on the variance's exact value; this is why it needs
far fewer shadow models. If no example has two observations on one side
(e.g. 2 shadow models online), the standard deviation of all the statistics
used stands in for it, as in the reference code.

Every standard deviation is floored at `min_std` (default 1e-6), which only
matters when all shadow statistics of an example coincide (e.g. saturated
confidences); it keeps scores finite.

U-LiRA (Hayes et al. 2024) audits an unlearning algorithm with the same
functions: fit the in/out Gaussians on shadow models where each forget sample
is in or out, score the forget-set statistics of the unlearned model and of a
model retrained without the forget set (pass both as a `[2, N]`
`target_stats`), and measure with `unlearning_distinguishability` how well
the two sets of scores can be told apart. AUC 0.5 means the unlearned model
is indistinguishable from retraining on these samples.

References:
  Carlini et al. 2022, "Membership Inference Attacks From First Principles",
  https://arxiv.org/abs/2112.03570.
  Hayes et al. 2024, "Inexact Unlearning Needs More Careful Evaluations to
  Avoid a False Sense of Privacy", https://arxiv.org/abs/2403.01218.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import log_ndtr
from jax.scipy.stats import norm
from jax.typing import ArrayLike

from forsaken_jax.mia.metrics import roc_auc, summarize
from forsaken_jax.mia.stats import _is_concrete


def _is_int(x) -> bool:
  return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def balanced_keep_masks(key: jax.Array, num_models: int, num_examples: int) -> jax.Array:
  """Random in/out masks with every example in exactly half of the models.

  For each example an independent random ordering of the models is drawn
  (the ranks of uniform noise down each column) and the example is "in" for
  the first half. Each model therefore gets about half of the examples, and
  every example has exactly `num_models / 2` in and out observations, which
  is what per-example Gaussians need.

  Args:
    key: a `jax.random.key`.
    num_models: K, the number of shadow models; even and >= 2.
    num_examples: N, the size of the data pool; >= 1.

  Returns:
    `[K, N]` bool; `keep[k, n]` = example `n` is in model `k`'s training set.
  """
  if not _is_int(num_models) or num_models < 2 or num_models % 2:
    raise ValueError(f"num_models must be an even integer >= 2; got {num_models!r}")
  if not _is_int(num_examples) or num_examples < 1:
    raise ValueError(f"num_examples must be an integer >= 1; got {num_examples!r}")
  noise = jax.random.uniform(key, (int(num_models), int(num_examples)))
  ranks = jnp.argsort(jnp.argsort(noise, axis=0), axis=0)
  return ranks < num_models // 2


def _check_inputs(target_stats, shadow_stats, keep):
  target_stats = jnp.asarray(target_stats)
  shadow_stats = jnp.asarray(shadow_stats)
  keep = jnp.asarray(keep)
  if shadow_stats.ndim != 2:
    raise ValueError(f"shadow_stats must have shape [K, N]; got shape {shadow_stats.shape}")
  num_models, num_examples = shadow_stats.shape
  if num_models == 0 or num_examples == 0:
    raise ValueError(f"shadow_stats must not be empty; got shape {shadow_stats.shape}")
  if keep.shape != shadow_stats.shape:
    raise ValueError(
        f"keep must have the shape of shadow_stats {shadow_stats.shape}; got shape {keep.shape}")
  if keep.dtype != jnp.bool_:
    raise ValueError(f"keep must be a boolean mask; got dtype {keep.dtype}")
  if target_stats.ndim < 1 or target_stats.shape[-1] != num_examples:
    raise ValueError(
        f"target_stats must have shape [..., N] with N = {num_examples} (from shadow_stats); got "
        f"shape {target_stats.shape}")
  dtype = jnp.result_type(target_stats, shadow_stats, float)
  return target_stats.astype(dtype), shadow_stats.astype(dtype), keep


def _check_counts(keep: jax.Array, *, online: bool, fixed_variance: bool, caller: str) -> None:
  """Raises if some example has too few in/out shadow observations."""
  if not _is_concrete(keep):
    return  # Under jit the counts are unknown; too few models give NaN.
  keep = np.asarray(keep)
  num_models = keep.shape[0]
  n_in = keep.sum(axis=0)
  n_out = num_models - n_in
  need = 1 if fixed_variance else 2
  sides = [("out", n_out)] + ([("in", n_in)] if online else [])
  for side, counts in sides:
    if counts.min() < need:
      worst = int(np.argmin(counts))
      advice = ("train more shadow models" if fixed_variance else
                "train more shadow models (at least 4 with balanced_keep_masks) or pass "
                "fixed_variance=True, which needs only 1 'in' and 1 'out' model per example")
      what = "a global" if fixed_variance else "a per-example"
      raise ValueError(
          f"{caller} with {what} variance needs at least {need} '{side}' shadow model(s) for "
          f"every example; got {num_models} shadow models, and example {worst} is '{side}' for "
          f"only {int(counts[worst])}: {advice}")
  if fixed_variance and not online and n_out.sum() < 2:
    raise ValueError(
        f"{caller} with a global variance needs at least 2 'out' observations in total; got "
        f"{int(n_out.sum())} from {num_models} shadow models: train more shadow models")


def _check_min_std(min_std) -> None:
  if _is_concrete(min_std) and not float(min_std) > 0:
    raise ValueError(f"min_std must be positive; got {min_std!r}")


def _side_fit(shadow_stats: jax.Array, mask: jax.Array):
  """Per-example mean, sum of squared deviations and count over `mask`."""
  count = jnp.sum(mask, axis=0)
  mean = jnp.sum(jnp.where(mask, shadow_stats, 0.0), axis=0) / count
  sq_dev = jnp.sum(jnp.where(mask, (shadow_stats - mean) ** 2, 0.0), axis=0)
  return mean, sq_dev, count


def _global_std(shadow_stats, mask, sq_dev_total, count_total, num_groups):
  """Pooled within-example std; the plain std of the masked stats if no dof.

  `sq_dev_total` sums the squared deviations from each example's own mean
  over `count_total` observations in `num_groups` (example, side) groups.
  """
  dof = count_total - num_groups
  pooled = jnp.sqrt(sq_dev_total / jnp.maximum(dof, 1))
  masked_mean = jnp.sum(jnp.where(mask, shadow_stats, 0.0)) / count_total
  plain = jnp.sqrt(jnp.sum(jnp.where(mask, (shadow_stats - masked_mean) ** 2, 0.0)) / count_total)
  return jnp.where(dof > 0, pooled, plain)


def lira_online(target_stats: ArrayLike, shadow_stats: ArrayLike, keep: ArrayLike, *,
                fixed_variance: bool = False, min_std: float = 1e-6) -> jax.Array:
  """Online LiRA scores (higher = member).

  Args:
    target_stats: `[..., N]` the target model(s)' statistic on the N pool
      examples (normally `logit_scaled_confidence`).
    shadow_stats: `[K, N]` the same statistic from K shadow models.
    keep: `[K, N]` bool, `keep[k, n]` = example `n` was in shadow model `k`'s
      training set (see `balanced_keep_masks`).
    fixed_variance: one global variance instead of per-example variances.
      Per-example variances need >= 2 in and >= 2 out models per example;
      the global one needs >= 1 of each.
    min_std: floor on every standard deviation.

  Returns:
    `[..., N]` log-likelihood ratios `log N(t; in) - log N(t; out)`.

  Example:
    >>> keep = balanced_keep_masks(jax.random.key(0), 16, 100)
    >>> shadow = jnp.where(keep, 3.0, 0.0) + jax.random.normal(jax.random.key(1), keep.shape)
    >>> scores = lira_online(jnp.full((100,), 3.0), shadow, keep)  # all look like members
    >>> bool(jnp.mean(scores > 0) > 0.9)
    True
  """
  target_stats, shadow_stats, keep = _check_inputs(target_stats, shadow_stats, keep)
  _check_counts(keep, online=True, fixed_variance=fixed_variance, caller="lira_online")
  _check_min_std(min_std)
  return _lira_online(target_stats, shadow_stats, keep, min_std,
                      fixed_variance=bool(fixed_variance))


@functools.partial(jax.jit, static_argnames="fixed_variance")
def _lira_online(target_stats, shadow_stats, keep, min_std, *, fixed_variance: bool):
  mu_in, sq_in, n_in = _side_fit(shadow_stats, keep)
  mu_out, sq_out, n_out = _side_fit(shadow_stats, ~keep)
  if fixed_variance:
    num_examples = shadow_stats.shape[1]
    # Residuals around each example's own in/out mean; in and out share it.
    residual_sq = jnp.sum(sq_in) + jnp.sum(sq_out)
    std = _global_std(shadow_stats, jnp.ones_like(keep), residual_sq, keep.size, 2 * num_examples)
    std_in = std_out = jnp.maximum(std, min_std)
  else:
    std_in = jnp.maximum(jnp.sqrt(sq_in / (n_in - 1)), min_std)
    std_out = jnp.maximum(jnp.sqrt(sq_out / (n_out - 1)), min_std)
  return norm.logpdf(target_stats, mu_in, std_in) - norm.logpdf(target_stats, mu_out, std_out)


def lira_offline(target_stats: ArrayLike, shadow_stats: ArrayLike, keep: ArrayLike, *,
                 fixed_variance: bool = False, min_std: float = 1e-6) -> jax.Array:
  """Offline LiRA scores (higher = member), from the out models only.

  The score is `-log P(X >= t)` with `X ~ N(mu_out, s_out)`: minus the log
  one-sided p-value, `-log_ndtr(-(t - mu_out) / s_out)`. It is 0.69 (= log 2)
  at `t = mu_out`, grows like `z**2 / 2` for members far above the out
  distribution, and tends to 0 below it.

  Args:
    target_stats: `[..., N]` the target model(s)' statistic.
    shadow_stats: `[K, N]` the same statistic from K shadow models; entries
      with `keep` True are ignored.
    keep: `[K, N]` bool membership of the shadow models' training sets.
    fixed_variance: one global variance instead of per-example variances.
      Per-example variances need >= 2 out models per example; the global one
      needs >= 1 per example and >= 2 observations overall.
    min_std: floor on every standard deviation.

  Returns:
    `[..., N]` scores.
  """
  target_stats, shadow_stats, keep = _check_inputs(target_stats, shadow_stats, keep)
  _check_counts(keep, online=False, fixed_variance=fixed_variance, caller="lira_offline")
  _check_min_std(min_std)
  return _lira_offline(target_stats, shadow_stats, keep, min_std,
                      fixed_variance=bool(fixed_variance))


@functools.partial(jax.jit, static_argnames="fixed_variance")
def _lira_offline(target_stats, shadow_stats, keep, min_std, *, fixed_variance: bool):
  out = ~keep
  mu_out, sq_out, n_out = _side_fit(shadow_stats, out)
  if fixed_variance:
    std_out = _global_std(shadow_stats, out, jnp.sum(sq_out), jnp.sum(n_out), shadow_stats.shape[1])
  else:
    std_out = jnp.sqrt(sq_out / (n_out - 1))
  std_out = jnp.maximum(std_out, min_std)
  return -log_ndtr(-(target_stats - mu_out) / std_out)


def unlearning_distinguishability(unlearned_scores: ArrayLike,
                                  retrained_scores: ArrayLike) -> dict[str, float]:
  """How well an attacker tells the unlearned model from retraining (U-LiRA).

  The unlearned model's membership scores on the forget samples play the
  positive class and the retrained model's scores on the same samples the
  negative class. AUC 0.5 means indistinguishable, i.e. the unlearning is as
  good as retraining for this attack. AUC above 0.5: the forget samples still
  look more like members than after retraining (incomplete forgetting); AUC
  below 0.5: they look *less* like members than after retraining, which an
  attacker can exploit just as well (over-forgetting).

  Args:
    unlearned_scores: `[M]` membership scores (e.g. `lira_online`) of the
      forget samples under the unlearned model(s).
    retrained_scores: `[R]` scores of the forget samples under model(s)
      retrained without them.

  Returns:
    The `summarize` dict of the two sets of scores (`auc`,
    `balanced_accuracy`, `tpr_at_fpr_0.001`, `tpr_at_fpr_0.01`, ...) plus
    `auc_gap = |auc - 0.5|`, the distance from perfect unlearning.
  """
  out = summarize(unlearned_scores, retrained_scores)
  out["auc_gap"] = abs(out["auc"] - 0.5)
  return out


def ulira_leave_one_out(unlearned_stats: ArrayLike, retrained_stats: ArrayLike, *,
                        min_std: float = 1e-6) -> dict[str, float]:
  """U-LiRA (Hayes et al. 2024) over N unlearned and N retrained models.

  Per forget example, the unlearned models' statistics play LiRA's "in"
  distribution and the retrained models' its "out" one. Each pair k (the
  k-th unlearned and k-th retrained model) is held out in turn: Gaussians
  fitted on the other N - 1 pairs score the two held-out models
  (`lira_online`, log N(t; unlearned) - log N(t; retrained)), and the
  attack calls a model "unlearned" when its score is positive.

  Args:
    unlearned_stats: `[N, E]` a statistic (normally `logit_scaled_confidence`)
      of N unlearned models on E forget examples.
    retrained_stats: `[N, E]` the same for N retrained models.
    min_std: floor on every standard deviation.

  Returns:
    `{"auc", "accuracy"}`: the AUC of the held-out unlearned models' scores
    against the held-out retrained models' (over every example and pair),
    and the attack's accuracy at threshold 0. Both are 0.5 when unlearning
    cannot be told from retraining.

  Raises:
    ValueError: shapes that differ or are not `[N, E]`, or N < 3 (per-example
      variances need two models per side after holding one out).
  """
  u, r = jnp.asarray(unlearned_stats), jnp.asarray(retrained_stats)
  if u.ndim != 2 or u.shape != r.shape:
    raise ValueError(f"unlearned_stats and retrained_stats must both be [N, E]; got shapes "
                     f"{u.shape} and {r.shape}")
  n = u.shape[0]
  if n < 3:
    raise ValueError(f"U-LiRA needs at least 3 models per side; got {n}")
  _check_min_std(min_std)
  keep = jnp.concatenate([jnp.ones((n - 1, u.shape[1]), bool),
                          jnp.zeros((n - 1, u.shape[1]), bool)])

  def fold(k):
    others = jnp.arange(n - 1) + (jnp.arange(n - 1) >= k)
    shadow = jnp.concatenate([u[others], r[others]])
    return _lira_online(jnp.stack([u[k], r[k]]), shadow, keep, min_std, fixed_variance=False)

  scores = jax.lax.map(fold, jnp.arange(n))  # [N, 2, E]
  positives, negatives = scores[:, 0].reshape(-1), scores[:, 1].reshape(-1)
  accuracy = 0.5 * (jnp.mean(positives > 0) + jnp.mean(negatives <= 0))
  return {"auc": float(roc_auc(positives, negatives)), "accuracy": float(accuracy)}
