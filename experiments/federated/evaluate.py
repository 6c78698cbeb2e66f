"""The evaluate phase: every model of the federated run, audited the same way.

    python -m experiments.federated.evaluate --workdir runs/fed [--config ...]

Reads, read-only, the original federation (fed_train), the eliminated one
(eliminate: after its extra rounds, and right after the request round), the
retrained one (fed_retrain) and every finished baseline. For each model:

- test accuracy; the mean accuracy of the other users on their own data;
  the owner's accuracy on its other data and on its private photos;
- a membership audit of the photos against unseen look-alike photos (the
  pool's held-out photo patches among the non-members,
  `common.matched_nonmembers`): the loss attack's ROC AUC (0.5:
  indistinguishable), and the forgetting rate under a threshold oracle on
  the logit-scaled confidence fitted on the original model between the
  photos and the look-alikes (`mia.fit_threshold`): the share of the
  photos it calls member on the original model that it calls non-member
  on the audited one (`mia.forgetting_rate`);
- the same forgetting rate and AUC under the shadow-model oracles, Shokri's
  attack classifier and online LiRA, fitted on the shadow federations of
  the fed_shadow phase (`experiments.federated.shadow`; skipped when
  `shadow.num_models` is 0);
- the relearning attack on the photos (`experiments.relearn.relearn_audit`:
  full-batch fine-tuning with each setting of `evaluate.relearn`, steps to
  80% and accuracy after a budget, beside the same model learning as many
  look-alikes);
- the wall time of the phase that made it and its rounds after the
  original training;
- with a backdoor (`scenario.backdoor`, configs/federated/backdoor.py, where
  the owner's "photos" are its triggered images): the attack success rate,
  the share of the triggered test images of other classes than the target
  that the model classifies as the target, before and after the relearning
  attack fine-tuned it on the owner's triggered images (every setting, each
  of `evaluate.relearn.budgets` steps; `backdoor_audit`).

Writes `<workdir>/evaluate/metrics.json`, `report.md` (the table, also
printed) and plots: test accuracy per round (`accuracy_per_round.png`),
the photos' and look-alikes' membership scores per model (`hist_scores.png`),
the relearning curves (`relearn.png`).
"""

import os
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
import ml_collections  # pylint: disable=wrong-import-position
import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from experiments import cli, common, relearn, report  # pylint: disable=wrong-import-position
from experiments.federated import baselines as baselines_phase  # pylint: disable=wrong-import-position
from experiments.federated import federation as fedlib  # pylint: disable=wrong-import-position
from experiments.federated import shadow as shadow_phase  # pylint: disable=wrong-import-position
from forsaken_jax import data as fj_data  # pylint: disable=wrong-import-position
from forsaken_jax import losses, mia  # pylint: disable=wrong-import-position

PHASE = "evaluate"
MODEL_LABELS = {"original": "original", "eliminated": "Forsaken elimination",
                "request_round": "Forsaken, request round only", "retrained": "retrained",
                "continue": "continue without D_u", "fed_eraser": "FedEraser",
                "pga": "PGA + recovery"}
# The phase that writes each model (baselines: baselines/<name>).
MODEL_PHASES = {"original": "fed_train", "eliminated": "eliminate", "request_round": "eliminate",
                "retrained": "fed_retrain"}


def load_models(workdir: str, fed: fedlib.Federation) -> dict[str, Any]:
  """name -> params of every finished phase's model (fed_train's is required)."""
  models = {}
  for name, phase in MODEL_PHASES.items():
    if name != "original" and not fedlib.is_complete(workdir, phase):
      common.log(f"[{PHASE}] no finished {phase} phase in {workdir}: auditing without it")
      continue
    state, _ = fedlib.load_phase_state(fed, workdir, phase)
    models[name] = state["request_params" if name == "request_round" else "params"]
  for name in baselines_phase.BASELINES:
    if fedlib.is_complete(workdir, baselines_phase.phase_name(name)):
      models[name], _ = fedlib.load_phase_state(fed, workdir, baselines_phase.phase_name(name))
      models[name] = models[name]["params"]
  return models


