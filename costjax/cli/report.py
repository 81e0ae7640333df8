"""Outputs of ``costjax compare``: ``results.json``, ``results.csv`` and ``report.md``.

Everything the report prints is read from the results dictionary that is written to
``results.json`` (means, intervals and p-values are computed once, in
:func:`results_dict`), so the report and the JSON file cannot disagree.
"""

from __future__ import annotations

import csv
import json
import math
import os

import numpy as np

from costjax.cli import stats
from costjax.cli.scoring import DECODING_LABELS

CSV_COLUMNS = (
    "cost", "arm", "label", "decoding", "lr", "hp_name", "hp", "val_cost", "test_cost_mean",
    "test_cost_std", "test_cost_ci95_low", "test_cost_ci95_high", "test_acc_mean",
    "p_vs_ce_argmax", "p_vs_ce_bayes", "seconds", "diverged", "diverged_seeds",
    "diverged_grid_points",
)


def _f(x) -> float | None:
  """JSON-safe float (NaN and infinities become null)."""
  x = float(x)
  return x if math.isfinite(x) else None


def _fl(a) -> list:
  return [_f(v) for v in np.asarray(a, np.float64).ravel()]


def _confusion(pred: np.ndarray, y: np.ndarray, cost: np.ndarray) -> np.ndarray:
  """Cost-weighted confusion (total cost per true x predicted cell), summed over seeds."""
  k = cost.shape[0]
  conf = np.zeros((k, k), np.float64)
  for p_s, y_s in zip(pred, y, strict=True):
    np.add.at(conf, (y_s, p_s), 1.0)
  return conf * cost


def results_dict(*, args, ds, splits, cost_names, costs, arms, results, scores, all_rows,
                 verdicts,
                 total_seconds, batch_size, devices) -> dict:
  hp_names = {a.key: a.hp_name for a in arms}
  rows = []
  for m, cname in enumerate(cost_names):
    for r in all_rows[m]:
      lo, hi = r.ci
      rows.append({
          "cost": cname, "arm": r.arm, "label": r.label, "decoding": r.decoding,
          "decoding_label": DECODING_LABELS[r.decoding], "lr": r.lr,
          "hp_name": hp_names[r.arm], "hp": r.hp if hp_names[r.arm] else None,
          "val_cost": _f(r.val_cost), "test_cost": _fl(r.test_cost),
          "test_cost_mean": _f(r.mean), "test_cost_std": _f(r.std),
          "test_cost_ci95": [_f(lo), _f(hi)], "test_acc": _fl(r.test_acc),
          "test_acc_mean": _f(r.acc), "temperature": _fl(r.temperature),
          "p_vs_ce_argmax": _f(r.p_vs_ce_argmax), "p_vs_ce_bayes": _f(r.p_vs_ce_bayes),
          "seconds": r.seconds,
          "diverged": bool(r.diverged_seeds or r.diverged_grid_points),
          "diverged_seeds": r.diverged_seeds, "diverged_grid_points": r.diverged_grid_points,
      })
  verdict_list = []
  for m, (cname, v) in enumerate(zip(cost_names, verdicts, strict=True)):
    ce_arg = next(r for r in all_rows[m] if r.key == ("ce", "argmax"))
    conf = {}
    for name, r in (("ce_argmax", ce_arg), ("recommended", v.recommended)):
      pred = scores[r.arm][f"test_pred_{r.decoding}"][m, r.g]
      conf[name] = _confusion(pred, splits.y_test, costs[m]).tolist()
    verdict_list.append({
        "cost": cname,
        "pick": {"arm": v.pick.arm, "decoding": v.pick.decoding, "label": v.pick.label,
                 "val_cost": _f(v.pick.val_cost), "test_cost_mean": _f(v.pick.mean)},
        "recommended": {"arm": v.recommended.arm, "decoding": v.recommended.decoding,
                        "label": v.recommended.label, "val_cost": _f(v.recommended.val_cost),
                        "test_cost_mean": _f(v.recommended.mean)},
        "adopted": v.adopted,
        "comparisons": [{"baseline_arm": c["baseline"].arm,
                         "baseline_decoding": c["baseline"].decoding,
                         "baseline_test_cost_mean": _f(c["baseline"].mean),
                         "pick_test_cost_mean": _f(v.pick.mean), "raw_p": _f(c["raw_p"]),
                         "holm_p": _f(c["holm_p"]), "beaten": c["beaten"]}
                        for c in v.comparisons],
        "alpha": stats.ALPHA,
        "sentence": v.sentence,
        "cost_weighted_confusion": conf,
    })
  arm_info = []
  for a in arms:
    res = results[a.key]
    arm_info.append({"arm": a.key, "label": a.label, "loss": a.loss, "hp_name": a.hp_name,
                     "grid": [list(g) for g in res.grid], "seconds": res.seconds,
                     "val_cost_curve_mean": {},  # filled below
                     "diverged_models": int(np.sum(~scores[a.key]["finite"]))})
  for info in arm_info:
    res = results[info["arm"]]
    curves = {}
    for m, cname in enumerate(cost_names):
      r = next(r for r in all_rows[m] if r.key == (info["arm"], "argmax"))
      curves[cname] = _fl(np.nanmean(res.val_cost_curve[m, r.g], axis=0))
    info["val_cost_curve_mean"] = curves
  return {
      "data": ds.name, "num_examples": int(len(ds.y)), "num_classes": int(ds.num_classes),
      "class_names": list(ds.class_names), "notes": list(getattr(splits, "notes", ()) or ()),
      "dropped_rows": int(getattr(ds, "dropped_rows", 0)),
      "split": {"train": int(splits.x_train.shape[1]), "val": int(splits.x_val.shape[1]),
                "test": int(splits.x_test.shape[1])},
      "costs": list(cost_names), "cost_matrices": [c.tolist() for c in costs],
      "seeds": list(args.seed_list), "epochs": args.epochs, "lrs": list(args.lr_list),
      "batch_size": batch_size, "model": args.model, "hidden": args.hidden,
      "weight_decay": args.weight_decay, "devices": devices,
      "total_seconds": total_seconds, "decodings": dict(DECODING_LABELS),
      "arms": arm_info, "rows": rows, "verdicts": verdict_list,
  }


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


