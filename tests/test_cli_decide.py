"""``costjax decide``: calibration, decisions, sets, reports and bad input.

Oracles are NumPy formulas written here: softmax, ``p @ C``, Chow's rule, the set rule
``risk - min(risk) <= threshold``, mean costs ``C[y, pred]``; the fitted temperature is
checked against a known miscalibration (true logits x 3); a model costjax never trained
(scikit-learn on digits) is decoded from its ``predict_proba`` saved as CSV.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from costjax.cli import calibration, costs, decide, stats
from costjax.cli.errors import UserInputError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def args_for(tmp_path, val, test, cost, **kw):
  p = argparse.ArgumentParser()
  decide.add_arguments(p)
  argv = ["--val", str(val), "--test", str(test), "--cost", str(cost),
          "--out", str(kw.pop("out", tmp_path / "out")), "--bootstrap", "300"]
  for k, v in kw.items():
    argv += [f"--{k.replace('_', '-')}", str(v)]
  return p.parse_args(argv)


def softmax(z):
  z = z - z.max(-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(-1, keepdims=True)


def read_predictions(out, names):
  df = pd.read_csv(out / "predictions.csv", dtype=str, keep_default_na=False)
  index = {n: i for i, n in enumerate(names)}
  return df, {c: np.array([index.get(v, -1) for v in df[c]])
              for c in ("argmax", "bayes_raw", "bayes")}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
  """True logits z; the files hold 3 z (over-confident by a known factor)."""
  d = tmp_path_factory.mktemp("syn")
  rng = np.random.default_rng(0)
  k, n = 6, 6000
  z = (1.5 * rng.normal(size=(n, k))).astype(np.float32)
  y = np.array([rng.choice(k, p=p) for p in softmax(z.astype(np.float64))])
  c = costs.random_cost(k, seed=3)
  c[2, 4] = c[5, 0] = 25.0
  np.savetxt(d / "c.csv", c, delimiter=",")
  np.savez(d / "val.npz", logits=3 * z[:3000], y=y[:3000])
  np.savez(d / "test.npz", logits=3 * z[3000:], y=y[3000:])
  np.savez(d / "test_nolabel.npz", logits=3 * z[3000:])
  return d, z, y, c


# --------------------------------------------------------------------------- #
# Known miscalibration.
# --------------------------------------------------------------------------- #


def test_recovers_temperature_and_bayes_lowers_cost(tmp_path, synthetic):
  d, z, y, c = synthetic
  args = args_for(tmp_path, d / "val.npz", d / "test.npz", d / "c.csv", calibration="temperature",
                  alpha=1.0, abstain_cost=1.5)
  summary = decide.run(args)
  t = summary["calibration"]["temperature"]
  assert abs(t - 3.0) < 0.25
  names = [str(i) for i in range(6)]
  df, pred = read_predictions(tmp_path / "out", names)
  yt, zt = y[3000:], 3 * z[3000:].astype(np.float64)
  # Oracle decisions from the fitted T.
  risk = softmax(zt / t) @ c
  np.testing.assert_array_equal(pred["argmax"], zt.argmax(-1))
  bayes = risk.argmin(-1)
  abstain = risk.min(-1) > 1.5
  assert abstain.any() and not abstain.all()
  np.testing.assert_array_equal(pred["bayes"], np.where(abstain, -1, bayes))
  # expected_cost is that of the decision made: the abstention cost where it abstains.
  np.testing.assert_allclose(df["expected_cost"].astype(float),
                             np.where(abstain, 1.5, risk.min(-1)), rtol=1e-4, atol=1e-5)
  # Bayes decoding beats argmax on the known-miscalibrated outputs.
  arg_cost = c[yt, pred["argmax"]].mean()
  bayes_cost = c[yt, bayes].mean()
  assert bayes_cost < 0.9 * arg_cost
  rep = summary["test"]["bayes_calibrated"]
  assert rep["label"].startswith("Bayes after temperature scaling (T = ")
  assert rep["mean_cost"] == pytest.approx(bayes_cost, rel=1e-6)
  saving, lo, hi = rep["saving"]
  assert saving == pytest.approx(arg_cost - bayes_cost, rel=1e-6) and 0 < lo < saving < hi
  # Bayes on the raw (over-confident) outputs: its own row, from the raw softmax.
  raw = (softmax(zt) @ c).argmin(-1)
  np.testing.assert_array_equal(pred["bayes_raw"], raw)
  assert summary["test"]["bayes_raw"]["mean_cost"] == pytest.approx(c[yt, raw].mean(), rel=1e-6)
  # Abstention: coverage, cost on decided rows, and cost with each abstention charged 1.5.
  ab = summary["test"]["bayes_abstain"]
  decided = ~abstain
  assert ab["coverage"] == pytest.approx(decided.mean())
  assert ab["cost_on_decided"] == pytest.approx(c[yt, bayes][decided].mean(), rel=1e-6)
  assert ab["mean_cost"] == pytest.approx(np.where(abstain, 1.5, c[yt, bayes]).mean(), rel=1e-6)
  assert ab["accuracy_on_decided"] == pytest.approx((bayes == yt)[decided].mean())
  raw_risk = softmax(zt) @ c  # the same rule on the raw outputs, its own row
  raw_ab = raw_risk.min(-1) > 1.5
  rab = summary["test"]["bayes_raw_abstain"]
  assert rab["coverage"] == pytest.approx(1 - raw_ab.mean())
  assert rab["mean_cost"] == pytest.approx(np.where(raw_ab, 1.5, c[yt, raw]).mean(), rel=1e-6)
  harm = np.where(abstain, 1.5, c[yt, bayes]) - np.where(raw_ab, 1.5, c[yt, raw])
  assert summary["calibration_minus_raw"][0] == pytest.approx(harm.mean(), rel=1e-5)
  assert summary["verdict"].startswith("**Verdict:** Bayes after temperature scaling")
  assert "reliably lowers the mean test cost against argmax" in summary["verdict"]
  # Sets: the oracle rule at the reported threshold, and realized cost near/below alpha.
  thr = summary["sets"]["threshold"]
  sets = risk - risk.min(-1, keepdims=True) <= thr
  assert list(df["set"]) == ["|".join(np.array(names)[s]) for s in sets]
  realized = np.where(sets, c[yt], np.inf).min(-1)
  assert realized.mean() == pytest.approx(summary["sets"]["realized_cost"], rel=1e-6)
  assert realized.mean() <= 1.0 + 3 * realized.std() / np.sqrt(len(yt))
  assert 1 < sets.sum(-1).mean() < 6
  report = (tmp_path / "out" / "report.md").read_text()
  assert "realized set cost" in report
  # Accuracy only on the rows decided, never with abstentions counted as errors.
  assert "| accuracy on decided rows |" in report and "| accuracy |" not in report
  for row in ("argmax of the raw outputs", "Bayes on the raw outputs",
              "Bayes after temperature scaling (T = ",
              ", abstaining where the expected cost exceeds 1.5 |", summary["verdict"],
              f"Abstained on {abstain.sum()} of 3000 test rows"):
    assert row in report
  assert "Chosen: **temperature scaling (T = " in report and "as asked (--calibration " in report
  assert os.path.getsize(tmp_path / "out" / "expected_cost.png") > 5000


def test_auto_calibration_reports_all_three_and_test_labels_are_optional(tmp_path, synthetic):
  d, z, y, c = synthetic
  summary = decide.run(args_for(tmp_path, d / "val.npz", d / "test_nolabel.npz", d / "c.csv"))
  cal = summary["calibration"]
  for key in ("heldout_nll_temperature", "heldout_nll_vector", "heldout_nll_uncalibrated"):
    assert np.isfinite(cal[key])
  # Both calibrations repair the over-confidence on held-out data; the simpler one is kept.
  assert cal["heldout_nll_temperature"] < cal["heldout_nll_uncalibrated"] - 0.3
  assert cal["chosen"] == "temperature"
  df = pd.read_csv(tmp_path / "out" / "predictions.csv")
  assert list(df.columns) == ["argmax", "bayes_raw", "bayes", "expected_cost"]
  assert len(df) == 3000
  report = (tmp_path / "out" / "report.md").read_text()
  assert "## Test cost" not in report and "validation (in-sample" in report
  assert "**Verdict:** none possible: the test file has no labels" in report


def write_outputs_files(d, name, logits, y):
  np.savez(d / f"{name}.npz", logits=logits.astype(np.float32), y=y)
  return d / f"{name}.npz"


@pytest.mark.parametrize("case", ["none", "temperature", "vector"])
def test_auto_chooses_the_calibration_that_helps_and_says_why(tmp_path, case):
  """Constructed outputs: calibrated (none), 3x over-confident (temperature), per-class scale
  and shift (vector). The generating model is known, so the right choice is too."""
  rng = np.random.default_rng(7)
  k, n = 4, 2400
  z = 1.5 * rng.normal(size=(n, k))
  y = (softmax(z).cumsum(-1) > rng.random((n, 1))).argmax(-1)
  scale, shift = np.array([1.0, 0.4, 2.5, 1.0]), np.array([1.5, -1.0, 0.0, 0.5])
  shown = {"none": z, "temperature": 3 * z, "vector": z * scale + shift}[case]
  val = write_outputs_files(tmp_path, "val", shown[:1200], y[:1200])
  test = write_outputs_files(tmp_path, "test", shown[1200:], y[1200:])
  np.savetxt(tmp_path / "c.csv", costs.asymmetric_cost(k), delimiter=",")
  summary = decide.run(args_for(tmp_path, val, test, tmp_path / "c.csv"))
  cal = summary["calibration"]
  assert cal["chosen"] == case
  held = {m: cal[f"heldout_nll_{key}"] for m, key in
          (("none", "uncalibrated"), ("temperature", "temperature"), ("vector", "vector"))}
  report = (tmp_path / "out" / "report.md").read_text()
  label = {"none": "no calibration", "temperature": "temperature scaling (T = ",
           "vector": "vector scaling"}[case]
  assert f"Chosen: **{label}" in report
  for m, v in held.items():  # the numbers behind the choice are in the sentence
    assert f"{calibration.METHOD_LABELS[m].split(' (')[0]} {v:.4f}" in report
  if case != "none":
    assert held[case] < held["none"] - 0.1
  if case == "none":
    # The raw row and the "after no calibration" row hold the same decisions, and say so.
    assert "Bayes after no calibration (the same decisions as the raw row)" in report
    t = summary["test"]
    assert t["bayes_raw"]["mean_cost"] == t["bayes_calibrated"]["mean_cost"]


def test_choose_calibration_one_standard_error_rule():
  rng = np.random.default_rng(0)
  base = rng.exponential(1.0, 500)
  noise = rng.normal(0, 0.2, 500)
  noise -= noise.mean()
  # Temperature is best by less than one standard error of the paired difference: keep none.
  held = {"none": base, "temperature": base - 0.002 + noise, "vector": base + 0.5}
  chosen, reason = calibration.choose(held)
  se = np.std(held["none"] - held["temperature"], ddof=1) / np.sqrt(500)
  assert (held["none"].mean() - held["temperature"].mean()) < se
  assert chosen == "none"
  assert reason.startswith(f"its held-out NLL {base.mean():.4f} is within one standard error "
                           f"({se:.4f}) of the lowest, temperature scaling's")
  # Better by many standard errors: chosen, with the plain reason.
  held["temperature"] = base - 0.2 + 0.01 * noise
  chosen, reason = calibration.choose(held)
  assert chosen == "temperature" and reason.startswith("it has the lowest held-out NLL (")


def _temperature_fit(z, y):
  """Oracle: the NLL-minimising temperature by scipy's bounded scalar search."""
  from scipy import optimize, special

  def mean_nll(log_t):
    a = z / np.exp(log_t)
    return -np.mean(special.log_softmax(a, axis=-1)[np.arange(len(y)), y])

  return float(np.exp(optimize.minimize_scalar(mean_nll, bounds=(-4, 4), method="bounded",
                                               options={"xatol": 1e-7}).x))


