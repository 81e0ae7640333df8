"""Outputs of ``costjax compare``: ``results.json``, ``results.csv`` and ``report.md``.

Everything the report prints is read from the results dictionary that is written to
``results.json`` (means, intervals and p-values are computed once, in
:func:`results_dict`, from the run object :class:`CompareRun`), so the report and the JSON
file cannot disagree.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
from typing import Any

import numpy as np

from costjax.cli import stats
from costjax.cli.scoring import DECODING_LABELS

CSV_COLUMNS = (
    "cost", "arm", "label", "decoding", "lr", "hp_name", "hp", "chosen", "val_cost",
    "test_cost_mean", "test_cost_std", "test_cost_ci95_low", "test_cost_ci95_high",
    "test_acc_mean", "test_savings_mean", "p_vs_ce_argmax", "prob_cheaper_vs_ce_argmax",
    "prob_equivalent_vs_ce_argmax", "prob_dearer_vs_ce_argmax", "p_vs_ce_bayes",
    "prob_cheaper_vs_ce_bayes", "prob_equivalent_vs_ce_bayes", "prob_dearer_vs_ce_bayes",
    "rope", "seconds", "diverged", "diverged_seeds", "diverged_grid_points",
)
# Validation cost still falling: the mean over the last FALL_WINDOW epochs is more than
# FALL_REL below the mean over the FALL_WINDOW epochs before them.
FALL_WINDOW = 5
FALL_REL = 0.02


def _f(x) -> float | None:
  """JSON-safe float (NaN and infinities become null)."""
  x = float(x)
  return x if math.isfinite(x) else None


def _fl(a) -> list:
  return [_f(v) for v in np.asarray(a, np.float64).ravel()]


def _confusion(pred: np.ndarray, y: np.ndarray, cost: np.ndarray) -> np.ndarray:
  """Cost-weighted confusion (total cost per true x predicted cell), summed over seeds.

  ``cost``: one ``(K, K)`` matrix, or per-row costs ``(S, n, K, K)`` of the test rows.
  """
  cost = np.asarray(cost, np.float64)
  k = cost.shape[-1]
  conf = np.zeros((k, k), np.float64)
  for s, (p_s, y_s) in enumerate(zip(pred, y, strict=True)):
    w = cost[y_s, p_s] if cost.ndim == 2 else cost[s, np.arange(len(y_s)), y_s, p_s]
    np.add.at(conf, (y_s, p_s), w)
  return conf


def verdict_curves(rows, arms, results, m: int, decoding: str) -> dict:
  """Per arm: (label with the chosen grid point, mean validation cost per epoch) for the
  decoding the verdict uses: argmax curves for argmax, else Bayes decisions on the
  uncalibrated probabilities (the curves are recorded during training, where a
  calibration per epoch would cost more than the epoch)."""
  bayes = decoding != "argmax"
  out = {}
  for a in arms:
    res = results[a.key]
    curve = res.val_cost_curve_bayes if bayes else res.val_cost_curve
    dec = decoding if bayes else "argmax"
    if curve is None:
      curve, dec = res.val_cost_curve, "argmax"
    r = next(r for r in rows if r.key == (a.key, dec))
    chosen = f"lr={r.lr:g}" + (f", {a.hp_name}={r.hp:g}" if a.hp_name else "")
    out[a.key] = (f"{a.label} ({chosen})", np.nanmean(curve[m, r.g], axis=0))
  return out


def lr_edge_warnings(rows: list[dict], lrs: list[float]) -> list[str]:
  """A warning for each end of the learning-rate grid that some recipe chose.

  ``rows``: dicts with ``label``, ``decoding_label`` and ``lr`` (one per recipe).
  """
  if len(set(lrs)) < 2:
    return []
  out = []
  for end, lr, way in (("largest", max(lrs), "upwards"), ("smallest", min(lrs), "downwards")):
    hit = [r for r in rows if r["lr"] == lr]
    if not hit:
      continue
    arms = list(dict.fromkeys(r["label"] for r in hit))
    out.append(
        f"{len(hit)} of {len(rows)} recipes chose the {end} learning rate of the grid "
        f"({lr:g}): {'; '.join(arms)}. Their best rate may lie beyond the grid; extend --lrs "
        f"{way}.")
  return out


def still_falling_warnings(curves: dict, decoding: str) -> list[str]:
  """A warning when some validation curve was still falling over the last epochs.

  ``curves``: label -> mean validation cost per epoch. Falling: the mean over the last
  ``FALL_WINDOW`` epochs is more than ``FALL_REL`` (relative) below the mean over the
  ``FALL_WINDOW`` epochs before them, and the last epochs reach a new low.
  """
  falling = []
  w = FALL_WINDOW
  n = 0
  for label, c in curves.items():
    c = np.asarray(c, np.float64)
    n = len(c)
    if n < 2 * w or not np.all(np.isfinite(c[-2 * w:])):
      continue
    before, last = c[-2 * w:-w].mean(), c[-w:].mean()
    # Lower on average AND still reaching new lows: noise around a plateau does neither.
    if before - last > FALL_REL * last and c[-w:].min() < c[:-w].min():
      falling.append(f"{label.split(' (')[0]} ({(before - last) / before:.0%})")
  if not falling:
    return []
  return [f"Validation cost (under {decoding}) was still falling over the last epochs for "
          f"{len(falling)} of {len(curves)} arms: {'; '.join(falling)} lower over epochs "
          f"{n - w + 1}-{n} than over epochs {n - 2 * w + 1}-{n - w}. They may not have "
          f"converged; train longer (--epochs)."]


@dataclasses.dataclass(frozen=True)
class CompareRun:
  """What one ``costjax compare`` run computed: the input of :func:`results_dict` and of
  :func:`costjax.cli.plots.write_all`."""

  args: argparse.Namespace  # the checked flags (compare.check_arguments adds seed_list, ...)
  ds: Any  # data.Dataset
  splits: Any  # data.Splits
  cost_names: list[str]
  costs: np.ndarray  # (M, K, K)
  arms: list  # training.Arm, in report order
  results: dict  # arm key -> training result
  scores: dict  # arm key -> scoring.score's arrays
  all_rows: list  # per cost matrix: stats.build_rows
  verdicts: list  # per cost matrix: stats.verdict
  total_seconds: float
  batch_size: int
  devices: str


def results_dict(run: CompareRun) -> dict:
  """The results dictionary (written to ``results.json``) of a compare run."""
  args, ds, splits, cost_names, costs = run.args, run.ds, run.splits, run.cost_names, run.costs
  arms, results, scores, all_rows, verdicts = (run.arms, run.results, run.scores, run.all_rows,
                                               run.verdicts)
  total_seconds, batch_size, devices = run.total_seconds, run.batch_size, run.devices
  hp_names = {a.key: a.hp_name for a in arms}
  per_row = getattr(splits, "c_test", None) is not None
  rows = []
  for m, cname in enumerate(cost_names):
    # Savings (Correa Bahnsen): 1 - cost / cost of the best constant prediction on the same
    # test rows (chosen on them), per re-split.
    best = stats.best_constant_costs(splits.y_test, splits.c_test if per_row else costs[m])
    for r in all_rows[m]:
      with np.errstate(divide="ignore", invalid="ignore"):
        sav = np.where(best > 0, 1.0 - np.asarray(r.test_cost, np.float64) / best, np.nan)
      lo, hi = r.ci
      hp_name = hp_names.get(r.arm)
      pa, pb = r.probs_vs_ce_argmax, r.probs_vs_ce_bayes
      rows.append({
          "cost": cname, "arm": r.arm, "label": r.label, "decoding": r.decoding,
          "decoding_label": DECODING_LABELS.get(r.decoding, "none"), "lr": _f(r.lr),
          "hp_name": hp_name, "hp": r.hp if hp_name else None, "chosen": r.chosen,
          "val_cost": _f(r.val_cost), "test_cost": _fl(r.test_cost),
          "test_cost_mean": _f(r.mean), "test_cost_std": _f(r.std),
          "test_cost_ci95": [_f(lo), _f(hi)], "test_acc": _fl(r.test_acc),
          "test_acc_mean": _f(r.acc), "temperature": _fl(r.temperature),
          "test_savings": _fl(sav), "test_savings_mean": _f(np.mean(sav)),
          "p_vs_ce_argmax": _f(r.p_vs_ce_argmax), "p_vs_ce_bayes": _f(r.p_vs_ce_bayes),
          "prob_cheaper_vs_ce_argmax": _f(pa[0]), "prob_equivalent_vs_ce_argmax": _f(pa[1]),
          "prob_dearer_vs_ce_argmax": _f(pa[2]), "prob_cheaper_vs_ce_bayes": _f(pb[0]),
          "prob_equivalent_vs_ce_bayes": _f(pb[1]), "prob_dearer_vs_ce_bayes": _f(pb[2]),
          "rope": _f(r.rope), "seconds": r.seconds,
          "diverged": bool(r.diverged_seeds or r.diverged_grid_points),
          "diverged_seeds": r.diverged_seeds, "diverged_grid_points": r.diverged_grid_points,
      })
  verdict_list = []
  n_tr, n_te = int(splits.y_train.shape[1]), int(splits.y_test.shape[1])
  for m, (cname, v) in enumerate(zip(cost_names, verdicts, strict=True)):
    ce_arg = next(r for r in all_rows[m] if r.key == ("ce", "argmax"))
    conf = {}
    for name, r in (("ce_argmax", ce_arg), ("recommended", v.recommended)):
      if r.arm == stats.CONSTANT:
        pred = np.broadcast_to(np.asarray(r.classes)[:, None], splits.y_test.shape)
      else:
        pred = scores[r.arm][f"test_pred_{r.decoding}"][m, r.g]
      conf[name] = _confusion(pred, splits.y_test,
                              splits.c_test if per_row else costs[m]).tolist()
    ce_b = next(r for r in all_rows[m] if r.key == ("ce", "bayes_t"))
    curves = verdict_curves(all_rows[m], arms, results, m, v.pick.decoding)
    warnings = lr_edge_warnings(
        [{"label": r.label, "decoding_label": DECODING_LABELS[r.decoding], "lr": r.lr}
         for r in all_rows[m] if r.arm != stats.CONSTANT], list(args.lr_list))
    warnings += still_falling_warnings({label: c for label, c in curves.values()},
                                       "argmax decoding" if v.pick.decoding == "argmax"
                                       else "Bayes decisions on uncalibrated probabilities")

    def who(r):
      return {"arm": r.arm, "decoding": r.decoding, "label": r.label,
              "val_cost": _f(r.val_cost), "test_cost_mean": _f(r.mean)}

    verdict_list.append({
        "cost": cname,
        "outcome": v.outcome,
        "pick": who(v.pick),
        "recommended": who(v.recommended),
        "adopted": v.adopted,
        "no_signal": v.no_signal,
        "rope": _f(v.rope),
        "rope_default": args.rope is None,
        "rope_fraction": stats.ROPE_FRACTION,
        "ce_bayes_val_cost": _f(ce_b.val_cost),
        "n_train": n_tr, "n_test": n_te, "num_resplits": v.num_resplits,
        "detectable_difference": _f(v.detectable),
        "detectable_difference_floor": _f(v.detectable_floor),
        "comparisons": [{"baseline_arm": c["baseline"].arm,
                         "baseline_decoding": c["baseline"].decoding,
                         "baseline_test_cost_mean": _f(c["baseline"].mean),
                         "challenger_arm": (stats.CONSTANT if v.no_signal else v.pick.arm),
                         "pick_test_cost_mean": _f(v.pick.mean), "raw_p": _f(c["raw_p"]),
                         "holm_p": _f(c["holm_p"]),
                         "prob_cheaper": _f(c["probs"][0]),
                         "prob_equivalent": _f(c["probs"][1]),
                         "prob_dearer": _f(c["probs"][2]),
                         "beaten": c["beaten"], "equivalent": c["equivalent"]}
                        for c in v.comparisons],
        "signal_comparisons": [{"arm": c["candidate"].arm,
                                "decoding": c["candidate"].decoding,
                                "test_cost_mean": _f(c["candidate"].mean),
                                "raw_p": _f(c["raw_p"]), "holm_p": _f(c["holm_p"]),
                                "prob_cheaper": _f(c["probs"][0]),
                                "prob_equivalent": _f(c["probs"][1]),
                                "prob_dearer": _f(c["probs"][2]), "cheaper": c["cheaper"]}
                               for c in v.signal_comparisons],
        "alpha": stats.ALPHA,
        "prob": stats.PROB,
        "sentence": v.sentence,
        "remarks": list(v.remarks),
        "warnings": warnings,
        "cost_weighted_confusion": conf,
    })
  arm_info = []
  for a in arms:
    res = results[a.key]
    arm_info.append({"arm": a.key, "label": a.label, "loss": a.loss, "hp_name": a.hp_name,
                     "grid": [list(g) for g in res.grid], "seconds": res.seconds,
                     "val_cost_curve_mean": {}, "val_cost_curve_bayes_mean": {},
                     "diverged_models": int(np.sum(~scores[a.key]["finite"]))})
  for info in arm_info:
    res = results[info["arm"]]
    for m, cname in enumerate(cost_names):
      r = next(r for r in all_rows[m] if r.key == (info["arm"], "argmax"))
      info["val_cost_curve_mean"][cname] = _fl(np.nanmean(res.val_cost_curve[m, r.g], axis=0))
      if res.val_cost_curve_bayes is not None:
        rb = next(r for r in all_rows[m] if r.key == (info["arm"], "bayes_t"))
        info["val_cost_curve_bayes_mean"][cname] = _fl(
            np.nanmean(res.val_cost_curve_bayes[m, rb.g], axis=0))
  return {
      "data": ds.name, "num_examples": int(len(ds.y)), "num_classes": int(ds.num_classes),
      "class_names": list(ds.class_names), "notes": list(getattr(splits, "notes", ()) or ()),
      "dropped_rows": int(getattr(ds, "dropped_rows", 0)),
      "split": {"train": int(splits.x_train.shape[1]), "val": int(splits.x_val.shape[1]),
                "test": int(splits.x_test.shape[1])},
      "costs": list(cost_names), "cost_matrices": [c.tolist() for c in costs],
      "per_row_costs": per_row_info(args, per_row),
      "seeds": list(args.seed_list), "epochs": args.epochs, "lrs": list(args.lr_list),
      "batch_size": batch_size, "model": args.model, "hidden": args.hidden,
      "weight_decay": args.weight_decay, "devices": devices,
      "total_seconds": total_seconds, "decodings": dict(DECODING_LABELS),
      "features": [str(f) for f in getattr(ds, "feature_names", ())],
      "arms": arm_info, "rows": rows, "verdict": verdict_list[0], "verdicts": verdict_list,
  }


def per_row_info(args, per_row: bool) -> dict | None:
  """How each row's costs were read (None: one matrix for every row)."""
  if not per_row:
    return None
  template = getattr(args, "cost_columns", None)
  if template is not None:
    return {"cost_columns": template, "cost_scale": None,
            "text": f"each row's own costs from the columns `{template}`"}
  scale = getattr(args, "cost_scale", None)
  return {"cost_columns": None, "cost_scale": scale,
          "text": f"the matrix `{args.cost}` times each row's `{scale}`"}


