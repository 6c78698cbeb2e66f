"""The unlearn phase: Forsaken removes the forget set from the trained model.

    python -m experiments.unlearn --config experiments/configs/default.py --workdir runs/default

Reads the train phase's final model and splits (read-only) and writes
`<workdir>/unlearn/checkpoints` (the unlearned parameters, the generator's
state and the loop state) plus `<workdir>/unlearn/summary.json`. Resumable:
the loop state is checkpointed every `unlearn.checkpoint_every` steps.

Inputs of the generator, all drawn from the splits:

- D_u, the forget set, as one batch;
- D_r, `unlearn.num_retain_batches` batches of retained members, cycled;
- D_n, the reference non-members: unseen samples of the forget set's own
  kind (unseen OOD patches for the OOD scenario, unseen in-distribution
  samples for random forget sets); for a forgotten class, unseen samples of
  the *other* classes, so the paper's reference gives the class no mass.
  They come from `unlearn.reference_split`: by default the shadow split,
  which the target never trained on and which holds none of the non-members
  the audit compares the forget set with (see `reference_indices`).

Stopping target (computable without retraining): a threshold on the
logit-scaled confidence is fitted between D_u and D_n on the original model
(`mia.fit_threshold`); the loop stops once the forget set falls below it at
the rate D_n does, i.e. once the forget set looks like non-members to that
oracle.

The wall time reported is that of the unlearning itself, from the loaded
model to the unlearned one (saliency, reference, generator, compilation and
the loop included), the counterpart of the retrain phase's training time.
"""

import concurrent.futures
import functools
import os
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from experiments import cli, common
from forsaken_jax import checkpoints, mia, parallel, unlearn as fj_unlearn
from forsaken_jax import data as fj_data

PHASE = "unlearn"
SIGNATURE_SECTIONS = ("dataset", "scenario", "model", "train", "unlearn")
COMPATIBILITY_KEYS = ("phase", "model", "dataset_fingerprint", "signature")


# Where D_n is drawn from. "shadow": the shadow split (the default). The
# target never trained on it, and it is disjoint from the target's
# non-members, among which the audit finds the unseen look-alikes it judges
# the forget set against: an unlearner that matched the forget set to those
# very examples would be tuned on the audit's own yardstick. (The shadow
# split also trains the Shokri shadow models; the unlearner reads only its
# images and labels.) "nonmembers": the target's non-members, the audit's
# look-alikes included; kept to measure what that overlap changes.
REFERENCE_SPLITS = ("shadow", "nonmembers")
# The simulated attacker of the relearning term (unlearn.relearn_optimizer).
# The meta-gradient differentiates through its updates: Adam needs eps_root
# > 0 there, or sqrt(v) at v = 0 (a coordinate with no gradient) gives NaN.
RELEARN_OPTIMIZERS = {"sgd": optax.sgd,
                      "adam": lambda learning_rate: optax.adam(learning_rate, eps_root=1e-8)}
# The repair's learning rate over its steps (unlearn.repair_schedule).
REPAIR_SCHEDULES = {"constant": lambda lr, steps: lr,
                    "cosine": optax.cosine_decay_schedule}
