"""Tests of the statistics and the verdict of ``costjax compare`` (``costjax.cli.stats``).

Oracles: the formulas written out with SciPy's t, noncentral t and normal distributions;
SciPy's paired t-test (the corrected test without its correction); baycomp's
``CorrelatedTTest`` where it is installed; a seeded NumPy simulation of re-splits of one
table; NumPy for the best constant prediction. The verdict's outcomes, its "no usable
signal" case and every new report sentence are reached on constructed inputs.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from costjax.cli import main as cli_main
from costjax.cli import report, scoring, stats

# --------------------------------------------------------------------------- #
# The two tests against their formulas.
# --------------------------------------------------------------------------- #


def _pairs(seed, s=10, shift=0.01):
  rng = np.random.default_rng(seed)
  a = 0.2 + 0.02 * rng.normal(size=s)
  return a, a + shift + 0.01 * rng.normal(size=s)


@pytest.mark.parametrize("seed", range(4))
def test_corrected_ttest_is_the_nadeau_bengio_formula(seed):
  a, b = _pairs(seed)
  n_train, n_test = 1078, 359
  d = a - b
  s = len(d)
  t = d.mean() / math.sqrt((1 / s + n_test / n_train) * d.var(ddof=1))
  want = 2 * sps.t.sf(abs(t), s - 1)
  got = stats.corrected_resampled_ttest(a, b, n_train=n_train, n_test=n_test)
  assert got == pytest.approx(want, rel=1e-10)
  # Symmetric in a and b.
  assert stats.corrected_resampled_ttest(b, a, n_train=n_train, n_test=n_test) == pytest.approx(got)


def test_corrected_ttest_without_the_correction_is_scipys_paired_ttest():
  a, b = _pairs(7)
  got = stats.corrected_resampled_ttest(a, b, n_train=1.0, n_test=1e-15)
  assert got == pytest.approx(sps.ttest_rel(a, b).pvalue, rel=1e-9)
  # The correction only ever makes the p-value larger.
  assert stats.corrected_resampled_ttest(a, b, n_train=4, n_test=1) > got


def test_corrected_ttest_edge_cases():
  a = np.array([0.125, 0.25, 0.375, 0.5])  # exact in binary: a + 0.0625 - a is exact
  kw = dict(n_train=300, n_test=100)
  assert stats.corrected_resampled_ttest(a, a, **kw) == 1.0
  assert stats.corrected_resampled_ttest(a, a + 0.0625, **kw) == 0.0  # every re-split agrees
  assert math.isnan(stats.corrected_resampled_ttest(a, a + np.array([0, np.nan, 0, 0]), **kw))
  assert math.isnan(stats.corrected_resampled_ttest(a[:1], a[:1] + 1, **kw))
  with pytest.raises(ValueError, match="paired"):
    stats.corrected_resampled_ttest(a, a[:3], **kw)
  with pytest.raises(ValueError, match="positive"):
    stats.corrected_resampled_ttest(a, a, n_train=0, n_test=10)


@pytest.mark.parametrize("seed, rope", [(0, 0.0), (1, 0.005), (2, 0.02), (3, 0.001)])
def test_bayesian_correlated_ttest_is_the_student_t_posterior(seed, rope):
  a, b = _pairs(seed)
  n_train, n_test = 1078, 359
  d = a - b
  s = len(d)
  scale = math.sqrt((1 / s + n_test / n_train) * d.var(ddof=1))
  post = sps.t(s - 1, loc=d.mean(), scale=scale)
  want = (post.cdf(-rope), post.cdf(rope) - post.cdf(-rope), 1 - post.cdf(rope))
  got = stats.bayesian_correlated_ttest(a, b, n_train=n_train, n_test=n_test, rope=rope)
  assert got == pytest.approx(want, abs=1e-12)
  assert sum(got) == pytest.approx(1.0)
  # With no ROPE, P(A cheaper) is one minus half the corrected two-sided p (mean(d) < 0).
  if rope == 0:
    p = stats.corrected_resampled_ttest(a, b, n_train=n_train, n_test=n_test)
    assert got[0] == pytest.approx(1 - p / 2, rel=1e-9)
  # Swapping a and b swaps the two tails.
  swapped = stats.bayesian_correlated_ttest(b, a, n_train=n_train, n_test=n_test, rope=rope)
  assert swapped == pytest.approx(got[::-1], abs=1e-12)


@pytest.mark.parametrize("rope", [0.001, 0.01])
def test_bayesian_correlated_ttest_agrees_with_baycomp(rope):
  baycomp = pytest.importorskip("baycomp")
  # baycomp corrects with 1/n + 1/(folds - 1): 10 scores in 2 runs of 5 folds is
  # n_test / n_train = 1/4.
  a, b = _pairs(11)
  want = baycomp.CorrelatedTTest.probs(b, a, rope=rope, runs=2)  # its difference is y - x
  got = stats.bayesian_correlated_ttest(a, b, n_train=400, n_test=100, rope=rope)
  assert got == pytest.approx(want, abs=1e-9)


def test_bayesian_correlated_ttest_edge_cases():
  a = np.array([0.125, 0.25, 0.375])
  kw = dict(n_train=300, n_test=100)
  assert stats.bayesian_correlated_ttest(a, a, rope=0.01, **kw) == (0.0, 1.0, 0.0)
  assert stats.bayesian_correlated_ttest(a, a, rope=0.0, **kw) == (0.0, 1.0, 0.0)
  # Every re-split agrees on a difference: a point mass, inside or outside the ROPE.
  assert stats.bayesian_correlated_ttest(a, a + 0.0625, rope=0.01, **kw) == (1.0, 0.0, 0.0)
  assert stats.bayesian_correlated_ttest(a + 0.0625, a, rope=0.1, **kw) == (0.0, 1.0, 0.0)
  assert all(math.isnan(p) for p in stats.bayesian_correlated_ttest(a[:1], a[:1], rope=0, **kw))
  bad = a + np.array([0, np.inf, 0])
  assert all(math.isnan(p) for p in stats.bayesian_correlated_ttest(a, bad, rope=0, **kw))
  with pytest.raises(ValueError, match="rope"):
    stats.bayesian_correlated_ttest(a, a, rope=-0.1, **kw)


def test_detectable_difference_has_the_stated_power():
  a, b = _pairs(3)
  n_train, n_test, s = 1078, 359, len(a)
  delta = stats.detectable_difference(a, b, n_train=n_train, n_test=n_test)
  # The corrected t statistic at a true mean difference delta, simulated with NumPy:
  # (delta + se Z) / (se sqrt(chi2_{s-1} / (s-1))).
  se = math.sqrt((1 / s + n_test / n_train) * np.var(a - b, ddof=1))
  rng = np.random.default_rng(0)
  z = rng.normal(size=400_000)
  chi = rng.chisquare(s - 1, size=z.size)
  t = (delta + se * z) / (se * np.sqrt(chi / (s - 1)))
  crit = sps.t.ppf(0.975, s - 1)
  assert np.mean(np.abs(t) > crit) == pytest.approx(0.8, abs=0.004)
  # More re-splits lower it, but never below the floor with unlimited re-splits.
  floor = stats.detectable_difference(a, b, n_train=n_train, n_test=n_test,
                                      num_resplits=math.inf)
  assert floor == pytest.approx((sps.norm.ppf(0.975) + sps.norm.ppf(0.8)) * se
                                / math.sqrt(1 / s + n_test / n_train) * math.sqrt(n_test / n_train))
  more = [stats.detectable_difference(a, b, n_train=n_train, n_test=n_test, num_resplits=k)
          for k in (5, 10, 100, 10_000)]
  assert all(x > y for x, y in zip(more, more[1:], strict=False)) and more[-1] > floor
  assert more[1] == pytest.approx(delta)
  assert stats.detectable_difference(a, a, n_train=n_train, n_test=n_test) == 0.0


# --------------------------------------------------------------------------- #
# The null simulation of the issue: two fixed classifiers, re-splits of one table.
# --------------------------------------------------------------------------- #

N_ROWS, N_TEST, N_VAL, S = 1797, 359, 360, 10
N_TRAIN = N_ROWS - N_TEST - N_VAL  # 1078, as compare splits digits
# (cost of A, cost of B) per row and their probabilities in the population: A makes more
# cheap mistakes, B more expensive ones, and both cost exactly 0.48 on average.
PAIRS = np.array([(0, 0), (1, 1), (20, 20), (1, 0), (0, 1), (20, 0), (0, 20)], np.float64)
PROBS = np.array([0.79, 0.03, 0.0075, 0.10, 0.05, 0.01, 0.0125])


def simulate_resplits(num_samples: int, *, seed: int, probs=PROBS) -> np.ndarray:
  """``(num_samples, S)`` mean test-cost differences A - B: each sample draws a table of
  ``N_ROWS`` rows from the population and re-splits it ``S`` times (``N_TEST`` test rows)."""
  rng = np.random.default_rng(seed)
  d_pop = PAIRS[:, 0] - PAIRS[:, 1]
  out = np.empty((num_samples, S))
  for lo in range(0, num_samples, 250):
    r = min(250, num_samples - lo)
    d = d_pop[rng.choice(len(probs), size=(r, N_ROWS), p=probs)]  # (r, N)
    test = np.argpartition(rng.random((r, S, N_ROWS), np.float32), N_TEST, axis=-1)
    test = test[..., :N_TEST]  # (r, S, N_TEST): a random test part per re-split
    out[lo:lo + r] = np.take_along_axis(d[:, None, :], test, axis=-1).mean(-1)
  return out


def rejection_rates(d: np.ndarray) -> dict[str, float]:
  kw = dict(n_train=N_TRAIN, n_test=N_TEST)
  zero = np.zeros(S)
  p = np.array([stats.corrected_resampled_ttest(x, zero, **kw) for x in d])
  post = np.array([stats.bayesian_correlated_ttest(x, zero, rope=0.0, **kw) for x in d])
  naive = sps.ttest_1samp(d, 0.0, axis=1).pvalue
  return {"corrected": float(np.mean(p < 0.05)),
          "bayes": float(np.mean(np.maximum(post[:, 0], post[:, 2]) >= 0.975)),
          "paired_t": float(np.mean(naive < 0.05))}


def test_null_simulation_false_rejection_is_at_most_six_percent():
  assert PAIRS[:, 0] @ PROBS == pytest.approx(PAIRS[:, 1] @ PROBS)  # the null holds
  d = simulate_resplits(1000, seed=0)
  rates = rejection_rates(d)
  assert rates["corrected"] <= 0.06
  assert rates["bayes"] <= 0.06
  # The uncorrected paired t-test is the problem the correction fixes (~24% in the issue).
  assert rates["paired_t"] > 0.15


def test_simulation_power_under_a_real_difference():
  # B cheaper by 0.2 (0.48 -> 0.28): 0.01 of B's 20-cost mistakes become free.
  probs = PROBS.copy()
  probs[6] -= 0.01
  probs[0] += 0.01
  d = simulate_resplits(600, seed=1, probs=probs)
  rates = rejection_rates(d)
  # The Bayesian decision (one side at least 97.5%) loses no power to the t-test.
  assert rates["bayes"] >= rates["corrected"] - 1e-12
  assert rates["corrected"] > 0.6
  # At the difference the power helper names, the corrected test has about 80% power
  # (78% over 2000 samples: the helper plugs each table's sample spread in for the true one).
  kw = dict(n_train=N_TRAIN, n_test=N_TEST)
  zero = np.zeros(S)
  null = simulate_resplits(600, seed=2)
  delta = float(np.median([stats.detectable_difference(x, zero, **kw) for x in null]))
  shifted = null + delta  # the same sampling spread, with a real mean difference delta
  p = np.array([stats.corrected_resampled_ttest(x, zero, **kw) for x in shifted])
  assert 0.72 <= np.mean(p < 0.05) <= 0.9


# --------------------------------------------------------------------------- #
# The best constant prediction.
# --------------------------------------------------------------------------- #


def test_constant_row_uses_training_rows_only():
  cost = np.array([[0, 1, 4], [1, 0, 1], [4, 1, 0]], np.float64)
  y_train = np.array([[0, 0, 0, 2, 2, 1], [2, 2, 2, 2, 0, 1]])
  y_val = np.array([[2, 2], [0, 0]])
  y_test = np.array([[2, 2, 2], [0, 1, 2]])
  row = stats.constant_row(y_train, y_val, y_test, cost, class_names=["lo", "mid", "hi"])
  # Seed 0: mean training cost per column [9, 5, 12]/6 -> class 1; seed 1: [17, 5, 5]/6 ->
  # class 1 (the first minimum). Test costs from the matrix directly, not from training.
  want_j = [np.argmin(cost[y].mean(0)) for y in y_train]
  assert row.classes.tolist() == want_j == [1, 1]
  np.testing.assert_allclose(row.test_cost, [1.0, 2 / 3])
  assert row.val_cost == pytest.approx(np.mean([1.0, 1.0]))
  np.testing.assert_allclose(row.test_acc, [0.0, 1 / 3])
  assert row.arm == "constant" and row.decoding == "none" and row.chosen == "class mid"


# --------------------------------------------------------------------------- #
# The verdict on constructed rows.
# --------------------------------------------------------------------------- #

N_TR, N_TE = 1000, 250


def _row(arm, dec, val, test, label=None):
  test = np.asarray(test, np.float64)
  return stats.Row(arm=arm, label=label or {"ce": "cross-entropy"}.get(arm, arm),
                   decoding=dec, g=0, lr=1e-3, hp=0.0, val_cost=val, test_cost=test,
                   test_acc=np.ones_like(test), temperature=np.ones_like(test),
                   diverged_seeds=0, diverged_grid_points=0, seconds=1.0)


def _const(val, test):
  r = _row("constant", "none", val, test, label=stats.CONSTANT_LABEL)
  r.classes = np.zeros(len(r.test_cost), np.int64)
  r.chosen = "class 0"
  return r


def _verdict(rows, rope):
  stats.attach_tests(rows, n_train=N_TR, n_test=N_TE, rope=rope)
  return stats.verdict(rows, scoring.DECODING_LABELS, n_train=N_TR, n_test=N_TE, rope=rope)


NOISE = 0.002 * np.random.default_rng(0).normal(size=10)


def _base_rows(x_test, x_val=0.10):
  base = 0.30 + NOISE
  return [_row("ce", "argmax", 0.40, base + 0.10), _row("ce", "bayes_t", 0.31, base),
          _row("ce", "bayes_vs", 0.32, base + 0.002), _row("x", "argmax", x_val, x_test),
          _const(0.9, np.full(10, 0.9))]


def test_verdict_adopt():
  v = _verdict(_base_rows(0.30 + NOISE - 0.08), rope=0.015)
  assert v.outcome == "adopt" and v.adopted and not v.no_signal
  assert v.recommended.arm == "x"
  assert all(c["holm_p"] < 0.05 and c["probs"][0] >= 0.95 for c in v.comparisons)
  assert v.sentence.startswith("x + argmax lowers test cost from 0.3")
  assert v.sentence.endswith("use it.") and math.isnan(v.detectable)


def test_verdict_significant_but_within_the_rope_is_not_adopted():
  # 0.005 cheaper on every re-split: significant, yet inside a ROPE of 0.015.
  v = _verdict(_base_rows(0.30 + NOISE - 0.005), rope=0.015)
  assert v.comparisons[1]["holm_p"] < 0.05
  assert v.outcome == "equivalent"
  assert (v.recommended.arm, v.recommended.decoding) == ("ce", "bayes_t")
  assert "are practically the same on test" in v.sentence
  assert "use the simpler cross-entropy + Bayes (temperature)" in v.sentence


def test_verdict_equivalent_recommends_argmax_when_both_cross_entropy_decodings_tie():
  rows = _base_rows(0.30 + NOISE + 0.0005)
  rows[0] = _row("ce", "argmax", 0.40, 0.30 + NOISE - 0.0005)
  v = _verdict(rows, rope=0.015)
  assert v.outcome == "equivalent"
  assert (v.recommended.arm, v.recommended.decoding) == ("ce", "argmax")


def test_verdict_undecided_states_the_detectable_difference():
  rng = np.random.default_rng(5)
  x = 0.30 + NOISE - 0.01 + 0.03 * rng.normal(size=10)  # cheaper on average, very noisy
  v = _verdict(_base_rows(x), rope=0.003)
  assert v.outcome == "undecided"
  assert (v.recommended.arm, v.recommended.decoding) == ("ce", "bayes_t")
  want = stats.detectable_difference(x, 0.30 + NOISE, n_train=N_TR, n_test=N_TE)
  assert v.detectable == pytest.approx(want)
  floor = stats.detectable_difference(x, 0.30 + NOISE, n_train=N_TR, n_test=N_TE,
                                      num_resplits=math.inf)
  assert v.detectable_floor == pytest.approx(floor) and floor < want
  assert f"smallest difference it detects at 80% power is {want:.3g}" in v.sentence
  assert "only more rows can" in v.sentence
  assert "but not reliably" in v.sentence and "Use cross-entropy + Bayes" in v.sentence


def test_verdict_no_usable_signal_recommends_the_constant():
  # Labels independent of the features: every model costs about what the constant costs.
  rng = np.random.default_rng(2)
  const = 0.60 + 0.01 * rng.normal(size=10)
  rows = [_row("ce", "argmax", 0.66, const + 0.05 + 0.01 * rng.normal(size=10)),
          _row("ce", "bayes_t", 0.62, const + 0.01 * rng.normal(size=10)),
          _row("ce", "bayes_vs", 0.63, const + 0.01 * rng.normal(size=10)),
          _row("x", "argmax", 0.59, const - 0.002 + 0.01 * rng.normal(size=10)),
          _const(0.60, const)]
  v = _verdict(rows, rope=0.03)
  assert v.no_signal and v.recommended.arm == "constant"
  assert not any(c["cheaper"] for c in v.signal_comparisons)
  assert {c["candidate"].key for c in v.signal_comparisons} == {
      ("x", "argmax"), ("ce", "argmax"), ("ce", "bayes_t")}
  assert "the features carry no usable signal for this cost; predict the constant" in v.sentence
  # The same rows with a model far below the constant: the signal is there.
  rows[3] = _row("x", "argmax", 0.30, const - 0.3 + 0.01 * rng.normal(size=10))
  v = _verdict(rows, rope=0.03)
  assert not v.no_signal and v.recommended.arm != "constant"


def test_verdict_says_plainly_when_nothing_differs_from_the_baseline():
  rng = np.random.default_rng(3)
  base = 0.30 + NOISE
  rows = [_row("ce", "argmax", 0.40, base + 0.03 * rng.normal(size=10)),
          _row("ce", "bayes_t", 0.31, base), _row("ce", "bayes_vs", 0.32, base + 0.03 *
                                                   rng.normal(size=10)),
          _row("x", "argmax", 0.30, base + 0.03 * rng.normal(size=10)),
          _const(0.9, np.full(10, 0.9))]
  v = _verdict(rows, rope=0.003)
  assert all(r.p_vs_ce_bayes >= 0.05 for r in rows[:4])
  assert any(r.startswith("No recipe's test cost differs significantly from cross-entropy "
                          "+ Bayes (temperature)'s") for r in v.remarks)
  v = _verdict(_base_rows(0.30 + NOISE - 0.08), rope=0.015)
  assert v.remarks == []
  # Some recipes significantly dearer, none significantly cheaper: said so, with names.
  rows = _base_rows(0.30 + NOISE + 0.08)
  v = _verdict(rows, rope=0.015)
  (remark,) = v.remarks
  assert remark.startswith("No recipe is significantly cheaper than cross-entropy + Bayes "
                           "(temperature): ")
  assert remark.endswith("3 are significantly dearer (cross-entropy + argmax; cross-entropy + "
                         "Bayes (vector scaling); x + argmax).")


def test_verdict_pick_is_a_cross_entropy_baseline():
  rows = _base_rows(0.30 + NOISE + 0.05, x_val=0.5)
  v = _verdict(rows, rope=0.015)  # CE + Bayes (T) wins on validation and beats argmax
  assert (v.pick.arm, v.pick.decoding) == ("ce", "bayes_t")
  assert v.outcome == "adopt" and v.recommended.key == ("ce", "bayes_t")
  assert len(v.comparisons) == 1 and v.comparisons[0]["baseline"].decoding == "argmax"


def test_default_rope_is_a_fraction_of_the_cross_entropy_bayes_validation_cost():
  rows = _base_rows(0.30 + NOISE)
  assert stats.default_rope(rows) == pytest.approx(stats.ROPE_FRACTION * 0.31)


# --------------------------------------------------------------------------- #
# Report sentences and warnings on constructed inputs.
# --------------------------------------------------------------------------- #


def test_lr_edge_warnings():
  rows = [{"label": "soft-label CE, T=1", "decoding_label": "argmax", "lr": 0.01},
          {"label": "cross-entropy", "decoding_label": "argmax", "lr": 0.01},
          {"label": "cross-entropy", "decoding_label": "Bayes (temperature)", "lr": 0.01},
          {"label": "expected cost", "decoding_label": "argmax", "lr": 0.001},
          {"label": "soft labels", "decoding_label": "argmax", "lr": 0.003}]
  (top, bottom) = report.lr_edge_warnings(rows, [1e-3, 3e-3, 1e-2])
  assert top.startswith("3 of 5 recipes chose the largest learning rate of the grid (0.01): "
                        "soft-label CE, T=1; cross-entropy.")
  assert "extend --lrs upwards" in top
  assert bottom.startswith("1 of 5 recipes chose the smallest learning rate of the grid "
                           "(0.001): expected cost.")
  assert report.lr_edge_warnings(rows[4:], [1e-3, 3e-3, 1e-2]) == []
  assert report.lr_edge_warnings(rows, [1e-2]) == []  # one rate: no grid to extend


def test_still_falling_warnings():
  epochs = np.arange(1, 31)
  falling = 0.1 + 1.0 / epochs  # still going down at epoch 30
  flat = np.r_[0.1 + 1.0 / epochs[:15], np.full(15, 0.1 + 1 / 15)]
  noisy = flat + 0.004 * np.sin(epochs)  # wobbles around a plateau, no new low
  bump = flat + 0.02 * ((epochs > 20) & (epochs <= 25))  # back to the plateau, no new low
  (w,) = report.still_falling_warnings(
      {"a (lr=0.01)": falling, "b (lr=0.01)": flat, "c": noisy, "d": bump}, "argmax decoding")
  assert w.startswith("Validation cost (under argmax decoding) was still falling over the "
                      "last epochs for 1 of 4 arms: a (")
  assert "epochs 26-30 than over epochs 21-25" in w and "--epochs" in w
  assert report.still_falling_warnings({"b": flat, "c": noisy, "d": bump}, "argmax") == []
  assert report.still_falling_warnings({"short": falling[:6]}, "argmax") == []


def test_features_and_outcome_lines():
  assert report.features_md(["a", "color_red", "color_blue"]) == (
      "- features used (3, after one-hot encoding): `a`, `color_red`, `color_blue`")
  long = report.features_md([f"pixel_{i}" for i in range(64)])
  assert long.startswith("- features used (64, after one-hot encoding): `pixel_0`")
  assert long.endswith(", … (24 more)")
  v = {"cost": "asymmetric", "outcome": "equivalent", "sentence": "S."}
  assert report.outcome_line(v, many=False) == "**Outcome: equivalent.** S."
  assert report.outcome_line(v, many=True) == "**Outcome (cost `asymmetric`): equivalent.** S."


def test_rope_flag_is_checked(tmp_path, capsys):
  out = tmp_path / "o"
  assert cli_main.main(["compare", "--rope", "-0.1", "--out", str(out)]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err == ["error: --rope must be finite and >= 0 (cost units); got -0.1."]
  assert not out.exists()


def test_top_level_help_is_plain_text(capsys):
  with pytest.raises(SystemExit):
    cli_main.main(["--help"])
  text = " ".join(capsys.readouterr().out.split())
  assert "`" not in text and "costjax compare" in text


def test_fmt_p_is_n_a_for_a_missing_or_undefined_p():
  assert stats.fmt_p(None) == "n/a"
  assert stats.fmt_p(float("nan")) == "n/a"
  assert stats.fmt_p(0.012345) == "0.0123" and stats.fmt_p(1.0) == "1"


# --------------------------------------------------------------------------- #
# Pieces the verdict is built from, against NumPy / SciPy (from mutation testing).
# --------------------------------------------------------------------------- #
def test_detectable_difference_at_high_power_has_that_power():
  """With 2 re-splits and power 0.99 the root lies beyond the first bracket (crit + 10)."""
  a, b = [0.10, 0.12], [0.12, 0.16]
  n_train, n_test, power = 1000, 250, 0.99
  delta = stats.detectable_difference(a, b, n_train=n_train, n_test=n_test, power=power)
  d = np.subtract(a, b)
  nc = delta / math.sqrt((1 / 2 + n_test / n_train) * np.var(d, ddof=1))
  crit = sps.t.ppf(1 - 0.05 / 2, 1)
  assert nc > crit + 10
  got_power = sps.nct.sf(crit, 1, nc) + sps.nct.cdf(-crit, 1, nc)
  assert got_power == pytest.approx(power, abs=1e-8)


def _scores(val, finite, test):
  """One arm's scores for one cost matrix (m = 0): (1, G, S) arrays, one decoding."""
  val, test = np.asarray(val, np.float64)[None], np.asarray(test, np.float64)[None]
  return {"val_cost_argmax": val, "val_cost_bayes_t": val + 0.01,
          "finite": np.asarray(finite)[None], "test_cost_argmax": test,
          "test_cost_bayes_t": test + 0.01, "test_acc_argmax": 1 - test,
          "test_acc_bayes_t": 1 - test, "temperature": np.ones_like(test)}


