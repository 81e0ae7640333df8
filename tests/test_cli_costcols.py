"""Per-row costs in the command: ``--cost-columns TEMPLATE`` and ``--cost-scale COLUMN``.

Oracles are NumPy formulas written here: each row's matrix read back from the CSV by hand,
``softmax(z / T) @ C_i`` and its argmin (Bayes with the row's own matrix), mean costs
``C_i[y_i, pred_i]``, the best constant prediction ``min_k mean_i C_i[y_i, k]``, and
``costjax.savings_score`` for the savings.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import jax
import numpy as np
import pandas as pd
import pytest

import costjax as cj
from costjax.cli import compare, data, decide, distributed, main, scoring, stats, training
from costjax.cli.errors import UserInputError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def softmax(z):
  z = z - z.max(-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(-1, keepdims=True)


def table(n=240, *, labels="string", seed=0):
  """Features a, b, rid (the row id); labels; per-row costs as columns and an amount."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, 2))
  k = 3
  y = np.clip((x[:, 0] + 0.5 * rng.normal(size=n) + 1.5).astype(int), 0, k - 1)
  names = ["low", "mid", "high"] if labels == "string" else ["0", "1", "2"]
  df = pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "rid": np.arange(n, dtype=float)})
  df["label"] = [names[i] for i in y] if labels == "string" else y
  df["amount"] = rng.exponential(5.0, n)
  cost = np.zeros((n, k, k))
  for i in range(k):
    for j in range(k):
      if i != j and (i, j) != (0, 2):  # (low, high) has no column: it costs 0
        cost[:, i, j] = rng.uniform(0, 10, n) * (1 + abs(i - j))
        df[f"c[{names[i]}->{names[j]}]"] = cost[:, i, j]
  cost[:, 2, 2] = 0.5  # a non-zero diagonal (a retention offer)
  df[f"c[{names[2]}->{names[2]}]"] = 0.5
  return df, cost, names


TEMPLATE = "c[{true}->{pred}]"


def compare_args(path, *extra):
  args = main.build_parser().parse_args(
      ["compare", "--data", str(path), "--seeds", "2", "--out", "unused", *map(str, extra)])
  compare.check_arguments(args)
  return args


@pytest.mark.parametrize("labels", ["string", "integer"])
def test_compare_reads_cost_columns_and_they_follow_the_rows(tmp_path, labels):
  df, cost, names = table(labels=labels)
  df.to_csv(tmp_path / "t.csv", index=False)
  ds, costs, _ = compare.load_table(compare_args(tmp_path / "t.csv", "--cost-columns",
                                                 TEMPLATE))
  assert sorted(ds.class_names) == sorted(names)  # text labels are sorted; integers are indices
  perm = [names.index(n) for n in ds.class_names]
  cost = cost[:, perm][:, :, perm]
  # Cost columns and the amount: only the amount is a feature (it matches no template).
  assert set(ds.feature_names) == {"a", "b", "rid", "amount"}
  np.testing.assert_allclose(ds.row_costs, cost, rtol=1e-6)
  np.testing.assert_allclose(costs[0], cost.mean(0), rtol=1e-5)
  # Splits: each row's matrix follows it (recover the row id from the standardized rid).
  splits = data.make_splits(ds, [0, 1])
  j = list(ds.feature_names).index("rid")
  for part in ("train", "val", "test"):
    x, c = getattr(splits, f"x_{part}"), getattr(splits, f"c_{part}")
    rid = np.rint(x[..., j] * splits.scale[:, None, j] + splits.mean[:, None, j]).astype(int)
    np.testing.assert_allclose(c, cost[rid], rtol=1e-6)


def test_cost_columns_are_features_only_when_named(tmp_path):
  df, cost, names = table()
  df.to_csv(tmp_path / "t.csv", index=False)
  col = f"c[{names[1]}->{names[0]}]"
  ds, _, _ = compare.load_table(compare_args(tmp_path / "t.csv", "--cost-columns", TEMPLATE,
                                             "--features", f"a,{col}"))
  assert ds.feature_names == ("a", col)
  np.testing.assert_allclose(ds.x[:, 1], cost[:, 1, 0], rtol=1e-6)
  mid, low = ds.class_names.index(names[1]), ds.class_names.index(names[0])
  np.testing.assert_allclose(ds.row_costs[:, mid, low], cost[:, 1, 0], rtol=1e-6)


