"""Tables for the ``costjax`` command: bundled data, user CSV/NPZ files, stratified splits.

Interface (used by ``costjax compare``, ``examples/flax_train.py`` and the tests):

* ``load_data(spec, *, label_column="label", max_rows=None, num_classes=None,
  class_names=None, ordinal=False, features=None) -> Dataset`` — ``spec`` is ``digits``,
  ``diamonds`` or a path to a ``.csv`` / ``.npz`` file. Pass the class count and the class
  names fixed by the cost matrix (``costs.cost_classes([...])``) so that labels line up with
  the matrix's rows.
* ``load_digits()``, ``load_diamonds(max_rows=None, seed=0, *, features=None)``,
  ``load_user_table(path, *, label_column, num_classes, class_names, ordinal, features)``.
* ``validate_table(x, y, *, source, num_classes=None, class_names=None, ordinal=False)`` —
  arrays to a checked :class:`Dataset`.
* ``make_splits(ds, seeds, *, val_frac=0.2, test_frac=0.2) -> Splits`` — one stratified
  train/validation/test split per seed (same sizes for every seed), standardized on train;
  copes with classes that have few or no examples and lists them in ``Splits.notes``.
* :class:`Dataset` — ``x (N, D) float32``, ``y (N,) int32``, ``num_classes``, ``class_names``,
  plus ``dropped_rows`` (rows dropped for missing values), ``feature_names``, ``encoding`` (to
  encode new rows the same way: ``ds.encoding.encode(frame, source=...)``), and
  ``class_counts`` / ``empty_classes`` / ``notes()`` for the report.
* Errors are :class:`~costjax.cli.errors.UserInputError`, one line naming the file and problem.

Labels (the rules of the contract's "Data files"):

* With ``class_names`` (a cost CSV's header) the class order is the header's and labels are
  matched by name (integer labels by their decimal text, so a header ``0,1,2`` works); a label
  missing from the header is an error; a header class without examples is allowed and reported.
* Without it, integer labels are class indices ``0 .. K-1`` and are never remapped (``K`` is
  ``num_classes``, the cost matrix's size, or ``max(y) + 1``); string labels are taken in
  sorted order, an error if their number differs from ``num_classes``.

Features: numeric columns as they are; non-numeric (string, boolean, categorical) columns are
one-hot encoded (``column=value``; values sorted, or in a pandas categorical's order); rows
with a missing value in the label or a used feature are dropped and counted; ``features``
picks the columns (names for CSV files, integer column indices for ``.npz``). Infinite
values are an error, not "missing".

Data never comes from the network: ``digits`` is scikit-learn's bundled copy and
``diamonds`` the table that plotnine ships. ``.npz`` files are read with
``allow_pickle=False``. NumPy is imported eagerly, pandas / scikit-learn / plotnine lazily.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from costjax.cli.errors import UserInputError

BUILTIN_DATA = ("digits", "diamonds")
DIAMONDS_FEATURES = ("carat", "depth", "table", "price", "x", "y", "z")
MAX_CATEGORIES = 200  # more distinct values in one text column looks like an identifier


# --------------------------------------------------------------------------- #
# Containers.
# --------------------------------------------------------------------------- #


@dataclasses.dataclass(frozen=True)
class FeatureEncoding:
  """How the columns of a table become features, so that new rows are encoded the same way.

  ``columns[i]`` is a source column; ``categories[i]`` is ``None`` for a numeric column and the
  sorted category values of a one-hot encoded column otherwise.
  """

  columns: tuple[str, ...]
  categories: tuple[tuple[str, ...] | None, ...]

  @property
  def feature_names(self) -> tuple[str, ...]:
    out: list[str] = []
    for col, cats in zip(self.columns, self.categories, strict=True):
      out.extend([col] if cats is None else [f"{col}={c}" for c in cats])
    return tuple(out)

  def to_json(self) -> dict[str, Any]:
    return {"columns": list(self.columns),
            "categories": [None if c is None else list(c) for c in self.categories]}

  @classmethod
  def from_json(cls, d: dict[str, Any]) -> FeatureEncoding:
    return cls(tuple(d["columns"]),
               tuple(None if c is None else tuple(c) for c in d["categories"]))

  def encode(self, frame, *, source: str) -> np.ndarray:
    """``(N, D)`` float32 features of a ``pandas.DataFrame`` with (at least) ``columns``.

    For new rows to predict on: a missing column, a missing value, an infinite value or a
    category not seen in training is an error (rows are never dropped, so outputs stay
    aligned with the input rows).
    """
    import pandas as pd

    missing = [c for c in self.columns if c not in frame.columns]
    if missing:
      raise UserInputError(f"{source}: missing feature column(s) {missing} (the model was "
                           f"trained on {list(self.columns)}).")
    parts = []
    for col, cats in zip(self.columns, self.categories, strict=True):
      s = frame[col]
      na = s.isna().to_numpy()
      if na.any():
        raise UserInputError(f"{source}: column {col!r} has a missing value in row "
                             f"{int(np.argmax(na))}; fill it in (rows are not dropped here).")
      if cats is None:
        if not (pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s)):
          raise UserInputError(f"{source}: column {col!r} must be numeric, as in training; "
                               f"got e.g. {s.iloc[0]!r}.")
        v = s.to_numpy(np.float64)
        _check_finite(v, source, col)
        parts.append(v[:, None])
      else:
        text = _as_text(s)
        index = {c: i for i, c in enumerate(cats)}
        unknown = sorted(set(text) - set(index))
        if unknown:
          raise UserInputError(f"{source}: column {col!r} has value(s) {unknown[:5]} not seen "
                               f"in training (known: {list(cats)[:10]}).")
        onehot = np.zeros((len(text), len(cats)))
        onehot[np.arange(len(text)), [index[t] for t in text]] = 1.0
        parts.append(onehot)
    if not parts:
      return np.zeros((len(frame), 0), np.float32)
    return np.concatenate(parts, axis=1).astype(np.float32)


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
  feature_names: tuple[str, ...] = ()
  dropped_rows: int = 0  # rows dropped because of missing values
  encoding: FeatureEncoding | None = None  # None for .npz and image data
  row_costs: np.ndarray | None = None  # (N, K, K) per-row costs (--cost-columns/--cost-scale)

  @property
  def class_counts(self) -> np.ndarray:
    return np.bincount(self.y, minlength=self.num_classes)

  @property
  def empty_classes(self) -> tuple[str, ...]:
    """Names of the classes (of the cost matrix) with no example in the table."""
    return tuple(n for n, c in zip(self.class_names, self.class_counts, strict=True) if c == 0)

  def notes(self) -> list[str]:
    """Plain sentences for a report: dropped rows, empty and rare classes."""
    out = []
    if self.dropped_rows:
      out.append(f"{self.dropped_rows} row(s) with missing values were dropped.")
    if self.empty_classes:
      out.append(f"classes without examples: {', '.join(self.empty_classes)}.")
    rare = [f"{n} ({c})" for n, c in zip(self.class_names, self.class_counts, strict=True)
            if 0 < c < 3]
    if rare:
      out.append(f"classes with fewer than 3 examples: {', '.join(rare)}.")
    return out


# --------------------------------------------------------------------------- #
# Labels.
# --------------------------------------------------------------------------- #


def _as_text(values) -> list[str]:
  """Labels/categories as text; integral floats become integers (``1.0`` -> ``"1"``)."""
  out = []
  for v in np.asarray(values, dtype=object):
    if isinstance(v, (bool, np.bool_)):
      out.append(str(bool(v)))
    elif isinstance(v, (float, np.floating)) and float(v).is_integer():
      out.append(str(int(v)))
    else:
      out.append(str(v).strip())
  return out


def _integer_labels(y: np.ndarray) -> np.ndarray | None:
  """``y`` as int64 if it holds integers (integer dtype or integral floats), else ``None``."""
  if y.dtype == np.bool_:
    return None
  if np.issubdtype(y.dtype, np.integer):
    return y.astype(np.int64)
  if np.issubdtype(y.dtype, np.floating):
    if np.all(np.isfinite(y)) and np.all(y == np.round(y)):
      return y.astype(np.int64)
    return None
  if y.dtype == object:
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in y):
      return y.astype(np.int64)
  return None


def encode_labels(
    y,
    *,
    source: str,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    classes_from: str = "the cost matrix's header",
) -> tuple[np.ndarray, tuple[str, ...]]:
  """Raw labels -> ``(indices int32, class names)`` by the rules in the module docstring."""
  y = np.asarray(y)
  if y.ndim != 1:
    raise UserInputError(f"{source}: labels must be 1-D; got shape {y.shape}.")
  if np.issubdtype(y.dtype, np.floating) and not np.all(np.isfinite(y)):
    i = int(np.argmax(~np.isfinite(y)))
    raise UserInputError(f"{source}: label y[{i}] = {y[i]} is not a class.")
  if class_names is not None:
    names = tuple(str(n) for n in class_names)
    if num_classes is not None and len(names) != num_classes:
      raise UserInputError(f"{source}: {len(names)} class names for {num_classes} classes.")
    index = {n: i for i, n in enumerate(names)}
    text = _as_text(y)
    unknown = sorted({t for t in text if t not in index})
    if unknown:
      n_bad = sum(t not in index for t in text)
      raise UserInputError(
          f"{source}: label(s) {unknown[:5]}{' ...' if len(unknown) > 5 else ''} "
          f"({n_bad} row(s)) are not classes of {classes_from} {list(names)[:12]}"
          f"{' ...' if len(names) > 12 else ''}; labels are matched to it by name.")
    return np.array([index[t] for t in text], np.int32), names

  ints = _integer_labels(y)
  if ints is not None:
    if len(ints) == 0:
      raise UserInputError(f"{source}: no labels.")
    k = int(ints.max()) + 1 if num_classes is None else int(num_classes)
    out = (ints < 0) | (ints >= k)
    if out.any():
      i = int(np.argmax(out))
      raise UserInputError(
          f"{source}: labels must lie in 0 .. {k - 1} (K = {k} classes"
          f"{'' if num_classes is None else ', from the cost matrix'}); got y[{i}] = {ints[i]} "
          f"({int(out.sum())} labels out of range). Integer labels are class indices and are "
          "not remapped; name the classes in a cost CSV header to match labels by name.")
    return ints.astype(np.int32), tuple(str(i) for i in range(k))
  if np.issubdtype(y.dtype, np.floating):
    i = int(np.argmax(y != np.round(y)))
    raise UserInputError(f"{source}: labels must be integers or names; got y[{i}] = {y[i]}.")

  text = _as_text(y)
  names = tuple(sorted(set(text)))
  if num_classes is not None and len(names) != num_classes:
    raise UserInputError(
        f"{source}: {len(names)} distinct text labels {list(names)[:12]} but the cost matrix "
        f"has K = {num_classes} classes; without a header in the cost CSV, text labels are "
        "taken in sorted order and their number must equal K (add a header row of class "
        "names to the cost CSV to match labels by name).")
  index = {n: i for i, n in enumerate(names)}
  return np.array([index[t] for t in text], np.int32), names


# --------------------------------------------------------------------------- #
# Validation.
# --------------------------------------------------------------------------- #


def _check_finite(v: np.ndarray, source: str, column: str | None = None) -> None:
  bad = ~np.isfinite(v)
  if bad.any():
    if v.ndim == 2:
      i, j = np.argwhere(bad)[0]
      raise UserInputError(f"{source}: x has a non-finite value x[{i}, {j}] = {v[i, j]}.")
    i = int(np.argmax(bad))
    raise UserInputError(f"{source}: column {column!r} has a non-finite value {v[i]} in row "
                         f"{i}; only empty cells count as missing.")


def validate_table(
    x,
    y,
    *,
    source: str,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    ordinal: bool = False,
    name: str | None = None,
    **fields: Any,
) -> Dataset:
  """Checks ``x`` (N, D) finite numeric and ``y`` (N,) labels; returns a :class:`Dataset`.

  ``fields`` are passed on to :class:`Dataset` (``feature_names``, ``dropped_rows``, ...).
  """
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
  _check_finite(x, source)
  idx, names = encode_labels(y, source=source, num_classes=num_classes, class_names=class_names)
  k = len(names)
  if k < 2:
    raise UserInputError(f"{source}: need at least 2 classes; got K = {k}.")
  present = int((np.bincount(idx, minlength=k) > 0).sum())
  if present < 2:
    raise UserInputError(f"{source}: only {present} class has examples; need at least 2.")
  if name is None:
    name = os.path.splitext(os.path.basename(source))[0]
  return Dataset(name, x, idx, k, names, ordinal=ordinal, **fields)


# --------------------------------------------------------------------------- #
# Data frames (CSV files, diamonds with chosen columns).
# --------------------------------------------------------------------------- #


def table_from_frame(
    df,
    *,
    source: str,
    label_column: str,
    features: Sequence[str] | None = None,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    ordinal: bool = False,
    name: str | None = None,
    exclude: Sequence[str] = (),
    row_costs: Callable | None = None,
) -> Dataset:
  """A :class:`Dataset` from a ``pandas.DataFrame``: one-hot text columns, drop missing rows.

  ``exclude``: columns that are never features unless ``features`` names them (cost columns).
  ``row_costs(frame, class_names) -> (N, K, K)``: per-row costs read from the kept rows.
  """
  import pandas as pd

  if label_column not in df.columns:
    raise UserInputError(f"{source}: no label column {label_column!r} (columns: "
                         f"{list(df.columns)[:20]}); name it with --label-column.")
  if features is None:
    skip = {str(c) for c in exclude}
    cols = [c for c in df.columns if c != label_column and str(c) not in skip]
  else:
    cols = list(features)
    unknown = [c for c in cols if c not in df.columns]
    if unknown:
      raise UserInputError(f"{source}: --features names unknown column(s) {unknown} "
                           f"(columns: {list(df.columns)[:20]}).")
    if label_column in cols:
      raise UserInputError(f"{source}: --features includes the label column {label_column!r}.")
    dup = sorted({c for c in cols if cols.count(c) > 1})
    if dup:
      raise UserInputError(f"{source}: --features repeats column(s) {dup}.")
  if not cols:
    raise UserInputError(f"{source}: no feature columns besides the label {label_column!r}.")
  used = df[[*cols, label_column]]
  keep = ~used.isna().any(axis=1).to_numpy()
  dropped = int((~keep).sum())
  if not keep.any():
    raise UserInputError(f"{source}: no rows left after dropping the {dropped} row(s) with "
                         "missing values.")
  used = used[keep]
  categories: list[tuple[str, ...] | None] = []
  for c in cols:
    s = used[c]
    if pd.api.types.is_bool_dtype(s) or not pd.api.types.is_numeric_dtype(s):
      if isinstance(s.dtype, pd.CategoricalDtype):
        cats = tuple(str(v) for v in s.cat.categories)
      else:
        cats = tuple(sorted(set(_as_text(s.to_numpy()))))
      if len(cats) > MAX_CATEGORIES:
        raise UserInputError(
            f"{source}: text column {c!r} has {len(cats)} distinct values (more than "
            f"{MAX_CATEGORIES}), too many to one-hot encode; leave it out with --features.")
      categories.append(cats)
    else:
      categories.append(None)
  encoding = FeatureEncoding(tuple(str(c) for c in cols), tuple(categories))
  x = encoding.encode(used.rename(columns=str), source=source)
  ds = validate_table(
      x, used[label_column].to_numpy(), source=source, num_classes=num_classes,
      class_names=class_names, ordinal=ordinal, name=name,
      feature_names=encoding.feature_names, dropped_rows=dropped, encoding=encoding)
  if row_costs is not None:
    ds = dataclasses.replace(ds, row_costs=row_costs(df[keep], ds.class_names))
  return ds


# --------------------------------------------------------------------------- #
# Bundled data.
# --------------------------------------------------------------------------- #


def load_digits(*, class_names: Sequence[str] | None = None) -> Dataset:
  """scikit-learn's bundled 8x8 digits (1,797 images, 10 classes ``"0"`` .. ``"9"``)."""
  x, y = digits_arrays()
  ds = Dataset("digits", x.astype(np.float32), y.astype(np.int32), 10,
               tuple(str(i) for i in range(10)), image_shape=(8, 8, 1),
               feature_names=tuple(f"pixel_{i}" for i in range(64)))
  return _align_classes(ds, class_names)


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
  """``(data, target)`` of ``sklearn.datasets.load_digits()``.

  Read straight from the ``digits.csv.gz`` that scikit-learn ships (64 pixel columns, then
  the label), which is what its loader parses: importing ``sklearn.datasets`` costs about a
  second (SciPy, joblib...), a third of a small ``costjax compare`` run's start-up. When the
  file is not where scikit-learn has kept it, its loader is used.
  """
  import importlib.util

  spec = importlib.util.find_spec("sklearn")
  for root in (spec.submodule_search_locations or []) if spec is not None else []:
    path = os.path.join(root, "datasets", "data", "digits.csv.gz")
    if os.path.isfile(path):
      table = np.loadtxt(path, delimiter=",")
      if table.ndim == 2 and table.shape[1] == 65:
        return table[:, :-1], table[:, -1].astype(np.int64)
  from sklearn.datasets import load_digits as _load

  d = _load()
  return d.data, d.target


