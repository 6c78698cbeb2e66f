"""The whole pipeline end to end on tiny data (scikit-learn's 8x8 digits).

One run of train -> shadow -> unlearn -> retrain -> evaluate is shared by the
module; the tests check what each phase wrote (and where), the audit's
metrics against independent recomputations, idempotent reruns, resumption
after a kill, refusal to overwrite another run, input validation and the
command line.
"""

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import scipy.special

from experiments import common
from experiments import evaluate as evaluate_phase
from experiments import main as main_job
from experiments import retrain as retrain_phase
from experiments import shadow as shadow_phase
from experiments import train as train_phase
from experiments import unlearn as unlearn_phase
from experiments.configs import digits
from forsaken_jax import checkpoints
from forsaken_jax.mia import audit
from file_snapshots import snapshot

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHASES = ("train", "shadow", "unlearn", "retrain", "evaluate")
PHASE_FUNCTIONS = {"train": (train_phase, "train_and_evaluate"),
                   "shadow": (shadow_phase, "train_shadows"),
                   "unlearn": (unlearn_phase, "unlearn"),
                   "retrain": (retrain_phase, "retrain"),
                   "evaluate": (evaluate_phase, "evaluate")}
PLOTS = ("roc_lira.png", "roc_oracles_original.png", "hist_confidence.png", "relearn.png")
UNLEARN_STEPS = 6


def _config(data_dir):
  """`digits.py:runlocal` (30 steps, 4 LiRA + 2 Shokri shadow models), shrunk further."""
  config = digits.get_config("runlocal")
  config.dataset.data_dir = data_dir
  config.train.progress = False
  config.unlearn.max_steps = UNLEARN_STEPS
  config.unlearn.patience = UNLEARN_STEPS + 1
  # A fixed number of generator steps, so an interruption always lands mid-run.
  config.unlearn.stop_at_target = False
  config.unlearn.checkpoint_every = 2
  return config


def _changed(before, after):
  return {p for p in set(before) | set(after) if before.get(p) != after.get(p)}


def _copy_phases(src_workdir, dst_workdir, phases):
  for phase in phases:
    shutil.copytree(os.path.join(src_workdir, phase), os.path.join(dst_workdir, phase))
  return dst_workdir


def _assert_same_params(a, b):
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)


def _load_json(*parts):
  with open(os.path.join(*parts)) as f:
    return json.load(f)


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_dir):
  """The pipeline run once through `run_pipeline`, recording the files each phase changed."""
  workdir = str(tmp_path_factory.mktemp("run"))
  config = _config(data_dir)
  writes = {}
  with pytest.MonkeyPatch.context() as mp:
    for phase, (module, name) in PHASE_FUNCTIONS.items():

      def recorded(config, workdir, _phase=phase, _fn=getattr(module, name)):
        before = snapshot(workdir)
        result = _fn(config, workdir)
        writes[_phase] = _changed(before, snapshot(workdir))
        return result

      mp.setattr(module, name, recorded)
    start = time.perf_counter()
    metrics = main_job.run_pipeline(config, workdir)
    seconds = time.perf_counter() - start
  data = common.load_experiment_data(config)
  return {"workdir": workdir, "config": config, "metrics": metrics, "writes": writes,
          "seconds": seconds, "data": data}


# --- what the phases wrote ------------------------------------------------------


