"""Tests for forsaken_jax.federated: partitions, FedAvg rounds, sharding, secure aggregation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from forsaken_jax import federated as fl
from forsaken_jax import losses, parallel
from forsaken_jax.federated import secure_agg
from forsaken_jax.models import create_model

NUM_CLASSES = 3
INPUT_SHAPE = (4, 4, 1)
EPOCHS = 2
BATCH = 4
LR = 0.1


def _close(a, b, **kw):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), **kw)


@pytest.fixture(scope="module")
def fed():
  """A tiny federation: 8 clients of unequal sizes, an MLP, plain and secure FedAvg.

  The tests share these programs and shapes: compiling is most of their time.
  """
  rng = np.random.default_rng(0)
  labels = rng.integers(0, NUM_CLASSES, 120).astype(np.int32)
  images = (rng.normal(size=(120, *INPUT_SHAPE)) + labels[:, None, None, None]).astype(np.float32)
  part = fl.dirichlet_partition(labels, 8, alpha=1.0, seed=0, min_size=3)
  model = create_model("mlp", num_classes=NUM_CLASSES, input_shape=INPUT_SHAPE, hidden=(8,))
  params = model.init_fn(jax.random.key(0))
  fedavg = fl.make_fedavg(model.apply_fn, optax.sgd(LR), local_epochs=EPOCHS, batch_size=BATCH)
  secure = fl.make_fedavg(model.apply_fn, optax.sgd(LR), local_epochs=EPOCHS, batch_size=BATCH,
                          secure=True)
  data = fl.gather_client_data(images, labels, part, np.arange(8))
  return dict(images=images, labels=labels, part=part, model=model, params=params,
              fedavg=fedavg, secure=secure, data=data)


# ----------------------------------------------------------------------------- partitions


def test_iid_partition_covers_the_data_evenly():
  labels = np.arange(103) % 5
  members = np.arange(3, 100)
  part = fl.iid_partition(labels, 7, seed=1, indices=members)
  fl.validate_partition(part, indices=members, size=103)
  assert part.sizes.max() - part.sizes.min() <= 1
  again = fl.iid_partition(labels, 7, seed=1, indices=members)
  assert all(np.array_equal(a, b) for a, b in zip(part.clients, again.clients))
  other = fl.iid_partition(labels, 7, seed=2, indices=members)
  assert not all(np.array_equal(a, b) for a, b in zip(part.clients, other.clients))


def test_dirichlet_skew_grows_as_alpha_shrinks():
  labels = np.repeat(np.arange(10), 100)
  skews = []
  for alpha in (100.0, 1.0, 0.1):
    part = fl.dirichlet_partition(labels, 10, alpha=alpha, seed=0)
    fl.validate_partition(part, indices=np.arange(labels.size))
    skews.append(fl.label_skew(part, labels))
  assert skews[0] < 0.15 < skews[1] < skews[2], skews
  with pytest.raises(ValueError, match="alpha must be positive"):
    fl.dirichlet_partition(labels, 10, alpha=0.0, seed=0)
  with pytest.raises(ValueError, match="cannot give each of 20 clients"):
    fl.dirichlet_partition(labels[:10], 20, alpha=1.0, seed=0)


def test_private_photos_all_land_on_one_user():
  labels = np.concatenate([np.repeat(np.arange(10), 30), np.zeros(20, int)])
  photos = range(300, 320)
  for scheme, alpha in (("iid", None), ("dirichlet", 0.5)):
    part = fl.private_data_partition(labels, 6, private=photos, owner=4, seed=0, scheme=scheme,
                                     alpha=alpha)
    fl.validate_partition(part, indices=np.arange(320), private=np.arange(300, 320), owner=4)
    assert np.isin(np.arange(300, 320), part.client(4)).all()
    for k in (0, 1, 2, 3, 5):
      assert not np.isin(part.client(k), np.arange(300, 320)).any()
  with pytest.raises(ValueError, match="private is empty"):
    fl.private_data_partition(labels, 6, private=[], owner=0, seed=0)
  with pytest.raises(ValueError, match="unknown client id 6"):
    fl.private_data_partition(labels, 6, private=photos, owner=6, seed=0)


def test_partition_validation_names_the_problem():
  part = fl.Partition((np.array([0, 1]), np.array([2, 3])))
  fl.validate_partition(part, indices=np.arange(4), size=4)
  with pytest.raises(ValueError, match="does not cover the data: no client holds \\[4\\]"):
    fl.validate_partition(part, indices=np.arange(5))
  with pytest.raises(ValueError, match="clients overlap"):
    fl.validate_partition(fl.Partition((np.array([0, 1]), np.array([1, 2]))))
  with pytest.raises(ValueError, match="client 1 holds no data"):
    fl.validate_partition(fl.Partition((np.array([0, 1]), np.array([], int))))
  with pytest.raises(ValueError, match="outside \\[0, 3\\)"):
    fl.validate_partition(part, size=3)
  with pytest.raises(ValueError, match="unknown client id 2"):
    part.client(2)
  with pytest.raises(ValueError, match="unknown client id -1"):
    fl.validate_partition(part, private=[0], owner=-1)
  with pytest.raises(ValueError, match="private is empty"):
    fl.validate_partition(part, private=[], owner=0)
  with pytest.raises(ValueError, match="client 1 must hold every private index"):
    fl.validate_partition(part, private=[0, 2], owner=1)


def test_partition_arrays_round_trip():
  part = fl.dirichlet_partition(np.arange(60) % 3, 5, alpha=0.5, seed=3)
  back = fl.Partition.from_arrays(part.to_arrays())
  assert all(np.array_equal(a, b) for a, b in zip(part.clients, back.clients))
  assert back.fingerprint() == part.fingerprint()
  assert fl.iid_partition(np.arange(60), 5, seed=0).fingerprint() != part.fingerprint()
  with pytest.raises(ValueError, match="offsets"):
    fl.Partition.from_arrays({"indices": np.arange(4), "offsets": np.array([0, 5])})


# ----------------------------------------------------------------------------- clients


def test_sample_clients_and_gather_errors(fed):
  ids = fl.sample_clients(jax.random.key(3), 8, 5)
  assert ids.shape == (5,) and np.unique(ids).size == 5 and ids.min() >= 0 and ids.max() < 8
  np.testing.assert_array_equal(ids, fl.sample_clients(jax.random.key(3), 8, 5))
  with pytest.raises(ValueError, match="num_sampled"):
    fl.sample_clients(jax.random.key(3), 8, 9)
  with pytest.raises(ValueError, match="unknown client id 8"):
    fl.gather_client_data(fed["images"], fed["labels"], fed["part"], [0, 8])
  with pytest.raises(ValueError, match="smaller than the largest chosen client"):
    fl.gather_client_data(fed["images"], fed["labels"], fed["part"], [0, 1], size=1)
  data = fl.gather_client_data(fed["images"], fed["labels"], fed["part"], [2, 5], num_slots=4)
  np.testing.assert_array_equal(data.client_id, [2, 5, -1, -1])
  np.testing.assert_array_equal(data.weight.sum(1), [fed["part"].sizes[2], fed["part"].sizes[5],
                                                     0, 0])


def _hand_local_train(apply_fn, params, images, labels, key):
  """Plain minibatch SGD over one client's real examples, no padding, no masks."""
  tx = optax.sgd(LR)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, x, y):
    grads = jax.grad(lambda p: jnp.mean(losses.cross_entropy(apply_fn(p, x), y)))(params)
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state

  n = len(labels)
  for epoch in range(EPOCHS):
    order = np.asarray(fl.epoch_order(key, jnp.ones(n), epoch))
    for start in range(0, n, BATCH):
      idx = order[start:start + BATCH]
      params, opt_state = step(params, opt_state, images[idx], labels[idx])
  return params


