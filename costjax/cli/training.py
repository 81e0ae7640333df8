"""Training for ``costjax compare``: arms, models, and one compiled program per arm.

For each arm, every seed, every grid point (learning rate x the arm's own
hyperparameter) and every cost matrix trains together in ONE jitted program: the
whole run (epochs x minibatches) is a :func:`jax.lax.scan`, vmapped over seeds, grid
points and a stack of cost matrices. Each minibatch is gathered from the training
table (fed sharded, one shard per process, then gathered once on device) and
constrained to the ``data`` mesh axis, so the same program runs on one CPU, on many
devices, and over many processes. At the end of every epoch the program evaluates
the validation cost of argmax predictions (cheap: one forward pass over the
validation set), which gives the per-epoch curves of the report.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import costjax as cj
from costjax.cli import distributed
from costjax.cli.errors import UserInputError

# --------------------------------------------------------------------------- #
# Models (Flax NNX).
# --------------------------------------------------------------------------- #


class MLP(nnx.Module):
  """``din -> hidden -> K`` with ReLU."""

  def __init__(self, din: int, hidden: int, num_classes: int, *, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(din, hidden, rngs=rngs)
    self.out = nnx.Linear(hidden, num_classes, rngs=rngs)

  def __call__(self, x):
    x = x.reshape(x.shape[0], -1)
    return self.out(jax.nn.relu(self.hidden(x)))


class PatchConv(nnx.Module):
  """A 3x3 "SAME" convolution as image patches times a matrix.

  Same function class as ``nnx.Conv``, but written so that ``jax.vmap`` over models
  (batched weights AND batched images, as in ``costjax compare``) differentiates: the
  batching rule of ``conv_general_dilated`` does not cover the kernel gradient when both
  operands are batched, while patch extraction only ever batches its input.
  """

  def __init__(self, cin: int, cout: int, *, rngs: nnx.Rngs):
    init = nnx.initializers.lecun_normal()
    self.kernel = nnx.Param(init(rngs.params(), (cin * 9, cout)))
    self.bias = nnx.Param(jnp.zeros((cout,)))

  def __call__(self, x):
    patches = jax.lax.conv_general_dilated_patches(
        x, filter_shape=(3, 3), window_strides=(1, 1), padding="SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    out = patches @ self.kernel[...]
    return out + jax.lax.broadcast_to_rank(self.bias[...], out.ndim)


class CNN(nnx.Module):
  """A small CNN for small images: two 3x3 convolutions, 2x2 average pooling, two dense."""

  def __init__(self, image_shape: tuple[int, int, int], num_classes: int, *, rngs: nnx.Rngs):
    h, w, c = image_shape
    self.image_shape = image_shape
    self.conv1 = PatchConv(c, 16, rngs=rngs)
    self.conv2 = PatchConv(16, 32, rngs=rngs)
    self.dense = nnx.Linear((h // 2) * (w // 2) * 32, 64, rngs=rngs)
    self.out = nnx.Linear(64, num_classes, rngs=rngs)

  def __call__(self, x):
    x = x.reshape((x.shape[0], *self.image_shape))
    x = jax.nn.relu(self.conv1(x))
    x = jax.nn.relu(self.conv2(x))
    x = nnx.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
    x = x.reshape(x.shape[0], -1)
    return self.out(jax.nn.relu(self.dense(x)))


MODELS = ("mlp", "cnn")


def check_model(kind: str, *, num_features: int, image_shape) -> None:
  """Raises :class:`UserInputError` if ``kind`` cannot be built for this data."""
  if kind not in MODELS:
    raise UserInputError(f"unknown --model {kind!r}; use mlp or cnn.")
  if kind == "cnn":
    if image_shape is None:
      raise UserInputError("--model cnn needs image data (digits); this data is a table. "
                           "Use --model mlp.")
    if int(np.prod(image_shape)) != num_features:
      raise UserInputError(f"--model cnn: images of shape {tuple(image_shape)} need "
                           f"{int(np.prod(image_shape))} features; the data has {num_features} "
                           "(--features selects columns, which a CNN cannot use).")


def make_model(kind: str, *, num_features: int, num_classes: int, hidden: int, image_shape,
               rngs: nnx.Rngs) -> nnx.Module:
  check_model(kind, num_features=num_features, image_shape=image_shape)
  if kind == "mlp":
    return MLP(num_features, hidden, num_classes, rngs=rngs)
  return CNN(tuple(image_shape), num_classes, rngs=rngs)


# --------------------------------------------------------------------------- #
# Losses. Each maps (logits (B, K), labels (B,), cost (K, K) or per-row (B, K, K), hp)
# -> (B,); ``hp``
# is one traced float (lambda, temperature, alpha, epsilon), so a grid of values
# trains in one compiled program through jax.vmap.
# --------------------------------------------------------------------------- #

SINKHORN_TARGET_TEMPERATURE = 0.5  # targets cost_soft_labels(y, C, temperature=0.5)
SINKHORN_EPSILON = 0.1  # epsilon = 0.1 * max C for the CE + lambda * Sinkhorn arm
# Solver settings in training: the library defaults (tol=1e-3, max_iterations=2000), as
# docs/guides/wasserstein.md recommends; an iteration cap can return values far below the
# true ones, and the vmapped solver's compaction and over-relaxation keep the tail short.


def _ce(logits, y, cost, hp):
  del cost, hp
  return optax.softmax_cross_entropy_with_integer_labels(logits, y)


def _sinkhorn_term(logits, y, cost, epsilon_rel):
  targets = cj.cost_soft_labels(y, cost, temperature=SINKHORN_TARGET_TEMPERATURE)
  # epsilon relative to the largest cost, so one value fits every matrix.
  epsilon = epsilon_rel * jnp.max(cost)
  if cost.ndim == 3:  # per-row costs: one transport problem per example, through vmap
    epsilon = jnp.maximum(epsilon, 1e-6)
    per_example = lambda z, t, c: cj.sinkhorn_loss(z, t, c, epsilon=epsilon)
    return jax.vmap(per_example)(logits, targets, cost)
  return cj.sinkhorn_loss(logits, targets, cost, epsilon=epsilon)


def _sinkhorn(logits, y, cost, hp):
  return _sinkhorn_term(logits, y, cost, hp)


def _ce_sinkhorn(logits, y, cost, hp):
  return _ce(logits, y, cost, hp) + hp * _sinkhorn_term(logits, y, cost, SINKHORN_EPSILON)


def _weighted_ce(logits, y, cost, hp):
  del hp
  if cost.ndim == 3:  # per-row costs: class weights of the minibatch's mean matrix
    cost = jnp.mean(cost, axis=0)
  return cj.weighted_cross_entropy(logits, y, class_weights=cj.cost_class_weights(cost))


LOSSES: dict[str, Callable] = {
    "ce": _ce,
    "ec": lambda z, y, c, hp: cj.expected_cost(z, y, c),
    "ce_ec": lambda z, y, c, hp: cj.cost_regularized_cross_entropy(z, y, c, lam=hp),
    "soft": lambda z, y, c, hp: cj.soft_label_cross_entropy(z, y, c, temperature=hp),
    "cdw": lambda z, y, c, hp: cj.class_distance_weighted_cross_entropy(z, y, c, alpha=hp),
    "sinkhorn": _sinkhorn,
    "ce_sinkhorn": _ce_sinkhorn,
    "wce": _weighted_ce,
    "emd": lambda z, y, c, hp: cj.ordinal_emd(z, y),
}
# Losses whose training does not read the cost matrix: trained once per run and
# decoded under every cost matrix.
COST_FREE = ("ce", "emd")


@dataclasses.dataclass(frozen=True)
class Arm:
  key: str  # short id (--arms)
  label: str  # name in the report
  loss: str  # key of LOSSES
  hp_name: str | None  # name of the arm's own hyperparameter
  hp_values: tuple[float, ...]  # its grid (one value = fixed)


ALL_ARMS = (
    Arm("ce", "cross-entropy", "ce", None, (0.0,)),
    Arm("wce", "class-weighted CE (cost-proportionate)", "wce", None, (0.0,)),
    Arm("ec", "expected cost", "ec", None, (0.0,)),
    Arm("ce_ec", "CE + λ·expected cost", "ce_ec", "λ", (1.0, 10.0)),
    Arm("soft0.5", "soft-label CE, T=0.5", "soft", "T", (0.5,)),
    Arm("soft1", "soft-label CE, T=1", "soft", "T", (1.0,)),
    Arm("soft2", "soft-label CE, T=2", "soft", "T", (2.0,)),
    Arm("cdw", "CDW-CE", "cdw", "α", (1.0, 2.0)),
    Arm("sinkhorn", "Sinkhorn (cost-smoothed targets)", "sinkhorn", "ε/max C", (0.1,)),
    Arm("ce_sinkhorn", "CE + λ·Sinkhorn", "ce_sinkhorn", "λ", (0.1, 1.0)),
    Arm("emd", "ordinal EMD", "emd", None, (0.0,)),
)
ARM_KEYS = tuple(a.key for a in ALL_ARMS)


def select_arms(spec: str | None, *, ordinal: bool) -> list[Arm]:
  """The arms to run: all (``emd`` only for ordinal data), or ``spec``'s subset plus ``ce``."""
  if spec is None:
    return [a for a in ALL_ARMS if a.key != "emd" or ordinal]
  wanted = {s.strip() for s in spec.split(",") if s.strip()}
  unknown = wanted - set(ARM_KEYS)
  if unknown:
    raise UserInputError(f"--arms: unknown arm id(s) {sorted(unknown)}; choose from "
                         f"{', '.join(ARM_KEYS)}.")
  if "emd" in wanted and not ordinal:
    raise UserInputError("--arms emd needs ordered classes: use --ordinal (or --data diamonds).")
  wanted.add("ce")
  return [a for a in ALL_ARMS if a.key in wanted]