def test_each_phase_writes_its_outputs_and_only_its_own_directory(run):
  workdir, writes = run["workdir"], run["writes"]
  assert list(writes) == list(PHASES)  # run_pipeline ran every phase, in order
  for phase, changed in writes.items():
    assert changed, f"{phase} wrote nothing"
    outside = sorted(p for p in changed if not p.startswith(phase + os.sep))
    assert not outside, f"{phase} changed files outside {phase}/: {outside}"

  for phase in ("train", "shadow", "unlearn", "retrain"):
    assert os.path.isfile(os.path.join(workdir, phase, "summary.json")), phase
    ckpt = common.checkpoint_dir(workdir, phase)
    assert any(name.isdigit() for name in os.listdir(ckpt)), phase
  for phase in ("train", "shadow", "retrain"):
    assert os.path.isfile(os.path.join(workdir, phase, "metrics.jsonl")), phase
  for name in ("metrics.json", "report.md") + PLOTS:
    assert os.path.isfile(os.path.join(workdir, "evaluate", name)), name
  for name in PLOTS:
    with open(os.path.join(workdir, "evaluate", name), "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n", name

  metrics = _load_json(workdir, "evaluate", "metrics.json")
  assert metrics == json.loads(json.dumps(run["metrics"]))  # what run_pipeline returned
  assert metrics["plots"] == list(PLOTS)
  with open(os.path.join(workdir, "evaluate", "report.md")) as f:
    report = f.read()
  assert report.startswith("# Membership-inference audit: digits_local")
  assert "## Benchmark metrics" in report and "MIA-efficacy" in report
  for name in PLOTS:
    assert f"]({name})" in report


def test_phases_ran_to_completion(run):
  config, workdir = run["config"], run["workdir"]
  latest = {phase: checkpoints.open_manager(common.checkpoint_dir(workdir, phase),
                                            read_only=True).latest_step()
            for phase in ("train", "shadow", "unlearn", "retrain")}
  assert latest == {"train": config.train.steps, "shadow": config.train.steps,
                    "unlearn": UNLEARN_STEPS, "retrain": config.train.steps}
  unlearn = _load_json(workdir, "unlearn", "summary.json")
  assert unlearn["steps"] == UNLEARN_STEPS and unlearn["stop_reason"] == "max_steps"
  assert len(unlearn["loss_trace"]) == UNLEARN_STEPS
  # Where a first request's time goes: JAX's timings of the programs built.
  for summary in (unlearn, _load_json(workdir, "train", "summary.json")):
    assert set(summary["compile_seconds"]) == {"tracing", "lowering", "xla_compiling"}
    assert all(seconds >= 0 for seconds in summary["compile_seconds"].values())
  assert unlearn["compile_seconds"]["tracing"] > 0
  shadow = _load_json(workdir, "shadow", "summary.json")
  assert (shadow["num_lira_models"], shadow["num_shokri_models"]) == (4, 2)
  retrain = _load_json(workdir, "retrain", "summary.json")
  train = _load_json(workdir, "train", "summary.json")
  # The retrained model never saw the forget set.
  assert train["num_examples"] - retrain["num_examples"] == len(run["data"].splits.forget)


# --- the audit's metrics ----------------------------------------------------------


def test_metrics_are_internally_consistent(run):
  m, splits = run["metrics"], run["data"].splits
  n = len(splits.forget)
  assert m["num_forget"] == n and m["num_forget"] + m["num_retain"] == len(splits.members)
  assert m["num_nonmembers"] == len(splits.nonmembers)
  assert (m["num_lira_shadow_models"], m["num_shokri_shadow_models"]) == (4, 2)

  assert set(m["accuracy"]) == {"original", "unlearned", "retrained"}
  for model, acc in m["accuracy"].items():
    assert set(acc) == {"test", "retain", "forget", "nonmember"}
    for value in acc.values():
      assert 0.0 <= value <= 1.0, (model, acc)

  assert set(m["forgetting_rate"]) == {"unlearned", "retrained"}
  judged = m["judged_member_rate_on_forget"]
  for model, per_oracle in m["forgetting_rate"].items():
    assert set(per_oracle) == set(audit.ORACLES)
    for oracle, fr in per_oracle.items():
      assert fr["oracle"] == oracle and fr["n"] == n
      assert fr["b_t"] + fr["b_f"] == n and 0 <= fr["a_f"] <= n
      if fr["b_t"] == 0:
        assert fr["rate"] is None
      else:
        assert fr["rate"] == pytest.approx((fr["a_f"] - fr["b_f"]) / fr["b_t"])
      # B_T counts the original model's member judgements, A_F this model's
      # non-member judgements: both are in the judged-member rates too.
      assert fr["b_t"] == round(judged["original"][oracle] * n)
      assert fr["a_f"] == round((1 - judged[model][oracle]) * n)

  for key in ("attack_retain_vs_nonmembers", "attack_forget_vs_matched_nonmembers"):
    for model, per_oracle in m[key].items():
      assert set(per_oracle) == {"shokri", "lira", "lira_offline", "loss"}
      for s in per_oracle.values():
        assert 0.0 <= s["auc"] <= 1.0 and 0.5 <= s["balanced_accuracy"] <= 1.0
  assert 0.0 <= m["ulira"]["auc"] <= 1.0

  bench = m["benchmark"]
  assert set(bench) == {"original", "unlearned", "retrained", "average_gap"}
  for model in ("original", "unlearned", "retrained"):
    b, acc = bench[model], m["accuracy"][model]
    assert b["UA"] == pytest.approx(1 - acc["forget"]) and b["RA"] == pytest.approx(acc["retain"])
    assert b["TA"] == pytest.approx(acc.get("test_other_classes", acc["test"]))
    assert 0.0 <= b["MIA"] <= 1.0
  assert bench["average_gap"] == pytest.approx(
      100 * np.mean([abs(bench["unlearned"][k] - bench["retrained"][k])
                     for k in ("UA", "RA", "TA", "MIA")]))

  # Unseen-vs-unseen control: no model trained on either half of the
  # non-members, so the AUC is a null Mann-Whitney statistic with standard
  # deviation sqrt((n1 + n2 + 1) / (12 n1 n2)), about 0.04 for two halves of
  # ~120 here. A band of 0.2 is five standard deviations: a failure means a
  # real leak or bug, not bad luck.
  n1 = m["num_nonmembers"] // 2
  n2 = m["num_nonmembers"] - n1
  sigma = np.sqrt((n1 + n2 + 1) / (12 * n1 * n2))
  assert 0.2 > 4 * sigma
  assert abs(m["control_nonmember_halves_lira_auc"] - 0.5) < 0.2

  assert set(m["wall_seconds"]) == {"train", "shadow", "unlearn", "retrain"}
  assert all(s > 0 for s in m["wall_seconds"].values())

  # The relearning attack: every setting, every model, forget set and control.
  rl, budget = m["relearn"], run["config"].evaluate.relearn.steps
  assert set(rl["curves"]) == set(run["config"].evaluate.relearn.settings)
  assert rl["num_forget"] == n and 0 < rl["num_control"] <= n
  for per_model in rl["curves"].values():
    assert set(per_model) == {"original", "unlearned", "retrained"}
    for model, sets in per_model.items():
      f = sets["forget"]
      assert len(f["accuracy"]) == len(f["loss"]) == budget + 1
      # Step 0 is the model as audited.
      assert f["accuracy"][0] == pytest.approx(m["accuracy"][model]["forget"])
      for name, target in (("steps_to_80", 0.8),
                           ("steps_to_original", m["accuracy"]["original"]["forget"])):
        t = f[name]
        if t is None:
          assert max(f["accuracy"]) < target - 1e-6
        else:
          assert f["accuracy"][t] >= target - 1e-6 and all(a < target - 1e-6
                                                           for a in f["accuracy"][:t])
  assert all(per_model["original"]["forget"]["steps_to_original"] == 0
             for per_model in rl["curves"].values())


def test_metrics_match_an_independent_recomputation(run):
  """Accuracies and the loss oracle's counts, recomputed from the checkpoints."""
  config, workdir, data, m = run["config"], run["workdir"], run["data"], run["metrics"]
  model = common.create_model(common.model_spec(config, data))
  apply_fn = jax.jit(model.apply_fn)
  splits = data.splits
  population = np.sort(np.concatenate([splits.members, splits.nonmembers]))
  is_forget = np.isin(population, splits.forget)
  is_retain = np.isin(population, splits.members) & ~is_forget
  images, labels = data.pool.images[population], data.pool.labels[population]

  for name, phase in (("original", "train"), ("unlearned", "unlearn"), ("retrained", "retrain")):
    params, _ = common.load_phase_params(config, workdir, phase, data)
    params = jax.device_get(params)
    logits = np.asarray(apply_fn(params, images), np.float64)
    correct = logits.argmax(-1) == labels
    acc = m["accuracy"][name]
    assert acc["forget"] == pytest.approx(correct[is_forget].mean())
    assert acc["retain"] == pytest.approx(correct[is_retain].mean())
    # The test examples the splits name (all of them unless scenario.num_test is set).
    test_images, test_labels = data.test.images[splits.test], data.test.labels[splits.test]
    test_logits = np.asarray(apply_fn(params, test_images))
    assert acc["test"] == pytest.approx((test_logits.argmax(-1) == test_labels).mean())
    # The loss oracle: member when -loss >= the threshold fitted on the original model.
    log_probs = logits - scipy.special.logsumexp(logits, axis=-1, keepdims=True)
    neg_loss = log_probs[np.arange(len(labels)), labels]
    member = neg_loss[is_forget] >= m["loss_threshold"]
    assert m["judged_member_rate_on_forget"][name]["loss"] == pytest.approx(member.mean())
    if name != "original":
      fr = m["forgetting_rate"][name]["loss"]
      assert fr["a_f"] == int((~member).sum())


# --- reruns, resumption, refusal --------------------------------------------------


def test_rerun_on_a_finished_workdir_is_idempotent(run):
  workdir = run["workdir"]
  checkpoints_before = {phase: snapshot(common.checkpoint_dir(workdir, phase))
                        for phase in ("train", "shadow", "unlearn", "retrain")}
  logs_before = {phase: snapshot(os.path.join(workdir, phase))["metrics.jsonl"]
                 for phase in ("train", "shadow", "retrain")}
  metrics_before = _load_json(workdir, "evaluate", "metrics.json")

  start = time.perf_counter()
  again = main_job.run_pipeline(run["config"], workdir)
  seconds = time.perf_counter() - start

  # No phase trained again: no checkpoint saved, no metrics logged.
  for phase, before in checkpoints_before.items():
    assert snapshot(common.checkpoint_dir(workdir, phase)) == before, phase
  for phase, before in logs_before.items():
    assert snapshot(os.path.join(workdir, phase))["metrics.jsonl"] == before, phase
  assert seconds < run["seconds"]

  metrics_after = _load_json(workdir, "evaluate", "metrics.json")
  assert metrics_after == json.loads(json.dumps(again))
  # Finished phases rewrite their summary with the stored wall time plus the
  # zero-step loop around it, so times agree to a small fraction of a second.
  wall_before, wall_after = metrics_before.pop("wall_seconds"), metrics_after.pop("wall_seconds")
  assert wall_after == pytest.approx(wall_before, abs=0.5)
  assert metrics_after == metrics_before


def test_shadow_phase_resumes_to_identical_parameters(run, tmp_path):
  config, data = run["config"], run["data"]
  workdir = _copy_phases(run["workdir"], str(tmp_path), ["train"])
  train_before = snapshot(os.path.join(workdir, "train"))
  with pytest.raises(common.TrainingInterrupted):
    shadow_phase.train_shadows(config, workdir, stop_after=15)
  manager = checkpoints.open_manager(common.checkpoint_dir(workdir, "shadow"), read_only=True)
  assert manager.latest_step() == 10  # checkpoint_every=10: steps 11-15 are lost
  with pytest.raises(checkpoints.CheckpointError, match="stopped at step 10"):
    shadow_phase.load_shadows(config, workdir, data)

  shadow_phase.train_shadows(config, workdir)
  resumed, design = shadow_phase.load_shadows(config, workdir, data)
  straight, straight_design = shadow_phase.load_shadows(config, run["workdir"], data)
  _assert_same_params(resumed, straight)
  for key, value in straight_design.items():
    np.testing.assert_array_equal(design[key], value)
  assert snapshot(os.path.join(workdir, "train")) == train_before


def test_unlearn_phase_resumes_to_identical_parameters(run, tmp_path):
  config, data = run["config"], run["data"]
  workdir = _copy_phases(run["workdir"], str(tmp_path), ["train", "shadow", "retrain"])
  upstream_before = {phase: snapshot(os.path.join(workdir, phase))
                     for phase in ("train", "shadow", "retrain")}
  with pytest.raises(common.TrainingInterrupted):
    unlearn_phase.unlearn(config, workdir, stop_after=3)
  manager = checkpoints.open_manager(common.checkpoint_dir(workdir, "unlearn"), read_only=True)
  assert manager.latest_step() == 2  # checkpoint_every=2: step 3 is lost
  # An unfinished unlearned model is never audited.
  with pytest.raises(checkpoints.CheckpointError, match="did not finish"):
    evaluate_phase.evaluate(config, workdir)

  summary = unlearn_phase.unlearn(config, workdir)
  assert summary["steps"] == UNLEARN_STEPS
  straight_summary = _load_json(run["workdir"], "unlearn", "summary.json")
  np.testing.assert_allclose(summary["loss_trace"], straight_summary["loss_trace"], rtol=1e-6)
  assert summary["accepted_steps"] == straight_summary["accepted_steps"]
  resumed, _ = common.load_phase_params(config, workdir, "unlearn", data)
  straight, _ = common.load_phase_params(config, run["workdir"], "unlearn", data)
  _assert_same_params(jax.device_get(resumed), jax.device_get(straight))
  if summary["accepted_steps"]:
    # The comparison is not vacuous: the unlearned model moved.
    original, _ = common.load_phase_params(config, workdir, "train", data)
    moved = [not np.allclose(a, b) for a, b in zip(jax.tree.leaves(jax.device_get(resumed)),
                                                   jax.tree.leaves(jax.device_get(original)))]
    assert any(moved)
  for phase, before in upstream_before.items():
    assert snapshot(os.path.join(workdir, phase)) == before, phase


def test_unlearn_with_relearning_term_and_repair_resumes_to_the_same_model(run, tmp_path):
  """The removal settings: the relearning term and the repair after the loop."""
  config, data = run["config"].copy_and_resolve_references(), run["data"]
  with config.unlocked():
    config.unlearn.relearn_weight = 10.0
    config.unlearn.relearn_steps = 3
    config.unlearn.repair_steps = 4
  straight_dir = _copy_phases(run["workdir"], str(tmp_path / "straight"), ["train"])
  straight_summary = unlearn_phase.unlearn(config, straight_dir)
  assert straight_summary["repair_steps"] == 4 and straight_summary["relearn_weight"] == 10.0
  resumed_dir = _copy_phases(run["workdir"], str(tmp_path / "resumed"), ["train"])
  with pytest.raises(common.TrainingInterrupted):
    unlearn_phase.unlearn(config, resumed_dir, stop_after=3)
  unlearn_phase.unlearn(config, resumed_dir)
  straight, _ = common.load_phase_params(config, straight_dir, "unlearn", data)
  resumed, _ = common.load_phase_params(config, resumed_dir, "unlearn", data)
  _assert_same_params(jax.device_get(resumed), jax.device_get(straight))
  # The stored model is the repaired one: the repair moved the loop's model.
  loop_state = checkpoints.open_manager(common.checkpoint_dir(straight_dir, "unlearn"),
                                        read_only=True)
  assert loop_state.latest_step() == UNLEARN_STEPS
  without_repair = config.copy_and_resolve_references()
  with without_repair.unlocked():
    without_repair.unlearn.repair_steps = 0
  plain_dir = _copy_phases(run["workdir"], str(tmp_path / "plain"), ["train"])
  unlearn_phase.unlearn(without_repair, plain_dir)
  plain, _ = common.load_phase_params(without_repair, plain_dir, "unlearn", data)
  assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(jax.device_get(plain)),
                                                   jax.tree.leaves(jax.device_get(straight))))


