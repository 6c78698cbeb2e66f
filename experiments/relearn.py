r"""The relearning audit: does the forgetting survive a few steps of fine-tuning?

    python -m experiments.relearn --workdir runs/default [--config ...]

Fine-tunes every model of a finished run (original, unlearned, retrained;
whichever phases have run) on the forget set alone, full batch, with each
optimizer setting of `evaluate.relearn.settings`, and records accuracy and
loss per step (`forsaken_jax.mia.make_relearn_attack`: every model and set of
a setting in one vmapped, compiled program). The control is each model
learning as many unseen look-alikes (non-members of the forget set's kind,
`common.matched_nonmembers`): a model that never saw the forget set relearns
it about as fast as it learns the look-alikes; one that only suppressed its
memory relearns it much faster.

Needs only the train phase (the shadow models are not used), so it is also a
quick check of an unlearning run. The evaluate phase includes the same
figures in `metrics.json`, its table and a plot (`report.relearn_table`,
`report.plot_relearn`); this entry point prints the table and writes
`<workdir>/relearn/relearn.json` and `relearn.png`.
"""

import functools
import os
from typing import Any, Mapping, Sequence

import jax
import ml_collections
import numpy as np
import optax

from experiments import cli, common, report
from forsaken_jax import data as fj_data
from forsaken_jax import mia, parallel, train

