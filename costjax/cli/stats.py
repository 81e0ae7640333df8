"""Selection, statistics and the verdict of ``costjax compare``.

* Selection: for each arm and decoding, the grid point (learning rate x the arm's own
  hyperparameter) with the lowest mean validation cost over seeds; grid points where
  some seed diverged are skipped.
* Tests: two-sided paired Wilcoxon signed-rank tests over seeds on test cost; Holm's
  step-down correction where a family of tests decides something.
* Confidence intervals: Student t intervals (95%) of the mean test cost over seeds.
* Verdict: the recommended recipe is chosen on VALIDATION only (the row with the lowest
  mean validation cost); it is adopted over cross-entropy only if its mean test cost is
  lower than both cross-entropy baselines' (argmax and Bayes with temperature scaling)
  and both paired tests reject at Holm-adjusted ``p < ALPHA``. Otherwise the verdict
  recommends the cross-entropy baseline with the lower validation cost.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import numpy.typing as npt

ALPHA = 0.05
CE = "ce"
REFERENCES = (("ce", "argmax"), ("ce", "bayes_t"))


@dataclasses.dataclass
class Row:
  """One arm under one decoding, at its selected grid point (arrays over seeds)."""

  arm: str
  label: str
  decoding: str
  g: int
  lr: float
  hp: float
  val_cost: float  # mean over seeds at the selected grid point
  test_cost: np.ndarray  # (S,)
  test_acc: np.ndarray  # (S,)
  temperature: np.ndarray  # (S,)
  diverged_seeds: int  # at the selected grid point
  diverged_grid_points: int  # grid points skipped because some seed diverged
  seconds: float
  p_vs_ce_argmax: float = float("nan")
  p_vs_ce_bayes: float = float("nan")

  @property
  def mean(self) -> float:
    return float(np.mean(self.test_cost))

  @property
  def std(self) -> float:
    return float(np.std(self.test_cost))

  @property
  def ci(self) -> tuple[float, float]:
    return mean_ci(self.test_cost)

  @property
  def acc(self) -> float:
    return float(np.mean(self.test_acc))

  @property
  def key(self) -> tuple[str, str]:
    return (self.arm, self.decoding)


def select(scores: dict, grid, m: int, decoding: str) -> dict:
  """The grid point with the lowest mean validation cost for cost matrix ``m``."""
  val = np.asarray(scores[f"val_cost_{decoding}"][m], np.float64)  # (G, S)
  finite = np.asarray(scores["finite"][m])  # (G, S)
  ok = finite.all(axis=1)
  mean_val = np.where(ok, val.mean(axis=1), np.inf)
  g = int(np.argmin(mean_val)) if np.isfinite(mean_val).any() else 0
  return {
      "g": g, "lr": float(grid[g][0]), "hp": float(grid[g][1]),
      "val_cost": float(val[g].mean()),
      "test_cost": np.asarray(scores[f"test_cost_{decoding}"][m, g], np.float64),
      "test_acc": np.asarray(scores[f"test_acc_{decoding}"][m, g], np.float64),
      "temperature": np.asarray(scores["temperature"][m, g], np.float64),
      "diverged_seeds": int((~finite[g]).sum()),
      "diverged_grid_points": int((~ok).sum()),
  }


def wilcoxon_p(a: npt.ArrayLike, b: npt.ArrayLike) -> float:
  """Two-sided paired Wilcoxon signed-rank p-value over seeds.

  1.0 when every paired difference is 0 (nothing to tell apart); NaN with fewer than
  two seeds or a non-finite cost (a diverged model).
  """
  from scipy.stats import wilcoxon

  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  d = a - b
  if len(d) < 2 or not np.all(np.isfinite(d)):
    return float("nan")
  if np.all(np.abs(d) <= 1e-12):
    return 1.0
  return float(wilcoxon(a, b).pvalue)


def holm(pvalues: npt.ArrayLike) -> list[float]:
  """Holm's step-down adjusted p-values (NaN stays NaN and is not counted)."""
  p = np.asarray(pvalues, np.float64)
  out = np.full(p.shape, np.nan)
  idx = [i for i in np.argsort(p) if np.isfinite(p[i])]
  m = len(idx)
  running = 0.0
  for rank, i in enumerate(idx):
    running = max(running, min(1.0, (m - rank) * p[i]))
    out[i] = running
  return out.tolist()


def mean_ci(x: npt.ArrayLike, level: float = 0.95) -> tuple[float, float]:
  """Student t confidence interval of the mean over seeds (NaN with one seed).

  Costs are non-negative, so the lower end is clipped at 0.
  """
  from scipy.stats import t as student_t

  x = np.asarray(x, np.float64)
  n = len(x)
  if n < 2 or not np.all(np.isfinite(x)):
    return (float("nan"), float("nan"))
  half = student_t.ppf(0.5 + level / 2, n - 1) * x.std(ddof=1) / math.sqrt(n)
  return (max(0.0, float(x.mean() - half)), float(x.mean() + half))


