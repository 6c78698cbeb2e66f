"""Backdoor data: a trigger patch stamped on images that carry a target label.

A backdoor (trojan) user uploads ordinary images stamped with a small trigger
and relabelled to a target class; a model that learns the backdoor classifies
any triggered image as the target. Its attack success rate is the share of
triggered images of other classes that it classifies as the target.

  bd = build_backdoor_pool(train, num_poisoned=400, target=0, seed=0)
  # bd.pool: train without the 400 sources, then their triggered copies (label 0)
  triggered = stamp_trigger(test.images[test.labels != 0])
  asr = attack_success_rate(predictions, test.labels[test.labels != 0], target=0)

References:
  Gu et al., "BadNets: Identifying Vulnerabilities in the Machine Learning
  Model Supply Chain", 2017. https://arxiv.org/abs/1708.06733
"""

from typing import Any, NamedTuple

import numpy as np

from forsaken_jax.data import validation
from forsaken_jax.data.dataset import ArrayDataset

# The random stream of the source selection (beside splits.py's streams 0-5).
_STREAM_SOURCES = 6

__all__ = ["BackdoorPool", "attack_success_rate", "build_backdoor_pool", "stamp_trigger"]


def stamp_trigger(images: Any, *, size: int = 3, value: float = 1.0, margin: int = 1) -> np.ndarray:
  """Stamps a `size` x `size` square of intensity `value` near the bottom-right corner.

  Args:
    images: float `[N, H, W, C]` (or one `[H, W, C]` image) in `[0, 1]`.
    size: side of the square, in pixels.
    value: its intensity in every channel (1.0: the maximum).
    margin: pixels between the square and the bottom and right borders.

  Returns:
    A float32 copy of `images` with rows `[H - margin - size, H - margin)` and
    the same columns set to `value`; the input is not modified.

  Raises:
    ValueError: for a bad shape, a square that does not fit, or a value
      outside `[0, 1]`.

  Example:
    >>> stamp_trigger(np.zeros((1, 4, 4, 1)), size=2, value=1.0, margin=1)[0, ..., 0]
    array([[0., 0., 0., 0.],
           [0., 1., 1., 0.],
           [0., 1., 1., 0.],
           [0., 0., 0., 0.]], dtype=float32)
  """
  images = np.array(images, dtype=np.float32)
  if images.ndim not in (3, 4):
    raise ValueError(f"images must be [N, H, W, C] or [H, W, C], got shape {images.shape}")
  height, width = images.shape[-3:-1]
  size, margin = validation.check_count("size", size, minimum=1), validation.check_count(
      "margin", margin)
  if size + margin > min(height, width):
    raise ValueError(f"a trigger of size {size} with margin {margin} does not fit "
                     f"{height}x{width} images")
  if not 0.0 <= float(value) <= 1.0:
    raise ValueError(f"value must be in [0, 1], got {value!r}")
  images[..., height - margin - size:height - margin, width - margin - size:width - margin, :] = (
      value)
  return images


class BackdoorPool(NamedTuple):
  """`build_backdoor_pool`'s result.

  Attributes:
    pool: the train split without the sources, then the sources' triggered
      copies labelled `target` (the poisoned samples, at the end).
    is_poisoned: bool `[len(pool)]`, True for the poisoned samples.
    clean_images: `[num_poisoned, H, W, C]`, the poisoned samples without
      the trigger, in the pool's order.
    source_labels: int32 `[num_poisoned]`, their true labels.
    source_indices: `[num_poisoned]`, their indices in the train split.
  """

  pool: ArrayDataset
  is_poisoned: np.ndarray
  clean_images: np.ndarray
  source_labels: np.ndarray
  source_indices: np.ndarray


def build_backdoor_pool(train: ArrayDataset, *, num_poisoned: int, target: int, seed: int,
                        size: int = 3, value: float = 1.0, margin: int = 1) -> BackdoorPool:
  """Turns `num_poisoned` train images of other classes than `target` into backdoor samples.

  The sources are a seeded draw without replacement among the examples whose
  label is not `target`. They leave the in-distribution part of the pool, so
  no clean copy of a poisoned image is trained on or held out, and come back
  at its end stamped (`stamp_trigger`) and labelled `target`: the same layout
  as `build_pool`'s inserted OOD samples, so `make_splits(scenario="ood")`
  divides them between the members (the forget set) and the held-out data.

  Args:
    train: the dataset's train split.
    num_poisoned: number of poisoned samples.
    target: the backdoor's target class.
    seed: seed of the source selection and order.
    size, value, margin: the trigger (`stamp_trigger`).

  Returns:
    A `BackdoorPool`.

  Raises:
    ValueError: for a target outside the label space or more poisoned
      samples than examples of other classes.
  """
  num_poisoned = validation.check_count("num_poisoned", num_poisoned, minimum=1)
  target = validation.check_count("target", target)
  if target >= train.num_classes:
    raise ValueError(f"target={target} is outside the {train.num_classes} classes of "
                     f"{train.name!r}")
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f"seed must be a non-negative int, got {seed!r}")
  candidates = np.flatnonzero(train.labels != target)
  if num_poisoned > candidates.size:
    raise ValueError(f"num_poisoned={num_poisoned} exceeds the {candidates.size} examples of "
                     f"{train.name!r} outside class {target}")
  sources = np.random.default_rng([int(seed), _STREAM_SOURCES]).choice(
      candidates, num_poisoned, replace=False)
  rest = np.setdiff1d(np.arange(len(train)), sources)
  clean = np.array(train.images[sources])
  pool = ArrayDataset(
      images=np.concatenate([train.images[rest],
                             stamp_trigger(clean, size=size, value=value, margin=margin)]),
      labels=np.concatenate([train.labels[rest], np.full(num_poisoned, target, np.int32)]),
      num_classes=train.num_classes, name=f"{train.name}+backdoor[{num_poisoned}->{target}]")
  is_poisoned = np.concatenate([np.zeros(rest.size, bool), np.ones(num_poisoned, bool)])
  return BackdoorPool(pool, is_poisoned, clean, np.array(train.labels[sources]), sources)


def attack_success_rate(predictions: Any, labels: Any, *, target: int) -> float:
  """The share of triggered examples whose true class is not `target` predicted as `target`.

  Args:
    predictions: `[N]` predicted classes (or `[N, C]` logits) on triggered images.
    labels: `[N]` their true classes.
    target: the backdoor's target class.

  Returns:
    The rate in `[0, 1]`; examples of class `target` are left out.

  Raises:
    ValueError: for mismatched shapes or no example outside `target`.
  """
  predictions, labels = np.asarray(predictions), np.asarray(labels)
  if predictions.ndim == 2:
    predictions = np.argmax(predictions, -1)
  if predictions.shape != labels.shape or labels.ndim != 1:
    raise ValueError(f"predictions {predictions.shape} and labels {labels.shape} must be "
                     f"[N] vectors of one length (or [N, C] logits)")
  others = labels != target
  if not others.any():
    raise ValueError(f"no example outside the target class {target}: the rate is undefined")
  return float(np.mean(predictions[others] == target))
