"""The federated experiment pipeline end to end on tiny data (scikit-learn's 8x8 digits).

One run of fed_train (interrupted once, then resumed) -> eliminate ->
fed_retrain -> baselines -> fed_shadow (interrupted once, then resumed) ->
evaluate is shared by the module; the tests check what it wrote, the resumed
phases against uninterrupted ones, the partition stored with the
checkpoint, the shadow federations' round and partitions, reruns that skip
finished phases, and the refusal to write over another run's or another
phase's checkpoint.
"""

import copy
import json
import os
import shutil

import jax
import numpy as np
import pytest

from experiments import common
from experiments.configs.federated import dirichlet, iid
from experiments.federated import baselines as baselines_phase
from experiments.federated import eliminate as eliminate_phase
from experiments.federated import fed_retrain as fed_retrain_phase
from experiments.federated import fed_train as fed_train_phase
from experiments.federated import federation as fedlib
from experiments.federated import main as main_job
from experiments.federated import shadow as shadow_phase
from forsaken_jax import checkpoints, federated
from file_snapshots import snapshot

STOP_AFTER = 5  # rounds of the interrupted fed_train; it checkpoints every 2


def _config(data_dir):
  """`iid.py:runlocal` on the digits: 4 users, 20 cheap rounds, one compiled round program."""
  config = iid.get_config("runlocal")
  config.dataset.name = "digits_local"
  config.dataset.fallback = ""
  config.dataset.ood = "photo_patches_local/8x8x1"
  config.dataset.data_dir = data_dir
  config.scenario.num_members = 400
  config.scenario.num_nonmembers = 100
  config.scenario.num_shadow = 40
  config.scenario.num_ood = 60  # 20 private photos, 20 look-alikes, 20 held out by the owner
  config.scenario.num_forget_ood = 20
  config.scenario.num_test = 0
  config.federated.num_clients = 4
  config.federated.num_rounds = 20
  config.federated.local_epochs = 5
  config.federated.optimizer = "adam"
  config.federated.learning_rate = 1e-2
  config.federated.store_every = 4
  config.federated.progress = False
  # FedEraser's calibration rounds reuse the compiled round (a test-time saving).
  config.baselines.fed_eraser.calibration_epochs = 5
  return config


@pytest.fixture(scope="module")
def run(data_dir, tmp_path_factory):
  config = _config(data_dir)
  workdir = str(tmp_path_factory.mktemp("fed"))
  with pytest.raises(common.TrainingInterrupted):
    fed_train_phase.fed_train(config, workdir, stop_after=STOP_AFTER)
  manager = checkpoints.open_manager(common.checkpoint_dir(workdir, "fed_train"), read_only=True)
  interrupted_at = manager.latest_step()
  fed_train_phase.fed_train(config, workdir)
  with pytest.raises(common.TrainingInterrupted):
    shadow_phase.fed_shadow(config, workdir, stop_after=3)
  results = main_job.run_pipeline(config, workdir)
  return {"config": config, "workdir": workdir, "results": results,
          "interrupted_at": interrupted_at}


def _metrics(run):
  with open(os.path.join(run["workdir"], "evaluate", "metrics.json")) as f:
    return json.load(f)


def test_every_phase_completes_and_writes_its_own_directory(run):
  workdir = run["workdir"]
  assert sorted(os.listdir(workdir)) == ["baselines", "eliminate", "evaluate", "fed_retrain",
                                         "fed_shadow", "fed_train"]
  assert sorted(os.listdir(os.path.join(workdir, "baselines"))) == ["continue", "fed_eraser",
                                                                     "pga"]
  for phase in ("fed_train", "eliminate", "fed_retrain", "baselines/continue",
                "baselines/fed_eraser", "baselines/pga", "fed_shadow"):
    assert fedlib.is_complete(workdir, phase), phase
    assert os.path.exists(os.path.join(workdir, phase, "summary.json")), phase
  for name in ("metrics.json", "report.md", "accuracy_per_round.png", "hist_scores.png",
               "relearn.png"):
    assert os.path.exists(os.path.join(workdir, "evaluate", name)), name


