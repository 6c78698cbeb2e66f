"""The shadow phase: every shadow model of the audit, trained as one stacked run.

    python -m experiments.shadow --config experiments/configs/default.py --workdir runs/default

Two families of shadow models share one `jax.vmap`-ed train step:

- LiRA (Carlini et al. 2022) and U-LiRA (Hayes et al. 2024): `shadow.num_models`
  models, each trained on a random half of the population (the target's
  members and non-members, forget set included) with balanced keep masks, so
  every population example is "in" for exactly half of them.
- Shokri et al. (2017), the oracle of Forsaken's papers: `shadow.num_shokri_models`
  models, each trained on a random half of the disjoint `shadow` split; their
  posteriors on their own in/out halves train the attack classifier.

Reads the train phase's checkpoint (read-only) for the data fingerprint, and
writes `<workdir>/shadow/checkpoints`: the stacked state and, as the splits
item, the universe of pool indices and every model's keep mask. Resumable.
"""

import functools
import os
from typing import Any

import jax
import ml_collections
import numpy as np

from experiments import cli, common
from forsaken_jax import checkpoints, parallel
from forsaken_jax import data as fj_data
from forsaken_jax import mia
from forsaken_jax.mia import shadow as shadow_lib

PHASE = "shadow"
SIGNATURE_SECTIONS = ("dataset", "scenario", "model", "train", "shadow")
COMPATIBILITY_KEYS = ("phase", "model", "dataset_fingerprint", "signature")


def shadow_design(splits: fj_data.Splits, *, num_lira: int, num_shokri: int, seed: int
                  ) -> dict[str, np.ndarray]:
  """Which pool examples each shadow model trains on.

  Args:
    splits: the experiment's splits.
    num_lira: LiRA shadow models (even, >= 2).
    num_shokri: Shokri shadow models (even, >= 0).
    seed: seed of the keep masks.

  Returns:
    `{"universe": [U] pool indices (population, then the shadow split),
    "keep": bool [num_lira + num_shokri, U], "population_size": [1],
    "num_lira": [1]}`. LiRA rows keep only population columns, Shokri rows
    only shadow-split columns.
  """
  population = np.sort(np.concatenate([splits.members, splits.nonmembers]))
  universe = np.concatenate([population, splits.shadow])
  keep = np.zeros((num_lira + num_shokri, len(universe)), bool)
  key = jax.random.key(seed)
  keep[:num_lira, :len(population)] = np.asarray(
      mia.balanced_keep_masks(jax.random.fold_in(key, 0), num_lira, len(population)))
  if num_shokri:
    if len(splits.shadow) == 0:
      raise ValueError("shadow.num_shokri_models > 0 needs a non-empty shadow split "
                       "(scenario.num_shadow > 0)")
    keep[num_lira:, len(population):] = np.asarray(
        mia.balanced_keep_masks(jax.random.fold_in(key, 1), num_shokri, len(splits.shadow)))
  return {"universe": universe, "keep": keep, "population_size": np.array([len(population)]),
          "num_lira": np.array([num_lira])}


def train_shadows(config: ml_collections.ConfigDict, workdir: str,
                  stop_after: int | None = None) -> dict[str, Any]:
  """Runs the shadow phase (see the module docstring)."""
  data, _ = common.load_upstream_data(config, workdir)
  sc, tc = config.shadow, config.train
  num_models = sc.num_models + sc.num_shokri_models
  steps = sc.get("steps") or tc.steps
  design = shadow_design(data.splits, num_lira=sc.num_models, num_shokri=sc.num_shokri_models,
                         seed=config.seed)
  spec = common.model_spec(config, data)
  model = common.create_model(spec)
  tx = common.make_optimizer(tc)
  mesh = shadow_lib.model_mesh(num_models)
  sharding = shadow_lib.stacked_sharding(mesh)
  expected_meta = checkpoints.base_meta(
      PHASE, model=spec, dataset_fingerprint=data.fingerprint(),
      signature=common.signature(config, SIGNATURE_SECTIONS), num_lira_models=sc.num_models,
      num_shokri_models=sc.num_shokri_models, config=config.to_dict())
  keys = jax.random.split(jax.random.fold_in(jax.random.key(config.seed), 1), num_models)
  init = functools.partial(shadow_lib.init_stacked_state, model.init_fn, tx, keys, mesh=mesh)

  manager = checkpoints.open_manager(common.checkpoint_dir(workdir, PHASE))
  state, elapsed_before = common.restore_or_init(
      phase=PHASE, manager=manager, init=init, sharding=sharding, expected_meta=expected_meta,
      check_keys=COMPATIBILITY_KEYS)
  universe, keep = design["universe"], design["keep"]
  images, labels = data.pool.images, data.pool.labels

  def make_batch(step):
    idx = universe[shadow_lib.shadow_batch_indices(keep, tc.batch_size, step, seed=config.seed)]
    return {"image": images[idx], "label": labels[idx]}

  state, seconds = common.run_steps(
      phase=PHASE, state=state,
      step_fn=shadow_lib.make_stacked_train_step(model.apply_fn, tx, loss_fn=common.loss_fn(config),
                                                 mesh=mesh),
      make_batch=make_batch, num_steps=steps, manager=manager, meta=expected_meta,
      splits=design, log_every=tc.log_every, checkpoint_every=sc.get("checkpoint_every", 500),
      writer=common.MetricWriter(os.path.join(workdir, PHASE)),
      show_progress=tc.get("progress", True), elapsed_before=elapsed_before,
      stop_after=stop_after, hint=f"lower train.learning_rate (now {tc.learning_rate}).")
  summary = {"phase": PHASE, "num_lira_models": sc.num_models,
             "num_shokri_models": sc.num_shokri_models, "steps": int(steps),
             "shadow_seconds": seconds, "devices_used": int(mesh.size)}
  if common.is_main_process():
    common.write_json(os.path.join(workdir, PHASE, "summary.json"), summary)
  common.log(f"[shadow] {num_models} shadow models ({sc.num_models} LiRA + "
             f"{sc.num_shokri_models} Shokri), {steps} steps each, in {seconds:.1f} s")
  return summary


def load_shadows(config: ml_collections.ConfigDict, workdir: str, data: fj_data.ExperimentData
                 ) -> tuple[Any, dict[str, np.ndarray]]:
  """Reads the shadow phase's checkpoint read-only: `(stacked params, design)`."""
  spec = common.model_spec(config, data)
  model = common.create_model(spec)
  sc = config.shadow
  num_models = sc.num_models + sc.num_shokri_models
  tx = common.make_optimizer(config.train)
  keys = jax.random.split(jax.random.key(0), num_models)
  abstract = jax.eval_shape(functools.partial(shadow_lib.init_stacked_state, model.init_fn, tx),
                            keys)
  manager = checkpoints.open_manager(common.checkpoint_dir(workdir, PHASE), read_only=True)
  expected = checkpoints.base_meta(
      PHASE, model=spec, dataset_fingerprint=data.fingerprint(),
      signature=common.signature(config, SIGNATURE_SECTIONS))
  state, design, meta = checkpoints.restore(manager, abstract, expected_meta=expected,
                                            check_keys=COMPATIBILITY_KEYS)
  steps = sc.get("steps") or config.train.steps
  if int(np.max(np.asarray(state["step"]))) < steps:
    raise checkpoints.CheckpointError(
        f"the shadow phase in {manager.directory} stopped at step "
        f"{int(np.max(np.asarray(state['step'])))} of {steps}: run it again to finish")
  del meta
  return state["params"], design


if __name__ == "__main__":
  cli.run(train_shadows)
