"""A real federation over Flower: one server process, one process per client, gRPC between them.

The same computation as the in-process simulation, spread over processes:

- each client process holds its own share of the data and trains with
  `forsaken_jax.federated`'s round step (`FedAvg.local_updates` of
  `make_fedavg`, on its one slot, with the key the simulated round gives
  that client); it submits its update `theta_k - theta` and its number of
  examples;
- the owner of the private data serves its elimination request in the
  round it chooses (`Settings.request_round`), through the same `fit` call:
  `federated.elimination_update` on the global model it received, scaled by
  `federated.elimination_request` with the total weight the server
  announces, submitted as its ordinary update (the server cannot tell);
- the server's strategy (`make_strategy`) stacks the round's updates in
  client-id order and applies `federated.weighted_mean` and
  `federated.apply_update`, the simulation's aggregation.

`simulate` runs the same federation in one process (`FedAvg.round`, the
request as a `ClientOverride`); `run_local` starts the server and the
clients as separate processes on 127.0.0.1 and returns the server's global
model after every round. The data is small, synthetic and seeded
(`build_federation`): no download.

  python -m experiments.federated.flower local --check   # on loopback, vs the simulation
  python -m experiments.federated.flower server --address 0.0.0.0:8080 --out runs/flower
  python -m experiments.federated.flower client --address SERVER:8080 --client-id 0  # each k

Needs the `flower` extra (`pip install -e ".[flower]"`). The processes use
Flower's long-lived `start_server` / `start_client` (docs/FEDERATED.md,
"Flower" says why rather than SuperLink / SuperNode) over plaintext gRPC:
beyond loopback, keep them inside a trusted network (TLS is not wired here).
Aggregation is in the clear (the simulation's `secure=False`): the server
sees each client's update.
"""

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from experiments import common
from experiments.federated import federation as fedlib
from forsaken_jax import federated, models

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Independent PRNG streams of `Settings.seed`.
_STREAM_INIT, _STREAM_ROUNDS, _STREAM_REQUEST = 0, 1, 2
_NUM_TEST = 300


class Settings(NamedTuple):
  """One small federation; every process of it must be given the same settings.

  Attributes:
    seed: data split, partition, initialization and every round's key.
    num_clients: K; every client takes part in every round.
    num_rounds: server rounds.
    request_round: the round (1-based, >= 2: the owner needs the announced
      total weight) in which the owner submits its elimination update; 0: none.
    owner: the client holding the private photos.
    examples_per_client: examples per client (the owner also holds its photos).
    num_private: photos the owner trained on; as many more are its held-out
      reference (D_n).
    hidden: the MLP's hidden layers.
    optimizer, learning_rate, local_epochs, batch_size: local training.
    forsaken_steps, forsaken_lr: the owner's generator loop (`max_steps`, eta).
    scaling: how the owner scales its dummy update (`federated.SCALINGS`).
  """

  seed: int = 0
  num_clients: int = 3
  num_rounds: int = 3
  request_round: int = 3
  owner: int = 0
  examples_per_client: int = 60
  num_private: int = 10
  hidden: tuple[int, ...] = (32,)
  optimizer: str = "sgd"
  learning_rate: float = 0.5
  local_epochs: int = 2
  batch_size: int = 32
  forsaken_steps: int = 10
  forsaken_lr: float = 3e-3
  scaling: str = "inverse_share"


class Federation(NamedTuple):
  """What `build_federation` returns (every process builds the same)."""

  settings: Settings
  images: np.ndarray
  labels: np.ndarray
  partition: federated.Partition
  private: np.ndarray
  holdout: np.ndarray
  test: np.ndarray
  model: models.ModelFns
  fedavg: federated.FedAvg