@pytest.mark.parametrize("labels", ["string", "integer"])
def test_cost_scale_multiplies_the_matrix_by_the_row_value(tmp_path, labels):
  df, _, names = table(labels=labels)
  df = df[["a", "b", "label", "amount"]]
  df.to_csv(tmp_path / "t.csv", index=False)
  m = np.array([[0, 1, 4], [2, 0, 1], [8, 3, 0.5]])
  pd.DataFrame(m, index=names, columns=names).to_csv(tmp_path / "c.csv")  # header: the order
  ds, costs, _ = compare.load_table(compare_args(tmp_path / "t.csv", "--cost",
                                                 tmp_path / "c.csv", "--cost-scale", "amount"))
  assert ds.feature_names == ("a", "b")
  np.testing.assert_allclose(ds.row_costs, df["amount"].to_numpy()[:, None, None] * m,
                             rtol=1e-5)
  # decide reads the same column from its CSV files.
  rng = np.random.default_rng(1)
  p = softmax(rng.normal(size=(len(df), 3)))
  for name in ("val", "test"):
    out = pd.DataFrame(p, columns=names)
    out["label"], out["amount"] = df["label"], df["amount"]
    out.to_csv(tmp_path / f"{name}.csv", index=False)
  inp = decide.load_inputs(str(tmp_path / "val.csv"), str(tmp_path / "test.csv"),
                           str(tmp_path / "c.csv"), cost_scale="amount")
  np.testing.assert_allclose(inp.test.costs, ds.row_costs, rtol=1e-5)


def test_bayes_with_per_row_costs_equals_numpy():
  rng = np.random.default_rng(0)
  s, n, k = 2, 40, 3
  zt = rng.normal(size=(s, n, k)) * 2
  yv, yt = rng.integers(0, k, (s, n)), rng.integers(0, k, (s, n))
  cv, ct = rng.uniform(0, 5, (s, n, k, k)), rng.uniform(0, 5, (s, n, k, k))
  vs = cj.VectorScaling(np.full(k, 0.7, np.float32), np.array([0.1, -0.2, 0.0], np.float32))
  preds = []
  for i in range(s):
    out = jax.jit(scoring._decide)(zt[i].astype(np.float32), ct[i].astype(np.float32),
                                   np.float32(1.7), vs)
    rows = np.arange(n)
    for name, p in (("bayes_t", softmax(zt[i] / 1.7)),
                    ("bayes_vs", softmax(zt[i] * 0.7 + np.array([0.1, -0.2, 0.0])))):
      risk = np.einsum("nk,nkj->nj", p, ct[i])  # each row's own matrix
      np.testing.assert_array_equal(out[name], risk.argmin(-1))
      np.testing.assert_allclose(scoring._lookup(ct[i], yt[i], out[name]),
                                 ct[i, rows, yt[i], risk.argmin(-1)])
    np.testing.assert_array_equal(out["argmax"], zt[i].argmax(-1))
    preds.append(np.asarray(out["bayes_t"]))
  # The constant baseline: the class cheapest over each training split, priced per row.
  ytr, ctr = rng.integers(0, k, (s, 50)), rng.uniform(0, 5, (s, 50, k, k))
  row = stats.constant_row(ytr, yv, yt, np.zeros((k, k)), row_costs=(ctr, cv, ct))
  for i in range(s):
    j = ctr[i, np.arange(50), ytr[i]].mean(0).argmin()
    assert row.classes[i] == j
    np.testing.assert_allclose(row.test_cost[i], ct[i, np.arange(n), yt[i], j].mean())
  best = stats.best_constant_costs(yt, ct)
  for i in range(s):
    cost = ct[i, np.arange(n), yt[i], preds[i]].mean()
    np.testing.assert_allclose(
        1 - cost / best[i], float(cj.savings_score(preds[i], yt[i], ct[i].astype(np.float32))),
        rtol=1e-4)


