"""Secure aggregation, simulated: the server sees masked updates and their sum only.

The pairwise-masking scheme of Bonawitz et al. (2017), without the network:

- Every update is encoded in fixed point, `round(x * 2^f)`, as uint32: the
  arithmetic of the scheme is modulo 2^32, where masks cancel exactly and a
  masked value is uniformly distributed whatever the plaintext.
- Each ordered pair of participating clients `a < b` (by client id) shares a
  mask `m_ab`, expanded from the pair's key `fold_in(fold_in(round_key, a),
  b)` (standing in for the Diffie-Hellman agreed seed of the protocol).
  Client a adds `m_ab`, client b subtracts it; in the sum over all clients
  every mask appears once with each sign and cancels.
- The server adds the masked updates it received. If a client dropped after
  the masks were agreed, its masks do not cancel: the survivors reveal the
  masks they shared with it (in the protocol, its key shares), the server
  removes them, and the sum of the survivors' updates comes out.
  (The protocol's second, self mask, which protects a slow client's update
  when it arrives after being declared dropped, is not simulated.)
- The sum is decoded from two's complement back to float.
- Masking graph: by default every pair of participants shares a mask (the
  2017 protocol), so each client expands C - 1 masks per round. With
  `num_neighbors = k` each client shares masks only with its k neighbours in
  a random k-regular graph (a circulant graph over a permutation of the
  slots drawn from the round key), as SecAgg+ does (Bell et al. 2020): k
  masks per client, O(C k) for the round. The sum is the same bit for bit:
  any symmetric graph's masks cancel. What changes is what collusion or
  dropouts can expose: a masked update is uniform as long as one of its
  neighbours' masks stays secret, so k should grow like log C (Bell et al.
  give the constants for a target failure probability).

`secure_weighted_mean` is FedAvg through the scheme: each client submits
`weight * update` and its weight, both masked; the server divides the sum by
the summed weight and so learns neither any client's update nor its weight.

Range: the decoded sum must lie in `(-2^(31 - f), 2^(31 - f))`: with the
default `f = 16`, |sum of weight * update| < 32768 per coordinate; the
weights use their own `weight_fractional_bits` (default 4: total weight below
1.3e8). Beyond it the sum wraps around silently, as in the protocol;
choose `f` for the federation's update magnitudes and sample counts.

References:
  Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving
  Machine Learning", CCS 2017, https://eprint.iacr.org/2017/281
  Bell et al., "Secure Single-Server Aggregation with (Poly)Logarithmic
  Overhead", CCS 2020, https://eprint.iacr.org/2020/704
"""

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

Params = Any

__all__ = ["check_num_neighbors", "decode", "dropout_correction", "encode", "mask_graph",
           "mask_updates", "pair_key", "pairwise_mask", "secure_sum", "secure_weighted_mean",
           "server_sum"]


def encode(tree: Params, *, fractional_bits: int) -> Params:
  """Fixed-point encoding: `round(x * 2^f)` as two's-complement uint32."""
  scale = 2.0 ** fractional_bits
  limit = 2.0 ** 31 - 1.0

  def one(x):
    q = jnp.clip(jnp.round(x.astype(jnp.float32) * scale), -limit, limit).astype(jnp.int32)
    return jax.lax.bitcast_convert_type(q, jnp.uint32)

  return jax.tree.map(one, tree)


def decode(tree: Params, *, fractional_bits: int) -> Params:
  """Inverse of `encode` (for sums too, while they stay in range): float32."""
  scale = 2.0 ** -fractional_bits
  return jax.tree.map(
      lambda u: jax.lax.bitcast_convert_type(u, jnp.int32).astype(jnp.float32) * scale, tree)


