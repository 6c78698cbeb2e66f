"""Tests for forsaken_jax.mia.stats against float64 and arbitrary-precision formulas."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from forsaken_jax.mia import stats

mpmath = pytest.importorskip("mpmath")


def _direct_float64(logits: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
  """The textbook formulas, written naively in float64."""
  z = logits.astype(np.float64)
  p = np.exp(z - z.max(axis=1, keepdims=True))
  p /= p.sum(axis=1, keepdims=True)
  rows = np.arange(len(labels))
  p_y = p[rows, labels]
  others = p.copy()
  others[rows, labels] = 0.0
  mentr_others = -np.sum(others * np.log(1.0 - p), axis=1)
  return {
      "loss": -np.log(p_y),
      "top1_confidence": p.max(axis=1),
      "true_class_confidence": p_y,
      "entropy": -np.sum(p * np.log(p), axis=1),
      "modified_entropy": -(1.0 - p_y) * np.log(p_y) + mentr_others,
      "logit_scaled_confidence": np.log(p_y) - np.log(others.sum(axis=1)),
  }


def _direct_mpmath(logits: list[float], label: int) -> dict[str, float]:
  """The same formulas at 60 significant digits: exact for float32 purposes."""
  with mpmath.workdps(60):
    z = [mpmath.mpf(v) for v in logits]
    norm = mpmath.fsum(mpmath.exp(v) for v in z)
    p = [mpmath.exp(v) / norm for v in z]
    p_y = p[label]
    rest = mpmath.fsum(q for j, q in enumerate(p) if j != label)
    return {
        "loss": float(-mpmath.log(p_y)),
        "top1_confidence": float(max(p)),
        "true_class_confidence": float(p_y),
        "entropy": float(-mpmath.fsum(q * mpmath.log(q) for q in p)),
        "modified_entropy": float(-(1 - p_y) * mpmath.log(p_y) - mpmath.fsum(
            q * mpmath.log(1 - q) for j, q in enumerate(p) if j != label)),
        "logit_scaled_confidence": float(mpmath.log(p_y) - mpmath.log(rest)),
    }


@pytest.mark.parametrize("name", sorted(stats.STATISTICS))
def test_matches_float64_formulas_on_random_logits(name):
  rng = np.random.default_rng(0)
  logits = rng.normal(scale=3.0, size=(64, 7)).astype(np.float32)
  labels = rng.integers(0, 7, size=64)
  expected = _direct_float64(logits, labels)[name]
  got = stats.compute_statistic(name, logits, labels)
  assert got.shape == (64,)
  np.testing.assert_allclose(np.asarray(got), expected, rtol=2e-5, atol=2e-5)


EXTREME = [
    ([100.0, 0.0, 0.0], 0),  # p_y rounds to 1 in float32 (and in float64)
    ([0.0, 100.0, 0.0], 0),  # confidently wrong: some other p_j rounds to 1
    ([0.0, 100.0, 0.0], 2),
    ([-40.0, 45.0, 44.0, -3.0], 1),
    ([30.0, 30.0, -30.0], 0),  # two classes share the mass
]


@pytest.mark.parametrize("logits,label", EXTREME)
@pytest.mark.parametrize("name", sorted(stats.STATISTICS))
def test_stable_on_extreme_logits(name, logits, label):
  expected = _direct_mpmath(logits, label)[name]
  got = stats.compute_statistic(name, jnp.array([logits], jnp.float32), jnp.array([label]))
  assert np.isfinite(got).all()
  np.testing.assert_allclose(float(got[0]), expected, rtol=1e-5, atol=1e-6)


def test_naive_formulas_fail_where_stable_ones_do_not():
  # Guards the test above: the extreme cases really are ones that break the
  # naive float32 formulas the stable forms replace.
  z = np.array([[100.0, 0.0, 0.0], [0.0, 100.0, 0.0]], np.float32)
  p = np.exp(z - z.max(axis=1, keepdims=True)) / np.exp(z - z.max(axis=1, keepdims=True)).sum(
      axis=1, keepdims=True)
  with np.errstate(divide="ignore"):
    naive_lsc = np.log(p[0, 0]) - np.log(1.0 - p[0, 0])
    naive_mentr_log = np.log(1.0 - p[1, 1])
  assert not np.isfinite(naive_lsc)
  assert not np.isfinite(naive_mentr_log)
  labels = jnp.array([0, 0])
  assert np.isfinite(stats.logit_scaled_confidence(z, labels)).all()
  assert np.isfinite(stats.modified_entropy(z, labels)).all()


@pytest.mark.parametrize("name", ["modified_entropy", "logit_scaled_confidence", "loss", "entropy"])
def test_gradients_finite_on_extreme_logits(name):
  logits = jnp.array([[100.0, 0.0, 0.0], [0.0, 100.0, 0.0], [1.0, 2.0, 3.0]])
  labels = jnp.array([0, 0, 2])
  grad = jax.grad(lambda z: jnp.sum(stats.compute_statistic(name, z, labels)))(logits)
  assert np.isfinite(grad).all()


def test_modified_entropy_uses_log_one_minus_p():
  # Hand value: p = (0.5, 0.25, 0.25), y = 0:
  # Mentr = -(0.5) log 0.5 - 2 * 0.25 log 0.75. The common bug (log p_j instead
  # of log(1 - p_j)) would give -(0.5) log 0.5 - 2 * 0.25 log 0.25.
  logits = jnp.log(jnp.array([[0.5, 0.25, 0.25]]))
  expected = -0.5 * np.log(0.5) - 0.5 * np.log(0.75)
  np.testing.assert_allclose(float(stats.modified_entropy(logits, jnp.array([0]))[0]), expected,
                             rtol=1e-6)


def test_logit_scaled_confidence_is_logit_of_p_y():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(32, 4))
  labels = rng.integers(0, 4, size=32)
  p_y = np.asarray(stats.true_class_confidence(logits, labels), np.float64)
  np.testing.assert_allclose(np.asarray(stats.logit_scaled_confidence(logits, labels)),
                             np.log(p_y / (1 - p_y)), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", sorted(stats.STATISTICS))
def test_membership_score_orientation(name):
  # Members: confident, correct predictions; non-members: flatter ones. Every
  # oriented score must rank members above non-members (AUC well above 0.5).
  rng = np.random.default_rng(2)
  n, c = 200, 10
  labels = rng.integers(0, c, size=2 * n)
  margin = np.concatenate([rng.uniform(4, 8, n), rng.uniform(0, 2, n)])
  logits = rng.normal(scale=0.5, size=(2 * n, c))
  logits[np.arange(2 * n), labels] += margin
  score = np.asarray(stats.membership_score(name, logits, labels))
  is_member = np.r_[np.ones(n), np.zeros(n)]
  assert roc_auc_score(is_member, score) > 0.9
  unoriented = np.asarray(stats.compute_statistic(name, logits, labels))
  np.testing.assert_allclose(score, stats.MEMBERSHIP_SIGN[name] * unoriented)


def test_registry_and_jit():
  assert set(stats.STATISTICS) == set(stats.MEMBERSHIP_SIGN)
  logits = jnp.array([[2.0, 1.0, 0.0], [0.0, 0.0, 3.0]])
  labels = jnp.array([0, 1])
  for name, fn in stats.STATISTICS.items():
    jitted = jax.jit(functools.partial(stats.membership_score, name))
    np.testing.assert_allclose(jitted(logits, labels), stats.membership_score(name, logits, labels),
                               rtol=1e-6)
    np.testing.assert_allclose(fn(logits, labels), stats.compute_statistic(name, logits, labels))
  # Label-agnostic statistics do not need labels.
  np.testing.assert_allclose(stats.top1_confidence(logits), stats.top1_confidence(logits, labels))
  np.testing.assert_allclose(stats.entropy(logits), stats.entropy(logits, labels))


def test_bad_inputs_raise():
  logits = jnp.zeros((3, 4))
  for fn in (stats.compute_statistic, stats.membership_score):
    with pytest.raises(ValueError, match="unknown statistic 'nope'"):
      fn("nope", logits, jnp.zeros(3, jnp.int32))
  with pytest.raises(ValueError, match=r"logits must have shape \[N, C\]"):
    stats.loss(jnp.zeros(4), jnp.zeros(4, jnp.int32))
  with pytest.raises(ValueError, match="at least 2 classes"):
    stats.loss(jnp.zeros((3, 1)), jnp.zeros(3, jnp.int32))
  with pytest.raises(ValueError, match=r"labels must have shape \[N\] = \[3\]"):
    stats.loss(logits, jnp.zeros(2, jnp.int32))
  with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\); got values in \[0, 4\]"):
    stats.modified_entropy(logits, jnp.array([0, 1, 4]))
  with pytest.raises(ValueError, match="labels must be integers"):
    stats.loss(logits, jnp.zeros(3))
  with pytest.raises(ValueError, match="labels must be given"):
    stats.loss(logits, None)


def test_labels_closed_over_inside_jit_are_checked_not_traced():
  """Host labels captured by a jitted function keep their eager range check."""
  logits = jnp.zeros((3, 4))
  labels = np.array([0, 1, 3])
  out = jax.jit(lambda z: stats.logit_scaled_confidence(z, labels))(logits)
  np.testing.assert_allclose(out, np.full(3, -np.log(3.0)), rtol=1e-6)
  with pytest.raises(ValueError, match="labels must lie in"):
    jax.jit(lambda z: stats.logit_scaled_confidence(z, np.array([0, 1, 4])))(logits)
