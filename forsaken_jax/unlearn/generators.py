"""Dummy-gradient generators G_phi.

A generator maps features of the current model state to a dummy gradient g
with the params' structure; Forsaken applies `theta' = theta - eta * g`. Both
generators are optax-style NamedTuples of pure functions:

  generator = make_coordinatewise_generator(num_classes=10)
  gen_params = generator.init(jax.random.key(0))
  dummy_grad = generator.apply(gen_params, features)

`Features` are computed by the caller at the current theta (see
`forsaken.make_generator_update`), outside the meta-gradient: they are
constants with respect to phi; the meta-gradient flows through the
generator's output into theta'.
"""

import functools
import math
from typing import Any, Callable, NamedTuple, Sequence

import jax
from jax.flatten_util import ravel_pytree
import jax.numpy as jnp

from forsaken_jax.unlearn import masking
from forsaken_jax.unlearn.reference import at_least_float32

Params = Any
GenParams = Any

# Above this many generator weights the dense generator refuses to build: with
# Adam's two moments it would hold 3x this many float32 values (~800 MB).
DENSE_MAX_WEIGHTS = 64_000_000

GENERATORS = ("dense", "coordinatewise")

# Per-coordinate inputs of the coordinatewise generator: theta, forget and retain gradients.
_NUM_FEATURES = 3

__all__ = ["DENSE_MAX_WEIGHTS", "GENERATORS", "Features", "Generator",
           "make_coordinatewise_generator", "make_dense_generator", "make_generator"]


class Features(NamedTuple):
  """What a generator sees of the current model state.

  Attributes:
    params: the current model parameters theta.
    forget_grad: gradient of the forget objective D at theta (params' structure).
    retain_grad: gradient of the mean retain loss at theta (params' structure).
    context: `[C]` mean posterior of the model on the forget batch.
  """

  params: Params
  forget_grad: Params
  retain_grad: Params
  context: jax.Array


class Generator(NamedTuple):
  """A dummy-gradient generator.

  Attributes:
    init: `(key) -> gen_params`.
    apply: `(gen_params, Features, mask=None) -> dummy_grad` with params'
      structure, zero outside the mask: the runtime `masking.PackedMask`
      passed in, else the mask the generator was built with.
    mask: the concrete (numpy bool) mask the generator was built for, or None
      when it covers every parameter.
    capacity: the `PackedMask` capacity `apply` requires, or None when it
      takes any (the coordinatewise generator).
  """

  init: Callable[[jax.Array], GenParams]
  apply: Callable[..., Params]
  mask: Any
  capacity: int | None = None


def _packed_indices(packed: masking.PackedMask, params: Params) -> jax.Array:
  """The packed mask's index vector, after checking it against params."""
  masking.check_mask(params, packed.mask)
  indices = jnp.asarray(packed.indices)
  if indices.ndim != 1:
    raise ValueError(f"mask.indices must be a vector, got shape {indices.shape}")
  return indices


def _check_context(context: jax.Array, num_classes: int) -> None:
  if jnp.shape(context) != (num_classes,):
    raise ValueError(f"features.context must have shape ({num_classes},), got "
                     f"{jnp.shape(context)}")


def _rms_normalize(x: jax.Array, eps: float, count: jax.Array | None = None) -> jax.Array:
  """`x / rms(x)`; with `count`, the RMS of the first `count` entries' worth
  (entries beyond it are zero padding)."""
  mean_square = jnp.mean(jnp.square(x)) if count is None else jnp.sum(jnp.square(x)) / count
  return x / (jnp.sqrt(mean_square) + eps)


def _scaled_normals(key: jax.Array, specs: list[tuple[tuple[int, ...], float]]) -> list[jax.Array]:
  """Independent normal arrays of the given shapes and standard deviations.

  Drawn as one random vector and sliced: one random-number call compiles much
  faster than one per weight matrix.
  """
  sizes = [math.prod(shape) for shape, _ in specs]
  flat = jax.random.normal(key, (sum(sizes),), jnp.float32)
  out, start = [], 0
  for (shape, std), size in zip(specs, sizes):
    out.append(flat[start:start + size].reshape(shape) * std)
    start += size
  return out


