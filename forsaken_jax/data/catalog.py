"""Loading datasets by name: local builders and the TFDS catalog.

`load_dataset` reads a whole split into host memory as an `ArrayDataset`.
The datasets used here hold at most ~100k small images (CIFAR-10 as float32
is ~0.7 GB), so reading everything once per phase is simpler and faster than
streaming; larger datasets should be read with `tfds.data_source` directly.

Reading never downloads unless the caller asks for it with `download=True`
and the network answers within a few seconds: an offline TFDS download
otherwise retries for minutes before failing.
"""

import importlib.util
import os
import socket
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from forsaken_jax.data import local_builders
from forsaken_jax.data import validation
from forsaken_jax.data.dataset import ArrayDataset
from forsaken_jax.data.errors import DatasetNotPreparedError

DATA_DIR_ENV = "FORSAKEN_JAX_DATA_DIR"

# The host TFDS downloads from; reachability is tested against it.
_DOWNLOAD_HOST = ("storage.googleapis.com", 443)
_REACHABILITY_TIMEOUT_S = 3.0

# Images are read from the data source in chunks of this many examples.
_READ_CHUNK = 4096

CATALOG_DESCRIPTIONS: dict[str, str] = {
    "mnist": "MNIST, 60k/10k 28x28x1, 10 classes (TFDS catalog; prepare first)",
    "fashion_mnist": "Fashion-MNIST, 60k/10k 28x28x1, 10 classes (TFDS catalog; prepare first)",
    "kmnist": "Kuzushiji-MNIST, 60k/10k 28x28x1, 10 classes (TFDS catalog; prepare first)",
    "emnist": "EMNIST byclass, 28x28x1, 62 classes, images stored transposed (TFDS catalog)",
    "cifar10": "CIFAR-10, 50k/10k 32x32x3, 10 classes (TFDS catalog; prepare first)",
    "cifar100": "CIFAR-100, 50k/10k 32x32x3, 100 fine classes (TFDS catalog; prepare first)",
    "svhn_cropped": "SVHN cropped digits, 73k/26k 32x32x3, 10 classes (TFDS catalog)",
}


def default_data_dir() -> str:
  """`$FORSAKEN_JAX_DATA_DIR`, else `~/.cache/forsaken_jax/tensorflow_datasets`."""
  return os.environ.get(DATA_DIR_ENV) or os.path.expanduser(
      os.path.join("~", ".cache", "forsaken_jax", "tensorflow_datasets"))


def available_datasets() -> dict[str, str]:
  """Names accepted by `load_dataset`, each with a one-line description.

  Local datasets work offline; catalog datasets must be prepared first (any
  other TFDS catalog name with `image` and `label` features works too).
  """
  return {**local_builders.LOCAL_DESCRIPTIONS, **CATALOG_DESCRIPTIONS}


def network_reachable(
    host: tuple[str, int] = _DOWNLOAD_HOST,
    *,
    timeout: float = _REACHABILITY_TIMEOUT_S,
) -> bool:
  """Whether a TCP connection to `host` opens within `timeout` seconds."""
  try:
    with socket.create_connection(host, timeout=timeout):
      return True
  except OSError:
    return False


def prepare_local(name: str, *, data_dir: str | None = None) -> None:
  """Prepares a local builder into `data_dir` once; cheap when already prepared.

  Args:
    name: a local dataset name (see `available_datasets`), optionally
      `name/config`.
    data_dir: TFDS data dir; defaults to `default_data_dir()`.

  Raises:
    ValueError: if `name` is not a local dataset.
    DatasetFilesNotFoundError: if the files the builder reads are missing.
  """
  local_builders.prepare_local_builder(name, data_dir=data_dir or default_data_dir())


def _base_name(name: str) -> str:
  """`"emnist/letters:3.1.0"` -> `"emnist"`."""
  return name.split("/")[0].split(":")[0]