@pytest.mark.parametrize("phase,section,key,value", [
    ("shadow", "shadow", "num_models", 6),
    ("unlearn", "unlearn", "lr", 0.5),
    ("retrain", "train", "learning_rate", 1e-2),
])
def test_incompatible_config_is_refused_and_the_checkpoint_kept(run, tmp_path, phase, section,
                                                                  key, value):
  workdir = _copy_phases(run["workdir"], str(tmp_path), ["train", phase])
  before = snapshot(os.path.join(workdir, phase))
  config = _config(run["config"].dataset.data_dir)
  config[section][key] = value
  module, name = PHASE_FUNCTIONS[phase]
  with pytest.raises(checkpoints.CheckpointError, match="(?s)signature.*refusing to overwrite"):
    getattr(module, name)(config, workdir)
  assert snapshot(os.path.join(workdir, phase)) == before


@pytest.mark.parametrize("phase", ["shadow", "unlearn", "retrain", "evaluate"])
def test_later_phases_need_the_train_checkpoint(data_dir, tmp_path, phase):
  module, name = PHASE_FUNCTIONS[phase]
  with pytest.raises(checkpoints.CheckpointError, match="no checkpoint"):
    getattr(module, name)(_config(data_dir), str(tmp_path))
  assert not os.listdir(tmp_path)  # nothing written