def fmt_p(p) -> str:
  return "n/a" if p is None else f"{p:.3g}"


def fmt_chosen(r: dict, n_lrs: int) -> str:
  parts = [f"lr={r['lr']:g}"] if n_lrs > 1 else []
  if r["hp_name"]:
    parts.append(f"{r['hp_name']}={r['hp']:g}")
  return ", ".join(parts) if parts else "-"


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
      "| p vs CE argmax | p vs CE Bayes (T) | time (s) |",
      "|---|---|---|---|---|---|---|---|---|---|",
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
        f"| {'—' if ce and r['decoding'] == 'argmax' else fmt_p(r['p_vs_ce_argmax'])} "
        f"| {'—' if ce and r['decoding'] == 'bayes_t' else fmt_p(r['p_vs_ce_bayes'])} "
        f"| {r['seconds']:.1f} |")
  return "\n".join(lines)


def verdict_md(v: dict, decodings: dict) -> list[str]:
  pick, rec = v["pick"], v["recommended"]
  lines = [f"**Cost `{v['cost']}`.** {v['sentence']}", ""]
  lines.append(f"- Validation pick (lowest mean validation cost of all recipes): "
               f"{pick['label']} + {decodings[pick['decoding']]}, validation cost "
               f"{fmt(pick['val_cost'])}, test cost {fmt(pick['test_cost_mean'])}.")
  for c in v["comparisons"]:
    lines.append(
        f"- Against cross-entropy + {decodings[c['baseline_decoding']]} (test cost "
        f"{fmt(c['baseline_test_cost_mean'])}): paired Wilcoxon p = {fmt_p(c['raw_p'])}, "
        f"Holm-adjusted over the {len(v['comparisons'])} comparison(s) p = "
        f"{fmt_p(c['holm_p'])}.")
  lines.append(f"- Recommended: **{rec['label']} + {decodings[rec['decoding']]}** (test cost "
               f"{fmt(rec['test_cost_mean'])}).")
  lines.append("")
  return lines


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
      "- table p-values: two-sided paired Wilcoxon over seeds on test cost, uncorrected "
      f"(smallest possible with {n_seeds} seeds: {fmt_p(_f(stats.smallest_p(n_seeds)))}); "
      "the verdict's p-values are Holm-corrected; 95% CI: Student t over seeds",
      f"- devices: {s['devices']}; total wall time {s['total_seconds']:.0f} s; time column: "
      "compile and train the arm's whole grid × seeds × cost matrices (arms that share a "
      "loss, the soft-label temperatures, train in one program and show its time)",
  ]
  for note in s["notes"]:
    lines.append(f"- note: {note}")
  lines += ["", "## Verdict", "",
            "The recommended recipe is chosen on validation only (lowest mean validation cost "
            "over every arm × decoding); it replaces cross-entropy only if its test cost is "
            "lower than both cross-entropy baselines' (argmax, Bayes with temperature scaling) "
            f"with Holm-adjusted p < {stats.ALPHA:g}.", ""]
  for v in s["verdicts"]:
    lines += verdict_md(v, dec)
  for m, cname in enumerate(s["costs"]):
    rows = [r for r in s["rows"] if r["cost"] == cname]
    v = s["verdicts"][m]
    lines += [f"## Cost: {cname}", "", matrix_md(s["cost_matrices"][m], class_names, "{:g}"), "",
              table_md(rows, n_lrs), ""]
    rec = v["recommended"]
    lines += ["Cost-weighted test confusion matrices (counts × C, summed over seeds; rows true, "
              "columns predicted). Cross-entropy + argmax:", "",
              matrix_md(v["cost_weighted_confusion"]["ce_argmax"], class_names), "",
              f"Recommended ({rec['label']} + {dec[rec['decoding']]}):", "",
              matrix_md(v["cost_weighted_confusion"]["recommended"], class_names), ""]
    for title, name in figures.get(cname, {}).items():
      lines += [f"![{title}]({name})", ""]
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines))