def _not_prepared_message(name: str, data_dir: str, reason: str) -> str:
  return (
      f"dataset {name!r} is not prepared in array_record format in {data_dir} ({reason}). "
      f"To prepare it, on a machine with network access run:\n"
      f"  pip install 'forsaken_jax[tf]'\n"
      f"  python -m experiments.prepare_data --dataset {name} --data_dir {data_dir}\n"
      f"(it calls tfds' download_and_prepare with file_format='array_record'), or "
      f"use a local dataset that works offline: {sorted(local_builders.LOCAL_DESCRIPTIONS)}.")


def catalog_builder(name: str, *, data_dir: str) -> tfds.core.DatasetBuilder:
  """The TFDS catalog builder for `name`, set to the array_record format.

  Raises:
    ValueError: if `name` is neither a local nor a TFDS catalog dataset.
  """
  base = _base_name(name)
  if base not in tfds.list_builders(with_community_datasets=False):
    raise ValueError(
        f"unknown dataset {name!r}: not a local dataset "
        f"{sorted(local_builders.LOCAL_DESCRIPTIONS)} "
        f"nor a TFDS catalog dataset (tfds.list_builders())")
  try:
    return tfds.builder(name, data_dir=data_dir, file_format=local_builders.FILE_FORMAT)
  except ValueError as e:
    # TFDS refuses to switch the format of data that already exists.
    if "file format" not in str(e).lower():
      raise
    raise DatasetNotPreparedError(_not_prepared_message(
        name, data_dir,
        f"it exists there in another file format ({e}); random access needs array_record, "
        f"so prepare it into another data_dir")) from e


def prepare_catalog(name: str, *, data_dir: str | None = None) -> None:
  """Downloads and prepares a TFDS catalog dataset in array_record format.

  Checks first, within seconds, that the network is reachable and that
  TensorFlow (needed by TFDS to encode catalog images) is installed.

  Args:
    name: a TFDS catalog name, optionally `name/config`.
    data_dir: TFDS data dir; defaults to `default_data_dir()`.

  Raises:
    ValueError: for an unknown name.
    DatasetNotPreparedError: offline, or without TensorFlow.
  """
  data_dir = data_dir or default_data_dir()
  builder = catalog_builder(name, data_dir=data_dir)
  if builder.is_prepared():
    return
  if not network_reachable():
    raise DatasetNotPreparedError(_not_prepared_message(
        name, data_dir, f"download requested but {_DOWNLOAD_HOST[0]} is unreachable"))
  if importlib.util.find_spec("tensorflow") is None:
    raise DatasetNotPreparedError(_not_prepared_message(
        name, data_dir, "preparing a catalog dataset needs TensorFlow, which is not installed"))
  with local_builders.quiet_tfds():
    builder.download_and_prepare(file_format=local_builders.FILE_FORMAT)


def _read_split(source: Any, image_key: str, label_key: str) -> tuple[np.ndarray, np.ndarray]:
  """Reads every example of a TFDS data source into `(images, labels)`."""
  n = len(source)
  images = labels = None
  for start in range(0, n, _READ_CHUNK):
    keys = list(range(start, min(start + _READ_CHUNK, n)))
    try:
      chunk = source.__getitems__(keys)
    except TypeError:
      # `tfds.testing.mock_data` (4.9.x) installs a `__getitems__` that cannot
      # be called through the data source; single reads work there.
      chunk = [source[k] for k in keys]
    for offset, example in enumerate(chunk):
      missing = [k for k in (image_key, label_key) if k not in example]
      if missing:
        raise ValueError(
            f"examples have no feature(s) {missing}; available features: {sorted(example)}; "
            f"pass image_key= / label_key=")
      image = np.asarray(example[image_key])
      if image.ndim == 2:
        image = image[..., None]
      if images is None:
        images = np.empty((n, *image.shape), image.dtype)
        labels = np.empty((n,), np.int64)
      images[start + offset] = image
      labels[start + offset] = int(example[label_key])
  if images is None:
    raise ValueError("the split is empty")
  return images, labels


