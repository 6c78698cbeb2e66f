"""Forsaken as an optax gradient transformation.

`forsaken_transform` turns a (trained) generator into a
`GradientTransformationExtraArgs`, so a dummy-gradient step can sit in any
optax training loop:

  tx = optax.chain(forsaken_transform(generator, gen_params), optax.scale(-eta))
  state = tx.init(params)
  retain_grads = jax.grad(retain_loss)(params)
  updates, state = tx.update(retain_grads, state, params,
                             forget_grads=forget_grads, context=context)
  params = optax.apply_updates(params, updates)      # theta - eta * g

The incoming updates are taken to be the retain-loss gradient at `params`;
`forget_grads` (the gradient of the forget objective at `params`) and
`context` (the model's mean posterior on the forget batch) are extra
arguments. The generator's parameters are fixed here: train them with
`forsaken.make_generator_update`.
"""

from typing import Any

import jax
import optax

from forsaken_jax.unlearn import generators as generators_lib
from forsaken_jax.unlearn import masking

__all__ = ["forsaken_transform"]


def forsaken_transform(generator: generators_lib.Generator, gen_params: Any, *,
                       mask: Any = None) -> optax.GradientTransformationExtraArgs:
  """The generator's dummy gradient as an optax transformation.

  Args:
    generator: a `Generator`.
    gen_params: its parameters phi.
    mask: None or a mask with params' structure; the output is zero outside
      it (in addition to the generator's own mask).

  Returns:
    A `GradientTransformationExtraArgs` whose `update(updates, state, params,
    *, forget_grads, context)` returns the dummy gradient g (not yet scaled:
    chain it with `optax.scale(-eta)`). Its state is `optax.EmptyState()`.
  """

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None, *, forget_grads=None, context=None, **extra_args):
    del extra_args  # Arguments meant for other transformations of a chain.
    if params is None:
      raise ValueError("forsaken_transform needs params, got None")
    if forget_grads is None or context is None:
      raise ValueError("forsaken_transform needs the extra arguments forget_grads and context, "
                       f"got forget_grads={type(forget_grads).__name__}, "
                       f"context={type(context).__name__}")
    for name, tree in (("updates", updates), ("forget_grads", forget_grads)):
      if jax.tree.structure(tree) != jax.tree.structure(params):
        raise ValueError(f"{name} must have the structure of params; got "
                         f"{jax.tree.structure(tree)}, expected {jax.tree.structure(params)}")
    masking.check_mask(params, mask)
    features = generators_lib.Features(params, forget_grads, updates, context)
    return masking.where_mask(mask, generator.apply(gen_params, features)), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
