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
from forsaken_jax import checkpoints
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


def train_stacked(config: ml_collections.ConfigDict, directory: str, data: fj_data.ExperimentData,
                  design: dict[str, np.ndarray], *, phase: str, key: jax.Array, steps: int,
                  meta: dict[str, Any], stop_after: int | None = None) -> tuple[Any, float]:
  """Trains one model per row of `design["keep"]` as one stacked, resumable run.

  Every model trains like the target (`config.train`'s optimizer, batch size
  and loss), on the pool examples `design["universe"][keep[k]]`.

  Args:
    config: the experiment config.
    directory: the run's own directory; checkpoints go to `<directory>/checkpoints`
      and metrics beside them.
    data: the run's data.
    design: `{"universe": [U] pool indices, "keep": bool [K, U], ...}`, saved
      with the checkpoints as the splits item.
    phase: the run's name (messages, checkpoint meta).
    key: split into the K models' initialization keys.
    steps: steps per model.
    meta: the checkpoint meta this run writes; a stored run must agree on
      `COMPATIBILITY_KEYS`.
    stop_after: stop after this many steps (tests of resumption).

  Returns:
    `(stacked state, training seconds)`.
  """
  tc = config.train
  universe, keep = design["universe"], design["keep"]
  num_models = keep.shape[0]
  model = common.create_model(common.model_spec(config, data))
  tx = common.make_optimizer(tc)
  mesh = shadow_lib.model_mesh(num_models)
  sharding = shadow_lib.stacked_sharding(mesh)
  keys = jax.random.split(key, num_models)
  init = functools.partial(shadow_lib.init_stacked_state, model.init_fn, tx, keys, mesh=mesh)
  manager = checkpoints.open_manager(os.path.join(directory, "checkpoints"))
  state, elapsed_before = common.restore_or_init(
      phase=phase, manager=manager, init=init, sharding=sharding, expected_meta=meta,
      check_keys=COMPATIBILITY_KEYS)
  images, labels = data.pool.images, data.pool.labels

  def make_batch(step):
    idx = universe[shadow_lib.shadow_batch_indices(keep, tc.batch_size, step, seed=config.seed)]
    return {"image": images[idx], "label": labels[idx]}

  return common.run_steps(
      phase=phase, state=state,
      step_fn=shadow_lib.make_stacked_train_step(model.apply_fn, tx, loss_fn=common.loss_fn(config),
                                                 mesh=mesh),
      make_batch=make_batch, num_steps=steps, manager=manager, meta=meta, splits=design,
      log_every=tc.log_every, checkpoint_every=config.shadow.get("checkpoint_every", 500),
      writer=common.MetricWriter(directory), show_progress=tc.get("progress", True),
      elapsed_before=elapsed_before, stop_after=stop_after,
      hint=f"lower train.learning_rate (now {tc.learning_rate}).")


def load_stacked(config: ml_collections.ConfigDict, directory: str, data: fj_data.ExperimentData,
                 *, num_models: int, steps: int, meta: dict[str, Any]
                 ) -> tuple[Any, dict[str, np.ndarray]]:
  """Reads a finished `train_stacked` run read-only: `(stacked params, design)`.

  Raises:
    checkpoints.CheckpointError: missing, incompatible (`meta` disagrees on
      `COMPATIBILITY_KEYS`) or unfinished.
  """
  model = common.create_model(common.model_spec(config, data))
  tx = common.make_optimizer(config.train)
  keys = jax.random.split(jax.random.key(0), num_models)
  abstract = jax.eval_shape(functools.partial(shadow_lib.init_stacked_state, model.init_fn, tx),
                            keys)
  manager = checkpoints.open_manager(os.path.join(directory, "checkpoints"), read_only=True)
  state, design, _ = checkpoints.restore(manager, abstract, expected_meta=meta,
                                         check_keys=COMPATIBILITY_KEYS)
  done = int(np.max(np.asarray(state["step"])))
  if done < steps:
    raise checkpoints.CheckpointError(
        f"the run in {manager.directory} stopped at step {done} of {steps}: run it again to "
        "finish")
  return state["params"], design


def _meta(config: ml_collections.ConfigDict, data: fj_data.ExperimentData,
          extra: dict[str, Any] | None = None) -> dict[str, Any]:
  return checkpoints.base_meta(
      PHASE, model=common.model_spec(config, data), dataset_fingerprint=data.fingerprint(),
      signature=common.signature(config, SIGNATURE_SECTIONS), **(extra or {}))


def train_shadows(config: ml_collections.ConfigDict, workdir: str,
                  stop_after: int | None = None) -> dict[str, Any]:
  """Runs the shadow phase (see the module docstring)."""
  data, _ = common.load_upstream_data(config, workdir)
  sc = config.shadow
  num_models = sc.num_models + sc.num_shokri_models
  steps = sc.get("steps") or config.train.steps
  design = shadow_design(data.splits, num_lira=sc.num_models, num_shokri=sc.num_shokri_models,
                         seed=config.seed)
  meta = _meta(config, data, {"num_lira_models": sc.num_models,
                              "num_shokri_models": sc.num_shokri_models,
                              "config": config.to_dict()})
  _, seconds = train_stacked(
      config, os.path.join(workdir, PHASE), data, design, phase=PHASE,
      key=jax.random.fold_in(jax.random.key(config.seed), 1), steps=steps, meta=meta,
      stop_after=stop_after)
  summary = {"phase": PHASE, "num_lira_models": sc.num_models,
             "num_shokri_models": sc.num_shokri_models, "steps": int(steps),
             "shadow_seconds": seconds,
             "devices_used": int(shadow_lib.model_mesh(num_models).size)}
  if common.is_main_process():
    common.write_json(os.path.join(workdir, PHASE, "summary.json"), summary)
  common.log(f"[shadow] {num_models} shadow models ({sc.num_models} LiRA + "
             f"{sc.num_shokri_models} Shokri), {steps} steps each, in {seconds:.1f} s")
  return summary


def load_shadows(config: ml_collections.ConfigDict, workdir: str, data: fj_data.ExperimentData
                 ) -> tuple[Any, dict[str, np.ndarray]]:
  """Reads the shadow phase's checkpoint read-only: `(stacked params, design)`."""
  sc = config.shadow
  return load_stacked(config, os.path.join(workdir, PHASE), data,
                      num_models=sc.num_models + sc.num_shokri_models,
                      steps=sc.get("steps") or config.train.steps, meta=_meta(config, data))


if __name__ == "__main__":
  cli.run(train_shadows)
