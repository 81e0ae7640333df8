"""The CPU CDW-CE kernel (``_cdw_dot_sums``) against the other kernel and float64.

The two kernels compute the same function with different passes; the other one
(``_cdw_cross_entropy._cdw``) is pinned by ``test_custom_gradients.py`` and
``test_losses.py``. Here the dot-sums kernel gets the same hard rows (ties at the
top, within a block and across blocks, a unique arg-max within ``exp(-1e4)`` of
probability 1, ``-inf`` logits, a single finite logit, zero weights), derivatives of
orders 1 and 2 in both modes, ``vmap``, and the public function's switch between
the kernels.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

import costjax as cj
from costjax import _cdw_cross_entropy, _cdw_dot_sums

dot_sums = jax.jit(_cdw_dot_sums.cdw_dot_sums)
small = jax.jit(_cdw_cross_entropy._cdw)


def grads(argnum):
  """Jitted gradients of the summed loss w.r.t. logits (0) or weights (1), both kernels."""
  def of(f):
    return jax.jit(jax.grad(lambda z, w: jnp.sum(f(z, w)), argnums=argnum))
  return of(_cdw_dot_sums.cdw_dot_sums), of(_cdw_cross_entropy._cdw)


def hard_rows(num_classes: int = 5, positions=(0, 1, 2, 3, 4)):
  """Logits and weights, float32, with every special case of log(1 - softmax).

  The five columns of each case sit at ``positions`` of ``num_classes`` columns;
  the others are ``-inf`` logits (impossible classes) with positive weights.
  """
  inf = np.inf
  core = np.array([
      [0.5, -1.0, 2.0, 0.0, 1.5],  # ordinary
      [1.0, 1.0, 0.0, -2.0, 0.5],  # tie at the top
      [0.0, 0.0, 0.0, 0.0, 0.0],  # all tied
      [1e4, 0.0, -1e4, 5.0, 1.0],  # unique top, p within exp(-1e4) of 1
      [80.0, 0.0, -3.0, -1.0, 2.0],  # the rest sum is tiny relative to the top
      [3.0, -inf, 0.5, -inf, 1.0],  # impossible classes
      [2.0, -inf, -inf, -inf, -inf],  # one possible class: p = 1 exactly
      [-1e4, 1e4, 1e4, 0.0, 3.0],  # tie at +1e4
      [0.0, -1e-8, -1.0, -2.0, -3.0],  # exp(z - m) == 1 below the maximum: not tied
      [-5.0, 0.0, 120.0, 1.0, 0.0],  # the rest sum underflows relative to the top (gap 119)
  ], np.float32)
  rng = np.random.default_rng(0)
  w_core = rng.uniform(0.5, 4.0, core.shape).astype(np.float32)
  w_core[6] = [0.0, 1.0, 2.0, 0.5, 1.0]  # w_t = 0 where p_t = 1: the loss is 0, not NaN
  w_core[3, 0] = 0.0  # zero weight on the saturated top
  z = np.full((core.shape[0], num_classes), -inf, np.float32)
  w = rng.uniform(0.5, 4.0, z.shape).astype(np.float32)
  z[:, list(positions)] = core
  w[:, list(positions)] = w_core
  return jnp.asarray(z), jnp.asarray(w)


LAYOUTS = {
    "16-classes": (16, (0, 1, 2, 3, 4)),
    # Ties within one block and across blocks, the top in the last block.
    "320-classes-spread": (320, (319, 3, 250, 160, 161)),
}


@pytest.mark.parametrize("layout", LAYOUTS, ids=list(LAYOUTS))
def test_values_and_gradients_equal_the_other_kernel_on_hard_rows(layout):
  z, w = hard_rows(*LAYOUTS[layout])
  np.testing.assert_allclose(dot_sums(z, w), small(z, w), rtol=1e-6, atol=1e-6)
  ours, other = grads(0)
  got, want = ours(z, w), other(z, w)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert np.all(np.isfinite(got))
  # The weight derivative -log(1 - p), 0 where w = 0 (also where p = 1).
  ours, other = grads(1)
  np.testing.assert_allclose(ours(z, w), other(z, w), rtol=1e-5, atol=1e-6)


def test_random_rows_with_ties_across_blocks_equal_the_other_kernel():
  rng = np.random.default_rng(6)
  z = (2.0 * rng.normal(size=(64, 1000))).astype(np.float32)
  w = rng.uniform(0.0, 3.0, size=z.shape).astype(np.float32)
  z[::4, 900] = z[::4].max(axis=-1) + 1.0  # a top in the last block ...
  z[::8, 5] = z[::8, 900]  # ... tied with one in the first block
  z[1::8, 17] = z[1::8].max(axis=-1)  # ties at arbitrary places
  z, w = jnp.asarray(z), jnp.asarray(w)
  np.testing.assert_allclose(dot_sums(z, w), small(z, w), rtol=2e-6)
  ours, other = grads(0)
  np.testing.assert_allclose(ours(z, w), other(z, w), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("lead", [(), (2, 5)], ids=["one-row", "two-batch-axes"])
def test_any_number_of_batch_axes_equals_the_other_kernel(lead):
  """One unbatched row and two batch axes: the block maxima, the arg-max and the
  runner-up are taken along the class axis whatever the rank."""
  z, w = hard_rows(*LAYOUTS["320-classes-spread"])
  z, w = z[:10], w[:10]
  if lead:
    z, w = z.reshape(*lead, -1), w.reshape(*lead, -1)
  else:
    z, w = z[4], w[4]  # the row whose top leads by 78: the runner-up sets the shift
  np.testing.assert_allclose(dot_sums(z, w), small(z, w), rtol=1e-6, atol=1e-6)
  ours, other = grads(0)
  np.testing.assert_allclose(ours(z, w), other(z, w), rtol=1e-5, atol=1e-6)


def test_infinite_loss_only_where_a_certain_class_has_weight():
  z = jnp.full((2, 16), -jnp.inf).at[:, 3].set(2.0)
  w = jnp.ones((2, 16)).at[1, 3].set(0.0)
  np.testing.assert_array_equal(dot_sums(z, w), jnp.array([jnp.inf, 0.0]))
  # dl/dw_t = -log(1 - p_t) = +inf where p_t = 1 and w_t > 0.
  gw = jax.grad(lambda ww: dot_sums(z, ww)[1])(w.at[1, 3].set(1.0))
  assert gw[1, 3] == jnp.inf


@pytest.mark.parametrize("scales", [(1.0, 30.0), (1.0, 30.0, 200.0)],
                         ids=["rest-sums-normal", "some-rest-sum-underflows"])
def test_float32_against_float64_formula_at_large_logit_gaps(scales):
  """Rows whose top leads by more than 64 are shifted by their second-largest logit;
  the others by their maximum: both exact."""
  rng = np.random.default_rng(1)
  z = rng.normal(size=(64, 20)) * rng.choice(scales, size=(64, 1))
  w = rng.uniform(0.0, 3.0, size=z.shape)
  # log(1 - p_j) = LSE_{k != j} z_k - LSE z, in float64 (no 1 - p cancellation).
  others = np.where(np.eye(z.shape[1], dtype=bool)[None], -np.inf, z[:, None, :])
  log1m = np.logaddexp.reduce(others, axis=-1) - np.logaddexp.reduce(z, axis=-1)[:, None]
  want = -np.sum(w * log1m, axis=-1)
  got = dot_sums(jnp.asarray(z, jnp.float32), jnp.asarray(w, jnp.float32))
  np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-5)


def test_check_grads_orders_1_and_2_both_modes_float64():
  rng = np.random.default_rng(2)
  with jax.enable_x64(True):
    z = jnp.asarray(2.0 * rng.normal(size=(3, 16)))
    w = jnp.asarray(rng.uniform(0.5, 4.0, size=(3, 16)))
    f = _cdw_dot_sums.cdw_dot_sums
    check_grads(jax.jit(lambda zz: f(zz, w)), (z,), order=2, modes=["fwd", "rev"],
                atol=1e-5, rtol=1e-5)
    check_grads(jax.jit(lambda ww: f(z, ww)), (w,), order=1, modes=["fwd", "rev"],
                atol=1e-5, rtol=1e-5)
    # A unique top near probability 1 (gap 25), beyond the shift threshold (gap 70),
    # and a tied row.
    z_top = z.at[:, 0].add(25.0)
    check_grads(jax.jit(lambda zz: f(zz, w)), (z_top,), order=2, modes=["rev"],
                atol=1e-5, rtol=1e-5)
    z_far = z.at[:, 0].add(70.0)
    check_grads(jax.jit(lambda zz: f(zz, w)), (z_far,), order=2, modes=["rev"],
                atol=1e-5, rtol=1e-5)
    z_tied = z.at[0, 5].set(jnp.max(z[0]) + 1.0).at[0, 9].set(jnp.max(z[0]) + 1.0)
    check_grads(jax.jit(lambda zz: f(zz, w)), (z_tied,), order=2, modes=["rev"],
                atol=1e-5, rtol=1e-5)


def test_hessian_vector_product_equals_the_other_kernel():
  z, w = hard_rows(16)
  z, w = z[:5], w[:5]  # rows without -inf ... except the padding: compare the finite part
  z = jnp.where(jnp.isfinite(z), z, -30.0)
  v = jnp.asarray(np.random.default_rng(3).normal(size=z.shape), jnp.float32)

  @jax.jit
  def hvps(zz, vv):
    def hvp(f):
      return jax.jvp(jax.grad(lambda x: jnp.sum(f(x, w))), (zz,), (vv,))[1]
    return hvp(_cdw_dot_sums.cdw_dot_sums), hvp(_cdw_cross_entropy._cdw)

  got, want = hvps(z, v)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_vmap_over_weight_stacks_equals_a_loop():
  """vmap over the weights (a stack of cost rows) equals one call per stack entry."""
  z, w = hard_rows(*LAYOUTS["320-classes-spread"])
  stack = jnp.stack([w, 2.0 * w, w.at[:, 319].set(0.0)])
  f = jax.jit(jax.vmap(jax.value_and_grad(lambda ww, zz: jnp.sum(_cdw_dot_sums.cdw_dot_sums(
      zz, ww)), argnums=1), in_axes=(0, None)))
  values, grad_stack = f(stack, z)
  _, other = grads(0)
  for i in range(stack.shape[0]):
    np.testing.assert_allclose(values[i], jnp.sum(small(z, stack[i])), rtol=1e-6)
    np.testing.assert_allclose(grad_stack[i], other(z, stack[i]), rtol=1e-5, atol=1e-6)


@given(st.integers(1, 5000))
@settings(max_examples=200, deadline=None)
def test_block_width_divides_the_class_count(k):
  c = _cdw_dot_sums.block_width(k)
  if c is not None:
    assert k % c == 0 and 4 <= c <= k // 2
  else:
    assert k < 16 or all(k % d for d in range(4, k // 2 + 1))


def test_public_function_picks_the_kernel_by_class_count_and_both_agree(monkeypatch):
  """On CPU a blockable K uses the dot-sums kernel, a prime K the other one."""
  rng = np.random.default_rng(4)
  calls = []
  real = _cdw_dot_sums.cdw_dot_sums
  monkeypatch.setattr(_cdw_dot_sums, "cdw_dot_sums", lambda *a: calls.append(1) or real(*a))
  for k, expect in ((50, True), (53, False)):
    logits = jnp.asarray(3.0 * rng.normal(size=(40, k)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, k, size=40), jnp.int32).at[3].set(k)  # bad: NaN
    cost = jnp.asarray(rng.uniform(0, 5, (k, k)), jnp.float32)

    def loss(z, cost=cost, labels=labels):
      return cj.class_distance_weighted_cross_entropy(z, labels, cost, alpha=1.5)

    calls.clear()
    value, grad = jax.value_and_grad(lambda z: jnp.nansum(loss(z)))(logits)
    assert bool(calls) == expect
    with monkeypatch.context() as m:
      m.setattr(_cdw_dot_sums, "use_dot_sums", lambda logits: False)
      calls.clear()
      want_value, want_grad = jax.value_and_grad(lambda z: jnp.nansum(loss(z)))(logits)
      assert not calls
    np.testing.assert_allclose(value, want_value, rtol=1e-5)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-4, atol=1e-6)
    assert np.isnan(loss(logits)[3])


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_logits_compute_in_float32(dtype):
  rng = np.random.default_rng(5)
  logits = jnp.asarray(2.0 * rng.normal(size=(16, 24)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 24, size=16), jnp.int32)
  cost = cj.ordinal_cost_matrix(24)
  got = cj.class_distance_weighted_cross_entropy(logits.astype(dtype), labels, cost)
  want = small(logits.astype(dtype).astype(jnp.float32), cost[labels])
  assert got.dtype == dtype
  np.testing.assert_allclose(got.astype(np.float32), want.astype(dtype).astype(np.float32),
                             rtol=1e-2)


def test_a_nan_logit_makes_only_its_row_nan():
  rng = np.random.default_rng(7)
  z = jnp.asarray(rng.normal(size=(3, 300)), jnp.float32).at[1, 7].set(jnp.nan)
  w = jnp.asarray(rng.uniform(0.5, 2.0, size=(3, 300)), jnp.float32)
  value = dot_sums(z, w)
  grad = jax.grad(lambda zz: jnp.sum(dot_sums(zz, w)))(z)
  np.testing.assert_array_equal(np.isnan(value), [False, True, False])
  np.testing.assert_array_equal(np.isnan(grad).any(axis=-1), [False, True, False])
  rows = jnp.array([0, 2])
  np.testing.assert_allclose(value[rows], small(z[rows], w[rows]), rtol=1e-6)
