"""Guards on the experiment phases: the default unlearning forgets, and runs' files are safe.

One model is trained on scikit-learn's 8x8 digits with 20 inserted photo
patches (`experiments/configs/digits.py`, 300 steps), then unlearned by the
unlearn phase with the experiments' default unlearning settings and with the
paper's Forsaken (no removal step). The tests check that the forget set is
measurably forgotten while the rest is kept, that the default's forgetting
survives a relearning attack the paper's does not,
that the phases refuse checkpoints and data that are not theirs, that a
resume may change only logging and checkpoint periods, that a run whose every
step is non-finite fails, and that the stored neuron mask is the one used.
"""

import os
import shutil

import jax
import numpy as np
import optax
import pytest
from sklearn.metrics import roc_auc_score

from experiments import common
from experiments import evaluate as evaluate_phase
from experiments import retrain as retrain_phase
from experiments import shadow as shadow_phase
from experiments import train as train_phase
from experiments import unlearn as unlearn_phase
from experiments.configs import digits
from forsaken_jax import checkpoints, mia
from forsaken_jax import unlearn as fj_unlearn
from file_snapshots import snapshot
from recording import record_returns

PHASE_FUNCTIONS = {"shadow": shadow_phase.train_shadows, "unlearn": unlearn_phase.unlearn,
                   "retrain": retrain_phase.retrain, "evaluate": evaluate_phase.evaluate}


def _config(data_dir):
  """`digits.py` as is (300 training steps, the default unlearning settings), quiet."""
  config = digits.get_config()
  config.dataset.data_dir = data_dir
  config.train.progress = False
  return config


def _copy_train(run, workdir):
  shutil.copytree(os.path.join(run["workdir"], "train"), os.path.join(workdir, "train"))
  return str(workdir)


def _assert_same_params(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)


PAPER = {"shrink": 1.0, "perturb": 0.0, "repair_steps": 0}  # the paper's Forsaken


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """Train, then unlearn through the phases, keeping what the unlearn phase prepared."""
  workdir = str(tmp_path_factory.mktemp("run"))
  config = _config(str(tmp_path_factory.mktemp("tfds")))
  train_phase.train_and_evaluate(config, workdir)
  with pytest.MonkeyPatch.context() as mp:
    prepared = record_returns(mp, unlearn_phase, "prepare")
    summary = unlearn_phase.unlearn(config, workdir)
  data = common.load_experiment_data(config)
  original, _ = common.load_phase_params(config, workdir, "train", data)
  unlearned, _ = common.load_phase_params(config, workdir, "unlearn", data)
  model = common.create_model(common.model_spec(config, data))
  return {"workdir": workdir, "config": config, "data": data, "summary": summary,
          "prepared": prepared[0], "original": original, "unlearned": unlearned,
          "apply_fn": jax.jit(model.apply_fn)}


@pytest.fixture(scope="module")
def paper_run(run, tmp_path_factory):
  """The same trained model unlearned by the paper's Forsaken (no removal step)."""
  workdir = _copy_train(run, tmp_path_factory.mktemp("paper"))
  config = run["config"].copy_and_resolve_references()
  config.unlearn.update(PAPER)
  with pytest.MonkeyPatch.context() as mp:
    prepared = record_returns(mp, unlearn_phase, "prepare")
    summary = unlearn_phase.unlearn(config, workdir)
  unlearned, _ = common.load_phase_params(config, workdir, "unlearn", run["data"])
  return {**run, "workdir": workdir, "config": config, "summary": summary,
          "prepared": prepared[0], "unlearned": unlearned}


def _forget_relearn_steps(apply_fn, models, sets):
  """Steps of full-batch Adam 1e-3 fine-tuning to 80% accuracy on each set (300: not reached)."""
  attack = mia.make_relearn_attack(apply_fn, optax.adam(1e-3), num_steps=300)
  curves = attack.run_stacked(mia.stack(models), mia.stack(sets))
  steps = mia.steps_to_accuracy(curves.accuracy, 0.8)
  return np.where(steps < 0, 300, steps)


