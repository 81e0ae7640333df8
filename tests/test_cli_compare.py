"""Tests of ``costjax compare``: an end-to-end digits run, bad input, and the statistics.

The end-to-end run checks what separates a working harness from a broken one:
cross-entropy learns digits (accuracy > 0.9), Bayes decoding lowers the asymmetric cost
against argmax, the per-epoch validation curve computed inside the compiled training
loop ends at the validation cost found after training, every number in the report
equals results.json and results.csv, p-values equal the corrected resampled t-test written
with SciPy's t on the per-seed costs, and the verdict follows its stated rule.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from scipy.stats import t as student_t
from scipy.stats import wilcoxon

from costjax.cli import main as cli_main
from costjax.cli import scoring, stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli_command() -> list[str]:
  """The installed console script when present (it is, after pip install -e .), else -m."""
  script = os.path.join(os.path.dirname(sys.executable), "costjax")
  return [script] if os.path.exists(script) else [sys.executable, "-m", "costjax.cli"]


def run_cli(*args, devices=1, timeout=600):
  env = dict(os.environ)
  flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", ""))
  if devices > 1:
    flags += f" --xla_force_host_platform_device_count={devices}"
  env["XLA_FLAGS"] = flags.strip()
  env["JAX_PLATFORMS"] = "cpu"
  return subprocess.run([*cli_command(), *map(str, args)], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout, check=False)


# --------------------------------------------------------------------------- #
# End to end on digits.
# --------------------------------------------------------------------------- #

EPOCHS = 15
SEEDS = 3


@pytest.fixture(scope="module")
def digits_run(run_once):
  """(output folder, the command's stdout, results.json): run once per session (conftest's
  run_once), however xdist spreads this module's tests over its workers."""
  def make(folder):
    proc = run_cli("compare", "--seeds", SEEDS, "--epochs", EPOCHS, "--lrs", "3e-3,1e-2",
                   "--arms", "ce,ce_ec,wce", "--cost", "asymmetric", "--out", folder / "digits")
    assert proc.returncode == 0, \
        f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    (folder / "stdout.txt").write_text(proc.stdout)

  folder = run_once("compare-digits", make)
  out = folder / "digits"
  res = json.loads((out / "results.json").read_text())
  return out, (folder / "stdout.txt").read_text(), res


def row(res, arm, decoding):
  return next(r for r in res["rows"] if r["arm"] == arm and r["decoding"] == decoding)


@pytest.mark.slow
def test_cross_entropy_learns_and_bayes_lowers_the_asymmetric_cost(digits_run):
  _, _, res = digits_run
  ce_arg, ce_bayes = row(res, "ce", "argmax"), row(res, "ce", "bayes_t")
  assert ce_arg["test_acc_mean"] > 0.9
  # The six confusions that cost 20 are what Bayes decoding avoids.
  assert ce_bayes["test_cost_mean"] < ce_arg["test_cost_mean"]
  assert {(r["arm"], r["decoding"]) for r in res["rows"]} == {
      (a, d) for a in ("ce", "ce_ec", "wce") for d in scoring.DECODINGS} | {("constant", "none")}
  # Every model beats predicting one class for every row on digits.
  const = row(res, "constant", "none")
  assert all(r["test_cost_mean"] < const["test_cost_mean"] for r in res["rows"] if r is not const)
  for r in res["rows"]:
    assert len(r["test_cost"]) == SEEDS and not r["diverged"]
    assert r["test_cost_mean"] == pytest.approx(np.mean(r["test_cost"]), abs=1e-12)


@pytest.mark.slow
def test_validation_curve_ends_at_the_selected_validation_cost(digits_run):
  _, _, res = digits_run
  for arm in res["arms"]:
    curve = arm["val_cost_curve_mean"]["asymmetric"]
    assert len(curve) == EPOCHS
    # Computed inside the training scan after the last epoch == computed after training.
    assert curve[-1] == pytest.approx(row(res, arm["arm"], "argmax")["val_cost"], abs=1e-6)
    assert curve[0] > curve[-1]  # training helps


@pytest.mark.slow
def corrected_p(a, b, n_train, n_test):
  """Nadeau & Bengio's corrected resampled t-test, written out with SciPy's t."""
  d = np.subtract(a, b)
  if np.all(d == 0):
    return 1.0
  se = math.sqrt((1 / len(d) + n_test / n_train) * d.var(ddof=1))
  return 2 * student_t.sf(abs(d.mean() / se), len(d) - 1)


