"""The baselines phase: other ways for the federation to let the owner's data go.

    python -m experiments.federated.baselines --workdir runs/fed [--config ...]

Every baseline is one entry of `BASELINES` (name -> `Baseline`): a one-off
unlearning step from the original global model (`unlearn`), then
`recovery_rounds` ordinary rounds of the remaining federation (the
federation without the request's data, as after the elimination). The
config lists the ones to run (`baselines.methods`); each writes its own
`<workdir>/baselines/<name>/` (checkpoints: the model after its step, then
every few recovery rounds; `summary.json`), reading fed_train read-only.

- "continue": no unlearning step, only as many rounds without the
  request's data as the eliminate phase runs (its request round included):
  does the memorization fade by itself?
- "fed_eraser" (Liu et al., IWQoS 2021; `federated.fed_eraser_step`): the
  server replays its stored rounds (fed_train with
  `federated.store_updates`) without the owner, from the initial model:
  the first stored round's remaining updates as they are, then, for every
  later stored round, a calibration round of the remaining clients
  (`baselines.fed_eraser.calibration_epochs`, default half the local
  epochs) whose direction gets the stored update's length. FedEraser
  forgets whole clients: the owner takes no part, whatever the request. It
  needs the clients' individual updates, which secure aggregation hides
  from the server: the stored updates stand for a server without it.
- "pga" (Halimi et al. 2022; `federated.make_projected_gradient_ascent`):
  the owner ascends its loss on D_u from the other clients' average model
  (`federated.pga_reference`, from the owner's local model trained from the
  final global model), within a ball of a third of the distance to random
  models (`federated.pga_radius`), stopping early once the loss passes
  `baselines.pga.max_loss`; then recovery rounds.

Adding a baseline is one entry in `BASELINES` (and its settings under
`config.baselines.<name>`).
"""

import time
from typing import Any, Callable, NamedTuple

import jax
import ml_collections
import numpy as np

from experiments import cli, common
from experiments.federated import fed_train as fed_train_phase
from experiments.federated import federation as fedlib
from forsaken_jax import checkpoints, federated, parallel

PHASE = "baselines"


class Context(NamedTuple):
  """What a baseline's unlearning step may use."""

  fed: fedlib.Federation
  original: Any  # the fed_train phase's final global model
  train_state: dict[str, Any]  # the fed_train phase's state (stored updates included)
  remaining: federated.Partition  # the federation without the request's data
  key: jax.Array  # the baseline's own PRNG key


class Baseline(NamedTuple):
  """One baseline (see the module docstring).

  Attributes:
    unlearn: `context -> (params, info)`: the unlearning step; `info` is a
      JSON-friendly dict for the summary.
    recovery_rounds: `config -> int`: ordinary rounds after the step.
  """

  unlearn: Callable[[Context], tuple[Any, dict[str, Any]]]
  recovery_rounds: Callable[[ml_collections.ConfigDict], int]


def elimination_rounds(config: ml_collections.ConfigDict) -> int:
  """The eliminate phase's rounds: its request round and the extra rounds."""
  return 1 + int(config.eliminate.extra_rounds)


def _continue(ctx: Context) -> tuple[Any, dict[str, Any]]:
  return ctx.original, {}