def load_diamonds(max_rows: int | None = None, seed: int = 0, *,
                  features: Sequence[str] | None = None,
                  class_names: Sequence[str] | None = None) -> Dataset:
  """Diamonds ``cut`` (Fair < Good < Very Good < Premium < Ideal) from the other columns.

  By default the numeric columns (``carat, depth, table, log(price), x, y, z``); ``features``
  picks columns by name instead (``color`` and ``clarity`` are one-hot encoded, price is then
  used as is). ``max_rows`` draws a stratified subsample (fixed ``seed``) to keep runs short.
  """
  from plotnine.data import diamonds

  if features is None:
    x = diamonds[list(DIAMONDS_FEATURES)].to_numpy(dtype=np.float64)
    x[:, 3] = np.log(x[:, 3])  # log price: the raw price is heavy-tailed
    y = diamonds["cut"].cat.codes.to_numpy().astype(np.int32)
    names = tuple(str(c) for c in diamonds["cut"].cat.categories)
    ds = Dataset("diamonds", x.astype(np.float32), y, len(names), names, ordinal=True,
                 feature_names=tuple("log_price" if f == "price" else f
                                     for f in DIAMONDS_FEATURES))
  else:
    ds = table_from_frame(diamonds, source="diamonds", label_column="cut", features=features,
                          class_names=tuple(str(c) for c in diamonds["cut"].cat.categories),
                          ordinal=True, name="diamonds")
  if max_rows is not None and max_rows < len(ds.y):
    ds = subsample(ds, max_rows, seed)
  return _align_classes(ds, class_names)


