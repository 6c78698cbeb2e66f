"""The unlearning benchmark's metrics, one pure function each.

* `accuracy_metrics`: UA, RA and TA (SalUn's table), from logits or
  predictions; jit-friendly.
* `mia_efficacy`: SalUn's MIA-efficacy, an RBF support-vector classifier on
  the true-class confidence (scikit-learn; runs on the host).
* `average_gap`: the mean absolute difference to the retrained model, in
  percentage points, over UA, RA, TA and MIA-efficacy.
* `forgetting_quality` / `forgetting_quality_from_scores`: the forgetting
  quality F of the NeurIPS 2023 machine-unlearning challenge, from N
  unlearned and N retrained models; `challenge_score` weighs it by utility.
  `challenge_epsilons` gives the per-example epsilons, `max_finite_epsilon`
  and `epsilon_cutoff` what N models can resolve.

Accuracies and MIA-efficacy are fractions in [0, 1]; `average_gap` reports
percentage points.

Example:
  >>> m_u = {**accuracy_metrics(f_logits_u, f_y, r_logits_u, r_y, t_logits_u, t_y),
  ...        "MIA": mia_efficacy(true_class_confidence(f_logits_u, f_y),
  ...                            true_class_confidence(r_logits_u, r_y),
  ...                            true_class_confidence(t_logits_u, t_y))}
  >>> average_gap(m_u, m_r)  # m_r: the same for the retrained model

References:
  Jia et al. 2023, "Model Sparsity Can Simplify Machine Unlearning" (NeurIPS),
  https://arxiv.org/abs/2304.04934 (UA, RA, TA, MIA-efficacy).
  Fan et al. 2024, "SalUn: Empowering Machine Unlearning via Gradient-based
  Weight Saliency in Both Image Classification and Generation" (ICLR),
  https://arxiv.org/abs/2310.12508 (the same metrics and the average gap).
  Triantafillou et al. 2024, "Are we making progress in unlearning? Findings
  from the first NeurIPS unlearning competition",
  https://arxiv.org/abs/2406.09073, and the challenge's scoring code,
  github.com/google-deepmind/unlearning_evaluation (metric.py, main.py).
"""

import functools
import math
from typing import Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from forsaken_jax.mia import stats as stats_lib
from forsaken_jax.mia.stats import _is_concrete

# The challenge's constants (its metric.py).
DELTA = 1e-5
EPSILON_CAP = 50.0
BUCKET_WIDTH = 0.5
# A sample whose range is below this share of the other's is "peaky".
PEAKY_RATIO = 0.01

BENCHMARK_KEYS = ("UA", "RA", "TA", "MIA")


# ---------------------------------------------------------------------------
# UA / RA / TA


def _predictions(outputs, labels, name: str) -> tuple[jax.Array, jax.Array]:
  """`(predicted classes [N], labels [N])` from logits `[N, C]` or predictions `[N]`."""
  outputs, labels = jnp.asarray(outputs), jnp.asarray(labels)
  if outputs.ndim == 2:
    predictions = jnp.argmax(outputs, axis=-1)
  elif outputs.ndim == 1:
    if not jnp.issubdtype(outputs.dtype, jnp.integer):
      raise ValueError(
          f"{name}_outputs of shape [N] must be integer predictions; got dtype {outputs.dtype} "
          "(pass logits as [N, C])")
    predictions = outputs
  else:
    raise ValueError(
        f"{name}_outputs must be logits [N, C] or predictions [N]; got shape {outputs.shape}")
  if predictions.shape[0] == 0:
    raise ValueError(f"the {name} set is empty: {name}_outputs has shape {outputs.shape}")
  if labels.shape != predictions.shape:
    raise ValueError(
        f"{name}_labels must have shape {predictions.shape} to match {name}_outputs "
        f"{outputs.shape}; got shape {labels.shape}")
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f"{name}_labels must be integers; got dtype {labels.dtype}")
  return predictions, labels


def _accuracy(predictions: jax.Array, labels: jax.Array, keep: jax.Array | None = None):
  correct = (predictions == labels).astype(jnp.result_type(float))
  if keep is None:
    return jnp.mean(correct)
  keep = keep.astype(correct.dtype)
  return jnp.sum(correct * keep) / jnp.sum(keep)