def test_metrics_have_the_expected_keys_and_sane_values(run):
  metrics = _metrics(run)
  models = ["original", "eliminated", "request_round", "retrained", "continue", "fed_eraser",
            "pga"]
  assert metrics["models"] == models
  for key in ("oracle", "figures", "wall_seconds", "rounds", "relearn", "stored_bytes",
              "test_accuracy_per_round", "plots"):
    assert key in metrics, key
  for name in models:
    fig = metrics["figures"][name]
    for value in fig["accuracy"].values():
      assert 0.0 <= value <= 1.0
    assert 0.0 <= fig["loss_auc"] <= 1.0
    assert (name == "original") == ("forgetting_rate" not in fig)
    assert metrics["wall_seconds"][name] >= 0.0
    curves = metrics["relearn"]["curves"]["adam_1e-3"][name]
    assert {"forget", "control"} <= set(curves)
  original, retrained = metrics["figures"]["original"], metrics["figures"]["retrained"]
  eliminated = metrics["figures"]["eliminated"]
  # The original federation memorized the owner's photos; retraining without them did not.
  assert original["accuracy"]["photos"] > retrained["accuracy"]["photos"] + 0.1
  assert original["loss_auc"] > retrained["loss_auc"]
  assert original["accuracy"]["test"] > 0.8 and retrained["accuracy"]["test"] > 0.8
  # The elimination removes some of it without wrecking the model.
  assert eliminated["accuracy"]["photos"] < original["accuracy"]["photos"]
  assert eliminated["forgetting_rate"]["rate"] > 0
  assert eliminated["accuracy"]["test"] > original["accuracy"]["test"] - 0.1
  assert metrics["rounds"]["eliminated"] == 2 and metrics["rounds"]["continue"] == 2
  assert len(metrics["test_accuracy_per_round"]["original"]) == 20
  # The shadow-model oracles: the shadow federations' keep masks fit them,
  # and LiRA tells the photos from the look-alikes better on the original
  # federation than on the retrained one.
  assert metrics["shadow"]["num_models"] == 4
  assert metrics["shadow"]["keep_alignment"]["auc"] > 0.5
  for name in models:
    for oracle in ("shokri", "lira"):
      figure = metrics["figures"][name]["shadow_oracles"][oracle]
      assert 0.0 <= figure["auc"] <= 1.0
      assert (name == "original") == ("forgetting_rate" not in figure)
  lira = {n: metrics["figures"][n]["shadow_oracles"]["lira"] for n in ("original", "retrained")}
  assert lira["original"]["auc"] > lira["retrained"]["auc"]
  assert metrics["stored_bytes"] > 0
  with open(os.path.join(run["workdir"], "evaluate", "report.md")) as f:
    report = f.read()
  assert "retrained" in report and "FedEraser" in report and "loss attack AUC" in report
  assert "Shokri, 4 shadow federations" in report and "LiRA AUC" in report


