"""Tests for the relearning attack (forsaken_jax.mia.relearn) and Forsaken's relearning term."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from forsaken_jax import losses, mia, unlearn
from forsaken_jax.models import create_model

NUM_CLASSES = 4
INPUT_SHAPE = (3, 3, 1)


def _batch(x, y):
  return {"image": jnp.asarray(np.reshape(x, (-1, *INPUT_SHAPE)), jnp.float32),
          "label": jnp.asarray(y, jnp.int32)}


@pytest.fixture(scope="module")
def toy():
  model = create_model("mlp", num_classes=NUM_CLASSES, input_shape=INPUT_SHAPE, hidden=(32,))
  rng = np.random.default_rng(0)
  make = lambda n: _batch(rng.normal(size=(n, 9)), rng.integers(0, NUM_CLASSES, n))
  return model, make(24), make(24), make(24)


def _train(apply_fn, params, batch, steps, lr=1e-2):
  tx = optax.adam(lr)

  @jax.jit
  def step(p, s):
    g = jax.grad(lambda q: jnp.mean(losses.cross_entropy(apply_fn(q, batch["image"]),
                                                         batch["label"])))(p)
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  state = tx.init(params)
  for _ in range(steps):
    params, state = step(params, state)
  return params


def test_steps_to_accuracy_known_curves():
  curves = np.array([[0.0, 0.5, 0.8, 1.0],
                     [0.9, 0.9, 0.9, 0.9],
                     [0.1, 0.2, 0.3, 0.4]])
  np.testing.assert_array_equal(mia.steps_to_accuracy(curves, 0.8), [2, 0, -1])
  # 160 correct of 200 reaches 80% despite float rounding.
  assert mia.steps_to_accuracy(np.array([0.0, 160 / 200 - 1e-9]), 0.8) == 1
  with pytest.raises(ValueError, match="target accuracy"):
    mia.steps_to_accuracy(curves, 1.5)


def test_relearn_summary_fields():
  curve = mia.RelearnCurve(jnp.array([0.1, 0.4, 0.85, 1.0]), jnp.array([3.0, 2.0, 1.0, 0.5]))
  out = mia.relearn_summary(curve, original_accuracy=1.0, budgets=(1, 3, 10))
  assert out["steps_to_original"] == 3 and out["steps_to_80"] == 2
  assert out["accuracy_at_1"] == pytest.approx(0.4) and out["accuracy_at_3"] == 1.0
  assert "accuracy_at_10" not in out and out["num_steps"] == 3
  never = mia.relearn_summary(curve, original_accuracy=1.0, accuracy_targets=(0.99,))
  assert never["steps_to_99"] == 3
  short = mia.RelearnCurve(jnp.array([0.1, 0.2]), jnp.array([1.0, 0.9]))
  assert mia.relearn_summary(short, original_accuracy=0.9)["steps_to_original"] is None


def test_attack_is_plain_full_batch_finetuning(toy):
  model, data, _, _ = toy
  params = model.init_fn(jax.random.key(1))
  tx = optax.sgd(0.5)
  attack = mia.make_relearn_attack(model.apply_fn, tx, num_steps=4)
  curve = attack.run(params, data)
  assert curve.accuracy.shape == curve.loss.shape == (5,)
  # The same steps by hand, measuring before each and after the last.
  p, state, acc, loss = params, tx.init(params), [], []
  for t in range(5):
    logits = model.apply_fn(p, data["image"])
    acc.append(np.mean(np.argmax(logits, -1) == data["label"]))
    loss.append(np.mean(losses.cross_entropy(logits, data["label"])))
    if t < 4:
      g = jax.grad(lambda q: jnp.mean(losses.cross_entropy(model.apply_fn(q, data["image"]),
                                                           data["label"])))(p)
      u, state = tx.update(g, state, p)
      p = optax.apply_updates(p, u)
  np.testing.assert_allclose(curve.accuracy, acc, atol=1e-6)
  np.testing.assert_allclose(curve.loss, loss, rtol=1e-5)


def test_stacked_attack_equals_one_model_at_a_time(toy):
  model, a, b, _ = toy
  models = [model.init_fn(jax.random.key(k)) for k in range(3)]
  batches = [a, b, a]
  attack = mia.make_relearn_attack(model.apply_fn, optax.adam(1e-2), num_steps=6)
  stacked = attack.run_stacked(mia.stack(models), mia.stack(batches))
  assert stacked.accuracy.shape == (3, 7)
  for i, (p, batch) in enumerate(zip(models, batches)):
    one = attack.run(p, batch)
    np.testing.assert_allclose(stacked.accuracy[i], one.accuracy, atol=1e-6)
    np.testing.assert_allclose(stacked.loss[i], one.loss, rtol=1e-4, atol=1e-6)


def test_a_model_that_memorized_a_set_relearns_it_faster(toy):
  """Known answer: memorized, then suppressed, comes back faster than never seen."""
  model, secret, other, _ = toy
  init = model.init_fn(jax.random.key(2))
  # Both models end trained on `other`; one saw `secret` (random labels) first.
  memorized = _train(model.apply_fn, _train(model.apply_fn, init, secret, 300), other, 60)
  naive = _train(model.apply_fn, init, other, 360)
  attack = mia.make_relearn_attack(model.apply_fn, optax.adam(1e-3), num_steps=200)
  curves = attack.run_stacked(mia.stack([memorized, naive]), mia.stack([secret, secret]))
  steps = mia.steps_to_accuracy(curves.accuracy, 0.8)
  assert steps[0] >= 0, "the memorized model must relearn within the budget"
  assert steps[1] < 0 or steps[0] < steps[1] / 2, steps
  with pytest.raises(ValueError, match="num_steps"):
    mia.make_relearn_attack(model.apply_fn, optax.adam(1e-3), num_steps=0)
  with pytest.raises(ValueError, match="images but"):
    attack.run(naive, {"image": secret["image"][:3], "label": secret["label"]})


def test_the_removal_step_makes_a_memorized_set_relearn_like_an_unseen_one(toy):
  """Known answer: shrink-and-perturb plus a repair on the other data removes what a
  suppressing fine-tune leaves behind."""
  model, secret, other, _ = toy
  init = model.init_fn(jax.random.key(2))
  memorized = _train(model.apply_fn, _train(model.apply_fn, init, secret, 300), other, 60)
  naive = _train(model.apply_fn, init, other, 360)
  fresh = model.init_fn(jax.random.key(8))
  shrunk = unlearn.shrink_perturb(memorized, fresh, shrink=0.1, perturb=0.1)
  repaired = _train(model.apply_fn, shrunk, other, 60)
  attack = mia.make_relearn_attack(model.apply_fn, optax.adam(1e-3), num_steps=200)
  curves = attack.run_stacked(mia.stack([memorized, naive, repaired]),
                              mia.stack([secret, secret, secret]))
  steps = mia.steps_to_accuracy(curves.accuracy, 0.8)
  never = np.where(steps < 0, 201, steps)  # not within the budget
  assert never[0] < never[1] / 2, steps  # the memorized model relearns fast ...
  assert never[2] >= never[1] / 2, steps  # ... the removed one about as slowly as unseen
  # The repair wins back the other data.
  acc = lambda p: float(np.mean(np.argmax(model.apply_fn(p, other["image"]), -1) == other["label"]))
  assert acc(repaired) >= acc(naive) - 0.1


def test_the_repair_compiles_once_for_every_request_of_a_size(toy):
  model, a, b, _ = toy
  repair = unlearn.make_finetune_loop(model.apply_fn, optax.adam(
      optax.cosine_decay_schedule(5e-3, 7)), num_steps=7)
  stack = lambda batch: jax.tree.map(lambda x: x.reshape(2, -1, *x.shape[1:]), batch)
  first, losses_a = repair(model.init_fn(jax.random.key(1)), stack(a))
  second, _ = repair(model.init_fn(jax.random.key(2)), stack(b))
  assert repair._cache_size() == 1
  assert losses_a.shape == (7,) and bool(jnp.all(jnp.isfinite(losses_a)))
  assert any(not np.allclose(x, y) for x, y in zip(jax.tree.leaves(first), jax.tree.leaves(second)))


def test_shrink_perturb_arithmetic_and_bad_input(toy):
  model = toy[0]
  params, fresh = model.init_fn(jax.random.key(1)), model.init_fn(jax.random.key(2))
  out = unlearn.shrink_perturb(params, fresh, shrink=0.25, perturb=0.5)
  for o, p, f in zip(jax.tree.leaves(out), jax.tree.leaves(params), jax.tree.leaves(fresh)):
    np.testing.assert_allclose(o, 0.25 * p + 0.5 * f, rtol=1e-6)
    assert o.dtype == p.dtype
  same = unlearn.shrink_perturb(params, fresh, shrink=1.0, perturb=0.0)
  for o, p in zip(jax.tree.leaves(same), jax.tree.leaves(params)):
    np.testing.assert_array_equal(o, p)
  with pytest.raises(ValueError, match="shrink must be in"):
    unlearn.shrink_perturb(params, fresh, shrink=0.0, perturb=0.1)
  with pytest.raises(ValueError, match="perturb must be non-negative"):
    unlearn.shrink_perturb(params, fresh, shrink=0.5, perturb=-0.1)
  with pytest.raises(ValueError, match="structure of params"):
    unlearn.shrink_perturb(params, {"other": 1.0}, shrink=0.5, perturb=0.1)
  wrong = create_model("mlp", num_classes=NUM_CLASSES, input_shape=INPUT_SHAPE,
                       hidden=(8,)).init_fn(jax.random.key(0))
  with pytest.raises(ValueError, match="has shape"):
    unlearn.shrink_perturb(params, wrong, shrink=0.5, perturb=0.1)


# ----------------------------------------------------------------------------- the relearning term


def test_simulated_relearn_matches_the_attack(toy):
  model, data, _, _ = toy
  params = model.init_fn(jax.random.key(3))
  relearned = unlearn.make_simulated_relearn(model.apply_fn, optax.sgd(0.3), num_steps=7)
  attack = mia.make_relearn_attack(model.apply_fn, optax.sgd(0.3), num_steps=7)
  np.testing.assert_allclose(jax.jit(relearned)(params, data), attack.run(params, data).loss[-1],
                             rtol=1e-5)
  with pytest.raises(ValueError, match="relearn_steps"):
    unlearn.make_simulated_relearn(model.apply_fn, optax.sgd(0.3), num_steps=0)


def test_relearning_term_meta_gradient_matches_finite_differences(toy):
  """The relearning term's meta-gradient equals central differences (float64)."""
  model, forget, retain, nonmember = toy
  # The forget set is memorized (fast to relearn); the look-alikes are not.
  trained = _train(model.apply_fn, model.init_fn(jax.random.key(4)), forget, 150)
  with jax.enable_x64(True):
    to64 = lambda t: jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), t)
    p64 = to64(trained)
    f64, r64, n64 = ({"image": to64(b["image"]), "label": b["label"]}
                     for b in (forget, retain, nonmember))
    gen = unlearn.make_generator("coordinatewise", p64, num_classes=NUM_CLASSES,
                                 output_scale=1.0)
    ref = unlearn.compute_reference(model.apply_fn, p64, n64,
                                    objective="relative_confidence_matching")
    ref["threshold"] = jnp.asarray(0.0, jnp.float64)
    upd = unlearn.make_generator_update(
        model.apply_fn, gen, objective="relative_confidence_matching", lr=0.05, l1_weight=0.01,
        retain_weight=1.0, threshold_weight=3.0, relearn_weight=10.0, relearn_steps=3,
        relearn_optimizer=optax.sgd(0.5))
    phi = to64(gen.init(jax.random.key(0)))
    _, aux = upd.loss(phi, p64, f64, r64, ref)
    assert float(aux["relearn_gap"]) > 0.0, "the test needs the term to be active"
    # The relearning term alone, and every term of the default loss that is a
    # function of phi (the relative objective's distance holds the reference
    # batch's scores constant by a stop-gradient, so it is left out).
    loss = lambda ph: upd.loss(ph, p64, f64, r64, ref)
    for value_fn in (lambda ph: loss(ph)[1]["relearn_gap"],
                     lambda ph: loss(ph)[0] - loss(ph)[1]["distance"]):
      value_and_grad = jax.jit(jax.value_and_grad(value_fn))
      _, grad = value_and_grad(phi)
      rng = np.random.default_rng(5)
      direction = jax.tree.map(lambda x: rng.normal(size=x.shape), phi)
      # A small step: the relearning steps cross ReLU kinks (piecewise-linear
      # in phi), where wider differences pick up the neighbouring pieces.
      h = 1e-7
      shift = lambda s: jax.tree.map(lambda x, d: x + s * h * d, phi, direction)
      fd = (value_and_grad(shift(1.0))[0] - value_and_grad(shift(-1.0))[0]) / (2 * h)
      analytic = sum(np.vdot(g, d) for g, d in zip(jax.tree.leaves(grad),
                                                   jax.tree.leaves(direction)))
      assert abs(analytic) > 1e-8
      np.testing.assert_allclose(analytic, fd, rtol=1e-6, atol=1e-9)