# --- input validation -------------------------------------------------------------


def test_forget_batch_is_the_forget_set(run):
  data = run["data"]
  batch = unlearn_phase.forget_batch(data, data.splits.forget)
  np.testing.assert_array_equal(batch["image"], data.pool.images[data.splits.forget])
  np.testing.assert_array_equal(batch["label"], data.pool.labels[data.splits.forget])


@pytest.mark.parametrize("case", ["empty", "not_member", "out_of_range", "negative", "duplicate"])
def test_forget_batch_rejects_bad_forget_sets(run, case):
  data = run["data"]
  member, nonmember = int(data.splits.members[0]), int(data.splits.nonmembers[0])
  forget, message = {
      "empty": (np.array([], np.int64), "empty"),
      "not_member": (np.array([member, nonmember]), f"not members: \\[{nonmember}\\]"),
      "out_of_range": (np.array([member, len(data.pool) + 3]), str(len(data.pool) + 3)),
      "negative": (np.array([member, -1]), "negative indices: \\[-1\\]"),
      "duplicate": (np.array([member, member]), f"duplicate indices: \\[{member}\\]"),
  }[case]
  with pytest.raises(ValueError, match=message):
    unlearn_phase.forget_batch(data, forget)


def test_reference_non_members_are_held_out_from_the_audit(run):
  data, scenario = run["data"], run["config"].scenario
  assert scenario.kind == "ood"
  held_out = unlearn_phase.reference_indices(data, scenario)  # the default: the shadow split
  assert len(held_out) and np.isin(held_out, data.splits.shadow).all()
  assert data.is_ood[held_out].all()  # of the forget set's kind
  # None is among the non-members the audit judges the forget set against.
  assert not np.isin(held_out, data.splits.nonmembers).any()
  overlapping = unlearn_phase.reference_indices(data, scenario, "nonmembers")
  assert np.isin(overlapping, data.splits.nonmembers).all() and data.is_ood[overlapping].all()
  with pytest.raises(ValueError, match="reference_split must be one of"):
    unlearn_phase.reference_indices(data, scenario, "test")
  # A split without any example of the forget set's kind is an error, not a silent fallback.
  no_photos = dataclasses.replace(data, splits=dataclasses.replace(
      data.splits, shadow=data.splits.shadow[~data.is_ood[data.splits.shadow]]))
  with pytest.raises(ValueError, match="no reference non-members .* in the shadow split"):
    unlearn_phase.reference_indices(no_photos, scenario)


