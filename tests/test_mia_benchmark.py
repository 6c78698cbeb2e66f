"""Tests for forsaken_jax.mia.benchmark."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.svm import SVC

from forsaken_jax import mia
from forsaken_jax.mia import benchmark

DELTA = benchmark.DELTA


# --- accuracy_metrics ---------------------------------------------------------------------


def _logits_for(predictions, num_classes=3):
  return jax.nn.one_hot(jnp.asarray(predictions), num_classes) * 4.0


def test_accuracy_metrics_by_hand():
  forget_pred, forget_y = [0, 1, 2, 2], [0, 0, 0, 0]  # 1 of 4 right: UA = 3/4
  retain_pred, retain_y = [1, 1, 2], [1, 1, 0]  # 2 of 3
  test_pred, test_y = [0, 1, 2, 0, 1], [0, 1, 2, 2, 2]  # 3 of 5; classes 0 and 1: 2 of 2
  for as_logits in (False, True):
    wrap = _logits_for if as_logits else jnp.asarray
    m = mia.accuracy_metrics(wrap(forget_pred), jnp.array(forget_y), wrap(retain_pred),
                             jnp.array(retain_y), wrap(test_pred), jnp.array(test_y))
    assert set(m) == {"UA", "RA", "TA"}
    np.testing.assert_allclose([m["UA"], m["RA"], m["TA"]], [3 / 4, 2 / 3, 3 / 5], rtol=1e-6)
    m = mia.accuracy_metrics(wrap(forget_pred), jnp.array(forget_y), wrap(retain_pred),
                             jnp.array(retain_y), wrap(test_pred), jnp.array(test_y),
                             exclude_class=2)
    np.testing.assert_allclose(m["TA"], 1.0)


def test_accuracy_metrics_under_jit_with_a_traced_class():
  rng = np.random.default_rng(0)
  args = []
  for n in (7, 20, 30):
    args += [jnp.asarray(rng.normal(size=(n, 4)), jnp.float32), jnp.asarray(rng.integers(0, 4, n))]
  eager = mia.accuracy_metrics(*args, exclude_class=1)
  jitted = jax.jit(mia.accuracy_metrics)(*args, exclude_class=1)  # the class traced
  for k in eager:
    np.testing.assert_allclose(jitted[k], eager[k], rtol=1e-6)
  test_logits, test_y = args[4], args[5]
  keep = np.asarray(test_y) != 1
  expected = np.mean(np.argmax(test_logits, -1)[keep] == np.asarray(test_y)[keep])
  np.testing.assert_allclose(eager["TA"], expected, rtol=1e-6)


@pytest.mark.parametrize("change,match", [
    (lambda a: {**a, "forget_outputs": jnp.zeros((0, 3)), "forget_labels": jnp.zeros(0, int)},
     "forget set is empty"),
    (lambda a: {**a, "retain_labels": jnp.zeros(4, int)}, "retain_labels must have shape"),
    (lambda a: {**a, "test_outputs": jnp.zeros(5)}, "integer predictions"),
    (lambda a: {**a, "test_outputs": jnp.zeros((5, 3, 1))}, "logits"),
    (lambda a: {**a, "forget_labels": jnp.zeros(2)}, "forget_labels must be integers"),
    (lambda a: {**a, "exclude_class": 0}, "leaves no test example"),
])
def test_accuracy_metrics_refuses_bad_input(change, match):
  args = {"forget_outputs": jnp.zeros((2, 3)), "forget_labels": jnp.zeros(2, int),
          "retain_outputs": jnp.zeros((3, 3)), "retain_labels": jnp.zeros(3, int),
          "test_outputs": jnp.zeros((5, 3)), "test_labels": jnp.zeros(5, int)}
  args = change(args)
  cls = args.pop("exclude_class", None)
  with pytest.raises(ValueError, match=match):
    mia.accuracy_metrics(**args, exclude_class=cls)


# --- mia_efficacy --------------------------------------------------------------------------


def test_mia_efficacy_determined_cases():
  members, unseen = np.ones(40), np.full(40, 0.1)
  assert mia.mia_efficacy(np.ones(7), members, unseen) == 0.0  # all look like members
  assert mia.mia_efficacy(np.full(7, 0.1), members, unseen) == 1.0  # all look unseen
  # 3 of 5 forget examples sit at the non-members' confidence: 3/5.
  forget = np.array([1.0, 0.1, 0.1, 0.98, 0.12])
  assert mia.mia_efficacy(forget, members, unseen) == pytest.approx(0.6)


def test_mia_efficacy_balances_by_subsampling_the_larger_side():
  # 1000 members against 10 test examples: without balancing an SVC can call
  # everything a member; balanced, the two clusters split at their gap.
  members, unseen = np.ones(1000), np.full(10, 0.1)
  forget = np.array([1.0, 0.1, 0.1, 0.1])
  assert mia.mia_efficacy(forget, members, unseen) == pytest.approx(0.75)
  # The test side larger: it is the one subsampled.
  assert mia.mia_efficacy(forget, unseen[:5], np.full(600, 1.0)) == pytest.approx(0.25)


def test_mia_efficacy_is_salun_svc_and_seeded():
  rng = np.random.default_rng(1)
  retain = rng.beta(5, 1, 300)
  test = rng.beta(2, 2, 300)
  forget = rng.beta(3, 2, 50)
  # Equal sides: nothing is subsampled, so this is exactly SVC(C=3, gamma="auto").
  clf = SVC(C=3, gamma="auto", kernel="rbf").fit(
      np.r_[retain, test][:, None], np.r_[np.ones(300), np.zeros(300)])
  expected = float(np.mean(clf.predict(forget[:, None]) == 0))
  assert mia.mia_efficacy(forget, retain, test) == expected
  # Unequal sides: the seed picks the subsample; the same seed, the same answer.
  big_retain = rng.beta(5, 1, 900)
  a = mia.mia_efficacy(forget, big_retain, test, seed=3)
  assert a == mia.mia_efficacy(forget, big_retain, test, seed=3)
  assert 0.0 <= a <= 1.0


@pytest.mark.parametrize("forget,retain,test,match", [
    (np.zeros(0), np.ones(3), np.zeros(3), "forget_confidence must not be empty"),
    (np.ones(2), np.zeros(0), np.zeros(3), "retain_confidence must not be empty"),
    (np.ones(2), np.ones(3), np.zeros((3, 1)), "test_confidence must be a 1-D"),
    (np.ones(2), np.array([0.5, 3.2]), np.zeros(3), "retain_confidence must hold probabilities"),
    (np.array([np.nan, 1.0]), np.ones(3), np.zeros(3), "forget_confidence must hold"),
])
def test_mia_efficacy_refuses_bad_input(forget, retain, test, match):
  with pytest.raises(ValueError, match=match):
    mia.mia_efficacy(forget, retain, test)


# --- average_gap ---------------------------------------------------------------------------


def test_average_gap():
  u = {"UA": 0.10, "RA": 0.99, "TA": 0.90, "MIA": 0.20}
  r = {"UA": 0.08, "RA": 1.00, "TA": 0.92, "MIA": 0.25, "extra": 5.0}
  assert mia.average_gap(u, r) == pytest.approx((2 + 1 + 2 + 5) / 4)
  assert mia.average_gap(u, u) == 0.0
  with pytest.raises(ValueError, match=r"metrics_u lacks \['extra'\]"):
    mia.average_gap(u, r, keys=("UA", "extra"))


# --- forgetting quality ----------------------------------------------------------------------


def _brute_force_epsilon(u, r, delta=DELTA):
  """The documented definition, one test at a time, in float64."""
  u, r = np.asarray(u, np.float64), np.asarray(r, np.float64)
  small, large = sorted([np.ptp(u), np.ptp(r)])
  if large > 0 and small < 0.01 * large:
    return benchmark.EPSILON_CAP
  values = np.unique(np.r_[u, r])
  pos, neg = (r, u) if np.median(r) > np.median(u) else (u, r)
  rates = [((pos >= t).mean(), (neg >= t).mean()) for t in values]
  pos, neg = (neg, pos) if np.ptp(pos) >= np.ptp(neg) else (pos, neg)
  rates += [(((pos >= lo) & (pos <= hi)).mean(), ((neg >= lo) & (neg <= hi)).mean())
            for lo in values for hi in values if lo <= hi]
  best = 0.0
  for tpr, fpr in rates:
    fnr = 1.0 - tpr
    if fpr == 0 and fnr == 0:
      return benchmark.EPSILON_CAP  # infinite, then capped
    if fpr == 0 or fnr == 0:
      continue
    terms = [math.log(1 - delta - a) - math.log(b) for a, b in ((fpr, fnr), (fnr, fpr))
             if 1 - delta - a > 0]
    if terms:
      best = max(best, max(terms))
  return min(best, benchmark.EPSILON_CAP)


def _hand_case():
  """Four forget examples, N = 4 models per side; columns are examples.

  0: the same four scores on both sides: no test errs less than chance, eps 0.
  1: retrained {0, 10, 11, 12}, unlearned {-3, -2, -1, 11.5}: retrained has the
     larger median; "score >= 5" errs once on each side (FPR = FNR = 1/4), and
     no test is perfect (any interval holding all of retrained holds 11.5):
     eps = ln((1 - delta - 1/4) / (1/4)) = ln(3 - 4 delta), in [1, 1.5): 1/4 point.
  2: unlearned {1, 2, 3, 4} = retrained {0, 1, 2, 3} + 1: "score >= 3" has
     FPR 1/4, FNR 1/2, so eps = ln((1 - delta - 1/2) / (1/4)) = ln(2 - 4 delta),
     in [0.5, 1): 1/2 point (every other threshold or interval is no better).
  3: unlearned constant 5 against retrained {0, 1, 2, 3}: a peaky sample, eps = 50: 0.
  """
  retrained = np.array([[0, 0, 0, 0], [1, 10, 1, 1], [2, 11, 2, 2], [3, 12, 3, 3]], np.float32)
  unlearned = np.array([[0, -3, 1, 5], [1, -2, 2, 5], [2, -1, 3, 5], [3, 11.5, 4, 5]],
                       np.float32)
  unlearned[:, 0] = retrained[::-1, 0]  # the same scores, from other models
  eps = [0.0, math.log(3 - 4 * DELTA), math.log(2 - 4 * DELTA), benchmark.EPSILON_CAP]
  return unlearned, retrained, eps, [1.0, 0.25, 0.5, 0.0]


def test_forgetting_quality_hand_computed_n4():
  unlearned, retrained, eps, points = _hand_case()
  fq = mia.forgetting_quality_from_scores(unlearned, retrained)
  np.testing.assert_allclose(fq.epsilons, eps, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(fq.points, points)
  assert float(fq.quality) == pytest.approx(sum(points) / 4)  # 0.4375
  assert fq.num_models == 4
  for j in range(4):
    assert _brute_force_epsilon(unlearned[:, j], retrained[:, j]) == pytest.approx(
        eps[j], rel=1e-6)
  # The final score weighs F by the mean utilities of the models.
  score = mia.challenge_score(fq, retain_accuracy_unlearned=[0.9, 0.8],
                              retain_accuracy_retrained=[1.0, 1.0],
                              test_accuracy_unlearned=0.6, test_accuracy_retrained=[0.8, 0.8])
  assert score == pytest.approx(0.4375 * 0.85 * 0.75)


def test_identical_distributions_score_one():
  rng = np.random.default_rng(0)
  scores = rng.normal(size=(6, 16)).astype(np.float32)
  fq = mia.forgetting_quality_from_scores(scores, scores[rng.permutation(6)])
  np.testing.assert_array_equal(fq.epsilons, 0.0)
  assert float(fq.quality) == 1.0
  # Both samples one constant: every test is discarded, eps 0 (no assertion).
  fq = mia.forgetting_quality_from_scores(np.full((6, 16), 3.0), np.full((6, 16), 3.0))
  assert float(fq.quality) == 1.0


def test_perfectly_separated_distributions_score_zero():
  rng = np.random.default_rng(1)
  retrained = rng.normal(size=(6, 16)).astype(np.float32)
  # Shifted above everything: a single threshold separates them.
  fq = mia.forgetting_quality_from_scores(retrained + 20.0, retrained)
  np.testing.assert_array_equal(fq.epsilons, benchmark.EPSILON_CAP)
  assert float(fq.quality) == 0.0
  # Inside the other's spread: only an interval separates them.
  wide = np.array([-10.0, -1.0, 1.0, 10.0])[:, None]
  narrow = np.array([-0.5, 0.0, 0.2, 0.5])[:, None]
  assert float(mia.challenge_epsilons(narrow, wide)[0]) == benchmark.EPSILON_CAP
  assert _brute_force_epsilon(narrow[:, 0], wide[:, 0]) == benchmark.EPSILON_CAP


@pytest.mark.parametrize("seed,num_models,integer", [(0, 5, True), (1, 6, False), (2, 6, True)])
def test_epsilons_match_brute_force(seed, num_models, integer):
  rng = np.random.default_rng(seed)
  num_examples = 16
  shift = rng.normal(0, 1.5, num_examples)
  u = rng.normal(shift, 1.0, (num_models, num_examples))
  r = rng.normal(0, rng.uniform(0.5, 2, num_examples), (num_models, num_examples))
  if integer:  # ties within and across the samples
    u, r = np.round(u), np.round(r)
  u, r = u.astype(np.float32), r.astype(np.float32)
  got = np.asarray(mia.challenge_epsilons(u, r))
  want = [_brute_force_epsilon(u[:, j], r[:, j]) for j in range(num_examples)]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _one_error_each_way(num_models):
  """Scores whose best test errs once on each side: eps = ln(N - 1 - N delta)."""
  n = num_models
  retrained = np.r_[0.0, 10.0 + np.arange(n - 1)]
  unlearned = np.r_[-1.0 - np.arange(n - 1), 10.5]
  return unlearned[:, None].astype(np.float32), retrained[:, None].astype(np.float32)


@pytest.mark.parametrize("num_models", [4, 512])
def test_resolution_depends_on_num_models(num_models):
  u, r = _one_error_each_way(num_models)
  largest = mia.max_finite_epsilon(num_models)
  assert largest == pytest.approx(math.log(num_models - 1 - num_models * DELTA))
  assert largest < mia.epsilon_cutoff(num_models) == math.ceil(math.log(num_models - 1))
  fq = mia.forgetting_quality_from_scores(u, r)
  np.testing.assert_allclose(fq.epsilons, [largest], rtol=1e-5)
  # The smallest positive points N models can give: 1/4 with 4, 2^-12 with 512.
  assert float(fq.points[0]) == 2.0 ** -math.floor(2 * largest)


def test_smallest_positive_points_by_num_models():
  smallest = {n: 2.0 ** -math.floor(2 * mia.max_finite_epsilon(n)) for n in (3, 4, 16, 64, 512)}
  assert smallest == {3: 2**-1, 4: 2**-2, 16: 2**-5, 64: 2**-8, 512: 2**-12}
  assert {n: mia.epsilon_cutoff(n) for n in (3, 4, 16, 64, 512)} == {3: 1, 4: 2, 16: 3, 64: 5,
                                                                     512: 7}


def test_no_finite_epsilon_exceeds_the_resolution():
  rng = np.random.default_rng(3)
  for n in (5, 6):
    u = np.round(rng.normal(1, 1, (n, 16))).astype(np.float32)
    r = np.round(rng.normal(0, 1, (n, 16))).astype(np.float32)
    eps = np.asarray(mia.challenge_epsilons(u, r))
    finite = eps < benchmark.EPSILON_CAP
    assert np.all(eps[finite] <= mia.max_finite_epsilon(n) + 1e-5)
    np.testing.assert_array_equal(mia.epsilon_points(eps, n)[~finite], 0.0)


def test_epsilon_points_bins():
  # N = 8: cutoff ceil(ln 7) = 2, bins of 0.5 worth 1, 1/2, 1/4, 1/8, then 0.
  eps = jnp.array([0.0, 0.49, 0.5, 1.2, 1.99, 2.0, 50.0])
  np.testing.assert_array_equal(mia.epsilon_points(eps, 8), [1, 1, 0.5, 0.25, 0.125, 0, 0])


def test_forgetting_quality_from_logits():
  rng = np.random.default_rng(4)
  labels = rng.integers(0, 3, 16)
  unlearned = rng.normal(size=(5, 16, 3)).astype(np.float32)
  retrained = rng.normal(size=(5, 16, 3)).astype(np.float32)
  fq = mia.forgetting_quality(unlearned, retrained, labels)
  scores = [np.stack([mia.logit_scaled_confidence(m, labels) for m in s])
            for s in (unlearned, retrained)]
  want = mia.forgetting_quality_from_scores(*scores)
  np.testing.assert_allclose(fq.epsilons, want.epsilons, rtol=1e-6)
  assert float(fq.quality) == float(want.quality)
  with pytest.raises(ValueError, match="labels must lie in"):
    mia.forgetting_quality(unlearned, retrained, labels + 3)


@pytest.mark.parametrize("u,r,match", [
    (np.zeros((4, 3)), np.zeros((4, 2)), "must have the same shape"),
    (np.zeros((2, 3)), np.zeros((2, 3)), "at least 3 models"),
    (np.zeros((4, 0)), np.zeros((4, 0)), "no forget example"),
    (np.zeros(4), np.zeros(4), r"shape \[num_models, num_examples\]"),
    (np.full((4, 2), np.nan), np.zeros((4, 2)), "unlearned_scores is not finite"),
])
def test_forgetting_quality_refuses_bad_input(u, r, match):
  with pytest.raises(ValueError, match=match):
    mia.forgetting_quality_from_scores(u, r)


def test_challenge_score_refuses_zero_retrained_accuracy():
  with pytest.raises(ValueError, match="test_accuracy_retrained must be positive"):
    mia.challenge_score(0.5, retain_accuracy_unlearned=1.0, retain_accuracy_retrained=1.0,
                        test_accuracy_unlearned=1.0, test_accuracy_retrained=0.0)
