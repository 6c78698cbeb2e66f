"""Neuron masking: restrict the dummy gradient to forget-specific units.

Version 3 of the Forsaken paper ("Machine Unlearning via Neuron Masking")
applies the dummy gradient only to the neurons that carry the forget set's
memorization. We score each *unit* (an output neuron of a Dense layer, an
output channel of a Conv layer, a channel of a normalization layer) by how
much more the forget loss than the retain loss depends on it, and keep the
top fraction.

A unit is an index along the last axis of its module's parameters: Dense
kernels `[in, out]`, Conv kernels `[h, w, in, out]`, biases and
normalization scales `[out]`. The parameters of one module that share that
last-axis size form one group, so a unit's kernel column and its bias are
scored and selected together.

This module also holds the mask helpers the rest of `forsaken_jax.unlearn`
shares: a mask is a pytree with the params' structure whose leaves are bool
(or 0/1) arrays of the leaf's shape, or anything broadcastable to it (a
scalar `True` selects a whole tensor).
"""

import functools
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from forsaken_jax import losses
from forsaken_jax.unlearn import reference

Params = Any
Mask = Any
Batch = dict[str, jax.Array]

__all__ = ["PackedMask", "check_mask", "mask_size", "neuron_mask", "neuron_mask_capacity",
           "pack_mask", "packed_mask_shape", "unit_groups", "unit_saliency"]


def _leaf_shapes(tree: Params) -> list[tuple[int, ...]]:
  return [tuple(np.shape(leaf)) for leaf in jax.tree.leaves(tree)]


def check_mask(params: Params, mask: Mask | None, *, name: str = "mask") -> None:
  """Raises ValueError unless `mask` is None or matches `params`.

  Args:
    params: the parameter pytree (arrays or `jax.ShapeDtypeStruct`s).
    mask: None, or a pytree with params' structure whose leaves broadcast to
      the corresponding parameter's shape.
    name: the argument name used in error messages.
  """
  if mask is None:
    return
  params_def = jax.tree.structure(params)
  mask_def = jax.tree.structure(mask)
  if params_def != mask_def:
    raise ValueError(f"{name} must have the structure of params; got {mask_def}, "
                     f"expected {params_def}")
  for path_and_leaf, m in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                              jax.tree.leaves(mask)):
    path, leaf = path_and_leaf
    p_shape, m_shape = tuple(np.shape(leaf)), tuple(np.shape(m))
    try:
      broadcast = np.broadcast_shapes(m_shape, p_shape)
    except ValueError:
      broadcast = None
    if broadcast != p_shape:
      raise ValueError(f"{name} leaf {jax.tree_util.keystr(path)} has shape {m_shape}, "
                       f"which does not broadcast to the parameter's shape {p_shape}")


def concrete_mask(params: Params, mask: Mask | None, *, name: str = "mask") -> Mask | None:
  """Validates `mask` and returns it as numpy bool arrays of the params' shapes.

  Static index sets (the dense generator) and coordinate counts need the mask
  on the host, so it must be concrete (not traced).

  Args:
    params: the parameter pytree (arrays or `jax.ShapeDtypeStruct`s).
    mask: None or a mask pytree.
    name: the argument name used in error messages.

  Returns:
    None, or the mask with full-shape numpy bool leaves.
  """
  check_mask(params, mask, name=name)
  if mask is None:
    return None
  try:
    return jax.tree.map(lambda p, m: np.broadcast_to(np.asarray(m) != 0, np.shape(p)), params,
                        mask)
  except jax.errors.TracerArrayConversionError as e:
    raise ValueError(f"{name} must be concrete (numpy or a committed jax array), not traced") from e


def mask_size(params: Params, mask: Mask | None) -> int:
  """Number of parameter coordinates selected by `mask` (all when None)."""
  if mask is None:
    return sum(math.prod(s) for s in _leaf_shapes(params))
  full = concrete_mask(params, mask)
  return int(sum(np.count_nonzero(m) for m in jax.tree.leaves(full)))


class PackedMask(NamedTuple):
  """A mask as runtime arrays, padded to a fixed number of coordinates.

  Compiled code that takes a `PackedMask` as an argument (rather than closing
  over a concrete mask) is compiled once per `capacity`: any mask of at most
  that many coordinates, e.g. the neuron mask of a new forget set, reuses it.

  Attributes:
    mask: bool leaves of the params' shapes.
    indices: `int32 [capacity]`: the selected coordinates' positions in the
      concatenation of the flattened leaves (in `jax.tree.leaves` order),
      ascending, padded with the total number of coordinates (out of range).
    count: `int32 []`: how many entries of `indices` are real.
  """

  mask: Mask
  indices: Any
  count: Any


