"""Tests for forsaken_jax.mia.audit on synthetic logits whose membership is known.

Every model here is a table of logits: on an example it was trained on ("in")
the true class gets a large logit, on any other example ("out") the true
class ties with the others. The shadow models, the original model and the
judged models are all built this way, so which examples each oracle should
call members is known in advance.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sklearn.metrics
from scipy import special as sps_special
from scipy import stats as sps

from forsaken_jax.mia import audit, forgetting, threshold

NUM_CLASSES = 3
POPULATION = 48  # examples 0..23 members (0..9 the forget set), 24..47 non-members
NUM_FORGET = 10
NUM_LIRA = 8
NUM_SHOKRI = 4
SHOKRI_DATA = 40
IN_LOGIT, OUT_LOGIT, NOISE = 6.0, 0.0, 0.3
# The true-class logit of "in" and "out" examples is 6 and 0 (others 0), so the
# logit-scaled confidence is about 6 - log 2 = 5.3 against -log 2 = -0.7,
# with noise 0.3: the two groups are 20 standard deviations apart and every
# oracle must separate them perfectly.
SHOKRI_STEPS = 300


def _logits(rng: np.random.Generator, labels: np.ndarray, member: np.ndarray, *,
            noise: float = NOISE) -> np.ndarray:
  """`[..., N, C]` logits of models that trained on exactly the `member` examples."""
  member = np.asarray(member, bool)
  logits = np.zeros(member.shape + (NUM_CLASSES,), np.float32)
  true_logit = np.where(member, IN_LOGIT, OUT_LOGIT) + noise * rng.standard_normal(member.shape)
  np.put_along_axis(logits, np.broadcast_to(labels, member.shape)[..., None],
                    true_logit[..., None].astype(np.float32), axis=-1)
  return logits


def _balanced_keep(rng: np.random.Generator, num_models: int, num_examples: int) -> np.ndarray:
  """Each example in exactly half of the models (a permutation per column)."""
  keep = np.zeros((num_models, num_examples), bool)
  for n in range(num_examples):
    keep[rng.permutation(num_models)[:num_models // 2], n] = True
  return keep


def _np_log_softmax(logits: np.ndarray) -> np.ndarray:
  logits = np.asarray(logits, np.float64)
  return logits - sps_special.logsumexp(logits, axis=-1, keepdims=True)


def _np_true_class(x: np.ndarray, labels: np.ndarray) -> np.ndarray:
  return np.take_along_axis(x, np.broadcast_to(labels, x.shape[:-1])[..., None], axis=-1)[..., 0]


@pytest.fixture(scope="module")
def world():
  """Shadow evidence, population masks and the original model's logits."""
  rng = np.random.default_rng(0)
  labels = rng.integers(0, NUM_CLASSES, POPULATION).astype(np.int32)
  lira_keep = _balanced_keep(rng, NUM_LIRA, POPULATION)
  lira_logits = _logits(rng, labels, lira_keep)
  shokri_labels = rng.integers(0, NUM_CLASSES, SHOKRI_DATA).astype(np.int32)
  shokri_keep = _balanced_keep(rng, NUM_SHOKRI, SHOKRI_DATA)
  shokri_logits = _logits(rng, shokri_labels, shokri_keep)
  evidence = audit.shadow_evidence(
      lira_logits=lira_logits, lira_keep=lira_keep, population_labels=labels,
      shokri_logits=shokri_logits, shokri_keep=shokri_keep, shokri_labels=shokri_labels)
  member = np.arange(POPULATION) < POPULATION // 2
  forget = np.arange(POPULATION) < NUM_FORGET
  original = _logits(rng, labels, member)
  return dict(rng=rng, labels=labels, lira_keep=lira_keep, lira_logits=lira_logits,
              shokri_labels=shokri_labels, shokri_keep=shokri_keep, shokri_logits=shokri_logits,
              evidence=evidence, member=member, forget=forget, retain=member & ~forget,
              nonmember=~member, original=original)


