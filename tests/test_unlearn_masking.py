"""Tests for neuron masking, the optax transform and the baselines of forsaken_jax.unlearn."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from forsaken_jax.models import create_model
from forsaken_jax import unlearn
from forsaken_jax.unlearn import masking
from numpy_mlp import mlp_grads, softmax

NUM_CLASSES = 3
INPUT_SHAPE = (2, 2, 1)


def _batch(rng, n):
  return {"image": jnp.asarray(rng.normal(size=(n, *INPUT_SHAPE)), jnp.float32),
          "label": jnp.asarray(rng.integers(0, NUM_CLASSES, n), jnp.int32)}


@pytest.fixture(scope="module")
def mlp():
  model = create_model("mlp", num_classes=NUM_CLASSES, input_shape=INPUT_SHAPE, hidden=(6,))
  rng = np.random.default_rng(0)
  return model.apply_fn, model.init_fn(jax.random.key(0)), _batch(rng, 8), _batch(rng, 16)


# ----------------------------------------------------------------------------- masking


def test_unit_groups_pair_kernels_with_biases(mlp):
  _, params, *_ = mlp
  names = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  groups = [[names[i] for i in g] for g in masking.unit_groups(params)]
  assert sorted(map(sorted, groups)) == [
      ["['Dense_0']['bias']", "['Dense_0']['kernel']"],
      ["['Dense_1']['bias']", "['Dense_1']['kernel']"]]
  # Scalars are units of their own.
  assert masking.unit_groups({"a": jnp.zeros(()), "b": jnp.zeros(())}) == [[0], [1]]


def test_unit_saliency_matches_hand_computed_gradients(mlp):
  apply_fn, params, forget, retain = mlp
  sal = unlearn.unit_saliency(apply_fn, params, forget, retain, eps=1e-12)
  gf, gr = mlp_grads(params, forget), mlp_grads(params, retain)
  for layer, fan_in in (("Dense_0", 4), ("Dense_1", 6)):
    # Mean |grad| over a unit's kernel column and its bias: fan_in + 1 values.
    f = (np.abs(gf[layer]["kernel"]).sum(0) + np.abs(gf[layer]["bias"])) / (fan_in + 1)
    r = (np.abs(gr[layer]["kernel"]).sum(0) + np.abs(gr[layer]["bias"])) / (fan_in + 1)
    expected = f / (r + 1e-12)
    for leaf in ("kernel", "bias"):
      np.testing.assert_allclose(sal[layer][leaf], expected, rtol=1e-4)


def test_neuron_mask_selects_top_units(mlp):
  _, params, *_ = mlp
  rng = np.random.default_rng(1)
  s0, s1 = rng.random(6), rng.random(3)
  sal = {"Dense_0": {"kernel": s0, "bias": s0}, "Dense_1": {"kernel": s1, "bias": s1}}
  mask = unlearn.neuron_mask(params, sal, fraction=0.4)
  # Brute force: ceil(0.4 * 9) = 4 units with the highest scores overall.
  allscores = np.concatenate([s0, s1])
  top = set(np.argsort(-allscores)[:4])
  chosen0 = np.array([i in top for i in range(6)])
  chosen1 = np.array([i + 6 in top for i in range(3)])
  for layer, chosen, fan_in in (("Dense_0", chosen0, 4), ("Dense_1", chosen1, 6)):
    np.testing.assert_array_equal(mask[layer]["bias"], chosen)
    np.testing.assert_array_equal(mask[layer]["kernel"], np.tile(chosen, (fan_in, 1)))
    assert mask[layer]["kernel"].dtype == bool
  assert masking.mask_size(params, mask) == chosen0.sum() * 5 + chosen1.sum() * 7

  per_layer = unlearn.neuron_mask(params, sal, fraction=0.4, per_layer=True)
  assert per_layer["Dense_0"]["bias"].sum() == math.ceil(0.4 * 6)
  assert per_layer["Dense_1"]["bias"].sum() == math.ceil(0.4 * 3)
  np.testing.assert_array_equal(per_layer["Dense_1"]["bias"], s1 >= np.sort(s1)[-2])

  everything = unlearn.neuron_mask(params, sal, fraction=1.0)
  assert all(np.all(m) for m in jax.tree.leaves(everything))


def test_neuron_mask_bad_input(mlp):
  _, params, *_ = mlp
  sal = jax.tree.map(lambda p: np.ones(p.shape[-1]), params)
  for fraction in (0.0, -0.1, 1.5, float("nan")):
    with pytest.raises(ValueError, match="fraction"):
      unlearn.neuron_mask(params, sal, fraction=fraction)
  with pytest.raises(ValueError, match="saliency must have the structure"):
    unlearn.neuron_mask(params, {"Dense_0": sal["Dense_0"]}, fraction=0.5)
  with pytest.raises(ValueError, match="units"):
    unlearn.neuron_mask(params, jax.tree.map(lambda s: np.ones(2), sal), fraction=0.5)


def test_neuron_mask_drives_a_masked_generator(mlp):
  """The end-to-end path of v3: saliency -> mask -> dense generator on the masked units."""
  apply_fn, params, forget, retain = mlp
  sal = unlearn.unit_saliency(apply_fn, params, forget, retain)
  mask = unlearn.neuron_mask(params, sal, fraction=0.3)
  gen = unlearn.make_dense_generator(params, num_classes=NUM_CLASSES, mask=mask)
  ref = unlearn.compute_reference(apply_fn, params, retain, objective="mean_posterior")
  upd = unlearn.make_generator_update(apply_fn, gen, objective="mean_posterior", lr=0.1)
  _, candidate, info = upd.update(upd.init(jax.random.key(0)), params, forget, retain, ref)
  assert bool(info["finite"])
  for p, c, m in zip(*map(jax.tree.leaves, (params, candidate, mask))):
    np.testing.assert_array_equal(np.asarray(c)[~m], np.asarray(p)[~m])
    assert np.any(np.asarray(c)[m] != np.asarray(p)[m])


def _random_masks(params, fraction, seeds):
  """Neuron masks of `fraction` for random saliencies."""
  return [unlearn.neuron_mask(params, jax.tree.map(
      lambda p, r=np.random.default_rng(seed): r.random(p.shape[-1]), params), fraction=fraction)
          for seed in seeds]


def test_pack_mask(mlp):
  _, params, *_ = mlp
  mask = jax.tree.map(lambda p: np.arange(p.size).reshape(p.shape) % 3 == 0, params)
  total = masking.mask_size(params, None)
  packed = unlearn.pack_mask(params, mask, capacity=40)
  flat = np.concatenate([np.reshape(m, -1) for m in jax.tree.leaves(mask)])
  count = int(flat.sum())
  assert int(packed.count) == count and packed.indices.shape == (40,)
  np.testing.assert_array_equal(packed.indices[:count], np.flatnonzero(flat))
  assert np.all(packed.indices[count:] == total)  # padding: out of range
  assert masking.masks_equal(packed.mask, mask)
  exact = unlearn.pack_mask(params, mask)
  assert exact.indices.shape == (count,)
  assert int(unlearn.pack_mask(params, None).count) == total
  with pytest.raises(ValueError, match="more than capacity"):
    unlearn.pack_mask(params, mask, capacity=count - 1)
  with pytest.raises(ValueError, match="selects no parameters"):
    unlearn.pack_mask(params, jax.tree.map(lambda p: False, params))
  with pytest.raises(ValueError, match="mask must have the structure"):
    unlearn.pack_mask(params, {"Dense_0": True})


def test_neuron_mask_capacity_bounds_every_mask_and_is_reached(mlp):
  _, params, *_ = mlp
  # Dense_0: 6 units of 5 coordinates (4 inputs + bias); Dense_1: 3 units of 7.
  for fraction in (0.2, 0.5, 1.0):
    capacity = unlearn.neuron_mask_capacity(params, fraction=fraction)
    sizes = [masking.mask_size(params, m) for m in _random_masks(params, fraction, range(20))]
    assert max(sizes) <= capacity
    # Saliency favouring the units with the most coordinates reaches it.
    favour = {"Dense_0": {"kernel": np.zeros(6), "bias": np.zeros(6)},
              "Dense_1": {"kernel": np.ones(3), "bias": np.ones(3)}}
    fullest = unlearn.neuron_mask(params, favour, fraction=fraction)
    assert masking.mask_size(params, fullest) == capacity
  assert unlearn.neuron_mask_capacity(params, fraction=0.2) == 2 * 7  # ceil(0.2 * 9) units
  per_layer = unlearn.neuron_mask_capacity(params, fraction=0.5, per_layer=True)
  assert per_layer == 3 * 5 + 2 * 7
  for seed in range(3):
    saliency = jax.tree.map(lambda p, r=np.random.default_rng(seed): r.random(p.shape[-1]), params)
    m = unlearn.neuron_mask(params, saliency, fraction=0.5, per_layer=True)
    assert masking.mask_size(params, m) == per_layer
  with pytest.raises(ValueError, match="fraction"):
    unlearn.neuron_mask_capacity(params, fraction=0.0)


def test_runtime_masks_share_one_compiled_loop(mlp):
  """A new mask (a new forget set) reuses the loop compiled for the first one."""
  apply_fn, params, forget, retain = mlp
  fraction = 0.4
  capacity = unlearn.neuron_mask_capacity(params, fraction=fraction)
  masks = _random_masks(params, fraction, (1, 2, 3))
  assert len({masking.mask_size(params, m) for m in masks}) > 1  # different sizes, one program
  gen = unlearn.make_coordinatewise_generator(num_classes=NUM_CLASSES, output_scale=1.0)
  ref = unlearn.compute_reference(apply_fn, params, retain, objective="confidence_matching")
  kwargs = dict(objective="confidence_matching", lr=0.05, retain_weight=0.5, max_steps=4,
                patience=4, gen_optimizer=optax.adam(1e-2))
  fs = unlearn.make_forsaken(apply_fn, gen, mask_capacity=capacity, **kwargs)
  threshold, target = jnp.float32(-jnp.inf), jnp.float32(1.0)
  for mask in masks:
    state = fs.init(jax.random.key(0), params, forget, retain, ref, mask=mask)
    state = fs.run(state, forget, retain, ref, threshold, target)
    assert int(state.num_accepted) > 0
    for p, q, m in zip(*map(jax.tree.leaves, (params, state.params, mask))):
      np.testing.assert_array_equal(np.asarray(q)[~m], np.asarray(p)[~m])
      assert np.any(np.asarray(q)[m] != np.asarray(p)[m])
    # The same loop with the mask compiled in (no padding) takes the same steps.
    static = unlearn.make_forsaken(apply_fn, gen, mask=mask, **kwargs)
    expected = static.run(static.init(jax.random.key(0), params, forget, retain, ref), forget,
                          retain, ref, threshold, target)
    np.testing.assert_allclose(state.loss_trace, expected.loss_trace, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(expected.params)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert fs.run._cache_size() == 1
  with pytest.raises(ValueError, match="runtime masks of capacity"):
    fs.init(jax.random.key(0), params, forget, retain, ref)
  too_big = jax.tree.map(lambda p: np.ones(p.shape, bool), params)
  with pytest.raises(ValueError, match="more than capacity"):
    fs.init(jax.random.key(0), params, forget, retain, ref, mask=too_big)


def test_dense_generator_with_runtime_masks(mlp):
  apply_fn, params, forget, retain = mlp
  capacity = unlearn.neuron_mask_capacity(params, fraction=0.4)
  gen = unlearn.make_generator("dense", params, num_classes=NUM_CLASSES, capacity=capacity,
                               output_scale=1.0)
  assert gen.capacity == capacity
  feats = unlearn.Features(params, params, params, jnp.full((NUM_CLASSES,), 1 / NUM_CLASSES))
  phi = gen.init(jax.random.key(0))
  apply = jax.jit(gen.apply)
  for mask in _random_masks(params, 0.4, (1, 2)):
    g = apply(phi, feats, unlearn.pack_mask(params, mask, capacity=capacity))
    for gi, m in zip(jax.tree.leaves(g), jax.tree.leaves(mask)):
      assert np.all(np.asarray(gi)[~m] == 0) and np.all(np.asarray(gi)[m] != 0)
  assert apply._cache_size() == 1
  with pytest.raises(ValueError, match="runtime masks of capacity"):
    gen.apply(phi, feats)
  with pytest.raises(ValueError, match="was built for"):
    gen.apply(phi, feats, unlearn.pack_mask(params, _random_masks(params, 0.4, (1,))[0]))
  with pytest.raises(ValueError, match="not both"):
    unlearn.make_generator("dense", params, num_classes=NUM_CLASSES, capacity=capacity,
                           mask=_random_masks(params, 0.4, (1,))[0])


# ----------------------------------------------------------------------------- transform


def test_forsaken_transform_in_an_optax_chain(mlp):
  _, params, *_ = mlp
  rng = np.random.default_rng(2)
  forget_grads = jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params)
  retain_grads = jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params)
  context = jnp.ones(NUM_CLASSES) / NUM_CLASSES
  mask = jax.tree.map(lambda p: np.arange(p.size).reshape(p.shape) % 2 == 0, params)
  # With a zero output layer the coordinatewise generator is exactly the
  # RMS-normalized forget gradient, so the chain's result is known in closed form.
  gen = unlearn.make_coordinatewise_generator(num_classes=NUM_CLASSES, output_scale=0.0)
  tx = optax.chain(unlearn.forsaken_transform(gen, gen.init(jax.random.key(0)), mask=mask),
                   optax.scale(-0.1))
  state = tx.init(params)
  update = jax.jit(tx.update)  # one compilation instead of many eager ops
  updates, state = update(retain_grads, state, params, forget_grads=forget_grads,
                          context=context)
  new_params = optax.apply_updates(params, updates)
  for p, f, m, n in zip(*map(jax.tree.leaves, (params, forget_grads, mask, new_params))):
    f = np.asarray(f, np.float64)
    expected = np.asarray(p) - 0.1 * f / (np.sqrt(np.mean(f**2)) + 1e-8)
    np.testing.assert_allclose(np.asarray(n)[m], expected[m], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(n)[~m], np.asarray(p)[~m])

  with pytest.raises(ValueError, match="forget_grads and context"):
    tx.update(retain_grads, state, params)
  with pytest.raises(ValueError, match="needs params"):
    tx.update(retain_grads, state, None, forget_grads=forget_grads, context=context)


# ----------------------------------------------------------------------------- baselines


@pytest.fixture(scope="module")
def linear():
  model = create_model("logistic_regression", num_classes=NUM_CLASSES, input_shape=INPUT_SHAPE)
  rng = np.random.default_rng(3)
  return model.apply_fn, model.init_fn(jax.random.key(1)), _batch(rng, 8)


def _linear_grads_np(params, batch):
  """Analytic gradient of the mean cross-entropy of multinomial logistic regression."""
  w, b = (np.asarray(params["Dense_0"][k], np.float64) for k in ("kernel", "bias"))
  x = np.asarray(batch["image"], np.float64).reshape(len(batch["label"]), -1)
  dz = softmax(x @ w + b)
  dz[np.arange(len(dz)), np.asarray(batch["label"])] -= 1
  dz /= len(dz)
  return x.T @ dz, dz.sum(0)


def test_gradient_ascent_step(linear):
  apply_fn, params, batch = linear
  step = unlearn.make_gradient_ascent_step(apply_fn, lr=0.5)
  new, info = step(params, batch)
  dw, db = _linear_grads_np(params, batch)
  np.testing.assert_allclose(new["Dense_0"]["kernel"], params["Dense_0"]["kernel"] + 0.5 * dw,
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(new["Dense_0"]["bias"], params["Dense_0"]["bias"] + 0.5 * db,
                             rtol=1e-5, atol=1e-6)
  _, after = step(new, batch)
  assert float(after["loss"]) > float(info["loss"])  # ascent raises the forget loss
  with pytest.raises(ValueError, match="lr"):
    unlearn.make_gradient_ascent_step(apply_fn, lr=0.0)


def test_finetune_step(linear):
  apply_fn, params, batch = linear
  tx = optax.sgd(0.5)
  step = unlearn.make_finetune_step(apply_fn, tx)
  new, _, info = step(params, tx.init(params), batch)
  dw, db = _linear_grads_np(params, batch)
  np.testing.assert_allclose(new["Dense_0"]["kernel"], params["Dense_0"]["kernel"] - 0.5 * dw,
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(new["Dense_0"]["bias"], params["Dense_0"]["bias"] - 0.5 * db,
                             rtol=1e-5, atol=1e-6)
  bad = {"image": batch["image"], "label": batch["label"][:3]}
  with pytest.raises(ValueError, match="retain_batch"):
    step(params, tx.init(params), bad)


@pytest.mark.parametrize("steps_per_call", [None, 1, 2, 5, 8])
def test_finetune_loop_equals_steps_with_cycled_batches(linear, steps_per_call):
  apply_fn, params, batch = linear
  tx = optax.adam(0.05)
  other = {"image": batch["image"][::-1] * 0.5, "label": batch["label"][::-1]}
  stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), batch, other)
  run = unlearn.make_finetune_loop(apply_fn, tx, num_steps=5, steps_per_call=steps_per_call)
  looped, step_losses = run(params, stacked)
  step = unlearn.make_finetune_step(apply_fn, tx)
  expected, state = params, tx.init(params)
  for t in range(5):
    expected, state, info = step(expected, state, (batch, other)[t % 2])
    np.testing.assert_allclose(step_losses[t], info["loss"], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(looped), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert step_losses.shape == (5,)
  with pytest.raises(ValueError, match="num_steps"):
    unlearn.make_finetune_loop(apply_fn, tx, num_steps=0)
  with pytest.raises(ValueError, match="steps_per_call"):
    unlearn.make_finetune_loop(apply_fn, tx, num_steps=3, steps_per_call=0)
  with pytest.raises(ValueError, match="stacked"):
    run(params, batch)
