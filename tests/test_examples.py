"""End-to-end tests of the example scripts (examples/flax_train.py, compare_losses.py).

``compare_losses.py`` is a thin wrapper around ``costjax compare`` (tested in
tests/test_cli_compare.py); here it is checked to pass its arguments through. The
Flax trainer runs in subprocesses on small settings, on one CPU device and on 8 forced
host devices, and must actually learn.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")


def run_script(script, *args, devices=1, timeout=600):
  env = dict(os.environ)
  flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", ""))
  if devices > 1:
    flags += f" --xla_force_host_platform_device_count={devices}"
  env["XLA_FLAGS"] = flags.strip()
  env["JAX_PLATFORMS"] = "cpu"
  return subprocess.run(
      [sys.executable, os.path.join(EXAMPLES, script), *map(str, args)],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def assert_ok(proc):
  assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"


def test_compare_losses_wrapper_passes_flags_to_costjax_compare(tmp_path):
  proc = run_script("compare_losses.py", "--help")
  assert_ok(proc)
  assert "usage: costjax compare" in proc.stdout and "--coordinator" in proc.stdout
  proc = run_script("compare_losses.py", "--arms", "nope", "--out", tmp_path / "o")
  assert proc.returncode == 2
  assert proc.stderr.strip().startswith("error: --arms: unknown arm id(s) ['nope']")
  assert not (tmp_path / "o").exists()


def test_summarize_renders_a_results_file(tmp_path):
  res = {
      "data": "d", "costs": ["c"], "seeds": [0, 1], "epochs": 3, "devices": "1 x cpu",
      "total_seconds": 5.0,
      "verdicts": [{"sentence": "Use it."}],
      "rows": [{"cost": "c", "arm": "ce", "label": "cross-entropy", "decoding": "argmax",
                "decoding_label": "argmax", "lr": 0.01, "hp_name": None, "hp": None,
                "test_cost_mean": 0.12345, "test_cost_std": 0.01, "test_cost_ci95": [0.1, 0.2],
                "test_acc_mean": 0.9, "p_vs_ce_argmax": 1.0, "p_vs_ce_bayes": 0.0312,
                "diverged": True},
               {"cost": "c", "arm": "constant", "label": "best constant prediction",
                "decoding": "none", "decoding_label": "none", "lr": None, "hp_name": None,
                "hp": None, "chosen": "class b", "test_cost_mean": 0.5, "test_cost_std": 0.0,
                "test_cost_ci95": [0.5, 0.5], "test_acc_mean": 0.2, "p_vs_ce_argmax": 0.001,
                "p_vs_ce_bayes": 0.002, "diverged": False}],
  }
  path = tmp_path / "results.json"
  path.write_text(json.dumps(res))
  out = subprocess.run([sys.executable, os.path.join(EXAMPLES, "summarize.py"), str(path)],
                       capture_output=True, text=True, check=True).stdout
  assert "Verdict: Use it." in out
  assert ("| cross-entropy | argmax | lr=0.01 | 0.1235 ± 0.0100 (diverged) | [0.1000, 0.2000] "
          "| 0.900 | — | 0.0312 |") in out
  assert "| best constant prediction | none | class b | 0.5000 ± 0.0000 |" in out


@pytest.mark.slow
@pytest.mark.parametrize("devices", [1, 8])
def test_flax_train_learns_digits(tmp_path, devices):
  out = tmp_path / f"ft{devices}"
  # CE + 10 * expected cost learns slowly at the default lr 3e-3 (test accuracy 0.67 after 4
  # epochs); lr 1e-2 reaches 0.89. The CNN on 8 devices, the dearer run, reaches 0.90 in 2
  # epochs at lr 1e-2.
  epochs = 2 if devices == 8 else 4
  extra = (("--model", "cnn") if devices == 8 else ("--loss", "ce_ec", "--loss-param", 10))
  proc = run_script("flax_train.py", "--epochs", epochs, "--lr", 1e-2, "--out", out, *extra,
                    devices=devices)
  assert_ok(proc)
  assert f"epoch {epochs}/{epochs}" in proc.stdout  # the progress report
  m = json.load(open(out / "metrics.json"))
  assert m["devices"].startswith(f"{devices} x cpu")
  assert len(m["history"]["val_cost"]) == epochs
  assert m["test_acc_argmax"] > 0.85  # chance is 0.1
  # The reported mean costs are the cost-weighted confusion matrices' totals / test size.
  from costjax.cli import data

  n_test = data.make_splits(data.load_digits(), [0]).y_test.shape[1]
  for name in ("argmax", "bayes"):
    conf = np.asarray(m["cost_weighted_confusion"][name])
    assert conf.shape == (10, 10) and np.all(np.diag(conf) == 0)
    assert conf.sum() / n_test == pytest.approx(m[f"test_cost_{name}"], rel=1e-5)
  for name in ("learning_curves.png", "confusion.png"):
    assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert f"{m['test_acc_argmax']:.4f}" in (out / "summary.md").read_text()


@pytest.mark.slow
def test_flax_train_on_a_user_npz_file(tmp_path):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(300, 4)).astype(np.float32)
  y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0.5)
  np.savez(tmp_path / "mine.npz", x=x, y=y)
  np.savetxt(tmp_path / "cost.csv", [[0, 1, 4], [1, 0, 1], [9, 2, 0]], delimiter=",")
  proc = run_script("flax_train.py", "--data", tmp_path / "mine.npz", "--cost",
                    tmp_path / "cost.csv", "--epochs", 40, "--lr", 0.01, "--batch-size", 32,
                    "--no-progress", "--out", tmp_path / "ft")
  assert_ok(proc)
  m = json.load(open(tmp_path / "ft" / "metrics.json"))
  majority = np.bincount(y).max() / len(y)  # about 0.5: a constant predictor's accuracy
  assert m["test_acc_argmax"] > majority + 0.3