@jax.jit
def _benchmark_accuracies(f_pred, f_y, r_pred, r_y, t_pred, t_y, keep):
  return {"UA": 1.0 - _accuracy(f_pred, f_y), "RA": _accuracy(r_pred, r_y),
          "TA": _accuracy(t_pred, t_y, keep)}


def accuracy_metrics(forget_outputs: ArrayLike, forget_labels: ArrayLike,
                     retain_outputs: ArrayLike, retain_labels: ArrayLike,
                     test_outputs: ArrayLike, test_labels: ArrayLike, *,
                     exclude_class: ArrayLike | None = None) -> dict[str, jax.Array]:
  """UA, RA and TA as Jia et al. (2023) and SalUn define them.

  UA = 1 - accuracy on the forget set D_f, RA = accuracy on the retained set
  D_r, TA = accuracy on the test set. For class forgetting, pass the
  forgotten class as `exclude_class`: TA is then the accuracy on the test
  examples of the other classes. Each `*_outputs` is either logits `[N, C]`
  (the prediction is their argmax) or integer predictions `[N]`.

  Works under `jax.jit` (`exclude_class` may be traced); shapes are checked
  when traced, and a concrete `exclude_class` that leaves no test example is
  refused (a traced one gives NaN).

  Args:
    forget_outputs: `[N_f, C]` logits or `[N_f]` predictions on D_f.
    forget_labels: `[N_f]` integer labels.
    retain_outputs: the same on D_r.
    retain_labels: `[N_r]`.
    test_outputs: the same on the test set.
    test_labels: `[N_t]`.
    exclude_class: a class whose test examples TA leaves out, or None.

  Returns:
    `{"UA": ..., "RA": ..., "TA": ...}`, scalar fractions in [0, 1].

  Example:
    >>> logits = jnp.array([[2.0, 0.0], [0.0, 2.0]])
    >>> m = accuracy_metrics(logits, jnp.array([1, 1]), logits, jnp.array([0, 1]),
    ...                      jnp.array([0, 1, 1]), jnp.array([0, 1, 0]))
    >>> {k: round(float(v), 3) for k, v in m.items()}  # UA 1 - 1/2, RA 2/2, TA 2/3
    {'UA': 0.5, 'RA': 1.0, 'TA': 0.667}
  """
  f_pred, f_y = _predictions(forget_outputs, forget_labels, "forget")
  r_pred, r_y = _predictions(retain_outputs, retain_labels, "retain")
  t_pred, t_y = _predictions(test_outputs, test_labels, "test")
  keep = None
  if exclude_class is not None:
    exclude = jnp.asarray(exclude_class)
    if exclude.ndim != 0 or not jnp.issubdtype(exclude.dtype, jnp.integer):
      raise ValueError(f"exclude_class must be an integer class; got {exclude_class!r}")
    keep = t_y != exclude
    if _is_concrete(keep) and _is_concrete(exclude) and not bool(jnp.any(keep)):
      raise ValueError(
          f"exclude_class={int(exclude)} leaves no test example: every test label is that class")
  return _benchmark_accuracies(f_pred, f_y, r_pred, r_y, t_pred, t_y, keep)


# ---------------------------------------------------------------------------
# MIA-efficacy


def _as_confidence(x, name: str) -> np.ndarray:
  x = np.asarray(x)
  if x.ndim != 1:
    raise ValueError(f"{name} must be a 1-D array of true-class confidences; got shape {x.shape}")
  if x.shape[0] == 0:
    raise ValueError(f"{name} must not be empty; got shape {x.shape}")
  x = x.astype(np.float64)
  bad = ~np.isfinite(x) | (x < 0.0) | (x > 1.0)
  if bad.any():
    i = int(np.argmax(bad))
    raise ValueError(
        f"{name} must hold probabilities in [0, 1] (the softmax probability of the true "
        f"class); got {x[i]} at index {i}")
  return x


