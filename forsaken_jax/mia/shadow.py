"""Many shadow models trained at once: `jax.vmap` over stacked parameters.

LiRA and U-LiRA need K shadow models (16 to 256), each trained on its own
random half of a data population (see `lira.balanced_keep_masks`). Instead of
training them one after another, every leaf of the train state gets a leading
model axis of size K and one compiled step updates all K models, each on its
own batch `[K, B, ...]`. When several devices are available the model axis is
split over a mesh axis named `"model"` (`parallel.MODEL_AXIS`), so the models
train in parallel with no communication between them.

Mesh rule (used when `mesh=None`): all devices if K is divisible by
`jax.device_count()`, otherwise a single device. `model_mesh(K)` instead picks
the largest device count that divides K; an explicit mesh must have a
`"model"` axis whose size divides K, and may also have a `"data"` axis, over
which each model's batch (and each prediction chunk) is split. Stacked arrays
live on a copy of the mesh with `Auto` axis types (same devices and axes):
vmapped convolutions need reshapes that `Explicit` sharding types reject.
Take one model out of a stacked pytree with `unstack`.

Speed: the gain is largest on accelerators, where one step over `K * B`
examples fills the device far better than K steps over B. On CPU there is
little idle hardware to fill, and `jax.vmap` turns each convolution into a
grouped one (`feature_group_count=K`), which XLA:CPU runs several times slower
than K plain convolutions; `experiments/bench_shadow.py` measures both.

Example:

  keys = jax.random.split(jax.random.key(0), num_models)
  state = init_stacked_state(fns.init_fn, tx, keys)
  step = make_stacked_train_step(fns.apply_fn, tx)
  for i in range(num_steps):
    idx = shadow_batch_indices(keep, 128, i, seed=0)  # [K, B]
    state, metrics = parallel.block(step(state, {"image": images[idx], "label": labels[idx]}))
  logits = make_stacked_predict_fn(fns.apply_fn)(state["params"], images)  # [K, N, C]

References:
  Carlini et al., "Membership Inference Attacks From First Principles",
  IEEE S&P 2022, https://arxiv.org/abs/2112.03570.
"""

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from forsaken_jax import losses, parallel, train
from forsaken_jax.models import ApplyFn, Params

MODEL_AXIS = parallel.MODEL_AXIS
DATA_AXIS = parallel.DATA_AXIS

StackedState = dict[str, Any]
StackedStepFn = Callable[[StackedState, dict[str, Any]], tuple[StackedState, dict[str, jax.Array]]]


def _check_int(name: str, value: Any, *, minimum: int) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
  return int(value)


# ----------------------------------------------------------------------------
# Meshes and shardings


def model_mesh(num_models: int) -> jax.sharding.Mesh:
  """A 1-D `("model",)` mesh over the most devices that split K models evenly.

  Args:
    num_models: K, the number of stacked models, `>= 1`.

  Returns:
    A mesh over the first `d` devices, `d` the largest divisor of K that is
    at most `jax.device_count()` (1 when K is prime and larger than the
    device count), with `Auto` axis types (see `_model_mesh`).
  """
  num_models = _check_int("num_models", num_models, minimum=1)
  size = max(d for d in range(1, jax.device_count() + 1) if num_models % d == 0)
  return _model_mesh(parallel.make_mesh(size, MODEL_AXIS))


@functools.lru_cache(maxsize=None)
def _default_mesh(num_models: int) -> jax.sharding.Mesh:
  # All devices or one: spreading 12 models over 4 of 8 devices would leave
  # the others idle in a way that is easy to miss; `model_mesh` does that on
  # request.
  count = jax.device_count()
  return _model_mesh(parallel.make_mesh(count if num_models % count == 0 else 1, MODEL_AXIS))