def test_relearning_term_traces_its_inner_loop_once(toy):
  """The simulated fine-tune is a scan: its body is traced once, whatever its length,
  and the compiled update serves new inputs without recompiling."""
  model, forget, retain, nonmember = toy
  params = model.init_fn(jax.random.key(6))
  ref = unlearn.compute_reference(model.apply_fn, params, nonmember,
                                  objective="relative_confidence_matching")
  ref["threshold"] = jnp.zeros((), jnp.float32)
  traces = {}
  for steps in (2, 20):
    calls = []

    def counting_apply(p, x, calls=calls):
      calls.append(1)
      return model.apply_fn(p, x)

    gen = unlearn.make_coordinatewise_generator(num_classes=NUM_CLASSES)
    upd = unlearn.make_generator_update(
        counting_apply, gen, objective="relative_confidence_matching", lr=0.05,
        relearn_weight=1.0, relearn_steps=steps, gen_optimizer=optax.adam(1e-2))
    state = upd.init(jax.random.key(0))
    state, candidate, info = upd.update(state, params, forget, retain, ref)
    traces[steps] = len(calls)
    upd.update(state, candidate, forget, retain, ref)  # new values, same shapes
    assert upd.update._cache_size() == 1
    assert np.isfinite(float(info["relearn_gap"]))
  assert traces[2] == traces[20]