def test_vmapped_round_equals_per_client_training(fed):
  key = jax.random.key(7)
  updates, weights, metrics = fed["fedavg"].local_updates(fed["params"], fed["data"], key)
  np.testing.assert_array_equal(weights, fed["part"].sizes)
  np.testing.assert_array_equal(metrics["steps"], EPOCHS * -(-fed["part"].sizes // BATCH))
  for k in (0, 3, 6):
    # The client trained alone, by hand, on its real examples only: no padding, no masks.
    idx = fed["part"].client(k)
    hand = _hand_local_train(fed["model"].apply_fn, fed["params"], fed["images"][idx],
                             fed["labels"][idx], jax.random.fold_in(key, k))
    hand_update = jax.tree.map(lambda a, b: a - b, hand, fed["params"])
    _close(jax.tree.map(lambda u: u[k], updates), hand_update, rtol=1e-4, atol=1e-6)


def test_fedavg_weights_by_sample_counts(fed):
  key = jax.random.key(11)
  new_params, metrics = fed["fedavg"].round(fed["params"], fed["data"], key)
  # The round trains with fold_in(key, 0); redo its local training by hand.
  updates, _, _ = fed["fedavg"].local_updates(fed["params"], fed["data"], jax.random.fold_in(key, 0))
  counts = fed["part"].sizes.astype(np.float64)
  expected = jax.tree.map(
      lambda p, u: np.asarray(p) + np.tensordot(counts, np.asarray(u, np.float64), 1) / counts.sum(),
      fed["params"], updates)
  _close(new_params, expected, rtol=1e-5, atol=1e-6)
  assert float(metrics["total_weight"]) == counts.sum()
  # A dropped client's update is left out and the others reweighted.
  received = np.ones(8, bool)
  received[2] = False
  dropped, _ = fed["fedavg"].round(fed["params"], fed["data"], key, received=received)
  counts[2] = 0
  expected = jax.tree.map(
      lambda p, u: np.asarray(p) + np.tensordot(counts, np.asarray(u, np.float64), 1) / counts.sum(),
      fed["params"], updates)
  _close(dropped, expected, rtol=1e-5, atol=1e-6)


def _update_norms(updates):
  return np.sqrt(sum(np.sum(np.asarray(u) ** 2, axis=tuple(range(1, u.ndim)))
                     for u in jax.tree.leaves(updates)))


def test_fedprox(fed):
  # mu = 0 is FedAvg's default, checked against plain training by hand above.
  key = jax.random.key(5)
  plain, _, _ = fed["fedavg"].local_updates(fed["params"], fed["data"], key)
  prox = fl.make_fedavg(fed["model"].apply_fn, optax.sgd(LR), local_epochs=EPOCHS,
                        batch_size=BATCH, prox_mu=2.0)
  pulled, _, _ = prox.local_updates(fed["params"], fed["data"], key)
  # Every client ends closer to the global model.
  assert np.all(_update_norms(pulled) < 0.95 * _update_norms(plain))
  with pytest.raises(ValueError, match="prox_mu"):
    fl.make_fedavg(fed["model"].apply_fn, optax.sgd(LR), prox_mu=-1.0)


def test_round_bad_input(fed):
  zeros = jax.tree.map(jnp.zeros_like, fed["params"])
  with pytest.raises(ValueError, match="override client 9 is not among this round's clients"):
    fed["fedavg"].round(fed["params"], fed["data"], jax.random.key(0),
                        override=fl.ClientOverride(9, zeros, 1.0))
  with pytest.raises(ValueError, match="override.update must have the structure"):
    fed["fedavg"].round(fed["params"], fed["data"], jax.random.key(0),
                        override=fl.ClientOverride(1, {"w": jnp.zeros(3)}, 1.0))
  with pytest.raises(ValueError, match="received must be bool"):
    fed["fedavg"].round(fed["params"], fed["data"], jax.random.key(0), received=np.ones(3, bool))
  with pytest.raises(ValueError, match="'clients' axis"):
    fl.make_fedavg(fed["model"].apply_fn, optax.sgd(LR), mesh=parallel.make_mesh(1))


# ----------------------------------------------------------------------------- sharding


def test_sharded_client_axis_equals_one_device(fed):
  assert jax.device_count() == 8
  key = jax.random.key(2)
  sharded = fl.make_fedavg(fed["model"].apply_fn, optax.sgd(LR), local_epochs=EPOCHS,
                           batch_size=BATCH, secure=True, mesh=fl.client_mesh(8))
  results = []
  for fedavg in (sharded, fed["secure"]):
    params = fed["params"]
    for r in range(2):
      params, _ = parallel.block(fedavg.round(params, fed["data"], jax.random.fold_in(key, r)))
    results.append(params)
  _close(results[0], results[1], rtol=1e-5, atol=1e-6)
  leaf = jax.tree.leaves(results[0])[0]
  assert leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == 8
  six = fl.gather_client_data(fed["images"], fed["labels"], fed["part"], np.arange(6))
  with pytest.raises(ValueError, match="6 client slots do not split over the 8 devices"):
    sharded.round(fed["params"], six, key)


def test_padded_slots_change_nothing(fed):
  key = jax.random.key(4)
  # Six clients padded to the federation's eight slots: the round's program is reused.
  padded = fl.gather_client_data(fed["images"], fed["labels"], fed["part"], np.arange(6),
                                 num_slots=8)
  got, metrics = fed["fedavg"].round(fed["params"], padded, key)
  np.testing.assert_array_equal(metrics["steps"][6:], 0)
  updates, _, _ = fed["fedavg"].local_updates(fed["params"], fed["data"], jax.random.fold_in(key, 0))
  counts = fed["part"].sizes[:6].astype(np.float64)
  expected = jax.tree.map(
      lambda p, u: np.asarray(p) + np.tensordot(counts, np.asarray(u[:6], np.float64), 1)
      / counts.sum(), fed["params"], updates)
  _close(got, expected, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- secure aggregation


# Jitted once here: run op by op, the masking's scans and casts dispatch slowly.
_secure_sum = jax.jit(secure_agg.secure_sum)
_secure_weighted_mean = jax.jit(secure_agg.secure_weighted_mean)
_mask_updates = jax.jit(secure_agg.mask_updates)


def _random_updates(num_clients, seed=0):
  rng = np.random.default_rng(seed)
  return {"w": jnp.asarray(rng.normal(size=(num_clients, 40, 50)) * 0.1, jnp.float32),
          "b": jnp.asarray(rng.normal(size=(num_clients, 7)) * 0.1, jnp.float32)}


def test_secure_aggregate_equals_plain_weighted_sum():
  updates = _random_updates(6)
  ids = jnp.array([3, 17, 4, 9, 0, 12], jnp.int32)
  weights = jnp.array([10.0, 25.0, 3.0, 40.0, 7.0, 15.0])
  on = jnp.ones(6, bool)
  key = jax.random.key(0)
  _close(_secure_sum(updates, key, ids, on, on), jax.tree.map(lambda u: u.sum(0), updates),
         rtol=0, atol=6 * 2.0 ** -16)
  mean, total = _secure_weighted_mean(updates, weights, key, ids, on)
  assert float(total) == float(weights.sum())
  _close(mean, fl.weighted_mean(updates, weights), rtol=0, atol=1e-6)


def test_masked_update_reveals_nothing_and_masks_cancel():
  updates = _random_updates(6, seed=1)
  ids = jnp.arange(6, dtype=jnp.int32)
  on = jnp.ones(6, bool)
  encoded = secure_agg.encode(updates, fractional_bits=16)
  masked = _mask_updates(encoded, jax.random.key(1), ids, on)
  plain = np.asarray(jax.lax.bitcast_convert_type(encoded["w"][2], jnp.int32), np.float64).ravel()
  seen = np.asarray(jax.lax.bitcast_convert_type(masked["w"][2], jnp.int32), np.float64).ravel()
  assert abs(np.corrcoef(plain, seen)[0, 1]) < 0.05  # 2000 coordinates: noise is ~0.02
  assert np.mean(np.abs(seen)) > 1e8  # uniform over int32, not a perturbed plaintext
  # Summed modulo 2^32, the masks cancel exactly.
  _close(secure_agg.server_sum(masked, on), secure_agg.server_sum(encoded, on), rtol=0, atol=0)
  # Another round key gives unrelated masks.
  other = _mask_updates(encoded, jax.random.key(2), ids, on)
  assert not np.array_equal(np.asarray(other["w"][2]), np.asarray(masked["w"][2]))


def test_dropped_client_is_recovered():
  updates = _random_updates(6, seed=2)
  ids = jnp.array([8, 1, 5, 2, 6, 11], jnp.int32)
  on = jnp.ones(6, bool)
  received = jnp.array([True, True, False, True, False, True])
  key = jax.random.key(3)
  survivors = jax.tree.map(lambda u: u[np.asarray(received)].sum(0), updates)
  _close(_secure_sum(updates, key, ids, on, received), survivors, rtol=0,
         atol=6 * 2.0 ** -16)
  # Without the survivors' revealed masks, the sum is noise.
  masked = _mask_updates(secure_agg.encode(updates, fractional_bits=16), key, ids, on)
  broken = secure_agg.decode(secure_agg.server_sum(masked, received), fractional_bits=16)
  assert np.max(np.abs(np.asarray(broken["w"]) - np.asarray(survivors["w"]))) > 1.0


_sparse_secure_sum = jax.jit(secure_agg.secure_sum, static_argnames="num_neighbors")
_sparse_mask_updates = jax.jit(secure_agg.mask_updates, static_argnames="num_neighbors")


def test_mask_graph_is_a_random_regular_symmetric_graph():
  key = jax.random.key(4)
  peers = np.asarray(secure_agg.mask_graph(key, 20, 4))
  assert peers.shape == (20, 4)
  edges = {(i, int(j)) for i in range(20) for j in peers[i]}
  assert all(len(set(row)) == 4 and i not in row for i, row in enumerate(peers.tolist()))
  assert all((j, i) in edges for i, j in edges)  # j masks with i exactly when i masks with j
  # The graph is the round's: another key places the clients differently.
  assert not np.array_equal(np.asarray(secure_agg.mask_graph(jax.random.key(5), 20, 4)), peers)
  # k >= C - 1 is every pair, as is None.
  complete = np.asarray(secure_agg.mask_graph(key, 5, 4))
  np.testing.assert_array_equal(complete, np.tile(np.arange(5), (5, 1)))
  np.testing.assert_array_equal(np.asarray(secure_agg.mask_graph(key, 5)), complete)
  for bad in (0, 1, 3, -2, 2.0, True):
    with pytest.raises(ValueError, match="num_neighbors"):
      secure_agg.mask_graph(key, 20, bad)


def test_sparse_masking_gives_the_same_sum_and_still_hides_each_update():
  """SecAgg+'s graph: each client masks with 4 of 11 peers; the sum is unchanged bit for bit."""
  updates = _random_updates(12, seed=5)
  ids = jnp.array([7, 30, 2, 15, 9, 4, 22, 1, 11, 5, 0, 0], jnp.int32)
  on = jnp.array([True] * 10 + [False] * 2)  # two padding slots
  received = on & jnp.array([True, False, True, True, True, True, False, True, True, True,
                             True, True])  # two participants dropped
  key = jax.random.key(6)
  for rec in (on, received):
    sparse = _sparse_secure_sum(updates, key, ids, on, rec, num_neighbors=4)
    _close(sparse, _secure_sum(updates, key, ids, on, rec), rtol=0, atol=0)
    survivors = jax.tree.map(lambda u: u[np.asarray(rec)].sum(0), updates)
    _close(sparse, survivors, rtol=0, atol=12 * 2.0 ** -16)
  encoded = secure_agg.encode(updates, fractional_bits=16)
  masked = _sparse_mask_updates(encoded, key, ids, on, num_neighbors=4)
  _close(secure_agg.server_sum(masked, on), secure_agg.server_sum(encoded, on), rtol=0, atol=0)
  plain = np.asarray(jax.lax.bitcast_convert_type(encoded["w"][3], jnp.int32), np.float64).ravel()
  seen = np.asarray(jax.lax.bitcast_convert_type(masked["w"][3], jnp.int32), np.float64).ravel()
  assert abs(np.corrcoef(plain, seen)[0, 1]) < 0.05
  assert np.mean(np.abs(seen)) > 1e8
  # Without the survivors' revealed masks, the sum over the received is noise.
  broken = secure_agg.decode(secure_agg.server_sum(masked, received), fractional_bits=16)
  survivors = jax.tree.map(lambda u: u[np.asarray(received)].sum(0), updates)
  assert np.max(np.abs(np.asarray(broken["w"]) - np.asarray(survivors["w"]))) > 1.0


def test_secure_round_matches_plain_round(fed):
  secure = fed["secure"]
  key = jax.random.key(9)
  received = np.array([True] * 5 + [False] + [True] * 2)
  for rec in (None, received):
    a, ma = secure.round(fed["params"], fed["data"], key, received=rec)
    b, mb = fed["fedavg"].round(fed["params"], fed["data"], key, received=rec)
    _close(a, b, rtol=1e-4, atol=1e-5)
    assert float(ma["total_weight"]) == float(mb["total_weight"])
  # Each client masking with 2 neighbours only: the same round, bit for bit.
  sparse = fl.make_fedavg(fed["model"].apply_fn, optax.sgd(LR), local_epochs=EPOCHS,
                          batch_size=BATCH, secure=True, secure_neighbors=2)
  _close(sparse.round(fed["params"], fed["data"], key, received=received)[0],
         secure.round(fed["params"], fed["data"], key, received=received)[0], rtol=0, atol=0)
  with pytest.raises(ValueError, match="num_neighbors"):
    fl.make_fedavg(fed["model"].apply_fn, optax.sgd(LR), secure=True, secure_neighbors=3)
  one = fl.gather_client_data(fed["images"], fed["labels"], fed["part"], [0], num_slots=2)
  with pytest.raises(ValueError, match="at least two participating clients"):
    secure.round(fed["params"], one, key)
