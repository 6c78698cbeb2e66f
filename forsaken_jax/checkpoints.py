"""Phase checkpoints: the one module that talks to Orbax.

A phase directory (`<workdir>/<phase>/`) holds an Orbax `CheckpointManager`
whose steps each have three items:

- `state`: the phase's pytree (params, optimizer state, step, PRNG key data, ...),
- `splits`: the data splits as a dict of int64 index arrays,
- `meta`: JSON (phase name, config, model, dataset fingerprint, parameter
  shapes, library version).

Upstream phases are opened read-only. Before a restore, the stored meta is
compared with what the caller expects, so a checkpoint written for another
model, dataset or config fails with a message naming the difference instead
of a shape error deep inside Orbax.
"""

import json
import os
from typing import Any, Iterable, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp

import forsaken_jax


class CheckpointError(ValueError):
  """A checkpoint is missing, or does not match what the caller expects."""


def param_signature(tree: Any) -> dict[str, list]:
  """Maps each leaf path of a pytree to `[shape, dtype]` (JSON-friendly).

  Args:
    tree: a pytree of arrays or `jax.ShapeDtypeStruct`s.

  Returns:
    `{"params/Dense_0/kernel": [[784, 256], "float32"], ...}`.
  """
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(path, simple=True, separator="/"): [list(np.shape(leaf)),
                                                                    str(leaf.dtype)]
          for path, leaf in leaves}


def base_meta(phase: str, **fields: Any) -> dict[str, Any]:
  """A meta dict with the phase name and library version filled in.

  The dict goes through a JSON round trip, so it compares equal to what
  `read_meta` returns later (tuples become lists, keys strings).
  """
  meta = {"phase": phase, "library_version": forsaken_jax.__version__, **fields}
  return json.loads(json.dumps(meta))


def _has_checkpoints(directory: str) -> bool:
  return os.path.isdir(directory) and any(name.isdigit() for name in os.listdir(directory))


def open_manager(directory: str, *, read_only: bool = False, keep: int = 2
                 ) -> ocp.CheckpointManager:
  """Opens the checkpoint manager of one phase.

  Args:
    directory: the phase directory, e.g. `runs/x/train`.
    read_only: open an upstream phase: it must exist and is never written.
    keep: how many of the latest steps to preserve when writing.

  Returns:
    An `ocp.CheckpointManager`.

  Raises:
    CheckpointError: `read_only` and the directory holds no checkpoint.
  """
  directory = os.path.abspath(directory)
  if read_only:
    if not _has_checkpoints(directory):
      raise CheckpointError(f"no checkpoint found in {directory}: run the phase that writes it first")
    options = ocp.CheckpointManagerOptions(read_only=True, create=False)
  else:
    # A run killed mid-save leaves a temporary step directory that is never a
    # step; the writer that resumes removes it rather than leave it forever.
    options = ocp.CheckpointManagerOptions(
        preservation_policy=ocp.checkpoint_managers.LatestN(keep), create=True,
        cleanup_tmp_directories=True)
  # Registering the handlers lets a fresh manager read item metadata (shapes)
  # before any restore, which is how mismatches are reported early.
  handlers = {"state": ocp.StandardCheckpointHandler(), "splits": ocp.StandardCheckpointHandler(),
              "meta": ocp.JsonCheckpointHandler()}
  return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)


def save(manager: ocp.CheckpointManager, step: int, *, state: Any, meta: Mapping[str, Any],
         splits: Mapping[str, np.ndarray] | None = None) -> None:
  """Saves one step (asynchronously; call `manager.wait_until_finished()`).

  Args:
    manager: a writable manager from `open_manager`.
    step: the step number (monotonically increasing).
    state: the pytree to save.
    meta: JSON-serializable metadata; must contain "phase".
    splits: optional dict of index arrays.
  """
  if "phase" not in meta:
    raise ValueError("checkpoint meta must name its phase")
  items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(dict(meta))}
  if splits is not None:
    items["splits"] = ocp.args.StandardSave({k: np.asarray(v) for k, v in splits.items()})
  manager.save(int(step), args=ocp.args.Composite(**items))