def test_resumed_fed_train_equals_an_uninterrupted_one(run, tmp_path):
  assert run["interrupted_at"] == 4  # the last checkpoint before the kill
  config = run["config"]
  fed_train_phase.fed_train(config, str(tmp_path))
  fed = fedlib.load_federation(config, run["workdir"])
  resumed, _ = fedlib.load_phase_state(fed, run["workdir"], "fed_train")
  fresh, _ = fedlib.load_phase_state(fed, str(tmp_path), "fed_train")
  for key in ("params", "stored_updates", "test_accuracy"):
    for a, b in zip(jax.tree.leaves(resumed[key]), jax.tree.leaves(fresh[key])):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_resumed_fed_shadow_equals_an_uninterrupted_one(run, tmp_path):
  config = run["config"]
  shutil.copytree(os.path.join(run["workdir"], "fed_train"), os.path.join(tmp_path, "fed_train"))
  shadow_phase.fed_shadow(config, str(tmp_path))
  fed = fedlib.load_federation(config, run["workdir"])
  resumed, _ = fedlib.load_phase_state(fed, run["workdir"], "fed_shadow")
  fresh, _ = fedlib.load_phase_state(fed, str(tmp_path), "fed_shadow")
  assert int(resumed["round"]) == int(fresh["round"]) == config.federated.num_rounds
  for a, b in zip(jax.tree.leaves(resumed["params"]), jax.tree.leaves(fresh["params"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_shadow_federations_hold_their_half_and_train_like_the_federation(run):
  config = copy.deepcopy(run["config"])
  fed = fedlib.load_federation(config, run["workdir"])
  owner, cands = fed.owner, shadow_phase.population(fed)
  keep = np.zeros((2, len(cands)), bool)
  keep[0, ::2] = keep[1, 1::2] = True
  parts = shadow_phase.shadow_partitions(fed, keep)
  rest = np.setdiff1d(fed.partition.client(owner), fed.private)
  for part, row in zip(parts, keep):
    np.testing.assert_array_equal(part.client(owner), np.sort(np.concatenate([rest, cands[row]])))
    for k in range(fed.partition.num_clients):
      if k != owner:
        np.testing.assert_array_equal(part.client(k), fed.partition.client(k))
  # One vmapped round of both shadow federations equals each one's plain
  # (not secure) FedAvg round on its own.
  config.federated.secure = False
  plain, _ = fedlib.make_fedavg(config, fed.spec)
  data = shadow_phase.stacked_data(fed, parts)
  params = jax.tree.map(lambda *x: np.stack(x), *[fed.model.init_fn(jax.random.key(j))
                                                   for j in range(2)])
  keys = jax.random.split(jax.random.key(5), 2)
  stacked, _ = shadow_phase.stacked_round(plain)(params, data, keys)
  for j in range(2):
    one, _ = plain.round(jax.tree.map(lambda x: x[j], params),
                         jax.tree.map(lambda x: x[j], data), keys[j])
    for a, b in zip(jax.tree.leaves(stacked), jax.tree.leaves(one)):
      np.testing.assert_allclose(np.asarray(a)[j], np.asarray(b), rtol=1e-5, atol=1e-6)


def test_partition_restored_from_the_checkpoint_equals_the_one_built(run):
  config, workdir = run["config"], run["workdir"]
  data = fedlib.build_data(config)
  built = fedlib.build_partition(config, data)
  stored = fedlib.load_partition(workdir)
  assert stored.num_clients == built.num_clients == 4
  for a, b in zip(stored.clients, built.clients):
    np.testing.assert_array_equal(a, b)
  assert stored.fingerprint() == built.fingerprint()
  meta = checkpoints.read_meta(checkpoints.open_manager(
      common.checkpoint_dir(workdir, "fed_train"), read_only=True))
  assert meta["partition_fingerprint"] == built.fingerprint()
  # The owner holds its private photos; they are the forget set of the splits.
  assert np.isin(data.splits.forget, stored.client(config.federated.owner)).all()
  # The Dirichlet config builds a label-skewed federation of the same data.
  skewed = copy.deepcopy(config)
  skewed.federated.partition = dirichlet.get_config("runlocal").federated.partition
  skewed.federated.alpha = dirichlet.get_config().federated.alpha
  partition = fedlib.build_partition(skewed, data)
  assert federated.label_skew(partition, data.pool.labels) > federated.label_skew(
      built, data.pool.labels)


def test_rerun_skips_finished_phases_without_writing(run):
  config, workdir = run["config"], run["workdir"]
  before = {p: snapshot(common.checkpoint_dir(workdir, p))
            for p in ("fed_train", "eliminate", "fed_retrain", "baselines/pga")}
  fed_train_phase.fed_train(config, workdir)
  summary = eliminate_phase.eliminate(config, workdir)
  fed_retrain_phase.fed_retrain(config, workdir)
  baselines_phase.run_baselines(config, workdir)
  after = {p: snapshot(common.checkpoint_dir(workdir, p)) for p in before}
  assert before == after
  assert summary["rounds"] == 2 and summary["generator_steps"] >= 1


def test_refuses_another_runs_or_another_phases_checkpoint(run, tmp_path):
  workdir = run["workdir"]
  other = copy.deepcopy(run["config"])
  other.federated.learning_rate = 3e-3
  before = snapshot(os.path.join(workdir, "fed_train"))
  with pytest.raises(checkpoints.CheckpointError, match="refusing to overwrite"):
    fed_train_phase.fed_train(other, workdir)
  assert snapshot(os.path.join(workdir, "fed_train")) == before
  # A directory holding another phase's checkpoint is not resumed either.
  shutil.copytree(os.path.join(workdir, "fed_train"), os.path.join(tmp_path, "fed_train"))
  shutil.copytree(os.path.join(workdir, "fed_train"), os.path.join(tmp_path, "eliminate"))
  with pytest.raises(checkpoints.CheckpointError, match="phase"):
    eliminate_phase.eliminate(run["config"], str(tmp_path))
  # A phase needs its upstream phase to have finished.
  with pytest.raises(checkpoints.CheckpointError, match="no checkpoint found"):
    fed_retrain_phase.fed_retrain(run["config"], str(tmp_path / "empty"))


def test_config_errors_are_caught_before_any_phase(run, tmp_path):
  bad = copy.deepcopy(run["config"])
  bad.baselines.methods = ("continue", "unknown")
  with pytest.raises(ValueError, match="unknown baselines"):
    main_job.run_pipeline(bad, str(tmp_path))
  bad = copy.deepcopy(run["config"])
  bad.eliminate.request = "some"
  with pytest.raises(ValueError, match="eliminate.request"):
    main_job.run_pipeline(bad, str(tmp_path))
  bad = copy.deepcopy(run["config"])
  bad.shadow.num_models = 3
  with pytest.raises(ValueError, match="shadow.num_models"):
    main_job.run_pipeline(bad, str(tmp_path))
  bad = copy.deepcopy(run["config"])
  bad.federated.secure_neighbors = 3
  with pytest.raises(ValueError, match="federated.secure_neighbors"):
    main_job.run_pipeline(bad, str(tmp_path))
  assert os.listdir(tmp_path) == []


def test_whole_contribution_request_takes_the_owner_out_of_the_federation(run):
  config = copy.deepcopy(run["config"])
  config.eliminate.request = "all"
  fed = fedlib.load_federation(config, run["workdir"])
  owner = config.federated.owner
  np.testing.assert_array_equal(fedlib.request_data(fed).forget, fed.partition.client(owner))
  remaining = fedlib.remaining_partition(fed)
  assert remaining.client(owner).size == 0
  for k in range(1, remaining.num_clients):
    np.testing.assert_array_equal(remaining.client(k), fed.partition.client(k))
  assert owner not in fedlib.round_clients(fed, 0, remaining)
  # The private request keeps the owner, without its photos.
  private = fedlib.remaining_partition(fedlib.load_federation(run["config"], run["workdir"]))
  np.testing.assert_array_equal(private.client(owner),
                                np.setdiff1d(fed.partition.client(owner), fed.private))


def test_client_sampling_draws_per_round_and_brings_the_owner_to_its_request(run):
  config = copy.deepcopy(run["config"])
  config.federated.clients_per_round = 2
  fed = fedlib.load_federation(config, run["workdir"])
  owner = config.federated.owner
  drawn = [fedlib.round_clients(fed, r, fed.partition) for r in range(12)]
  assert all(len(ids) == 2 and np.all(np.diff(ids) > 0) for ids in drawn)
  assert len({tuple(ids) for ids in drawn}) > 1  # a new draw every round
  np.testing.assert_array_equal(drawn[3], fedlib.round_clients(fed, 3, fed.partition))
  for r in range(12):
    with_owner = fedlib.round_clients(fed, r, fed.partition, include_owner=True)
    assert owner in with_owner and set(drawn[r]) <= set(with_owner)
  # Every round has one shape however many clients take part: one compiled round.
  data = fedlib.client_data(fed, fed.partition, drawn[0])
  assert data.label.shape == (fed.num_slots, int(fed.partition.sizes.max()))
