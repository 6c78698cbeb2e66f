"""The fed_shadow phase: shadow federations for the membership oracles of the audit.

    python -m experiments.federated.shadow --workdir runs/fed [--config ...]

The oracles of Forsaken's papers and of LiRA are fitted on shadow models that
were trained like the target, some with and some without each candidate. In
a federation, "trained like the target" means a whole federation: the same
partition of the in-distribution data, the same FedAvg rounds, local epochs
and optimizer, with the owner holding a different half of the candidate
photos. `shadow.num_models` such federations train together, their
parameters stacked on a leading axis and one round of all of them one
`jax.vmap`-ed program.

The candidates (the "population") are the owner's private photos and the
audit's unseen look-alikes. `mia.balanced_keep_masks` puts every candidate in
exactly half of the shadow federations, where the owner trains on it beside
its in-distribution share. Those in/out halves feed both oracles of
`forsaken_jax.mia.audit`: online LiRA (per-photo Gaussians of the
logit-scaled confidence), and Shokri's attack classifier, trained on the
shadow federations' posteriors of their kept against their left-out photos.
The shadow federations aggregate in the clear: secure aggregation changes
the sum only by its fixed-point rounding, and the attacker simulating them
has no one to hide from.

Reads fed_train's checkpoint (read-only) for the federation, and writes
`<workdir>/fed_shadow/checkpoints`: the stacked parameters, the round, and, as
the splits item, the population and the keep masks. Resumable per round.
`shadow.num_models = 0` turns the phase (and the shadow-model oracles) off.
"""

import functools
import time
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np

from experiments import cli, common
from experiments.federated import federation as fedlib
from forsaken_jax import checkpoints, federated, mia, parallel
from forsaken_jax.mia import audit
from forsaken_jax.mia import shadow as shadow_lib

PHASE = "fed_shadow"
# The phase's own PRNG stream (federation.phase_key hashes the name).
_KEY_NAME = "fed_shadow"


def num_models(config: ml_collections.ConfigDict) -> int:
  """Shadow federations of the audit (0 = none: no shadow-model oracles)."""
  return int(config.get("shadow", {}).get("num_models", 0))


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError for a shadow setting the phase cannot run."""
  k = num_models(config)
  if k < 0 or k % 2:
    raise ValueError(f"shadow.num_models must be 0 (off) or an even number >= 2, got {k}")
  if k == 0:
    return
  if config.shadow.get("shokri_steps", 1) < 1:
    raise ValueError(f"shadow.shokri_steps must be positive, got {config.shadow.shokri_steps}")
  if config.federated.clients_per_round:
    raise ValueError("the shadow federations train every client in every round: set "
                     "federated.clients_per_round = 0, or shadow.num_models = 0")


def population(fed: fedlib.Federation) -> np.ndarray:
  """The candidates every shadow federation has an in/out opinion about (pool indices)."""
  return np.concatenate([fed.private, fed.lookalikes])


def shadow_partitions(fed: fedlib.Federation, keep: np.ndarray) -> list[federated.Partition]:
  """Shadow federation k's partition: the real one, the owner's photos replaced by its kept half.

  Args:
    fed: the federation.
    keep: bool `[K, P]`, candidate p in shadow federation k.

  Returns:
    K partitions.
  """
  cands = population(fed)
  owner_rest = np.setdiff1d(fed.partition.client(fed.owner), fed.private)
  parts = []
  for row in keep:
    clients = list(fed.partition.clients)
    clients[fed.owner] = np.sort(np.concatenate([owner_rest, cands[row]]))
    parts.append(federated.Partition(tuple(clients)))
  return parts


@functools.lru_cache(maxsize=4)
def stacked_round(fedavg: federated.FedAvg):
  """One plain FedAvg round of K federations as one program.

  Args:
    fedavg: the federation's `FedAvg` (its local training is reused).

  Returns:
    `round(params, data, keys) -> (params, metrics)`, every argument and
    result stacked on a leading federation axis `[K, ...]`; aggregation in
    the clear, padding slots weighted 0.
  """

  def one(params, data, key):
    updates, weights, metrics = fedavg.local_updates(params, data, jax.random.fold_in(key, 0))
    weights = jax.numpy.where(data.client_id != federated.PADDING_CLIENT, weights, 0.0)
    return federated.apply_update(params, federated.weighted_mean(updates, weights)), metrics

  return jax.jit(jax.vmap(one))


def stacked_data(fed: fedlib.Federation, parts: list[federated.Partition]
                 ) -> federated.ClientData:
  """Every client's data of every shadow federation, `[K, C, N, ...]`, padded to one shape."""
  ids = np.arange(fed.partition.num_clients)
  size = max(int(p.sizes.max()) for p in parts)
  stacks = [federated.gather_client_data(fed.images, fed.labels, p, ids, size=size,
                                         num_slots=fed.partition.num_clients) for p in parts]
  return jax.tree.map(lambda *xs: np.stack(xs), *stacks)


