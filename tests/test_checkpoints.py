"""Phase checkpoints: round trip, read-only opening, incompatibility errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from forsaken_jax import checkpoints, models, train


def _state(hidden=(8,)):
  fns = models.create_model("mlp", num_classes=3, input_shape=(4, 4, 1), hidden=hidden)
  return train.init_train_state(fns.init_fn, optax.adam(1e-3), jax.random.key(0))


def _abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def test_round_trip_state_splits_and_meta(tmp_path):
  state = _state()
  splits = {"members": np.arange(10), "forget": np.array([3, 7])}
  manager = checkpoints.open_manager(str(tmp_path / "train"))
  meta = checkpoints.base_meta("train", model={"name": "mlp"})
  checkpoints.save(manager, 5, state=state, meta=meta, splits=splits)
  manager.wait_until_finished()

  reader = checkpoints.open_manager(str(tmp_path / "train"), read_only=True)
  restored, restored_splits, restored_meta = checkpoints.restore(
      reader, _abstract(state), expected_meta=meta, check_keys=("phase", "model"))
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(restored_splits["forget"], [3, 7])
  assert restored_meta["library_version"] == meta["library_version"]


def test_a_resuming_writer_removes_a_killed_saves_leftover_and_a_reader_keeps_it(tmp_path):
  directory = str(tmp_path / "train")
  manager = checkpoints.open_manager(directory)
  checkpoints.save(manager, 5, state=_state(), meta=checkpoints.base_meta("train"))
  manager.wait_until_finished()
  # What a kill during the save of step 10 leaves behind (orbax-checkpoint 0.12's name).
  leftover = tmp_path / "train" / "10.orbax-checkpoint-tmp"
  (leftover / "state").mkdir(parents=True)
  reader = checkpoints.open_manager(directory, read_only=True)
  assert reader.all_steps() == [5] and leftover.exists()
  writer = checkpoints.open_manager(directory)
  assert writer.all_steps() == [5]
  # Orbax removes it in the background, finished before the writer's first save.
  checkpoints.save(writer, 6, state=_state(), meta=checkpoints.base_meta("train"))
  writer.wait_until_finished()
  assert writer.all_steps() == [5, 6] and not leftover.exists()


def test_read_only_missing_checkpoint_is_a_clear_error(tmp_path):
  with pytest.raises(checkpoints.CheckpointError, match="no checkpoint found"):
    checkpoints.open_manager(str(tmp_path / "nothing"), read_only=True)


def test_mismatched_model_names_the_parameters(tmp_path):
  manager = checkpoints.open_manager(str(tmp_path / "train"))
  checkpoints.save(manager, 1, state=_state((8,)), meta=checkpoints.base_meta("train"))
  manager.wait_until_finished()
  with pytest.raises(checkpoints.CheckpointError, match=r"params/Dense_0/kernel.*\[16, 8\]"):
    checkpoints.restore(manager, _abstract(_state((16,))))


def test_mismatched_meta_names_the_key(tmp_path):
  manager = checkpoints.open_manager(str(tmp_path / "train"))
  stored = checkpoints.base_meta("train", dataset_fingerprint="aaaa")
  checkpoints.save(manager, 1, state=_state(), meta=stored)
  manager.wait_until_finished()
  wanted = checkpoints.base_meta("train", dataset_fingerprint="bbbb")
  with pytest.raises(checkpoints.CheckpointError, match="dataset_fingerprint: checkpoint has 'aaaa'"):
    checkpoints.restore(manager, _abstract(_state()), expected_meta=wanted,
                        check_keys=("phase", "dataset_fingerprint"))
  with pytest.raises(checkpoints.CheckpointError, match="no step 9"):
    checkpoints.restore(manager, _abstract(_state()), step=9)


def test_meta_must_name_phase(tmp_path):
  manager = checkpoints.open_manager(str(tmp_path / "x"))
  with pytest.raises(ValueError, match="phase"):
    checkpoints.save(manager, 0, state={"a": jnp.ones(2)}, meta={})


def test_restore_without_target_checks_expected_params(tmp_path):
  state = _state((8,))
  manager = checkpoints.open_manager(str(tmp_path / "train"))
  checkpoints.save(manager, 3, state=state, meta=checkpoints.base_meta("train"))
  manager.wait_until_finished()
  restored, splits, _ = checkpoints.restore(manager, expected_params=_abstract(state["params"]))
  assert splits == {}
  np.testing.assert_array_equal(restored["params"]["Dense_0"]["kernel"],
                                state["params"]["Dense_0"]["kernel"])
  with pytest.raises(checkpoints.CheckpointError, match="Dense_0/kernel"):
    checkpoints.restore(manager, expected_params=_abstract(_state((16,))["params"]))
