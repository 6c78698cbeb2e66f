"""The NeurIPS 2023 unlearning challenge's forgetting quality, inside the benchmark.

The challenge (Triantafillou et al. 2024) judges a method by N models it
unlearned, each from its own original model, against N models retrained
without the forget set: for every forget example, the best membership test
between the two samples of N logit-scaled confidences gives an epsilon, and
F = mean over the forget set of 2^-floor(eps / 0.5)
(`forsaken_jax.mia.forgetting_quality`); the score is
F * (RA_u / RA_r) * (TA_u / TA_r) (`forsaken_jax.mia.challenge_score`).

For one scenario (its data and splits are those of the benchmark's run at
`challenge.seed`), `train_models` trains the 2N models as one stacked,
resumable run (`experiments.shadow.train_stacked`): N originals on the
members and N retrained models on the retained members, every model with
its own initialization and batch order, as the target model is trained.
`method_cell` then has one method unlearn each of the N originals, with the
benchmark's hyperparameters (`experiments.unlearners.request`), and scores
the result, with F and with U-LiRA (`forsaken_jax.mia.ulira_leave_one_out`,
Hayes et al. 2024) on the same models; the "original" row (no unlearning)
is the floor.

With N models per side a finite epsilon is at most ln(N - 1 - N delta)
(`forsaken_jax.mia.max_finite_epsilon`): with N = 16, about 2.7, so an
example scores one of 1, 1/2, ..., 1/32 or 0, and F cannot tell an epsilon
of 3 from a perfect separation. docs/BENCHMARK.md says what this means for
the table.
"""

import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from experiments import common, unlearners
from experiments import shadow as shadow_phase
from forsaken_jax import checkpoints, mia, parallel, train
from forsaken_jax import data as fj_data

RUN = "challenge_models"
SIGNATURE_SECTIONS = ("dataset", "scenario", "model", "train")
# A PRNG stream of the scenario's seed that no phase uses.
KEY_STREAM = 11


def design(splits: fj_data.Splits, num_models: int) -> dict[str, np.ndarray]:
  """What each of the 2N models trains on.

  Args:
    splits: the scenario's splits.
    num_models: N, models per side (>= 3, the challenge's minimum).

  Returns:
    `{"universe": [U] the members' pool indices, "keep": bool [2N, U]}`:
    rows 0..N-1 (the originals) keep every member, rows N..2N-1 (the
    retrained models) every member but the forget set.
  """
  mia.epsilon_cutoff(num_models)  # refuses N < 3
  universe = np.sort(splits.members)
  retained = ~np.isin(universe, splits.forget)
  keep = np.concatenate([np.ones((num_models, len(universe)), bool),
                         np.broadcast_to(retained, (num_models, len(universe)))])
  return {"universe": universe, "keep": keep}


def _meta(sc: ml_collections.ConfigDict, data: fj_data.ExperimentData, num_models: int
          ) -> dict[str, Any]:
  return checkpoints.base_meta(
      RUN, model=common.model_spec(sc, data), dataset_fingerprint=data.fingerprint(),
      signature=common.signature(sc, SIGNATURE_SECTIONS), num_models=int(num_models))


def train_models(sc: ml_collections.ConfigDict, directory: str, data: fj_data.ExperimentData,
                 num_models: int) -> tuple[list[Any], list[Any], float]:
  """Trains (or resumes, or just loads) the N originals and N retrained models.

  Args:
    sc: the scenario's experiment config.
    directory: the run's directory (`<directory>/checkpoints`).
    data: the scenario's data.
    num_models: N.

  Returns:
    `(originals, retrained, seconds)`: two lists of N parameter pytrees and
    the stacked run's training seconds (all 2N models together).
  """
  plan = design(data.splits, num_models)
  meta = _meta(sc, data, num_models)
  # A finished run is restored, not retrained; its meta (dataset fingerprint,
  # the training sections, N) fixes the design, so the state is used as is.
  state, seconds = shadow_phase.train_stacked(
      sc, directory, data, plan, phase=RUN,
      key=jax.random.fold_in(jax.random.key(sc.seed), KEY_STREAM), steps=sc.train.steps,
      meta=meta)
  stacked = jax.device_get(state["params"])
  models = [jax.tree.map(lambda x, k=k: x[k], stacked) for k in range(2 * num_models)]
  return models[:num_models], models[num_models:], float(seconds)


