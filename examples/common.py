"""Shared pieces of the costjax examples: data, cost matrices, models, losses, sharding.

Everything here runs on any backend (CPU, GPU, TPU) and any number of devices; there
are no device-specific code paths. Both ``flax_train.py`` and ``compare_losses.py``
import it, and so do the tests.

Data never comes from the network: scikit-learn's bundled ``digits`` and the
``diamonds`` table that plotnine ships are read from the installed packages, and a
user's own table comes from ``--data FILE`` (``.npz`` with arrays ``x`` and ``y``, or
``.csv`` with a label column). User files are untrusted: ``.npz`` files are read with
``allow_pickle=False`` and every table and cost matrix is validated before training.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import costjax as cj

# --------------------------------------------------------------------------- #
# Errors for the command line.
# --------------------------------------------------------------------------- #


class UserInputError(ValueError):
  """A problem with a file or flag the user gave; reported without a traceback."""


def exit_on_user_error(main: Callable[[], None]) -> None:
  """Runs ``main``; prints a user error as one clear line and exits with status 2."""
  try:
    main()
  except UserInputError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


# --------------------------------------------------------------------------- #
# Data.
# --------------------------------------------------------------------------- #


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A classification table: features ``x`` (N, D) float32, labels ``y`` (N,) int32."""

  name: str
  x: np.ndarray
  y: np.ndarray
  num_classes: int
  class_names: tuple[str, ...]
  ordinal: bool = False  # classes have a natural order (enables ordinal_emd)
  image_shape: tuple[int, int, int] | None = None  # (H, W, C) if rows are images


BUILTIN_DATA = ("digits", "diamonds")
DIAMONDS_FEATURES = ("carat", "depth", "table", "price", "x", "y", "z")


def load_digits() -> Dataset:
  from sklearn.datasets import load_digits as _load

  d = _load()
  return Dataset(
      name="digits",
      x=d.data.astype(np.float32),
      y=d.target.astype(np.int32),
      num_classes=10,
      class_names=tuple(str(i) for i in range(10)),
      image_shape=(8, 8, 1),
  )


def load_diamonds(max_rows: int | None = None, seed: int = 0) -> Dataset:
  """Diamonds ``cut`` (Fair < Good < Very Good < Premium < Ideal) from the numeric columns.

  ``max_rows`` draws a stratified subsample (fixed ``seed``) to keep runs short.
  """
  from plotnine.data import diamonds

  x = diamonds[list(DIAMONDS_FEATURES)].to_numpy(dtype=np.float64)
  x[:, 3] = np.log(x[:, 3])  # log price: the raw price is heavy-tailed
  x = x.astype(np.float32)
  y = diamonds["cut"].cat.codes.to_numpy().astype(np.int32)
  names = tuple(str(c) for c in diamonds["cut"].cat.categories)
  if max_rows is not None and max_rows < len(y):
    x, y = _stratified_subsample(x, y, max_rows, seed)
  return Dataset("diamonds", x, y, len(names), names, ordinal=True)


def _stratified_subsample(x, y, n, seed):
  from sklearn.model_selection import train_test_split

  idx, _ = train_test_split(np.arange(len(y)), train_size=n, stratify=y, random_state=seed)
  idx = np.sort(idx)
  return x[idx], y[idx]


def load_user_table(
    path: str,
    *,
    label_column: str = "label",
    num_classes: int | None = None,
    ordinal: bool = False,
) -> Dataset:
  """Loads and validates a user's ``.npz`` (arrays ``x``, ``y``) or ``.csv`` table.

  Labels must already be integers ``0 .. K-1`` in the class order that the cost
  matrix uses (row ``i`` of the cost matrix is class ``i``); they are never
  remapped, since a silent remapping would misalign them with the cost matrix.
  ``num_classes`` defaults to ``max(y) + 1`` (or the cost matrix's size).
  """
  if not os.path.isfile(path):
    raise UserInputError(f"--data {path!r}: no such file (expected .npz, .csv, or "
                         f"one of {', '.join(BUILTIN_DATA)}).")
  ext = os.path.splitext(path)[1].lower()
  if ext == ".npz":
    x, y = _read_npz(path)
  elif ext == ".csv":
    x, y = _read_csv(path, label_column)
  else:
    raise UserInputError(f"--data {path!r}: unsupported file type {ext!r}; use .npz (arrays "
                         "x and y) or .csv (numeric columns plus a label column).")
  return validate_table(x, y, source=path, num_classes=num_classes, ordinal=ordinal)


