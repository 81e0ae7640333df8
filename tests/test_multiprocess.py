"""``costjax compare`` over 2 processes x 2 CPU devices equals 1 process x 4 devices.

Two local processes talk through JAX's coordinator on 127.0.0.1 (a free port) and gloo
CPU collectives; each feeds only its own devices' rows, and only process 0 writes.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# One arm (cross-entropy, which every run includes): each arm is one more training program
# to compile in each of the three processes, and the property checked (two processes x two
# devices give the one-process results on every decoding) does not depend on the loss.
TINY = ("--seeds", "2", "--epochs", "2", "--lrs", "1e-2", "--arms", "ce",
        "--cost", "asymmetric", "--progress", "lines")


def _env(devices: int) -> dict:
  env = dict(os.environ)
  env["JAX_PLATFORMS"] = "cpu"
  env["XLA_FLAGS"] = (f"{os.environ.get('XLA_FLAGS', '')}"
                      f" --xla_force_host_platform_device_count={devices}").strip()
  return env


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_equal_one_process_with_as_many_devices(tmp_path):
  cmd = [sys.executable, "-m", "costjax.cli", "compare", *TINY]
  port = _free_port()
  procs = [
      subprocess.Popen(
          [*cmd, "--out", str(tmp_path / f"two_p{i}"), "--coordinator", f"127.0.0.1:{port}",
           "--num-processes", "2", "--process-id", str(i)],
          cwd=ROOT, env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)
  ]
  try:
    outs = [p.communicate(timeout=900)[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, out in zip(procs, outs, strict=True):
    assert p.returncode == 0, out[-3000:]
  one = subprocess.run([*cmd, "--out", str(tmp_path / "one")], cwd=ROOT, env=_env(4),
                       capture_output=True, text=True, timeout=900, check=False)
  assert one.returncode == 0, one.stderr[-3000:]

  assert not (tmp_path / "two_p1").exists()  # only process 0 writes
  assert "verdict" not in outs[1]  # nor prints
  two = json.loads((tmp_path / "two_p0" / "results.json").read_text())
  ref = json.loads((tmp_path / "one" / "results.json").read_text())
  assert two["devices"].startswith("4 x cpu") and two["devices"].endswith("2 process(es)")
  assert ref["devices"].startswith("4 x cpu") and ref["devices"].endswith("1 process(es)")
  # arms x costs x decodings, and the best constant prediction per cost
  assert len(two["rows"]) == len(ref["rows"]) == 1 * 1 * 3 + 1
  for a, b in zip(two["rows"], ref["rows"], strict=True):
    assert (a["cost"], a["arm"], a["decoding"]) == (b["cost"], b["arm"], b["decoding"])
    if a["decoding"] == "bayes_vs":
      # Vector scaling stops at its L-BFGS budget short of an optimum at infinite scales, so
      # rounding-level differences between collective implementations (gloo across
      # processes, in-process otherwise) can move a decision or two.
      assert abs(a["test_cost_mean"] - b["test_cost_mean"]) < 0.03
      continue
    np.testing.assert_allclose(a["test_cost"], b["test_cost"], rtol=0, atol=1e-6)
    assert a["val_cost"] == pytest.approx(b["val_cost"], abs=1e-6)
  for a, b in zip(two["arms"], ref["arms"], strict=True):
    for cost in ("asymmetric",):
      np.testing.assert_allclose(a["val_cost_curve_mean"][cost], b["val_cost_curve_mean"][cost],
                                 atol=1e-6)
