"""Forsaken: dummy-gradient unlearning, neuron masking and baselines.

Typical use:

  from forsaken_jax import unlearn
  gen = unlearn.make_coordinatewise_generator(num_classes=10)
  ref = unlearn.compute_reference(apply_fn, params, nonmember_batch,
                                  objective="confidence_matching")
  forsaken = unlearn.make_forsaken(apply_fn, gen, objective="confidence_matching",
                                   retain_weight=1.0, max_steps=200)
  state = forsaken.init(key, params, forget_batch, retain_batch, ref)
  state = forsaken.run(state, forget_batch, retain_batch, ref, threshold, target_rate)
  new_params = state.params

or `unlearn.unlearn(...)` for all of it in one call.
"""

from forsaken_jax.unlearn.baselines import (
    make_finetune_loop, make_finetune_step, make_gradient_ascent_step)
from forsaken_jax.unlearn.forsaken import (
    ACCEPTANCE_RULES, STOP_MAX_STEPS, STOP_PATIENCE, STOP_REASONS, STOP_RUNNING, STOP_TARGET, Forsaken,
    ForsakenState, GeneratorState, GeneratorUpdate, UnlearnResult, apply_dummy_gradient,
    make_forsaken, make_generator_update, make_simulated_relearn, summarize, unlearn)
from forsaken_jax.unlearn.generators import (
    DENSE_MAX_WEIGHTS, GENERATORS, Features, Generator, make_coordinatewise_generator,
    make_dense_generator, make_generator)
from forsaken_jax.unlearn.masking import (
    PackedMask, neuron_mask, neuron_mask_capacity, pack_mask, packed_mask_shape, unit_saliency)
from forsaken_jax.unlearn.methods import (
    METHODS, Unlearner, UnlearnerState, fisher_inverse_product, make_method, nearest_wrong_labels)
from forsaken_jax.unlearn.removal import check_shrink_perturb, shrink_perturb
from forsaken_jax.unlearn.reference import (
    OBJECTIVES, RELATIVE_OBJECTIVES, compute_reference, objective_distance,
    reference_from_logits)
from forsaken_jax.unlearn.transform import forsaken_transform

__all__ = [
    "ACCEPTANCE_RULES", "DENSE_MAX_WEIGHTS", "check_shrink_perturb", "Features", "Forsaken", "ForsakenState", "GENERATORS",
    "Generator", "GeneratorState", "GeneratorUpdate", "METHODS", "OBJECTIVES", "PackedMask",
    "RELATIVE_OBJECTIVES", "STOP_MAX_STEPS", "STOP_PATIENCE", "STOP_REASONS", "STOP_RUNNING",
    "STOP_TARGET", "UnlearnResult", "Unlearner", "UnlearnerState", "apply_dummy_gradient",
    "compute_reference", "fisher_inverse_product", "forsaken_transform",
    "make_coordinatewise_generator", "make_dense_generator", "make_finetune_loop",
    "make_finetune_step", "make_forsaken", "make_generator", "make_generator_update",
    "make_gradient_ascent_step", "make_method", "make_simulated_relearn", "nearest_wrong_labels",
    "neuron_mask", "neuron_mask_capacity", "objective_distance", "pack_mask", "packed_mask_shape",
    "reference_from_logits", "shrink_perturb", "summarize",
    "unit_saliency",
    "unlearn",
]