def _resolve_mesh(mesh: jax.sharding.Mesh | None, num_models: int) -> jax.sharding.Mesh:
  if mesh is None:
    return _default_mesh(num_models)
  size = mesh.shape[MODEL_AXIS]
  if num_models % size:
    raise ValueError(
        f"the number of models {num_models} is not divisible by the size {size} of the mesh's "
        f"{MODEL_AXIS!r} axis")
  return mesh


def _model_mesh(mesh: jax.sharding.Mesh | None) -> jax.sharding.Mesh | None:
  """Checks for a "model" axis and returns the mesh with `Auto` axis types.

  `jax.vmap` of a convolution folds the model axis into the feature axis with
  a reshape that `Explicit` sharding types reject, and the models never
  communicate, so the compiler's own propagation (`Auto`) is all we need.
  The devices and axes are unchanged.
  """
  if mesh is None:
    return None
  if MODEL_AXIS not in mesh.axis_names:
    raise ValueError(f"mesh must have a {MODEL_AXIS!r} axis; got axes {mesh.axis_names}")
  auto = jax.sharding.AxisType.Auto
  if all(axis_type == auto for axis_type in mesh.axis_types):
    return mesh
  return jax.sharding.Mesh(mesh.devices, mesh.axis_names, axis_types=(auto,) * len(mesh.axis_names))


def _data_size(mesh: jax.sharding.Mesh) -> int:
  return mesh.shape[DATA_AXIS] if DATA_AXIS in mesh.axis_names else 1


def stacked_sharding(mesh: jax.sharding.Mesh) -> jax.NamedSharding:
  """Sharding that splits a stacked pytree's leading model axis over `"model"`."""
  mesh = _model_mesh(mesh)
  return jax.NamedSharding(mesh, jax.P(MODEL_AXIS))


def _batch_sharding(mesh: jax.sharding.Mesh) -> jax.NamedSharding:
  # [K, B, ...]: models over "model", each model's batch over "data" if present.
  if DATA_AXIS in mesh.axis_names:
    return jax.NamedSharding(mesh, jax.P(MODEL_AXIS, DATA_AXIS))
  return jax.NamedSharding(mesh, jax.P(MODEL_AXIS))


def shard_stacked(tree: Any, mesh: jax.sharding.Mesh) -> Any:
  """Places a stacked pytree on `mesh`, split along its leading model axis.

  Args:
    tree: pytree whose leaves all have the same leading size K.
    mesh: a mesh with a `"model"` axis whose size divides K.

  Returns:
    The same pytree of `jax.Array`s sharded `P("model")`.
  """
  mesh = _model_mesh(mesh)
  _resolve_mesh(mesh, _leading_size(tree, "tree"))
  return jax.device_put(tree, stacked_sharding(mesh))


# ----------------------------------------------------------------------------
# Stacking


def _leading_size(tree: Any, name: str) -> int:
  leaves = jax.tree.leaves(tree)
  if not leaves:
    raise ValueError(f"{name} has no array leaves")
  sizes = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in leaves}
  if len(sizes) != 1 or None in sizes:
    raise ValueError(
        f"every leaf of {name} must have the same leading model axis; got leading sizes "
        f"{sorted(sizes, key=str)}")
  (size,) = sizes
  if size == 0:
    raise ValueError(f"{name} has an empty model axis")
  return int(size)


def stack(trees: Sequence[Any]) -> Any:
  """Stacks pytrees of identical structure along a new leading model axis.

  Args:
    trees: K >= 1 pytrees with the same structure and leaf shapes.

  Returns:
    One pytree whose leaves have shape `[K, *leaf.shape]`.
  """
  if len(trees) == 0:
    raise ValueError("stack needs at least one pytree, got an empty sequence")
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def unstack(tree: Any, k: int) -> Any:
  """Model `k` of a stacked pytree (e.g. to evaluate or save one model).

  Args:
    tree: pytree whose leaves share a leading model axis of size K.
    k: the model index in `[0, K)`.

  Returns:
    The pytree with the leading axis indexed at `k`; leaves sharded over a
    mesh come back replicated on that mesh.
  """
  num_models = _leading_size(tree, "tree")
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k < num_models:
    raise ValueError(f"k must be an int in [0, {num_models}), got {k!r}")
  return jax.tree.map(lambda leaf: _take(leaf, int(k)), tree)


