"""Benchmark: costjax.sinkhorn_loss vs OTT-JAX (vmapped) and POT, loss and gradient.

For each (B, K, epsilon) the script times the jitted value-and-gradient of the
mean loss w.r.t. the logits (minimum over repeats, compilation excluded) for

* costjax: ``sinkhorn_loss`` (batched loop, shared cost matrix), ``tol`` = the
  threshold below;
* OTT-JAX: ``ott.solvers.linear.sinkhorn.Sinkhorn()`` with its defaults
  (lse_mode, threshold 1e-3, max 2000 iterations, implicit differentiation),
  ``jax.vmap``-ed over the batch, geometry ``Geometry(cost_matrix=C.T,
  epsilon=eps)`` (source = prediction), loss ``reg_ot_cost``;
* POT: ``ot.batch.solve_batch(method="log_sinkhorn")`` on NumPy, forward only
  (NumPy has no autodiff), on at most ``--pot-max-batch`` examples and scaled
  to the full batch.

It reports time ratios, the largest difference between the costjax and OTT
values, and each plan's L1 marginal errors (both marginals, max over the
batch). Targets are cost-smoothed soft labels ``softmax(-C[y] / T)``.

Usage: ``python benchmarks/sinkhorn.py [--quick]``.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

import costjax as cj


def _timeit(fn, *args, repeats):
  out = fn(*args)
  jax.block_until_ready(out)
  best = np.inf
  for _ in range(repeats):
    t = time.perf_counter()
    out = fn(*args)
    jax.block_until_ready(out)
    best = min(best, time.perf_counter() - t)
  return best, out


def _problem(batch, k, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(k, 2))
  dist = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
  cost = dist * rng.uniform(1.0, 2.0, (k, k))  # asymmetric
  np.fill_diagonal(cost, 0.0)
  cost = (cost / cost.max()).astype(np.float32)
  labels = rng.integers(0, k, batch)
  logits = rng.normal(size=(batch, k)).astype(np.float32) * 2
  targets = cj.cost_soft_labels(jnp.asarray(labels), jnp.asarray(cost), temperature=0.05)
  return jnp.asarray(logits), targets, jnp.asarray(cost)


def _marginal_errors(plan_true_pred, p, q):
  """L1 errors of (row sums vs q, column sums vs p); plan[..., i, j] with i true, j pred."""
  rows = jnp.abs(plan_true_pred.sum(-1) - q).sum(-1)
  cols = jnp.abs(plan_true_pred.sum(-2) - p).sum(-1)
  return float(rows.max()), float(cols.max())


def run(batch, k, rel_eps, threshold, repeats, pot_max_batch):
  from ott.geometry import geometry
  from ott.problems.linear import linear_problem
  from ott.solvers.linear import sinkhorn

  logits, q, cost = _problem(batch, k)
  eps = float(rel_eps * cost.max())

  def ours_loss(z, t, c, e):
    return cj.sinkhorn_loss(z, t, c, epsilon=e, tol=threshold).mean()

  ours = jax.jit(jax.value_and_grad(ours_loss))

  def ott_one(z, t, c, e):
    geom = geometry.Geometry(cost_matrix=c.T, epsilon=e)
    prob = linear_problem.LinearProblem(geom, jax.nn.softmax(z), t)
    return sinkhorn.Sinkhorn(threshold=threshold)(prob)

  def ott_loss(z, t, c, e):
    return jax.vmap(lambda zz, tt: ott_one(zz, tt, c, e).reg_ot_cost)(z, t).mean()

  ott_vg = jax.jit(jax.value_and_grad(ott_loss))

  t_ours, (v_ours, g_ours) = _timeit(ours, logits, q, cost, eps, repeats=repeats)
  t_ott, (v_ott, g_ott) = _timeit(ott_vg, logits, q, cost, eps, repeats=max(1, repeats // 2))
  # costjax at a 10x tighter tolerance, to compare at equal-or-smaller marginal error.
  tight = jax.jit(jax.value_and_grad(
      lambda z, t, c, e: cj.sinkhorn_loss(z, t, c, epsilon=e, tol=threshold / 10).mean()))
  t_tight, _ = _timeit(tight, logits, q, cost, eps, repeats=repeats)
  sol_tight = jax.jit(lambda z, t, c, e: cj.sinkhorn_solve(z, t, c, epsilon=e,
                                                           tol=threshold / 10))(
      logits, q, cost, eps)

  # Diagnostics (not timed): per-example values, iterations and plans.
  sol = jax.jit(lambda z, t, c, e: cj.sinkhorn_solve(z, t, c, epsilon=e, tol=threshold))(
      logits, q, cost, eps)
  def ott_diag(z, t, c, e):
    out = ott_one(z, t, c, e)
    return out.reg_ot_cost, out.matrix, out.n_iters, out.converged

  ott_value, ott_plan, ott_iters, ott_conv = jax.jit(
      jax.vmap(ott_diag, in_axes=(0, 0, None, None)))(logits, q, cost, eps)
  p = jax.nn.softmax(logits)
  err_ours = _marginal_errors(sol.plan, p, q)
  err_tight = _marginal_errors(sol_tight.plan, jax.nn.softmax(logits), q)
  err_ott = _marginal_errors(jnp.swapaxes(ott_plan, -1, -2), p, q)
  value_diff = float(jnp.max(jnp.abs(sol.value - ott_value)))
  grad_diff = float(jnp.max(jnp.abs(g_ours - g_ott)))

  # POT (NumPy, forward only) on a subset, scaled to the full batch.
  t_pot = None
  try:
    import ot
    import ot.batch

    nb = min(batch, pot_max_batch)
    a = np.asarray(p[:nb], np.float64)
    b = np.asarray(q[:nb], np.float64)
    m = np.broadcast_to(np.asarray(cost, np.float64).T, (nb, k, k))
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      t0 = time.perf_counter()
      ot.batch.solve_batch(m, reg=eps, a=a, b=b, max_iter=2000, tol=threshold,
                           method="log_sinkhorn", reg_type="kl", grad="detach")
      t_pot = (time.perf_counter() - t0) * batch / nb
  except Exception as e:  # pragma: no cover - optional dependency
    print(f"POT failed: {e!r}")

  return dict(
      B=batch, K=k, eps=f"{rel_eps:g}*max(C)", ours_ms=t_ours * 1e3, ott_ms=t_ott * 1e3,
      speedup=t_ott / t_ours, tight_ms=t_tight * 1e3, speedup_tight=t_ott / t_tight,
      err_tight=err_tight, pot_ms=None if t_pot is None else t_pot * 1e3,
      iters_ours=int(sol.iterations.max()), iters_ott=int(ott_iters.max()),
      conv_ours=float(sol.converged.mean()), conv_ott=float(ott_conv.mean()),
      value_diff=value_diff, grad_diff=grad_diff,
      err_ours=err_ours, err_ott=err_ott,
  )


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="small smoke run")
  parser.add_argument("--threshold", type=float, default=1e-3)
  parser.add_argument("--pot-max-batch", type=int, default=None)
  args = parser.parse_args()
  if args.quick:
    shapes, rel_epss, repeats, pot_nb = [(32, 20)], [0.05, 1e-2], 2, 32
  else:
    shapes, rel_epss, repeats, pot_nb = [(256, 100), (64, 1000)], [0.05, 1e-3], 3, 8
  pot_nb = args.pot_max_batch or pot_nb
  try:
    cpu = subprocess.run("lscpu | grep 'Model name'", shell=True, capture_output=True,
                         text=True).stdout.split(":", 1)[-1].strip()
  except Exception:  # pragma: no cover
    cpu = platform.processor()
  print(f"# machine: {cpu}, {jax.device_count()} device(s) {jax.devices()[0].platform}, "
        f"jax {jax.__version__}, threshold {args.threshold:g}")
  print("| B | K | epsilon | costjax ms | OTT-JAX ms | speed-up | costjax ms, tol/10 (speed-up)"
        " | POT ms (fwd) | iters ours/OTT | converged ours/OTT | max abs value diff"
        " | max abs grad diff | marginal L1 err ours (q, p) | ours, tol/10 | OTT (q, p) |")
  print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
  for batch, k in shapes:
    for rel in rel_epss:
      r = run(batch, k, rel, args.threshold, repeats, pot_nb)
      pot = "n/a" if r["pot_ms"] is None else f"{r['pot_ms']:.0f}"
      print(f"| {r['B']} | {r['K']} | {r['eps']} | {r['ours_ms']:.1f} | {r['ott_ms']:.1f} "
            f"| {r['speedup']:.1f}x | {r['tight_ms']:.1f} ({r['speedup_tight']:.1f}x) | {pot} "
            f"| {r['iters_ours']}/{r['iters_ott']} "
            f"| {r['conv_ours']:.2f}/{r['conv_ott']:.2f} | {r['value_diff']:.1e} "
            f"| {r['grad_diff']:.1e} "
            f"| {r['err_ours'][0]:.1e}, {r['err_ours'][1]:.1e} "
            f"| {r['err_tight'][0]:.1e}, {r['err_tight'][1]:.1e} "
            f"| {r['err_ott'][0]:.1e}, {r['err_ott'][1]:.1e} |", flush=True)


if __name__ == "__main__":
  main()