def mia_efficacy(forget_confidence: ArrayLike, retain_confidence: ArrayLike,
                 test_confidence: ArrayLike, *, seed: int = 0, C: float = 3.0,
                 gamma: float | str = "auto") -> float:
  """SalUn's MIA-efficacy: the share of the forget set an SVC calls non-member.

  The variant implemented, feature by feature:

  * feature: the true-class confidence p_y, the softmax probability of the
    true label (`true_class_confidence`), one feature per example;
  * attack training set: retained members (label 1) against test examples
    (label 0), balanced by drawing, uniformly without replacement
    (`numpy.random.default_rng(seed)`), as many examples of the larger side
    as the smaller side has;
  * classifier: `sklearn.svm.SVC(kernel="rbf", C=3, gamma="auto")`, i.e.
    gamma = 1 / n_features = 1 on this single feature;
  * efficacy: the fraction of forget examples it predicts non-member
    (label 0). Higher means the forget set looks more like unseen data.

  This is the "confidence" entry of SalUn's `SVC_MIA_forget_efficacy`
  (github.com/OPTML-Group/Unlearn-Saliency, Classification/main_forget.py and
  evaluation/SVC_MIA.py, which Unlearn-Sparse also reports). The one
  difference is the balancing: SalUn takes the first |test| retained
  examples in dataset order, which assumes |D_r| >= |test|; here the larger
  side, whichever it is, is subsampled at random.

  Runs on the host (scikit-learn); not for `jax.jit`. Fitting costs about
  quadratic time in 2 min(|D_r|, |test|).

  Args:
    forget_confidence: `[N_f]` true-class confidences on the forget set.
    retain_confidence: `[N_r]` on the retained members.
    test_confidence: `[N_t]` on the test set.
    seed: seeds the subsampling of the larger side.
    C: the SVC's regularization (SalUn: 3).
    gamma: the RBF kernel's width (SalUn: "auto").

  Returns:
    MIA-efficacy, a fraction in [0, 1].

  Example:
    >>> mia_efficacy([1.0, 0.1], retain_confidence=np.ones(50),
    ...              test_confidence=np.full(50, 0.1))
    0.5
  """
  from sklearn.svm import SVC  # pylint: disable=g-import-not-at-top

  forget = _as_confidence(forget_confidence, "forget_confidence")
  retain = _as_confidence(retain_confidence, "retain_confidence")
  test = _as_confidence(test_confidence, "test_confidence")
  rng = np.random.default_rng(seed)
  n = min(retain.shape[0], test.shape[0])
  if retain.shape[0] > n:
    retain = retain[np.sort(rng.choice(retain.shape[0], n, replace=False))]
  if test.shape[0] > n:
    test = test[np.sort(rng.choice(test.shape[0], n, replace=False))]
  features = np.concatenate([retain, test])[:, None]
  is_member = np.concatenate([np.ones(n, np.int64), np.zeros(n, np.int64)])
  clf = SVC(C=C, gamma=gamma, kernel="rbf").fit(features, is_member)
  return float(np.mean(clf.predict(forget[:, None]) == 0))


# ---------------------------------------------------------------------------
# Average gap


def average_gap(metrics_u: Mapping[str, float], metrics_r: Mapping[str, float],
                keys: Sequence[str] = BENCHMARK_KEYS) -> float:
  """The mean absolute difference to the retrained model, in percentage points.

  `100 * mean over keys of |metrics_u[k] - metrics_r[k]|`, the figure the
  field ranks unlearning methods by (SalUn's "Avg. Gap"); metrics are
  fractions in [0, 1]. Smaller is closer to retraining.

  Args:
    metrics_u: the unlearned model's metrics, e.g. UA, RA, TA, MIA.
    metrics_r: the retrained model's, with the same keys.
    keys: which metrics to average.

  Returns:
    The average gap in percentage points.

  Example:
    >>> average_gap({"UA": 0.1, "RA": 1.0}, {"UA": 0.2, "RA": 0.9}, keys=("UA", "RA"))
    10.0
  """
  keys = tuple(keys)
  if not keys:
    raise ValueError("keys must name at least one metric")
  for name, m in (("metrics_u", metrics_u), ("metrics_r", metrics_r)):
    missing = [k for k in keys if k not in m]
    if missing:
      raise ValueError(f"{name} lacks {missing}; it has {sorted(m)}")
  gaps = [abs(float(metrics_u[k]) - float(metrics_r[k])) for k in keys]
  return 100.0 * sum(gaps) / len(gaps)