def check_settings(s: Settings) -> None:
  """Raises ValueError for settings the federation cannot run."""
  if s.num_clients < 2 or s.num_rounds < 1:
    raise ValueError(f"num_clients must be >= 2 and num_rounds >= 1, got {s.num_clients} and "
                     f"{s.num_rounds}")
  if not 0 <= s.owner < s.num_clients:
    raise ValueError(f"owner must be in [0, {s.num_clients}), got {s.owner}")
  if s.request_round and not 2 <= s.request_round <= s.num_rounds:
    raise ValueError(f"request_round must be 0 or in [2, num_rounds={s.num_rounds}] (the owner "
                     f"needs a total weight announced from an earlier round), got "
                     f"{s.request_round}")
  if s.optimizer not in fedlib.OPTIMIZERS:
    raise ValueError(f"optimizer must be one of {tuple(fedlib.OPTIMIZERS)}, got {s.optimizer!r}")
  if s.scaling not in federated.SCALINGS:
    raise ValueError(f"scaling must be one of {federated.SCALINGS}, got {s.scaling!r}")
  if s.num_private < 1 or s.examples_per_client < 2:
    raise ValueError("num_private must be >= 1 and examples_per_client >= 2")


def build_federation(s: Settings) -> Federation:
  """The data, partition, model and round step of `s` (cheap: every process builds it).

  The data is synthetic and seeded: 8x8 grey images of 10 classes, each a
  class template plus noise (a test set of 300 besides the clients'), and
  the owner's private "photos": uniform noise images with arbitrary labels
  (`num_private` it trains on, as many more held out as its reference D_n).
  """
  check_settings(s)
  rng = np.random.default_rng(s.seed)
  templates = rng.uniform(size=(10, 8, 8, 1))
  num_examples = _NUM_TEST + s.num_clients * s.examples_per_client
  class_labels = rng.integers(0, 10, num_examples)
  noise = 0.35 * rng.normal(size=(num_examples, 8, 8, 1))
  examples = np.clip(templates[class_labels] + noise, 0, 1)
  photos = rng.uniform(size=(2 * s.num_private, 8, 8, 1))
  images = np.concatenate([examples, photos]).astype(np.float32)
  labels = np.concatenate([class_labels, rng.integers(0, 10, photos.shape[0])]).astype(np.int32)
  test, train = np.arange(_NUM_TEST), np.arange(_NUM_TEST, num_examples)
  private = np.arange(num_examples, num_examples + s.num_private)
  holdout = np.arange(num_examples + s.num_private, num_examples + 2 * s.num_private)
  members = np.concatenate([train, private])
  partition = federated.private_data_partition(labels, s.num_clients, private=private,
                                               owner=s.owner, seed=s.seed, indices=members)
  federated.validate_partition(partition, indices=members, private=private, owner=s.owner)
  model = models.create_model("mlp", num_classes=10, input_shape=(8, 8, 1), hidden=s.hidden)
  fedavg = federated.make_fedavg(
      model.apply_fn, fedlib.OPTIMIZERS[s.optimizer](s.learning_rate),
      local_epochs=s.local_epochs, batch_size=s.batch_size)
  return Federation(s, images, labels, partition, private, holdout, test, model, fedavg)


def initial_params(fed: Federation) -> Any:
  """The global model before round 1."""
  return fed.model.init_fn(jax.random.fold_in(jax.random.key(fed.settings.seed), _STREAM_INIT))


def params_shapes(fed: Federation) -> Any:
  """The global model's structure, shapes and dtypes (what the wire format needs)."""
  return jax.eval_shape(lambda: initial_params(fed))


