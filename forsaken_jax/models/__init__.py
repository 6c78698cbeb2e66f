"""Models: Flax Linen/NNX classifiers and the `(apply_fn, params)` adapters."""

from typing import Any, Sequence

from forsaken_jax.models.adapters import ApplyFn, ModelFns, Params, from_linen, from_nnx, split_nnx
from forsaken_jax.models.linen import CNN, MLP, Linear, ResNet18
from forsaken_jax.models.nnx import NnxCNN, NnxMLP

# name -> (constructor, the loss it is trained with by default)
_REGISTRY = {
    "mlp": (lambda num_classes, input_shape, **kw: from_linen(MLP(num_classes, **kw), input_shape),
            "cross_entropy"),
    "cnn": (lambda num_classes, input_shape, **kw: from_linen(CNN(num_classes, **kw), input_shape),
            "cross_entropy"),
    "resnet18": (lambda num_classes, input_shape, **kw: from_linen(ResNet18(num_classes, **kw),
                                                                  input_shape), "cross_entropy"),
    "logistic_regression": (lambda num_classes, input_shape: from_linen(Linear(num_classes),
                                                                        input_shape), "cross_entropy"),
    "linear_svm": (lambda num_classes, input_shape: from_linen(Linear(num_classes), input_shape),
                   "hinge"),
    "nnx_mlp": (lambda num_classes, input_shape, **kw: from_nnx(
        lambda rngs: NnxMLP(_prod(input_shape), num_classes, rngs=rngs, **kw)), "cross_entropy"),
    "nnx_cnn": (lambda num_classes, input_shape, **kw: from_nnx(
        lambda rngs: NnxCNN(input_shape[-1], num_classes, image_size=input_shape[0], rngs=rngs, **kw)),
                "cross_entropy"),
}

MODEL_NAMES = tuple(sorted(_REGISTRY))


def _prod(shape: Sequence[int]) -> int:
  size = 1
  for dim in shape:
    size *= dim
  return size


def create_model(name: str, *, num_classes: int, input_shape: Sequence[int], **kwargs: Any) -> ModelFns:
  """Builds a registered model.

  Args:
    name: one of `MODEL_NAMES`.
    num_classes: number of output classes.
    input_shape: shape of one example, e.g. `(28, 28, 1)`.
    **kwargs: architecture options (e.g. `hidden=(128,)` for "mlp",
      `features=(16, 32)` for "cnn", `width=32` for "resnet18").

  Returns:
    The model's `ModelFns`.
  """
  if name not in _REGISTRY:
    raise ValueError(f"unknown model {name!r}; choose one of {list(MODEL_NAMES)}")
  if num_classes < 2:
    raise ValueError(f"num_classes must be at least 2, got {num_classes}")
  return _REGISTRY[name][0](num_classes, tuple(input_shape), **kwargs)


def default_loss(name: str) -> str:
  """The loss a registered model is trained with (e.g. "hinge" for "linear_svm")."""
  if name not in _REGISTRY:
    raise ValueError(f"unknown model {name!r}; choose one of {list(MODEL_NAMES)}")
  return _REGISTRY[name][1]


__all__ = [
    "ApplyFn", "CNN", "Linear", "MLP", "MODEL_NAMES", "ModelFns", "NnxCNN", "NnxMLP", "Params",
    "ResNet18", "create_model", "default_loss", "from_linen", "from_nnx", "split_nnx",
]
