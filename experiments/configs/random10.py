r"""Forget a random 10% of the members (the common random-sample benchmark).

    python -m experiments.main --config experiments/configs/random10.py --workdir runs/random10

The default pipeline's data and model (2,400 Fashion-MNIST members, the MLP),
trained for 8,000 steps rather than the default's 2,000, without inserted
photos; the forget set is a random 10% of the members (200 images). Unlike
memorized outliers, random in-distribution samples are barely
distinguishable from unseen ones even on the original model, so forgetting
rates here rest on few "memorized" samples (docs/RESULTS.md reports them as
measured). About 25 minutes on a 2-core CPU.
"""

import ml_collections

from experiments.configs import default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = default.get_config(arg)
  config.scenario.kind = "random"
  config.scenario.num_ood = 0
  config.scenario.num_forget_ood = 0
  config.scenario.forget_fraction = 0.10
  # Random members are in-distribution: pushing them below the membership
  # threshold moves every similar image with them, so the hinge is kept weak
  # and the steps small to stay within two points of test accuracy
  # (docs/RESULTS.md shows the stronger settings and what they cost).
  config.unlearn.lr = 3e-4
  # The removal step (docs/METHOD.md) is measured on the default scenario;
  # this scenario's figures in docs/RESULTS.md (section 4) are the paper's
  # Forsaken, which it keeps.
  config.unlearn.shrink = 1.0
  config.unlearn.perturb = 0.0
  config.unlearn.repair_steps = 0
  config.unlearn.threshold_weight = 10.0
  if arg != "runlocal":
    # Random members leave a weaker membership signal than the photos; the
    # scenario keeps the longer training its figures in docs/RESULTS.md
    # (section 4) were measured with.
    config.train.steps = 8_000
  # The stronger settings, for `python -m experiments.sweep_unlearn`.
  config.sweep.variants = {
      "lr 3e-4, threshold weight 100": {"threshold_weight": 100.0},
      "lr 1e-4, threshold weight 100": {"lr": 1e-4, "threshold_weight": 100.0},
      "lr 3e-4, threshold weight 30, patience 40": {"threshold_weight": 30.0, "patience": 40},
      "lr 1e-3, threshold weight 100": {"lr": 1e-3, "threshold_weight": 100.0},
      "lr 1e-3, threshold weight 300 (the default scenario's)": {"lr": 1e-3,
                                                                 "threshold_weight": 300.0},
      "D_n from the target's non-members (the audit's look-alikes)": {
          "reference_split": "nonmembers"},
  }
  return config
