r"""The unlearning benchmark: every method, every scenario, several seeds, one table.

    python -m experiments.benchmark --config experiments/configs/benchmark.py --workdir runs/benchmark
    python -m experiments.benchmark --config experiments/configs/benchmark.py:select --workdir runs/benchmark

For each scenario of `config.run_scenarios` and each seed, the scenario's
pipeline (train, shadow models, retrain; `experiments.main`'s phases, under
`<workdir>/benchmark/runs/<scenario>_s<seed>/`, resumable) gives the original
and the retrained model and fits the audit's oracles once
(`experiments.evaluate.build_audit`). Then every method of `config.methods`
(`experiments.unlearners.request`: Forsaken and the baselines of
`forsaken_jax.unlearn.METHODS`) unlearns the forget set from the original
model, timed from the loaded model to the unlearned one (compilation or a
compilation-cache load included, as the unlearn phase times itself), and
every model is measured the same way:

- UA, RA, TA and SalUn's MIA-efficacy, and the average gap to the retrained
  model over them (`evaluate.benchmark_figures`; TA over the other classes
  when a class is forgotten);
- the forgetting rate under each oracle (Shokri, LiRA, loss threshold) and
  LiRA's AUC between the forget set and its unseen look-alikes
  (`evaluate.forget_set_figures`);
- the relearning attack (`config.relearn_setting` of the scenario's
  `evaluate.relearn`): steps of full-batch fine-tuning on the forget set to
  80% accuracy and to the original model's accuracy there, and the accuracy
  after 100 steps;
- its wall time, against the retrain phase's training time.

Each (scenario, seed, model) is one cell of `<workdir>/benchmark/cells.json`,
saved as soon as it is done: a rerun skips finished cells (a changed config
is refused). The results are written to `<workdir>/benchmark/`:
`results.md` (mean +- std over the seeds per scenario, the best method of
each column in bold), `results.json`, `scatter.png` (forget-set against
test accuracy, retraining marked) and `roc.png` (LiRA's ROC on the forget set
against its look-alikes, per method, first seed).

With `config.select` (the `:select` config) it runs the hyperparameter
selection instead (`select`): on the validation seed `selection.seed`,
whose models are never reported, each method's tuned hyperparameter takes
`base * m` for every m of `selection.multipliers`; the value with the
smallest average gap to that seed's retrained model over UA, RA, VA and
MIA-efficacy wins, VA and MIA-efficacy's non-members being that run's
own non-member split (no test image, no audit look-alike is used). It
writes `<workdir>/benchmark/selection/` (`cells.json`, `selection.md`,
`selected.json`) and prints the values to put in `config.selected`.
"""

import importlib
import os
import time
from typing import Any

import ml_collections
import numpy as np

from experiments import challenge, cli, common, main, relearn, report, unlearners
from experiments import evaluate as evaluate_phase
from forsaken_jax import mia, parallel, train

FIXED_ROWS = ("original", "retrain")
SIGNATURE_KEYS = ("scenarios", "scenario_arg", "overrides", "methods", "relearn_setting",
                  "selected")
SELECTION_SIGNATURE_KEYS = ("scenarios", "scenario_arg", "overrides", "methods")
CHALLENGE_SIGNATURE_KEYS = ("scenarios", "scenario_arg", "overrides", "methods", "selected",
                            "challenge")
# (key, header, "closest" to retraining is best | "low" is best)
COLUMNS = (
    ("UA", "UA", "closest"), ("RA", "RA", "closest"), ("TA", "TA", "closest"),
    ("MIA", "MIA-efficacy", "closest"), ("average_gap", "avg. gap", "low"),
    ("fr_lira", "FR LiRA", "closest"), ("fr_shokri", "FR Shokri", "closest"),
    ("lira_auc", "LiRA AUC", "closest"), ("relearn_steps_to_80", "relearn: steps to 80%",
                                          "closest"),
    ("relearn_steps_to_original", "relearn: steps to the original's forget acc.", "closest"),
    ("relearn_accuracy_at_100", "forget acc. after 100 relearn steps", "closest"),
    ("seconds", "seconds", "low"),
)
PERCENT_KEYS = ("UA", "RA", "TA", "MIA", "fr_lira", "fr_shokri", "relearn_accuracy_at_100")