def pack_mask(params: Params, mask: Mask | None, *, capacity: int | None = None) -> PackedMask:
  """Packs a concrete mask into a `PackedMask` of numpy arrays.

  Args:
    params: the parameter pytree (arrays or `jax.ShapeDtypeStruct`s).
    mask: a concrete mask pytree; None selects every coordinate.
    capacity: the length of `indices`; default the mask's own size. A
      compiled program serves every mask packed to the same capacity.

  Returns:
    A `PackedMask`.

  Raises:
    ValueError: the mask does not match params, selects nothing, or selects
      more than `capacity` coordinates.
  """
  full = concrete_mask(params, mask)
  if full is None:
    full = jax.tree.map(lambda p: np.ones(np.shape(p), bool), params)
  flat = np.concatenate([np.reshape(m, -1) for m in jax.tree.leaves(full)])
  selected = np.flatnonzero(flat).astype(np.int32)
  if selected.size == 0:
    raise ValueError("mask selects no parameters")
  capacity = selected.size if capacity is None else int(capacity)
  if selected.size > capacity:
    raise ValueError(f"mask selects {selected.size:,} coordinates, more than capacity="
                     f"{capacity:,}; pack it with a larger capacity (e.g. "
                     "masking.neuron_mask_capacity)")
  indices = np.full((capacity,), flat.size, np.int32)
  indices[:selected.size] = selected
  return PackedMask(full, indices, np.asarray(selected.size, np.int32))


def packed_mask_shape(params: Params, capacity: int) -> PackedMask:
  """The `jax.ShapeDtypeStruct`s of a `PackedMask` of `capacity` for `params`.

  For lowering and compiling code ahead of time, before the mask is known.
  """
  return PackedMask(jax.tree.map(lambda p: jax.ShapeDtypeStruct(np.shape(p), np.bool_), params),
                    jax.ShapeDtypeStruct((capacity,), np.int32),
                    jax.ShapeDtypeStruct((), np.int32))


def masks_equal(a: Mask | None, b: Mask | None) -> bool:
  """Whether two concrete full-shape masks select the same coordinates."""
  if a is None or b is None:
    return a is None and b is None
  if jax.tree.structure(a) != jax.tree.structure(b):
    return False
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def where_mask(mask: Mask | None, tree: Params) -> Params:
  """Zeroes the coordinates of `tree` outside `mask` (identity when None)."""
  if mask is None:
    return tree
  return jax.tree.map(lambda m, x: jnp.where(jnp.asarray(m) != 0, x, jnp.zeros_like(x)), mask, tree)


def unit_groups(params: Params) -> list[list[int]]:
  """Groups parameter leaves into units (indices into `jax.tree.leaves`).

  Leaves under the same parent node whose last axes have the same size form
  one group (e.g. a Dense layer's `kernel [in, out]` and `bias [out]`).
  Scalar leaves form a group of one unit each.

  Args:
    params: the parameter pytree.

  Returns:
    A list of groups, each a list of leaf indices, in leaf order.
  """
  groups: dict[tuple, list[int]] = {}
  for i, (path, leaf) in enumerate(jax.tree_util.tree_flatten_with_path(params)[0]):
    shape = np.shape(leaf)
    key = (path[:-1], shape[-1]) if len(shape) else (path, None)
    groups.setdefault(key, []).append(i)
  return list(groups.values())


def _units(shape: tuple[int, ...]) -> int:
  return shape[-1] if len(shape) else 1


def _per_unit_abs_sum(x: jax.Array) -> jax.Array:
  """Sum of |x| over all axes but the last: `[units]`."""
  x = jnp.abs(x)
  return x.reshape(-1, _units(x.shape)).sum(axis=0) if x.ndim else x.reshape(1)


def unit_saliency(apply_fn: Callable[[Params, jax.Array], jax.Array], params: Params,
                  forget_batch: Batch, retain_batch: Batch,
                  loss_fn: losses.LossFn = losses.cross_entropy, *, eps: float = 1e-12) -> Params:
  """Per-unit forget-vs-retain saliency.

  For every unit u (see the module docstring), with `G_f` and `G_r` the
  gradients of the mean forget and mean retain loss at `params`:

    saliency_u = mean_{i in u} |G_f[i]| / (mean_{i in u} |G_r[i]| + eps),

  the mean running over all the unit's parameters (kernel column and bias
  together). A unit scores high when the forget set pulls on it much harder
  than the retained data does, i.e. when it stores forget-specific
  memorization; a unit the retained data never uses (zero retain gradient)
  but the forget set does gets a very large score on purpose.

  Args:
    apply_fn: `(params, images) -> logits`.
    params: the trained model's parameters.
    forget_batch: `{"image": [B, ...], "label": [B]}` of the forget set.
    retain_batch: a batch of retained training data.
    loss_fn: per-example loss `(logits, labels) -> [B]`.
    eps: added to the retain term so units without retain gradient stay finite.

  Returns:
    A pytree with params' structure whose leaves are `[units]` scores;
    the leaves of one group (e.g. a kernel and its bias) carry the same
    vector, scalars a vector of one.
  """
  reference.check_batch(forget_batch, "forget_batch")
  reference.check_batch(retain_batch, "retain_batch")
  return _unit_saliency(apply_fn, loss_fn, params, forget_batch, retain_batch, eps=eps)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _unit_saliency(apply_fn, loss_fn, params, forget_batch, retain_batch, *, eps):
  # Module-level jit with static functions: repeated calls reuse the compilation.

  def mean_loss(p, batch):
    return jnp.mean(loss_fn(apply_fn(p, batch["image"]), batch["label"]))

  g_forget = jax.tree.leaves(jax.grad(mean_loss)(params, forget_batch))
  g_retain = jax.tree.leaves(jax.grad(mean_loss)(params, retain_batch))
  out = [None] * len(g_forget)
  for group in unit_groups(params):
    count = sum(math.prod(g_forget[i].shape[:-1]) if g_forget[i].ndim else 1 for i in group)
    f = sum(_per_unit_abs_sum(g_forget[i]) for i in group) / count
    r = sum(_per_unit_abs_sum(g_retain[i]) for i in group) / count
    score = f / (r + eps)
    for i in group:
      out[i] = score
  return jax.tree.unflatten(jax.tree.structure(params), out)


