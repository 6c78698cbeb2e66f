"""Tests for forsaken_jax.federated.eliminate: requests, scaling, and elimination end to end."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from forsaken_jax import federated as fl
from forsaken_jax import mia
from forsaken_jax.data import local_builders
from forsaken_jax.models import create_model

NUM_CLIENTS = 3
OWNER = 0


# ----------------------------------------------------------------------------- requests


def test_request_indices_private_and_all():
  user = np.arange(10, 30)
  holdout = np.arange(100, 110)
  req = fl.request_indices(user, private=np.arange(25, 30), holdout=holdout)
  np.testing.assert_array_equal(req.forget, np.arange(25, 30))
  np.testing.assert_array_equal(req.retain, np.arange(10, 25))
  np.testing.assert_array_equal(req.reference, holdout)
  whole = fl.request_indices(user, holdout=holdout, request="all", seed=1)
  np.testing.assert_array_equal(whole.forget, user)
  assert whole.retain.size == 5 and whole.reference.size == 5
  np.testing.assert_array_equal(np.sort(np.concatenate([whole.retain, whole.reference])), holdout)


def test_request_indices_bad_input():
  user, holdout = np.arange(10, 30), np.arange(100, 110)
  with pytest.raises(ValueError, match="non-empty private set"):
    fl.request_indices(user, private=[], holdout=holdout)
  with pytest.raises(ValueError, match="private must be a subset of the user's data"):
    fl.request_indices(user, private=[5, 12], holdout=holdout)
  with pytest.raises(ValueError, match="user_indices and holdout overlap"):
    fl.request_indices(user, private=[12], holdout=[29, 100])
  with pytest.raises(ValueError, match="holdout is empty"):
    fl.request_indices(user, private=[12], holdout=[])
  with pytest.raises(ValueError, match="use request='all'"):
    fl.request_indices(user, private=user, holdout=holdout)
  with pytest.raises(ValueError, match="request must be one of"):
    fl.request_indices(user, holdout=holdout, request="some")


def test_scale_update():
  update = {"w": jnp.ones((2, 3))}
  same = fl.scale_update(update, scaling="none", weight=10.0)
  np.testing.assert_array_equal(same["w"], update["w"])
  scaled = fl.scale_update(update, scaling="inverse_share", weight=10.0, total_weight=40.0)
  np.testing.assert_allclose(scaled["w"], 4.0)
  # Through the server's weighted mean, a lone inverse-share update arrives whole.
  stacked = jax.tree.map(lambda u, z: jnp.stack([u, z]), scaled, {"w": jnp.zeros((2, 3))})
  np.testing.assert_allclose(fl.weighted_mean(stacked, jnp.array([10.0, 30.0]))["w"], 1.0)
  with pytest.raises(ValueError, match="needs the round's total_weight"):
    fl.scale_update(update, scaling="inverse_share", weight=10.0)
  with pytest.raises(ValueError, match="scaling must be one of"):
    fl.scale_update(update, scaling="double", weight=10.0)
  with pytest.raises(ValueError, match="weight must be positive"):
    fl.elimination_request(0, update, weight=0.0, scaling="none")


def _removal_round(other_updates):
  """One round's aggregate when the owner (slot 0) submits its removal-step update."""
  rng = np.random.default_rng(0)
  theta = {"w": rng.normal(size=(4, 5)).astype(np.float32), "b": np.arange(5, dtype=np.float32)}
  delta = jax.tree.map(lambda p: 0.01 * np.sin(p + 1.0), theta)
  fresh = jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), theta)
  weights = jnp.array([30.0, 50.0, 20.0])
  submitted = fl.scale_update(
      fl.removal_update(theta, delta, fresh, shrink=0.1, perturb=0.2), scaling="inverse_share",
      weight=float(weights[0]), total_weight=float(weights.sum()))
  stacked = jax.tree.map(lambda s, o: np.concatenate([np.asarray(s)[None], o]), submitted,
                         other_updates)
  mean = fl.weighted_mean(stacked, weights)  # secure aggregation gives it too (test_secure_agg)
  target = jax.tree.map(lambda p, d, f: 0.1 * (p + d) + 0.2 * f, theta, delta, fresh)  # numpy
  return fl.apply_update(theta, mean), target, weights


def test_removal_update_lands_on_the_shrunk_perturbed_model():
  zeros = {"w": np.zeros((2, 4, 5), np.float32), "b": np.zeros((2, 5), np.float32)}
  aggregate, target, _ = _removal_round(zeros)
  jax.tree.map(lambda a, t: np.testing.assert_allclose(a, t, atol=1e-6), aggregate, target)
  # The other clients' updates move the aggregate off the target by their weighted
  # sum over the round's total weight, (1 - w_u / W) times their weighted mean.
  others = {"w": np.stack([np.full((4, 5), 0.3), np.full((4, 5), -0.1)]).astype(np.float32),
            "b": np.stack([np.arange(5.0), np.ones(5)]).astype(np.float32)}
  aggregate, target, weights = _removal_round(others)
  share = weights[1:] / weights.sum()
  for name in ("w", "b"):
    deviation = np.tensordot(share, others[name], axes=1)
    np.testing.assert_allclose(aggregate[name] - target[name], deviation, atol=1e-5)
  np.testing.assert_allclose(aggregate["w"] - target["w"], 0.7 * (50 * 0.3 - 20 * 0.1) / 70,
                             atol=1e-5)