def _align_classes(ds: Dataset, class_names: Sequence[str] | None) -> Dataset:
  """Re-indexes ``ds`` to the class order ``class_names`` (matched by name)."""
  if class_names is None or tuple(class_names) == ds.class_names:
    return ds
  y, names = encode_labels(np.asarray(ds.class_names, dtype=object)[ds.y], source=ds.name,
                           class_names=class_names)
  return dataclasses.replace(ds, y=y, num_classes=len(names), class_names=names)


# --------------------------------------------------------------------------- #
# User files.
# --------------------------------------------------------------------------- #


def load_user_table(
    path: str,
    *,
    label_column: str = "label",
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    ordinal: bool = False,
    features: Sequence[str] | None = None,
    cost_columns: Callable | None = None,
    row_costs: Callable | None = None,
) -> Dataset:
  """Loads and validates a user's ``.npz`` (arrays ``x``, ``y``) or ``.csv`` table.

  ``cost_columns(frame) -> names`` and ``row_costs`` (see :func:`table_from_frame`) read
  per-row costs from a ``.csv`` table.
  """
  where = f"--data {path!r}"
  ext = file_type(path, where, missing=f" (expected .npz, .csv, or one of "
                  f"{', '.join(BUILTIN_DATA)})")
  if ext == ".csv":
    df = read_csv(path, where, label_column)
    return table_from_frame(df, source=where,
                            label_column=label_column,
                            features=features, num_classes=num_classes,
                            class_names=class_names, ordinal=ordinal,
                            name=os.path.splitext(os.path.basename(path))[0],
                            exclude=() if cost_columns is None else cost_columns(df),
                            row_costs=row_costs)
  if row_costs is not None:
    raise UserInputError(f"{where}: --cost-columns and --cost-scale read columns of a .csv "
                         "table; this file is not one.")
  if ext != ".npz":
    raise UserInputError(f"{where}: unsupported file type {ext!r}; use .npz (arrays x and y) "
                         "or .csv (feature columns plus a label column).")
  arrays = read_npz(path, where, required=("x", "y"))
  x, y = arrays["x"], arrays["y"]
  if x.ndim == 2 and features is not None:
    cols = []
    for f in features:
      try:
        j = int(f)
      except (TypeError, ValueError):
        j = -1
      if not 0 <= j < x.shape[1]:
        raise UserInputError(f"{where}: --features for a .npz file are column indices 0 .. "
                             f"{x.shape[1] - 1}; got {f!r}.")
      cols.append(j)
    x = x[:, cols]
  dropped = 0
  if x.ndim == 2 and y.ndim == 1 and len(x) == len(y) and np.issubdtype(x.dtype, np.floating):
    missing = np.isnan(x).any(axis=1)
    if np.issubdtype(y.dtype, np.floating):
      missing |= np.isnan(y)
    dropped = int(missing.sum())
    if dropped == len(y):
      raise UserInputError(f"{where}: no rows left after dropping the {dropped} row(s) with "
                           "missing (NaN) values.")
    x, y = x[~missing], y[~missing]
  return validate_table(x, y, source=where, num_classes=num_classes, class_names=class_names,
                        ordinal=ordinal, dropped_rows=dropped,
                        name=os.path.splitext(os.path.basename(path))[0])


