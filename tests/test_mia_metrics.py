"""Tests for forsaken_jax.mia.metrics and forsaken_jax.mia.forgetting."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sklearn.metrics
from scipy import stats as sps

from forsaken_jax.mia import forgetting, metrics


def _tied_scores(seed: int, num_members: int, num_nonmembers: int):
  """Integer-valued scores, so members and non-members tie often."""
  rng = np.random.default_rng(seed)
  members = rng.integers(0, 8, num_members).astype(np.float32) + 1.0
  nonmembers = rng.integers(0, 8, num_nonmembers).astype(np.float32)
  return members, nonmembers


def _sk_inputs(members, nonmembers):
  y = np.r_[np.ones(len(members)), np.zeros(len(nonmembers))]
  return y, np.r_[members, nonmembers]


def _brute_force_points(members, nonmembers):
  """(fpr, tpr) of `score >= t` for every observed t and +inf, by counting."""
  thresholds = np.r_[np.inf, np.unique(np.r_[members, nonmembers])[::-1]]
  fpr = np.array([(nonmembers >= t).mean() for t in thresholds])
  tpr = np.array([(members >= t).mean() for t in thresholds])
  return fpr, tpr, thresholds


@pytest.mark.parametrize("seed,num_members,num_nonmembers", [(0, 50, 50), (1, 37, 91), (2, 1, 5)])
def test_roc_curve_matches_sklearn_with_ties(seed, num_members, num_nonmembers):
  members, nonmembers = _tied_scores(seed, num_members, num_nonmembers)
  fpr, tpr, thresholds = metrics.roc_curve(members, nonmembers)
  sk_fpr, sk_tpr, sk_thr = sklearn.metrics.roc_curve(
      *_sk_inputs(members, nonmembers), drop_intermediate=False)
  np.testing.assert_allclose(fpr, sk_fpr, rtol=1e-6)
  np.testing.assert_allclose(tpr, sk_tpr, rtol=1e-6)
  np.testing.assert_array_equal(thresholds, sk_thr)


@pytest.mark.parametrize("seed,num_members,num_nonmembers", [(0, 50, 50), (3, 200, 31), (4, 3, 2)])
def test_roc_auc_matches_sklearn_with_ties(seed, num_members, num_nonmembers):
  members, nonmembers = _tied_scores(seed, num_members, num_nonmembers)
  expected = sklearn.metrics.roc_auc_score(*_sk_inputs(members, nonmembers))
  np.testing.assert_allclose(float(metrics.roc_auc(members, nonmembers)), expected, rtol=1e-6)
  # And it is the trapezoidal area under our own curve.
  fpr, tpr, _ = metrics.roc_curve(members, nonmembers)
  np.testing.assert_allclose(np.trapezoid(np.asarray(tpr), np.asarray(fpr)), expected, rtol=1e-6)
  assert metrics.auc is metrics.roc_auc


def test_roc_auc_continuous_scores_and_extremes():
  rng = np.random.default_rng(5)
  members, nonmembers = rng.normal(0.5, 1, 300), rng.normal(0, 1, 200)
  np.testing.assert_allclose(float(metrics.roc_auc(members, nonmembers)),
                             sklearn.metrics.roc_auc_score(*_sk_inputs(members, nonmembers)),
                             rtol=1e-6)
  assert float(metrics.roc_auc([2.0, 3.0], [0.0, 1.0])) == 1.0
  assert float(metrics.roc_auc([0.0, 1.0], [2.0, 3.0])) == 0.0
  assert float(metrics.roc_auc([1.0, 1.0], [1.0])) == 0.5
  assert float(metrics.roc_auc([np.inf, 0.0], [-np.inf, 0.0])) == 0.875


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("target", [0.0, 0.001, 0.01, 0.05, 0.29, 0.5, 0.999, 1.0])
def test_tpr_at_fpr_matches_brute_force(seed, target):
  members, nonmembers = _tied_scores(seed, 70, 100)
  if seed == 2:  # continuous scores, no ties
    rng = np.random.default_rng(seed)
    members, nonmembers = rng.normal(1, 1, 70), rng.normal(0, 1, 100)
  fpr, tpr, _ = _brute_force_points(members, nonmembers)
  expected = tpr[fpr <= target].max()
  np.testing.assert_allclose(float(metrics.tpr_at_fpr(members, nonmembers, target)), expected,
                             rtol=1e-6)


def test_tpr_at_fpr_boundary_is_inclusive():
  # 0.29 * 100 = 28.999999999999996 in floating point; 29 false positives are
  # still an FPR of exactly 0.29 and allowed.
  nonmembers = np.arange(100, dtype=np.float64)  # 0..99
  members = np.array([70.5, 71.5, 100.0])
  # FPR <= 0.29 allows 29 non-members (71..99) at or above the threshold, so
  # any threshold in (70, 71] works and catches all three members; one fewer
  # false positive forces the threshold above 71 and loses 70.5.
  assert 0.29 * 100 < 29
  assert float(metrics.tpr_at_fpr(members, nonmembers, 0.29)) == 1.0
  assert float(metrics.tpr_at_fpr(members, nonmembers, 0.289)) == pytest.approx(2 / 3)


def test_balanced_accuracy_matches_sklearn():
  rng = np.random.default_rng(6)
  is_member = rng.random(300) < 0.3
  predicted = rng.random(300) < 0.5
  np.testing.assert_allclose(float(metrics.balanced_accuracy(predicted, is_member)),
                             sklearn.metrics.balanced_accuracy_score(is_member, predicted),
                             rtol=1e-6)
  np.testing.assert_allclose(
      float(metrics.balanced_accuracy(predicted.astype(int), is_member.astype(int))),
      sklearn.metrics.balanced_accuracy_score(is_member, predicted), rtol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_best_balanced_accuracy_matches_brute_force(seed):
  members, nonmembers = _tied_scores(seed, 40, 60)
  fpr, tpr, thresholds = _brute_force_points(members, nonmembers)
  acc = 0.5 * (1 + tpr - fpr)
  best, threshold = metrics.best_balanced_accuracy(members, nonmembers)
  np.testing.assert_allclose(float(best), acc.max(), rtol=1e-6)
  # The threshold reaches it, and it is the highest threshold that does.
  reached = 0.5 * ((members >= float(threshold)).mean() + (nonmembers < float(threshold)).mean())
  np.testing.assert_allclose(reached, acc.max(), rtol=1e-6)
  assert float(threshold) == thresholds[np.argmax(acc >= acc.max() - 1e-12)]


def test_best_balanced_accuracy_chance_gives_infinite_threshold():
  best, threshold = metrics.best_balanced_accuracy([1.0, 1.0], [1.0, 1.0])
  assert float(best) == 0.5 and float(threshold) == np.inf


def test_gaussian_scores_match_analytic_roc():
  # Members N(mu, 1), non-members N(0, 1): AUC = Phi(mu / sqrt 2) and
  # TPR at FPR f = 1 - Phi(Phi^-1(1 - f) - mu).
  rng = np.random.default_rng(8)
  n = 20_000
  for mu in (1.0, 3.0):
    members, nonmembers = rng.normal(mu, 1, n), rng.normal(0, 1, n)
    np.testing.assert_allclose(float(metrics.roc_auc(members, nonmembers)),
                               sps.norm.cdf(mu / np.sqrt(2)), atol=0.01)
    for fpr, tol in ((0.001, 0.08), (0.01, 0.04), (0.1, 0.02)):
      analytic = 1 - sps.norm.cdf(sps.norm.ppf(1 - fpr) - mu)
      np.testing.assert_allclose(float(metrics.tpr_at_fpr(members, nonmembers, fpr)), analytic,
                                 atol=tol)
    # Best balanced accuracy: threshold at mu / 2, accuracy Phi(mu / 2).
    best, threshold = metrics.best_balanced_accuracy(members, nonmembers)
    np.testing.assert_allclose(float(best), sps.norm.cdf(mu / 2), atol=0.01)


def test_summarize():
  rng = np.random.default_rng(9)
  members, nonmembers = rng.normal(1, 1, 500), rng.normal(0, 1, 400)
  out = metrics.summarize(members, nonmembers)
  assert set(out) == {"auc", "auc_std", "balanced_accuracy", "threshold", "tpr_at_fpr_0.001",
                      "tpr_at_fpr_0.01", "num_members", "num_nonmembers"}
  assert all(isinstance(v, (float, int)) for v in out.values())
  np.testing.assert_allclose(out["auc"],
                             sklearn.metrics.roc_auc_score(*_sk_inputs(members, nonmembers)),
                             rtol=1e-5)
  fpr, tpr, _ = _brute_force_points(members, nonmembers)
  np.testing.assert_allclose(out["tpr_at_fpr_0.01"], tpr[fpr <= 0.01].max(), rtol=1e-6)
  np.testing.assert_allclose(out["balanced_accuracy"], (0.5 * (1 + tpr - fpr)).max(), rtol=1e-6)
  assert (out["num_members"], out["num_nonmembers"]) == (500, 400)
  assert "tpr_at_fpr_0.1" in metrics.summarize(members, nonmembers, fprs=(0.1,))


def test_jit_compatible():
  rng = np.random.default_rng(10)
  members = jnp.asarray(rng.normal(1, 1, 64), jnp.float32)
  nonmembers = jnp.asarray(rng.normal(0, 1, 48), jnp.float32)
  np.testing.assert_allclose(jax.jit(metrics.roc_auc)(members, nonmembers),
                             metrics.roc_auc(members, nonmembers), rtol=1e-6)
  tpr = jax.jit(functools.partial(metrics.tpr_at_fpr, fpr=0.1))
  np.testing.assert_allclose(tpr(members, nonmembers), metrics.tpr_at_fpr(members, nonmembers, 0.1))
  best = jax.jit(metrics.best_balanced_accuracy)(members, nonmembers)
  np.testing.assert_allclose(best, metrics.best_balanced_accuracy(members, nonmembers))


def test_bad_inputs_raise():
  ok = np.array([1.0, 2.0])
  with pytest.raises(ValueError, match="member_scores must not be empty"):
    metrics.roc_auc(np.array([]), ok)
  with pytest.raises(ValueError, match="nonmember_scores must not be empty"):
    metrics.roc_curve(ok, np.array([]))
  with pytest.raises(ValueError, match=r"member_scores must be a 1-D array.*\(2, 2\)"):
    metrics.tpr_at_fpr(np.ones((2, 2)), ok, 0.1)
  with pytest.raises(ValueError, match="nonmember_scores contains NaN at index 1"):
    metrics.summarize(ok, np.array([0.0, np.nan]))
  with pytest.raises(ValueError, match="fpr must lie in"):
    metrics.tpr_at_fpr(ok, ok, 1.5)
  with pytest.raises(ValueError, match="same shape"):
    metrics.balanced_accuracy(np.array([True]), np.array([True, False]))
  with pytest.raises(ValueError, match="both members and non-members; got 2 members out of 2"):
    metrics.balanced_accuracy(np.array([True, False]), np.array([True, True]))
  with pytest.raises(ValueError, match="must be boolean"):
    metrics.balanced_accuracy(np.array([0.3, 0.9]), np.array([True, False]))


# --- forgetting rate ---------------------------------------------------------


def test_forgetting_rate_hand_built():
  before = np.array([1, 1, 1, 1, 1, 1, 1, 1, 0, 0], bool)  # B_T = 8, B_F = 2
  after = np.array([0, 0, 0, 0, 0, 0, 1, 1, 0, 1], bool)  # A_F = 7
  fr = forgetting.forgetting_rate(before, after, oracle="threshold:loss")
  assert (fr.b_t, fr.b_f, fr.a_f, fr.n, fr.a_t) == (8, 2, 7, 10, 3)
  assert fr.rate == pytest.approx((7 - 2) / 8)
  assert fr.oracle == "threshold:loss"
  assert str(fr) == "62.5% (B_T=8, B_F=2, A_F=7, oracle=threshold:loss)"


def test_forgetting_rate_full_and_format():
  before = np.ones(100, bool)
  after = np.r_[np.zeros(93, bool), np.ones(7, bool)]
  fr = forgetting.forgetting_rate(before, after)
  assert fr.rate == pytest.approx(0.93)
  assert str(fr) == "93.0% (B_T=100, B_F=0, A_F=93)"
  assert fr.format(digits=2) == "93.00% (B_T=100, B_F=0, A_F=93)"


def test_forgetting_rate_undefined_when_nothing_judged_member():
  fr = forgetting.forgetting_rate(np.zeros(5, bool), np.zeros(5, bool), oracle="lira_online")
  assert fr.rate is None and not fr.defined
  assert (fr.b_t, fr.b_f, fr.a_f) == (0, 5, 5)
  assert str(fr) == "undefined (B_T=0, oracle=lira_online)"
  assert forgetting.forgetting_rate(np.zeros(3, bool), np.ones(3, bool)).format() == \
      "undefined (B_T=0)"


def test_forgetting_rate_can_be_negative():
  # Before: 2 members, 2 non-members. After: all 4 judged member, A_F = 0.
  fr = forgetting.forgetting_rate(np.array([1, 1, 0, 0]), np.array([1, 1, 1, 1]))
  assert fr.rate == pytest.approx((0 - 2) / 2) == -1.0
  assert str(fr) == "-100.0% (B_T=2, B_F=2, A_F=0)"


def test_forgetting_rate_accepts_jax_arrays_and_is_frozen():
  fr = forgetting.forgetting_rate(jnp.array([True, False]), jnp.array([False, False]))
  assert fr.rate == 1.0  # B_T = 1, B_F = 1, A_F = 2: (2 - 1) / 1
  with pytest.raises(Exception):
    fr.rate = 1.0  # type: ignore[misc]


def test_forgetting_rate_bad_inputs_raise():
  with pytest.raises(ValueError, match=r"same samples; got shapes \(3,\) and \(2,\)"):
    forgetting.forgetting_rate(np.ones(3, bool), np.ones(2, bool))
  with pytest.raises(ValueError, match="member_before must not be empty"):
    forgetting.forgetting_rate(np.array([], bool), np.array([], bool))
  with pytest.raises(ValueError, match="member_after must hold boolean.*float"):
    forgetting.forgetting_rate(np.ones(2, bool), np.array([0.2, 0.9]))
  with pytest.raises(ValueError, match="member_before must hold only 0 and 1; got 2"):
    forgetting.forgetting_rate(np.array([0, 2]), np.ones(2, bool))
  with pytest.raises(ValueError, match="1-D"):
    forgetting.forgetting_rate(np.ones((2, 2), bool), np.ones((2, 2), bool))


def test_auc_standard_error_matches_the_spread_of_simulated_aucs():
  # Two Gaussian score populations; the empirical spread of the AUC over many
  # independent draws is what the closed form must predict.
  roc_auc_score = sklearn.metrics.roc_auc_score
  rng = np.random.default_rng(0)
  m, n, mu = 200, 150, 0.8
  aucs = []
  for _ in range(1500):
    pos, neg = rng.normal(mu, 1.0, m), rng.normal(0.0, 1.0, n)
    aucs.append(roc_auc_score(np.r_[np.ones(m), np.zeros(n)], np.r_[pos, neg]))
  predicted = metrics.auc_standard_error(float(np.mean(aucs)), m, n)
  assert abs(predicted - np.std(aucs)) < 0.1 * np.std(aucs)
  summary = metrics.summarize(rng.normal(mu, 1.0, m), rng.normal(0.0, 1.0, n))
  assert summary["auc_std"] == pytest.approx(
      metrics.auc_standard_error(summary["auc"], m, n))
  with pytest.raises(ValueError, match="at least one"):
    metrics.auc_standard_error(0.5, 0, 10)
