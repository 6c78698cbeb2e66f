r"""Unlearning wall time on a first run and with a warm cache, against retraining side by side.

    python -m experiments.bench_unlearn --workdir runs/default [--config ...] [--repeats 2]
        [--retrain-repeats 3] [--other-workdir runs/default_seed1]
        [--config.section.key=value ...]

The unlearn phase's wall time includes tracing and compiling its programs. A
first request on a machine pays XLA compilation; later ones load the
programs from JAX's persistent cache (the experiments keep one) and pay only
tracing. The programs depend on the model's architecture and the sizes of
the inputs (the forget set's size included), not on which examples are
forgotten: the neuron mask is a runtime input padded to a fixed capacity.
This script reruns the unlearn and retrain phases of a finished run (its
train phase is read, never written) in fresh processes, each in a scratch
workdir holding a copy of the train phase:

* the retrain phase, `--retrain-repeats` times (default 3), interleaved
  with the unlearning runs (one before them, one after each setting below):
  the baseline is measured in the same session as the unlearning, not read
  from the run, and the machine's drift during the session shows in the
  spread of the retrainings (the first one also compiles its train step, a
  fraction of a second);
* the unlearn phase under each of `--settings` (default: "default" and
  "fast_compile", i.e. `unlearn.fast_compile` True: XLA optimization level
  0; "paper": the paper's Forsaken without the removal step, to time what
  that step costs; "while_loop" / "host_loop": `unlearn.host_loop` False /
  True, the loops as one program or driven from Python): once with an
  empty compilation cache ("first run"), then `--repeats` times with the
  cache that run filled ("warm cache", median reported);
* with `--other-workdir`, a finished run of the same config with another
  seed (another model, forget set and mask, same architecture and sizes),
  once with the cache the first run filled ("another forget set").

Each unlearning time is divided by the median retraining time, and by the
slowest and the fastest retraining for the range (the other run's
retraining trains as many examples for as many steps, at the same cost).
Where the time goes: each phase sums JAX's own timings of the programs it
builds (`compile_seconds` in its summary); the table gives the XLA
compilation (with a warm cache: loading the compiled programs) and the
tracing + lowering of the unlearn phase, summed over its programs (work, not
wall time: the loop compiles on a thread beside the setup), and the first
line the same XLA figure for each retraining.
Other `--config.*` overrides are passed on to both phases. The scratch
directories are removed afterwards.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile


# --settings: name -> overrides of the unlearn phase's config.
SETTINGS = {
    "default": [],
    "fast_compile": ["--config.unlearn.fast_compile=True"],
    "paper": ["--config.unlearn.shrink=1.0", "--config.unlearn.perturb=0.0",
              "--config.unlearn.repair_steps=0"],
    # How the generator's loop and the repair are driven (unlearn.host_loop).
    "while_loop": ["--config.unlearn.host_loop=False"],
    "host_loop": ["--config.unlearn.host_loop=True"],
}


def _run_phase(phase: str, config: str, workdir: str, cache_dir: str, args: list[str]) -> dict:
  """Runs `experiments.<phase>` from scratch in a fresh process; returns its summary."""
  shutil.rmtree(os.path.join(workdir, phase), ignore_errors=True)
  env = {**os.environ, "FORSAKEN_JAX_COMPILATION_CACHE": cache_dir}
  subprocess.run([sys.executable, "-m", f"experiments.{phase}", "--config", config,
                  "--workdir", workdir, "--config.train.progress=False", *args],
                 env=env, check=True, stdout=subprocess.DEVNULL)
  with open(os.path.join(workdir, phase, "summary.json")) as f:
    return json.load(f)


def _check_trained(workdir: str) -> None:
  if not os.path.exists(os.path.join(workdir, "train", "checkpoints")):
    raise SystemExit(f"{workdir} lacks a finished train phase: run the pipeline on it first")


def _train_config(workdir: str) -> dict:
  """The config the run's model was trained with (from its checkpoint's meta)."""
  from forsaken_jax import checkpoints  # pylint: disable=g-import-not-at-top

  manager = checkpoints.open_manager(os.path.join(workdir, "train", "checkpoints"),
                                     read_only=True)
  return checkpoints.read_meta(manager)["config"]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True, help="a run with a finished train phase")
  parser.add_argument("--config", default=os.path.join(os.path.dirname(__file__), "configs",
                                                       "default.py"))
  parser.add_argument("--repeats", type=int, default=2, help="warm-cache runs per setting")
  parser.add_argument("--retrain-repeats", type=int, default=3,
                      help="retrainings timed, interleaved with the unlearning runs")
  parser.add_argument("--other-workdir", default="",
                      help="a finished run of the same config with another seed")
  parser.add_argument("--settings", default="default,fast_compile",
                      help=f"comma-separated unlearn settings to time, of {', '.join(SETTINGS)}")
  args, overrides = parser.parse_known_args()
  unknown = [a for a in overrides if not a.startswith("--config.")]
  if unknown:
    parser.error(f"unrecognized arguments: {' '.join(unknown)}")
  if args.repeats < 1 or args.retrain_repeats < 1:
    parser.error("--repeats and --retrain-repeats must be at least 1")
  settings = [name.strip() for name in args.settings.split(",") if name.strip()]
  if not settings or any(name not in SETTINGS for name in settings):
    parser.error(f"--settings must name some of {', '.join(SETTINGS)}; got {args.settings!r}")
  runs_to_time = [args.workdir] + ([args.other_workdir] if args.other_workdir else [])
  for run in runs_to_time:
    _check_trained(run)
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
    retrain_cache = os.path.join(scratch, "cache_retrain")
    retrainings = []  # the retrain phase's summaries

    def retrain():
      retrainings.append(_run_phase("retrain", args.config, workdirs[args.workdir],
                                    retrain_cache, overrides))
      print(f"retraining {len(retrainings)}: {retrainings[-1]['train_seconds']:.1f} s",
            flush=True)

    retrain()
    for setting in settings:
      cache_dir = os.path.join(scratch, f"cache_{setting}")
      once = lambda run, extra=(): _run_phase(
          "unlearn", args.config, workdirs[run], cache_dir,
          [*SETTINGS[setting], *overrides, *extra])
      timed = [("first run", args.workdir, [once(args.workdir)]),
               ("warm cache", args.workdir, [once(args.workdir) for _ in range(args.repeats)])]
      if args.other_workdir:
        timed.append(("another forget set", args.other_workdir,
                      [once(args.other_workdir, other_overrides)]))
      for label, run, results in timed:
        rows.append((setting, label, run,
                     statistics.median(r["setup_seconds"] for r in results),
                     statistics.median(r["unlearn_seconds"] for r in results),
                     statistics.median(r["compile_seconds"]["xla_compiling"] for r in results),
                     statistics.median(r["compile_seconds"]["tracing"]
                                       + r["compile_seconds"]["lowering"] for r in results),
                     results[0]["steps"]))
        print(f"{setting} {label}: {rows[-1][4]:.2f} s", flush=True)
      if len(retrainings) < args.retrain_repeats:
        retrain()
    while len(retrainings) < args.retrain_repeats:
      retrain()

  retrain_seconds = [r["train_seconds"] for r in retrainings]
  retrain_compile = [r["compile_seconds"]["xla_compiling"] for r in retrainings]
  baseline = statistics.median(retrain_seconds)
  print()
  print(f"retraining {args.workdir}'s model in this session, {len(retrain_seconds)} runs: "
        f"{', '.join(f'{t:.2f}' for t in retrain_seconds)} s; median {baseline:.2f} s "
        f"(XLA compilation in them: {', '.join(f'{t:.2f}' for t in retrain_compile)} s)")
  print("\n| setting | compilation cache | run | setup s | unlearning s "
        "| XLA compiling or cache loading s | tracing + lowering s | steps "
        "| share of the median retraining "
        "(range) |")
  print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
  for setting, label, run, setup, total, compiling, tracing, steps in rows:
    print(f"| {setting} | {label} | {run} | {setup:.2f} | {total:.2f} | {compiling:.2f} "
          f"| {tracing:.2f} | {steps} "
          f"| {100 * total / baseline:.1f}% ({100 * total / max(retrain_seconds):.1f}-"
          f"{100 * total / min(retrain_seconds):.1f}%) |")

if __name__ == "__main__":
  main()