def file_type(path: str, where: str, *, missing: str = "") -> str:
  """The lower-case extension of the file ``path`` (e.g. ``".csv"``); no such file is a
  one-line error (``missing``: what to add to its message)."""
  if not os.path.isfile(path):
    raise UserInputError(f"{where}: no such file{missing}.")
  return os.path.splitext(path)[1].lower()


# pandas' default missing-value spellings (``pandas.read_csv``'s ``na_values`` docs).
_DEFAULT_NA = ("", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND",
               "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null")


def read_csv(path: str, where: str | None = None, label_column: str | None = None):
  """``pandas.read_csv`` with parser errors turned into one-line user errors.

  In ``label_column`` only an empty cell is missing: class names such as "NA",
  "None" or "null" are names there, not missing values (pandas would read them as
  NaN and their rows would be dropped). Other columns keep pandas' defaults.
  """
  import pandas as pd

  where = where or repr(path)
  try:
    na_values = None
    if label_column is not None:
      columns = pd.read_csv(path, nrows=0).columns
      if label_column in columns:
        na_values = {c: list(_DEFAULT_NA) for c in columns}
        na_values[label_column] = [""]
    if na_values is None:
      df = pd.read_csv(path)
    else:
      df = pd.read_csv(path, keep_default_na=False, na_values=na_values)
  except Exception as e:  # pandas raises several parser error types
    raise UserInputError(f"{where}: could not parse the CSV file: {e}") from None
  if len(df.columns) == 0 or len(df) == 0:
    raise UserInputError(f"{where}: the CSV file has no rows.")
  return df


