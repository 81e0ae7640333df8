"""Selection, statistics and the verdict of ``costjax compare``.

* Selection: for each arm and decoding, the grid point (learning rate x the arm's own
  hyperparameter) with the lowest mean validation cost over seeds; grid points where
  some seed diverged are skipped.
* Tests: every seed is a random re-split of the SAME rows, so the seeds' costs are
  correlated. Two recipes are compared with Nadeau & Bengio's corrected resampled
  t-test (:func:`corrected_resampled_ttest`, two-sided; Holm's step-down correction where
  a family of tests decides something) and the Bayesian correlated t-test
  (:func:`bayesian_correlated_ttest`) with a region of practical equivalence (ROPE,
  ``ROPE_FRACTION`` of cross-entropy + Bayes (temperature)'s mean validation cost unless
  ``--rope`` gives it in cost units).
* Confidence intervals: Student t intervals (95%) of the mean test cost over seeds
  (:func:`mean_ci`); for ``costjax decide``, percentile intervals from a paired bootstrap over
  test rows (:func:`bootstrap_means`, :func:`paired_bootstrap`).
* Baselines: cross-entropy + argmax, cross-entropy + Bayes (temperature), and the best
  constant prediction (the class ``j`` minimising the training rows' mean ``C[y, j]``,
  per re-split).
* Verdict (:func:`verdict`): the candidate is chosen on VALIDATION only (the recipe with
  the lowest mean validation cost) and tested on test against both cross-entropy
  baselines. ``adopt``: cheaper than both, Holm-adjusted ``p < ALPHA`` and
  ``P(cheaper by more than the ROPE) >= PROB`` against each. ``equivalent``:
  ``P(within the ROPE) >= PROB`` against a baseline; the simpler baseline is recommended.
  ``undecided``: neither; the report gives the smallest difference the table detects at
  80% power. When neither the candidate nor a cross-entropy baseline is reliably cheaper
  (the ``adopt`` rule) than the best constant prediction, the features carry no usable
  signal for this cost, and the constant is recommended.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import numpy.typing as npt

ALPHA = 0.05  # two-sided level of the corrected t-test (after Holm)
PROB = 0.95  # posterior probability the Bayesian test must reach
# Default ROPE: 5% of cross-entropy + Bayes (temperature)'s mean validation cost. Benavoli
# et al. (JMLR 2017) use 1 point of accuracy; at the 10-20% error rates of typical tables
# that is 5-10% of the error, so 5% of the cost is the same order. A smaller change of the
# expected cost rarely pays for switching the training loss.
ROPE_FRACTION = 0.05
CE = "ce"
CONSTANT = "constant"
CONSTANT_DECODING = "none"
CONSTANT_LABEL = "best constant prediction"
REFERENCES = (("ce", "argmax"), ("ce", "bayes_t"))
OUTCOMES = ("adopt", "equivalent", "undecided")


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
  # Against each cross-entropy baseline: the corrected resampled t-test's two-sided p
  # (uncorrected for multiplicity) and the Bayesian correlated t-test's
  # (P(this row cheaper), P(within the ROPE), P(this row dearer)).
  p_vs_ce_argmax: float = float("nan")
  p_vs_ce_bayes: float = float("nan")
  probs_vs_ce_argmax: tuple[float, float, float] = (float("nan"),) * 3
  probs_vs_ce_bayes: tuple[float, float, float] = (float("nan"),) * 3
  rope: float = float("nan")
  classes: np.ndarray | None = None  # the constant row's class per seed
  chosen: str = ""  # the constant row's classes, for the report

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


def _paired(a, b, n_train, n_test) -> np.ndarray:
  """``d = a - b`` as float64 after checking shapes and split sizes."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.ndim != 1 or a.shape != b.shape:
    raise ValueError(f"a and b must be paired 1-D arrays of one length; got shapes {a.shape} "
                     f"and {b.shape}.")
  if not (n_train > 0 and n_test > 0 and math.isfinite(n_train) and math.isfinite(n_test)):
    raise ValueError(f"n_train and n_test must be positive; got {n_train} and {n_test}.")
  return a - b