def _read_npz(path: str) -> tuple[np.ndarray, np.ndarray]:
  try:
    with np.load(path, allow_pickle=False) as f:
      missing = [k for k in ("x", "y") if k not in f.files]
      if missing:
        raise UserInputError(f"--data {path!r}: the .npz file must contain arrays 'x' and "
                             f"'y'; missing {missing}, found {sorted(f.files)}.")
      return f["x"], f["y"]
  except UserInputError:
    raise
  except ValueError as e:
    if "pickle" in str(e).lower():
      raise UserInputError(
          f"--data {path!r}: the .npz file holds pickled Python objects, which are not "
          "loaded (allow_pickle=False, as pickles can run code); save plain numeric "
          "arrays, e.g. np.savez(path, x=x.astype(np.float32), y=y.astype(np.int64))."
      ) from None
    raise UserInputError(f"--data {path!r}: could not read the .npz file: {e}") from None
  except (OSError, EOFError) as e:  # not a zip file, truncated, ...
    raise UserInputError(f"--data {path!r}: could not read the .npz file: {e}") from None


def _read_csv(path: str, label_column: str) -> tuple[np.ndarray, np.ndarray]:
  import pandas as pd

  try:
    df = pd.read_csv(path)
  except Exception as e:  # pandas raises several parser error types
    raise UserInputError(f"--data {path!r}: could not parse the CSV file: {e}") from None
  if label_column not in df.columns:
    raise UserInputError(
        f"--data {path!r}: no label column {label_column!r} (columns: {list(df.columns)}); "
        "name it with --label-column."
    )
  features = df.drop(columns=[label_column])
  bad = [c for c in features.columns if not pd.api.types.is_numeric_dtype(features[c])]
  if bad:
    raise UserInputError(f"--data {path!r}: feature columns must be numeric; non-numeric "
                         f"columns: {bad}. Encode them first.")
  return features.to_numpy(), df[label_column].to_numpy()


def validate_table(
    x, y, *, source: str, num_classes: int | None = None, ordinal: bool = False
) -> Dataset:
  """Checks ``x`` (N, D) finite numeric and ``y`` (N,) integer labels in ``0 .. K-1``."""
  x = np.asarray(x)
  y = np.asarray(y)
  if x.dtype == object or not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
    raise UserInputError(f"{source}: x must be numeric; got dtype {x.dtype}.")
  if np.iscomplexobj(x):
    raise UserInputError(f"{source}: x must be real-valued; got dtype {x.dtype}.")
  if x.ndim != 2:
    raise UserInputError(f"{source}: x must be 2-D (examples, features); got shape {x.shape}.")
  if y.ndim != 1 or len(y) != len(x):
    raise UserInputError(f"{source}: y must be 1-D with one label per row of x; got "
                         f"y.shape={y.shape} and x.shape={x.shape}.")
  if x.shape[1] < 1 or len(x) < 1:
    raise UserInputError(f"{source}: x is empty (shape {x.shape}).")
  x = x.astype(np.float32)
  bad = ~np.isfinite(x)
  if bad.any():
    i, j = np.argwhere(bad)[0]
    raise UserInputError(f"{source}: x has a non-finite value x[{i}, {j}] = {x[i, j]}; "
                         "remove or impute missing values first.")
  if y.dtype == object or not (np.issubdtype(y.dtype, np.number) or y.dtype == np.bool_):
    raise UserInputError(
        f"{source}: labels must be integers 0 .. K-1 in the cost matrix's class order; got "
        f"dtype {y.dtype}. Encode them yourself so that class i is row i of the cost matrix."
    )
  if np.issubdtype(y.dtype, np.floating):
    if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
      i = int(np.argmax(~np.isfinite(y) | (y != np.round(y))))
      raise UserInputError(f"{source}: labels must be integers; got y[{i}] = {y[i]}.")
  y = y.astype(np.int64)
  k = int(y.max()) + 1 if num_classes is None else int(num_classes)
  out = (y < 0) | (y >= k)
  if out.any():
    i = int(np.argmax(out))
    raise UserInputError(
        f"{source}: labels must lie in 0 .. {k - 1} (K = {k} classes"
        f"{'' if num_classes is None else ', from the cost matrix'}); got y[{i}] = {y[i]} "
        f"({int(out.sum())} labels out of range). Labels are not remapped."
    )
  if k < 2:
    raise UserInputError(f"{source}: need at least 2 classes; got K = {k}.")
  counts = np.bincount(y, minlength=k)
  if counts.min() < 3:
    c = int(np.argmin(counts))
    raise UserInputError(f"{source}: class {c} has {counts[c]} example(s); every class needs "
                         "at least 3 for stratified train/validation/test splits.")
  name = os.path.splitext(os.path.basename(source))[0]
  names = tuple(str(i) for i in range(k))
  return Dataset(name, x, y.astype(np.int32), k, names, ordinal=ordinal)


