"""experiments.benchmark: every method through one (scenario, seed), the selection, resumption."""

import json
import os

import jax
import numpy as np
import pytest

from experiments import benchmark, challenge, common, unlearners
from experiments.configs import benchmark as benchmark_config


def _quick(tmp_dir: str, **changes):
  config = benchmark_config.get_config("quick")
  with config.unlocked():
    config.overrides.dataset.data_dir = os.path.join(tmp_dir, "tfds")
    config.progress = False
    config.seeds = (0,)
    config.run_scenarios = ("photos",)
    for key, value in changes.items():
      config[key] = value
  return config


# The pipeline-level run covers Forsaken and two baselines (one with extra
# state); every registered method's contract is tests/test_unlearn_methods.py's.
RUN_METHODS = ("forsaken", "finetune", "salun")


def _only(config, names):
  with config.unlocked():
    for name in list(config.methods):
      if name not in names:
        del config.methods[name]
  return config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """Three methods once on the photo scenario (one seed), then a rerun."""
  workdir = str(tmp_path_factory.mktemp("benchmark"))
  config = _only(_quick(workdir), RUN_METHODS)
  first = benchmark.benchmark(config, workdir)
  second = benchmark.benchmark(config, workdir)
  return {"config": config, "workdir": workdir, "first": first, "second": second}


def test_every_registered_method_is_benchmarked():
  for arg in (None, "quick"):
    assert set(benchmark_config.get_config(arg).methods) == set(unlearners.method_names())


def test_every_method_run_has_a_row(run):
  rows = run["first"]["results"]["photos"]
  assert list(rows) == ["original", "retrain", *benchmark.methods(run["config"])]
  assert list(rows)[2] == "forsaken"
  for name, row in rows.items():
    assert row["seeds"] == 1
    if not row["diverged"]:
      for key in ("UA", "RA", "TA", "MIA", "average_gap", "lira_auc", "seconds"):
        assert row[key] is not None and np.isfinite(row[key]["mean"]), (name, key)
  # The retrained model is the reference of the gap.
  assert rows["retrain"]["average_gap"]["mean"] == 0.0
  assert rows["original"]["average_gap"]["mean"] > 0.0


def test_rerun_computes_nothing_and_files_are_written(run):
  assert len(run["first"]["computed"]) == 2 + len(run["config"].methods)
  assert run["second"]["computed"] == []
  assert run["second"]["table"] == run["first"]["table"]
  out = os.path.join(run["workdir"], "benchmark")
  for name in ("cells.json", "results.md", "results.json", "scatter.png", "roc.png"):
    assert os.path.getsize(os.path.join(out, name)) > 0, name
  main_table, quality_table = run["first"]["table"].split("### Forgetting quality")
  assert "| retrain | — |" in quality_table
  for table in (main_table, quality_table):
    lines = [l for l in table.splitlines() if l.startswith("| ")]
    assert len({line.count("|") for line in lines}) == 1  # every row has every column
    assert sum(l.startswith("| forsaken |") for l in lines) == 1


def test_challenge_scores_every_method_once(run):
  quality = run["first"]["challenge"]["photos"]
  n = run["config"].challenge.num_models
  assert list(quality) == ["original", "retrain", *benchmark.methods(run["config"])]
  for name, row in quality.items():
    assert row["finite"] and row["num_models"] == n == 6, name
    assert 0.0 <= row["F_half"] <= 1.0 and 0.0 <= row["ulira_auc_half"] <= 1.0, name
    assert (row["seconds"] is None) == (name in ("original", "retrain"))
    if name == "retrain":  # the split-half reference has no N-model figures
      assert "F" not in row and "ulira_auc" not in row
      continue
    assert 0.0 <= row["F"] <= 1.0 and np.isfinite(row["score"]), name
    assert 0.0 <= row["ulira_auc"] <= 1.0 and 0.0 <= row["ulira_accuracy"] <= 1.0, name
    assert sum(row["points"].values()) == sum(quality["original"]["points"].values())
  assert run["second"]["challenge"] == run["first"]["challenge"]
  out = os.path.join(run["workdir"], "benchmark", "challenge")
  for name in ("cells.json", "results.json"):
    assert os.path.getsize(os.path.join(out, name)) > 0, name
  assert "N = 6 models per side" in run["first"]["table"]