def test_relearning_term_bad_input(toy):
  model, forget, retain, nonmember = toy
  params = model.init_fn(jax.random.key(7))
  gen = unlearn.make_coordinatewise_generator(num_classes=NUM_CLASSES)
  with pytest.raises(ValueError, match="relative objective"):
    unlearn.make_generator_update(model.apply_fn, gen, objective="confidence_matching",
                                  relearn_weight=1.0)
  with pytest.raises(ValueError, match="relearn_weight must be non-negative"):
    unlearn.make_generator_update(model.apply_fn, gen, objective="relative_confidence_matching",
                                  relearn_weight=-1.0)
  upd = unlearn.make_generator_update(model.apply_fn, gen,
                                      objective="relative_confidence_matching",
                                      relearn_weight=1.0)
  small = {"image": nonmember["image"][:5], "label": nonmember["label"][:5]}
  ref = unlearn.compute_reference(model.apply_fn, params, small,
                                  objective="relative_confidence_matching")
  with pytest.raises(ValueError, match="reference examples"):
    upd.update(upd.init(jax.random.key(0)), params, forget, retain, ref)


@pytest.mark.parametrize("section,key,value,message", [
    ("unlearn", "relearn_optimizer", "rmsprop", "unlearn.relearn_optimizer"),
    ("unlearn", "repair_steps", -1, "unlearn.repair_steps"),
    ("unlearn", "repair_batches", -1, "unlearn.repair_batches"),
    ("unlearn", "repair_schedule", "linear", "unlearn.repair_schedule"),
    ("unlearn", "shrink", 0.0, "unlearn.shrink must be in"),
    ("unlearn", "perturb", -1.0, "unlearn.perturb must be non-negative"),
])
def test_main_job_rejects_bad_relearning_choices_before_any_phase(tmp_path, section, key, value,
                                                                  message):
  from experiments import main as main_job  # pylint: disable=g-import-not-at-top
  from experiments.configs import digits  # pylint: disable=g-import-not-at-top
  config = digits.get_config("runlocal")
  config[section][key] = value
  with pytest.raises(ValueError, match=message):
    main_job.run_pipeline(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_main_job_rejects_an_unknown_relearning_attack_before_any_phase(tmp_path):
  from experiments import main as main_job  # pylint: disable=g-import-not-at-top
  from experiments.configs import digits  # pylint: disable=g-import-not-at-top
  config = digits.get_config("runlocal")
  config.evaluate.relearn.settings.sgd_1e_1 = {"optimizer": "lbfgs", "learning_rate": 0.1}
  with pytest.raises(ValueError, match=r"evaluate.relearn.settings.sgd_1e_1.optimizer"):
    main_job.run_pipeline(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()