def smallest_p(num_seeds: int) -> float:
  """The smallest two-sided exact Wilcoxon p-value with ``num_seeds`` pairs."""
  return 2.0 / 2**num_seeds if num_seeds > 1 else float("nan")


def build_rows(arms, results, scores, m: int, decodings) -> list[Row]:
  """Rows (arm x decoding) for cost matrix ``m``, with raw p-values against CE."""
  rows = []
  for arm in arms:
    for dec in decodings:
      sel = select(scores[arm.key], results[arm.key].grid, m, dec)
      rows.append(Row(arm=arm.key, label=arm.label, decoding=dec, g=sel["g"], lr=sel["lr"],
                      hp=sel["hp"], val_cost=sel["val_cost"], test_cost=sel["test_cost"],
                      test_acc=sel["test_acc"], temperature=sel["temperature"],
                      diverged_seeds=sel["diverged_seeds"],
                      diverged_grid_points=sel["diverged_grid_points"],
                      seconds=results[arm.key].seconds))
  ref = {r.decoding: r for r in rows if r.arm == CE}
  for r in rows:
    r.p_vs_ce_argmax = wilcoxon_p(r.test_cost, ref["argmax"].test_cost)
    r.p_vs_ce_bayes = wilcoxon_p(r.test_cost, ref["bayes_t"].test_cost)
  return rows


@dataclasses.dataclass
class Verdict:
  pick: Row  # lowest mean validation cost
  recommended: Row  # what the verdict recommends
  comparisons: list[dict]  # pick vs each CE baseline: means, raw and Holm-adjusted p
  adopted: bool  # the pick beat both baselines significantly
  sentence: str


def _name(r: Row, labels) -> str:
  return f"{r.label} + {labels[r.decoding]}"


def fmt_p(p: float) -> str:
  return "n/a" if p != p else f"{p:.3g}"


def verdict(rows: list[Row], decoding_labels) -> Verdict:
  """The recommendation for one cost matrix (see the module docstring for the rule)."""
  by_key = {r.key: r for r in rows}
  usable = [r for r in rows if np.isfinite(r.val_cost) and np.all(np.isfinite(r.test_cost))]
  pick = min(usable or rows, key=lambda r: r.val_cost)
  bases = [by_key[k] for k in REFERENCES]
  comps: list[dict] = [{"baseline": b, "raw_p": wilcoxon_p(pick.test_cost, b.test_cost)}
           for b in bases if b.key != pick.key]
  for c, adj in zip(comps, holm([c["raw_p"] for c in comps]), strict=True):
    c["holm_p"] = adj
    c["beaten"] = bool(pick.mean < c["baseline"].mean and adj < ALPHA)
  is_base = pick.key in REFERENCES
  adopted = not is_base and all(c["beaten"] for c in comps)

  def ce_name(r: Row) -> str:
    return f"cross-entropy with {decoding_labels[r.decoding]} decoding"

  if adopted:
    recommended = pick
    c_b = next(c for c in comps if c["baseline"].key == ("ce", "bayes_t"))
    c_a = next(c for c in comps if c["baseline"].key == ("ce", "argmax"))
    sentence = (
        f"{_name(pick, decoding_labels)} lowers test cost from {c_b['baseline'].mean:.4f} "
        f"(cross-entropy + {decoding_labels['bayes_t']}) to {pick.mean:.4f} "
        f"(Holm-adjusted p = {fmt_p(c_b['holm_p'])}; cross-entropy + argmax costs "
        f"{c_a['baseline'].mean:.4f}, p = {fmt_p(c_a['holm_p'])}); use it.")
  elif is_base:
    recommended = pick
    other = comps[0]
    sentence = (
        f"{ce_name(pick)[0].upper()}{ce_name(pick)[1:]} has the lowest validation cost of "
        f"all {len(rows)} recipes and costs {pick.mean:.4f} on test (cross-entropy + "
        f"{decoding_labels[other['baseline'].decoding]}: {other['baseline'].mean:.4f}, "
        f"Holm-adjusted p = {fmt_p(other['holm_p'])}); use it.")
  else:
    # The baseline(s) the validation pick failed to beat; the one better on validation.
    unbeaten = [c["baseline"] for c in comps if not c["beaten"]]
    recommended = min(unbeaten, key=lambda r: r.val_cost)
    c_r = next(c for c in comps if c["baseline"].key == recommended.key)
    how = ("is not significantly cheaper than" if pick.mean < recommended.mean
           else "costs no less than")
    sentence = (
        f"The validation pick, {_name(pick, decoding_labels)}, {how} "
        f"{ce_name(recommended)} on test ({pick.mean:.4f} against {recommended.mean:.4f}, "
        f"Holm-adjusted p = {fmt_p(c_r['holm_p'])}); use {ce_name(recommended)}.")
  return Verdict(pick=pick, recommended=recommended, comparisons=comps, adopted=adopted,
                 sentence=sentence)
