"""Tests for the threshold, LiRA and Shokri attacks in forsaken_jax.mia."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sklearn.metrics
from scipy import stats as sps

from forsaken_jax.mia import lira, metrics, shokri, stats, threshold


def _auc(member_scores, nonmember_scores) -> float:
  y = np.r_[np.ones(len(member_scores)), np.zeros(len(nonmember_scores))]
  return sklearn.metrics.roc_auc_score(y, np.r_[member_scores, nonmember_scores])


# --- threshold attack --------------------------------------------------------


def test_threshold_separable_data_is_perfect():
  members = np.array([2.0, 5.0, 3.0, 2.5])
  nonmembers = np.array([-1.0, 0.5, 1.0])
  attack = threshold.fit_threshold(members, nonmembers)
  assert float(attack.balanced_accuracy) == 1.0
  assert float(attack.threshold) == pytest.approx(1.5)  # halfway between 1.0 and 2.0
  assert np.asarray(threshold.predict_member(attack, members)).all()
  assert not np.asarray(threshold.predict_member(attack, nonmembers)).any()


def test_threshold_two_gaussians_near_midpoint():
  rng = np.random.default_rng(0)
  members, nonmembers = rng.normal(2.0, 1.0, 5000), rng.normal(0.0, 1.0, 5000)
  attack = threshold.fit_threshold(members, nonmembers)
  # Equal variances and class weights: the Bayes threshold is the midpoint.
  assert abs(float(attack.threshold) - 1.0) < 0.15
  np.testing.assert_allclose(float(attack.balanced_accuracy), sps.norm.cdf(1.0), atol=0.015)
  # The reported accuracy is what the fitted rule reaches on the fitting data.
  predicted = np.asarray(threshold.predict_member(attack, np.r_[members, nonmembers]))
  truth = np.r_[np.ones(5000, bool), np.zeros(5000, bool)]
  np.testing.assert_allclose(sklearn.metrics.balanced_accuracy_score(truth, predicted),
                             float(attack.balanced_accuracy), rtol=1e-6)


def test_threshold_with_ties_is_deterministic_and_consistent():
  rng = np.random.default_rng(1)
  members = rng.integers(0, 5, 100).astype(np.float32) + 1
  nonmembers = rng.integers(0, 5, 120).astype(np.float32)
  a1 = threshold.fit_threshold(members, nonmembers)
  a2 = threshold.fit_threshold(members, nonmembers)
  assert float(a1.threshold) == float(a2.threshold)
  best, _ = metrics.best_balanced_accuracy(members, nonmembers)
  np.testing.assert_allclose(float(a1.balanced_accuracy), float(best), rtol=1e-6)
  reached = 0.5 * (np.mean(members >= float(a1.threshold)) +
                   np.mean(nonmembers < float(a1.threshold)))
  np.testing.assert_allclose(reached, float(best), rtol=1e-6)


def test_threshold_uninformative_predicts_no_member():
  attack = threshold.fit_threshold(np.zeros(4), np.zeros(3))
  assert float(attack.threshold) == np.inf and float(attack.balanced_accuracy) == 0.5
  assert not np.asarray(threshold.predict_member(attack, np.array([1e30]))).any()


def test_threshold_on_membership_score_of_logits():
  # Members: confident logits; non-members: flat. The loss attack via
  # membership_score separates them perfectly.
  rng = np.random.default_rng(2)
  labels = rng.integers(0, 5, 200)
  logits = rng.normal(scale=0.1, size=(200, 5))
  logits[np.arange(100), labels[:100]] += 6.0
  scores = stats.membership_score("loss", logits, labels)
  attack = threshold.fit_threshold(scores[:100], scores[100:])
  assert float(attack.balanced_accuracy) == 1.0
  assert jax.jit(threshold.fit_threshold)(scores[:100], scores[100:]).threshold == attack.threshold


def test_threshold_bad_inputs_raise():
  with pytest.raises(ValueError, match="member_scores must not be empty"):
    threshold.fit_threshold(np.array([]), np.ones(3))
  with pytest.raises(ValueError, match="nonmember_scores must be a 1-D"):
    threshold.fit_threshold(np.ones(3), np.ones((3, 1)))


# --- LiRA --------------------------------------------------------------------


def test_balanced_keep_masks_exact_halves():
  keep = lira.balanced_keep_masks(jax.random.key(0), 16, 1000)
  assert keep.shape == (16, 1000) and keep.dtype == jnp.bool_
  np.testing.assert_array_equal(np.asarray(keep).sum(axis=0), 8)
  per_model = np.asarray(keep).sum(axis=1)
  # Binomial(1000, 1/2) per model: sd ~ 16.
  assert np.all(np.abs(per_model - 500) < 80)
  other = lira.balanced_keep_masks(jax.random.key(1), 16, 1000)
  assert not np.array_equal(keep, other)
  np.testing.assert_array_equal(keep, lira.balanced_keep_masks(jax.random.key(0), 16, 1000))


@pytest.mark.parametrize("num_models", [3, 0, -2, 2.0])
def test_balanced_keep_masks_bad_num_models(num_models):
  with pytest.raises(ValueError, match="num_models must be an even integer >= 2"):
    lira.balanced_keep_masks(jax.random.key(0), num_models, 10)


def _simulate(seed, num_models, num_examples, *, gap=3.0, difficulty_sd=2.0, target_gap=None):
  """Shadow and target statistics with per-example difficulty.

  Statistic of example n under a model = d_n + gap * [n in training] + noise,
  noise ~ N(0, 1). The target model's membership is an independent fair coin.
  """
  rng = np.random.default_rng(seed)
  keep = np.asarray(lira.balanced_keep_masks(jax.random.key(seed), num_models, num_examples))
  difficulty = difficulty_sd * rng.normal(size=num_examples)
  shadow = difficulty + gap * keep + rng.normal(size=keep.shape)
  is_member = rng.random(num_examples) < 0.5
  tgap = gap if target_gap is None else target_gap
  target = difficulty + tgap * is_member + rng.normal(size=num_examples)
  return target, shadow, keep, is_member


@pytest.mark.parametrize("num_models", [16, 64])
def test_lira_reaches_bayes_auc_on_gaussians(num_models):
  target, shadow, keep, is_member = _simulate(3, num_models, 2000)
  # Bayes-optimal test between N(d + 3, 1) and N(d, 1) knowing d: AUC = Phi(3/sqrt 2).
  bayes = sps.norm.cdf(3.0 / np.sqrt(2))
  online = np.asarray(lira.lira_online(target, shadow, keep))
  offline = np.asarray(lira.lira_offline(target, shadow, keep))
  fixed = np.asarray(lira.lira_online(target, shadow, keep, fixed_variance=True))
  auc_online = _auc(online[is_member], online[~is_member])
  auc_offline = _auc(offline[is_member], offline[~is_member])
  auc_fixed = _auc(fixed[is_member], fixed[~is_member])
  assert abs(auc_online - bayes) < 0.02
  assert abs(auc_fixed - bayes) < 0.02
  assert auc_offline > 0.9
  # A global threshold on the raw statistic ignores per-example difficulty:
  # AUC = Phi(3 / sqrt(2 (1 + 4))) ~ 0.83. LiRA must beat it clearly.
  auc_global = _auc(target[is_member], target[~is_member])
  assert auc_online > auc_global + 0.1
  # Our own metric agrees with scikit-learn.
  np.testing.assert_allclose(float(metrics.roc_auc(online[is_member], online[~is_member])),
                             auc_online, rtol=1e-5)


def test_lira_chance_when_target_has_no_signal():
  # Target "members" and "non-members" from the same distribution.
  target, shadow, keep, is_member = _simulate(4, 16, 2000, target_gap=0.0)
  for scores in (lira.lira_online(target, shadow, keep), lira.lira_offline(target, shadow, keep)):
    scores = np.asarray(scores)
    # AUC standard error here is ~0.013.
    assert abs(_auc(scores[is_member], scores[~is_member]) - 0.5) < 0.04


def test_lira_scores_match_per_example_scipy():
  target, shadow, keep, _ = _simulate(5, 8, 50)
  online = np.asarray(lira.lira_online(target, shadow, keep))
  offline = np.asarray(lira.lira_offline(target, shadow, keep))
  for n in range(50):
    s_in, s_out = shadow[keep[:, n], n], shadow[~keep[:, n], n]
    expected = (sps.norm.logpdf(target[n], s_in.mean(), s_in.std(ddof=1)) -
                sps.norm.logpdf(target[n], s_out.mean(), s_out.std(ddof=1)))
    np.testing.assert_allclose(online[n], expected, rtol=1e-4, atol=1e-4)
    expected_off = -sps.norm.logsf(target[n], s_out.mean(), s_out.std(ddof=1))
    np.testing.assert_allclose(offline[n], expected_off, rtol=1e-4, atol=1e-5)


def test_lira_fixed_variance_uses_pooled_std():
  target, shadow, keep, _ = _simulate(6, 8, 50)
  resid = []
  for n in range(50):
    for side in (keep[:, n], ~keep[:, n]):
      resid.append(shadow[side, n] - shadow[side, n].mean())
  resid = np.concatenate(resid)
  pooled = np.sqrt(np.sum(resid**2) / (resid.size - 2 * 50))
  got = np.asarray(lira.lira_online(target, shadow, keep, fixed_variance=True))
  for n in range(50):
    mu_in, mu_out = shadow[keep[:, n], n].mean(), shadow[~keep[:, n], n].mean()
    expected = (sps.norm.logpdf(target[n], mu_in, pooled) -
                sps.norm.logpdf(target[n], mu_out, pooled))
    np.testing.assert_allclose(got[n], expected, rtol=1e-4, atol=1e-4)


def test_lira_offline_high_resolution_for_strong_members():
  # The one-sided score keeps ranking members far above the out distribution.
  shadow = np.array([[0.0], [1.0], [-1.0], [0.5]])
  keep = np.zeros((4, 1), bool)
  target = np.array([[5.0], [10.0], [20.0], [-30.0]])
  scores = np.asarray(lira.lira_offline(target, shadow, keep))[:, 0]
  assert np.all(np.isfinite(scores))
  assert scores[0] < scores[1] < scores[2] and 0 <= scores[3] < scores[0]


def test_lira_batched_targets_and_jit():
  target, shadow, keep, _ = _simulate(7, 8, 50)
  both = np.stack([target, target + 1.0])
  batched = lira.lira_online(both, shadow, keep)
  assert batched.shape == (2, 50)
  np.testing.assert_allclose(batched[0], lira.lira_online(target, shadow, keep), rtol=1e-6)
  jitted = jax.jit(lira.lira_offline, static_argnames="fixed_variance")
  np.testing.assert_allclose(jitted(target, shadow, keep, fixed_variance=True),
                             lira.lira_offline(target, shadow, keep, fixed_variance=True),
                             rtol=1e-5)


def test_lira_too_few_models_raise_and_fixed_variance_rescues():
  keep = lira.balanced_keep_masks(jax.random.key(8), 2, 20)  # 1 in, 1 out each
  shadow = np.asarray(jax.random.normal(jax.random.key(9), (2, 20))) + 3.0 * np.asarray(keep)
  target = np.zeros(20)
  with pytest.raises(ValueError, match=r"got 2 shadow models.*fixed_variance=True"):
    lira.lira_online(target, shadow, keep)
  with pytest.raises(ValueError, match=r"at least 2 'out' shadow model\(s\).*got 2 shadow models"):
    lira.lira_offline(target, shadow, keep)
  for fn in (lira.lira_online, lira.lira_offline):
    assert np.isfinite(fn(target, shadow, keep, fixed_variance=True)).all()
  # Even with fixed variance every example needs an in and an out model.
  lopsided = np.ones((4, 3), bool)
  lopsided[:2, 0] = False
  with pytest.raises(ValueError, match=r"'out' shadow model\(s\) for every example; got 4 shadow "
                     r"models, and example 1 is 'out' for only 0"):
    lira.lira_online(np.zeros(3), np.zeros((4, 3)), lopsided, fixed_variance=True)


def test_lira_bad_shapes_raise():
  keep = np.ones((4, 5), bool)
  keep[:2] = False
  with pytest.raises(ValueError, match=r"keep must have the shape of shadow_stats \(4, 5\)"):
    lira.lira_online(np.zeros(5), np.zeros((4, 5)), keep[:, :4])
  with pytest.raises(ValueError, match=r"target_stats must have shape \[..., N\] with N = 5"):
    lira.lira_online(np.zeros(4), np.zeros((4, 5)), keep)
  with pytest.raises(ValueError, match="keep must be a boolean mask"):
    lira.lira_online(np.zeros(5), np.zeros((4, 5)), keep.astype(float))
  with pytest.raises(ValueError, match="shadow_stats must have shape"):
    lira.lira_offline(np.zeros(5), np.zeros(5), keep)


def test_unlearning_distinguishability():
  rng = np.random.default_rng(10)
  same = lira.unlearning_distinguishability(rng.normal(0, 1, 2000), rng.normal(0, 1, 2000))
  assert abs(same["auc"] - 0.5) < 0.03 and same["auc_gap"] < 0.03
  leaky = lira.unlearning_distinguishability(rng.normal(2, 1, 2000), rng.normal(0, 1, 2000))
  np.testing.assert_allclose(leaky["auc"], sps.norm.cdf(2 / np.sqrt(2)), atol=0.02)
  over = lira.unlearning_distinguishability(rng.normal(-2, 1, 2000), rng.normal(0, 1, 2000))
  assert over["auc"] < 0.2 and over["auc_gap"] > 0.3


def test_ulira_leave_one_out_calibrates_each_example():
  """Known answer: unlearned = retrained + d per example, example means spread wide.

  With exact Gaussians the held-out log-likelihood ratio is N(+-d^2/2, d^2),
  so AUC = Phi(d / sqrt 2) and the accuracy at 0 is Phi(d / 2); 15 fitted
  models per side come close. A pooled test (one distribution for all
  examples) sees almost nothing, because the examples' own means dominate.
  """
  rng = np.random.default_rng(11)
  n, e, d = 16, 500, 2.0
  means = rng.normal(0, 10, e)
  retrained = means + rng.normal(0, 1, (n, e))
  unlearned = means + d + rng.normal(0, 1, (n, e))
  out = lira.ulira_leave_one_out(unlearned, retrained)
  np.testing.assert_allclose(out["auc"], sps.norm.cdf(d / np.sqrt(2)), atol=0.03)
  np.testing.assert_allclose(out["accuracy"], sps.norm.cdf(d / 2), atol=0.03)
  pooled = lira.unlearning_distinguishability(unlearned.ravel(), retrained.ravel())
  assert pooled["auc"] < 0.6
  same = lira.ulira_leave_one_out(means + rng.normal(0, 1, (n, e)), retrained)
  assert abs(same["auc"] - 0.5) < 0.03 and abs(same["accuracy"] - 0.5) < 0.03


def test_ulira_leave_one_out_matches_a_hand_computation():
  rng = np.random.default_rng(12)
  u, r = rng.normal(1, 1, (4, 3)), rng.normal(0, 1, (4, 3))
  pos, neg = [], []
  for k in range(4):
    rest = [i for i in range(4) if i != k]
    mu_u, sd_u = u[rest].mean(0), u[rest].std(0, ddof=1)
    mu_r, sd_r = r[rest].mean(0), r[rest].std(0, ddof=1)
    score = lambda t: sps.norm.logpdf(t, mu_u, sd_u) - sps.norm.logpdf(t, mu_r, sd_r)
    pos.append(score(u[k]))
    neg.append(score(r[k]))
  pos, neg = np.concatenate(pos), np.concatenate(neg)
  out = lira.ulira_leave_one_out(u, r)
  np.testing.assert_allclose(out["auc"], _auc(pos, neg), atol=1e-6)
  np.testing.assert_allclose(out["accuracy"], 0.5 * ((pos > 0).mean() + (neg <= 0).mean()),
                             atol=1e-6)


@pytest.mark.parametrize("u, r, message", [
    (np.zeros((2, 5)), np.zeros((2, 5)), "at least 3 models"),
    (np.zeros((4, 5)), np.zeros((4, 6)), "must both be"),
    (np.zeros(5), np.zeros(5), "must both be"),
])
def test_ulira_leave_one_out_refuses_bad_shapes(u, r, message):
  with pytest.raises(ValueError, match=message):
    lira.ulira_leave_one_out(u, r)


# --- Shokri attack classifier ------------------------------------------------

# The Shokri tests share sizes (500 members and 500 non-members, C = 10,
# 300 steps) so that one compiled training loop serves most of them.
NUM_CLASSES = 10
STEPS = 300
PEAKED, FLAT = (4.0, 8.0), (0.0, 3.0)


def _posteriors(rng, n, margin_range, num_classes=NUM_CLASSES):
  labels = rng.integers(0, num_classes, n)
  logits = rng.normal(scale=0.5, size=(n, num_classes))
  logits[np.arange(n), labels] += rng.uniform(*margin_range, n)
  return np.asarray(jax.nn.softmax(logits)), labels


def _features(rng, n, margin_range, mode="sorted_label"):
  probs, labels = _posteriors(rng, n, margin_range)
  return shokri.attack_features(probs, labels, mode=mode)


@pytest.fixture(scope="module")
def peaked_vs_flat_attack():
  rng = np.random.default_rng(12)
  attack = shokri.fit_shokri_attack(jax.random.key(0), _features(rng, 500, PEAKED),
                                    _features(rng, 500, FLAT), steps=STEPS)
  return attack, rng


def test_attack_features_modes():
  rng = np.random.default_rng(11)
  probs, labels = _posteriors(rng, 20, (0, 3), num_classes=6)
  sorted_feats = np.asarray(shokri.attack_features(probs, mode="sorted"))
  np.testing.assert_allclose(sorted_feats, -np.sort(-probs, axis=1), rtol=1e-6)
  top3 = np.asarray(shokri.attack_features(probs, mode="sorted", top_k=3))
  np.testing.assert_allclose(top3, sorted_feats[:, :3])
  with_label = np.asarray(shokri.attack_features(probs, labels, mode="sorted_label"))
  assert with_label.shape == (20, 8)
  p_y = probs[np.arange(20), labels]
  np.testing.assert_allclose(with_label[:, 6], p_y, rtol=1e-6)
  np.testing.assert_allclose(with_label[:, 7], -np.log(p_y), rtol=1e-5)
  zero = np.asarray(shokri.attack_features(np.array([[1.0, 0.0]]), np.array([1]),
                                           mode="sorted_label"))
  assert np.isfinite(zero).all()


def test_attack_features_bad_inputs_raise():
  probs = np.full((4, 3), 1 / 3)
  with pytest.raises(ValueError, match="mode must be one of"):
    shokri.attack_features(probs, mode="raw")
  with pytest.raises(ValueError, match="labels must be given"):
    shokri.attack_features(probs, mode="sorted_label")
  with pytest.raises(ValueError, match="probs must be probabilities"):
    shokri.attack_features(np.log(probs) + 5.0)
  with pytest.raises(ValueError, match=r"top_k must be an integer in \[1, 3\]; got 4"):
    shokri.attack_features(probs, top_k=4)
  with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
    shokri.attack_features(probs, np.array([0, 1, 2, 3]), mode="sorted_label")


def _balanced_acc(attack, member_x, nonmember_x, member_y=None, nonmember_y=None) -> float:
  tpr = np.mean(shokri.shokri_predict(attack, member_x, member_y))
  tnr = 1 - np.mean(shokri.shokri_predict(attack, nonmember_x, nonmember_y))
  return 0.5 * (tpr + tnr)


def test_shokri_separates_peaked_from_flat(peaked_vs_flat_attack):
  attack, rng = peaked_vs_flat_attack
  assert float(attack.train_balanced_accuracy) > 0.9
  # Held-out target data from the same populations.
  acc = _balanced_acc(attack, _features(rng, 1000, PEAKED), _features(rng, 1000, FLAT))
  assert acc > 0.9
  scores = np.asarray(shokri.shokri_scores(attack, _features(rng, 10, PEAKED)))
  assert scores.shape == (10,) and np.all((scores >= 0) & (scores <= 1))


def test_shokri_label_agnostic_features_and_unbalanced_classes():
  # "sorted" features, and twice as many members as non-members: the balanced
  # minibatches keep the attack from predicting "member" by default.
  rng = np.random.default_rng(16)
  attack = shokri.fit_shokri_attack(jax.random.key(1), _features(rng, 1000, PEAKED, "sorted"),
                                    _features(rng, 500, FLAT, "sorted"), steps=STEPS)
  members, nonmembers = _features(rng, 1000, PEAKED, "sorted"), _features(rng, 1000, FLAT, "sorted")
  assert np.mean(shokri.shokri_predict(attack, members)) > 0.85
  assert np.mean(shokri.shokri_predict(attack, nonmembers)) < 0.15


def test_shokri_chance_on_identical_distributions():
  rng = np.random.default_rng(13)
  same = (0.0, 6.0)
  attack = shokri.fit_shokri_attack(jax.random.key(1), _features(rng, 500, same),
                                    _features(rng, 500, same), steps=STEPS)
  acc = _balanced_acc(attack, _features(rng, 1000, same), _features(rng, 1000, same))
  assert abs(acc - 0.5) < 0.05


def test_shokri_per_class_uses_labels():
  # Class 0: members have p_y ~ 0.95, non-members ~ 0.6. Class 1: reversed.
  # Label-agnostic features make the classes indistinguishable for one global
  # model (chance), while per-class models separate both.
  rng = np.random.default_rng(14)

  def draw(n, high_for_class0):
    labels = rng.integers(0, 2, n)
    high = (labels == 0) == high_for_class0
    p_y = np.where(high, rng.uniform(0.9, 1.0, n), rng.uniform(0.55, 0.7, n))
    probs = np.stack([np.where(labels == 0, p_y, 1 - p_y), np.where(labels == 1, p_y, 1 - p_y)], 1)
    return shokri.attack_features(probs, mode="sorted"), labels

  (xm, ym), (xn, yn) = draw(500, True), draw(500, False)
  (tm, tym), (tn, tyn) = draw(1000, True), draw(1000, False)
  per_class = shokri.fit_shokri_attack(jax.random.key(2), xm, xn, member_labels=ym,
                                       nonmember_labels=yn, per_class=True, num_classes=2,
                                       steps=STEPS)
  assert per_class.num_models == 2 and per_class.params["w1"].shape[0] == 2
  assert _balanced_acc(per_class, tm, tn, tym, tyn) > 0.95
  global_attack = shokri.fit_shokri_attack(jax.random.key(2), xm, xn, steps=STEPS)
  assert abs(_balanced_acc(global_attack, tm, tn) - 0.5) < 0.1
  # Jitted scoring matches eager scoring.
  np.testing.assert_allclose(jax.jit(shokri.shokri_scores)(per_class, tm, tym),
                             shokri.shokri_scores(per_class, tm, tym), rtol=1e-5)


def test_shokri_deterministic_given_key(peaked_vs_flat_attack):
  rng = np.random.default_rng(12)  # the fixture's data, drawn again
  again = shokri.fit_shokri_attack(jax.random.key(0), _features(rng, 500, PEAKED),
                                   _features(rng, 500, FLAT), steps=STEPS)
  jax.tree.map(np.testing.assert_array_equal, peaked_vs_flat_attack[0], again)


def test_shokri_bad_inputs_raise(peaked_vs_flat_attack):
  x = np.zeros((5, 3))
  with pytest.raises(ValueError, match="member_features must be a non-empty"):
    shokri.fit_shokri_attack(jax.random.key(0), np.zeros((0, 3)), x)
  with pytest.raises(ValueError, match=r"nonmember_features must have 3 features per row"):
    shokri.fit_shokri_attack(jax.random.key(0), x, np.zeros((5, 4)))
  with pytest.raises(ValueError, match="member_labels must be given"):
    shokri.fit_shokri_attack(jax.random.key(0), x, x, per_class=True)
  with pytest.raises(ValueError, match="nonmember_labels has no example of class 1"):
    shokri.fit_shokri_attack(jax.random.key(0), x, x, per_class=True,
                             member_labels=np.array([0, 1, 0, 1, 0]),
                             nonmember_labels=np.zeros(5, np.int32), num_classes=2)
  with pytest.raises(ValueError, match="steps must be a positive integer; got 0"):
    shokri.fit_shokri_attack(jax.random.key(0), x, x, steps=0)
  with pytest.raises(ValueError, match="features must have 12 features per row"):
    shokri.shokri_scores(peaked_vs_flat_attack[0], np.zeros((2, 4)))