@pytest.fixture(scope="module")
def fitted(world):
  """`fitted(per_class=..., fixed_variance=...)`: oracles fitted on the original
  model's retained members and its non-members, each variant fitted once."""
  cache = {}

  def get(*, per_class: bool = False, fixed_variance: bool = False) -> audit.FittedOracles:
    key = (per_class, fixed_variance)
    if key not in cache:
      cache[key] = audit.fit_oracles(
          jax.random.key(0), world["evidence"], world["original"], world["labels"],
          world["retain"], world["nonmember"], shokri_per_class=per_class,
          shokri_steps=SHOKRI_STEPS, lira_fixed_variance=fixed_variance)
    return cache[key]

  return get


# --- shadow_evidence ----------------------------------------------------------


def test_shadow_evidence_lira_stats_are_logit_scaled_confidences(world):
  ev = world["evidence"]
  log_probs = _np_log_softmax(world["lira_logits"])
  log_p_y = _np_true_class(log_probs, world["labels"])
  # log(p_y / (1 - p_y)), with 1 - p_y taken as the sum of the other classes.
  others = np.where(np.arange(NUM_CLASSES) == world["labels"][:, None], -np.inf, log_probs)
  expected = log_p_y - sps_special.logsumexp(others, axis=-1)
  assert ev.lira_stats.shape == (NUM_LIRA, POPULATION)
  np.testing.assert_allclose(ev.lira_stats, expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(ev.lira_keep, world["lira_keep"])
  # "in" models are far more confident than "out" models on every example.
  assert ev.lira_stats[world["lira_keep"]].min() > ev.lira_stats[~world["lira_keep"]].max() + 3


def test_shadow_evidence_shokri_features_split_by_keep(world):
  ev = world["evidence"]
  probs = np.exp(_np_log_softmax(world["shokri_logits"]))  # [S, Q, C]
  labels = np.broadcast_to(world["shokri_labels"], world["shokri_keep"].shape)
  p_y = _np_true_class(probs, world["shokri_labels"])
  features = np.concatenate([-np.sort(-probs, axis=-1), p_y[..., None], -np.log(p_y)[..., None]],
                            axis=-1)  # "sorted_label": sorted posterior, p_y, loss
  keep = world["shokri_keep"]
  np.testing.assert_allclose(ev.shokri_member_features, features[keep], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(ev.shokri_nonmember_features, features[~keep], rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(ev.shokri_member_labels, labels[keep])
  np.testing.assert_array_equal(ev.shokri_nonmember_labels, labels[~keep])
  assert len(ev.shokri_member_features) == keep.sum() == NUM_SHOKRI * SHOKRI_DATA // 2


@pytest.mark.parametrize("which", ["lira", "shokri"])
def test_shadow_evidence_rejects_mismatched_keep_masks(world, which):
  kwargs = dict(lira_logits=world["lira_logits"], lira_keep=world["lira_keep"],
                population_labels=world["labels"], shokri_logits=world["shokri_logits"],
                shokri_keep=world["shokri_keep"], shokri_labels=world["shokri_labels"])
  kwargs[f"{which}_keep"] = kwargs[f"{which}_keep"][:, :-1]
  with pytest.raises(ValueError, match=f"{which}_logits .* and {which}_keep .* disagree"):
    audit.shadow_evidence(**kwargs)


# --- oracle scores and decisions ---------------------------------------------


def test_oracle_scores_match_independent_formulas(world, fitted):
  oracles = fitted()
  ev = world["evidence"]
  target = _logits(np.random.default_rng(1), world["labels"], world["member"])
  scores = audit.oracle_scores(oracles, ev, target, world["labels"])
  assert set(scores) == {"shokri", "lira", "lira_offline", "loss"}
  for s in scores.values():
    assert s.shape == (POPULATION,)

  log_probs = _np_log_softmax(target)
  np.testing.assert_allclose(scores["loss"], _np_true_class(log_probs, world["labels"]),
                             rtol=1e-5, atol=1e-6)  # -cross-entropy
  # LiRA from per-example Gaussians (sample mean, ddof=1 std) of the shadow stats.
  t = _np_true_class(log_probs, world["labels"]) - np.log(
      np.exp(log_probs).sum(-1) - np.exp(_np_true_class(log_probs, world["labels"])))
  stats64, keep = ev.lira_stats.astype(np.float64), ev.lira_keep
  mu_in = np.array([stats64[keep[:, n], n].mean() for n in range(POPULATION)])
  sd_in = np.array([stats64[keep[:, n], n].std(ddof=1) for n in range(POPULATION)])
  mu_out = np.array([stats64[~keep[:, n], n].mean() for n in range(POPULATION)])
  sd_out = np.array([stats64[~keep[:, n], n].std(ddof=1) for n in range(POPULATION)])
  online = sps.norm.logpdf(t, mu_in, sd_in) - sps.norm.logpdf(t, mu_out, sd_out)
  offline = -sps.norm.logsf(t, mu_out, sd_out)
  np.testing.assert_allclose(scores["lira"], online, rtol=2e-3, atol=2e-2)
  np.testing.assert_allclose(scores["lira_offline"], offline, rtol=2e-3, atol=2e-2)
  assert ((scores["shokri"] >= 0) & (scores["shokri"] <= 1)).all()


@pytest.mark.parametrize("per_class,fixed_variance", [(False, False), (True, True)])
def test_in_like_models_are_judged_members_and_out_like_non_members(world, fitted, per_class,
                                                                    fixed_variance):
  oracles = fitted(per_class=per_class, fixed_variance=fixed_variance)
  rng = np.random.default_rng(2)
  everything = np.ones(POPULATION, bool)
  for behaves_in in (True, False):
    # Fresh noise: the judged model is not the original model.
    logits = _logits(rng, world["labels"], everything if behaves_in else ~everything)
    decisions = audit.judged_member(oracles, audit.oracle_scores(
        oracles, world["evidence"], logits, world["labels"]))
    assert set(decisions) == set(audit.ORACLES)
    for name, d in decisions.items():
      assert d.dtype == np.bool_ and d.shape == (POPULATION,)
      assert (d == behaves_in).all(), (name, behaves_in, d)


def test_judged_member_decision_rules_at_their_boundaries():
  oracles = audit.FittedOracles(
      shokri=None, loss_threshold=threshold.ThresholdAttack(jnp.array(-1.0), jnp.array(1.0)),
      shokri_mode="sorted_label", shokri_per_class=False, lira_fixed_variance=False)
  scores = {"shokri": np.array([0.49, 0.5, 0.51]), "lira": np.array([-1e-3, 0.0, 1e-3]),
            "loss": np.array([-1.5, -1.0, -0.5]), "lira_offline": np.zeros(3)}
  decisions = audit.judged_member(oracles, scores)
  # Shokri: probability >= 0.5; LiRA: likelihood ratio > 1; loss: score >= threshold.
  np.testing.assert_array_equal(decisions["shokri"], [False, True, True])
  np.testing.assert_array_equal(decisions["lira"], [False, False, True])
  np.testing.assert_array_equal(decisions["loss"], [False, True, True])


def test_loss_threshold_is_the_best_separator_of_retained_members(world):
  rng = np.random.default_rng(3)
  # Overlapping losses (noise 3 on a gap of 6), so the best threshold is not trivial.
  original = _logits(rng, world["labels"], world["member"], noise=3.0)
  oracles = audit.fit_oracles(jax.random.key(0), world["evidence"], original, world["labels"],
                              world["retain"], world["nonmember"], shokri_steps=1)
  score = _np_true_class(_np_log_softmax(original), world["labels"])  # -loss
  y = np.r_[np.ones(world["retain"].sum()), np.zeros(world["nonmember"].sum())]
  fpr, tpr, _ = sklearn.metrics.roc_curve(
      y, np.r_[score[world["retain"]], score[world["nonmember"]]], drop_intermediate=False)
  best = 0.5 * (1 + np.max(tpr - fpr))
  assert float(oracles.loss_threshold.balanced_accuracy) == pytest.approx(best, abs=1e-6)
  predicted = np.asarray(threshold.predict_member(oracles.loss_threshold, score))
  reached = 0.5 * (predicted[world["retain"]].mean() + (~predicted[world["nonmember"]]).mean())
  assert reached == pytest.approx(best, abs=1e-6)

  # The forget set does not calibrate the threshold: it is what gets judged.
  moved = original.copy()
  moved[world["forget"]] = _logits(rng, world["labels"][world["forget"]],
                                   np.zeros(NUM_FORGET, bool), noise=5.0)
  again = audit.fit_oracles(jax.random.key(0), world["evidence"], moved, world["labels"],
                            world["retain"], world["nonmember"], shokri_steps=1)
  assert float(again.loss_threshold.threshold) == float(oracles.loss_threshold.threshold)


def test_fit_oracles_needs_members_and_nonmembers(world):
  none = np.zeros(POPULATION, bool)
  for members, nonmembers in ((none, world["nonmember"]), (world["retain"], none)):
    with pytest.raises(ValueError, match="needs known members and non-members"):
      audit.fit_oracles(jax.random.key(0), world["evidence"], world["original"], world["labels"],
                        members, nonmembers, shokri_steps=1)


def test_shokri_oracle_needs_shadow_nonmembers(world):
  # Every Shokri shadow example "in": no non-member features to train on.
  evidence = audit.shadow_evidence(
      lira_logits=world["lira_logits"], lira_keep=world["lira_keep"],
      population_labels=world["labels"], shokri_logits=world["shokri_logits"],
      shokri_keep=np.ones_like(world["shokri_keep"]), shokri_labels=world["shokri_labels"])
  assert evidence.shokri_nonmember_features.shape[0] == 0
  with pytest.raises(ValueError, match="nonmember_features"):
    audit.fit_oracles(jax.random.key(0), evidence, world["original"], world["labels"],
                      world["retain"], world["nonmember"], shokri_steps=1)


def test_oracle_scores_reject_mismatched_labels(world, fitted):
  with pytest.raises(ValueError, match="labels"):
    audit.oracle_scores(fitted(), world["evidence"], world["original"],
                        world["labels"][:-1])


# --- forgetting rates -----------------------------------------------------------


def test_forgetting_rates_match_hand_counts():
  rng = np.random.default_rng(4)
  n = 30
  forget_idx = np.sort(rng.choice(n, 12, replace=False))
  forget_mask = np.isin(np.arange(n), forget_idx)
  before = {name: rng.random(n) < 0.7 for name in audit.ORACLES}
  after = {name: rng.random(n) < 0.3 for name in audit.ORACLES}
  before["loss"][forget_idx] = False  # nothing judged member before: FR undefined

  by_mask = audit.forgetting_rates(before, after, forget_mask)
  by_index = audit.forgetting_rates(before, after, forget_idx)
  assert set(by_mask) == set(audit.ORACLES)
  for name in audit.ORACLES:
    b_t = sum(before[name][i] for i in forget_idx)
    b_f = len(forget_idx) - b_t
    a_f = sum(not after[name][i] for i in forget_idx)
    fr = by_mask[name]
    assert (fr.b_t, fr.b_f, fr.a_f, fr.n, fr.oracle) == (b_t, b_f, a_f, 12, name)
    assert fr.rate == (None if b_t == 0 else pytest.approx((a_f - b_f) / b_t))
    assert by_index[name] == fr
  assert by_mask["loss"].rate is None


def test_forgetting_rates_of_a_partially_unlearned_model(world, fitted):
  """Forget set 0..9; the unlearned model forgets 0..5, the retrained one all of it."""
  oracles = fitted()
  rng = np.random.default_rng(5)
  forgotten = np.arange(POPULATION) < 6

  def decisions(member):
    logits = _logits(rng, world["labels"], member)
    return audit.judged_member(oracles, audit.oracle_scores(oracles, world["evidence"], logits,
                                                            world["labels"]))

  original = decisions(world["member"])
  unlearned = decisions(world["member"] & ~forgotten)
  retrained = decisions(world["member"] & ~world["forget"])
  for name, fr in audit.forgetting_rates(original, unlearned, world["forget"]).items():
    # B_T = 10 judged member before, B_F = 0, A_F = 6: FR = 6 / 10.
    assert (fr.b_t, fr.b_f, fr.a_f) == (NUM_FORGET, 0, 6), name
    assert fr.rate == pytest.approx(0.6)
  for name, fr in audit.forgetting_rates(original, retrained, world["forget"]).items():
    assert (fr.b_t, fr.a_f, fr.rate) == (NUM_FORGET, NUM_FORGET, 1.0), name


def test_forgetting_rates_reject_an_empty_forget_set():
  decisions = {name: np.ones(5, bool) for name in audit.ORACLES}
  with pytest.raises(ValueError, match="must not be empty"):
    audit.forgetting_rates(decisions, decisions, np.zeros(5, bool))


# --- attack_summary and to_jsonable ---------------------------------------------


def test_attack_summary_matches_sklearn():
  rng = np.random.default_rng(6)
  n = 400
  positives = rng.random(n) < 0.4
  scores = {"a": rng.normal(size=n) + positives, "b": rng.normal(size=n) - 2.0 * positives}
  summary = audit.attack_summary(scores, positives, ~positives)
  by_index = audit.attack_summary(scores, np.flatnonzero(positives), np.flatnonzero(~positives))
  assert summary == by_index
  for name, s in scores.items():
    y = positives.astype(int)
    fpr, tpr, _ = sklearn.metrics.roc_curve(y, s, drop_intermediate=False)
    got = summary[name]
    assert got["auc"] == pytest.approx(sklearn.metrics.roc_auc_score(y, s), abs=1e-6)
    assert got["balanced_accuracy"] == pytest.approx(0.5 * (1 + np.max(tpr - fpr)), abs=1e-6)
    assert got["tpr_at_fpr_0.01"] == pytest.approx(tpr[fpr <= 0.01].max(), abs=1e-6)
    assert got["tpr_at_fpr_0.001"] == pytest.approx(tpr[fpr <= 0.001].max(), abs=1e-6)
    assert (got["num_members"], got["num_nonmembers"]) == (positives.sum(), (~positives).sum())
  assert summary["a"]["auc"] > 0.7 > 0.3 > summary["b"]["auc"]


def test_attack_summary_rejects_empty_sets():
  scores = {"a": np.arange(4.0)}
  none, some = np.zeros(4, bool), np.array([True, True, False, False])
  with pytest.raises(ValueError, match="member_scores must not be empty"):
    audit.attack_summary(scores, none, some)
  with pytest.raises(ValueError, match="nonmember_scores must not be empty"):
    audit.attack_summary(scores, some, none)


def test_to_jsonable_round_trips_through_json():
  fr = forgetting.forgetting_rate(np.array([True, True, True, False]),
                                  np.array([False, False, True, False]), oracle="lira")
  undefined = forgetting.forgetting_rate(np.zeros(3, bool), np.zeros(3, bool), oracle="loss")
  results = {"forgetting_rate": {"unlearned": {"lira": fr, "loss": undefined}},
             "auc": np.float32(0.75), "count": np.int64(3), "curve": np.array([0.0, 0.5]),
             "pair": (np.float64(1.5), "x"), 7: None}
  out = json.loads(json.dumps(audit.to_jsonable(results)))
  assert out["forgetting_rate"]["unlearned"]["lira"] == {
      "rate": pytest.approx(2 / 3), "b_t": 3, "b_f": 1, "a_f": 3, "n": 4, "oracle": "lira",
      "text": "66.7% (B_T=3, B_F=1, A_F=3, oracle=lira)"}
  assert out["forgetting_rate"]["unlearned"]["loss"]["rate"] is None
  assert out["auc"] == 0.75 and out["count"] == 3 and out["curve"] == [0.0, 0.5]
  assert out["pair"] == [1.5, "x"] and out["7"] is None


def test_lira_needs_enough_shadow_models(world, fitted):
  # Two shadow models leave one "in" and one "out" per example: no per-example variance.
  keep = world["lira_keep"][:2]
  keep = np.stack([keep[0], ~keep[0]])
  evidence = world["evidence"]._replace(lira_stats=world["evidence"].lira_stats[:2],
                                        lira_keep=keep)
  with pytest.raises(ValueError, match="shadow model"):
    audit.oracle_scores(fitted(), evidence, world["original"], world["labels"])