# --- the command line -------------------------------------------------------------


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "experiments.train", *args], cwd=REPO_ROOT,
                        capture_output=True, text=True, timeout=300, check=False)


def test_cli_trains_the_same_model_as_the_library(run, tmp_path):
  workdir = str(tmp_path / "cli")
  result = _cli("--config", "experiments/configs/digits.py:runlocal", "--workdir", workdir,
                f"--config.dataset.data_dir={run['config'].dataset.data_dir}",
                "--config.train.progress=False")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "[train] digits_local" in result.stdout
  assert set(os.listdir(workdir)) == {"train"}
  # The train phase depends only on the dataset, scenario, model and train
  # sections, which the fixture's config shares with `:runlocal`.
  config = run["config"]
  params, _ = common.load_phase_params(config, workdir, "train", run["data"])
  expected, _ = common.load_phase_params(config, run["workdir"], "train", run["data"])
  _assert_same_params(jax.device_get(params), jax.device_get(expected))


@pytest.mark.parametrize("args,message", [
    (["--config", "experiments/configs/digits.py:bogus", "--workdir", "{workdir}"],
     "unknown config argument 'bogus'"),
    (["--config", "experiments/configs/digits.py:runlocal", "--workdir", "{workdir}",
      "--config.train.bogus=1"], "bogus"),
    (["--config", "experiments/configs/digits.py:runlocal"], "--workdir must have a value"),
])
def test_cli_rejects_bad_arguments(tmp_path, args, message):
  workdir = str(tmp_path / "cli")
  result = _cli(*[a.format(workdir=workdir) for a in args])
  assert result.returncode != 0
  assert message in result.stderr, result.stderr[-3000:]
  assert not os.path.exists(workdir)