# --------------------------------------------------------------------------- #
# The compiled training program.
# --------------------------------------------------------------------------- #


def make_train_fn(graphdef, loss_fn, *, epochs, batch_size, n_train, n_val, weight_decay,
                  batch_sharding):
  """``train(params, x_tr, y_tr, x_val, y_val, x_te, cost, all_costs, lr, hp, seed, rc)``.

  ``rc`` is None (one matrix ``cost`` for every row) or per-row costs ``(c_tr, c_val)`` of
  shapes ``(n_train, K, K)`` and ``(n_val, K, K)``: each minibatch then trains on its own
  rows' matrices (gathered with the rows, so they follow every shuffle), and the validation
  curves use each validation row's matrix (``all_costs`` then holds one matrix, M = 1).

  Trains ONE model with the loss under ``cost``. Returns validation logits, test
  logits, the per-epoch training loss (epochs,) and the per-epoch validation cost of
  argmax predictions and of Bayes decisions on the uncalibrated probabilities under each
  of ``all_costs`` (epochs, 2, M). ``x_val``/``x_te`` may
  carry padding rows after the first ``n_val`` (resp. test) rows; the padding never
  enters a cost, and the caller drops its logits.
  """
  steps = n_train // batch_size

  def apply(params, x):
    return nnx.merge(graphdef, params)(x)

  def train(params, x_tr, y_tr, x_val, y_val, x_te, cost, all_costs, lr, hp, seed, rc=None):
    tx = optax.adamw(lr, weight_decay=weight_decay)
    val_mask = jnp.arange(x_val.shape[0]) < n_val

    def batch_loss(p, xb, yb, cb):
      return loss_fn(apply(p, xb), yb, cost if cb is None else cb, hp).mean()

    def step(carry, idx):
      p, opt_state = carry
      # The minibatch is split over the "data" axis; params stay replicated.
      xb = jax.lax.with_sharding_constraint(x_tr[idx], batch_sharding)
      yb = jax.lax.with_sharding_constraint(y_tr[idx], batch_sharding)
      # Per-row costs: the minibatch's own rows' matrices (B, K, K).
      cb = None if rc is None else jax.lax.with_sharding_constraint(rc[0][idx], batch_sharding)
      loss, grads = jax.value_and_grad(batch_loss)(p, xb, yb, cb)
      updates, opt_state = tx.update(grads, opt_state, p)
      return (optax.apply_updates(p, updates), opt_state), loss

    def epoch(carry, k):
      perm = jax.random.permutation(k, n_train)[: steps * batch_size]
      carry, losses = jax.lax.scan(step, carry, perm.reshape(steps, batch_size))
      z = apply(carry[0], x_val)
      pred = jnp.argmax(z, axis=-1)
      if rc is None:
        # Under every matrix of the run (M,): cost-free arms train once for all of them.
        rows = all_costs[:, y_val, :]  # (M, n, K): each row's costs of every prediction
        expected = jnp.einsum("nk,mkj->mnj", jax.nn.softmax(z, axis=-1), all_costs)
      else:  # per-row costs (M = 1)
        c_val = rc[1]
        rows = jnp.take_along_axis(c_val, y_val[:, None, None], axis=1)[None, :, 0, :]
        expected = jnp.einsum("nk,nkj->nj", jax.nn.softmax(z, axis=-1), c_val)[None]
      per_example = jnp.take_along_axis(rows, jnp.broadcast_to(pred[None, :, None],
                                                               (*rows.shape[:2], 1)),
                                        axis=-1)[..., 0]
      # Bayes decisions on the uncalibrated probabilities (T = 1): a temperature fit per
      # epoch would cost more than the epoch itself.
      pred_b = jnp.argmin(expected, axis=-1)  # (M, n)
      per_example_b = jnp.take_along_axis(rows, pred_b[..., None], axis=-1)[..., 0]
      both = jnp.stack([per_example, per_example_b])  # (2, M, n)
      val_cost = jnp.sum(jnp.where(val_mask[None, None], both, 0.0), axis=-1) / n_val
      return carry, (losses.mean(), val_cost)

    key = jax.random.fold_in(jax.random.key(0), seed)
    (params, _), (train_loss, val_cost) = jax.lax.scan(
        epoch, (params, tx.init(params)), jax.random.split(key, epochs))
    return apply(params, x_val), apply(params, x_te), train_loss, val_cost

  return train