def round_key(s: Settings, server_round: int) -> jax.Array:
  """The key of round `server_round` (1-based), as `FedAvg.round` takes it."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.key(s.seed), _STREAM_ROUNDS),
                            server_round)


# ----------------------------------------------------------------------------- one client's step


def local_update(fed: Federation, client_id: int, params: Any,
                 server_round: int) -> tuple[Any, float, float]:
  """Client `client_id`'s training update of a round: `(theta_k - theta, weight, loss)`.

  `FedAvg.local_updates` on the client's own data as one slot, with the key
  `FedAvg.round` gives its local training (`fold_in(round key, 0)`; the
  client's id is folded in by `local_updates`), so it computes what the
  client's slot of the simulated round computes.
  """
  data = federated.gather_client_data(fed.images, fed.labels, fed.partition, [client_id],
                                      size=int(fed.partition.sizes[client_id]))
  train_key = jax.random.fold_in(round_key(fed.settings, server_round), 0)
  updates, weights, metrics = fed.fedavg.local_updates(params, data, train_key)
  return (jax.tree.map(lambda u: u[0], updates), float(weights[0]),
          float(metrics["loss"][0]))


def owner_request(fed: Federation, params: Any, server_round: int,
                  total_weight: float) -> tuple[federated.ClientOverride, dict[str, Any]]:
  """The owner's elimination submission for a round, and its generator loop's summary.

  `federated.request_indices` (request "private"), `elimination_update` on
  the global model `params`, `elimination_request` scaled with the announced
  `total_weight`.
  """
  s = fed.settings
  owner_data = fed.partition.client(s.owner)
  req = federated.request_indices(owner_data, holdout=fed.holdout, private=fed.private)
  batch = lambda idx: {"image": jnp.asarray(fed.images[idx]), "label": jnp.asarray(fed.labels[idx])}
  key = jax.random.fold_in(jax.random.fold_in(jax.random.key(s.seed), _STREAM_REQUEST),
                           server_round)
  result = federated.elimination_update(
      fed.model.apply_fn, params, batch(req.forget), batch(req.retain), batch(req.reference),
      key=key, lr=s.forsaken_lr, max_steps=s.forsaken_steps, patience=s.forsaken_steps,
      generator_kwargs={"hidden": (16,)})
  request = federated.elimination_request(s.owner, result.update, weight=float(owner_data.size),
                                          scaling=s.scaling, total_weight=total_weight)
  return request, result.info


def client_submission(fed: Federation, client_id: int, params: Any, server_round: int,
                      total_weight: float) -> tuple[Any, float, dict[str, Any]]:
  """What client `client_id` submits in a round: `(update, weight, metrics)`.

  Its training update, or, for the owner in `request_round`, its
  elimination request: the same call either way, so the server cannot tell.
  """
  s = fed.settings
  if client_id == s.owner and server_round == s.request_round:
    request, info = owner_request(fed, params, server_round, total_weight)
    return request.update, float(request.weight), {"loss": float("nan"),
                                                   "accepted": int(info["accepted"])}
  update, weight, loss = local_update(fed, client_id, params, server_round)
  return update, weight, {"loss": loss}


_aggregate = jax.jit(lambda params, updates, weights: federated.apply_update(
    params, federated.weighted_mean(updates, weights)))


def aggregate(params: Any, updates: list[Any], weights: list[float]) -> Any:
  """The server's step on a round's updates (given in client-id order), as `FedAvg.round`'s."""
  stacked = jax.tree.map(lambda *u: jnp.stack(u), *updates)
  return _aggregate(params, stacked, jnp.asarray(weights, jnp.float32))


def simulate(s: Settings, fed: Federation | None = None) -> list[Any]:
  """The same federation in one process (`FedAvg.round`): the global model after each round.

  `fed`: `build_federation(s)`, to reuse its compiled round (default: built here).
  """
  fed = build_federation(s) if fed is None else fed
  if fed.settings != s:
    raise ValueError("fed was built for other settings")
  data = federated.gather_client_data(fed.images, fed.labels, fed.partition,
                                      np.arange(s.num_clients))
  total_weight = float(fed.partition.sizes.sum())
  params, history = initial_params(fed), []
  for r in range(1, s.num_rounds + 1):
    override = (owner_request(fed, params, r, total_weight)[0] if r == s.request_round
                else None)
    params, _ = fed.fedavg.round(params, data, round_key(s, r), override=override)
    history.append(jax.device_get(params))
  return history


def accuracy(fed: Federation, params: Any) -> float:
  """Accuracy on the federation's test examples."""
  logits = fed.model.apply_fn(params, fed.images[fed.test])
  return float(np.mean(np.argmax(np.asarray(logits), -1) == fed.labels[fed.test]))


# ----------------------------------------------------------------------------- Flower


def _flwr():
  try:
    import flwr  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError('the Flower federation needs flwr: pip install -e ".[flower]"') from e
  return flwr


def _to_arrays(tree: Any) -> list[np.ndarray]:
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _from_arrays(like: Any, arrays: list[np.ndarray]) -> Any:
  leaves, treedef = jax.tree.flatten(like)
  if len(arrays) != len(leaves):
    raise ValueError(f"received {len(arrays)} arrays, the model has {len(leaves)}")
  return jax.tree.unflatten(treedef, [np.asarray(a, l.dtype).reshape(l.shape)
                                      for a, l in zip(arrays, leaves)])


def make_strategy(fed: Federation, out_dir: str, *, wait_seconds: int = 60) -> Any:
  """The server's Flower strategy: FedAvg on updates with the simulation's aggregation.

  Every round waits (at most `wait_seconds`) for all K clients, sends them
  the global model with the round number and the previous round's total
  weight (the announcement `"inverse_share"` needs), and aggregates their
  updates with `aggregate`. A failed client fails the run. The global model
  after round r is written to `<out_dir>/round_<r>.npz` (`load_round`).
  """
  flwr = _flwr()
  wire = flwr.common
  s = fed.settings

  class UpdateFedAvg(flwr.server.strategy.Strategy):
    """FedAvg whose clients submit updates `theta_k - theta` (not models)."""

    def __init__(self):
      self.params = jax.device_get(initial_params(fed))
      self.total_weight = 0.0
      self.records = []

    def initialize_parameters(self, client_manager):
      return wire.ndarrays_to_parameters(_to_arrays(self.params))

    def configure_fit(self, server_round, parameters, client_manager):
      if not client_manager.wait_for(s.num_clients, timeout=wait_seconds):
        raise RuntimeError(f"round {server_round}: {client_manager.num_available()} of "
                           f"{s.num_clients} clients connected within {wait_seconds} s")
      self.round_start = time.perf_counter()
      config = {"round": server_round, "total_weight": self.total_weight}
      fit_ins = wire.FitIns(parameters, config)
      return [(c, fit_ins) for c in client_manager.sample(s.num_clients)]

    def aggregate_fit(self, server_round, results, failures):
      if failures or len(results) != s.num_clients:
        raise RuntimeError(f"round {server_round}: {len(results)} results, {len(failures)} "
                           f"failures: {failures!r}")
      results = sorted(results, key=lambda r: int(r[1].metrics["client_id"]))
      ids = [int(r[1].metrics["client_id"]) for r in results]
      if ids != list(range(s.num_clients)):
        raise RuntimeError(f"round {server_round}: got updates of clients {ids}")
      updates = [_from_arrays(self.params, wire.parameters_to_ndarrays(r[1].parameters))
                 for r in results]
      weights = [float(r[1].num_examples) for r in results]
      self.params = jax.device_get(aggregate(self.params, updates, weights))
      self.total_weight = float(sum(weights))
      save_round(out_dir, server_round, self.params)
      self.records.append({"round": server_round, "test_accuracy": accuracy(fed, self.params),
                           "seconds": time.perf_counter() - self.round_start})
      print(f"[flower server] round {server_round}: test accuracy "
            f"{self.records[-1]['test_accuracy']:.3f}, {self.records[-1]['seconds']:.2f} s",
            flush=True)
      return wire.ndarrays_to_parameters(_to_arrays(self.params)), {}

    def configure_evaluate(self, server_round, parameters, client_manager):
      return []

    def aggregate_evaluate(self, server_round, results, failures):
      return None, {}

    def evaluate(self, server_round, parameters):
      return None

  return UpdateFedAvg()


def make_client(fed: Federation, client_id: int) -> Any:
  """Client `client_id` as a Flower client: each `fit` is `client_submission`."""
  flwr = _flwr()
  if not 0 <= client_id < fed.settings.num_clients:
    raise ValueError(f"client_id must be in [0, {fed.settings.num_clients}), got {client_id}")
  like = params_shapes(fed)

  class Client(flwr.client.NumPyClient):

    def fit(self, parameters, config):
      params = _from_arrays(like, parameters)
      update, weight, metrics = client_submission(
          fed, client_id, params, int(config["round"]), float(config["total_weight"]))
      return (_to_arrays(jax.device_get(update)), int(weight),
              {"client_id": client_id, **metrics})

  return Client().to_client()


def save_round(out_dir: str, server_round: int, params: Any) -> None:
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, f"round_{server_round}.npz")
  np.savez(path + ".tmp.npz", *_to_arrays(params))
  os.replace(path + ".tmp.npz", path)


