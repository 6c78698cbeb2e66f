"""Shadow-model attack classifier of Shokri et al. 2017.

Shadow models mimic the target; their posteriors on their own training data
(members) and on held-out data (non-members) train a binary attack classifier,
which is then applied to the target model's posteriors. This is the oracle of
the "Learn to Forget" era; LiRA (`forsaken_jax.mia.lira`) is the stronger
modern one.

Design:
* Features (`attack_features`): `"sorted"` is the posterior sorted in
  decreasing order (label-agnostic, as in ML-Leaks; `top_k` keeps the largest
  k, useful with many classes); `"sorted_label"` appends the true-class
  probability and the loss `-log p_y`, which makes the attack much stronger.
  Features are standardized with the mean and scale of the fitting data.
* Classifier: an MLP with one hidden ReLU layer (64 units by default), the
  size both Shokri et al. and ML-Leaks use, trained with Adam on sigmoid
  cross-entropy. Every step draws, with replacement, `batch_size` members and
  `batch_size` non-members, so the classes are balanced whatever their sizes.
  The loop is a `lax.scan` inside one `jax.jit`; training is deterministic
  given the key (per-step keys are `fold_in(key, step)`).
* `per_class=True` trains one attack model per true label, as in Shokri et
  al.'s original: the models' parameters are stacked on a leading class axis
  and trained together with `jax.vmap`, each on balanced batches of its own
  class. Otherwise one global model serves every class.

Reference:
  Shokri et al. 2017, "Membership Inference Attacks against Machine Learning
  Models", https://arxiv.org/abs/1610.05820.
  Salem et al. 2019, "ML-Leaks", https://arxiv.org/abs/1806.01246.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from forsaken_jax.mia.stats import _is_concrete

FEATURE_MODES = ("sorted", "sorted_label")


class ShokriAttack(NamedTuple):
  """A fitted attack classifier (a pytree of arrays).

  Attributes:
    params: MLP parameters stacked over G attack models (G = number of
      classes with `per_class=True`, else 1): `w1 [G, F, H]`, `b1 [G, H]`,
      `w2 [G, H]`, `b2 [G]`.
    feature_mean: `[F]` mean of the fitting features (for standardization).
    feature_scale: `[F]` their standard deviation (1 where constant).
    train_balanced_accuracy: balanced accuracy at threshold 0.5 on the
      fitting data (an optimistic figure; evaluate on held-out data).
  """
  params: dict[str, jax.Array]
  feature_mean: jax.Array
  feature_scale: jax.Array
  train_balanced_accuracy: jax.Array

  @property
  def num_models(self) -> int:
    return self.params["w1"].shape[0]


def attack_features(probs: ArrayLike, labels: ArrayLike | None = None, *,
                    mode: str = "sorted", top_k: int | None = None) -> jax.Array:
  """Attack-classifier features from posteriors.

  Args:
    probs: `[N, C]` softmax probabilities (not logits).
    labels: `[N]` integer true labels; required for `"sorted_label"`.
    mode: `"sorted"` (posterior sorted decreasingly) or `"sorted_label"`
      (that, then `p_y`, then `-log p_y`, with `p_y` floored at the smallest
      normal float so the loss stays finite).
    top_k: keep only the `top_k` largest probabilities (default: all C).

  Returns:
    `[N, F]` features, `F = top_k` (`+ 2` for `"sorted_label"`).
  """
  if mode not in FEATURE_MODES:
    raise ValueError(f"mode must be one of {FEATURE_MODES}; got {mode!r}")
  probs = jnp.asarray(probs)
  if not jnp.issubdtype(probs.dtype, jnp.floating):
    probs = probs.astype(jnp.result_type(float))
  if probs.ndim != 2 or probs.shape[1] < 2:
    raise ValueError(f"probs must have shape [N, C] with C >= 2; got shape {probs.shape}")
  num_classes = probs.shape[1]
  k = num_classes if top_k is None else top_k
  if not isinstance(k, (int, np.integer)) or not 1 <= k <= num_classes:
    raise ValueError(f"top_k must be an integer in [1, {num_classes}]; got {top_k!r}")
  if _is_concrete(probs) and probs.size:
    host = np.asarray(probs, np.float64)
    sums = host.sum(axis=1)
    if (host < 0).any() or (np.abs(sums - 1) > 1e-3).any():
      raise ValueError(
          f"probs must be probabilities (rows of a softmax); got values in "
          f"[{host.min():.3g}, {host.max():.3g}] and row sums in [{sums.min():.3g}, "
          f"{sums.max():.3g}]; pass jax.nn.softmax(logits)")
  if mode == "sorted_label":
    labels = _check_labels(labels, probs.shape[0], num_classes, "labels")
  else:
    labels = jnp.zeros(probs.shape[0], jnp.int32)
  return _attack_features(probs, labels, mode=mode, top_k=int(k))


@functools.partial(jax.jit, static_argnames=("mode", "top_k"))
def _attack_features(probs: jax.Array, labels: jax.Array, *, mode: str, top_k: int) -> jax.Array:
  features = jnp.sort(probs, axis=1)[:, ::-1][:, :top_k]
  if mode == "sorted_label":
    p_y = jnp.take_along_axis(probs, labels[:, None], axis=1)
    loss = -jnp.log(jnp.maximum(p_y, jnp.finfo(probs.dtype).tiny))
    features = jnp.concatenate([features, p_y, loss], axis=1)
  return features


def _check_labels(labels, n: int, num_classes: int | None, name: str) -> jax.Array:
  if labels is None:
    raise ValueError(
        f"{name} must be given (per-class attack or 'sorted_label' features); got None")
  labels = jnp.asarray(labels)
  if labels.shape != (n,) or not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f"{name} must be integers of shape ({n},); got {labels.dtype} {labels.shape}")
  if num_classes is not None and _is_concrete(labels) and n:
    host = np.asarray(labels)
    lo, hi = int(host.min()), int(host.max())
    if lo < 0 or hi >= num_classes:
      raise ValueError(f"{name} must lie in [0, {num_classes}); got values in [{lo}, {hi}]")
  return labels


def _check_features(x, name: str, num_features: int | None = None) -> jax.Array:
  x = jnp.asarray(x)
  if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
    raise ValueError(f"{name} must be a non-empty [N, F] array; got shape {x.shape}")
  if num_features is not None and x.shape[1] != num_features:
    raise ValueError(f"{name} must have {num_features} features per row; got shape {x.shape}")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    x = x.astype(jnp.result_type(float))
  return x


def _mlp(params: dict[str, jax.Array], x: jax.Array) -> jax.Array:
  """One attack model: `[B, F] -> [B]` member logits."""
  h = jax.nn.relu(x @ params["w1"] + params["b1"])
  return h @ params["w2"] + params["b2"]


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _init(key: jax.Array, num_models: int, num_features: int, hidden: int) -> dict[str, jax.Array]:
  k1, k2 = jax.random.split(key)
  return {
      # He initialization for the ReLU layer, LeCun for the output.
      "w1": jax.random.normal(k1, (num_models, num_features, hidden)) * (2.0 / num_features)**0.5,
      "b1": jnp.zeros((num_models, hidden)),
      "w2": jax.random.normal(k2, (num_models, hidden)) * jnp.sqrt(1.0 / hidden),
      "b2": jnp.zeros((num_models,)),
  }


def _bucket(n: int) -> int:
  """Rounds a size up to a power of two (>= 8) so that fits on data of similar
  size reuse one compiled training loop."""
  return max(8, 1 << (int(n) - 1).bit_length())


def _pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
  return np.concatenate([x, np.zeros((rows - x.shape[0],) + x.shape[1:], x.dtype)])


def _logits_by_group(params: dict[str, jax.Array], x: jax.Array, groups: jax.Array) -> jax.Array:
  """Member logits of each row under the attack model of its group."""
  if params["w1"].shape[0] == 1:
    return _mlp(jax.tree.map(lambda p: p[0], params), x)
  # Every group model on every row, then each row's own group: G x the work
  # of one model, but no per-row copies of the parameters.
  all_logits = jax.vmap(_mlp, in_axes=(0, None))(params, x)  # [G, N]
  return jnp.take_along_axis(all_logits, groups[None, :], axis=0)[0]


@functools.partial(jax.jit, static_argnames=("steps", "batch_size", "learning_rate"))
def _train(key, params, x_mem, x_non, mem_groups, non_groups, mem_valid, non_valid, mem_table,
           mem_counts, non_table, non_counts, *, steps: int, batch_size: int,
           learning_rate: float):
  """Adam on balanced minibatches; all G models step together.

  Rows of `x_mem` / `x_non` beyond the real data are padding: the index
  tables never point at them and `*_valid` masks them out of the accuracy.
  """
  tx = optax.adam(learning_rate)
  num_models = mem_table.shape[0]
  targets = jnp.concatenate(
      [jnp.ones((num_models, batch_size)), jnp.zeros((num_models, batch_size))], axis=1)

  def loss_fn(params, x):
    logits = jax.vmap(_mlp)(params, x)  # [G, 2B]
    # Sum of per-model means: each model's gradient is that of its own loss.
    return jnp.sum(jnp.mean(optax.sigmoid_binary_cross_entropy(logits, targets), axis=1))

  def sample(key, table, counts, x):
    pos = jax.random.randint(key, (num_models, batch_size), 0, counts[:, None])
    return x[jnp.take_along_axis(table, pos, axis=1)]  # [G, B, F]

  def step(carry, i):
    params, opt_state = carry
    k_mem, k_non = jax.random.split(jax.random.fold_in(key, i))
    x = jnp.concatenate(
        [sample(k_mem, mem_table, mem_counts, x_mem), sample(k_non, non_table, non_counts, x_non)],
        axis=1)
    loss, grads = jax.value_and_grad(loss_fn)(params, x)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), jnp.arange(steps))
  tpr = jnp.sum((_logits_by_group(params, x_mem, mem_groups) >= 0) & mem_valid) / jnp.sum(mem_valid)
  tnr = jnp.sum((_logits_by_group(params, x_non, non_groups) < 0) & non_valid) / jnp.sum(non_valid)
  return params, 0.5 * (tpr + tnr)


def _group_tables(groups: np.ndarray, num_groups: int, name: str):
  """Padded `[G, width]` index table of each group's rows, and the counts."""
  counts = np.bincount(groups, minlength=num_groups)
  if counts.min() == 0:
    missing = int(np.argmin(counts))
    raise ValueError(
        f"{name} has no example of class {missing}; a per-class attack needs members and "
        f"non-members of every class in [0, {num_groups}) (counts {counts.tolist()}); use "
        f"per_class=False or a smaller num_classes")
  table = np.zeros((num_groups, _bucket(counts.max())), np.int32)
  for g in range(num_groups):
    rows = np.flatnonzero(groups == g)
    table[g, :rows.size] = rows
  return table, counts.astype(np.int32)


