"""PNG figures of ``costjax compare`` (matplotlib, Agg backend).

Per cost matrix:

* ``val_curves`` — validation cost per epoch for each arm at its chosen grid point, mean
  over seeds, under the decoding of the verdict's pick (argmax, or Bayes decisions on the
  uncalibrated probabilities for a Bayes pick: a calibration per epoch is not recorded);
* ``test_cost`` — mean test cost per arm and decoding with 95% confidence intervals,
  arms sorted by their best decoding, and the best constant prediction as a line; a
  recipe far above cross-entropy is drawn at the edge with its value written beside it,
  and an interval cut off at the edge ends in an arrow, so the axis stays readable;
* ``confusion`` — cost-weighted test confusion matrices (counts × C, summed over seeds)
  of cross-entropy + argmax and of the recommended recipe, on one color scale.

Files are ``NAME.png`` for a single cost matrix and ``NAME_<cost>.png`` for several.
"""

from __future__ import annotations

import os
import re

import numpy as np

from costjax.cli import report
from costjax.cli.scoring import DECODING_LABELS, DECODINGS

MARKERS = {"argmax": "o", "bayes_t": "s", "bayes_vs": "D"}
COLORS = {"argmax": "#1f77b4", "bayes_t": "#d62728", "bayes_vs": "#2ca02c"}


def _plt():
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def _file(kind: str, cost: str, many: bool) -> str:
  if not many:
    return f"{kind}.png"
  return f"{kind}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', os.path.splitext(cost)[0])}.png"


def _cap(values, ref: float) -> float:
  """An axis limit that keeps recipes near the reference readable."""
  values = np.asarray([v for v in values if v is not None and np.isfinite(v)])
  top = float(values.max()) if values.size else 1.0
  cap = max(3.0 * ref, 1e-6) if ref > 0 else top
  return min(top * 1.05, cap)


def plot_test_cost(path: str, rows: list[dict], title: str) -> None:
  plt = _plt()
  arms: dict = {}
  const = next((r for r in rows if r["arm"] == "constant"), None)
  rows = [r for r in rows if r["decoding"] in DECODINGS]
  for r in rows:
    arms.setdefault(r["arm"], {})[r["decoding"]] = r
  def best(a):
    vals = [r["test_cost_mean"] for r in arms[a].values() if r["test_cost_mean"] is not None]
    return min(vals) if vals else np.inf
  order = sorted(arms, key=best)  # best first, drawn at the top
  ce_arg = arms["ce"]["argmax"]["test_cost_mean"] or 0.0
  ce_bayes = arms["ce"]["bayes_t"]["test_cost_mean"] or 0.0
  highs = [r["test_cost_ci95"][1] if r["test_cost_ci95"][1] is not None else r["test_cost_mean"]
           for r in rows]
  xmax = _cap(highs, max(ce_arg, ce_bayes))
  n = len(order)
  fig, ax = plt.subplots(figsize=(8.5, 0.5 * n * len(DECODINGS) / 2 + 1.8))
  offsets = {d: (i - (len(DECODINGS) - 1) / 2) * 0.22 for i, d in enumerate(DECODINGS)}
  cut = False
  for i, a in enumerate(order):
    y0 = n - 1 - i
    for d in DECODINGS:
      r = arms[a].get(d)
      if r is None or r["test_cost_mean"] is None:
        continue
      y = y0 + offsets[d]
      mean = r["test_cost_mean"]
      lo, hi = r["test_cost_ci95"]
      if mean > xmax:
        ax.plot([xmax * 0.985], [y], marker=">", color=COLORS[d], ms=7)
        ax.annotate(f"{mean:.3g}", (xmax * 0.97, y), ha="right", va="center", fontsize=7,
                    color=COLORS[d])
        continue
      if lo is not None:
        ax.plot([lo, min(hi, xmax)], [y, y], color=COLORS[d], lw=1.5, alpha=0.8)
        if hi > xmax:  # the interval goes on beyond the axis: an arrow marks the cut
          ax.plot([xmax], [y], marker=">", color=COLORS[d], ms=5, ls="none", clip_on=False)
          cut = True
      ax.plot([mean], [y], marker=MARKERS[d], color=COLORS[d], ms=6, ls="none")
  for d in DECODINGS:  # legend entries
    ax.plot([], [], marker=MARKERS[d], color=COLORS[d], ls="-", label=DECODING_LABELS[d])
  ax.axvline(ce_bayes, color="#d62728", ls="--", lw=0.8, label="cross-entropy + Bayes (T)")
  ax.axvline(ce_arg, color="#1f77b4", ls=":", lw=0.8, label="cross-entropy + argmax")
  if const is not None and const["test_cost_mean"] is not None:
    c = const["test_cost_mean"]
    if c <= xmax:
      ax.axvline(c, color="#555555", ls="-.", lw=1.0,
                 label=f"best constant prediction ({c:.3g})")
    else:
      ax.plot([], [], color="#555555", ls="-.",
              label=f"best constant prediction: {c:.3g} (off the axis)")
  if cut:
    ax.plot([], [], marker=">", color="#555555", ls="none", ms=5,
            label="interval cut off at the axis edge")
  ax.set_yticks(range(n))
  ax.set_yticklabels([arms[a]["argmax"]["label"] if "argmax" in arms[a] else a
                      for a in reversed(order)], fontsize=8)
  ax.set_xlim(0, xmax)
  ax.set_ylim(-0.6, n - 0.4)
  ax.set_xlabel("mean test cost (95% CI over seeds); lower is better")
  ax.set_title(title, fontsize=10)
  ax.grid(axis="x", alpha=0.3)
  ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3,
            frameon=False)
  fig.savefig(path, dpi=120, bbox_inches="tight")
  plt.close(fig)


