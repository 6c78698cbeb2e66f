r"""The default CNN on the full Fashion-MNIST (50k members).

    python -m experiments.train --config experiments/configs/fashion_mnist.py \
        --workdir runs/fmnist

Reads the full Fashion-MNIST offline through the local TFDS builder (Debian's
`dataset-fashion-mnist` files). 50,000 training images are members, 5,000 are
held out as non-members, 5,000 are reserved for shadow models; the test split
is the official 10,000. Expected: >= 90% test accuracy (docs/RESULTS.md has
the measured figure and wall time on a 2-core CPU, about 15 minutes). Forget
set: a random 1% of the members (the common random-sample benchmark), used by
the later phases; the whole pipeline (`python -m experiments.main --config
experiments/configs/fashion_mnist.py`) is meant for accelerators.

`:runlocal` shrinks it to a smoke test of a few seconds.
"""

import ml_collections

from experiments.configs import default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = default.get_config()
  config.scenario.kind = "random"
  config.scenario.num_members = 50_000
  config.scenario.num_nonmembers = 5_000
  config.scenario.num_shadow = 5_000
  config.scenario.num_ood = 0
  config.scenario.num_forget_ood = 0
  config.scenario.forget_fraction = 0.01

  config.model.name = "cnn"
  config.model.kwargs = ml_collections.ConfigDict({"features": (32, 64), "dense": 128})

  config.train.steps = 4_000  # ~10 epochs at batch 128
  config.train.batch_size = 128
  config.train.schedule = "cosine"
  config.train.weight_decay = 1e-4
  config.train.log_every = 100
  config.train.checkpoint_every = 1_000

  if arg == "runlocal":
    config.scenario.num_members = 2_048
    config.scenario.num_nonmembers = 512
    config.scenario.num_shadow = 512
    config.train.steps = 40
    config.train.log_every = 10
    config.train.checkpoint_every = 20
    config.shadow.num_models = 4
    config.shadow.num_shokri_models = 2
    config.unlearn.host_loop = True  # a CNN on a CPU (configs/default.py)
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}; use 'runlocal' or nothing")
  return config
