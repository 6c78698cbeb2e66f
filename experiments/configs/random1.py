r"""Forget a random 1% of the members.

    python -m experiments.main --config experiments/configs/random1.py --workdir runs/random1

As `random10.py` with a forget set of 1% of the members (24 images). About 20
minutes on a 2-core CPU.
"""

import ml_collections

from experiments.configs import random10


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = random10.get_config(arg)
  config.scenario.forget_fraction = 0.01
  return config
