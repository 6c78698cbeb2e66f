"""Models and the Linen / NNX adapters."""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from forsaken_jax import losses, models, parallel, train


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_every_model_maps_images_to_logits(name):
  shape = (32, 32, 3) if name == "resnet18" else (28, 28, 1)
  kwargs = {"width": 8, "stage_sizes": (1, 1), "groups": 4} if name == "resnet18" else {}
  model = models.create_model(name, num_classes=7, input_shape=shape, **kwargs)
  params = model.init_fn(jax.random.key(0))
  logits = jax.jit(model.apply_fn)(params, jnp.ones((3, *shape)))
  assert logits.shape == (3, 7)
  assert np.all(np.isfinite(logits))


def test_unknown_model_and_bad_class_count_raise():
  with pytest.raises(ValueError, match="unknown model 'vgg'"):
    models.create_model("vgg", num_classes=10, input_shape=(28, 28, 1))
  with pytest.raises(ValueError, match="num_classes"):
    models.create_model("mlp", num_classes=1, input_shape=(28, 28, 1))


def test_linear_svm_uses_hinge_loss():
  assert models.default_loss("linear_svm") == "hinge"
  assert models.default_loss("logistic_regression") == "cross_entropy"
  logits = jnp.array([[2.0, 0.5, -1.0], [0.0, 0.2, 0.1]])
  labels = jnp.array([0, 0])
  # Margins: 2 - 0.5 = 1.5 -> 0 loss; 0 - 0.2 = -0.2 -> 1.2 loss.
  np.testing.assert_allclose(losses.multiclass_hinge(logits, labels), [0.0, 1.2], rtol=1e-6)


def test_nnx_adapter_matches_the_module_and_trains():
  make = lambda rngs: models.NnxMLP(64, 4, hidden=(16,), rngs=rngs)
  fns = models.from_nnx(make)
  params = fns.init_fn(jax.random.key(1))
  images = jax.random.uniform(jax.random.key(2), (8, 8, 8, 1))
  # The adapter's apply equals calling the NNX module built from the same key.
  direct = make(nnx.Rngs(jax.random.key(1)))(images)
  np.testing.assert_allclose(fns.apply_fn(params, images), direct, rtol=1e-6)
  _assert_trains(fns, params, images)


def test_split_nnx_of_an_instance_round_trips():
  model = models.NnxCNN(1, 3, image_size=8, features=(4,), dense=8, rngs=nnx.Rngs(0))
  apply_fn, params = models.split_nnx(model)
  images = jax.random.uniform(jax.random.key(3), (5, 8, 8, 1))
  np.testing.assert_allclose(apply_fn(params, images), model(images), rtol=1e-6)
  doubled = jax.tree.map(lambda p: 2 * p, params)
  nnx.update(model, doubled)
  np.testing.assert_allclose(apply_fn(doubled, images), model(images), rtol=1e-6)


def test_linen_adapter_trains():
  fns = models.from_linen(models.MLP(4, hidden=(16,)), (8, 8, 1))
  params = fns.init_fn(jax.random.key(1))
  images = jax.random.uniform(jax.random.key(2), (8, 8, 8, 1))
  _assert_trains(fns, params, images)


def _assert_trains(fns, params, images):
  labels = jnp.arange(8) % 4
  tx = optax.adam(1e-2)
  state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}
  step = train.make_train_step(fns.apply_fn, tx, mesh=parallel.make_mesh(1))
  batch = {"image": images, "label": labels}
  first = None
  for _ in range(30):
    state, metrics = parallel.block(step(state, batch))
    first = float(metrics["loss"]) if first is None else first
  assert float(metrics["loss"]) < 0.5 * first
