"""``costjax study``: the comparison of ``costjax compare`` over many tables, and the answer
across them.

Every table runs through ``costjax compare`` itself (the same arms, decodings, selection on
validation and within-table statistics, one compiled program per arm) into its own folder
``OUT/<table>/``. A finished table leaves ``OUT/<table>/study.json``; a study started again
with the same settings reuses it, so an interrupted study resumes at the first unfinished
table.

Across tables, every recipe (arm x decoding, and the best constant prediction) is compared
with cross-entropy + Bayes (temperature) by its relative test-cost change on each table,
``cost / cost_ce_bayes - 1``:

* wins, ties and losses: a tie when the two mean test costs differ by at most that table's
  ROPE (``compare``'s, in cost units);
* the two-sided Wilcoxon signed-rank test of the relative changes over tables (Demšar,
  JMLR 2006), exact (:func:`wilcoxon_signed_rank`), Holm-adjusted across recipes;
* the Bayesian signed-rank test (Benavoli et al., JMLR 2017; :func:`bayesian_signed_rank`)
  with a ROPE of ``stats.ROPE_FRACTION`` in relative units (the within-table ROPE is that
  fraction of cross-entropy + Bayes's cost, so the two agree);
* a verdict per recipe: ``better`` (Holm-adjusted p < ALPHA, median change below 0, and
  P(cheaper beyond the ROPE) >= PROB), ``worse`` (the mirror image), ``equivalent``
  (P(within the ROPE) >= PROB), else ``undecided``.

Writes ``OUT/report.md`` (opening with ``## Verdict across tables``), ``OUT/results.csv``
(one row per table x recipe), ``OUT/results.json`` and ``OUT/relative_cost.png``.

A manifest (``--manifest FILE.toml``) lists tables of your own::

  [[table]]
  name = "jobs"            # folder name: letters, digits, '_', '-', '.'
  data = "jobs.csv"        # relative to the manifest
  label_column = "satisfaction"
  cost = "ordinal"         # a built-in name or a cost CSV (relative to the manifest)
  ordinal = true           # optional (default false)
  features = ["age", "income"]  # optional (default: every other column)
  max_rows = 5000          # optional stratified row cap

Every entry is checked, and every table and cost loaded, before anything runs.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import re
import sys
import time
from typing import Any

import numpy as np

from costjax.cli.errors import UserInputError

# Settings of a study. --quick is a first look: the suite took 287 CPU-seconds (docs/results.md).
FULL = {"seeds": 5, "epochs": 15, "lrs": "1e-3,1e-2", "max_rows": 3000, "arms": None}
QUICK = {"seeds": 3, "epochs": 6, "lrs": "3e-3", "max_rows": 800,
         "arms": "ce,wce,ec,soft1"}
BASELINE = ("ce", "bayes_t")
NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
MANIFEST_KEYS = {"name", "data", "label_column", "cost", "ordinal", "features", "max_rows"}
BAYES_SAMPLES = 50_000
BAYES_PRIOR = 0.5  # weight of the pseudo-observation at 0 (baycomp's default)
VERDICTS = ("better", "equivalent", "worse", "undecided")


# --------------------------------------------------------------------------- #
# Statistics across tables (pure NumPy / SciPy; public for users' own studies).
# --------------------------------------------------------------------------- #


def relative_change(cost, base) -> np.ndarray:
  """``cost / base - 1`` per table (negative: cheaper than the baseline).

  >>> relative_change([0.9, 1.2], [1.0, 1.0]).round(3).tolist()
  [-0.1, 0.2]
  """
  cost, base = np.asarray(cost, np.float64), np.asarray(base, np.float64)
  return cost / base - 1.0


def _signed_rank_counts(weights: np.ndarray) -> np.ndarray:
  """Number of sign patterns per value of the positive rank sum (integer ``weights``)."""
  total = int(weights.sum())
  counts = np.zeros(total + 1, np.float64)
  counts[0] = 1.0
  for w in weights:
    w = int(w)
    counts[w:] = counts[w:] + counts[: total + 1 - w].copy()
  return counts


def wilcoxon_signed_rank(d, *, exact_max: int = 30) -> float:
  """Two-sided Wilcoxon signed-rank p-value of "the differences ``d`` are centred at 0".

  Zeros are dropped (Wilcoxon's convention); tied ``|d|`` get mid-ranks. With at most
  ``exact_max`` non-zero differences the p-value is exact (the permutation distribution of
  the positive rank sum over the ``2**n`` sign patterns, mid-ranks included); otherwise the
  normal approximation with the tie correction. ``1.0`` when every ``d`` is 0; NaN with a
  non-finite ``d``.

  Args:
    d: paired differences, one per table (e.g. relative cost changes).
    exact_max: largest number of non-zero differences for the exact distribution.

  Returns:
    The two-sided p-value.

  >>> round(wilcoxon_signed_rank([-0.1, -0.2, -0.05, -0.3, 0.02, -0.15]), 4)
  0.0625
  """
  from scipy.stats import norm, rankdata

  d = np.asarray(d, np.float64)
  if d.size == 0 or not np.all(np.isfinite(d)):
    return float("nan")
  d = d[d != 0]
  n = d.size
  if n == 0:
    return 1.0
  ranks = rankdata(np.abs(d))  # mid-ranks: multiples of 0.5
  r_plus = float(ranks[d > 0].sum())
  if n <= exact_max:
    w = np.rint(2 * ranks).astype(np.int64)  # integer weights
    counts = _signed_rank_counts(w)
    probs = counts / counts.sum()
    t = int(round(2 * r_plus))
    lower = probs[: t + 1].sum()
    upper = probs[t:].sum()
    return float(min(1.0, 2 * min(lower, upper)))
  mean = n * (n + 1) / 4
  _, tie_counts = np.unique(ranks, return_counts=True)
  var = n * (n + 1) * (2 * n + 1) / 24 - float((tie_counts**3 - tie_counts).sum()) / 48
  if var <= 0:
    return 1.0
  z = (r_plus - mean) / math.sqrt(var)
  return float(min(1.0, 2 * norm.sf(abs(z))))


def bayesian_signed_rank(d, *, rope: float, prior: float = BAYES_PRIOR,
                         samples: int = BAYES_SAMPLES, seed: int = 0
                         ) -> tuple[float, float, float]:
  """Bayesian signed-rank test with a ROPE (Benavoli et al., JMLR 2017).

  A Dirichlet process posterior over the distribution of the differences ``d`` (one per
  table), with a pseudo-observation at 0 of weight ``prior``: each posterior sample draws
  weights ``w ~ Dirichlet(prior, 1, ..., 1)`` over ``(0, d_1, ..., d_n)`` and splits the
  mass ``sum_ij w_i w_j`` of the pairwise means ``(d_i + d_j) / 2`` below ``-rope``,
  within ``[-rope, rope]`` and above ``rope`` (a mean exactly at a bound counts half to
  each side). The returned probabilities are the fractions of samples in which each of
  the three masses is the largest.

  Args:
    d: differences, one per table (negative: the recipe is cheaper).
    rope: half-width of the region of practical equivalence, in the units of ``d``.
    prior: weight of the pseudo-observation at 0.
    samples: number of posterior samples.
    seed: seed of NumPy's generator (the result is reproducible).

  Returns:
    ``(p_cheaper, p_equivalent, p_dearer)``, summing to 1; NaN with a non-finite ``d``.

  >>> p = bayesian_signed_rank([-0.2, -0.3, -0.25, -0.1, -0.4, -0.15], rope=0.05)
  >>> p[0] > 0.9
  True
  """
  d = np.asarray(d, np.float64)
  if d.size == 0 or not np.all(np.isfinite(d)):
    return (float("nan"),) * 3
  if not (rope >= 0 and math.isfinite(rope)):
    raise ValueError(f"rope must be finite and >= 0; got {rope}.")
  z = np.concatenate([[0.0], d])
  sums = z[:, None] + z[None, :]

  def side(a):  # 1 above the threshold, 1/2 on it
    return (a > 2 * rope).astype(np.float64) + 0.5 * (a == 2 * rope)

  below, above = side(-sums), side(sums)
  rng = np.random.default_rng(seed)
  alpha = np.concatenate([[prior], np.ones(d.size)])
  out = np.zeros(3)
  for start in range(0, samples, 10_000):  # bounded memory
    w = rng.dirichlet(alpha, min(10_000, samples - start))
    lo = np.einsum("si,ij,sj->s", w, below, w)
    hi = np.einsum("si,ij,sj->s", w, above, w)
    mass = np.stack([lo, 1.0 - lo - hi, hi], axis=1)
    out += np.bincount(np.argmax(mass, axis=1), minlength=3)
  out /= samples
  return float(out[0]), float(out[1]), float(out[2])


def wins_ties_losses(cost, base, rope) -> tuple[int, int, int]:
  """Tables where the recipe is cheaper / within ``rope`` / dearer (per-table ``rope``).

  >>> wins_ties_losses([0.8, 1.0, 1.3], [1.0, 1.02, 1.0], [0.05, 0.05, 0.05])
  (1, 1, 1)
  """
  diff = np.asarray(cost, np.float64) - np.asarray(base, np.float64)
  rope = np.asarray(rope, np.float64)
  tie = np.abs(diff) <= rope
  return int(np.sum(~tie & (diff < 0))), int(np.sum(tie)), int(np.sum(~tie & (diff > 0)))


def across_tables(records: list[dict], *, rope_fraction: float, alpha: float = 0.05,
                  prob: float = 0.95, seed: int = 0) -> list[dict]:
  """The across-table comparison of every recipe with cross-entropy + Bayes (temperature).

  Args:
    records: one dict per table x recipe with keys ``table``, ``arm``, ``decoding``,
      ``label``, ``test_cost``, ``ce_bayes_test_cost`` and ``rope`` (the table's, in cost
      units), as in ``results.csv``.
    rope_fraction: the across-table ROPE, in relative units.
    alpha: level of the Holm-adjusted Wilcoxon tests.
    prob: posterior probability a Bayesian verdict needs.
    seed: seed of the Bayesian test's sampling.

  Returns:
    One dict per recipe (the baseline excluded), sorted by median relative change: the
    recipe, its tables, relative changes, wins/ties/losses, ``p`` and ``holm_p``,
    ``p_cheaper``, ``p_equivalent``, ``p_dearer`` and ``verdict``.
  """
  from costjax.cli.stats import holm

  recipes: dict[tuple[str, str], list[dict]] = {}
  for r in records:
    if (r["arm"], r["decoding"]) != BASELINE:
      recipes.setdefault((r["arm"], r["decoding"]), []).append(r)
  out = []
  for (arm, dec), rs in recipes.items():
    rs = sorted(rs, key=lambda r: r["table"])
    cost = np.array([r["test_cost"] for r in rs], np.float64)
    base = np.array([r["ce_bayes_test_cost"] for r in rs], np.float64)
    rel = relative_change(cost, base)
    ok = np.isfinite(rel)
    rope = np.array([r["rope"] for r in rs], np.float64)
    w, t, lo = wins_ties_losses(cost[ok], base[ok], rope[ok])
    p_c, p_e, p_d = bayesian_signed_rank(rel[ok], rope=rope_fraction, seed=seed)
    out.append({
        "arm": arm, "decoding": dec, "label": rs[0]["label"],
        "tables": [r["table"] for r in rs], "relative": rel.tolist(),
        "median_relative": float(np.median(rel[ok])) if ok.any() else float("nan"),
        "mean_relative": float(np.mean(rel[ok])) if ok.any() else float("nan"),
        "num_tables": int(ok.sum()), "diverged_tables": int((~ok).sum()),
        "wins": w, "ties": t, "losses": lo, "p": wilcoxon_signed_rank(rel[ok]),
        "p_cheaper": p_c, "p_equivalent": p_e, "p_dearer": p_d,
    })
  for o, adj in zip(out, holm([o["p"] for o in out]), strict=True):
    o["holm_p"] = adj
    significant = adj < alpha
    if significant and o["median_relative"] < 0 and o["p_cheaper"] >= prob:
      o["verdict"] = "better"
    elif significant and o["median_relative"] > 0 and o["p_dearer"] >= prob:
      o["verdict"] = "worse"
    elif o["p_equivalent"] >= prob:
      o["verdict"] = "equivalent"
    else:
      o["verdict"] = "undecided"
  return sorted(out, key=lambda o: (o["median_relative"], o["arm"], o["decoding"]))


def smallest_wilcoxon_p(num_tables: int) -> float:
  """The smallest two-sided exact Wilcoxon p-value over ``num_tables`` tables."""
  return 2.0 / 2**num_tables if num_tables >= 1 else float("nan")


# --------------------------------------------------------------------------- #
# Tables: the built-in suite and manifests.
# --------------------------------------------------------------------------- #


class TableSpec:
  """One table to run: a CSV file, its label column, its cost and options."""

  def __init__(self, name, *, data, label_column, cost, ordinal=False, features=None,
               max_rows=None, info=None, suite=None):
    self.name, self.data, self.label_column, self.cost = name, data, label_column, cost
    self.ordinal, self.features, self.max_rows = bool(ordinal), features, max_rows
    self.info = info or {}
    self.suite = suite  # a suite.SuiteTable (materialized into OUT/<name>/ before running)

  def fingerprint(self) -> str:
    h = hashlib.sha256()
    for path in (self.data, self.cost):
      if path and os.path.isfile(path):
        with open(path, "rb") as f:
          h.update(f.read())
      else:
        h.update(str(path).encode())
    h.update(json.dumps([self.label_column, self.ordinal, self.features,
                         self.max_rows]).encode())
    return h.hexdigest()[:16]


def _check_entry(e, i: int, where: str, base: str) -> TableSpec:
  from costjax.cli import costs as costs_mod

  if not isinstance(e, dict):
    raise UserInputError(f"{where}: [[table]] number {i + 1} is not a table.")
  label = f"{where}: [[table]] {e.get('name', i + 1)!r}"
  unknown = sorted(set(e) - MANIFEST_KEYS)
  if unknown:
    raise UserInputError(f"{label}: unknown key(s) {unknown}; allowed: "
                         f"{sorted(MANIFEST_KEYS)}.")
  for key in ("name", "data", "label_column", "cost"):
    if key not in e:
      raise UserInputError(f"{label}: missing key {key!r}.")
    if not isinstance(e[key], str) or not e[key].strip():
      raise UserInputError(f"{label}: {key!r} must be a non-empty string.")
  if not NAME_RE.match(e["name"]) or e["name"] in (".", ".."):
    raise UserInputError(f"{label}: name must use letters, digits, '_', '-' or '.' only.")
  if "ordinal" in e and not isinstance(e["ordinal"], bool):
    raise UserInputError(f"{label}: 'ordinal' must be true or false.")
  feats = e.get("features")
  if feats is not None and (not isinstance(feats, list) or not feats
                            or not all(isinstance(f, str) and f for f in feats)):
    raise UserInputError(f"{label}: 'features' must be a non-empty list of column names.")
  rows = e.get("max_rows")
  if rows is not None and (isinstance(rows, bool) or not isinstance(rows, int) or rows < 2):
    raise UserInputError(f"{label}: 'max_rows' must be an integer >= 2.")
  data = os.path.join(base, e["data"])
  if not os.path.isfile(data):
    raise UserInputError(f"{label}: data file {e['data']!r} not found (paths are relative "
                         "to the manifest).")
  if not data.lower().endswith(".csv"):
    raise UserInputError(f"{label}: data {e['data']!r} must be a .csv file.")
  cost = e["cost"]
  if cost not in costs_mod.BUILTIN_COSTS:
    cost = os.path.join(base, cost)
    if not os.path.isfile(cost):
      raise UserInputError(f"{label}: cost {e['cost']!r} is neither a built-in "
                           f"({', '.join(costs_mod.BUILTIN_COSTS)}) nor a file.")
  return TableSpec(e["name"], data=data, label_column=e["label_column"], cost=cost,
                   ordinal=e.get("ordinal", False), features=feats, max_rows=rows,
                   info={"source": e["data"], "cost_name": e["cost"]})


def read_manifest(path: str) -> list[TableSpec]:
  """Parses and checks a TOML manifest (entries only; :func:`check_tables` loads them)."""
  if sys.version_info >= (3, 11):
    import tomllib
  else:  # Python 3.10
    import tomli as tomllib

  where = f"--manifest {path!r}"
  if not os.path.isfile(path):
    raise UserInputError(f"{where}: no such file.")
  try:
    with open(path, "rb") as f:
      doc = tomllib.load(f)
  except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
    raise UserInputError(f"{where}: not valid TOML: {e}") from None
  extra = sorted(set(doc) - {"table"})
  if extra:
    raise UserInputError(f"{where}: unknown top-level key(s) {extra}; list tables as "
                         "[[table]] entries.")
  entries = doc.get("table")
  if not isinstance(entries, list) or not entries:
    raise UserInputError(f"{where}: no [[table]] entries.")
  base = os.path.dirname(os.path.abspath(path))
  specs = [_check_entry(e, i, where, base) for i, e in enumerate(entries)]
  names = [s.name for s in specs]
  dup = sorted({n for n in names if names.count(n) > 1})
  if dup:
    raise UserInputError(f"{where}: table name(s) {dup} appear more than once.")
  return specs


def suite_specs(names: str | None = None) -> tuple[list[TableSpec], list[tuple[str, str]]]:
  """The built-in suite's tables whose package is installed, and the missing ones."""
  from costjax.cli import suite

  tables = list(suite.TABLES)
  if names is not None:
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    known = {t.name for t in tables}
    unknown = [n for n in wanted if n not in known]
    if unknown or not wanted:
      raise UserInputError(f"--tables: unknown table(s) {unknown}; the suite has "
                           f"{', '.join(sorted(known))}.")
    tables = [t for t in tables if t.name in wanted]
  usable, missing = suite.available(tables)
  specs = [TableSpec(t.name, data=None, label_column=suite.LABEL, cost=None,
                     ordinal=t.ordinal, max_rows=t.max_rows, suite=t,
                     info={"source": t.source, "licence": t.licence,
                           "cost_name": t.cost_name, "title": t.title}) for t in usable]
  return specs, missing


def check_tables(specs: list[TableSpec], *, where: str, max_rows: int | None) -> None:
  """Loads every manifest table and its cost as ``compare`` will (errors name the entry)."""
  from costjax.cli import costs as costs_mod
  from costjax.cli import data as data_mod

  for s in specs:
    if s.suite is not None:
      continue
    try:
      cost_specs = [s.cost]
      k, names = costs_mod.cost_classes(cost_specs)
      rows = _row_cap(s.max_rows, max_rows)
      ds = data_mod.load_data(s.data, label_column=s.label_column, max_rows=rows,
                              num_classes=k, class_names=names, ordinal=s.ordinal,
                              features=s.features)
      costs_mod.cost_matrix(s.cost, ds.num_classes, class_names=ds.class_names)
      data_mod.split_sizes(ds.class_counts, source=s.data)
    except UserInputError as e:
      raise UserInputError(f"{where}: [[table]] {s.name!r}: {e}") from None


def _row_cap(a, b):
  caps = [v for v in (a, b) if v is not None]
  return min(caps) if caps else None


def materialize(spec: TableSpec, folder: str) -> None:
  """Writes a suite table as ``table.csv`` and ``cost.csv`` (header: class names)."""
  t = spec.suite
  os.makedirs(folder, exist_ok=True)
  data_path = os.path.join(folder, "table.csv")
  cost_path = os.path.join(folder, "cost.csv")
  t.frame().to_csv(data_path, index=False)
  c = t.cost()
  with open(cost_path, "w", encoding="utf-8", newline="") as f:
    w = csv.writer(f)
    w.writerow(t.classes)
    for row in c:
      w.writerow([f"{v:g}" for v in row])
  spec.data, spec.cost = data_path, cost_path


# --------------------------------------------------------------------------- #
# The command.
# --------------------------------------------------------------------------- #


def add_parser(subparsers) -> argparse.ArgumentParser:
  from costjax.cli._common import HelpFormatter

  p = subparsers.add_parser(
      "study", help="compare cost-aware losses across many tables",
      description=(
          "Run `costjax compare` on every table of the built-in suite (real tables shipped "
          "inside installed packages) or of a TOML manifest, then compare every recipe with "
          "cross-entropy + Bayes (temperature) across tables: relative cost change, wins / "
          "ties / losses, Wilcoxon signed-rank over tables (Holm across recipes) and the "
          "Bayesian signed-rank test with a ROPE. Writes report.md, results.csv, "
          "results.json, relative_cost.png and one compare report per table to --out; a "
          "study started again with the same settings resumes where it stopped."),
      formatter_class=HelpFormatter)
  src = p.add_mutually_exclusive_group()
  src.add_argument("--suite", choices=("builtin",), default=None,
                   help="the built-in suite of real tables (the default)")
  src.add_argument("--manifest", default=None,
                   help="TOML file with one [[table]] per table: name, data (CSV, relative "
                   "to the manifest), label_column, cost (built-in name or CSV), optional "
                   "ordinal, features, max_rows")
  p.add_argument("--tables", default=None,
                 help="comma-separated subset of the built-in suite's tables")
  p.add_argument("--quick", action="store_true",
                 help=f"a first look (about 5 CPU-minutes for the suite): {QUICK['seeds']} seeds, "
                 f"{QUICK['epochs']} epochs, learning rate {QUICK['lrs']}, at most "
                 f"{QUICK['max_rows']} rows, arms {QUICK['arms']} (default: "
                 f"{FULL['seeds']} seeds, {FULL['epochs']} epochs, learning rates "
                 f"{FULL['lrs']}, at most {FULL['max_rows']} rows, every arm)")
  p.add_argument("--seeds", type=int, default=None, help="override the seeds per table")
  p.add_argument("--epochs", type=int, default=None, help="override the epochs per table")
  p.add_argument("--max-rows", type=int, default=None,
                 help="override the row cap per table (a stratified subsample)")
  p.add_argument("--arms", default=None,
                 help="override the arms (comma-separated ids, as in compare)")
  p.add_argument("--out", default="runs/study", help="output directory")
  p.add_argument("--progress", choices=("auto", "bar", "lines", "none"), default="auto",
                 help="a bar over tables on a terminal, one line per table otherwise")
  p.set_defaults(run=run)
  return p


def settings(args) -> dict:
  s: dict[str, Any] = dict(QUICK if args.quick else FULL)
  for key in ("seeds", "epochs", "max_rows", "arms"):
    v = getattr(args, key)
    if v is not None:
      s[key] = v
  for key in ("seeds", "epochs"):
    if s[key] < 1:
      raise UserInputError(f"--{key} must be >= 1; got {s[key]}.")
  if s["max_rows"] is not None and s["max_rows"] < 2:
    raise UserInputError(f"--max-rows must be at least 2; got {s['max_rows']}.")
  return s


def _compare_args(spec: TableSpec, s: dict, out: str):
  from costjax.cli import compare, main

  argv = ["compare", "--data", spec.data, "--label-column", spec.label_column, "--cost",
          spec.cost, "--seeds", str(s["seeds"]), "--epochs", str(s["epochs"]), "--lrs",
          s["lrs"], "--out", out, "--progress", "none"]
  if spec.ordinal:
    argv.append("--ordinal")
  if spec.features:
    argv += ["--features", ",".join(spec.features)]
  rows = _row_cap(spec.max_rows, s["max_rows"])
  if rows is not None:
    argv += ["--max-rows", str(rows)]
  if s["arms"]:
    arms = [a for a in s["arms"].split(",") if a and (a != "emd" or spec.ordinal)]
    argv += ["--arms", ",".join(arms)]
  del compare
  return main.build_parser().parse_args(argv)


def _check_arms(spec: str | None) -> None:
  from costjax.cli.training import ARM_KEYS

  if spec is None:
    return
  unknown = sorted({a.strip() for a in spec.split(",") if a.strip()} - set(ARM_KEYS))
  if unknown:
    raise UserInputError(f"--arms: unknown arm id(s) {unknown}; choose from "
                         f"{', '.join(ARM_KEYS)}.")


def _records(name: str, summary: dict) -> list[dict]:
  """Rows of ``results.csv`` for one table, from its compare summary."""
  rows = [r for r in summary["rows"] if r.get("cost", summary["costs"][0]) ==
          summary["costs"][0]]
  base = next(r for r in rows if (r["arm"], r["decoding"]) == BASELINE)
  rope = base.get("rope")
  if rope is None:
    from costjax.cli import stats

    rope = getattr(stats, "ROPE_FRACTION", 0.05) * base["val_cost"]
  out = []
  for r in rows:
    cost = r["test_cost_mean"]
    b = base["test_cost_mean"]
    rel = (cost / b - 1.0) if (cost is not None and b) else None
    diff = None if cost is None else cost - b
    out.append({
        "table": name, "arm": r["arm"], "label": r["label"], "decoding": r["decoding"],
        "val_cost": r["val_cost"], "test_cost": cost, "test_cost_std": r["test_cost_std"],
        "ce_bayes_test_cost": b, "relative_to_ce_bayes": rel, "rope": rope,
        "within_table": (None if diff is None else
                         "tie" if abs(diff) <= rope else "win" if diff < 0 else "loss"),
        "table_p_vs_ce_bayes": r.get("p_vs_ce_bayes"),
        "table_prob_cheaper_vs_ce_bayes": r.get("prob_cheaper_vs_ce_bayes"),
        "table_prob_equivalent_vs_ce_bayes": r.get("prob_equivalent_vs_ce_bayes"),
        "table_prob_dearer_vs_ce_bayes": r.get("prob_dearer_vs_ce_bayes"),
    })
  return out


CSV_COLUMNS = ("table", "arm", "label", "decoding", "val_cost", "test_cost", "test_cost_std",
               "ce_bayes_test_cost", "relative_to_ce_bayes", "rope", "within_table",
               "table_p_vs_ce_bayes", "table_prob_cheaper_vs_ce_bayes",
               "table_prob_equivalent_vs_ce_bayes", "table_prob_dearer_vs_ce_bayes")


def _write_csv(path: str, records: list[dict]) -> None:
  with open(path, "w", encoding="utf-8", newline="") as f:
    w = csv.writer(f)
    w.writerow(CSV_COLUMNS)
    for r in records:
      w.writerow(["" if r[c] is None else (repr(r[c]) if isinstance(r[c], float) else r[c])
                  for c in CSV_COLUMNS])


def _progress_mode(mode: str) -> str:
  if mode == "auto":
    return "bar" if sys.stdout.isatty() else "lines"
  return mode


def run(args) -> dict:
  """Runs ``costjax study``; returns the across-table summary (as in results.json)."""
  t_start = time.perf_counter()
  s = settings(args)
  _check_arms(s["arms"])
  if os.path.exists(args.out) and not os.path.isdir(args.out):
    raise UserInputError(f"--out {args.out!r} exists and is not a directory.")
  if args.manifest is not None:
    if args.tables is not None:
      raise UserInputError("--tables picks tables of the built-in suite; with --manifest, "
                           "list the tables in the manifest.")
    specs = read_manifest(args.manifest)
    missing: list[tuple[str, str]] = []
    check_tables(specs, where=f"--manifest {args.manifest!r}", max_rows=s["max_rows"])
    source = f"manifest `{args.manifest}`"
  else:
    specs, missing = suite_specs(args.tables)
    if not specs:
      raise UserInputError("no table of the built-in suite can be loaded; install the "
                           "study extra: pip install 'costjax[study]'.")
    source = "the built-in suite"
  # Everything is valid: from here on, files are written.
  from costjax.cli import stats

  mode = _progress_mode(args.progress)
  say = (lambda msg: print(msg, flush=True)) if mode != "none" else (lambda msg: None)
  os.makedirs(args.out, exist_ok=True)
  for name, pkg in missing:
    say(f"skipping {name}: its package {pkg!r} is not installed (pip install "
        "'costjax[study]')")
  key = {k: s[k] for k in ("seeds", "epochs", "lrs", "max_rows", "arms")}
  bar = None
  if mode == "bar":
    from tqdm import tqdm

    bar = tqdm(total=len(specs), desc="tables", unit="table", file=sys.stdout)
  records, tables = [], []
  for i, spec in enumerate(specs):
    folder = os.path.join(args.out, spec.name)
    if spec.suite is not None:
      materialize(spec, folder)
    marker = os.path.join(folder, "study.json")
    fp = {"settings": key, "table": spec.fingerprint()}
    summary, seconds, reused = None, 0.0, False
    if os.path.isfile(marker) and os.path.isfile(os.path.join(folder, "results.json")):
      with open(marker, encoding="utf-8") as f:
        done = json.load(f)
      if done.get("fingerprint") == fp:
        with open(os.path.join(folder, "results.json"), encoding="utf-8") as f:
          summary = json.load(f)
        seconds, reused = done.get("seconds", 0.0), True
    if summary is None:
      from costjax.cli import compare

      if bar is not None:
        bar.set_postfix_str(spec.name)
      t0 = time.perf_counter()
      try:
        summary = compare.run(_compare_args(spec, s, folder))
      except UserInputError as e:
        raise UserInputError(f"table {spec.name!r}: {e}") from None
      seconds = time.perf_counter() - t0
      summary = json.loads(json.dumps(summary, allow_nan=False))  # as results.json holds it
      with open(marker, "w", encoding="utf-8") as f:
        json.dump({"fingerprint": fp, "seconds": seconds}, f)
    recs = _records(spec.name, summary)
    records += recs
    v = summary.get("verdict") or summary["verdicts"][0]
    const = next((r for r in recs if r["arm"] == getattr(stats, "CONSTANT", "constant")), None)
    tables.append({
        "table": spec.name, "rows": summary["num_examples"],
        "classes": summary["num_classes"], "split": summary["split"],
        "cost": spec.info.get("cost_name", os.path.basename(str(spec.cost))),
        "source": spec.info.get("source", ""), "licence": spec.info.get("licence", ""),
        "title": spec.info.get("title", ""), "ordinal": spec.ordinal,
        "ce_bayes_test_cost": recs[0]["ce_bayes_test_cost"], "rope": recs[0]["rope"],
        "constant_test_cost": None if const is None else const["test_cost"],
        "outcome": v.get("outcome", "adopt" if v.get("adopted") else "keep cross-entropy"),
        "sentence": v["sentence"], "seconds": seconds, "reused": reused,
    })
    msg = (f"[{i + 1}/{len(specs)}] {spec.name}: {summary['num_examples']} rows, "
           f"K={summary['num_classes']}: " + ("reused the finished run" if reused else
                                               f"{seconds:.0f} s") + f"; {tables[-1]['outcome']}")
    if bar is not None:
      bar.update(1)
      bar.write(msg, file=sys.stdout)
    else:
      say(msg)
  if bar is not None:
    bar.close()
  rope_fraction = getattr(stats, "ROPE_FRACTION", 0.05)
  comparison = across_tables(records, rope_fraction=rope_fraction, alpha=stats.ALPHA,
                             prob=getattr(stats, "PROB", 0.95))
  total = time.perf_counter() - t_start
  summary = {
      "source": source, "settings": key, "quick": bool(args.quick),
      "baseline": {"arm": BASELINE[0], "decoding": BASELINE[1]},
      "rope_fraction": rope_fraction, "alpha": stats.ALPHA,
      "prob": getattr(stats, "PROB", 0.95), "bayes_prior": BAYES_PRIOR,
      "bayes_samples": BAYES_SAMPLES, "skipped": [{"table": n, "package": p}
                                                   for n, p in missing],
      "tables": tables, "recipes": comparison, "total_seconds": total,
      "run_seconds": float(sum(t["seconds"] for t in tables)),
  }
  _write_csv(os.path.join(args.out, "results.csv"), records)
  with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as f:
    json.dump(_json_safe(summary), f, indent=1, allow_nan=False)
  plot = plot_relative(os.path.join(args.out, "relative_cost.png"), comparison, tables)
  write_report(os.path.join(args.out, "report.md"), summary, plot=plot, argv=_argv(args))
  say(f"wrote {args.out}/report.md, results.csv, results.json, {plot} ({total:.0f} s)")
  return summary


def _argv(args) -> str:
  parts = ["costjax study"]
  if args.manifest:
    parts.append(f"--manifest {args.manifest}")
  if args.tables:
    parts.append(f"--tables {args.tables}")
  if args.quick:
    parts.append("--quick")
  for key in ("seeds", "epochs", "max_rows", "arms"):
    v = getattr(args, key)
    if v is not None:
      parts.append(f"--{key.replace('_', '-')} {v}")
  parts.append(f"--out {args.out}")
  return " ".join(parts)


def _json_safe(x):
  if isinstance(x, dict):
    return {k: _json_safe(v) for k, v in x.items()}
  if isinstance(x, list | tuple):
    return [_json_safe(v) for v in x]
  if isinstance(x, float) and not math.isfinite(x):
    return None
  return x


# --------------------------------------------------------------------------- #
# Plot and report.
# --------------------------------------------------------------------------- #

CLIP = 1.0  # relative changes above +100% are drawn at the edge


def _recipe_name(c: dict) -> str:
  if c["decoding"] in _DEC and c["decoding"] != "none":
    return f"{c['label']} + {_DEC[c['decoding']]}"
  return c["label"]


def plot_relative(path: str, comparison: list[dict], tables: list[dict]) -> str:
  """Every recipe's relative cost change on every table, against the baseline at 0."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  names = [t["table"] for t in tables]
  cmap = plt.get_cmap("tab20" if len(names) > 10 else "tab10")
  markers = "osD^vph*Xd"
  n = len(comparison)
  fig, ax = plt.subplots(figsize=(11, 0.34 * n + 2.0))
  lo = -0.3
  spread = 0.6 / max(len(names), 1)
  for t_i, name in enumerate(names):
    xs, ys, cx, cy = [], [], [], []
    for i, c in enumerate(comparison):
      if name not in c["tables"]:
        continue
      v = c["relative"][c["tables"].index(name)]
      if v is None or not np.isfinite(v):
        continue
      y = n - 1 - i + (t_i - (len(names) - 1) / 2) * spread
      if v > CLIP:
        cx.append(CLIP * 100)
        cy.append(y)
      else:
        xs.append(v * 100)
        ys.append(y)
        lo = min(lo, v)
    color = cmap(t_i % cmap.N)
    ax.scatter(xs, ys, s=16, color=color, marker=markers[t_i % len(markers)], label=name,
               alpha=0.9, zorder=3, linewidths=0)
    ax.scatter(cx, cy, s=22, color=color, marker=">", alpha=0.9, zorder=3, linewidths=0)
  for i, c in enumerate(comparison):
    y = n - 1 - i
    ax.plot([min(c["median_relative"], CLIP) * 100] * 2, [y - 0.4, y + 0.4], color="k",
            lw=2, zorder=4)
  ax.axvline(0, color="#d62728", lw=1.5, zorder=2,
             label="cross-entropy + Bayes (T)")
  ax.plot([], [], color="k", lw=2, label="median over tables")
  ax.set_yticks(range(n))
  ax.set_yticklabels([f"{_recipe_name(c)} [{c['verdict']}]" for c in reversed(comparison)],
                     fontsize=7)
  for y in range(n):
    ax.axhline(y + 0.5, color="0.92", lw=0.6, zorder=0)
  ax.set_ylim(-0.6, n - 0.4)
  ax.set_xlim(max(lo, -1.0) * 100 - 5, CLIP * 100 + 5)
  ax.set_xlabel("test cost relative to cross-entropy + Bayes (temperature), %\n"
                f"(> at the right edge: more than +{CLIP:.0%})", fontsize=8)
  ax.grid(axis="x", alpha=0.3)
  ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), framealpha=0.9)
  ax.set_title(f"Every recipe on {len(names)} tables (left of the red line: cheaper than the "
               "baseline)", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return os.path.basename(path)


_DEC = {"argmax": "argmax", "bayes_t": "Bayes (T)", "bayes_vs": "Bayes (VS)", "none": "-"}


def _p(x) -> str:
  return "n/a" if x is None or not np.isfinite(x) else f"{x:.3g}"


def _pct(x) -> str:
  return "n/a" if x is None or not np.isfinite(x) else f"{100 * x:+.1f}%"


def verdict_sentence(c: dict) -> str:
  name = _recipe_name(c)
  wtl = f"{c['wins']} wins, {c['ties']} ties, {c['losses']} losses over {c['num_tables']} tables"
  if c["verdict"] == "better":
    return (f"**{name}** is cheaper than cross-entropy + Bayes (temperature) across tables "
            f"(median {_pct(c['median_relative'])}; {wtl}; Holm p = {_p(c['holm_p'])}, "
            f"P(cheaper) = {c['p_cheaper']:.2f}).")
  if c["verdict"] == "worse":
    return (f"{name} costs more (median {_pct(c['median_relative'])}; {wtl}; Holm p = "
            f"{_p(c['holm_p'])}, P(dearer) = {c['p_dearer']:.2f}).")
  if c["verdict"] == "equivalent":
    return (f"{name} is practically equivalent (P(within the ROPE) = "
            f"{c['p_equivalent']:.2f}; {wtl}).")
  return (f"{name}: undecided (median {_pct(c['median_relative'])}; {wtl}; Holm p = "
          f"{_p(c['holm_p'])}; P(cheaper / equivalent / dearer) = {c['p_cheaper']:.2f} / "
          f"{c['p_equivalent']:.2f} / {c['p_dearer']:.2f}).")


def write_report(path: str, s: dict, *, plot: str, argv: str) -> None:
  comp, tables = s["recipes"], s["tables"]
  n = len(tables)
  counts = {v: [c for c in comp if c["verdict"] == v] for v in VERDICTS}
  lines = ["## Verdict across tables", ""]
  lines.append(
      f"{n} tables ({s['source']}); every recipe against cross-entropy + Bayes "
      f"(temperature). Tests over tables of the relative test-cost change: two-sided "
      f"Wilcoxon signed-rank, Holm-adjusted across the {len(comp)} recipes (level "
      f"{s['alpha']:g}; the smallest p-value {n} tables allow is "
      f"{_p(smallest_wilcoxon_p(n))}, {_p(smallest_wilcoxon_p(n) * len(comp))} after Holm), "
      f"and the Bayesian signed-rank test with a ROPE of ±{s['rope_fraction']:.0%} "
      f"(P >= {s['prob']:g} decides). A win, tie or loss on a table compares mean test "
      "costs with that table's ROPE.")
  lines.append("")
  if counts["better"]:
    lines += [f"- {verdict_sentence(c)}" for c in counts["better"]]
  else:
    lines.append("- **No recipe is reliably cheaper than cross-entropy + Bayes (temperature) "
                 "across these tables.**")
  if counts["equivalent"]:
    lines.append("- Practically equivalent to it: " + "; ".join(
        f"{_recipe_name(c)} (P = {c['p_equivalent']:.2f}; {c['wins']} / {c['ties']} / "
        f"{c['losses']})"
        for c in counts["equivalent"]) + ".")
  if counts["worse"]:
    lines.append("- Reliably dearer: " + "; ".join(
        f"{_recipe_name(c)} (median {_pct(c['median_relative'])}; {c['wins']} / "
        f"{c['ties']} / {c['losses']})" for c in counts["worse"]) + ".")
  lines.append(f"- Undecided: {len(counts['undecided'])} recipe(s) (see the table; wins / "
               "ties / losses count tables).")
  lines += ["", "| recipe | decoding | median change | mean change | wins / ties / losses "
            "| Wilcoxon p | Holm p | P(cheaper) | P(equivalent) | P(dearer) | verdict |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
  for c in comp:
    lines.append(
        f"| {c['label']} | {_DEC.get(c['decoding'], c['decoding'])} "
        f"| {_pct(c['median_relative'])} | {_pct(c['mean_relative'])} "
        f"| {c['wins']} / {c['ties']} / {c['losses']} | {_p(c['p'])} | {_p(c['holm_p'])} "
        f"| {c['p_cheaper']:.3f} | {c['p_equivalent']:.3f} | {c['p_dearer']:.3f} "
        f"| {c['verdict']} |")
  lines += ["", f"![relative cost of every recipe on every table]({plot})", "",
            "## Tables", "",
            "| table | rows | K | cost | CE + Bayes (T) test cost | ROPE | best constant "
            "| within-table verdict | time (s) |", "|---|---|---|---|---|---|---|---|---|"]
  for t in tables:
    const = "n/a" if t["constant_test_cost"] is None else f"{t['constant_test_cost']:.4f}"
    lines.append(
        f"| [{t['table']}]({t['table']}/report.md) | {t['rows']} | {t['classes']} "
        f"| {t['cost']} | {t['ce_bayes_test_cost']:.4f} | {t['rope']:.4f} | {const} "
        f"| {t['outcome']} | {t['seconds']:.0f}{' (reused)' if t['reused'] else ''} |")
  if s["skipped"]:
    lines += ["", "Skipped (package not installed; `pip install 'costjax[study]'`): " +
              ", ".join(f"{k['table']} ({k['package']})" for k in s["skipped"]) + "."]
  st = s["settings"]
  lines += ["", "## Settings", "",
            f"- command: `{argv}`",
            f"- per table: `costjax compare` with {st['seeds']} seeds (re-splits), "
            f"{st['epochs']} epochs, learning rates {st['lrs']}, at most "
            f"{st['max_rows']} rows, arms {st['arms'] or 'all'}",
            f"- Bayesian signed-rank test: Dirichlet prior weight {s['bayes_prior']:g} on a "
            f"pseudo-observation at 0, {s['bayes_samples']} samples, seed 0",
            f"- wall time {s['total_seconds']:.0f} s (tables run in this call: "
            f"{sum(t['seconds'] for t in tables if not t['reused']):.0f} s)", ""]
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines))