@pytest.mark.slow
def test_p_values_and_intervals_match_scipy(digits_run):
  _, _, res = digits_run
  n_train, n_test = res["split"]["train"], res["split"]["test"]
  ref_a, ref_b = row(res, "ce", "argmax"), row(res, "ce", "bayes_t")
  for r in res["rows"]:
    for ref, key in ((ref_a, "argmax"), (ref_b, "bayes")):
      want = corrected_p(r["test_cost"], ref["test_cost"], n_train, n_test)
      assert r[f"p_vs_ce_{key}"] == pytest.approx(want, rel=1e-9)
      probs = [r[f"prob_{k}_vs_ce_{key}"] for k in ("cheaper", "equivalent", "dearer")]
      assert sum(probs) == pytest.approx(1.0) and r["rope"] == res["verdict"]["rope"]
    x = np.asarray(r["test_cost"])
    half = student_t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    assert r["test_cost_ci95"][1] == pytest.approx(x.mean() + half, rel=1e-9)
    assert r["test_cost_ci95"][0] == pytest.approx(max(0.0, x.mean() - half), abs=1e-12)


def _table_rows(report: str) -> dict[tuple[str, str], list[str]]:
  out = {}
  for line in report.splitlines():
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    decodings = ("argmax", "Bayes (temperature)", "Bayes (vector scaling)", "none")
    if len(cells) == 11 and cells[1] in decodings:  # not a 10-class matrix's rows
      out[(cells[0], cells[1])] = cells
  return out


@pytest.mark.slow
def test_report_numbers_equal_results_json_and_csv(digits_run):
  out, _, res = digits_run
  report = (out / "report.md").read_text()
  table = _table_rows(report)
  assert len(table) == len(res["rows"]) == 10
  for r in res["rows"]:
    cells = table[(r["label"], r["decoding_label"])]
    assert cells[3] == f"{r['val_cost']:.4f}"
    assert cells[4] == f"{r['test_cost_mean']:.4f} ± {r['test_cost_std']:.4f}"
    lo, hi = r["test_cost_ci95"]
    assert cells[5] == f"[{lo:.4f}, {hi:.4f}]"
    assert cells[6] == f"{r['test_acc_mean']:.3f}"
    assert cells[7] == f"{r['test_savings_mean']:.3f}"
  with open(out / "results.csv", newline="") as f:
    csv_rows = list(csv.DictReader(f))
  assert len(csv_rows) == len(res["rows"])
  for c, r in zip(csv_rows, res["rows"], strict=True):
    assert (c["arm"], c["decoding"]) == (r["arm"], r["decoding"])
    assert float(c["test_cost_mean"]) == r["test_cost_mean"]
    assert float(c["p_vs_ce_bayes"]) == r["p_vs_ce_bayes"]
    assert float(c["prob_cheaper_vs_ce_bayes"]) == r["prob_cheaper_vs_ce_bayes"]
  for name in ("val_curves.png", "test_cost.png", "confusion.png"):
    assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"]({name})" in report


