"""Clients: their data as padded stacks, sampling, and local training.

A round trains many clients in one compiled program (`fedavg.make_fedavg`),
so every client's data must have one shape. `gather_client_data` pads each
client's examples to a common length `N` and marks real examples with a
weight mask (1 real, 0 padding); local training weights each example's loss
by it and skips a step whose batch holds no real example, so a client's
padded slot trains exactly as the client would alone on its own examples.

Local training (`make_local_train`) is plain minibatch training from the
global model, `local_epochs` passes over the client's data: each epoch visits
the client's real examples in a seeded random order, in batches of
`batch_size` (the last one partial). The order depends on the client's key
and the position of each example only, not on how far the client was padded,
which is what makes the padded and the unpadded runs identical. An optional
FedProx term `mu / 2 * ||w - w_global||^2` pulls local models towards the
global one.
"""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from forsaken_jax import losses
from forsaken_jax.federated import partition as partition_lib
from forsaken_jax.models import ApplyFn, Params

# client_id of a slot that holds no client (padding of the client axis).
PADDING_CLIENT = -1

__all__ = ["ClientData", "LocalTrainFn", "PADDING_CLIENT", "epoch_order", "gather_client_data",
           "make_local_train", "num_examples", "sample_clients"]


class ClientData(NamedTuple):
  """The data of C client slots, padded to N examples each.

  Attributes:
    image: `[C, N, H, W, ch]` float32.
    label: `[C, N]` int32.
    weight: `[C, N]` float32, 1 for a real example, 0 for padding.
    client_id: `[C]` int32, the client in each slot (`PADDING_CLIENT` for an
      empty slot). A client's local training randomness derives from its id,
      not its slot.
  """

  image: Any
  label: Any
  weight: Any
  client_id: Any


LocalTrainFn = Callable[[Params, jax.Array, jax.Array, jax.Array, jax.Array],
                        tuple[Params, dict[str, jax.Array]]]


def num_examples(data: ClientData) -> jax.Array:
  """`[C]` the number of real examples in each slot (its FedAvg weight)."""
  return jnp.sum(data.weight, axis=-1)


def sample_clients(key: jax.Array, num_clients: int, num_sampled: int) -> np.ndarray:
  """Draws the clients of one round, without replacement.

  Args:
    key: the round's sampling key, e.g. `jax.random.fold_in(key, round)`.
    num_clients: K, the federation's size.
    num_sampled: how many clients take part, in `[1, K]`.

  Returns:
    Sorted int64 client ids `[num_sampled]` (host array: the host gathers
    their data).
  """
  if not 1 <= num_sampled <= num_clients:
    raise ValueError(f"num_sampled must be in [1, num_clients={num_clients}], got {num_sampled}")
  chosen = jax.random.choice(key, num_clients, (num_sampled,), replace=False)
  return np.sort(np.asarray(chosen)).astype(np.int64)


def gather_client_data(images: np.ndarray, labels: np.ndarray,
                       partition: partition_lib.Partition, client_ids: Any, *,
                       size: int | None = None, num_slots: int | None = None) -> ClientData:
  """Stacks the data of the chosen clients, padded to one shape.

  Args:
    images: `[M, H, W, ch]` the collection the partition indexes.
    labels: `[M]` its labels.
    partition: who holds what.
    client_ids: the clients of the round (e.g. from `sample_clients`).
    size: N, the padded length; default the largest client of the whole
      partition, so every round of the federation has one shape and the
      round compiles once.
    num_slots: C, pad the client axis with empty slots up to this many (e.g.
      a multiple of the devices the client axis is split over); default
      `len(client_ids)`.

  Returns:
    A `ClientData` of numpy arrays.
  """
  client_ids = np.asarray(client_ids).reshape(-1)
  if client_ids.size == 0:
    raise ValueError("client_ids is empty; a round needs at least one client")
  if np.unique(client_ids).size != client_ids.size:
    raise ValueError(f"client_ids holds duplicates: {client_ids.tolist()}")
  if len(images) != len(labels):
    raise ValueError(f"images and labels differ in length: {len(images)} vs {len(labels)}")
  chosen = [partition.client(int(k)) for k in client_ids]
  for k, arr in zip(client_ids, chosen):
    if arr.size == 0:
      raise ValueError(f"client {int(k)} holds no data")
    if arr.max() >= len(labels):
      raise ValueError(f"client {int(k)} holds index {int(arr.max())}, outside the "
                       f"{len(labels)} examples given")
  size = int(partition.sizes.max()) if size is None else size
  if size < max(arr.size for arr in chosen):
    raise ValueError(f"size={size} is smaller than the largest chosen client "
                     f"({max(arr.size for arr in chosen)} examples)")
  num_slots = client_ids.size if num_slots is None else num_slots
  if num_slots < client_ids.size:
    raise ValueError(f"num_slots={num_slots} is smaller than the {client_ids.size} clients")
  index = np.zeros((num_slots, size), np.int64)
  weight = np.zeros((num_slots, size), np.float32)
  for slot, arr in enumerate(chosen):
    index[slot, :arr.size] = arr
    weight[slot, :arr.size] = 1.0
  ids = np.full((num_slots,), PADDING_CLIENT, np.int32)
  ids[:client_ids.size] = client_ids
  # Padding repeats example 0 with weight 0: shapes and dtypes stay those of real data.
  return ClientData(image=np.asarray(images)[index].astype(np.float32),
                    label=np.asarray(labels)[index].astype(np.int32), weight=weight,
                    client_id=ids)


