"""Tests for forsaken_jax.unlearn: application, references, generators, the loop."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from forsaken_jax import losses
from forsaken_jax.models import create_model
from forsaken_jax import unlearn
from forsaken_jax.unlearn import reference as reference_lib

NUM_CLASSES = 3
INPUT_SHAPE = (2, 2, 1)


def _batch(x, y):
  return {"image": jnp.asarray(np.reshape(x, (-1, *INPUT_SHAPE)), jnp.float32),
          "label": jnp.asarray(y, jnp.int32)}


@pytest.fixture(scope="module")
def tiny():
  """A small MLP with random weights and three batches of 8."""
  model = create_model("mlp", num_classes=NUM_CLASSES, input_shape=INPUT_SHAPE, hidden=(8,))
  params = model.init_fn(jax.random.key(0))
  rng = np.random.default_rng(0)
  make = lambda n: _batch(rng.normal(size=(n, 4)), rng.integers(0, NUM_CLASSES, n))
  return model.apply_fn, params, make(8), make(8), make(16)


def _logits_np(apply_fn, params, batch):
  return np.asarray(apply_fn(params, batch["image"]), np.float64)


def _softmax_np(z):
  z = z - z.max(axis=-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=-1, keepdims=True)


def _trees_equal(a, b):
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


# ----------------------------------------------------------------------------- apply


def test_apply_dummy_gradient_formula_and_mask(tiny):
  _, params, *_ = tiny
  rng = np.random.default_rng(1)
  grad = jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params)
  mask = jax.tree.map(lambda p: np.arange(p.size).reshape(p.shape) % 3 == 0, params)
  out = unlearn.apply_dummy_gradient(params, grad, lr=0.5, mask=mask)
  for p, g, m, o in zip(*map(jax.tree.leaves, (params, grad, mask, out))):
    p, g, o = np.asarray(p), np.asarray(g), np.asarray(o)
    np.testing.assert_array_equal(o[~m], p[~m])  # bit-identical outside the mask
    np.testing.assert_allclose(o[m], p[m] - 0.5 * g[m], rtol=1e-6)
  full = unlearn.apply_dummy_gradient(params, grad, lr=0.5)
  for p, g, o in zip(*map(jax.tree.leaves, (params, grad, full))):
    np.testing.assert_allclose(o, np.asarray(p) - 0.5 * np.asarray(g), rtol=1e-6)
  # A scalar mask leaf selects or freezes a whole tensor.
  frozen = jax.tree.map(lambda p: False, params)
  assert _trees_equal(unlearn.apply_dummy_gradient(params, grad, lr=0.5, mask=frozen), params)


def test_apply_dummy_gradient_bad_input(tiny):
  _, params, *_ = tiny
  grad = jax.tree.map(jnp.zeros_like, params)
  with pytest.raises(ValueError, match="dummy_grad"):
    unlearn.apply_dummy_gradient(params, {"other": jnp.zeros(3)}, lr=0.1)
  wrong_shape = jax.tree.map(lambda p: jnp.zeros(p.shape + (1,)), params)
  with pytest.raises(ValueError, match="dummy_grad leaf"):
    unlearn.apply_dummy_gradient(params, wrong_shape, lr=0.1)
  with pytest.raises(ValueError, match="mask must have the structure"):
    unlearn.apply_dummy_gradient(params, grad, lr=0.1, mask={"Dense_0": True})
  bad_mask = jax.tree.map(lambda p: np.ones((7,), bool), params)
  with pytest.raises(ValueError, match="does not broadcast"):
    unlearn.apply_dummy_gradient(params, grad, lr=0.1, mask=bad_mask)


# ----------------------------------------------------------------------------- references


def test_logit_scaled_confidence_matches_naive_and_is_stable():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(6, 5)) * 3
  labels = rng.integers(0, 5, 6)
  p = _softmax_np(logits)
  py = p[np.arange(6), labels]
  expected = np.log(py) - np.log(1 - py)
  got = reference_lib.logit_scaled_confidence(jnp.asarray(logits, jnp.float32),
                                              jnp.asarray(labels))
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
  # p_y rounds to 1 in float32 here, yet the score stays finite and exact: 60 - log(4).
  extreme = jnp.array([[60.0, 0.0, 0.0, 0.0, 0.0]])
  np.testing.assert_allclose(reference_lib.logit_scaled_confidence(extreme, jnp.array([0])),
                             [60.0 - math.log(4.0)], rtol=1e-6)


def test_paper_reference_matches_brute_force(tiny):
  apply_fn, params, _, _, nonmember = tiny
  # Move the logits so that class 2 is never predicted: it must get 0 mass.
  logits = _logits_np(apply_fn, params, nonmember)
  logits[:, 2] -= 100.0
  ref = unlearn.reference_from_logits(jnp.asarray(logits, jnp.float32), nonmember["label"],
                                      objective="paper")
  probs = _softmax_np(logits)
  pred, conf = probs.argmax(-1), probs.max(-1)
  expected = np.array([conf[pred == c].mean() if np.any(pred == c) else 0.0
                       for c in range(NUM_CLASSES)])
  expected /= expected.sum()
  assert expected[2] == 0.0
  np.testing.assert_allclose(ref["probs"], expected, rtol=1e-5, atol=1e-7)

  mean_post = unlearn.compute_reference(apply_fn, params, nonmember, objective="mean_posterior")
  np.testing.assert_allclose(mean_post["probs"],
                             _softmax_np(_logits_np(apply_fn, params, nonmember)).mean(0),
                             rtol=1e-5)


def test_confidence_reference_is_quantiles(tiny):
  apply_fn, params, _, _, nonmember = tiny
  ref = unlearn.compute_reference(apply_fn, params, nonmember, objective="confidence_matching",
                                  num_quantiles=7)
  scores = np.asarray(reference_lib.logit_scaled_confidence(
      apply_fn(params, nonmember["image"]), nonmember["label"]), np.float64)
  np.testing.assert_allclose(
      ref["quantiles"], np.quantile(scores, (np.arange(7) + 0.5) / 7, method="hazen"),
      rtol=1e-5, atol=1e-5)


def test_kl_to_reference_matches_numpy():
  rng = np.random.default_rng(2)
  logits = rng.normal(size=(5, 4))
  probs = np.array([0.5, 0.3, 0.2, 0.0])
  eps = 1e-3
  q = _softmax_np(logits).mean(0)
  p = (probs + eps) / (1 + 4 * eps)
  expected = np.sum(q * np.log(q / p))
  got = reference_lib.kl_to_reference(jnp.asarray(logits, jnp.float32), jnp.asarray(probs),
                                      eps=eps)
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  # A reference class with P_c = 0 pulls the forget set's mass on it down:
  # the gradient wrt that class's logits is positive (descent lowers them).
  grad = jax.grad(lambda z: reference_lib.kl_to_reference(z, jnp.asarray(probs), eps=eps))(
      jnp.asarray(logits, jnp.float32))
  assert np.all(np.asarray(grad)[:, 3] > 0)


def test_wasserstein_matches_brute_force_matching():
  rng = np.random.default_rng(3)
  a, b = rng.normal(size=5), rng.normal(size=5) + 1.0
  # The optimal matching of two equal-size samples under squared cost, by brute force.
  best = min(np.mean((a - b[list(perm)])**2) for perm in itertools.permutations(range(5)))
  got = reference_lib.wasserstein_to_quantiles(jnp.asarray(a), jnp.sort(jnp.asarray(b)))
  np.testing.assert_allclose(got, best, rtol=1e-5)
  # A sample is at distance 0 from its own quantiles, and a dense quantile grid
  # of a sample's distribution represents it at any forget-set size.
  a_ref = reference_lib.empirical_quantiles(jnp.asarray(a), 5)
  np.testing.assert_allclose(reference_lib.wasserstein_to_quantiles(jnp.asarray(a), a_ref), 0.0,
                             atol=1e-12)
  big = rng.normal(size=20000)
  small = np.quantile(big, (np.arange(40) + 0.5) / 40)  # 40 "forget" scores spread like `big`
  dense_ref = reference_lib.empirical_quantiles(jnp.asarray(big, jnp.float32), 1000)
  assert float(reference_lib.wasserstein_to_quantiles(jnp.asarray(small), dense_ref)) < 1e-3


# ----------------------------------------------------------------------------- generators


@pytest.fixture(scope="module")
def stacked(tiny):
  """Two retain batches stacked `[2, 8, ...]`: the tiny retain batch, then a shuffled,
  relabelled copy."""
  _, _, _, retain, _ = tiny
  other = {"image": retain["image"][::-1], "label": (retain["label"][::-1] + 1) % NUM_CLASSES}
  return jax.tree.map(lambda a, b: jnp.stack([a, b]), retain, other)


@pytest.fixture(scope="module")
def loop(tiny, stacked):
  """One compiled Forsaken loop shared by the loop tests (compiling dominates their cost).

  Its retain data is `stacked`, so step t uses retain batch t % 2 (batch 0 is
  the tiny retain batch).
  """
  apply_fn, params, forget, _, nonmember = tiny
  gen = unlearn.make_coordinatewise_generator(num_classes=NUM_CLASSES)
  ref = unlearn.compute_reference(apply_fn, params, nonmember, objective="confidence_matching")
  fs = unlearn.make_forsaken(apply_fn, gen, objective="confidence_matching", lr=0.05,
                             l1_weight=0.01, retain_weight=0.5, max_steps=6, patience=6,
                             gen_optimizer=optax.adam(3e-3), acceptance="best_so_far")
  state = fs.init(jax.random.key(0), params, forget, stacked, ref)
  return fs, state, ref


def _features(tiny, loop):
  _, params, forget, retain, _ = tiny
  fs, _, ref = loop
  feats, _ = fs.generator_update.features(params, forget, retain, ref)
  return feats


def test_coordinatewise_generator_starts_as_normalized_forget_gradient(tiny, loop):
  feats = _features(tiny, loop)
  gen = unlearn.make_coordinatewise_generator(num_classes=NUM_CLASSES, output_scale=0.0)
  g = jax.jit(gen.apply)(gen.init(jax.random.key(0)), feats)
  for gi, df in zip(jax.tree.leaves(g), jax.tree.leaves(feats.forget_grad)):
    df = np.asarray(df, np.float64)
    np.testing.assert_allclose(gi, df / (np.sqrt(np.mean(df**2)) + 1e-8), rtol=1e-4, atol=1e-6)


def test_coordinatewise_generator_chunking_is_exact(tiny, loop):
  feats = _features(tiny, loop)
  whole = unlearn.make_coordinatewise_generator(num_classes=NUM_CLASSES, output_scale=1.0)
  # 7 divides neither the tensors nor their total (67): chunks straddle tensors
  # and the last one is padded.
  chunked = unlearn.make_coordinatewise_generator(num_classes=NUM_CLASSES, output_scale=1.0,
                                                  chunk_size=7)
  phi = whole.init(jax.random.key(0))

  @jax.jit
  def outputs_and_grads(ph):
    # The outputs and the gradient of a scalar function of them, for both.
    value = lambda q, gen: sum(jnp.sum(jnp.sin(g)) for g in jax.tree.leaves(gen.apply(q, feats)))
    return ((whole.apply(ph, feats), jax.grad(value)(ph, whole)),
            (chunked.apply(ph, feats), jax.grad(value)(ph, chunked)))

  expected, got = outputs_and_grads(phi)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["dense", "coordinatewise"])
def test_generator_output_respects_mask(tiny, loop, name):
  _, params, *_ = tiny
  feats = _features(tiny, loop)
  mask = jax.tree.map(lambda p: np.arange(p.size).reshape(p.shape) % 2 == 1, params)
  gen = unlearn.make_generator(name, params, num_classes=NUM_CLASSES, mask=mask,
                               output_scale=1.0)
  g = jax.jit(gen.apply)(gen.init(jax.random.key(0)), feats)
  assert jax.tree.structure(g) == jax.tree.structure(params)
  for gi, m in zip(jax.tree.leaves(g), jax.tree.leaves(mask)):
    assert np.all(np.asarray(gi)[~m] == 0)
    assert np.all(np.asarray(gi)[m] != 0)


def test_dense_generator_size_limit_and_context(tiny, loop):
  _, params, *_ = tiny
  with pytest.raises(ValueError, match="coordinatewise"):
    unlearn.make_dense_generator(params, num_classes=NUM_CLASSES, max_weights=1000)
  with pytest.raises(ValueError, match="mask selects no parameters"):
    unlearn.make_dense_generator(params, num_classes=NUM_CLASSES,
                                 mask=jax.tree.map(lambda p: False, params))
  shapes = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params)
  gen = unlearn.make_dense_generator(shapes, num_classes=NUM_CLASSES)
  feats = _features(tiny, loop)
  with pytest.raises(ValueError, match="context"):
    gen.apply(gen.init(jax.random.key(0)), feats._replace(context=jnp.ones(5)))
  with pytest.raises(ValueError, match="generator must be one of"):
    unlearn.make_generator("lstm", params, num_classes=NUM_CLASSES)


# ----------------------------------------------------------------------------- meta-gradient


@pytest.mark.parametrize("name,objective", [("dense", "paper"),
                                            ("coordinatewise", "confidence_matching")])
def test_meta_gradient_matches_finite_differences(tiny, name, objective):
  """dL/dphi exists through theta' and matches central differences (float64).

  With l1_weight = retain_weight = 0 the loss is the forget objective alone,
  so a non-zero gradient means D trains the generator through the
  application theta' = theta - eta * G_phi(...).
  """
  apply_fn, params, forget, retain, nonmember = tiny
  with jax.enable_x64(True):
    to64 = lambda t: jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), t)
    p64 = to64(params)
    f64 = {"image": to64(forget["image"]), "label": forget["label"]}
    r64 = {"image": to64(retain["image"]), "label": retain["label"]}
    n64 = {"image": to64(nonmember["image"]), "label": nonmember["label"]}
    gen = unlearn.make_generator(name, p64, num_classes=NUM_CLASSES, output_scale=1.0)
    ref = unlearn.compute_reference(apply_fn, p64, n64, objective=objective)
    upd = unlearn.make_generator_update(apply_fn, gen, objective=objective, lr=0.3,
                                        l1_weight=0.0, retain_weight=0.0)
    phi = to64(gen.init(jax.random.key(0)))
    value_and_grad = jax.jit(jax.value_and_grad(
        lambda ph: upd.loss(ph, p64, f64, r64, ref)[0]))
    _, grad = value_and_grad(phi)
    flat_grad = np.concatenate([np.ravel(g) for g in jax.tree.leaves(grad)])
    assert np.linalg.norm(flat_grad) > 1e-6
    rng = np.random.default_rng(5)
    direction = jax.tree.map(lambda x: rng.normal(size=x.shape), phi)
    h = 1e-5
    shift = lambda s: jax.tree.map(lambda x, d: x + s * h * d, phi, direction)
    fd = (value_and_grad(shift(1.0))[0] - value_and_grad(shift(-1.0))[0]) / (2 * h)
    analytic = sum(np.vdot(g, d) for g, d in zip(jax.tree.leaves(grad),
                                                 jax.tree.leaves(direction)))
    np.testing.assert_allclose(analytic, fd, rtol=1e-5, atol=1e-9)


def _with_best(state, value):
  # Same dtype and weak type as the original, so the compiled step is reused.
  return state._replace(best_loss=jnp.full_like(state.best_loss, value))


def _check_learns(update, state, params, forget, retain, ref):
  """The model is held fixed: only phi moves, so L(phi) must fall."""
  phi0 = state.params
  trace = []
  for _ in range(31):
    state, _, info = update(state, params, forget, retain, ref)
    jax.block_until_ready(state)
    assert bool(info["finite"])
    trace.append(float(info["loss"]))  # L at phi before this step
  assert trace[-1] < 0.95 * trace[0], trace
  assert not _trees_equal(phi0, state.params)


def test_coordinatewise_generator_learns_under_the_meta_gradient(tiny, loop):
  _, params, forget, retain, _ = tiny
  fs, state, ref = loop
  _check_learns(fs.generator_update.update, state.gen, params, forget, retain, ref)


def test_dense_generator_learns_under_the_meta_gradient(tiny):
  apply_fn, params, forget, retain, nonmember = tiny
  gen = unlearn.make_dense_generator(params, num_classes=NUM_CLASSES)
  ref = unlearn.compute_reference(apply_fn, params, nonmember, objective="paper")
  upd = unlearn.make_generator_update(apply_fn, gen, objective="paper", lr=0.05,
                                      gen_optimizer=optax.adam(3e-3))
  _check_learns(upd.update, upd.init(jax.random.key(0)), params, forget, retain, ref)


# ----------------------------------------------------------------------------- loop


def test_init_baseline_is_loss_of_unchanged_model(tiny, loop):
  apply_fn, params, forget, retain, _ = tiny
  _, state, ref = loop
  scores = reference_lib.logit_scaled_confidence(apply_fn(params, forget["image"]),
                                                 forget["label"])
  distance = reference_lib.wasserstein_to_quantiles(scores, ref["quantiles"])
  omega = losses.cross_entropy(apply_fn(params, retain["image"]), retain["label"]).mean()
  np.testing.assert_allclose(state.best_loss, distance + 0.5 * omega, rtol=1e-5)
  assert int(state.step) == 0 and int(state.stop_reason) == unlearn.STOP_RUNNING
  assert np.all(np.isnan(state.loss_trace))


def test_greedy_acceptance(tiny, loop, stacked):
  _, params, forget, retain, _ = tiny
  fs, state, ref = loop
  # Nothing can beat a best loss of -inf: the step is rejected, the model is
  # untouched, the generator still trains.
  blocked = _with_best(state, -np.inf)
  new, info = fs.step(blocked, forget, stacked, ref, -jnp.inf, 1.0)
  jax.block_until_ready(new)
  assert not bool(info["accepted"]) and bool(info["finite"])
  assert _trees_equal(new.params, params)
  assert not _trees_equal(new.gen.params, state.gen.params)
  assert int(new.since_improvement) == 1 and int(new.num_accepted) == 0
  # Everything beats +inf: the model becomes the generator update's candidate.
  open_ = _with_best(state, np.inf)
  new, info = fs.step(open_, forget, stacked, ref, -jnp.inf, 1.0)
  _, candidate, upd_info = fs.generator_update.update(state.gen, params, forget, retain, ref)
  jax.block_until_ready((new, candidate))
  assert bool(info["accepted"])
  for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(candidate)):
    np.testing.assert_allclose(a, b, rtol=1e-6)
  assert not _trees_equal(new.params, params)
  np.testing.assert_allclose(new.best_loss, upd_info["loss"], rtol=1e-6)
  assert int(new.num_accepted) == 1 and int(new.since_improvement) == 0


def test_same_batch_acceptance_compares_with_the_unchanged_model(tiny, stacked):
  apply_fn, params, forget, _, nonmember = tiny
  gen = unlearn.make_coordinatewise_generator(num_classes=NUM_CLASSES)
  ref = unlearn.compute_reference(apply_fn, params, nonmember, objective="confidence_matching")
  fs = unlearn.make_forsaken(apply_fn, gen, objective="confidence_matching", lr=0.05,
                             retain_weight=0.5, max_steps=6, patience=6,
                             gen_optimizer=optax.adam(3e-3))
  state = fs.init(jax.random.key(0), params, forget, stacked, ref)
  decisions = []
  for _ in range(6):
    before = state
    state, info = fs.step(state, forget, stacked, ref, -jnp.inf, 1.0)
    jax.block_until_ready(state)
    # The bar is the current model's loss on this step's batches, whatever
    # was accepted before.
    retain_k = jax.tree.map(lambda x: x[int(before.step) % x.shape[0]], stacked)
    _, baseline = fs.generator_update.features(before.params, forget, retain_k, ref)
    np.testing.assert_allclose(info["baseline"], baseline, rtol=1e-5)
    assert bool(info["accepted"]) == bool(info["loss"] < baseline)
    decisions.append(bool(info["accepted"]))
    if decisions[-1]:
      np.testing.assert_allclose(state.best_loss, info["loss"], rtol=1e-6)
    else:
      assert _trees_equal(state.params, before.params)
  assert any(decisions)
  with pytest.raises(ValueError, match="acceptance"):
    unlearn.make_forsaken(apply_fn, gen, acceptance="sometimes")


def test_stop_max_steps_and_traces(tiny, loop, stacked):
  _, _, forget, retain, _ = tiny
  fs, state, ref = loop
  final = fs.run(state, forget, stacked, ref, -jnp.inf, 1.0)
  info = unlearn.summarize(final)
  assert info["stop_reason"] == "max_steps" and info["steps"] == 6
  assert np.all(np.isfinite(info["loss_trace"]))
  accepted = info["accepted_trace"]
  assert 0 < info["accepted"] == accepted.sum()
  # Greedy: each accepted loss beat the baseline and every earlier accepted
  # loss; best_loss is the last (lowest) of them.
  kept = info["loss_trace"][accepted]
  assert kept[0] < float(state.best_loss) and np.all(np.diff(kept) < 0)
  np.testing.assert_allclose(final.best_loss, kept[-1], rtol=1e-6)
  # A rejected step lost to the best accepted loss before it.
  for t in np.flatnonzero(~accepted):
    earlier = info["loss_trace"][:t][accepted[:t]]
    assert info["loss_trace"][t] >= (earlier.min() if earlier.size else float(state.best_loss))
  # Driving `step` from Python gives the same result as the while_loop.
  s = state
  while int(s.stop_reason) == unlearn.STOP_RUNNING:
    s, _ = fs.step(s, forget, stacked, ref, -jnp.inf, 1.0)
    jax.block_until_ready(s)
  assert int(s.step) == 6
  for a, b in zip(jax.tree.leaves(s.params), jax.tree.leaves(final.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_stop_patience(tiny, loop, stacked):
  _, params, forget, retain, _ = tiny
  fs, state, ref = loop
  final = fs.run(_with_best(state, -np.inf), forget, stacked, ref, -jnp.inf,
                 1.0)
  # Patience outranks the step budget when both fire on the same step.
  assert int(final.stop_reason) == unlearn.STOP_PATIENCE
  assert int(final.step) == 6 and int(final.num_accepted) == 0
  assert _trees_equal(final.params, params)


def test_stop_target(tiny, loop, stacked):
  apply_fn, _, forget, retain, _ = tiny
  fs, state, ref = loop
  opened = _with_best(state, np.inf)
  # A threshold above every forget score: the first accepted model is fully
  # "non-member" and the loop stops there.
  final = fs.run(opened, forget, stacked, ref, jnp.inf, 0.9)
  assert int(final.stop_reason) == unlearn.STOP_TARGET and int(final.step) == 1
  # A threshold between the forget scores: the rate reported is the fraction
  # below it on the accepted model, computed here independently, and the
  # loop stops exactly when it reaches the target.
  scores = np.asarray(reference_lib.logit_scaled_confidence(
      apply_fn(state.params, forget["image"]), forget["label"]))
  threshold = float(np.median(scores))
  new, info = fs.step(opened, forget, stacked, ref, threshold, 1.0)
  after = np.asarray(reference_lib.logit_scaled_confidence(
      apply_fn(new.params, forget["image"]), forget["label"]))
  rate = float(np.mean(after < threshold))
  np.testing.assert_allclose(info["nonmember_rate"], rate)
  for target, expected in ((rate, unlearn.STOP_TARGET), (rate + 0.01, unlearn.STOP_RUNNING)):
    # Passed as Python floats, like the thresholds above: no recompilation.
    new, _ = fs.step(opened, forget, stacked, ref, threshold, target)
    assert int(new.stop_reason) == expected


def test_nonfinite_steps_are_rejected(tiny, loop, stacked):
  _, params, forget, retain, _ = tiny
  fs, state, ref = loop
  # A NaN in the reference makes the loss NaN: nothing may change.
  bad_ref = {"quantiles": jnp.full_like(ref["quantiles"], jnp.nan)}
  gen_state, candidate, info = fs.generator_update.update(state.gen, params, forget, retain,
                                                          bad_ref)
  assert not bool(info["finite"])
  assert _trees_equal(gen_state, state.gen) and _trees_equal(candidate, params)
  final = fs.run(_with_best(state, np.inf), forget, stacked, bad_ref,
                 -jnp.inf, 1.0)
  assert int(final.num_nonfinite) == 6 and int(final.num_accepted) == 0
  assert int(final.stop_reason) == unlearn.STOP_PATIENCE
  assert _trees_equal(final.params, params) and _trees_equal(final.gen, state.gen)
  # A huge dummy gradient (here: a generator whose skip weight overflows
  # theta') is rejected the same way, even though any finite loss would be
  # accepted against a best loss of +inf.
  gen_params = dict(state.gen.params, skip=jnp.array([0.0, 3e38, 0.0]))
  huge = _with_best(state, np.inf)._replace(gen=state.gen._replace(params=gen_params))
  new, info = fs.step(huge, forget, stacked, ref, -jnp.inf, 1.0)
  assert not bool(info["finite"]) and not bool(info["accepted"])
  assert int(new.num_nonfinite) == 1
  assert _trees_equal(new.params, params) and _trees_equal(new.gen, huge.gen)


def test_stacked_retain_batches_are_cycled(tiny, loop, stacked):
  apply_fn, params, forget, _, _ = tiny
  fs, state, ref = loop
  s = _with_best(state, np.inf)
  for t in range(3):
    s, info = fs.step(_with_best(s, np.inf), forget, stacked, ref, -jnp.inf, 1.0)
    jax.block_until_ready(s)
    assert bool(info["accepted"])
    # omega of the accepted model, on the batch this step should have used.
    batch = jax.tree.map(lambda x: x[t % 2], stacked)
    omega = losses.cross_entropy(apply_fn(s.params, batch["image"]), batch["label"]).mean()
    np.testing.assert_allclose(info["omega"], omega, rtol=1e-5)
    other = jax.tree.map(lambda x: x[(t + 1) % 2], stacked)
    assert abs(float(info["omega"]) - float(losses.cross_entropy(
        apply_fn(s.params, other["image"]), other["label"]).mean())) > 1e-3


# ----------------------------------------------------------------------------- bad input


def test_bad_input_raises(tiny):
  apply_fn, params, forget, retain, nonmember = tiny
  gen = unlearn.make_coordinatewise_generator(num_classes=NUM_CLASSES)
  ref = unlearn.compute_reference(apply_fn, params, nonmember)
  upd = unlearn.make_generator_update(apply_fn, gen)
  state = upd.init(jax.random.key(0))
  short = {"image": forget["image"], "label": forget["label"][:5]}
  with pytest.raises(ValueError, match="forget_batch"):
    upd.update(state, params, short, retain, ref)
  other_shape = {"image": jnp.zeros((8, 3, 3, 1)), "label": retain["label"]}
  with pytest.raises(ValueError, match="examples have shape"):
    upd.update(state, params, forget, other_shape, ref)
  with pytest.raises(ValueError, match="'image' and 'label'"):
    upd.update(state, params, forget, {"x": retain["image"]}, ref)
  with pytest.raises(ValueError, match="objective"):
    unlearn.make_generator_update(apply_fn, gen, objective="kl")
  with pytest.raises(ValueError, match="reference"):
    upd.update(state, params, forget, retain, {"quantiles": jnp.zeros(4)})
  with pytest.raises(ValueError, match=r"reference\['probs'\]"):
    upd.update(state, params, forget, retain, {"probs": jnp.ones(5) / 5})
  bad_mask = unlearn.make_generator_update(apply_fn, gen, mask={"Dense_0": True})
  with pytest.raises(ValueError, match="mask must have the structure"):
    bad_mask.update(state, params, forget, retain, ref)
  with pytest.raises(ValueError, match="lr"):
    unlearn.make_generator_update(apply_fn, gen, lr=-1.0)
  with pytest.raises(ValueError, match="max_steps"):
    unlearn.make_forsaken(apply_fn, gen, max_steps=0)
  with pytest.raises(ValueError, match="patience"):
    unlearn.make_forsaken(apply_fn, gen, patience=0)


def test_mask_must_agree_with_dense_generator_mask(tiny):
  apply_fn, params, forget, retain, nonmember = tiny
  mask_a = jax.tree.map(lambda p: np.ones(p.shape, bool), params)
  mask_b = jax.tree.map(lambda p: np.arange(p.size).reshape(p.shape) % 2 == 0, params)
  gen = unlearn.make_dense_generator(params, num_classes=NUM_CLASSES, mask=mask_a)
  upd = unlearn.make_generator_update(apply_fn, gen, mask=mask_b)
  ref = unlearn.compute_reference(apply_fn, params, nonmember)
  with pytest.raises(ValueError, match="differs from the mask the generator was built with"):
    upd.update(upd.init(jax.random.key(0)), params, forget, retain, ref)


# ----------------------------------------------------------------------------- sharding


def test_sharded_update_matches_single_device(tiny, loop, stacked):
  assert jax.device_count() == 8
  apply_fn, params, forget, retain, nonmember = tiny
  mesh = jax.make_mesh((8,), ("data",))
  data = jax.NamedSharding(mesh, jax.P("data"))
  replicated = jax.NamedSharding(mesh, jax.P())
  f_sh, r_sh, n_sh = jax.device_put((forget, retain, nonmember), data)
  p_sh = jax.device_put(params, replicated)
  assert len(f_sh["image"].sharding.device_set) == 8

  # The references (sorting and grouping over the sharded batch axis).
  for objective in ("paper", "confidence_matching"):
    expected = unlearn.compute_reference(apply_fn, params, nonmember, objective=objective)
    got = unlearn.compute_reference(apply_fn, p_sh, n_sh, objective=objective)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

  # One generator update with the quantile-matching objective (sorting over
  # the sharded batch axis inside the differentiated loss).
  fs, state, ref = loop
  expected = fs.generator_update.update(state.gen, params, forget, retain, ref)
  got = fs.generator_update.update(jax.device_put(state.gen, replicated), p_sh, f_sh, r_sh,
                                   jax.device_put(ref, replicated))
  jax.block_until_ready(got)
  for a, b in zip(jax.tree.leaves(got[:2]), jax.tree.leaves(expected[:2])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got[2]["loss"], expected[2]["loss"], rtol=1e-5)

  # Loop steps on sharded batches, blocking on each, match the unsharded ones.
  s_single = state
  s_sharded = jax.device_put(state, replicated)
  stacked_sh = jax.device_put(stacked, jax.NamedSharding(mesh, jax.P(None, "data")))
  for _ in range(3):
    s_single, _ = fs.step(s_single, forget, stacked, ref, -jnp.inf, 1.0)
    s_sharded, _ = fs.step(s_sharded, f_sh, stacked_sh, ref, -jnp.inf, 1.0)
    jax.block_until_ready((s_single, s_sharded))
  for a, b in zip(jax.tree.leaves(s_sharded), jax.tree.leaves(s_single)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- relative objective


def test_relative_objective_matches_the_reference_under_the_same_parameters(tiny):
  apply_fn, params, forget, _, nonmember = tiny
  reference = unlearn.compute_reference(apply_fn, params, nonmember,
                                        objective="relative_confidence_matching")
  assert set(reference) == {"image", "label"}

  def distance(p, **kw):
    return reference_lib.objective_distance(
        apply_fn(p, forget["image"]), forget["label"], reference,
        objective="relative_confidence_matching",
        reference_logits=apply_fn(p, nonmember["image"]), **kw)

  # Independently: W2 between the sorted forget scores and the reference's
  # quantiles at the same mid-point levels (numpy's "hazen" method).
  f = np.sort(np.asarray(reference_lib.logit_scaled_confidence(
      apply_fn(params, forget["image"]), forget["label"])))
  n = np.quantile(np.asarray(reference_lib.logit_scaled_confidence(
      apply_fn(params, nonmember["image"]), nonmember["label"])),
                  (np.arange(len(f)) + 0.5) / len(f), method="hazen")
  np.testing.assert_allclose(distance(params), np.mean((f - n) ** 2), rtol=1e-5)
  # No gradient flows through the reference side: the gradient equals that of
  # the same distance with the reference scores frozen as constants.
  grad = jax.grad(distance)(params)
  frozen = apply_fn(params, nonmember["image"])
  grad_frozen = jax.grad(lambda p: reference_lib.objective_distance(
      apply_fn(p, forget["image"]), forget["label"], reference,
      objective="relative_confidence_matching", reference_logits=frozen))(params)
  for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(grad_frozen)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  # The hinge adds threshold_weight * mean(relu(score - threshold)).
  threshold = float(np.median(f))
  hinged = reference_lib.objective_distance(
      apply_fn(params, forget["image"]), forget["label"], {**reference, "threshold": threshold},
      objective="relative_confidence_matching",
      reference_logits=apply_fn(params, nonmember["image"]), threshold_weight=10.0)
  np.testing.assert_allclose(
      hinged, np.mean((f - n) ** 2) + 10.0 * np.mean(np.maximum(f - threshold, 0.0)), rtol=1e-5)
  with pytest.raises(ValueError, match="threshold"):
    distance(params, threshold_weight=1.0)
  with pytest.raises(ValueError, match="reference_logits"):
    reference_lib.objective_distance(apply_fn(params, forget["image"]), forget["label"],
                                     reference, objective="relative_confidence_matching")


def test_run_in_chunks_equals_one_run(tiny, stacked):
  apply_fn, params, forget, _, nonmember = tiny
  gen = unlearn.make_coordinatewise_generator(num_classes=NUM_CLASSES)
  reference = unlearn.compute_reference(apply_fn, params, nonmember,
                                        objective="relative_confidence_matching")
  fs = unlearn.make_forsaken(apply_fn, gen, objective="relative_confidence_matching", lr=0.05,
                             retain_weight=0.5, max_steps=6, patience=6,
                             gen_optimizer=optax.adam(3e-3))
  state = fs.init(jax.random.key(0), params, forget, stacked, reference)
  whole = fs.run(state, forget, stacked, reference, -jnp.inf, 1.0)
  part = fs.run(state, forget, stacked, reference, -jnp.inf, 1.0, 4)
  jax.block_until_ready(part)
  assert int(part.step) == 4 and int(part.stop_reason) == unlearn.STOP_RUNNING
  part = fs.run(part, forget, stacked, reference, -jnp.inf, 1.0, 6)
  assert int(part.step) == int(whole.step) == 6
  for a, b in zip(jax.tree.leaves(part), jax.tree.leaves(whole)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