# The initializers are module-level jits with static shapes, so generators of
# the same configuration share one compilation.


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _dense_init(key: jax.Array, num_in: int, hidden: int, num_out: int,
                output_scale: float) -> GenParams:
  w_hidden, w_out = _scaled_normals(key, [((num_in, hidden), 1.0 / math.sqrt(num_in)),
                                          ((hidden, num_out), output_scale / math.sqrt(hidden))])
  return {
      "hidden": {"kernel": w_hidden, "bias": jnp.zeros((hidden,), jnp.float32)},
      "out": {"kernel": w_out, "bias": jnp.zeros((num_out,), jnp.float32)},
  }


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _coordinatewise_init(key: jax.Array, num_classes: int, hidden: tuple[int, ...],
                         output_scale: float, skip: tuple[float, float, float]) -> GenParams:
  pairs = list(zip(hidden[:-1], hidden[1:]))
  w_in, w_ctx, w_out, *w_hidden = _scaled_normals(key, [
      ((_NUM_FEATURES, hidden[0]), 1.0 / math.sqrt(_NUM_FEATURES)),
      ((num_classes, hidden[0]), 1.0 / math.sqrt(num_classes)),
      ((hidden[-1],), output_scale / math.sqrt(hidden[-1])),
      *(((a, b), 1.0 / math.sqrt(a)) for a, b in pairs),
  ])
  return {
      "input": {"kernel": w_in, "context": w_ctx, "bias": jnp.zeros((hidden[0],), jnp.float32)},
      "hidden": [{"kernel": w, "bias": jnp.zeros((b,), jnp.float32)}
                 for w, (_, b) in zip(w_hidden, pairs)],
      "out": {"kernel": w_out, "bias": jnp.zeros((), jnp.float32)},
      # Starts as a fixed mix of the RMS-normalized inputs (see the factory's docstring).
      "skip": jnp.array(skip, jnp.float32),
  }


def make_dense_generator(params: Params, *, num_classes: int, mask: Any = None, hidden: int = 64,
                         output_scale: float = 1e-2, capacity: int | None = None,
                         max_weights: int = DENSE_MAX_WEIGHTS) -> Generator:
  """The dense generator of the public port, built correctly.

  Input: the flat (masked) parameters, divided by their RMS so the hidden
  layer sees O(1) values, concatenated with the forget set's mean posterior.
  One hidden ReLU layer of `hidden` units; output: one value per (masked)
  coordinate, scattered back into the params' shape (zero elsewhere) with
  static indices computed here from the concrete mask.

  Its weight count is `(n + C) * hidden + hidden * n` for n masked
  coordinates, so it is only viable for small models or a small masked
  subset (see `masking.neuron_mask`); for larger models use
  `make_coordinatewise_generator`.

  With `capacity`, n is that number instead and the mask comes at run time:
  `apply` takes a `masking.PackedMask` of that capacity, its k-th input and
  output being the mask's k-th selected coordinate (padding is ignored).

  Args:
    params: the model's parameters, or `jax.ShapeDtypeStruct`s of them (only
      shapes are read).
    num_classes: C, the length of the context vector.
    mask: None, or a concrete mask pytree selecting the coordinates the
      generator may change.
    hidden: width of the hidden layer.
    output_scale: scale of the output layer's initial weights. Small, so the
      first dummy gradients are small perturbations (|g_i| ~ output_scale)
      rather than a large random step; the output bias starts at 0.
    capacity: None, or the size of the runtime masks `apply` will be given
      (e.g. `masking.neuron_mask_capacity`); then `mask` must be None.
    max_weights: refuse to build above this many generator weights (the
      default allows about 500k coordinates at hidden=64).

  Returns:
    A `Generator`.
  """
  if num_classes < 2:
    raise ValueError(f"num_classes must be at least 2, got {num_classes}")
  if hidden < 1:
    raise ValueError(f"hidden must be positive, got {hidden}")
  full_mask = masking.concrete_mask(params, mask)
  num_total = masking.mask_size(params, None)
  built = None if full_mask is None else masking.pack_mask(params, full_mask)
  if capacity is not None:
    if full_mask is not None:
      raise ValueError("give the dense generator a mask or a capacity for runtime masks, not both")
    if not 0 < capacity <= num_total:
      raise ValueError(f"capacity must be in [1, {num_total}], got {capacity}")
    num_out = int(capacity)
  else:
    num_out = num_total if built is None else int(built.count)
  num_in = num_out + num_classes
  num_weights = num_in * hidden + hidden + hidden * num_out + num_out
  if num_weights > max_weights:
    raise ValueError(
        f"dense generator would have {num_weights:,} weights for {num_out:,} coordinates "
        f"(max_weights={max_weights:,}); select fewer coordinates with "
        f"masking.neuron_mask(..., fraction=...) or use the coordinatewise generator")

  def init(key: jax.Array) -> GenParams:
    return _dense_init(key, num_in, hidden, num_out, float(output_scale))

  def apply(gen_params: GenParams, features: Features,
            mask: masking.PackedMask | None = None) -> Params:
    _check_context(features.context, num_classes)
    flat, unravel = ravel_pytree(features.params)
    if flat.shape != (num_total,):
      raise ValueError(f"features.params has {flat.shape[0]} coordinates, the generator was "
                       f"built for {num_total}")
    packed = built if mask is None else mask
    if packed is None and capacity is not None:
      raise ValueError(f"this dense generator was built for runtime masks of capacity "
                       f"{capacity}; pass apply(..., mask=PackedMask)")
    if packed is None:
      x, count = flat, None
    else:
      indices = _packed_indices(packed, features.params)
      if indices.shape != (num_out,):
        raise ValueError(f"the mask packs {indices.shape[0]} coordinates, the dense generator "
                         f"was built for {num_out}")
      x, count = flat.at[indices].get(mode="fill", fill_value=0), packed.count
    x = _rms_normalize(at_least_float32(x), 1e-8, count)
    x = jnp.concatenate([x, at_least_float32(features.context)])
    h = jax.nn.relu(x @ gen_params["hidden"]["kernel"] + gen_params["hidden"]["bias"])
    out = h @ gen_params["out"]["kernel"] + gen_params["out"]["bias"]
    if packed is not None:
      out = jnp.zeros((num_total,), out.dtype).at[indices].set(out, mode="drop")
    # Scattered into zeros: nothing outside the mask.
    return unravel(out.astype(flat.dtype))

  return Generator(init, apply, full_mask, None if capacity is None else int(capacity))


