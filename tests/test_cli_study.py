"""``costjax study``: across-table statistics against independent oracles, the manifest's
checks, resuming after an interruption, and the numbers of report/results.json recomputed
from results.csv.

Most tests replace ``compare.run`` by a stand-in that writes a compare-shaped results.json
without training (the study's own machinery is what they check); one slow test runs the
real command end to end on tables it has never seen.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import subprocess
import sys
import zlib

import numpy as np
import pytest
import scipy.stats

from costjax.cli import main as cli_main
from costjax.cli import study

# --------------------------------------------------------------------------- #
# Statistics across tables.
# --------------------------------------------------------------------------- #


def _brute_force_wilcoxon(d):
  """Two-sided p by enumerating every sign pattern of the non-zero |d|'s mid-ranks."""
  d = np.asarray(d, float)
  d = d[d != 0]
  ranks = scipy.stats.rankdata(np.abs(d))
  t_obs = ranks[d > 0].sum()
  sums = np.array([np.dot(s, ranks) for s in itertools.product((0, 1), repeat=len(d))])
  lower = np.mean(sums <= t_obs + 1e-9)
  upper = np.mean(sums >= t_obs - 1e-9)
  return min(1.0, 2 * min(lower, upper))


@pytest.mark.parametrize("n", [5, 8, 12, 15])
def test_wilcoxon_exact_equals_scipy(n):
  rng = np.random.default_rng(n)
  for _ in range(5):
    d = rng.normal(-0.3, 1.0, n)  # continuous: no ties, no zeros
    want = scipy.stats.wilcoxon(d, method="exact").pvalue
    np.testing.assert_allclose(study.wilcoxon_signed_rank(d), want, rtol=1e-10)


def test_wilcoxon_with_ties_and_zeros_equals_enumeration():
  rng = np.random.default_rng(0)
  for _ in range(10):
    d = rng.integers(-3, 4, 11).astype(float) / 10  # many ties and some zeros
    if np.all(d == 0):
      continue
    np.testing.assert_allclose(study.wilcoxon_signed_rank(d), _brute_force_wilcoxon(d),
                               rtol=1e-10)


def test_wilcoxon_normal_approximation_equals_scipy():
  rng = np.random.default_rng(1)
  d = np.round(rng.normal(0.2, 1.0, 60), 1)  # ties; beyond exact_max
  want = scipy.stats.wilcoxon(d, method="approx", correction=False).pvalue
  np.testing.assert_allclose(study.wilcoxon_signed_rank(d), want, rtol=1e-10)


def test_wilcoxon_edge_cases():
  assert study.wilcoxon_signed_rank([0.0, 0.0, 0.0]) == 1.0
  assert np.isnan(study.wilcoxon_signed_rank([0.1, np.nan]))
  assert np.isnan(study.wilcoxon_signed_rank([]))
  # Every table cheaper: the smallest p-value n tables allow.
  assert study.wilcoxon_signed_rank(-np.arange(1, 11) / 10) == pytest.approx(
      study.smallest_wilcoxon_p(10))


@pytest.mark.parametrize("rope,locs", [(0.0, (-0.01, 0.015)), (0.05, (-0.06, 0.05))])
def test_bayesian_signed_rank_equals_baycomp(rope, locs):
  baycomp = pytest.importorskip("baycomp")
  rng = np.random.default_rng(3)
  for loc in locs:  # posteriors between 0.3 and 0.95: the comparison has teeth
    d = rng.normal(loc, 0.08, 12)
    mine = study.bayesian_signed_rank(d, rope=rope, samples=40_000, seed=1)
    # baycomp's differences are y - x; "left" is y - x below -rope, i.e. d cheaper.
    theirs = baycomp.SignedRankTest.probs(np.zeros(12), d, rope=rope, nsamples=20_000,
                                          random_state=2)
    if rope == 0:
      theirs = (theirs[0], 0.0, theirs[1])
    np.testing.assert_allclose(mine, theirs, atol=0.015)
    assert sum(mine) == pytest.approx(1.0)