def fed_shadow(config: ml_collections.ConfigDict, workdir: str,
               stop_after: int | None = None) -> dict[str, Any]:
  """Runs the fed_shadow phase (see the module docstring).

  Args:
    config: the experiment config.
    workdir: the run directory; writes only `<workdir>/fed_shadow/`.
    stop_after: stop after this many rounds of this process (simulates a kill).

  Returns:
    The phase's summary (also written to `summary.json`).
  """
  check_config(config)
  k = num_models(config)
  if k == 0:
    common.log(f"[{PHASE}] shadow.num_models = 0: no shadow federations")
    return {"phase": PHASE, "num_models": 0}
  fed = fedlib.load_federation(config, workdir)
  key = fedlib.phase_key(config, _KEY_NAME)
  cands = population(fed)
  keep = np.asarray(mia.balanced_keep_masks(jax.random.fold_in(key, 0), k, len(cands)))
  num_rounds = int(config.federated.num_rounds)
  params = shadow_lib.stack([fed.model.init_fn(jax.random.fold_in(jax.random.fold_in(key, 1), j))
                             for j in range(k)])
  signature = {**common.signature(config, fedlib.SIGNATURE_SECTIONS),
               "shadow": {"num_models": k}}
  meta = fedlib.phase_meta(fed, PHASE, signature=signature, num_rounds=num_rounds, num_models=k)
  init = {"params": jax.device_get(params), "round": np.int32(0)}
  manager, state, elapsed_before = fedlib.open_phase(workdir, PHASE, init_state=init, meta=meta)
  splits = {"population": cands, "keep": keep.astype(np.int8)}
  start = int(state["round"])
  if start < num_rounds:
    data = stacked_data(fed, shadow_partitions(fed, keep))
    step = stacked_round(fed.fedavg)
    bar = common.progress(num_rounds, desc=PHASE, initial=start,
                          enabled=config.federated.get("progress", True))
    bar.unit = "round"
    t0 = time.perf_counter()
    elapsed = elapsed_before
    for r in range(start, num_rounds):
      round_keys = jax.vmap(lambda j: jax.random.fold_in(jax.random.fold_in(key, 2 + r), j))(
          np.arange(k))
      # Blocking every round keeps the host loop from running ahead of the
      # device (see parallel.block).
      new_params, metrics = parallel.block(step(state["params"], data, round_keys))
      if not all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(new_params)):
        bar.close()
        raise FloatingPointError(f"[{PHASE}] a shadow federation became non-finite in round "
                                 f"{r + 1}; lower federated.learning_rate")
      state = {"params": jax.device_get(new_params), "round": np.int32(r + 1)}
      bar.update(1)
      slots = np.asarray(data.client_id) != federated.PADDING_CLIENT
      bar.set_postfix(loss=f"{float(np.mean(np.asarray(metrics['loss'])[slots])):.3f}")
      now = elapsed_before + time.perf_counter() - t0
      if fedlib.end_round(manager, state, meta, phase=PHASE, r=r, start=start,
                          num_rounds=num_rounds,
                          checkpoint_every=config.federated.checkpoint_every, elapsed=now,
                          splits=splits, stop_after=stop_after, bar=bar):
        elapsed = now
    bar.close()
    manager.wait_until_finished()
    elapsed_before = elapsed
  else:
    common.log(f"[{PHASE}] already complete in {manager.directory}")
  summary = {"phase": PHASE, "num_models": k, "rounds": num_rounds, "seconds": elapsed_before,
             "population": int(len(cands)), "photos_per_shadow_owner": int(keep.sum(1).mean())}
  common.log(f"[{PHASE}] {k} shadow federations of {num_rounds} rounds, "
             f"{elapsed_before:.1f} s")
  return fedlib.write_summary(workdir, PHASE, summary)


