"""The train phase end to end on tiny data: resume, refusal, NaN handling."""

import jax
import numpy as np
import pytest

from experiments import train as train_phase
from experiments.configs import digits
from forsaken_jax import checkpoints


def _config(data_dir, **train_overrides):
  config = digits.get_config("runlocal")
  config.dataset.data_dir = data_dir
  config.train.progress = False
  for key, value in train_overrides.items():
    config.train[key] = value
  return config


def _final_params(workdir):
  manager = checkpoints.open_manager(train_phase.checkpoint_dir(workdir, "train"), read_only=True)
  return manager.restore(manager.latest_step()).state["params"], manager.latest_step()


def test_interrupted_run_resumes_to_identical_parameters(tmp_path, data_dir):
  config = _config(data_dir)
  straight = train_phase.train_and_evaluate(config, str(tmp_path / "straight"))

  with pytest.raises(train_phase.TrainingInterrupted):
    train_phase.train_and_evaluate(config, str(tmp_path / "resumed"), stop_after=17)
  manager = checkpoints.open_manager(train_phase.checkpoint_dir(str(tmp_path / "resumed"), "train"),
                                     read_only=True)
  assert manager.latest_step() == 10  # the kill came after step 17: steps 11-17 are lost
  resumed = train_phase.train_and_evaluate(config, str(tmp_path / "resumed"))

  params_a, step_a = _final_params(str(tmp_path / "straight"))
  params_b, step_b = _final_params(str(tmp_path / "resumed"))
  assert step_a == step_b == config.train.steps
  for a, b in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  assert resumed["test_accuracy"] == pytest.approx(straight["test_accuracy"])


def test_refuses_to_overwrite_a_different_run(tmp_path, data_dir):
  workdir = str(tmp_path / "run")
  train_phase.train_and_evaluate(_config(data_dir), workdir)
  changed = _config(data_dir, learning_rate=1e-2)
  with pytest.raises(checkpoints.CheckpointError, match="signature"):
    train_phase.train_and_evaluate(changed, workdir)
  # The original checkpoint is still there and still complete.
  manager = checkpoints.open_manager(train_phase.checkpoint_dir(workdir, "train"), read_only=True)
  assert manager.latest_step() == 30


def test_nan_loss_is_a_clear_error_and_keeps_the_last_checkpoint(tmp_path, data_dir):
  workdir = str(tmp_path / "run")
  config = _config(data_dir, optimizer="sgd", learning_rate=1e30, checkpoint_every=1)
  with pytest.raises(FloatingPointError, match="learning_rate"):
    train_phase.train_and_evaluate(config, workdir)
  manager = checkpoints.open_manager(train_phase.checkpoint_dir(workdir, "train"), read_only=True)
  state = manager.restore(manager.latest_step()).state
  assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(state["params"]))
