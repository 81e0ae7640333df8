"""Smoke test of an installed costjax (what `pip install costjax[cli]` gives a user).

Run it with the interpreter of a virtual environment that has the wheel installed, from a
directory outside the source tree (.ci/package_smoke.sh does both), so that `import costjax`
can only find the installed package:

  python smoke_test.py [--library-only] [--pins FILE] WORKDIR

Checks: the import comes from site-packages and `costjax.__version__` equals the installed
distribution's version; a loss under `jax.jit` and `jax.grad` against a NumPy formula;
`costjax --help`; `costjax decide` on a tiny file; a tiny `costjax compare`.
`--library-only` stops after the library checks (an environment without the `cli` extra);
`--pins FILE` first checks that every `name==version` line of FILE is what is installed.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import time


def run(argv: list[str], cwd: str) -> str:
  t = time.perf_counter()
  proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=300)
  if proc.returncode != 0:
    sys.exit(f"smoke test: {' '.join(argv)} exited {proc.returncode}\n{proc.stdout}\n"
             f"{proc.stderr}")
  print(f"  {' '.join(os.path.basename(a) for a in argv[:3])}: {time.perf_counter() - t:.1f} s")
  return proc.stdout


def check_pins(path: str) -> None:
  with open(path, encoding="utf-8") as f:
    pins = [line.split("#")[0].strip() for line in f]
  for pin in filter(None, pins):
    name, version = pin.split("==")
    got = importlib.metadata.version(name)
    assert got == version, f"{name} {got} is installed, {path} pins {version}"
  print(f"  installed versions match {os.path.basename(path)}")


def main() -> None:
  import argparse

  parser = argparse.ArgumentParser()
  parser.add_argument("--library-only", action="store_true")
  parser.add_argument("--pins")
  parser.add_argument("work")
  args = parser.parse_args()
  library_only, work = args.library_only, args.work
  if args.pins:
    check_pins(args.pins)
  os.makedirs(work, exist_ok=True)
  os.chdir(work)

  import jax
  import jax.numpy as jnp
  import numpy as np

  import costjax as cj

  where = os.path.dirname(cj.__file__)
  assert "site-packages" in where, f"costjax imported from {where}, not an installed copy"
  assert cj.__version__ == importlib.metadata.version("costjax"), cj.__version__
  print(f"  costjax {cj.__version__} from {where}; jax {jax.__version__}, "
        f"python {sys.version.split()[0]}")
  for name in cj.__all__:
    assert hasattr(cj, name), name

  # The expected cost sum_j softmax(z)_j C[y, j] and its gradient p * (c - <p, c>), in NumPy.
  cost = np.array([[0., 1., 4.], [1., 0., 2.], [4., 2., 0.]])
  z = np.array([[0.5, -1.0, 2.0], [1.5, 0.0, -0.5]])
  y = np.array([2, 0])
  p = np.exp(z - z.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  c = cost[y]
  want = (p * c).sum(1)
  want_grad = p * (c - want[:, None])
  f = jax.jit(lambda z: cj.expected_cost(z, jnp.asarray(y), jnp.asarray(cost)).sum())
  np.testing.assert_allclose(f(jnp.asarray(z)), want.sum(), rtol=1e-5)
  np.testing.assert_allclose(jax.jit(jax.grad(f))(jnp.asarray(z)), want_grad, rtol=1e-5,
                             atol=1e-6)
  print("  expected_cost under jit and grad: ok")
  if library_only:
    return

  costjax = os.path.join(os.path.dirname(sys.executable), "costjax")
  assert "compare" in run([costjax, "--help"], work)

  rng = np.random.default_rng(0)
  yv = rng.integers(0, 3, size=60)
  zv = 2.0 * np.eye(3)[yv] + rng.normal(size=(60, 3))
  np.savez("val.npz", logits=zv, y=yv)
  np.savez("test.npz", logits=zv[:20])
  np.savetxt("cost.csv", cost, delimiter=",")
  run([costjax, "decide", "--val", "val.npz", "--test", "test.npz", "--cost", "cost.csv",
       "--calibration", "temperature", "--bootstrap", "100", "--out", "decide"], work)
  for f in ("predictions.csv", "report.md"):
    assert os.path.getsize(os.path.join("decide", f)) > 0, f

  run([costjax, "compare", "--max-rows", "300", "--arms", "ce,ec", "--seeds", "2",
       "--epochs", "1", "--lrs", "1e-2", "--hidden", "8", "--progress", "none",
       "--out", "compare"], work)
  for f in ("report.md", "results.json", "results.csv"):
    assert os.path.getsize(os.path.join("compare", f)) > 0, f
  with open(os.path.join("compare", "report.md"), encoding="utf-8") as fh:
    assert "## Verdict" in fh.read()


if __name__ == "__main__":
  main()
  print("smoke test passed")
