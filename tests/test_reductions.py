"""Reductions over the class axis: the blocked arg-min against NumPy's argmin (ties, NaN,
inf), and the long-row sum against a float64 sum."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from costjax import _reductions

# Sizes with and without a block divisor (primes fall back to a plain argmin).
SIZES = [5, 255, 256, 257, 1000, 4096, 10_007, 100_000]


@pytest.mark.parametrize("k", SIZES)
def test_argmin_last_equals_numpy_with_ties_nan_and_inf(k):
  rng = np.random.default_rng(k)
  # Few distinct values: many exact ties, often across block boundaries.
  x = rng.integers(0, 4, size=(6, k)).astype(np.float32)
  x[1] = 3.0  # the whole row ties: index 0
  x[2, -1] = -1.0  # the minimum in the last entry
  x[3, k // 2] = np.nan  # a NaN: its index, as argmin
  x[3, -1] = np.nan
  x[4] = np.inf  # all +inf: index 0
  x[4, -1] = -np.inf
  x[5] = np.inf
  fn = jax.jit(_reductions.argmin_last)
  np.testing.assert_array_equal(fn(jnp.asarray(x)), np.argmin(x, axis=-1))
  # Batch axes, and under vmap.
  xx = jnp.asarray(np.stack([x, x[::-1]]))
  np.testing.assert_array_equal(fn(xx), np.argmin(np.asarray(xx), axis=-1))
  np.testing.assert_array_equal(jax.vmap(fn)(xx), np.argmin(np.asarray(xx), axis=-1))


def test_argmin_block_divides_and_falls_back():
  assert _reductions.argmin_block(100) is None  # small: a plain argmin
  assert _reductions.argmin_block(10_007) is None  # prime: no block
  for k in (256, 1000, 4096, 100_000, 2 * 3 * 5 * 7 * 11 * 13):
    c = _reductions.argmin_block(k)
    assert c is not None and k % c == 0 and 16 <= c <= k // 4


def test_nearest_divisor_is_the_divisor_in_range_nearest_in_ratio():
  """Against a brute-force search: among the divisors of k in [lo, hi], the one whose
  ratio to the target is nearest 1 (|log(d / target)|); None when there is none."""
  import math
  cases = [(1000, 16, 250, 63.2), (360, 2, 90, 7.0), (4096, 16, 1024, 128.0),
           (2 * 3 * 5 * 7 * 11, 10, 200, 45.0), (97, 2, 50, 10.0), (12, 5, 5, 5.0)]
  for k, lo, hi, target in cases:
    divisors = [d for d in range(lo, hi + 1) if k % d == 0]
    want = min(divisors, key=lambda d: abs(math.log(d / target))) if divisors else None
    assert _reductions.nearest_divisor(k, lo, hi, target) == want, (k, lo, hi, target)
  assert _reductions.nearest_divisor(1000, 16, 250, 63.2) == 50  # not the smallest, 20
  assert _reductions.nearest_divisor(360, 2, 90, 7.0) == 8  # in ratio 8/7 beats 6/7
  assert _reductions.nearest_divisor(97, 2, 50, 10.0) is None  # a prime


@settings(max_examples=40, deadline=None)
@given(
    k=st.sampled_from([256, 300, 1000, 1024]),
    seed=st.integers(0, 2**31 - 1),
    levels=st.integers(1, 6),
)
def test_argmin_last_property(k, seed, levels):
  rng = np.random.default_rng(seed)
  x = rng.integers(0, levels, size=(3, k)).astype(np.float32) * 0.5
  if seed % 3 == 0:
    x[rng.integers(0, 3), rng.integers(0, k)] = np.nan
  got = jax.jit(_reductions.argmin_last)(jnp.asarray(x))
  np.testing.assert_array_equal(got, np.argmin(x, axis=-1))
  assert got.dtype == jnp.int32


def test_argmin_last_bfloat16():
  x = np.random.default_rng(0).normal(size=(4, 1000)).astype(np.float32)
  xb = jnp.asarray(x, jnp.bfloat16)
  np.testing.assert_array_equal(
      _reductions.argmin_last(xb), np.argmin(np.asarray(xb.astype(jnp.float32)), axis=-1))


@pytest.mark.parametrize("k", [1000, _reductions.LONG_ROW_CLASSES, 100_000])
def test_row_sum_equals_a_float64_sum_with_nan_and_inf(k):
  """Short rows take jnp.sum, long ones a matrix-vector product: both exact sums."""
  rng = np.random.default_rng(k)
  x = rng.normal(size=(2, 3, k)).astype(np.float32)
  x[0, 1, k // 3] = np.nan
  x[1, 0, 7] = np.inf
  x[1, 2, 5], x[1, 2, 9] = np.inf, -np.inf  # inf - inf = NaN, as a sum gives
  got = jax.jit(_reductions.row_sum)(jnp.asarray(x))
  with np.errstate(invalid="ignore"):  # inf + -inf, on purpose
    want = x.astype(np.float64).sum(axis=-1)
  assert got.shape == (2, 3)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.sqrt(k))
  # The derivative is ones, also through the product form.
  grad = jax.grad(lambda v: jnp.sum(_reductions.row_sum(v * v)))(jnp.asarray(x[0, 0]))
  np.testing.assert_allclose(grad, 2.0 * x[0, 0], rtol=1e-6)


def test_long_row_losses_match_float64_oracles():
  """The expected cost, CE + lam EC and soft-label CE at K = LONG_ROW_CLASSES (the row sums
  take the matrix-vector form there, through the public functions alone): values and
  gradients against float64 NumPy with the ordinal cost row |j - y| written out; a bad
  label still gives NaN."""
  import costjax as cj
  rng = np.random.default_rng(11)
  k, b = _reductions.LONG_ROW_CLASSES, 4
  z = 3.0 * rng.normal(size=(b, k)).astype(np.float32)
  y = rng.integers(0, k, size=b).astype(np.int32)
  y[1] = k - 3  # a label near the end of the row
  cost = cj.OrdinalCost(k)
  z64 = z.astype(np.float64)
  p = np.exp(z64 - z64.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  log_p = np.log(p)
  c = np.abs(np.arange(k)[None, :] - y[:, None]).astype(np.float64)  # C[y]
  onehot = (np.arange(k)[None, :] == y[:, None]).astype(np.float64)
  ec = (p * c).sum(-1)
  ec_grad = p * (c - ec[:, None])
  t = np.exp(-(c - c.min(-1, keepdims=True)))
  t /= t.sum(-1, keepdims=True)  # softmax(-C[y]), the soft targets at T = 1
  oracles = {
      "expected_cost": (cj.expected_cost, ec, ec_grad),
      "cost_regularized_cross_entropy": (
          cj.cost_regularized_cross_entropy, -log_p[np.arange(b), y] + ec,
          (p - onehot) + ec_grad),
      "soft_label_cross_entropy": (cj.soft_label_cross_entropy, -(t * log_p).sum(-1), p - t),
  }
  for name, (f, value, grad) in oracles.items():
    got, g = jax.jit(jax.value_and_grad(lambda zz, f=f: jnp.sum(f(zz, y, cost))))(z)
    # Each row holds 32768 terms of size up to ~k in float32: relative 1e-5 of the sum.
    np.testing.assert_allclose(got, value.sum(), rtol=2e-5, err_msg=name)
    # p_j (C[y, j] - E): both terms reach ~k, so float32 leaves ~1e-6 of p_j (C[y, j] + E).
    scale = p * (c + ec[:, None]) + p
    assert np.all(np.abs(np.asarray(g, np.float64) - grad) <= 1e-5 * scale + 1e-7), name
  bad = y.copy()
  bad[2] = k
  assert np.isnan(np.asarray(cj.expected_cost(z, bad, cost))[2])
