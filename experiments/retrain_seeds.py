r"""How much exact retraining itself varies, audited like the run's models.

    python -m experiments.retrain_seeds --workdir runs/default [--config ...] [--num_seeds 4]

The evaluate phase compares Forsaken with *one* retrained model. Retraining
is random too (initialization, batch order), so two exact retrainings on the
same retained members already differ in every audit figure. This script
trains `--num_seeds` more models on the retained members, each with another
training seed (`train.run_training(seed_stream=k)`: same splits, same steps,
another initialization and batch order), into `<workdir>/retrain_seed<k>/`
(resumable; a finished one is reused), and audits them with the run's
oracles, fitted once on the original model as in the evaluate phase.

It reads the train, shadow, retrain and (if present) unlearn phases
read-only, and writes `<workdir>/retrain_seeds/report.md` and
`metrics.json`:

- per model (the original, each retraining, the unlearned model when the
  unlearn phase has run; the retrain phase's model is training seed 0):
  test accuracy (on the classes not forgotten when a class is forgotten),
  forget accuracy, FR per oracle, the forget set's LiRA AUC against unseen
  look-alikes, U-LiRA against the retrain phase's model, and two
  membership-free figures that explain the AUC: the mean probability of
  the assigned label on the forget set and on the look-alikes, and how many
  classes the model spreads the look-alikes over (entropy of its predicted
  classes, in bits);
- the retrainings' mean, standard deviation and range, and the largest AUC
  difference between two of them: how far apart two exact retrainings land,
  the resolution of any "within x of retraining" comparison;
- the unlearned model's AUC distance to the retrainings' mean and to the
  nearest one, and U-LiRA against each retraining.
"""

import itertools
import os
from typing import Any

from absl import flags
import ml_collections
import numpy as np
import scipy.special

from experiments import cli, common, report
from experiments import evaluate as evaluate_phase
from experiments import train as train_phase
from forsaken_jax import mia
from forsaken_jax.mia import audit

PHASE = "retrain_seeds"


def retrain_phase_name(seed_stream: int) -> str:
  """The directory of the retraining with training seed `seed_stream` (0: the retrain phase)."""
  return "retrain" if seed_stream == 0 else f"retrain_seed{seed_stream}"


def _stats(values: list[float]) -> dict[str, float] | None:
  """Mean, sample standard deviation and range; None without values (e.g. FR undefined)."""
  if not values:
    return None
  array = np.asarray(values, np.float64)
  return {"mean": float(array.mean()), "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0,
          "min": float(array.min()), "max": float(array.max())}


def retrain_spread(config: ml_collections.ConfigDict, workdir: str,
                   num_seeds: int = 4) -> dict[str, Any]:
  """Trains `num_seeds` more retrainings and audits them beside the run's models.

  Args:
    config: the run's config.
    workdir: a run whose train, shadow and retrain phases have finished.
    num_seeds: retrainings to add to the retrain phase's (seeds 1..num_seeds).

  Returns:
    The metrics dict written to `<workdir>/retrain_seeds/metrics.json`.
  """
  if num_seeds < 1:
    raise ValueError(f"num_seeds must be at least 1, got {num_seeds}")
  data, _ = common.load_upstream_data(config, workdir)
  for phase in ("shadow", "retrain"):
    if not os.path.isdir(common.checkpoint_dir(workdir, phase)):
      raise FileNotFoundError(f"{workdir} has no {phase} phase: run the pipeline on it first")
  for stream in range(1, num_seeds + 1):
    common.log(f"[{PHASE}] retraining with training seed {stream} of {num_seeds}")
    train_phase.run_training(config, workdir, phase=retrain_phase_name(stream), data=data,
                             indices=data.splits.retain, seed_stream=stream)

  original, _ = common.load_phase_params(config, workdir, "train", data)
  ctx = evaluate_phase.build_audit(config, workdir, data, original)
  images, is_forget, matched = data.pool.images, ctx.masks["forget"], ctx.masks["matched"]
  before = evaluate_phase.audit_model(ctx, images, original)
  # Forgetting a class costs its test images by design: utility is measured
  # on the other classes there, as in the evaluate phase's table.
  test_key = "test_other_classes" if "test_other_classes" in before.accuracy else "test"

  def figures(result):
    row = {"test": result.accuracy[test_key], "forget": result.accuracy["forget"],
           **evaluate_phase.forget_set_figures(ctx, before, result),
           **behaviour(result.logits)}
    return row, np.asarray(result.scores["lira"])[is_forget]

  def behaviour(logits):
    # What the model does on the forget set and its look-alikes regardless of
    # membership: the probability of the assigned label, and how many classes
    # the look-alikes are spread over (entropy of the predicted-class counts).
    probs = scipy.special.softmax(np.asarray(logits, np.float64), axis=-1)
    label_prob = probs[np.arange(len(probs)), ctx.labels]
    counts = np.bincount(probs[matched].argmax(-1), minlength=probs.shape[-1])
    shares = counts[counts > 0] / counts.sum()
    return {"label_prob_forget": float(label_prob[is_forget].mean()),
            "label_prob_matched": float(label_prob[matched].mean()),
            "matched_prediction_entropy_bits": float(-(shares * np.log2(shares)).sum())}

  retrained, forget_scores = {}, {}
  for stream in range(num_seeds + 1):
    params, _ = common.load_phase_params(config, workdir, retrain_phase_name(stream), data)
    retrained[stream], forget_scores[stream] = figures(
        evaluate_phase.audit_model(ctx, images, params))
  for stream, row in retrained.items():
    row["ulira_vs_seed0"] = (None if stream == 0 else mia.unlearning_distinguishability(
        forget_scores[stream], forget_scores[0])["auc"])

  aucs = [row["lira_auc"] for row in retrained.values()]
  results: dict[str, Any] = {
      "num_retrainings": num_seeds + 1, "num_forget": int(is_forget.sum()),
      "num_matched_nonmembers": int(matched.sum()),
      "test_accuracy_on": ("classes not forgotten" if test_key == "test_other_classes"
                           else "all classes"),
      # A forgetting rate compares a model with the original: none for the original.
      "original": {k: v for k, v in figures(before)[0].items() if not k.startswith("fr_")},
      "retrained": {str(k): v for k, v in retrained.items()},
      "retrained_stats": {key: _stats([row[key] for row in retrained.values()
                                       if row[key] is not None])
                          for key in ("test", "forget", "lira_auc", "fr_shokri", "fr_lira",
                                      "fr_loss")},
      "retrained_max_pairwise_auc_difference": float(max(
          abs(a - b) for a, b in itertools.combinations(aucs, 2))),
  }
  if os.path.isdir(common.checkpoint_dir(workdir, "unlearn")):
    unlearned_params, _ = common.load_phase_params(config, workdir, "unlearn", data)
    unlearned, unlearned_scores = figures(
        evaluate_phase.audit_model(ctx, images, unlearned_params))
    unlearned["ulira_vs_each_retraining"] = [
        mia.unlearning_distinguishability(unlearned_scores, forget_scores[k])["auc"]
        for k in sorted(forget_scores)]
    unlearned["auc_distance_to_retrained_mean"] = abs(
        unlearned["lira_auc"] - results["retrained_stats"]["lira_auc"]["mean"])
    unlearned["auc_distance_to_nearest_retraining"] = min(abs(unlearned["lira_auc"] - a)
                                                         for a in aucs)
    results["unlearned"] = unlearned

  table = markdown(results)
  common.log(table)
  if common.is_main_process():
    out_dir = os.path.join(workdir, PHASE)
    os.makedirs(out_dir, exist_ok=True)
    common.write_json(os.path.join(out_dir, "metrics.json"), audit.to_jsonable(results))
    with open(os.path.join(out_dir, "report.md"), "w") as f:
      f.write(table + "\n")
  return results


