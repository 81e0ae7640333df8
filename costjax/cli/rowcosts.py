"""Per-row (example-dependent) costs read from a table, for ``compare`` and ``decide``.

Two ways to give every row its own ``(K, K)`` cost matrix (rows true, columns predicted):

* ``--cost-columns TEMPLATE``: ``TEMPLATE`` holds ``{true}`` and ``{pred}``; for each pair of
  class names, the column ``TEMPLATE.format(true=..., pred=...)`` holds that pair's cost in
  every row (``cost_{true}_{pred}`` reads ``cost_yes_no`` for the true class ``yes`` predicted
  ``no``). A pair without a column costs 0. Every column that matches the template's pattern
  must name a pair of classes (a typo in a class name is an error, not a silent 0).
* ``--cost-scale COLUMN``: the ``--cost`` matrix times that row's value (the fraud amount).

Costs must be finite, non-negative numbers; errors name the row (the table's 0-based row
index, as pandas reads it) and the column.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from costjax.cli.errors import UserInputError


def check_flags(template: str | None, scale: str | None) -> None:
  """Checks the two flags without data (before anything is read)."""
  if template is not None and scale is not None:
    raise UserInputError("--cost-columns and --cost-scale exclude each other: give per-row "
                         "cost columns or one matrix scaled per row, not both.")
  if template is not None:
    pattern(template)
  if scale is not None and not scale.strip():
    raise UserInputError("--cost-scale needs a column name.")


def pattern(template: str) -> re.Pattern:
  """The regular expression of the column names ``template`` produces."""
  if "{true}" not in template or "{pred}" not in template:
    raise UserInputError(f"--cost-columns {template!r}: the template must contain both "
                         "{true} and {pred} (for example cost_{true}_{pred}).")
  try:
    template.format(true="a", pred="b")
  except (KeyError, IndexError, ValueError) as e:
    raise UserInputError(f"--cost-columns {template!r}: only {{true}} and {{pred}} may stand "
                         f"in braces ({e}).") from None
  parts = re.split(r"(\{true\}|\{pred\})", template)
  regex = "".join("(?P<true>.+)" if p == "{true}" else "(?P<pred>.+)" if p == "{pred}"
                  else re.escape(p.replace("{{", "{").replace("}}", "}")) for p in parts)
  return re.compile(f"^{regex}$")


def matching_columns(columns: Sequence, template: str) -> list[str]:
  """Columns whose names fit the template (whatever the class names)."""
  rx = pattern(template)
  return [str(c) for c in columns if rx.match(str(c))]


def _numeric(df, col: str, source: str, what: str) -> np.ndarray:
  """A column as float64, or an error naming the first bad row."""
  import pandas as pd

  s = df[col]
  values = pd.to_numeric(s, errors="coerce").to_numpy(np.float64)
  raw_missing = s.isna().to_numpy()
  bad = np.isnan(values) & ~raw_missing
  if pd.api.types.is_bool_dtype(s):
    bad = np.ones(len(s), bool)
  if bad.any():
    i = int(np.argmax(bad))
    raise UserInputError(f"{source}: {what} column {col!r} is not numeric in row {df.index[i]} "
                         f"({s.iloc[i]!r}).")
  bad = ~np.isfinite(values)
  if bad.any():
    i = int(np.argmax(bad))
    raise UserInputError(f"{source}: {what} column {col!r} has a missing or non-finite value "
                         f"in row {df.index[i]} ({values[i]}); every row needs a finite cost.")
  neg = values < 0
  if neg.any():
    i = int(np.argmax(neg))
    raise UserInputError(f"{source}: {what} column {col!r} is negative in row {df.index[i]} "
                         f"({values[i]:g}); costs must be >= 0.")
  return values


def from_columns(df, template: str, class_names: Sequence[str], *, source: str) -> np.ndarray:
  """``(N, K, K)`` float32 per-row costs from the template's columns of ``df``."""
  names = [str(n) for n in class_names]
  k = len(names)
  found = matching_columns(df.columns, template)
  if not found:
    example = template.format(true=names[0], pred=names[-1])
    raise UserInputError(f"{source}: --cost-columns {template!r} matches no column (for "
                         f"example {example!r}; columns: {[str(c) for c in df.columns][:20]}).")
  col_of = {str(c): c for c in df.columns}
  out = np.zeros((len(df), k, k), np.float64)
  used = set()
  for i, t in enumerate(names):
    for j, p in enumerate(names):
      name = template.format(true=t, pred=p)
      if name in col_of:
        out[:, i, j] = _numeric(df, col_of[name], source, "cost")
        used.add(name)
  stray = [c for c in found if c not in used]
  if stray:
    raise UserInputError(f"{source}: column(s) {stray[:5]} match --cost-columns {template!r} "
                         f"but do not name a pair of classes {names[:12]}; rename or drop them.")
  return out.astype(np.float32)


def from_scale(df, column: str, matrix: np.ndarray, *, source: str) -> np.ndarray:
  """``(N, K, K)`` float32: ``matrix`` times each row's value of ``column``."""
  if column not in [str(c) for c in df.columns]:
    raise UserInputError(f"{source}: --cost-scale column {column!r} is not in the table "
                         f"(columns: {[str(c) for c in df.columns][:20]}).")
  col = next(c for c in df.columns if str(c) == column)
  scale = _numeric(df, col, source, "--cost-scale")
  return (scale[:, None, None] * np.asarray(matrix, np.float64)[None]).astype(np.float32)


def cost_column_names(df, template: str | None, scale: str | None) -> list[str]:
  """The columns that carry costs (never features unless --features names them)."""
  if template is not None:
    return matching_columns(df.columns, template)
  if scale is not None:
    return [str(c) for c in df.columns if str(c) == scale]
  return []


def savings(cost: np.ndarray, constant_costs: np.ndarray) -> float:
  """``1 - cost / min_k constant_costs[k]`` (Correa Bahnsen's savings); NaN if the best
  constant policy costs nothing."""
  best = float(np.min(constant_costs))
  return float("nan") if best <= 0 else 1.0 - float(cost) / best