def _fed_eraser(ctx: Context) -> tuple[Any, dict[str, Any]]:
  fed, state = ctx.fed, ctx.train_state
  config = fed.config
  if "stored_updates" not in state:
    raise ValueError("fed_eraser needs the clients' stored updates: train the federation with "
                     "federated.store_updates=True")
  rounds = fed_train_phase.stored_rounds(config)
  epochs = (config.baselines.fed_eraser.calibration_epochs
            or max(1, config.federated.local_epochs // 2))
  calibration, _ = fedlib.make_fedavg(config, fed.spec, local_epochs=epochs)
  clients = np.asarray(state["stored_clients"])
  # Client-level forgetting: the owner's stored updates are left out.
  weights = np.where(clients == fed.owner, 0.0, np.asarray(state["stored_weights"]))
  without_owner = federated.Partition(tuple(
      np.zeros((0,), np.int64) if k == fed.owner else arr
      for k, arr in enumerate(ctx.remaining.clients)))

  def old_update(j):
    return federated.weighted_mean(jax.tree.map(lambda u: u[j], state["stored_updates"]),
                                   weights[j])

  params = parallel.block(federated.apply_update(state["initial_params"], old_update(0)))
  for j in range(1, len(rounds)):
    ids = clients[j][(clients[j] != federated.PADDING_CLIENT) & (clients[j] != fed.owner)]
    data = fedlib.client_data(fed, without_owner, ids)
    calibrated, _ = parallel.block(calibration.round(params, data,
                                                     fedlib.round_key(config, int(rounds[j]))))
    calibration_update = jax.tree.map(lambda new, old: new - old, calibrated, params)
    params = parallel.block(federated.fed_eraser_step(params, old_update(j), calibration_update))
  return params, {"stored_rounds": rounds.tolist(), "calibration_rounds": len(rounds) - 1,
                  "calibration_epochs": int(epochs),
                  "stored_bytes": federated.tree_bytes((state["stored_updates"],
                                                        state["stored_weights"],
                                                        state["initial_params"]))}


def _pga_batches(fed: fedlib.Federation, indices: np.ndarray, *, epochs: int, batch_size: int,
                 seed: int) -> dict[str, np.ndarray]:
  """`epochs` shuffled passes over `indices` in full batches, stacked `[S, B]`."""
  batch_size = min(batch_size, len(indices))
  per_epoch = len(indices) // batch_size
  rng = np.random.default_rng([seed, 21])
  order = np.concatenate([rng.permutation(indices)[:per_epoch * batch_size]
                          for _ in range(epochs)]).reshape(-1, batch_size)
  return {"image": fed.images[order], "label": fed.labels[order]}


def _pga(ctx: Context) -> tuple[Any, dict[str, Any]]:
  fed = ctx.fed
  config, pc = fed.config, fed.config.baselines.pga
  num_rounds = config.federated.num_rounds
  # The owner's local model: its training from the final global model, as in
  # the round that would follow (the round's other clients give W).
  ids = fedlib.round_clients(fed, num_rounds, fed.partition, include_owner=True)
  data = fedlib.client_data(fed, fed.partition, ids)
  updates, weights, _ = parallel.block(fed.fedavg.local_updates(
      ctx.original, data, jax.random.fold_in(fedlib.round_key(config, num_rounds), 0)))
  slot = int(np.flatnonzero(np.asarray(data.client_id) == fed.owner)[0])
  weights = np.asarray(weights)
  owner_model = jax.tree.map(lambda p, u: p + u[slot], ctx.original, updates)
  # FedAvg weighs clients by their examples: with N = W / w_u, (N theta - theta_u) / (N - 1)
  # is the weighted average of the other clients' models.
  effective_clients = float(weights.sum() / weights[slot])
  reference = federated.pga_reference(ctx.original, owner_model, effective_clients)
  randoms = [fed.model.init_fn(jax.random.fold_in(ctx.key, i))
             for i in range(pc.num_random_models)]
  radius = federated.pga_radius(reference, randoms, fraction=pc.radius_fraction)
  forget = fedlib.request_data(fed).forget
  batches = _pga_batches(fed, forget, epochs=pc.epochs, batch_size=pc.batch_size,
                         seed=config.seed)
  ascend = federated.make_projected_gradient_ascent(fed.model.apply_fn, lr=pc.lr,
                                                    max_loss=pc.max_loss)
  # Halimi et al. start the ascent from the reference model.
  params, info = parallel.block(ascend(reference, reference, radius, batches))
  return params, {"ascent_steps": int(info["steps"]), "ascent_budget": int(len(batches["label"])),
                  "radius": float(radius), "effective_clients": effective_clients,
                  "highest_loss": float(np.nanmax(np.asarray(info["loss"])))}


def _pga_recovery(config: ml_collections.ConfigDict) -> int:
  rounds = config.baselines.pga.recovery_rounds
  return elimination_rounds(config) if rounds < 0 else int(rounds)


BASELINES: dict[str, Baseline] = {
    "continue": Baseline(_continue, elimination_rounds),
    "fed_eraser": Baseline(_fed_eraser, lambda config: 0),
    "pga": Baseline(_pga, _pga_recovery),
}


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError for an unknown baseline name."""
  unknown = [m for m in config.baselines.methods if m not in BASELINES]
  if unknown:
    raise ValueError(f"baselines.methods holds unknown baselines {unknown}; choose from "
                     f"{tuple(BASELINES)}")


def phase_name(name: str) -> str:
  """The phase (and directory under the workdir) of one baseline."""
  return f"{PHASE}/{name}"


def run_baseline(config: ml_collections.ConfigDict, workdir: str, name: str, *,
                 fed: fedlib.Federation, original: Any, train_state: dict[str, Any],
                 stop_after: int | None = None) -> dict[str, Any]:
  """Runs one baseline into `<workdir>/baselines/<name>/`, resuming if possible."""
  baseline = BASELINES[name]
  phase = phase_name(name)
  num_rounds = baseline.recovery_rounds(config)
  settings = config.baselines[name].to_dict() if name in config.baselines else {}
  signature = {**common.signature(config, fedlib.SIGNATURE_SECTIONS),
               "request": config.eliminate.request, "baseline": name, "settings": settings,
               "recovery_rounds": num_rounds}
  meta = fedlib.phase_meta(fed, phase, signature=signature, num_rounds=int(num_rounds))
  init = fedlib.round_state(original, num_rounds, unlearned_params=jax.device_get(original))
  manager, state, elapsed_before = fedlib.open_phase(workdir, phase, init_state=init, meta=meta)
  if manager.latest_step() is None:
    # The unlearning step, checkpointed on its own (step 0) before any round.
    start = time.perf_counter()
    context = Context(fed, original, train_state, fedlib.remaining_partition(fed),
                      fedlib.phase_key(config, name))
    with common.compile_time_meter() as compile_times:
      params, info = baseline.unlearn(context)
    unlearn_seconds = time.perf_counter() - start
    info = {**info, "unlearn_seconds": unlearn_seconds, "compile_seconds": dict(compile_times)}
    params = jax.device_get(params)
    state = {**state, "params": params, "unlearned_params": params}
    meta = {**meta, "baseline": info}
    elapsed_before = unlearn_seconds
    fedlib.save(manager, state, meta, complete=num_rounds == 0, elapsed=elapsed_before)
    manager.wait_until_finished()
  else:
    meta = {**meta, "baseline": checkpoints.read_meta(manager)["baseline"]}
    info = meta["baseline"]
  state, seconds = fedlib.run_rounds(
      fed, phase=phase, manager=manager, meta=meta, state=state, num_rounds=num_rounds,
      first_round=config.federated.num_rounds, partition=fedlib.remaining_partition(fed),
      elapsed_before=elapsed_before, stop_after=stop_after)
  summary = {"phase": phase, "baseline": name, **info, "recovery_rounds": int(num_rounds),
             "seconds": seconds,
             "test_accuracy_per_round": np.asarray(state["test_accuracy"])[:num_rounds].tolist(),
             "test_accuracy": fedlib.accuracy(fed, state["params"])}
  common.log(f"[{phase}] unlearning step {info['unlearn_seconds']:.2f} s, {num_rounds} recovery "
             f"rounds; test accuracy {summary['test_accuracy']:.4f}")
  return fedlib.write_summary(workdir, phase, summary)


def run_baselines(config: ml_collections.ConfigDict, workdir: str,
                  stop_after: int | None = None) -> dict[str, Any]:
  """Runs every baseline of `baselines.methods` (see the module docstring)."""
  check_config(config)
  fed = fedlib.load_federation(config, workdir)
  train_state, _ = fedlib.load_phase_state(fed, workdir, fedlib.TRAIN_PHASE)
  summaries = {}
  for name in config.baselines.methods:
    if name == "fed_eraser" and "stored_updates" not in train_state:
      common.log(f"[{PHASE}] skipping fed_eraser: fed_train stored no client updates "
                 "(federated.store_updates=False)")
      continue
    summaries[name] = run_baseline(config, workdir, name, fed=fed,
                                   original=train_state["params"], train_state=train_state,
                                   stop_after=stop_after)
  return summaries


if __name__ == "__main__":
  cli.run(run_baselines, default_config=fedlib.DEFAULT_CONFIG)