def markdown(results: dict[str, Any]) -> str:
  """The spread of retraining as a markdown table plus its summary lines."""
  pct = report.pct
  test = "test acc." if results["test_accuracy_on"] == "all classes" else (
      "test acc., classes not forgotten")
  lines = [f"| model | {test} | forget acc. | FR Shokri | FR LiRA | FR loss | "
           "LiRA AUC forget vs look-alikes | U-LiRA AUC vs retraining seed 0 | "
           "p(assigned label), forget / look-alikes | look-alikes' predicted classes (bits) |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]

  def line(name, row, ulira):
    fr = ["—" if f"fr_{o}" not in row else pct(row[f"fr_{o}"]) for o in audit.ORACLES]
    lines.append(f"| {name} | {pct(row['test'])} | {pct(row['forget'])} | {' | '.join(fr)} | "
                 f"{row['lira_auc']:.3f} | {ulira} | {row['label_prob_forget']:.3f} / "
                 f"{row['label_prob_matched']:.3f} | "
                 f"{row['matched_prediction_entropy_bits']:.2f} |")

  line("original", results["original"], "—")
  for stream, row in results["retrained"].items():
    line(f"retrained, training seed {stream}", row,
         "—" if row["ulira_vs_seed0"] is None else f"{row['ulira_vs_seed0']:.3f}")
  if "unlearned" in results:
    u = results["unlearned"]
    line("Forsaken", u, f"{u['ulira_vs_each_retraining'][0]:.3f}")
  stats = results["retrained_stats"]

  def spread(key, fmt):
    s = stats[key]
    if s is None:
      return "undefined"
    return f"{fmt(s['mean'])} ± {fmt(s['std'])} ({fmt(s['min'])} to {fmt(s['max'])})"

  auc = lambda x: f"{x:.3f}"
  out = ["\n".join(lines), "",
         f"{results['num_retrainings']} retrainings (mean ± standard deviation, range): "
         f"test accuracy{'' if test == 'test acc.' else ' on the classes not forgotten'} "
         f"{spread('test', pct)}; FR Shokri {spread('fr_shokri', pct)}, LiRA "
         f"{spread('fr_lira', pct)}, loss {spread('fr_loss', pct)}; forget-set LiRA AUC "
         f"{spread('lira_auc', auc)}. Largest AUC difference between two retrainings: "
         f"{results['retrained_max_pairwise_auc_difference']:.3f}."]
  if "unlearned" in results:
    u = results["unlearned"]
    out += ["", f"Forsaken's forget-set LiRA AUC {u['lira_auc']:.3f}: "
                f"{u['auc_distance_to_retrained_mean']:.3f} from the retrainings' mean, "
                f"{u['auc_distance_to_nearest_retraining']:.3f} from the nearest retraining. "
                "U-LiRA AUC against each retraining: "
                + ", ".join(f"{a:.3f}" for a in u["ulira_vs_each_retraining"]) + "."]
  return "\n".join(out)


if __name__ == "__main__":
  _NUM_SEEDS = flags.DEFINE_integer("num_seeds", 4, "retrainings to add to the retrain phase's")
  cli.run(lambda config, workdir: retrain_spread(config, workdir, _NUM_SEEDS.value))
