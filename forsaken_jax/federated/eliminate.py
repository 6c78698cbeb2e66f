"""User-level memorization elimination: a Forsaken dummy update sent as an ordinary update.

The requesting user holds the current global model theta and its own data
only. It splits that data (`request_indices`) into

- D_u, what to eliminate: its private photos (request "private"), or all of
  its training data (request "all", its whole contribution);
- D_r, its remaining training data (the retain loss omega of Forsaken);
- D_n, a local reference of non-members: data it holds but never trained on
  (for photos, other photos of the same kind).

It trains its own generator locally with the library's Forsaken loop
(`elimination_update`, which reuses `unlearn.make_forsaken`), obtaining
theta', and submits `theta' - theta` as its client update in a normal round
(`fedavg.ClientOverride`), masked and aggregated like every other update.

The server divides the weighted sum of updates by the total weight, so a
submission is scaled by the user's share `w_u / W`. `scale_update` chooses
how the user compensates (docs/FEDERATED.md discusses the options):
"inverse_share" multiplies by `W / w_u`, so the dummy update reaches the
global model at full strength; "none" submits it as is (diluted).

The removal step (`removal_update`, optional) adds Forsaken's
shrink-and-perturb to the submission, so that the aggregate lands on
`shrink * theta' + perturb * theta_fresh` instead of theta'; the ordinary
rounds that follow, without the eliminated data, are its repair.

  req = request_indices(partition.client(u), private=photos, holdout=held_out)
  result = elimination_update(apply_fn, params, batch(req.forget), batch(req.retain),
                              batch(req.reference), key=key)
  fresh = model.init_fn(own_key)  # optional: the removal step
  delta = removal_update(params, result.update, fresh, shrink=0.1, perturb=0.1)
  submitted = scale_update(delta, scaling="inverse_share",
                           weight=w_u, total_weight=W)
  params, _ = fedavg.round(params, data, round_key,
                           override=ClientOverride(u, submitted, w_u))
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from forsaken_jax import mia
from forsaken_jax import unlearn
from forsaken_jax.data import validation
from forsaken_jax.federated.fedavg import ClientOverride
from forsaken_jax.unlearn import reference as reference_lib
from forsaken_jax.models import ApplyFn, Params

REQUESTS = ("private", "all")
SCALINGS = ("none", "inverse_share")

Batch = dict[str, Any]

__all__ = ["EliminationResult", "REQUESTS", "RequestData", "SCALINGS", "elimination_request",
           "elimination_update", "removal_update", "request_indices", "scale_update"]


class RequestData(NamedTuple):
  """The user's data for an elimination request, as indices into the collection.

  Attributes:
    forget: D_u, the examples whose memorization is eliminated.
    retain: D_r, training data whose loss the elimination keeps low.
    reference: D_n, non-members of D_u's kind (never trained on).
  """

  forget: np.ndarray
  retain: np.ndarray
  reference: np.ndarray


def request_indices(user_indices: Any, *, holdout: Any, request: str = "private",
                    private: Any = None, seed: int = 0) -> RequestData:
  """Splits a user's data into D_u, D_r and D_n for one request.

  Args:
    user_indices: the user's training data (its partition share).
    holdout: data the user holds but never trained on (its local
      reference); disjoint from `user_indices`.
    request: "private" (eliminate `private`) or "all" (the whole
      contribution).
    private: request "private": the indices to eliminate, a non-empty
      subset of `user_indices`.
    seed: request "all": seed of the split of `holdout` in two halves.

  Returns:
    A `RequestData`. For "private": D_u = private, D_r = the user's other
    training data, D_n = holdout. For "all": D_u = all its training data;
    with no training data left to retain, one half of the holdout serves as
    D_r (its loss stands for accuracy on the user's kind of data) and the
    other as D_n.
  """
  if request not in REQUESTS:
    raise ValueError(f"request must be one of {REQUESTS}, got {request!r}")
  user_indices = np.sort(validation.check_indices("user_indices", user_indices, None))
  holdout = np.sort(validation.check_indices("holdout", holdout, None))
  validation.check_disjoint(user_indices=user_indices, holdout=holdout)
  if request == "private":
    if private is None or np.asarray(private).size == 0:
      raise ValueError("request 'private' needs a non-empty private set (the indices to "
                       "eliminate); use request='all' to eliminate the whole contribution")
    forget = np.sort(validation.check_forget_set(private, user_indices, forget_name="private",
                                                 members_name="the user's data"))
    retain = np.setdiff1d(user_indices, forget)
    if retain.size == 0:
      raise ValueError("private covers all of the user's data; use request='all'")
    return RequestData(forget, retain, holdout)
  if private is not None:
    raise ValueError("request 'all' eliminates all of the user's data; do not pass private")
  if holdout.size < 2:
    raise ValueError(f"request 'all' splits the holdout into D_r and D_n and needs at least 2 "
                     f"examples, got {holdout.size}")
  shuffled = np.random.default_rng([seed, 0]).permutation(holdout)
  half = holdout.size // 2
  return RequestData(user_indices, np.sort(shuffled[:half]), np.sort(shuffled[half:]))


class EliminationResult(NamedTuple):
  """Result of `elimination_update`.

  Attributes:
    update: the dummy update `theta' - theta` (the global model's shapes).
    params: theta', the locally unlearned model.
    info: `unlearn.summarize` of the loop, plus `oracle_threshold` and
      `target_rate` of the local stopping oracle.
  """

  update: Params
  params: Params
  info: dict[str, Any]


def elimination_update(apply_fn: ApplyFn, global_params: Params, forget_batch: Batch,
                       retain_batch: Batch, reference_batch: Batch, *, key: jax.Array,
                       generator: str = "coordinatewise",
                       objective: str = "relative_confidence_matching",
                       threshold_weight: float = 300.0, retain_weight: float = 1000.0,
                       lr: float = 1e-3, generator_lr: float = 1e-2,
                       mask_fraction: float | None = None, stop_at_target: bool = True,
                       generator_kwargs: dict[str, Any] | None = None,
                       **forsaken_kwargs: Any) -> EliminationResult:
  """Trains the user's generator on its own data and returns its dummy update.

  The user's stopping oracle is local, as in the centralized loop: a
  threshold on the logit-scaled confidence fitted between D_u (members) and
  D_n (non-members) under the global model (`mia.fit_threshold`); the loop
  stops once D_u falls below it at D_n's rate.

  Args:
    apply_fn: `(params, images) -> logits`.
    global_params: theta, the current global model.
    forget_batch: D_u as one batch.
    retain_batch: D_r, one batch or stacked `[K, B, ...]`.
    reference_batch: D_n as one batch.
    key: PRNG key of the generator.
    generator: "coordinatewise" or "dense".
    objective: Forsaken's forget objective (`unlearn.OBJECTIVES`).
    threshold_weight: weight of the hinge below the oracle's threshold
      (relative objective only).
    retain_weight: weight of omega(theta') in the generator's loss.
    lr: eta of `theta' = theta - eta * g`.
    generator_lr: Adam's learning rate on the generator.
    mask_fraction: None (every coordinate may change) or the fraction of
      units of the neuron mask (`unlearn.neuron_mask`).
    stop_at_target: stop at the local oracle's target (else run to the
      step budget or patience).
    generator_kwargs: passed to the generator's factory.
    **forsaken_kwargs: passed to `unlearn.make_forsaken` (max_steps,
      patience, l1_weight, acceptance, ...).

  Returns:
    An `EliminationResult`.
  """
  for name, batch in (("forget_batch", forget_batch), ("reference_batch", reference_batch)):
    reference_lib.check_batch(batch, name)
  reference_lib.check_batch(retain_batch, "retain_batch", stacked=True)
  first_retain = (retain_batch if jnp.ndim(retain_batch["label"]) == 1
                  else jax.tree.map(lambda x: x[0], retain_batch))
  num_classes = jax.eval_shape(apply_fn, global_params, forget_batch["image"]).shape[-1]
  relative = objective in unlearn.RELATIVE_OBJECTIVES

  forget_scores = mia.logit_scaled_confidence(apply_fn(global_params, forget_batch["image"]),
                                              forget_batch["label"])
  reference_scores = mia.logit_scaled_confidence(
      apply_fn(global_params, reference_batch["image"]), reference_batch["label"])
  oracle = mia.fit_threshold(forget_scores, reference_scores)
  target_rate = jnp.mean((reference_scores < oracle.threshold).astype(jnp.float32))
  reference = unlearn.compute_reference(apply_fn, global_params, reference_batch,
                                        objective=objective)
  if relative:
    reference = {**reference, "threshold": jnp.asarray(oracle.threshold, jnp.float32)}

  mask = None
  if mask_fraction is not None:
    saliency = unlearn.unit_saliency(apply_fn, global_params, forget_batch, first_retain)
    mask = jax.device_get(unlearn.neuron_mask(global_params, saliency, fraction=mask_fraction))
  gen = unlearn.make_generator(generator, global_params, num_classes=num_classes, mask=mask,
                               **(generator_kwargs or {}))
  forsaken = unlearn.make_forsaken(
      apply_fn, gen, objective=objective, mask=mask, lr=lr, retain_weight=retain_weight,
      threshold_weight=threshold_weight if relative else 0.0,
      gen_optimizer=optax.adam(generator_lr), **forsaken_kwargs)
  state = forsaken.init(key, global_params, forget_batch, retain_batch, reference)
  threshold = oracle.threshold if stop_at_target else -jnp.inf
  state = forsaken.run(state, forget_batch, retain_batch, reference,
                       jnp.asarray(threshold, jnp.float32), jnp.asarray(target_rate, jnp.float32))
  update = jax.tree.map(lambda new, old: new - old, state.params, global_params)
  info = {**unlearn.summarize(state), "oracle_threshold": float(oracle.threshold),
          "target_rate": float(target_rate)}
  return EliminationResult(update, state.params, info)


def removal_update(global_params: Params, update: Params, fresh_params: Params, *,
                   shrink: float, perturb: float) -> Params:
  """The dummy update with Forsaken's removal step: the move to the shrunk, perturbed model.

  The target of the request round is the removal step applied to the user's
  locally unlearned model theta' = theta + Delta
  (`unlearn.shrink_perturb`):

      theta'' = shrink * (theta + Delta) + perturb * theta_fresh,

  and the returned update is `theta'' - theta`. Submitted through
  `scale_update(..., scaling="inverse_share", weight=w_u, total_weight=W)`,
  i.e. as `u_u = (W / w_u) (theta'' - theta)`, the server's weighted FedAvg
  step `theta + sum_k (w_k / W) u_k` gives

      theta + (theta'' - theta) + sum_{k != u} (w_k / W) u_k
        = theta'' + (1 - w_u / W) * mean_{k != u}(u_k),

  the mean weighted by the other sampled clients' w_k: the global model lands
  on theta'' exactly when the other clients' updates of the round are zero,
  and off it by their weighted mean scaled by their share of the round's
  weight otherwise. The user cannot see those updates (secure aggregation),
  so it cannot cancel them; they are training steps from theta on data
  without D_u, and the ordinary rounds that follow (without D_u) are the
  removal step's repair. With scaling "none" the model moves by
  `w_u / W` of the update instead: a diluted removal step.
  `shrink=1, perturb=0` returns `update` up to rounding (no removal step).

  Args:
    global_params: theta, the global model the request starts from.
    update: the dummy update Delta (`EliminationResult.update`).
    fresh_params: theta_fresh, a fresh draw of the model's initialization
      (the user's own key; same structure and shapes).
    shrink: in (0, 1]; 1 keeps the weights' scale.
    perturb: non-negative weight of theta_fresh.

  Returns:
    `theta'' - theta`, in the dtypes of `global_params`.
  """
  if jax.tree.structure(update) != jax.tree.structure(global_params):
    raise ValueError(f"update must have the structure of global_params; got "
                     f"{jax.tree.structure(update)}, expected {jax.tree.structure(global_params)}")
  unlearned = jax.tree.map(lambda p, d: p + d.astype(p.dtype), global_params, update)
  target = unlearn.shrink_perturb(unlearned, fresh_params, shrink=shrink, perturb=perturb)
  return jax.tree.map(lambda t, p: t - p, target, global_params)


def scale_update(update: Params, *, scaling: str, weight: float,
                 total_weight: float | None = None) -> Params:
  """Scales a dummy update for the server's weighted mean.

  Args:
    update: the dummy update `theta' - theta`.
    scaling: "none" (submitted as is: the global model moves by
      `weight / total_weight` of it) or "inverse_share" (multiplied by
      `total_weight / weight`: the global model moves by all of it, plus the
      other clients' weighted updates of the round).
    weight: the weight the user reports (its sample count).
    total_weight: the round's total weight W, the user's included (the
      server announces it to the round's clients); "inverse_share" only.

  Returns:
    The update to submit.
  """
  if scaling not in SCALINGS:
    raise ValueError(f"scaling must be one of {SCALINGS}, got {scaling!r}")
  if not weight > 0:
    raise ValueError(f"weight must be positive, got {weight!r}")
  if scaling == "none":
    return update
  if total_weight is None or not total_weight >= weight:
    raise ValueError(f"scaling 'inverse_share' needs the round's total_weight (at least the "
                     f"user's weight {weight}), got {total_weight!r}")
  factor = float(total_weight) / float(weight)
  return jax.tree.map(lambda u: u * jnp.asarray(factor, u.dtype), update)


def elimination_request(client_id: int, update: Params, *, weight: float,
                        scaling: str = "inverse_share",
                        total_weight: float | None = None) -> ClientOverride:
  """The user's submission for `FedAvg.round(..., override=...)`.

  Args:
    client_id: the requesting user.
    update: its dummy update (`EliminationResult.update`).
    weight: the weight it reports (its sample count, as in other rounds).
    scaling, total_weight: see `scale_update`.

  Returns:
    A `fedavg.ClientOverride`.
  """
  return ClientOverride(client_id, scale_update(update, scaling=scaling, weight=weight,
                                                total_weight=total_weight), weight)