OPTIMIZERS = {"adam": optax.adam, "sgd": optax.sgd}


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError for a bad `evaluate.relearn` section (before any phase runs)."""
  rc = config.evaluate.relearn
  if rc.steps < 1:
    raise ValueError(f"evaluate.relearn.steps must be positive, got {rc.steps}")
  for setting, spec in rc.settings.items():
    if spec.optimizer not in OPTIMIZERS:
      raise ValueError(f"evaluate.relearn.settings.{setting}.optimizer must be one of "
                       f"{tuple(OPTIMIZERS)}, got {spec.optimizer!r}")


def attack_sets(config: ml_collections.ConfigDict, data: fj_data.ExperimentData
                ) -> dict[str, np.ndarray]:
  """The forget set and the control's look-alikes, as pool indices.

  Returns:
    `{"forget": ..., "control": ...}`: the control holds as many unseen
    look-alikes as the forget set has examples (all of them if there are
    fewer), drawn from the config's seed.
  """
  forget = np.asarray(data.splits.forget)
  nonmembers = np.asarray(data.splits.nonmembers)
  lookalikes = nonmembers[common.matched_nonmembers(data, nonmembers, config.scenario)]
  if len(lookalikes) == 0:
    raise ValueError(f"no unseen look-alikes of the forget set among the {len(nonmembers)} "
                     "non-members: the relearning control needs some (raise scenario sizes)")
  rng = np.random.default_rng([config.seed, 11])
  control = rng.choice(lookalikes, size=min(len(forget), len(lookalikes)), replace=False)
  return {"forget": forget, "control": np.sort(control)}


@functools.lru_cache(maxsize=8)
def _attack(apply_fn: Any, optimizer: str, learning_rate: float, num_steps: int
            ) -> mia.RelearnAttack:
  # One attack (and its compiled programs) per setting and process: a
  # benchmark audits many models of one architecture with the same attack.
  return mia.make_relearn_attack(apply_fn, OPTIMIZERS[optimizer](learning_rate),
                                 num_steps=num_steps)


def reference_accuracy(config: ml_collections.ConfigDict, data: fj_data.ExperimentData,
                       apply_fn: Any, original: Any) -> dict[str, float]:
  """The original model's accuracy on each attacked set (`attack_sets`): the
  relearning targets `steps_to_original` are read against."""
  out = {}
  for name, idx in attack_sets(config, data).items():
    logits = apply_fn(original, data.pool.images[idx])
    out[name] = float(np.mean(np.argmax(np.asarray(logits), -1) == data.pool.labels[idx]))
  return out


def relearn_audit(config: ml_collections.ConfigDict, data: fj_data.ExperimentData,
                  apply_fn: Any, models: Mapping[str, Any],
                  settings: Sequence[str] | None = None,
                  original_accuracy: Mapping[str, float] | None = None) -> dict[str, Any]:
  """Runs the relearning attack on every model with every configured optimizer.

  Args:
    config: the experiment config (section `evaluate.relearn`).
    data: the run's data.
    apply_fn: the models' apply function.
    models: name -> parameters; must include "original" (its forget-set
      accuracy is the first target) unless `original_accuracy` is given.
    settings: names of `evaluate.relearn.settings` to run; None = all.
    original_accuracy: the original's accuracy per attacked set
      (`reference_accuracy`), when the original itself need not be attacked.

  Returns:
    A JSON-friendly dict: `settings` (optimizer, learning rate, steps),
    `num_forget`, `num_control`, and `curves[setting][model][set]` with
    `mia.relearn_summary` figures for set "forget" and "control".
  """
  check_config(config)
  rc = config.evaluate.relearn
  names = list(models)
  if original_accuracy is None and "original" not in names:
    raise ValueError(f"models {names} must include 'original', or pass original_accuracy")
  sets = attack_sets(config, data)
  batches = {name: {"image": data.pool.images[idx], "label": data.pool.labels[idx]}
             for name, idx in sets.items()}
  if len(names) == 1:
    # One model: its own program (a vmap over one model runs slower on CPU).
    only = models[names[0]]
    run = lambda attack, batch: jax.tree.map(lambda x: x[None], attack.run(only, batch))
    inputs = batches
  else:
    # Each model fine-tunes on its own copy of the set, in one vmapped program.
    stacked = mia.stack([models[n] for n in names])
    run = lambda attack, batch: attack.run_stacked(stacked, batch)
    inputs = {k: {f: np.broadcast_to(v, (len(names),) + v.shape) for f, v in b.items()}
              for k, b in batches.items()}
  out: dict[str, Any] = {"settings": {}, "num_forget": int(len(sets["forget"])),
                         "num_control": int(len(sets["control"])), "curves": {}}
  original_accuracy = dict(original_accuracy or {})
  for setting in rc.settings if settings is None else settings:
    spec = rc.settings[setting]
    attack = _attack(apply_fn, spec.optimizer, float(spec.learning_rate), int(rc.steps))
    out["settings"][setting] = {"optimizer": spec.optimizer,
                                "learning_rate": float(spec.learning_rate), "steps": rc.steps}
    curves = {}
    for set_name, batch in inputs.items():
      curve = jax.device_get(run(attack, batch))
      curves[set_name] = curve
      if set_name not in original_accuracy:
        original_accuracy[set_name] = float(curve.accuracy[names.index("original"), 0])
    out["curves"][setting] = {
        name: {set_name: mia.relearn_summary(
            mia.RelearnCurve(c.accuracy[i], c.loss[i]),
            original_accuracy=original_accuracy[set_name],
            accuracy_targets=tuple(rc.accuracy_targets), budgets=tuple(rc.budgets))
               for set_name, c in curves.items()}
        for i, name in enumerate(names)}
  return out


def run_models(config: ml_collections.ConfigDict, workdir: str,
               data: fj_data.ExperimentData) -> dict[str, Any]:
  """The models of a run: the original, and the unlearned and retrained ones whose
  phases have run (`report.MODEL_PHASES` names and order), as host parameters."""
  models = {}
  for name, phase in report.MODEL_PHASES.items():
    if name != "original" and not os.path.isdir(common.checkpoint_dir(workdir, phase)):
      continue
    models[name], _ = common.load_phase_params(config, workdir, phase, data)
  return models


def test_accuracies(apply_fn: Any, models: Mapping[str, Any],
                    data: fj_data.ExperimentData) -> dict[str, float]:
  """Each model's accuracy on the run's test examples."""
  mesh = parallel.make_mesh()
  predict = train.make_predict_fn(apply_fn, mesh)
  test = data.test_examples
  return {name: train.evaluate(predict, parallel.replicate(p, mesh), test.images,
                               test.labels)["accuracy"]
          for name, p in models.items()}


def run_relearn(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Audits every model of a run with the relearning attack (module docstring)."""
  data, _ = common.load_upstream_data(config, workdir)
  model = common.create_model(common.model_spec(config, data))
  models = run_models(config, workdir, data)
  result = relearn_audit(config, data, model.apply_fn, models)
  # What each model keeps, beside what it lets come back.
  result["test_accuracy"] = test_accuracies(model.apply_fn, models, data)
  table = report.relearn_table(result)
  common.log(table)
  common.log("test accuracy: " + ", ".join(
      f"{report.MODEL_LABELS[name]} {report.pct(acc)}"
      for name, acc in result["test_accuracy"].items()))
  if common.is_main_process():
    out_dir = os.path.join(workdir, "relearn")
    os.makedirs(out_dir, exist_ok=True)
    report.plot_relearn(out_dir, result)
    common.write_json(os.path.join(out_dir, "relearn.json"), result)
  return result


if __name__ == "__main__":
  cli.run(run_relearn)