def write_all(out: str, summary: dict) -> None:
  with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=1, allow_nan=False)
  with open(os.path.join(out, "results.csv"), "w", encoding="utf-8", newline="") as f:
    w = csv.writer(f)
    w.writerow(CSV_COLUMNS)
    for r in summary["rows"]:
      flat = dict(r, test_cost_ci95_low=r["test_cost_ci95"][0],
                  test_cost_ci95_high=r["test_cost_ci95"][1])
      w.writerow(["" if flat[c] is None else flat[c] for c in CSV_COLUMNS])


# --------------------------------------------------------------------------- #
# Markdown.
# --------------------------------------------------------------------------- #


def fmt(x, digits=4) -> str:
  return "n/a" if x is None else f"{x:.{digits}f}"


def fmt_chosen(r: dict, n_lrs: int) -> str:
  if r["arm"] == stats.CONSTANT:
    return r["chosen"] or "-"
  parts = [f"lr={r['lr']:g}"] if n_lrs > 1 else []
  if r["hp_name"]:
    parts.append(f"{r['hp_name']}={r['hp']:g}")
  return ", ".join(parts) if parts else "-"


def fmt_test(r: dict, which: str) -> str:
  """``p; P(cheaper) / P(equivalent) / P(dearer)`` against one cross-entropy baseline."""
  p = r[f"p_vs_ce_{which}"]
  probs = [r[f"prob_{k}_vs_ce_{which}"] for k in ("cheaper", "equivalent", "dearer")]
  if p is None and all(q is None for q in probs):
    return "n/a"
  return f"{stats.fmt_p(p)}; " + " / ".join(fmt(q, 2) for q in probs)


