"""Per-example classification losses.

Every loss maps `(logits [B, C], labels [B]) -> [B]`; callers reduce. Keeping
them per example is what lets membership statistics and `jax.vmap` over
shadow models reuse them unchanged.
"""

from typing import Callable

import jax
import jax.numpy as jnp
import optax

LossFn = Callable[[jax.Array, jax.Array], jax.Array]


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Softmax cross-entropy per example.

  Args:
    logits: `[B, C]` unnormalized scores.
    labels: `[B]` integer class labels.

  Returns:
    `[B]` losses.
  """
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def multiclass_hinge(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Crammer-Singer multiclass hinge loss per example (linear SVM).

  `max(0, 1 + max_{j != y} s_j - s_y)`.

  Args:
    logits: `[B, C]` class scores.
    labels: `[B]` integer class labels.

  Returns:
    `[B]` losses.
  """
  num_classes = logits.shape[-1]
  true_score = jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
  others = jnp.where(jax.nn.one_hot(labels, num_classes, dtype=bool), -jnp.inf, logits)
  return jax.nn.relu(1.0 + jnp.max(others, axis=-1) - true_score)


LOSSES: dict[str, LossFn] = {
    "cross_entropy": cross_entropy,
    "hinge": multiclass_hinge,
}


def get_loss(name: str) -> LossFn:
  """Returns the per-example loss called `name` (see `LOSSES`)."""
  if name not in LOSSES:
    raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}")
  return LOSSES[name]
