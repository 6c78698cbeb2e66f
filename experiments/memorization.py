r"""How long the original model must train to memorize the forget set.

    python -m experiments.memorization --workdir runs/memorization --steps 1000,2000,4000,8000

Trains the run's original model (the train phase's data, model, optimizer
and seed) for each length in `--steps`, each into its own resumable
directory `<workdir>/memorization/steps_<n>/` (a finished one is reused),
and measures, without shadow models, what the audit needs from it:

- accuracy on the forget set, on the retained members, on the forget set's
  unseen look-alikes (the audit's matched non-members) and on the test split;
- the loss-threshold attack's AUC between the forget set and its look-alikes
  and between retained members and non-members (the loss is the membership
  score; LiRA needs shadow models trained as long, so it is not used here);
- the training wall time.

The lengths share the seed and the batch order, so with a constant learning
rate the shorter runs are the longer one's prefixes. Writes
`<workdir>/memorization/report.md` and `metrics.json`.
"""

import os
from typing import Any

from absl import flags
import ml_collections
import numpy as np

from experiments import cli, common
from experiments import train as train_phase
from forsaken_jax import mia, parallel, train

PHASE = "memorization"


def check_lengths(steps: list[int]) -> list[int]:
  """The training lengths, sorted; a clear error for none, non-positive or repeated ones."""
  if not steps:
    raise ValueError("--steps needs at least one training length")
  if any(s <= 0 for s in steps) or len(set(steps)) != len(steps):
    raise ValueError(f"--steps must be distinct positive step counts; got {steps}")
  return sorted(steps)


def memorization_curve(config: ml_collections.ConfigDict, workdir: str,
                       steps: list[int]) -> dict[str, Any]:
  """Trains the original model for each length and measures its memorization.

  Args:
    config: the experiment config (its `train.steps` is replaced by each length).
    workdir: the run directory; writes only `<workdir>/memorization/`.
    steps: the training lengths.

  Returns:
    `{"dataset", "lengths": [per length: steps, seconds, accuracies, AUCs]}`.
  """
  steps = check_lengths(steps)
  data = common.load_experiment_data(config)
  splits = data.splits
  population = np.sort(np.concatenate([splits.members, splits.nonmembers]))
  sets = {"forget": splits.forget,
          "retain": np.setdiff1d(splits.members, splits.forget),
          "lookalike": population[common.matched_nonmembers(data, population, config.scenario)],
          "nonmember": splits.nonmembers}
  model = common.create_model(common.model_spec(config, data))
  mesh = parallel.make_mesh()
  predict = train.make_predict_fn(model.apply_fn, mesh)
  images, labels = data.pool.images, data.pool.labels
  rows = []
  for length in steps:
    run_config = ml_collections.ConfigDict(config.to_dict())
    run_config.train.steps = length
    run_config.train.checkpoint_every = min(config.train.checkpoint_every, length)
    phase = os.path.join(PHASE, f"steps_{length}")
    summary = train_phase.run_training(run_config, workdir, phase=phase, data=data,
                                       indices=splits.members)
    params, _ = common.load_phase_params(run_config, workdir, phase, data)
    logits = np.asarray(predict(parallel.replicate(params, mesh), images))
    # The loss-threshold attack's membership score is the negative loss.
    loss = np.asarray(mia.loss(logits, labels))
    accuracy = {name: float(np.mean(logits[idx].argmax(-1) == labels[idx]))
                for name, idx in sets.items()}
    rows.append({
        "steps": length, "train_seconds": float(summary["train_seconds"]),
        "test_accuracy": float(summary["test_accuracy"]), "accuracy": accuracy,
        "loss_auc_forget_vs_lookalikes": float(mia.roc_auc(-loss[sets["forget"]],
                                                           -loss[sets["lookalike"]])),
        "loss_auc_retain_vs_nonmembers": float(mia.roc_auc(-loss[sets["retain"]],
                                                           -loss[sets["nonmember"]]))})
    common.log(f"[memorization] {length} steps: forget-set accuracy "
               f"{accuracy['forget']:.3f}, loss AUC forget vs look-alikes "
               f"{rows[-1]['loss_auc_forget_vs_lookalikes']:.3f}")
  results = {"dataset": data.pool.name, "num_forget": int(len(splits.forget)), "lengths": rows}
  out_dir = os.path.join(workdir, PHASE)
  if common.is_main_process():
    common.write_json(os.path.join(out_dir, "metrics.json"), results)
    with open(os.path.join(out_dir, "report.md"), "w") as f:
      f.write(markdown(results) + "\n")
    common.log(markdown(results))
  return results


def markdown(results: dict[str, Any]) -> str:
  """The memorization table: one row per training length."""
  out = [f"Memorization of the forget set ({results['num_forget']} examples, "
         f"{results['dataset']}) against training length; AUCs are the loss-threshold "
         "attack's.", "",
         "| steps | train s | test acc. | forget acc. | retained acc. | look-alike acc. "
         "| AUC forget vs look-alikes | AUC retained vs non-members |",
         "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
  for row in results["lengths"]:
    acc = row["accuracy"]
    out.append(f"| {row['steps']} | {row['train_seconds']:.1f} | {row['test_accuracy']:.1%} "
               f"| {acc['forget']:.1%} | {acc['retain']:.1%} | {acc['lookalike']:.1%} "
               f"| {row['loss_auc_forget_vs_lookalikes']:.3f} "
               f"| {row['loss_auc_retain_vs_nonmembers']:.3f} |")
  return "\n".join(out)


if __name__ == "__main__":
  _STEPS = flags.DEFINE_list("steps", ["1000", "2000", "4000", "8000"], "training lengths")
  cli.run(lambda config, workdir: memorization_curve(
      config, workdir, [int(s) for s in _STEPS.value]))
