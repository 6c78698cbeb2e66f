"""Stacked shadow models: vmapped training, model-axis sharding, batches, prediction."""

import jax
import numpy as np
import optax
import pytest

from forsaken_jax import models, parallel, train
from forsaken_jax.mia import lira, shadow

NUM_EXAMPLES = 96
NUM_CLASSES = 3
INPUT_SHAPE = (6, 6, 1)


def _setup(num_models, seed=0):
  fns = models.create_model("mlp", num_classes=NUM_CLASSES, input_shape=INPUT_SHAPE, hidden=(16,))
  tx = optax.adam(1e-2)
  rng = np.random.default_rng(seed)
  images = rng.uniform(size=(NUM_EXAMPLES, *INPUT_SHAPE)).astype(np.float32)
  labels = rng.integers(0, NUM_CLASSES, size=NUM_EXAMPLES).astype(np.int32)
  keep = np.asarray(lira.balanced_keep_masks(jax.random.key(seed + 1), num_models, NUM_EXAMPLES))
  keys = jax.random.split(jax.random.key(seed + 2), num_models)
  return fns, tx, images, labels, keep, keys


def _train_stacked(num_models, *, mesh=None, steps=6, batch_size=8):
  fns, tx, images, labels, keep, keys = _setup(num_models)
  state = shadow.init_stacked_state(fns.init_fn, tx, keys)
  step = shadow.make_stacked_train_step(fns.apply_fn, tx, mesh=mesh)
  losses = []
  for i in range(steps):
    idx = shadow.shadow_batch_indices(keep, batch_size, i, seed=3)
    state, metrics = parallel.block(step(state, {"image": images[idx], "label": labels[idx]}))
    losses.append(np.asarray(metrics["loss"]))
  return state, np.stack(losses, axis=1)  # [K, steps]


def _train_separately(num_models, *, steps=6, batch_size=8):
  """The reference: each model on its own with the single-model update."""
  fns, tx, images, labels, keep, keys = _setup(num_models)
  update = jax.jit(train.make_update_fn(fns.apply_fn, tx))
  states, losses = [], []
  for k in range(num_models):
    state = train.init_train_state(fns.init_fn, tx, keys[k])
    model_losses = []
    for i in range(steps):
      idx = shadow.shadow_batch_indices(keep, batch_size, i, seed=3)[k]
      state, metrics = update(state, {"image": images[idx], "label": labels[idx]})
      model_losses.append(float(metrics["loss"]))
    states.append(state)
    losses.append(model_losses)
  return states, np.array(losses)


def _assert_matches_separate(stacked_state, stacked_losses, states, losses):
  np.testing.assert_allclose(stacked_losses, losses, rtol=1e-5, atol=1e-6)
  for k, state in enumerate(states):
    for a, b in zip(jax.tree.leaves(shadow.unstack(stacked_state["params"], k)),
                    jax.tree.leaves(state["params"])):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  np.testing.assert_array_equal(stacked_state["step"], losses.shape[1])


def _is_split_over_models(leaf, model_axis_size):
  """Whether the leading axis is split into `model_axis_size` parts over "model"."""
  sharding = leaf.sharding
  return (sharding.spec[0] == parallel.MODEL_AXIS
          and sharding.mesh.shape[parallel.MODEL_AXIS] == model_axis_size
          and all(s.data.shape[0] == leaf.shape[0] // model_axis_size
                  for s in leaf.addressable_shards))


def test_stacked_training_matches_separate_training():
  assert jax.device_count() == 8
  # K=4 does not divide 8 devices: the default rule falls back to one device.
  state, losses = _train_stacked(4)
  assert len(state["params"]["Dense_0"]["kernel"].sharding.device_set) == 1
  _assert_matches_separate(state, losses, *_train_separately(4))
  fns, tx, _, _, _, keys = _setup(4)
  initial = shadow.init_stacked_state(fns.init_fn, tx, keys)["params"]["Dense_0"]["kernel"]
  assert np.all(np.abs(state["params"]["Dense_0"]["kernel"] - initial).max(axis=(1, 2)) > 1e-3)


def test_sharded_over_model_mesh_matches_separate_training():
  mesh = shadow.model_mesh(8)
  assert mesh.shape == {"model": 8}
  state, losses = _train_stacked(8, mesh=mesh)
  for leaf in jax.tree.leaves(state):
    assert _is_split_over_models(leaf, 8), leaf.sharding
  _assert_matches_separate(state, losses, *_train_separately(8))


def test_model_and_data_mesh_matches_separate_training():
  mesh = jax.make_mesh((4, 2), (parallel.MODEL_AXIS, parallel.DATA_AXIS))
  state, losses = _train_stacked(4, mesh=mesh)
  assert _is_split_over_models(state["params"]["Dense_0"]["kernel"], 4)
  _assert_matches_separate(state, losses, *_train_separately(4))