# --- the default path forgets -----------------------------------------------------


def test_default_unlearning_removes_the_photos_and_keeps_the_test_accuracy(run, paper_run):
  """With the removal step the photos are forgotten and do not come back quickly."""
  data, prep, apply_fn = run["data"], run["prepared"], run["apply_fn"]
  original, unlearned, paper = run["original"], run["unlearned"], paper_run["unlearned"]
  unseen = data.splits.nonmembers[data.is_ood[data.splits.nonmembers]]
  look_alikes = {"image": data.pool.images[unseen], "label": data.pool.labels[unseen]}
  test = {"image": data.test_examples.images, "label": data.test_examples.labels}

  def accuracy(params, batch):
    return float(np.mean(np.asarray(apply_fn(params, batch["image"])).argmax(-1)
                         == np.asarray(batch["label"])))

  def auc(params):
    f, n = (np.asarray(mia.logit_scaled_confidence(apply_fn(params, b["image"]), b["label"]))
            for b in (prep.forget, look_alikes))
    return roc_auc_score(np.r_[np.ones(f.size), np.zeros(n.size)], np.r_[f, n])

  assert auc(unlearned) < auc(original) - 0.1, (auc(original), auc(unlearned))
  assert accuracy(unlearned, prep.forget) <= 0.5 * accuracy(original, prep.forget)
  assert accuracy(unlearned, test) >= accuracy(original, test) - 0.03
  # Removal, not suppression: fine-tuned on the photos alone, the default
  # model takes at least twice as long as the original to relearn them, and no
  # less than the paper's Forsaken. (This small model memorizes them only
  # partly, so the gap to the paper's is narrow here; RESULTS.md, section 8,
  # measures it on the default scenario.)
  steps = _forget_relearn_steps(apply_fn, [unlearned, paper, original], [prep.forget] * 3)
  assert steps[0] >= 2 * steps[2] and steps[0] >= steps[1], steps


def test_the_papers_forsaken_forgets_the_photos_and_keeps_the_rest(paper_run):
  run = paper_run
  data, prep, apply_fn = run["data"], run["prepared"], run["apply_fn"]
  original, unlearned = run["original"], run["unlearned"]
  # Unseen photos the unlearner never saw: the audit's look-alikes.
  unseen = data.splits.nonmembers[data.is_ood[data.splits.nonmembers]]
  look_alikes = {"image": data.pool.images[unseen], "label": data.pool.labels[unseen]}
  reference = {"image": prep.reference["image"], "label": prep.reference["label"]}
  retained = jax.tree.map(lambda x: np.reshape(x, (-1, *np.shape(x)[2:])), prep.retain)
  test = {"image": data.test_examples.images, "label": data.test_examples.labels}

  def score(params, batch):
    return np.asarray(mia.logit_scaled_confidence(apply_fn(params, batch["image"]),
                                                  batch["label"]))

  def accuracy(params, batch):
    return float(np.mean(np.asarray(apply_fn(params, batch["image"])).argmax(-1)
                         == np.asarray(batch["label"])))

  def auc(params):
    # How well the score tells the forget set from unseen photos (0.5: not at all).
    f, n = score(params, prep.forget), score(params, look_alikes)
    return roc_auc_score(np.r_[np.ones(f.size), np.zeros(n.size)], np.r_[f, n])

  forget_before, forget_after = score(original, prep.forget), score(unlearned, prep.forget)
  reference_level = score(original, reference).mean()
  # The premise: the photos were memorized, well above the non-members.
  gap_before = forget_before.mean() - reference_level
  assert gap_before > 2.0, gap_before
  assert accuracy(original, prep.forget) >= 0.3 and auc(original) > 0.75

  assert run["summary"]["accepted_steps"] > 0 and run["summary"]["nonfinite_steps"] == 0
  # Forgotten: the forget set's mean score closed more than half of its gap to
  # the non-members' (on the original model, the level the stopping oracle's
  # threshold is fitted to) ...
  gap_after = forget_after.mean() - reference_level
  assert abs(gap_after) < 0.5 * gap_before, (gap_before, gap_after)
  # ... under the unlearned model itself, the score separates them from unseen
  # photos clearly less well, and their arbitrary labels are mostly lost ...
  assert auc(unlearned) < auc(original) - 0.1, (auc(original), auc(unlearned))
  assert accuracy(unlearned, prep.forget) <= 0.5 * accuracy(original, prep.forget)
  # ... while the retained members and the test set keep their accuracy.
  assert accuracy(unlearned, retained) >= accuracy(original, retained) - 0.02
  assert accuracy(unlearned, test) >= accuracy(original, test) - 0.03
  # The loop stopped for that reason: the oracle now judges as many of them
  # non-members as it does D_n (recomputed here from the unlearned model).
  assert np.mean(forget_before < prep.oracle_threshold) < float(prep.target_rate) - 0.3
  assert np.mean(forget_after < prep.oracle_threshold) >= float(prep.target_rate) - 1e-6
  assert run["summary"]["stop_reason"] == "target"


