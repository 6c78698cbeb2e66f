"""Adapters from Flax modules to the library's `(apply_fn, params)` form.

Every library function that needs a model takes `apply_fn(params, images) ->
logits` and a `params` pytree; `ModelFns` adds the `init_fn(key) -> params`
that experiments need to create (or shape-check) parameters.
"""

from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
from flax import nnx
import jax
import jax.numpy as jnp

Params = Any
ApplyFn = Callable[[Params, jax.Array], jax.Array]


class ModelFns(NamedTuple):
  """A model as two pure functions.

  Attributes:
    apply_fn: `(params, images [B, H, W, C]) -> logits [B, num_classes]`.
    init_fn: `(key) -> params`.
  """

  apply_fn: ApplyFn
  init_fn: Callable[[jax.Array], Params]


def from_linen(module: nn.Module, input_shape: Sequence[int]) -> ModelFns:
  """Wraps a Linen module whose only collection is `params`.

  Args:
    module: a Linen module mapping `[B, *input_shape]` images to logits.
    input_shape: the shape of one example, e.g. `(28, 28, 1)`.

  Returns:
    `ModelFns` whose params are the module's `params` collection.
  """

  def apply_fn(params, images):
    return module.apply({"params": params}, images)

  def init_fn(key):
    return module.init(key, jnp.zeros((1, *input_shape), jnp.float32))["params"]

  return ModelFns(apply_fn, init_fn)


def from_nnx(make_model: Callable[[nnx.Rngs], nnx.Module]) -> ModelFns:
  """Wraps an NNX model constructor.

  Params are the model's `nnx.Param` variables as a pure nested dict. Other
  state (batch statistics, RNG counters) is frozen at its initial value:
  use models whose forward pass depends on their Params alone.

  Args:
    make_model: `(rngs) -> nnx.Module`, e.g.
      `lambda rngs: NnxCNN(1, 10, rngs=rngs)`.

  Returns:
    `ModelFns` for the model.
  """
  graphdef, _, rest = nnx.split(make_model(nnx.Rngs(0)), nnx.Param, ...)

  def apply_fn(params, images):
    return nnx.merge(graphdef, params, rest)(images)

  def init_fn(key):
    _, params, _ = nnx.split(make_model(nnx.Rngs(key)), nnx.Param, ...)
    return nnx.to_pure_dict(params)

  return ModelFns(apply_fn, init_fn)


def split_nnx(model: nnx.Module) -> tuple[ApplyFn, Params]:
  """Splits an existing NNX model instance into `(apply_fn, params)`.

  Args:
    model: a constructed (possibly trained) NNX model.

  Returns:
    `(apply_fn, params)` with params a pure dict of the model's Params;
    `nnx.update(model, params)` writes results back into the instance.
  """
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def apply_fn(params, images):
    return nnx.merge(graphdef, params, rest)(images)

  return apply_fn, nnx.to_pure_dict(params)