class Evaluation:
  """The logits and accuracies the challenge needs from one scenario's models."""

  def __init__(self, sc: ml_collections.ConfigDict, data: fj_data.ExperimentData):
    model = common.create_model(common.model_spec(sc, data))
    self.predict = train.make_predict_fn(model.apply_fn, parallel.make_mesh())
    images, labels = data.pool.images, data.pool.labels
    self.forget = (images[data.splits.forget], labels[data.splits.forget])
    self.retain = (images[data.splits.retain], labels[data.splits.retain])
    test = data.test_examples
    keep = (np.ones(len(test.labels), bool) if sc.scenario.kind != "class"
            else test.labels != sc.scenario.forget_class)
    self.test = (test.images[keep], test.labels[keep])

  def __call__(self, models: list[Any]) -> dict[str, np.ndarray]:
    """`{"forget_logits": [N, E, C], "UA", "RA", "TA": [N]}` of the N models.

    UA is 1 - forget-set accuracy, RA and TA accuracies, as in the benchmark's
    table (TA over the other classes when a class is forgotten).
    """
    out: dict[str, list[Any]] = {"forget_logits": [], "UA": [], "RA": [], "TA": []}
    for params in models:
      params = parallel.replicate(params, parallel.make_mesh())
      for name, (images, labels) in (("UA", self.forget), ("RA", self.retain),
                                     ("TA", self.test)):
        logits = self.predict(params, images)
        accuracy = float(np.mean(np.argmax(logits, -1) == labels))
        out[name].append(1.0 - accuracy if name == "UA" else accuracy)
        if name == "UA":
          out["forget_logits"].append(logits)
    return {k: np.asarray(v) for k, v in out.items()}


def _distinguishability(unlearned: dict[str, np.ndarray], retrained: dict[str, np.ndarray],
                        forget_labels: np.ndarray) -> tuple[mia.ForgettingQuality, dict]:
  """F and U-LiRA of two equal populations of models."""
  quality = mia.forgetting_quality(unlearned["forget_logits"], retrained["forget_logits"],
                                   forget_labels)
  stats = [np.stack([np.asarray(mia.logit_scaled_confidence(x, forget_labels)) for x in logits])
           for logits in (unlearned["forget_logits"], retrained["forget_logits"])]
  return quality, mia.ulira_leave_one_out(*stats)


def _half(models: dict[str, np.ndarray], which: int) -> dict[str, np.ndarray]:
  h = len(models["UA"]) // 2
  return {k: (v[:h] if which == 0 else v[h:2 * h]) for k, v in models.items()}


def half_figures(unlearned: dict[str, np.ndarray], retrained: dict[str, np.ndarray],
                 forget_labels: np.ndarray) -> dict[str, Any]:
  """F and U-LiRA with N/2 models per side: the first half of `unlearned`
  against the second half of `retrained`.

  Scored so, the first half of the retrained models against the second
  (`reference_cell`) is what a method indistinguishable from retraining
  gets at that N: the ceiling the N/2 figures are read against. Empty when
  N/2 < 3.
  """
  if len(unlearned["UA"]) // 2 < 3:
    return {}
  quality, ulira = _distinguishability(_half(unlearned, 0), _half(retrained, 1), forget_labels)
  return {"F_half": float(quality.quality), "ulira_auc_half": ulira["auc"]}


def score(unlearned: dict[str, np.ndarray], retrained: dict[str, np.ndarray],
          forget_labels: np.ndarray) -> dict[str, Any]:
  """F, the challenge score, U-LiRA and what they are made of, JSON-friendly.

  Args:
    unlearned: `Evaluation` of the N unlearned models.
    retrained: `Evaluation` of the N retrained models.
    forget_labels: `[E]`.
  """
  quality, ulira = _distinguishability(unlearned, retrained, forget_labels)
  values, counts = np.unique(np.asarray(quality.points), return_counts=True)
  return {
      "F": float(quality.quality),
      "score": mia.challenge_score(
          quality, retain_accuracy_unlearned=unlearned["RA"],
          retain_accuracy_retrained=retrained["RA"], test_accuracy_unlearned=unlearned["TA"],
          test_accuracy_retrained=retrained["TA"]),
      "epsilon_median": float(np.median(np.asarray(quality.epsilons))),
      "ulira_auc": ulira["auc"], "ulira_accuracy": ulira["accuracy"],
      **half_figures(unlearned, retrained, forget_labels),
      "points": {f"{v:g}": int(c) for v, c in zip(values, counts)},
      **{k: float(np.mean(unlearned[k])) for k in ("UA", "RA", "TA")},
      "num_models": int(quality.num_models),
  }


