r"""Where does the forget set's memory live? Reset parts of the model and try to relearn.

    python -m experiments.removal_probe --workdir runs/default [--config ...]

Reads a finished run's train phase (and its retrain and unlearn phases when
present; all read-only). Each probe resets one part of the *original* model
(no dummy gradient, to isolate the operation), repairs it with the unlearn
phase's repair (`unlearn.repair_*`: Adam on retained members only), then the
relearning attack (the first setting of `evaluate.relearn`) fine-tunes it on
the forget set and, as the control, on as many unseen look-alikes:

- units: the most forget-salient fraction of units (`unlearn.unit_saliency`,
  the neuron mask's ranking) re-initialized;
- weights: the most forget-salient fraction of single weights
  (|mean forget gradient| / mean over retained batches of |retain gradient|)
  re-initialized;
- every weight shrunk and perturbed (`unlearn.shrink_perturb`), the removal
  step of docs/METHOD.md, at several shrink factors.

A reset that leaves the forget set relearnable much faster than the retrained
model relearns it left the memory in place. Prints one table and writes it
to `<workdir>/removal_probe/results.md` with `relearn.json` and a plot.
"""

import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments import cli, common, relearn, report
from experiments import unlearn as unlearn_phase
from forsaken_jax import losses, parallel
from forsaken_jax import unlearn as fj_unlearn

UNIT_FRACTIONS = (0.1, 0.3, 0.5)
WEIGHT_FRACTIONS = (0.05, 0.1, 0.2, 0.3)
SHRINKS = (0.5, 0.3, 0.2, 0.1)


def weight_saliency(apply_fn: Callable, params: Any, forget: dict[str, Any],
                    retain: dict[str, Any]) -> Any:
  """Per-weight |mean forget gradient| / mean over batches of |retain gradient|.

  Args:
    apply_fn: `(params, images) -> logits`.
    params: the trained model.
    forget: the forget set as one batch.
    retain: retained batches stacked `[K, B, ...]`.

  Returns:
    A pytree of params' shapes.
  """
  def mean_loss(p, batch):
    return jnp.mean(losses.cross_entropy(apply_fn(p, batch["image"]), batch["label"]))

  forget_grad = jax.grad(mean_loss)(params, forget)
  retain_abs = jax.lax.map(
      lambda batch: jax.tree.map(jnp.abs, jax.grad(mean_loss)(params, batch)), retain)
  return jax.tree.map(lambda f, r: jnp.abs(f) / (jnp.mean(r, axis=0) + 1e-12), forget_grad,
                      retain_abs)


def top_weights(saliency: Any, fraction: float) -> Any:
  """A mask of the `fraction` most salient weights across the whole model."""
  flat = np.concatenate([np.ravel(s) for s in jax.tree.leaves(saliency)])
  threshold = np.quantile(flat, 1.0 - fraction)
  return jax.tree.map(lambda s: np.asarray(s) >= threshold, saliency)


def probes(config: ml_collections.ConfigDict, data: Any, apply_fn: Callable, original: Any,
           fresh: Any, retain: dict[str, Any]) -> dict[str, Any]:
  """name -> the reset original model, before the repair.

  `retain` are the unlearn phase's retained batches (`stacked_retain`), the
  saliencies' retained data.
  """
  uc = config.unlearn
  forget = unlearn_phase.forget_batch(data, data.splits.forget)
  reset = lambda p, mask: jax.tree.map(lambda a, m, f: np.where(m, f, a), p, mask, fresh)
  out = {}
  unit_scores = jax.jit(lambda p: fj_unlearn.unit_saliency(
      apply_fn, p, forget, jax.tree.map(lambda x: x[0], retain)))(original)
  for fraction in UNIT_FRACTIONS:
    mask = fj_unlearn.neuron_mask(original, unit_scores, fraction=fraction)
    out[f"units: top {fraction:.0%} re-initialized"] = reset(original, mask)
  weight_scores = jax.device_get(jax.jit(
      lambda p: weight_saliency(apply_fn, p, forget, retain))(original))
  for fraction in WEIGHT_FRACTIONS:
    out[f"weights: top {fraction:.0%} re-initialized"] = reset(
        original, top_weights(weight_scores, fraction))
  for shrink in SHRINKS:
    out[f"every weight: shrink {shrink:g}, perturb {uc.perturb:g}"] = fj_unlearn.shrink_perturb(
        original, fresh, shrink=shrink, perturb=uc.perturb)
  return out


def run_probe(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs every probe on a finished run (module docstring)."""
  unlearn_phase.check_config(config)
  uc = config.unlearn
  if not uc.repair_steps:
    raise ValueError("the probes repair with unlearn.repair_steps, which is 0")
  data, _ = common.load_upstream_data(config, workdir)
  model = common.create_model(common.model_spec(config, data))
  models = relearn.run_models(config, workdir, data)
  fresh = jax.device_get(unlearn_phase.fresh_params(config, model))
  repair = unlearn_phase.make_repair(config, model.apply_fn)
  # The unlearn phase's draws: its loop's retained batches, and its repair's.
  rng = np.random.default_rng([config.seed, 3])
  loop_batches = unlearn_phase.stacked_retain(data, rng, uc.num_retain_batches, uc.batch_size)
  repair_data = unlearn_phase.repair_batches(data, config.seed, uc.repair_batches,
                                              uc.batch_size, loop_batches)
  reset = probes(config, data, model.apply_fn, models["original"], fresh, loop_batches)
  bar = common.progress(len(reset), desc="probes", enabled=config.train.get("progress", True))
  for name, params in reset.items():
    models[name] = jax.device_get(parallel.block(repair(params, repair_data)[0]))
    bar.update()
  bar.close()
  first = next(iter(config.evaluate.relearn.settings))
  result = relearn.relearn_audit(config, data, model.apply_fn, models, settings=[first])
  result["test_accuracy"] = relearn.test_accuracies(model.apply_fn, models, data)
  table = probe_table(result, first)
  common.log(table)
  if common.is_main_process():
    out_dir = os.path.join(workdir, "removal_probe")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "results.md"), "w") as f:
      f.write(table + "\n")
    common.write_json(os.path.join(out_dir, "relearn.json"), result)
    report.plot_relearn(out_dir, result)
  return result


def probe_table(result: dict[str, Any], setting: str) -> str:
  """One row per model: test accuracy, forget accuracy, and the relearning figures."""
  spec = result["settings"][setting]
  budget = spec["steps"]
  lines = [f"| model (probes: reset, then repaired) | test acc. | forget acc. | relearning ({spec['optimizer']} "
           f"lr {spec['learning_rate']:g}): steps to 80% (look-alikes) | forget acc. after "
           "10 / 100 steps |",
           "| --- | ---: | ---: | ---: | ---: |"]
  for name, sets in result["curves"][setting].items():
    f, c = sets["forget"], sets["control"]
    label = report.MODEL_LABELS.get(name, name)
    lines.append(
        f"| {label} | {report.pct(result['test_accuracy'][name])} | "
        f"{report.pct(f['accuracy'][0])} | {report.steps_label(f.get('steps_to_80'), budget)} "
        f"({report.steps_label(c.get('steps_to_80'), budget)}) | "
        f"{report.pct(f.get('accuracy_at_10'))} / {report.pct(f.get('accuracy_at_100'))} |")
  return "\n".join(lines)


if __name__ == "__main__":
  cli.run(run_probe)
