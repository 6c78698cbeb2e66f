r"""Unlearning wall time: first run vs a warm compilation cache, against retraining.

    python -m experiments.bench_unlearn --workdir runs/default [--config ...] [--repeats 2]
        [--config.section.key=value ...]

The unlearn phase's wall time includes tracing and compiling its programs. A
first request on a machine pays XLA compilation; repeating it loads the
programs from JAX's persistent cache (the experiments keep one) and pays only
tracing. (The neuron mask is compiled into the loop, so a request with
another forget set, hence another mask, compiles the loop again.) This
script reruns the unlearn phase of a finished run (its train and retrain
phases are read, never written) in fresh processes, each in a scratch
workdir holding a copy of the train phase:

* for `unlearn.fast_compile` False (the default) and True (XLA optimization
  level 0), side by side;
* once with an empty compilation cache ("first run"), then `--repeats` times
  with the cache that run filled ("warm cache", median reported).

Other `--config.*` overrides are passed on to the unlearn phase. It prints
the unlearn phase's own timing (setup and total, as in its
`summary.json`) and the total as a share of the run's retraining time. The
scratch directories are removed afterwards.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile


def _unlearn_once(config: str, workdir: str, cache_dir: str, fast_compile: bool,
                  overrides: list[str]) -> dict:
  """Runs `experiments.unlearn` in a fresh process; returns its summary."""
  shutil.rmtree(os.path.join(workdir, "unlearn"), ignore_errors=True)
  env = {**os.environ, "FORSAKEN_JAX_COMPILATION_CACHE": cache_dir}
  subprocess.run([sys.executable, "-m", "experiments.unlearn", "--config", config,
                  "--workdir", workdir, f"--config.unlearn.fast_compile={fast_compile}",
                  "--config.train.progress=False", *overrides],
                 env=env, check=True, stdout=subprocess.DEVNULL)
  with open(os.path.join(workdir, "unlearn", "summary.json")) as f:
    return json.load(f)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True, help="a finished run (train and retrain)")
  parser.add_argument("--config", default=os.path.join(os.path.dirname(__file__), "configs",
                                                       "default.py"))
  parser.add_argument("--repeats", type=int, default=2, help="warm-cache runs per setting")
  args, overrides = parser.parse_known_args()
  unknown = [a for a in overrides if not a.startswith("--config.")]
  if unknown:
    parser.error(f"unrecognized arguments: {' '.join(unknown)}")
  retrain_summary = os.path.join(args.workdir, "retrain", "summary.json")
  for needed in (os.path.join(args.workdir, "train"), retrain_summary):
    if not os.path.exists(needed):
      raise SystemExit(f"{needed} is missing: run the pipeline on {args.workdir} first")
  with open(retrain_summary) as f:
    retrain_seconds = json.load(f)["train_seconds"]

  rows = []
  with tempfile.TemporaryDirectory(prefix="bench_unlearn_") as scratch:
    workdir = os.path.join(scratch, "run")
    os.makedirs(workdir)
    shutil.copytree(os.path.join(args.workdir, "train"), os.path.join(workdir, "train"))
    for fast_compile in (False, True):
      cache_dir = os.path.join(scratch, f"cache_{fast_compile}")
      first = _unlearn_once(args.config, workdir, cache_dir, fast_compile, overrides)
      warm = [_unlearn_once(args.config, workdir, cache_dir, fast_compile, overrides)
              for _ in range(args.repeats)]
      for label, runs in (("first run", [first]), ("warm cache", warm)):
        total = statistics.median(r["unlearn_seconds"] for r in runs)
        rows.append((fast_compile, label, statistics.median(r["setup_seconds"] for r in runs),
                     total, runs[0]["steps"]))
        print(f"fast_compile={fast_compile} {label}: {total:.2f} s", flush=True)

  print(f"\nretraining (from {retrain_summary}): {retrain_seconds:.1f} s\n")
  print("| unlearn.fast_compile | compilation cache | setup s | unlearning s | steps "
        "| share of retraining |")
  print("| --- | --- | ---: | ---: | ---: | ---: |")
  for fast_compile, label, setup, total, steps in rows:
    print(f"| {fast_compile} | {label} | {setup:.2f} | {total:.2f} | {steps} "
          f"| {100 * total / retrain_seconds:.1f}% |")


if __name__ == "__main__":
  main()