# ----------------------------------------------------------------------------- configs


def _merge(target: ml_collections.ConfigDict, overrides: dict[str, Any], path: str = "") -> None:
  for key, value in overrides.items():
    if key not in target:
      raise ValueError(f"benchmark overrides: the scenario config has no {path}{key}")
    if isinstance(value, dict):
      _merge(target[key], value, f"{path}{key}.")
    else:
      target[key] = value


def scenario_config(config: ml_collections.ConfigDict, scenario: str, seed: int
                    ) -> ml_collections.ConfigDict:
  """The experiment config of one scenario and seed: its module's, with `overrides`.

  Raises:
    ValueError: unknown scenario, or an override of a setting the scenario
      does not have.
  """
  if scenario not in config.scenarios:
    raise ValueError(f"unknown scenario {scenario!r}; the config has {list(config.scenarios)}")
  module = importlib.import_module(f"experiments.configs.{config.scenarios[scenario]}")
  sc = module.get_config(config.scenario_arg or None)
  with sc.unlocked():
    _merge(sc, config.overrides.to_dict())
    sc.seed = int(seed)
    sc.train.progress = bool(config.progress)
  return sc


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError for an unknown method or scenario, a bad selected value, or a
  scenario config (with the overrides) that a phase would refuse."""
  for method, spec in config.methods.items():
    unlearners.check_method(method)
    if method != unlearners.FORSAKEN and spec.steps < 1:
      raise ValueError(f"methods.{method}.steps must be at least 1, got {spec.steps}")
  unknown = sorted(set(config.run_scenarios) - set(config.scenarios))
  if unknown:
    raise ValueError(f"run_scenarios: unknown scenarios {unknown}; the config has "
                     f"{list(config.scenarios)}")
  for scenario, values in config.selected.items():
    if scenario not in config.scenarios:
      raise ValueError(f"selected: unknown scenario {scenario!r}")
    # Values of methods this run leaves out are kept (a subset may be run).
    unknown = sorted(set(values) - set(unlearners.method_names()))
    if unknown:
      raise ValueError(f"selected.{scenario}: unknown methods {unknown}")
  if not config.seeds:
    raise ValueError("seeds must name at least one seed")
  cc = config.challenge
  if cc.num_models:
    mia.epsilon_cutoff(cc.num_models)  # N >= 3
    unknown = sorted(set(cc.scenarios) - set(config.scenarios))
    if unknown:
      raise ValueError(f"challenge.scenarios: unknown scenarios {unknown}; the config has "
                       f"{list(config.scenarios)}")
  # Every scenario's own choices, here rather than when its turn comes.
  for scenario in dict.fromkeys([*scenarios(config), *challenge_scenarios(config)]):
    sc = scenario_config(config, scenario, config.seeds[0])
    try:
      main.check_config(sc)
    except ValueError as e:
      raise ValueError(f"scenario {scenario!r}: {e}") from None
    if config.relearn_setting not in sc.evaluate.relearn.settings:
      raise ValueError(f"relearn_setting {config.relearn_setting!r} is not one of scenario "
                       f"{scenario!r}'s evaluate.relearn.settings "
                       f"{list(sc.evaluate.relearn.settings)}")


def base_value(config: ml_collections.ConfigDict, method: str,
               sc: ml_collections.ConfigDict) -> float:
  """The tuned hyperparameter's starting value (Forsaken's: the scenario's own)."""
  spec = config.methods[method]
  if spec.base is None:
    return float(sc.unlearn[spec.tune])
  return float(spec.base)