def _coordinates_per_unit(params: Params) -> list[tuple[int, int]]:
  """`(units, coordinates of one unit)` for every group of `unit_groups`."""
  leaves = jax.tree.leaves(params)
  out = []
  for group in unit_groups(params):
    shapes = [np.shape(leaves[i]) for i in group]
    out.append((_units(shapes[0]), sum(math.prod(s[:-1]) if len(s) else 1 for s in shapes)))
  return out


def _check_fraction(fraction: float) -> None:
  if not (isinstance(fraction, (int, float)) and 0.0 < fraction <= 1.0):
    raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")


def _num_selected(fraction: float, units: int) -> int:
  """How many of `units` units a mask of `fraction` selects (at least one)."""
  return max(1, math.ceil(fraction * units))


def neuron_mask_capacity(params: Params, *, fraction: float, per_layer: bool = False) -> int:
  """The most coordinates any `neuron_mask(params, ..., fraction, per_layer)` selects.

  With global ranking the count depends on which layers the chosen units sit
  in; this is the count when they are the units with the most parameters.
  Packing every mask to this capacity (`pack_mask`) lets one compiled
  unlearning loop serve the mask of every forget set.

  Args:
    params: the parameter pytree (arrays or `jax.ShapeDtypeStruct`s).
    fraction: as in `neuron_mask`.
    per_layer: as in `neuron_mask`.

  Returns:
    The number of coordinates.
  """
  _check_fraction(fraction)
  groups = _coordinates_per_unit(params)
  if per_layer:
    return sum(_num_selected(fraction, units) * size for units, size in groups)
  sizes = np.sort(np.concatenate([np.full(units, size) for units, size in groups]))[::-1]
  return int(sizes[:_num_selected(fraction, sizes.size)].sum())


def neuron_mask(params: Params, saliency: Params, *, fraction: float,
                per_layer: bool = False) -> Mask:
  """Selects the most forget-salient units.

  Args:
    params: the parameter pytree (arrays or `jax.ShapeDtypeStruct`s).
    saliency: the output of `unit_saliency` for these params.
    fraction: in (0, 1]: the fraction of units to select. Globally (default)
      it is `ceil(fraction * total_units)` units ranked across all layers, so
      layers whose units are forget-specific get more of them; with
      `per_layer=True` each group gets `ceil(fraction * its_units)` (at
      least one), which spreads the change across depth.
    per_layer: rank within each group instead of globally.

  Returns:
    A pytree of numpy bool arrays with params' structure and shapes; all
    parameters of a selected unit (kernel column and bias) are True. Ties are
    broken by position, so exactly the requested number of units is chosen.
  """
  _check_fraction(fraction)
  leaves = jax.tree.leaves(params)
  sal_leaves = jax.tree.leaves(saliency)
  if jax.tree.structure(saliency) != jax.tree.structure(params):
    raise ValueError(f"saliency must have the structure of params; got "
                     f"{jax.tree.structure(saliency)}, expected {jax.tree.structure(params)}")
  groups = unit_groups(params)
  scores = []
  for group in groups:
    units = _units(np.shape(leaves[group[0]]))
    s = np.asarray(sal_leaves[group[0]], np.float64).reshape(-1)
    if s.shape != (units,):
      raise ValueError(f"saliency leaf {group[0]} has shape {np.shape(sal_leaves[group[0]])}, "
                       f"expected ({units},) units")
    # NaN saliency (e.g. from a NaN loss) must never be selected first.
    scores.append(np.nan_to_num(s, nan=-np.inf))

  selected = []
  if per_layer:
    for s in scores:
      k = _num_selected(fraction, s.size)
      chosen = np.zeros(s.size, bool)
      chosen[np.argsort(-s, kind="stable")[:k]] = True
      selected.append(chosen)
  else:
    flat = np.concatenate(scores)
    k = _num_selected(fraction, flat.size)
    chosen = np.zeros(flat.size, bool)
    chosen[np.argsort(-flat, kind="stable")[:k]] = True
    selected = np.split(chosen, np.cumsum([s.size for s in scores])[:-1])

  out = [None] * len(leaves)
  for group, chosen in zip(groups, selected):
    for i in group:
      shape = np.shape(leaves[i])
      out[i] = np.broadcast_to(chosen, shape).copy() if len(shape) else np.asarray(chosen[0])
  return jax.tree.unflatten(jax.tree.structure(params), out)
