"""A batch sharded over 8 forced host devices gives the single-device result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def test_sharded_batch_equals_single_device():
  env = dict(os.environ)
  env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
  env["JAX_PLATFORMS"] = "cpu"
  root = Path(__file__).resolve().parents[1]
  out = subprocess.run(
      [sys.executable, str(root / "tests" / "sharded_check.py")],
      env=env, cwd=root, capture_output=True, text=True, timeout=300,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  report = json.loads(out.stdout.strip().splitlines()[-1])
  assert set(report) >= {
      "expected_cost", "soft_label_cross_entropy", "cdw_ce", "ordinal_emd",
      "cost_regularized_cross_entropy", "bayes_decision", "mean_cost",
      "per_example expected_cost", "per_example expected_cost probs",
      "per_example bayes_decision", "per_example savings_score",
      "per_example calibrate_cost_sets", "mesh tree expected_cost probs",
      "mesh tree bayes_decision", "mesh tree expected_cost levels",
      "mesh tree_wasserstein probs", "mesh sinkhorn_loss probs",
  }
  for name, deviation in report.items():
    assert deviation <= 1e-5, (name, deviation)
