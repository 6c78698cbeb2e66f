"""experiments.bench_federated: the `:quick` run, in-process, on 8 fake CPU devices."""

import json
import math
import os

import jax
import pytest

from experiments import bench_federated


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("bench_federated"))
  config = bench_federated.get_config("quick")
  config.bench.progress = False
  cache_before = jax.config.jax_enable_compilation_cache
  result = bench_federated.bench_federated(config, workdir)
  return {"config": config, "workdir": workdir, "result": result, "cache_before": cache_before,
          "cache_after": jax.config.jax_enable_compilation_cache}


def test_table_and_json(run):
  config, out = run["config"], os.path.join(run["workdir"], "bench_federated")
  assert sorted(os.listdir(run["workdir"])) == ["bench_federated"]
  assert sorted(os.listdir(out)) == ["results.json", "results.md"]
  with open(os.path.join(out, "results.md")) as f:
    lines = f.read().strip().splitlines()
  assert lines[0] == bench_federated.TABLE_HEADER
  assert len(lines) == 2 + len(config.bench.clients)
  assert all(line.count("|") == lines[0].count("|") for line in lines)
  assert run["result"]["table"] == "\n".join(lines)

  with open(os.path.join(out, "results.json")) as f:
    results = json.load(f)
  assert results["backend"]["device_count"] == jax.device_count()
  assert [c["clients"] for c in results["cells"]] == list(config.bench.clients)
  for cell in results["cells"]:
    # The conftest's 8 fake devices: the client axis is also split over a mesh.
    assert sorted(cell["sides"]) == sorted([bench_federated.VMAPPED, bench_federated.SEQUENTIAL,
                                            bench_federated.SHARDED])
    assert cell["sides"][bench_federated.SHARDED]["devices"] == min(cell["clients"], 8)
    for side in cell["sides"].values():
      assert len(side["warm_seconds"]) == config.bench.repeats
      assert side["compile_seconds"] > 0 and side["first_call_seconds"] > 0
      assert math.isfinite(side["warm_median_seconds"]) and side["warm_median_seconds"] > 0
    assert cell["sequential_over_vmapped"] > 0


def test_sides_agree(run):
  for cell in run["result"]["cells"]:
    diffs = cell["max_abs_diff_vs_vmapped"]
    assert sorted(diffs) == [bench_federated.SEQUENTIAL, bench_federated.SHARDED]
    assert max(diffs.values()) <= 1e-5, (cell["clients"], diffs)


def test_leaves_the_compilation_cache_setting(run):
  assert run["cache_after"] == run["cache_before"]


def test_shard_devices():
  assert bench_federated.shard_devices(20, 8) == 5
  assert bench_federated.shard_devices(100, 8) == 5
  assert bench_federated.shard_devices(7, 4) == 1
  assert bench_federated.shard_devices(4, 8) == 4