def load_round(out_dir: str, server_round: int, like: Any) -> Any:
  """The global model the server wrote after `server_round`."""
  with np.load(os.path.join(out_dir, f"round_{server_round}.npz")) as f:
    return _from_arrays(like, [f[f"arr_{i}"] for i in range(len(f.files))])


def serve(s: Settings, address: str, out_dir: str, *, round_timeout: float = 120.0) -> None:
  """Runs the server until `s.num_rounds` rounds are done; writes `summary.json` too."""
  flwr = _flwr()
  fed = build_federation(s)
  strategy = make_strategy(fed, out_dir)
  start = time.perf_counter()
  flwr.server.start_server(server_address=address, strategy=strategy,
                           config=flwr.server.ServerConfig(num_rounds=s.num_rounds,
                                                           round_timeout=round_timeout))
  if len(strategy.records) != s.num_rounds:
    raise RuntimeError(f"the server finished {len(strategy.records)} of {s.num_rounds} rounds")
  with open(os.path.join(out_dir, "summary.json"), "w") as f:
    json.dump({"settings": s._asdict(), "rounds": strategy.records,
               "seconds": time.perf_counter() - start}, f, indent=1)


def wait_for_server(address: str, seconds: float) -> None:
  """Blocks until `address` (host:port) accepts TCP connections; TimeoutError after `seconds`."""
  host, port = address.rsplit(":", 1)
  deadline = time.monotonic() + seconds
  while True:
    try:
      with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
        return
    except OSError:
      if time.monotonic() > deadline:
        raise TimeoutError(f"no server at {address} after {seconds} s") from None
      time.sleep(0.1)