def _corrected_scale(d: np.ndarray, n_train, n_test) -> float:
  """Nadeau & Bengio's standard error of ``mean(d)``: ``sqrt((1/S + n_test/n_train) var(d))``."""
  return math.sqrt((1.0 / len(d) + n_test / n_train) * float(np.var(d, ddof=1)))


def corrected_resampled_ttest(a, b, *, n_train, n_test) -> float:
  """Two-sided p-value of "equal mean cost" over paired random re-splits of one table.

  Nadeau & Bengio's (2003) corrected resampled t-test: re-splits of the same rows share
  most of their training and test examples, so their costs are correlated and the plain
  paired t-test (or Wilcoxon's test) rejects far too often. The variance of the mean
  difference is inflated by ``n_test / n_train``::

    d = a - b,  t = mean(d) / sqrt((1/S + n_test/n_train) * var(d)),  S - 1 degrees of freedom

  with ``var`` the sample variance (``ddof=1``). More re-splits do not shrink the
  ``n_test / n_train`` term: only more rows do.

  Args:
    a: ``(S,)`` mean test cost of recipe A on each re-split.
    b: ``(S,)`` mean test cost of recipe B on the same re-splits (paired).
    n_train: training rows of each re-split.
    n_test: test rows of each re-split.

  Returns:
    The two-sided p-value: ``1.0`` when every ``d`` is 0; ``0.0`` when every ``d`` is the
    same non-zero number (the re-splits agree exactly); NaN with ``S < 2`` or a non-finite
    cost (a diverged model).

  Example:
    >>> a = [0.10, 0.12, 0.11, 0.13, 0.12]
    >>> b = [0.12, 0.13, 0.13, 0.14, 0.15]
    >>> round(corrected_resampled_ttest(a, b, n_train=1000, n_test=250), 4)
    0.0327
  """
  from scipy.stats import t as student_t

  d = _paired(a, b, n_train, n_test)
  if len(d) < 2 or not np.all(np.isfinite(d)):
    return float("nan")
  if np.all(d == 0):
    return 1.0
  scale = _corrected_scale(d, n_train, n_test)
  if scale == 0:
    return 0.0
  t = float(np.mean(d)) / scale
  return float(min(1.0, 2.0 * student_t.sf(abs(t), len(d) - 1)))


def bayesian_correlated_ttest(a, b, *, n_train, n_test, rope) -> tuple[float, float, float]:
  """Posterior probabilities that A is cheaper, practically equivalent, or dearer than B.

  The Bayesian correlated t-test (Corani & Benavoli 2015; Benavoli et al., JMLR 2017):
  the posterior of the mean cost difference ``mean(a - b)`` is a Student t with ``S - 1``
  degrees of freedom, location ``mean(d)`` and scale
  ``sqrt((1/S + n_test/n_train) * var(d))`` (the same correlation correction as
  :func:`corrected_resampled_ttest`). It is split at ``-rope`` and ``+rope``, the region of
  practical equivalence in cost units. When ``var(d) = 0`` the posterior is a point mass
  at ``mean(d)``.

  Args:
    a: ``(S,)`` mean test cost of recipe A on each re-split.
    b: ``(S,)`` mean test cost of recipe B on the same re-splits (paired).
    n_train: training rows of each re-split.
    n_test: test rows of each re-split.
    rope: half-width of the region of practical equivalence, in cost units (``>= 0``).

  Returns:
    ``(p_a_cheaper, p_equivalent, p_b_cheaper)``: the posterior mass below ``-rope``,
    within ``[-rope, rope]`` and above ``rope``; they sum to 1. NaN (all three) with
    ``S < 2`` or a non-finite cost.

  Example:
    >>> a = [0.10, 0.12, 0.11, 0.13, 0.12]
    >>> b = [0.12, 0.13, 0.13, 0.14, 0.15]
    >>> p = bayesian_correlated_ttest(a, b, n_train=1000, n_test=250, rope=0.005)
    >>> [round(x, 3) for x in p]
    [0.959, 0.033, 0.007]
  """
  from scipy.stats import t as student_t

  rope = float(rope)
  if not (rope >= 0 and math.isfinite(rope)):
    raise ValueError(f"rope must be finite and >= 0; got {rope}.")
  d = _paired(a, b, n_train, n_test)
  nan = float("nan")
  if len(d) < 2 or not np.all(np.isfinite(d)):
    return (nan, nan, nan)
  loc = float(np.mean(d))
  scale = _corrected_scale(d, n_train, n_test)
  if scale == 0:
    cheaper, dearer = float(loc < -rope), float(loc > rope)
  else:
    cheaper = float(student_t.cdf(-rope, len(d) - 1, loc=loc, scale=scale))
    dearer = float(student_t.sf(rope, len(d) - 1, loc=loc, scale=scale))
  return (cheaper, max(0.0, 1.0 - cheaper - dearer), dearer)