# ---------------------------------------------------------------------------
# NeurIPS 2023 challenge: forgetting quality


class ForgettingQuality(NamedTuple):
  """The challenge's forgetting quality and what it is made of.

  Attributes:
    quality: F, the mean of `points` over the forget set, in [0, 1].
    epsilons: `[E]` per-example epsilons in [0, EPSILON_CAP].
    points: `[E]` per-example points `2^-floor(eps / 0.5)`, 0 from the cutoff.
    num_models: N, the models on each side.
  """
  quality: jax.Array
  epsilons: jax.Array
  points: jax.Array
  num_models: int


def _check_num_models(num_models) -> int:
  if isinstance(num_models, bool) or not isinstance(num_models, (int, np.integer)):
    raise ValueError(f"num_models must be an integer; got {num_models!r}")
  if num_models < 3:
    raise ValueError(
        f"the challenge's score needs at least 3 models per side; got {num_models} (with 2, "
        "ceil(log(N - 1)) = 0 and every example scores 0)")
  return int(num_models)


def epsilon_cutoff(num_models: int) -> int:
  """`ceil(ln(N - 1))`: an example whose epsilon reaches it scores 0 points.

  The challenge's bins are [0, 0.5), [0.5, 1), ..., up to this cutoff
  (2 * cutoff bins, worth 1, 1/2, 1/4, ...).
  """
  return math.ceil(math.log(_check_num_models(num_models) - 1))


def max_finite_epsilon(num_models: int, *, delta: float = DELTA) -> float:
  """The largest finite epsilon a test between two samples of N can show.

  Rates are multiples of 1/N, and a threshold counts only when both its FPR
  and its FNR are positive, so the largest value of
  `log((1 - delta - FPR) / FNR)` is at FPR = FNR = 1/N:
  `ln(N - 1 - N * delta)`, just below `ln(N - 1)` and so below
  `epsilon_cutoff(N)`. Anything larger is perfect separation (infinite,
  capped at EPSILON_CAP) or a peaky sample (EPSILON_CAP). The per-example
  points therefore take the values 2^-k for k = 0 .. floor(2 ln(N - 1 - N delta))
  and 0, e.g. 1, 1/2, 1/4 and 0 with N = 4 and down to 2^-12 with N = 512.
  """
  n = _check_num_models(num_models)
  return math.log(n - 1 - n * delta)


def _as_model_scores(x, name: str) -> jax.Array:
  x = jnp.asarray(x)
  if x.ndim != 2:
    raise ValueError(f"{name} must have shape [num_models, num_examples]; got shape {x.shape}")
  if x.shape[1] == 0:
    raise ValueError(f"{name} has no forget example: shape {x.shape}")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    x = x.astype(jnp.result_type(float))
  if _is_concrete(x):
    bad = ~np.isfinite(np.asarray(x))
    if bad.any():
      model, example = np.unravel_index(int(np.argmax(bad)), bad.shape)
      raise ValueError(f"{name} is not finite at model {model}, example {example}")
  return x


def _check_score_pair(unlearned_scores, retrained_scores):
  u = _as_model_scores(unlearned_scores, "unlearned_scores")
  r = _as_model_scores(retrained_scores, "retrained_scores")
  if u.shape != r.shape:
    raise ValueError(
        f"unlearned_scores and retrained_scores must have the same shape [num_models, "
        f"num_examples]; got {u.shape} and {r.shape}")
  _check_num_models(u.shape[0])
  dtype = jnp.result_type(u, r)
  return u.astype(dtype), r.astype(dtype)


