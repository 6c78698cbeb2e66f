r"""Ablations of the unlearning step on a finished run, audited side by side.

    python -m experiments.sweep_unlearn --workdir runs/default [--config ...]

Reads the run's train, shadow and retrain phases (read-only), runs Forsaken
once per variant below (each a set of overrides of the config's `unlearn`
section), then once per entry of the config's `sweep.variants` (a scenario's
own trade-offs), plus the removal step alone and two baselines, applies the
evaluate phase's oracles (fitted once on the original model) and the
relearning attack (the first setting of `evaluate.relearn`) to every result,
and prints one table, also written to `<workdir>/sweep/results.md`, with a
plot of each row's relearning resistance against its wall time
(`sweep/tradeoff.png`). This is where the choices documented in
docs/METHOD.md are measured against the alternatives, including the public
port's defaults. Writes nothing else.
"""

import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import optax

from experiments import cli, common, relearn, report, unlearners
from experiments import evaluate as evaluate_phase
from experiments import unlearn as unlearn_phase
from forsaken_jax import parallel, unlearn as fj_unlearn
from forsaken_jax.mia import audit

# name -> overrides of config.unlearn
VARIANTS: dict[str, dict[str, Any]] = {
    "Forsaken, this config": {},
    "without the removal step (the paper's Forsaken)": {"shrink": 1.0, "perturb": 0.0,
                                                        "repair_steps": 0},
    "removal step: repair only (no shrink, no perturbation)": {"shrink": 1.0, "perturb": 0.0},
    "removal step: shrink without the perturbation": {"perturb": 0.0},
    "removal step: shrink 0.2": {"shrink": 0.2},
    "removal step: repair from 1e-3": {"repair_lr": 1e-3},
    "removal step: repair from 3e-3, 500 steps": {"repair_lr": 3e-3, "repair_steps": 500},
    "removal step: repair on the loop's 10 batches at a constant rate": {
        "repair_batches": 10, "repair_schedule": "constant"},
    "objective: static confidence matching": {"objective": "confidence_matching",
                                              "threshold_weight": 0.0},
    "objective: relative, without the hinge": {"threshold_weight": 0.0},
    "objective: paper (KL of mean posterior)": {"objective": "paper", "threshold_weight": 0.0},
    "no neuron mask (all units)": {"mask_fraction": 1.0},
    "neuron mask 10%": {"mask_fraction": 0.1},
    "acceptance: best so far (port)": {"acceptance": "best_so_far"},
    "dense generator (port's design)": {"generator": "dense",
                                        "generator_kwargs": {"hidden": 64}},
    "port's defaults (paper objective, eta 0.01, Adam 1e-4, no retain term)": {
        "objective": "paper", "threshold_weight": 0.0, "lr": 0.01, "l1_weight": 0.01,
        "retain_weight": 0.0, "generator_lr": 1e-4, "acceptance": "best_so_far",
        "mask_fraction": 1.0},
}
# Gradient-ascent baselines: (step size as a multiple of unlearn.lr, steps).
GRADIENT_ASCENT_RUNS = ((1.0, 10), (1.0, 30), (10.0, 10))


def check_variants(variants: dict[str, dict[str, Any]], config: ml_collections.ConfigDict
                   ) -> None:
  """Raises ValueError for a variant that overrides no `unlearn` setting or sets a bad one."""
  for name, overrides in variants.items():
    try:
      unlearn_phase.check_config(unlearners.with_unlearn(config, overrides))
    except ValueError as e:
      raise ValueError(f"sweep variant {name!r}: {e}") from None