def test_challenge_models_train_on_the_right_examples(run):
  """Originals see every member, retrained models every member but the forget set."""
  config = run["config"]
  sc = benchmark.scenario_config(config, "photos", config.challenge.seed)
  run_dir = os.path.join(run["workdir"], "benchmark", "runs", "photos_s0")
  data, _ = common.load_upstream_data(sc, run_dir)
  n = config.challenge.num_models
  originals, retrained, seconds = challenge.train_models(
      sc, challenge.models_directory(os.path.join(run["workdir"], "benchmark"), "photos", 0),
      data, n)  # finished: loaded, not retrained
  assert len(originals) == len(retrained) == n and seconds > 0
  plan = challenge.design(data.splits, n)
  members = np.sort(data.splits.members)
  np.testing.assert_array_equal(plan["universe"], members)
  assert plan["keep"][:n].all()
  np.testing.assert_array_equal(plan["keep"][n:].sum(1),
                                len(members) - len(data.splits.forget))
  assert not plan["keep"][n:, np.isin(members, data.splits.forget)].any()
  # Every model has its own initialization.
  first = [jax.tree.leaves(p)[0] for p in (*originals, *retrained)]
  assert len({np.asarray(x).tobytes() for x in first}) == 2 * n
  # The same models scored against themselves cannot be told apart: F = 1.
  evaluation = challenge.Evaluation(sc, data)
  figures = evaluation(retrained)
  same = challenge.score(figures, figures, data.pool.labels[data.splits.forget])
  assert same["F"] == 1.0 and same["epsilon_median"] == 0.0


def test_the_challenge_runs_alone(tmp_path):
  """No table scenario: the challenge's rows, and no table plots."""
  config = _only(_quick(str(tmp_path), run_scenarios=()), ("finetune",))
  out = benchmark.benchmark(config, str(tmp_path))
  assert out["results"] == {}
  assert list(out["challenge"]["photos"]) == ["original", "retrain", "finetune"]
  assert not os.path.exists(os.path.join(str(tmp_path), "benchmark", "scatter.png"))


def test_challenge_needs_three_models():
  splits = type("S", (), {"members": np.arange(5), "forget": np.arange(2)})()
  with pytest.raises(ValueError, match="at least 3 models"):
    challenge.design(splits, 2)


def test_cells_hold_each_models_figures(run):
  with open(os.path.join(run["workdir"], "benchmark", "cells.json")) as f:
    cells = json.load(f)["cells"]
  forsaken = cells["photos/0/forsaken"]
  assert forsaken["info"]["tuned"] == "lr" and not forsaken["info"]["selected"]
  scenario = benchmark.scenario_config(run["config"], "photos", 0)
  assert forsaken["info"]["value"] == scenario.unlearn.lr  # nothing selected: the scenario's
  # The first seed keeps LiRA's scores for the ROC plot: one per forget example.
  assert len(forsaken["lira_forget"]) == len(cells["photos/0/retrain"]["lira_forget"]) > 0
  assert 0.0 <= forsaken["UA"] <= 1.0 and forsaken["relearn_budget"] == 20


def test_changed_config_is_refused(run):
  config = _only(_quick(run["workdir"]), RUN_METHODS)
  with config.unlocked():
    config.methods.finetune.steps = 2
  with pytest.raises(SystemExit, match="another config"):
    benchmark.benchmark(config, run["workdir"])


def test_selection_picks_the_smallest_validation_gap(tmp_path):
  config = _only(_quick(str(tmp_path), select=True), ("forsaken", "finetune"))
  result = benchmark.benchmark(config, str(tmp_path))
  out = os.path.join(str(tmp_path), "benchmark", "selection")
  with open(os.path.join(out, "cells.json")) as f:
    cells = json.load(f)["cells"]
  with open(os.path.join(out, "selected.json")) as f:
    assert json.load(f) == result["selected"]
  for method in ("forsaken", "finetune"):
    trials = {c["value"]: c["gap"] for k, c in cells.items() if k.startswith(f"photos/{method}/")}
    assert len(trials) == len(config.selection.multipliers)
    assert result["selected"]["photos"][method] == min(trials, key=trials.get)
  # The validation run is its own seed, apart from the reported runs.
  assert os.path.isdir(os.path.join(out, "runs", "photos", "train"))
  assert not os.path.exists(os.path.join(str(tmp_path), "benchmark", "cells.json"))


