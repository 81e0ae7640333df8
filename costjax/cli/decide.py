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
``load_inputs(...)`` (from :mod:`costjax.cli.model_outputs`, which reads and validates the
files) and ``compute(...)`` are the validation and computation steps. Calibration and decoding
are :mod:`costjax.cli.calibration`'s (shared with ``compare``).
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
from costjax.cli import stats as _stats
from costjax.cli._common import ArgumentParser, HelpFormatter
from costjax.cli.errors import UserInputError, exit_on_user_error
from costjax.cli.model_outputs import Inputs, check_cost_flags, load_inputs

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


# --------------------------------------------------------------------------- #
# Writing.
# --------------------------------------------------------------------------- #


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


@dataclasses.dataclass(frozen=True)
class ReportOptions:
  """The flags that shape the outputs (not the computation) of ``costjax decide``."""

  bootstrap: int = 1000  # paired bootstrap resamples
  seed: int = 0
  alpha: float | None = None
  abstain_cost: float | None = None
  id_column: str | None = None
  cost_columns: str | None = None  # how per-row costs were read, for the report
  cost_scale: str | None = None

  @classmethod
  def from_args(cls, args: argparse.Namespace) -> ReportOptions:
    return cls(bootstrap=args.bootstrap, seed=args.seed, alpha=args.alpha,
               abstain_cost=args.abstain_cost, id_column=getattr(args, "id_column", None),
               cost_columns=getattr(args, "cost_columns", None),
               cost_scale=getattr(args, "cost_scale", None))


def write_outputs(out: str, inp: Inputs, res: Result, options: ReportOptions) -> dict:
  """Writes ``predictions.csv``, ``report.md`` and ``expected_cost.png`` to ``out``; returns
  the summary (what the report states, as numbers)."""
  import pandas as pd

  names = list(inp.class_names)
  os.makedirs(out, exist_ok=True)
  cols: dict[str, object] = {}
  id_column = options.id_column
  if id_column is not None:
    cols[id_column] = inp.test.ids
  cols.update({"argmax": _names(res.argmax, names), "bayes_raw": _names(res.bayes_raw, names),
               "bayes": _names(res.bayes, names)})
  if res.sets is not None:
    named = np.array(names, dtype=object)
    cols["set"] = ["|".join(named[row]) for row in res.sets]
  # The expected cost of the decision in the `bayes` column: the abstention cost where it
  # abstains, else the calibrated expected cost of its class (under the row's own matrix).
  abstain_cost = options.abstain_cost
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
    how = (f"columns `{options.cost_columns}`" if options.cost_columns else
           f"the matrix times each row's `{options.cost_scale}`")
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
  x = options.abstain_cost
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
    ry = _stats.prediction_costs(inp.costs_of("test"), y)  # (N, K)
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
              f"decoding, with a paired bootstrap 95% interval ({options.bootstrap} resamples over "
              f"test rows, seed {options.seed}). Savings score: 1 - mean cost / the mean cost of "
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
    boot = _stats.bootstrap_means(np.stack(stack), resamples=options.bootstrap, seed=options.seed)
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
                       options.bootstrap, options.seed)
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
              f"Conformal risk control on validation for alpha = {options.alpha:g}: threshold "
              f"{res.threshold:.4g} on the excess expected cost; a set holds every class whose "
              "expected cost is within the threshold of the cheapest. Guarantee: for a new "
              "exchangeable example, E[cost of the best choice in its set] <= alpha.", "",
              f"- mean set size on test: {size.mean():.3f} (median {np.median(size):g}, "
              f"max {size.max()})"]
    if y is not None:
      lo, hi = lo_hi[:, -1]
      lines.append(f"- realized set cost on test (cost of the best choice in the set): "
                   f"{realized.mean():.4g} [95% CI {lo:.4g}, {hi:.4g}] against alpha = "
                   f"{options.alpha:g}")
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
    ex, re, se = _reliability(e, _stats.prediction_costs(c, y)[np.arange(len(y)), p], bins)
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
  check_cost_flags(args.cost, getattr(args, "cost_columns", None),
                   getattr(args, "cost_scale", None))
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
  summary = write_outputs(args.out, inp, res, ReportOptions.from_args(args))
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
