"""The eliminate phase: the owner's elimination request, sent through an ordinary round.

    python -m experiments.federated.eliminate --workdir runs/fed [--config ...]

Reads the fed_train phase's final global model and partition (read-only).
The owner, holding the global model and its own data only, splits its data
for the configured request (`federated.request_indices`: D_u its private
photos or its whole contribution, D_r its other data, D_n photos it holds but
never uploaded), trains its generator locally (`federated.elimination_update`,
the library's defaults except those in `eliminate.forsaken`) and submits the
dummy update, scaled as `eliminate.scaling` says
(`federated.elimination_request`), as its client update in one normal round
of the federation, masked like every other update. With the removal step
(`eliminate.removal_shrink` < 1 or `eliminate.removal_perturb` > 0) the
submission also carries Forsaken's shrink-and-perturb
(`federated.removal_update`, theta_fresh drawn from the owner's own key), so
that the round lands the global model near
`removal_shrink * theta' + removal_perturb * theta_fresh`. Then
`eliminate.extra_rounds` ordinary rounds of the remaining federation follow
(the federation without D_u: for request "private" the owner keeps taking
part with its other data); after the removal step they are its repair.

Writes `<workdir>/eliminate/checkpoints` (the global model, the model right
after the request round, per-round test accuracy and wall time; the request's
figures in the meta) and `summary.json`: the generator's steps and wall time,
the request round's time, and the unlearning wall time (generator plus
request round) that the evaluate phase sets beside retraining.
"""

import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments import cli, common
from experiments.federated import federation as fedlib
from forsaken_jax import checkpoints, federated, parallel

PHASE = "eliminate"
SIGNATURE_SECTIONS = fedlib.SIGNATURE_SECTIONS + ("eliminate",)


def _batch(fed: fedlib.Federation, indices: np.ndarray) -> dict[str, jax.Array]:
  return {"image": jnp.asarray(fed.images[indices]), "label": jnp.asarray(fed.labels[indices])}


def _jsonable(info: dict[str, Any]) -> dict[str, Any]:
  return {k: (np.asarray(v).tolist() if isinstance(v, (np.ndarray, jax.Array)) else v)
          for k, v in info.items() if k not in ("accepted_trace",)}


def removal_on(config: ml_collections.ConfigDict) -> bool:
  """Whether the owner's submission carries the removal step."""
  ec = config.eliminate
  return ec.removal_shrink != 1.0 or ec.removal_perturb != 0.0


def elimination(fed: fedlib.Federation,
                params: Any) -> tuple[federated.EliminationResult, Any, float]:
  """The owner's dummy update, the update it submits (before scaling), and their wall time."""
  ec = fed.config.eliminate
  req = fedlib.request_data(fed)
  start = time.perf_counter()
  key = fedlib.phase_key(fed.config, "eliminate")
  result = federated.elimination_update(
      fed.model.apply_fn, params, _batch(fed, req.forget), _batch(fed, req.retain),
      _batch(fed, req.reference), key=key, **ec.forsaken.to_dict())
  submitted = result.update
  if removal_on(fed.config):
    fresh = fed.model.init_fn(jax.random.fold_in(key, 1))
    submitted = federated.removal_update(params, result.update, fresh,
                                         shrink=ec.removal_shrink, perturb=ec.removal_perturb)
  parallel.block((result.update, result.params, submitted))
  return result, submitted, time.perf_counter() - start


def _norm(tree: Any) -> float:
  return float(np.sqrt(sum(np.sum(np.square(np.asarray(u))) for u in jax.tree.leaves(tree))))