def test_cnn_on_an_explicit_mesh_matches_separate_training():
  # vmap turns the convolution into a grouped one via a reshape of the model
  # axis, which Explicit sharding types reject; the step must still work on a
  # mesh made by jax.make_mesh's defaults.
  fns = models.create_model("cnn", num_classes=NUM_CLASSES, input_shape=INPUT_SHAPE,
                            features=(2,), dense=8)
  _, tx, images, labels, keep, keys = _setup(4)
  mesh = jax.make_mesh((2,), (parallel.MODEL_AXIS,), devices=jax.devices()[:2])
  assert mesh.axis_types == (jax.sharding.AxisType.Explicit,)
  state = shadow.init_stacked_state(fns.init_fn, tx, keys, mesh=mesh)
  step = shadow.make_stacked_train_step(fns.apply_fn, tx, mesh=mesh)
  update = jax.jit(train.make_update_fn(fns.apply_fn, tx))
  separate = [train.init_train_state(fns.init_fn, tx, key) for key in keys]
  for i in range(3):
    idx = shadow.shadow_batch_indices(keep, 8, i, seed=1)
    state, _ = parallel.block(step(state, {"image": images[idx], "label": labels[idx]}))
    separate = [update(s, {"image": images[idx[k]], "label": labels[idx[k]]})[0]
                for k, s in enumerate(separate)]
  assert _is_split_over_models(state["params"]["Conv_0"]["kernel"], 2)
  for k, reference in enumerate(separate):
    for a, b in zip(jax.tree.leaves(shadow.unstack(state["params"], k)),
                    jax.tree.leaves(reference["params"])):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_init_stacked_state_equals_per_model_init_and_can_be_created_sharded():
  fns, tx, _, _, _, keys = _setup(8)
  mesh = shadow.model_mesh(8)
  state = shadow.init_stacked_state(fns.init_fn, tx, keys, mesh=mesh)
  assert _is_split_over_models(state["params"]["Dense_0"]["kernel"], 8)
  expected = shadow.stack([train.init_train_state(fns.init_fn, tx, key) for key in keys])
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(a, b)
  placed = shadow.shard_stacked(expected, mesh)
  assert all(_is_split_over_models(leaf, 8) for leaf in jax.tree.leaves(placed))
  with pytest.raises(ValueError, match="not divisible by the size 8"):
    shadow.init_stacked_state(fns.init_fn, tx, keys[:4], mesh=mesh)


def test_model_mesh_picks_largest_divisor():
  # Brute force over K: the largest d <= 8 with K % d == 0.
  for num_models in range(1, 40):
    expected = max(d for d in range(1, 9) if num_models % d == 0)
    assert shadow.model_mesh(num_models).size == expected
  assert shadow.model_mesh(12).size == 6 and shadow.model_mesh(13).size == 1
  with pytest.raises(ValueError, match="num_models"):
    shadow.model_mesh(0)


def test_train_step_compiles_once_and_default_mesh_uses_all_devices():
  fns, tx, images, labels, keep, keys = _setup(8)
  traces = []

  def counting_apply(params, x):
    traces.append(1)
    return fns.apply_fn(params, x)

  state = shadow.init_stacked_state(fns.init_fn, tx, keys)
  step = shadow.make_stacked_train_step(counting_apply, tx)  # K=8 divides the 8 devices
  for i in range(5):
    idx = shadow.shadow_batch_indices(keep, 8, i, seed=0)
    state, _ = parallel.block(step(state, {"image": images[idx], "label": labels[idx]}))
  assert len(traces) == 1
  assert all(_is_split_over_models(leaf, 8) for leaf in jax.tree.leaves(state))


def test_train_step_errors():
  fns, tx, images, labels, keep, keys = _setup(4)
  state = shadow.init_stacked_state(fns.init_fn, tx, keys)
  idx = shadow.shadow_batch_indices(keep, 6, 0, seed=0)
  batch = {"image": images[idx], "label": labels[idx]}
  with pytest.raises(ValueError, match="'model' axis"):
    shadow.make_stacked_train_step(fns.apply_fn, tx, mesh=parallel.make_mesh(8))
  with pytest.raises(ValueError, match="number of models 4 is not divisible by the size 8"):
    shadow.make_stacked_train_step(fns.apply_fn, tx, mesh=shadow.model_mesh(8))(state, batch)
  step = shadow.make_stacked_train_step(fns.apply_fn, tx)
  with pytest.raises(ValueError, match="holds 3 models' batches but the state stacks 4"):
    step(state, {"image": batch["image"][:3], "label": batch["label"][:3]})
  with pytest.raises(ValueError, match=r"batch\['label'\] must have shape \[K, B\]"):
    step(state, {"image": batch["image"], "label": batch["label"][:, 0]})
  mesh = jax.make_mesh((4, 2), (parallel.MODEL_AXIS, parallel.DATA_AXIS))
  odd = shadow.shadow_batch_indices(keep, 5, 0, seed=0)
  with pytest.raises(ValueError, match="batch size 5 is not divisible by the 2 devices"):
    shadow.make_stacked_train_step(fns.apply_fn, tx, mesh=mesh)(
        state, {"image": images[odd], "label": labels[odd]})


