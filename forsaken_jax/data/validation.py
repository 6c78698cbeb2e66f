"""Validation of index sets, forget sets and labelled image arrays.

Every module that accepts indices (splits, subsets, forget sets handed to an
unlearner) goes through these checks, so a bad selection fails at the call
site with a message that names the argument and shows the offending values,
instead of silently training on the wrong examples.
"""

from typing import Any

import numpy as np

# How many offending values an error message shows.
_MAX_SHOWN = 10


def show_values(values: np.ndarray) -> str:
  """Formats at most `_MAX_SHOWN` values for an error message."""
  values = np.asarray(values).ravel()
  head = ", ".join(str(v) for v in values[:_MAX_SHOWN].tolist())
  more = f", ... ({values.size} in total)" if values.size > _MAX_SHOWN else ""
  return f"[{head}{more}]"


def frozen_indices(name: str, values: Any) -> np.ndarray:
  """`values` as a sorted, read-only int64 index vector.

  Raises:
    ValueError (naming `name`): not 1-D, or not integer.
  """
  arr = np.asarray(values)
  if arr.ndim != 1:
    raise ValueError(f"{name} must be a 1-D index array, got shape {arr.shape}")
  if arr.size and (not np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
    raise ValueError(f"{name} must hold integer indices, got dtype {arr.dtype}")
  arr = np.sort(arr.astype(np.int64))
  arr.setflags(write=False)
  return arr


def check_count(name: str, value: Any, *, minimum: int = 0) -> int:
  """Returns `value` as an int, or raises ValueError unless it is an int >= `minimum`."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
  return int(value)


def check_indices(
    name: str,
    indices: Any,
    size: int | None,
    *,
    allow_empty: bool = False,
) -> np.ndarray:
  """Validates an index set into a collection of `size` elements.

  Args:
    name: the argument's name, used in error messages.
    indices: array-like of integer indices.
    size: length of the indexed collection; valid indices are `[0, size)`.
      `None` checks only that indices are non-negative.
    allow_empty: accept an empty index set.

  Returns:
    The indices as a new 1-D int64 array, in the given order.

  Raises:
    ValueError: if `indices` is not 1-D, has a non-integer dtype, is empty
      (unless `allow_empty`), holds negative or out-of-range values, or holds
      duplicates.
  """
  if size is not None and (
      isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 0):
    raise ValueError(f"size for {name} must be a non-negative int, got {size!r}")
  arr = np.asarray(indices)
  if arr.ndim != 1:
    raise ValueError(f"{name} must be a 1-D index array, got shape {arr.shape}")
  if arr.size == 0:
    if allow_empty:
      return np.zeros((0,), np.int64)
    raise ValueError(f"{name} is empty; it needs at least one index")
  # Booleans are integers to numpy; a boolean mask passed as indices is a bug.
  if not np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_:
    raise ValueError(f"{name} must hold integer indices, got dtype {arr.dtype}: {show_values(arr)}")
  arr = arr.astype(np.int64)
  if size is None:
    bad = arr[arr < 0]
    if bad.size:
      raise ValueError(f"{name} holds negative indices: {show_values(bad)}")
  else:
    bad = arr[(arr < 0) | (arr >= size)]
    if bad.size:
      raise ValueError(f"{name} holds indices outside [0, {size}): {show_values(bad)}")
  uniq, counts = np.unique(arr, return_counts=True)
  if uniq.size != arr.size:
    raise ValueError(f"{name} holds duplicate indices: {show_values(uniq[counts > 1])}")
  return arr


def check_forget_set(
    forget: Any,
    members: Any,
    *,
    forget_name: str = "forget",
    members_name: str = "members",
) -> np.ndarray:
  """Validates that a forget set is a non-empty subset of the training set.

  Both arrays index the same collection (the pool); ranges are checked by
  `check_indices` beforehand where the collection size is known.

  Args:
    forget: indices to unlearn.
    members: indices of the training set (the original model's members).
    forget_name: name of `forget` in error messages.
    members_name: name of `members` in error messages.

  Returns:
    `forget` as a 1-D int64 array, in the given order.

  Raises:
    ValueError: if `forget` is empty, malformed, holds duplicates, or holds
      indices that are not in `members`.
  """
  # No collection size here: membership in `members` bounds `forget` anyway.
  members_arr = check_indices(members_name, members, None)
  forget_arr = check_indices(forget_name, forget, None)
  outside = forget_arr[~np.isin(forget_arr, members_arr)]
  if outside.size:
    raise ValueError(
        f"{forget_name} must be a subset of {members_name} (the training set); "
        f"these indices are not members: {show_values(outside)}")
  return forget_arr


def check_labels(images: Any, labels: Any, num_classes: int) -> None:
  """Validates a labelled image array.

  Args:
    images: `[N, H, W, C]` images.
    labels: `[N]` integer labels.
    num_classes: number of classes; labels must lie in `[0, num_classes)`.

  Raises:
    ValueError: if `num_classes` is not a positive int, `images` is not 4-D,
      `labels` is not 1-D integer, the counts differ, or a label is out of
      range.
  """
  if (isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer))
      or num_classes < 1):
    raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
  images = np.asarray(images)
  labels = np.asarray(labels)
  if images.ndim != 4:
    raise ValueError(f"images must be [N, H, W, C], got shape {images.shape}")
  if labels.ndim != 1:
    raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
  if images.shape[0] != labels.shape[0]:
    raise ValueError(
        f"images and labels count mismatch: {images.shape[0]} images, {labels.shape[0]} labels")
  if labels.size and (not np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_):
    raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
  bad = labels[(labels < 0) | (labels >= num_classes)]
  if bad.size:
    raise ValueError(f"labels outside [0, num_classes={num_classes}): {show_values(np.unique(bad))}")


def check_disjoint(**index_sets: Any) -> None:
  """Checks that named index sets are pairwise disjoint.

  Args:
    **index_sets: index arrays by name, e.g. `members=..., nonmembers=...`.

  Raises:
    ValueError: naming the first overlapping pair and the shared indices.
  """
  names = list(index_sets)
  arrays = {name: np.asarray(index_sets[name]).ravel() for name in names}
  for i, a in enumerate(names):
    for b in names[i + 1:]:
      common = np.intersect1d(arrays[a], arrays[b])
      if common.size:
        raise ValueError(f"{a} and {b} overlap at indices {show_values(common)}")
