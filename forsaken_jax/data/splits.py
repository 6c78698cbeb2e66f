"""The experiment's data: the pool, its index splits, and the unlearning scenarios.

The **pool** is the dataset's train split; in the out-of-distribution (OOD)
scenario the OOD patches are appended at its end with arbitrary labels. Every
selection is an index array into the pool (or into the test split for
`test`), which is what checkpoints store: the data itself is re-read and
identified by its fingerprint.

Scenarios (`make_splits(scenario=...)`):

* `"ood"` (the paper's): `num_forget_ood` OOD samples are inserted into the
  members and form the forget set. The remaining OOD samples are divided
  between non-members and shadow data, so the audit sees OOD non-members as
  a control.
* `"random"`: the forget set is a random `forget_fraction` of the members
  (at least one sample).
* `"class"`: the forget set is every member of class `forget_class`.

In-distribution members, non-members and shadow data are consecutive slices
of one seeded permutation of the non-OOD pool indices. Each random choice
draws from its own stream (`np.random.default_rng([seed, stream])`), so for a
given seed the in-distribution members are the same in every scenario, and
changing `num_test` or the forget selection leaves the member selection as it
is.
"""

import dataclasses
import hashlib
from typing import Any

import numpy as np

from forsaken_jax.data import validation
from forsaken_jax.data.dataset import ArrayDataset

SCENARIOS = ("ood", "random", "class")

# Independent random streams of one seed.
_STREAM_POOL_OOD = 0
_STREAM_POOL_LABELS = 1
_STREAM_IN_DIST = 2
_STREAM_OOD = 3
_STREAM_FORGET = 4
_STREAM_TEST = 5

_SPLIT_FIELDS = ("members", "nonmembers", "shadow", "forget", "test")


def _check_seed(seed: Any) -> int:
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f"seed must be a non-negative int, got {seed!r}")
  return int(seed)


@dataclasses.dataclass(frozen=True, eq=False)
class Splits:
  """Index sets of one experiment.

  Attributes:
    members: pool indices of the original model's training set.
    nonmembers: pool indices never trained on by the target model: the
      reference data of the unlearner and the MIA non-members.
    shadow: pool indices reserved for shadow-model attacks, disjoint from
      members and non-members (may be empty when no shadow models are used).
    forget: the subset of members to unlearn.
    test: indices into the test split.

  All are sorted 1-D int64 arrays; `validate` checks the invariants.
  """

  members: np.ndarray
  nonmembers: np.ndarray
  shadow: np.ndarray
  forget: np.ndarray
  test: np.ndarray

  def __post_init__(self):
    for field in _SPLIT_FIELDS:
      object.__setattr__(self, field, validation.frozen_indices(field, getattr(self, field)))

  @property
  def retain(self) -> np.ndarray:
    """Members minus the forget set, sorted."""
    return np.setdiff1d(self.members, self.forget)

  def to_arrays(self) -> dict[str, np.ndarray]:
    """The index arrays by field name (what a checkpoint stores)."""
    return {field: np.array(getattr(self, field)) for field in _SPLIT_FIELDS}

  @classmethod
  def from_arrays(cls, arrays: dict[str, Any]) -> "Splits":
    """Inverse of `to_arrays`.

    Raises:
      ValueError: if a field is missing or unexpected.
    """
    missing = [f for f in _SPLIT_FIELDS if f not in arrays]
    extra = [k for k in arrays if k not in _SPLIT_FIELDS]
    if missing or extra:
      raise ValueError(
          f"split arrays must have keys {list(_SPLIT_FIELDS)}; "
          f"missing {missing}, unexpected {extra}")
    return cls(**{f: np.asarray(arrays[f]) for f in _SPLIT_FIELDS})

  def validate(self, *, pool_size: int, test_size: int) -> None:
    """Checks ranges, emptiness, duplicates, disjointness and forget within members.

    Args:
      pool_size: number of pool examples.
      test_size: number of test examples.

    Raises:
      ValueError: naming the offending split and indices.
    """
    for field in ("members", "nonmembers", "forget"):
      validation.check_indices(field, getattr(self, field), pool_size)
    validation.check_indices("shadow", self.shadow, pool_size, allow_empty=True)
    validation.check_indices("test", self.test, test_size)
    validation.check_forget_set(self.forget, self.members)
    if self.retain.size == 0:
      raise ValueError(
          f"forget ({self.forget.size} indices) covers all members; nothing would remain to retain")
    validation.check_disjoint(members=self.members, nonmembers=self.nonmembers, shadow=self.shadow)

  def fingerprint(self) -> str:
    """Short sha256 of the index arrays."""
    h = hashlib.sha256(b"forsaken_jax.Splits/v1")
    for field in _SPLIT_FIELDS:
      h.update(field.encode())
      h.update(np.int64(getattr(self, field).size).tobytes())
      h.update(np.ascontiguousarray(getattr(self, field)).tobytes())
    return h.hexdigest()[:16]