@pytest.mark.slow
def test_verdict_follows_its_rule_and_agrees_with_the_table(digits_run):
  out, _, res = digits_run
  v = res["verdict"]
  assert res["verdicts"] == [v]
  rows = res["rows"]
  models = [r for r in rows if r["arm"] != "constant"]
  pick = min(models, key=lambda r: r["val_cost"])  # chosen on validation, never on test
  assert (v["pick"]["arm"], v["pick"]["decoding"]) == (pick["arm"], pick["decoding"])
  # Digits has signal: the constant is never the challenger here.
  assert not v["no_signal"]
  n_train, n_test = res["split"]["train"], res["split"]["test"]
  bases = [row(res, "ce", "argmax"), row(res, "ce", "bayes_t")]
  others = [b for b in bases if b is not pick]
  raw = [corrected_p(pick["test_cost"], b["test_cost"], n_train, n_test) for b in others]
  holm = [min(1.0, max((len(raw) - i) * p for i, p in enumerate(sorted(raw)) if p <= q))
          for q in raw]
  assert [c["holm_p"] for c in v["comparisons"]] == pytest.approx(holm, rel=1e-9)
  beats = all(pick["test_cost_mean"] < b["test_cost_mean"] and h < 0.05 and c["prob_cheaper"]
              >= 0.95 for b, h, c in zip(others, holm, v["comparisons"], strict=True))
  equiv = any(c["prob_equivalent"] >= 0.95 for c in v["comparisons"])
  want = "adopt" if beats else "equivalent" if equiv else "undecided"
  assert v["outcome"] == want and v["adopted"] == (want == "adopt")
  # The default ROPE: 5% of cross-entropy + Bayes (T)'s mean validation cost.
  assert v["rope"] == pytest.approx(0.05 * row(res, "ce", "bayes_t")["val_cost"])
  report = (out / "report.md").read_text()
  verdict_section = report.split("## Verdict\n", 1)[1].split("\n## ", 1)[0]
  first = verdict_section.strip().splitlines()[0]
  assert first == f"**Outcome: {v['outcome']}.** {v['sentence']}"
  assert f"ROPE (region of practical equivalence): ±{v['rope']:.3g} cost units" in report
  # Every cost the sentence quotes with four decimals is a mean test cost of the table.
  means = {f"{r['test_cost_mean']:.4f}" for r in rows}
  quoted = re.findall(r"\b\d\.\d{4}\b", v["sentence"])
  assert quoted and set(quoted) <= means
  rec = row(res, v["recommended"]["arm"], v["recommended"]["decoding"])
  assert f"{rec['test_cost_mean']:.4f}" in v["sentence"]
  if v["outcome"] == "undecided":
    assert rec in bases and "use cross-entropy" in v["sentence"].lower()
    assert f"{v['detectable_difference']:.3g}" in v["sentence"] and "more rows" in report
  assert "Wilcoxon" not in report and "Best on validation" not in report


@pytest.mark.slow
def test_progress_is_one_line_per_arm_without_a_terminal(digits_run):
  _, stdout, _ = digits_run
  assert "\r" not in stdout
  lines = [ln for ln in stdout.splitlines() if re.match(r"\[\d/3\] ", ln)]
  assert len(lines) == 3 and lines[0].startswith("[1/3] cross-entropy:")


# --------------------------------------------------------------------------- #
# Flags and bad input: one line on stderr, exit status 2, nothing written.
# --------------------------------------------------------------------------- #


def test_help_shows_defaults_and_every_flag(capsys):
  with pytest.raises(SystemExit) as e:
    cli_main.main(["compare", "--help"])
  assert e.value.code == 0
  text = " ".join(capsys.readouterr().out.split())
  for flag in ("--data", "--label-column", "--features", "--ordinal", "--max-rows", "--cost",
               "--rope", "--arms", "--seeds", "--epochs", "--lrs", "--model", "--hidden",
               "--batch-size", "--weight-decay", "--out", "--progress", "--coordinator",
               "--num-processes", "--process-id"):
    assert flag in text, flag
  assert "(default: 1e-3,3e-3,1e-2)" in text and "(default: 10)" in text
  assert "(default: asymmetric)" in text


def _bad_cost_csv(tmp_path):
  p = tmp_path / "c3.csv"
  np.savetxt(p, np.ones((3, 3)) - np.eye(3), delimiter=",")
  return str(p)