def load_dataset(
    name: str,
    split: str,
    *,
    data_dir: str | None = None,
    download: bool = False,
    image_key: str = "image",
    label_key: str = "label",
) -> ArrayDataset:
  """Reads a whole dataset split into host memory.

  Local datasets (`available_datasets()`; e.g. `"mnist5k_local"`,
  `"photo_patches_local/32x32x3"`) are prepared into `data_dir` on first use
  and work offline. Any other name goes to the TFDS catalog and must already
  be prepared in array_record format, unless `download=True` and the network
  is reachable.

  Args:
    name: dataset name, optionally `name/config` (TFDS syntax).
    split: split name, e.g. `"train"`, `"test"` (TFDS slicing such as
      `"train[:1000]"` is passed through).
    data_dir: TFDS data dir; defaults to `default_data_dir()`.
    download: for catalog datasets, download and prepare when missing. Never
      needed for local datasets.
    image_key: feature holding `uint8` images.
    label_key: `ClassLabel` feature holding labels (e.g. `"coarse_label"`
      for CIFAR-100's 20 superclasses).

  Returns:
    An `ArrayDataset` with float32 images in `[0, 1]` and int32 labels, named
    `"{name}[{split}]"`.

  Raises:
    ValueError: unknown dataset or split, missing or unsuitable features,
      images/labels count mismatch, labels outside `[0, num_classes)`.
    DatasetNotPreparedError: a catalog dataset is not prepared (and cannot be
      downloaded); the message says how to prepare it.
    DatasetFilesNotFoundError: the raw files of a local dataset are missing.
  """
  if not isinstance(name, str) or not name:
    raise ValueError(f"name must be a non-empty string, got {name!r}")
  if not isinstance(split, str) or not split:
    raise ValueError(f"split must be a non-empty string, got {split!r}")
  data_dir = data_dir or default_data_dir()
  if local_builders.is_local(name):
    builder = local_builders.prepare_local_builder(name, data_dir=data_dir)
  else:
    builder = catalog_builder(name, data_dir=data_dir)
    if download and not builder.is_prepared():
      prepare_catalog(name, data_dir=data_dir)
      builder = catalog_builder(name, data_dir=data_dir)

  # Splits are known only once the data is prepared (and are mocked under
  # tfds.testing.mock_data, where the dict is empty).
  known_splits = list(builder.info.splits) if builder.info.splits else []
  base_split = split.split("[")[0]
  if known_splits and base_split not in known_splits:
    raise ValueError(f"dataset {name!r} has no split {split!r}; splits: {sorted(known_splits)}")
  try:
    source = builder.as_data_source(split=split)
  except KeyError as e:
    # TFDS raises KeyError when no split was ever generated in data_dir.
    raise DatasetNotPreparedError(
        _not_prepared_message(name, data_dir, "nothing prepared there")) from e
  except (NotImplementedError, FileNotFoundError) as e:
    # A format without random access, or files removed after preparation.
    raise DatasetNotPreparedError(_not_prepared_message(name, data_dir, str(e))) from e

  features = builder.info.features
  for key in (image_key, label_key):
    if key not in features:
      raise ValueError(
          f"dataset {name!r} has no feature {key!r}; features: {sorted(features.keys())}")
  label_feature = features[label_key]
  if not isinstance(label_feature, tfds.features.ClassLabel):
    raise ValueError(f"feature {label_key!r} of {name!r} is not a ClassLabel: {label_feature}")
  num_classes = int(label_feature.num_classes)

  images, labels = _read_split(source, image_key, label_key)
  if images.dtype != np.uint8:
    raise ValueError(
        f"feature {image_key!r} of {name!r} must hold uint8 images, got {images.dtype}")
  validation.check_labels(images, labels, num_classes)
  return ArrayDataset(
      images=images.astype(np.float32) / np.float32(255.0),
      labels=labels.astype(np.int32),
      num_classes=num_classes,
      name=f"{name}[{split}]",
  )