def hyperparameters(config: ml_collections.ConfigDict, method: str, value: float
                    ) -> dict[str, Any]:
  """`unlearners.request`'s hyperparameters with the tuned one set to `value`."""
  spec = config.methods[method]
  kwargs = {**spec.kwargs.to_dict(), spec.tune: value}
  if method == unlearners.FORSAKEN:
    return kwargs
  return {"steps": int(spec.steps), "kwargs": kwargs}


def chosen_value(config: ml_collections.ConfigDict, scenario: str, method: str,
                 sc: ml_collections.ConfigDict) -> tuple[float, bool]:
  """`(value, selected)`: the selected value, or the base one when none was selected."""
  selected = config.selected.get(scenario, {}).get(method)
  if selected is None:
    return base_value(config, method, sc), False
  return float(selected), True


def scenarios(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The scenarios to run, in table order."""
  return tuple(config.run_scenarios)


def challenge_scenarios(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The scenarios the challenge's forgetting quality is measured on (none when N = 0)."""
  return tuple(config.challenge.scenarios) if config.challenge.num_models else ()


def methods(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The methods to run: Forsaken first, then the baselines in the config's order."""
  names = tuple(config.methods)
  return tuple(sorted(names, key=lambda n: n != unlearners.FORSAKEN))


# ----------------------------------------------------------------------------- runs


def run_pipeline(sc: ml_collections.ConfigDict, run_dir: str, *, shadows: bool) -> None:
  """The scenario's train, (shadow,) and retrain phases in `run_dir`; finished ones are skipped."""
  wanted = ("train", "shadow", "retrain") if shadows else ("train", "retrain")
  main.check_config(sc)
  common.run_phases([(name, fn) for name, fn in main.phases() if name in wanted], sc, run_dir,
                    name=f"phases of {run_dir}", report=False)


def _timed_request(config, sc, method, value, data, spec, original):
  start = time.perf_counter()
  params, info = unlearners.request(sc, method, hyperparameters(config, method, value), data,
                                    spec, original, progress=bool(config.progress))
  return params, {**info, "seconds": time.perf_counter() - start}


def _relearn_figures(sc: ml_collections.ConfigDict, setting: str, data, apply_fn,
                     original_accuracy: dict[str, float], params: Any) -> dict[str, Any]:
  curves = relearn.relearn_audit(sc, data, apply_fn, {"model": params}, settings=[setting],
                                 original_accuracy=original_accuracy)["curves"][setting]["model"]
  forget = curves["forget"]
  return {"relearn_steps_to_80": forget.get("steps_to_80"),
          "relearn_steps_to_original": forget.get("steps_to_original"),
          "relearn_accuracy_at_100": forget.get("accuracy_at_100"),
          "relearn_control_steps_to_80": curves["control"].get("steps_to_80"),
          "relearn_budget": forget["num_steps"]}


def model_figures(ctx: evaluate_phase.Audit, before: evaluate_phase.ModelAudit,
                  retrained: dict[str, float], after: evaluate_phase.ModelAudit,
                  seed: int, *, roc: bool) -> dict[str, Any]:
  """One model's benchmark figures (see the module docstring), JSON-friendly.

  Args:
    ctx: the run's audit (`evaluate.build_audit`).
    before: the original model's audit.
    retrained: the retrained model's `benchmark_figures` (computed once per
      run: its MIA-efficacy fits an SVC).
    after: the audited model's.
    seed: seeds MIA-efficacy's subsample.
    roc: also keep LiRA's scores on the forget set and its look-alikes.
  """
  unlearned = evaluate_phase.benchmark_figures(ctx, {"unlearned": after}, seed)["unlearned"]
  out = {**unlearned, "average_gap": float(mia.average_gap(unlearned, retrained)),
         **evaluate_phase.forget_set_figures(ctx, before, after)}
  if roc:
    lira = np.asarray(after.scores["lira"], np.float64)
    out["lira_forget"] = lira[ctx.masks["forget"]].round(5).tolist()
    out["lira_lookalikes"] = lira[ctx.masks["matched"]].round(5).tolist()
  return out


def run_seed(config: ml_collections.ConfigDict, scenario: str, seed: int, out: str,
             cells: common.ResultCells, bar: Any) -> None:
  """Every unfinished cell of one (scenario, seed)."""
  names = [*FIXED_ROWS, *methods(config)]
  keys = {name: f"{scenario}/{seed}/{name}" for name in names}
  pending = [n for n in names if cells.get(keys[n]) is None]
  bar.update(len(names) - len(pending))
  if not pending:
    return
  sc = scenario_config(config, scenario, seed)
  run_dir = os.path.join(out, "runs", f"{scenario}_s{seed}")
  run_pipeline(sc, run_dir, shadows=True)
  data, _ = common.load_upstream_data(sc, run_dir)
  spec = common.model_spec(sc, data)
  apply_fn = common.create_model(spec).apply_fn
  original, _ = common.load_phase_params(sc, run_dir, "train", data)
  retrained, _ = common.load_phase_params(sc, run_dir, "retrain", data)
  ctx = evaluate_phase.build_audit(sc, run_dir, data, original)
  images = data.pool.images
  before = evaluate_phase.audit_model(ctx, images, original)
  after_retrain = evaluate_phase.audit_model(ctx, images, retrained)
  retrained_figures = evaluate_phase.benchmark_figures(ctx, {"retrained": after_retrain},
                                                       seed)["retrained"]
  relearn_reference = relearn.reference_accuracy(sc, data, apply_fn, original)
  phase_seconds = report.phase_seconds(run_dir)
  seconds = {"original": phase_seconds.get("train"), "retrain": phase_seconds.get("retrain")}
  roc = seed == config.seeds[0]
  for name in pending:
    if name in FIXED_ROWS:
      params, audited = ((original, before) if name == "original"
                         else (retrained, after_retrain))
      info = {"seconds": seconds[name], "finite": True}
    else:
      value, selected = chosen_value(config, scenario, name, sc)
      params, info = _timed_request(config, sc, name, value, data, spec, original)
      info.update(tuned=config.methods[name].tune, value=value, selected=selected)
      audited = evaluate_phase.audit_model(ctx, images, params) if info["finite"] else None
    cell = {"info": info}
    if audited is not None:
      cell.update(model_figures(ctx, before, retrained_figures, audited, seed, roc=roc))
      cell.update(_relearn_figures(sc, config.relearn_setting, data, apply_fn, relearn_reference,
                                   params))
    cells.put(keys[name], cell)
    common.log(f"[benchmark] {keys[name]}: " + (
        f"UA {cell['UA']:.3f} TA {cell['TA']:.3f} gap {cell['average_gap']:.1f} "
        f"relearn {cell['relearn_steps_to_80']} in {info['seconds'] or 0:.1f} s"
        if audited is not None else "non-finite parameters"))
    bar.update(1)


def run_challenge(config: ml_collections.ConfigDict, out: str
                  ) -> dict[str, dict[str, dict[str, Any]]]:
  """The challenge's forgetting quality of every method (`experiments.challenge`).

  Each (scenario, row) is a cell of `<out>/challenge/cells.json`; the 2N
  models of a scenario are a resumable run of their own.

  Returns:
    `{scenario: {row: figures}}`, rows "original", "retrain" (the split-half
    reference) and the methods.
  """
  cc = config.challenge
  rows = (*FIXED_ROWS, *methods(config))
  cells = common.ResultCells(os.path.join(out, "challenge"),
                             common.signature(config, CHALLENGE_SIGNATURE_KEYS))
  bar = common.progress(len(challenge_scenarios(config)) * len(rows) * cc.num_models,
                        desc="challenge requests", enabled=bool(config.progress))
  results = {}
  for scenario in challenge_scenarios(config):
    keys = {row: f"{scenario}/{row}" for row in rows}
    pending = [row for row in rows if cells.get(keys[row]) is None]
    bar.update((len(rows) - len(pending)) * cc.num_models)
    if pending:
      sc = scenario_config(config, scenario, cc.seed)
      run_dir = os.path.join(out, "runs", f"{scenario}_s{cc.seed}")
      run_pipeline(sc, run_dir, shadows=False)
      data, _ = common.load_upstream_data(sc, run_dir)
      originals, retrained_models, seconds = challenge.train_models(
          sc, challenge.models_directory(out, scenario, cc.seed), data, cc.num_models)
      common.log(f"[benchmark] challenge {scenario}: {2 * cc.num_models} models trained in "
                 f"{seconds:.0f} s")
      evaluation = challenge.Evaluation(sc, data)
      retrained = evaluation(retrained_models)
      forget_labels = data.pool.labels[data.splits.forget]
      for row in pending:
        if row == "retrain":
          cell = challenge.reference_cell(retrained, forget_labels)
          bar.update(cc.num_models)
        else:
          method = None if row == "original" else row
          hp = ({} if method is None
                else hyperparameters(config, row, chosen_value(config, scenario, row, sc)[0]))
          cell = challenge.method_cell(sc, data, originals, method, hp, evaluation, retrained,
                                       bar)
        cells.put(keys[row], cell)
        common.log(f"[benchmark] challenge {keys[row]}: F {cell.get('F', float('nan')):.3f}, "
                   f"F (N/2) {cell.get('F_half', float('nan')):.3f}")
    results[scenario] = {row: cells.get(keys[row]) for row in rows}
  bar.close()
  return results


# ----------------------------------------------------------------------------- tables and plots


def _stats(values: list[float | None], budget: int | None = None) -> dict[str, Any] | None:
  """Mean and std of the seeds' values; None (never reached) counts as `budget`."""
  capped = sum(v is None for v in values)
  if capped and budget is None:
    values = [v for v in values if v is not None]
    capped = 0
  values = [budget if v is None else v for v in values]
  if not values:
    return None
  return {"mean": float(np.mean(values)), "std": float(np.std(values)), "n": len(values),
          "capped": capped}


def aggregate(config: ml_collections.ConfigDict, cells: common.ResultCells
              ) -> dict[str, dict[str, dict[str, Any]]]:
  """`{scenario: {row: {column: stats}}}` over the seeds with a finished cell."""
  out = {}
  for scenario in scenarios(config):
    rows = {}
    for name in [*FIXED_ROWS, *methods(config)]:
      found = [c for s in config.seeds if (c := cells.get(f"{scenario}/{s}/{name}"))]
      finite = [c for c in found if "UA" in c]
      if not found:
        continue
      row = {"seeds": len(found), "diverged": len(found) - len(finite)}
      for key, _, _ in COLUMNS:
        if key == "seconds":
          row[key] = _stats([c["info"]["seconds"] for c in found
                             if c["info"]["seconds"] is not None])
        elif key in ("relearn_steps_to_80", "relearn_steps_to_original"):
          row[key] = _stats([c[key] for c in finite],
                            budget=finite[0]["relearn_budget"] if finite else None)
        else:
          row[key] = _stats([c[key] for c in finite if c.get(key) is not None])
      info = found[0]["info"]
      if name not in FIXED_ROWS:
        row["tuned"] = f"{info['tuned']} {info['value']:g}" + ("" if info["selected"]
                                                               else " (not selected)")
      rows[name] = row
    out[scenario] = rows
  return out


def _format(key: str, stats: dict[str, Any] | None) -> str:
  if stats is None:
    return "n/a"
  scale, digits = (100.0, 1) if key in PERCENT_KEYS else (1.0, 1)
  if key == "lira_auc":
    scale, digits = 1.0, 3
  mean, std = scale * stats["mean"] + 0.0, scale * stats["std"]  # + 0.0: no "-0.0"
  text = f"{mean:.{digits}f} ± {std:.{digits}f}"
  if stats.get("capped"):
    text = f"≥ {text} ({stats['capped']} not reached)"
  return text


def _best(rows: dict[str, dict[str, Any]], key: str, rule: str) -> set[str]:
  candidates = {n: r[key]["mean"] for n, r in rows.items()
                if n not in FIXED_ROWS and r.get(key) is not None}
  if not candidates:
    return set()
  if rule == "low":
    distance = candidates
  else:
    target = rows.get("retrain", {}).get(key)
    if target is None:
      return set()
    distance = {n: abs(v - target["mean"]) for n, v in candidates.items()}
  best = min(distance.values())
  return {n for n, d in distance.items() if np.isclose(d, best)}


def markdown(config: ml_collections.ConfigDict, results: dict[str, Any]) -> str:
  """The benchmark's tables, one per scenario, mean ± std over the seeds."""
  parts = []
  for scenario, rows in results.items():
    seeds = max((r["seeds"] for r in rows.values()), default=0)
    parts.append(f"### {scenario} ({config.scenarios[scenario]}.py; {seeds} seeds)\n")
    header = ["method", *(h for _, h, _ in COLUMNS), "tuned"]
    parts.append("| " + " | ".join(header) + " |")
    parts.append("| --- | " + " | ".join("---:" for _ in COLUMNS) + " | --- |")
    best = {key: _best(rows, key, rule) for key, _, rule in COLUMNS}
    for name, row in rows.items():
      cells = []
      for key, _, _ in COLUMNS:
        text = _format(key, row.get(key))
        cells.append(f"**{text}**" if name in best[key] else text)
      label = name if not row["diverged"] else f"{name} ({row['diverged']} diverged)"
      parts.append(f"| {label} | " + " | ".join(cells) + f" | {row.get('tuned', '')} |")
    parts.append("")
  parts.append("UA = 1 - forget-set accuracy; RA / TA = retained / test accuracy (TA over the "
               "other classes when a class is forgotten); MIA-efficacy = share of the forget set "
               "an SVC on the true-class confidence calls non-member; avg. gap = mean |x - "
               "retrained| over UA, RA, TA, MIA-efficacy in points; FR = forgetting rate; LiRA "
               "AUC = forget set against unseen look-alikes; relearn = full-batch fine-tuning "
               f"on the forget set ({config.relearn_setting}; a target never reached counts as "
               "the step budget); seconds = the request's wall time "
               "(the original's and the retrained model's rows: training time). Bold: the method "
               "closest to retraining in that column (lowest for the gap and the seconds).")
  return "\n".join(parts)


def _style(name: str, index: int) -> dict[str, Any]:
  """One look per row, the same in both plots: retraining, the original and Forsaken stand out."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  fixed = {"original": ("x", "grey", 80, ":"), "retrain": ("*", "black", 200, "--"),
           unlearners.FORSAKEN: ("D", "red", 70, "-")}
  if name in fixed:
    marker, color, size, linestyle = fixed[name]
  else:  # tab20 without its reds and greys: 16 colours apart from the fixed ones
    palette = [k for k in range(20) if k not in (6, 7, 14, 15)]
    color = matplotlib.colormaps["tab20"](palette[index % len(palette)])
    marker, size, linestyle = "o", 40, "-"
  return {"marker": marker, "color": color, "size": size, "linestyle": linestyle}


def plots(config: ml_collections.ConfigDict, results: dict[str, Any],
          cells: common.ResultCells, out: str) -> list[str]:
  """`scatter.png` (forget-set vs test accuracy) and `roc.png` (LiRA, first seed)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  scenarios = list(results)
  paths = []
  if not scenarios:  # only the challenge ran (run_scenarios is empty)
    return paths
  fig, axes = plt.subplots(1, len(scenarios), figsize=(5 * len(scenarios), 4.5), squeeze=False)
  for ax, scenario in zip(axes[0], scenarios):
    for i, (name, row) in enumerate(results[scenario].items()):
      if row.get("UA") is None or row.get("TA") is None:
        continue
      x, y = 100 * (1 - row["UA"]["mean"]), 100 * row["TA"]["mean"]
      style = _style(name, i)
      style = {"marker": style["marker"], "color": style["color"], "s": style["size"]}
      ax.errorbar(x, y, xerr=100 * row["UA"]["std"], yerr=100 * row["TA"]["std"],
                  fmt="none", ecolor=style["color"], alpha=0.5)
      ax.scatter([x], [y], label=name, **style)
    ax.set_title(scenario)
    ax.set_xlabel("forget-set accuracy (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(True, alpha=0.3)
  axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
  fig.tight_layout()
  paths.append(os.path.join(out, "scatter.png"))
  fig.savefig(paths[-1], dpi=110)
  plt.close(fig)

  fig, axes = plt.subplots(1, len(scenarios), figsize=(5 * len(scenarios), 4.5), squeeze=False)
  seed = config.seeds[0]
  for ax, scenario in zip(axes[0], scenarios):
    for i, name in enumerate([*FIXED_ROWS, *methods(config)]):
      cell = cells.get(f"{scenario}/{seed}/{name}")
      if not cell or "lira_forget" not in cell:
        continue
      fpr, tpr, _ = mia.roc_curve(np.asarray(cell["lira_forget"]),
                                  np.asarray(cell["lira_lookalikes"]))
      style = _style(name, i)
      ax.plot(np.asarray(fpr), np.asarray(tpr), color=style["color"],
              linestyle=style["linestyle"], label=f"{name} (AUC {cell['lira_auc']:.2f})",
              linewidth=2 if name == unlearners.FORSAKEN else 1)
    ax.plot([0, 1], [0, 1], color="lightgrey", linewidth=0.5)
    ax.set_title(f"{scenario}, seed {seed}: LiRA, forget set vs look-alikes")
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")
    ax.legend(fontsize=6)
  fig.tight_layout()
  paths.append(os.path.join(out, "roc.png"))
  fig.savefig(paths[-1], dpi=110)
  plt.close(fig)
  return paths


# ----------------------------------------------------------------------------- selection


def validation_figures(predict: Any, params: Any, data: Any, seed: int) -> dict[str, float]:
  """UA, RA, TA and MIA-efficacy with the run's non-member split in the test set's place."""
  params = parallel.replicate(params, parallel.make_mesh())  # requests return one-device params
  sets = []
  for idx in (data.splits.forget, data.splits.retain, data.splits.nonmembers):
    logits = predict(params, data.pool.images[idx])
    sets.append((logits, data.pool.labels[idx]))
  figures = {k: float(v) for k, v in mia.accuracy_metrics(*sets[0], *sets[1], *sets[2]).items()}
  figures["MIA"] = mia.mia_efficacy(
      *(np.asarray(mia.true_class_confidence(x, y)) for x, y in sets), seed=seed)
  return figures


def select(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """The hyperparameter selection on the validation seed (see the module docstring).

  Returns:
    `{"selected": {scenario: {method: value}}, "table": markdown}`.
  """
  out = os.path.join(workdir, "benchmark", "selection")
  os.makedirs(out, exist_ok=True)
  seed = int(config.selection.seed)
  # Cells are keyed by the value tried, so a wider grid reuses the values tried before.
  cells = common.ResultCells(out, {**common.signature(config, SELECTION_SIGNATURE_KEYS),
                                   "selection_seed": seed})
  multipliers = tuple(config.selection.multipliers)
  total = len(scenarios(config)) * len(config.methods) * len(multipliers)
  bar = common.progress(total, desc="selection", enabled=bool(config.progress))
  selected: dict[str, dict[str, float]] = {}
  lines = ["| scenario | method | tuned | value | validation avg. gap | UA | RA | VA | MIA | "
           "seconds |", "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
  for scenario in scenarios(config):
    sc = scenario_config(config, scenario, seed)
    run_dir = os.path.join(out, "runs", scenario)
    loaded = None
    for method in methods(config):
      base = base_value(config, method, sc)
      trials = {}
      for multiplier in multipliers:
        value = float(f"{base * multiplier:.6g}")
        key = f"{scenario}/{method}/{value:.6g}"
        cell = cells.get(key)
        if cell is None:
          if loaded is None:
            run_pipeline(sc, run_dir, shadows=False)
            data, _ = common.load_upstream_data(sc, run_dir)
            spec = common.model_spec(sc, data)
            predict = train.make_predict_fn(common.create_model(spec).apply_fn,
                                            parallel.make_mesh())
            original, _ = common.load_phase_params(sc, run_dir, "train", data)
            retrained, _ = common.load_phase_params(sc, run_dir, "retrain", data)
            loaded = (data, spec, predict, original,
                      validation_figures(predict, retrained, data, seed))
          data, spec, predict, original, reference = loaded
          params, info = _timed_request(config, sc, method, value, data, spec, original)
          cell = {"value": value, "seconds": info["seconds"], "finite": info["finite"]}
          if info["finite"]:
            figures = validation_figures(predict, params, data, seed)
            cell.update(figures, gap=mia.average_gap(figures, reference))
          cells.put(key, cell)
        bar.update(1)
        trials[value] = cell
      finite = {v: c for v, c in trials.items() if c.get("gap") is not None}
      if finite:
        # The smallest gap wins; a tie goes to the value closest to the base.
        best = min(finite, key=lambda v: (round(finite[v]["gap"], 6), abs(np.log(v / base))))
        selected.setdefault(scenario, {})[method] = best
      for value, cell in trials.items():
        mark = " **(chosen)**" if selected.get(scenario, {}).get(method) == value else ""
        figs = ("n/a (diverged)",) * 5 if cell.get("gap") is None else (
            f"{cell['gap']:.2f}", *(f"{100 * cell[k]:.1f}" for k in ("UA", "RA", "TA", "MIA")))
        lines.append(f"| {scenario} | {method} | {config.methods[method].tune} | {value:.3g}{mark} "
                     f"| {' | '.join(figs)} | {cell['seconds']:.1f} |")
  bar.close()
  table = "\n".join(lines)
  common.log(table)
  common.log("[benchmark] selected values (config.selected):\n" + str(selected))
  if common.is_main_process():
    with open(os.path.join(out, "selection.md"), "w") as f:
      f.write(table + "\n")
    common.write_json(os.path.join(out, "selected.json"), selected)
  return {"selected": selected, "table": table}


# ----------------------------------------------------------------------------- entry point


def benchmark(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs every unfinished cell, then writes the tables and plots (or, with
  `config.select`, the hyperparameter selection).

  Returns:
    `{"results", "table", "computed"}`: the aggregated figures, the markdown
    and the cells this call ran (or `select`'s result).
  """
  check_config(config)
  if config.select:
    return select(config, workdir)
  out = os.path.join(workdir, "benchmark")
  os.makedirs(out, exist_ok=True)
  cells = common.ResultCells(out, common.signature(config, SIGNATURE_KEYS))
  total = len(scenarios(config)) * len(config.seeds) * (len(FIXED_ROWS) + len(config.methods))
  bar = common.progress(total, desc="benchmark cells", enabled=bool(config.progress))
  for scenario in scenarios(config):
    for seed in config.seeds:
      run_seed(config, scenario, int(seed), out, cells, bar)
  bar.close()
  results = aggregate(config, cells)
  table = markdown(config, results)
  quality = run_challenge(config, out) if config.challenge.num_models else {}
  if quality:
    table += "\n\n" + challenge.markdown(quality, config.challenge.num_models)
  common.log(table)
  if common.is_main_process():
    with open(os.path.join(out, "results.md"), "w") as f:
      f.write(table + "\n")
    common.write_json(os.path.join(out, "results.json"), results)
    if quality:
      common.write_json(os.path.join(out, "challenge", "results.json"), quality)
    plots(config, results, cells, out)
  return {"results": results, "challenge": quality, "table": table,
          "computed": cells.computed}


if __name__ == "__main__":
  cli.run(benchmark, default_config=os.path.join(os.path.dirname(__file__), "configs",
                                                  "benchmark.py"))
