"""Flax Linen classifiers: MLP, a small CNN, ResNet-18 and a linear model.

All map float32 NHWC images to logits `[B, num_classes]` and keep no mutable
state (GroupNorm instead of BatchNorm), so a training step is a pure function
of `(params, batch)`.
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class MLP(nn.Module):
  """Multi-layer perceptron on flattened images."""

  num_classes: int
  hidden: Sequence[int] = (256, 256)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.reshape((x.shape[0], -1))
    for width in self.hidden:
      x = nn.relu(nn.Dense(width)(x))
    return nn.Dense(self.num_classes)(x)


class CNN(nn.Module):
  """Small convolutional network for 28x28 (or 32x32) images.

  Two 3x3 conv + 2x2 max-pool blocks, then a dense layer; about 0.4M
  parameters at the default widths.
  """

  num_classes: int
  features: Sequence[int] = (32, 64)
  dense: int = 128

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for width in self.features:
      x = nn.relu(nn.Conv(width, (3, 3))(x))
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(self.dense)(x))
    return nn.Dense(self.num_classes)(x)


class _ResidualBlock(nn.Module):
  """Basic two-conv residual block with GroupNorm."""

  features: int
  strides: int = 1
  groups: int = 32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    groups = min(self.groups, self.features)
    y = nn.Conv(self.features, (3, 3), self.strides, use_bias=False)(x)
    y = nn.relu(nn.GroupNorm(num_groups=groups)(y))
    y = nn.Conv(self.features, (3, 3), use_bias=False)(y)
    y = nn.GroupNorm(num_groups=groups, scale_init=nn.initializers.zeros)(y)
    if x.shape != y.shape:
      x = nn.Conv(self.features, (1, 1), self.strides, use_bias=False)(x)
      x = nn.GroupNorm(num_groups=groups)(x)
    return nn.relu(x + y)


class ResNet18(nn.Module):
  """ResNet-18 for 32x32 inputs (CIFAR stem: 3x3 conv, no max-pool).

  GroupNorm replaces BatchNorm so the model has no batch statistics: the
  train step stays pure and per-example outputs do not depend on the batch,
  which membership inference relies on.
  """

  num_classes: int
  width: int = 64
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  groups: int = 32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.Conv(self.width, (3, 3), use_bias=False)(x)
    x = nn.relu(nn.GroupNorm(num_groups=min(self.groups, self.width))(x))
    for stage, num_blocks in enumerate(self.stage_sizes):
      for block in range(num_blocks):
        strides = 2 if stage > 0 and block == 0 else 1
        x = _ResidualBlock(self.width * 2**stage, strides, self.groups)(x)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes)(x)


class Linear(nn.Module):
  """Linear classifier on flattened images.

  With cross-entropy it is multinomial logistic regression; with the
  multiclass hinge loss it is a linear SVM.
  """

  num_classes: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return nn.Dense(self.num_classes)(x.reshape((x.shape[0], -1)))