def join(s: Settings, address: str, client_id: int, *, max_wait_seconds: float = 60.0) -> None:
  """Runs client `client_id` until the server ends the run."""
  flwr = _flwr()
  client = make_client(build_federation(s), client_id)
  # Flower's gRPC client gives up at once on a server that is not listening yet.
  wait_for_server(address, max_wait_seconds)
  flwr.client.start_client(server_address=address, client=client, insecure=True,
                           max_wait_time=max_wait_seconds)


# ----------------------------------------------------------------------------- on loopback


def free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


def settings_args(s: Settings) -> list[str]:
  """`s` as the command-line flags of `main`."""
  args = []
  for name, value in s._asdict().items():
    flag = "--" + name.replace("_", "-")
    args += [flag, ",".join(map(str, value)) if isinstance(value, tuple) else str(value)]
  return args


def _child_env() -> dict[str, str]:
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  # One CPU device per process (the test suite's fake devices are not passed on).
  flags = [f for f in env.pop("XLA_FLAGS", "").split()
           if "xla_force_host_platform_device_count" not in f]
  if flags:
    env["XLA_FLAGS"] = " ".join(flags)
  env["PYTHONPATH"] = os.pathsep.join([REPO_ROOT] + [p for p in [env.get("PYTHONPATH")] if p])
  return env


def _tail(path: str, lines: int = 25) -> str:
  with open(path, errors="replace") as f:
    return "".join(f.readlines()[-lines:])


def run_local(s: Settings, workdir: str, *, timeout: float = 120.0) -> dict[str, Any]:
  """Runs the federation as 1 + K processes on 127.0.0.1; kills them all on failure.

  Returns:
    `{"rounds": [global model after round r, ...], "summary": the server's
    summary.json, "seconds": wall time of the processes, "logs": dir}`.

  Raises:
    RuntimeError: a process failed (with the tail of its log);
    TimeoutError: the run took longer than `timeout` seconds.
  """
  check_settings(s)
  address = f"127.0.0.1:{free_port()}"
  out_dir, log_dir = os.path.join(workdir, "server"), os.path.join(workdir, "logs")
  os.makedirs(log_dir, exist_ok=True)
  command = [sys.executable, "-m", "experiments.federated.flower"]
  roles = [("server", ["server", "--address", address, "--out", out_dir])]
  roles += [(f"client_{k}", ["client", "--address", address, "--client-id", str(k)])
            for k in range(s.num_clients)]
  procs, logs = {}, {}
  start = time.perf_counter()
  try:
    for name, args in roles:
      logs[name] = os.path.join(log_dir, f"{name}.log")
      with open(logs[name], "w") as log:
        procs[name] = subprocess.Popen(command + args + settings_args(s), cwd=REPO_ROOT,
                                       env=_child_env(), stdout=log, stderr=subprocess.STDOUT)
    server_done = None
    while any(p.poll() is None for p in procs.values()):
      failed = [n for n, p in procs.items() if p.returncode not in (None, 0)]
      if failed:
        raise RuntimeError(f"{failed[0]} exited with {procs[failed[0]].returncode}:\n"
                           + _tail(logs[failed[0]]))
      if procs["server"].returncode == 0:
        server_done = server_done or time.perf_counter()
        if time.perf_counter() - server_done > 30:
          raise RuntimeError("the server finished but clients did not disconnect in 30 s")
      if time.perf_counter() - start > timeout:
        raise TimeoutError(f"the federation did not finish in {timeout} s; server log:\n"
                           + _tail(logs["server"]))
      time.sleep(0.1)
    failed = [n for n, p in procs.items() if p.returncode != 0]
    if failed:
      raise RuntimeError(f"{failed[0]} exited with {procs[failed[0]].returncode}:\n"
                         + _tail(logs[failed[0]]))
  finally:
    for p in procs.values():
      if p.poll() is None:
        p.kill()
        p.wait()
  seconds = time.perf_counter() - start
  like = params_shapes(build_federation(s))
  with open(os.path.join(out_dir, "summary.json")) as f:
    summary = json.load(f)
  return {"rounds": [load_round(out_dir, r, like) for r in range(1, s.num_rounds + 1)],
          "summary": summary, "seconds": seconds, "logs": log_dir}


