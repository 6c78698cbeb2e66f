"""The evaluate phase: the membership-inference audit of every model of a run.

    python -m experiments.evaluate --config experiments/configs/default.py --workdir runs/default

Reads, read-only, the train phase's original model, the shadow models, and
(when those phases have run) the unlearned and the retrained models. Writes
`<workdir>/evaluate/metrics.json`, `<workdir>/evaluate/report.md` and plots
under `<workdir>/evaluate/`:

- accuracy on the retained members, the forget set, non-members and the test split;
- for each oracle (Shokri, LiRA, loss threshold): AUC, balanced accuracy and
  TPR at 0.1% / 1% FPR, on retained members vs non-members and on the forget
  set vs matching non-members;
- the forgetting rate of the unlearned model beside that of the retrained
  model, per oracle (`forsaken_jax.mia.audit`);
- U-LiRA: how well LiRA tells the unlearned model's forget-set scores from the
  retrained model's (AUC 0.5 = indistinguishable);
- an unseen-vs-unseen control: LiRA between two random halves of the
  non-members, which no model trained on (AUC should be ~0.5);
- the relearning attack (`experiments.relearn`): steps of fine-tuning on the
  forget set until each model's accuracy there is back, beside the same
  model learning as many unseen look-alikes;
- the unlearning benchmark's figures (`forsaken_jax.mia.benchmark`): UA, RA,
  TA and SalUn's MIA-efficacy of each model, and the average gap of the
  unlearned model to the retrained one.
"""

import os
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np

from experiments import cli, common, relearn, report
from experiments import shadow as shadow_phase
from forsaken_jax import checkpoints, mia, parallel, train
from forsaken_jax import data as fj_data
from forsaken_jax.mia import audit
from forsaken_jax.mia import shadow as shadow_lib

PHASE = "evaluate"


class Audit(NamedTuple):
  """The oracles of one run, fitted once, and what applying them needs."""

  oracles: audit.FittedOracles
  evidence: audit.ShadowEvidence
  predict: Any  # train.make_predict_fn of the run's model
  population: np.ndarray  # pool indices every LiRA shadow model has an opinion about
  labels: np.ndarray  # their labels
  masks: dict[str, np.ndarray]  # retain / forget / nonmember / matched, over the population
  test: fj_data.ArrayDataset
  kept_classes: np.ndarray | None  # class scenario: bool [test] of the classes not forgotten
  num_lira: int
  num_shokri: int


class ModelAudit(NamedTuple):
  """One model under the audit."""

  logits: np.ndarray  # [P, C] on the population
  scores: dict[str, np.ndarray]  # every oracle's membership score
  decisions: dict[str, np.ndarray]  # every oracle's member / non-member verdict
  accuracy: dict[str, float]
  test_logits: np.ndarray  # [T, C] on the test split


def build_audit(config: ml_collections.ConfigDict, workdir: str, data: fj_data.ExperimentData,
                original: Any) -> Audit:
  """Scores the shadow models and fits the oracles on the original model.

  Args:
    config: the experiment config.
    workdir: the run directory (its shadow phase is read, read-only).
    data: the run's data.
    original: the original model's parameters.

  Returns:
    An `Audit`.
  """
  splits, ec = data.splits, config.evaluate
  model = common.create_model(common.model_spec(config, data))
  predict = train.make_predict_fn(model.apply_fn, parallel.make_mesh())
  # Population = the target's members and non-members: the examples every
  # LiRA shadow model has an in/out opinion about.
  shadow_params, design = shadow_phase.load_shadows(config, workdir, data)
  num_lira, pop_size = int(design["num_lira"][0]), int(design["population_size"][0])
  population = design["universe"][:pop_size]
  if not np.array_equal(population, np.sort(np.concatenate([splits.members, splits.nonmembers]))):
    raise checkpoints.CheckpointError("the shadow phase's population differs from this run's splits")
  shokri_data = design["universe"][pop_size:]
  images, labels = data.pool.images, data.pool.labels
  pop_labels = labels[population]
  stacked_predict = shadow_lib.make_stacked_predict_fn(model.apply_fn)
  evidence = audit.shadow_evidence(
      lira_logits=stacked_predict(jax.tree.map(lambda x: x[:num_lira], shadow_params),
                                  images[population]),
      lira_keep=design["keep"][:num_lira, :pop_size], population_labels=pop_labels,
      shokri_logits=stacked_predict(jax.tree.map(lambda x: x[num_lira:], shadow_params),
                                    images[shokri_data]),
      shokri_keep=design["keep"][num_lira:, pop_size:], shokri_labels=labels[shokri_data],
      shokri_mode=ec.shokri_features)
  # Masks that do not line up with the examples still give well-formed LiRA
  # scores, just meaningless ones: refuse them before any model is judged.
  alignment = audit.check_keep_alignment(evidence.lira_stats, evidence.lira_keep)
  common.log(f"[evaluate] LiRA keep masks fit the shadow models: paired AUC "
             f"{alignment.auc:.3f} (0.5 +- {alignment.std:.3f} if they did not)")
  is_forget = np.isin(population, splits.forget)
  masks = {"forget": is_forget, "retain": np.isin(population, splits.members) & ~is_forget,
           "nonmember": np.isin(population, splits.nonmembers),
           "matched": common.matched_nonmembers(data, population, config.scenario)}
  original = parallel.replicate(original, parallel.make_mesh())
  oracles = audit.fit_oracles(
      jax.random.fold_in(jax.random.key(config.seed), 2), evidence,
      predict(original, images[population]), pop_labels, masks["retain"], masks["nonmember"],
      shokri_mode=ec.shokri_features, shokri_per_class=ec.shokri_per_class,
      lira_fixed_variance=ec.lira_fixed_variance)
  test = data.test_examples
  kept = None
  if config.scenario.kind == "class":
    kept = test.labels != config.scenario.forget_class
  return Audit(oracles, evidence, predict, population, pop_labels, masks, test, kept,
               num_lira, int(design["keep"].shape[0] - num_lira))


