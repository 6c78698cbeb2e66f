"""Which examples each user (client) of a federation holds.

A `Partition` is one index array per client into a collection (the pool of
`forsaken_jax.data`); it is what a federated checkpoint stores
(`Partition.to_arrays`). The builders are seeded numpy index arithmetic:

  part = iid_partition(labels, 20, seed=0, indices=members)
  part = dirichlet_partition(labels, 20, alpha=0.5, seed=0, indices=members)
  part = private_data_partition(labels, 20, private=photo_indices, owner=0,
                                seed=0, indices=members)          # the paper's user

`validate_partition` checks the invariants a federation relies on (every
client holds data, no example is held twice, the partition covers exactly the
data it should) and names the problem when one fails.
"""

import dataclasses
import hashlib
from typing import Any

import numpy as np

from forsaken_jax.data import validation

SCHEMES = ("iid", "dirichlet")

__all__ = ["Partition", "SCHEMES", "check_client_id", "dirichlet_partition", "iid_partition",
           "label_skew", "private_data_partition", "validate_partition"]


@dataclasses.dataclass(frozen=True, eq=False)
class Partition:
  """The examples of each client, as index arrays into one collection.

  Attributes:
    clients: one sorted int64 index array per client; client `k` is
      `clients[k]`.
  """

  clients: tuple[np.ndarray, ...]

  def __post_init__(self):
    if len(self.clients) == 0:
      raise ValueError("a partition needs at least one client, got none")
    object.__setattr__(self, "clients", tuple(
        validation.frozen_indices(f"client {k}", arr) for k, arr in enumerate(self.clients)))

  @property
  def num_clients(self) -> int:
    """K, the number of clients."""
    return len(self.clients)

  @property
  def sizes(self) -> np.ndarray:
    """`[K]` int64: how many examples each client holds."""
    return np.array([arr.size for arr in self.clients], np.int64)

  def client(self, client_id: int) -> np.ndarray:
    """The indices of client `client_id` (ValueError for an unknown id)."""
    return self.clients[check_client_id(self, client_id)]

  def to_arrays(self) -> dict[str, np.ndarray]:
    """Two flat arrays (what a checkpoint stores): all indices, client by
    client, and `offsets [K + 1]` delimiting each client's run."""
    offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
    return {"indices": np.concatenate(self.clients).astype(np.int64), "offsets": offsets}

  @classmethod
  def from_arrays(cls, arrays: dict[str, Any]) -> "Partition":
    """Inverse of `to_arrays`."""
    if set(arrays) != {"indices", "offsets"}:
      raise ValueError(f"partition arrays must have keys ['indices', 'offsets'], got "
                       f"{sorted(arrays)}")
    indices, offsets = np.asarray(arrays["indices"]), np.asarray(arrays["offsets"])
    if (offsets.ndim != 1 or offsets.size < 2 or offsets[0] != 0 or offsets[-1] != indices.size
        or np.any(np.diff(offsets) < 0)):
      raise ValueError(f"offsets must rise from 0 to len(indices)={indices.size}, got "
                       f"{offsets.tolist()[:12]}")
    return cls(tuple(indices[a:b] for a, b in zip(offsets[:-1], offsets[1:])))

  def fingerprint(self) -> str:
    """Short sha256 of the index arrays (identifies the federation's data)."""
    h = hashlib.sha256(b"forsaken_jax.Partition/v1")
    for name, arr in sorted(self.to_arrays().items()):
      h.update(name.encode())
      h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()[:16]


def check_client_id(partition: Partition, client_id: Any) -> int:
  """Returns `client_id` as an int, or raises ValueError if the partition has no such client."""
  if (isinstance(client_id, bool) or not isinstance(client_id, (int, np.integer))
      or not 0 <= client_id < partition.num_clients):
    raise ValueError(f"unknown client id {client_id!r}: the federation has clients "
                     f"0..{partition.num_clients - 1}")
  return int(client_id)