def eliminate(config: ml_collections.ConfigDict, workdir: str,
              stop_after: int | None = None) -> dict[str, Any]:
  """Runs the eliminate phase (see the module docstring).

  Args:
    config: the experiment config.
    workdir: the run directory; writes only `<workdir>/eliminate/`.
    stop_after: stop after this many rounds of this process (1: right after
      the request round), without a further checkpoint; simulates a kill.

  Returns:
    The phase summary (also written to `summary.json`).
  """
  ec = config.eliminate
  fed = fedlib.load_federation(config, workdir)
  original, _ = fedlib.load_phase_state(fed, workdir, fedlib.TRAIN_PHASE)
  original = original["params"]
  num_rounds = 1 + ec.extra_rounds
  meta = fedlib.phase_meta(fed, PHASE, signature=common.signature(config, SIGNATURE_SECTIONS),
                           num_rounds=int(num_rounds))
  manager, state, elapsed_before = fedlib.open_phase(
      workdir, PHASE, init_state=fedlib.round_state(original, num_rounds,
                                                    request_params=jax.device_get(original)),
      meta=meta)
  remaining = fedlib.remaining_partition(fed)
  owner_weight = float(fed.partition.sizes[fed.owner])
  if int(state["round"]) == 0:
    with common.compile_time_meter() as compile_times:
      result, update, request_seconds = elimination(fed, original)
    info = {**_jsonable(result.info), "request_seconds": request_seconds,
            "compile_seconds": dict(compile_times), "update_norm": _norm(result.update),
            "submitted_norm": _norm(update)}
  else:
    info, update = checkpoints.read_meta(manager)["elimination"], None
    common.log(f"[{PHASE}] the request round is done (in {manager.directory}); "
               f"{int(state['round'])} of {num_rounds} rounds")
  meta = {**meta, "elimination": info}

  def submit(r, state, data):
    if r > 0:
      return None
    # The server announces the round's total weight W to its clients.
    total_weight = float(np.sum(data.weight))
    info["total_weight"] = total_weight
    return federated.elimination_request(fed.owner, update, weight=owner_weight,
                                         scaling=ec.scaling, total_weight=total_weight)

  def keep_request_model(r, state):
    return {**state, "request_params": jax.device_get(state["params"])} if r == 0 else state

  state, seconds = fedlib.run_rounds(
      fed, phase=PHASE, manager=manager, meta=meta, state=state, num_rounds=num_rounds,
      first_round=config.federated.num_rounds,
      partition=lambda r: fed.partition if r == 0 else remaining,
      include_owner=lambda r: r == 0, override=submit, after_round=keep_request_model,
      save_after=lambda r: r == 0, elapsed_before=elapsed_before, stop_after=stop_after)
  round_seconds = np.asarray(state["round_seconds"], np.float64)
  summary = {
      "phase": PHASE, "request": ec.request, "scaling": ec.scaling,
      "removal_shrink": float(ec.removal_shrink), "removal_perturb": float(ec.removal_perturb),
      "rounds": int(num_rounds), "extra_rounds": int(ec.extra_rounds),
      "generator_steps": info["steps"], "accepted_steps": info["accepted"],
      "stop_reason": info["stop_reason"], "oracle_threshold": info["oracle_threshold"],
      "target_rate": info["target_rate"], "update_norm": info["update_norm"],
      # Before the scaling: the dummy update plus the removal step's move, if any.
      "submitted_norm": info.get("submitted_norm", info["update_norm"]),
      "owner_weight": owner_weight, "total_weight": info.get("total_weight"),
      "request_seconds": info["request_seconds"],
      "request_round_seconds": float(round_seconds[0]),
      # The elimination itself: the owner's generator and the round that carries it.
      "unlearning_seconds": info["request_seconds"] + float(round_seconds[0]),
      "seconds": seconds, "compile_seconds": info["compile_seconds"],
      "test_accuracy_per_round": np.asarray(state["test_accuracy"]).tolist(),
      "test_accuracy": float(state["test_accuracy"][-1]),
  }
  removal = (f", removal step (shrink {ec.removal_shrink}, perturb {ec.removal_perturb})"
             if removal_on(config) else "")
  common.log(f"[{PHASE}] request {ec.request!r} ({ec.scaling}{removal}): {info['steps']} "
             f"generator steps ({info['stop_reason']}) in {info['request_seconds']:.2f} s, "
             f"request round "
             f"{round_seconds[0]:.2f} s, then {ec.extra_rounds} rounds; test accuracy "
             f"{summary['test_accuracy']:.4f}")
  return fedlib.write_summary(workdir, PHASE, summary)


if __name__ == "__main__":
  cli.run(eliminate, default_config=fedlib.DEFAULT_CONFIG)