def vmapped(train):
  """seeds (innermost) x grid points x cost matrices (outermost)."""
  #                  params x_tr y_tr x_val y_val x_te cost all_costs lr hp seed rc
  over_seeds = jax.vmap(train, in_axes=(0, 0, 0, 0, 0, 0, None, None, None, None, 0, 0))
  over_grid = jax.vmap(over_seeds, in_axes=(None,) * 8 + (0, 0, None, None))
  return jax.vmap(over_grid, in_axes=(None,) * 6 + (0, None, None, None, None, None))


@dataclasses.dataclass
class ArmResult:
  grid: list[tuple[float, float]]  # (lr, hp) per grid point
  val_logits: np.ndarray  # (M, G, S, n_val, K)
  test_logits: np.ndarray  # (M, G, S, n_test, K)
  train_loss: np.ndarray  # (M, G, S, epochs)
  val_cost_curve: np.ndarray  # (M, G, S, epochs), argmax decoding
  compile_seconds: float
  train_seconds: float
  # (M, G, S, epochs), Bayes decisions on the uncalibrated probabilities (T = 1)
  val_cost_curve_bayes: np.ndarray | None = None

  @property
  def seconds(self) -> float:
    return self.compile_seconds + self.train_seconds


def init_params(model_fn, num_seeds: int):
  """Per-seed initial parameters (host NumPy, identical on every process) and the graphdef."""
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: model_fn(nnx.Rngs(0))))

  @jax.jit
  def init(keys):
    return jax.vmap(lambda k: nnx.split(model_fn(nnx.Rngs(k)))[1])(keys)

  params = init(jax.random.split(jax.random.key(1234), num_seeds))
  return graphdef, jax.tree.map(np.asarray, params)