@pytest.mark.parametrize("argv, message", [
    (["--seeds", "0"], "--seeds must be >= 1"),
    (["--lrs", "1e-3,abc"], "expected comma-separated numbers"),
    (["--lrs", "-1"], "positive"),
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--arms", "ce,bogus"], "unknown arm id(s) ['bogus']"),
    (["--arms", "emd"], "needs ordered classes"),
    (["--data", "no_such_file.csv"], "no_such_file.csv"),
    (["--cost", "no_such_cost"], "no_such_cost"),
    (["--cost", "BAD_CSV"], "10 x 10"),
    (["--data", "diamonds", "--model", "cnn", "--max-rows", "300"], "needs image data"),
    (["--coordinator", "127.0.0.1:1234"], "go together"),
    (["--coordinator", "nohost", "--num-processes", "2", "--process-id", "0"], "HOST:PORT"),
    (["--coordinator", "h:1", "--num-processes", "2", "--process-id", "2"], "--process-id"),
    (["--bogus-flag"], "unrecognized arguments: --bogus-flag"),
    (["--model", "rnn"], "invalid choice: 'rnn'"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, argv, message):
  out = tmp_path / "out"
  argv = [_bad_cost_csv(tmp_path) if a == "BAD_CSV" else a for a in argv]
  try:
    status = cli_main.main(["compare", *argv, "--out", str(out)])
  except SystemExit as e:  # argparse's own errors
    status = e.code
  err = capsys.readouterr().err
  assert status == 2
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), err
  assert message in lines[0]
  assert "Traceback" not in err
  assert not out.exists()


def test_console_script_reports_bad_input_with_status_2(tmp_path):
  proc = run_cli("compare", "--seeds", "-3", "--out", tmp_path / "o", timeout=120)
  assert proc.returncode == 2
  assert proc.stderr.strip() == "error: --seeds must be >= 1; got -3."
  assert proc.stdout == "" and not (tmp_path / "o").exists()


def test_out_must_be_a_directory(tmp_path, capsys):
  f = tmp_path / "file"
  f.write_text("x")
  assert cli_main.main(["compare", "--out", str(f)]) == 2
  assert "is not a directory" in capsys.readouterr().err
  assert f.read_text() == "x"


# --------------------------------------------------------------------------- #
# Statistics and the verdict rule on constructed rows.
# --------------------------------------------------------------------------- #


def test_holm_matches_a_hand_computed_example():
  # p sorted: 0.01 (x3 = 0.03), 0.02 (x2 = 0.04), 0.04 (x1 = 0.04, monotone), NaN ignored.
  assert stats.holm([0.04, 0.01, float("nan"), 0.02]) == pytest.approx(
      [0.04, 0.03, float("nan"), 0.04], nan_ok=True)
  assert stats.holm([0.6, 0.5]) == pytest.approx([1.0, 1.0])


def test_wilcoxon_edge_cases():
  # Kept for comparisons ACROSS tables (costjax study); compare itself uses the corrected
  # tests (tests/test_cli_stats.py).
  a = np.array([0.1, 0.2, 0.3, 0.4])
  assert stats.wilcoxon_p(a, a) == 1.0
  assert math.isnan(stats.wilcoxon_p(a, a + np.array([0, np.nan, 0, 0])))
  assert stats.wilcoxon_p(a, a + 0.05) == pytest.approx(wilcoxon(a, a + 0.05).pvalue)


@pytest.mark.slow  # compiles the scorer (three vector-scaling fits per model): ~15 s
def test_diverged_models_are_flagged_and_skipped_and_each_model_is_fitted_on_its_own_folds():
  import costjax as cj

  k, n = 3, 12
  rng = np.random.default_rng(1)
  y = rng.integers(0, k, size=(2, n)).astype(np.int32)
  # (M, G, S, N, K): 2 cost matrices, 2 grid points, 2 seeds; every model its own scale.
  scales = np.arange(1, 9, dtype=np.float32).reshape(2, 2, 2, 1, 1) / 2
  zv = (rng.normal(size=(2, 2, 2, n, k)) * scales).astype(np.float32)
  zt = (rng.normal(size=(2, 2, 2, n, k)) * scales).astype(np.float32)
  zv[0, 0, 1, 3, 0] = np.nan  # matrix 0, grid point 0, seed 1 diverged
  cost = np.stack([1.0 - np.eye(k), rng.uniform(0.5, 5, (k, k)) * (1 - np.eye(k))])
  cost = cost.astype(np.float32)
  s = scoring.score(zv, y, zt, y, cost)
  assert s["finite"].tolist() == [[[True, False], [True, True]], [[True, True], [True, True]]]
  assert np.isnan(s["test_cost_argmax"][0, 0, 1]) and np.isfinite(s["test_cost_argmax"][0, 1]).all()
  # Argmax cost of finite models = the fraction of errors (0-1 cost), from NumPy.
  want = (zt[0, 1].argmax(-1) != y).mean(-1)
  np.testing.assert_allclose(s["test_cost_argmax"][0, 1], want, rtol=1e-6)
  sel = stats.select(s, [(1e-3, 0.0), (1e-2, 0.0)], 0, "argmax")
  assert sel["g"] == 1 and sel["diverged_grid_points"] == 1 and sel["diverged_seeds"] == 0

  # Each model is calibrated on its own validation logits (the scorer fits all models in
  # one batch): the temperature fitted on all validation rows decides the test rows, and
  # validation rows are decided under the fit on the other fold (even / odd rows).
  even = np.arange(n) % 2 == 0

  def bayes(z, t, c):
    p = np.exp(z / t - (z / t).max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True) @ c).argmin(-1)

  budget = scoring.calibration.VS_MAX_ITERATIONS
  for m, g, i in np.ndindex(2, 2, 2):
    if (m, g, i) == (0, 0, 1):
      continue
    v, t, c = zv[m, g, i], zt[m, g, i], cost[m]
    t_all = float(cj.fit_temperature(v, y[i]))
    t_even = float(cj.fit_temperature(v, y[i], where=even))
    t_odd = float(cj.fit_temperature(v, y[i], where=~even))
    assert s["temperature"][m, g, i] == pytest.approx(t_all, rel=1e-5)
    np.testing.assert_array_equal(s["test_pred_bayes_t"][m, g, i], bayes(t, t_all, c))
    pred = np.where(even, bayes(v, t_odd, c), bayes(v, t_even, c))
    assert s["val_cost_bayes_t"][m, g, i] == pytest.approx(c[y[i], pred].mean(), rel=1e-5)
    vs = cj.fit_vector_scaling(v, y[i], max_iterations=budget)
    np.testing.assert_array_equal(s["test_pred_bayes_vs"][m, g, i],
                                  bayes(np.asarray(vs.apply(t)), 1.0, c))


