"""Tables and plots of the evaluate phase (markdown, PNG)."""

import json
import os
from typing import Any, Mapping

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from forsaken_jax import mia  # pylint: disable=wrong-import-position

MODEL_LABELS = {"original": "original", "unlearned": "Forsaken", "retrained": "retrained"}
# The phase that writes each audited model.
MODEL_PHASES = {"original": "train", "unlearned": "unlearn", "retrained": "retrain"}
ORACLE_LABELS = {"shokri": "Shokri shadow-model attack", "lira": "LiRA (online)",
                 "lira_offline": "LiRA (offline)", "loss": "loss threshold"}
# Which summary field holds each phase's wall time.
_PHASE_TIMES = {"train": "train_seconds", "shadow": "shadow_seconds",
                "unlearn": "unlearn_seconds", "retrain": "train_seconds"}


def phase_seconds(workdir: str) -> dict[str, float]:
  """Wall time of each phase that has run, from its `summary.json`."""
  out = {}
  for phase, field in _PHASE_TIMES.items():
    path = os.path.join(workdir, phase, "summary.json")
    if os.path.exists(path):
      with open(path) as f:
        out[phase] = float(json.load(f)[field])
  return out


def pct(x: float | None) -> str:
  """A fraction as a percentage with one decimal, "n/a" for None."""
  return "n/a" if x is None else f"{100 * x:.1f}%"


def _fr(entry: Mapping[str, Any] | None) -> str:
  if entry is None:
    return "n/a"
  if entry["rate"] is None:
    return "undefined (B_T=0)"
  return f"{100 * entry['rate']:.1f}% (B_T={entry['b_t']}, A_F={entry['a_f']})"


def steps_label(value: int | None, budget: int) -> str:
  """Steps to a relearning target, "> budget" when not reached."""
  return f"> {budget}" if value is None else str(value)


def headline_table(results: Mapping[str, Any]) -> str:
  """The one table the main job prints: utility, forgetting, privacy, time."""
  models = [m for m in MODEL_LABELS if m in results["accuracy"]]
  header = "| | " + " | ".join(MODEL_LABELS[m] for m in models) + " |"
  lines = [header, "| --- |" + " ---: |" * len(models)]

  def row(name, values):
    lines.append(f"| {name} | " + " | ".join(values) + " |")

  acc = results["accuracy"]
  row("test accuracy", [pct(acc[m]["test"]) for m in models])
  if "test_other_classes" in acc[models[0]]:
    row("test accuracy, classes not forgotten", [pct(acc[m]["test_other_classes"])
                                                 for m in models])
  row("forget-set accuracy", [pct(acc[m]["forget"]) for m in models])
  row("retained-set accuracy", [pct(acc[m]["retain"]) for m in models])
  fr = results.get("forgetting_rate", {})
  for oracle in ("shokri", "lira", "loss"):
    row(f"FR, {ORACLE_LABELS[oracle]}",
        ["—" if m == "original" else _fr(fr.get(m, {}).get(oracle)) for m in models])
  forget_attack = results["attack_forget_vs_matched_nonmembers"]
  row("LiRA AUC, forget vs unseen look-alikes (± std. error)",
      [f"{forget_attack[m]['lira']['auc']:.3f} ± {forget_attack[m]['lira']['auc_std']:.3f}"
       for m in models])
  relearn = results.get("relearn")
  if relearn:
    # The first setting is the headline attack; the report has every setting.
    setting = next(iter(relearn["curves"]))
    spec, curves = relearn["settings"][setting], relearn["curves"][setting]
    budget = spec["steps"]
    attack = f"{spec['optimizer']} lr {spec['learning_rate']:g}"
    row(f"relearning ({attack}): steps to 80% forget-set accuracy (look-alikes)",
        [f"{steps_label(curves[m]['forget'].get('steps_to_80'), budget)} "
         f"({steps_label(curves[m]['control'].get('steps_to_80'), budget)})" for m in models])
    row(f"relearning ({attack}): forget-set accuracy after 100 steps",
        [pct(curves[m]["forget"].get("accuracy_at_100")) for m in models])
  bench = results.get("benchmark")
  if bench:
    row("MIA-efficacy (SalUn's SVC: forget set called non-member)",
        [pct(bench[m]["MIA"]) if m in bench else "n/a" for m in models])
    gap = bench.get("average_gap")
    row("average gap to retrained, UA/RA/TA/MIA (points)",
        [f"{gap:.2f}" if m == "unlearned" and gap is not None else "—" for m in models])
  seconds = results.get("wall_seconds", {})
  row("wall time (s)", [f"{seconds[MODEL_PHASES[m]]:.1f}" if MODEL_PHASES[m] in seconds
                        else "n/a" for m in models])
  if "unlearn" in seconds and "retrain" in seconds:
    lines.append(f"\nunlearning took {100 * seconds['unlearn'] / seconds['retrain']:.1f}% of the "
                 "retraining time.")
  if "ulira" in results:
    lines.append(f"U-LiRA: unlearned vs retrained forget-set scores, AUC "
                 f"{results['ulira']['auc']:.3f} (0.5 = indistinguishable).")
  return "\n".join(lines)