def load_data(spec: str, *, label_column: str = "label", max_rows: int | None = None,
              num_classes: int | None = None, ordinal: bool = False) -> Dataset:
  """``digits``, ``diamonds``, or a path to a user's ``.npz`` / ``.csv`` file."""
  if spec == "digits":
    return load_digits()
  if spec == "diamonds":
    return load_diamonds(max_rows)
  ds = load_user_table(spec, label_column=label_column, num_classes=num_classes,
                       ordinal=ordinal)
  if max_rows is not None and max_rows < len(ds.y):
    x, y = _stratified_subsample(ds.x, ds.y, max_rows, 0)
    ds = dataclasses.replace(ds, x=x, y=y)
  return ds


@dataclasses.dataclass(frozen=True)
class Splits:
  """Per-seed stratified splits, stacked on a leading seed axis; standardized on train."""

  x_train: np.ndarray  # (S, n_train, D)
  y_train: np.ndarray  # (S, n_train)
  x_val: np.ndarray
  y_val: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray


def make_splits(ds: Dataset, seeds: Sequence[int], *, val_frac: float = 0.2,
                test_frac: float = 0.2) -> Splits:
  """One stratified train/validation/test split per seed (same sizes for every seed)."""
  from sklearn.model_selection import train_test_split

  n = len(ds.y)
  n_test = max(ds.num_classes, int(round(test_frac * n)))
  n_val = max(ds.num_classes, int(round(val_frac * n)))
  if n - n_test - n_val < ds.num_classes:
    raise UserInputError(f"{ds.name}: {n} examples are too few for train/validation/test "
                         f"splits with {ds.num_classes} classes.")
  parts = {k: [] for k in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")}
  for seed in seeds:
    idx = np.arange(n)
    rest, test = train_test_split(idx, test_size=n_test, stratify=ds.y, random_state=seed)
    train, val = train_test_split(rest, test_size=n_val, stratify=ds.y[rest],
                                  random_state=seed + 10_000)
    mu = ds.x[train].mean(0)
    sd = ds.x[train].std(0)
    sd = np.where(sd > 1e-6, sd, 1.0)
    for split, ii in (("train", train), ("val", val), ("test", test)):
      parts[f"x_{split}"].append(((ds.x[ii] - mu) / sd).astype(np.float32))
      parts[f"y_{split}"].append(ds.y[ii].astype(np.int32))
  return Splits(**{k: np.stack(v) for k, v in parts.items()})


# --------------------------------------------------------------------------- #
# Cost matrices.
# --------------------------------------------------------------------------- #

BUILTIN_COSTS = ("forum", "ordinal", "asymmetric", "random")
# The six digit confusions of the reference experiment (true, predicted).
DIGIT_EXPENSIVE_PAIRS = ((7, 1), (3, 8), (8, 3), (4, 9), (9, 4), (5, 6))


FORUM_COST = np.array(
    [[0, 1, 4, 5], [1, 0, 3, 8], [4, 3, 0, 2], [5, 8, 2, 0]], dtype=np.float32
)


def forum_cost(k: int) -> np.ndarray:
  """The forum's 4 x 4 matrix widened to ``K`` classes.

  ``C[i, j] = F[i % 4, j % 4] + |i // 4 - j // 4|`` with ``F`` the forum matrix
  ``[[0,1,4,5],[1,0,3,8],[4,3,0,2],[5,8,2,0]]``: exactly ``F`` for ``K = 4``;
  for larger ``K`` every block of four classes repeats the forum's pattern of
  cheap and very expensive confusions (misreading class 1 as class 3 costs 8),
  and classes further apart in index cost a little more. Zero diagonal.
  """
  i, j = np.indices((k, k))
  c = FORUM_COST[i % 4, j % 4] + np.abs(i // 4 - j // 4)
  np.fill_diagonal(c, 0.0)
  return c.astype(np.float32)


def asymmetric_cost(k: int, expensive: float = 20.0) -> np.ndarray:
  """All errors cost 1 except a few very expensive, one-directional confusions (cost 20).

  For ``K = 10`` (digits) these are C[7,1], C[3,8], C[8,3], C[4,9], C[9,4], C[5,6] —
  the matrix of the reference experiment. For other ``K``: ``K - 1`` pairs drawn
  with a fixed seed.
  """
  c = 1.0 - np.eye(k, dtype=np.float32)
  if k == 10:
    pairs = DIGIT_EXPENSIVE_PAIRS
  else:
    off = [(i, j) for i in range(k) for j in range(k) if i != j]
    pick = np.random.default_rng(0).choice(len(off), size=max(1, k - 1), replace=False)
    pairs = [off[p] for p in sorted(pick)]
  for i, j in pairs:
    c[i, j] = expensive
  return c


def random_cost(k: int, seed: int = 0) -> np.ndarray:
  """Off-diagonal entries drawn from U(1, 10) with a fixed seed; zero diagonal."""
  c = np.random.default_rng(seed).uniform(1.0, 10.0, size=(k, k)).astype(np.float32)
  np.fill_diagonal(c, 0.0)
  return c


def builtin_cost(name: str, k: int) -> np.ndarray:
  if name == "forum":
    return forum_cost(k)
  if name == "ordinal":
    return np.asarray(cj.ordinal_cost_matrix(k), np.float32)
  if name == "asymmetric":
    return asymmetric_cost(k)
  if name == "random":
    return random_cost(k)
  raise UserInputError(f"unknown cost {name!r}; use one of {', '.join(BUILTIN_COSTS)} or a "
                       "path to a CSV file with a K x K matrix (rows true, columns predicted).")


def load_cost_csv(path: str) -> np.ndarray:
  """A ``K x K`` cost matrix from a CSV file (no header; rows true, columns predicted)."""
  if not os.path.isfile(path):
    raise UserInputError(f"--cost {path!r}: no such file, and not a built-in cost "
                         f"({', '.join(BUILTIN_COSTS)}).")
  try:
    arr = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2)
  except ValueError as e:
    raise UserInputError(f"--cost {path!r}: could not read a numeric matrix (comma-"
                         f"separated, no header): {e}") from None
  try:
    cj.check_cost_matrix(arr)
  except (ValueError, TypeError) as e:
    raise UserInputError(f"--cost {path!r}: {e}") from None
  return arr.astype(np.float32)


def parse_costs(spec: str) -> list[str]:
  """``--cost a,b,c`` -> names/paths; several train together through ``jax.vmap``."""
  names = [s.strip() for s in spec.split(",") if s.strip()]
  if not names:
    raise UserInputError("--cost is empty.")
  return names


def cost_matrix(spec: str, k: int) -> np.ndarray:
  """A built-in cost by name, or a CSV file, checked to be ``K x K`` for ``K`` classes."""
  c = builtin_cost(spec, k) if spec in BUILTIN_COSTS else load_cost_csv(spec)
  if c.shape != (k, k):
    raise UserInputError(f"--cost {spec!r}: the cost matrix has shape {c.shape}, but the data "
                         f"has K = {k} classes; it must be {k} x {k}.")
  return c


def csv_num_classes(specs: Sequence[str]) -> int | None:
  """The class count fixed by the first CSV cost matrix among ``specs``, if any."""
  for s in specs:
    if s not in BUILTIN_COSTS:
      return load_cost_csv(s).shape[0]
  return None


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


class CNN(nnx.Module):
  """A small CNN for small images: two 3x3 convolutions, 2x2 average pooling, two dense."""

  def __init__(self, image_shape: tuple[int, int, int], num_classes: int, *, rngs: nnx.Rngs):
    h, w, c = image_shape
    self.image_shape = image_shape
    self.conv1 = nnx.Conv(c, 16, kernel_size=(3, 3), rngs=rngs)
    self.conv2 = nnx.Conv(16, 32, kernel_size=(3, 3), rngs=rngs)
    self.dense = nnx.Linear((h // 2) * (w // 2) * 32, 64, rngs=rngs)
    self.out = nnx.Linear(64, num_classes, rngs=rngs)

  def __call__(self, x):
    x = x.reshape((x.shape[0], *self.image_shape))
    x = jax.nn.relu(self.conv1(x))
    x = jax.nn.relu(self.conv2(x))
    x = nnx.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
    x = x.reshape(x.shape[0], -1)
    return self.out(jax.nn.relu(self.dense(x)))


def make_model(kind: str, ds: Dataset, *, hidden: int, rngs: nnx.Rngs) -> nnx.Module:
  if kind == "mlp":
    return MLP(ds.x.shape[1], hidden, ds.num_classes, rngs=rngs)
  if kind == "cnn":
    if ds.image_shape is None:
      raise UserInputError(f"--model cnn needs image data (digits); {ds.name!r} is a table. "
                           "Use --model mlp.")
    return CNN(ds.image_shape, ds.num_classes, rngs=rngs)
  raise UserInputError(f"unknown --model {kind!r}; use mlp or cnn.")


# --------------------------------------------------------------------------- #
# Losses. Every loss maps (logits (B, K), labels (B,), cost (K, K), hp) -> (B,).
# ``hp`` is one traced float (lambda, temperature, alpha, epsilon), so a grid of
# values trains in one compiled program through jax.vmap.
# --------------------------------------------------------------------------- #

SINKHORN_TARGET_TEMPERATURE = 0.5  # targets softmax(-C[y] / 0.5), as in the reference run


def _ce(logits, y, cost, hp):
  del cost, hp
  return optax.softmax_cross_entropy_with_integer_labels(logits, y)


def _sinkhorn(logits, y, cost, hp):
  targets = cj.cost_soft_labels(y, cost, temperature=SINKHORN_TARGET_TEMPERATURE)
  # epsilon is given relative to the largest cost, so one grid fits every matrix.
  return cj.sinkhorn_loss(logits, targets, cost, epsilon=hp * jnp.max(cost))


LOSSES: dict[str, Callable] = {
    "ce": _ce,
    "ec": lambda z, y, c, hp: cj.expected_cost(z, y, c),
    "ce_ec": lambda z, y, c, hp: cj.cost_regularized_cross_entropy(z, y, c, lam=hp),
    "soft": lambda z, y, c, hp: cj.soft_label_cross_entropy(z, y, c, temperature=hp),
    "cdw": lambda z, y, c, hp: cj.class_distance_weighted_cross_entropy(z, y, c, alpha=hp),
    "sinkhorn": _sinkhorn,
    "emd": lambda z, y, c, hp: cj.ordinal_emd(z, y),
}
# Losses whose training does not read the cost matrix: trained once per run and
# decoded under every cost matrix.
COST_FREE = ("ce", "emd")


def add_data_arguments(parser, *, ordinal_help: str,
                       max_rows_help: str = "stratified subsample of the data") -> None:
  """The data flags shared by both scripts."""
  parser.add_argument("--data", default="digits",
                      help="digits (default), diamonds, or a .npz (x, y) / .csv file")
  parser.add_argument("--label-column", default="label", help="label column of a .csv file")
  parser.add_argument("--ordinal", action="store_true", help=ordinal_help)
  parser.add_argument("--max-rows", type=int, default=None, help=max_rows_help)


# --------------------------------------------------------------------------- #
# Sharding: one "data" mesh axis over every device; batch sharded, params replicated.
# --------------------------------------------------------------------------- #


def data_mesh() -> jax.sharding.Mesh:
  """A 1-D mesh named ``data`` over all devices of all processes.

  ``jax.make_mesh`` defaults to Explicit axes since JAX 0.9; the examples ask for
  Auto axes, so that inside compiled training loops a shuffled minibatch can be
  gathered from the (replicated) training set and then constrained to the data axis,
  with XLA's sharding propagation doing the rest.
  """
  return jax.make_mesh((jax.device_count(),), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))


def batch_sharding(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
  """Leading (example) axis split over ``data``; other axes whole."""
  return jax.sharding.NamedSharding(mesh, jax.P("data"))


def replicated(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
  return jax.sharding.NamedSharding(mesh, jax.P())


def round_batch_size(batch_size: int, n_train: int) -> int:
  """Batch size rounded up to a multiple of the device count, at most the training set."""
  n = jax.device_count()
  b = min(batch_size, n_train)
  b = int(math.ceil(b / n) * n)
  if b > n_train:
    b = (n_train // n) * n
  if b < n:
    raise UserInputError(f"{n_train} training examples are fewer than the {n} devices; "
                         "use more data or fewer devices.")
  return b


def maybe_initialize_distributed() -> None:
  """Multi-host: call ``jax.distributed.initialize()`` when launched under a cluster.

  Set ``COSTJAX_DISTRIBUTED=1`` (and the usual ``JAX_COORDINATOR_ADDRESS``,
  ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``, or a SLURM / TPU-pod environment that
  JAX auto-detects) on every host. Single-host runs do nothing here.
  """
  if os.environ.get("COSTJAX_DISTRIBUTED") == "1":
    jax.distributed.initialize()


# --------------------------------------------------------------------------- #
# Temperature scaling and decoding.
# --------------------------------------------------------------------------- #

TEMPERATURE_GRID = np.exp(np.linspace(np.log(0.05), np.log(20.0), 241)).astype(np.float32)


def fit_temperature(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Temperature ``T`` minimizing validation NLL of ``softmax(logits / T)`` (grid search).

  The grid (0.05 .. 20, 2.5% steps) is fine enough for decoding and keeps the fit
  a pure, vmappable function. Non-finite logits give ``T = 1``.
  """
  grid = jnp.asarray(TEMPERATURE_GRID)

  def nll(t):
    return optax.softmax_cross_entropy_with_integer_labels(logits / t, labels).mean()

  losses = jax.vmap(nll)(grid)
  losses = jnp.where(jnp.isfinite(losses), losses, jnp.inf)
  return jnp.where(jnp.all(jnp.isinf(losses)), 1.0, grid[jnp.argmin(losses)])


def decode(logits: jax.Array, cost: jax.Array, temperature: jax.Array):
  """(argmax predictions, Bayes predictions after temperature scaling)."""
  return (jnp.argmax(logits, axis=-1).astype(jnp.int32),
          cj.bayes_decision(logits / temperature, cost))


def cost_weighted_confusion(pred: np.ndarray, y: np.ndarray, cost: np.ndarray) -> np.ndarray:
  """Total cost per (true, predicted) cell: ``confusion * C``."""
  k = cost.shape[0]
  conf = np.asarray(cj.confusion_matrix(jnp.asarray(pred), jnp.asarray(y), num_classes=k))
  return conf * cost


def device_summary() -> str:
  d = jax.devices()
  return (f"{jax.device_count()} x {d[0].platform} ({d[0].device_kind}), "
          f"{jax.process_count()} process(es)")
