"""Flax NNX classifiers, mirroring the Linen MLP and CNN.

They exist so NNX users have a starting point and so the NNX adapter is
exercised on real models.
"""

from typing import Sequence

from flax import nnx
import jax


class NnxMLP(nnx.Module):
  """Multi-layer perceptron on flattened images."""

  def __init__(self, in_features: int, num_classes: int, *, hidden: Sequence[int] = (256, 256),
               rngs: nnx.Rngs):
    widths = [in_features, *hidden]
    self.hidden = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(widths[:-1], widths[1:])])
    self.head = nnx.Linear(widths[-1], num_classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.reshape((x.shape[0], -1))
    for layer in self.hidden:
      x = nnx.relu(layer(x))
    return self.head(x)


class NnxCNN(nnx.Module):
  """Small CNN: two 3x3 conv + 2x2 max-pool blocks, then a dense layer."""

  def __init__(self, in_channels: int, num_classes: int, *, image_size: int = 28,
               features: Sequence[int] = (32, 64), dense: int = 128, rngs: nnx.Rngs):
    channels = [in_channels, *features]
    self.convs = nnx.List([nnx.Conv(a, b, (3, 3), rngs=rngs)
                           for a, b in zip(channels[:-1], channels[1:])])
    spatial = image_size // 2**len(features)
    self.dense = nnx.Linear(spatial * spatial * channels[-1], dense, rngs=rngs)
    self.head = nnx.Linear(dense, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    for conv in self.convs:
      x = nnx.max_pool(nnx.relu(conv(x)), (2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))
    return self.head(nnx.relu(self.dense(x)))
