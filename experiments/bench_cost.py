r"""The cost curve: how unlearning's cost grows with the training set, against retraining's.

    python -m experiments.bench_cost --workdir runs/bench_cost \
        [--config experiments/configs/bench_cost.py[:quick|:cnn]] [--config.section.key=value ...]

For each training-set size of `config.bench.sizes` (the default scenario's
200 photo patches inserted among that many members), in one process:

1. trains the original model (`bench.epochs` epochs of the config's recipe;
   its test accuracy and steps are recorded, its time is not a cost);
2. retrains the same recipe without the forget set, evaluating the test
   accuracy `bench.retrain_evals` times along the way with the clock
   stopped: the training seconds until it is within `bench.tolerance` of
   the original's test accuracy, and the full recipe's seconds;
3. unlearns with Forsaken (the config's `unlearn` section, its removal step
   included: `experiments.unlearn.prepare`, the loop and `finish`, as
   `experiments.sweep_unlearn` runs it) and with the baselines of
   `bench.methods` (`forsaken_jax.unlearn.make_method`, one compiled step
   per update in a Python loop), each answering two requests: a FIRST one
   (the photo patches) that compiles its programs, and a LATER one (as many
   other members, drawn at random) once they are compiled. Every request
   starts from the original model and builds its programs anew; each cell
   has a persistent compilation cache of its own, empty at its first
   request, so the later request loads what the first compiled (as the
   experiments' cache does across runs) and no cell profits from another.
   Test and forget-set accuracy are measured after each request (not timed).

The ratio is unlearning seconds over retraining seconds (to the original's
accuracy; the JSON also has it over the full recipe), both measured in the
same process unless a resumed run split them (`same_run_as_retraining` in
the JSON). Writes to `<workdir>/bench_cost/` only (the dataset's
preparation in `config.dataset.data_dir` aside): `cells.json` (every
finished (size, cell); a rerun skips them and fills in the rest; a changed
config is refused), `models/` (the original models, which later cells of a
resumed run need), `results.md` (the table, also printed), `results.json`
and `cost.png` (seconds against training-set size, log-log).

The baselines are the three cheapest per step: gradient ascent (one
forward and backward pass over the forget batch), fine-tuning (one over a
retained batch) and l1-sparse (fine-tuning plus an elementwise L1 term over
the parameters); NegGrad+ and random labels pass over both batches every
step, SalUn adds a saliency pass and masking to random labels, SCRUB a
teacher's forward pass and a second update.
"""

import contextlib
import dataclasses
import functools
import os
import shutil
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from experiments import cli, common, unlearners
from forsaken_jax import data as fj_data
from forsaken_jax import parallel, train
from forsaken_jax import unlearn as fj_unlearn

DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "configs", "bench_cost.py")
SIGNATURE_SECTIONS = ("dataset", "scenario", "model", "train", "unlearn", "bench")
FORSAKEN = unlearners.FORSAKEN
TABLE_HEADER = ("| training set | model | retrain s: to original acc. / full recipe | method "
                "| first request s | later request s | first / later, % of retraining "
                "| test acc. | forget acc. |")


# ----------------------------------------------------------------------------- sizes and data


@functools.lru_cache(maxsize=4)
def _in_distribution_count(name: str, data_dir: str) -> int:
  return len(fj_data.load_dataset(name, "train", data_dir=data_dir or None))


def size_config(config: ml_collections.ConfigDict, size: int) -> ml_collections.ConfigDict:
  """The config of one size: its member count and model (the training steps come later)."""
  config = config.copy_and_resolve_references()
  sc = config.scenario
  members = size
  if size == -1:
    members = (_in_distribution_count(common.resolve_dataset_name(config),
                                      config.dataset.data_dir)
               - sc.num_nonmembers - sc.num_shadow)
  with config.unlocked():
    sc.num_members = int(members)
    if config.bench.cnn_from and members >= config.bench.cnn_from:
      config.model.name = "cnn"
      config.model.kwargs = config.bench.cnn.copy_and_resolve_references()
  return config