def audit_model(ctx: Audit, images: np.ndarray, params: Any) -> ModelAudit:
  """Applies the fitted oracles to one model.

  Args:
    ctx: from `build_audit`.
    images: the pool's images.
    params: the model's parameters (host or device arrays).

  Returns:
    A `ModelAudit`.
  """
  params = parallel.replicate(params, parallel.make_mesh())
  logits = ctx.predict(params, images[ctx.population])
  scores = audit.oracle_scores(ctx.oracles, ctx.evidence, logits, ctx.labels)
  correct = np.argmax(logits, -1) == ctx.labels
  test_logits = ctx.predict(params, ctx.test.images)
  test_correct = np.argmax(test_logits, -1) == ctx.test.labels
  accuracy = {"test": float(test_correct.mean())}
  if ctx.kept_classes is not None:
    # Forgetting a class costs its test images by design; what must be kept is
    # the accuracy on the other classes.
    accuracy["test_other_classes"] = float(test_correct[ctx.kept_classes].mean())
  accuracy.update({name: float(correct[ctx.masks[name]].mean())
                   for name in ("retain", "forget", "nonmember")})
  return ModelAudit(logits, scores, audit.judged_member(ctx.oracles, scores), accuracy,
                    np.asarray(test_logits))


def forget_set_figures(ctx: Audit, before: ModelAudit, after: ModelAudit
                       ) -> dict[str, float | None]:
  """How a changed model treats the forget set, the figures every comparison table shows.

  Args:
    ctx: from `build_audit`.
    before: `audit_model` of the original model.
    after: `audit_model` of the unlearned or retrained model.

  Returns:
    `fr_<oracle>`: the forgetting rate under each oracle (None when
    undefined), and `lira_auc`: LiRA's AUC between the forget set and its
    unseen look-alikes on `after`.
  """
  forget, matched = ctx.masks["forget"], ctx.masks["matched"]
  rates = audit.forgetting_rates(before.decisions, after.decisions, forget)
  return {"lira_auc": float(mia.roc_auc(after.scores["lira"][forget],
                                        after.scores["lira"][matched])),
          **{f"fr_{oracle}": rate.rate for oracle, rate in rates.items()}}


