"""FedAvg (and FedProx): one round of all sampled clients as one compiled program.

The sampled clients' data are stacked on a leading client axis
(`clients.ClientData`); their local training is `jax.vmap`-ed over it, so a
round of C clients is one XLA program rather than C trainings. The client
axis can be split over a device mesh axis named `"clients"` (`client_mesh`):
clients never talk to each other during local training, so the only
collective is the aggregation's sum over clients.

  fedavg = make_fedavg(apply_fn, optax.sgd(0.1), local_epochs=2, batch_size=32,
                       secure=True, mesh=client_mesh())
  for r in range(num_rounds):
    key = jax.random.fold_in(run_key, r)
    ids = clients.sample_clients(jax.random.fold_in(key, 0), K, C)
    data = clients.gather_client_data(images, labels, partition, ids)
    params, metrics = parallel.block(fedavg.round(params, data, key))

A round's update of the global model is
`theta <- theta + server_lr * sum_k w_k (theta_k - theta) / sum_k w_k`,
with `w_k` the client's number of examples. With `secure=True` the weighted
sum goes through `secure_agg.secure_weighted_mean`: the aggregation sees only
masked submissions. One client's submission can be replaced by an update it
computed otherwise (`ClientOverride`, e.g. the dummy update of an
elimination request, `eliminate.py`): to the server it is one more masked
update.
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from forsaken_jax import losses
from forsaken_jax.federated import clients as clients_lib
from forsaken_jax.federated import secure_agg
from forsaken_jax.models import ApplyFn, Params
from forsaken_jax.unlearn import forsaken

CLIENT_AXIS = "clients"

__all__ = ["CLIENT_AXIS", "ClientOverride", "FedAvg", "apply_update", "client_mesh", "make_fedavg",
           "weighted_mean"]


def client_mesh(num_devices: int | None = None) -> jax.sharding.Mesh:
  """A 1-D `("clients",)` mesh over the first `num_devices` devices (default all).

  The axis type is `Auto`: vmapped local training reshapes stacked arrays in
  ways that explicitly sharded types refuse.
  """
  available = jax.device_count()
  num_devices = available if num_devices is None else num_devices
  if not 1 <= num_devices <= available:
    raise ValueError(f"num_devices must be in [1, {available}], got {num_devices}")
  return jax.make_mesh((num_devices,), (CLIENT_AXIS,), (jax.sharding.AxisType.Auto,),
                       devices=jax.devices()[:num_devices])


class ClientOverride(NamedTuple):
  """A client that submits a given update instead of its local training's.

  Attributes:
    client_id: the client (it must be in the round).
    update: what it submits, a pytree shaped like the global parameters.
    weight: the weight it reports (its share is `weight / total weight`).
  """

  client_id: int
  update: Params
  weight: float | jax.Array


class FedAvg(NamedTuple):
  """The jitted functions of a federation (see `make_fedavg`).

  Attributes:
    local_updates: `(global_params, data, key) -> (updates, weights,
      metrics)`: every slot's local training, `updates` stacked `[C, ...]`
      (`theta_k - theta`), `weights` `[C]` (examples per slot).
    round: `(global_params, data, key, *, override=None, received=None) ->
      (new_params, metrics)`: local training and aggregation in one
      program. `override`: a `ClientOverride`; `received`: `[C]` bool, the
      slots whose submission reaches the server (default all; a
      participant that is not received dropped out after the mask
      agreement). `metrics`: per-slot `loss` and `steps` `[C]` and the
      aggregated `total_weight`.
    local_train: the single-client training `clients.make_local_train`
      returned (unjitted), for reference runs.
  """

  local_updates: Callable[..., tuple[Params, jax.Array, dict[str, jax.Array]]]
  round: Callable[..., tuple[Params, dict[str, jax.Array]]]
  local_train: clients_lib.LocalTrainFn


def _expand(mask: jax.Array, x: jax.Array) -> jax.Array:
  return mask.reshape(mask.shape + (1,) * (x.ndim - mask.ndim))


def weighted_mean(updates: Params, weights: jax.Array) -> Params:
  """`sum_k w_k u_k / sum_k w_k` over the stacked client axis (0 if all weights are 0)."""
  total = jnp.sum(weights)
  return jax.tree.map(
      lambda u: jnp.where(total > 0, jnp.sum(_expand(weights, u).astype(u.dtype) * u, axis=0)
                          / jnp.maximum(total, 1e-30).astype(u.dtype), 0.0).astype(u.dtype),
      updates)


def apply_update(global_params: Params, mean_update: Params, server_lr: float = 1.0) -> Params:
  """`theta + server_lr * mean_update`."""
  return jax.tree.map(lambda p, u: p + (server_lr * u).astype(p.dtype), global_params,
                      mean_update)


def _check_data(data: clients_lib.ClientData) -> int:
  if not isinstance(data, clients_lib.ClientData):
    raise ValueError(f"data must be a clients.ClientData, got {type(data).__name__}")
  label_shape = np.shape(data.label)
  if len(label_shape) != 2:
    raise ValueError(f"data.label must be [C, N], got shape {label_shape}")
  if np.shape(data.weight) != label_shape or np.shape(data.image)[:2] != label_shape:
    raise ValueError(f"data.image {np.shape(data.image)}, data.label {label_shape} and "
                     f"data.weight {np.shape(data.weight)} must share their [C, N] axes")
  if np.shape(data.client_id) != label_shape[:1]:
    raise ValueError(f"data.client_id must be [C={label_shape[0]}], got "
                     f"{np.shape(data.client_id)}")
  return label_shape[0]


def make_fedavg(apply_fn: ApplyFn, tx: optax.GradientTransformation, *, local_epochs: int = 1,
                batch_size: int = 32, loss_fn: losses.LossFn = losses.cross_entropy,
                prox_mu: float = 0.0, server_lr: float = 1.0, secure: bool = False,
                fractional_bits: int = 16, weight_fractional_bits: int = 4,
                secure_neighbors: int | None = None,
                mesh: jax.sharding.Mesh | None = None) -> FedAvg:
  """Builds the round of a federation.

  Args:
    apply_fn: `(params, images) -> logits`.
    tx: the clients' local optimizer (fresh state every round).
    local_epochs: local passes over each client's data per round.
    batch_size: local batch size.
    loss_fn: per-example training loss.
    prox_mu: FedProx's proximal weight (0 = FedAvg).
    server_lr: the server's step on the mean update (1 = FedAvg).
    secure: aggregate through simulated secure aggregation
      (`secure_agg.secure_weighted_mean`) instead of in the clear.
    fractional_bits, weight_fractional_bits: its fixed-point encoding.
    secure_neighbors: its masking graph: None = every pair of clients, an
      even k = each client's k neighbours (`secure_agg.mask_graph`).
    mesh: None (one device), or a mesh with a `"clients"` axis
      (`client_mesh`) whose size divides the number of slots C; the client
      axis of data and updates is split over it, the global model
      replicated.

  Returns:
    A `FedAvg`.
  """
  if mesh is not None and CLIENT_AXIS not in mesh.axis_names:
    raise ValueError(f"mesh must have a {CLIENT_AXIS!r} axis; got axes {mesh.axis_names}")
  secure_agg.check_num_neighbors(secure_neighbors)
  if not server_lr > 0:
    raise ValueError(f"server_lr must be positive, got {server_lr!r}")
  local_train = clients_lib.make_local_train(apply_fn, tx, local_epochs=local_epochs,
                                             batch_size=batch_size, loss_fn=loss_fn,
                                             prox_mu=prox_mu)

  def local_updates(global_params, data, key):
    # A client's randomness follows its id, not the slot it was given.
    keys = jax.vmap(lambda k: jax.random.fold_in(key, k))(jnp.maximum(data.client_id, 0))
    local, metrics = jax.vmap(local_train, in_axes=(None, 0, 0, 0, 0))(
        global_params, data.image, data.label, data.weight, keys)
    updates = jax.tree.map(lambda l, g: l - g[None], local, global_params)
    return updates, clients_lib.num_examples(data), metrics

  def round_program(global_params, data, key, override_slot, override_update, override_weight,
                    received):
    updates, weights, metrics = local_updates(global_params, data, jax.random.fold_in(key, 0))
    replaced = jnp.arange(weights.shape[0]) == override_slot
    updates = jax.tree.map(lambda u, o: jnp.where(_expand(replaced, u), o[None].astype(u.dtype), u),
                           updates, override_update)
    weights = jnp.where(replaced, override_weight, weights)
    participating = data.client_id != clients_lib.PADDING_CLIENT
    if secure:
      mean, total_weight = secure_agg.secure_weighted_mean(
          updates, weights, jax.random.fold_in(key, 1), data.client_id, participating, received,
          fractional_bits=fractional_bits, weight_fractional_bits=weight_fractional_bits,
          num_neighbors=secure_neighbors)
    else:
      weights = jnp.where(participating & received, weights, 0.0)
      mean, total_weight = weighted_mean(updates, weights), jnp.sum(weights)
    new_params = apply_update(global_params, mean, server_lr)
    return new_params, {**metrics, "total_weight": total_weight}

  if mesh is None:
    jit_updates, jit_round = jax.jit(local_updates), jax.jit(round_program)
    place = lambda data: data
  else:
    replicated = jax.NamedSharding(mesh, jax.P())
    split = jax.NamedSharding(mesh, jax.P(CLIENT_AXIS))
    data_sharding = clients_lib.ClientData(split, split, split, split)
    jit_updates = jax.jit(local_updates, in_shardings=(replicated, data_sharding, replicated),
                          out_shardings=(split, split, split))
    jit_round = jax.jit(
        round_program,
        in_shardings=(replicated, data_sharding, replicated, replicated, replicated, replicated,
                      split),
        out_shardings=(replicated, {"loss": split, "steps": split, "total_weight": replicated}))
    place = lambda data: jax.device_put(data, data_sharding)

  def check_slots(data):
    num_slots = _check_data(data)
    if mesh is not None and num_slots % mesh.shape[CLIENT_AXIS]:
      raise ValueError(f"{num_slots} client slots do not split over the {mesh.shape[CLIENT_AXIS]} "
                       "devices of the mesh; pad with gather_client_data(..., num_slots=...)")
    return num_slots

  def updates_fn(global_params, data, key):
    check_slots(data)
    return jit_updates(global_params, place(data), key)

  def round_fn(global_params, data, key, *, override=None, received=None):
    num_slots = check_slots(data)
    ids = np.asarray(data.client_id)
    received = np.ones((num_slots,), bool) if received is None else np.asarray(received)
    if received.shape != (num_slots,) or received.dtype != np.bool_:
      raise ValueError(f"received must be bool [{num_slots}], got {received.dtype} "
                       f"{received.shape}")
    if secure and np.count_nonzero(ids != clients_lib.PADDING_CLIENT) < 2:
      raise ValueError("secure aggregation needs at least two participating clients: the sum of "
                       "one client's update is that update")
    if override is None:
      slot, update, weight = -1, jax.tree.map(jnp.zeros_like, global_params), 0.0
    else:
      matches = np.flatnonzero(ids == override.client_id)
      if override.client_id == clients_lib.PADDING_CLIENT or matches.size != 1:
        raise ValueError(f"override client {override.client_id!r} is not among this round's "
                         f"clients {ids[ids != clients_lib.PADDING_CLIENT].tolist()}")
      forsaken.check_params_like(override.update, global_params, "override.update",
                                 "the global parameters")
      if not np.all(np.isfinite(np.asarray(override.weight))) or not override.weight > 0:
        raise ValueError(f"override.weight must be positive, got {override.weight!r}")
      slot, update, weight = int(matches[0]), override.update, override.weight
    return jit_round(global_params, place(data), key, jnp.int32(slot), update,
                     jnp.float32(weight), received)

  return FedAvg(updates_fn, round_fn, local_train)