def with_steps(config: ml_collections.ConfigDict, num_examples: int) -> ml_collections.ConfigDict:
  """`bench.epochs` epochs of `num_examples` at the config's batch size."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.train.steps = max(1, int(np.ceil(config.bench.epochs * num_examples
                                            / config.train.batch_size)))
  return config


def later_request(data: fj_data.ExperimentData, seed: int) -> fj_data.ExperimentData:
  """The same data with another forget set of the same size: members drawn at random."""
  members = data.splits.members
  candidates = np.setdiff1d(members[~data.is_ood[members]], data.splits.forget)
  other = np.random.default_rng([seed, 11]).choice(candidates, len(data.splits.forget),
                                                   replace=False)
  return dataclasses.replace(data, splits=dataclasses.replace(data.splits, forget=np.sort(other)))


# ----------------------------------------------------------------------------- timing helpers


@contextlib.contextmanager
def compilation_cache(directory: str):
  """JAX's persistent compilation cache in `directory` (emptied first), removed afterwards."""
  # pylint: disable-next=g-import-not-at-top
  from jax.experimental.compilation_cache import compilation_cache as cc

  shutil.rmtree(directory, ignore_errors=True)
  os.makedirs(directory)
  previous = (jax.config.jax_compilation_cache_dir,
              jax.config.jax_persistent_cache_min_compile_time_secs)
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  cc.reset_cache()
  try:
    yield
  finally:
    jax.config.update("jax_compilation_cache_dir", previous[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", previous[1])
    cc.reset_cache()
    shutil.rmtree(directory, ignore_errors=True)


def _accuracy(predict: Callable, params: Any, images: np.ndarray, labels: np.ndarray) -> float:
  return float(train.evaluate(predict, jax.device_get(params), images, labels)["accuracy"])


def _forget_accuracy(predict: Callable, params: Any, data: fj_data.ExperimentData) -> float:
  idx = data.splits.forget
  return _accuracy(predict, params, data.pool.images[idx], data.pool.labels[idx])


# ----------------------------------------------------------------------------- training


def train_model(config: ml_collections.ConfigDict, data: fj_data.ExperimentData,
                indices: np.ndarray, *, predict: Callable, phase: str,
                target: float | None = None) -> dict[str, Any]:
  """Trains the config's recipe from scratch on `data.pool[indices]`.

  With a `target` test accuracy, evaluates `bench.retrain_evals` times
  along the way (the clock stopped meanwhile) and records the training
  seconds and steps at the first evaluation that reaches it.

  Returns:
    `{"params", "seconds", "steps", "test_accuracy", "to_target_seconds",
    "to_target_steps", "curve"}`; the last three are None, None and `[]`
    without a target (and the first two None if it is never reached), the
    curve holds `[step, seconds, test accuracy]` per evaluation.
  """
  tc = config.train
  mesh = parallel.make_mesh()
  parallel.check_batch_divisible(tc.batch_size, mesh)
  model = common.create_model(common.model_spec(config, data))
  tx = common.make_optimizer(tc)
  init_key, data_key = jax.random.split(jax.random.key(config.seed))
  test = data.test_examples
  eval_every = max(1, tc.steps // max(1, config.bench.retrain_evals))
  out: dict[str, Any] = {"steps": int(tc.steps), "to_target_seconds": None,
                         "to_target_steps": None, "curve": []}
  bar = common.progress(tc.steps, desc=phase, enabled=tc.get("progress", True))
  start = time.perf_counter()
  state = jax.jit(lambda: train.init_train_state(model.init_fn, tx, init_key),
                  out_shardings=parallel.replicated(mesh))()
  step_fn = train.make_train_step(model.apply_fn, tx, loss_fn=common.loss_fn(config), mesh=mesh)
  data_seed = int(jax.random.randint(data_key, (), 0, 2**31 - 1))
  seconds = 0.0
  for step in range(tc.steps):
    idx = indices[fj_data.batch_indices(len(indices), tc.batch_size, step, seed=data_seed)]
    batch = parallel.shard_batch({"image": data.pool.images[idx], "label": data.pool.labels[idx]},
                                 mesh)
    state, metrics = step_fn(state, batch)
    parallel.block(metrics)
    bar.update(1)
    if target is not None and ((step + 1) % eval_every == 0 or step + 1 == tc.steps):
      seconds += time.perf_counter() - start
      accuracy = _accuracy(predict, state["params"], test.images, test.labels)
      out["curve"].append([step + 1, seconds, accuracy])
      bar.set_postfix(test_acc=f"{accuracy:.4f}", target=f"{target:.4f}")
      if out["to_target_seconds"] is None and accuracy >= target:
        out["to_target_seconds"], out["to_target_steps"] = seconds, step + 1
      start = time.perf_counter()
  seconds += time.perf_counter() - start
  bar.close()
  params = jax.device_get(state["params"])
  out.update(params=params, seconds=seconds,
             test_accuracy=_accuracy(predict, params, test.images, test.labels))
  return out


# ----------------------------------------------------------------------------- unlearning requests


def _hyperparameters(config: ml_collections.ConfigDict, method: str) -> dict[str, Any]:
  """`unlearners.request`'s hyperparameters: none for Forsaken (the `unlearn` section)."""
  if method == FORSAKEN:
    return {}
  method_config = config.bench.methods[method]
  return {"steps": int(method_config.steps),
          "kwargs": method_config.get("kwargs", ml_collections.ConfigDict()).to_dict()}


def timed_requests(config: ml_collections.ConfigDict, method: str, data: fj_data.ExperimentData,
                   spec: dict[str, Any], original: Any, predict: Callable,
                   cache_dir: str) -> dict[str, Any]:
  """A first and a later request to `method`, timed, each followed by its accuracies."""
  later = later_request(data, config.seed)
  test = data.test_examples
  out = {}
  with compilation_cache(cache_dir):
    for label, request_data in (("first", data), ("later", later)):
      with common.compile_time_meter() as compile_seconds:
        start = time.perf_counter()
        params, info = unlearners.request(config, method, _hyperparameters(config, method),
                                          request_data, spec, original,
                                          progress=config.train.get("progress", True))
        seconds = time.perf_counter() - start
      out[label] = {"seconds": seconds, **info, "compile_seconds": dict(compile_seconds),
                    "test_accuracy": _accuracy(predict, params, test.images, test.labels),
                    "forget_accuracy": _forget_accuracy(predict, params, request_data)}
      common.log(f"[bench_cost] {method} {label} request: {seconds:.2f} s, test "
                 f"{out[label]['test_accuracy']:.4f}, forget {out[label]['forget_accuracy']:.4f}")
  return out


# ----------------------------------------------------------------------------- persistence


def _save_params(path: str, params: Any) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  leaves = jax.tree.leaves(jax.device_get(params))
  with open(path + ".tmp", "wb") as f:
    np.savez(f, *[np.asarray(x) for x in leaves])
  os.replace(path + ".tmp", path)


def _load_params(path: str, spec: dict[str, Any]) -> Any:
  abstract = jax.eval_shape(common.create_model(spec).init_fn, jax.random.key(0))
  with np.load(path) as stored:
    leaves = [stored[f"arr_{i}"] for i in range(len(stored.files))]
  treedef = jax.tree.structure(abstract)
  if len(leaves) != treedef.num_leaves:
    raise ValueError(f"{path} holds {len(leaves)} arrays, the model has {treedef.num_leaves}")
  return jax.tree.unflatten(treedef, leaves)


# ----------------------------------------------------------------------------- the benchmark


def _model_label(spec: dict[str, Any]) -> str:
  kwargs = spec["kwargs"]
  if spec["name"] == "mlp":
    return f"MLP {tuple(kwargs.get('hidden', ()))}"
  if spec["name"] == "cnn":
    return f"CNN {tuple(kwargs.get('features', ()))} + dense {kwargs.get('dense')}"
  return spec["name"]


def _size_key(size: int) -> str:
  return "all" if size == -1 else str(size)


def run_size(config: ml_collections.ConfigDict, size: int, out: str, cells: common.ResultCells,
             methods: list[str], run_id: str) -> None:
  """Runs the unfinished cells of one size: original, retraining, each method."""
  key = _size_key(size)
  names = ["original", "retrain", *methods]
  model_path = os.path.join(out, "models", f"{key}_original.npz")
  if all(cells.get(f"{key}/{n}") for n in names) and os.path.exists(model_path):
    return
  config = size_config(config, size)
  data = common.load_experiment_data(config)
  members = data.splits.members
  config = with_steps(config, len(members))
  spec = common.model_spec(config, data)
  predict = train.make_predict_fn(common.create_model(spec).apply_fn, parallel.make_mesh())
  cache = lambda name: compilation_cache(os.path.join(out, "cache", f"{key}_{name}"))
  common.log(f"[bench_cost] size {key}: {len(members)} training images "
             f"({len(data.splits.forget)} photo patches), {_model_label(spec)}, "
             f"{config.train.steps} steps")

  if cells.get(f"{key}/original") is None or not os.path.exists(model_path):
    with cache("original"):
      result = train_model(config, data, members, predict=predict, phase=f"original {key}")
    _save_params(model_path, result["params"])
    cells.put(f"{key}/original", {
        "num_train": int(len(members)), "num_forget": int(len(data.splits.forget)),
        "model": _model_label(spec), "model_spec": spec, "steps": result["steps"],
        "batch_size": int(config.train.batch_size), "seconds": result["seconds"],
        "test_accuracy": result["test_accuracy"],
        "forget_accuracy": _forget_accuracy(predict, result["params"], data), "run": run_id})
  original = _load_params(model_path, spec)
  reference = cells.get(f"{key}/original")

  if cells.get(f"{key}/retrain") is None:
    target = reference["test_accuracy"] - config.bench.tolerance
    with cache("retrain"):
      result = train_model(config, data, data.splits.retain, predict=predict,
                           phase=f"retrain {key}", target=target)
    common.log(f"[bench_cost] retraining {key}: {result['to_target_seconds']} s to "
               f"{target:.4f}, {result['seconds']:.1f} s in all")
    cells.put(f"{key}/retrain", {
        "target": target, "to_target_seconds": result["to_target_seconds"],
        "to_target_steps": result["to_target_steps"], "seconds": result["seconds"],
        "steps": result["steps"], "test_accuracy": result["test_accuracy"],
        "forget_accuracy": _forget_accuracy(predict, result["params"], data),
        "curve": result["curve"], "run": run_id})

  for method in methods:
    if cells.get(f"{key}/{method}") is None:
      result = timed_requests(config, method, data, spec, original, predict,
                              os.path.join(out, "cache", f"{key}_{method}"))
      cells.put(f"{key}/{method}", {**result, "run": run_id})


def collect(config: ml_collections.ConfigDict, cells: common.ResultCells, methods: list[str]
            ) -> list[dict[str, Any]]:
  """One entry per finished size: the original, the retraining and each method with its ratios."""
  sizes = []
  for size in config.bench.sizes:
    key = _size_key(size)
    original, retrain = cells.get(f"{key}/original"), cells.get(f"{key}/retrain")
    if original is None or retrain is None:
      continue
    reached = retrain["to_target_seconds"] is not None
    baseline = retrain["to_target_seconds"] if reached else retrain["seconds"]
    entry = {"size": key, "num_train": original["num_train"], "model": original["model"],
             "original": original, "retrain": {**retrain, "reached_target": reached},
             "methods": {}}
    for method in methods:
      cell = cells.get(f"{key}/{method}")
      if cell is None:
        continue
      entry["methods"][method] = {
          label: {**cell[label], "ratio": cell[label]["seconds"] / baseline,
                  "ratio_full_recipe": cell[label]["seconds"] / retrain["seconds"]}
          for label in ("first", "later")}
      entry["methods"][method]["same_run_as_retraining"] = cell["run"] == retrain["run"]
    sizes.append(entry)
  return sizes


def _pct(x: float | None) -> str:
  return "n/a" if x is None else f"{100 * x:.1f}%"


def markdown_table(sizes: list[dict[str, Any]]) -> str:
  """The cost curve as a markdown table, one row per (size, model)."""
  lines = [TABLE_HEADER, "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
  for entry in sizes:
    o, r = entry["original"], entry["retrain"]
    size = f"{entry['num_train']:,} ({o['num_forget']} photos)"
    # Not reached: retraining needs more than its full recipe, so the ratios are upper bounds.
    bound = "" if r["reached_target"] else "<= "
    to_target = (f"{r['to_target_seconds']:.1f}" if r["reached_target"]
                 else f"not reached (> {r['seconds']:.1f})")
    retrain = f"{to_target} / {r['seconds']:.1f}"
    lines.append(f"| {size} | {entry['model']} | {retrain} | original ({o['steps']} steps; "
                 f"not a cost) | n/a | n/a | n/a | {_pct(o['test_accuracy'])} "
                 f"| {_pct(o['forget_accuracy'])} |")
    lines.append(f"| {size} | {entry['model']} | {retrain} | retraining | n/a | n/a | n/a "
                 f"| {_pct(r['test_accuracy'])} | {_pct(r['forget_accuracy'])} |")
    for method, cell in entry["methods"].items():
      first, later = cell["first"], cell["later"]
      lines.append(
          f"| {size} | {entry['model']} | {retrain} | {method} | {first['seconds']:.2f} "
          f"| {later['seconds']:.2f} | {bound}{_pct(first['ratio'])} / {bound}"
          f"{_pct(later['ratio'])} | {_pct(first['test_accuracy'])} "
          f"| {_pct(first['forget_accuracy'])} |")
  return "\n".join(lines)


def plot(sizes: list[dict[str, Any]], methods: list[str], path: str) -> None:
  """Seconds against training-set size, log-log: retraining and each method's requests."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, ax = plt.subplots(figsize=(9, 5))
  x = [e["num_train"] for e in sizes]
  to_target = [e["retrain"]["to_target_seconds"] or e["retrain"]["seconds"] for e in sizes]
  ax.plot(x, to_target, "k-o", label="retraining to the original's accuracy")
  ax.plot(x, [e["retrain"]["seconds"] for e in sizes], "k--", label="retraining, full recipe")
  for i, method in enumerate(methods):
    have = [e for e in sizes if method in e["methods"]]
    if not have:
      continue
    color = f"C{i}"
    xs = [e["num_train"] for e in have]
    ax.plot(xs, [e["methods"][method]["first"]["seconds"] for e in have], ":", color=color,
            marker="x", label=f"{method}, first request")
    ax.plot(xs, [e["methods"][method]["later"]["seconds"] for e in have], "-", color=color,
            marker="o", label=f"{method}, later request")
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel("training images")
  ax.set_ylabel("seconds")
  ax.set_title("Unlearning one request vs retraining")
  ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
  ax.set_xticks(x, [f"{n:,}" for n in x])
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def cells_signature(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """What the cells depend on. Not `bench.sizes`: a cell is keyed by its own
  size, so a run may add sizes to a finished one."""
  return common.signature(config, SIGNATURE_SECTIONS, ignore=(*common.RESUMABLE_KEYS, "sizes"))


def bench_cost(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs every unfinished cell, then writes the table, the JSON and the plot.

  Returns:
    `{"table", "sizes", "computed"}`: the markdown table, one entry per
    finished size (see `collect`), and the cells this call ran.
  """
  out = os.path.join(workdir, "bench_cost")
  os.makedirs(out, exist_ok=True)
  cells = common.ResultCells(out, cells_signature(config))
  methods = [FORSAKEN, *config.bench.methods.keys()]
  unknown = sorted(set(methods[1:]) - set(fj_unlearn.METHODS))
  if unknown:
    raise ValueError(f"bench.methods: unknown methods {unknown}; choose from "
                     f"{sorted(fj_unlearn.METHODS)}")
  run_id = f"{os.getpid()}-{time.time():.0f}"
  for size in config.bench.sizes:
    run_size(config, size, out, cells, methods, run_id)
  shutil.rmtree(os.path.join(out, "cache"), ignore_errors=True)
  sizes = collect(config, cells, methods)
  table = markdown_table(sizes)
  common.log(table)
  if common.is_main_process():
    with open(os.path.join(out, "results.md"), "w") as f:
      f.write(table + "\n")
    common.write_json(os.path.join(out, "results.json"), {"sizes": sizes, "methods": methods})
    if sizes:
      plot(sizes, methods, os.path.join(out, "cost.png"))
  return {"table": table, "sizes": sizes, "computed": cells.computed}


if __name__ == "__main__":
  cli.run(bench_cost, default_config=DEFAULT_CONFIG)