@dataclasses.dataclass
class Prepared:
  """A compiled training program for one arm and its arguments."""

  arm: Arm
  grid: list[tuple[float, float]]
  compiled: Callable
  args: tuple
  compile_seconds: float


def prepare_arm(arm: Arm, *, graphdef, params0, feed: distributed.Feed, costs: np.ndarray,
                lrs, epochs: int, batch_size: int, weight_decay: float) -> Prepared:
  """Builds and compiles one arm's program (may run in a background thread)."""
  t0 = time.perf_counter()
  grid = [(lr, hp) for lr in lrs for hp in arm.hp_values]
  train_costs = costs[:1] if arm.loss in COST_FREE else costs
  train = make_train_fn(graphdef, LOSSES[arm.loss], epochs=epochs, batch_size=batch_size,
                        n_train=feed.n_train, n_val=feed.n_val, weight_decay=weight_decay,
                        batch_sharding=feed.batch_sharding)
  program = vmapped(train)

  def run(params, x_tr, y_tr, x_val, y_val, x_te, cost, all_costs, lr, hp, seeds, rc):
    # The training table arrives sharded (each process fed its own rows); gather it once.
    x_tr = jax.lax.with_sharding_constraint(x_tr, feed.replicated)
    y_tr = jax.lax.with_sharding_constraint(y_tr, feed.replicated)
    if rc is not None:  # the per-row costs travel with the training rows
      rc = (jax.lax.with_sharding_constraint(rc[0], feed.replicated), rc[1])
    return program(params, x_tr, y_tr, x_val, y_val, x_te, cost, all_costs, lr, hp, seeds, rc)

  rep = feed.put_replicated
  # Per-row costs: M = 1 and ``costs`` holds their mean matrix (for the report only); the
  # losses and the validation curves use the rows' own matrices.
  rc = None if feed.c_train is None else (feed.c_train, feed.c_val)
  args = (rep(params0), feed.x_train, feed.y_train, feed.x_val, feed.y_val, feed.x_test,
          rep(train_costs), rep(costs), rep(np.asarray([g[0] for g in grid], np.float32)),
          rep(np.asarray([g[1] for g in grid], np.float32)), feed.seeds, rc)
  compiled = jax.jit(run, out_shardings=feed.replicated).lower(*args).compile()
  return Prepared(arm, grid, compiled, args, time.perf_counter() - t0)