def benchmark_figures(ctx: Audit, audited: dict[str, ModelAudit], seed: int) -> dict[str, Any]:
  """UA, RA, TA and MIA-efficacy per model, and the unlearned model's average gap.

  The test set is the test split (its other classes when a class is
  forgotten), both for TA and as MIA-efficacy's non-members; the members are
  the retained members. See `forsaken_jax.mia.benchmark`.

  Args:
    ctx: from `build_audit`.
    audited: `audit_model` of each model, by name.
    seed: seeds MIA-efficacy's balancing subsample.

  Returns:
    `{model: {"UA", "RA", "TA", "MIA"}}`, plus `average_gap` (percentage
    points, unlearned vs retrained) when both models are there.
  """
  forget, retain = ctx.masks["forget"], ctx.masks["retain"]
  keep = (np.ones(len(ctx.test.labels), bool) if ctx.kept_classes is None
          else ctx.kept_classes)
  test_labels = ctx.test.labels[keep]
  out: dict[str, Any] = {}
  for name, a in audited.items():
    sets = ((a.logits[forget], ctx.labels[forget]), (a.logits[retain], ctx.labels[retain]),
            (a.test_logits[keep], test_labels))
    figures = {k: float(v) for k, v in mia.accuracy_metrics(*sets[0], *sets[1], *sets[2]).items()}
    figures["MIA"] = mia.mia_efficacy(
        *(np.asarray(mia.true_class_confidence(x, y)) for x, y in sets), seed=seed)
    out[name] = figures
  if {"unlearned", "retrained"} <= set(out):
    out["average_gap"] = mia.average_gap(out["unlearned"], out["retrained"])
  return out


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs the audit (see the module docstring) and writes the report.

  Returns:
    The metrics dict written to `metrics.json`.
  """
  data, _ = common.load_upstream_data(config, workdir)
  params = {}
  for name, phase in report.MODEL_PHASES.items():  # the original is required
    if name != "original" and not os.path.isdir(common.checkpoint_dir(workdir, phase)):
      common.log(f"[evaluate] no {phase} phase in {workdir}: auditing without the {name} model")
      continue
    params[name], _ = common.load_phase_params(config, workdir, phase, data)
  ctx = build_audit(config, workdir, data, params["original"])
  common.log(f"[evaluate] scored {ctx.num_lira + ctx.num_shokri} shadow models on "
             f"{len(ctx.population)} population examples; auditing {len(params)} models")
  audited = {name: audit_model(ctx, data.pool.images, p) for name, p in params.items()}
  scores = {name: a.scores for name, a in audited.items()}
  masks = ctx.masks
  is_forget = masks["forget"]

  results: dict[str, Any] = {
      "dataset": data.pool.name, "scenario": config.scenario.kind,
      "num_forget": int(is_forget.sum()), "num_retain": int(masks["retain"].sum()),
      "num_nonmembers": int(masks["nonmember"].sum()),
      "num_matched_nonmembers": int(masks["matched"].sum()),
      "num_lira_shadow_models": ctx.num_lira, "num_shokri_shadow_models": ctx.num_shokri,
      "shokri_attack_train_balanced_accuracy": float(ctx.oracles.shokri.train_balanced_accuracy),
      "loss_threshold": float(ctx.oracles.loss_threshold.threshold),
      "accuracy": {name: a.accuracy for name, a in audited.items()},
      "attack_retain_vs_nonmembers": {
          name: audit.attack_summary(s, masks["retain"], masks["nonmember"])
          for name, s in scores.items()},
      "attack_forget_vs_matched_nonmembers": {
          name: audit.attack_summary(s, is_forget, masks["matched"]) for name, s in scores.items()},
      "judged_member_rate_on_forget": {
          name: {o: float(a.decisions[o][is_forget].mean()) for o in audit.ORACLES}
          for name, a in audited.items()},
      "forgetting_rate": {
          name: audit.forgetting_rates(audited["original"].decisions, audited[name].decisions,
                                       is_forget)
          for name in ("unlearned", "retrained") if name in audited},
  }
  if {"unlearned", "retrained"} <= set(scores):
    results["ulira"] = mia.unlearning_distinguishability(
        scores["unlearned"]["lira"][is_forget], scores["retrained"]["lira"][is_forget])
  halves = np.random.default_rng([config.seed, 7]).permutation(np.flatnonzero(masks["nonmember"]))
  half = len(halves) // 2
  results["control_nonmember_halves_lira_auc"] = float(mia.roc_auc(
      scores["original"]["lira"][halves[:half]], scores["original"]["lira"][halves[half:]]))
  results["benchmark"] = benchmark_figures(ctx, audited, config.seed)
  results["wall_seconds"] = report.phase_seconds(workdir)
  results["relearn"] = relearn.relearn_audit(
      config, data, common.create_model(common.model_spec(config, data)).apply_fn, params)

  out_dir = os.path.join(workdir, PHASE)
  if common.is_main_process():
    os.makedirs(out_dir, exist_ok=True)
    results["plots"] = report.plot_all(
        out_dir, scores=scores, masks=masks,
        lira_stats={name: np.asarray(mia.logit_scaled_confidence(a.logits, ctx.labels))
                    for name, a in audited.items()})
    results["plots"].append(report.plot_relearn(out_dir, results["relearn"]))
    results = audit.to_jsonable(results)
    common.write_json(os.path.join(out_dir, "metrics.json"), results)
    with open(os.path.join(out_dir, "report.md"), "w") as f:
      f.write(report.markdown(results))
    common.log(report.headline_table(results))
    common.log(f"[evaluate] report: {os.path.join(out_dir, 'report.md')}")
  return results


if __name__ == "__main__":
  cli.run(evaluate)