def read_npz(path: str, where: str, *, required: Sequence[str] = (),
             one_of: Sequence[str] = ()) -> dict[str, np.ndarray]:
  """All arrays of an ``.npz`` file, read with ``allow_pickle=False``.

  ``required`` arrays must all be present; of ``one_of``, at least one.
  """
  try:
    with np.load(path, allow_pickle=False) as f:
      names = sorted(f.files)
      missing = [k for k in required if k not in names]
      if missing:
        raise UserInputError(f"{where}: the .npz file must contain array(s) {list(required)}; "
                             f"missing {missing}, found {names}.")
      if one_of and not any(k in names for k in one_of):
        raise UserInputError(f"{where}: the .npz file must contain one of the arrays "
                             f"{list(one_of)}; found {names}.")
      return {k: f[k] for k in names}
  except UserInputError:
    raise
  except ValueError as e:
    if "pickle" in str(e).lower():
      raise UserInputError(
          f"{where}: the .npz file holds pickled Python objects, which are not loaded "
          "(allow_pickle=False, as pickles can run code); save plain numeric or string "
          "arrays, e.g. np.savez(path, x=x.astype(np.float32), y=y.astype(np.int64))."
      ) from None
    raise UserInputError(f"{where}: could not read the .npz file: {e}") from None
  except (OSError, EOFError, KeyError) as e:  # not a zip file, truncated, ...
    raise UserInputError(f"{where}: could not read the .npz file: {e}") from None