@dataclasses.dataclass(frozen=True, eq=False)
class ExperimentData:
  """The pool, the test split, the splits over them, and which pool samples are OOD.

  Attributes:
    pool: the train split, with OOD samples appended in the OOD scenario.
    test: the test split.
    splits: index sets into `pool` (and `test` for `splits.test`).
    is_ood: bool `[len(pool)]`, True for inserted OOD samples.
  """

  pool: ArrayDataset
  test: ArrayDataset
  splits: Splits
  is_ood: np.ndarray

  @property
  def test_examples(self) -> ArrayDataset:
    """The test examples every phase scores: `test` at `splits.test`."""
    return self.test.subset(self.splits.test)

  def __post_init__(self):
    is_ood = np.asarray(self.is_ood)
    if is_ood.dtype != np.bool_ or is_ood.shape != (len(self.pool),):
      raise ValueError(
          f"is_ood must be bool [{len(self.pool)}] (one per pool sample), "
          f"got {is_ood.dtype} {is_ood.shape}")
    if self.pool.image_shape != self.test.image_shape:
      raise ValueError(
          f"pool images {self.pool.image_shape} and test images {self.test.image_shape} "
          f"differ in shape")
    if self.pool.num_classes != self.test.num_classes:
      raise ValueError(
          f"pool has {self.pool.num_classes} classes, test has {self.test.num_classes}")
    self.splits.validate(pool_size=len(self.pool), test_size=len(self.test))
    is_ood = is_ood.copy()
    is_ood.setflags(write=False)
    object.__setattr__(self, "is_ood", is_ood)

  def fingerprint(self) -> str:
    """Short sha256 identifying the pool, test data, splits and OOD mask together."""
    h = hashlib.sha256(b"forsaken_jax.ExperimentData/v1")
    for part in (self.pool.fingerprint(), self.test.fingerprint(), self.splits.fingerprint()):
      h.update(part.encode())
    h.update(np.packbits(self.is_ood).tobytes())
    h.update(np.int64(self.is_ood.size).tobytes())
    return h.hexdigest()[:16]


def build_pool(
    train: ArrayDataset,
    ood: ArrayDataset | None,
    *,
    num_ood: int,
    seed: int,
) -> tuple[ArrayDataset, np.ndarray]:
  """Appends OOD samples with arbitrary labels to the train split.

  The OOD samples are the first `num_ood` of a seeded permutation of `ood`;
  their labels are drawn uniformly (seeded) from train's classes, as a user
  uploading a private photo by mistake would attach some label of the task.

  Args:
    train: the dataset's train split.
    ood: OOD images (their labels are ignored); may be None when `num_ood == 0`.
    num_ood: number of OOD samples to append.
    seed: seed of the OOD selection and labels.

  Returns:
    `(pool, is_ood)`: the pool (train first, OOD appended) and a bool mask
    `[len(pool)]` that is True for the appended samples.

  Raises:
    ValueError: if `num_ood` exceeds `len(ood)`, `ood` is missing, or the
      image shapes differ.
  """
  num_ood = validation.check_count("num_ood", num_ood)
  seed = _check_seed(seed)
  if num_ood == 0:
    return train, np.zeros(len(train), bool)
  if ood is None:
    raise ValueError(f"num_ood={num_ood} but no OOD dataset was given")
  if num_ood > len(ood):
    raise ValueError(f"num_ood={num_ood} exceeds the {len(ood)} OOD samples of {ood.name!r}")
  if ood.image_shape != train.image_shape:
    raise ValueError(
        f"OOD images {ood.image_shape} ({ood.name!r}) do not match the train images "
        f"{train.image_shape} ({train.name!r}); use OOD data of the same shape (the "
        f"photo_patches_local configs are 28x28x1, 32x32x3 and 8x8x1)")
  chosen = np.random.default_rng([seed, _STREAM_POOL_OOD]).permutation(len(ood))[:num_ood]
  labels = np.random.default_rng([seed, _STREAM_POOL_LABELS]).integers(
      0, train.num_classes, size=num_ood).astype(np.int32)
  pool = ArrayDataset(
      images=np.concatenate([train.images, ood.images[chosen]]),
      labels=np.concatenate([train.labels, labels]),
      num_classes=train.num_classes,
      name=f"{train.name}+{ood.name}[{num_ood}]",
  )
  is_ood = np.concatenate([np.zeros(len(train), bool), np.ones(num_ood, bool)])
  return pool, is_ood