def _scores(fed: fedlib.Federation, params: Any, indices: np.ndarray) -> dict[str, np.ndarray]:
  logits = fed.predict(params, fed.images[indices])
  labels = fed.labels[indices]
  return {"correct": np.argmax(logits, -1) == labels,
          "loss": np.asarray(losses.cross_entropy(logits, labels)),
          "confidence": np.asarray(mia.logit_scaled_confidence(logits, labels))}


def model_figures(fed: fedlib.Federation, params: Any, oracle: mia.ThresholdAttack,
                  member_before: np.ndarray | None) -> dict[str, Any]:
  """Accuracy and the photos' membership figures of one model.

  Args:
    fed: the federation.
    params: the model.
    oracle: the threshold on the logit-scaled confidence, fitted on the original.
    member_before: the oracle's verdicts on the photos under the original
      model (None for the original itself: no forgetting rate).

  Returns:
    A JSON-friendly dict; `member` holds this model's verdicts (host array).
  """
  photos, lookalikes = _scores(fed, params, fed.private), _scores(fed, params, fed.lookalikes)
  others = [k for k in range(fed.partition.num_clients) if k != fed.owner]
  owner_other = np.setdiff1d(fed.partition.client(fed.owner), fed.private)
  member = np.asarray(mia.predict_member(oracle, photos["confidence"]))
  out = {
      "accuracy": {
          "test": fedlib.accuracy(fed, params),
          "remaining_users": float(np.mean([fedlib.accuracy(fed, params, fed.partition.client(k))
                                            for k in others])),
          "owner_other_data": fedlib.accuracy(fed, params, owner_other) if owner_other.size
                              else None,
          "photos": float(photos["correct"].mean()),
          "lookalikes": float(lookalikes["correct"].mean())},
      # Higher = member: the loss attack scores by the negated loss.
      "loss_auc": float(mia.roc_auc(-photos["loss"], -lookalikes["loss"])),
      "confidence_auc": float(mia.roc_auc(photos["confidence"], lookalikes["confidence"])),
      "judged_member_rate": float(member.mean()),
      "member": member, "confidence": {"photos": photos["confidence"],
                                       "lookalikes": lookalikes["confidence"]},
  }
  if member_before is not None:
    rate = mia.forgetting_rate(member_before, member, oracle="threshold:logit_scaled_confidence")
    out["forgetting_rate"] = {"rate": rate.rate, "b_t": rate.b_t, "b_f": rate.b_f,
                              "a_f": rate.a_f, "n": rate.n}
  return out


def backdoor_audit(config: ml_collections.ConfigDict, fed: fedlib.Federation,
                   models: dict[str, Any]) -> dict[str, Any] | None:
  """Each model's attack success rate, before and after relearning (None without a backdoor).

  The triggered test set is every test example outside the target class,
  stamped with the run's trigger. The relearning is each setting of
  `evaluate.relearn`, full batch on the owner's triggered images, for each of
  `evaluate.relearn.budgets` (and `steps`) steps from the model itself, every
  model in one vmapped program per setting and budget.
  """
  backdoor = config.scenario.get("backdoor")
  if not backdoor:
    return None
  target = int(backdoor.target)
  test = fed.data.test_examples
  others = test.labels != target
  triggered = fj_data.stamp_trigger(test.images[others], **common.trigger_kwargs(backdoor))
  labels = test.labels[others]
  rc = config.evaluate.relearn
  batch = {"image": jnp.asarray(fed.images[fed.private]),
           "label": jnp.asarray(fed.labels[fed.private])}
  names = list(models)
  stacked = mia.stack([models[n] for n in names])

  def asr(params):
    return fj_data.attack_success_rate(fed.predict(params, triggered), labels, target=target)

  budgets = sorted({int(b) for b in rc.budgets if b <= rc.steps} | {int(rc.steps)})
  after = {}
  for setting, spec in rc.settings.items():
    after[setting] = {}
    for budget in budgets:
      finetune = mia.make_finetune_scan(
          fed.model.apply_fn, relearn.OPTIMIZERS[spec.optimizer](spec.learning_rate),
          num_steps=budget)
      relearned = jax.device_get(jax.jit(jax.vmap(lambda p: finetune(p, batch)[0]))(stacked))
      after[setting][str(budget)] = {n: asr(jax.tree.map(lambda x, i=i: x[i], relearned))
                                     for i, n in enumerate(names)}
  return {"target": target, "trigger": common.trigger_kwargs(backdoor),
          "clean_reference": bool(backdoor.get("clean_reference", True)),
          "num_triggered_test": int(others.sum()),
          "relearn": {"settings": {k: {"optimizer": v.optimizer,
                                       "learning_rate": float(v.learning_rate)}
                                   for k, v in rc.settings.items()}, "budgets": budgets},
          "attack_success_rate": {n: asr(models[n]) for n in names},
          # setting -> budget (steps, as a string) -> model -> rate
          "attack_success_rate_after_relearning": after}


