"""examples/flax_train.py: train tiny, save an Orbax checkpoint, decide on new rows.

The training run is a subprocess (it sets a global mesh); the checks are in process and
independent of the script's own decoding: the restored model must reproduce the logits the
run saved, the saved temperature must be ``cj.fit_temperature`` of the saved validation
logits, and ``--predict`` must equal a NumPy Bayes decision (softmax(z / T) @ C, argmin) on
rows encoded by hand (one-hot in sorted category order, standardized with the saved
statistics).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "examples"))

import flax_train  # noqa: E402

from costjax.cli import data  # noqa: E402

COST = np.array([[0, 1, 1], [10, 0, 1], [1, 4, 0]], np.float32)
HEADER = ["Gentoo", "Adelie", "Chinstrap"]  # the class order is the cost header's


def run(*args, timeout=300):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, os.path.join(ROOT, "examples", "flax_train.py"),
                         *map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=timeout, check=False)


def softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


@pytest.fixture(scope="module")
def trained(run_once):
  """(data folder, run folder, the training run's stdout): trained once per session
  (conftest's run_once), however xdist spreads this module's tests over its workers."""
  d = run_once("flax-example", _train)
  return d, d / "run", (d / "stdout.txt").read_text()


def _train(d):
  rng = np.random.default_rng(0)
  n = 240
  species = rng.choice(["Adelie", "Chinstrap", "Gentoo"], n)
  bill = {"Adelie": 38.0, "Chinstrap": 48.0, "Gentoo": 47.0}
  mass = {"Adelie": 3700.0, "Chinstrap": 3700.0, "Gentoo": 5000.0}
  df = pd.DataFrame({
      "bill": [rng.normal(bill[s], 2.5) for s in species],
      "mass": [rng.normal(mass[s], 300) for s in species],
      "island": [rng.choice(["Biscoe", "Dream", "Torgersen"]) for _ in species],
      "species": species,
  })
  df.loc[[3, 11], "mass"] = np.nan
  df.to_csv(d / "penguins.csv", index=False)
  new = pd.DataFrame({"island": rng.choice(["Biscoe", "Dream", "Torgersen"], 25),
                      "bill": rng.normal(44, 5, 25), "mass": rng.normal(4200, 600, 25)})
  new.to_csv(d / "new.csv", index=False)  # columns in another order than in training
  pd.DataFrame(COST, index=HEADER, columns=HEADER).to_csv(d / "cost.csv")
  out = d / "run"
  proc = run("--data", d / "penguins.csv", "--label-column", "species", "--cost",
             d / "cost.csv", "--epochs", 3, "--batch-size", 32, "--lr", 1e-2, "--hidden", 16,
             "--no-progress", "--out", out)
  assert proc.returncode == 0, proc.stderr[-3000:]
  (d / "stdout.txt").write_text(proc.stdout)


@pytest.mark.slow
def test_checkpoint_round_trip_and_predict_equals_bayes(trained):
  import costjax as cj

  d, out, stdout = trained
  assert "note: 2 row(s) with missing values were dropped." in stdout
  model, meta = flax_train.load_checkpoint(str(out / "checkpoint"))
  assert meta["class_names"] == HEADER
  np.testing.assert_array_equal(np.asarray(meta["cost"], np.float32), COST)
  # The restored model is the trained one: it reproduces the saved test logits.
  ds = data.load_data(str(d / "penguins.csv"), label_column="species", num_classes=3,
                      class_names=HEADER)
  sp = data.make_splits(ds, [0])
  saved = np.load(out / "test_outputs.npz")
  np.testing.assert_array_equal(saved["y"], sp.y_test[0])
  np.testing.assert_allclose(np.asarray(model(sp.x_test[0])), saved["logits"], rtol=1e-5,
                             atol=1e-5)
  # The saved temperature is the library's fit on the saved validation logits.
  val = np.load(out / "val_outputs.npz")
  assert meta["temperature"] == pytest.approx(
      float(cj.fit_temperature(val["logits"], val["y"])), rel=1e-5)

  # --predict in process (the model is already loaded here; the command line's exit
  # statuses are checked in subprocesses by the next test).
  flax_train.main(["--predict", str(d / "new.csv"), "--out", str(out)])
  got = pd.read_csv(out / "predictions.csv")
  new = pd.read_csv(d / "new.csv")
  islands = ["Biscoe", "Dream", "Torgersen"]
  x = np.column_stack([new["bill"], new["mass"]]
                      + [(new["island"] == i).astype(float) for i in islands])
  x = (x - np.asarray(meta["mean"])) / np.asarray(meta["scale"])
  z = np.asarray(model(x.astype(np.float32)), np.float64) / meta["temperature"]
  risk = softmax(z) @ COST.astype(np.float64)
  assert list(got["bayes"]) == [HEADER[i] for i in risk.argmin(-1)]
  assert list(got["argmax"]) == [HEADER[i] for i in z.argmax(-1)]
  np.testing.assert_allclose(got["expected_cost"], risk.min(-1), rtol=1e-4, atol=1e-5)
  metrics = json.load(open(out / "metrics.json"))
  assert metrics["temperature"] == meta["temperature"]


@pytest.mark.slow
def test_predict_rejects_bad_rows_and_missing_checkpoint(trained, tmp_path):
  d, out, _ = trained
  bad = pd.read_csv(d / "new.csv")
  bad.loc[2, "island"] = "Atlantis"
  bad.to_csv(tmp_path / "bad.csv", index=False)
  proc = run("--predict", tmp_path / "bad.csv", "--out", out)
  assert proc.returncode == 2
  assert "'Atlantis'" in proc.stderr and "Traceback" not in proc.stderr
  proc = run("--predict", d / "new.csv", "--checkpoint", tmp_path / "nothing",
             "--out", tmp_path / "o")
  assert proc.returncode == 2 and "no checkpoint there" in proc.stderr
  assert not (tmp_path / "o").exists()


def test_features_of_encodes_like_training(tmp_path):
  # In process, no training: the encoding saved in a checkpoint's metadata is applied to new
  # rows by column name, then standardized with the saved statistics.
  enc = data.FeatureEncoding(("a", "c"), (None, ("x", "y")))
  meta = {"encoding": enc.to_json(), "model": {"num_features": 3},
          "mean": [1.0, 0.5, 0.5], "scale": [2.0, 0.5, 0.5]}
  pd.DataFrame({"c": ["y", "x"], "b": [9, 9], "a": [3.0, 1.0]}).to_csv(tmp_path / "r.csv",
                                                                       index=False)
  x = flax_train.features_of(str(tmp_path / "r.csv"), meta)
  np.testing.assert_allclose(x, [[1.0, -1.0, 1.0], [0.0, 1.0, -1.0]])
  pd.DataFrame({"a": [np.nan], "c": ["x"]}).to_csv(tmp_path / "m.csv", index=False)
  with pytest.raises(data.UserInputError, match="missing value"):
    flax_train.features_of(str(tmp_path / "m.csv"), meta)