def load_data(
    spec: str,
    *,
    label_column: str = "label",
    max_rows: int | None = None,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    ordinal: bool = False,
    features: Sequence[str] | None = None,
    cost_columns: Callable | None = None,
    row_costs: Callable | None = None,
) -> Dataset:
  """``digits``, ``diamonds``, or a path to a user's ``.npz`` / ``.csv`` file."""
  if max_rows is not None and max_rows < 2:
    raise UserInputError(f"--max-rows must be at least 2; got {max_rows}.")
  if row_costs is not None and spec in BUILTIN_DATA:
    raise UserInputError(f"--data {spec}: --cost-columns and --cost-scale read columns of a "
                         ".csv table, not the built-in data.")
  if spec == "digits":
    if features is not None:
      raise UserInputError("--features applies to tables (diamonds or a file), not digits.")
    ds = load_digits(class_names=class_names)
  elif spec == "diamonds":
    ds = load_diamonds(max_rows, features=features, class_names=class_names)
  else:
    ds = load_user_table(spec, label_column=label_column, num_classes=num_classes,
                         class_names=class_names, ordinal=ordinal, features=features,
                         cost_columns=cost_columns, row_costs=row_costs)
  if num_classes is not None and ds.num_classes != num_classes:
    raise UserInputError(f"--data {spec!r}: {ds.num_classes} classes, but the cost matrix is "
                         f"{num_classes} x {num_classes}; it must be "
                         f"{ds.num_classes} x {ds.num_classes}.")
  if max_rows is not None and max_rows < len(ds.y):
    ds = subsample(ds, max_rows, 0)
  return ds