def markdown(results: Mapping[str, Any]) -> str:
  """The full report."""
  models = [m for m in MODEL_LABELS if m in results["accuracy"]]
  out = [f"# Membership-inference audit: {results['dataset']}, scenario {results['scenario']}",
         "",
         f"Forget set: {results['num_forget']} samples; retained members: {results['num_retain']}; "
         f"non-members: {results['num_nonmembers']} ({results['num_matched_nonmembers']} "
         "resembling the forget set). Shadow models: "
         f"{results['num_lira_shadow_models']} LiRA, {results['num_shokri_shadow_models']} Shokri.",
         "", "## Summary", "", headline_table(results), "",
         "FR = (A_F - B_F) / B_T over the forget set (B_T: judged member by the oracle on the "
         "original model; A_F: judged non-member after). The retrained model's FR is the "
         "ceiling a perfect unlearner reaches with the same oracle.", ""]

  out += ["## Accuracy", "", "| model | test | retained | forget | non-members |",
          "| --- | ---: | ---: | ---: | ---: |"]
  for m in models:
    a = results["accuracy"][m]
    out.append(f"| {MODEL_LABELS[m]} | {pct(a['test'])} | {pct(a['retain'])} | "
               f"{pct(a['forget'])} | {pct(a['nonmember'])} |")

  for key, title in (("attack_retain_vs_nonmembers", "retained members vs non-members"),
                     ("attack_forget_vs_matched_nonmembers",
                      "forget set vs non-members resembling it")):
    out += ["", f"## Attacks: {title}", "",
            "| model | oracle | AUC (± std. error) | balanced acc. | TPR @ 0.1% FPR | "
            "TPR @ 1% FPR |",
            "| --- | --- | ---: | ---: | ---: | ---: |"]
    for m in models:
      for oracle, s in results[key][m].items():
        out.append(f"| {MODEL_LABELS[m]} | {ORACLE_LABELS[oracle]} | "
                   f"{s['auc']:.3f} ± {s['auc_std']:.3f} | "
                   f"{s['balanced_accuracy']:.3f} | {pct(s['tpr_at_fpr_0.001'])} | "
                   f"{pct(s['tpr_at_fpr_0.01'])} |")

  bench = results.get("benchmark")
  if bench:
    out += ["", "## Benchmark metrics", "",
            "UA = 1 - forget-set accuracy, RA / TA = retained / test accuracy, MIA = SalUn's "
            "MIA-efficacy (docs/METHOD.md, \"Benchmark metrics\").", "",
            "| model | UA | RA | TA | MIA-efficacy |", "| --- | ---: | ---: | ---: | ---: |"]
    for m in models:
      if m in bench:
        b = bench[m]
        out.append(f"| {MODEL_LABELS[m]} | {pct(b['UA'])} | {pct(b['RA'])} | {pct(b['TA'])} | "
                   f"{pct(b['MIA'])} |")
    if bench.get("average_gap") is not None:
      out += ["", f"Average gap of Forsaken to the retrained model: "
              f"{bench['average_gap']:.2f} percentage points."]

  out += ["", "## Judged member on the forget set", "",
          "| model | " + " | ".join(ORACLE_LABELS[o] for o in ("shokri", "lira", "loss")) + " |",
          "| --- | ---: | ---: | ---: |"]
  for m in models:
    rates = results["judged_member_rate_on_forget"][m]
    out.append(f"| {MODEL_LABELS[m]} | " + " | ".join(pct(rates[o])
                                                    for o in ("shokri", "lira", "loss")) + " |")
  if results.get("relearn"):
    rl = results["relearn"]
    out += ["", "## Relearning attack", "",
            f"Each model fine-tuned on the forget set alone ({rl['num_forget']} examples, full "
            f"batch), and, as the control, on {rl['num_control']} unseen look-alikes. A model "
            "that never saw the forget set relearns it about as fast as it learns the "
            "look-alikes; one that only hid its memory relearns it faster.", "",
            relearn_table(rl)]
  out += ["", "## Controls", "",
          f"- LiRA between two random halves of the non-members (no model trained on either): "
          f"AUC {results['control_nonmember_halves_lira_auc']:.3f} (expected ~0.5).",
          f"- Shokri attack classifier, balanced accuracy on its own shadow data: "
          f"{results['shokri_attack_train_balanced_accuracy']:.3f}.",
          f"- Loss-threshold oracle: member when loss < {-results['loss_threshold']:.4g}."]
  if results.get("plots"):
    out += ["", "## Plots", ""] + [f"![{p}]({p})" for p in results["plots"]]
  return "\n".join(out) + "\n"