def _take(leaf: Any, k: int) -> Any:
  sharding = getattr(leaf, "sharding", None)
  if isinstance(sharding, jax.NamedSharding):
    # Plain indexing of an axis split over an Explicit mesh axis is an error
    # (the output sharding is ambiguous); ask for model k replicated on the
    # mesh, the layout single-model training and prediction use.
    return leaf.at[k].get(out_sharding=jax.NamedSharding(sharding.mesh, jax.P()))
  return leaf[k]


# ----------------------------------------------------------------------------
# Training


def init_stacked_state(init_fn: Callable[[jax.Array], Params], tx: optax.GradientTransformation,
                       keys: jax.Array, *, mesh: jax.sharding.Mesh | None = None) -> StackedState:
  """K fresh train states stacked along a leading model axis.

  Model `k` equals `train.init_train_state(init_fn, tx, keys[k])`.

  Args:
    init_fn: `(key) -> params`.
    tx: the optimizer.
    keys: `[K]` PRNG keys (e.g. `jax.random.split(jax.random.key(0), K)`).
    mesh: if given, the state is created directly on it, sharded `P("model")`
      (the mesh's `"model"` axis size must divide K); otherwise on the default
      device, and the train step moves it on first use.

  Returns:
    `{"params", "opt_state", "step"}` with every leaf shaped `[K, ...]`
    (`step` is `[K]` zeros).
  """
  if not isinstance(keys, jax.Array):
    keys = jnp.asarray(keys)
  if keys.ndim < 1 or keys.shape[0] == 0:
    raise ValueError(f"keys must have a non-empty leading model axis; got shape {keys.shape}")
  init = jax.vmap(lambda key: train.init_train_state(init_fn, tx, key))
  if mesh is None:
    return jax.jit(init)(keys)
  mesh = _model_mesh(mesh)
  _resolve_mesh(mesh, keys.shape[0])
  # Created already sharded: no full copy of all K states on one device.
  return jax.jit(init, out_shardings=stacked_sharding(mesh))(keys)


def _check_step_inputs(state: StackedState, batch: dict[str, Any]) -> int:
  if not isinstance(batch, dict) or "image" not in batch or "label" not in batch:
    raise ValueError(f"batch must be a dict with 'image' and 'label'; got {type(batch).__name__} "
                     f"with keys {sorted(batch) if isinstance(batch, dict) else None}")
  label_shape = np.shape(batch["label"])
  image_shape = np.shape(batch["image"])
  if len(label_shape) != 2:
    raise ValueError(f"batch['label'] must have shape [K, B]; got shape {label_shape}")
  if tuple(image_shape[:2]) != tuple(label_shape) or len(image_shape) < 3:
    raise ValueError(f"batch['image'] must have shape [K, B, ...] matching batch['label'] "
                     f"{label_shape}; got shape {image_shape}")
  num_models = _leading_size(state, "state")
  if label_shape[0] != num_models:
    raise ValueError(
        f"batch holds {label_shape[0]} models' batches but the state stacks {num_models} models")
  return num_models