def plot_val_curves(path: str, curves: dict[str, tuple[str, np.ndarray]], title: str,
                    ref: float, decoding: str = "argmax") -> None:
  """``curves``: arm -> (label with chosen lr, mean validation cost per epoch)."""
  plt = _plt()
  fig, ax = plt.subplots(figsize=(8.5, 4.8))
  cmap = plt.get_cmap("tab20")
  tops = []
  for i, (arm, (label, c)) in enumerate(curves.items()):
    c = np.asarray(c, np.float64)
    ax.plot(np.arange(1, len(c) + 1), c, label=label, color=cmap(i % 20),
            lw=2.2 if arm == "ce" else 1.2)
    if np.isfinite(c).any():
      tops.append(float(np.nanmin(c)))
  final = curves["ce"][1] if "ce" in curves else None
  ref = float(np.nanmin(final)) if final is not None and np.isfinite(final).any() else ref
  ymax = max(4.0 * ref, 1.2 * max(tops) if tops else 1.0) if ref > 0 else None
  if ymax:
    ax.set_ylim(0, ymax)
  from matplotlib.ticker import MaxNLocator

  ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  ax.set_xlabel("epoch")
  ax.set_ylabel(f"validation cost ({decoding}), mean over seeds")
  ax.set_title(title, fontsize=10)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.13),
            frameon=False)
  fig.savefig(path, dpi=120, bbox_inches="tight")
  plt.close(fig)


def plot_confusions(path: str, mats: list[tuple[str, np.ndarray]], names, title: str) -> None:
  plt = _plt()
  k = len(names)
  vmax = max(float(np.max(m)) for _, m in mats) or 1.0
  size = max(4.0, 0.45 * k + 1.5)
  fig, axes = plt.subplots(1, len(mats), figsize=(size * len(mats) + 1.2, size + 0.4),
                           squeeze=False, layout="constrained")
  im = None
  for ax, (sub, m) in zip(axes[0], mats, strict=True):
    m = np.asarray(m, np.float64)
    im = ax.imshow(m, cmap="Reds", vmin=0, vmax=vmax)
    ax.set_title(f"{sub}\ntotal cost {m.sum():.0f}", fontsize=9)
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xticklabels(names, fontsize=7, rotation=90 if max(map(len, names)) > 3 else 0)
    ax.set_yticklabels(names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 15:
      for i in range(k):
        for j in range(k):
          if m[i, j] > 0:
            ax.text(j, i, f"{m[i, j]:.0f}", ha="center", va="center", fontsize=6,
                    color="white" if m[i, j] > 0.6 * vmax else "black")
  fig.colorbar(im, ax=axes[0].tolist(), shrink=0.85, label="cost (summed over seeds)")
  # Above the figure (bbox_inches="tight" keeps it): inside it, constrained layout lets the
  # title touch the panel titles when the panels are small (K = 3).
  fig.suptitle(title, fontsize=10, y=1.0, va="bottom")
  fig.savefig(path, dpi=120, bbox_inches="tight", pad_inches=0.15)
  plt.close(fig)


def write_all(out: str, summary: dict, run: report.CompareRun) -> dict[str, dict[str, str]]:
  """Writes every figure; returns ``{cost: {title: file name}}`` for the report."""
  ds, arms, results, all_rows = run.ds, run.arms, run.results, run.all_rows
  many = len(summary["costs"]) > 1
  dec = summary["decodings"]
  figures = {}
  for m, cname in enumerate(summary["costs"]):
    rows = [r for r in summary["rows"] if r["cost"] == cname]
    v = summary["verdicts"][m]
    files = {}
    name = _file("val_curves", cname, many)
    pick_dec = v["pick"]["decoding"]
    curves = report.verdict_curves(all_rows[m], arms, results, m, pick_dec)
    dec_name = "argmax" if pick_dec == "argmax" else "Bayes, T = 1"
    how = ("argmax decoding" if pick_dec == "argmax" else
           "Bayes decisions on uncalibrated probabilities")
    ce_bayes = next(r for r in rows if r["arm"] == "ce" and r["decoding"] == "bayes_t")
    plot_val_curves(os.path.join(out, name), curves,
                    f"{ds.name}, cost {cname}: validation cost per epoch at the chosen grid "
                    f"point\n{how} (the verdict's pick is {dec[pick_dec]})",
                    ce_bayes["test_cost_mean"] or 0.0, dec_name)
    files["validation cost per epoch"] = name
    name = _file("test_cost", cname, many)
    plot_test_cost(os.path.join(out, name), rows,
                   f"{ds.name}, cost {cname}: test cost per arm ({len(summary['seeds'])} seeds)")
    files["test cost per arm"] = name
    name = _file("confusion", cname, many)
    rec = v["recommended"]
    plot_confusions(
        os.path.join(out, name),
        [("cross-entropy + argmax", v["cost_weighted_confusion"]["ce_argmax"]),
         (f"recommended: {rec['label']}"
         + (f" + {dec[rec['decoding']]}" if rec["decoding"] in dec else ""),
         v["cost_weighted_confusion"]["recommended"])],
        list(ds.class_names),
        f"{ds.name}, cost {cname}: cost-weighted test confusion (rows true)")
    files["cost-weighted confusion matrices"] = name
    figures[cname] = files
  return figures