@pytest.mark.slow
def test_user_table_with_string_labels_and_a_named_cost_matrix(tmp_path):
  rng = np.random.default_rng(0)
  n = 240
  a, b = rng.normal(size=n), rng.normal(size=n)
  color = rng.choice(["red", "blue"], size=n)
  names = np.array(["low", "mid", "high"])
  label = names[(a > -0.4).astype(int) + (a > 0.4)]
  lines = ["a,b,noise,color,label"]
  for i in range(n):
    lines.append(f"{a[i]:.4f},{'' if i == 7 else f'{b[i]:.4f}'},{rng.normal():.3f},{color[i]},"
                 f"{label[i]}")
  (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
  # Header order differs from the sorted label order: the header's order must win.
  (tmp_path / "c.csv").write_text("low,mid,high\n0,1,5\n1,0,1\n9,1,0\n")
  out = tmp_path / "o"
  proc = run_cli("compare", "--data", tmp_path / "t.csv", "--cost", tmp_path / "c.csv",
                 "--features", "a,b,color", "--ordinal", "--arms", "emd", "--seeds", 2,
                 "--epochs", 3, "--lrs", "1e-2", "--batch-size", 32, "--out", out)
  assert proc.returncode == 0, proc.stderr[-3000:]
  res = json.loads((out / "results.json").read_text())
  assert res["class_names"] == ["low", "mid", "high"]
  assert res["cost_matrices"] == [[[0, 1, 5], [1, 0, 1], [9, 1, 0]]]
  assert res["dropped_rows"] == 1 and res["num_examples"] == n - 1
  assert {r["arm"] for r in res["rows"]} == {"ce", "emd", "constant"}
  report = (out / "report.md").read_text()
  assert "| true \\ pred | low | mid | high |" in report
  assert "1 rows with missing values dropped" in report
  assert (out / "results.csv").read_text().count("\n") == 1 + 2 * 3 + 1
  assert "- features used (4, after one-hot encoding): `a`, `b`, " in report


def test_patch_convolution_equals_lax_conv_and_trains_under_vmap_over_models():
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from costjax.cli.training import PatchConv

  conv = PatchConv(3, 5, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (2, 6, 7, 3))
  k = conv.kernel[...].reshape(3, 3, 3, 5).transpose(1, 2, 0, 3)  # (C, kh, kw, O) -> HWIO
  want = jax.lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(conv(x), want + conv.bias[...][None, None, None], rtol=1e-5, atol=1e-5)

  # Models and images both batched (seeds), differentiated: nnx.Conv raises here.
  graphdef, _ = nnx.split(conv)
  params = jax.vmap(lambda key: nnx.split(PatchConv(3, 5, rngs=nnx.Rngs(key)))[1])(
      jax.random.split(jax.random.key(2), 4))
  xs = jax.random.normal(jax.random.key(3), (4, 2, 6, 7, 3))
  grads = jax.vmap(jax.grad(lambda p, xb: jnp.sum(nnx.merge(graphdef, p)(xb) ** 2)))(params, xs)
  assert jax.tree.leaves(grads)[0].shape[0] == 4
