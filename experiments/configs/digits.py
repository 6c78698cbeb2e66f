r"""A seconds-long configuration on scikit-learn's 8x8 digits.

    python -m experiments.train --config experiments/configs/digits.py --workdir runs/digits

For smoke tests and the test suite: 1,000 members (plus 20 inserted 8x8
"private photo" patches with arbitrary labels, the forget set), a small MLP,
a few hundred steps. Runs in well under a minute on a 2-core CPU.
"""

import ml_collections

from experiments.configs import default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = default.get_config()
  config.dataset.name = "digits_local"
  config.dataset.fallback = ""
  config.dataset.ood = "photo_patches_local/8x8x1"
  config.scenario.num_members = 1_000
  config.scenario.num_nonmembers = 200
  config.scenario.num_shadow = 200
  config.scenario.num_ood = 60
  config.scenario.num_forget_ood = 20
  config.model.name = "mlp"
  config.model.kwargs = ml_collections.ConfigDict({"hidden": (64,)})
  config.train.steps = 300
  config.train.batch_size = 64
  config.train.learning_rate = 3e-3
  config.train.log_every = 50
  config.train.checkpoint_every = 100
  config.evaluate.relearn.steps = 150
  if arg == "runlocal":
    config.train.steps = 30
    config.train.checkpoint_every = 10
    config.shadow.num_models = 4
    config.shadow.num_shokri_models = 2
    config.shadow.checkpoint_every = 10
    config.evaluate.relearn.steps = 40
    config.unlearn.repair_steps = 5
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}; use 'runlocal' or nothing")
  return config
