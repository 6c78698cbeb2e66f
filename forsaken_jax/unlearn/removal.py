"""Forsaken's removal step: shrink-and-perturb before the repair on retained data.

The dummy gradient moves the forget set's outputs to where non-members'
are, but it is small by construction, so the parameters that memorized the
forget set stay a few fine-tuning steps away (the relearning attack,
`forsaken_jax.mia.make_relearn_attack`, finds them). The removal step takes
the model far from them on purpose:

    theta'' = shrink * theta' + perturb * theta_fresh,

theta' the model after the dummy gradient and theta_fresh a fresh draw of the
model's initialization (Ash & Adams 2020, "On warm-starting neural network
training": a shrunk, perturbed model relearns like a fresh one), followed by
a short fine-tune on retained data only (`make_finetune_loop`), which wins
back what the retained data teach and nothing the forget set taught.
`shrink=1, perturb=0` is the identity (the paper's Forsaken).
"""

from typing import Any

import jax

Params = Any

__all__ = ["check_shrink_perturb", "shrink_perturb"]


def check_shrink_perturb(shrink: float, perturb: float) -> None:
  """Raises ValueError unless 0 < shrink <= 1 and perturb >= 0."""
  if not 0.0 < shrink <= 1.0:
    raise ValueError(f"shrink must be in (0, 1] (1 = off), got {shrink!r}")
  if not perturb >= 0.0:
    raise ValueError(f"perturb must be non-negative (0 = off), got {perturb!r}")


def shrink_perturb(params: Params, fresh_params: Params, *, shrink: float,
                   perturb: float) -> Params:
  """`shrink * params + perturb * fresh_params`, leaf by leaf.

  Args:
    params: the model to shrink (e.g. after the dummy gradient).
    fresh_params: a fresh initialization of the same model (same structure
      and shapes), the perturbation's direction.
    shrink: in (0, 1]; 1 keeps the weights' scale.
    perturb: non-negative weight of the fresh initialization; 0 adds none.

  Returns:
    The shrunk, perturbed parameters (the dtypes of `params`).

  Raises:
    ValueError: out-of-range factors, or `fresh_params` does not match
      `params` in structure or shapes.
  """
  check_shrink_perturb(shrink, perturb)
  if jax.tree.structure(params) != jax.tree.structure(fresh_params):
    raise ValueError(f"fresh_params must have the structure of params; got "
                     f"{jax.tree.structure(fresh_params)}, expected {jax.tree.structure(params)}")
  for (path, p), f in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                          jax.tree.leaves(fresh_params)):
    if p.shape != f.shape:
      raise ValueError(f"fresh_params leaf {jax.tree_util.keystr(path)} has shape {f.shape}, "
                       f"params has {p.shape}")
  return jax.tree.map(lambda p, f: (shrink * p + perturb * f).astype(p.dtype), params,
                      fresh_params)
