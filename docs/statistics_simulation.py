"""The null simulation of docs/statistics.md: how often each test rejects "equal cost".

Two fixed classifiers (no training noise at all) are scored on tables drawn from a
population where both have exactly the same mean cost (0.48), with per-example costs
0 / 1 / 20 as in the ``asymmetric`` matrix. Each table has 1797 rows (digits' size) and
is re-split 10 times the way ``costjax compare`` splits digits: 359 test rows, 360
validation rows, 1078 training rows. A second population makes B cheaper by 0.2 (0.48 ->
0.28) to measure power.

  python docs/statistics_simulation.py            # 2000 tables per population, ~30 s

prints the Markdown table that docs/statistics.md quotes.
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy import stats as sps

from costjax.cli import stats

N_ROWS, N_TEST, N_VAL, S = 1797, 359, 360, 10
N_TRAIN = N_ROWS - N_TEST - N_VAL
# (cost of A, cost of B) per row and their probabilities: A makes more cheap mistakes,
# B more expensive ones; both cost 0.48 on average.
PAIRS = np.array([(0, 0), (1, 1), (20, 20), (1, 0), (0, 1), (20, 0), (0, 20)], np.float64)
NULL = np.array([0.79, 0.03, 0.0075, 0.10, 0.05, 0.01, 0.0125])
ALTERNATIVE = NULL + np.array([0.01, 0, 0, 0, 0, 0, -0.01])  # B: 0.28


def simulate(num: int, probs: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """``(num, S)`` mean test costs of A and of B on each re-split of each table."""
  rng = np.random.default_rng(seed)
  a = np.empty((num, S))
  b = np.empty((num, S))
  for lo in range(0, num, 250):
    r = min(250, num - lo)
    rows = PAIRS[rng.choice(len(probs), size=(r, N_ROWS), p=probs)]  # (r, N, 2)
    test = np.argpartition(rng.random((r, S, N_ROWS), np.float32), N_TEST, axis=-1)
    test = test[..., :N_TEST]
    for k, out in ((0, a), (1, b)):
      out[lo:lo + r] = np.take_along_axis(rows[:, None, :, k], test, axis=-1).mean(-1)
  return a, b


def rates(a: np.ndarray, b: np.ndarray, rope: float) -> dict[str, float]:
  kw = dict(n_train=N_TRAIN, n_test=N_TEST)
  wil = [stats.wilcoxon_p(x, y) for x, y in zip(a, b, strict=True)]
  tt = sps.ttest_rel(a, b, axis=1).pvalue
  cor = [stats.corrected_resampled_ttest(x, y, **kw) for x, y in zip(a, b, strict=True)]
  post0 = np.array([stats.bayesian_correlated_ttest(x, y, rope=0.0, **kw)
                    for x, y in zip(a, b, strict=True)])
  post = np.array([stats.bayesian_correlated_ttest(x, y, rope=rope, **kw)
                   for x, y in zip(a, b, strict=True)])
  return {
      "Wilcoxon signed-rank over the re-splits (what compare used)": np.mean(np.less(wil, 0.05)),
      "paired t-test over the re-splits": np.mean(tt < 0.05),
      "corrected resampled t-test (what compare uses)": np.mean(np.less(cor, 0.05)),
      "Bayesian correlated t-test, no ROPE: one side >= 0.975":
          np.mean(np.maximum(post0[:, 0], post0[:, 2]) >= 0.975),
      f"Bayesian correlated t-test, ROPE {rope:g}: P(cheaper beyond it) >= 0.95, either side":
          np.mean(np.maximum(post[:, 0], post[:, 2]) >= 0.95),
      f"Bayesian correlated t-test, ROPE {rope:g}: P(within it) >= 0.95":
          np.mean(post[:, 1] >= 0.95),
  }


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--samples", type=int, default=2000, help="tables per population")
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args()
  rope = 0.05 * float(PAIRS[:, 1] @ NULL)  # compare's default: 5% of the baseline's cost
  null = rates(*simulate(args.samples, NULL, args.seed), rope)
  alt_a, alt_b = simulate(args.samples, ALTERNATIVE, args.seed + 1)
  alt = rates(alt_a, alt_b, rope)
  kw = dict(n_train=N_TRAIN, n_test=N_TEST)
  dd = np.median([stats.detectable_difference(x, y, **kw) for x, y in zip(alt_a, alt_b,
                                                                           strict=True)])
  floor = np.median([stats.detectable_difference(x, y, num_resplits=np.inf, **kw)
                     for x, y in zip(alt_a, alt_b, strict=True)])
  print(f"{args.samples} tables per population, seed {args.seed}; mean costs "
        f"A {PAIRS[:, 0] @ NULL:.2f} = B {PAIRS[:, 1] @ NULL:.2f} (null), "
        f"A {PAIRS[:, 0] @ ALTERNATIVE:.2f}, B {PAIRS[:, 1] @ ALTERNATIVE:.2f} (alternative)\n")
  print("| decision over the 10 re-splits | says \"different\" under the null (5% wanted) "
        "| under B cheaper by 0.2 |")
  print("|---|---|---|")
  for k in null:
    print(f"| {k} | {null[k]:.1%} | {alt[k]:.1%} |")
  print(f"\nmedian smallest difference detectable at 80% power: {dd:.3f} with 10 re-splits, "
        f"{floor:.3f} with unlimited re-splits")


if __name__ == "__main__":
  main()
