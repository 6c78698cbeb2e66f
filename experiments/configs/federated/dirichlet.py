r"""The federated pipeline on a label-skewed federation: Dirichlet(0.5) shares.

    python -m experiments.federated.main --config experiments/configs/federated/dirichlet.py \
        --workdir runs/fed_dirichlet

As `iid.py`, but every class is divided over the 20 users by Dirichlet(0.5)
shares (Hsu et al. 2019), so each user sees a few classes mostly; the user
with the photos keeps them on top of its share. Same runtime as `iid.py`.
`:runlocal` shrinks it to a smoke test of under a minute.
"""

import ml_collections

from experiments.configs.federated import iid


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = iid.get_config()
  config.federated.partition = "dirichlet"
  config.federated.alpha = 0.5
  if arg == "runlocal":
    iid.shrink(config)
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}; use 'runlocal' or nothing")
  return config
