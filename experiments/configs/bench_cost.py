r"""The cost curve: unlearning against retraining as the training set grows.

    python -m experiments.bench_cost --workdir runs/bench_cost
    python -m experiments.bench_cost --config experiments/configs/bench_cost.py:quick \
        --workdir runs/bench_cost_quick
    python -m experiments.bench_cost --config experiments/configs/bench_cost.py:cnn \
        --workdir runs/bench_cost_cnn

The default scenario (200 private photo patches inserted among the members,
then forgotten) on 2,000, 10,000 and all of Fashion-MNIST's training images
(`-1` in `bench.sizes`: the whole train split less `scenario.num_nonmembers`
and `scenario.num_shadow`, plus the inserted patches). Every size trains the
same recipe for `bench.epochs` epochs (the steps grow with the size, as they
would for anyone retraining), with the default config's optimizer and batch
size; the unlearning methods run their fixed budgets (`unlearn`, and
`bench.methods`' steps). The model is the default config's MLP at every
size; `bench.cnn_from` puts the CNN of `fashion_mnist.py` on the sizes
from that many members on, and `:cnn` trains it at every size with
`fashion_mnist.py`'s recipe (far slower than the MLP on a CPU; meant for
accelerators). The expected result and the measured wall times are
in `<workdir>/bench_cost/results.md`.

`:quick` shrinks it to a smoke test on scikit-learn's 8x8 digits (two tiny
sizes, a few steps of everything) that runs in under a minute; `:runlocal`
is the same.
"""

import ml_collections

from experiments.configs import default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = default.get_config()
  # The nonmember and shadow splits only supply the unlearner's reference
  # photos here (the shadow split's unseen patches): keep them small so that
  # "all" is nearly the whole train split.
  config.scenario.num_nonmembers = 100
  config.scenario.num_shadow = 100

  config.bench = ml_collections.ConfigDict()
  # In-distribution members per size; -1 = every in-distribution image not in
  # the non-member or shadow split. The photo patches come on top.
  config.bench.sizes = (2_000, 10_000, -1)
  config.bench.epochs = 100  # the training recipe at every size
  # Sizes of at least this many members use the CNN below; 0 = the MLP everywhere.
  config.bench.cnn_from = 0
  config.bench.cnn = ml_collections.ConfigDict({"features": (32, 64), "dense": 128})
  # Test-accuracy evaluations spread over the retraining (the clock stops
  # while they run); retraining is done once within `tolerance` of the
  # original model's test accuracy.
  config.bench.retrain_evals = 50
  config.bench.tolerance = 0.005
  # The baselines of forsaken_jax.unlearn.METHODS, each with its step budget
  # and keyword arguments for `make_method` (empty: the paper's optimizer and
  # learning rate). Retained batches have `unlearn.batch_size` examples; the
  # forget set is one batch. Fine-tuning and l1-sparse get the removal step's
  # repair budget, gradient ascent the Forsaken loop's; shrink_perturb is the
  # removal step alone (its repair's steps and schedule).
  config.bench.methods = ml_collections.ConfigDict({
      "finetune": {"steps": 300, "kwargs": {}},
      "gradient_ascent": {"steps": 100, "kwargs": {}},
      "l1_sparse": {"steps": 300, "kwargs": {}},
      "shrink_perturb": {"steps": 300, "kwargs": {}},
  })
  config.train.progress = True

  if arg in ("quick", "runlocal"):  # runlocal: the name the other configs use
    config.dataset.name = "digits_local"
    config.dataset.fallback = ""
    config.dataset.ood = "photo_patches_local/8x8x1"
    config.scenario.num_nonmembers = 50
    config.scenario.num_shadow = 50
    config.scenario.num_ood = 60
    config.scenario.num_forget_ood = 20
    config.model.kwargs = ml_collections.ConfigDict({"hidden": (32,)})
    config.train.batch_size = 64
    config.train.learning_rate = 3e-3
    config.bench.sizes = (300, 600)
    config.bench.epochs = 4
    config.bench.retrain_evals = 4
    config.bench.tolerance = 0.05
    for method in config.bench.methods.values():
      method.steps = 3
    config.unlearn.max_steps = 3
    config.unlearn.patience = 4
    config.unlearn.repair_steps = 3
    config.unlearn.num_retain_batches = 2
    config.unlearn.batch_size = 32
    config.unlearn.num_reference = 64
    config.unlearn.fast_compile = True  # XLA optimization level 0: less compiling
  elif arg == "cnn":
    # The CNN at every size, with fashion_mnist.py's recipe (about 10 epochs
    # at batch 128, cosine decay, weight decay).
    config.bench.cnn_from = 1
    config.bench.epochs = 10
    config.train.batch_size = 128
    config.train.schedule = "cosine"
    config.train.weight_decay = 1e-4
    config.unlearn.host_loop = True  # the CNN's loops on a CPU (configs/default.py)
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}; use 'quick' (or 'runlocal'), 'cnn' "
                     "or nothing")
  return config