def detectable_difference(a, b, *, n_train, n_test, power: float = 0.8,
                          alpha: float = 0.05, num_resplits: float | None = None) -> float:
  """The smallest mean cost difference the corrected t-test detects with ``power``.

  The difference ``delta`` at which the two-sided :func:`corrected_resampled_ttest` at
  level ``alpha`` rejects with probability ``power``, when the paired differences spread as
  ``a - b`` do (their sample variance). With ``S`` re-splits the test statistic is
  noncentral t with ``S - 1`` degrees of freedom and noncentrality
  ``delta / sqrt((1/S + n_test/n_train) var(d))``. ``num_resplits=math.inf`` gives the
  floor that no number of re-splits goes below,
  ``(z_{1-alpha/2} + z_{power}) sqrt(n_test/n_train var(d))``; since ``var(d)`` of a
  test-set mean falls like ``1/n_test``, only more rows lower it.

  Args:
    a: ``(S,)`` mean test cost of recipe A on each re-split.
    b: ``(S,)`` mean test cost of recipe B on the same re-splits (paired).
    n_train: training rows of each re-split.
    n_test: test rows of each re-split.
    power: the probability of detecting the difference (default 0.8).
    alpha: the test's two-sided level (default 0.05).
    num_resplits: the number of re-splits to plan for (default ``S``; ``math.inf`` for
      the floor).

  Returns:
    ``delta`` in cost units (0 when ``var(d) = 0``); NaN with ``S < 2`` or a non-finite cost.

  Example:
    >>> a = [0.10, 0.12, 0.11, 0.13, 0.12]
    >>> b = [0.12, 0.13, 0.13, 0.14, 0.15]
    >>> round(detectable_difference(a, b, n_train=1000, n_test=250), 4)
    0.0211
    >>> round(detectable_difference(a, b, n_train=1000, n_test=250, num_resplits=math.inf), 4)
    0.0117
  """
  from scipy.optimize import brentq
  from scipy.stats import nct, norm
  from scipy.stats import t as student_t

  d = _paired(a, b, n_train, n_test)
  if len(d) < 2 or not np.all(np.isfinite(d)):
    return float("nan")
  sd = math.sqrt(float(np.var(d, ddof=1)))
  s = len(d) if num_resplits is None else num_resplits
  if s == math.inf:
    return float((norm.ppf(1 - alpha / 2) + norm.ppf(power)) * sd * math.sqrt(n_test / n_train))
  if s < 2:
    return float("nan")
  if sd == 0:
    return 0.0
  df = s - 1
  crit = float(student_t.ppf(1 - alpha / 2, df))

  def gap(nc):
    lower = float(nct.cdf(-crit, df, nc))  # the wrong-sign tail: NaN far out, where it is 0
    return float(nct.sf(crit, df, nc)) + (lower if math.isfinite(lower) else 0.0) - power

  hi = crit + 10.0
  while gap(hi) < 0:
    hi *= 2
  nc = brentq(gap, 0.0, hi, xtol=1e-10)
  return float(nc * sd * math.sqrt(1.0 / s + n_test / n_train))


def wilcoxon_p(a: npt.ArrayLike, b: npt.ArrayLike) -> float:
  """Two-sided paired Wilcoxon signed-rank p-value.

  For comparing two methods ACROSS independent tables (Demšar, JMLR 2006), not over
  re-splits of one table: there use :func:`corrected_resampled_ttest`. 1.0 when every
  paired difference is 0; NaN with fewer than two pairs or a non-finite value.
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


def prediction_costs(c, y) -> np.ndarray:
  """``(n, K)``: each row's costs of every prediction; ``c`` is ``(K, K)`` or ``(n, K, K)``."""
  c = np.asarray(c, np.float64)
  return c[y] if c.ndim == 2 else c[np.arange(len(y)), y]