# --------------------------------------------------------------------------- #
# Stratified subsampling and splits.
# --------------------------------------------------------------------------- #


def _allocate(counts: np.ndarray, total: int, caps: np.ndarray,
              floor: np.ndarray | None = None) -> np.ndarray:
  """Integer quotas ``q <= caps`` summing to ``total``, proportional to ``counts``.

  Largest-remainder rounding (deterministic); ``floor`` is a minimum per class.
  """
  counts = np.asarray(counts, np.int64)
  caps = np.asarray(caps, np.int64)
  base = np.zeros_like(counts) if floor is None else np.minimum(floor, caps)
  rest = total - int(base.sum())
  if rest < 0 or total > int(caps.sum()):
    raise ValueError("infeasible allocation")
  room = caps - base
  ideal = counts * rest / max(int(counts.sum()), 1)
  q = np.minimum(np.floor(ideal).astype(np.int64), room)
  left = rest - int(q.sum())
  order = np.argsort(-(ideal - q), kind="stable")
  while left > 0:
    moved = False
    for c in order:
      if left == 0:
        break
      if q[c] < room[c]:
        q[c] += 1
        left -= 1
        moved = True
    if not moved:  # pragma: no cover - excluded by the feasibility check above
      raise ValueError("infeasible allocation")
  return base + q


def subsample(ds: Dataset, n: int, seed: int = 0) -> Dataset:
  """A stratified subsample of ``n`` rows (at least one per class with examples, if possible)."""
  counts = ds.class_counts
  floor = (counts > 0).astype(np.int64) if n >= int((counts > 0).sum()) else None
  quota = _allocate(counts, n, counts, floor)
  rng = np.random.default_rng(seed)
  idx = np.sort(np.concatenate([
      rng.choice(np.flatnonzero(ds.y == c), size=int(quota[c]), replace=False)
      for c in range(ds.num_classes)]))
  rc = None if ds.row_costs is None else ds.row_costs[idx]
  return dataclasses.replace(ds, x=ds.x[idx], y=ds.y[idx], row_costs=rc)