def plot_all(out_dir: str, *, scores: Mapping[str, Mapping[str, np.ndarray]],
             masks: Mapping[str, np.ndarray], lira_stats: Mapping[str, np.ndarray]) -> list[str]:
  """Writes the ROC and histogram plots; returns their file names."""
  files = []
  colors = {"original": "tab:red", "unlearned": "tab:blue", "retrained": "tab:green"}

  fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
  for ax, (title, pos) in zip(axes, (("forget set vs unseen look-alikes", "forget"),
                                     ("retained members vs non-members", "retain"))):
    neg = "matched" if pos == "forget" else "nonmember"
    for name, s in scores.items():
      fpr, tpr, _ = mia.roc_curve(s["lira"][masks[pos]], s["lira"][masks[neg]])
      auc = float(mia.roc_auc(s["lira"][masks[pos]], s["lira"][masks[neg]]))
      ax.plot(np.maximum(fpr, 1e-4), np.maximum(tpr, 1e-4), color=colors[name],
              label=f"{MODEL_LABELS[name]} (AUC {auc:.3f})")
    grid = np.logspace(-4, 0, 50)
    ax.plot(grid, grid, "k:", lw=1, label="chance")
    ax.set(xscale="log", yscale="log", xlim=(1e-4, 1), ylim=(1e-4, 1.05),
           xlabel="false-positive rate", ylabel="true-positive rate", title=f"LiRA: {title}")
    ax.legend(loc="lower right", fontsize=8)
  fig.tight_layout()
  files.append(_save(fig, out_dir, "roc_lira.png"))

  fig, ax = plt.subplots(figsize=(5.5, 4.8))
  original = scores["original"]
  for oracle in ("lira", "lira_offline", "shokri", "loss"):
    fpr, tpr, _ = mia.roc_curve(original[oracle][masks["retain"]],
                                original[oracle][masks["nonmember"]])
    ax.plot(np.maximum(fpr, 1e-4), np.maximum(tpr, 1e-4), label=ORACLE_LABELS[oracle])
  grid = np.logspace(-4, 0, 50)
  ax.plot(grid, grid, "k:", lw=1)
  ax.set(xscale="log", yscale="log", xlim=(1e-4, 1), ylim=(1e-4, 1.05),
         xlabel="false-positive rate", ylabel="true-positive rate",
         title="original model: every oracle")
  ax.legend(loc="lower right", fontsize=8)
  fig.tight_layout()
  files.append(_save(fig, out_dir, "roc_oracles_original.png"))

  fig, axes = plt.subplots(1, len(lira_stats), figsize=(4.5 * len(lira_stats), 3.8), sharey=True,
                           squeeze=False)
  groups = (("retain", "retained members", "tab:red"), ("nonmember", "non-members", "tab:gray"),
            ("forget", "forget set", "tab:blue"), ("matched", "unseen look-alikes", "tab:orange"))
  all_values = np.concatenate(list(lira_stats.values()))
  bins = np.linspace(np.percentile(all_values, 0.5), np.percentile(all_values, 99.5), 50)
  for ax, (name, values) in zip(axes[0], lira_stats.items()):
    for key, label, color in groups:
      ax.hist(np.clip(values[masks[key]], bins[0], bins[-1]), bins=bins, density=True,
              histtype="step", lw=1.5, color=color, label=label)
    ax.set(title=MODEL_LABELS[name], xlabel="logit-scaled confidence log(p_y / (1 - p_y))")
  axes[0][0].set_ylabel("density")
  axes[0][-1].legend(fontsize=8)
  fig.tight_layout()
  files.append(_save(fig, out_dir, "hist_confidence.png"))
  return files