def best_constant_costs(y, cost) -> np.ndarray:
  """``(S,)``: per re-split, the lowest mean cost of a constant prediction on those rows
  (chosen on the rows themselves: the denominator of the savings score).

  ``y``: ``(S, n)`` labels; ``cost``: ``(K, K)`` or per-row ``(S, n, K, K)``.
  """
  y = np.asarray(y, np.int64)
  cost = np.asarray(cost, np.float64)
  return np.stack([prediction_costs(cost if cost.ndim == 2 else cost[s], ys).mean(axis=0).min()
                   for s, ys in enumerate(y)])


def constant_row(y_train, y_val, y_test, cost, *, class_names=None, row_costs=None) -> Row:
  """The best constant prediction: per re-split, the class ``j`` with the lowest mean
  ``C[y, j]`` over the TRAINING rows, scored on that re-split's validation and test rows.

  Args:
    y_train: ``(S, n_train)`` integer labels of each re-split's training rows.
    y_val: ``(S, n_val)`` validation labels.
    y_test: ``(S, n_test)`` test labels.
    cost: ``(K, K)`` cost matrix (rows true, columns predicted).
    class_names: names of the ``K`` classes, for the row's ``chosen`` text.
    row_costs: ``None``, or per-row costs ``(c_train, c_val, c_test)`` of shapes
      ``(S, n, K, K)`` that replace ``cost`` (each row priced with its own matrix).

  Returns:
    A :class:`Row` with arm ``constant`` and decoding ``none``; ``classes`` holds the
    class chosen on each re-split.
  """
  cost = np.asarray(cost, np.float64)
  y_train, y_val, y_test = (np.asarray(y, np.int64) for y in (y_train, y_val, y_test))
  per: list
  if row_costs is None:
    per = [[cost] * len(y_train)] * 3
  else:
    per = [np.asarray(c, np.float64) for c in row_costs]
  j = np.stack([prediction_costs(c, y).mean(axis=0).argmin()
                for y, c in zip(y_train, per[0], strict=True)])  # (S,)
  val = np.stack([prediction_costs(cs, y)[:, c].mean()
                  for y, c, cs in zip(y_val, j, per[1], strict=True)])
  test = np.stack([prediction_costs(cs, y)[:, c].mean()
                   for y, c, cs in zip(y_test, j, per[2], strict=True)])
  acc = np.stack([(y == c).mean() for y, c in zip(y_test, j, strict=True)])
  names = list(class_names) if class_names is not None else [str(k) for k in range(len(cost))]
  uniq, counts = np.unique(j, return_counts=True)
  chosen = ", ".join(f"{names[u]}" + (f" ({c} of {len(j)} re-splits)" if len(uniq) > 1 else "")
                     for u, c in sorted(zip(uniq, counts, strict=True), key=lambda t: -t[1]))
  return Row(arm=CONSTANT, label=CONSTANT_LABEL, decoding=CONSTANT_DECODING, g=-1,
             lr=float("nan"), hp=float("nan"), val_cost=float(val.mean()), test_cost=test,
             test_acc=acc.astype(np.float64), temperature=np.full(len(j), np.nan),
             diverged_seeds=0, diverged_grid_points=0, seconds=0.0, classes=j,
             chosen=f"class {chosen}")


def default_rope(rows: list[Row]) -> float:
  """``ROPE_FRACTION`` of cross-entropy + Bayes (temperature)'s mean validation cost."""
  ref = next(r for r in rows if r.key == ("ce", "bayes_t"))
  v = ref.val_cost if np.isfinite(ref.val_cost) else 0.0
  return float(ROPE_FRACTION * v)