def _threshold_epsilon(tp, fp, valid, n: int, delta):
  """The epsilon of the best test among `valid` ones, from their TP / FP counts.

  Returns `(best finite epsilon over usable tests, any perfect test)`.
  """
  dtype = jnp.result_type(float)
  fpr = fp.astype(dtype) / n
  fnr = (n - tp).astype(dtype) / n
  perfect = valid & (fp == 0) & (tp == n)
  usable = valid & (fp > 0) & (tp < n)
  safe_fnr = jnp.where(usable, fnr, 1.0)
  safe_fpr = jnp.where(usable, fpr, 1.0)
  # A term whose 1 - delta - rate is not positive is undefined (the
  # reference's nanmax skips it); a test with neither term is discarded.
  a_ok, b_ok = 1.0 - delta - fpr > 0, 1.0 - delta - fnr > 0
  a = jnp.where(a_ok, jnp.log(jnp.where(a_ok, 1.0 - delta - fpr, 1.0)) - jnp.log(safe_fnr),
                -jnp.inf)
  b = jnp.where(b_ok, jnp.log(jnp.where(b_ok, 1.0 - delta - fnr, 1.0)) - jnp.log(safe_fpr),
                -jnp.inf)
  eps = jnp.maximum(jnp.maximum(a, b), 0.0)
  usable = usable & (a_ok | b_ok)
  return jnp.max(jnp.where(usable, eps, 0.0)), jnp.any(perfect)


def _example_epsilon(u: jax.Array, r: jax.Array, delta) -> jax.Array:
  """The challenge's epsilon for one forget example: `u`, `r` are `[N]` scores."""
  n = u.shape[0]
  pooled = jnp.concatenate([u, r])
  # Single threshold: "positive" is the sample with the larger median (the
  # unlearned one on ties); the test calls positive every score >= t.
  r_positive = jnp.median(r) > jnp.median(u)
  pos, neg = jnp.sort(jnp.where(r_positive, r, u)), jnp.sort(jnp.where(r_positive, u, r))
  tp = n - jnp.searchsorted(pos, pooled, side="left", method="compare_all")
  fp = n - jnp.searchsorted(neg, pooled, side="left", method="compare_all")
  eps_single, perfect_single = _threshold_epsilon(tp, fp, jnp.ones_like(tp, bool), n, delta)
  # Two thresholds: "positive" is the peakier sample (the smaller range; the
  # median-negative one on ties); the test calls positive every score in
  # [l, r]. Every interval whose ends are observed scores.
  pos_range, neg_range = pos[-1] - pos[0], neg[-1] - neg[0]
  swap = pos_range >= neg_range
  pos, neg = jnp.where(swap, neg, pos), jnp.where(swap, pos, neg)
  tp2 = (jnp.searchsorted(pos, pooled, side="right", method="compare_all")[None, :]
         - jnp.searchsorted(pos, pooled, side="left", method="compare_all")[:, None])
  fp2 = (jnp.searchsorted(neg, pooled, side="right", method="compare_all")[None, :]
         - jnp.searchsorted(neg, pooled, side="left", method="compare_all")[:, None])
  valid = pooled[:, None] <= pooled[None, :]
  eps_double, perfect_double = _threshold_epsilon(tp2, fp2, valid, n, delta)
  eps = jnp.where(perfect_single | perfect_double, jnp.inf, jnp.maximum(eps_single, eps_double))
  small, large = jnp.minimum(pos_range, neg_range), jnp.maximum(pos_range, neg_range)
  peaky = (large > 0) & (small < PEAKY_RATIO * large)
  return jnp.clip(jnp.where(peaky, EPSILON_CAP, eps), 0.0, EPSILON_CAP)


