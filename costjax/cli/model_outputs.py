"""Reading and validating the files of ``costjax decide``: model outputs and their costs.

The sibling of :mod:`costjax.cli.data` (whose readers it uses: :func:`~costjax.cli.data.read_csv`,
:func:`~costjax.cli.data.read_npz`, :func:`~costjax.cli.data.encode_labels`) for files that
hold a model's outputs rather than a table of features. The rules are those of the
``costjax decide`` docstring (:mod:`costjax.cli.decide`):

* :func:`load_inputs` — reads and validates ``--val``, ``--test`` and ``--cost`` (and per-row
  costs from ``--cost-columns`` / ``--cost-scale``) into :class:`Inputs`; every problem is a
  one-line :class:`~costjax.cli.errors.UserInputError`, raised before anything is written.
* :func:`check_cost_flags` — the checks of the cost flags alone (before any file is read).
* :class:`Outputs` — one file: logits in class order (probabilities are turned into log
  probabilities), labels, row ids and per-row costs.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from costjax.cli import costs as _costs
from costjax.cli import data as _data
from costjax.cli.errors import UserInputError

PROB_TOLERANCE = 1e-3
PROB_FLOOR = 1e-12  # log(max(p, floor)): a zero probability becomes a very small one


def check_cost_flags(cost: str | None, cost_columns: str | None, cost_scale: str | None) -> None:
  """``--cost``, ``--cost-columns`` and ``--cost-scale`` together: one-line errors."""
  from costjax.cli import rowcosts

  rowcosts.check_flags(cost_columns, cost_scale)
  if cost is None and cost_columns is None:
    raise UserInputError("--cost is required (unless --cost-columns gives every row's costs).")


@dataclasses.dataclass(frozen=True)
class Outputs:
  """One file of model outputs: logits ``(N, K)`` float32 in class order, labels or None."""

  logits: np.ndarray
  labels: np.ndarray | None  # (N,) int32 class indices
  kind: str  # "logits" or "probs"
  source: str
  ids: np.ndarray | None = None  # (N,) passed through from --id-column
  costs: np.ndarray | None = None  # (N, K, K) per-row costs (--cost-columns / --cost-scale)


@dataclasses.dataclass(frozen=True)
class Inputs:
  val: Outputs
  test: Outputs
  cost: np.ndarray  # (K, K) float32 (per-row costs: the mean of the test rows' matrices)
  class_names: tuple[str, ...]
  cost_source: str

  @property
  def per_row(self) -> bool:
    return self.test.costs is not None

  def costs_of(self, which: str) -> np.ndarray:
    """``(N, K, K)`` per-row costs, or the shared ``(K, K)`` matrix."""
    out = getattr(self, which)
    return self.cost if out.costs is None else out.costs


def _raw_npz(path: str, flag: str, id_column: str | None = None):
  where = f"{flag} {path!r}"
  arrays = _data.read_npz(path, where, one_of=("logits", "probs"))
  if "logits" in arrays and "probs" in arrays:
    raise UserInputError(f"{where}: the .npz file has both 'logits' and 'probs'; keep one.")
  kind = "logits" if "logits" in arrays else "probs"
  ids = arrays.get(id_column) if id_column is not None else None
  return arrays[kind], kind, arrays.get("y"), None, where, ids, None


def _raw_csv(path: str, flag: str, label_column: str, csv_values: str,
             id_column: str | None = None, cost_columns=None):
  import pandas as pd

  where = f"{flag} {path!r}"
  df = _data.read_csv(path, where, label_column)
  cost_df = None
  if cost_columns is not None:  # per-row cost columns: set aside, never class columns
    names = cost_columns(df, where)
    cost_df = df[[c for c in df.columns if str(c) in names]]
    df = df.drop(columns=list(cost_df.columns))
  ids = None
  if id_column is not None and id_column in df.columns:
    ids = df[id_column].to_numpy()
    df = df.drop(columns=[id_column])
  labels = None
  if label_column in df.columns:
    col = df[label_column]
    missing = col.isna().to_numpy()
    if missing.any():
      raise UserInputError(f"{where}: the {label_column!r} column is empty in row "
                           f"{int(np.argmax(missing))}; every row needs a label (or drop the "
                           "column).")
    labels = col.to_numpy()
    df = df.drop(columns=[label_column])
  names = [str(c) for c in df.columns]
  bad = [c for c in df.columns if not pd.api.types.is_numeric_dtype(df[c])
         or pd.api.types.is_bool_dtype(df[c])]
  if bad:
    raise UserInputError(f"{where}: class columns must be numeric; column(s) {bad[:5]} are "
                         f"not (a label column must be named {label_column!r}, see "
                         "--label-column; an id column is passed through with --id-column).")
  values = df.to_numpy(np.float64)
  return values, csv_values, labels, names, where, ids, cost_df


def _read_raw(path: str, flag: str, label_column: str, csv_values: str,
              id_column: str | None = None, cost_columns=None):
  ext = _data.file_type(path, f"{flag} {path!r}")
  if ext == ".npz":
    if cost_columns is not None:
      raise UserInputError(f"{flag} {path!r}: --cost-columns and --cost-scale read columns of "
                           ".csv files; this is a .npz file.")
    return _raw_npz(path, flag, id_column)
  if ext == ".csv":
    return _raw_csv(path, flag, label_column, csv_values, id_column, cost_columns)
  raise UserInputError(f"{flag} {path!r}: unsupported file type {ext!r}; use .npz (logits or "
                       "probs, and y) or .csv (one column per class, plus a label column).")


def _check_values(values: np.ndarray, kind: str, where: str) -> np.ndarray:
  """Checks shape, finiteness and (for probabilities) the simplex; returns float32 logits."""
  hint = (" For scores or logits in a CSV file, pass --csv-values logits."
          if where.endswith(".csv'") else " Save scores or logits as an array 'logits'.")
  values = np.asarray(values)
  if values.dtype == object or not (np.issubdtype(values.dtype, np.number)):
    raise UserInputError(f"{where}: {kind} must be numeric; got dtype {values.dtype}.")
  if np.iscomplexobj(values):
    raise UserInputError(f"{where}: {kind} must be real; got dtype {values.dtype}.")
  if values.ndim != 2:
    raise UserInputError(f"{where}: {kind} must be 2-D (examples, classes); got shape "
                         f"{values.shape}.")
  if values.shape[0] < 1:
    raise UserInputError(f"{where}: no examples (shape {values.shape}).")
  values = values.astype(np.float64)
  bad = ~np.isfinite(values)
  if bad.any():
    i, j = np.argwhere(bad)[0]
    raise UserInputError(f"{where}: {kind}[{i}, {j}] = {values[i, j]}; every value must be "
                         f"finite ({int(bad.sum())} non-finite value(s)).")
  if kind == "logits":
    looks_like_probs = (values.shape[1] > 1 and values.min() >= 0 and values.max() <= 1
                        and bool(np.all(np.abs(values.sum(axis=1) - 1) <= PROB_TOLERANCE)))
    if looks_like_probs:
      fix = ("drop --csv-values logits (CSV values are probabilities by default)"
             if where.endswith(".csv'") else "save them as an array 'probs' instead")
      raise UserInputError(
          f"{where}: these logits look like probabilities (every value in [0, 1] and every row "
          f"sums to 1 within {PROB_TOLERANCE:g}); read as logits, softmax would flatten them "
          f"towards uniform; {fix}.")
    return values.astype(np.float32)
  neg = values < 0
  if neg.any():
    i, j = np.argwhere(neg)[0]
    raise UserInputError(f"{where}: probs[{i}, {j}] = {values[i, j]} is negative.{hint}")
  sums = values.sum(axis=1)
  off = np.abs(sums - 1.0) > PROB_TOLERANCE
  if off.any():
    i = int(np.argmax(off))
    raise UserInputError(
        f"{where}: probabilities must sum to 1 per row (tolerance {PROB_TOLERANCE:g}); row {i} "
        f"sums to {sums[i]:.6g} ({int(off.sum())} such row(s)).{hint}")
  return np.log(np.maximum(values / sums[:, None], PROB_FLOOR)).astype(np.float32)


def _natural_order(names: list[str]) -> list[str]:
  if all(n.lstrip("-").isdigit() for n in names):
    return sorted(names, key=int)
  return sorted(names)


def _order_columns(values, names, class_names, cost_source, where):
  """Reorders the class columns of a CSV file to ``class_names`` (matched by name)."""
  if class_names is None:
    return values, None
  missing = [c for c in class_names if c not in names]
  extra = [c for c in names if c not in class_names]
  if missing or extra:
    raise UserInputError(
        f"{where}: the class columns {names[:12]} do not match the classes of --cost "
        f"{cost_source!r} {list(class_names)[:12]}"
        + (f"; missing {missing[:5]}" if missing else "")
        + (f"; not in the cost matrix {extra[:5]}" if extra else "") + ".")
  dup = sorted({n for n in names if names.count(n) > 1})
  if dup:
    raise UserInputError(f"{where}: duplicate class columns {dup}.")
  order = [names.index(c) for c in class_names]
  return values[:, order], tuple(class_names)


def _stray_columns(values: np.ndarray, cols: list[str], kind: str, k: int) -> list[str]:
  """Columns of a CSV file that look like they are not classes (ids, indices, scores)."""
  idish = [c for c in cols if c.lower() in ("id", "index", "row", "row_id", "rowid")
           or c.startswith("Unnamed:")]
  if idish:
    return idish
  if kind == "probs" and len(cols) > k and values.ndim == 2:
    keep_sums = values.sum(axis=1, keepdims=True) - values  # row sums without column j
    fits = np.all(np.abs(keep_sums - 1) <= PROB_TOLERANCE, axis=0)
    return [c for c, f in zip(cols, fits, strict=True) if f]
  return []


def load_inputs(val: str, test: str, cost: str | None, *, label_column: str = "label",
                csv_values: str = "probs", id_column: str | None = None,
                cost_columns: str | None = None, cost_scale: str | None = None) -> Inputs:
  """Reads and validates the three files; raises :class:`UserInputError` on bad input.

  ``cost_columns`` (a template with ``{true}`` and ``{pred}``) or ``cost_scale`` (a column
  scaling ``cost``) read every row's own cost matrix from the CSV files
  (:mod:`costjax.cli.rowcosts`); ``cost`` may then be None with ``cost_columns``.
  """
  from costjax.cli import rowcosts

  check_cost_flags(cost, cost_columns, cost_scale)
  set_aside = None
  if cost_columns is not None or cost_scale is not None:
    def set_aside(df, where):
      found = rowcosts.cost_column_names(df, cost_columns, cost_scale)
      if found:
        return found
      columns = [str(c) for c in df.columns][:20]
      if cost_columns is not None:
        raise UserInputError(f"{where}: --cost-columns {cost_columns!r} matches no column "
                             f"(columns: {columns}).")
      raise UserInputError(f"{where}: --cost-scale column {cost_scale!r} is not in the "
                           f"table (columns: {columns}).")
  rv = _read_raw(val, "--val", label_column, csv_values, id_column, set_aside)
  rt = _read_raw(test, "--test", label_column, csv_values, id_column, set_aside)
  if cost is None:  # --cost-columns alone: the class columns name the classes
    k = np.asarray(rv[0]).shape[-1] if np.asarray(rv[0]).ndim == 2 else 0
    table = _costs.CostTable(np.zeros((k, k), np.float32), None, "--cost-columns")
    cost = f"--cost-columns {cost_columns!r}"
  elif cost in _costs.BUILTIN_COSTS:
    k = np.asarray(rv[0]).shape[-1] if np.asarray(rv[0]).ndim == 2 else 0
    table = _costs.CostTable(_costs.builtin_cost(cost, k), None, cost)
  else:
    table = _costs.read_cost_csv(cost)
  k = table.num_classes
  names = table.class_names

  # Column order (CSV) -> class order; a CSV without a cost header defines the names.
  ordered = []
  for values, kind, labels, cols, where, ids, _ in (rv, rt):
    values = np.asarray(values)
    if cols is not None and names is not None:
      # Match by name first, so a stray column is named rather than counted as a class.
      extra = [c for c in cols if c not in names]
      if extra and not [c for c in names if c not in cols]:
        raise UserInputError(
            f"{where}: column(s) {extra[:5]} are not classes of --cost {cost!r} "
            f"{list(names)[:12]}; drop them, or pass an id column with --id-column NAME.")
      values, _ = _order_columns(values, cols, names, cost, where)
    if values.ndim == 2 and values.shape[1] != k:
      stray = _stray_columns(values, cols, kind, k) if cols is not None else []
      if stray and values.shape[1] > k:
        raise UserInputError(
            f"{where}: column(s) {stray[:5]} do not look like classes ({values.shape[1]} "
            f"columns {cols[:12]} but the cost matrix --cost {cost!r} is {k} x {k}); drop "
            "them, or pass an id column with --id-column NAME.")
      raise UserInputError(
          f"{where}: {values.shape[1]} classes ({kind} of shape {values.shape}) but the cost "
          f"matrix --cost {cost!r} is {k} x {k}"
          + (f" (columns {cols[:12]})" if cols is not None else "") + ".")
    if cols is not None and names is None:
      order = _natural_order(cols)
      values, _ = _order_columns(values, cols, order, cost, where)
      cols = order
    ordered.append((values, kind, labels, cols, where, ids))
  ((v_vals, v_kind, v_lab, v_cols, v_where, _),
   (t_vals, t_kind, t_lab, t_cols, t_where, t_ids)) = ordered
  if names is None:
    if v_cols is not None and t_cols is not None and v_cols != t_cols:
      raise UserInputError(f"{t_where}: class columns {t_cols[:12]} differ from those of "
                           f"--val {val!r} {v_cols[:12]}.")
    cols = v_cols if v_cols is not None else t_cols
    names = tuple(cols) if cols is not None else None

  v_logits = _check_values(v_vals, v_kind, v_where)
  t_logits = _check_values(t_vals, t_kind, t_where)
  if id_column is not None:
    if t_ids is None:
      raise UserInputError(f"{t_where}: --id-column {id_column!r} is not in the test file (a "
                           "column of a .csv file, a 1-D array of a .npz file).")
    t_ids = np.asarray(t_ids)
    if t_ids.ndim != 1 or len(t_ids) != len(t_logits):
      raise UserInputError(f"{t_where}: the id {id_column!r} must be 1-D with one per row; got "
                           f"shape {t_ids.shape} for {len(t_logits)} rows.")
  if v_lab is None:
    raise UserInputError(f"{v_where}: the validation file has no labels (an array 'y' in a "
                         f".npz file, a {label_column!r} column in a .csv file); calibration "
                         "needs them.")
  v_y, names = _labels(v_lab, len(v_logits), v_where, k, names, "--cost header" if
                       table.class_names is not None else "the class columns")
  t_y = None
  if t_lab is not None:
    t_y, _ = _labels(t_lab, len(t_logits), t_where, k, names, "the validation classes")
  v_c = t_c = None
  matrix = table.matrix
  if cost_columns is not None or cost_scale is not None:
    per = []
    for raw, where in ((rv, v_where), (rt, t_where)):
      frame = raw[6]
      if cost_columns is not None:
        per.append(rowcosts.from_columns(frame, cost_columns, names, source=where))
      else:
        assert cost_scale is not None  # per-row costs come from one of the two flags
        per.append(rowcosts.from_scale(frame, cost_scale, table.matrix, source=where))
    v_c, t_c = per
    matrix = t_c.astype(np.float64).mean(axis=0).astype(np.float32)
  return Inputs(Outputs(v_logits, v_y, v_kind, val, costs=v_c),
                Outputs(t_logits, t_y, t_kind, test, t_ids, costs=t_c), matrix, names, cost)


def _labels(raw, n, where, k, names, classes_from):
  raw = np.asarray(raw)
  if raw.ndim != 1 or len(raw) != n:
    raise UserInputError(f"{where}: labels must be 1-D with one per row; got shape {raw.shape} "
                         f"for {n} rows.")
  if names is None and np.issubdtype(raw.dtype, np.number):
    y, names = _data.encode_labels(raw, source=where, num_classes=k)
  else:
    y, names = _data.encode_labels(raw, source=where, num_classes=k, class_names=names,
                                   classes_from=classes_from)
  return y, tuple(names)