def fit_shokri_attack(key: jax.Array, member_features: ArrayLike,
                      nonmember_features: ArrayLike, *,
                      member_labels: ArrayLike | None = None,
                      nonmember_labels: ArrayLike | None = None,
                      per_class: bool = False, num_classes: int | None = None,
                      hidden: int = 64, steps: int = 500, batch_size: int = 128,
                      learning_rate: float = 1e-3) -> ShokriAttack:
  """Trains the attack classifier on shadow models' members and non-members.

  Args:
    key: a `jax.random.key` (initialization and minibatch sampling).
    member_features: `[M, F]` `attack_features` of shadow-model members.
    nonmember_features: `[N, F]` features of shadow-model non-members.
    member_labels: `[M]` true labels; required with `per_class=True`.
    nonmember_labels: `[N]` true labels; required with `per_class=True`.
    per_class: one attack model per true label instead of one global model.
    num_classes: number of per-class models (default: the largest label + 1).
      Every class needs at least one member and one non-member.
    hidden: hidden-layer width.
    steps: Adam steps.
    batch_size: members (and as many non-members) per model per step.
    learning_rate: Adam learning rate.

  Returns:
    A `ShokriAttack`.

  Example:
    >>> rng = np.random.default_rng(0)
    >>> members, nonmembers = rng.normal(2, 1, (200, 3)), rng.normal(0, 1, (200, 3))
    >>> attack = fit_shokri_attack(jax.random.key(0), members, nonmembers, steps=200)
    >>> bool(attack.train_balanced_accuracy > 0.85)
    True
  """
  x_mem = _check_features(member_features, "member_features")
  x_non = _check_features(nonmember_features, "nonmember_features", x_mem.shape[1])
  for name, value in (("hidden", hidden), ("steps", steps), ("batch_size", batch_size)):
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
      raise ValueError(f"{name} must be a positive integer; got {value!r}")
  if not learning_rate > 0:
    raise ValueError(f"learning_rate must be positive; got {learning_rate!r}")
  if per_class:
    if num_classes is not None and (not isinstance(num_classes, (int, np.integer))
                                    or num_classes < 1):
      raise ValueError(f"num_classes must be a positive integer; got {num_classes!r}")
    groups_mem = np.asarray(_check_labels(member_labels, x_mem.shape[0], num_classes,
                                          "member_labels"))
    groups_non = np.asarray(_check_labels(nonmember_labels, x_non.shape[0], num_classes,
                                          "nonmember_labels"))
    if min(groups_mem.min(), groups_non.min()) < 0:
      raise ValueError(
          f"member_labels and nonmember_labels must be non-negative; got minimum "
          f"{min(groups_mem.min(), groups_non.min())}")
    if num_classes is None:
      num_classes = int(max(groups_mem.max(), groups_non.max())) + 1
    num_models = int(num_classes)
  else:
    groups_mem = np.zeros(x_mem.shape[0], np.int32)
    groups_non = np.zeros(x_non.shape[0], np.int32)
    num_models = 1
  mem_table, mem_counts = _group_tables(groups_mem, num_models, "member_labels")
  non_table, non_counts = _group_tables(groups_non, num_models, "nonmember_labels")

  # Standardize with the fitting data's statistics (host-side, once).
  x_mem, x_non = np.asarray(x_mem, np.float32), np.asarray(x_non, np.float32)
  x_all = np.concatenate([x_mem, x_non])
  mean = x_all.mean(axis=0)
  std = x_all.std(axis=0)
  # Constant features (e.g. a saturated top-k slot) keep their scale.
  scale = np.where(std > 1e-8, std, 1.0).astype(np.float32)

  def prepared(x, groups):
    rows = _bucket(x.shape[0])
    valid = np.arange(rows) < x.shape[0]
    return (_pad_rows((x - mean) / scale, rows), _pad_rows(groups.astype(np.int32), rows), valid)

  x_mem_p, groups_mem_p, mem_valid = prepared(x_mem, groups_mem)
  x_non_p, groups_non_p, non_valid = prepared(x_non, groups_non)
  k_init, k_train = jax.random.split(key)
  params = _init(k_init, num_models, x_mem.shape[1], int(hidden))
  params, train_acc = _train(k_train, params, x_mem_p, x_non_p, groups_mem_p, groups_non_p,
                             mem_valid, non_valid, mem_table, mem_counts, non_table, non_counts,
                             steps=int(steps), batch_size=int(batch_size),
                             learning_rate=float(learning_rate))
  return ShokriAttack(params=params, feature_mean=jnp.asarray(mean),
                      feature_scale=jnp.asarray(scale), train_balanced_accuracy=train_acc)


