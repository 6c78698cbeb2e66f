"""End-to-end forgetting on toys: Forsaken removes what a small MLP memorized.

One MLP is trained on 4 Gaussian blobs in 16 dimensions plus 8
out-of-distribution samples (uniform noise) with random labels, which it
memorizes. Two scenarios of the paper are unlearned from it:
- the OOD samples, with the confidence-matching objective and the
  coordinatewise generator;
- a whole class, with the paper's objective (D_n holds no example of the
  class, so its reference mass is 0) and the dense generator.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.metrics import roc_auc_score

from forsaken_jax import losses
from forsaken_jax.models import create_model
from forsaken_jax import unlearn
from forsaken_jax.unlearn import reference as reference_lib



@pytest.fixture(scope="module")
def memorized():
  """The trained MLP and its data (see the module docstring).

  Of the OOD samples, 8 are trained on (the forget set), 32 are a held-out
  non-member sample D_n, 32 more are held out for evaluation.
  """
  rng = np.random.default_rng(0)
  num_classes, dim = 4, 16
  centers = rng.uniform(0, 1, (num_classes, dim))

  def clean(n):
    y = rng.integers(0, num_classes, n)
    return centers[y] + 0.15 * rng.normal(size=(n, dim)), y

  def ood(n):
    return rng.uniform(0, 1, (n, dim)), rng.integers(0, num_classes, n)

  def batch(x, y):
    return {"image": jnp.asarray(x.reshape(-1, 4, 4, 1), jnp.float32),
            "label": jnp.asarray(y, jnp.int32)}

  (x_tr, y_tr), (x_te, y_te) = clean(256), clean(256)
  (x_f, y_f), (x_n, y_n), (x_e, y_e) = ood(8), ood(32), ood(32)
  train = batch(np.concatenate([x_tr, x_f]), np.concatenate([y_tr, y_f]))
  model = create_model("mlp", num_classes=num_classes, input_shape=(4, 4, 1), hidden=(64,))
  params = model.init_fn(jax.random.key(0))
  tx = optax.adam(1e-2)

  @jax.jit
  def train_step(p, opt):
    grads = jax.grad(lambda q: losses.cross_entropy(model.apply_fn(q, train["image"]),
                                                    train["label"]).mean())(p)
    updates, opt = tx.update(grads, opt, p)
    return optax.apply_updates(p, updates), opt

  opt = tx.init(params)
  for _ in range(300):
    params, opt = train_step(params, opt)
  return {"apply_fn": model.apply_fn, "params": params, "forget": batch(x_f, y_f),
          "train": (x_tr, y_tr), "retain": batch(x_tr, y_tr), "nonmember": batch(x_n, y_n),
          "held_out": batch(x_e, y_e), "test": (x_te, y_te), "batch": batch}


def _accuracy(apply_fn, params, b):
  return float(np.mean(np.asarray(apply_fn(params, b["image"]).argmax(-1)) ==
                       np.asarray(b["label"])))


def test_forsaken_forgets_memorized_ood_samples(memorized):
  m = memorized
  apply_fn, params, forget, retain = m["apply_fn"], m["params"], m["forget"], m["retain"]
  nonmember, held_out, test = m["nonmember"], m["held_out"], m["batch"](*m["test"])

  def score(p, b):
    return np.asarray(reference_lib.logit_scaled_confidence(apply_fn(p, b["image"]), b["label"]))

  accuracy = lambda p, b: _accuracy(apply_fn, p, b)

  def membership_auc(p):
    # How well the score separates the forget set from OOD non-members (0.5 = not at all).
    forget_scores = score(p, forget)
    others = np.concatenate([score(p, nonmember), score(p, held_out)])
    return roc_auc_score(np.r_[np.ones(forget_scores.size), np.zeros(others.size)],
                         np.r_[forget_scores, others])

  before_forget, reference_level = score(params, forget).mean(), score(params, nonmember).mean()
  # The premise: the forget set is memorized, far above OOD samples never trained on.
  assert before_forget > reference_level + 5.0
  assert before_forget > score(params, held_out).mean() + 5.0
  assert accuracy(params, test) > 0.95

  result = unlearn.unlearn(
      apply_fn, params, forget, retain, nonmember, key=jax.random.key(1),
      generator="coordinatewise", objective="confidence_matching", lr=0.01, retain_weight=100.0,
      gen_optimizer=optax.adam(1e-3), max_steps=300, patience=100)
  after_forget = score(result.params, forget).mean()
  assert result.info["accepted"] > 0
  # Forgotten: the assigned-label confidence fell to the non-member level (more
  # than 90% of the gap closed, without overshooting far below it) ...
  gap = before_forget - reference_level
  assert abs(after_forget - reference_level) < 0.1 * gap, (
      before_forget, after_forget, reference_level)
  # ... so that the score no longer tells the forget set from unseen OOD
  # samples, including the 32 that played no part in the unlearning ...
  assert membership_auc(result.params) < 0.7, membership_auc(result.params)
  # ... while the model still works on the rest.
  assert accuracy(result.params, test) >= accuracy(params, test) - 0.02
  assert accuracy(result.params, retain) >= accuracy(params, retain) - 0.02


def test_forsaken_forgets_a_class_with_the_paper_objective(memorized):
  m = memorized
  apply_fn, params, batch = m["apply_fn"], m["params"], m["batch"]
  (x_tr, y_tr), (x_te, y_te) = m["train"], m["test"]
  forget = batch(x_tr[y_tr == 0], y_tr[y_tr == 0])
  retain = batch(x_tr[y_tr != 0], y_tr[y_tr != 0])
  # D_n: held-out data without the forgotten class, so P_0 = 0 in the reference.
  nonmember = batch(x_te[:128][y_te[:128] != 0], y_te[:128][y_te[:128] != 0])
  test_rest = batch(x_te[128:][y_te[128:] != 0], y_te[128:][y_te[128:] != 0])
  test_class = batch(x_te[128:][y_te[128:] == 0], y_te[128:][y_te[128:] == 0])
  ref = unlearn.compute_reference(apply_fn, params, nonmember, objective="paper")
  assert float(ref["probs"][0]) == 0.0
  before = [_accuracy(apply_fn, params, b) for b in (forget, test_class, test_rest)]
  assert min(before) > 0.95

  # retain_weight is our knob: with the paper's loss alone (0) the other
  # classes lose up to ~20 points of accuracy in this toy.
  result = unlearn.unlearn(
      apply_fn, params, forget, retain, nonmember, key=jax.random.key(1), generator="dense",
      objective="paper", retain_weight=1.0, lr=0.01, gen_optimizer=optax.adam(1e-3),
      max_steps=100, patience=20)
  forget_acc, class_acc, rest_acc = (_accuracy(apply_fn, result.params, b)
                                     for b in (forget, test_class, test_rest))
  # The class is gone, on the forget set and on unseen examples of it ...
  assert forget_acc < 0.05 and class_acc < 0.05, (forget_acc, class_acc)
  # ... and the other classes keep their accuracy.
  assert rest_acc >= before[2] - 0.05, rest_acc
