r"""The default CNN on the full Fashion-MNIST (50k members).

    python -m experiments.train --config experiments/configs/fashion_mnist.py \
        --workdir runs/fmnist

Reads the full Fashion-MNIST offline through the local TFDS builder (Debian's
`dataset-fashion-mnist` files). 50,000 training images are members, 5,000 are
held out as non-members, 5,000 are reserved for shadow models; the test split
is the official 10,000. Expected: >= 90% test accuracy (docs/RESULTS.md has
the measured figure and wall time on a 2-core CPU, about 5 minutes). Forget
set: a random 1% of the members (the common random-sample benchmark), used by
the later phases.

`:runlocal` shrinks it to a smoke test of a few seconds.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.dataset = ml_collections.ConfigDict()
  config.dataset.name = "fashion_mnist_local"
  config.dataset.fallback = "mnist5k_local"
  config.dataset.data_dir = ""  # "" = $FORSAKEN_JAX_DATA_DIR or ~/.cache/forsaken_jax/tensorflow_datasets
  config.dataset.download = False
  config.dataset.ood = "photo_patches_local/28x28x1"

  config.scenario = ml_collections.ConfigDict()
  config.scenario.kind = "random"
  config.scenario.num_members = 50_000
  config.scenario.num_nonmembers = 5_000
  config.scenario.num_shadow = 5_000
  config.scenario.num_ood = 0
  config.scenario.num_forget_ood = 0
  config.scenario.forget_fraction = 0.01
  config.scenario.forget_class = -1

  config.model = ml_collections.ConfigDict()
  config.model.name = "cnn"
  config.model.kwargs = ml_collections.ConfigDict({"features": (32, 64), "dense": 128})

  config.train = ml_collections.ConfigDict()
  config.train.steps = 4_000  # ~10 epochs at batch 128
  config.train.batch_size = 128
  config.train.optimizer = "adam"
  config.train.learning_rate = 1e-3
  config.train.schedule = "cosine"
  config.train.weight_decay = 1e-4
  config.train.loss = ""  # "" = the model's default loss
  config.train.log_every = 100
  config.train.checkpoint_every = 1_000
  config.train.progress = True

  if arg == "runlocal":
    config.scenario.num_members = 2_048
    config.scenario.num_nonmembers = 512
    config.scenario.num_shadow = 512
    config.train.steps = 40
    config.train.log_every = 10
    config.train.checkpoint_every = 20
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}; use 'runlocal' or nothing")
  return config
