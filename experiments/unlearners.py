"""One unlearning request to any method, the way the benchmarks run it.

`request(config, method, hyperparameters, data, spec, original)` runs one
method on `data.splits.forget` from the `original` parameters and returns
the unlearned parameters and what the run did:

- `"forsaken"`: the config's `unlearn` section (overridden by
  `hyperparameters`), as the unlearn phase runs it: `experiments.unlearn`'s
  `prepare`, the generator's loop and `finish` (the removal step when
  configured);
- every name of `forsaken_jax.unlearn.METHODS`: `make_method(name, apply_fn,
  **kwargs)` for `steps` updates, one compiled step at a time (blocked, as the
  known CPU rendezvous trap requires), the forget set as one batch and the
  retained members in batches of `unlearn.batch_size`.

Used by `experiments.bench_cost` (timing) and `experiments.benchmark` (the
method table). Everything is built anew per request, so a timed request
includes its compilation (or its load from the compilation cache).
"""

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments import common
from experiments import unlearn as unlearn_phase
from forsaken_jax import data as fj_data
from forsaken_jax import parallel
from forsaken_jax import unlearn as fj_unlearn

FORSAKEN = "forsaken"
# Methods whose schedule spans the request: they are told its length.
SPANNING = ("l1_sparse", "shrink_perturb")


def method_names() -> tuple[str, ...]:
  """Every method a request can name: Forsaken, then the registry's baselines."""
  return (FORSAKEN, *fj_unlearn.METHODS)


def check_method(name: str) -> None:
  """Raises ValueError for a name that is neither Forsaken nor a registered baseline."""
  if name not in method_names():
    raise ValueError(f"unknown unlearning method {name!r}; choose from {list(method_names())}")


def with_unlearn(config: ml_collections.ConfigDict, overrides: dict[str, Any]
                 ) -> ml_collections.ConfigDict:
  """A copy of `config` with `overrides` of its `unlearn` section; unknown keys are an error."""
  config = config.copy_and_resolve_references()
  unknown = sorted(set(overrides) - set(config.unlearn))
  if unknown:
    raise ValueError(f"forsaken: unknown unlearn settings {unknown}")
  with config.unlocked():
    for key, value in overrides.items():
      config.unlearn[key] = ml_collections.ConfigDict(value) if isinstance(value, dict) else value
  return config


def forsaken_request(config: ml_collections.ConfigDict, data: fj_data.ExperimentData,
                     spec: dict[str, Any], original: Any,
                     overrides: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
  """One Forsaken request: prepare, the generator's loop, finish.

  Args:
    config: the experiment config (its `unlearn` section).
    data: the run's data; `data.splits.forget` is forgotten.
    spec: the model spec (`common.model_spec`).
    original: the trained parameters.
    overrides: settings of `config.unlearn` to replace for this request.

  Returns:
    `(params, info)`, info with the generator's `steps` (`accepted` of
    them), `stop_reason` and the removal step's `repair_steps`.
  """
  config = with_unlearn(config, overrides or {})
  prep = unlearn_phase.prepare(config, data, spec, original)
  state = parallel.block(prep.run(prep.state, prep.forget, prep.retain, prep.reference,
                                  prep.threshold, prep.target_rate,
                                  jnp.int32(config.unlearn.max_steps)))
  state = unlearn_phase.finish(prep, state)
  info = fj_unlearn.summarize(state)
  return state.params, {"steps": int(info["steps"]), "accepted": int(info["accepted"]),
                        "stop_reason": str(info["stop_reason"]),
                        "repair_steps": int(config.unlearn.repair_steps)}


def baseline_request(config: ml_collections.ConfigDict, name: str, data: fj_data.ExperimentData,
                     spec: dict[str, Any], original: Any, *, steps: int,
                     kwargs: dict[str, Any] | None = None, progress: bool = True
                     ) -> tuple[Any, dict[str, Any]]:
  """One request to a `forsaken_jax.unlearn.METHODS` baseline.

  Args:
    config: the experiment config (`seed`, `unlearn.batch_size`).
    name: the method's registered name.
    data: the run's data; `data.splits.forget` is forgotten.
    spec: the model spec.
    original: the trained parameters.
    steps: updates to run (>= 1).
    kwargs: `make_method`'s hyperparameters (empty: the paper's).
    progress: show a progress bar.

  Returns:
    `(params, {"steps": steps})`.
  """
  if name not in fj_unlearn.METHODS:
    raise ValueError(f"unknown baseline {name!r}; choose from {sorted(fj_unlearn.METHODS)}")
  if steps < 1:
    raise ValueError(f"{name}: steps must be at least 1, got {steps}")
  kwargs = dict(kwargs or {})
  model = common.create_model(spec)
  if name in SPANNING:
    kwargs.setdefault("num_steps", steps)
  if name == "shrink_perturb":
    kwargs.setdefault("init_fn", model.init_fn)
  method = fj_unlearn.make_method(name, model.apply_fn, **kwargs)
  forget = jax.device_put(unlearn_phase.forget_batch(data, data.splits.forget))
  retain_idx = data.splits.retain
  batch_size = min(config.unlearn.batch_size, len(retain_idx))
  images, labels = data.pool.images, data.pool.labels

  def retain_batch(step):
    idx = retain_idx[fj_data.batch_indices(len(retain_idx), batch_size, step, seed=config.seed)]
    return {"image": images[idx], "label": labels[idx]}

  key = jax.random.fold_in(jax.random.key(config.seed), 6)
  state = method.init(jax.device_put(original), forget, retain_batch(0), key)
  bar = common.progress(steps, desc=name, enabled=progress)
  for step in range(steps):
    state, metrics = method.step(state, forget, retain_batch(step))
    parallel.block(metrics)
    bar.update(1)
  bar.close()
  return parallel.block(state.params), {"steps": steps}


def request(config: ml_collections.ConfigDict, method: str, hyperparameters: dict[str, Any],
            data: fj_data.ExperimentData, spec: dict[str, Any], original: Any, *,
            progress: bool = True) -> tuple[Any, dict[str, Any]]:
  """One request to `method` (see the module docstring).

  Args:
    config: the experiment config.
    method: `"forsaken"` or a `METHODS` name.
    hyperparameters: Forsaken: overrides of `config.unlearn`; a baseline:
      `{"steps": T, "kwargs": {...}}`.
    data, spec, original: the run's data, model spec and trained parameters.
    progress: show a progress bar (baselines).

  Returns:
    `(params, info)`; info also says whether every parameter is finite.
  """
  check_method(method)
  if method == FORSAKEN:
    params, info = forsaken_request(config, data, spec, original, hyperparameters)
  else:
    params, info = baseline_request(config, method, data, spec, original,
                                    steps=int(hyperparameters["steps"]),
                                    kwargs=hyperparameters.get("kwargs"), progress=progress)
  info["finite"] = all(bool(np.all(np.isfinite(x)))
                       for x in jax.tree.leaves(jax.device_get(params)))
  return params, info
