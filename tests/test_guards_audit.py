"""Guards on the audit's wiring, end to end, on one tiny run.

The run is `experiments/configs/digits.py:runlocal` trained for the full
config's 300 steps, with 8 LiRA and 2 Shokri shadow models, through the train,
shadow and evaluate phases. Against the splits, rebuilt here from the config,
the tests check that the shadow models trained on what the design says (LiRA:
the target's members and non-members, each in exactly half of the models;
Shokri: only the disjoint shadow split), that keep masks misaligned with the
examples are refused by the audit (directly, and by the evaluate phase
before it writes anything), and that the original model's forget set is
detectable by LiRA while the unseen-vs-unseen control is not.
"""

import os
import shutil

import jax
import numpy as np
import pytest
import scipy.stats

from experiments import common
from experiments import evaluate as evaluate_phase
from experiments import shadow as shadow_phase
from experiments import train as train_phase
from experiments.configs import digits
from forsaken_jax import mia
from forsaken_jax.mia import audit
from forsaken_jax.mia import shadow as shadow_lib
from file_snapshots import snapshot
from recording import record_returns

NUM_LIRA, NUM_SHOKRI = 8, 2
# Standard errors in the statistical bounds below. A check at z = 4 fails by
# chance with probability 3e-5 one-sided (6e-5 two-sided): a failure is a bug.
Z = 4.0
MISALIGNED = "the LiRA keep masks do not fit the shadow models"


def _config(data_dir):
  """`digits.py:runlocal`, trained long enough for the photos to be memorized.

  At runlocal's 30 steps the model has not learned the 20 photos (LiRA AUC
  0.45 against their look-alikes); at 300 steps it has. With 4 LiRA models
  each Gaussian rests on 2 observations (AUC 0.60 +- 0.09); 8 make it 0.89.
  """
  config = digits.get_config("runlocal")
  config.dataset.data_dir = data_dir
  config.train.progress = False
  config.train.steps = 300
  # One checkpoint per phase: saving is most of a tiny phase's time.
  config.train.checkpoint_every = config.shadow.checkpoint_every = 300
  config.shadow.num_models, config.shadow.num_shokri_models = NUM_LIRA, NUM_SHOKRI
  # The relearning attack is not under test here: one short setting.
  config.evaluate.relearn.steps = 5
  config.evaluate.relearn.settings = {"adam_1e-3": config.evaluate.relearn.settings["adam_1e-3"]}
  return config


def _population(splits):
  """The LiRA population as the shadow phase documents it: members and non-members, sorted."""
  return np.union1d(splits.members, splits.nonmembers)


def _signature(images):
  """A fixed random projection of each image: tells the images of a batch apart."""
  flat = np.asarray(images, np.float64).reshape(*np.shape(images)[:2], -1)
  return flat @ np.random.default_rng(0).standard_normal(flat.shape[-1])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """Train and shadow phases, recording every shadow batch."""
  workdir = str(tmp_path_factory.mktemp("run"))
  config = _config(str(tmp_path_factory.mktemp("tfds")))
  train_phase.train_and_evaluate(config, workdir)
  batches = []  # per step: (positions in the design's universe, image signatures)
  with pytest.MonkeyPatch.context() as mp:
    real_indices, real_run_steps = shadow_lib.shadow_batch_indices, common.run_steps
    last = []

    def recording_indices(*args, **kwargs):
      last[:] = [real_indices(*args, **kwargs)]
      return last[0]

    def recording_run_steps(*, make_batch, **kwargs):
      def recorded(step):
        batch = make_batch(step)
        batches.append((last[0].copy(), _signature(batch["image"])))
        return batch

      return real_run_steps(make_batch=recorded, **kwargs)

    mp.setattr(shadow_lib, "shadow_batch_indices", recording_indices)
    mp.setattr(common, "run_steps", recording_run_steps)
    shadow_phase.train_shadows(config, workdir)
  data = common.load_experiment_data(config)
  _, design = shadow_phase.load_shadows(config, workdir, data)
  return {"workdir": workdir, "config": config, "data": data, "design": design,
          "batches": batches}


@pytest.fixture(scope="module")
def evaluated(run):
  """The evaluate phase on the run, keeping the audit it built."""
  with pytest.MonkeyPatch.context() as mp:
    audits = record_returns(mp, evaluate_phase, "build_audit")
    metrics = evaluate_phase.evaluate(run["config"], run["workdir"])
  return {"audit": audits[0], "metrics": metrics}


# --- the shadow design ----------------------------------------------------------------


def test_lira_population_is_the_targets_members_and_nonmembers_in_order(run):
  splits, design = run["data"].splits, run["design"]
  population = _population(splits)
  num_population = int(design["population_size"][0])
  assert int(design["num_lira"][0]) == NUM_LIRA
  assert num_population == len(splits.members) + len(splits.nonmembers) == len(population)
  # The documented order: the population (sorted pool indices), then the shadow split.
  np.testing.assert_array_equal(design["universe"][:num_population], population)
  np.testing.assert_array_equal(design["universe"][num_population:], splits.shadow)
  # The inserted photos, the forget set, are among the columns: LiRA judges them.
  assert len(splits.forget) == run["config"].scenario.num_forget_ood
  assert run["data"].is_ood[splits.forget].all() and np.isin(splits.forget, population).all()
  assert not np.intersect1d(splits.shadow, population).size


