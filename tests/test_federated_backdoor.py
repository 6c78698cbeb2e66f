"""The backdoor scenario: the trigger, the poisoned pool, and the federated pipeline's ASR audit.

One tiny run of `backdoor.py:runlocal` on scikit-learn's 8x8 digits (4 users)
is shared by the module's pipeline tests.
"""

import json
import os

import numpy as np
import pytest

from experiments import common
from experiments.configs.federated import backdoor, iid
from experiments.federated import federation as fedlib
from experiments.federated import main as main_job
from forsaken_jax import data as fj_data

MODELS = ["original", "eliminated", "request_round", "retrained", "continue", "fed_eraser", "pga"]


def test_stamp_trigger_known_answer():
  images = np.full((2, 5, 6, 1), 0.25, np.float32)
  stamped = fj_data.stamp_trigger(images, size=2, value=1.0, margin=1)
  expected = np.full((5, 6), 0.25, np.float32)
  expected[2:4, 3:5] = 1.0
  for image in stamped:
    np.testing.assert_array_equal(image[..., 0], expected)
  np.testing.assert_array_equal(images, 0.25)  # the input is left as it was
  assert stamped.dtype == np.float32
  one = fj_data.stamp_trigger(np.zeros((3, 3, 2)), size=3, value=0.5, margin=0)
  np.testing.assert_array_equal(one, 0.5)  # every channel, no margin
  with pytest.raises(ValueError, match="does not fit"):
    fj_data.stamp_trigger(images, size=5, margin=1)
  with pytest.raises(ValueError, match="value"):
    fj_data.stamp_trigger(images, value=2.0)


def test_backdoor_pool_and_attack_success_rate():
  labels = np.repeat(np.arange(3, dtype=np.int32), 4)
  images = np.random.default_rng(0).uniform(0, 0.5, (12, 4, 4, 1)).astype(np.float32)
  train = fj_data.ArrayDataset(images, labels, num_classes=3, name="toy")
  bd = fj_data.build_backdoor_pool(train, num_poisoned=5, target=1, seed=3, size=2, margin=0)
  assert len(bd.pool) == 12 and bd.is_poisoned.sum() == 5 and bd.is_poisoned[-5:].all()
  assert (bd.source_labels != 1).all() and (bd.pool.labels[-5:] == 1).all()
  np.testing.assert_array_equal(bd.clean_images, images[bd.source_indices])
  np.testing.assert_array_equal(bd.pool.images[-5:], fj_data.stamp_trigger(
      bd.clean_images, size=2, margin=0))
  # The sources leave the clean part: no clean copy of a poisoned image.
  np.testing.assert_array_equal(bd.pool.images[:7],
                                images[np.setdiff1d(np.arange(12), bd.source_indices)])
  with pytest.raises(ValueError, match="num_poisoned"):
    fj_data.build_backdoor_pool(train, num_poisoned=9, target=1, seed=0)
  # Known answer: 4 examples outside class 2, of which 3 predicted 2.
  rate = fj_data.attack_success_rate([2, 2, 0, 2, 2], [0, 1, 1, 0, 2], target=2)
  assert rate == 0.75
  with pytest.raises(ValueError, match="undefined"):
    fj_data.attack_success_rate([1], [2], target=2)


def test_the_backdoor_config_is_iids_federation_on_backdoor_data():
  assert "backdoor" not in iid.get_config().scenario
  config = backdoor.get_config()
  assert config.scenario.kind == "ood" and config.eliminate.request == "private"
  # The same federation, request and baselines as iid.py's, on backdoor data;
  # the owner's generator runs its whole step budget.
  config, default = config.to_dict(), iid.get_config().to_dict()
  assert config["eliminate"]["forsaken"].pop("stop_at_target") is False
  for section in ("seed", "dataset", "model", "federated", "eliminate", "baselines"):
    assert config[section] == default[section], section
  for key in ("kind", "num_members", "num_nonmembers", "num_shadow", "num_test"):
    assert config["scenario"][key] == default["scenario"][key], key