def make_stacked_train_step(apply_fn: ApplyFn, tx: optax.GradientTransformation, *,
                            loss_fn: losses.LossFn = losses.cross_entropy,
                            mesh: jax.sharding.Mesh | None = None) -> StackedStepFn:
  """Returns one step that trains K stacked models, each on its own batch.

  The update is `jax.vmap(train.make_update_fn(...))`, jitted once with the
  stacked state donated: model `k` gets exactly the update it would get from
  `train.make_update_fn` on `batch[k]` alone. States and batches are split
  along the model axis over the mesh's `"model"` axis; models never exchange
  data, so the only collectives are those of a `"data"` axis, if present.

  Args:
    apply_fn: `(params, images) -> logits`.
    tx: the optimizer (the same for every model).
    loss_fn: per-example loss; each model minimizes its own batch mean.
    mesh: a mesh with a `"model"` axis (e.g. `model_mesh(K)` or
      `jax.make_mesh((4, 2), ("model", "data"))`); its size must divide K.
      `None`: all devices if K divides evenly over them, else one device.

  Returns:
    `step(state, batch) -> (state, metrics)`: `state` from
    `init_stacked_state`, `batch` a dict of host or device arrays `"image"`
    `[K, B, H, W, C]` and `"label"` `[K, B]` (B divisible by the `"data"`
    axis size, if any); `metrics` holds `"loss"` and `"accuracy"` of shape
    `[K]`. Inputs are moved to the mesh if they are not there already (host
    batches hold all K models' data: one process). In Python loops on CPU,
    block on each output (`parallel.block`).
  """
  mesh = _model_mesh(mesh)
  update = jax.vmap(train.make_update_fn(apply_fn, tx, loss_fn=loss_fn))
  jitted: dict[jax.sharding.Mesh, Callable] = {}  # one entry unless mesh=None meets several K

  def compiled_for(resolved):
    if resolved not in jitted:
      states = stacked_sharding(resolved)
      jitted[resolved] = jax.jit(update, in_shardings=(states, _batch_sharding(resolved)),
                                 out_shardings=(states, states), donate_argnums=0)
    return jitted[resolved]

  def step(state, batch):
    num_models = _check_step_inputs(state, batch)
    resolved = _resolve_mesh(mesh, num_models)
    batch_size = np.shape(batch["label"])[1]
    if batch_size % _data_size(resolved):
      raise ValueError(f"per-model batch size {batch_size} is not divisible by the "
                       f"{_data_size(resolved)} devices of the mesh's {DATA_AXIS!r} axis")
    # No-ops when the arrays already live there (the usual case after step 1).
    state = jax.device_put(state, stacked_sharding(resolved))
    batch = jax.device_put(batch, _batch_sharding(resolved))
    return compiled_for(resolved)(state, batch)

  return step


# ----------------------------------------------------------------------------
# Batches


@functools.lru_cache(maxsize=1024)
def _epoch_order(num_in: int, seed: int, model: int, epoch: int) -> np.ndarray:
  # Cached: a model's consecutive steps share one permutation. 1024 entries
  # cover two live epochs of up to 512 models.
  order = np.random.default_rng([seed, model, epoch]).permutation(num_in)
  order = order.astype(np.int32 if num_in < 2**31 else np.int64)
  order.setflags(write=False)
  return order