def test_bayesian_signed_rank_is_seeded_and_extreme_cases():
  d = [-0.3, -0.2, -0.25, -0.4, -0.1, -0.35, -0.3, -0.2]
  assert study.bayesian_signed_rank(d, rope=0.05, seed=4) == study.bayesian_signed_rank(
      d, rope=0.05, seed=4)
  assert study.bayesian_signed_rank(d, rope=0.05)[0] > 0.99
  assert study.bayesian_signed_rank(-np.asarray(d), rope=0.05)[2] > 0.99
  tiny = np.random.default_rng(0).normal(0, 0.002, 20)
  assert study.bayesian_signed_rank(tiny, rope=0.05)[1] > 0.99
  with pytest.raises(ValueError):
    study.bayesian_signed_rank(d, rope=-1.0)


def test_wins_ties_losses_uses_each_tables_rope():
  cost = [0.90, 0.99, 1.20, 0.5]
  base = [1.00, 1.00, 1.00, 0.4]
  rope = [0.05, 0.05, 0.30, 0.05]
  assert study.wins_ties_losses(cost, base, rope) == (1, 2, 1)


# --------------------------------------------------------------------------- #
# A stand-in for compare.run: compare-shaped results without training.
# --------------------------------------------------------------------------- #

ARMS = (("ce", "cross-entropy"), ("ec", "expected cost"), ("constant", "best constant"))
DECS = ("argmax", "bayes_t", "bayes_vs")


def _fake_cost(table: str, arm: str, dec: str) -> float:
  rng = np.random.default_rng(zlib.crc32(f"{table}/{arm}/{dec}".encode()))
  base = 1.0 + 0.1 * (zlib.crc32(table.encode()) % 7)
  if arm == "ec":
    return base * (1 + rng.normal(-0.08, 0.05))
  if arm == "constant":
    return base * (1.6 + rng.normal(0, 0.05))
  return base * (1.0 if dec == "bayes_t" else 1 + rng.normal(0.05, 0.05))


class FakeCompare:
  """Writes OUT/results.json as compare does; counts calls; may fail on one table."""

  def __init__(self, fail_on: str | None = None):
    self.calls: list[str] = []
    self.fail_on = fail_on

  def __call__(self, args):
    from costjax.cli import data

    name = os.path.basename(os.path.normpath(args.out))
    self.calls.append(name)
    if name == self.fail_on:
      raise KeyboardInterrupt  # the user pressed Ctrl-C in the middle of this table
    ds = data.load_data(args.data, label_column=args.label_column, max_rows=args.max_rows,
                        ordinal=args.ordinal)
    rows = []
    for (arm, label), dec in itertools.product(ARMS, DECS):
      if arm == "constant" and dec != "argmax":
        continue
      c = _fake_cost(name, arm, dec)
      rows.append({"cost": "c", "arm": arm, "label": label,
                   "decoding": "none" if arm == "constant" else dec, "val_cost": c,
                   "test_cost_mean": c, "test_cost_std": 0.01, "rope": 0.05 * c,
                   "p_vs_ce_bayes": 0.5, "prob_cheaper_vs_ce_bayes": 0.2,
                   "prob_equivalent_vs_ce_bayes": 0.6, "prob_dearer_vs_ce_bayes": 0.2})
    base = next(r for r in rows if (r["arm"], r["decoding"]) == ("ce", "bayes_t"))
    for r in rows:
      r["rope"] = 0.05 * base["val_cost"]
    summary = {"costs": ["c"], "rows": rows, "num_examples": int(len(ds.y)),
               "num_classes": int(ds.num_classes),
               "split": {"train": 6, "val": 2, "test": 2},
               "verdict": {"outcome": "undecided", "sentence": "Nothing differs."}}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
      json.dump(summary, f)
    return summary


def _write_table(path, n=60, k=3, seed=0, label="y"):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, 2))
  y = (np.arange(n) % k)
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["a", "b", label])
    for xi, yi in zip(x, y, strict=True):
      w.writerow([f"{xi[0]:.4f}", f"{xi[1]:.4f}", f"c{yi}"])


