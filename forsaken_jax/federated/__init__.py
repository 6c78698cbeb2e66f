"""Federated learning with user-level memorization elimination (Forsaken v1).

- `partition`: which examples each user holds (IID, Dirichlet label skew, one
  user with private out-of-distribution photos) and their validation.
- `clients`: padded per-client data stacks, client sampling, local training.
- `fedavg`: one FedAvg / FedProx round of all sampled clients as one
  compiled program, the client axis vmapped and shardable over a mesh.
- `secure_agg`: simulated secure aggregation (pairwise masks that cancel in
  the sum; dropped clients' masks recovered).
- `eliminate`: a user's elimination request: its Forsaken dummy update,
  submitted through the ordinary (masked) update channel.
- `baselines`: FedEraser's calibration step and projected gradient ascent.

Example:

  part = federated.private_data_partition(labels, 20, private=photos, owner=0, seed=0)
  fed = federated.make_fedavg(apply_fn, optax.sgd(0.1), local_epochs=2, secure=True)
  data = federated.gather_client_data(images, labels, part, range(20))
  params, metrics = fed.round(params, data, jax.random.key(0))
"""

from forsaken_jax.federated.baselines import (
    fed_eraser_calibrate, fed_eraser_step, make_projected_gradient_ascent, pga_radius,
    pga_reference, tree_bytes)
from forsaken_jax.federated.clients import (
    PADDING_CLIENT, ClientData, epoch_order, gather_client_data, make_local_train, num_examples,
    sample_clients)
from forsaken_jax.federated.eliminate import (
    REQUESTS, SCALINGS, EliminationResult, RequestData, elimination_request, elimination_update,
    removal_update, request_indices, scale_update)
from forsaken_jax.federated.fedavg import (
    CLIENT_AXIS, ClientOverride, FedAvg, apply_update, client_mesh, make_fedavg, weighted_mean)
from forsaken_jax.federated.partition import (
    SCHEMES, Partition, check_client_id, dirichlet_partition, iid_partition, label_skew,
    private_data_partition, validate_partition)
from forsaken_jax.federated import secure_agg
from forsaken_jax.federated.secure_agg import secure_sum, secure_weighted_mean

__all__ = [
    "CLIENT_AXIS", "ClientData", "ClientOverride", "EliminationResult", "FedAvg", "PADDING_CLIENT",
    "Partition", "REQUESTS", "RequestData", "SCALINGS", "SCHEMES", "apply_update",
    "check_client_id", "client_mesh", "dirichlet_partition", "elimination_request",
    "elimination_update", "epoch_order", "fed_eraser_calibrate", "fed_eraser_step",
    "gather_client_data", "iid_partition", "label_skew", "make_fedavg", "make_local_train",
    "make_projected_gradient_ascent", "num_examples", "pga_radius", "pga_reference",
    "private_data_partition", "removal_update", "request_indices", "sample_clients",
    "scale_update", "secure_agg", "secure_sum", "secure_weighted_mean", "tree_bytes",
    "validate_partition", "weighted_mean",
]
