"""The blocked arg-min over classes against NumPy's argmin (ties, NaN, inf)."""

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