def shokri_scores(attack: ShokriAttack, features: ArrayLike,
                  labels: ArrayLike | None = None) -> jax.Array:
  """Member probabilities from a fitted attack (higher = member).

  Args:
    attack: from `fit_shokri_attack`.
    features: `[N, F]` `attack_features` of the examples under audit, built
      the same way as the fitting features.
    labels: `[N]` true labels; required for a per-class attack, which scores
      each example with its class's model.

  Returns:
    `[N]` probabilities in `[0, 1]`.
  """
  x = _check_features(features, "features", attack.feature_mean.shape[0])
  if attack.params["w1"].shape[0] == 1:
    labels = jnp.zeros(x.shape[0], jnp.int32)
  else:
    labels = _check_labels(labels, x.shape[0], attack.params["w1"].shape[0], "labels")
  return _shokri_scores(attack, x, labels)


@jax.jit
def _shokri_scores(attack: ShokriAttack, x: jax.Array, labels: jax.Array) -> jax.Array:
  x = (x - attack.feature_mean) / attack.feature_scale
  return jax.nn.sigmoid(_logits_by_group(attack.params, x, labels))


def shokri_predict(attack: ShokriAttack, features: ArrayLike,
                   labels: ArrayLike | None = None, *, threshold: float = 0.5) -> jax.Array:
  """Hard membership predictions: member probability `>= threshold`.

  Args:
    attack: from `fit_shokri_attack`.
    features: `[N, F]` attack features.
    labels: `[N]` true labels (per-class attacks).
    threshold: decision threshold on the member probability.

  Returns:
    `[N]` bool.
  """
  return shokri_scores(attack, features, labels) >= threshold