def wall_times(workdir: str) -> tuple[dict, dict]:
  """Per model: the wall time of what made it and its rounds after the original training."""
  seconds, rounds = {}, {}
  summaries = {name: fedlib.read_summary(workdir, phase) for name, phase in MODEL_PHASES.items()}
  if summaries["original"]:
    seconds["original"], rounds["original"] = summaries["original"]["seconds"], 0
  if summaries["retrained"]:
    seconds["retrained"] = summaries["retrained"]["seconds"]
    rounds["retrained"] = summaries["retrained"]["rounds"]
  if summaries["eliminated"]:
    s = summaries["eliminated"]
    seconds["request_round"], rounds["request_round"] = s["unlearning_seconds"], 1
    seconds["eliminated"] = s["request_seconds"] + s["seconds"]
    rounds["eliminated"] = s["rounds"]
  for name in baselines_phase.BASELINES:
    s = fedlib.read_summary(workdir, baselines_phase.phase_name(name))
    if s:
      seconds[name], rounds[name] = s["seconds"], s["recovery_rounds"]
  return seconds, rounds


def per_round_accuracy(workdir: str) -> dict[str, list[float]]:
  """Test accuracy after every round of each phase that runs rounds."""
  out = {}
  for name, phase in (("original", "fed_train"), ("retrained", "fed_retrain"),
                      ("eliminated", "eliminate")):
    s = fedlib.read_summary(workdir, phase)
    if s:
      out[name] = s["test_accuracy_per_round"]
  for name in baselines_phase.BASELINES:
    s = fedlib.read_summary(workdir, baselines_phase.phase_name(name))
    if s and s["recovery_rounds"]:
      out[name] = s["test_accuracy_per_round"]
  return out


def _fmt(value: Any, digits: int = 3) -> str:
  return "n/a" if value is None else f"{value:.{digits}f}"


