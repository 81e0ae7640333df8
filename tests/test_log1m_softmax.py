"""``log1m_softmax`` (``log(1 - softmax(z))``) against float64 NumPy, values and Jacobian.

The oracle uses the exact identity ``log(1 - p_j) = LSE_{k != j} z_k - LSE z``
in float64 (scipy's ``logsumexp``), which stays accurate where ``p_j`` rounds
to 1, and the Jacobian ``d log(1 - p_j) / dz_k = p_j (p_k / (1 - p_j) - [j = k] / (1 - p_j))``
written as ``p_j * exp(z_k - LSE_{i != j} z_i)`` off the diagonal and ``-p_j`` on it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp

import costjax as cj


def _np_log1m_softmax(z):
  z = np.asarray(z, np.float64)
  lse = logsumexp(z)
  out = np.empty_like(z)
  for j in range(z.shape[0]):
    out[j] = logsumexp(np.delete(z, j)) - lse
  return out


def _np_jacobian(z):
  z = np.asarray(z, np.float64)
  k = z.shape[0]
  lse = logsumexp(z)
  jac = np.empty((k, k))
  for j in range(k):
    rest = logsumexp(np.delete(z, j))
    off = np.arange(k) != j  # in logs, p_j p_k / (1 - p_j) (k != j) never overflows
    jac[j, off] = np.exp(z[j] - lse + z[off] - rest)
    jac[j, j] = -np.exp(z[j] - lse)
  return jac


ROWS = {
    "random": [0.3, -1.2, 2.0, 0.7, -0.4],
    "tied_maxima": [1.5, 1.5, -0.5, 0.0],
    "three_tied": [2.0, 2.0, 2.0, -1.0],
    "gap_40": [40.0, 0.0, -1.0, 0.5],  # 1 - p_top ~ 4e-18: log1p(-p) would give -inf
    "gap_1e4": [1e4, 0.0, 3.0],
    "second_max_far_below": [0.0, -30.0, -60.0, -90.0],
    "impossible_class": [0.5, -jnp.inf, 1.0, 0.0],
    "negative_shift": [-500.0, -501.0, -499.5],
}


@pytest.mark.parametrize("row", ROWS.values(), ids=ROWS.keys())
def test_values_match_float64(row):
  z = np.asarray(row, np.float32)
  got = np.asarray(jax.jit(cj.log1m_softmax)(z), np.float64)
  want = _np_log1m_softmax(z)
  # A difference of two log-sum-exps of size ~max|z|: a few float32 ulps of that size.
  scale = np.max(np.abs(z[np.isfinite(z)]))
  np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-6 + 8 * np.finfo(np.float32).eps * scale)


@pytest.mark.parametrize("row", ROWS.values(), ids=ROWS.keys())
def test_jacobian_matches_closed_form(row):
  z = np.asarray(row, np.float32)
  want = _np_jacobian(z)
  for jac in (jax.jacfwd, jax.jacrev):
    got = np.asarray(jax.jit(jac(cj.log1m_softmax))(z), np.float64)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_single_possible_class_is_minus_inf_with_zero_gradient():
  z = jnp.array([0.7, -jnp.inf, -jnp.inf])
  np.testing.assert_array_equal(cj.log1m_softmax(z), [-np.inf, 0.0, 0.0])
  np.testing.assert_array_equal(jax.jacfwd(cj.log1m_softmax)(z), np.zeros((3, 3)))


def test_batches_are_rows_independently():
  rows = np.asarray([ROWS["random"][:4], ROWS["tied_maxima"], ROWS["gap_40"]], np.float32)
  got = jax.jit(cj.log1m_softmax)(rows)
  assert got.shape == rows.shape and got.dtype == jnp.float32
  want = np.stack([_np_log1m_softmax(r) for r in rows])
  np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-6)
  # The JVP of the batch is the per-row Jacobian applied to each row's tangent.
  t = np.random.default_rng(0).normal(size=rows.shape).astype(np.float32)
  _, tangent = jax.jvp(cj.log1m_softmax, (jnp.asarray(rows),), (jnp.asarray(t),))
  want_t = np.stack([_np_jacobian(r) @ ti for r, ti in zip(rows, t, strict=True)])
  np.testing.assert_allclose(tangent, want_t, rtol=1e-5, atol=1e-6)
