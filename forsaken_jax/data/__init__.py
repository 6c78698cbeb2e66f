"""Datasets, splits and batching.

Every dataset goes through tensorflow-datasets in array_record format, read
without TensorFlow:

* local datasets (`fashion_mnist_local`, `mnist5k_local`, `digits_local`,
  `photo_patches_local/{28x28x1,32x32x3}`) are built offline from files on
  the machine, prepared into the data dir on first use;
* any TFDS catalog dataset (`mnist`, `cifar10`, ...) once prepared with
  `python -m experiments.prepare_data --dataset NAME`.

`load_dataset` returns an `ArrayDataset` (float32 NHWC images in `[0, 1]`,
int32 labels) in host memory; `build_pool` and `make_splits` turn datasets
into the index sets of an experiment; `batch_indices` picks resumable batches.
`build_backdoor_pool` and `stamp_trigger` make backdoor (trigger patch,
target label) samples; `attack_success_rate` measures a backdoor.

Example:
  >>> import numpy as np
  >>> from forsaken_jax import data
  >>> train = data.load_dataset("digits_local", "train")
  >>> test = data.load_dataset("digits_local", "test")
  >>> splits = data.make_splits(train.labels, np.zeros(len(train), bool), len(test),
  ...     num_members=700, num_nonmembers=400, num_shadow=300,
  ...     scenario="random", forget_fraction=0.1, seed=0)
"""

from forsaken_jax.data.backdoor import attack_success_rate
from forsaken_jax.data.backdoor import BackdoorPool
from forsaken_jax.data.backdoor import build_backdoor_pool
from forsaken_jax.data.backdoor import stamp_trigger
from forsaken_jax.data.batching import batch_indices
from forsaken_jax.data.batching import process_batch_slice
from forsaken_jax.data.batching import steps_per_epoch
from forsaken_jax.data.catalog import available_datasets
from forsaken_jax.data.catalog import default_data_dir
from forsaken_jax.data.catalog import load_dataset
from forsaken_jax.data.catalog import network_reachable
from forsaken_jax.data.catalog import prepare_catalog
from forsaken_jax.data.catalog import prepare_local
from forsaken_jax.data.dataset import ArrayDataset
from forsaken_jax.data.errors import DatasetFilesNotFoundError
from forsaken_jax.data.errors import DatasetNotPreparedError
from forsaken_jax.data.errors import DatasetUnavailableError
from forsaken_jax.data.local_builders import fashion_mnist_available
from forsaken_jax.data.local_builders import is_local
from forsaken_jax.data.splits import build_pool
from forsaken_jax.data.splits import ExperimentData
from forsaken_jax.data.splits import make_splits
from forsaken_jax.data.splits import SCENARIOS
from forsaken_jax.data.splits import Splits
from forsaken_jax.data.validation import check_disjoint
from forsaken_jax.data.validation import check_forget_set
from forsaken_jax.data.validation import check_indices
from forsaken_jax.data.validation import check_labels

__all__ = [
    "ArrayDataset",
    "BackdoorPool",
    "DatasetFilesNotFoundError",
    "DatasetNotPreparedError",
    "DatasetUnavailableError",
    "ExperimentData",
    "SCENARIOS",
    "Splits",
    "attack_success_rate",
    "available_datasets",
    "batch_indices",
    "build_backdoor_pool",
    "build_pool",
    "check_disjoint",
    "check_forget_set",
    "check_indices",
    "check_labels",
    "default_data_dir",
    "fashion_mnist_available",
    "is_local",
    "load_dataset",
    "make_splits",
    "network_reachable",
    "prepare_catalog",
    "prepare_local",
    "process_batch_slice",
    "stamp_trigger",
    "steps_per_epoch",
]