def test_training_program_uses_each_rows_own_costs(tmp_path, monkeypatch):
  """A loss that returns each row's C[0, 1]: the per-epoch training loss is the mean of the
  training rows' values, and the validation curves price each row with its own matrix."""
  df, cost, _ = table(n=200)
  df.to_csv(tmp_path / "t.csv", index=False)
  ds, costs, _ = compare.load_table(compare_args(tmp_path / "t.csv", "--cost-columns",
                                                 TEMPLATE))
  splits = data.make_splits(ds, [0, 1])
  monkeypatch.setitem(training.LOSSES, "spy", lambda z, y, c, hp: c[:, 0, 1] + 0 * z[:, 0])
  arm = training.Arm("spy", "spy", "spy", None, (0.0,))
  feed = distributed.make_feed(splits, [0, 1], distributed.data_mesh())
  n_train = splits.x_train.shape[1]
  assert n_train % 8 == 0

  def model_fn(rngs):
    return training.make_model("mlp", num_features=ds.x.shape[1], num_classes=3, hidden=8,
                               image_shape=None, rngs=rngs)

  graphdef, params0 = training.init_params(model_fn, 2)
  prep = training.prepare_arm(arm, graphdef=graphdef, params0=params0, feed=feed, costs=costs,
                              lrs=[1e-2], epochs=2, batch_size=8, weight_decay=0.0)
  res = training.execute(prep, feed=feed, num_costs=len(costs))
  expect = splits.c_train[:, :, 0, 1].mean(axis=1)  # (S,)
  np.testing.assert_allclose(res.train_loss[0, 0], np.stack([expect, expect], -1), rtol=1e-5)
  for s in range(2):
    z = res.val_logits[0, 0, s]
    c, y = splits.c_val[s], splits.y_val[s]
    rows = np.arange(len(y))
    np.testing.assert_allclose(res.val_cost_curve[0, 0, s, -1],
                               c[rows, y, z.argmax(-1)].mean(), rtol=1e-5)
    bayes = np.einsum("nk,nkj->nj", softmax(z.astype(np.float64)), c).argmin(-1)
    np.testing.assert_allclose(res.val_cost_curve_bayes[0, 0, s, -1],
                               c[rows, y, bayes].mean(), rtol=1e-5)


def decide_files(d, *, labels="string", n=300, seed=0):
  df, cost, names = table(n=n, labels=labels, seed=seed)
  rng = np.random.default_rng(seed + 1)
  z = 2 * rng.normal(size=(n, 3))
  out = pd.DataFrame(softmax(z), columns=names)
  out["id"] = [f"r{i}" for i in range(n)]
  out["label"] = df["label"]
  for c in df.columns:
    if c.startswith("c["):
      out[c] = df[c]
  return out, cost, names


def decide_args(tmp_path, *argv):
  p = argparse.ArgumentParser()
  decide.add_arguments(p)
  return p.parse_args(["--out", str(tmp_path / "out"), "--bootstrap", "50", *map(str, argv)])


@pytest.mark.parametrize("labels", ["string", "integer"])
def test_decide_per_row_costs_and_expected_cost_column(tmp_path, labels):
  val, cv, names = decide_files(tmp_path, labels=labels, seed=0)
  test, ct, _ = decide_files(tmp_path, labels=labels, seed=5)
  val.to_csv(tmp_path / "val.csv", index=False)
  test.to_csv(tmp_path / "test.csv", index=False)
  summary = decide.run(decide_args(tmp_path, "--val", tmp_path / "val.csv", "--test",
                                   tmp_path / "test.csv", "--cost-columns", TEMPLATE,
                                   "--calibration", "none", "--id-column", "id", "--quiet"))
  pred = pd.read_csv(tmp_path / "out" / "predictions.csv", dtype=str, keep_default_na=False)
  assert list(pred.columns) == ["id", "argmax", "bayes_raw", "bayes", "expected_cost", "label"]
  p = test[names].to_numpy()
  risk = np.einsum("nk,nkj->nj", p, ct)  # each row's own matrix
  index = {c: i for i, c in enumerate(names)}
  bayes = np.array([index[v] for v in pred["bayes"]])
  np.testing.assert_array_equal(bayes, risk.argmin(-1))
  np.testing.assert_allclose(pred["expected_cost"].astype(float), risk.min(-1), rtol=1e-4,
                             atol=1e-5)
  y = np.array([index[str(v)] for v in test["label"]])
  rows = np.arange(len(y))
  t = summary["test"]
  np.testing.assert_allclose(t["bayes_calibrated"]["mean_cost"], ct[rows, y, bayes].mean(),
                             rtol=1e-5)
  np.testing.assert_allclose(t["argmax"]["mean_cost"], ct[rows, y, p.argmax(-1)].mean(),
                             rtol=1e-5)
  sav = float(cj.savings_score(bayes, y, ct.astype(np.float32)))
  np.testing.assert_allclose(t["bayes_calibrated"]["savings_score"], sav, rtol=1e-4)
  assert summary["best_constant_cost"] == pytest.approx(ct[rows, y].mean(0).min())
  report = (tmp_path / "out" / "report.md").read_text()
  assert "per-row costs" in report and "savings score" in report


def _bad_decide(tmp_path, frame_edit=None, **flags):
  val, _, _ = decide_files(tmp_path, seed=0)
  test, _, _ = decide_files(tmp_path, seed=5)
  if frame_edit:
    frame_edit(test)
  val.to_csv(tmp_path / "val.csv", index=False)
  test.to_csv(tmp_path / "test.csv", index=False)
  argv = ["--val", tmp_path / "val.csv", "--test", tmp_path / "test.csv", "--id-column", "id"]
  for k, v in flags.items():
    argv += [f"--{k.replace('_', '-')}", v]
  return decide_args(tmp_path, *argv)