def _mix32(x: jax.Array) -> jax.Array:
  """MurmurHash3's 32-bit finalizer: a cheap bijective scramble of uint32 values."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x85EBCA6B)
  x = x ^ (x >> 13)
  x = x * jnp.uint32(0xC2B2AE35)
  return x ^ (x >> 16)


def epoch_order(key: jax.Array, weight: jax.Array, epoch: jax.Array | int) -> jax.Array:
  """One client's visiting order for one epoch.

  Real examples come first, in a random order, then the padding. Example i's
  sort key is a hash of (i, a seed drawn from `fold_in(key, epoch)`), so the
  order of the real examples does not depend on how far the data was padded.
  (A hash rather than one PRNG draw per position: cheaper to compile.)

  Args:
    key: the client's key.
    weight: `[N]` the client's weight mask.
    epoch: the local epoch.

  Returns:
    `[N]` int32 positions.
  """
  seed = jax.random.bits(jax.random.fold_in(key, epoch), (2,), jnp.uint32)
  positions = jnp.arange(weight.shape[0], dtype=jnp.uint32)
  draws = _mix32(_mix32(positions * jnp.uint32(0x9E3779B9) + seed[0]) ^ seed[1])
  # Padding sorts last; the stable sort keeps real examples ahead of it on ties.
  draws = jnp.where(weight > 0, draws, jnp.uint32(0xFFFFFFFF))
  return jnp.argsort(draws, stable=True).astype(jnp.int32)


def _tree_select(pred: jax.Array, on_true: Any, on_false: Any) -> Any:
  return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def make_local_train(apply_fn: ApplyFn, tx: optax.GradientTransformation, *,
                     local_epochs: int, batch_size: int,
                     loss_fn: losses.LossFn = losses.cross_entropy,
                     prox_mu: float = 0.0) -> LocalTrainFn:
  """Returns one client's local training (pure, unjitted; vmap it over clients).

  Args:
    apply_fn: `(params, images) -> logits`.
    tx: the local optimizer (e.g. `optax.sgd(0.1)` or `optax.adam(1e-3)`);
      its state starts fresh every round.
    local_epochs: passes over the client's data per round.
    batch_size: examples per local step.
    loss_fn: per-example loss; a step minimizes the mean over the batch's
      real examples.
    prox_mu: FedProx's proximal weight mu (0 = FedAvg).

  Returns:
    `local_train(global_params, image [N, ...], label [N], weight [N], key)
    -> (local_params, metrics)`; metrics hold `loss` (the mean data loss
    over the steps taken) and `steps` (how many steps had real examples).
    `local_epochs * ceil(N / batch_size)` steps run under `lax.scan`; steps
    without real examples leave parameters and optimizer state untouched.

  References:
    McMahan et al., "Communication-Efficient Learning of Deep Networks from
    Decentralized Data", AISTATS 2017, https://arxiv.org/abs/1602.05629;
    Li et al., "Federated Optimization in Heterogeneous Networks" (FedProx),
    MLSys 2020, https://arxiv.org/abs/1812.06127
  """
  if isinstance(local_epochs, bool) or not isinstance(local_epochs, int) or local_epochs < 1:
    raise ValueError(f"local_epochs must be a positive int, got {local_epochs!r}")
  if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
    raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
  if not prox_mu >= 0:
    raise ValueError(f"prox_mu must be non-negative, got {prox_mu!r}")

  def objective(params, global_params, image, label, weight):
    per_example = loss_fn(apply_fn(params, image), label)
    data_loss = jnp.sum(weight * per_example) / jnp.maximum(jnp.sum(weight), 1.0)
    if not prox_mu:
      return data_loss, data_loss
    distance = sum(jnp.sum(jnp.square(p - g)) for p, g in
                   zip(jax.tree.leaves(params), jax.tree.leaves(global_params)))
    return data_loss + 0.5 * prox_mu * distance, data_loss

  def local_train(global_params, image, label, weight, key):
    size = label.shape[0]
    steps_per_epoch = -(-size // batch_size)
    padded = steps_per_epoch * batch_size
    # Extra positions point at example 0 with weight 0.
    weight = jnp.pad(weight.astype(jnp.float32), (0, padded - size))
    image = jnp.pad(image, ((0, padded - size),) + ((0, 0),) * (image.ndim - 1))
    label = jnp.pad(label, (0, padded - size))

    def step(carry, positions):
      params, opt_state, loss_sum, steps = carry
      batch_weight = weight[positions]
      (_, data_loss), grads = jax.value_and_grad(objective, has_aux=True)(
          params, global_params, image[positions], label[positions], batch_weight)
      updates, new_opt_state = tx.update(grads, opt_state, params)
      new_params = optax.apply_updates(params, updates)
      real = jnp.sum(batch_weight) > 0
      params, opt_state = _tree_select(real, (new_params, new_opt_state), (params, opt_state))
      return (params, opt_state, loss_sum + jnp.where(real, data_loss, 0.0),
              steps + real.astype(jnp.int32)), None

    def epoch(carry, e):
      order = epoch_order(key, weight, e).reshape(steps_per_epoch, batch_size)
      return jax.lax.scan(step, carry, order)[0], None

    init = (global_params, tx.init(global_params), jnp.zeros((), jnp.float32),
            jnp.zeros((), jnp.int32))
    (params, _, loss_sum, steps), _ = jax.lax.scan(epoch, init, jnp.arange(local_epochs))
    return params, {"loss": loss_sum / jnp.maximum(steps, 1), "steps": steps}

  return local_train