def attach_tests(rows: list[Row], *, n_train: int, n_test: int, rope: float) -> list[Row]:
  """Fills every row's p-values and probabilities against both cross-entropy baselines."""
  ref = {r.decoding: r for r in rows if r.arm == CE}
  for r in rows:
    r.rope = float(rope)
    for dec, p_name, q_name in (("argmax", "p_vs_ce_argmax", "probs_vs_ce_argmax"),
                                ("bayes_t", "p_vs_ce_bayes", "probs_vs_ce_bayes")):
      b = ref[dec].test_cost
      setattr(r, p_name, corrected_resampled_ttest(r.test_cost, b, n_train=n_train,
                                                   n_test=n_test))
      setattr(r, q_name, bayesian_correlated_ttest(r.test_cost, b, n_train=n_train,
                                                   n_test=n_test, rope=rope))
  return rows


def build_rows(arms, results, scores, m: int, decodings, *, splits, cost,
               rope: float | None = None, class_names=None) -> list[Row]:
  """Rows (arm x decoding, then the best constant prediction) for cost matrix ``m`` (whose
  ``(K, K)`` matrix is ``cost``), with the tests against both cross-entropy baselines.
  With per-row costs in ``splits`` (``c_train``, ``c_val``, ``c_test``) the constant is
  priced with each row's own matrix.

  ``splits``: the re-splits (``y_train``, ``y_val``, ``y_test`` of shape ``(S, n)``).
  ``rope`` in cost units; ``None`` for :func:`default_rope`.
  """
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
  c_tr = getattr(splits, "c_train", None)
  rows.append(constant_row(splits.y_train, splits.y_val, splits.y_test, cost,
                           class_names=class_names,
                           row_costs=None if c_tr is None else (c_tr, splits.c_val,
                                                                splits.c_test)))
  n_train, n_test = splits.y_train.shape[1], splits.y_test.shape[1]
  rope = default_rope(rows) if rope is None else float(rope)
  return attach_tests(rows, n_train=n_train, n_test=n_test, rope=rope)


@dataclasses.dataclass
class Verdict:
  pick: Row  # lowest mean validation cost (never the constant)
  recommended: Row  # what the verdict recommends
  outcome: str  # one of OUTCOMES
  # The challenger (the pick, or the constant when the features carry no usable signal)
  # against each cross-entropy baseline: raw and Holm-adjusted p, the three probabilities.
  comparisons: list[dict]
  # The pick and both cross-entropy baselines against the constant (Holm over them).
  signal_comparisons: list[dict]
  no_signal: bool  # nothing reliably cheaper than the best constant prediction
  rope: float
  detectable: float  # smallest difference detectable at 80% power (undecided), else NaN
  detectable_floor: float  # the same with unlimited re-splits
  num_resplits: int
  sentence: str
  remarks: list[str]  # plain statements the report prints under the verdict

  @property
  def adopted(self) -> bool:
    return self.outcome == "adopt"


def _name(r: Row, labels) -> str:
  if r.arm == CONSTANT:
    return CONSTANT_LABEL
  return f"{r.label} + {labels[r.decoding]}"


def fmt_p(p: float | None) -> str:
  """A p-value with 3 significant digits; ``n/a`` where there is none (None or NaN)."""
  return "n/a" if p is None or p != p else f"{p:.3g}"


def _compare(x: Row, bases: list[Row], *, n_train, n_test, rope) -> list[dict]:
  """``x`` against each baseline: raw and Holm-adjusted p, probabilities, and the rules."""
  comps: list[dict[str, Any]] = []
  for b in bases:
    p = corrected_resampled_ttest(x.test_cost, b.test_cost, n_train=n_train, n_test=n_test)
    probs = bayesian_correlated_ttest(x.test_cost, b.test_cost, n_train=n_train,
                                      n_test=n_test, rope=rope)
    comps.append({"baseline": b, "raw_p": p, "probs": probs})
  for c, adj in zip(comps, holm([c["raw_p"] for c in comps]), strict=True):
    c["holm_p"] = adj
    c["beaten"] = bool(x.mean < c["baseline"].mean and adj < ALPHA and c["probs"][0] >= PROB)
    c["equivalent"] = bool(c["probs"][1] >= PROB)
  return comps