def validate_partition(partition: Partition, *, indices: Any = None, size: int | None = None,
                       private: Any = None, owner: int | None = None) -> None:
  """Checks that a partition is a proper split of the data.

  Args:
    partition: the partition.
    indices: if given, the index set the clients must hold together, exactly
      (nothing missing, nothing extra).
    size: if given, every index must lie in `[0, size)`.
    private: if given (with `owner`), a non-empty index set that client
      `owner` must hold entirely.
    owner: the client holding `private`.

  Raises:
    ValueError: a client holds no data, an index is out of range or held
      twice (within a client or by two clients), the partition misses or adds
      indices, the private set is empty or not all held by `owner`, or
      `owner` is not a client.
  """
  for k, arr in enumerate(partition.clients):
    if arr.size == 0:
      raise ValueError(f"client {k} holds no data; every client needs at least one example")
    validation.check_indices(f"client {k}", arr, size)
  everything = np.concatenate(partition.clients)
  uniq, counts = np.unique(everything, return_counts=True)
  if uniq.size != everything.size:
    shared = uniq[counts > 1]
    holders = [k for k, arr in enumerate(partition.clients) if np.isin(shared[0], arr)]
    raise ValueError(f"clients overlap: {validation.show_values(shared)} are held by more than one "
                     f"client (index {shared[0]} by clients {holders})")
  if indices is not None:
    expected = validation.check_indices("indices", indices, size)
    missing = np.setdiff1d(expected, uniq)
    extra = np.setdiff1d(uniq, expected)
    if missing.size:
      raise ValueError(f"the partition does not cover the data: no client holds "
                       f"{validation.show_values(missing)}")
    if extra.size:
      raise ValueError(f"the partition holds indices outside the data: {validation.show_values(extra)}")
  if private is not None or owner is not None:
    if private is None or owner is None:
      raise ValueError("give both private and owner, or neither")
    owner = check_client_id(partition, owner)
    private = validation.check_indices("private", private, size)
    outside = np.setdiff1d(private, partition.clients[owner])
    if outside.size:
      raise ValueError(f"client {owner} must hold every private index; it lacks "
                       f"{validation.show_values(outside)}")


def _subset(labels: Any, indices: Any) -> tuple[np.ndarray, np.ndarray]:
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
  if indices is None:
    return np.arange(labels.size, dtype=np.int64), labels
  indices = validation.check_indices("indices", indices, labels.size)
  return np.sort(indices), labels[np.sort(indices)]


def _check_enough(num_examples: int, num_clients: int) -> None:
  if num_examples < num_clients:
    raise ValueError(f"{num_examples} examples cannot give each of {num_clients} clients at "
                     "least one")


def iid_partition(labels: Any, num_clients: int, *, seed: int,
                  indices: Any = None) -> Partition:
  """Shuffles the data and deals it out in near-equal shares.

  Args:
    labels: `[N]` labels of the collection (only its length is used).
    num_clients: K.
    seed: seed of the shuffle.
    indices: the examples to partition (default all N).

  Returns:
    A `Partition` whose client sizes differ by at most one.
  """
  num_clients = validation.check_count("num_clients", num_clients, minimum=1)
  seed = validation.check_count("seed", seed, minimum=0)
  indices, _ = _subset(labels, indices)
  _check_enough(indices.size, num_clients)
  order = np.random.default_rng([seed, 0]).permutation(indices)
  return Partition(tuple(np.array_split(order, num_clients)))


def dirichlet_partition(labels: Any, num_clients: int, *, alpha: float, seed: int,
                        indices: Any = None, min_size: int = 1,
                        max_attempts: int = 100) -> Partition:
  """Label skew: each class is split over the clients by Dirichlet(alpha) shares.

  For every class c, shares `q_c ~ Dir(alpha * 1_K)` are drawn and the class's
  examples (shuffled) are cut at the cumulative shares. Small alpha gives each
  client few classes; alpha -> inf approaches IID. Draws are repeated (seeded)
  until every client holds at least `min_size` examples.

  Args:
    labels: `[N]` integer labels of the collection.
    num_clients: K.
    alpha: the Dirichlet concentration, > 0.
    seed: seed of the shares and shuffles.
    indices: the examples to partition (default all N).
    min_size: the fewest examples a client may hold.
    max_attempts: draws before giving up.

  Returns:
    A `Partition`.

  References:
    Hsu et al., "Measuring the Effects of Non-Identical Data Distribution for
    Federated Visual Classification", 2019, https://arxiv.org/abs/1909.06335
  """
  num_clients = validation.check_count("num_clients", num_clients, minimum=1)
  seed = validation.check_count("seed", seed, minimum=0)
  min_size = validation.check_count("min_size", min_size, minimum=1)
  if not alpha > 0:
    raise ValueError(f"alpha must be positive, got {alpha!r}")
  indices, labels = _subset(labels, indices)
  _check_enough(indices.size, num_clients * min_size)
  classes = np.unique(labels)
  for attempt in range(max_attempts):
    rng = np.random.default_rng([seed, 1, attempt])
    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for c in classes:
      members = rng.permutation(indices[labels == c])
      shares = rng.dirichlet(np.full(num_clients, float(alpha)))
      cuts = np.round(np.cumsum(shares)[:-1] * members.size).astype(np.int64)
      for k, piece in enumerate(np.split(members, cuts)):
        parts[k].append(piece)
    clients = tuple(np.concatenate(p) for p in parts)
    if min(arr.size for arr in clients) >= min_size:
      return Partition(clients)
  raise ValueError(f"no Dirichlet(alpha={alpha}) draw in {max_attempts} attempts gave each of "
                   f"{num_clients} clients at least {min_size} examples; raise alpha or lower "
                   "num_clients")