def read_meta(manager: ocp.CheckpointManager, step: int | None = None) -> dict[str, Any]:
  """Reads the JSON meta of `step` (default: the latest)."""
  step = _resolve_step(manager, step)
  return dict(manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta)


def check_compatible(stored: Mapping[str, Any], expected: Mapping[str, Any], *,
                     keys: Iterable[str], where: str) -> None:
  """Raises CheckpointError naming every key whose stored value differs.

  Args:
    stored: the meta read from a checkpoint.
    expected: the meta the caller would write for its own config.
    keys: the meta keys that must agree (e.g. "phase", "model",
      "dataset_fingerprint", "param_shapes").
    where: the checkpoint directory, for the message.
  """
  problems = []
  for key in keys:
    have, want = stored.get(key), expected.get(key)
    if have != want:
      problems.append(f"  {key}: checkpoint has {_short(have)}, expected {_short(want)}")
  if problems:
    raise CheckpointError(f"checkpoint in {where} is incompatible:\n" + "\n".join(problems))


def restore(manager: ocp.CheckpointManager, abstract_state: Any = None, *, step: int | None = None,
            expected_meta: Mapping[str, Any] | None = None,
            check_keys: Iterable[str] = ("phase",),
            expected_params: Any = None) -> tuple[Any, dict[str, np.ndarray], dict]:
  """Restores `(state, splits, meta)` of `step` (default: the latest).

  Args:
    manager: a manager from `open_manager`.
    abstract_state: pytree of `jax.ShapeDtypeStruct` (with shardings) giving
      the structure to restore into, e.g. from `jax.eval_shape`; its shapes
      must match the stored ones. `None` reads the state as it was saved
      (on the default device), e.g. to read another phase's parameters.
    step: which step; `None` for the latest.
    expected_meta: if given, compared with the stored meta on `check_keys`
      before any array is read.
    check_keys: meta keys that must agree with `expected_meta`.
    expected_params: pytree of arrays or `ShapeDtypeStruct`s that the stored
      `state["params"]` must match in structure, shapes and dtypes.

  Returns:
    `(state, splits, meta)`; `splits` is `{}` when none were saved.
  """
  step = _resolve_step(manager, step)
  where = f"{manager.directory}/{step}"
  meta = read_meta(manager, step)
  if expected_meta is not None:
    check_compatible(meta, expected_meta, keys=check_keys, where=where)
  item_metadata = manager.item_metadata(step)
  stored = item_metadata["state"]
  stored = stored.tree if hasattr(stored, "tree") else stored
  for have, want in ((stored, abstract_state),
                     (stored.get("params") if isinstance(stored, Mapping) else None,
                      expected_params)):
    if want is None:
      continue
    have, want = param_signature(have), param_signature(want)
    if have != want:
      raise CheckpointError(f"checkpoint in {where} does not match the expected model/state:\n"
                            + _diff_signatures(have, want))
  items = {"state": ocp.args.StandardRestore(abstract_state)}
  if item_metadata.get("splits") is not None:
    items["splits"] = ocp.args.StandardRestore()
  restored = manager.restore(step, args=ocp.args.Composite(**items))
  splits = restored.get("splits") or {}
  return restored.state, {k: np.asarray(v) for k, v in splits.items()}, meta


def _resolve_step(manager: ocp.CheckpointManager, step: int | None) -> int:
  if step is None:
    step = manager.latest_step()
    if step is None:
      raise CheckpointError(f"no checkpoint found in {manager.directory}")
  elif step not in manager.all_steps():
    raise CheckpointError(f"no step {step} in {manager.directory}; have {manager.all_steps()}")
  return step


def _diff_signatures(have: dict, want: dict, limit: int = 8) -> str:
  lines = []
  for path in sorted(set(have) | set(want)):
    if have.get(path) != want.get(path):
      lines.append(f"  {path}: checkpoint {have.get(path, 'absent')}, expected "
                   f"{want.get(path, 'absent')}")
  more = f"\n  ... and {len(lines) - limit} more" if len(lines) > limit else ""
  return "\n".join(lines[:limit]) + more


def _short(value: Any, limit: int = 200) -> str:
  text = repr(value)
  return text if len(text) <= limit else text[:limit] + "..."
