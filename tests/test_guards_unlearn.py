"""Guards on the experiments' default unlearning path at the library level.

The experiments unlearn with the relative confidence-matching objective, its
membership hinge, a neuron mask packed to a fixed capacity and passed at run
time, same-batch acceptance, the retain term and the L1 term. These tests
check that loss's meta-gradient against finite differences (float64), and
that the loop run on batches sharded over 8 devices equals the loop run on
one device.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from forsaken_jax import losses, parallel, unlearn
from forsaken_jax.models import create_model
from forsaken_jax.unlearn import masking
from forsaken_jax.unlearn import reference as reference_lib

NUM_CLASSES = 4
INPUT_SHAPE = (3, 3, 1)
OBJECTIVE = "relative_confidence_matching"
MASK_FRACTION = 0.5


def _batch(x, y):
  return {"image": jnp.asarray(np.reshape(x, (-1, *INPUT_SHAPE)), jnp.float32),
          "label": jnp.asarray(y, jnp.int32)}


@pytest.fixture(scope="module")
def toy():
  """An MLP with random weights; forget 16, retain 16, non-members 32 (all divisible by 8)."""
  model = create_model("mlp", num_classes=NUM_CLASSES, input_shape=INPUT_SHAPE, hidden=(16,))
  params = model.init_fn(jax.random.key(0))
  rng = np.random.default_rng(0)
  make = lambda n: _batch(rng.normal(size=(n, 9)), rng.integers(0, NUM_CLASSES, n))
  return model.apply_fn, params, make(16), make(16), make(32)


def _neuron_mask(apply_fn, params, forget, retain):
  """The experiments' mask: the most forget-salient units, packed to the fraction's capacity."""
  saliency = unlearn.unit_saliency(apply_fn, params, forget, retain)
  mask = jax.device_get(unlearn.neuron_mask(params, saliency, fraction=MASK_FRACTION))
  capacity = unlearn.neuron_mask_capacity(params, fraction=MASK_FRACTION)
  return mask, unlearn.pack_mask(params, mask, capacity=capacity), capacity


def _scores(apply_fn, params, batch):
  return reference_lib.logit_scaled_confidence(apply_fn(params, batch["image"]), batch["label"])


def test_default_loss_meta_gradient_matches_finite_differences_of_its_semi_gradient(toy):
  """dL/dphi of the default loss equals central differences of the loss it differentiates.

  The relative objective scores the reference batch with the candidate
  parameters under a stop-gradient: the library differentiates L with the
  reference batch's scores held constant (a semi-gradient). The independent
  surrogate below rebuilds L from the public pieces with those scores frozen
  at the base phi; its value equals L at the base phi, and its finite
  differences must equal the library's gradient.
  """
  apply_fn, params, forget, retain, nonmember = toy
  lr, l1_weight, retain_weight, threshold_weight = 0.05, 0.5, 2.0, 3.0
  with jax.enable_x64(True):
    to64 = lambda t: jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), t)
    p64 = to64(params)
    f64, r64, n64 = ({"image": to64(b["image"]), "label": b["label"]}
                     for b in (forget, retain, nonmember))
    mask, packed, capacity = _neuron_mask(apply_fn, p64, f64, r64)
    total = masking.mask_size(p64, None)
    # The mask is a strict subset, padded: both sides of the packing are exercised.
    assert 0 < int(packed.count) < capacity < total
    gen = unlearn.make_generator("coordinatewise", p64, num_classes=NUM_CLASSES,
                                 capacity=capacity, hidden=(16,), output_scale=1.0)
    ref = unlearn.compute_reference(apply_fn, p64, n64, objective=OBJECTIVE)
    # A membership threshold inside the forget set's scores: the hinge is active
    # for half of them (the median of an even count equals none of them).
    ref["threshold"] = jnp.median(_scores(apply_fn, p64, f64))
    upd = unlearn.make_generator_update(
        apply_fn, gen, objective=OBJECTIVE, lr=lr, l1_weight=l1_weight,
        retain_weight=retain_weight, threshold_weight=threshold_weight)
    phi = to64(gen.init(jax.random.key(0)))
    feats, baseline = upd.features(p64, f64, r64, ref)

    def dummy_and_candidate(ph):
      dummy = masking.where_mask(packed.mask, gen.apply(ph, feats, packed))
      return dummy, unlearn.apply_dummy_gradient(p64, dummy, lr=lr, mask=packed.mask)

    @jax.jit
    def surrogate(ph, forget_batch, retain_batch, reference, reference_logits):
      # The batches are arguments, as in the library's jitted loss: closed over
      # as constants, the score's eager label-range check meets traced values.
      dummy, candidate = dummy_and_candidate(ph)
      distance = reference_lib.objective_distance(
          apply_fn(candidate, forget_batch["image"]), forget_batch["label"], reference,
          objective=OBJECTIVE, reference_logits=reference_logits,
          threshold_weight=threshold_weight)
      omega = jnp.mean(losses.cross_entropy(apply_fn(candidate, retain_batch["image"]),
                                            retain_batch["label"]))
      l1 = sum(jnp.sum(jnp.abs(g)) for g in jax.tree.leaves(dummy)) / packed.count
      return distance + l1_weight * omega * l1 + retain_weight * omega

    # The reference batch's logits under the base phi's candidate, frozen.
    frozen = apply_fn(dummy_and_candidate(phi)[1], n64["image"])
    frozen_loss = lambda ph: surrogate(ph, f64, r64, ref, frozen)
    library_loss = lambda ph: upd.loss(ph, p64, f64, r64, ref, mask=packed)[0]
    library_grad = jax.jit(jax.grad(library_loss))

    # Every term of the default loss is active at the base point.
    _, aux = upd.loss(phi, p64, f64, r64, ref, mask=packed)
    hinge = jnp.mean(jax.nn.relu(_scores(apply_fn, aux["candidate"], f64) - ref["threshold"]))
    assert float(hinge) > 0 and float(aux["l1"]) > 0 and float(aux["omega"]) > 0
    # Values: the library's L at the base phi is the surrogate's, and the
    # same-batch acceptance bar (the loss of leaving theta unchanged, g = 0)
    # is the same loss at theta with its own reference scores.
    np.testing.assert_allclose(library_loss(phi), frozen_loss(phi), rtol=1e-12)
    unchanged = reference_lib.objective_distance(
        apply_fn(p64, f64["image"]), f64["label"], ref, objective=OBJECTIVE,
        reference_logits=apply_fn(p64, n64["image"]), threshold_weight=threshold_weight)
    omega0 = jnp.mean(losses.cross_entropy(apply_fn(p64, r64["image"]), r64["label"]))
    np.testing.assert_allclose(baseline, unchanged + retain_weight * omega0, rtol=1e-12)

    grad = library_grad(phi)
    # Outside the mask the candidate is theta, bit for bit.
    for p, c, m in zip(*map(jax.tree.leaves, (p64, aux["candidate"], mask))):
      np.testing.assert_array_equal(np.asarray(c)[~m], np.asarray(p)[~m])
    rng = np.random.default_rng(5)
    for _ in range(2):
      direction = jax.tree.map(lambda x: rng.normal(size=x.shape), phi)
      # A small step: the loss is only piecewise smooth in phi (the ReLUs of
      # the model and the generator, the hinge, the sort of the forget
      # scores), and a wider difference straddles a kink and picks up the
      # neighbouring piece. In float64 the rounding error of h = 1e-7, about
      # 1e-16 * |L| / h, stays far below the tolerance.
      h = 1e-7
      shift = lambda s: jax.tree.map(lambda x, d: x + s * h * d, phi, direction)
      analytic = sum(np.vdot(g, d) for g, d in zip(jax.tree.leaves(grad),
                                                   jax.tree.leaves(direction)))
      fd = (frozen_loss(shift(1.0)) - frozen_loss(shift(-1.0))) / (2 * h)
      assert abs(analytic) > 1e-3
      np.testing.assert_allclose(analytic, fd, rtol=1e-6, atol=1e-9)
      # The naive difference of L itself also moves the reference side, which
      # the semi-gradient leaves out: the two differ, so the stop-gradient is
      # what the check above pins down.
      naive = (library_loss(shift(1.0)) - library_loss(shift(-1.0))) / (2 * h)
      assert abs(naive - analytic) > 1e-3 * abs(analytic), (naive, analytic)


def test_default_loop_sharded_over_8_devices_equals_one_device(toy):
  """Relative objective, same-batch acceptance, packed runtime mask: sharded == single."""
  assert jax.device_count() == 8
  apply_fn, params, forget, retain, nonmember = toy
  other = {"image": retain["image"][::-1], "label": (retain["label"][::-1] + 1) % NUM_CLASSES}
  stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), retain, other)
  mask, packed, capacity = _neuron_mask(apply_fn, params, forget, retain)
  gen = unlearn.make_generator("coordinatewise", params, num_classes=NUM_CLASSES,
                               capacity=capacity, hidden=(16,))
  ref = unlearn.compute_reference(apply_fn, params, nonmember, objective=OBJECTIVE)
  threshold = jnp.median(_scores(apply_fn, params, forget)).astype(jnp.float32)
  ref["threshold"] = threshold
  max_steps = 6
  fs = unlearn.make_forsaken(
      apply_fn, gen, objective=OBJECTIVE, lr=0.05, l1_weight=0.01, retain_weight=1.0,
      threshold_weight=3.0, acceptance="same_batch", mask_capacity=capacity,
      max_steps=max_steps, patience=max_steps, gen_optimizer=optax.adam(3e-2))
  state = fs.init(jax.random.key(0), params, forget, stacked, ref, mask=mask)
  target_rate = jnp.float32(1.0)  # never reached here: every step runs

  mesh = parallel.make_mesh()
  assert mesh.size == 8
  data, replicated = parallel.data_sharding(mesh), parallel.replicated(mesh)
  f_sh, n_sh = jax.device_put((forget, nonmember), data)
  stacked_sh = jax.device_put(stacked, jax.NamedSharding(mesh, jax.P(None, "data")))
  ref_sh = {"image": n_sh["image"], "label": n_sh["label"],
            "threshold": jax.device_put(threshold, replicated)}
  state_sh = jax.device_put(state, replicated)
  assert len(f_sh["image"].sharding.device_set) == 8

  def assert_trees_close(got, expected):
    assert jax.tree.structure(got) == jax.tree.structure(expected)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)

  # The whole loop in one while_loop (as the experiments run it): the traces
  # hold every step's loss, acceptance decision and forget-set rate.
  single = parallel.block(fs.run(state, forget, stacked, ref, threshold, target_rate))
  sharded = parallel.block(fs.run(state_sh, f_sh, stacked_sh, ref_sh, threshold, target_rate))
  assert int(single.step) == max_steps
  assert_trees_close(sharded, single)
  # Not vacuous: some steps were rejected and others accepted (the first one
  # sets the forget set's rate) and moved the model, inside the mask only.
  decisions = np.asarray(single.accepted_trace)
  assert decisions.any() and not decisions.all()
  assert np.isfinite(np.asarray(single.rate_trace)[decisions]).all()
  moved = False
  for p, q, m in zip(*map(jax.tree.leaves, (params, sharded.params, mask))):
    np.testing.assert_array_equal(np.asarray(q)[~m], np.asarray(p)[~m])
    moved |= bool(np.any(np.asarray(q)[m] != np.asarray(p)[m]))
  assert moved