def matrix_md(mat, names, fmt_cell="{:.1f}") -> str:
  mat = np.asarray(mat)
  head = "| true \\ pred | " + " | ".join(names) + " |"
  sep = "|---" * (len(names) + 1) + "|"
  body = [f"| **{names[i]}** | " + " | ".join(fmt_cell.format(v) for v in mat[i]) + " |"
          for i in range(len(names))]
  return "\n".join([head, sep, *body])


def table_md(rows: list[dict], n_lrs: int) -> str:
  lines = [
      "| arm | decoding | chosen | val cost | test cost (mean ± std) | 95% CI | test accuracy "
      "| savings | vs CE argmax: p; P(cheaper / within ROPE / dearer) | vs CE Bayes (T): p; "
      "P(cheaper / within ROPE / dearer) | time (s) |",
      "|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    ce = r["arm"] == "ce"
    div = ""
    if r["diverged"]:
      div = (f" **(diverged: {r['diverged_seeds']} seed(s) at the chosen point, "
             f"{r['diverged_grid_points']} grid point(s) skipped)**")
    lo, hi = r["test_cost_ci95"]
    lines.append(
        f"| {r['label']} | {r['decoding_label']} | {fmt_chosen(r, n_lrs)} "
        f"| {fmt(r['val_cost'])} | {fmt(r['test_cost_mean'])} ± {fmt(r['test_cost_std'])}{div} "
        f"| [{fmt(lo)}, {fmt(hi)}] | {fmt(r['test_acc_mean'], 3)} "
        f"| {fmt(r.get('test_savings_mean'), 3)} "
        f"| {'—' if ce and r['decoding'] == 'argmax' else fmt_test(r, 'argmax')} "
        f"| {'—' if ce and r['decoding'] == 'bayes_t' else fmt_test(r, 'bayes')} "
        f"| {r['seconds']:.1f} |")
  return "\n".join(lines)


def outcome_line(v: dict, many: bool) -> str:
  """The first line under ``## Verdict``: the outcome and its sentence."""
  where = f" (cost `{v['cost']}`)" if many else ""
  return f"**Outcome{where}: {v['outcome']}.** {v['sentence']}"


def verdict_md(v: dict, decodings: dict) -> list[str]:
  pick, rec = v["pick"], v["recommended"]
  lines = []
  rope_how = (f"{v['rope_fraction']:.0%} of cross-entropy + Bayes (temperature)'s mean "
              f"validation cost {fmt(v['ce_bayes_val_cost'])}; set it with --rope"
              if v["rope_default"] else "set with --rope")
  lines.append(f"- Cost `{v['cost']}`. ROPE (region of practical equivalence): "
               f"±{v['rope']:.3g} cost units ({rope_how}).")
  lines.append(f"- Validation pick (lowest mean validation cost of all recipes): "
               f"{pick['label']} + {decodings[pick['decoding']]}, validation cost "
               f"{fmt(pick['val_cost'])}, test cost {fmt(pick['test_cost_mean'])}.")
  who = "the best constant prediction" if v["no_signal"] else "the pick"
  for c in v["comparisons"]:
    lines.append(
        f"- {who[0].upper()}{who[1:]} against cross-entropy + "
        f"{decodings[c['baseline_decoding']]} (test cost {fmt(c['baseline_test_cost_mean'])}): "
        f"corrected t-test p = {stats.fmt_p(c['raw_p'])}, Holm-adjusted over "
        f"{len(v['comparisons'])} comparison(s) p = {stats.fmt_p(c['holm_p'])}; P(cheaper by more "
        f"than the ROPE) = {fmt(c['prob_cheaper'], 3)}, P(within it) = "
        f"{fmt(c['prob_equivalent'], 3)}, P(dearer by more) = {fmt(c['prob_dearer'], 3)}.")
  for c in v["signal_comparisons"]:
    label = decodings.get(c["decoding"], c["decoding"])
    name = next((r for r in [pick, rec] if (r["arm"], r["decoding"]) ==
                 (c["arm"], c["decoding"])), None)
    arm_label = name["label"] if name else ("cross-entropy" if c["arm"] == "ce" else c["arm"])
    lines.append(
        f"- {arm_label} + {label} against the best constant prediction: test cost "
        f"{fmt(c['test_cost_mean'])}, Holm-adjusted p = {stats.fmt_p(c['holm_p'])}, P(cheaper by "
        f"more than the ROPE) = {fmt(c['prob_cheaper'], 3)}"
        f"{'' if c['cheaper'] else ' (not reliably cheaper)'}.")
  if v["outcome"] == "undecided" and v["detectable_difference"] is not None:
    lines.append(
        f"- Power: with {v['num_resplits']} re-splits of {v['n_train']} training and "
        f"{v['n_test']} test rows, the smallest difference detectable at 80% power (two-sided "
        f"5%) is {v['detectable_difference']:.3g}; with unlimited re-splits it is still "
        f"{fmt(v['detectable_difference_floor'], 4)}, because the re-splits share their "
        f"rows. More rows, not more seeds, shrink it.")
  lines.append(f"- Recommended: **{rec['label']}"
               + (f" + {decodings[rec['decoding']]}" if rec["arm"] != stats.CONSTANT else "")
               + f"** (test cost {fmt(rec['test_cost_mean'])}).")
  for remark in v["remarks"]:
    lines.append(f"- {remark}")
  for w in v["warnings"]:
    lines.append(f"- **Warning:** {w}")
  lines.append("")
  return lines


def features_md(names: list[str], limit: int = 40) -> str:
  if not names:
    return "- features: (not recorded)"
  shown = ", ".join(f"`{n}`" for n in names[:limit])
  more = f", … ({len(names) - limit} more)" if len(names) > limit else ""
  return f"- features used ({len(names)}, after one-hot encoding): {shown}{more}"


def write_markdown(path: str, summary: dict, *, figures: dict, class_names) -> None:
  s = summary
  n_seeds = len(s["seeds"])
  n_lrs = len(s["lrs"])
  dec = s["decodings"]
  lines = [
      f"# Loss comparison: {s['data']}",
      "",
      f"- data: `{s['data']}`, K = {s['num_classes']} classes, {s['num_examples']} examples"
      + (f" ({s['dropped_rows']} rows with missing values dropped)" if s["dropped_rows"] else "")
      + f"; per seed a stratified split {s['split']['train']} train / {s['split']['val']} "
      f"validation / {s['split']['test']} test, standardized on train",
      f"- model: {s['model']}" + (f" (hidden {s['hidden']})" if s["model"] == "mlp" else "")
      + f"; AdamW (weight decay {s['weight_decay']:g}), batch {s['batch_size']}, "
      f"{s['epochs']} epochs",
      f"- seeds: {n_seeds}; initialization and shuffling shared by every arm",
      f"- learning-rate grid (every arm): {', '.join(f'{v:g}' for v in s['lrs'])}; each arm's "
      "grid point is chosen per decoding by mean validation cost",
      "- decodings: argmax; `costjax.bayes_decision` after temperature scaling "
      "(`costjax.fit_temperature`) or vector scaling (`costjax.fit_vector_scaling`), both "
      "fitted on validation NLL",
      "- statistics: each seed is a random re-split of the same rows, so seeds are "
      "correlated. Table p-values: Nadeau & Bengio's corrected resampled t-test (two-sided, "
      "`costjax.cli.stats.corrected_resampled_ttest`), uncorrected for multiplicity; the "
      "probabilities: the Bayesian correlated t-test "
      "(`costjax.cli.stats.bayesian_correlated_ttest`) with the ROPE below; the verdict's "
      "p-values are Holm-adjusted; 95% CI: Student t over seeds (ignores the correlation, "
      "so it is too narrow; use it to read spread, not to compare)",
      f"- devices: {s['devices']}; total wall time {s['total_seconds']:.0f} s; time column: "
      "compile and train the arm's whole grid × seeds × cost matrices (arms that share a "
      "loss, the soft-label temperatures, train in one program and show its time)",
  ]
  lines.append(features_md(s.get("features", [])))
  for note in s["notes"]:
    lines.append(f"- note: {note}")
  many = len(s["verdicts"]) > 1
  lines += ["", "## Verdict", ""]
  lines += [outcome_line(v, many) for v in s["verdicts"]]
  lines += ["",
            "The candidate is chosen on validation only (lowest mean validation cost over every "
            "arm × decoding) and tested on test against both cross-entropy baselines (argmax, "
            "Bayes with temperature scaling). **adopt**: cheaper than both, with Holm-adjusted "
            f"corrected p < {stats.ALPHA:g} and P(cheaper by more than the ROPE) >= "
            f"{stats.PROB:g} against each. **equivalent**: P(within the ROPE) >= "
            f"{stats.PROB:g} against a baseline; the simpler recipe is recommended. "
            "**undecided**: neither; the cross-entropy baseline with the lower validation "
            "cost is recommended. When neither the candidate nor a cross-entropy baseline is "
            "reliably cheaper (the adopt rule) than the best constant prediction (the class "
            "with the lowest mean training cost, one per re-split), the features carry no "
            "usable signal for this cost and the constant is recommended.", ""]
  for v in s["verdicts"]:
    lines += verdict_md(v, dec)
  for m, cname in enumerate(s["costs"]):
    rows = [r for r in s["rows"] if r["cost"] == cname]
    v = s["verdicts"][m]
    pr = s.get("per_row_costs")
    if pr:
      lines += [f"## Cost: {cname}", "",
                f"Per-row costs: {pr['text']}; every recipe trains (the cost-aware losses), "
                "decides (Bayes) and is scored with each row's own matrix. Their mean over the "
                "rows, for orientation:", "",
                matrix_md(s["cost_matrices"][m], class_names, "{:.4g}"), ""]
    else:
      lines += [f"## Cost: {cname}", "", matrix_md(s["cost_matrices"][m], class_names, "{:g}"),
                ""]
    lines += ["Test cost is the mean cost per example; savings is 1 - test cost / the cost of "
              "the best constant prediction on the same test rows (Correa Bahnsen's savings, "
              "`costjax.savings_score`; 1 is perfect, 0 no better than one class for every "
              "row), averaged over re-splits.", "", table_md(rows, n_lrs), ""]
    rec = v["recommended"]
    lines += ["Cost-weighted test confusion matrices (counts × C, summed over seeds; rows true, "
              "columns predicted). Cross-entropy + argmax:", "",
              matrix_md(v["cost_weighted_confusion"]["ce_argmax"], class_names), "",
              f"Recommended ({rec['label']}"
              + (f" + {dec[rec['decoding']]}" if rec["decoding"] in dec else "") + "):", "",
              matrix_md(v["cost_weighted_confusion"]["recommended"], class_names), ""]
    for title, name in figures.get(cname, {}).items():
      lines += [f"![{title}]({name})", ""]
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines))
