"""Losses from features (blockwise over classes) against float64 NumPy oracles.

The oracle materializes ``z = features @ weights + bias`` in float64 and writes each
loss and its gradient with respect to ``z`` from the formulas (cross-entropy
``p - onehot``, expected cost ``p * (c - E)``, soft labels ``p - q``); gradients
with respect to features, weights and bias follow by the chain rule. The costjax
losses on materialized logits are a second reference.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.experimental import checkify
from jax.test_util import check_grads

import costjax as cj
from tests._dense_structure import DenseStructure
from tests.test_structures import K as SK
from tests.test_structures import make_structure

LOSSES = ["ce", "ec", "crce", "sl"]
COSTS = ["tree_path", "tree_lca", "ordinal1", "ordinal2", "embedding", "dense", "user_asym"]
LAM, TEMP = 0.7, 1.3


def make_cost(name, rng):
  if name == "dense":
    c = rng.uniform(0, 3, (SK, SK)).astype(np.float32)
    np.fill_diagonal(c, 0)
    return jnp.asarray(c)
  if name == "user_asym":  # only rows / vecmat: the default row_block, asymmetric
    return DenseStructure(rng.uniform(0, 3, (SK, SK)).astype(np.float32))
  return make_structure(name)


def dense_of(cost):
  return np.asarray(cost.dense() if isinstance(cost, cj.CostStructure) else cost, np.float64)


def linear(loss, h, w, y, cost, b=None, **kw):
  if loss == "ce":
    return cj.linear_cross_entropy(h, w, y, bias=b, **kw)
  if loss == "ec":
    return cj.linear_expected_cost(h, w, y, cost, bias=b, **kw)
  if loss == "crce":
    return cj.linear_cost_regularized_cross_entropy(h, w, y, cost, lam=LAM, bias=b, **kw)
  return cj.linear_soft_label_cross_entropy(h, w, y, cost, temperature=TEMP, bias=b, **kw)


def materialized(loss, z, y, cost):
  if loss == "ce":
    return optax.softmax_cross_entropy_with_integer_labels(z, y)
  if loss == "ec":
    return cj.expected_cost(z, y, cost)
  if loss == "crce":
    return cj.cost_regularized_cross_entropy(z, y, cost, lam=LAM)
  return cj.soft_label_cross_entropy(z, y, cost, temperature=TEMP)


def oracle(loss, z, y, c):
  """Per-example loss and d loss / d z, float64 NumPy, for 2-D ``z``."""
  m = np.max(z, axis=-1, keepdims=True)
  e = np.exp(z - m)
  s = e.sum(-1, keepdims=True)
  p = e / s
  lse = (m + np.log(s))[:, 0]
  n = z.shape[0]
  onehot = np.zeros_like(z)
  onehot[np.arange(n), y] = 1
  ce = lse - z[np.arange(n), y]
  rows = c[y] if c is not None else None
  if loss == "ce":
    return ce, p - onehot
  ec = (p * rows).sum(-1)
  dec = p * (rows - ec[:, None])
  if loss == "ec":
    return ec, dec
  if loss == "crce":
    return ce + LAM * ec, p - onehot + LAM * dec
  t = -rows / TEMP
  q = np.exp(t - t.max(-1, keepdims=True))
  q /= q.sum(-1, keepdims=True)
  finite = np.isfinite(z)
  val = lse - (q * np.where(finite, z, 0)).sum(-1)
  val = np.where(finite.all(-1), val, np.inf)
  return val, p - q


def check_case(losses, cost_name, batch, d, block, use_bias, seed, neg_inf=()):
  """Every loss in ``losses`` on one random case, in one compiled program."""
  rng = np.random.default_rng(seed)
  cost = make_cost(cost_name, rng)
  k = SK
  h = rng.normal(size=batch + (d,)).astype(np.float32)
  w = rng.normal(size=(d, k)).astype(np.float32)
  b = rng.normal(size=(k,)).astype(np.float32) if use_bias else np.zeros(k, np.float32)
  b[list(neg_inf)] = -np.inf
  allowed = np.setdiff1d(np.arange(k), neg_inf)
  y = rng.choice(allowed, size=batch).astype(np.int32)
  bias = jnp.asarray(b) if use_bias or neg_inf else None

  @jax.jit
  def run(h, w, b):
    outs, grads = [], []
    for loss in losses:
      def g(h, w, b, loss=loss):
        out = linear(loss, h, w, jnp.asarray(y), cost, b, block_size=block)
        return jnp.sum(out), out
      (_, out), grad = jax.value_and_grad(g, argnums=(0, 1, 2), has_aux=True)(h, w, b)
      outs.append(out)
      grads.append(grad)
    z = h @ w + jax.lax.broadcast_to_rank(jnp.zeros(k) if b is None else b, h.ndim)
    refs = [materialized(loss, z, jnp.asarray(y), cost) for loss in losses]
    return outs, grads, refs

  outs, grads_all, refs = run(jnp.asarray(h), jnp.asarray(w), bias)
  h2 = h.reshape(-1, d).astype(np.float64)
  z = h2 @ w.astype(np.float64) + b.astype(np.float64)
  for loss, out, grads, ref in zip(losses, outs, grads_all, refs, strict=True):
    assert out.shape == batch and out.dtype == jnp.float32
    val, dz = oracle(loss, z, y.reshape(-1), dense_of(cost) if loss != "ce" else None)
    np.testing.assert_allclose(out.reshape(-1), val, rtol=2e-5, atol=2e-5, err_msg=loss)
    np.testing.assert_allclose(grads[0].reshape(-1, d), dz @ w.T, rtol=1e-4, atol=2e-5,
                               err_msg=loss)
    np.testing.assert_allclose(grads[1], h2.T @ dz, rtol=1e-4, atol=2e-5, err_msg=loss)
    if bias is not None:
      np.testing.assert_allclose(grads[2], dz.sum(0), rtol=1e-4, atol=2e-5, err_msg=loss)
    # The same composition through the losses on materialized logits.
    np.testing.assert_allclose(out, ref, rtol=2e-5, atol=2e-5, err_msg=loss)


CASES = [  # (batch, D, block, bias)
    ((6,), 5, 3, True),
    ((2, 3), 4, 4, False),
    ((), 3, 1, True),
    ((5,), 6, None, True),
    ((4,), 2, 100, False),
]


@pytest.mark.parametrize("cost_name", COSTS)
def test_losses_match_oracle(cost_name):
  """Every loss with every cost, shapes and block sizes (not dividing K) varying."""
  seed = COSTS.index(cost_name)
  batch, d, block, use_bias = CASES[seed % len(CASES)]
  check_case(LOSSES, cost_name, batch, d, block, use_bias, seed)


def test_cross_entropy_shapes_and_blocks():
  for case in (0, 2, 4):
    check_case(["ce"], "dense", *CASES[case], seed=100 + case)


def test_neg_inf_bias_removes_classes():
  """-inf bias entries (masked classes), one block entirely masked: soft labels give +inf
  (every target is positive) with finite gradients, the others a finite loss."""
  check_case(LOSSES, "tree_path", (5,), 3, 3, True, seed=7, neg_inf=(0, 3, 4, 5))


def test_where_masks_and_out_of_range_labels():
  rng = np.random.default_rng(1)
  cost = cj.OrdinalCost(SK)
  h = jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(4, SK)), jnp.float32)
  y = jnp.asarray([0, SK, -1, 3, 2, 1], jnp.int32)
  where = jnp.asarray([True, True, True, False, True, False])
  keep = jnp.asarray([0, 4])

  @jax.jit
  def run(h, w):
    res = []
    for loss in LOSSES:
      out = linear(loss, h, w, y, cost, block_size=3)
      def f(h, w, loss=loss):
        out = linear(loss, h, w, y, cost, block_size=3, where=where)
        return jnp.sum(out), out
      (_, masked), (gh, gw) = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(h, w)
      rh, rw = jax.grad(lambda h, w, loss=loss: jnp.sum(
          linear(loss, h, w, y[keep], cost, block_size=3)), argnums=(0, 1))(h[keep], w)
      res.append((out, masked, gh, gw, rh, rw))
    return res

  for out, masked, gh, gw, rh, rw in run(h, w):
    out, masked, gh = np.asarray(out), np.asarray(masked), np.asarray(gh)
    assert np.isnan(out[1]) and np.isnan(out[2])  # K and -1: never wrapped or clamped
    assert np.isfinite(out[[0, 3, 4, 5]]).all()
    np.testing.assert_array_equal(masked[[3, 5]], 0)
    np.testing.assert_allclose(masked[[0, 4]], out[[0, 4]])
    np.testing.assert_array_equal(gh[[1, 2, 3, 5]], 0)
    np.testing.assert_allclose(gh[[0, 4]], rh, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gw, rw, rtol=1e-5, atol=1e-6)


def test_jit_vmap_and_unbatched():
  rng = np.random.default_rng(2)
  tree = make_structure("tree_lca")
  h = jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(3, SK)), jnp.float32)
  b = jnp.asarray(rng.normal(size=(SK,)), jnp.float32)
  y = jnp.asarray(rng.integers(0, SK, 5), jnp.int32)

  tested = ["ce", "sl"]  # the plain and the cost-aware machinery (soft labels use both sums)

  @jax.jit
  def run(h, y, c):
    res = []
    for loss in tested:
      def one(h, y, loss=loss):
        return linear(loss, h, w, y, c, b, block_size=4)
      res.append((one(h, y), jax.vmap(one)(h, y), jax.vmap(jax.grad(one))(h, y),
                  jax.grad(lambda h, one=one: jnp.sum(one(h, y)))(h)))
    return res

  for loss, (batched, mapped, vg, g) in zip(tested, run(h, y, tree), strict=True):
    eager = linear(loss, h, w, y, tree, b, block_size=4) if loss == "sl" else batched
    np.testing.assert_allclose(batched, eager, rtol=1e-6)
    np.testing.assert_allclose(mapped, batched, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(vg, g, rtol=1e-5, atol=1e-6)


def test_check_grads_float64():
  with jax.enable_x64(True):
    rng = np.random.default_rng(3)
    cost = cj.EmbeddingCost(rng.normal(size=(SK, 2)), scale=0.5)
    h = jnp.asarray(rng.normal(size=(3, 2)))
    w = jnp.asarray(rng.normal(size=(2, SK)))
    b = jnp.asarray(rng.normal(size=(SK,)))
    y = jnp.asarray([0, 4, 6])
    def all_losses(h, w, b, t, lam):
      return jnp.stack([
          cj.linear_cross_entropy(h, w, y, bias=b, block_size=3),
          cj.linear_expected_cost(h, w, y, cost, bias=b, block_size=3),
          cj.linear_cost_regularized_cross_entropy(h, w, y, cost, lam=lam, bias=b,
                                                   block_size=3),
          cj.linear_soft_label_cross_entropy(h, w, y, cost, temperature=t, bias=b,
                                             block_size=3),
      ])

    # Finite differences for features, weights, bias, the temperature and lam.
    check_grads(jax.jit(all_losses), (h, w, b, jnp.asarray(1.7), jnp.asarray(0.6)), order=1,
                modes=["rev"], atol=1e-6, rtol=1e-6)


def test_bfloat16_inputs_accumulate_in_float32():
  rng = np.random.default_rng(4)
  d, k = 64, 40
  h = jnp.asarray(rng.normal(size=(8, d)), jnp.bfloat16)
  w = jnp.asarray(rng.normal(size=(d, k)) / 8, jnp.bfloat16)
  y = jnp.asarray(rng.integers(0, k, 8), jnp.int32)
  cost = cj.OrdinalCost(k)
  z64 = np.asarray(h, np.float64) @ np.asarray(w, np.float64)
  @jax.jit
  def run(h, w):
    return [(linear(loss, h, w, y, cost, block_size=16),
             jax.grad(lambda w, loss=loss: jnp.sum(linear(loss, h, w, y, cost, block_size=16)))(w))
            for loss in LOSSES]

  for loss, (out, gw) in zip(LOSSES, run(h, w), strict=True):
    assert out.dtype == jnp.bfloat16 and gw.dtype == jnp.bfloat16
    val, _ = oracle(loss, z64, np.asarray(y), np.asarray(cost.dense(), np.float64))
    # bf16 output rounding only (2^-8 relative); a bf16 accumulation over D = 64 is worse.
    np.testing.assert_allclose(np.asarray(out, np.float64), val, rtol=8e-3, atol=1e-2)


def test_user_symmetric_structure_through_the_default_row_block():
  """A user structure with only the required operations works (default row_block)."""

  @jax.tree_util.register_pytree_node_class
  class Circular(cj.CostStructure):  # C[i, j] = min(|i - j|, K - |i - j|)
    def __init__(self, k):
      self.k = k

    @property
    def num_classes(self):
      return self.k

    def rows(self, idx):
      d = jnp.abs(jnp.asarray(idx)[..., None] - jax.lax.broadcast_to_rank(
          jnp.arange(self.k), jnp.ndim(idx) + 1)).astype(jnp.float32)
      return jnp.minimum(d, self.k - d)

    def vecmat(self, v):
      return v @ self.dense()

    def dense(self):
      return self.rows(jnp.arange(self.k))

    def tree_flatten(self):
      return (), self.k

    @classmethod
    def tree_unflatten(cls, k, _):
      return cls(k)

  rng = np.random.default_rng(5)
  cost = Circular(9)
  h = jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(3, 9)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 9, 4), jnp.int32)
  z = np.asarray(h, np.float64) @ np.asarray(w, np.float64)
  for loss in LOSSES[1:]:
    val, _ = oracle(loss, z, np.asarray(y), np.asarray(cost.dense(), np.float64))
    np.testing.assert_allclose(linear(loss, h, w, y, cost, block_size=4), val, rtol=2e-5)


def test_static_errors():
  h = jnp.ones((3, 4))
  w = jnp.ones((4, 5))
  with pytest.raises(TypeError, match="Probability labels are not supported"):
    cj.linear_cross_entropy(h, w, jnp.ones((3, 5)))
  with pytest.raises(ValueError, match="weights must have shape"):
    cj.linear_cross_entropy(h, jnp.ones((3, 5)), jnp.zeros(3, jnp.int32))
  with pytest.raises(ValueError, match="labels must have shape"):
    cj.linear_cross_entropy(h, w, jnp.zeros(4, jnp.int32))
  with pytest.raises(ValueError, match="bias must have shape"):
    cj.linear_cross_entropy(h, w, jnp.zeros(3, jnp.int32), bias=jnp.ones(4))
  with pytest.raises(ValueError, match="num_classes=6"):
    cj.linear_expected_cost(h, w, jnp.zeros(3, jnp.int32), cj.OrdinalCost(6))
  with pytest.raises(ValueError, match="block_size"):
    cj.linear_cross_entropy(h, w, jnp.zeros(3, jnp.int32), block_size=0)
  with pytest.raises(ValueError, match="where must have shape"):
    cj.linear_cross_entropy(h, w, jnp.zeros(3, jnp.int32), where=jnp.ones((3, 5), bool))


def test_bad_inputs_name_the_function_the_argument_and_the_shapes():
  """Each message names the function, the argument and what was given; a bad cost matrix
  is caught by the same checks as the other losses' (shape eagerly, values in checked
  mode), naming this function."""
  h = jnp.ones((3, 4))
  w = jnp.ones((4, 5))
  y = jnp.zeros(3, jnp.int32)
  name = "costjax.linear_expected_cost"
  with pytest.raises(TypeError, match=re.escape(
      f"{name}: features must have a floating dtype; got int32.")):
    cj.linear_expected_cost(jnp.ones((3, 4), jnp.int32), w, y, jnp.ones((5, 5)))
  with pytest.raises(TypeError, match=re.escape(
      f"{name}: weights must have a floating dtype; got int32.")):
    cj.linear_expected_cost(h, jnp.ones((4, 5), jnp.int32), y, jnp.ones((5, 5)))
  with pytest.raises(ValueError, match=re.escape(
      f"{name}: features must have shape (..., D); got features.shape=().")):
    cj.linear_expected_cost(jnp.float32(1.0), w, jnp.int32(0), jnp.ones((5, 5)))
  with pytest.raises(ValueError, match=re.escape(
      f"{name}: weights must have shape (D, K) with D = features.shape[-1] = 4; got "
      "weights.shape=(3, 5) and features.shape=(3, 4).")):
    cj.linear_expected_cost(h, jnp.ones((3, 5)), y, jnp.ones((5, 5)))
  with pytest.raises(ValueError, match=re.escape(name) + ".*cost_matrix.*(4, 4)"):
    cj.linear_expected_cost(h, w, y, jnp.ones((4, 4)))
  bad = jnp.ones((5, 5)).at[2, 3].set(-1.0)
  with pytest.raises(checkify.JaxRuntimeError, match=re.escape(name) + ".*negative"):
    cj.checked(cj.linear_expected_cost)(h, w, y, bad)
  # A cost structure's leaves too (a negative edge weight of a tree over the 5 classes).
  tree = cj.TreeCost([5, 5, 6, 6, 6, 6, -1], 5)
  neg_tree = jax.tree.map(lambda e: e.at[0].set(-2.0), tree)
  with pytest.raises(checkify.JaxRuntimeError, match=re.escape(name) + ".*negative"):
    cj.checked(cj.linear_expected_cost)(h, w, y, neg_tree)
  np.testing.assert_allclose(cj.checked(cj.linear_expected_cost)(h, w, y, tree),
                             cj.linear_expected_cost(h, w, y, tree), rtol=1e-6)


def _buffer_shapes(hlo: str) -> set[tuple[int, ...]]:
  return {tuple(int(x) for x in m.split(",") if x)
          for m in re.findall(r"[fs](?:32|64|16)\[([0-9,]*)\]", hlo)}


@pytest.mark.parametrize("loss", LOSSES)
def test_no_batch_by_classes_array_in_the_compiled_program(loss):
  b, d, k, block = 48, 8, 5000, 512
  cost = cj.TreeCost(np.r_[np.full(k, k), -1], k)  # a star: classes under one root
  args = (jax.ShapeDtypeStruct((b, d), jnp.float32), jax.ShapeDtypeStruct((d, k), jnp.float32),
          jax.ShapeDtypeStruct((k,), jnp.float32), jax.ShapeDtypeStruct((b,), jnp.int32))

  def program(f):
    return jax.jit(jax.value_and_grad(lambda h, w, bias, y: jnp.mean(f(h, w, bias, y)),
                                      argnums=(0, 1, 2))).lower(*args).compile()

  blockwise = program(lambda h, w, bias, y: linear(loss, h, w, y, cost, bias, block_size=block))
  full = program(lambda h, w, bias, y: materialized(loss, h @ w + bias[None, :], y, cost))
  shapes = _buffer_shapes(blockwise.as_text())
  assert not any(len(s) >= 2 and s[0] == b and s[-1] == k for s in shapes), shapes
  assert (b, k) in _buffer_shapes(full.as_text())  # the scan sees what the oracle has
  temp = blockwise.memory_analysis().temp_size_in_bytes
  assert temp < b * k * 4, temp  # less than one B x K float32 array
  assert full.memory_analysis().temp_size_in_bytes > 2 * b * k * 4


@pytest.mark.slow
def test_vocabulary_parallel_on_eight_devices():
  env = dict(os.environ)
  env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
  env["JAX_PLATFORMS"] = "cpu"
  root = Path(__file__).resolve().parents[1]
  out = subprocess.run(
      [sys.executable, str(root / "tests" / "linear_sharded_check.py")],
      env=env, cwd=root, capture_output=True, text=True, timeout=300,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  report = json.loads(out.stdout.strip().splitlines()[-1])
  assert set(report) == {f"{loss} {mesh}" for loss in LOSSES
                         for mesh in ("batch+classes", "2x4 mesh")}
  for name, deviation in report.items():
    assert deviation <= 2e-5, (name, deviation)


@pytest.mark.slow  # end to end: the example script in a subprocess (~10 s alone)
def test_language_model_example_runs_and_learns():
  root = Path(__file__).resolve().parents[1]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = subprocess.run(
      [sys.executable, str(root / "examples" / "linear_lm.py"), "--steps", "30", "--vocab",
       "200", "--batch", "64", "--lr", "1e-2"],
      env=env, cwd=root, capture_output=True, text=True, timeout=300,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  text = out.stdout
  full, blockwise = (float(x) for x in re.search(
      r"V=131,072 \(compile only\): materialized ([\d.]+) GiB, blockwise ([\d.]+) MiB",
      text).groups())
  assert blockwise / 1024 < 0.05 * full
  losses = [float(x) for x in re.findall(r"soft-label loss ([\d.]+)", text)]
  assert losses[-1] < losses[0] - 0.3, losses  # it learns
  assert "held-out next-token accuracy" in text