# --- the stored neuron mask ---------------------------------------------------------


def test_unlearn_checkpoint_stores_the_neuron_mask_it_used(paper_run):
  """The mask of the generator's loop (the paper's Forsaken: no removal step after it)."""
  run = paper_run
  config, prep, original = run["config"], run["prepared"], run["original"]
  used = prep.state.mask
  assert isinstance(used, fj_unlearn.PackedMask)
  manager = checkpoints.open_manager(common.checkpoint_dir(run["workdir"], "unlearn"),
                                     read_only=True)
  # Read back as the phase itself resumes: into the loop state's structure.
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype),
                          prep.state._asdict())
  stored, _, meta = checkpoints.restore(manager, abstract)
  assert meta["complete"]
  stored_mask = stored["mask"]
  assert isinstance(stored_mask, fj_unlearn.PackedMask)
  for a, b in zip(jax.tree.leaves(stored_mask), jax.tree.leaves(used)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  # It is the configured neuron mask, recomputed here from the original model.
  retain_first = jax.tree.map(lambda x: x[0], prep.retain)
  saliency = fj_unlearn.unit_saliency(run["apply_fn"], original, prep.forget, retain_first)
  fraction = config.unlearn.mask_fraction
  expected = fj_unlearn.pack_mask(
      original, fj_unlearn.neuron_mask(original, saliency, fraction=fraction),
      capacity=fj_unlearn.neuron_mask_capacity(original, fraction=fraction))
  for a, b in zip(jax.tree.leaves(stored_mask), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  # And it is the mask the unlearned model was changed within.
  moved = False
  for p, q, m in zip(*map(jax.tree.leaves, (original, stored["params"], stored_mask.mask))):
    p, q, m = np.asarray(p), np.asarray(q), np.asarray(m)
    assert not m.all()
    np.testing.assert_array_equal(q[~m], p[~m])
    moved |= bool(np.any(q[m] != p[m]))
  assert moved


# --- refusals -------------------------------------------------------------------------


@pytest.mark.parametrize("phase", ["retrain", "shadow"])
def test_a_phase_refuses_a_directory_holding_another_phases_checkpoint(run, tmp_path, phase):
  # The train checkpoint has the retrain phase's state, model and signature:
  # only its phase name tells them apart.
  workdir = _copy_train(run, tmp_path)
  shutil.copytree(common.checkpoint_dir(workdir, "train"), common.checkpoint_dir(workdir, phase))
  before = snapshot(workdir)
  with pytest.raises(checkpoints.CheckpointError,
                     match=f"(?s)phase: checkpoint has 'train', expected '{phase}'.*"
                           "refusing to overwrite"):
    PHASE_FUNCTIONS[phase](run["config"], workdir)
  assert snapshot(workdir) == before


@pytest.mark.parametrize("phase", ["shadow", "unlearn", "retrain", "evaluate"])
def test_later_phases_refuse_data_other_than_the_train_phases(run, tmp_path, phase):
  workdir = _copy_train(run, tmp_path)
  before = snapshot(workdir)
  config = _config(run["config"].dataset.data_dir)
  config.scenario.num_nonmembers -= 20  # other splits: other data, the same images
  with pytest.raises(checkpoints.CheckpointError,
                     match="differs from the data the train phase"):
    PHASE_FUNCTIONS[phase](config, workdir)
  assert snapshot(workdir) == before
  assert os.listdir(workdir) == ["train"]  # not even an empty directory of its own


def test_train_resume_accepts_new_logging_and_checkpoint_periods(run, tmp_path):
  config = _config(run["config"].dataset.data_dir)
  config.train.checkpoint_every = 100
  workdir = str(tmp_path)
  with pytest.raises(common.TrainingInterrupted):
    train_phase.train_and_evaluate(config, workdir, stop_after=130)
  manager = checkpoints.open_manager(common.checkpoint_dir(workdir, "train"), read_only=True)
  assert manager.latest_step() == 100
  # Only keys outside the signature change: the resumed run goes on and ends
  # where the uninterrupted run did.
  config.train.log_every = 7
  config.train.checkpoint_every = 40
  config.train.progress = True
  assert set(common.RESUMABLE_KEYS) >= {"log_every", "checkpoint_every", "progress"}
  train_phase.train_and_evaluate(config, workdir)
  params, _ = common.load_phase_params(config, workdir, "train", run["data"])
  _assert_same_params(params, run["original"])


def test_unlearn_resume_accepts_new_logging_and_checkpoint_periods(run, tmp_path):
  config = _config(run["config"].dataset.data_dir)
  workdir = _copy_train(run, tmp_path)
  steps = run["summary"]["steps"]
  every = config.unlearn.checkpoint_every
  assert steps > every  # the interruption below lands after a checkpoint
  with pytest.raises(common.TrainingInterrupted):
    unlearn_phase.unlearn(config, workdir, stop_after=every + 1)
  config.unlearn.checkpoint_every = 4
  config.train.log_every = 7
  config.train.checkpoint_every = 40
  config.train.progress = True
  summary = unlearn_phase.unlearn(config, workdir)
  assert summary["steps"] == steps
  params, _ = common.load_phase_params(config, workdir, "unlearn", run["data"])
  _assert_same_params(params, run["unlearned"])


# --- a run whose every step is non-finite ---------------------------------------------


@pytest.fixture(scope="module")
def nonfinite_run(run, tmp_path_factory):
  """The unlearn phase with a step size that overflows every candidate to inf."""
  workdir = _copy_train(run, tmp_path_factory.mktemp("nonfinite"))
  config = _config(run["config"].dataset.data_dir)
  config.unlearn.lr = 1e38
  config.unlearn.max_steps = 4
  config.unlearn.checkpoint_every = 2
  with pytest.raises(FloatingPointError) as error:
    unlearn_phase.unlearn(config, workdir)
  return {"workdir": workdir, "config": config, "error": str(error.value)}


def test_all_nonfinite_unlearn_run_is_an_error_that_never_stores_nan(run, nonfinite_run):
  assert "every generator step gave a non-finite loss" in nonfinite_run["error"]
  assert "unlearn.lr" in nonfinite_run["error"]
  # Whatever the phase left behind holds the original model, never NaN or inf.
  manager = checkpoints.open_manager(common.checkpoint_dir(nonfinite_run["workdir"], "unlearn"),
                                     read_only=True)
  for step in manager.all_steps():
    state, _, _ = checkpoints.restore(manager, step=step)
    assert int(state["num_accepted"]) == 0
    assert int(state["num_nonfinite"]) == int(state["step"]) > 0
    _assert_same_params(state["params"], run["original"])


def test_all_nonfinite_unlearn_run_leaves_no_finished_unlearned_model(run, nonfinite_run):
  with pytest.raises(checkpoints.CheckpointError):
    common.load_phase_params(nonfinite_run["config"], nonfinite_run["workdir"], "unlearn",
                             run["data"])