def test_select_takes_the_lowest_mean_validation_cost_among_finite_grid_points():
  grid = [(1e-3, 0.0), (1e-2, 0.5), (3e-2, 2.0)]
  val = [[0.5, 0.5], [0.1, 0.2], [0.3, 0.3]]
  finite = [[True, True], [True, False], [True, True]]  # grid point 1 diverged once
  test = np.arange(6.0).reshape(3, 2)
  sel = stats.select(_scores(val, finite, test), grid, 0, "argmax")
  assert (sel["g"], sel["lr"], sel["hp"]) == (2, 3e-2, 2.0)
  assert sel["val_cost"] == pytest.approx(0.3)
  np.testing.assert_array_equal(sel["test_cost"], [4.0, 5.0])
  assert (sel["diverged_seeds"], sel["diverged_grid_points"]) == (0, 1)


def test_build_rows_prices_the_constant_per_row_and_defaults_the_rope():
  from types import SimpleNamespace as NS
  rng = np.random.default_rng(3)
  s, n, k = 4, 30, 3
  y_train, y_val, y_test = (rng.integers(0, k, size=(s, n)) for _ in range(3))
  c_train, c_val, c_test = (rng.uniform(0, 5, size=(s, n, k, k)) for _ in range(3))
  splits = NS(y_train=y_train, y_val=y_val, y_test=y_test, c_train=c_train, c_val=c_val,
              c_test=c_test)
  arms = [NS(key="ce", label="cross-entropy"), NS(key="x", label="x")]
  grid = [(1e-3, 0.0), (1e-2, 0.5)]
  results = {a.key: NS(grid=grid, seconds=2.0) for a in arms}
  finite = np.ones((2, s), bool)
  scores = {"ce": _scores([[0.4] * s, [0.3] * s], finite, rng.uniform(0, 1, (2, s))),
            "x": _scores([[0.2] * s, [0.5] * s], finite, rng.uniform(0, 1, (2, s)))}
  rows = stats.build_rows(arms, results, scores, 0, ["argmax", "bayes_t"], splits=splits,
                          cost=np.ones((k, k)))
  assert [r.key for r in rows] == [("ce", "argmax"), ("ce", "bayes_t"), ("x", "argmax"),
                                   ("x", "bayes_t"), ("constant", "none")]
  assert (rows[0].lr, rows[0].hp, rows[2].lr, rows[2].hp) == (1e-2, 0.5, 1e-3, 0.0)
  # The constant: per re-split the class cheapest on the training rows' own matrices.
  idx = np.arange(n)
  j = [c_train[i, idx, y_train[i]].mean(0).argmin() for i in range(s)]
  want = [c_test[i, idx, y_test[i], j[i]].mean() for i in range(s)]
  np.testing.assert_allclose(rows[-1].test_cost, want)
  # Default ROPE: a fraction of cross-entropy + Bayes (T)'s validation cost (0.3 + 0.01).
  assert all(r.rope == pytest.approx(stats.ROPE_FRACTION * 0.31) for r in rows)
  rows = stats.build_rows(arms, results, scores, 0, ["argmax", "bayes_t"], splits=splits,
                          cost=np.ones((k, k)), rope=0.02)
  assert all(r.rope == 0.02 for r in rows)