def _manifest(tmp_path, n_tables=4, extra=""):
  lines = []
  for i in range(n_tables):
    _write_table(tmp_path / f"t{i}.csv", seed=i)
    lines += ["[[table]]", f'name = "t{i}"', f'data = "t{i}.csv"', 'label_column = "y"',
              'cost = "ordinal"', "ordinal = true", ""]
  path = tmp_path / "study.toml"
  path.write_text("\n".join(lines) + extra)
  return path


def _study(argv):
  return cli_main.main(["study", "--progress", "none", *argv])


def test_resumes_after_an_interruption(tmp_path, monkeypatch):
  from costjax.cli import compare

  manifest = _manifest(tmp_path)
  out = tmp_path / "out"
  first = FakeCompare(fail_on="t2")
  monkeypatch.setattr(compare, "run", first)
  with pytest.raises(KeyboardInterrupt):
    _study(["--manifest", str(manifest), "--out", str(out)])
  assert first.calls == ["t0", "t1", "t2"]
  assert not (out / "report.md").exists()
  second = FakeCompare()
  monkeypatch.setattr(compare, "run", second)
  assert _study(["--manifest", str(manifest), "--out", str(out)]) == 0
  assert second.calls == ["t2", "t3"]  # t0 and t1 reused from their folders
  s = json.loads((out / "results.json").read_text())
  assert [t["reused"] for t in s["tables"]] == [True, True, False, False]
  # Other settings are another study: nothing is reused.
  third = FakeCompare()
  monkeypatch.setattr(compare, "run", third)
  assert _study(["--manifest", str(manifest), "--out", str(out), "--epochs", "3"]) == 0
  assert third.calls == ["t0", "t1", "t2", "t3"]
  # A changed data file is another table.
  _write_table(tmp_path / "t1.csv", seed=99)
  fourth = FakeCompare()
  monkeypatch.setattr(compare, "run", fourth)
  assert _study(["--manifest", str(manifest), "--out", str(out), "--epochs", "3"]) == 0
  assert fourth.calls == ["t1"]