def shadow_batch_indices(keep: np.ndarray, batch_size: int, step: int, *, seed: int) -> np.ndarray:
  """Population indices of every shadow model's batch at `step`.

  Model `k` trains on its in-set `np.flatnonzero(keep[k])` (n_k examples).
  Its epoch `e = step // (n_k // batch_size)` visits the in-set in the order
  `np.random.default_rng([seed, k, e]).permutation(n_k)` and drops the last
  `n_k % batch_size` examples, as `forsaken_jax.data.batch_indices` does for a
  single model. Epoch boundaries are per model because in-set sizes differ
  slightly. A batch is a pure function of `(keep, seed, step)`, so a resumed
  shadow phase sees the batches an uninterrupted one sees.

  Args:
    keep: bool `[K, N]`; `keep[k, n]` = example `n` is in model `k`'s training
      set (e.g. `lira.balanced_keep_masks`).
    batch_size: examples per model and step, at most the smallest in-set.
    step: global step, `>= 0`.
    seed: non-negative int seed of the epoch permutations.

  Returns:
    int64 `[K, batch_size]` indices into `[0, N)`; row `k` holds distinct
    members of model `k`'s in-set. Gather with `images[idx]` to get the
    `[K, B, ...]` batch of `make_stacked_train_step`.
  """
  keep = np.asarray(keep)
  if keep.dtype != np.bool_:
    raise ValueError(f"keep must be a bool array; got dtype {keep.dtype}")
  if keep.ndim != 2:
    raise ValueError(f"keep must have shape [K, N]; got shape {keep.shape}")
  if keep.shape[0] == 0:
    raise ValueError(f"keep must hold at least one model; got shape {keep.shape}")
  batch_size = _check_int("batch_size", batch_size, minimum=1)
  step = _check_int("step", step, minimum=0)
  seed = _check_int("seed", seed, minimum=0)
  sizes = keep.sum(axis=1)
  if sizes.min() == 0:
    raise ValueError(f"keep gives model {int(np.argmin(sizes))} an empty in-set")
  if sizes.min() < batch_size:
    k = int(np.argmin(sizes))
    raise ValueError(
        f"batch_size={batch_size} exceeds the in-set of model {k}, which has {int(sizes[k])} "
        "examples")
  out = np.empty((keep.shape[0], batch_size), np.int64)
  for k in range(keep.shape[0]):
    members = np.flatnonzero(keep[k])
    epoch, i = divmod(step, len(members) // batch_size)
    order = _epoch_order(len(members), seed, k, epoch)
    out[k] = members[order[i * batch_size:(i + 1) * batch_size]]
  return out


# ----------------------------------------------------------------------------
# Prediction


def make_stacked_predict_fn(apply_fn: ApplyFn, mesh: jax.sharding.Mesh | None = None
                            ) -> Callable[..., np.ndarray]:
  """Returns `predict(stacked_params, images) -> logits [K, N, C]`.

  Every model sees every image: this is how the shadow models' membership
  statistics on the whole population are computed in one pass. Images go in
  fixed-size chunks (the last one zero-padded, the padding dropped from the
  output), so the jitted forward pass compiles once per chunk size.

  Args:
    apply_fn: `(params, images) -> logits`.
    mesh: as in `make_stacked_train_step`; with a `"data"` axis, each chunk is
      also split over it.

  Returns:
    `predict(stacked_params, images, *, batch_size=256)`, `images` a host
    array `[N, H, W, C]`, returning float32 numpy logits `[K, N, C]`. One call
    of the forward pass holds activations for `K * batch_size` examples, so
    lower `batch_size` for many or large models.
  """
  mesh = _model_mesh(mesh)
  forward = jax.vmap(apply_fn, in_axes=(0, None))
  jitted: dict[jax.sharding.Mesh, Callable] = {}

  def compiled_for(resolved):
    if resolved not in jitted:
      data = DATA_AXIS if DATA_AXIS in resolved.axis_names else None
      jitted[resolved] = jax.jit(
          forward,
          in_shardings=(stacked_sharding(resolved), jax.NamedSharding(resolved, jax.P(data))),
          out_shardings=jax.NamedSharding(resolved, jax.P(MODEL_AXIS, data)))
    return jitted[resolved]

  def predict(stacked_params, images, *, batch_size=256):
    num = len(images)
    if num == 0:
      raise ValueError("predict needs at least one image, got an empty array")
    batch_size = _check_int("batch_size", batch_size, minimum=1)
    resolved = _resolve_mesh(mesh, _leading_size(stacked_params, "stacked_params"))
    data_size = _data_size(resolved)
    chunk = -(-min(batch_size, num) // data_size) * data_size
    fn = compiled_for(resolved)
    stacked_params = jax.device_put(stacked_params, stacked_sharding(resolved))
    # np.asarray blocks on each chunk, as CPU loops over sharded calls must.
    outputs = [np.asarray(fn(stacked_params, part))[:, :real]
               for part, real in parallel.padded_chunks(images, chunk)]
    return np.concatenate(outputs, axis=1).astype(np.float32)

  return predict


__all__ = [
    "init_stacked_state",
    "make_stacked_predict_fn",
    "make_stacked_train_step",
    "model_mesh",
    "shadow_batch_indices",
    "shard_stacked",
    "stack",
    "stacked_sharding",
    "unstack",
]