def test_the_audit_judges_the_population_with_the_stored_masks(run, evaluated):
  population, design = _population(run["data"].splits), run["design"]
  ctx = evaluated["audit"]
  np.testing.assert_array_equal(ctx.population, population)
  np.testing.assert_array_equal(ctx.evidence.lira_keep,
                                design["keep"][:NUM_LIRA, :len(population)])
  assert ctx.evidence.lira_stats.shape == (NUM_LIRA, len(population))


def test_each_example_is_in_exactly_half_of_the_lira_models(run):
  design, splits = run["design"], run["data"].splits
  num_population = int(design["population_size"][0])
  keep = design["keep"]
  assert keep.dtype == np.bool_ and keep.shape == (NUM_LIRA + NUM_SHOKRI, len(design["universe"]))
  lira = keep[:NUM_LIRA, :num_population]
  # Balanced masks: every population example, photos included, has exactly
  # NUM_LIRA / 2 in-models and as many out-models for its Gaussians.
  np.testing.assert_array_equal(lira.sum(0), np.full(num_population, NUM_LIRA // 2))
  forget_columns = np.isin(design["universe"][:num_population], splits.forget)
  assert (lira[:, forget_columns].sum(0) == NUM_LIRA // 2).all()
  assert not keep[:NUM_LIRA, num_population:].any()  # never the shadow split
  # Each column picks its half independently, so a model's in-set size is
  # Binomial(P, 1/2): about half the population.
  sizes, sd = lira.sum(1), np.sqrt(num_population) / 2
  assert (np.abs(sizes - num_population / 2) < Z * sd).all(), sizes
  assert len({row.tobytes() for row in lira}) == NUM_LIRA  # no two models share a training set


def test_shokri_models_train_only_on_the_shadow_split(run):
  design, splits = run["design"], run["data"].splits
  num_population = int(design["population_size"][0])
  keep = design["keep"]
  assert not keep[NUM_LIRA:, :num_population].any()
  np.testing.assert_array_equal(keep[NUM_LIRA:, num_population:].sum(0),
                                np.full(len(splits.shadow), NUM_SHOKRI // 2))
  target_data = np.union1d(splits.members, splits.nonmembers)
  for k in range(NUM_LIRA, NUM_LIRA + NUM_SHOKRI):
    trained = design["universe"][keep[k]]
    assert len(trained) and np.isin(trained, splits.shadow).all(), k
    assert not np.isin(trained, target_data).any(), k  # no target member, no audit non-member


def test_every_shadow_batch_comes_from_its_models_in_set(run):
  """What the models actually trained on: the pool images of each recorded batch."""
  config, data, design = run["config"], run["data"], run["design"]
  splits = data.splits
  # The pool index of each universe position, rebuilt from the splits alone.
  universe = np.concatenate([_population(splits), splits.shadow])
  assert len(run["batches"]) == config.train.steps
  trained_on = [set() for _ in range(NUM_LIRA + NUM_SHOKRI)]
  for positions, signature in run["batches"]:
    assert positions.shape == (NUM_LIRA + NUM_SHOKRI, config.train.batch_size)
    pool_indices = universe[positions]
    np.testing.assert_allclose(signature, _signature(data.pool.images[pool_indices]),
                               rtol=1e-6, atol=1e-6)
    for k, row in enumerate(pool_indices):
      trained_on[k].update(row.tolist())
  target_data = set(_population(splits).tolist())
  for k, seen in enumerate(trained_on):
    # 300 steps visit every example of every in-set: the sets are equal.
    assert seen == set(universe[design["keep"][k]].tolist()), k
    if k < NUM_LIRA:
      assert seen <= target_data, k
    else:
      assert seen <= set(splits.shadow.tolist()) and not seen & target_data, k


# --- misaligned keep masks --------------------------------------------------------------


def _gaps(stats, keep):
  """Per example: the mean statistic of its in-models minus that of its out-models."""
  return np.array([stats[keep[:, n], n].mean() - stats[~keep[:, n], n].mean()
                   for n in range(stats.shape[1])])


def test_keep_alignment_is_wilcoxons_signed_rank_statistic(evaluated):
  evidence = evaluated["audit"].evidence
  stats = np.asarray(evidence.lira_stats, np.float64)
  alignment = audit.keep_alignment(stats, evidence.lira_keep)
  gaps = _gaps(stats, evidence.lira_keep)
  assert alignment.num_examples == np.count_nonzero(gaps) == stats.shape[1]
  reference = scipy.stats.wilcoxon(gaps, alternative="greater", method="approx",
                                   correction=False)
  n = alignment.num_examples
  assert alignment.auc * n * (n + 1) / 2 == pytest.approx(reference.statistic, rel=1e-9)
  assert (alignment.auc - 0.5) / alignment.std == pytest.approx(reference.zstatistic, rel=1e-6)


def test_the_runs_own_keep_masks_pass_the_alignment_check(evaluated):
  evidence = evaluated["audit"].evidence
  alignment = audit.check_keep_alignment(evidence.lira_stats, evidence.lira_keep, z=Z)
  assert alignment.auc - Z * alignment.std > 0.5


def _misaligned(keep, how):
  """LiRA keep masks `[K, P]` that no longer belong to their columns or rows."""
  rng = np.random.default_rng(1)
  return {
      "columns_rolled_by_one": lambda: np.roll(keep, 1, axis=1),
      "columns_shuffled": lambda: keep[:, rng.permutation(keep.shape[1])],
      "another_shadow_runs_masks": lambda: np.asarray(
          mia.balanced_keep_masks(jax.random.key(1234), *keep.shape)),
      "models_rolled_by_one": lambda: np.roll(keep, 1, axis=0),
      "in_and_out_swapped": lambda: ~keep,
  }[how]()


@pytest.mark.parametrize("how", ["columns_rolled_by_one", "columns_shuffled",
                                 "another_shadow_runs_masks", "models_rolled_by_one",
                                 "in_and_out_swapped"])
def test_misaligned_keep_masks_are_refused(evaluated, how):
  evidence = evaluated["audit"].evidence
  keep = _misaligned(np.asarray(evidence.lira_keep), how)
  assert keep.shape == evidence.lira_keep.shape and (keep.sum(0) == NUM_LIRA // 2).all()
  assert (keep != evidence.lira_keep).any()
  with pytest.raises(ValueError, match=MISALIGNED):
    audit.check_keep_alignment(evidence.lira_stats, keep)


def test_keep_alignment_rejects_what_it_cannot_check():
  keep = np.arange(8)[:, None] < np.full((8, 5), 4)
  with pytest.raises(ValueError, match=r"must both be \[K, P\]"):
    audit.keep_alignment(np.zeros((8, 4)), keep)
  with pytest.raises(ValueError, match="cannot be checked"):
    audit.keep_alignment(np.ones((8, 5)), keep)  # identical statistics: no gap has a sign


def test_evaluate_refuses_misaligned_keep_masks_and_writes_nothing(run, tmp_path, monkeypatch):
  workdir = str(tmp_path)
  for phase in ("train", "shadow"):
    shutil.copytree(os.path.join(run["workdir"], phase), os.path.join(workdir, phase))
  before = snapshot(workdir)
  real_load_shadows = shadow_phase.load_shadows

  def shifted_load_shadows(*args, **kwargs):
    # The planted bug: the LiRA masks shifted by one population column.
    params, design = real_load_shadows(*args, **kwargs)
    keep, num_population = design["keep"].copy(), int(design["population_size"][0])
    keep[:NUM_LIRA, :num_population] = np.roll(keep[:NUM_LIRA, :num_population], 1, axis=1)
    return params, {**design, "keep": keep}

  monkeypatch.setattr(shadow_phase, "load_shadows", shifted_load_shadows)
  with pytest.raises(ValueError, match=MISALIGNED):
    evaluate_phase.evaluate(run["config"], workdir)
  assert not os.path.exists(os.path.join(workdir, "evaluate"))
  assert snapshot(workdir) == before


# --- what the audit finds on the original model ----------------------------------------


def test_original_models_forget_set_is_detectable_by_lira(run, evaluated):
  data = run["data"]
  lira = evaluated["metrics"]["attack_forget_vs_matched_nonmembers"]["original"]["lira"]
  # The forget set (the photos) against the unseen photos among the non-members.
  unseen_photos = data.splits.nonmembers[data.is_ood[data.splits.nonmembers]]
  assert (lira["num_members"], lira["num_nonmembers"]) == (len(data.splits.forget),
                                                           len(unseen_photos))
  assert lira["auc_std"] > 0
  assert lira["auc"] - Z * lira["auc_std"] > 0.5, lira


def test_unseen_vs_unseen_control_is_near_chance(evaluated):
  m = evaluated["metrics"]
  n1 = m["num_nonmembers"] // 2
  n2 = m["num_nonmembers"] - n1
  # No model trained on either half: the AUC is a null Mann-Whitney statistic,
  # whose standard error (Hanley & McNeil at 0.5) is sqrt((n1 + n2 + 1) / (12 n1 n2)).
  std = mia.auc_standard_error(0.5, n1, n2)
  assert std == pytest.approx(np.sqrt((n1 + n2 + 1) / (12 * n1 * n2)))
  assert abs(m["control_nonmember_halves_lira_auc"] - 0.5) < Z * std, (
      m["control_nonmember_halves_lira_auc"], std)
