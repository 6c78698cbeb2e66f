r"""The IID federation with the removal step in the owner's request.

    python -m experiments.federated.main --config experiments/configs/federated/removal.py \
        --workdir runs/fed_removal

As `iid.py`, but the owner's submission also carries Forsaken's removal step
(`federated.removal_update`): the request round lands the global model near
0.1 * theta' + 0.1 * theta_fresh, and `eliminate.extra_rounds` ordinary
rounds of the remaining federation repair it. The baselines' recovery rounds
follow the elimination's round count. docs/FEDERATED.md ("The removal step in
the federation") gives the measured forgetting, accuracy and runtime;
`:runlocal` shrinks it to a smoke test of under a minute.
"""

import ml_collections

from experiments.configs.federated import iid


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = iid.get_config()
  config.eliminate.removal_shrink = 0.1
  config.eliminate.removal_perturb = 0.1
  # The repair: the shrunk model trains back at about the pace of a fresh one.
  config.eliminate.extra_rounds = 10
  if arg == "runlocal":
    iid.shrink(config)
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}; use 'runlocal' or nothing")
  return config
