"""The train phase: fit the original model on the member set.

    python -m experiments.train --config experiments/configs/fashion_mnist.py \
        --workdir runs/fmnist

Writes `<workdir>/train/checkpoints` (state, splits, meta) and
`<workdir>/train/metrics.jsonl`, `<workdir>/train/summary.json`. A killed run
resumes from its last checkpoint when started again with the same config and
ends with the same parameters as an uninterrupted run. The retrain phase
(`experiments.retrain`) runs the same loop on the retained set.
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
from forsaken_jax import train

# Config sections whose values determine the trained parameters.
SIGNATURE_SECTIONS = ("dataset", "scenario", "model", "train")
COMPATIBILITY_KEYS = ("phase", "model", "dataset_fingerprint", "signature")


TrainingInterrupted = common.TrainingInterrupted
checkpoint_dir = common.checkpoint_dir


def run_training(config: ml_collections.ConfigDict, workdir: str, *, phase: str,
                 data: fj_data.ExperimentData, indices: np.ndarray,
                 stop_after: int | None = None, seed_stream: int = 0) -> dict[str, Any]:
  """Trains a model from scratch on `data.pool[indices]`, resuming if possible.

  Args:
    config: experiment config (sections dataset, scenario, model, train, seed).
    workdir: the run directory; this writes only `<workdir>/<phase>/`.
    phase: "train", "retrain" or another retraining's name; also the
      directory it writes.
    data: the experiment data.
    indices: pool indices to train on.
    stop_after: stop (raising `TrainingInterrupted`, without a final
      checkpoint) after this many steps of this process; simulates a kill.
    seed_stream: 0 (train and retrain phases): initialization and batch
      order from `config.seed`; k > 0: another initialization and batch
      order, the same splits (a retraining with another training seed).

  Returns:
    A summary dict: test/train accuracy, wall time, steps.
  """
  tc = config.train
  if seed_stream < 0:
    raise ValueError(f"seed_stream must be non-negative, got {seed_stream}")
  mesh = parallel.make_mesh()
  parallel.check_batch_divisible(tc.batch_size, mesh)
  indices = fj_data.check_indices("training indices", indices, len(data.pool))
  if tc.batch_size > len(indices):
    raise ValueError(f"train.batch_size={tc.batch_size} exceeds the {len(indices)} training examples")
  spec = common.model_spec(config, data)
  model = common.create_model(spec)
  tx = common.make_optimizer(tc)
  loss_fn = common.loss_fn(config)
  expected_meta = checkpoints.base_meta(
      phase, model=spec, dataset_fingerprint=data.fingerprint(),
      signature=common.signature(config, SIGNATURE_SECTIONS), num_examples=int(len(indices)),
      steps=int(tc.steps), seed_stream=int(seed_stream), config=config.to_dict())

  key = jax.random.key(config.seed)
  if seed_stream:
    key = jax.random.fold_in(key, seed_stream)
  init_key, data_key = jax.random.split(key)
  replicated = parallel.replicated(mesh)

  @functools.partial(jax.jit, out_shardings=replicated)
  def init():
    state = train.init_train_state(model.init_fn, tx, init_key)
    # The key that orders the data travels with the state, so a resumed run
    # continues the same batch sequence.
    return {**state, "rng": jax.random.key_data(data_key)}

  manager = checkpoints.open_manager(checkpoint_dir(workdir, phase))
  state, elapsed_before = common.restore_or_init(
      phase=phase, manager=manager, init=init, sharding=replicated, expected_meta=expected_meta,
      check_keys=COMPATIBILITY_KEYS)
  data_seed = int(jax.random.randint(jax.random.wrap_key_data(state["rng"]), (), 0, 2**31 - 1))
  local = fj_data.process_batch_slice(tc.batch_size)
  images, labels = data.pool.images, data.pool.labels

  def make_batch(step):
    batch_idx = indices[fj_data.batch_indices(len(indices), tc.batch_size, step, seed=data_seed)]
    batch_idx = batch_idx[local]
    return parallel.shard_batch({"image": images[batch_idx], "label": labels[batch_idx]}, mesh)

  with common.compile_time_meter() as compile_times:
    state, train_seconds = common.run_steps(
        phase=phase, state=state,
        step_fn=train.make_train_step(model.apply_fn, tx, loss_fn=loss_fn, mesh=mesh),
        make_batch=make_batch, num_steps=tc.steps, manager=manager, meta=expected_meta,
        splits=data.splits.to_arrays(), log_every=tc.log_every,
        checkpoint_every=tc.checkpoint_every,
        writer=common.MetricWriter(os.path.join(workdir, phase)),
        show_progress=tc.get("progress", True), elapsed_before=elapsed_before,
        stop_after=stop_after, hint=f"lower train.learning_rate (now {tc.learning_rate}).")

  predict = train.make_predict_fn(model.apply_fn, mesh)
  test = data.test_examples
  test_metrics = train.evaluate(predict, state["params"], test.images, test.labels,
                                loss_fn=loss_fn)
  train_metrics = train.evaluate(predict, state["params"], images[indices], labels[indices],
                                 loss_fn=loss_fn)
  summary = {
      "phase": phase, "steps": int(tc.steps), "num_examples": int(len(indices)),
      "test_accuracy": test_metrics["accuracy"], "test_loss": test_metrics["loss"],
      "train_accuracy": train_metrics["accuracy"], "train_loss": train_metrics["loss"],
      "train_seconds": train_seconds, "devices": jax.device_count(),
      "compile_seconds": compile_times,  # summed over programs, within train_seconds
      "dataset": data.pool.name,
  }
  if common.is_main_process():
    common.write_json(os.path.join(workdir, phase, "summary.json"), summary)
  return summary


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       stop_after: int | None = None) -> dict[str, Any]:
  """Runs the train phase: the original model on the member set."""
  data = common.load_experiment_data(config)
  summary = run_training(config, workdir, phase="train", data=data, indices=data.splits.members,
                         stop_after=stop_after)
  common.log(f"[train] {summary['dataset']}: test accuracy {summary['test_accuracy']:.4f} "
             f"(train {summary['train_accuracy']:.4f}) after {summary['steps']} steps, "
             f"{summary['train_seconds']:.1f} s")
  return summary


if __name__ == "__main__":
  cli.run(train_and_evaluate)