@dataclasses.dataclass(frozen=True)
class Splits:
  """Per-seed stratified splits, stacked on a leading seed axis; standardized on train."""

  x_train: np.ndarray  # (S, n_train, D)
  y_train: np.ndarray  # (S, n_train)
  x_val: np.ndarray
  y_val: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  mean: np.ndarray | None = None  # (S, D): x_split = (x - mean) / scale
  scale: np.ndarray | None = None
  notes: tuple[str, ...] = ()  # classes missing from a split, for the report
  # (S, n, K, K) per-row costs of each split's rows (None: one shared matrix)
  c_train: np.ndarray | None = None
  c_val: np.ndarray | None = None
  c_test: np.ndarray | None = None


def split_sizes(counts: np.ndarray, *, val_frac: float = 0.2, test_frac: float = 0.2,
                source: str = "data") -> tuple[np.ndarray, np.ndarray]:
  """Per-class test and validation counts; every class with examples keeps one for training."""
  counts = np.asarray(counts, np.int64)
  n = int(counts.sum())
  present = int((counts > 0).sum())
  n_test = max(1, int(round(test_frac * n)))
  n_val = max(1, int(round(val_frac * n)))
  if n_test + n_val > n - present:
    raise UserInputError(f"{source}: {n} examples are too few for train/validation/test splits "
                         f"({n_test} test, {n_val} validation, and one training example for "
                         f"each of the {present} classes with examples).")
  test = _allocate(counts, n_test, np.maximum(counts - 1, 0))
  val = _allocate(counts, n_val, np.maximum(counts - test - 1, 0))
  return test, val


def make_splits(ds: Dataset, seeds: Sequence[int], *, val_frac: float = 0.2,
                test_frac: float = 0.2) -> Splits:
  """One stratified train/validation/test split per seed (same sizes for every seed).

  The per-class sizes are fixed (largest-remainder rounding of the class proportions, each
  class with examples keeping at least one for training), so classes with one or two examples
  do not break the split; which examples go where depends on the seed. Classes absent from
  the validation or test split are listed in ``notes``. Features are standardized with the
  training split's mean and standard deviation.
  """
  counts = ds.class_counts
  test_n, val_n = split_sizes(counts, val_frac=val_frac, test_frac=test_frac, source=ds.name)
  members = [np.flatnonzero(ds.y == c) for c in range(ds.num_classes)]
  parts: dict[str, list[np.ndarray]] = {k: [] for k in (
      "x_train", "y_train", "x_val", "y_val", "x_test", "y_test", "mean", "scale",
      "c_train", "c_val", "c_test")}
  for seed in seeds:
    rng = np.random.default_rng(seed)
    idx: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for c, m in enumerate(members):
      p = rng.permutation(m)
      t, v = int(test_n[c]), int(val_n[c])
      idx["test"].append(p[:t])
      idx["val"].append(p[t:t + v])
      idx["train"].append(p[t + v:])
    ii = {k: np.sort(np.concatenate(v)) for k, v in idx.items()}
    mu = ds.x[ii["train"]].mean(0)
    sd = ds.x[ii["train"]].std(0)
    sd = np.where(sd > 1e-6, sd, 1.0)
    parts["mean"].append(mu.astype(np.float32))
    parts["scale"].append(sd.astype(np.float32))
    for split, rows in ii.items():
      parts[f"x_{split}"].append(((ds.x[rows] - mu) / sd).astype(np.float32))
      parts[f"y_{split}"].append(ds.y[rows].astype(np.int32))
      if ds.row_costs is not None:  # each row's costs follow it into its split
        parts[f"c_{split}"].append(ds.row_costs[rows].astype(np.float32))
  notes = list(ds.notes())
  train_n = counts - test_n - val_n
  for split, n_c in (("validation", val_n), ("test", test_n)):
    absent = [ds.class_names[c] for c in range(ds.num_classes) if counts[c] > 0 and n_c[c] == 0]
    if absent:
      notes.append(f"classes with too few examples to appear in the {split} split: "
                   f"{', '.join(absent)}.")
  assert np.all(train_n[counts > 0] >= 1)
  return Splits(**{k: np.stack(v) if v else None for k, v in parts.items()},  # type: ignore[arg-type]
                notes=tuple(notes))