def make_splits(
    pool_labels: Any,
    is_ood: Any,
    test_size: int,
    *,
    num_members: int,
    num_nonmembers: int,
    num_shadow: int,
    scenario: str,
    seed: int,
    forget_fraction: float | None = None,
    forget_class: int | None = None,
    num_forget_ood: int | None = None,
    num_test: int | None = None,
) -> Splits:
  """Draws the members, non-members, shadow, forget and test index sets.

  Arguments of other scenarios than `scenario` are ignored.

  Args:
    pool_labels: `[P]` integer labels of the pool.
    is_ood: bool `[P]`, True for OOD pool samples.
    test_size: number of examples of the test split.
    num_members: in-distribution members. In the `"ood"` scenario the
      `num_forget_ood` OOD samples are added on top of them.
    num_nonmembers: in-distribution non-members (plus, for `"ood"`, about half
      of the OOD samples not inserted).
    num_shadow: in-distribution shadow samples (plus, for `"ood"`, the other
      OOD samples not inserted); 0 when no shadow models are used.
    scenario: `"ood"`, `"random"` or `"class"`.
    seed: non-negative int; same seed, same splits.
    forget_fraction: `"random"`: fraction of members to forget, in `(0, 1)`.
    forget_class: `"class"`: the class whose members are forgotten.
    num_forget_ood: `"ood"`: OOD samples inserted into the members and forgotten.
    num_test: test examples to use (a seeded subset); None for all.

  Returns:
    The validated `Splits`.

  Raises:
    ValueError: for malformed inputs, sizes larger than what is available,
      or an empty forget set.
  """
  labels = np.asarray(pool_labels)
  is_ood = np.asarray(is_ood)
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"pool_labels must be 1-D integers, got {labels.dtype} {labels.shape}")
  if is_ood.dtype != np.bool_ or is_ood.shape != labels.shape:
    raise ValueError(
        f"is_ood must be bool of shape {labels.shape} like pool_labels, "
        f"got {is_ood.dtype} {is_ood.shape}")
  if scenario not in SCENARIOS:
    raise ValueError(f"scenario must be one of {SCENARIOS}, got {scenario!r}")
  test_size = validation.check_count("test_size", test_size, minimum=1)
  num_members = validation.check_count("num_members", num_members, minimum=1)
  num_nonmembers = validation.check_count("num_nonmembers", num_nonmembers, minimum=1)
  num_shadow = validation.check_count("num_shadow", num_shadow)
  seed = _check_seed(seed)

  in_dist = np.flatnonzero(~is_ood)
  wanted = num_members + num_nonmembers + num_shadow
  if wanted > in_dist.size:
    raise ValueError(
        f"num_members={num_members} + num_nonmembers={num_nonmembers} + num_shadow={num_shadow} "
        f"= {wanted} exceeds the {in_dist.size} in-distribution pool samples")
  perm = np.random.default_rng([seed, _STREAM_IN_DIST]).permutation(in_dist)
  members = perm[:num_members]
  nonmembers = perm[num_members:num_members + num_nonmembers]
  shadow = perm[num_members + num_nonmembers:wanted]

  if scenario == "ood":
    ood = np.flatnonzero(is_ood)
    if num_forget_ood is None:
      raise ValueError("scenario 'ood' needs num_forget_ood")
    num_forget_ood = validation.check_count("num_forget_ood", num_forget_ood, minimum=1)
    if num_forget_ood > ood.size:
      raise ValueError(
          f"num_forget_ood={num_forget_ood} exceeds the {ood.size} OOD samples in the pool")
    ood = np.random.default_rng([seed, _STREAM_OOD]).permutation(ood)
    forget = ood[:num_forget_ood]
    rest = ood[num_forget_ood:]
    # Non-members get the larger half: they are the audit's OOD control.
    to_nonmembers = rest.size if num_shadow == 0 else (rest.size + 1) // 2
    members = np.concatenate([members, forget])
    nonmembers = np.concatenate([nonmembers, rest[:to_nonmembers]])
    shadow = np.concatenate([shadow, rest[to_nonmembers:]])
  elif scenario == "random":
    if forget_fraction is None:
      raise ValueError("scenario 'random' needs forget_fraction")
    if not 0.0 < float(forget_fraction) < 1.0:
      raise ValueError(f"forget_fraction must be in (0, 1), got {forget_fraction!r}")
    num_forget = max(1, int(round(float(forget_fraction) * num_members)))
    if num_forget >= num_members:
      raise ValueError(
          f"forget_fraction={forget_fraction} of num_members={num_members} "
          f"leaves no member to retain")
    rng = np.random.default_rng([seed, _STREAM_FORGET])
    forget = rng.choice(members, num_forget, replace=False)
  else:  # "class"
    if forget_class is None:
      raise ValueError("scenario 'class' needs forget_class")
    forget_class = validation.check_count("forget_class", forget_class)
    forget = members[labels[members] == forget_class]
    if forget.size == 0:
      present = np.unique(labels[members]).tolist()
      raise ValueError(
          f"forget_class={forget_class!r} has no members; classes among members: {present}")

  if num_test is None:
    test = np.arange(test_size)
  else:
    num_test = validation.check_count("num_test", num_test, minimum=1)
    if num_test > test_size:
      raise ValueError(f"num_test={num_test} exceeds test_size={test_size}")
    test = np.random.default_rng([seed, _STREAM_TEST]).permutation(test_size)[:num_test]

  splits = Splits(members=members, nonmembers=nonmembers, shadow=shadow, forget=forget, test=test)
  splits.validate(pool_size=labels.size, test_size=test_size)
  return splits