def _set(col, row, value):
  def edit(df):
    df[col] = df[col].astype(object)
    df.loc[row, col] = value
  return edit


BAD = [
    ("negative", _set("c[mid->low]", 7, -1.0), {"cost_columns": TEMPLATE},
     "'c[mid->low]' is negative in row 7"),
    ("nan", _set("c[mid->low]", 4, np.nan), {"cost_columns": TEMPLATE},
     "'c[mid->low]' has a missing or non-finite value in row 4"),
    ("text", _set("c[high->low]", 3, "lots"), {"cost_columns": TEMPLATE},
     "'c[high->low]' is not numeric in row 3"),
    ("no match", None, {"cost_columns": "cost_{true}_{pred}"}, "matches no column"),
    ("no placeholders", None, {"cost_columns": "c[{true}]"}, "must contain both {true}"),
    ("both", None, {"cost_columns": TEMPLATE, "cost_scale": "amount", "cost": "asymmetric"},
     "exclude each other"),
    ("scale missing", None, {"cost": "asymmetric", "cost_scale": "amount"},
     "--cost-scale column 'amount' is not in the table"),
    ("stray", lambda df: df.insert(0, "c[mid->huge]", 1.0), {"cost_columns": TEMPLATE},
     "do not name a pair of classes"),
]


@pytest.mark.parametrize("name,edit,flags,message", BAD, ids=[b[0] for b in BAD])
def test_decide_bad_cost_input(tmp_path, name, edit, flags, message):
  if name == "scale missing":  # the cost columns would be class columns: drop them
    def edit(df):
      for c in [c for c in df.columns if c.startswith("c[")]:
        del df[c]
  args = _bad_decide(tmp_path, edit, **flags)
  if name == "scale missing":
    val = pd.read_csv(tmp_path / "val.csv")
    val.drop(columns=[c for c in val.columns if c.startswith("c[")]).assign(
        amount=1.0).to_csv(tmp_path / "val.csv", index=False)
  with pytest.raises(UserInputError, match=message.replace("[", r"\[").replace("{", r"\{")):
    decide.run(args)
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name,edit,flags,message", BAD, ids=[b[0] for b in BAD])
def test_compare_bad_cost_input(tmp_path, name, edit, flags, message):
  df, _, _ = table()
  if name == "scale missing":
    df = df.drop(columns=["amount"])
  if edit:
    edit(df)
  df.to_csv(tmp_path / "t.csv", index=False)
  argv = ["compare", "--data", str(tmp_path / "t.csv"), "--out", str(tmp_path / "out")]
  for k, v in flags.items():
    argv += [f"--{k.replace('_', '-')}", v]
  args = main.build_parser().parse_args(argv)
  with pytest.raises(UserInputError, match=message.replace("[", r"\[").replace("{", r"\{")):
    compare.run(args)
  assert not (tmp_path / "out").exists()


def test_console_one_line_exit_2_and_nothing_written(tmp_path):
  df, _, _ = table()
  _set("c[mid->low]", 7, -1.0)(df)
  df.to_csv(tmp_path / "t.csv", index=False)
  env = dict(os.environ, PYTHONPATH=ROOT)
  for argv in (["compare", "--data", tmp_path / "t.csv", "--cost-columns", TEMPLATE],):
    proc = subprocess.run([sys.executable, "-m", "costjax.cli", *map(str, argv), "--out",
                           str(tmp_path / "out")], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_compare_end_to_end_with_cost_columns(tmp_path):
  df, cost, _ = table(n=300)
  df.to_csv(tmp_path / "t.csv", index=False)
  args = main.build_parser().parse_args(
      ["compare", "--data", str(tmp_path / "t.csv"), "--cost-columns", TEMPLATE, "--seeds",
       "2", "--epochs", "3", "--lrs", "1e-2", "--arms", "ce,ec", "--out",
       str(tmp_path / "out"), "--progress", "none"])
  summary = compare.run(args)
  ds, _, _ = compare.load_table(args)
  splits = data.make_splits(ds, [0, 1])
  const = next(r for r in summary["rows"] if r["arm"] == "constant")
  best = stats.best_constant_costs(splits.y_test, splits.c_test)
  np.testing.assert_allclose(const["test_savings"], 1 - np.asarray(const["test_cost"]) / best,
                             rtol=1e-6)
  assert summary["per_row_costs"]["cost_columns"] == TEMPLATE
  report = (tmp_path / "out" / "report.md").read_text()
  assert "Per-row costs: each row's own costs from the columns" in report
  assert "| savings |" in report
  assert jax.device_count() >= 1