@jax.jit
def _quality(u: jax.Array, r: jax.Array, delta: jax.Array):
  """`(epsilons [E], points [E], F)` for scores `[N, E]`."""
  n = u.shape[0]
  # The two-threshold tests are a [2N, 2N] grid per example; bound the
  # examples evaluated at once so the working set stays near 2^24 entries.
  batch = max(1, 2**24 // (4 * n * n))
  one = lambda u_x, r_x: _example_epsilon(u_x, r_x, delta)
  if u.shape[1] <= batch:
    eps = jax.vmap(one)(u.T, r.T)
  else:
    eps = jax.lax.map(lambda ur: one(*ur), (u.T, r.T), batch_size=batch)
  points = _points(eps, epsilon_cutoff(n))
  return eps, points, jnp.mean(points)


@functools.partial(jax.jit, static_argnames="cutoff")
def _points(eps: jax.Array, cutoff: int) -> jax.Array:
  return jnp.where(eps < cutoff, jnp.exp2(-jnp.floor(eps / BUCKET_WIDTH)), 0.0)


def challenge_epsilons(unlearned_scores: ArrayLike, retrained_scores: ArrayLike, *,
                       delta: float = DELTA) -> jax.Array:
  """Per forget example, the epsilon of the challenge's threshold attacks.

  For each example x, the N unlearned and N retrained models give two
  samples of its score (the challenge uses the logit-scaled confidence).
  Every test below predicts which sample a score came from; with FPR and
  FNR its error rates,

    eps(test) = max(log(1 - delta - FPR) - log(FNR), log(1 - delta - FNR) - log(FPR)),

  clipped below at 0, and eps_x = the maximum over the tests. The tests and
  the edge cases follow the challenge's metric.py:

  * single threshold: "positive" = the sample with the larger median (the
    unlearned one when the medians tie); predict positive when score >= t;
  * two thresholds: "positive" = the peakier sample (smaller range, max -
    min; when the ranges tie, the one that is not positive above); predict
    positive when l <= score <= r;
  * FPR = FNR = 0 (a perfect test) makes eps_x infinite;
  * a test with exactly one of FPR, FNR zero is discarded (taken as too few
    samples), and so is one whose log terms are both undefined
    (1 - delta - rate <= 0); a term that alone is undefined is skipped;
  * if one sample's range is below 1% of the other's (a peaky sample,
    which the thresholds might not resolve), eps_x = EPSILON_CAP;
  * eps_x is clipped to [0, EPSILON_CAP = 50]. If every test is discarded
    (e.g. both samples the same constant), eps_x = 0, where the reference
    stops with an assertion.

  Thresholds: the reference scans a grid 0.01 apart (intervals only within
  2 of the peakier sample's range); here every threshold and interval whose
  ends are observed scores is tried. That family holds every split the grid
  can make, so eps_x here is at least the reference's, and equal whenever
  the grid holds a best test (its thresholds 0.01 apart can miss a split
  between closer scores, and its window can miss a wider interval). With N
  models a finite eps_x is at most `max_finite_epsilon(N)`.

  Args:
    unlearned_scores: `[N, E]`, N unlearned models' scores on E forget examples.
    retrained_scores: `[N, E]`, the same for N retrained models.
    delta: the delta of (epsilon, delta); the challenge uses 1e-5.

  Returns:
    `[E]` epsilons in [0, EPSILON_CAP].
  """
  u, r = _check_score_pair(unlearned_scores, retrained_scores)
  return _quality(u, r, jnp.asarray(delta, u.dtype))[0]


def epsilon_points(epsilons: ArrayLike, num_models: int) -> jax.Array:
  """The challenge's points per example: `2^-floor(eps / 0.5)`, 0 from the cutoff.

  An epsilon in [k/2, (k + 1)/2) is worth 2^-k for k < 2 * epsilon_cutoff(N),
  and 0 at or above `epsilon_cutoff(N) = ceil(ln(N - 1))`.
  """
  return _points(jnp.asarray(epsilons), epsilon_cutoff(num_models))


def forgetting_quality_from_scores(unlearned_scores: ArrayLike, retrained_scores: ArrayLike, *,
                                   delta: float = DELTA) -> ForgettingQuality:
  """The challenge's forgetting quality F from per-model scores.

  F = mean over forget examples of `epsilon_points(challenge_epsilons(...))`:
  1 for every example whose two samples no test tells apart (eps < 0.5), 0
  for perfectly separated ones. With N models the smallest positive points
  are `2^-floor(2 max_finite_epsilon(N))`, so F has that resolution (see
  `max_finite_epsilon`).

  Args:
    unlearned_scores: `[N, E]`, N unlearned models' logit-scaled confidences
      on E forget examples (rows: models).
    retrained_scores: `[N, E]`, the same for N retrained models.
    delta: the delta of (epsilon, delta).

  Returns:
    A `ForgettingQuality`.

  Example:
    >>> s = jnp.arange(8.0).reshape(4, 2)
    >>> float(forgetting_quality_from_scores(s, s).quality)  # the same models: F = 1
    1.0
  """
  u, r = _check_score_pair(unlearned_scores, retrained_scores)
  eps, points, quality = _quality(u, r, jnp.asarray(delta, u.dtype))
  return ForgettingQuality(quality, eps, points, int(u.shape[0]))


def forgetting_quality(unlearned_logits: ArrayLike, retrained_logits: ArrayLike,
                       labels: ArrayLike, *, delta: float = DELTA) -> ForgettingQuality:
  """The challenge's forgetting quality F from N unlearned and N retrained models.

  Each model's score on a forget example is its logit-scaled confidence
  `log p_y - log sum_{j != y} p_j` (`logit_scaled_confidence`, computed from
  the logits; the reference computes it from float64 probabilities with
  1e-45 added, which agrees until a probability falls below about 1e-45).
  Then `forgetting_quality_from_scores`.

  Args:
    unlearned_logits: `[N, E, C]`, N unlearned models' logits on E forget examples.
    retrained_logits: `[N, E, C]`, N retrained models'.
    labels: `[E]` the forget examples' labels.
    delta: the delta of (epsilon, delta).

  Returns:
    A `ForgettingQuality`.
  """
  scores = []
  for name, logits in (("unlearned_logits", unlearned_logits),
                       ("retrained_logits", retrained_logits)):
    logits = jnp.asarray(logits)
    if logits.ndim != 3:
      raise ValueError(
          f"{name} must have shape [num_models, num_examples, num_classes]; got {logits.shape}")
    # Validates the labels against one model's logits, then scores them all.
    stats_lib.logit_scaled_confidence(logits[0], labels)
    scores.append(jax.vmap(stats_lib._logit_scaled_confidence, in_axes=(0, None))(  # pylint: disable=protected-access
        logits.astype(jnp.result_type(logits, float)), jnp.asarray(labels)))
  return forgetting_quality_from_scores(*scores, delta=delta)


def challenge_score(quality: ForgettingQuality | ArrayLike, *,
                    retain_accuracy_unlearned: ArrayLike, retain_accuracy_retrained: ArrayLike,
                    test_accuracy_unlearned: ArrayLike,
                    test_accuracy_retrained: ArrayLike) -> float:
  """The challenge's final score: `F * (RA_u / RA_r) * (TA_u / TA_r)`.

  Each accuracy is averaged over the models given (the challenge averages
  its N unlearned and N retrained models). The ratios are not capped, so a
  method more accurate than retraining can score above F.

  Args:
    quality: a `ForgettingQuality` or F itself.
    retain_accuracy_unlearned: RA of the unlearned model(s), scalar or `[N]`.
    retain_accuracy_retrained: RA of the retrained model(s).
    test_accuracy_unlearned: TA of the unlearned model(s).
    test_accuracy_retrained: TA of the retrained model(s).

  Returns:
    The score.
  """
  f = quality.quality if isinstance(quality, ForgettingQuality) else quality
  means = {}
  for name, value in (("retain_accuracy_unlearned", retain_accuracy_unlearned),
                      ("retain_accuracy_retrained", retain_accuracy_retrained),
                      ("test_accuracy_unlearned", test_accuracy_unlearned),
                      ("test_accuracy_retrained", test_accuracy_retrained)):
    value = np.asarray(value, np.float64)
    if value.size == 0:
      raise ValueError(f"{name} is empty")
    means[name] = float(np.mean(value))
  for name in ("retain_accuracy_retrained", "test_accuracy_retrained"):
    if means[name] <= 0:
      raise ValueError(f"{name} must be positive to divide by; got {means[name]}")
  return (float(f) * means["retain_accuracy_unlearned"] / means["retain_accuracy_retrained"]
          * means["test_accuracy_unlearned"] / means["test_accuracy_retrained"])
