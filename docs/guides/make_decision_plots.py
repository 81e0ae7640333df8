"""Plots for docs/guides/decisions.md (not run in CI).

Same data, model and splits as the guide: scikit-learn digits, a weakly
regularized logistic regression trained on 500 images, temperature fitted on
300 more, and the remaining 997 images as the pool for testing and for the
random calibration/test splits.

  python docs/guides/make_decision_plots.py     # writes docs/guides/img/decisions_*.png
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

import costjax as cj

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

OUT = Path(__file__).resolve().parent / "img"


def setup():
  x, y = load_digits(return_X_y=True)
  perm = np.random.default_rng(0).permutation(len(y))
  train, val, pool = perm[:500], perm[500:800], perm[800:]
  model = LogisticRegression(C=1000.0, max_iter=5000).fit(x[train] / 16, y[train])
  logits = jnp.asarray(model.decision_function(x / 16), jnp.float32)
  labels = jnp.asarray(y)
  c = 1.0 - jnp.eye(10)
  for true, pred in [(7, 1), (3, 8), (8, 3), (4, 9), (9, 4), (5, 6)]:
    c = c.at[true, pred].set(20.0)
  t = cj.fit_temperature(logits[val], labels[val])
  return logits, labels, c, t, val, pool


def risk_coverage(logits, labels, c, temperature, test):
  z, y = logits[test], labels[test]
  cal = z / temperature
  fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=130)

  def curve(pred, reject_score, label, **kw):
    # Abstain on the examples with the highest reject_score first.
    order = np.argsort(-np.asarray(reject_score), kind="stable")
    per = np.asarray(c)[np.asarray(y), np.asarray(pred)][order]
    n = len(per)
    kept_cost = np.cumsum(per[::-1])[::-1]  # cost of examples kept after dropping i
    dropped = np.arange(n)
    mean_kept = kept_cost / (n - dropped)
    ax.plot(dropped / n, mean_kept, label=label, **kw)

  argmax = jnp.argmax(z, -1)
  curve(argmax, -jnp.max(jax.nn.softmax(cal), -1),
        "argmax, abstain on low max probability", color="tab:gray")
  bayes = cj.bayes_decision(cal, c)
  # Chow's rule with costs: abstain where min_j decision_costs > abstain_cost, i.e. in
  # decreasing order of the Bayes decision's expected cost (sweeping abstain_cost).
  curve(bayes, jnp.min(cj.decision_costs(cal, c), -1),
        "Bayes, abstain on high expected cost (Chow)", color="tab:blue")
  curve(bayes, -jnp.max(jax.nn.softmax(cal), -1),
        "Bayes, abstain on low max probability", color="tab:blue", linestyle="--")
  for a in [0.5, 0.2, 0.1]:
    pred = cj.bayes_decision(cal, c, abstain_cost=a)
    rate = float(jnp.mean(pred == -1))
    kept = float(cj.mean_cost(pred, y, c, where=pred >= 0))
    ax.plot([rate], [kept], "o", color="tab:blue")
    ax.annotate(f"abstain_cost={a}", (rate, kept), textcoords="offset points",
                xytext=(6, 6), fontsize=8)
  ax.set_xlabel("abstention rate (share of test images handed over)")
  ax.set_ylabel("mean cost of the decided images")
  ax.set_title(f"Digits, asymmetric costs: risk vs abstention ({len(test)} images)")
  ax.set_xlim(0, 0.5)
  ax.set_ylim(bottom=0)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(OUT / "decisions_risk_coverage.png")
  plt.close(fig)


def conformal_sweep(logits, labels, c, temperature, pool, n_cal=500, splits=200):
  cal_logits = logits / temperature
  bound = float(c.max())

  def one_split(key, alpha):
    order = jax.random.permutation(key, jnp.asarray(pool))
    cal, test = order[:n_cal], order[n_cal:]
    t = cj.calibrate_cost_sets(cal_logits[cal], labels[cal], c, alpha=alpha)
    sets = cj.cost_sets(cal_logits[test], c, threshold=t)
    return cj.set_cost(sets, labels[test], c).mean(), sets.sum(-1).mean()

  simulate = jax.jit(jax.vmap(one_split, in_axes=(0, None)))
  keys = jax.random.split(jax.random.key(1), splits)
  alphas = np.linspace(0.042, 0.16, 30)
  risk, risk_se, size = [], [], []
  for a in alphas:
    r, s = simulate(keys, a)
    risk.append(float(r.mean()))
    risk_se.append(float(r.std() / np.sqrt(splits)))
    size.append(float(s.mean()))
  risk, risk_se = np.array(risk), np.array(risk_se)
  fig, (left, right) = plt.subplots(1, 2, figsize=(9.6, 4.0), dpi=130)
  left.plot(alphas, alphas, "k-", lw=1, label="y = alpha (the guarantee)")
  left.plot(alphas, alphas - bound / (n_cal + 1), "k:", lw=1,
            label="y = alpha - B/(n+1)")
  left.errorbar(alphas, risk, yerr=2 * risk_se, fmt="o-", ms=3, color="tab:blue",
                label="mean realized set cost (±2 s.e.)")
  left.set_xlabel("alpha")
  left.set_ylabel("set cost on the test split")
  left.set_title(f"{splits} random splits, n = {n_cal} calibration images")
  left.grid(alpha=0.3)
  left.legend(fontsize=8)
  right.plot(alphas, size, "o-", ms=3, color="tab:orange")
  right.set_xlabel("alpha")
  right.set_ylabel("mean set size (classes)")
  right.set_title("Set size (1 = the Bayes decision alone)")
  right.set_ylim(0, 10.5)
  right.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(OUT / "decisions_conformal.png")
  plt.close(fig)
  return alphas, risk, size


def main():
  OUT.mkdir(exist_ok=True)
  logits, labels, c, temperature, val, pool = setup()
  del val
  print(f"T = {float(temperature):.3f}")
  risk_coverage(logits, labels, c, temperature, pool)
  alphas, risk, size = conformal_sweep(logits, labels, c, temperature, pool)
  for a, r, s in zip(alphas, risk, size, strict=True):
    print(f"alpha {a:.3f}: realized {r:.4f}, size {s:.2f}")


if __name__ == "__main__":
  main()