# With unlearn.host_loop, the repair's steps per compiled call (unrolled).
REPAIR_STEPS_PER_CALL = 10


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError for a bad `unlearn` choice (before any phase runs)."""
  uc = config.unlearn
  if uc.relearn_optimizer not in RELEARN_OPTIMIZERS:
    raise ValueError(f"unlearn.relearn_optimizer must be one of {tuple(RELEARN_OPTIMIZERS)}, "
                     f"got {uc.relearn_optimizer!r}")
  if uc.reference_split not in REFERENCE_SPLITS:
    raise ValueError(f"unlearn.reference_split must be one of {REFERENCE_SPLITS}, "
                     f"got {uc.reference_split!r}")
  if uc.repair_steps < 0:
    raise ValueError(f"unlearn.repair_steps must be non-negative, got {uc.repair_steps}")
  if uc.repair_batches < 0:
    raise ValueError(f"unlearn.repair_batches must be non-negative (0 = every retained member), "
                     f"got {uc.repair_batches}")
  if uc.repair_schedule not in REPAIR_SCHEDULES:
    raise ValueError(f"unlearn.repair_schedule must be one of {tuple(REPAIR_SCHEDULES)}, "
                     f"got {uc.repair_schedule!r}")
  try:
    fj_unlearn.check_shrink_perturb(uc.shrink, uc.perturb)
  except ValueError as e:
    raise ValueError(f"unlearn.{e}") from None


def reference_indices(data: fj_data.ExperimentData, scenario: ml_collections.ConfigDict,
                      split: str = "shadow") -> np.ndarray:
  """Pool indices of D_n, the non-members the forget set should come to resemble.

  Args:
    data: the run's data.
    scenario: the config's scenario section.
    split: one of `REFERENCE_SPLITS`.

  Returns:
    The indices of `split`'s examples of the forget set's kind (the other
    classes' for a forgotten class).

  Raises:
    ValueError: unknown split, or it holds no example of that kind.
  """
  if split not in REFERENCE_SPLITS:
    raise ValueError(f"unlearn.reference_split must be one of {REFERENCE_SPLITS}, got {split!r}")
  candidates = getattr(data.splits, split)
  if scenario.kind == "ood":
    chosen = candidates[data.is_ood[candidates]]
  elif scenario.kind == "class":
    chosen = candidates[(data.pool.labels[candidates] != scenario.forget_class)
                        & ~data.is_ood[candidates]]
  else:
    chosen = candidates[~data.is_ood[candidates]]
  if len(chosen) == 0:
    raise ValueError(f"no reference non-members for scenario {scenario.kind!r} in the {split} "
                     f"split: it holds none of the forget set's kind (raise scenario.num_{split} "
                     "/ num_ood, or set unlearn.reference_split)")
  return chosen


def forget_batch(data: fj_data.ExperimentData, forget: np.ndarray) -> dict[str, np.ndarray]:
  """The forget set as one batch, after checking it against the training set.

  Raises:
    ValueError: the forget set is empty, has duplicates or out-of-range
      indices, or is not a subset of the members the model was trained on.
  """
  forget = fj_data.check_forget_set(forget, data.splits.members)
  return {"image": data.pool.images[forget], "label": data.pool.labels[forget]}


def stacked_retain(data: fj_data.ExperimentData, rng: np.random.Generator, num_batches: int,
                   batch_size: int) -> dict[str, np.ndarray]:
  """The loop's retained batches, stacked `[K, B, ...]`, drawn without replacement."""
  retain = data.splits.retain
  size = min(num_batches * batch_size, len(retain))
  size -= size % batch_size
  if size == 0:
    raise ValueError(f"unlearn.batch_size={batch_size} exceeds the {len(retain)} retained members")
  idx = rng.choice(retain, size=size, replace=False).reshape(-1, batch_size)
  return {"image": data.pool.images[idx], "label": data.pool.labels[idx]}


class Prepared(NamedTuple):
  """A Forsaken loop ready to run on one run's data (see `prepare`)."""

  forsaken: fj_unlearn.Forsaken
  # The compiled `forsaken.run`: `(state, forget, retain, reference,
  # threshold, target_rate, until_step) -> state`, until_step an int32 array.
  run: Callable[..., fj_unlearn.ForsakenState]
  state: fj_unlearn.ForsakenState  # the initial loop state
  forget: dict[str, jax.Array]
  retain: dict[str, jax.Array]  # stacked [K, B, ...]
  reference: dict[str, jax.Array]
  threshold: jax.Array  # the stopping oracle's threshold (-inf: rule off)
  target_rate: jax.Array
  oracle_threshold: float
  num_reference: int
  # `unlearn.repair_steps` of fine-tuning on retained data after the loop,
  # `(params, repair_data) -> (params, losses)`; None when off.
  repair: Callable[..., Any] | None = None
  repair_data: dict[str, Any] | None = None  # stacked [K, B, ...]
  # The removal step before the repair (forsaken_jax/unlearn/removal.py):
  # `params -> shrink * params + perturb * fresh`; None when off.
  shrink_perturb: Callable[[Any], Any] | None = None


def repair_batches(data: fj_data.ExperimentData, seed: int, num_batches: int,
                    batch_size: int, retain: dict[str, Any]) -> dict[str, Any]:
  """The repair's data: the loop's retained batches, or every retained member.

  `num_batches` > 0 takes the first that many of the loop's batches
  (`retain`, stacked `[K, B, ...]`); 0 deals every retained member, shuffled
  with the seed, into batches of `batch_size` (the last partial one dropped).
  """
  if num_batches:
    return jax.tree.map(lambda x: x[:num_batches], retain)
  members = np.random.default_rng([seed, 5]).permutation(data.splits.retain)
  count = len(members) - len(members) % batch_size
  idx = members[:count].reshape(-1, batch_size)
  return {"image": data.pool.images[idx], "label": data.pool.labels[idx]}


def make_repair(config: ml_collections.ConfigDict, apply_fn: Any) -> Callable[..., Any]:
  """The removal step's repair: `unlearn.repair_steps` of Adam on retained batches.

  Returns:
    `make_finetune_loop`'s `(params, batches) -> (params, losses)`, its rate
    following `unlearn.repair_schedule` from `unlearn.repair_lr`.
  """
  uc = config.unlearn
  schedule = REPAIR_SCHEDULES[uc.repair_schedule](uc.repair_lr, uc.repair_steps)
  return fj_unlearn.make_finetune_loop(
      apply_fn, optax.adam(schedule), num_steps=uc.repair_steps,
      steps_per_call=REPAIR_STEPS_PER_CALL if uc.host_loop else None)


def host_driven(step: Callable[..., Any]) -> Callable[..., fj_unlearn.ForsakenState]:
  """`Forsaken.run`'s contract over a compiled single `step`, the loop in Python.

  Each step's stop reason is read back before the next (which also blocks on
  it, as the CPU backend needs).
  """
  def run(state, forget, retain, reference, threshold, target_rate, until_step):
    until = int(until_step)
    while int(state.stop_reason) == fj_unlearn.STOP_RUNNING and int(state.step) < until:
      state, _ = step(state, forget, retain, reference, threshold, target_rate)
    return state

  return run


def fresh_params(config: ml_collections.ConfigDict, model: Any) -> Any:
  """The removal step's fresh initialization of the model, drawn from the seed."""
  return model.init_fn(jax.random.fold_in(jax.random.key(config.seed), 5))


def _abstract(tree: Any, sharding: jax.sharding.Sharding) -> Any:
  """ShapeDtypeStructs of `tree`'s leaves, placed with `sharding`."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def prepare(config: ml_collections.ConfigDict, data: fj_data.ExperimentData, spec: dict[str, Any],
            original: Any) -> Prepared:
  """Builds everything the unlearning loop needs from the original model.

  Saliency and neuron mask, reference, stopping oracle, generator, compiled
  loop and its initial state. Timed as part of unlearning by the caller.

  The loop depends on the data only through shapes (the neuron mask is a
  runtime input padded to a fixed capacity), so it is compiled on a
  background thread while the setup computes its inputs: XLA compilation
  releases the GIL and the two overlap.

  Args:
    config: the experiment config (section `unlearn`).
    data: the run's data.
    spec: the model spec (`common.model_spec`).
    original: the trained parameters.

  Returns:
    A `Prepared`.
  """
  check_config(config)
  uc = config.unlearn
  model = common.create_model(spec)
  rng = np.random.default_rng([config.seed, 3])
  forget = forget_batch(data, data.splits.forget)
  retain = stacked_retain(data, rng, uc.num_retain_batches, uc.batch_size)
  ref_idx = reference_indices(data, config.scenario, uc.reference_split)
  ref_idx = rng.choice(ref_idx, size=min(len(ref_idx), uc.num_reference), replace=False)
  nonmember = {"image": data.pool.images[ref_idx], "label": data.pool.labels[ref_idx]}
  mesh = parallel.make_mesh(1)  # a few hundred examples: one device is fastest
  forget, retain, nonmember, original = jax.device_put((forget, retain, nonmember, original),
                                                       parallel.replicated(mesh))
  compiler_options = {"xla_backend_optimization_level": 0} if uc.fast_compile else None
  relative = uc.objective in fj_unlearn.RELATIVE_OBJECTIVES

  @functools.partial(jax.jit, compiler_options=compiler_options)
  def inputs(params, forget, retain_batch, nonmember):
    """Everything the loop needs from the original model, in one compilation."""
    saliency = None
    if uc.mask_fraction < 1.0:
      saliency = fj_unlearn.unit_saliency(model.apply_fn, params, forget, retain_batch)
    reference = fj_unlearn.compute_reference(model.apply_fn, params, nonmember,
                                             objective=uc.objective)
    if relative:
      # Filled in below with the stopping oracle's threshold, which also
      # anchors the objective's hinge term.
      reference["threshold"] = jnp.zeros((), jnp.float32)
    # The stopping oracle's inputs: the forget set's and D_n's logit-scaled
    # confidence on the original model.
    forget_scores = mia.logit_scaled_confidence(model.apply_fn(params, forget["image"]),
                                                forget["label"])
    ref_scores = mia.logit_scaled_confidence(model.apply_fn(params, nonmember["image"]),
                                             nonmember["label"])
    return saliency, reference, forget_scores, ref_scores

  capacity = None
  if uc.mask_fraction < 1.0:
    # The mask enters the loop as a runtime input padded to the most
    # coordinates any mask of this fraction can select: the loop compiled
    # for one forget set serves every other one of its size on this
    # architecture.
    capacity = fj_unlearn.neuron_mask_capacity(original, fraction=uc.mask_fraction)
  generator = fj_unlearn.make_generator(
      uc.generator, original, num_classes=spec["num_classes"], capacity=capacity,
      **uc.get("generator_kwargs", ml_collections.ConfigDict()).to_dict())
  forsaken = fj_unlearn.make_forsaken(
      model.apply_fn, generator, objective=uc.objective, lr=uc.lr, l1_weight=uc.l1_weight,
      retain_weight=uc.retain_weight, threshold_weight=uc.threshold_weight,
      relearn_weight=uc.relearn_weight, relearn_steps=uc.relearn_steps,
      relearn_optimizer=RELEARN_OPTIMIZERS[uc.relearn_optimizer](uc.relearn_lr),
      gen_optimizer=optax.adam(uc.generator_lr), mask_capacity=capacity,
      max_steps=uc.max_steps, patience=uc.patience, acceptance=uc.acceptance,
      compiler_options=compiler_options)
  key = jax.random.fold_in(jax.random.key(config.seed), 4)
  retain_first = jax.tree.map(lambda x: x[0], retain)

  reference_shape = jax.eval_shape(inputs, original, forget, retain_first, nonmember)[1]
  mask_shape = None if capacity is None else fj_unlearn.packed_mask_shape(original, capacity)
  state_shape = jax.eval_shape(
      lambda: forsaken.init(key, original, forget, retain, reference_shape, mask=mask_shape))
  scalar = jax.ShapeDtypeStruct((), jnp.float32)
  step_args = (state_shape, forget, retain, reference_shape, scalar, scalar)
  with concurrent.futures.ThreadPoolExecutor(1) as pool:
    if uc.host_loop:
      compiled = pool.submit(lambda: forsaken.step.lower(
          *_abstract(step_args, parallel.replicated(mesh))).compile())
    else:
      compiled = pool.submit(lambda: forsaken.run.lower(*_abstract(
          (*step_args, jax.ShapeDtypeStruct((), jnp.int32)), parallel.replicated(mesh))).compile())

    saliency, reference, forget_scores, ref_scores = inputs(original, forget, retain_first,
                                                            nonmember)
    mask = None
    if saliency is not None:
      mask = jax.device_get(fj_unlearn.neuron_mask(original, saliency, fraction=uc.mask_fraction))
    # The stop target: a threshold between the forget set (members) and D_n
    # (non-members) on the original model, and the rate at which D_n falls
    # below it.
    oracle = mia.fit_threshold(forget_scores, ref_scores)
    target_rate = float(np.mean(np.asarray(ref_scores) < float(oracle.threshold)))
    if relative:
      reference = {**reference, "threshold": jnp.asarray(oracle.threshold, jnp.float32)}
    state = forsaken.init(key, original, forget, retain, reference, mask=mask)
    run = host_driven(compiled.result()) if uc.host_loop else compiled.result()
  repair = repair_data = shrink = None
  if uc.repair_steps:
    repair = make_repair(config, model.apply_fn)
    repair_data = jax.device_put(
        repair_batches(data, config.seed, uc.repair_batches, uc.batch_size, retain),
        parallel.replicated(mesh))
  if uc.shrink != 1.0 or uc.perturb:
    shrink = jax.jit(functools.partial(fj_unlearn.shrink_perturb,
                                       fresh_params=fresh_params(config, model),
                                       shrink=uc.shrink, perturb=uc.perturb))
  return Prepared(
      forsaken=forsaken, run=run, state=state, forget=forget, retain=retain, reference=reference,
      threshold=jnp.asarray(oracle.threshold if uc.stop_at_target else -jnp.inf, jnp.float32),
      target_rate=jnp.asarray(target_rate, jnp.float32),
      oracle_threshold=float(oracle.threshold), num_reference=int(len(ref_idx)), repair=repair,
      repair_data=repair_data, shrink_perturb=shrink)


def finish(prep: Prepared, state: fj_unlearn.ForsakenState) -> fj_unlearn.ForsakenState:
  """The finished loop's state after the removal step and the repair (each if configured).

  Both are deterministic (a fresh initialization drawn from the seed; the
  same retained batches, cycled), so a run interrupted during them and
  resumed finishes with the same parameters.
  """
  params = state.params
  if prep.shrink_perturb is not None:
    params = prep.shrink_perturb(params)
  if prep.repair is not None:
    params, _ = prep.repair(params, prep.repair_data)
  return state._replace(params=parallel.block(params))


def unlearn(config: ml_collections.ConfigDict, workdir: str,
            stop_after: int | None = None) -> dict[str, Any]:
  """Runs the unlearn phase (see the module docstring).

  Args:
    config: the experiment config (section `unlearn`).
    workdir: the run directory; writes only `<workdir>/unlearn/`.
    stop_after: stop after this many loop steps of this process without the
      final checkpoint (simulates a kill; tests use it).

  Returns:
    The phase summary (also written to `summary.json`).
  """
  uc = config.unlearn
  data, _ = common.load_upstream_data(config, workdir)
  original, _ = common.load_phase_params(config, workdir, "train", data)
  spec = common.model_spec(config, data)
  start = time.perf_counter()
  # Every program of the phase is built in the setup (the loop's included).
  with common.compile_time_meter() as compile_times:
    prep = prepare(config, data, spec, original)
  setup_seconds = time.perf_counter() - start
  mesh = parallel.make_mesh(1)

  expected_meta = checkpoints.base_meta(
      PHASE, model=spec, dataset_fingerprint=data.fingerprint(),
      signature=common.signature(config, SIGNATURE_SECTIONS), config=config.to_dict(),
      complete=False)
  manager = checkpoints.open_manager(common.checkpoint_dir(workdir, PHASE))
  # The loop state is saved as a dict (its "params" entry is the model), so
  # other phases can read the unlearned parameters without this module.
  restored, elapsed_before = common.restore_or_init(
      phase=PHASE, manager=manager, init=prep.state._asdict, sharding=parallel.replicated(mesh),
      expected_meta=expected_meta, check_keys=COMPATIBILITY_KEYS)
  state = fj_unlearn.ForsakenState(**restored)
  already_complete = int(state.stop_reason) != fj_unlearn.STOP_RUNNING
  loop_start = time.perf_counter()

  def save(state, complete):
    meta = {**expected_meta, "complete": complete,
            "elapsed_seconds": elapsed_before + setup_seconds + time.perf_counter() - loop_start}
    checkpoints.save(manager, int(state.step), state=state._asdict(), meta=meta)

  bar = common.progress(uc.max_steps, desc=PHASE, initial=int(state.step),
                        enabled=config.train.get("progress", True))
  steps_this_run = 0
  # The loop runs inside jax.lax.while_loop, a chunk of steps per call: one
  # dispatch per chunk instead of per step, and the progress bar and the
  # checkpoints still see every chunk.
  while int(state.stop_reason) == fj_unlearn.STOP_RUNNING:
    before = int(state.step)
    until = before + uc.checkpoint_every - before % uc.checkpoint_every
    if stop_after is not None:
      until = min(until, before + stop_after - steps_this_run)
    state = parallel.block(prep.run(state, prep.forget, prep.retain, prep.reference,
                                    prep.threshold, prep.target_rate, jnp.int32(until)))
    steps_this_run += int(state.step) - before
    bar.update(int(state.step) - before)
    last = int(state.step) - 1
    bar.set_postfix(loss=f"{float(state.loss_trace[last]):.4f}",
                    accepted=int(state.num_accepted))
    running = int(state.stop_reason) == fj_unlearn.STOP_RUNNING
    if running and int(state.step) % uc.checkpoint_every == 0:
      save(state, complete=False)
    if running and stop_after is not None and steps_this_run >= stop_after:
      manager.wait_until_finished()
      bar.close()
      raise common.TrainingInterrupted(f"[{PHASE}] stopped after step {int(state.step)}")
  bar.close()
  if already_complete:
    unlearn_seconds = elapsed_before
    common.log(f"[{PHASE}] already complete in {manager.directory}")
  info = fj_unlearn.summarize(state)
  if info["accepted"] == 0 and info["nonfinite"] == info["steps"]:
    # Checked before the final save: the checkpoint is never marked complete,
    # so no later phase reads the unchanged model as an unlearned one.
    manager.wait_until_finished()
    raise FloatingPointError(
        f"[{PHASE}] every generator step gave a non-finite loss; the model was left unchanged "
        f"and no unlearned model was produced. Lower unlearn.lr (now {uc.lr}) or "
        f"unlearn.generator_lr (now {uc.generator_lr}).")
  if not already_complete:
    state = finish(prep, state)
    unlearn_seconds = elapsed_before + setup_seconds + time.perf_counter() - loop_start
    save(state, complete=True)
    manager.wait_until_finished()
  if info["nonfinite"]:
    common.log(f"[{PHASE}] {info['nonfinite']} of {info['steps']} generator steps had a "
               "non-finite loss and were rejected (the model was not changed by them)")
  summary = {
      "phase": PHASE, "unlearn_seconds": unlearn_seconds, "steps": info["steps"],
      "accepted_steps": info["accepted"], "nonfinite_steps": info["nonfinite"],
      "stop_reason": info["stop_reason"],
      "best_loss": info["best_loss"] if np.isfinite(info["best_loss"]) else None,
      "target_threshold": prep.oracle_threshold, "target_rate": float(prep.target_rate),
      "num_forget": int(len(data.splits.forget)), "num_reference": prep.num_reference,
      "setup_seconds": setup_seconds, "mask_fraction": float(uc.mask_fraction),
      "relearn_weight": float(uc.relearn_weight), "repair_steps": int(uc.repair_steps),
      "shrink": float(uc.shrink), "perturb": float(uc.perturb),
      # Summed over programs; the loop's compilation overlaps the setup's work.
      "compile_seconds": compile_times,
      "generator": uc.generator,
      "objective": uc.objective,
      "loss_trace": info["loss_trace"].tolist(), "rate_trace": info["rate_trace"].tolist(),
  }
  if common.is_main_process():
    common.write_json(os.path.join(workdir, PHASE, "summary.json"), summary)
  common.log(f"[{PHASE}] {info['steps']} generator steps ({info['accepted']} accepted, stop: "
             f"{info['stop_reason']}) in {unlearn_seconds:.2f} s (XLA compilation or cache loads "
             f"{compile_times['xla_compiling']:.2f} s, tracing and lowering "
             f"{compile_times['tracing'] + compile_times['lowering']:.2f} s, summed over "
             "programs)")
  return summary


if __name__ == "__main__":
  cli.run(unlearn)
