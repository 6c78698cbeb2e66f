"""`ArrayDataset`: a labelled image dataset held in host memory."""

import dataclasses
import functools
import hashlib
from typing import Any

import numpy as np

from forsaken_jax.data import validation

# Bumped whenever the fingerprint's byte layout changes, so that an old
# fingerprint can never match data hashed a different way.
_FINGERPRINT_VERSION = b"forsaken_jax.ArrayDataset/v1"


@dataclasses.dataclass(frozen=True, eq=False)
class ArrayDataset:
  """Images and labels as host numpy arrays.

  The arrays are stored as read-only views, so a dataset (and its
  fingerprint) cannot change after construction.

  Attributes:
    images: float32 `[N, H, W, C]` in `[0, 1]`.
    labels: int32 `[N]` in `[0, num_classes)`.
    num_classes: number of classes of the label space. It may exceed the
      number of classes actually present (a subset keeps the full label space).
    name: human-readable origin, e.g. `"mnist5k_local[train]"`.
  """

  images: np.ndarray
  labels: np.ndarray
  num_classes: int
  name: str

  def __post_init__(self):
    images = np.asarray(self.images)
    labels = np.asarray(self.labels)
    if images.dtype != np.float32:
      raise ValueError(f"images must be float32 in [0, 1], got dtype {images.dtype}")
    if labels.dtype != np.int32:
      raise ValueError(f"labels must be int32, got dtype {labels.dtype}")
    validation.check_labels(images, labels, self.num_classes)
    if images.size and (images.min() < 0.0 or images.max() > 1.0):
      raise ValueError(
          f"images must lie in [0, 1], got range [{images.min()}, {images.max()}]")
    images, labels = images.view(), labels.view()
    images.setflags(write=False)
    labels.setflags(write=False)
    object.__setattr__(self, "images", images)
    object.__setattr__(self, "labels", labels)
    object.__setattr__(self, "num_classes", int(self.num_classes))

  def __len__(self) -> int:
    return int(self.labels.shape[0])

  @property
  def image_shape(self) -> tuple[int, int, int]:
    """`(H, W, C)` of one image."""
    return tuple(self.images.shape[1:])

  @functools.cached_property
  def _fingerprint(self) -> str:
    h = hashlib.sha256(_FINGERPRINT_VERSION)
    h.update(repr((self.images.shape, self.num_classes)).encode())
    h.update(np.ascontiguousarray(self.images).tobytes())
    h.update(np.ascontiguousarray(self.labels).tobytes())
    return h.hexdigest()[:16]

  def fingerprint(self) -> str:
    """A short sha256 of the exact data: images, labels and `num_classes`.

    The name is not part of it: two datasets with the same arrays have the same
    fingerprint. Checkpoints store it to refuse resuming on different data.

    Returns:
      16 hex characters.
    """
    return self._fingerprint

  def subset(self, indices: Any) -> "ArrayDataset":
    """The examples at `indices`, in that order.

    Args:
      indices: 1-D integer indices into this dataset, without duplicates.

    Returns:
      A new `ArrayDataset` with the same `num_classes` and name.

    Raises:
      ValueError: for empty, out-of-range, negative or duplicate indices.
    """
    idx = validation.check_indices("indices", indices, len(self))
    return ArrayDataset(
        images=self.images[idx], labels=self.labels[idx],
        num_classes=self.num_classes, name=self.name)
