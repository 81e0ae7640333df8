"""sinkhorn_loss inside vmapped training: batching over models and cost matrices.

The oracle is an independent float64 NumPy log-domain Sinkhorn written here;
the gradient oracle is the envelope gradient ``p * (f - <p, f>)`` from its
potentials. The solver batches problems of every vmapped model in one loop
(custom_vmap), keeps the kernel/log-domain choice a real conditional, and
finishes slow problems in a compacted buffer: none of that may change a
problem's result.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp

import costjax as cj
from costjax import _sinkhorn

EXPENSIVE = ((7, 1), (3, 8), (8, 3), (4, 9), (9, 4), (5, 6))


def _digits_cost():
  c = 1.0 - np.eye(10)
  for i, j in EXPENSIVE:
    c[i, j] = 20.0
  return c


def _oracle(z, q, cost, eps, iters=20000):
  """Float64 log-domain Sinkhorn: (value, f) with f on the predicted classes."""
  z = np.asarray(z, np.float64)
  lp = z - logsumexp(z, axis=-1, keepdims=True)
  q = np.asarray(q, np.float64)
  q = q / q.sum(-1, keepdims=True)  # as the library does (float32 targets sum to 1 +- 1e-7)
  with np.errstate(divide="ignore"):
    lq = np.log(q)
  c = np.asarray(cost, np.float64)
  f = np.zeros_like(lp)
  for _ in range(iters):
    g = -eps * logsumexp(lp[..., None, :] + (f[..., None, :] - c) / eps, axis=-1)
    f = -eps * logsumexp(lq[..., :, None] + (g[..., :, None] - c) / eps, axis=-2)
    g_next = -eps * logsumexp(lp[..., None, :] + (f[..., None, :] - c) / eps, axis=-1)
    err = np.sum(q * np.abs(np.exp((g - g_next) / eps) - 1), axis=-1)
    if np.all(err < 1e-10):
      break
  p = np.exp(lp)
  value = np.sum(p * f, -1) + np.sum(np.where(q > 0, q * g, 0.0), -1)
  return value, f


def _oracle_grad(z, f):
  """d value / d logits = p * (f - <p, f>) (envelope theorem through the softmax)."""
  z = np.asarray(z, np.float64)
  p = np.exp(z - logsumexp(z, axis=-1, keepdims=True))
  return p * (f - np.sum(p * f, -1, keepdims=True))


def _trained_like(seed, shape, cost, hard_fraction=0.2):
  """Confident logits; a fraction confidently on an expensive confusion (slow problems)."""
  rng = np.random.default_rng(seed)
  k = cost.shape[0]
  y = rng.integers(0, k, shape)
  z = rng.normal(size=shape + (k,)) * 1.5
  pred = y.copy()
  hard = rng.random(shape) < hard_fraction
  table = dict(EXPENSIVE)
  pred[hard] = [table.get(int(t), (int(t) + 1) % k) for t in y[hard]]
  np.put_along_axis(z, pred[..., None], rng.normal(6.0, 2.0, shape + (1,)), axis=-1)
  q = np.asarray(cj.cost_soft_labels(jnp.asarray(y), jnp.asarray(cost, jnp.float32),
                                     temperature=0.5), np.float64)
  return z.astype(np.float32), q.astype(np.float32), y


def _value_and_grad_per_model(eps, **kw):
  """The training shape: a vmap over models of value_and_grad of the mean loss."""

  def one(z, q, c):
    return jax.value_and_grad(lambda z: cj.sinkhorn_loss(z, q, c, epsilon=eps, **kw).mean())(z)

  return jax.jit(jax.vmap(one, in_axes=(0, 0, None)))


def test_vmap_over_models_matches_float64_oracle_and_single_calls():
  cost = _digits_cost()
  eps = 0.1 * cost.max()
  z, q, _ = _trained_like(0, (3, 40), cost)
  c32 = jnp.asarray(cost, jnp.float32)
  vals, grads = _value_and_grad_per_model(eps)(z, q, c32)
  per_ex = jax.jit(jax.vmap(lambda z, q: cj.sinkhorn_loss(z, q, c32, epsilon=eps)))(z, q)
  ref_v, ref_f = _oracle(z, q, cost, eps)
  ref_g = _oracle_grad(z, ref_f) / z.shape[1]
  # Default tol: the value within 1e-5 max C (second order in the marginal error).
  np.testing.assert_allclose(per_ex, ref_v, atol=1e-5 * cost.max(), rtol=0)
  np.testing.assert_allclose(vals, ref_v.mean(-1), atol=1e-5 * cost.max(), rtol=0)
  # Gradients are first order in the marginal error (tol 1e-3 of a unit mass).
  np.testing.assert_allclose(grads, ref_g, atol=2e-3 * cost.max() / z.shape[1], rtol=0)
  # Each model alone (no vmap) gives the same numbers as the vmapped batch.
  one = jax.jit(lambda z, q: jax.value_and_grad(
      lambda z: cj.sinkhorn_loss(z, q, c32, epsilon=eps).mean())(z))
  for m in range(z.shape[0]):
    v, g = one(z[m], q[m])
    np.testing.assert_allclose(v, vals[m], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(g, grads[m], rtol=1e-5, atol=1e-7)


def test_vmap_over_cost_matrices_and_epsilons_mixes_kernel_and_log_paths():
  cost = _digits_cost()
  z, q, _ = _trained_like(1, (12,), cost)
  costs = np.stack([cost, cost.T, np.minimum(cost, 5.0)]).astype(np.float32)
  rel = np.array([0.1, 0.01, 0.5], np.float32)  # 0.01 max C needs the log domain
  eps = rel * costs.max(axis=(1, 2))

  def loss(c, e):
    return cj.sinkhorn_loss(z, q, c, epsilon=e, tol=1e-5)

  paired = jax.jit(jax.vmap(loss))(costs, eps)
  nested = jax.jit(jax.vmap(jax.vmap(loss, in_axes=(None, 0)), in_axes=(0, None)))(costs, eps)
  for m in range(3):
    ref, _ = _oracle(z, q, costs[m], float(eps[m]))
    np.testing.assert_allclose(paired[m], ref, atol=2e-4 * costs[m].max(), rtol=0)
    single = cj.sinkhorn_loss(z, q, costs[m], epsilon=eps[m], tol=1e-5)
    np.testing.assert_allclose(paired[m], single, rtol=1e-5, atol=1e-6)
    for e in range(3):
      single = cj.sinkhorn_loss(z, q, costs[m], epsilon=eps[e], tol=1e-5)
      np.testing.assert_allclose(nested[m, e], single, rtol=1e-5, atol=1e-6)
  # Gradient w.r.t. the stacked costs: the plan (envelope theorem), under vmap.
  g = jax.jit(jax.grad(lambda cs: jax.vmap(loss)(cs, eps).sum()))(costs)
  for m in range(3):
    out = cj.sinkhorn_solve(z, q, costs[m], epsilon=eps[m], tol=1e-5)
    np.testing.assert_allclose(g[m], np.asarray(out.plan).sum(0), atol=1e-4)


def test_branch_choice_stays_a_conditional_under_vmap_over_costs():
  # Under vmap over cost matrices a lax.cond on a batched predicate becomes a
  # select that runs both the kernel and the log-domain branch; the solver and
  # the value keep a real conditional instead.
  z = jnp.zeros((5, 4))
  q = jnp.full((5, 4), 0.25)
  costs = jnp.ones((3, 4, 4)) - jnp.eye(4)[None]
  f = jax.vmap(lambda c: jax.grad(lambda z: cj.sinkhorn_loss(z, q, c, epsilon=0.5).sum())(z))
  text = jax.jit(f).lower(costs).as_text()
  assert text.count("stablehlo.case") >= 3  # the value's mass, and each half-step


def _hard_and_easy(cost, n_easy=48, n_hard=48):
  # Mostly quick problems, a few slow ones (over-relaxed); then only slow ones added.
  z_e, q_e, _ = _trained_like(2, (2, n_easy), cost, hard_fraction=0.1)
  z_h, q_h, _ = _trained_like(3, (2, n_hard), cost, hard_fraction=1.0)
  return z_e, q_e, np.concatenate([z_e, z_h], 1), np.concatenate([q_e, q_h], 1)


def test_example_results_do_not_depend_on_harder_examples_in_the_batch():
  cost = _digits_cost().astype(np.float32)
  eps = float(0.1 * cost.max())
  z_e, q_e, z_all, q_all = _hard_and_easy(cost)
  n = z_e.shape[1]
  assert _sinkhorn._compact_sizes(z_all.size // 10, _sinkhorn._COMPACT_STAGES)  # compaction on
  solve = jax.jit(jax.vmap(lambda z, q: cj.sinkhorn_solve(z, q, cost, epsilon=eps)))
  alone, mixed = solve(z_e, q_e), solve(z_all, q_all)
  it_easy, it_hard = np.asarray(mixed.iterations[:, :n]), np.asarray(mixed.iterations[:, n:])
  assert it_hard.mean() > 1.5 * it_easy.mean()  # the added problems really are slower
  assert it_easy.max() > _sinkhorn._RELAX_START  # and some first ones are over-relaxed
  np.testing.assert_array_equal(alone.iterations, it_easy)
  # The same iterates up to float32 rounding of the (differently sized) products.
  for field in ("value", "f", "g", "marginal_error"):
    np.testing.assert_allclose(getattr(alone, field), getattr(mixed, field)[:, :n],
                               rtol=1e-5, atol=1e-5)
  # Per-example losses and their gradients (a sum, so no 1/B factor differs).
  vg = jax.jit(jax.vmap(lambda z, q: jax.value_and_grad(
      lambda z: cj.sinkhorn_loss(z, q, cost, epsilon=eps).sum())(z)))
  _, g_alone = vg(z_e, q_e)
  _, g_mixed = vg(z_all, q_all)
  np.testing.assert_allclose(g_alone, g_mixed[:, :n], rtol=1e-5, atol=2e-6)


def test_compacted_tail_gives_the_same_iterates_as_the_plain_loop():
  """The batch of 2 x 96 problems finishes its slow tail in a compacted buffer; the same
  problems solved 2 x 7 at a time are too few to compact (the plain loop). Problems are
  independent, so both give the same iterations and iterates."""
  cost = _digits_cost().astype(np.float32)
  eps = float(0.1 * cost.max())
  _, _, z, q = _hard_and_easy(cost)
  solve = jax.jit(jax.vmap(lambda z, q: cj.sinkhorn_solve(z, q, cost, epsilon=eps)))
  assert _sinkhorn._compact_sizes(z.size // 10, _sinkhorn._COMPACT_STAGES)  # compaction on
  assert not _sinkhorn._compact_sizes(2 * 7, _sinkhorn._COMPACT_STAGES)  # and off
  compacted = solve(z, q)
  chunks = [solve(z[:, i:i + 7], q[:, i:i + 7]) for i in range(0, z.shape[1], 7)]
  plain = jax.tree.map(lambda *a: np.concatenate(a, 1), *chunks)
  np.testing.assert_array_equal(compacted.iterations, plain.iterations)
  assert int(np.asarray(plain.iterations).max()) > 20
  # Same iterates up to float32 rounding (the buffer's matrix products round
  # differently; slow problems amplify it in the potentials, which are ~10).
  for field in ("value", "f", "g", "marginal_error"):
    np.testing.assert_allclose(getattr(compacted, field), getattr(plain, field),
                               rtol=1e-5, atol=1e-5)


def test_checked_mode_under_vmap_over_models_matches():
  cost = _digits_cost().astype(np.float32)
  z, q, _ = _trained_like(4, (2, 16), cost)
  f = jax.vmap(lambda z, q: cj.sinkhorn_loss(z, q, cost, epsilon=2.0, max_iterations=300))
  plain = f(z, q)
  with cj.checks_enabled():
    checked = f(z, q)
  np.testing.assert_allclose(checked, plain, rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_sharded_vmapped_training_step_on_8_devices():
  code = textwrap.dedent("""
      import json
      import jax, jax.numpy as jnp, numpy as np
      from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
      import costjax as cj
      assert jax.device_count() == 8
      rng = np.random.default_rng(0)
      M, B, K = 3, 64, 10
      c = np.ones((K, K), np.float32) - np.eye(K, dtype=np.float32)
      c[7, 1] = c[5, 6] = 20.0
      y = rng.integers(0, K, (M, B))
      z = rng.normal(size=(M, B, K)).astype(np.float32) * 2
      np.put_along_axis(z, y[..., None], 7.0, axis=-1)
      z[:, :8, 6] = 9.0  # some confident expensive confusions: a long tail
      y[:, :8] = 5
      q = np.asarray(cj.cost_soft_labels(jnp.asarray(y), jnp.asarray(c), temperature=0.5))
      dev = 0.0
      for kind in (AxisType.Auto, AxisType.Explicit):
        mesh = jax.make_mesh((8,), ("data",), axis_types=(kind,))
        sh = NamedSharding(mesh, P(None, "data", None))
        def one(z, q, cc, sh=sh, kind=kind):
          if kind == AxisType.Auto:
            z = jax.lax.with_sharding_constraint(z, NamedSharding(mesh, P("data", None)))
          return jax.value_and_grad(
              lambda z: cj.sinkhorn_loss(z, q, cc, epsilon=2.0).mean())(z)
        step = jax.jit(jax.vmap(one, in_axes=(0, 0, None)))
        v1, g1 = step(z, q, c)
        v8, g8 = step(jax.device_put(z, sh), jax.device_put(q, sh), c)
        assert len(g8.sharding.device_set) == 8
        dev = max(dev, float(jnp.max(jnp.abs(v1 - v8))), float(jnp.max(jnp.abs(g1 - g8))))
      print(json.dumps({"dev": dev}))
  """)
  env = dict(os.environ)
  env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
  env["JAX_PLATFORMS"] = "cpu"
  root = Path(__file__).resolve().parents[1]
  out = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True,
                       text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert json.loads(out.stdout.strip().splitlines()[-1])["dev"] <= 1e-5
