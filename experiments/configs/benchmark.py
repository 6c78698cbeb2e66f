r"""The unlearning benchmark: every method on three scenarios over several seeds.

    python -m experiments.benchmark --config experiments/configs/benchmark.py \
        --workdir runs/benchmark
    python -m experiments.benchmark --config experiments/configs/benchmark.py:select \
        --workdir runs/benchmark          # the hyperparameter selection (validation seed)
    python -m experiments.benchmark --config experiments/configs/benchmark.py:quick \
        --workdir runs/benchmark_quick    # a smoke test on the 8x8 digits

`scenarios` names the experiment configs the benchmark can run (modules of
experiments/configs, called with `scenario_arg`), `run_scenarios` those it
runs, in table order, each changed by
`overrides` (nested like the config, e.g. `{"train": {"steps": 2000}}`) so
that every scenario trains as long and audits with as many shadow models.
`methods` lists what is run on each (scenario, seed): "forsaken" (the
scenario's own `unlearn` section) and the baselines of
`forsaken_jax.unlearn.METHODS`, each with its step budget, keyword arguments
and the hyperparameter the selection tunes (`tune`, scaled by
`selection.multipliers` around `base`). `selected[scenario][method]` holds
the tuned values; a method without one runs at its `base` (the report says
so). The selection rule and the figures it produced are in
docs/BENCHMARK.md.
"""

import ml_collections

# The field's baselines with their budgets. `base` is the starting value of
# the tuned hyperparameter: each paper's learning rate (forsaken_jax.unlearn
# .methods.PAPER_LR), IU's alpha, Forsaken's unlearn.lr (None: the scenario's).
# Retained-data methods get the removal step's 300 repair steps, forget-only
# ones the generator loop's 100.
_METHODS = {
    "forsaken": {"steps": 0, "tune": "lr", "base": None, "kwargs": {}},
    "finetune": {"steps": 300, "tune": "lr", "base": 1e-2, "kwargs": {}},
    "gradient_ascent": {"steps": 100, "tune": "lr", "base": 1e-4, "kwargs": {}},
    "random_labels": {"steps": 300, "tune": "lr", "base": 1e-2, "kwargs": {}},
    "neggrad_plus": {"steps": 300, "tune": "lr", "base": 1e-2, "kwargs": {}},
    "l1_sparse": {"steps": 300, "tune": "lr", "base": 1e-2, "kwargs": {}},
    "salun": {"steps": 300, "tune": "lr", "base": 1.3e-2, "kwargs": {}},
    # A third of SCRUB's steps alternate a max step with the min step, as its
    # recipe spends its first epochs (msteps) alternating.
    "scrub": {"steps": 300, "tune": "lr", "base": 5e-4, "kwargs": {"max_steps": 100}},
    "shrink_perturb": {"steps": 300, "tune": "lr", "base": 5e-3, "kwargs": {}},
    "boundary_shrink": {"steps": 100, "tune": "lr", "base": 1e-5, "kwargs": {}},
    "influence_unlearning": {"steps": 1, "tune": "alpha", "base": 0.2, "kwargs": {}},
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # name in the tables -> module of experiments/configs
  config.scenarios = ml_collections.ConfigDict(
      {"photos": "default", "random10": "random10", "class": "forget_class"})
  config.run_scenarios = ("photos", "random10", "class")  # which to run, in table order
  config.scenario_arg = ""  # passed to every scenario's get_config ("" = None)
  config.seeds = (0, 1, 2)
  # The same training length and audit for every scenario: the photo
  # scenario's 2,000 steps, and 8 LiRA shadow models instead of 16, so that
  # three scenarios times three seeds fit the CPU budget.
  config.overrides = ml_collections.ConfigDict({
      "train": {"steps": 2_000},
      "shadow": {"num_models": 8, "num_shokri_models": 2},
  })
  config.methods = ml_collections.ConfigDict(_METHODS)
  # The relearning attack of every model: this setting of the scenario's
  # evaluate.relearn (full-batch fine-tuning on the forget set).
  config.relearn_setting = "adam_1e-3"
  config.selection = ml_collections.ConfigDict()
  config.selection.seed = 100  # its models are never reported
  # Half-decade steps over four decades around each base value.
  config.selection.multipliers = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
  # The values the selection chose (python -m experiments.benchmark
  # --config ...:select; its table is in docs/BENCHMARK.md), per scenario and
  # method.
  config.selected = ml_collections.ConfigDict({
      "photos": {
          "forsaken": 0.003, "boundary_shrink": 0.001, "finetune": 0.1, "gradient_ascent": 3e-05,
          "influence_unlearning": 0.6, "l1_sparse": 0.1, "neggrad_plus": 0.0003,
          "random_labels": 0.003, "salun": 0.0039, "scrub": 1.5e-05, "shrink_perturb": 0.005
      },
      "random10": {
          "forsaken": 0.0003, "boundary_shrink": 3e-05, "finetune": 0.03,
          "gradient_ascent": 0.003, "influence_unlearning": 6.0, "l1_sparse": 0.03,
          "neggrad_plus": 0.03, "random_labels": 0.0003, "salun": 0.0013, "scrub": 0.00015,
          "shrink_perturb": 0.005
      },
      "class": {
          "forsaken": 0.0003, "boundary_shrink": 0.0001, "finetune": 0.1,
          "gradient_ascent": 0.0001, "influence_unlearning": 20.0, "l1_sparse": 0.1,
          "neggrad_plus": 0.03, "random_labels": 0.001, "salun": 0.0039, "scrub": 1.5e-05,
          "shrink_perturb": 0.005
      },
  })
  # The NeurIPS 2023 challenge's forgetting quality (experiments/challenge.py):
  # N originals and N retrained models per scenario (0 turns it off), on
  # the data of the scenario's run at `seed`.
  config.challenge = ml_collections.ConfigDict()
  config.challenge.num_models = 16
  config.challenge.scenarios = ("photos",)
  config.challenge.seed = 0
  config.progress = True

  if arg in ("quick", "runlocal"):
    config.scenario_arg = "runlocal"
    config.seeds = (0, 1)
    config.overrides = ml_collections.ConfigDict({
        "dataset": {"name": "digits_local", "fallback": "", "ood": "photo_patches_local/8x8x1"},
        "scenario": {"num_members": 300, "num_nonmembers": 150, "num_shadow": 150,
                     "num_test": 300},
        "model": {"kwargs": {"hidden": (32,)}},
        "train": {"steps": 60, "batch_size": 64, "learning_rate": 3e-3},
        "shadow": {"num_models": 4, "num_shokri_models": 2},
        "unlearn": {"max_steps": 3, "repair_steps": 3, "num_retain_batches": 2,
                    "batch_size": 32, "num_reference": 64},
        "evaluate": {"relearn": {"steps": 20}},
    })
    for method in config.methods.values():
      method.steps = min(method.steps, 3)
    config.challenge.num_models = 6  # the smallest with a split-half reference (3 + 3)
    config.selection.seed = 7
    config.selection.multipliers = (0.1, 1.0)
    # The full scenarios' choices do not carry over to the digits.
    config.selected = ml_collections.ConfigDict({"photos": {}, "random10": {}, "class": {}})
  elif arg == "select":
    config.select = True
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}; use 'quick', 'select' or nothing")
  if not config.get("select"):
    config.select = False
  return config
