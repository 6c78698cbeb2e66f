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
  non-members, which no model trained on (AUC should be ~0.5).
"""

import os
from typing import Any

import jax
import ml_collections
import numpy as np

from experiments import cli, common, report
from experiments import shadow as shadow_phase
from forsaken_jax import checkpoints, mia, parallel, train
from forsaken_jax import data as fj_data
from forsaken_jax.mia import audit
from forsaken_jax.mia import shadow as shadow_lib

PHASE = "evaluate"


def matched_nonmembers(data: fj_data.ExperimentData, population: np.ndarray,
                       scenario: ml_collections.ConfigDict) -> np.ndarray:
  """Non-members that resemble the forget set, as a bool mask over `population`.

  The forget set is judged against non-members of its own kind: unseen OOD
  patches in the OOD scenario, unseen examples of the forgotten class in the
  class scenario, unseen in-distribution examples for random forget sets.
  """
  nonmember = np.isin(population, data.splits.nonmembers)
  if scenario.kind == "ood":
    return nonmember & data.is_ood[population]
  if scenario.kind == "class":
    return nonmember & (data.pool.labels[population] == scenario.forget_class)
  return nonmember & ~data.is_ood[population]


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs the audit (see the module docstring) and writes the report.

  Returns:
    The metrics dict written to `metrics.json`.
  """
  data, _ = common.load_upstream_data(config, workdir)
  splits = data.splits
  spec = common.model_spec(config, data)
  model = common.create_model(spec)
  mesh = parallel.make_mesh()
  predict = train.make_predict_fn(model.apply_fn, mesh)
  ec = config.evaluate

  params, metas = {}, {}
  for name, phase in report.MODEL_PHASES.items():  # the original is required
    if name != "original" and not os.path.isdir(common.checkpoint_dir(workdir, phase)):
      common.log(f"[evaluate] no {phase} phase in {workdir}: auditing without the {name} model")
      continue
    params[name], metas[name] = common.load_phase_params(config, workdir, phase, data)
    # Each phase saved its parameters on its own mesh (the unlearn phase uses
    # one device); the audit's predict function is jitted on this mesh.
    params[name] = parallel.replicate(params[name], mesh)

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

  common.log(f"[evaluate] scoring {len(params)} models and {design['keep'].shape[0]} shadow models "
             f"on {pop_size} population examples")
  stacked_predict = shadow_lib.make_stacked_predict_fn(model.apply_fn)
  lira_params = jax.tree.map(lambda x: x[:num_lira], shadow_params)
  shokri_params = jax.tree.map(lambda x: x[num_lira:], shadow_params)
  evidence = audit.shadow_evidence(
      lira_logits=stacked_predict(lira_params, images[population]),
      lira_keep=design["keep"][:num_lira, :pop_size], population_labels=pop_labels,
      shokri_logits=stacked_predict(shokri_params, images[shokri_data]),
      shokri_keep=design["keep"][num_lira:, pop_size:], shokri_labels=labels[shokri_data],
      shokri_mode=ec.shokri_features)

  is_forget = np.isin(population, splits.forget)
  is_retain = np.isin(population, splits.members) & ~is_forget
  is_nonmember = np.isin(population, splits.nonmembers)
  is_matched = matched_nonmembers(data, population, config.scenario)
  logits = {name: predict(p, images[population]) for name, p in params.items()}
  oracles = audit.fit_oracles(
      jax.random.fold_in(jax.random.key(config.seed), 2), evidence, logits["original"], pop_labels,
      is_retain, is_nonmember, shokri_mode=ec.shokri_features, shokri_per_class=ec.shokri_per_class,
      lira_fixed_variance=ec.lira_fixed_variance)
  scores = {name: audit.oracle_scores(oracles, evidence, lg, pop_labels)
            for name, lg in logits.items()}
  decisions = {name: audit.judged_member(oracles, s) for name, s in scores.items()}

  results: dict[str, Any] = {
      "dataset": data.pool.name, "scenario": config.scenario.kind,
      "num_forget": int(is_forget.sum()), "num_retain": int(is_retain.sum()),
      "num_nonmembers": int(is_nonmember.sum()), "num_matched_nonmembers": int(is_matched.sum()),
      "num_lira_shadow_models": num_lira,
      "num_shokri_shadow_models": int(design["keep"].shape[0] - num_lira),
      "shokri_attack_train_balanced_accuracy": float(oracles.shokri.train_balanced_accuracy),
      "loss_threshold": float(oracles.loss_threshold.threshold),
  }
  results["accuracy"] = {}
  for name, p in params.items():
    correct = np.argmax(logits[name], -1) == pop_labels
    results["accuracy"][name] = {
        "test": train.evaluate(predict, p, data.test.images, data.test.labels)["accuracy"],
        "retain": float(correct[is_retain].mean()), "forget": float(correct[is_forget].mean()),
        "nonmember": float(correct[is_nonmember].mean()),
    }
  results["attack_retain_vs_nonmembers"] = {
      name: audit.attack_summary(s, is_retain, is_nonmember) for name, s in scores.items()}
  results["attack_forget_vs_matched_nonmembers"] = {
      name: audit.attack_summary(s, is_forget, is_matched) for name, s in scores.items()}
  results["judged_member_rate_on_forget"] = {
      name: {o: float(d[o][is_forget].mean()) for o in audit.ORACLES}
      for name, d in decisions.items()}
  results["forgetting_rate"] = {
      name: audit.forgetting_rates(decisions["original"], decisions[name], is_forget)
      for name in ("unlearned", "retrained") if name in decisions}
  if {"unlearned", "retrained"} <= set(scores):
    results["ulira"] = mia.unlearning_distinguishability(
        scores["unlearned"]["lira"][is_forget], scores["retrained"]["lira"][is_forget])
  halves = np.random.default_rng([config.seed, 7]).permutation(np.flatnonzero(is_nonmember))
  half = len(halves) // 2
  results["control_nonmember_halves_lira_auc"] = float(mia.roc_auc(
      scores["original"]["lira"][halves[:half]], scores["original"]["lira"][halves[half:]]))
  results["wall_seconds"] = report.phase_seconds(workdir)

  out_dir = os.path.join(workdir, PHASE)
  if common.is_main_process():
    os.makedirs(out_dir, exist_ok=True)
    results["plots"] = report.plot_all(
        out_dir, scores=scores, masks={"retain": is_retain, "nonmember": is_nonmember,
                                       "forget": is_forget, "matched": is_matched},
        lira_stats={name: np.asarray(mia.logit_scaled_confidence(lg, pop_labels))
                    for name, lg in logits.items()})
    results = audit.to_jsonable(results)
    common.write_json(os.path.join(out_dir, "metrics.json"), results)
    with open(os.path.join(out_dir, "report.md"), "w") as f:
      f.write(report.markdown(results))
    common.log(report.headline_table(results))
    common.log(f"[evaluate] report: {os.path.join(out_dir, 'report.md')}")
  return results


if __name__ == "__main__":
  cli.run(evaluate)
