"""The large-batch CDW-CE kernel (``_cdw_streaming``) against the small-batch one and float64.

The two kernels compute the same function with different passes; the small one is
pinned by ``test_custom_gradients.py`` and ``test_losses.py``. Here the streaming kernel
gets the same hard rows (ties at the top, a unique arg-max within ``exp(-1e4)`` of
probability 1, ``-inf`` logits, a single finite logit, zero weights), derivatives of
orders 1 and 2 in both modes, and the public function's switch between them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import costjax as cj
from costjax import _cdw_cross_entropy, _cdw_streaming

streaming = _cdw_streaming.cdw_streaming
small = _cdw_cross_entropy._cdw


def hard_rows():
  """Logits and weights, float32, with every special case of log(1 - softmax)."""
  inf = np.inf
  z = np.array([
      [0.5, -1.0, 2.0, 0.0, 1.5],  # ordinary
      [1.0, 1.0, 0.0, -2.0, 0.5],  # tie at the top
      [0.0, 0.0, 0.0, 0.0, 0.0],  # all tied
      [1e4, 0.0, -1e4, 5.0, 1.0],  # unique top, p within exp(-1e4) of 1
      [80.0, 0.0, -3.0, -1.0, 2.0],  # the rest sum underflows relative to the top
      [3.0, -inf, 0.5, -inf, 1.0],  # impossible classes
      [2.0, -inf, -inf, -inf, -inf],  # one possible class: p = 1 exactly
      [-1e4, 1e4, 1e4, 0.0, 3.0],  # tie at +1e4
  ], np.float32)
  rng = np.random.default_rng(0)
  w = rng.uniform(0.5, 4.0, z.shape).astype(np.float32)
  w[6] = [0.0, 1.0, 2.0, 0.5, 1.0]  # w_t = 0 where p_t = 1: the loss is 0, not NaN
  w[3, 0] = 0.0  # zero weight on the saturated top
  return jnp.asarray(z), jnp.asarray(w)


def test_values_and_gradients_equal_the_small_kernel_on_hard_rows():
  z, w = hard_rows()
  want, want_grad = jax.value_and_grad(lambda zz: jnp.sum(small(zz, w)))(z)
  got, got_grad = jax.value_and_grad(lambda zz: jnp.sum(streaming(zz, w)))(z)
  np.testing.assert_allclose(streaming(z, w), small(z, w), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  np.testing.assert_allclose(got_grad, want_grad, rtol=1e-5, atol=1e-6)
  assert np.all(np.isfinite(got_grad))
  # The weight derivative -log(1 - p), 0 where w = 0 (also where p = 1).
  gw = jax.grad(lambda ww: jnp.sum(streaming(z, ww)))(w)
  gw_small = jax.grad(lambda ww: jnp.sum(small(z, ww)))(w)
  np.testing.assert_allclose(gw, gw_small, rtol=1e-5, atol=1e-6)


def test_infinite_loss_only_where_a_certain_class_has_weight():
  z = jnp.array([[2.0, -jnp.inf, -jnp.inf], [2.0, -jnp.inf, -jnp.inf]])
  w = jnp.array([[1.0, 1.0, 1.0], [0.0, 1.0, 1.0]])
  np.testing.assert_array_equal(streaming(z, w), jnp.array([jnp.inf, 0.0]))


@pytest.mark.parametrize("scales", [(1.0, 30.0), (1.0, 30.0, 200.0)],
                         ids=["rest-sums-normal", "some-rest-sum-underflows"])
def test_float32_against_float64_formula_at_large_logit_gaps(scales):
  """Gaps up to ~70 keep the one-pass rest sum; one row beyond sends the batch to
  the second-maximum branch."""
  rng = np.random.default_rng(1)
  z = rng.normal(size=(64, 7)) * rng.choice(scales, size=(64, 1))
  w = rng.uniform(0.0, 3.0, size=z.shape)
  # log(1 - p_j) = LSE_{k != j} z_k - LSE z, in float64 (no 1 - p cancellation).
  others = np.where(np.eye(z.shape[1], dtype=bool)[None], -np.inf, z[:, None, :])
  log1m = np.logaddexp.reduce(others, axis=-1) - np.logaddexp.reduce(z, axis=-1)[:, None]
  want = -np.sum(w * log1m, axis=-1)
  got = streaming(jnp.asarray(z, jnp.float32), jnp.asarray(w, jnp.float32))
  np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-5)


def test_check_grads_orders_1_and_2_both_modes_float64():
  rng = np.random.default_rng(2)
  with jax.enable_x64(True):
    z = jnp.asarray(2.0 * rng.normal(size=(3, 5)))
    w = jnp.asarray(rng.uniform(0.5, 4.0, size=(3, 5)))
    check_grads(jax.jit(lambda zz: streaming(zz, w)), (z,), order=2, modes=["fwd"],
                atol=1e-5, rtol=1e-5)
    check_grads(jax.jit(lambda ww: streaming(z, ww)), (w,), order=1, modes=["fwd", "rev"],
                atol=1e-5, rtol=1e-5)
    # A unique top near probability 1 (the rearranged gradient branch).
    z_top = z.at[:, 0].add(25.0)
    check_grads(jax.jit(lambda zz: streaming(zz, w)), (z_top,), order=2, modes=["rev"],
                atol=1e-5, rtol=1e-5)


def test_hessian_vector_product_equals_the_small_kernel():
  z, w = hard_rows()
  z = z[:5]  # finite rows (the -inf rows have no finite second derivative to compare)
  w = w[:5]
  v = jnp.asarray(np.random.default_rng(3).normal(size=z.shape), jnp.float32)

  def hvp(f):
    return jax.jvp(jax.grad(lambda zz: jnp.sum(f(zz, w))), (z,), (v,))[1]

  np.testing.assert_allclose(hvp(streaming), hvp(small), rtol=1e-4, atol=1e-5)


def test_public_function_switches_kernel_by_size_and_agrees(monkeypatch):
  """Above the size threshold the public loss uses the streaming kernel; both agree."""
  rng = np.random.default_rng(4)
  k = 50
  logits = jnp.asarray(3.0 * rng.normal(size=(40, k)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, k, size=40), jnp.int32)
  labels = labels.at[3].set(k)  # a bad label: NaN from both kernels
  cost = jnp.asarray(rng.uniform(0, 5, (k, k)), jnp.float32)
  calls = []
  real = _cdw_streaming.cdw_streaming
  monkeypatch.setattr(_cdw_streaming, "cdw_streaming",
                      lambda *a: calls.append(1) or real(*a))

  def loss(z):
    return cj.class_distance_weighted_cross_entropy(z, labels, cost, alpha=1.5)

  small_value, small_grad = jax.value_and_grad(lambda z: jnp.nansum(loss(z)))(logits)
  assert not calls
  monkeypatch.setattr(_cdw_streaming, "STREAMING_MIN_ELEMENTS", 0)
  big_value, big_grad = jax.value_and_grad(lambda z: jnp.nansum(loss(z)))(logits)
  assert calls
  np.testing.assert_allclose(big_value, small_value, rtol=1e-6)
  np.testing.assert_allclose(big_grad, small_grad, rtol=1e-5, atol=1e-6)
  assert np.isnan(loss(logits)[3])


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_logits_compute_in_float32(dtype, monkeypatch):
  monkeypatch.setattr(_cdw_streaming, "STREAMING_MIN_ELEMENTS", 0)
  rng = np.random.default_rng(5)
  logits = jnp.asarray(2.0 * rng.normal(size=(16, 6)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 6, size=16), jnp.int32)
  cost = cj.ordinal_cost_matrix(6)
  got = cj.class_distance_weighted_cross_entropy(logits.astype(dtype), labels, cost)
  want = small(logits.astype(dtype).astype(jnp.float32), cost[labels])
  assert got.dtype == dtype
  np.testing.assert_allclose(got.astype(np.float32), want.astype(dtype).astype(np.float32),
                             rtol=1e-2)
