"""End-to-end tests of examples/flax_train.py and examples/compare_losses.py.

The scripts run in subprocesses on tiny settings (1 epoch, 2 seeds), once on one CPU
device and once on 8 forced host devices; bad user files are checked in process
(fast) and once through the command line (clear message, exit status 2).
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
sys.path.insert(0, EXAMPLES)

import common  # noqa: E402
import compare_losses  # noqa: E402

import costjax as cj  # noqa: E402

EIGHT = "--xla_force_host_platform_device_count=8"


def run_script(script, *args, devices=1, timeout=240):
  env = dict(os.environ)
  flags = env.get("XLA_FLAGS", "")
  flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", flags).strip()
  if devices > 1:
    flags = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
  env["XLA_FLAGS"] = flags
  env["JAX_PLATFORMS"] = "cpu"
  return subprocess.run(
      [sys.executable, os.path.join(EXAMPLES, script), *map(str, args)],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def assert_ok(proc):
  assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"


def assert_report_lists_every_arm(out, ordinal):
  report = open(os.path.join(out, "report.md"), encoding="utf-8").read()
  for arm in compare_losses.default_arms(ordinal):
    for dec in ("argmax", "bayes"):
      assert f"| {arm.label} | {dec} |" in report, (arm.label, dec)
  for name in ("test_cost.png", "training_curves.png", "results.json"):
    assert os.path.getsize(os.path.join(out, name)) > 0
  return report


# --------------------------------------------------------------------------- #
# End to end.
# --------------------------------------------------------------------------- #


def test_compare_losses_digits_one_device(tmp_path):
  out = tmp_path / "digits"
  proc = run_script("compare_losses.py", "--seeds", 2, "--epochs", 1, "--lrs", "1e-2",
                    "--cost", "asymmetric,ordinal", "--out", out)
  assert_ok(proc)
  report = assert_report_lists_every_arm(out, ordinal=False)
  assert "1 x cpu" in report
  assert "## Cost: asymmetric" in report and "## Cost: ordinal" in report
  res = json.load(open(out / "results.json"))
  assert all(len(r["test_cost"]) == 2 for r in res["rows"])
  assert all(np.isfinite(r["test_cost"]).all() for r in res["rows"] if r["arm"] != "ec")


def test_compare_losses_diamonds_eight_devices(tmp_path):
  out = tmp_path / "diamonds"
  proc = run_script("compare_losses.py", "--data", "diamonds", "--max-rows", 600, "--seeds", 2,
                    "--epochs", 1, "--lrs", "1e-2", "--cost", "ordinal", "--out", out,
                    devices=8)
  assert_ok(proc)
  report = assert_report_lists_every_arm(out, ordinal=True)
  assert "8 x cpu" in report
  assert "| ordinal EMD | bayes |" in report


@pytest.mark.parametrize("devices", [1, 8])
def test_flax_train_end_to_end(tmp_path, devices):
  out = tmp_path / f"ft{devices}"
  extra = ("--model", "cnn") if devices == 8 else ("--loss", "ce_ec", "--loss-param", 10)
  proc = run_script("flax_train.py", "--epochs", 1, "--out", out, *extra, devices=devices)
  assert_ok(proc)
  assert "epoch 1/1" in proc.stdout  # the progress bar
  m = json.load(open(out / "metrics.json"))
  assert m["devices"].startswith(f"{devices} x cpu")
  assert 0.0 <= m["test_acc_argmax"] <= 1.0 and len(m["history"]["val_cost"]) == 1
  assert m["test_cost_bayes"] >= 0
  for name in ("learning_curves.png", "confusion.png", "summary.md"):
    assert os.path.getsize(out / name) > 0


def test_user_npz_and_csv_files_work(tmp_path):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(150, 4)).astype(np.float32)
  y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0.5)
  np.savez(tmp_path / "mine.npz", x=x, y=y)
  np.savetxt(tmp_path / "cost.csv", [[0, 1, 4], [1, 0, 1], [9, 2, 0]], delimiter=",")
  proc = run_script("flax_train.py", "--data", tmp_path / "mine.npz", "--cost",
                    tmp_path / "cost.csv", "--epochs", 30, "--lr", 0.01, "--batch-size", 32,
                    "--no-progress", "--out", tmp_path / "ft")
  assert_ok(proc)
  assert json.load(open(tmp_path / "ft" / "metrics.json"))["test_acc_argmax"] > 0.5

  with open(tmp_path / "mine.csv", "w") as f:
    f.write("a,b,c,d,target\n")
    for row, lab in zip(x, y, strict=True):
      f.write(",".join(f"{v:.5f}" for v in row) + f",{lab}\n")
  proc = run_script("compare_losses.py", "--data", tmp_path / "mine.csv", "--label-column",
                    "target", "--cost", tmp_path / "cost.csv", "--ordinal", "--arms", "emd",
                    "--seeds", 2, "--epochs", 1, "--lrs", "1e-2", "--out", tmp_path / "cl")
  assert_ok(proc)
  report = open(tmp_path / "cl" / "report.md").read()
  assert "| cross-entropy | bayes |" in report and "| ordinal EMD | argmax |" in report


# --------------------------------------------------------------------------- #
# Untrusted input.
# --------------------------------------------------------------------------- #


def test_pickled_npz_is_rejected(tmp_path):
  path = tmp_path / "evil.npz"
  np.savez(path, x=np.array([{"a": 1}] * 6, dtype=object), y=np.zeros(6, int))
  with pytest.raises(common.UserInputError, match="pickled"):
    common.load_user_table(str(path))


def test_pickled_npz_cli_message_and_exit_status(tmp_path):
  path = tmp_path / "evil.npz"
  np.savez(path, x=np.array([object()] * 6, dtype=object), y=np.zeros(6, int))
  proc = run_script("compare_losses.py", "--data", path, "--out", tmp_path / "o")
  assert proc.returncode == 2
  assert "pickled" in proc.stderr and "Traceback" not in proc.stderr
  assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("labels, message", [
    ([0, 1, 2, 3] * 3, r"labels must lie in 0 \.\. 2 .*y\[3\] = 3"),
    ([0, 1, -1, 2] * 3, r"labels must lie in 0 \.\. 2 .*y\[2\] = -1"),
    ([0.0, 1.5, 2.0] * 4, r"labels must be integers"),
])
def test_labels_outside_cost_matrix_classes_are_rejected(tmp_path, labels, message):
  y = np.asarray(labels)
  np.savez(tmp_path / "d.npz", x=np.ones((len(y), 2), np.float32), y=y)
  with pytest.raises(common.UserInputError, match=message):
    common.load_user_table(str(tmp_path / "d.npz"), num_classes=3)


def test_bad_tables_are_rejected(tmp_path):
  x = np.ones((9, 2), np.float32)
  with pytest.raises(common.UserInputError, match="non-finite"):
    common.validate_table(np.where(np.eye(9, 2) > 0, np.nan, x), np.arange(9) % 3, source="t")
  with pytest.raises(common.UserInputError, match="2-D"):
    common.validate_table(np.ones(9), np.arange(9) % 3, source="t")
  with pytest.raises(common.UserInputError, match="one label per row"):
    common.validate_table(x, np.arange(8) % 3, source="t")
  with pytest.raises(common.UserInputError, match="class 2 has 1 example"):
    common.validate_table(x, np.array([0, 0, 0, 1, 1, 1, 0, 1, 2]), source="t")
  np.savez(tmp_path / "noy.npz", x=x)
  with pytest.raises(common.UserInputError, match="missing"):
    common.load_user_table(str(tmp_path / "noy.npz"))
  (tmp_path / "t.csv").write_text("a,b\n1,0\n")
  with pytest.raises(common.UserInputError, match="no label column 'label'"):
    common.load_user_table(str(tmp_path / "t.csv"))
  (tmp_path / "s.csv").write_text("a,label\n1,cat\n2,dog\n3,cat\n")
  with pytest.raises(common.UserInputError, match="integers 0 .. K-1"):
    common.load_user_table(str(tmp_path / "s.csv"))


def test_bad_cost_csv_is_rejected(tmp_path):
  neg = tmp_path / "neg.csv"
  np.savetxt(neg, [[0, -1], [1, 0]], delimiter=",")
  with pytest.raises(common.UserInputError, match="negative entry: C\\[0, 1\\]"):
    common.cost_matrix(str(neg), 2)
  square = tmp_path / "sq.csv"
  np.savetxt(square, np.ones((3, 3)), delimiter=",")
  with pytest.raises(common.UserInputError, match="shape \\(3, 3\\).*must be 10 x 10"):
    common.cost_matrix(str(square), 10)
  rect = tmp_path / "rect.csv"
  np.savetxt(rect, np.ones((2, 3)), delimiter=",")
  with pytest.raises(common.UserInputError, match="square"):
    common.cost_matrix(str(rect), 2)
  with pytest.raises(common.UserInputError, match="not a built-in"):
    common.cost_matrix("no_such_cost", 3)


def test_wrong_shape_cost_cli(tmp_path):
  np.savetxt(tmp_path / "c.csv", np.ones((3, 3)) - np.eye(3), delimiter=",")
  proc = run_script("flax_train.py", "--cost", tmp_path / "c.csv", "--out", tmp_path / "o")
  assert proc.returncode == 2
  assert "must be 10 x 10" in proc.stderr  # digits has 10 classes, the CSV 3
  assert "Traceback" not in proc.stderr


# --------------------------------------------------------------------------- #
# Pieces.
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("name", common.BUILTIN_COSTS)
@pytest.mark.parametrize("k", [5, 10])
def test_builtin_costs_are_valid(name, k):
  c = common.builtin_cost(name, k)
  cj.check_cost_matrix(c)
  assert c.shape == (k, k) and np.all(np.diag(c) == 0) and np.all(c[~np.eye(k, dtype=bool)] > 0)


def test_asymmetric_digits_matrix_matches_reference():
  c = common.asymmetric_cost(10)
  assert c[7, 1] == c[3, 8] == c[8, 3] == c[4, 9] == c[9, 4] == c[5, 6] == 20
  assert c[1, 7] == 1 and (c == 20).sum() == 6


def test_temperature_fit_recovers_scale():
  import jax
  import jax.numpy as jnp

  k1, k2 = jax.random.split(jax.random.key(0))
  true_logits = 2.0 * jax.random.normal(k1, (4000, 5))
  labels = jax.random.categorical(k2, true_logits)
  t = float(common.fit_temperature(true_logits * 3.0, labels))
  assert abs(t - 3.0) < 0.35
  assert float(common.fit_temperature(jnp.full((3, 5), jnp.nan), jnp.zeros(3, int))) == 1.0


def test_wilcoxon_handles_ties():
  a = np.array([0.1, 0.2, 0.3])
  assert compare_losses.wilcoxon_p(a, a) == 1.0
  assert 0 < compare_losses.wilcoxon_p(a, a + np.array([0.01, 0.02, 0.03])) <= 1