def execute(prep: Prepared, *, feed: distributed.Feed, num_costs: int) -> ArmResult:
  """Runs a prepared program; returns host arrays with padding rows removed."""
  t0 = time.perf_counter()
  out = prep.compiled(*prep.args)
  zv, zt, loss_curve, val_curve = (distributed.to_host(a) for a in out)
  seconds = time.perf_counter() - t0
  zv, zt = zv[..., : feed.n_val, :], zt[..., : feed.n_test, :]
  m = num_costs
  if prep.arm.loss in COST_FREE:  # the same models, decoded under every cost matrix
    zv, zt, loss_curve, val_curve = (np.broadcast_to(a, (m, *a.shape[1:]))
                                     for a in (zv, zt, loss_curve, val_curve))
  val_curve = val_curve[np.arange(m), ..., np.arange(m)]  # model trained on m, scored on m
  return ArmResult(prep.grid, np.asarray(zv), np.asarray(zt), np.asarray(loss_curve),
                   np.asarray(val_curve[..., 0]), prep.compile_seconds, seconds,
                   np.asarray(val_curve[..., 1]))


def group_arms(arms: list[Arm]) -> list[list[Arm]]:
  """Arms that share a loss (the soft-label temperatures) train in one program: one
  compilation, their hyperparameter values stacked on the grid axis."""
  groups: dict[str, list[Arm]] = {}
  for a in arms:
    groups.setdefault(a.loss, []).append(a)
  return list(groups.values())


def merge(group: list[Arm]) -> Arm:
  """One arm whose grid holds every hyperparameter value of ``group``."""
  if len(group) == 1:
    return group[0]
  values = tuple(dict.fromkeys(v for a in group for v in a.hp_values))
  first = group[0]
  return Arm("+".join(a.key for a in group), first.label, first.loss, first.hp_name, values)


def split(result: ArmResult, group: list[Arm]) -> dict[str, ArmResult]:
  """Per-arm results (grid points of the arm's own values) from a merged run."""
  if len(group) == 1:
    return {group[0].key: result}
  out = {}
  for a in group:
    idx = [g for g, (_, hp) in enumerate(result.grid) if hp in a.hp_values]
    out[a.key] = ArmResult(
        [result.grid[g] for g in idx], result.val_logits[:, idx], result.test_logits[:, idx],
        result.train_loss[:, idx], result.val_cost_curve[:, idx], result.compile_seconds,
        result.train_seconds,
        None if result.val_cost_curve_bayes is None else result.val_cost_curve_bayes[:, idx])
  return out
