"""Tests for forsaken_jax.federated.baselines: FedEraser's calibration and projected gradient ascent."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from forsaken_jax import federated as fl
from forsaken_jax import losses
from forsaken_jax.models import create_model


def test_fed_eraser_keeps_the_stored_length_and_the_calibrated_direction():
  rng = np.random.default_rng(0)
  old = {"w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32), "b": jnp.asarray([3.0, 4.0])}
  calib = {"w": jnp.asarray(rng.normal(size=(4, 3)) * 0.01, jnp.float32),
           "b": jnp.asarray([0.0, 0.0])}
  out = fl.fed_eraser_calibrate(old, calib)
  np.testing.assert_allclose(np.linalg.norm(out["w"]), np.linalg.norm(old["w"]), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(out["w"]) / np.linalg.norm(out["w"]),
                             np.asarray(calib["w"]) / np.linalg.norm(calib["w"]), rtol=1e-5)
  np.testing.assert_array_equal(out["b"], [0.0, 0.0])  # no direction: no move
  params = {"w": jnp.ones((4, 3)), "b": jnp.ones(2)}
  stepped = fl.fed_eraser_step(params, old, calib)
  np.testing.assert_allclose(stepped["w"], 1.0 + np.asarray(out["w"]), rtol=1e-6)
  assert fl.tree_bytes(old) == (12 + 2) * 4


def test_pga_reference_and_radius():
  glob = {"w": jnp.full((2,), 2.0)}
  user = {"w": jnp.full((2,), 5.0)}
  # Four clients averaging to 2 with the user at 5: the other three average to 1.
  np.testing.assert_allclose(fl.pga_reference(glob, user, 4)["w"], [1.0, 1.0])
  radius = fl.pga_radius(glob, [{"w": jnp.array([2.0, 5.0])}, {"w": jnp.array([-3.0, 2.0])}],
                         fraction=0.5)
  np.testing.assert_allclose(radius, 0.5 * (3.0 + 5.0) / 2)
  with pytest.raises(ValueError, match="num_clients must be at least 2"):
    fl.pga_reference(glob, user, 1)
  with pytest.raises(ValueError, match="fraction"):
    fl.pga_radius(glob, [glob], fraction=0.0)


def test_projected_gradient_ascent_stays_in_the_ball_and_stops_early():
  model = create_model("mlp", num_classes=3, input_shape=(2, 2, 1), hidden=(8,))
  params = model.init_fn(jax.random.key(0))
  rng = np.random.default_rng(0)
  batches = {"image": jnp.asarray(rng.normal(size=(6, 8, 2, 2, 1)), jnp.float32),
             "label": jnp.asarray(rng.integers(0, 3, (6, 8)), jnp.int32)}
  reference = jax.tree.map(lambda p: p + 0.01, params)
  pga = fl.make_projected_gradient_ascent(model.apply_fn, lr=1.0)
  out, info = pga(params, reference, jnp.float32(0.5), batches)
  distance = np.sqrt(sum(np.sum((np.asarray(a) - np.asarray(b)) ** 2)
                         for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(reference))))
  assert distance <= 0.5 + 1e-4
  assert int(info["steps"]) == 6
  flat = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), batches)
  loss = lambda p: float(jnp.mean(losses.cross_entropy(model.apply_fn(p, flat["image"]),
                                                       flat["label"])))
  assert loss(out) > loss(params)
  # Early stopping: the first model whose loss passes the bound is kept.
  bound = float(info["loss"][2])
  stopper = fl.make_projected_gradient_ascent(model.apply_fn, lr=1.0, max_loss=bound - 1e-6)
  stopped, stop_info = stopper(params, reference, jnp.float32(0.5), batches)
  assert int(stop_info["steps"]) == 2
  assert np.all(np.isnan(np.asarray(stop_info["loss"])[3:]))
  with pytest.raises(ValueError, match="lr must be positive"):
    fl.make_projected_gradient_ascent(model.apply_fn, lr=0.0)