# --- the ablation sweep -------------------------------------------------------------


@pytest.mark.slow
def test_sweep_audits_its_variants_and_writes_only_its_table(run):
  from experiments import sweep_unlearn  # pylint: disable=g-import-not-at-top
  workdir = run["workdir"]
  config = run["config"].copy_and_resolve_references()
  # Every standard variant is a valid override of this config; a bad one is
  # refused before anything runs.
  sweep_unlearn.check_variants(sweep_unlearn.VARIANTS, config)
  with pytest.raises(ValueError, match="unknown unlearn settings"):
    sweep_unlearn.check_variants({"typo": {"shrnk": 0.5}}, config)
  # A scenario's own variant (config.sweep.variants) is run after the standard
  # ones; two standard variants stand for all (each compiles its own loop).
  config.sweep.variants = {"two steps only": {"max_steps": 2, "stop_at_target": False}}
  only = list(sweep_unlearn.VARIANTS)[:2]
  before = snapshot(workdir)
  rows = sweep_unlearn.sweep(config, workdir, only=only)
  changed = _changed(before, snapshot(workdir))
  assert changed == {os.path.join("sweep", "results.md"), os.path.join("sweep", "tradeoff.png")}
  # original, retrained, the variants, the config's own, the removal step
  # alone, gradient ascent, fine-tuning.
  expected = 2 + len(only) + 1 + 1 + len(sweep_unlearn.GRADIENT_ASCENT_RUNS) + 1
  assert len(rows) == expected
  assert [r["model"] for r in rows[2:2 + len(only)]] == only
  extra = rows[2 + len(only)]
  assert extra["model"] == "two steps only" and extra["note"].startswith("2 steps")
  assert rows[3 + len(only)]["model"].startswith("the removal step alone")
  # The reference rows agree with the evaluate phase's audit of the same models.
  metrics = run["metrics"]
  original, retrained = rows[0], rows[1]
  assert original["test"] == pytest.approx(metrics["accuracy"]["original"]["test"])
  assert retrained["test"] == pytest.approx(metrics["accuracy"]["retrained"]["test"])
  for oracle in ("shokri", "lira", "loss"):
    assert retrained[f"fr_{oracle}"] == metrics["forgetting_rate"]["retrained"][oracle]["rate"]
  with open(os.path.join(workdir, "sweep", "results.md")) as f:
    table = f.read()
  assert table.count("\n") == expected + 2  # header, rule, one line per row


def test_removal_probe_relearns_every_reset_and_writes_only_its_outputs(run):
  from experiments import removal_probe  # pylint: disable=g-import-not-at-top
  workdir = run["workdir"]
  before = snapshot(workdir)
  result = removal_probe.run_probe(run["config"], workdir)
  changed = _changed(before, snapshot(workdir))
  assert {os.path.dirname(p) for p in changed} == {"removal_probe"}
  num_probes = (len(removal_probe.UNIT_FRACTIONS) + len(removal_probe.WEIGHT_FRACTIONS)
                + len(removal_probe.SHRINKS))
  (setting,) = result["curves"]
  curves = result["curves"][setting]
  assert list(curves)[:3] == ["original", "unlearned", "retrained"]
  assert len(curves) == 3 + num_probes
  # The reference rows are the run's models: the original starts where the
  # evaluate phase measured it.
  forget_accuracy = run["metrics"]["accuracy"]["original"]["forget"]
  assert curves["original"]["forget"]["accuracy"][0] == pytest.approx(forget_accuracy, abs=1e-6)
  # Every probe changed the model (a reset that left it as it was is a wiring bug).
  assert len({round(c["forget"]["loss"][0], 6) for c in curves.values()}) > num_probes
  with open(os.path.join(workdir, "removal_probe", "results.md")) as f:
    assert f.read().count("\n") == len(curves) + 2
  config = run["config"].copy_and_resolve_references()
  config.unlearn.repair_steps = 0
  with pytest.raises(ValueError, match="repair_steps"):
    removal_probe.run_probe(config, workdir)