def verdict(rows: list[Row], decoding_labels, *, n_train: int, n_test: int,
            rope: float) -> Verdict:
  """The recommendation for one cost matrix (see the module docstring for the rules).

  ``rows``: every arm x decoding plus, optionally, the constant row (arm ``constant``);
  ``n_train``, ``n_test``: the sizes of each re-split's parts; ``rope`` in cost units.
  """
  by_key = {r.key: r for r in rows}
  models = [r for r in rows if r.arm != CONSTANT]
  usable = [r for r in models if np.isfinite(r.val_cost) and np.all(np.isfinite(r.test_cost))]
  pick = min(usable or models, key=lambda r: r.val_cost)
  ce_a, ce_b = (by_key[k] for k in REFERENCES)
  const = by_key.get((CONSTANT, CONSTANT_DECODING))
  kw = dict(n_train=n_train, n_test=n_test, rope=rope)
  s = len(pick.test_cost)
  labels = decoding_labels

  def ce_name(r: Row) -> str:
    return f"cross-entropy + {labels[r.decoding]}"

  # Is anything reliably cheaper than predicting one class for every row?
  signal_comps: list[dict[str, Any]] = []
  if const is not None:
    cands = [pick] + [b for b in (ce_a, ce_b) if b.key != pick.key]
    signal_comps = []
    for c, cand in zip(_compare(const, cands, **kw), cands, strict=True):
      # Turned around: the candidate against the constant.
      q = c["probs"]
      signal_comps.append({
          "candidate": cand, "raw_p": c["raw_p"], "holm_p": c["holm_p"],
          "probs": (q[2], q[1], q[0]),
          "cheaper": bool(cand.mean < const.mean and c["holm_p"] < ALPHA and q[2] >= PROB)})
  no_signal = bool(signal_comps) and not any(c["cheaper"] for c in signal_comps)

  if no_signal:
    assert const is not None  # signal_comps is empty without the constant row
    challenger = const
  else:
    challenger = pick
  bases = [b for b in (ce_a, ce_b) if b.key != challenger.key]
  comps = _compare(challenger, bases, **kw)
  if all(c["beaten"] for c in comps):
    outcome = "adopt"
  elif any(c["equivalent"] for c in comps):
    outcome = "equivalent"
  else:
    outcome = "undecided"

  if no_signal:
    recommended = challenger  # the constant row
  elif outcome == "adopt":
    recommended = pick
  elif outcome == "equivalent":
    equiv = [c["baseline"].key for c in comps if c["equivalent"]]
    # The simpler recipe: argmax needs no calibration, so it is simpler than Bayes.
    recommended = ce_a if pick.key in REFERENCES or ce_a.key in equiv else ce_b
  elif pick.key in REFERENCES:
    recommended = pick
  else:
    unbeaten = [c["baseline"] for c in comps if not c["beaten"]]
    recommended = min(unbeaten, key=lambda r: r.val_cost)

  # The baseline the sentence quotes: the one recommended, else cross-entropy + Bayes (T).
  main = next((c for c in comps if c["baseline"].key == recommended.key),
              next((c for c in comps if c["baseline"].key == ce_b.key), comps[0]))
  nan = float("nan")
  detectable = floor = nan
  if outcome == "undecided":
    detectable = detectable_difference(challenger.test_cost, main["baseline"].test_cost,
                                       n_train=n_train, n_test=n_test)
    floor = detectable_difference(challenger.test_cost, main["baseline"].test_cost,
                                  n_train=n_train, n_test=n_test, num_resplits=math.inf)
  base = main["baseline"]
  stat = (f"Holm-adjusted p = {fmt_p(main['holm_p'])}; P(cheaper by more than the ROPE "
          f"{rope:.3g}) = {main['probs'][0]:.2f}, P(within it) = {main['probs'][1]:.2f}")
  power = ""
  if outcome == "undecided" and math.isfinite(detectable):
    power = (f" This table cannot tell them apart: with {s} re-splits the smallest "
             f"difference it detects at 80% power is {detectable:.3g} (more re-splits cannot "
             f"bring it below {floor:.3g}; only more rows can).")

  if no_signal:
    assert const is not None  # as above
    what = const.chosen or "one class"
    best = min(signal_comps, key=lambda c: c["candidate"].mean)["candidate"]
    sentence = (
        f"No recipe is reliably cheaper than the best constant prediction ({what}, test cost "
        f"{const.mean:.4f}; the cheapest candidate, {_name(best, labels)}, costs "
        f"{best.mean:.4f}): the features carry no usable signal for this cost; predict the "
        f"constant.")
    if outcome == "adopt":
      sentence += (f" It is even cheaper than {ce_name(base)} ({base.mean:.4f}; {stat}).")
    elif outcome == "equivalent":
      sentence += (f" It is practically the same as {ce_name(base)} ({base.mean:.4f}; "
                   f"{stat}).")
    else:
      sentence += f" Against {ce_name(base)} ({base.mean:.4f}): {stat}.{power}"
  elif outcome == "adopt":
    c_b = next((c for c in comps if c["baseline"].key == ce_b.key), None)
    c_a = next((c for c in comps if c["baseline"].key == ce_a.key), None)
    if c_b is not None and c_a is not None:
      sentence = (
          f"{_name(pick, labels)} lowers test cost from {ce_b.mean:.4f} ({ce_name(ce_b)}) to "
          f"{pick.mean:.4f} (Holm-adjusted p = {fmt_p(c_b['holm_p'])}, P(cheaper by more "
          f"than the ROPE {rope:.3g}) = {c_b['probs'][0]:.2f}; {ce_name(ce_a)} costs "
          f"{ce_a.mean:.4f}, p = {fmt_p(c_a['holm_p'])}, P = {c_a['probs'][0]:.2f}); use it.")
    else:
      c = comps[0]
      sentence = (
          f"{ce_name(pick)[0].upper()}{ce_name(pick)[1:]} has the lowest validation cost and "
          f"lowers test cost from {c['baseline'].mean:.4f} ({ce_name(c['baseline'])}) to "
          f"{pick.mean:.4f} (p = {fmt_p(c['holm_p'])}, P(cheaper by more than the ROPE "
          f"{rope:.3g}) = {c['probs'][0]:.2f}); use it.")
  elif outcome == "equivalent":
    sentence = (
        f"The validation pick, {_name(pick, labels)}, and {ce_name(base)} are practically the "
        f"same on test ({pick.mean:.4f} against {base.mean:.4f}; {stat}); use the simpler "
        f"{ce_name(recommended)}.")
  else:
    if pick.key in REFERENCES:
      sentence = (
          f"{ce_name(pick)[0].upper()}{ce_name(pick)[1:]} has the lowest validation cost; on "
          f"test it costs {pick.mean:.4f} against {base.mean:.4f} for {ce_name(base)} "
          f"({stat}).{power} Use {ce_name(recommended)}.")
    else:
      how = "is cheaper on average than" if pick.mean < base.mean else "costs no less than"
      sentence = (
          f"The validation pick, {_name(pick, labels)}, {how} {ce_name(base)} on test "
          f"({pick.mean:.4f} against {base.mean:.4f}), but not reliably ({stat}).{power} "
          f"Use {ce_name(recommended)}.")

  remarks = []
  others = [r for r in models if r.key != ce_b.key]
  sig = [r for r in others if r.p_vs_ce_bayes < ALPHA]  # NaN compares False
  cheaper = [r for r in sig if r.mean < ce_b.mean]
  dearer = [r for r in sig if r.mean > ce_b.mean]
  if others and not sig:
    remarks.append(
        f"No recipe's test cost differs significantly from {ce_name(ce_b)}'s: every "
        f"corrected p in the table is at least {ALPHA:g}, even before correcting for the "
        f"{len(others)} comparisons.")
  elif others and not cheaper:
    names = "; ".join(_name(r, labels) for r in dearer)  # labels may hold commas
    remarks.append(
        f"No recipe is significantly cheaper than {ce_name(ce_b)}: no corrected p in the "
        f"table is below {ALPHA:g} for a lower cost, even before correcting for the "
        f"{len(others)} comparisons; {len(dearer)} are significantly dearer ({names}).")
  return Verdict(pick=pick, recommended=recommended, outcome=outcome, comparisons=comps,
                 signal_comparisons=signal_comps, no_signal=no_signal, rope=float(rope),
                 detectable=detectable, detectable_floor=floor, num_resplits=s,
                 sentence=sentence, remarks=remarks)