def table(results: dict[str, Any]) -> str:
  """The markdown table: one column per model, the retrained federation among them."""
  names = results["models"]
  lines = ["| | " + " | ".join(MODEL_LABELS.get(n, n) for n in names) + " |",
           "| --- |" + " ---: |" * len(names)]

  def row(label, values):
    lines.append(f"| {label} | " + " | ".join(values) + " |")

  fig = results["figures"]
  backdoor = results.get("backdoor")
  photos = "triggered images" if backdoor else "photos"
  row("test accuracy", [report.pct(fig[n]["accuracy"]["test"]) for n in names])
  row("other users' accuracy on their data",
      [report.pct(fig[n]["accuracy"]["remaining_users"]) for n in names])
  row("owner's accuracy on its other data",
      [report.pct(fig[n]["accuracy"]["owner_other_data"]) for n in names])
  row(f"accuracy on the owner's {photos}",
      [report.pct(fig[n]["accuracy"]["photos"]) for n in names])
  if backdoor:
    row(f"attack success rate, {backdoor['num_triggered_test']} triggered test images",
        [report.pct(backdoor["attack_success_rate"][n]) for n in names])
    budgets = backdoor["relearn"]["budgets"]
    for setting, spec in backdoor["relearn"]["settings"].items():
      for budget in sorted({budgets[0], budgets[-1]}):
        rates = backdoor["attack_success_rate_after_relearning"][setting][str(budget)]
        row(f"attack success rate after {budget} relearning steps "
            f"({spec['optimizer']} {spec['learning_rate']:g})",
            [report.pct(rates[n]) for n in names])
  row(f"loss attack AUC, {photos} vs unseen look-alikes",
      [_fmt(fig[n]["loss_auc"]) for n in names])
  row("forgetting rate (threshold oracle fitted on the original)",
      ["—" if "forgetting_rate" not in fig[n] else report.pct(fig[n]["forgetting_rate"]["rate"])
       for n in names])
  if results.get("shadow"):
    num = results["shadow"]["num_models"]
    for oracle, label in (("shokri", "Shokri"), ("lira", "LiRA")):
      shadow = {n: fig[n]["shadow_oracles"][oracle] for n in names}
      row(f"forgetting rate ({label}, {num} shadow federations)",
          ["—" if "forgetting_rate" not in shadow[n]
           else report.pct(shadow[n]["forgetting_rate"]["rate"]) for n in names])
      row(f"{label} AUC, {photos} vs unseen look-alikes", [_fmt(shadow[n]["auc"]) for n in names])
  relearn_results = results.get("relearn")
  if relearn_results:
    setting = next(iter(relearn_results["curves"]))
    spec = relearn_results["settings"][setting]
    budget = spec["steps"]
    curves = relearn_results["curves"][setting]
    label = f"{spec['optimizer']} {spec['learning_rate']:g}"
    row(f"relearning ({label}): steps to 80% on the {photos}",
        [report.steps_label(curves[n]["forget"].get("steps_to_80"), budget) for n in names])
    row(f"relearning ({label}): {photos}' accuracy after {budget} steps",
        [report.pct(curves[n]["forget"]["accuracy"][-1]) for n in names])
    row("control: steps to 80% on as many look-alikes",
        [report.steps_label(curves[n]["control"].get("steps_to_80"), budget) for n in names])
  row("rounds after the original training",
      [str(results["rounds"].get(n, "n/a")) for n in names])
  row("wall time (s)", [_fmt(results["wall_seconds"].get(n), 1) for n in names])
  return "\n".join(lines)


def _save(fig, out_dir: str, name: str) -> str:
  fig.savefig(os.path.join(out_dir, name), dpi=110)
  plt.close(fig)
  return name


def plot_rounds(out_dir: str, curves: dict[str, list[float]], num_rounds: int) -> str:
  """Test accuracy per round; phases after the original continue its round count."""
  fig, ax = plt.subplots(figsize=(7, 4.2))
  for name, accuracy in curves.items():
    start = 1 if name in ("original", "retrained") else num_rounds + 1
    ax.plot(np.arange(start, start + len(accuracy)), accuracy, marker="." if start > 1 else None,
            label=MODEL_LABELS.get(name, name))
  ax.axvline(num_rounds + 0.5, color="k", lw=0.5, ls=":")
  ax.set(xlabel="round", ylabel="test accuracy", title="test accuracy per round")
  ax.legend(fontsize=8, loc="lower right")
  fig.tight_layout()
  return _save(fig, out_dir, "accuracy_per_round.png")