def test_across_table_numbers_equal_recomputed_from_results_csv(tmp_path, monkeypatch):
  from costjax.cli import compare

  manifest = _manifest(tmp_path, n_tables=7)
  out = tmp_path / "out"
  monkeypatch.setattr(compare, "run", FakeCompare())
  assert _study(["--manifest", str(manifest), "--out", str(out)]) == 0
  with open(out / "results.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  assert {"table", "arm", "decoding", "test_cost", "relative_to_ce_bayes"} <= set(rows[0])
  assert len(rows) == 7 * 7  # 7 tables x (2 arms x 3 decodings + constant)
  s = json.loads((out / "results.json").read_text())
  recipes = {(c["arm"], c["decoding"]): c for c in s["recipes"]}
  assert ("ce", "bayes_t") not in recipes and len(recipes) == 6
  raw = {}
  for key, c in recipes.items():
    mine = [r for r in rows if (r["arm"], r["decoding"]) == key]
    cost = np.array([float(r["test_cost"]) for r in mine])
    base = np.array([float(r["ce_bayes_test_cost"]) for r in mine])
    rope = np.array([float(r["rope"]) for r in mine])
    rel = np.array([float(r["relative_to_ce_bayes"]) for r in mine])
    np.testing.assert_allclose(rel, cost / base - 1, rtol=1e-12)
    diff = cost - base
    assert (c["wins"], c["ties"], c["losses"]) == (
        int(np.sum(diff < -rope)), int(np.sum(np.abs(diff) <= rope)), int(np.sum(diff > rope)))
    assert c["median_relative"] == pytest.approx(np.median(rel))
    raw[key] = scipy.stats.wilcoxon(rel).pvalue
    assert c["p"] == pytest.approx(raw[key], rel=1e-9)
  # Holm across the recipes, written out.
  order = sorted(raw, key=raw.get)
  running, m = 0.0, len(order)
  for i, key in enumerate(order):
    running = max(running, min(1.0, (m - i) * raw[key]))
    assert recipes[key]["holm_p"] == pytest.approx(running, rel=1e-9)
  report = (out / "report.md").read_text()
  assert report.startswith("## Verdict across tables")
  assert (out / "relative_cost.png").stat().st_size > 10_000
  for i in range(7):
    assert (out / f"t{i}" / "results.json").exists()


BAD_MANIFESTS = {
    "missing key": ('[[table]]\nname = "a"\ndata = "t0.csv"\ncost = "ordinal"\n',
                    "missing key 'label_column'"),
    "unknown key": ('[[table]]\nname = "a"\ndata = "t0.csv"\nlabel_column = "y"\n'
                    'cost = "ordinal"\ncolour = "red"\n', "unknown key(s) ['colour']"),
    "no such data": ('[[table]]\nname = "a"\ndata = "nope.csv"\nlabel_column = "y"\n'
                     'cost = "ordinal"\n', "'nope.csv' not found"),
    "bad cost": ('[[table]]\nname = "a"\ndata = "t0.csv"\nlabel_column = "y"\n'
                 'cost = "nonsense"\n', "neither a built-in"),
    "label column": ('[[table]]\nname = "a"\ndata = "t0.csv"\nlabel_column = "z"\n'
                     'cost = "ordinal"\n', "no label column 'z'"),
    "max_rows": ('[[table]]\nname = "a"\ndata = "t0.csv"\nlabel_column = "y"\n'
                 'cost = "ordinal"\nmax_rows = 1\n', "'max_rows' must be"),
    "name": ('[[table]]\nname = "../x"\ndata = "t0.csv"\nlabel_column = "y"\n'
             'cost = "ordinal"\n', "name must use"),
    "not toml": ('[[table]\nname = "a"\n', "not valid TOML"),
    "no tables": ('title = "x"\n', "unknown top-level key(s) ['title']"),
}


@pytest.mark.parametrize("case", sorted(BAD_MANIFESTS))
def test_bad_manifest_is_refused_before_anything_runs(tmp_path, monkeypatch, capsys, case):
  from costjax.cli import compare

  good = _manifest(tmp_path, n_tables=2).read_text()  # good entries first
  text, message = BAD_MANIFESTS[case]
  path = tmp_path / "bad.toml"
  path.write_text(text if case in ("not toml", "no tables") else good + text)
  fake = FakeCompare()
  monkeypatch.setattr(compare, "run", fake)
  out = tmp_path / "out"
  assert _study(["--manifest", str(path), "--out", str(out)]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
  assert fake.calls == [] and not out.exists()


def test_labels_that_disagree_with_a_cost_csv_are_refused(tmp_path, monkeypatch, capsys):
  from costjax.cli import compare

  _write_table(tmp_path / "t.csv", k=3)
  (tmp_path / "cost.csv").write_text("c0,c1,cX\n0,1,2\n1,0,1\n2,1,0\n")
  path = tmp_path / "m.toml"
  path.write_text('[[table]]\nname = "a"\ndata = "t.csv"\nlabel_column = "y"\n'
                  'cost = "cost.csv"\n')
  monkeypatch.setattr(compare, "run", FakeCompare())
  assert _study(["--manifest", str(path), "--out", str(tmp_path / "out")]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and "[[table]] 'a'" in err and err.count("\n") == 1
  assert not (tmp_path / "out").exists()


def test_bad_manifest_from_the_command_line(tmp_path):
  path = tmp_path / "m.toml"
  path.write_text('[[table]]\nname = "a"\n')
  proc = subprocess.run([sys.executable, "-m", "costjax.cli.main", "study", "--manifest",
                         str(path), "--out", str(tmp_path / "out")], capture_output=True,
                        text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 2
  assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ")
  assert not (tmp_path / "out").exists()


def test_unknown_suite_table_and_arms_are_refused(tmp_path, capsys):
  assert _study(["--tables", "digits,nope", "--out", str(tmp_path / "o")]) == 2
  assert "nope" in capsys.readouterr().err
  assert _study(["--arms", "ce,xx", "--out", str(tmp_path / "o")]) == 2
  assert "xx" in capsys.readouterr().err
  assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- #
# The built-in suite.
# --------------------------------------------------------------------------- #


def test_suite_tables_load_offline_with_their_costs():
  from costjax.cli import data, suite

  usable, missing = suite.available()
  assert len(suite.TABLES) >= 10
  names = [t.name for t in suite.TABLES]
  assert len(set(names)) == len(names)
  assert any(t.ordinal for t in suite.TABLES) and any(not t.ordinal for t in suite.TABLES)
  for t in usable:
    if t.name in ("diamonds_cut", "chem97_score", "gss_happiness", "digits"):
      continue  # the big ones: their loaders are the same code paths
    df = t.frame()
    for col in t.dropped:
      assert col not in df.columns, (t.name, col)
    c = t.cost()
    k = len(t.classes)
    assert c.shape == (k, k) and np.all(np.diag(c) == 0) and np.all(c[~np.eye(k, dtype=bool)] > 0)
    ds = data.table_from_frame(df, source=t.name, label_column=suite.LABEL,
                               class_names=t.classes, ordinal=t.ordinal)
    assert ds.num_classes == k and len(ds.y) > 200


def test_published_cost_matrices():
  from costjax.cli import suite

  # Kuhn & Johnson (2013), ch. 17, rows true (VF, F, M, L): a long job run as very fast 10.
  np.testing.assert_array_equal(
      suite.HPC_COST, [[0, 1, 1, 1], [1, 0, 1, 1], [5, 5, 0, 1], [10, 5, 1, 0]])
  # Statlog German credit: a bad customer accepted as good costs 5.
  np.testing.assert_array_equal(suite.CREDIT_COST, [[0, 5], [1, 0]])
  np.testing.assert_array_equal(suite.over_rating_cost(3), [[0, 2, 4], [1, 0, 2], [2, 1, 0]])


# --------------------------------------------------------------------------- #
# End to end (slow): a manifest of tables the study has never seen.
# --------------------------------------------------------------------------- #


@pytest.mark.slow
def test_study_end_to_end_on_unseen_tables(tmp_path):
  for i in range(3):
    _write_table(tmp_path / f"t{i}.csv", n=120, k=3, seed=i, label="grade")
  (tmp_path / "cost.csv").write_text("c0,c1,c2\n0,1,4\n2,0,1\n6,2,0\n")
  lines = []
  for i in range(3):
    lines += ["[[table]]", f'name = "u{i}"', f'data = "t{i}.csv"', 'label_column = "grade"',
              f'cost = "{"cost.csv" if i else "ordinal"}"', f"ordinal = {'true' if i else 'false'}",
              'features = ["a", "b"]', ""]
  (tmp_path / "m.toml").write_text("\n".join(lines))
  out = tmp_path / "out"
  proc = subprocess.run(
      [sys.executable, "-m", "costjax.cli.main", "study", "--manifest", str(tmp_path / "m.toml"),
       "--quick", "--arms", "ce,ec", "--seeds", "2", "--epochs", "2", "--out", str(out),
       "--progress", "lines"], capture_output=True, text=True,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 0, proc.stderr[-2000:]
  s = json.loads((out / "results.json").read_text())
  assert [t["table"] for t in s["tables"]] == ["u0", "u1", "u2"]
  with open(out / "results.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  assert {r["arm"] for r in rows} >= {"ce", "ec", "constant"}
  for c in s["recipes"]:
    rel = [float(r["relative_to_ce_bayes"]) for r in rows
           if (r["arm"], r["decoding"]) == (c["arm"], c["decoding"])]
    assert c["p"] == pytest.approx(study.wilcoxon_signed_rank(rel))
    np.testing.assert_allclose(sorted(c["relative"]), sorted(rel), rtol=1e-12)
  assert (out / "report.md").read_text().startswith("## Verdict across tables")
  for i in range(3):
    assert (out / f"u{i}" / "report.md").exists()


@pytest.mark.slow
def test_docs_suite_page_lists_every_table_as_generated():
  from pathlib import Path

  from costjax.cli import suite

  page = (Path(__file__).resolve().parents[1] / "docs" / "suite.md").read_text()
  usable, _ = suite.available()
  if len(usable) < len(suite.TABLES):
    pytest.skip("the study extra is not installed")
  assert "\n".join(suite.markdown_sections()) in page