# ----------------------------------------------------------------------------- the oracles


class ShadowOracles(NamedTuple):
  """The shadow-model oracles of a federated run, fitted on its original model."""

  oracles: audit.FittedOracles
  evidence: audit.ShadowEvidence
  population: np.ndarray  # pool indices of the candidates
  is_private: np.ndarray  # bool over the population: the owner's private photos
  alignment: audit.KeepAlignment


def load_oracles(config: ml_collections.ConfigDict, workdir: str, fed: fedlib.Federation,
                 original: Any) -> ShadowOracles | None:
  """Fits Shokri's and LiRA's oracles on the shadow federations.

  Returns:
    The fitted oracles, or None when the config has no shadow federations or
    the run has no finished fed_shadow phase (the audit goes on without them).

  Raises:
    checkpoints.CheckpointError: the shadow phase is of another federation,
      or about other candidates than this run's.
  """
  if num_models(config) == 0:
    return None
  if not fedlib.is_complete(workdir, PHASE):
    common.log(f"[evaluate] no finished {PHASE} phase in {workdir}: auditing without the "
               "shadow-model oracles")
    return None
  manager = checkpoints.open_manager(common.checkpoint_dir(workdir, PHASE), read_only=True)
  expected = fedlib.phase_meta(fed, PHASE, signature={})
  state, splits, meta = checkpoints.restore(manager, expected_meta=expected,
                                            check_keys=fedlib.UPSTREAM_KEYS)
  cands, keep = np.asarray(splits["population"]), np.asarray(splits["keep"]).astype(bool)
  if not np.array_equal(cands, population(fed)):
    raise checkpoints.CheckpointError(
        f"the shadow federations in {manager.directory} were trained on other candidates than "
        "this run's photos and look-alikes")
  labels = fed.labels[cands]
  logits = np.stack([fed.predict(shadow_lib.unstack(state["params"], j), fed.images[cands])
                     for j in range(keep.shape[0])])
  mode = config.shadow.get("shokri_features", "sorted_label")
  evidence = audit.shadow_evidence(lira_logits=logits, lira_keep=keep, population_labels=labels,
                                   shokri_logits=logits, shokri_keep=keep, shokri_labels=labels,
                                   shokri_mode=mode)
  alignment = audit.keep_alignment(evidence.lira_stats, evidence.lira_keep)
  is_private = np.isin(cands, fed.private)
  oracles = audit.fit_oracles(
      jax.random.fold_in(fedlib.phase_key(config, _KEY_NAME), 3), evidence,
      fed.predict(original, fed.images[cands]), labels, is_private, ~is_private,
      shokri_mode=mode, shokri_steps=int(config.shadow.get("shokri_steps", 1000)))
  return ShadowOracles(oracles, evidence, cands, is_private, alignment)


def verdicts(ctx: ShadowOracles, fed: fedlib.Federation, params: Any) -> dict[str, Any]:
  """Every shadow-model oracle's scores and member verdicts for one model on the population."""
  logits = fed.predict(params, fed.images[ctx.population])
  scores = audit.oracle_scores(ctx.oracles, ctx.evidence, logits, fed.labels[ctx.population])
  return {"scores": scores, "member": audit.judged_member(ctx.oracles, scores)}


def model_figures(ctx: ShadowOracles, judged: dict[str, Any],
                  before: dict[str, Any] | None) -> dict[str, Any]:
  """JSON figures of one model: each oracle's AUC (photos vs look-alikes), member rate, FR.

  Args:
    ctx: the fitted oracles.
    judged: `verdicts` of the model.
    before: `verdicts` of the original model (None for the original itself).
  """
  out = {}
  for name in ("shokri", "lira"):
    scores, member = judged["scores"][name], judged["member"][name]
    entry = {"auc": float(mia.roc_auc(scores[ctx.is_private], scores[~ctx.is_private])),
             "member_rate": float(member[ctx.is_private].mean())}
    if before is not None:
      rate = mia.forgetting_rate(before["member"][name][ctx.is_private], member[ctx.is_private],
                                 oracle=name)
      entry["forgetting_rate"] = {"rate": rate.rate, "b_t": rate.b_t, "b_f": rate.b_f,
                                  "a_f": rate.a_f, "n": rate.n}
    out[name] = entry
  return out


if __name__ == "__main__":
  cli.run(fed_shadow, default_config=fedlib.DEFAULT_CONFIG)