def private_data_partition(labels: Any, num_clients: int, *, private: Any, owner: int,
                           seed: int, scheme: str = "iid", alpha: float | None = None,
                           indices: Any = None) -> Partition:
  """The paper's federation: one user also holds private out-of-distribution data.

  The examples other than `private` are partitioned by `scheme`; then client
  `owner` receives every private index on top of its normal share (e.g. the
  photos appended to the pool by `data.build_pool`).

  Args:
    labels: `[N]` labels of the collection.
    num_clients: K.
    private: the private indices (non-empty), e.g. `np.flatnonzero(is_ood)`
      or `range(start, stop)` of the inserted photos.
    owner: the client that holds them.
    seed: seed of the base partition.
    scheme: "iid" or "dirichlet" for the other examples.
    alpha: the Dirichlet concentration (scheme "dirichlet" only).
    indices: the examples to partition, private ones included (default all N).

  Returns:
    A `Partition`.
  """
  num_clients = validation.check_count("num_clients", num_clients, minimum=1)
  if isinstance(owner, bool) or not isinstance(owner, (int, np.integer)) or not (
      0 <= owner < num_clients):
    raise ValueError(f"unknown client id {owner!r} for owner: the federation has clients "
                     f"0..{num_clients - 1}")
  if scheme not in SCHEMES:
    raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
  all_indices, _ = _subset(labels, indices)
  private = np.asarray(list(private) if isinstance(private, range) else private)
  if private.size == 0:
    raise ValueError("private is empty: the owner must hold at least one private example")
  private = validation.check_indices("private", private, np.asarray(labels).size)
  outside = np.setdiff1d(private, all_indices)
  if outside.size:
    raise ValueError(f"private holds indices that are not among the data to partition: "
                     f"{validation.show_values(outside)}")
  rest = np.setdiff1d(all_indices, private)
  if scheme == "iid":
    if alpha is not None:
      raise ValueError("alpha applies to scheme 'dirichlet' only")
    base = iid_partition(labels, num_clients, seed=seed, indices=rest)
  else:
    if alpha is None:
      raise ValueError("scheme 'dirichlet' needs alpha")
    base = dirichlet_partition(labels, num_clients, alpha=alpha, seed=seed, indices=rest)
  clients = list(base.clients)
  clients[owner] = np.concatenate([clients[owner], private])
  return Partition(tuple(clients))


def label_skew(partition: Partition, labels: Any) -> float:
  """Mean total-variation distance between each client's label histogram and
  the federation's (0 = every client sees the global mix; near 1 = each client
  sees classes nobody else does).

  Args:
    partition: the partition.
    labels: `[N]` integer labels of the collection.

  Returns:
    The mean over clients, a float in [0, 1].
  """
  labels = np.asarray(labels)
  num_classes = int(labels.max()) + 1 if labels.size else 0
  everything = np.concatenate(partition.clients)
  overall = np.bincount(labels[everything], minlength=num_classes) / max(everything.size, 1)
  distances = []
  for arr in partition.clients:
    hist = np.bincount(labels[arr], minlength=num_classes) / max(arr.size, 1)
    distances.append(0.5 * np.abs(hist - overall).sum())
  return float(np.mean(distances))