# --- the unlearning-time benchmark --------------------------------------------------


@pytest.mark.slow
def test_bench_unlearn_times_both_settings_without_touching_the_run(run):
  before = snapshot(run["workdir"])
  result = subprocess.run(
      [sys.executable, "-m", "experiments.bench_unlearn", "--workdir", run["workdir"],
       "--config", "experiments/configs/digits.py:runlocal", "--repeats", "1",
       "--retrain-repeats", "2",
       f"--config.dataset.data_dir={run['config'].dataset.data_dir}",
       f"--config.unlearn.max_steps={UNLEARN_STEPS}", "--config.unlearn.stop_at_target=False",
       f"--config.unlearn.patience={UNLEARN_STEPS + 1}"],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert _changed(before, snapshot(run["workdir"])) == set()
  rows = [line.split("|")[1:-1] for line in result.stdout.splitlines()
          if line.startswith("| default") or line.startswith("| fast_compile")]
  assert [(r[0].strip(), r[1].strip()) for r in rows] == [
      ("default", "first run"), ("default", "warm cache"), ("fast_compile", "first run"),
      ("fast_compile", "warm cache")]
  for row in rows:
    assert row[2].strip() == run["workdir"]
    assert float(row[4]) > 0 and int(row[7]) == UNLEARN_STEPS
    assert float(row[5]) >= 0 and float(row[6]) > 0  # XLA compiling; tracing + lowering
  # A first run compiles the programs; a warm cache holds them.
  for first, warm in ((rows[0], rows[1]), (rows[2], rows[3])):
    assert float(first[5]) > 0 and float(warm[5]) < float(first[5]), (first, warm)
  # The shares are computed from the retrainings timed in the same session.
  match = re.search(r"in this session, 2 runs: ([0-9.]+), ([0-9.]+) s; median ([0-9.]+) s "
                    r"\(XLA compilation in them: [0-9.]+, [0-9.]+ s\)", result.stdout)
  assert match, result.stdout[-2000:]
  retrain_seconds = [float(match[1]), float(match[2])]
  assert min(retrain_seconds) > 0
  assert float(match[3]) == pytest.approx(np.median(retrain_seconds), abs=0.01)
  for row in rows:  # (the table rounds seconds to 0.01 and shares to 0.1%)
    share, low, high = map(float, re.fullmatch(r" ([0-9.]+)% \(([0-9.]+)-([0-9.]+)%\) ",
                                               row[8]).groups())
    for printed, baseline in ((share, np.median(retrain_seconds)),
                              (low, max(retrain_seconds)), (high, min(retrain_seconds))):
      assert printed == pytest.approx(100 * float(row[4]) / baseline,
                                      abs=0.05 + 0.5 / baseline + 0.05 * printed / baseline)
  # "Another forget set" needs a run with another seed.
  same = subprocess.run(
      [sys.executable, "-m", "experiments.bench_unlearn", "--workdir", run["workdir"],
       "--other-workdir", run["workdir"]], cwd=REPO_ROOT, capture_output=True, text=True,
      timeout=120, check=False)
  assert same.returncode != 0 and "it must be a run with another seed" in same.stderr
  unknown = subprocess.run(
      [sys.executable, "-m", "experiments.bench_unlearn", "--workdir", run["workdir"],
       "--settings", "default,turbo"], cwd=REPO_ROOT, capture_output=True, text=True,
      timeout=120, check=False)
  assert unknown.returncode != 0 and "--settings must name some of" in unknown.stderr


# --- the spread of retraining -------------------------------------------------------


def test_retrain_seeds_audits_more_retrainings_beside_the_run(run, tmp_path):
  from experiments import retrain_seeds  # pylint: disable=g-import-not-at-top
  config, metrics = run["config"], run["metrics"]
  workdir = _copy_phases(run["workdir"], str(tmp_path),
                         ["train", "shadow", "unlearn", "retrain", "evaluate"])
  before = snapshot(workdir)
  results = retrain_seeds.retrain_spread(config, workdir, num_seeds=2)
  changed = _changed(before, snapshot(workdir))
  # Only its own directories: the two new retrainings and its report.
  assert {p.split(os.sep)[0] for p in changed} == {"retrain_seed1", "retrain_seed2",
                                                    "retrain_seeds"}
  # Training seed 0 is the retrain phase's model, audited as the evaluate phase does.
  assert results["test_accuracy_on"] == "all classes"  # (the class scenario: the other classes)
  seed0, auc_key = results["retrained"]["0"], "attack_forget_vs_matched_nonmembers"
  assert seed0["lira_auc"] == pytest.approx(metrics[auc_key]["retrained"]["lira"]["auc"])
  for oracle in audit.ORACLES:
    assert seed0[f"fr_{oracle}"] == metrics["forgetting_rate"]["retrained"][oracle]["rate"]
  unlearned = results["unlearned"]
  assert unlearned["lira_auc"] == pytest.approx(metrics[auc_key]["unlearned"]["lira"]["auc"])
  assert unlearned["ulira_vs_each_retraining"][0] == pytest.approx(metrics["ulira"]["auc"])
  # The other retrainings: same retained members and steps, another initialization.
  data = run["data"]
  seed0_params, _ = common.load_phase_params(config, workdir, "retrain", data)
  for stream in (1, 2):
    phase = retrain_seeds.retrain_phase_name(stream)
    summary = _load_json(workdir, phase, "summary.json")
    assert summary["num_examples"] == len(data.splits.retain)
    assert summary["steps"] == config.train.steps
    params, meta = common.load_phase_params(config, workdir, phase, data)
    assert meta["seed_stream"] == stream
    assert not np.allclose(np.asarray(jax.tree.leaves(params)[0]),
                           np.asarray(jax.tree.leaves(seed0_params)[0]))
  aucs = [results["retrained"][k]["lira_auc"] for k in ("0", "1", "2")]
  stats = results["retrained_stats"]["lira_auc"]
  assert stats["mean"] == pytest.approx(np.mean(aucs))
  assert stats["std"] == pytest.approx(np.std(aucs, ddof=1))
  assert results["retrained_max_pairwise_auc_difference"] == pytest.approx(
      max(aucs) - min(aucs))
  assert unlearned["auc_distance_to_retrained_mean"] == pytest.approx(
      abs(unlearned["lira_auc"] - np.mean(aucs)))
  with open(os.path.join(workdir, "retrain_seeds", "report.md")) as f:
    report_text = f.read()
  assert "retrained, training seed 2" in report_text and "Forsaken" in report_text

  # A rerun reuses the finished retrainings: no checkpoint is written again.
  checkpoints_before = {s: snapshot(common.checkpoint_dir(workdir, f"retrain_seed{s}"))
                        for s in (1, 2)}
  again = retrain_seeds.retrain_spread(config, workdir, num_seeds=2)
  for stream, snap in checkpoints_before.items():
    assert snapshot(common.checkpoint_dir(workdir, f"retrain_seed{stream}")) == snap
  assert again["retrained_stats"] == results["retrained_stats"]
  with pytest.raises(ValueError, match="num_seeds must be at least 1"):
    retrain_seeds.retrain_spread(config, workdir, num_seeds=0)


def test_relearn_audit_of_one_model_against_the_original_reference(run):
  """The benchmark's path: one model attacked alone, read against the original's
  accuracy computed once, gives the same figures as attacking it beside the original."""
  from experiments import relearn  # pylint: disable=g-import-not-at-top
  config, data = run["config"], run["data"]
  models = relearn.run_models(config, run["workdir"], data)
  apply_fn = common.create_model(common.model_spec(config, data)).apply_fn
  setting = next(iter(config.evaluate.relearn.settings))
  both = relearn.relearn_audit(config, data, apply_fn,
                               {"original": models["original"], "model": models["unlearned"]},
                               settings=[setting])
  reference = relearn.reference_accuracy(config, data, apply_fn, models["original"])
  assert reference == pytest.approx(
      {name: both["curves"][setting]["original"][name]["accuracy"][0]
       for name in ("forget", "control")}, abs=1e-6)
  alone = relearn.relearn_audit(config, data, apply_fn, {"model": models["unlearned"]},
                                settings=[setting], original_accuracy=reference)
  for name in ("forget", "control"):
    got, want = alone["curves"][setting]["model"][name], both["curves"][setting]["model"][name]
    # Batched and single programs round differently: a step or two apart at most.
    for key in ("steps_to_original", "steps_to_80"):
      assert (got[key] is None) == (want[key] is None)
      if got[key] is not None:
        assert abs(got[key] - want[key]) <= 2
  with pytest.raises(ValueError, match="must include 'original'"):
    relearn.relearn_audit(config, data, apply_fn, {"model": models["unlearned"]})