def reference_cell(retrained: dict[str, np.ndarray], forget_labels: np.ndarray
                   ) -> dict[str, Any]:
  """The "retrain" row: half the retrained models against the other half."""
  return {"finite": True, "seconds": None, "num_models": len(retrained["UA"]),
          **half_figures(retrained, retrained, forget_labels),
          **{k: float(np.mean(retrained[k])) for k in ("UA", "RA", "TA")}}


def method_cell(sc: ml_collections.ConfigDict, data: fj_data.ExperimentData,
                originals: list[Any], method: str | None, hyperparameters: dict[str, Any],
                evaluation: Evaluation, retrained: dict[str, np.ndarray], bar: Any
                ) -> dict[str, Any]:
  """One row: `method` unlearns every original (None: the originals as they are).

  Returns:
    `score`'s figures, plus `seconds` (mean per request) and `finite`
    (every unlearned model's parameters are finite; F is only computed then).
  """
  spec = common.model_spec(sc, data)
  models, seconds, finite = [], [], True
  for original in originals:
    if method is None:
      models.append(original)
    else:
      start = time.perf_counter()
      params, info = unlearners.request(sc, method, hyperparameters, data, spec, original,
                                        progress=False)
      seconds.append(time.perf_counter() - start)
      finite &= bool(info["finite"])
      models.append(jax.device_get(params))
    bar.update(1)
  cell: dict[str, Any] = {"finite": finite,
                          "seconds": float(np.mean(seconds)) if seconds else None}
  if finite:
    cell.update(score(evaluation(models), retrained, data.pool.labels[data.splits.forget]))
  return cell


def markdown(results: dict[str, dict[str, dict[str, Any]]], num_models: int) -> str:
  """The challenge's table: one per scenario, rows in run order."""
  half = num_models // 2
  lines = [f"### Forgetting quality (NeurIPS 2023 challenge) and U-LiRA, N = {num_models} "
           "models per side",
           "",
           f"A finite epsilon is at most {mia.max_finite_epsilon(num_models):.2f} with N = "
           f"{num_models}; an example scores 2^-floor(eps / 0.5), 0 from "
           f"{mia.epsilon_cutoff(num_models)}. U-LiRA: per forget example, Gaussians fitted to "
           "the unlearned and the retrained models' logit-scaled confidences, each pair "
           "held out in turn (0.5 = indistinguishable from retraining). The N/2 columns "
           f"score the first {half} unlearned models against the other {half} retrained "
           "ones; the retrain row, half the retrained models against the other half, is what "
           "retraining itself gets there. UA, RA and TA are the means over the N models.",
           ""]

  def fmt(row, key, spec, best=None):
    if key not in row:
      return "—"
    text = format(row[key], spec)
    return f"**{text}**" if best is not None and row[key] == best else text

  for scenario, rows in results.items():
    lines += [f"**{scenario}**", "",
              f"| method | F | score | U-LiRA AUC | U-LiRA acc. | F (N/2 = {half}) | "
              f"U-LiRA AUC (N/2) | UA | RA | TA | seconds per request |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    methods = {n: r for n, r in rows.items() if n != "retrain"}
    best = max((r["F"] for r in methods.values() if "F" in r), default=None)
    best_half = max((r["F_half"] for r in methods.values() if "F_half" in r), default=None)
    for name, r in rows.items():
      if not r["finite"]:
        lines.append(f"| {name} | non-finite parameters |" + " |" * 9)
        continue
      secs = "" if r["seconds"] is None else f"{r['seconds']:.1f}"
      lines.append(
          f"| {name} | {fmt(r, 'F', '.3f', best)} | {fmt(r, 'score', '.3f')} | "
          f"{fmt(r, 'ulira_auc', '.3f')} | {fmt(r, 'ulira_accuracy', '.3f')} | "
          f"{fmt(r, 'F_half', '.3f', best_half)} | {fmt(r, 'ulira_auc_half', '.3f')} | "
          f"{100 * r['UA']:.1f} | {100 * r['RA']:.1f} | {100 * r['TA']:.1f} | {secs} |")
    lines.append("")
  return "\n".join(lines)


def models_directory(out: str, scenario: str, seed: int) -> str:
  """Where a scenario's 2N models are kept: `<out>/challenge/<scenario>_s<seed>`."""
  return os.path.join(out, "challenge", f"{scenario}_s{seed}")