def test_shadow_batch_indices_draw_in_set_cover_each_epoch_and_are_deterministic():
  keep = np.asarray(lira.balanced_keep_masks(jax.random.key(0), 6, 101))
  sizes = keep.sum(1)
  batch_size = 7
  steps = 3 * (sizes.max() // batch_size) + 2
  batches = np.stack(
      [shadow.shadow_batch_indices(keep, batch_size, s, seed=5) for s in range(steps)])
  assert batches.shape == (steps, 6, batch_size) and batches.dtype == np.int64
  for k in range(6):
    members = set(np.flatnonzero(keep[k]).tolist())
    assert set(batches[:, k].ravel().tolist()) <= members
    per_epoch = sizes[k] // batch_size
    for epoch in range(2):
      seen = batches[epoch * per_epoch:(epoch + 1) * per_epoch, k].ravel()
      # Each epoch visits distinct in-set examples and drops only the remainder.
      assert len(set(seen.tolist())) == len(seen) == sizes[k] - sizes[k] % batch_size
  # A pure function of (keep, seed, step): recomputing (e.g. after a resume) agrees.
  again = shadow.shadow_batch_indices(keep, batch_size, steps - 1, seed=5)
  np.testing.assert_array_equal(again, batches[-1])
  assert not np.array_equal(shadow.shadow_batch_indices(keep, batch_size, 0, seed=6), batches[0])
  # The documented order: epoch e of model k permutes its in-set with rng([seed, k, e]).
  k, step = 4, steps - 1
  per_epoch = sizes[k] // batch_size
  epoch, i = divmod(step, per_epoch)
  order = np.random.default_rng([5, k, epoch]).permutation(sizes[k])
  np.testing.assert_array_equal(
      batches[step, k], np.flatnonzero(keep[k])[order[i * batch_size:(i + 1) * batch_size]])


def test_shadow_batch_indices_errors():
  keep = np.ones((2, 10), bool)
  with pytest.raises(ValueError, match="keep must be a bool array"):
    shadow.shadow_batch_indices(keep.astype(np.int32), 2, 0, seed=0)
  with pytest.raises(ValueError, match=r"keep must have shape \[K, N\]"):
    shadow.shadow_batch_indices(keep[0], 2, 0, seed=0)
  empty = keep.copy()
  empty[1] = False
  with pytest.raises(ValueError, match="model 1 an empty in-set"):
    shadow.shadow_batch_indices(empty, 2, 0, seed=0)
  small = keep.copy()
  small[0, 3:] = False
  with pytest.raises(ValueError, match="batch_size=4 exceeds the in-set of model 0, which has 3"):
    shadow.shadow_batch_indices(small, 4, 0, seed=0)
  with pytest.raises(ValueError, match="step must be an int >= 0, got -1"):
    shadow.shadow_batch_indices(keep, 2, -1, seed=0)
  with pytest.raises(ValueError, match="batch_size must be an int >= 1, got 0"):
    shadow.shadow_batch_indices(keep, 0, 0, seed=0)
  with pytest.raises(ValueError, match="seed"):
    shadow.shadow_batch_indices(keep, 2, 0, seed=-3)


@pytest.mark.parametrize("num_models,mesh_shape", [(4, None), (8, (8,)), (4, (4, 2))])
def test_predict_matches_per_model_apply(num_models, mesh_shape):
  fns, tx, images, _, _, keys = _setup(num_models)
  params = shadow.init_stacked_state(fns.init_fn, tx, keys)["params"]
  mesh = None
  if mesh_shape is not None:
    axes = (parallel.MODEL_AXIS, parallel.DATA_AXIS)[:len(mesh_shape)]
    mesh = jax.make_mesh(mesh_shape, axes)
  traces = []

  def counting_apply(p, x):
    traces.append(1)
    return fns.apply_fn(p, x)

  predict = shadow.make_stacked_predict_fn(counting_apply, mesh)
  logits = predict(params, images[:37], batch_size=16)  # 3 chunks, the last padded
  assert logits.shape == (num_models, 37, NUM_CLASSES) and logits.dtype == np.float32
  for k in range(num_models):
    expected = fns.apply_fn(shadow.unstack(params, k), images[:37])
    np.testing.assert_allclose(logits[k], expected, rtol=1e-5, atol=1e-6)
  assert len(traces) == 1
  with pytest.raises(ValueError, match="at least one image"):
    predict(params, images[:0])
  with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
    predict(params, images, batch_size=0)


def test_stack_and_unstack():
  trees = [{"w": np.full((2, 3), k, np.float32), "b": np.array(k)} for k in range(5)]
  stacked = shadow.stack(trees)
  assert stacked["w"].shape == (5, 2, 3) and stacked["b"].shape == (5,)
  for k in range(5):
    np.testing.assert_array_equal(shadow.unstack(stacked, k)["w"], trees[k]["w"])
  with pytest.raises(ValueError, match=r"k must be an int in \[0, 5\), got 5"):
    shadow.unstack(stacked, 5)
  with pytest.raises(ValueError, match="at least one pytree"):
    shadow.stack([])
  with pytest.raises(ValueError, match="same leading model axis"):
    shadow.unstack({"a": np.zeros((2, 1)), "b": np.zeros((3, 1))}, 0)