def relearn_table(relearn: Mapping[str, Any], labels: Mapping[str, str] = MODEL_LABELS) -> str:
  """Markdown: per setting and model, steps to regain the forget set, and its control."""
  lines = ["| relearning attack | model | forget acc. before | steps to original acc. | "
           "steps to 80% | forget acc. after 10 / 100 steps | control: steps to 80% | "
           "control acc. after 100 steps |",
           "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
  for setting, per_model in relearn["curves"].items():
    spec = relearn["settings"][setting]
    budget = spec["steps"]
    for name, sets in per_model.items():
      f, c = sets["forget"], sets["control"]
      lines.append(
          f"| {spec['optimizer']} lr {spec['learning_rate']:g}, full batch | "
          f"{labels.get(name, name)} | {pct(f['accuracy'][0])} | "
          f"{steps_label(f['steps_to_original'], budget)} | {steps_label(f.get('steps_to_80'), budget)} | "
          f"{pct(f.get('accuracy_at_10'))} / {pct(f.get('accuracy_at_100'))} | "
          f"{steps_label(c.get('steps_to_80'), budget)} | {pct(c.get('accuracy_at_100'))} |")
  return "\n".join(lines)


def plot_relearn(out_dir: str, relearn: Mapping[str, Any],
                 labels: Mapping[str, str] = MODEL_LABELS, name: str = "relearn.png") -> str:
  """Accuracy-per-step curves: forget set (solid) and look-alike control (dashed)."""
  settings = list(relearn["curves"])
  fig, axes = plt.subplots(1, len(settings), figsize=(5.5 * len(settings), 4.2), squeeze=False)
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  for ax, setting in zip(axes[0], settings):
    spec = relearn["settings"][setting]
    for i, (model, sets) in enumerate(relearn["curves"][setting].items()):
      color = colors[i % len(colors)]
      ax.plot(sets["forget"]["accuracy"], color=color, label=f"{labels.get(model, model)}: forget set")
      ax.plot(sets["control"]["accuracy"], color=color, ls="--", lw=1,
              label=f"{labels.get(model, model)}: unseen look-alikes")
    ax.axhline(0.8, color="k", lw=0.5, ls=":")
    ax.set(xlabel="fine-tuning steps", ylabel="accuracy on the fine-tuning set", ylim=(0, 1.02),
           title=f"relearning: {spec['optimizer']} lr {spec['learning_rate']:g}, full batch")
    ax.legend(fontsize=7, loc="lower right")
  fig.tight_layout()
  return _save(fig, out_dir, name)


def plot_tradeoff(out_dir: str, rows: list[Mapping[str, Any]], *, budget: int,
                  name: str = "tradeoff.png") -> str:
  """Relearning resistance against wall time, one point per model of a sweep.

  Args:
    out_dir: where to write the plot.
    rows: dicts with `model`, `seconds` (None: not timed) and `relearn` (a
      relearning summary per set, or None); rows without both are skipped.
    budget: the attack's step budget; a set not relearned within it is drawn
      at the budget, marked with an upward arrow.
    name: the file name.

  Returns:
    The path written.
  """
  fig, ax = plt.subplots(figsize=(7.5, 5.2))
  for r in rows:
    rl = r.get("relearn")
    if r.get("seconds") is None or not rl:
      continue
    steps = rl["forget"].get("steps_to_80")
    y = budget if steps is None else steps
    ax.scatter(r["seconds"], y, marker="^" if steps is None else "o", s=28)
    ax.annotate(r["model"][:48], (r["seconds"], y), fontsize=6, xytext=(3, 2),
                textcoords="offset points")
  ax.set(xscale="log", xlabel="wall seconds (unlearning; training for original and retrained)",
         ylabel="relearning: steps to 80% forget-set accuracy",
         title="relearning resistance against time (triangle: not within the budget)")
  fig.tight_layout()
  return _save(fig, out_dir, name)


def _save(fig, out_dir: str, name: str) -> str:
  fig.savefig(os.path.join(out_dir, name), dpi=110)
  plt.close(fig)
  return name
