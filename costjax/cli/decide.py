"""``costjax decide``: cost-aware decisions for any model's outputs.

  costjax decide --val val.npz --test test.npz --cost cost.csv --out runs/decide
  costjax decide --val val.csv --test test.csv --cost cost.csv --alpha 0.5 --abstain-cost 2

Inputs (validated completely before anything is written):

* ``--val`` / ``--test``: ``.npz`` with an array ``logits`` or ``probs`` (N, K) and labels ``y``
  (N,) (required for ``--val``, optional for ``--test``), read with ``allow_pickle=False``; or
  ``.csv`` with one column per class, named by the class, plus an optional ``label`` column
  (``--label-column``). CSV values are probabilities unless ``--csv-values logits``.
  Probabilities must be non-negative and sum to 1 per row (tolerance 1e-3); logits that look
  like probabilities (all in [0, 1], rows summing to 1) are refused.
* ``--cost``: a cost CSV (rows true, columns predicted; optional header of class names and row
  names, see ``costjax.cli.costs``) or a built-in name. With a header, CSV class columns must
  be exactly the header's classes (any column order) and labels are matched by name; without
  one, ``.npz`` integer labels are class indices and CSV class columns are taken in sorted
  order (numerically when they are all integers).
* ``--cost-columns TEMPLATE`` / ``--cost-scale COLUMN`` (``costjax.cli.rowcosts``): every row
  of the ``.csv`` files has its own cost matrix, read from the columns ``TEMPLATE`` names
  (``{true}`` and ``{pred}`` replaced by class names; ``--cost`` then optional) or the
  ``--cost`` matrix times the row's ``COLUMN``. These columns are set aside before the class
  columns are matched. Calibration stays NLL-based; decisions, abstention, sets and every
  reported cost use each row's own matrix.

What it does: scores three calibrations of the validation outputs by held-out NLL (2-fold
cross-fitting: each half scored under the fit on the other half) -- none (the raw outputs),
temperature scaling (``costjax.fit_temperature``) and vector scaling
(``costjax.fit_vector_scaling``) -- and keeps the simplest whose held-out NLL is within one
standard error of the lowest (``--calibration auto``; the report says which and why, with the
numbers), refitted on all of validation. It decodes the test outputs by argmax of the raw
outputs, by ``costjax.bayes_decision`` of the raw outputs and of the calibrated ones (with
``--abstain-cost X``, Chow's rule: ``abstain`` where the cheapest decision is expected to cost
more than ``X``); with ``--alpha A``, cost-controlled prediction sets
(``costjax.calibrate_cost_sets`` on validation, ``costjax.cost_sets`` on test) whose expected
best-choice cost is at most ``A``.

Outputs in ``--out``: ``predictions.csv`` (the ``--id-column`` if given, ``argmax``,
``bayes_raw``, ``bayes``, ``set`` with ``--alpha`` as ``a|b|c``, ``expected_cost`` (of the
decision in ``bayes``: the abstention cost where it abstains, else the calibrated expected
cost of its class, under the row's own matrix with per-row costs), and
``label`` when the test file has labels), ``report.md`` (calibration; with test labels the
mean cost per example and savings score of each decoding, coverage and cost on decided rows
under abstention, a paired
bootstrap 95% interval on the saving against argmax, and a one-sentence verdict) and
``expected_cost.png`` (predicted expected cost of the Bayes decision against the realized
cost, in quantile bins). See docs/guides/decide.md.

Python API: ``add_parser(subparsers)`` registers the subcommand; ``run(args)`` runs it;
``load_inputs(...)`` and ``compute(...)`` are the validation and computation steps.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time

import numpy as np

from costjax.cli import calibration as _calibration
from costjax.cli import costs as _costs
from costjax.cli import data as _data
from costjax.cli._common import ArgumentParser, HelpFormatter
from costjax.cli.errors import UserInputError, exit_on_user_error

PROB_TOLERANCE = 1e-3
PROB_FLOOR = 1e-12  # log(max(p, floor)): a zero probability becomes a very small one
ABSTAIN = "abstain"
NEVER_ABSTAIN = float(np.finfo(np.float32).max)  # the abstention threshold without --abstain-cost


# --------------------------------------------------------------------------- #
# Arguments.
# --------------------------------------------------------------------------- #


def add_parser(subparsers) -> argparse.ArgumentParser:
  """Registers ``decide`` on an ``argparse`` subparsers object; returns its parser."""
  p = subparsers.add_parser(
      "decide", help="cost-aware decisions for any model's outputs (logits or probabilities)",
      description=(
          "Calibrate any model's outputs on a validation file (none, temperature or vector "
          "scaling, chosen by held-out NLL), decode a test file by argmax and by the "
          "minimum-expected-cost (Bayes) rule, optionally with abstention (--abstain-cost) and "
          "cost-controlled prediction sets (--alpha), and write predictions.csv, report.md and "
          "expected_cost.png to --out."),
      formatter_class=HelpFormatter)
  add_arguments(p)
  p.set_defaults(run=run)
  return p


def add_arguments(p: argparse.ArgumentParser) -> None:
  p.add_argument("--val", required=True,
                 help="validation outputs with labels: .npz (logits or probs, y) or .csv "
                 "(one column per class + label)")
  p.add_argument("--test", required=True,
                 help="test outputs to decode: .npz (logits or probs, optional y) or .csv")
  p.add_argument("--cost", default=None,
                 help="cost CSV (rows true, columns predicted; optional header of class "
                 "names) or a built-in: " + ", ".join(_costs.BUILTIN_COSTS) + " (required "
                 "unless --cost-columns gives every row's costs)")
  p.add_argument("--cost-columns", default=None, metavar="TEMPLATE",
                 help="per-row costs from columns of the --val and --test CSV files: TEMPLATE "
                 "holds {true} and {pred} (e.g. cost_{true}_{pred}), replaced by class names; "
                 "a pair without a column costs 0. Calibration stays NLL-based; decisions, "
                 "sets, costs and savings use each row's own matrix")
  p.add_argument("--cost-scale", default=None, metavar="COLUMN",
                 help="per-row costs: the --cost matrix times each row's value of COLUMN in "
                 "the --val and --test CSV files (e.g. a transaction amount)")
  p.add_argument("--alpha", type=float, default=None,
                 help="target expected cost of prediction sets (conformal risk control); "
                 "adds a 'set' column")
  p.add_argument("--abstain-cost", type=float, default=None,
                 help="cost of abstaining: the Bayes column says 'abstain' where the best "
                 "decision is expected to cost more")
  p.add_argument("--calibration", choices=("auto", "temperature", "vector", "none"),
                 default="auto",
                 help="auto chooses among none, temperature and vector scaling by held-out NLL "
                 "(2-fold cross-fitting; the simplest within one standard error of the best)")
  p.add_argument("--csv-values", choices=("probs", "logits"), default="probs",
                 help="what the class columns of a .csv file hold")
  p.add_argument("--label-column", default="label", help="label column of a .csv file")
  p.add_argument("--id-column", default=None,
                 help="row id passed through to predictions.csv (its first column): a column "
                 "of a .csv file or a 1-D array of a .npz file; required in --test, dropped "
                 "from --val")
  p.add_argument("--bootstrap", type=int, default=1000,
                 help="paired bootstrap resamples for the intervals")
  p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and the NLL split")
  p.add_argument("--out", default="runs/decide", help="output directory")
  p.add_argument("--quiet", action="store_true", help="no progress lines")


# --------------------------------------------------------------------------- #
# Reading and validating the inputs.
# --------------------------------------------------------------------------- #


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
  if not os.path.isfile(path):
    raise UserInputError(f"{flag} {path!r}: no such file.")
  ext = os.path.splitext(path)[1].lower()
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

  rowcosts.check_flags(cost_columns, cost_scale)
  if cost is None and cost_columns is None:
    raise UserInputError("--cost is required (unless --cost-columns gives every row's costs).")
  set_aside = None
  if cost_columns is not None:
    def set_aside(df, where):
      found = rowcosts.matching_columns(df.columns, cost_columns)
      if not found:
        raise UserInputError(f"{where}: --cost-columns {cost_columns!r} matches no column "
                             f"(columns: {[str(c) for c in df.columns][:20]}).")
      return found
  elif cost_scale is not None:
    def set_aside(df, where):
      if cost_scale not in [str(c) for c in df.columns]:
        raise UserInputError(f"{where}: --cost-scale column {cost_scale!r} is not in the "
                             f"table (columns: {[str(c) for c in df.columns][:20]}).")
      return [cost_scale]
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


# --------------------------------------------------------------------------- #
# Computation.
# --------------------------------------------------------------------------- #


@dataclasses.dataclass
class Result:
  calibration: dict
  argmax: np.ndarray  # (N,) int
  bayes: np.ndarray  # (N,) int, -1 for abstain
  bayes_plain: np.ndarray  # without abstention
  expected_cost: np.ndarray  # (N,) predicted cost of the Bayes decision (calibrated)
  sets: np.ndarray | None  # (N, K) bool
  threshold: float | None
  seconds: dict
  val_risk: np.ndarray  # (N_val, K) decision costs of the calibrated validation outputs
  bayes_raw: np.ndarray  # (N,) int, Bayes decisions on the raw (uncalibrated) outputs
  bayes_raw_abstain: np.ndarray  # (N,) int, the same with abstention (-1)


def compute(inp: Inputs, *, alpha: float | None = None, abstain_cost: float | None = None,
            calibration: str = "auto", seed: int = 0) -> Result:
  """Calibration on validation, decisions on test."""
  import jax.numpy as jnp

  prog = _calibration.programs()
  seconds = {}
  t0 = time.perf_counter()
  scale, bias, info = _calibration.calibrate(inp.val.logits, inp.val.labels, method=calibration,
                                             seed=seed)
  seconds["calibration"] = time.perf_counter() - t0
  t0 = time.perf_counter()
  # Per-row costs: each row is decided with its own matrix (the library's functions take
  # (N, K, K) stacks); otherwise one (K, K) matrix for every row.
  c = jnp.asarray(inp.costs_of("test"))
  cv = jnp.asarray(inp.costs_of("val"))
  zt = jnp.asarray(inp.test.logits)
  zv = jnp.asarray(inp.val.logits)
  # Without --abstain-cost the abstention threshold is +inf: never abstain.
  # (the largest float32: bayes_decision requires a finite abstain_cost, and no expected cost
  # of finite costs exceeds it).
  x = jnp.float32(NEVER_ABSTAIN if abstain_cost is None else abstain_cost)
  out = prog.decode(zt, scale, bias, c, x)
  argmax, plain, best, bayes = (np.asarray(a) for a in (out.argmax, out.cheapest, out.expected,
                                                        out.bayes))
  k = c.shape[-1]
  raw_out = prog.decode(zt, jnp.ones(k, zt.dtype), jnp.zeros(k, zt.dtype), c, x)
  raw, raw_abstain = np.asarray(raw_out.cheapest), np.asarray(raw_out.bayes)
  val_risk = np.asarray(prog.decode(zv, scale, bias, cv, x).risk)
  sets = threshold = None
  if alpha is not None:
    threshold, sets = prog.sets(zv, jnp.asarray(inp.val.labels), zt, scale, bias, cv, c,
                              jnp.float32(alpha))
    threshold, sets = float(threshold), np.asarray(sets)
  seconds["decisions"] = time.perf_counter() - t0
  return Result(info, argmax, bayes, plain, best, sets, threshold, seconds, val_risk, raw,
                raw_abstain)


def bootstrap_means(values: np.ndarray, *, resamples: int, seed: int,
                    chunk_elements: int = 2**24) -> np.ndarray:
  """``(M, resamples)`` means of each row of ``values (M, n)`` over the same resamples.

  One set of resampled example indices serves every row, so differences between rows are
  paired (each resample keeps an example's outcomes together).
  """
  values = np.atleast_2d(np.asarray(values, np.float64))
  n = values.shape[1]
  rng = np.random.default_rng(seed)
  chunk = max(1, chunk_elements // max(n, 1))
  out = []
  for start in range(0, resamples, chunk):
    m = min(chunk, resamples - start)
    idx = rng.integers(0, n, size=(m, n), dtype=np.int32)
    out.append(np.stack([v[idx].mean(axis=1) for v in values], axis=0))
  return np.concatenate(out, axis=1)


def paired_bootstrap(a: np.ndarray, b: np.ndarray | None = None, *, resamples: int, seed: int
                     ) -> tuple[float, float, float]:
  """Mean of ``a - b`` and a percentile 95% interval over ``resamples`` paired resamples.

  Resampling examples with replacement keeps each example's pair together, so the interval
  reflects the per-example correlation of the two decodings. ``b=None`` bootstraps ``a``.
  """
  d = np.asarray(a, np.float64) - (0.0 if b is None else np.asarray(b, np.float64))
  means = bootstrap_means(d, resamples=resamples, seed=seed)[0]
  lo, hi = np.percentile(means, [2.5, 97.5])
  return float(d.mean()), float(lo), float(hi)


# --------------------------------------------------------------------------- #
# Writing.
# --------------------------------------------------------------------------- #


def row_costs(cost: np.ndarray, y: np.ndarray) -> np.ndarray:
  """``(N, K)``: each row's cost of every prediction, from one ``(K, K)`` matrix or per-row
  ``(N, K, K)`` costs."""
  cost = np.asarray(cost, np.float64)
  return cost[y] if cost.ndim == 2 else cost[np.arange(len(y)), y]


def _names(idx: np.ndarray, class_names) -> list[str]:
  return [ABSTAIN if i < 0 else class_names[i] for i in idx]


def _fmt(x: float) -> str:
  return f"{x:.4g}"


def calibration_label(cal: dict) -> str:
  """What was done to the outputs before the calibrated Bayes decisions, in words."""
  if cal["chosen"] == "temperature":
    return f"temperature scaling (T = {cal['temperature']:.4g})"
  if cal["chosen"] == "vector":
    return "vector scaling"
  return "no calibration"


def verdict(label: str, saving: tuple[float, float, float], n: int, resamples: int,
            seed: int) -> str:
  """One sentence: does ``label`` reliably lower the cost against argmax?"""
  mean, lo, hi = saving
  ci = (f"paired 95% interval [{_fmt(lo)}, {_fmt(hi)}] (bootstrap over the {n} test rows, "
        f"{resamples} resamples, seed {seed})")
  if lo > 0:
    return (f"**Verdict:** {label} reliably lowers the mean test cost against argmax, by "
            f"{_fmt(mean)} per example; {ci}.")
  if hi < 0:
    return (f"**Verdict:** {label} raises the mean test cost against argmax, by "
            f"{_fmt(-mean)} per example ({ci}); keep argmax.")
  return (f"**Verdict:** {label} does not reliably lower the mean test cost against argmax: "
          f"the saving is {_fmt(mean)} per example and its {ci} includes 0.")


def write_outputs(out: str, inp: Inputs, res: Result, args) -> dict:
  import pandas as pd

  names = list(inp.class_names)
  os.makedirs(out, exist_ok=True)
  cols: dict[str, object] = {}
  id_column = getattr(args, "id_column", None)
  if id_column is not None:
    cols[id_column] = inp.test.ids
  cols.update({"argmax": _names(res.argmax, names), "bayes_raw": _names(res.bayes_raw, names),
               "bayes": _names(res.bayes, names)})
  if res.sets is not None:
    named = np.array(names, dtype=object)
    cols["set"] = ["|".join(named[row]) for row in res.sets]
  # The expected cost of the decision in the `bayes` column: the abstention cost where it
  # abstains, else the calibrated expected cost of its class (under the row's own matrix).
  abstain_cost = getattr(args, "abstain_cost", None)
  decided_cost = (res.expected_cost if abstain_cost is None else
                  np.where(res.bayes < 0, abstain_cost, res.expected_cost))
  cols["expected_cost"] = np.round(decided_cost, 6)
  y = inp.test.labels
  if y is not None:
    cols["label"] = _names(y, names)
  pd.DataFrame(cols).to_csv(os.path.join(out, "predictions.csv"), index=False)

  cal = res.calibration
  lines = [
      "# costjax decide", "",
      f"- validation: `{inp.val.source}` ({len(inp.val.logits)} examples, {inp.val.kind})",
      f"- test: `{inp.test.source}` ({len(inp.test.logits)} examples, {inp.test.kind}, "
      f"{'with' if y is not None else 'without'} labels)",
      f"- cost: `{inp.cost_source}` (K = {len(names)}; classes {', '.join(names[:20])}"
      f"{' ...' if len(names) > 20 else ''})",
  ]
  if inp.per_row:
    how = (f"columns `{args.cost_columns}`" if getattr(args, "cost_columns", None) else
           f"the matrix times each row's `{args.cost_scale}`")
    lines.append(f"- per-row costs: every row of both files has its own cost matrix ({how}); "
                 "calibration is fitted by NLL, and the decisions, sets, expected costs and "
                 "test costs below use each row's own matrix")
  assert inp.val.labels is not None  # validation labels are required (read_inputs)
  absent = [n for n, c in zip(names, np.bincount(inp.val.labels, minlength=len(names)),
                              strict=True) if c == 0]
  if absent:
    lines.append(f"- classes without validation examples: {', '.join(absent[:20])}"
                 f"{' ...' if len(absent) > 20 else ''} (their calibrated probabilities are "
                 "fitted from no data; vector scaling drives them towards 0)")
  lines += [
      "", "## Calibration (fitted on validation)", "",
      "| method | validation NLL (all, in-sample) | held-out NLL (2-fold: each half scored "
      "under the fit on the other) |", "|---|---|---|",
  ]
  for key, m in (("uncalibrated", "none"), ("temperature", "temperature"),
                 ("vector", "vector")):
    ins = cal.get(f"nll_{key}")
    held = cal.get(f"heldout_nll_{key}")
    lines.append(f"| {_calibration.METHOD_LABELS[m]} | {'—' if ins is None else _fmt(ins)} | "
                 f"{'—' if held is None else _fmt(held)} |")
  chosen = calibration_label(cal)
  if cal["method"] == "auto":
    lines += ["", f"Chosen: **{chosen}**, because {cal['reason']}.", ""]
  else:
    lines += ["", f"Chosen: **{chosen}**, as asked (--calibration {cal['method']}; no held-out "
              "comparison).", ""]

  summary: dict = {"calibration": cal, "seconds": res.seconds, "per_row_costs": inp.per_row}
  x = args.abstain_cost
  same = " (the same decisions as the raw row)" if cal["chosen"] == "none" else ""
  rows = [("argmax", "argmax of the raw outputs", res.argmax),
          ("bayes_raw", "Bayes on the raw outputs", res.bayes_raw),
          ("bayes_calibrated", f"Bayes after {chosen}{same}", res.bayes_plain)]
  if x is not None:
    rows.append(("bayes_raw_abstain", f"Bayes on the raw outputs, abstaining where the expected "
                 f"cost exceeds {x:g}", res.bayes_raw_abstain))
    rows.append(("bayes_abstain", f"Bayes after {chosen}{same}, abstaining where the expected "
                 f"cost exceeds {x:g}", res.bayes))
  final_key = rows[-1][0]
  final_label = rows[-1][1].replace(same, "") if same else rows[-1][1]
  if y is not None:
    ry = row_costs(inp.costs_of("test"), y)  # (N, K)
    rows_n = np.arange(len(y))
    per = [np.where(pred < 0, np.inf if x is None else x, ry[rows_n, np.maximum(pred, 0)])
           for _, _, pred in rows]
    # Savings (Correa Bahnsen; costjax.savings_score): against the cheapest single class
    # for every test row, chosen on the test rows.
    best_constant = float(ry.mean(axis=0).min())
    summary["best_constant_cost"] = best_constant
    summary["best_constant_class"] = names[int(ry.mean(axis=0).argmin())]
    lines += ["## Test cost", "",
              "Mean cost per example (rows true, columns predicted). Coverage is the share of "
              "test rows decided (not abstained on); "
              + ("without --abstain-cost every row is decided. " if x is None else
                 f"the mean cost charges each abstention {x:g}; the cost and accuracy on "
                 "decided rows leave abstentions out. ")
              + "The saving is the mean cost of argmax minus that of the "
              f"decoding, with a paired bootstrap 95% interval ({args.bootstrap} resamples over "
              f"test rows, seed {args.seed}). Savings score: 1 - mean cost / the mean cost of "
              f"the best constant prediction ({summary['best_constant_class']!r} for every "
              f"row, {_fmt(best_constant)} per example; `costjax.savings_score`): 1 is "
              "perfect, 0 no better than one class for every row.", "",
              "| decoding | coverage | mean cost per example | cost on decided rows | accuracy "
              "on decided rows | savings score | saving vs argmax [95% CI] |",
              "|---|---|---|---|---|---|---|"]
    summary["test"] = {}
    # One set of resamples for every comparison (and the set cost below): paired throughout.
    stack = [per[0] - cost_i for cost_i in per[1:]]
    # The decoding written to the bayes column minus the same rule on the raw outputs.
    stack.append(per[-1] - per[-2] if x is not None else per[2] - per[1])
    if res.sets is not None:
      realized = np.where(res.sets, ry, np.inf).min(axis=1)
      stack.append(realized)
    boot = bootstrap_means(np.stack(stack), resamples=args.bootstrap, seed=args.seed)
    lo_hi = np.percentile(boot, [2.5, 97.5], axis=1)

    def interval(i):
      return float(np.mean(stack[i])), float(lo_hi[0, i]), float(lo_hi[1, i])

    for r, ((key, label, pred), cost_i) in enumerate(zip(rows, per, strict=True)):
      decided = pred >= 0
      coverage = float(decided.mean())
      on_decided = float(cost_i[decided].mean()) if decided.any() else float("nan")
      acc = float(np.mean(pred[decided] == y[decided])) if decided.any() else float("nan")
      s = None if r == 0 else interval(r - 1)
      ci = "—" if s is None else f"{_fmt(s[0])} [{_fmt(s[1])}, {_fmt(s[2])}]"
      sav = (1.0 - float(cost_i.mean()) / best_constant) if best_constant > 0 else float("nan")
      lines.append(f"| {label} | {coverage:.1%} | {_fmt(float(cost_i.mean()))} | "
                   f"{_fmt(on_decided)} | {acc:.4f} | {_fmt(sav)} | {ci} |")
      summary["test"][key] = {"label": label, "mean_cost": float(cost_i.mean()),
                              "coverage": coverage, "cost_on_decided": on_decided,
                              "accuracy_on_decided": acc, "savings_score": sav, "saving": s}
    if x is not None:
      ab = res.bayes < 0
      lines += ["", f"Abstained on {int(ab.sum())} of {len(y)} test rows (coverage "
                f"{1 - ab.mean():.1%})."]
    sentence = verdict(final_label, summary["test"][final_key]["saving"], len(y),
                       args.bootstrap, args.seed)
    lines += ["", sentence]
    harm = interval(len(rows) - 1)
    summary["calibration_minus_raw"] = harm
    if cal["chosen"] != "none" and harm[1] > 0:
      lines += ["", f"**Warning:** on test, {chosen} made the Bayes decisions"
                f"{' with abstention' if x is not None else ''} costlier than on "
                f"the raw outputs, by {_fmt(harm[0])} per example (paired 95% interval "
                f"[{_fmt(harm[1])}, {_fmt(harm[2])}]); the validation set may not resemble the "
                "test set. Consider --calibration none."]
    lines.append("")
  else:
    differ = float(np.mean(res.bayes != res.argmax))
    sentence = (f"**Verdict:** none possible: the test file has no labels, so the saving against "
                f"argmax cannot be measured; {final_label} differs from argmax on {differ:.1%} "
                "of the test rows.")
    lines += ["## Test decisions", ""]
    if x is not None:
      lines += [f"Abstained on {int((res.bayes < 0).sum())} of {len(res.bayes)} test rows "
                f"(coverage {np.mean(res.bayes >= 0):.1%}).", ""]
    lines += [sentence, ""]
  summary["verdict"] = sentence
  if res.sets is not None:
    size = res.sets.sum(axis=1)
    lines += ["## Cost-controlled prediction sets", "",
              f"Conformal risk control on validation for alpha = {args.alpha:g}: threshold "
              f"{res.threshold:.4g} on the excess expected cost; a set holds every class whose "
              "expected cost is within the threshold of the cheapest. Guarantee: for a new "
              "exchangeable example, E[cost of the best choice in its set] <= alpha.", "",
              f"- mean set size on test: {size.mean():.3f} (median {np.median(size):g}, "
              f"max {size.max()})"]
    if y is not None:
      lo, hi = lo_hi[:, -1]
      lines.append(f"- realized set cost on test (cost of the best choice in the set): "
                   f"{realized.mean():.4g} [95% CI {lo:.4g}, {hi:.4g}] against alpha = "
                   f"{args.alpha:g}")
      summary["sets"] = {"threshold": res.threshold, "mean_size": float(size.mean()),
                         "realized_cost": float(realized.mean())}
    lines.append("")
  plot_note = write_plot(out, inp, res)
  lines += ["## Predicted against realized cost", "", plot_note, "",
            "![expected cost](expected_cost.png)", "",
            f"Time: calibration {res.seconds['calibration']:.2f} s, decisions "
            f"{res.seconds['decisions']:.2f} s.", ""]
  with open(os.path.join(out, "report.md"), "w", encoding="utf-8") as f:
    f.write("\n".join(lines))
  return summary


def _reliability(expected, realized, bins):
  order = np.argsort(expected, kind="stable")
  groups = [g for g in np.array_split(order, bins) if len(g)]
  return (np.array([expected[g].mean() for g in groups]),
          np.array([realized[g].mean() for g in groups]),
          np.array([realized[g].std(ddof=1) / math.sqrt(len(g)) if len(g) > 1 else 0.0
                    for g in groups]))


def write_plot(out: str, inp: Inputs, res: Result) -> str:
  """``expected_cost.png``: binned predicted expected cost against realized cost."""
  import jax.numpy as jnp
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  if inp.test.labels is not None:
    c = inp.costs_of("test")
    y, which = inp.test.labels, "test"
    expected = res.expected_cost
    pred = res.bayes_plain
    raw_logits = inp.test.logits
  else:
    # No test labels: the same plot on validation (where the calibration was fitted).
    c = inp.costs_of("val")
    assert inp.val.labels is not None  # validation labels are required (read_inputs)
    y, which = inp.val.labels, "validation (in-sample: the test file has no labels)"
    pred = res.val_risk.argmin(-1)
    expected = res.val_risk.min(-1)
    raw_logits = inp.val.logits
  k = c.shape[-1]
  raw_risk = np.asarray(_calibration.programs().decode(
      jnp.asarray(raw_logits), jnp.ones(k), jnp.zeros(k), jnp.asarray(c),
      jnp.float32(NEVER_ABSTAIN)).risk)
  raw_pred = raw_risk.argmin(-1)
  bins = int(np.clip(len(y) // 50, 2, 15))
  fig, ax = plt.subplots(figsize=(5.2, 4.6))
  top = 0.0
  for label, e, p, mk in (("calibrated", expected, pred, "o"),
                          ("raw outputs", raw_risk.min(-1), raw_pred, "s")):
    ex, re, se = _reliability(e, row_costs(c, y)[np.arange(len(y)), p], bins)
    ax.errorbar(ex, re, yerr=1.96 * se, marker=mk, ms=4, capsize=2, lw=1,
                label=f"Bayes, {label}")
    top = max(top, ex.max(), (re + 1.96 * se).max())
  top = top * 1.05 or 1.0
  ax.plot([0, top], [0, top], color="grey", ls="--", lw=1, label="predicted = realized")
  ax.set_xlim(0, top)
  ax.set_ylim(0, top)
  ax.set_xlabel("predicted expected cost of the decision (bin mean)")
  ax.set_ylabel("realized cost (bin mean, 95% interval)")
  ax.set_title(f"Expected vs realized cost, {bins} quantile bins\n{which.split(' (')[0]}",
               fontsize=10)
  ax.legend(fontsize=8, loc="upper left")
  fig.tight_layout()
  fig.savefig(os.path.join(out, "expected_cost.png"), dpi=110)
  plt.close(fig)
  return (f"`expected_cost.png`: examples of the {which} set sorted into {bins} equal-count bins "
          "by the expected cost of their Bayes decision (what the calibrated model predicts it "
          "will cost); each point is a bin's mean predicted against mean realized cost. Points "
          "on the diagonal mean the predicted costs can be trusted.")


# --------------------------------------------------------------------------- #
# Entry point.
# --------------------------------------------------------------------------- #


def check_flags(args) -> None:
  from costjax.cli import rowcosts

  rowcosts.check_flags(getattr(args, "cost_columns", None), getattr(args, "cost_scale", None))
  if args.cost is None and getattr(args, "cost_columns", None) is None:
    raise UserInputError("--cost is required (unless --cost-columns gives every row's costs).")
  if args.alpha is not None and not (math.isfinite(args.alpha) and args.alpha > 0):
    raise UserInputError(f"--alpha must be a positive number; got {args.alpha}.")
  if args.abstain_cost is not None and not (math.isfinite(args.abstain_cost)
                                            and args.abstain_cost >= 0):
    raise UserInputError(f"--abstain-cost must be a non-negative number; got "
                         f"{args.abstain_cost}.")
  if args.bootstrap < 10:
    raise UserInputError(f"--bootstrap must be at least 10; got {args.bootstrap}.")
  if os.path.exists(args.out) and not os.path.isdir(args.out):
    raise UserInputError(f"--out {args.out!r} exists and is not a directory.")


def _say(quiet: bool, message: str) -> None:
  """A progress line (the steps are few and long, so lines rather than a bar)."""
  if not quiet:
    print(message, flush=True)


def run(args) -> dict:
  """Runs ``costjax decide`` for parsed ``args``; validates everything before writing."""
  t0 = time.perf_counter()
  check_flags(args)
  inp = load_inputs(args.val, args.test, args.cost, label_column=args.label_column,
                    csv_values=args.csv_values, id_column=getattr(args, "id_column", None),
                    cost_columns=getattr(args, "cost_columns", None),
                    cost_scale=getattr(args, "cost_scale", None))
  t_read = time.perf_counter() - t0
  quiet = getattr(args, "quiet", False)
  _say(quiet, f"read {len(inp.val.logits)} validation and {len(inp.test.logits)} test "
       f"examples, K = {len(inp.class_names)} ({t_read:.1f} s); calibrating "
       f"({args.calibration}) and decoding ...")
  res = compute(inp, alpha=args.alpha, abstain_cost=args.abstain_cost,
                calibration=args.calibration, seed=args.seed)
  res.seconds["read"] = t_read
  _say(quiet, f"calibration: {res.calibration['chosen']} "
       f"({res.seconds['calibration']:.1f} s); decisions ({res.seconds['decisions']:.1f} s); "
       f"writing the report ({args.bootstrap} bootstrap resamples) ...")
  summary = write_outputs(args.out, inp, res, args)
  res.seconds["total"] = time.perf_counter() - t0
  _say(quiet, summary["verdict"].replace("**", ""))
  _say(quiet, f"wrote {args.out}/predictions.csv, report.md, expected_cost.png "
       f"({res.seconds['total']:.1f} s)")
  return summary


def main(argv=None) -> int:
  p = ArgumentParser(prog="costjax decide", description=__doc__.split("\n\n")[0],
                     formatter_class=HelpFormatter)
  add_arguments(p)
  exit_on_user_error(run, p.parse_args(argv))
  return 0


if __name__ == "__main__":
  sys.exit(main())
