"""`experiments.memorization`: the original model's memorization against training length.

Two short lengths on scikit-learn's 8x8 digits; the figures are checked
against a recomputation from each length's stored model, and a rerun reuses
the finished lengths.
"""

import os

import jax
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from experiments import common
from experiments import memorization
from experiments.configs import digits
from file_snapshots import snapshot

LENGTHS = [40, 20]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  config = digits.get_config("runlocal")
  config.dataset.data_dir = str(tmp_path_factory.mktemp("tfds"))
  config.train.progress = False
  workdir = str(tmp_path_factory.mktemp("run"))
  results = memorization.memorization_curve(config, workdir, LENGTHS)
  return {"config": config, "workdir": workdir, "results": results}


def test_one_row_per_length_in_order_with_a_model_of_that_length(run):
  rows = run["results"]["lengths"]
  assert [r["steps"] for r in rows] == sorted(LENGTHS)
  for length in LENGTHS:
    phase_dir = os.path.join(run["workdir"], "memorization", f"steps_{length}")
    assert sorted(os.listdir(os.path.join(phase_dir, "checkpoints")))[-1] == str(length)
  assert os.path.isfile(os.path.join(run["workdir"], "memorization", "report.md"))


def test_figures_match_a_recomputation_from_the_stored_models(run):
  config = run["config"]
  data = common.load_experiment_data(config)
  splits = data.splits
  model = common.create_model(common.model_spec(config, data))
  for row in run["results"]["lengths"]:
    phase_config = config.copy_and_resolve_references()
    phase_config.train.steps = row["steps"]
    params, _ = common.load_phase_params(phase_config, run["workdir"],
                                         f"memorization/steps_{row['steps']}", data)
    logits = np.asarray(jax.jit(model.apply_fn)(params, data.pool.images))
    labels = data.pool.labels
    forget = splits.forget
    assert row["accuracy"]["forget"] == pytest.approx(
        np.mean(np.argmax(logits[forget], -1) == labels[forget]))
    # Look-alikes: the unseen photo patches among the non-members.
    lookalikes = splits.nonmembers[data.is_ood[splits.nonmembers]]
    assert len(lookalikes) > 0
    loss = -np.log(np.asarray(jax.nn.softmax(logits))[np.arange(len(labels)), labels])
    expected = roc_auc_score(np.r_[np.ones(len(forget)), np.zeros(len(lookalikes))],
                             -np.r_[loss[forget], loss[lookalikes]])
    assert row["loss_auc_forget_vs_lookalikes"] == pytest.approx(expected, abs=1e-6)


def test_rerun_reuses_the_finished_lengths(run):
  checkpoints_before = {p: v for p, v in snapshot(run["workdir"]).items() if "checkpoints" in p}
  again = memorization.memorization_curve(run["config"], run["workdir"], LENGTHS)
  checkpoints_after = {p: v for p, v in snapshot(run["workdir"]).items() if "checkpoints" in p}
  assert checkpoints_after == checkpoints_before
  # The same figures; the wall time is the stored run's, give or take the
  # seconds after its last checkpoint.
  drop_time = lambda rows: [{k: v for k, v in r.items() if k != "train_seconds"} for r in rows]
  assert drop_time(again["lengths"]) == drop_time(run["results"]["lengths"])


@pytest.mark.parametrize("steps", [[], [0, 10], [10, 10]])
def test_bad_lengths_are_refused(steps):
  with pytest.raises(ValueError, match="--steps"):
    memorization.check_lengths(steps)