@pytest.mark.parametrize("change, message", [
    ({"methods": {"forsaken": {"steps": 0, "tune": "lr", "base": None, "kwargs": {}},
                  "no_such_method": {"steps": 3, "tune": "lr", "base": 1e-2, "kwargs": {}}}},
     "unknown unlearning method 'no_such_method'"),
    ({"run_scenarios": ("photos", "nope")}, "unknown scenarios"),
    ({"selected": {"photos": {"nope": 1.0}}}, "unknown methods"),
    ({"seeds": ()}, "at least one seed"),
    ({"relearn_setting": "nope"}, "relearn_setting 'nope' is not one of"),
    ({"overrides": {"unlearn": {"relearn_optimizer": "bogus"}}},
     "scenario 'photos': unlearn.relearn_optimizer must be one of"),
    ({"overrides": {"train": {"stepz": 5}}}, "no train.stepz"),
    ({"challenge": {"num_models": 2, "scenarios": ("photos",), "seed": 0}},
     "at least 3 models per side"),
    ({"challenge": {"num_models": 3, "scenarios": ("nope",), "seed": 0}},
     "challenge.scenarios: unknown scenarios"),
])
def test_bad_config_is_refused_before_running(tmp_path, change, message):
  config = _quick(str(tmp_path))
  with config.unlocked():
    for key, value in change.items():
      if key == "overrides":  # added to the quick overrides, section by section
        for section, settings in value.items():
          if section not in config.overrides:
            config.overrides[section] = {}
          config.overrides[section].update(settings)
      else:
        config[key] = value
  with pytest.raises(ValueError, match=message):
    benchmark.benchmark(config, str(tmp_path))
  assert not os.path.exists(os.path.join(str(tmp_path), "benchmark"))


def test_scenario_config_applies_overrides_and_seed():
  config = benchmark_config.get_config()
  sc = benchmark.scenario_config(config, "random10", 2)
  assert sc.seed == 2 and sc.train.steps == 2_000 and sc.shadow.num_models == 8
  assert sc.scenario.kind == "random"


def test_stats_count_a_never_reached_target_as_the_budget():
  stats = benchmark._stats([10, None, 30], budget=300)
  assert stats["mean"] == pytest.approx((10 + 300 + 30) / 3) and stats["capped"] == 1
  assert benchmark._format("relearn_steps_to_80", stats).startswith("≥ ")
  assert benchmark._stats([None, None]) is None


def test_forsaken_request_refuses_unknown_settings():
  config = benchmark_config.get_config("quick")
  sc = benchmark.scenario_config(config, "photos", 0)
  with pytest.raises(ValueError, match="unknown unlearn settings"):
    unlearners.forsaken_request(sc, None, None, None, {"shrnk": 0.5})
  with pytest.raises(ValueError, match="unknown unlearning method"):
    unlearners.request(sc, "nope", {}, None, None, None)


def test_host_driven_loops_give_the_same_model(run):
  """unlearn.host_loop drives the generator and the repair from Python: same result."""
  from experiments import common  # pylint: disable=g-import-not-at-top
  sc = benchmark.scenario_config(run["config"], "photos", 0)
  run_dir = os.path.join(run["workdir"], "benchmark", "runs", "photos_s0")
  data, _ = common.load_upstream_data(sc, run_dir)
  spec = common.model_spec(sc, data)
  original, _ = common.load_phase_params(sc, run_dir, "train", data)
  overrides = {"max_steps": 4, "patience": 10, "stop_at_target": False, "repair_steps": 13}
  results = [unlearners.forsaken_request(sc, data, spec, original,
                                         {**overrides, "host_loop": host_loop})
             for host_loop in (False, True)]
  (loop_params, loop_info), (host_params, host_info) = results
  assert loop_info == host_info and host_info["steps"] == 4
  for a, b in zip(jax.tree.leaves(loop_params), jax.tree.leaves(host_params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-5)


def test_selected_values_of_methods_left_out_are_kept():
  config = _only(benchmark_config.get_config(), ("forsaken", "finetune"))
  benchmark.check_config(config)  # the other methods' selected values stay, unused
  sc = benchmark.scenario_config(config, "photos", 0)
  assert benchmark.chosen_value(config, "photos", "finetune", sc) == (
      config.selected.photos.finetune, True)