def pair_key(round_key: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
  """The key the pair {a, b} shares in this round (symmetric in a, b)."""
  low, high = jnp.minimum(a, b), jnp.maximum(a, b)
  return jax.random.fold_in(jax.random.fold_in(round_key, low), high)


def pairwise_mask(round_key: jax.Array, a: jax.Array, b: jax.Array, size: int) -> jax.Array:
  """The mask `m_ab` of the pair: `[size]` uniform uint32."""
  return jax.random.bits(pair_key(round_key, a, b), (size,), jnp.uint32)


def _to_matrix(stacked: Params) -> tuple[jax.Array, Callable[[jax.Array], Params]]:
  """Stacked `[C, ...]` leaves as one `[C, P]` matrix, and the inverse for one row.

  Masks are drawn for the whole flat update at once: one random-number call
  per pair instead of one per leaf keeps the compiled program small.
  """
  leaves, treedef = jax.tree.flatten(stacked)
  shapes = [jnp.shape(x)[1:] for x in leaves]
  sizes = [math.prod(shape) for shape in shapes]
  matrix = jnp.concatenate([jnp.reshape(x, (jnp.shape(x)[0], -1)) for x in leaves], axis=1)

  def unflatten(row):
    parts = jnp.split(row, np.cumsum(sizes)[:-1].tolist())
    return jax.tree.unflatten(treedef, [p.reshape(shape) for p, shape in zip(parts, shapes)])

  return matrix, unflatten


def check_num_neighbors(num_neighbors: int | None) -> None:
  """Refuses a masking graph degree that is not None or a positive even int."""
  if num_neighbors is None:
    return
  if (isinstance(num_neighbors, bool) or not isinstance(num_neighbors, (int, np.integer))
      or num_neighbors < 2 or num_neighbors % 2):
    raise ValueError("num_neighbors must be None (every pair of clients) or an even number "
                     f">= 2 (each client's neighbours in the masking graph), got "
                     f"{num_neighbors!r}")


def mask_graph(round_key: jax.Array, num_slots: int, num_neighbors: int | None = None
               ) -> jax.Array:
  """Each slot's peers in the round's masking graph: `[C, K]` int32 slot indices.

  Args:
    round_key: the round's masking key (the graph is public randomness of
      the round, as the server's sampled graph is in SecAgg+).
    num_slots: C.
    num_neighbors: None for the complete graph (`K = C`: every slot, the slot
      itself included, which the masking skips); an even k for a random
      k-regular graph (`K = k`): slots are placed on a ring in an order drawn
      from `round_key` and each is joined to the k / 2 nearest on either
      side. A k of C - 1 or more is the complete graph.

  Returns:
    The peer slots of each slot; j is a peer of i exactly when i is one of j.
  """
  check_num_neighbors(num_neighbors)
  if num_neighbors is None or num_neighbors >= num_slots - 1:
    return jnp.broadcast_to(jnp.arange(num_slots, dtype=jnp.int32), (num_slots, num_slots))
  order = jax.random.permutation(jax.random.split(round_key)[0], num_slots).astype(jnp.int32)
  position = jnp.argsort(order).astype(jnp.int32)
  half = num_neighbors // 2
  offsets = jnp.concatenate([jnp.arange(1, half + 1), -jnp.arange(1, half + 1)]).astype(jnp.int32)
  return order[(position[:, None] + offsets[None, :]) % num_slots]


def _signed_masks(round_key, client_id, peer_ids, peer_on, size):
  """`sum_j on_j * sign(client, j) * m(client, j)` over the peers j != client: `[size]`."""

  def add(total, peer):
    peer_id, on = peer
    mask = pairwise_mask(round_key, client_id, peer_id, size)
    # The lower id adds the pair's mask, the higher id subtracts it (-1 = 2^32 - 1).
    sign = jnp.where(client_id < peer_id, jnp.uint32(1), jnp.uint32(0xFFFFFFFF))
    use = on & (peer_id != client_id)
    return total + jnp.where(use, sign * mask, jnp.uint32(0)), None

  # A scan over peers keeps one mask alive at a time, not K of them.
  return jax.lax.scan(add, jnp.zeros((size,), jnp.uint32), (peer_ids, peer_on))[0]


def _mask_matrix(encoded, round_key, client_ids, participating, num_neighbors):
  ids = jnp.maximum(client_ids, 0)
  size = encoded.shape[1]
  peers = mask_graph(round_key, encoded.shape[0], num_neighbors)

  def one(row, client_id, on, peer_slots):
    masks = _signed_masks(round_key, client_id, ids[peer_slots], participating[peer_slots], size)
    return row + jnp.where(on, masks, jnp.uint32(0))

  return jax.vmap(one)(encoded, ids, participating, peers)


def _sum_rows(matrix, rows):
  return jnp.sum(jnp.where(rows[:, None], matrix, jnp.uint32(0)), axis=0, dtype=jnp.uint32)


def _correction(round_key, client_ids, participating, received, size, num_neighbors):
  ids = jnp.maximum(client_ids, 0)
  dropped = participating & ~received
  peers = mask_graph(round_key, ids.shape[0], num_neighbors)
  # Survivor s applied sign(s, d) * m(s, d) for each dropped neighbour d.
  per_survivor = jax.vmap(
      lambda s, peer_slots: _signed_masks(round_key, s, ids[peer_slots], dropped[peer_slots],
                                          size))(ids, peers)
  return _sum_rows(per_survivor, participating & received)


def mask_updates(encoded: Params, round_key: jax.Array, client_ids: jax.Array,
                 participating: jax.Array, *, num_neighbors: int | None = None) -> Params:
  """What each client sends: its encoded update plus its signed pairwise masks.

  Args:
    encoded: stacked `[C, ...]` uint32 updates (`encode`).
    round_key: the round's masking key.
    client_ids: `[C]` int32 ids (distinct among participants).
    participating: `[C]` bool, the clients that agreed on masks this round;
      a non-participant's slot is returned unmasked and must not be summed.
    num_neighbors: the masking graph (`mask_graph`): None = every pair.

  Returns:
    Stacked `[C, ...]` uint32 masked updates.
  """
  matrix, unflatten = _to_matrix(encoded)
  return jax.vmap(unflatten)(_mask_matrix(matrix, round_key, client_ids, participating,
                                          num_neighbors))


def server_sum(masked: Params, received: jax.Array) -> Params:
  """The server's sum (mod 2^32) of the masked updates it received."""
  return jax.tree.map(
      lambda x: jnp.sum(jnp.where(received.reshape((-1,) + (1,) * (x.ndim - 1)), x,
                                  jnp.uint32(0)), axis=0, dtype=jnp.uint32), masked)


def dropout_correction(round_key: jax.Array, client_ids: jax.Array, participating: jax.Array,
                       received: jax.Array, like: Params, *,
                       num_neighbors: int | None = None) -> Params:
  """The masks the survivors applied for pairs with dropped clients.

  Survivors reveal them after the server announces who dropped (a dropped
  client is one that participated in the mask agreement but whose masked
  update did not arrive); subtracting their sum from `server_sum` leaves the
  survivors' plain sum.

  Args:
    round_key: the round's masking key.
    client_ids: `[C]` int32 ids.
    participating: `[C]` bool, clients that agreed on masks.
    received: `[C]` bool, clients whose masked update arrived.
    like: one (unstacked) update, for the shapes.
    num_neighbors: the masking graph, as in `mask_updates`.

  Returns:
    A uint32 pytree shaped like `like`.
  """
  _, unflatten = _to_matrix(jax.tree.map(lambda x: jnp.zeros((1, *jnp.shape(x)), jnp.uint32),
                                         like))
  size = sum(math.prod(jnp.shape(x)) for x in jax.tree.leaves(like))
  return unflatten(_correction(round_key, client_ids, participating, received, size,
                               num_neighbors))


def _secure_matrix_sum(encoded, round_key, client_ids, participating, received, num_neighbors):
  """Clients mask the `[C, P]` uint32 rows; the server sums and unmasks them."""
  masked = _mask_matrix(encoded, round_key, client_ids, participating, num_neighbors)
  # ---- only masked values below this line (the server) ----
  total = _sum_rows(masked, participating & received)
  return total - _correction(round_key, client_ids, participating, received, encoded.shape[1],
                             num_neighbors)


def secure_sum(updates: Params, round_key: jax.Array, client_ids: jax.Array,
               participating: jax.Array, received: jax.Array | None = None, *,
               fractional_bits: int = 16, num_neighbors: int | None = None) -> Params:
  """The sum of the received clients' updates, computed through masking.

  Clients encode and mask (`mask_updates`); the server sums what it received
  (`server_sum`), removes the dropped clients' masks (`dropout_correction`)
  and decodes. The server-side steps see masked values only.

  Args:
    updates: stacked `[C, ...]` float updates.
    round_key: the round's masking key.
    client_ids: `[C]` int32 ids.
    participating: `[C]` bool, clients in this round's mask agreement.
    received: `[C]` bool, whose masked update arrived (default: every
      participant).
    fractional_bits: f of the fixed-point encoding.
    num_neighbors: the masking graph (`mask_graph`): None = every pair.

  Returns:
    The float32 sum over clients that are both participating and received.
  """
  received = participating if received is None else received
  matrix, unflatten = _to_matrix(encode(updates, fractional_bits=fractional_bits))
  total = _secure_matrix_sum(matrix, round_key, client_ids, participating, received,
                             num_neighbors)
  return decode(unflatten(total), fractional_bits=fractional_bits)


def secure_weighted_mean(updates: Params, weights: jax.Array, round_key: jax.Array,
                         client_ids: jax.Array, participating: jax.Array,
                         received: jax.Array | None = None, *, fractional_bits: int = 16,
                         weight_fractional_bits: int = 4, num_neighbors: int | None = None
                         ) -> tuple[Params, jax.Array]:
  """FedAvg's weighted mean through secure aggregation.

  Each client submits `weight_k * update_k` and `weight_k`, masked together
  (the weight as one more coordinate, in its own fixed-point scale); the
  server divides one sum by the other.

  Args:
    updates: stacked `[C, ...]` float updates.
    weights: `[C]` the clients' weights (e.g. sample counts).
    round_key, client_ids, participating, received: as in `secure_sum`.
    fractional_bits: f for the weighted updates.
    weight_fractional_bits: f for the weights.
    num_neighbors: the masking graph (`mask_graph`): None = every pair.

  Returns:
    `(sum_k w_k u_k / sum_k w_k, sum_k w_k)` over the received participants;
    the mean is zero when the total weight is zero.
  """
  received = participating if received is None else received
  weighted = jax.tree.map(
      lambda u: u * weights.reshape((-1,) + (1,) * (u.ndim - 1)).astype(u.dtype), updates)
  matrix, unflatten = _to_matrix(encode(weighted, fractional_bits=fractional_bits))
  encoded_weights = encode(weights.astype(jnp.float32), fractional_bits=weight_fractional_bits)
  total = _secure_matrix_sum(jnp.concatenate([matrix, encoded_weights[:, None]], axis=1),
                             round_key, client_ids, participating, received, num_neighbors)
  total_weight = decode(total[-1], fractional_bits=weight_fractional_bits)
  summed = decode(unflatten(total[:-1]), fractional_bits=fractional_bits)
  mean = jax.tree.map(lambda t: jnp.where(total_weight > 0, t / jnp.maximum(total_weight, 1e-30),
                                          0.0), summed)
  return mean, total_weight