def test_verdict_sentences_name_the_constant_and_an_undecided_reference_pick():
  rng = np.random.default_rng(2)
  const = 0.60 + 0.01 * rng.normal(size=10)
  rows = [_row("ce", "argmax", 0.66, const + 0.05 + 0.01 * rng.normal(size=10)),
          _row("ce", "bayes_t", 0.62, const + 0.01 * rng.normal(size=10)),
          _row("ce", "bayes_vs", 0.63, const + 0.01 * rng.normal(size=10)),
          _row("x", "argmax", 0.59, const - 0.002 + 0.01 * rng.normal(size=10)),
          _const(0.60, const)]
  rows[-1].chosen = "class cat (7 of 10 re-splits), dog (3 of 10 re-splits)"
  v = _verdict(rows, rope=0.03)
  assert v.no_signal
  assert f"best constant prediction ({rows[-1].chosen}, test cost" in v.sentence
  if v.outcome == "equivalent":
    assert "It is practically the same as cross-entropy" in v.sentence
  else:
    assert v.outcome != "adopt" and "Against cross-entropy" in v.sentence
    assert "practically the same" not in v.sentence
  # The validation pick is cross-entropy + Bayes (T), not reliably apart from argmax.
  rng = np.random.default_rng(5)
  base = 0.30 + NOISE
  rows = [_row("ce", "argmax", 0.40, base + 0.001 + 0.004 * rng.normal(size=10)),
          _row("ce", "bayes_t", 0.31, base), _row("ce", "bayes_vs", 0.32, base + 0.002),
          _row("x", "argmax", 0.5, base + 0.05), _const(0.9, np.full(10, 0.9))]
  v = _verdict(rows, rope=0.0005)
  assert v.outcome == "undecided" and v.pick.key == ("ce", "bayes_t")
  assert v.sentence.startswith("Cross-entropy + Bayes (temperature) has the lowest validation "
                               "cost; on test it costs 0.3002 against 0.3013 for "
                               "cross-entropy + argmax")
