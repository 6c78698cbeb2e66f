"""experiments.bench_cost: the `:quick` cost curve end to end, in-process, and its resumption."""

import json
import math
import os

import jax
import pytest

from experiments import bench_cost
from experiments.configs import bench_cost as bench_cost_config
from tests import file_snapshots

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What the benchmark writes; none of these may appear outside the workdir.
OUTPUTS = ("cells.json", "results.md", "results.json", "cost.png")


def _outputs_in_repo():
  """The benchmark's output files anywhere in the repository (others edit it meanwhile)."""
  return {p for p in file_snapshots.snapshot(REPO) if os.path.basename(p) in OUTPUTS}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  root = tmp_path_factory.mktemp("bench_cost")
  workdir = str(root / "workdir")
  cwd = root / "cwd"  # relative paths would land here
  cwd.mkdir()
  config = bench_cost_config.get_config("quick")
  config.dataset.data_dir = os.path.join(workdir, "tfds")
  config.train.progress = False
  repo_before, cache_before = _outputs_in_repo(), jax.config.jax_compilation_cache_dir
  previous_cwd = os.getcwd()
  os.chdir(cwd)
  try:
    first = bench_cost.bench_cost(config, workdir)
    second = bench_cost.bench_cost(config, workdir)
  finally:
    os.chdir(previous_cwd)
  return {"config": config, "workdir": workdir, "root": str(root), "cwd": str(cwd),
          "first": first, "second": second, "repo_before": repo_before,
          "repo_after": _outputs_in_repo(), "cache_before": cache_before,
          "cache_after": jax.config.jax_compilation_cache_dir}


def test_table_and_json(run):
  config, out = run["config"], os.path.join(run["workdir"], "bench_cost")
  methods = ["forsaken", *config.bench.methods.keys()]
  with open(os.path.join(out, "results.md")) as f:
    lines = f.read().strip().splitlines()
  assert lines[0] == bench_cost.TABLE_HEADER
  assert all(line.count("|") == lines[0].count("|") for line in lines)
  sizes = config.bench.sizes
  assert len(lines) == 2 + len(sizes) * (2 + len(methods))  # + original and retraining rows
  for method in methods:
    assert sum(f"| {method} |" in line for line in lines) == len(sizes)
  assert os.path.getsize(os.path.join(out, "cost.png")) > 0

  with open(os.path.join(out, "results.json")) as f:
    results = json.load(f)
  assert results["methods"] == methods
  assert [e["size"] for e in results["sizes"]] == [str(s) for s in sizes]
  for entry in results["sizes"]:
    assert entry["num_train"] == int(entry["size"]) + config.scenario.num_forget_ood
    assert entry["model"].startswith("MLP")
    retrain = entry["retrain"]
    assert retrain["seconds"] > 0 and retrain["steps"] == entry["original"]["steps"]
    assert len(retrain["curve"]) >= 1
    assert sorted(entry["methods"]) == sorted(methods)
    for method, cell in entry["methods"].items():
      assert cell["same_run_as_retraining"]
      for label in ("first", "later"):
        request = cell[label]
        for key in ("ratio", "ratio_full_recipe", "seconds"):
          assert math.isfinite(request[key]) and request[key] > 0, (method, label, key)
        assert 0 <= request["test_accuracy"] <= 1 and 0 <= request["forget_accuracy"] <= 1
      # The first request compiles; the later one finds its programs in the cell's cache.
      assert cell["first"]["compile_seconds"]["xla_compiling"] > 0
  assert run["first"]["table"] == "\n".join(lines)


def test_rerun_skips_finished_cells(run):
  config = run["config"]
  expected = len(config.bench.sizes) * (3 + len(config.bench.methods))
  assert len(run["first"]["computed"]) == expected
  assert run["second"]["computed"] == []
  assert run["second"]["table"] == run["first"]["table"]


def test_writes_only_the_workdir(run):
  assert sorted(os.listdir(run["root"])) == ["cwd", "workdir"]
  assert not os.listdir(run["cwd"])
  assert sorted(os.listdir(run["workdir"])) == ["bench_cost", "tfds"]
  out = os.path.join(run["workdir"], "bench_cost")
  assert sorted(os.listdir(out)) == ["cells.json", "cost.png", "models", "results.json",
                                     "results.md"]  # the compilation caches are gone
  assert run["repo_after"] == run["repo_before"]
  # The per-cell compilation caches leave JAX's setting as it was.
  assert run["cache_after"] == run["cache_before"]


def test_refuses_another_config(run):
  config = run["config"].copy_and_resolve_references()
  config.bench.epochs += 1
  with pytest.raises(SystemExit, match="another config"):
    bench_cost.bench_cost(config, run["workdir"])


def test_sizes_can_be_added_to_a_finished_run():
  """Cells are keyed by size: the sizes run are not part of what a cell depends on."""
  config = bench_cost_config.get_config("quick")
  more = config.copy_and_resolve_references()
  more.bench.sizes = (*config.bench.sizes, 900)
  assert bench_cost.cells_signature(more) == bench_cost.cells_signature(config)
  more.bench.epochs += 1
  assert bench_cost.cells_signature(more) != bench_cost.cells_signature(config)
