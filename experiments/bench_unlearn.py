r"""Unlearning wall time: first run vs a warm compilation cache, against retraining.

    python -m experiments.bench_unlearn --workdir runs/default [--config ...] [--repeats 2]
        [--other-workdir runs/default_seed1] [--config.section.key=value ...]

The unlearn phase's wall time includes tracing and compiling its programs. A
first request on a machine pays XLA compilation; later ones load the
programs from JAX's persistent cache (the experiments keep one) and pay only
tracing. The programs depend on the model's architecture and the sizes of
the inputs, not on the forget set: the neuron mask is a runtime input padded
to a fixed capacity. This script reruns the unlearn phase of a finished run
(its train and retrain phases are read, never written) in fresh processes,
each in a scratch workdir holding a copy of the train phase:

* for `unlearn.fast_compile` False (the default) and True (XLA optimization
  level 0), side by side;
* once with an empty compilation cache ("first run"), then `--repeats` times
  with the cache that run filled ("warm cache", median reported);
* with `--other-workdir`, a finished run of the same config with another
  seed (another model, forget set and mask, same architecture), once with
  the cache the first run filled ("another forget set"), against that run's
  own retraining time.

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


def _retrain_seconds(workdir: str) -> float:
  path = os.path.join(workdir, "retrain", "summary.json")
  if not os.path.exists(os.path.join(workdir, "train")) or not os.path.exists(path):
    raise SystemExit(f"{workdir} lacks a finished train or retrain phase: run the pipeline on "
                     "it first")
  with open(path) as f:
    return json.load(f)["train_seconds"]


def _train_config(workdir: str) -> dict:
  """The config the run's model was trained with (from its checkpoint's meta)."""
  from forsaken_jax import checkpoints  # pylint: disable=g-import-not-at-top

  manager = checkpoints.open_manager(os.path.join(workdir, "train", "checkpoints"),
                                     read_only=True)
  return checkpoints.read_meta(manager)["config"]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True, help="a finished run (train and retrain)")
  parser.add_argument("--config", default=os.path.join(os.path.dirname(__file__), "configs",
                                                       "default.py"))
  parser.add_argument("--repeats", type=int, default=2, help="warm-cache runs per setting")
  parser.add_argument("--other-workdir", default="",
                      help="a finished run of the same config with another seed")
  args, overrides = parser.parse_known_args()
  unknown = [a for a in overrides if not a.startswith("--config.")]
  if unknown:
    parser.error(f"unrecognized arguments: {' '.join(unknown)}")
  runs_to_time = [args.workdir] + ([args.other_workdir] if args.other_workdir else [])
  retrain_seconds = {run: _retrain_seconds(run) for run in runs_to_time}
  other_overrides = []
  if args.other_workdir:
    seed = _train_config(args.other_workdir)["seed"]
    if seed == _train_config(args.workdir)["seed"]:
      parser.error(f"--other-workdir {args.other_workdir} has the seed of {args.workdir}: it must "
                   "be a run with another seed (another forget set)")
    other_overrides = [f"--config.seed={seed}"]

  rows = []
  with tempfile.TemporaryDirectory(prefix="bench_unlearn_") as scratch:
    workdirs = {}
    for i, run in enumerate(runs_to_time):
      workdirs[run] = os.path.join(scratch, f"run{i}")
      shutil.copytree(os.path.join(run, "train"), os.path.join(workdirs[run], "train"))
    for fast_compile in (False, True):
      cache_dir = os.path.join(scratch, f"cache_{fast_compile}")
      once = lambda run, extra=(): _unlearn_once(args.config, workdirs[run], cache_dir,
                                                 fast_compile, [*overrides, *extra])
      timed = [("first run", args.workdir, [once(args.workdir)]),
               ("warm cache", args.workdir, [once(args.workdir) for _ in range(args.repeats)])]
      if args.other_workdir:
        timed.append(("another forget set", args.other_workdir,
                      [once(args.other_workdir, other_overrides)]))
      for label, run, results in timed:
        total = statistics.median(r["unlearn_seconds"] for r in results)
        rows.append((fast_compile, label, run,
                     statistics.median(r["setup_seconds"] for r in results), total,
                     results[0]["steps"], total / retrain_seconds[run]))
        print(f"fast_compile={fast_compile} {label}: {total:.2f} s", flush=True)

  print()
  for run, seconds in retrain_seconds.items():
    print(f"retraining (from {run}/retrain/summary.json): {seconds:.1f} s")
  print("\n| unlearn.fast_compile | compilation cache | run | setup s | unlearning s | steps "
        "| share of retraining |")
  print("| --- | --- | --- | ---: | ---: | ---: | ---: |")
  for fast_compile, label, run, setup, total, steps, share in rows:
    print(f"| {fast_compile} | {label} | {run} | {setup:.2f} | {total:.2f} | {steps} "
          f"| {100 * share:.1f}% |")


if __name__ == "__main__":
  main()