def test_auto_calibration_scores_each_half_under_the_fit_on_the_other_half():
  # Two halves that want different temperatures (1 and 4): a held-out NLL scores each half
  # under the OTHER half's temperature, which an in-sample score (a swapped fold) does not.
  rng = np.random.default_rng(5)
  n, k = 400, 3
  y = rng.integers(0, k, n)
  z = 3.0 * np.eye(k)[y] + rng.normal(size=(n, k))
  fold = np.zeros(n, bool)
  fold[np.random.default_rng(11).permutation(n)[: n // 2]] = True  # the documented split
  z = np.where(fold[:, None], z, 4.0 * z).astype(np.float32)
  _, _, info = calibration.calibrate(z, y, method="auto", seed=11)

  from scipy import special

  held, own = np.empty(n), np.empty(n)
  for fit_on in (fold, ~fold):
    t = _temperature_fit(z[fit_on].astype(np.float64), y[fit_on])
    nll = -special.log_softmax(z.astype(np.float64) / t, axis=-1)[np.arange(n), y]
    held[~fit_on], own[fit_on] = nll[~fit_on], nll[fit_on]
  np.testing.assert_allclose(info["heldout_nll_temperature"], held.mean(), rtol=2e-3)
  assert held.mean() > 1.2 * own.mean()  # the oracle separates held-out from in-sample
  np.testing.assert_allclose(info["nll_uncalibrated"],
                             -special.log_softmax(z, axis=-1)[np.arange(n), y].mean(),
                             rtol=1e-5)


def test_standalone_entry_point_answers_usage_errors_in_one_line(capsys):
  with pytest.raises(SystemExit) as e:
    decide.main(["--val", "v.npz", "--no-such-flag"])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith("error: costjax decide: ")


def test_verdict_sentences():
  args = ("Bayes after vector scaling", 400, 1000, 0)
  assert "reliably lowers" in decide.verdict(args[0], (0.2, 0.1, 0.3), *args[1:])
  v = decide.verdict(args[0], (-0.2, -0.3, -0.1), *args[1:])
  assert "raises the mean test cost against argmax, by 0.2 per example" in v
  assert v.endswith("; keep argmax.")
  v = decide.verdict(args[0], (0.05, -0.1, 0.2), *args[1:])
  assert "does not reliably lower" in v and "[-0.1, 0.2]" in v and v.endswith("includes 0.")
  assert "bootstrap over the 400 test rows, 1000 resamples, seed 0" in v


def test_harmful_calibration_is_shown_and_warned(tmp_path, synthetic):
  """Validation 3x over-confident, test calibrated: temperature scaling fitted on validation
  flattens the test outputs, so Bayes on the raw outputs wins and the report must say so."""
  d, z, y, c = synthetic
  np.savez(tmp_path / "shifted_test.npz", logits=z[3000:], y=y[3000:])
  summary = decide.run(args_for(tmp_path, d / "val.npz", tmp_path / "shifted_test.npz",
                                d / "c.csv"))
  assert summary["calibration"]["chosen"] == "temperature"
  t = summary["test"]
  assert t["bayes_calibrated"]["mean_cost"] > t["bayes_raw"]["mean_cost"]
  mean, lo, hi = summary["calibration_minus_raw"]
  assert mean == pytest.approx(t["bayes_calibrated"]["mean_cost"] - t["bayes_raw"]["mean_cost"])
  assert lo > 0
  report = (tmp_path / "out" / "report.md").read_text()
  assert "**Warning:** on test, temperature scaling (T = " in report
  assert "made the Bayes decisions costlier than on the raw outputs" in report
  assert "Consider --calibration none." in report


def _breast_cancer_files(d, seed):
  from sklearn.datasets import load_breast_cancer
  from sklearn.linear_model import LogisticRegression
  from sklearn.model_selection import train_test_split
  from sklearn.pipeline import make_pipeline
  from sklearn.preprocessing import StandardScaler

  x, y = load_breast_cancer(return_X_y=True)  # 0 = malignant, 1 = benign
  x_tr, x_rest, y_tr, y_rest = train_test_split(x, y, test_size=0.6, random_state=seed,
                                                stratify=y)
  x_va, x_te, y_va, y_te = train_test_split(x_rest, y_rest, test_size=0.5, random_state=seed,
                                            stratify=y_rest)
  model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x_tr, y_tr)
  for name, xs, ys in (("val", x_va, y_va), ("test", x_te, y_te)):
    df = pd.DataFrame(model.predict_proba(xs), columns=["malignant", "benign"])
    df["label"] = np.array(["malignant", "benign"])[ys]
    df.to_csv(d / f"{name}.csv", index=False)
  # Calling a malignant tumour benign costs 10; the reverse 1.
  (d / "cost.csv").write_text(",malignant,benign\nmalignant,0,10\nbenign,1,0\n")
  return d / "val.csv", d / "test.csv", d / "cost.csv"


@pytest.mark.parametrize("seed", [0, 5])  # splits where auto picks temperature / vector
def test_breast_cancer_auto_does_not_lose_to_no_calibration(tmp_path, seed):
  val, test, cost = _breast_cancer_files(tmp_path, seed)
  auto = decide.run(args_for(tmp_path, val, test, cost))
  assert auto["calibration"]["chosen"] != "none"
  none = decide.run(args_for(tmp_path, val, test, cost, calibration="none"))
  assert none["calibration"]["chosen"] == "none"
  # The raw row of the auto run is what --calibration none decides.
  assert auto["test"]["bayes_raw"]["mean_cost"] == none["test"]["bayes_calibrated"]["mean_cost"]
  mean, lo, hi = auto["calibration_minus_raw"]
  assert mean == pytest.approx(auto["test"]["bayes_calibrated"]["mean_cost"]
                               - none["test"]["bayes_calibrated"]["mean_cost"], abs=1e-6)
  assert lo <= 0  # any loss against --calibration none is within its interval's noise


# --------------------------------------------------------------------------- #
# A model costjax never trained, through the command line.
# --------------------------------------------------------------------------- #


@pytest.mark.slow
def test_sklearn_model_on_digits_csv_end_to_end(tmp_path):
  from sklearn.datasets import load_digits
  from sklearn.ensemble import RandomForestClassifier
  from sklearn.model_selection import train_test_split

  x, y = load_digits(return_X_y=True)
  x_tr, x_rest, y_tr, y_rest = train_test_split(x, y, test_size=0.6, random_state=0,
                                                stratify=y)
  x_va, x_te, y_va, y_te = train_test_split(x_rest, y_rest, test_size=0.5, random_state=0,
                                            stratify=y_rest)
  model = RandomForestClassifier(n_estimators=30, max_depth=6, random_state=0).fit(x_tr, y_tr)
  order = [3, 7, 0, 9, 1, 5, 2, 8, 4, 6]  # CSV columns in any order, matched by name
  for name, xs, ys in (("val", x_va, y_va), ("test", x_te, y_te)):
    p = model.predict_proba(xs)
    df = pd.DataFrame({str(j): p[:, j] for j in order})
    df["label"] = ys
    df.to_csv(tmp_path / f"{name}.csv", index=False)
  c = costs.asymmetric_cost(10)
  pd.DataFrame(c, index=range(10), columns=range(10)).to_csv(tmp_path / "cost.csv")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [sys.executable, "-m", "costjax.cli", "decide", "--val", tmp_path / "val.csv", "--test",
       tmp_path / "test.csv", "--cost", tmp_path / "cost.csv", "--bootstrap", "500",
       "--out", tmp_path / "out"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  df, pred = read_predictions(tmp_path / "out", [str(i) for i in range(10)])
  np.testing.assert_array_equal(pred["argmax"], model.predict_proba(x_te).argmax(-1))
  arg_cost = c[y_te, pred["argmax"]].mean()
  bayes_cost = c[y_te, pred["bayes"]].mean()
  assert bayes_cost < arg_cost
  np.testing.assert_array_equal(df["label"].astype(int), y_te)


# --------------------------------------------------------------------------- #
# Bad input: one line, exit 2, nothing written.
# --------------------------------------------------------------------------- #


def make_bad(d, kind):
  """Writes (val, test, cost) for one kind of bad input; returns their paths."""
  rng = np.random.default_rng(1)
  z = rng.normal(size=(40, 3))
  y = np.arange(40) % 3
  p = softmax(z)
  cost = d / "c.csv"
  np.savetxt(cost, 1 - np.eye(3), delimiter=",")
  val, test = d / "val.npz", d / "test.npz"
  np.savez(val, logits=z, y=y)
  np.savez(test, logits=z)
  if kind == "val without labels":
    np.savez(val, logits=z)
  elif kind == "val csv without labels":
    val = d / "val.csv"
    pd.DataFrame(p, columns=["0", "1", "2"]).to_csv(val, index=False)
  elif kind == "K mismatch":
    np.savez(test, logits=rng.normal(size=(40, 4)))
  elif kind == "columns not in header":
    (d / "c.csv").write_text("cat,dog,emu\n0,1,1\n1,0,1\n1,1,0\n")
    val = d / "val.csv"
    pd.DataFrame({"cat": p[:, 0], "dog": p[:, 1], "eel": p[:, 2], "label": "cat"}).to_csv(
        val, index=False)
  elif kind == "probs not summing to 1":
    q = p.copy()
    q[7] *= 1.01
    np.savez(val, probs=q, y=y)
  elif kind == "negative probability":
    q = p.copy()
    q[2, 0] -= 2 * q[2, 0]
    q[2, 1] += 2 * p[2, 0]
    np.savez(val, probs=q, y=y)
  elif kind == "NaN in logits":
    z2 = z.copy()
    z2[5, 1] = np.nan
    np.savez(test, logits=z2)
  elif kind == "inf in probs":
    q = p.copy()
    q[3, 2] = np.inf
    np.savez(val, probs=q, y=y)
  elif kind == "NaN in cost":
    (d / "c.csv").write_text("0,1,nan\n1,0,1\n1,1,0\n")
  elif kind == "pickled npz":
    np.savez(val, logits=np.array([object()] * 3, dtype=object), y=y[:3])
  elif kind == "label out of range":
    np.savez(val, logits=z, y=np.where(y == 2, 3, y))
  elif kind == "label not in header":
    (d / "c.csv").write_text("cat,dog,emu\n0,1,1\n1,0,1\n1,1,0\n")
    val = d / "val.csv"
    df = pd.DataFrame(p, columns=["dog", "cat", "emu"])
    df["label"] = np.array(["cat", "dog", "yak"])[y]
    df.to_csv(val, index=False)
  elif kind == "both logits and probs":
    np.savez(val, logits=z, probs=p, y=y)
  elif kind == "csv logits without flag":
    val = d / "val.csv"
    df = pd.DataFrame(z, columns=["0", "1", "2"])
    df["label"] = y
    df.to_csv(val, index=False)
  elif kind in ("stray id column", "stray score column", "stray column with header"):
    val = d / "val.csv"
    df = pd.DataFrame(p, columns=["0", "1", "2"])
    if kind == "stray column with header":
      (d / "c.csv").write_text("cat,dog,emu\n0,1,1\n1,0,1\n1,1,0\n")
      df.columns = ["cat", "dog", "emu"]
      df["id"] = np.arange(40)
      df["label"] = np.array(["cat", "dog", "emu"])[y]
    else:
      df["id" if kind == "stray id column" else "score"] = np.arange(40) * 0.01 + 7
      df["label"] = y
    df.to_csv(val, index=False)
  elif kind == "npz probs saved as logits":
    np.savez(val, logits=p, y=y)
  else:
    raise AssertionError(kind)
  return val, test, cost


BAD = {
    "val without labels": r"--val .*val.npz.*has no labels",
    "val csv without labels": r"--val .*val.csv.*has no labels",
    "K mismatch": r"--test .*test.npz.*4 classes .* cost matrix .* is 3 x 3",
    "columns not in header": r"--val .*val.csv.*class columns .* do not match .*missing \['emu'\]"
                             r".*not in the cost matrix \['eel'\]",
    "probs not summing to 1": r"--val .*must sum to 1 per row \(tolerance 0.001\); row 7 sums "
                              r"to 1.01",
    "negative probability": r"--val .*probs\[2, 0\] = -.* is negative",
    "NaN in logits": r"--test .*logits\[5, 1\] = nan",
    "inf in probs": r"--val .*probs\[3, 2\] = inf",
    "NaN in cost": r"--cost .*c.csv.*C\[0, 2\] = nan",
    "pickled npz": r"--val .*val.npz.*pickled",
    "label out of range": r"--val .*labels must lie in 0 \.\. 2 .*y\[2\] = 3",
    "label not in header": r"--val .*\['yak'\] .* not classes of --cost header",
    "both logits and probs": r"--val .*both 'logits' and 'probs'",
    "csv logits without flag": r"val.csv.* is negative\. .*pass --csv-values logits",
    "stray id column": r"--val .*val.csv.*column\(s\) \['id'\] do not look like classes \(4 "
                       r"columns .* is 3 x 3\); drop them, or pass an id column with --id-column",
    "stray score column": r"--val .*column\(s\) \['score'\] do not look like classes",
    "stray column with header": r"--val .*column\(s\) \['id'\] are not classes of --cost .*"
                                r"\['cat', 'dog', 'emu'\]; drop them, or pass .*--id-column",
    "npz probs saved as logits": r"--val .*val.npz.*these logits look like probabilities \(every "
                                 r"value in \[0, 1\] and every row sums to 1 within 0.001\).*"
                                 r"save them as an array 'probs' instead",
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_input_is_rejected_before_writing(tmp_path, kind):
  val, test, cost = make_bad(tmp_path, kind)
  with pytest.raises(UserInputError, match=BAD[kind]) as e:
    decide.run(args_for(tmp_path, val, test, cost))
  assert "\n" not in str(e.value)
  assert not (tmp_path / "out").exists()


def test_bad_input_cli_exit_status_and_one_line(tmp_path):
  val, test, cost = make_bad(tmp_path, "probs not summing to 1")
  proc = subprocess.run(
      [sys.executable, "-m", "costjax.cli.decide", "--val", val, "--test", test, "--cost", cost,
       "--out", tmp_path / "out"], cwd=ROOT, capture_output=True, text=True, timeout=120,
      check=False)
  assert proc.returncode == 2
  assert proc.stderr.startswith("error: --val") and proc.stderr.count("\n") == 1
  assert not (tmp_path / "out").exists()


def test_csv_probabilities_given_as_logits_are_refused(tmp_path):
  val, test, cost = make_bad(tmp_path, "stray id column")
  df = pd.read_csv(val).drop(columns=["id"])
  df.to_csv(val, index=False)
  with pytest.raises(UserInputError, match=r"--val .*val.csv.*these logits look like "
                     r"probabilities .*drop --csv-values logits \(CSV values are probabilities"):
    decide.run(args_for(tmp_path, val, test, cost, csv_values="logits"))
  assert not (tmp_path / "out").exists()


def test_id_column_passes_through_to_predictions(tmp_path):
  rng = np.random.default_rng(4)
  z = rng.normal(size=(60, 3))
  y = np.arange(60) % 3
  np.savetxt(tmp_path / "c.csv", 1 - np.eye(3), delimiter=",")
  ids = np.array([f"patient-{i:03d}" for i in rng.permutation(60)])
  df = pd.DataFrame(softmax(z), columns=["0", "1", "2"])
  df.insert(0, "record", ids)  # any position, any name
  df["label"] = y
  df.to_csv(tmp_path / "v.csv", index=False)
  decide.run(args_for(tmp_path, tmp_path / "v.csv", tmp_path / "v.csv", tmp_path / "c.csv",
                      id_column="record", calibration="none"))  # none: nothing to compile
  out = pd.read_csv(tmp_path / "out" / "predictions.csv", dtype=str)
  assert list(out.columns)[0] == "record"
  np.testing.assert_array_equal(out["record"], ids)
  np.testing.assert_array_equal(out["argmax"].astype(int), z.argmax(-1))
  # .npz: a 1-D array of that name.
  np.savez(tmp_path / "t.npz", logits=z, record=np.arange(60) * 7)
  decide.run(args_for(tmp_path, tmp_path / "v.csv", tmp_path / "t.npz", tmp_path / "c.csv",
                      id_column="record", out=tmp_path / "out2", calibration="none"))
  out = pd.read_csv(tmp_path / "out2" / "predictions.csv")
  np.testing.assert_array_equal(out["record"], np.arange(60) * 7)
  # Missing in the test file, or of the wrong shape: one-line errors, nothing written.
  for test, msg in ((tmp_path / "t.npz", r"--test .*t.npz.*--id-column 'rid' is not in the "
                     r"test file"), (tmp_path / "t2.npz", r"--test .*the id 'rid' must be 1-D "
                     r"with one per row; got shape \(59,\) for 60 rows")):
    np.savez(tmp_path / "t2.npz", logits=z, rid=np.arange(59))
    np.savez(tmp_path / "v.npz", logits=z, y=y)  # the id is not needed in --val
    with pytest.raises(UserInputError, match=msg):
      decide.run(args_for(tmp_path, tmp_path / "v.npz", test, tmp_path / "c.csv",
                          id_column="rid", out=tmp_path / "out3"))
  assert not (tmp_path / "out3").exists()


def test_bad_flags(tmp_path):
  val, test, cost = make_bad(tmp_path, "NaN in logits")
  for kw, msg in (({"alpha": -1}, "--alpha must be a positive"),
                  ({"abstain_cost": "nan"}, "--abstain-cost must be a non-negative")):
    with pytest.raises(UserInputError, match=msg):
      decide.run(args_for(tmp_path, val, test, cost, **kw))
  assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- #
# Pieces.
# --------------------------------------------------------------------------- #


def test_probabilities_and_csv_columns_load_in_class_order(tmp_path):
  rng = np.random.default_rng(2)
  z = rng.normal(size=(30, 3))
  p = softmax(z)
  (tmp_path / "c.csv").write_text("b,c,a\n0,1,2\n1,0,1\n4,1,0\n")
  df = pd.DataFrame({"a": p[:, 2], "b": p[:, 0], "c": p[:, 1]})
  df["label"] = np.array(["b", "c", "a"])[np.arange(30) % 3]
  df.to_csv(tmp_path / "v.csv", index=False)
  np.savez(tmp_path / "t.npz", probs=p)
  inp = decide.load_inputs(str(tmp_path / "v.csv"), str(tmp_path / "t.npz"),
                           str(tmp_path / "c.csv"))
  assert inp.class_names == ("b", "c", "a")
  logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
  np.testing.assert_allclose(inp.val.logits, logp, atol=1e-5)  # columns reordered to b, c, a
  np.testing.assert_allclose(inp.test.logits, logp, atol=1e-5)
  np.testing.assert_array_equal(inp.val.labels, np.arange(30) % 3)
  assert inp.test.labels is None
  # Without a header, CSV class columns are taken in sorted order and labels matched to them.
  np.savetxt(tmp_path / "n.csv", [[0, 1, 2], [1, 0, 1], [4, 1, 0]], delimiter=",")
  inp = decide.load_inputs(str(tmp_path / "v.csv"), str(tmp_path / "t.npz"),
                           str(tmp_path / "n.csv"))
  assert inp.class_names == ("a", "b", "c")
  np.testing.assert_allclose(inp.val.logits, logp[:, [2, 0, 1]], atol=1e-5)
  np.testing.assert_array_equal(inp.val.labels, [1, 2, 0] * 10)


def test_paired_bootstrap_matches_normal_approximation():
  rng = np.random.default_rng(0)
  a = rng.exponential(2.0, 4000)
  b = a - rng.normal(0.3, 1.0, 4000)  # paired: b shares a's noise
  mean, lo, hi = stats.paired_bootstrap(a, b, resamples=2000, seed=0)
  d = a - b
  assert mean == pytest.approx(d.mean())
  half = 1.96 * d.std() / np.sqrt(len(d))
  assert lo == pytest.approx(d.mean() - half, abs=0.15 * half)
  assert hi == pytest.approx(d.mean() + half, abs=0.15 * half)
  # An unpaired interval would be far wider: the pairing is what the test is about.
  assert hi - lo < 0.5 * 2 * 1.96 * np.sqrt((a.var() + b.var()) / len(a))


def test_csv_logits_flag_and_builtin_cost(tmp_path):
  rng = np.random.default_rng(3)
  z = 5 * rng.normal(size=(12, 4))
  df = pd.DataFrame(z, columns=["10", "2", "1", "0"])  # integer names: numeric order
  df["label"] = [0, 1, 2, 10] * 3
  df.to_csv(tmp_path / "v.csv", index=False)
  inp = decide.load_inputs(str(tmp_path / "v.csv"), str(tmp_path / "v.csv"), "asymmetric",
                           csv_values="logits")
  assert inp.class_names == ("0", "1", "2", "10")
  np.testing.assert_allclose(inp.val.logits, z[:, [3, 2, 1, 0]], rtol=1e-6)
  np.testing.assert_array_equal(inp.val.labels, [0, 1, 2, 3] * 3)
  np.testing.assert_array_equal(inp.cost, costs.asymmetric_cost(4))