def max_abs_difference(a: Any, b: Any) -> float:
  """Largest coordinate difference between two parameter pytrees."""
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


# ----------------------------------------------------------------------------- command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  """The command line (see the module docstring)."""
  parser = argparse.ArgumentParser(
      prog="python -m experiments.federated.flower",
      description="A federation of forsaken_jax clients over Flower (server, clients, or all "
                  "of them on 127.0.0.1).")
  roles = parser.add_subparsers(dest="role", required=True)
  server = roles.add_parser("server", help="the Flower server (FedAvg on the clients' updates)")
  server.add_argument("--address", default="0.0.0.0:8080", help="host:port to listen on")
  server.add_argument("--out", required=True, help="directory for the global models per round")
  client = roles.add_parser("client", help="one client process")
  client.add_argument("--address", required=True, help="the server's host:port")
  client.add_argument("--client-id", type=int, required=True)
  local = roles.add_parser("local", help="the server and every client as processes on loopback")
  local.add_argument("--workdir", default=None, help="default: a temporary directory")
  local.add_argument("--timeout", type=float, default=300.0)
  local.add_argument("--check", action="store_true",
                     help="also run the in-process simulation and compare the global models")
  defaults = Settings()
  for sub in (server, client, local):
    for name, value in defaults._asdict().items():
      flag = "--" + name.replace("_", "-")
      if isinstance(value, tuple):
        sub.add_argument(flag, default=value,
                         type=lambda v: tuple(int(x) for x in v.split(",") if x))
      else:
        sub.add_argument(flag, type=type(value), default=value)
  return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
  args = parse_args(argv)
  s = Settings(**{name: getattr(args, name) for name in Settings._fields})
  check_settings(s)
  if args.role in ("server", "client"):
    common.enable_compilation_cache()  # a rerun loads its programs: the owner's loop above all
    try:
      if args.role == "server":
        serve(s, args.address, args.out)
      else:
        join(s, args.address, args.client_id)
      usage = resource.getrusage(resource.RUSAGE_SELF)
      name = "server" if args.role == "server" else f"client {args.client_id}"
      print(f"[flower {name}] done, {usage.ru_utime + usage.ru_stime:.1f} s of CPU", flush=True)
    except BaseException:  # pylint: disable=broad-except
      # Exit now: Flower's gRPC threads would keep a failed process alive.
      traceback.print_exc()
      sys.stdout.flush()
      os._exit(1)
  else:
    workdir = args.workdir or tempfile.mkdtemp(prefix="flower_")
    run = run_local(s, workdir, timeout=args.timeout)
    for record in run["summary"]["rounds"]:
      print(f"round {record['round']}: test accuracy {record['test_accuracy']:.3f}")
    print(f"{s.num_clients} clients, {s.num_rounds} rounds over Flower: {run['seconds']:.1f} s "
          f"(logs in {run['logs']})")
    if args.check:
      for r, (deployed, simulated) in enumerate(zip(run["rounds"], simulate(s)), 1):
        print(f"round {r}: max |Flower - simulation| = "
              f"{max_abs_difference(deployed, simulated):.3g}")


if __name__ == "__main__":
  main()
