r"""Forget a random 1% of the members.

    python -m experiments.main --config experiments/configs/random1.py --workdir runs/random1

As `random10.py` with a forget set of 1% of the members (20 images). About 20
minutes on a 2-core CPU.
"""

import ml_collections

from experiments.configs import random10


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = random10.get_config(arg)
  config.scenario.forget_fraction = 0.01
  # With 20 samples the stop rule's threshold (fitted between them and D_n)
  # is coarse; the sweep shows what running on to the step budget gives.
  config.sweep.variants["no stop at the target (step budget or patience)"] = {
      "stop_at_target": False}
  return config