def plot_scores(out_dir: str, figures: dict[str, Any], threshold: float) -> str:
  """Histograms of the photos' and the look-alikes' membership scores, one panel per model."""
  names = list(figures)
  cols = min(4, len(names))
  rows = -(-len(names) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.2 * rows), sharey=True,
                           squeeze=False)
  for ax in axes.flat[len(names):]:
    ax.axis("off")
  values = np.concatenate([np.concatenate([f["confidence"]["photos"], f["confidence"]["lookalikes"]])
                           for f in figures.values()])
  bins = np.linspace(np.percentile(values, 0.5), np.percentile(values, 99.5), 30)
  for ax, name in zip(axes.flat, names):
    for key, label, color in (("photos", "owner's photos", "tab:blue"),
                              ("lookalikes", "unseen look-alikes", "tab:orange")):
      ax.hist(np.clip(figures[name]["confidence"][key], bins[0], bins[-1]), bins=bins,
              density=True, histtype="step", lw=1.5, color=color, label=label)
    if np.isfinite(threshold):
      ax.axvline(threshold, color="k", lw=0.8, ls=":")
    ax.set(title=MODEL_LABELS.get(name, name), xlabel="log(p_y / (1 - p_y))")
  for row in axes:
    row[0].set_ylabel("density")
  axes.flat[0].legend(fontsize=7)
  fig.tight_layout()
  return _save(fig, out_dir, "hist_scores.png")


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs the evaluate phase (see the module docstring) and returns metrics.json's content."""
  relearn.check_config(config)
  fed = fedlib.load_federation(config, workdir)
  models = load_models(workdir, fed)
  original = _scores(fed, models["original"], fed.private)["confidence"]
  oracle = mia.fit_threshold(original, _scores(fed, models["original"],
                                               fed.lookalikes)["confidence"])
  figures = {"original": model_figures(fed, models["original"], oracle, None)}
  member_before = figures["original"]["member"]
  for name, params in models.items():
    if name != "original":
      figures[name] = model_figures(fed, params, oracle, member_before)
  seconds, rounds = wall_times(workdir)
  train_summary = fedlib.read_summary(workdir, "fed_train") or {}
  results: dict[str, Any] = {
      "request": config.eliminate.request, "scaling": config.eliminate.scaling,
      "partition": config.federated.partition, "num_clients": int(fed.partition.num_clients),
      "num_rounds": int(config.federated.num_rounds), "num_photos": int(len(fed.private)),
      "num_lookalikes": int(len(fed.lookalikes)), "num_holdout_photos": int(len(fed.holdout)),
      "models": list(models), "labels": {n: MODEL_LABELS.get(n, n) for n in models},
      "oracle": {"statistic": "logit_scaled_confidence", "threshold": float(oracle.threshold),
                 "balanced_accuracy": float(oracle.balanced_accuracy)},
      "figures": {n: {k: v for k, v in f.items() if k not in ("member", "confidence")}
                  for n, f in figures.items()},
      "wall_seconds": seconds, "rounds": rounds,
      "stored_bytes": train_summary.get("stored_bytes"),
      "test_accuracy_per_round": per_round_accuracy(workdir),
  }
  shadow_oracles = shadow_phase.load_oracles(config, workdir, fed, models["original"])
  if shadow_oracles is not None:
    judged = {n: shadow_phase.verdicts(shadow_oracles, fed, p) for n, p in models.items()}
    for n in models:
      results["figures"][n]["shadow_oracles"] = shadow_phase.model_figures(
          shadow_oracles, judged[n], None if n == "original" else judged["original"])
    alignment = shadow_oracles.alignment
    results["shadow"] = {"num_models": int(shadow_oracles.evidence.lira_keep.shape[0]),
                         "population": int(len(shadow_oracles.population)),
                         "keep_alignment": {"auc": alignment.auc, "std": alignment.std}}
  results["relearn"] = relearn.relearn_audit(config, fed.data, fed.model.apply_fn, models)
  backdoor = backdoor_audit(config, fed, models)
  if backdoor is not None:
    results["backdoor"] = backdoor
    for name in models:
      results["figures"][name]["attack_success_rate"] = backdoor["attack_success_rate"][name]
      results["figures"][name]["attack_success_rate_after_relearning"] = {
          setting: {budget: rates[name] for budget, rates in per_budget.items()}
          for setting, per_budget in backdoor["attack_success_rate_after_relearning"].items()}
  text = table(results)
  common.log(text)
  if common.is_main_process():
    out_dir = os.path.join(workdir, PHASE)
    os.makedirs(out_dir, exist_ok=True)
    results["plots"] = [
        plot_rounds(out_dir, results["test_accuracy_per_round"], config.federated.num_rounds),
        plot_scores(out_dir, figures, float(oracle.threshold)),
        report.plot_relearn(out_dir, results["relearn"], labels=MODEL_LABELS)]
    common.write_json(os.path.join(out_dir, "metrics.json"), results)
    with open(os.path.join(out_dir, "report.md"), "w") as f:
      kind = (f", backdoor (target class {backdoor['target']})" if backdoor is not None
              else "")
      f.write(f"# Federated elimination: request {results['request']!r}, "
              f"{results['partition']} federation of {results['num_clients']} users{kind}\n\n"
              f"{text}\n\n{report.relearn_table(results['relearn'], MODEL_LABELS)}\n")
    common.log(f"[{PHASE}] report: {os.path.join(out_dir, 'report.md')}")
  return results


if __name__ == "__main__":
  cli.run(evaluate, default_config=fedlib.DEFAULT_CONFIG)