def make_coordinatewise_generator(*, num_classes: int, hidden: Sequence[int] = (32, 32),
                                  mask: Any = None, params: Params = None,
                                  output_scale: float = 1e-2, eps: float = 1e-8,
                                  chunk_size: int = 2**18,
                                  skip_init: Sequence[float] = (0.0, 1.0, 0.0)) -> Generator:
  """A learned-optimizer-style generator shared across coordinates.

  For every coordinate i of every parameter tensor, the same small MLP maps

    x_i = [theta_i / rms(theta), df_i / rms(df), dr_i / rms(dr)]

  (df, dr: the gradients of the forget objective and of the retain loss;
  each normalized by its RMS over the tensor, so the MLP sees O(1) inputs
  whatever the layer's scale) plus a global context, the forget set's mean
  posterior, to

    g_i = w_skip . x_i + MLP(x_i, context).

  The context enters the first layer as one `[hidden]` vector added to every
  coordinate's pre-activation (computed once, not broadcast as an input).

  Initialization: `w_skip = skip_init` (default `(0, 1, 0)`) and a small
  random output layer (`output_scale`), so the first dummy gradient is
  essentially `skip_init . x_i`: by default the RMS-normalized gradient of the
  forget objective, i.e. `theta - eta * g` starts as a normalized descent step
  on D, and the meta-gradient learns from there how to trade it off against
  the retain gradient; `(0, 1, 1)` starts from a step that descends both. All
  weights (including `w_skip`) are trained.

  The weight count is independent of the model size, so it scales to
  ResNet-18's 11M parameters. Memory is bounded too: the coordinates of all
  tensors are concatenated and fed to the MLP in chunks of `chunk_size` by a
  `jax.lax.map`, each chunk rematerialized in the backward pass, so only one
  chunk's hidden activations (`chunk_size * sum(hidden)` floats) are alive at
  a time. (Mapping the MLP over the tensors one by one instead lets XLA keep
  every tensor's activations alive at once: ~6 GB for ResNet-18 at
  hidden=(32, 32), against ~0.3 GB chunked.) A single MLP body in the program
  also compiles much faster than one per tensor.

  Args:
    num_classes: C, the length of the context vector.
    hidden: widths of the MLP's hidden layers (at least one).
    mask: None, or a concrete mask; outputs outside it are zero. Requires
      `params` (or ShapeDtypeStructs) to validate it. A runtime
      `masking.PackedMask` passed to `apply` takes its place: only its
      coordinates go through the MLP, and one compiled program serves every
      mask of its capacity.
    params: the model's parameters (only needed with `mask`).
    output_scale: scale of the MLP output layer's initial weights.
    eps: added to the RMS before dividing.
    chunk_size: coordinates per MLP evaluation (bounds activation memory).
    skip_init: initial weights of theta, the forget gradient and the retain
      gradient in the skip connection.

  Returns:
    A `Generator`.
  """
  if num_classes < 2:
    raise ValueError(f"num_classes must be at least 2, got {num_classes}")
  hidden = tuple(int(h) for h in hidden)
  if not hidden or min(hidden) < 1:
    raise ValueError(f"hidden must be a non-empty sequence of positive widths, got {hidden}")
  if mask is not None and params is None:
    raise ValueError("mask needs params (arrays or ShapeDtypeStructs) to be validated against")
  if chunk_size < 1:
    raise ValueError(f"chunk_size must be positive, got {chunk_size}")
  skip_init = tuple(float(w) for w in skip_init)
  if len(skip_init) != _NUM_FEATURES:
    raise ValueError(f"skip_init must hold {_NUM_FEATURES} weights (theta, forget gradient, "
                     f"retain gradient), got {skip_init}")
  full_mask = masking.concrete_mask(params, mask) if mask is not None else None
  built = None if full_mask is None else masking.pack_mask(params, full_mask)

  def init(key: jax.Array) -> GenParams:
    return _coordinatewise_init(key, num_classes, hidden, float(output_scale), skip_init)

  @jax.checkpoint
  def mlp(gen_params, context_h, x):
    """`[n, _NUM_FEATURES]` normalized features -> `[n]` dummy gradient."""
    h = jax.nn.relu(x @ gen_params["input"]["kernel"] + context_h)
    for layer in gen_params["hidden"]:
      h = jax.nn.relu(h @ layer["kernel"] + layer["bias"])
    return h @ gen_params["out"]["kernel"] + gen_params["out"]["bias"] + x @ gen_params["skip"]

  def apply(gen_params: GenParams, features: Features,
            mask: masking.PackedMask | None = None) -> Params:
    _check_context(features.context, num_classes)
    context_h = (at_least_float32(features.context) @ gen_params["input"]["context"] +
                 gen_params["input"]["bias"])
    thetas, treedef = jax.tree.flatten(features.params)
    for name in ("forget_grad", "retain_grad"):
      if jax.tree.structure(getattr(features, name)) != treedef:
        raise ValueError(f"features.{name} must have the structure of features.params; got "
                         f"{jax.tree.structure(getattr(features, name))}, expected {treedef}")
    packed = built if mask is None else mask
    indices = None if packed is None else _packed_indices(packed, features.params)
    triples = zip(thetas, jax.tree.leaves(features.forget_grad),
                  jax.tree.leaves(features.retain_grad))
    x = jnp.concatenate([
        jnp.stack([_rms_normalize(at_least_float32(t).reshape(-1), eps) for t in triple], axis=-1)
        for triple in triples
    ])
    total = x.shape[0]
    if indices is not None:
      # Only the coordinates the mask lets change go through the MLP: with
      # neuron masking that is a small fraction of the model. Padding
      # entries (out of range) read zeros and their outputs are dropped.
      x = x.at[indices].get(mode="fill", fill_value=0)
    count = x.shape[0]
    chunk = min(chunk_size, count)
    num_chunks = -(-count // chunk)
    x = jnp.pad(x, ((0, num_chunks * chunk - count), (0, 0)))
    x = x.reshape(num_chunks, chunk, _NUM_FEATURES)
    flat = jax.lax.map(lambda xc: mlp(gen_params, context_h, xc), x).reshape(-1)[:count]
    if indices is not None:
      # Scattered into zeros: nothing outside the mask.
      flat = jnp.zeros((total,), flat.dtype).at[indices].set(flat, mode="drop")
    out, start = [], 0
    for theta in thetas:
      size = math.prod(jnp.shape(theta))
      out.append(flat[start:start + size].reshape(jnp.shape(theta)).astype(theta.dtype))
      start += size
    return jax.tree.unflatten(treedef, out)

  return Generator(init, apply, full_mask)


def make_generator(name: str, params: Params, *, num_classes: int, mask: Any = None,
                   capacity: int | None = None, **kwargs: Any) -> Generator:
  """Builds the generator called `name` (one of `GENERATORS`).

  Args:
    name: "dense" or "coordinatewise".
    params: the model's parameters (or ShapeDtypeStructs).
    num_classes: number of model outputs.
    mask: None or a concrete mask.
    capacity: None, or the capacity of the runtime `masking.PackedMask`s the
      generator will be applied with (then `mask` must be None). Only the
      dense generator's weights depend on it; the coordinatewise generator
      takes runtime masks of any capacity.
    **kwargs: passed to the generator's factory.

  Returns:
    A `Generator`.
  """
  if capacity is not None and mask is not None:
    raise ValueError("give a mask or a capacity for runtime masks, not both")
  if name == "dense":
    return make_dense_generator(params, num_classes=num_classes, mask=mask, capacity=capacity,
                                **kwargs)
  if name == "coordinatewise":
    return make_coordinatewise_generator(num_classes=num_classes, mask=mask, params=params,
                                         **kwargs)
  raise ValueError(f"generator must be one of {GENERATORS}, got {name!r}")