def sweep(config: ml_collections.ConfigDict, workdir: str, *,
          only: list[str] | None = None) -> list[dict[str, Any]]:
  """Runs every variant and baseline; returns one row per model.

  Args:
    config: the run's config (its `sweep.variants` run after `VARIANTS`).
    workdir: the run directory; writes only `<workdir>/sweep/`.
    only: names of the standard `VARIANTS` to run (default all); every
      variant is still checked first.
  """
  variants = {**VARIANTS, **config.sweep.variants.to_dict()}
  check_variants(variants, config)
  if only is not None:
    variants = {name: v for name, v in variants.items()
                if name in only or name not in VARIANTS}
  data, _ = common.load_upstream_data(config, workdir)
  spec = common.model_spec(config, data)
  model = common.create_model(spec)
  original, _ = common.load_phase_params(config, workdir, "train", data)
  retrained, _ = common.load_phase_params(config, workdir, "retrain", data)
  ctx = evaluate_phase.build_audit(config, workdir, data, original)
  images = data.pool.images
  before = evaluate_phase.audit_model(ctx, images, original)
  seconds = report.phase_seconds(workdir)

  finite_models = {}  # name -> params, for the relearning attack

  def row(name, params, wall, extra=""):
    if not all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(params)):
      common.log(f"[sweep] {name}: parameters are not finite (diverged)")
      return {"model": name, "test": None, "forget": None, "lira_auc": None, "seconds": wall,
              "note": f"{extra}; diverged (non-finite parameters)",
              **{f"fr_{oracle}": None for oracle in audit.ORACLES}}
    finite_models[name] = params
    result = evaluate_phase.audit_model(ctx, images, params)
    out = {"model": name, "test": result.accuracy["test"], "forget": result.accuracy["forget"],
           **evaluate_phase.forget_set_figures(ctx, before, result), "seconds": wall,
           "note": extra}
    common.log(f"[sweep] {name}: test {out['test']:.4f}, LiRA AUC {out['lira_auc']:.3f}, "
               + ", ".join(f"FR {o} {report.pct(out['fr_' + o])}" for o in audit.ORACLES))
    return out

  rows = [row("original", original, seconds.get("train"), "no unlearning"),
          row("retrained without the forget set", retrained, seconds.get("retrain"),
              "the ceiling")]
  for name, overrides in variants.items():
    start = time.perf_counter()
    params, info = unlearners.forsaken_request(config, data, spec, original, overrides)
    wall = time.perf_counter() - start
    rows.append(row(name, params, wall,
                    f"{info['steps']} steps, {info['accepted']} accepted, stop: "
                    f"{info['stop_reason']}"))

  # The removal step alone, on the original model: what the dummy gradient
  # adds to it.
  uc = config.unlearn
  if uc.shrink != 1.0 or uc.perturb or uc.repair_steps:
    start = time.perf_counter()
    prep = unlearn_phase.prepare(config, data, spec, original)
    params = unlearn_phase.finish(prep, prep.state).params
    rows.append(row("the removal step alone (no dummy gradient)", params,
                    time.perf_counter() - start, "ablation"))
  # Gradient ascent on the forget loss: the usual lower bar.
  forget = unlearn_phase.forget_batch(data, data.splits.forget)
  for multiple, steps in GRADIENT_ASCENT_RUNS:
    start = time.perf_counter()
    ascend = fj_unlearn.make_gradient_ascent_step(model.apply_fn, lr=uc.lr * multiple)
    params = original
    for _ in range(steps):
      params, _ = parallel.block(ascend(params, forget))
    rows.append(row(f"gradient ascent, {steps} steps (lr {uc.lr * multiple:g})", params,
                    time.perf_counter() - start, "baseline"))
  # Fine-tuning on retained data only.
  tune = fj_unlearn.make_finetune_step(model.apply_fn, optax.adam(config.train.learning_rate))
  retain_idx = data.splits.retain
  rng = np.random.default_rng([config.seed, 5])
  start = time.perf_counter()
  params, opt_state = original, optax.adam(config.train.learning_rate).init(original)
  for _ in range(100):
    idx = rng.choice(retain_idx, size=uc.batch_size, replace=False)
    params, opt_state, _ = parallel.block(
        tune(params, opt_state, {"image": images[idx], "label": data.pool.labels[idx]}))
  rows.append(row("fine-tuning on retained data, 100 steps", params, time.perf_counter() - start,
                  "baseline"))

  first = next(iter(config.evaluate.relearn.settings))
  models = {"original": original, **finite_models}
  curves = relearn.relearn_audit(config, data, model.apply_fn, models,
                                 settings=[first])["curves"][first]
  for r in rows:
    r["relearn"] = curves[r["model"]] if r["model"] in finite_models else None
  table = markdown_table(rows, relearn_budget=config.evaluate.relearn.steps,
                         relearn_setting=first)
  common.log(table)
  if common.is_main_process():
    os.makedirs(os.path.join(workdir, "sweep"), exist_ok=True)
    with open(os.path.join(workdir, "sweep", "results.md"), "w") as f:
      f.write(table + "\n")
    report.plot_tradeoff(os.path.join(workdir, "sweep"), rows,
                         budget=config.evaluate.relearn.steps)
  return rows


def markdown_table(rows: list[dict[str, Any]], *, relearn_budget: int,
                   relearn_setting: str) -> str:
  """The sweep's rows as a markdown table."""
  lines = ["| model | test acc. | forget acc. | FR Shokri | FR LiRA | FR loss | "
           f"LiRA AUC forget vs look-alikes | relearning ({relearn_setting}): steps to 80% "
           "(look-alikes) | forget acc. after 100 relearning steps | wall s | note |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
  for r in rows:
    wall = "n/a" if r["seconds"] is None else f"{r['seconds']:.1f}"
    rl = r.get("relearn")
    steps = after = "n/a"
    if rl:
      steps = (f"{report.steps_label(rl['forget'].get('steps_to_80'), relearn_budget)} "
               f"({report.steps_label(rl['control'].get('steps_to_80'), relearn_budget)})")
      after = report.pct(rl["forget"].get("accuracy_at_100"))
    lines.append(
        f"| {r['model']} | {report.pct(r['test'])} | {report.pct(r['forget'])} | "
        f"{report.pct(r['fr_shokri'])} | {report.pct(r['fr_lira'])} | {report.pct(r['fr_loss'])} | "
        f"{'n/a' if r['lira_auc'] is None else format(r['lira_auc'], '.3f')} | {steps} | {after} | "
        f"{wall} | {r['note']} |")
  return "\n".join(lines)


if __name__ == "__main__":
  cli.run(sweep)