def test_removal_update_off_and_bad_input():
  theta = {"w": np.linspace(-1.0, 1.0, 6, dtype=np.float32)}
  delta = {"w": np.full(6, 0.05, np.float32)}
  fresh = {"w": np.ones(6, np.float32)}
  off = fl.removal_update(theta, delta, fresh, shrink=1.0, perturb=0.0)
  np.testing.assert_allclose(off["w"], delta["w"], atol=1e-7)
  with pytest.raises(ValueError, match="shrink must be in"):
    fl.removal_update(theta, delta, fresh, shrink=0.0, perturb=0.1)
  with pytest.raises(ValueError, match="fresh_params leaf"):
    fl.removal_update(theta, delta, {"w": np.ones(5, np.float32)}, shrink=0.1, perturb=0.1)
  with pytest.raises(ValueError, match="update must have the structure"):
    fl.removal_update(theta, {"v": delta["w"]}, fresh, shrink=0.1, perturb=0.1)


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def federation():
  """Digits over 3 users; user 0 also trained on 30 private photos with arbitrary
  labels and holds 30 more it never uploaded (its local reference D_n)."""
  digits, digit_labels = local_builders.read_digits()
  photos = local_builders.make_photo_patches(60, 8, 8, 1, seed=0)
  rng = np.random.default_rng(0)
  images = np.concatenate([digits, photos]).astype(np.float32) / 255.0
  labels = np.concatenate([digit_labels, rng.integers(0, 10, 60)]).astype(np.int32)
  num_digits = len(digit_labels)
  order = rng.permutation(num_digits)
  test, train = order[:300], order[300:1300]
  private = np.arange(num_digits, num_digits + 30)
  holdout = np.arange(num_digits + 30, num_digits + 60)
  part = fl.private_data_partition(labels, NUM_CLIENTS, private=private, owner=OWNER, seed=0,
                                   indices=np.concatenate([train, private]))
  fl.validate_partition(part, indices=np.concatenate([train, private]), private=private,
                        owner=OWNER)
  model = create_model("mlp", num_classes=10, input_shape=(8, 8, 1), hidden=(128,))
  fedavg = fl.make_fedavg(model.apply_fn, optax.adam(1e-2), local_epochs=5, batch_size=32,
                          secure=True)
  data = fl.gather_client_data(images, labels, part, np.arange(NUM_CLIENTS))
  params = model.init_fn(jax.random.key(0))
  for r in range(40):
    params, _ = fedavg.round(params, data, jax.random.fold_in(jax.random.key(1), r))
  return dict(images=images, labels=labels, part=part, model=model, fedavg=fedavg, data=data,
              params=params, test=test, private=private, holdout=holdout)


def _scores(fed, params, idx):
  logits = fed["model"].apply_fn(params, fed["images"][idx])
  return np.asarray(mia.logit_scaled_confidence(logits, fed["labels"][idx]))


def _auc(fed, params):
  """How well the photos' confidence tells trained-on from never-seen (0.5: not at all)."""
  members, unseen = _scores(fed, params, fed["private"]), _scores(fed, params, fed["holdout"])
  return float(mia.roc_auc(members, unseen))


def _accuracy(fed, params, idx):
  logits = fed["model"].apply_fn(params, fed["images"][idx])
  return float(np.mean(np.argmax(logits, -1) == fed["labels"][idx]))


def test_dummy_update_through_a_secure_round_eliminates_the_photos(federation):
  fed = federation
  params = fed["params"]
  others = np.concatenate([fed["part"].client(k) for k in range(1, NUM_CLIENTS)])
  auc_before = _auc(fed, params)
  test_before, others_before = _accuracy(fed, params, fed["test"]), _accuracy(fed, params, others)
  assert auc_before > 0.8  # the global model memorized the user's photos
  assert _accuracy(fed, params, fed["private"]) > 0.6

  # The user, with the global model and its own data only.
  req = fl.request_indices(fed["part"].client(OWNER), private=fed["private"],
                           holdout=fed["holdout"])
  batch = lambda idx: {"image": jnp.asarray(fed["images"][idx]),
                       "label": jnp.asarray(fed["labels"][idx])}
  result = fl.elimination_update(fed["model"].apply_fn, params, batch(req.forget),
                                 batch(req.retain), batch(req.reference), key=jax.random.key(2),
                                 lr=3e-3, max_steps=60, patience=20,
                                 generator_kwargs={"hidden": (16,)})
  assert result.info["accepted"] > 0
  weight = float(fed["part"].sizes[OWNER])
  total = float(fed["part"].sizes.sum())
  after = {}
  for scaling in ("none", "inverse_share"):
    request = fl.elimination_request(OWNER, result.update, weight=weight, scaling=scaling,
                                     total_weight=total)
    # An ordinary secure round: the other users train, the owner submits its update.
    after[scaling], metrics = fed["fedavg"].round(params, fed["data"], jax.random.key(99),
                                                  override=request)
    assert float(metrics["total_weight"]) == total
  eliminated = after["inverse_share"]
  auc_after = _auc(fed, eliminated)
  assert auc_after < 0.75 and auc_after < auc_before - 0.2, (auc_before, auc_after)
  # Diluted by the user's share, the unscaled update removes less.
  assert _auc(fed, after["none"]) > auc_after
  # A round without the user leaves the memorization in place: the drop is the dummy update's.
  without, _ = fed["fedavg"].round(params, fed["data"], jax.random.key(99),
                                   received=np.arange(NUM_CLIENTS) != OWNER)
  assert _auc(fed, without) > 0.8
  assert _accuracy(fed, eliminated, fed["test"]) > test_before - 0.03
  assert _accuracy(fed, eliminated, others) > others_before - 0.03
