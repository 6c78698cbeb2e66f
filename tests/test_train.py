"""Training step: data-parallel sharding and evaluation helpers."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from forsaken_jax import models, parallel, train


def _setup():
  fns = models.create_model("cnn", num_classes=5, input_shape=(12, 12, 1), features=(4, 8), dense=16)
  tx = optax.adam(3e-3)
  rng = np.random.default_rng(0)
  images = rng.uniform(size=(64, 12, 12, 1)).astype(np.float32)
  labels = rng.integers(0, 5, size=64).astype(np.int32)
  return fns, tx, images, labels


def _run(num_devices, steps=12):
  fns, tx, images, labels = _setup()
  mesh = parallel.make_mesh(num_devices)
  state = parallel.replicate(train.init_train_state(fns.init_fn, tx, jax.random.key(0)), mesh)
  step = train.make_train_step(fns.apply_fn, tx, mesh=mesh)
  losses = []
  for i in range(steps):
    idx = np.arange(16) + 16 * (i % 4)
    batch = parallel.shard_batch({"image": images[idx], "label": labels[idx]}, mesh)
    state, metrics = parallel.block(step(state, batch))
    losses.append(float(metrics["loss"]))
  return state, losses


def test_eight_devices_match_one_device():
  assert jax.device_count() == 8
  state1, losses1 = _run(1)
  state8, losses8 = _run(8)
  assert state8["params"]["Dense_0"]["kernel"].sharding.mesh.size == 8
  np.testing.assert_allclose(losses1, losses8, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(state1["params"]), jax.tree.leaves(state8["params"])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  assert int(state8["step"]) == 12


def test_batch_must_divide_over_devices():
  with pytest.raises(ValueError, match="not divisible by the 8 devices"):
    parallel.check_batch_divisible(12, parallel.make_mesh(8))
  with pytest.raises(ValueError, match="num_devices"):
    parallel.make_mesh(9)


def test_train_step_compiles_once():
  fns, tx, images, labels = _setup()
  mesh = parallel.make_mesh(8)
  traces = []

  def counting_apply(params, x):
    traces.append(1)
    return fns.apply_fn(params, x)

  step = train.make_train_step(counting_apply, tx, mesh=mesh)
  state = parallel.replicate(train.init_train_state(fns.init_fn, tx, jax.random.key(0)), mesh)
  for i in range(3):
    batch = parallel.shard_batch({"image": images[:16], "label": labels[:16]}, mesh)
    state, _ = parallel.block(step(state, batch))
  assert len(traces) == 1


def test_predict_pads_and_matches_direct_apply():
  fns, _, images, labels = _setup()
  params = fns.init_fn(jax.random.key(0))
  predict = train.make_predict_fn(fns.apply_fn, parallel.make_mesh(8))
  logits = predict(params, images[:37], batch_size=16)
  np.testing.assert_allclose(logits, fns.apply_fn(params, jnp.asarray(images[:37])), rtol=1e-5,
                             atol=1e-6)
  metrics = train.evaluate(predict, params, images[:37], labels[:37])
  assert metrics["accuracy"] == pytest.approx(np.mean(np.argmax(logits, -1) == labels[:37]))
  with pytest.raises(ValueError, match="differ in length"):
    train.evaluate(predict, params, images[:5], labels[:4])