def _config(data_dir):
  """`backdoor.py:runlocal` on the digits: 4 users, a few cheap rounds.

  40 triggered images are what it takes the federation to learn the
  backdoor (about 65% attack success) in these 8 rounds; 20 gave 17% in 10.
  """
  config = backdoor.get_config("runlocal")
  config.dataset.name = "digits_local"
  config.dataset.fallback = ""
  config.dataset.data_dir = data_dir
  config.scenario.backdoor.size = 2  # 8x8 images: pixels 6-7 of rows and columns 6-7
  config.scenario.backdoor.margin = 0
  config.scenario.num_members = 300
  config.scenario.num_nonmembers = 60
  config.scenario.num_shadow = 20
  config.scenario.num_ood = 120  # 40 triggered private, 40 look-alikes, 40 held out clean
  config.scenario.num_forget_ood = 40
  config.scenario.num_test = 0
  config.model.kwargs.hidden = (32,)
  config.federated.num_clients = 4
  config.federated.num_rounds = 8
  config.federated.local_epochs = 3
  config.federated.optimizer = "adam"
  config.federated.learning_rate = 1e-2
  config.federated.store_every = 4
  config.federated.checkpoint_every = 8
  config.federated.progress = False
  config.baselines.fed_eraser.calibration_epochs = 3  # reuses the compiled round
  config.evaluate.relearn.steps = 10
  del config.evaluate.relearn.settings["adam_1e-4"]  # one compiled attack fewer
  config.evaluate.relearn.budgets = (10,)
  return config


@pytest.fixture(scope="module")
def run(data_dir, tmp_path_factory):
  config = _config(data_dir)
  workdir = str(tmp_path_factory.mktemp("fed_backdoor"))
  main_job.run_pipeline(config, workdir)
  with open(os.path.join(workdir, "evaluate", "metrics.json")) as f:
    metrics = json.load(f)
  return {"config": config, "workdir": workdir, "metrics": metrics}


def test_the_owner_holds_triggered_images_and_a_clean_reference(run):
  config = run["config"]
  fed = fedlib.load_federation(config, run["workdir"])
  target, trigger = config.scenario.backdoor.target, common.trigger_kwargs(config.scenario.backdoor)
  assert (fed.labels[fed.private] == target).all() and (fed.labels[fed.holdout] == target).all()
  private, holdout = fed.images[fed.private], fed.images[fed.holdout]
  np.testing.assert_array_equal(fj_data.stamp_trigger(private, **trigger), private)
  assert not np.array_equal(fj_data.stamp_trigger(holdout, **trigger), holdout)
  np.testing.assert_array_equal(fedlib.request_data(fed).reference, fed.holdout)
  assert np.isin(fed.private, fed.partition.client(config.federated.owner)).all()


def test_every_model_has_its_attack_success_rate(run):
  metrics = run["metrics"]
  assert metrics["models"] == MODELS
  bd = metrics["backdoor"]
  assert bd["target"] == 0 and bd["num_triggered_test"] > 0 and bd["relearn"]["budgets"] == [10]
  settings = set(run["config"].evaluate.relearn.settings)
  assert set(bd["attack_success_rate_after_relearning"]) == settings == {"adam_1e-3"}
  for name in MODELS:
    figures = metrics["figures"][name]
    assert 0.0 <= bd["attack_success_rate"][name] <= 1.0
    assert figures["attack_success_rate"] == bd["attack_success_rate"][name]
    for setting in settings:
      after = bd["attack_success_rate_after_relearning"][setting]["10"][name]
      assert 0.0 <= after <= 1.0
      assert figures["attack_success_rate_after_relearning"][setting]["10"] == after
    # The relearning attack runs on the triggered images.
    assert {"forget", "control"} <= set(metrics["relearn"]["curves"]["adam_1e-3"][name])
  assert metrics["relearn"]["num_forget"] == 40
  # The original federation learned the backdoor far better than chance (1 in 10).
  assert bd["attack_success_rate"]["original"] > 0.3
  with open(os.path.join(run["workdir"], "evaluate", "report.md")) as f:
    report = f.read()
  assert "attack success rate" in report and "backdoor" in report
