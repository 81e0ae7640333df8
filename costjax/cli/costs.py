"""Cost matrices for the ``costjax`` command: built-in ones and user CSV files.

Interface (used by ``costjax compare``, ``costjax decide`` and the examples):

* ``BUILTIN_COSTS`` — ``("forum", "ordinal", "asymmetric", "random")``; ``builtin_cost(name, k)``
  builds one for ``k`` classes (``forum_cost``, ``asymmetric_cost``, ``random_cost``; ``ordinal``
  is ``abs(i - j)``).
* ``read_cost_csv(path, flag="--cost") -> CostTable`` — a validated ``(K, K)`` float32 matrix
  and its class names (``None`` when the file has no header).
* ``cost_matrix(spec, k, *, class_names=None) -> np.ndarray`` — a built-in name or a CSV path,
  checked to be ``k x k``; with ``class_names`` (the data's class order), a CSV header must list
  exactly those names in that order.
* ``cost_classes(specs) -> (num_classes, class_names)`` — what the first CSV among ``specs``
  fixes (``(None, None)`` if all are built-in); several CSVs with headers must agree.
* ``parse_costs("a,b") -> ["a", "b"]``.

Cost CSV format (rows are true classes, columns predicted ones, ``C[true, pred]``):

* no header: ``K`` rows of ``K`` numbers;
* a header row of ``K`` class names, then ``K`` rows of numbers; the class order is the
  header's and labels are matched to it by name;
* a header row and a first column of row names (the same names, same order; the header may
  then start with an empty or corner cell, as ``pandas.DataFrame.to_csv`` writes it).

A header made only of distinct non-negative integers is recognised when the rest of the file
is ``K x K`` (so ``0,1,2`` above a 3 x 3 matrix names classes ``"0"``, ``"1"``, ``"2"``).
Every problem — a ragged or non-square table, an empty cell, a non-number, NaN or infinity,
a negative cost, duplicate names, row names that disagree with the header — raises a one-line
:class:`~costjax.cli.errors.UserInputError` naming the file and the entry.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from collections.abc import Sequence

import numpy as np

from costjax.cli.errors import UserInputError

BUILTIN_COSTS = ("forum", "ordinal", "asymmetric", "random")
# The six digit confusions of the reference experiment (true, predicted).
DIGIT_EXPENSIVE_PAIRS = ((7, 1), (3, 8), (8, 3), (4, 9), (9, 4), (5, 6))

FORUM_COST = np.array(
    [[0, 1, 4, 5], [1, 0, 3, 8], [4, 3, 0, 2], [5, 8, 2, 0]], dtype=np.float32
)


@dataclasses.dataclass(frozen=True)
class CostTable:
  """A validated cost matrix ``(K, K)`` float32 and its class names (``None``: no header)."""

  matrix: np.ndarray
  class_names: tuple[str, ...] | None
  source: str

  @property
  def num_classes(self) -> int:
    return int(self.matrix.shape[0])


# --------------------------------------------------------------------------- #
# Built-in matrices.
# --------------------------------------------------------------------------- #


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
    pairs = list(DIGIT_EXPENSIVE_PAIRS)
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


def ordinal_cost(k: int) -> np.ndarray:
  """``abs(i - j)`` (the same matrix as ``costjax.ordinal_cost_matrix(k)``)."""
  i, j = np.indices((k, k))
  return np.abs(i - j).astype(np.float32)


def builtin_cost(name: str, k: int) -> np.ndarray:
  """A built-in cost matrix by name for ``k`` classes."""
  if k < 2:
    raise UserInputError(f"--cost {name!r}: need at least 2 classes; got K = {k}.")
  if name == "forum":
    return forum_cost(k)
  if name == "ordinal":
    return ordinal_cost(k)
  if name == "asymmetric":
    return asymmetric_cost(k)
  if name == "random":
    return random_cost(k)
  raise UserInputError(f"unknown cost {name!r}; use one of {', '.join(BUILTIN_COSTS)} or a "
                       "path to a CSV file with a K x K matrix (rows true, columns predicted).")


# --------------------------------------------------------------------------- #
# CSV files.
# --------------------------------------------------------------------------- #


def _number(cell: str) -> float | None:
  """``float(cell)`` or ``None`` when the cell is not a number (NaN/inf do parse)."""
  try:
    return float(cell)
  except ValueError:
    return None


def _finite_number(cell: str) -> float | None:
  """A finite number, else ``None``: when telling names from values, "nan", "inf" and
  "Infinity" are class names (a cost must be finite anyway)."""
  v = _number(cell)
  return v if v is not None and math.isfinite(v) else None


def _is_numeric_row(row: Sequence[str]) -> bool:
  return all(_finite_number(c) is not None for c in row)


def _looks_like_header(first: list[str], rest: list[list[str]]) -> bool:
  """A row of class names: all text (after an optional corner cell), or distinct integers
  above exactly as many all-numeric rows (``0,1,2`` over a 3 x 3 matrix)."""
  corner = bool(first) and (first[0] == "" or _finite_number(first[0]) is None)
  cells = first[1:] if corner and len(first) > 1 else first
  if all(_finite_number(c) is None for c in cells):
    return True
  return (all(c.isdigit() for c in cells) and len(set(cells)) == len(cells)
          and len(rest) == len(cells) and all(_is_numeric_row(r[-len(cells):]) for r in rest))


def read_cost_csv(path: str, flag: str = "--cost") -> CostTable:
  """Reads and validates a cost CSV (see the module docstring for the accepted layouts)."""
  where = f"{flag} {path!r}"
  if not os.path.isfile(path):
    raise UserInputError(f"{where}: no such file, and not a built-in cost "
                         f"({', '.join(BUILTIN_COSTS)}).")
  try:
    with open(path, newline="", encoding="utf-8-sig") as f:
      rows = [[c.strip() for c in r] for r in csv.reader(f)]
  except (OSError, UnicodeDecodeError, csv.Error) as e:
    raise UserInputError(f"{where}: could not read the CSV file: {e}") from None
  rows = [r for r in rows if any(c != "" for c in r)]  # blank lines
  if not rows:
    raise UserInputError(f"{where}: the file is empty; expected a K x K matrix "
                         "(rows true, columns predicted).")

  header: list[str] | None = None
  body = rows
  if _looks_like_header(rows[0], rows[1:]):
    header, body = rows[0], rows[1:]
  if not body:
    raise UserInputError(f"{where}: a header row but no matrix rows.")
  widths = {len(r) for r in body}
  if len(widths) != 1:
    i = next(i for i, r in enumerate(body) if len(r) != len(body[0]))
    raise UserInputError(f"{where}: ragged table: matrix row {i} has {len(body[i])} cells, "
                         f"row 0 has {len(body[0])}.")
  ncols = widths.pop()
  n = len(body)
  row_names: list[str] | None = None
  if ncols == n + 1 and (header is not None or not _is_numeric_row([r[0] for r in body])):
    row_names = [r[0] for r in body]
    body = [r[1:] for r in body]
  elif ncols != n:
    raise UserInputError(f"{where}: the cost matrix must be square (K x K, rows true, columns "
                         f"predicted); got {n} rows of {ncols} numbers.")
  if row_names is not None and header is None:
    raise UserInputError(f"{where}: the first column holds row names but there is no header "
                         "row of class names; add one (the same names, in the same order).")
  if header is not None:
    if len(header) == n + 1 and (row_names is not None or header[0] == ""):
      header = header[1:]  # the corner cell above the row names
    if len(header) != n:
      raise UserInputError(f"{where}: the header names {len(header)} classes but the matrix is "
                           f"{n} x {n}.")
    empty = [j for j, h in enumerate(header) if h == ""]
    if empty:
      raise UserInputError(f"{where}: header column {empty[0]} has an empty class name.")
    dup = sorted({h for h in header if header.count(h) > 1})
    if dup:
      raise UserInputError(f"{where}: duplicate class names in the header: {dup}.")
    if row_names is not None and row_names != header:
      i = next(i for i, (a, b) in enumerate(zip(row_names, header, strict=True)) if a != b)
      raise UserInputError(
          f"{where}: the row names and the header disagree: row {i} is named {row_names[i]!r} "
          f"but column {i} is {header[i]!r}; rows and columns must list the same classes in "
          "the same order (rows true, columns predicted).")

  values = np.empty((n, n), np.float64)
  for i, r in enumerate(body):
    for j, cell in enumerate(r):
      v = _number(cell)
      if v is None:
        what = "an empty cell" if cell == "" else f"{cell!r}, not a number"
        raise UserInputError(f"{where}: C[{i}, {j}] is {what}.")
      if not math.isfinite(v):
        raise UserInputError(f"{where}: C[{i}, {j}] = {cell}; costs must be finite.")
      if v < 0:
        raise UserInputError(f"{where}: negative entry: C[{i}, {j}] = {v}; costs must be >= 0.")
      values[i, j] = v
  if n < 2:
    raise UserInputError(f"{where}: need at least 2 classes; got a {n} x {n} matrix.")
  names = None if header is None else tuple(header)
  return CostTable(values.astype(np.float32), names, path)


def parse_costs(spec: str) -> list[str]:
  """``--cost a,b,c`` -> names/paths; several train together through ``jax.vmap``."""
  names = [s.strip() for s in spec.split(",") if s.strip()]
  if not names:
    raise UserInputError("--cost is empty.")
  return names


def cost_table(spec: str, k: int, *, class_names: Sequence[str] | None = None) -> CostTable:
  """A built-in cost by name or a CSV file, checked against the data's ``k`` classes.

  Args:
    spec: a name in ``BUILTIN_COSTS`` or a path to a cost CSV.
    k: the data's number of classes.
    class_names: the data's class names in class order; when given and the CSV has a header,
      the header must list exactly these names in this order (the data loader puts the
      classes in the header's order, so a mismatch means two CSVs disagree).
  """
  if spec in BUILTIN_COSTS:
    return CostTable(builtin_cost(spec, k), None, spec)
  table = read_cost_csv(spec)
  if table.matrix.shape != (k, k):
    raise UserInputError(f"--cost {spec!r}: the cost matrix has shape {table.matrix.shape}, but "
                         f"the data has K = {k} classes; it must be {k} x {k}.")
  if class_names is not None and table.class_names is not None:
    if tuple(class_names) != table.class_names:
      raise UserInputError(
          f"--cost {spec!r}: the header's classes {list(table.class_names)} differ from the "
          f"data's classes {list(class_names)} (in order).")
  return table


def cost_matrix(spec: str, k: int, *, class_names: Sequence[str] | None = None) -> np.ndarray:
  """Like :func:`cost_table`, the ``(k, k)`` float32 matrix alone."""
  return cost_table(spec, k, class_names=class_names).matrix


def cost_classes(specs: Sequence[str]) -> tuple[int | None, tuple[str, ...] | None]:
  """``(K, class names)`` fixed by the CSV files among ``specs`` (``None`` where not fixed).

  All CSV matrices must have the same size, and all headers the same names in the same order.
  """
  k = None
  names = None
  first = None
  for s in specs:
    if s in BUILTIN_COSTS:
      continue
    t = read_cost_csv(s)
    if k is None:
      k, first = t.num_classes, s
    elif t.num_classes != k:
      raise UserInputError(f"--cost {s!r}: a {t.num_classes} x {t.num_classes} matrix, but "
                           f"{first!r} is {k} x {k}; all cost matrices must be the same size.")
    if t.class_names is not None:
      if names is None:
        names = t.class_names
      elif t.class_names != names:
        raise UserInputError(f"--cost {s!r}: its header {list(t.class_names)} differs from "
                             f"another cost file's header {list(names)}.")
  return k, names
