"""The closed-form derivatives (custom_jvp) of CDW-CE and ordinal EMD, and the prefix sum.

Every custom rule is checked three ways: ``check_grads`` against finite differences in
float64 (orders 1 and 2, forward and reverse mode) for every differentiable input
(logits, cost matrix, probability labels, traced hyperparameters); equality with plain
autodiff of a straightforward formula written here with ``jnp.log1p`` / ``jnp.cumsum``;
and, at logit gaps where float32 ``softmax`` saturates, against that formula in float64.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import costjax as cj
from costjax._reductions import prefix_sum

K = 6


def problem(seed=0, batch=3, k=K, probs=False, dtype=np.float64):
  rng = np.random.default_rng(seed)
  logits = (2.0 * rng.normal(size=(batch, k))).astype(dtype)
  cost = rng.uniform(0.5, 5.0, size=(k, k)).astype(dtype)
  np.fill_diagonal(cost, 0.0)
  if probs:
    labels = rng.dirichlet(np.ones(k), size=batch).astype(dtype)
  else:
    labels = rng.integers(0, k, size=batch).astype(np.int32)
  return logits, labels, cost


# Straightforward formulas; their derivatives come from plain autodiff.
def cdw_formula(z, labels, c, alpha=1.0):
  q = labels if labels.ndim == z.ndim else jax.nn.one_hot(labels, c.shape[0], dtype=z.dtype)
  w = q @ (c**alpha)
  return -jnp.sum(w * jnp.log1p(-jax.nn.softmax(z)), axis=-1)


def emd_formula(z, labels, power=2.0):
  k = z.shape[-1]
  q = labels if labels.ndim == z.ndim else jax.nn.one_hot(labels, k, dtype=z.dtype)
  d = jnp.cumsum(jax.nn.softmax(z), -1) - jnp.cumsum(q, -1)
  return jnp.sum(jnp.abs(d[..., :-1]) ** power, axis=-1)


def cdw(z, labels, c, alpha=1.0):
  return cj.class_distance_weighted_cross_entropy(z, labels, c, alpha=alpha)


def emd(z, labels, power=2):
  return cj.ordinal_emd(z, labels, power=power)


def CHECK(f, args, order, **kw):  # noqa: N802
  """check_grads of the jitted function (eager op-by-op dispatch is slow)."""
  kw = {"modes": ["fwd", "rev"], "atol": 1e-5, "rtol": 1e-5} | kw
  check_grads(jax.jit(f), args, order=order, **kw)


# --------------------------------------------------------------------------- #
# Finite differences (float64), every differentiable input.
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("probs", [False, True], ids=["indices", "probabilities"])
def test_cdw_check_grads_all_inputs(probs):
  with jax.enable_x64(True):
    z, y, c = problem(probs=probs, batch=2, k=4)
    CHECK(lambda zz: cdw(zz, y, c, alpha=1.5), (z,), order=2)
    CHECK(lambda cc: cdw(z, y, cc, alpha=1.5), (c + 0.5,), order=1)
    CHECK(lambda a: cdw(z, y, c + 0.5, alpha=a), (1.7,), order=2)
    if probs:
      CHECK(lambda q: cdw(z, q, c), (y,), order=1)


def test_cdw_check_grads_unique_top_near_one():
  """A confident row (p_max = 1 - 1e-9): the rearranged arg-max derivative."""
  with jax.enable_x64(True):
    z, y, c = problem(batch=2)
    z[0] = [21.0, 0.0, 0.5, -1.0, 0.2, 0.0]
    z[1] = [3.0, 3.0, 0.0, 1.0, -2.0, 0.0]  # tied maxima
    y = np.array([1, 0], np.int32)
    CHECK(lambda zz: cdw(zz, y, c), (z,), order=2, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("power", [1, 2], ids=["p1", "p2"])
@pytest.mark.parametrize("probs", [False, True], ids=["indices", "probabilities"])
def test_emd_check_grads_static_power(power, probs):
  if power == 1 and not probs:
    pytest.skip("power=1 with indices is the expected-distance formula (no custom rule)")
  with jax.enable_x64(True):
    z, y, _ = problem(probs=probs)
    CHECK(lambda zz: emd(zz, y, power), (z,), order=2)
    if probs:
      # check_grads' VJP-of-VJP finite difference w.r.t. the labels misses by 1e-5
      # relative for the plain jnp.cumsum formula as well; the exact Hessian is
      # compared with the formula's in test_emd_equals_autodiff_of_formula.
      CHECK(lambda q: emd(z, q, power), (y,), order=2, modes=["fwd"])
      CHECK(lambda q: emd(z, q, power), (y,), order=1, modes=["rev"])


@pytest.mark.parametrize("probs", [False, True], ids=["indices", "probabilities"])
def test_emd_check_grads_traced_power(probs):
  with jax.enable_x64(True):
    z, y, _ = problem(probs=probs)
    CHECK(lambda zz, r: emd(zz, y, r), (z, 1.5), order=2)
    CHECK(lambda r: jax.jit(lambda zz, rr: emd(zz, y, rr))(z, r), (2.5,), order=1)


# --------------------------------------------------------------------------- #
# Equality with plain autodiff of the formula.
# --------------------------------------------------------------------------- #


def _hvp(f, z, v):
  """Hessian-vector product of ``sum(f)`` at ``z`` (jitted: eager dispatch is slow)."""
  return jax.jit(lambda z, v: jax.jvp(jax.grad(lambda zz: jnp.sum(f(zz))), (z,), (v,))[1])(z, v)


def grads(f, *args):
  # (jitted: eager dispatch of the formulas is slow)
  return jax.jit(jax.grad(lambda *a: jnp.sum(f(*a)), argnums=tuple(range(len(args)))))(*args)


@pytest.mark.parametrize("probs", [False, True], ids=["indices", "probabilities"])
def test_cdw_equals_autodiff_of_formula(probs):
  with jax.enable_x64(True):
    z, y, c = problem(seed=1, batch=8, probs=probs)
    got = grads(lambda zz, cc, a: cdw(zz, y, cc, alpha=a), z, c + 0.5, 1.3)
    want = grads(lambda zz, cc, a: cdw_formula(zz, y, cc, alpha=a), z, c + 0.5, 1.3)
    for g, w in zip(got, want, strict=True):
      np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12)
    # Second derivative (Hessian-vector product) as well.
    v = np.random.default_rng(2).normal(size=z.shape)
    hvp = lambda f: _hvp(f, z, v)
    np.testing.assert_allclose(hvp(lambda zz: cdw(zz, y, c)), hvp(lambda zz: cdw_formula(zz, y, c)),
                               rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("power", [1, 2, 1.5, 3.0])
@pytest.mark.parametrize("probs", [False, True], ids=["indices", "probabilities"])
def test_emd_equals_autodiff_of_formula(power, probs):
  with jax.enable_x64(True):
    z, y, _ = problem(seed=3, batch=8, k=9, probs=probs)
    np.testing.assert_allclose(emd(z, y, power), emd_formula(z, y, power), rtol=1e-12)
    got = grads(lambda zz: emd(zz, y, power), z)[0]
    want = grads(lambda zz: emd_formula(zz, y, power), z)[0]
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    v = np.random.default_rng(4).normal(size=z.shape)
    hvp = lambda f: _hvp(f, z, v)
    np.testing.assert_allclose(hvp(lambda zz: emd(zz, y, power)),
                               hvp(lambda zz: emd_formula(zz, y, power)), rtol=1e-9, atol=1e-11)
    if probs:
      got = grads(lambda q: emd(z, q, power), y)[0]
      want = grads(lambda q: emd_formula(z, q, power), y)[0]
      np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
      hess = lambda f: jax.jacrev(jax.grad(lambda q: jnp.sum(f(q))))(y)
      np.testing.assert_allclose(hess(lambda q: emd(z, q, power)),
                                 hess(lambda q: emd_formula(z, q, power)), rtol=1e-9, atol=1e-11)
    if isinstance(power, float):  # the traced-power path, derivative w.r.t. the power
      got = jax.grad(lambda r: jnp.sum(emd(z, y, jnp.asarray(r))))(power)
      want = jax.grad(lambda r: jnp.sum(emd_formula(z, y, r)))(power)
      np.testing.assert_allclose(got, want, rtol=1e-10)


# --------------------------------------------------------------------------- #
# float32 at saturating logits: the fast branch, the fallback, and vmap.
# --------------------------------------------------------------------------- #


def cdw_exclusion_formula(z, y, c):
  """``log(1 - p_j) = LSE_{k != j} z_k - LSE z`` by brute force over a (K, K) mask.

  Exact where ``log1p(-softmax)`` saturates (p_j within 1e-16 of 1 in float64).
  """
  k = c.shape[0]
  others = jnp.where(jnp.eye(k, dtype=bool), -jnp.inf, z[..., None, :])  # row j: k != j
  log1m = jax.nn.logsumexp(others, axis=-1) - jax.nn.logsumexp(z, axis=-1, keepdims=True)
  return -jnp.sum(c[y] * log1m, axis=-1)


def cdw_f64_reference(z, y, c):
  """Per-example value and logit gradient in float64, from float32 inputs."""
  with jax.enable_x64(True):
    z64, c64 = np.asarray(z, np.float64), np.asarray(c, np.float64)
    # (jitted: eager dispatch of the formula is slow)
    grad = jax.jit(jax.grad(lambda zz: jnp.sum(cdw_exclusion_formula(zz, y, c64))))(z64)
    value = jax.jit(lambda zz: cdw_exclusion_formula(zz, y, c64))(z64)
    return np.asarray(value), np.asarray(grad)


def saturated_problem(gaps):
  """float32 rows whose arg-max (a wrong class) leads the others by ``gaps``."""
  z, _, c = problem(seed=4, batch=len(gaps), dtype=np.float32)
  y = (np.arange(len(gaps)) % K).astype(np.int32)
  for i, gap in enumerate(gaps):
    z[i, (y[i] + 3) % K] = z[i].max() + gap
  return z, y, c


def cdw_value_and_grad(z, y, c):
  f = lambda zz: cj.class_distance_weighted_cross_entropy(zz, y, c)
  return f(z), jax.grad(lambda zz: jnp.sum(f(zz)))(z)


def test_cdw_float32_saturated_rows():
  """Logit gaps of 80 and 150 underflow exp in float32: the fallback branch.

  The arg-max is a wrong class (confidently wrong), so its term dominates the
  value and the gradient must not vanish. A batch of moderate gaps takes the
  fast branch; rows shared by both batches agree, and so does vmap (which runs
  both branches and selects).
  """
  gaps = [10.0, 40.0, 60.0, 80.0, 150.0]
  z, y, c = saturated_problem(gaps)
  want, want_grad = cdw_f64_reference(z, y, c)
  got, got_grad = jax.jit(cdw_value_and_grad)(z, y, c)  # some rows underflow: slow branch
  np.testing.assert_allclose(got, want, rtol=2e-6)
  np.testing.assert_allclose(got_grad, want_grad, rtol=2e-5, atol=1e-6)
  top = (y + 3) % K
  assert np.all(np.abs(got_grad[np.arange(len(gaps)), top]) > 0.1)
  fast, fast_grad = jax.jit(cdw_value_and_grad)(z[:3], y[:3], c)  # no row underflows
  np.testing.assert_allclose(fast, want[:3], rtol=2e-6)
  np.testing.assert_allclose(fast_grad, want_grad[:3], rtol=2e-5, atol=1e-6)
  mapped = jax.jit(jax.vmap(cdw_value_and_grad, in_axes=(0, 0, None)))(z, y, c)
  np.testing.assert_allclose(mapped[0], want, rtol=2e-6)
  np.testing.assert_allclose(mapped[1], want_grad, rtol=2e-5, atol=1e-6)


def test_cdw_1e4_logits_gradient_exact():
  """p_t = 1 - exp(-1e4): log(1 - p_t) = -1e4 exactly and d/dz_t = w_t p_t - p_t V = w_t."""
  c = np.array([[0.0, 2.0, 1.0], [3.0, 0.0, 1.0], [1.0, 4.0, 0.0]], np.float32)
  z = jnp.array([1e4, 0.0, -jnp.inf])
  value, grad = jax.value_and_grad(
      lambda zz: cj.class_distance_weighted_cross_entropy(zz, jnp.array(1), c))(z)
  np.testing.assert_allclose(value, 3.0 * 1e4, rtol=1e-6)
  np.testing.assert_allclose(grad, [3.0, -3.0, 0.0], atol=1e-6)


def test_emd_float32_matches_float64_formula():
  rng = np.random.default_rng(5)
  for k in (7, 130, 1000):
    z = (3.0 * rng.normal(size=(4, k))).astype(np.float32)
    y = rng.integers(0, k, 4).astype(np.int32)
    with jax.enable_x64(True):  # (jitted: eager dispatch of the formula took ~10 s)
      want, want_grad = jax.jit(jax.value_and_grad(
          lambda zz, y=y: jnp.sum(emd_formula(zz, y))))(z.astype(np.float64))
    got, got_grad = jax.jit(jax.value_and_grad(lambda zz, y=y: jnp.sum(emd(zz, y))))(z)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    np.testing.assert_allclose(got_grad, want_grad, atol=2e-6 * k)


# --------------------------------------------------------------------------- #
# The prefix sum.
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("from_products", [False, True])
@pytest.mark.parametrize("k", [1, 5, 128, 129, 997, 1000, 4096, 99_991])
def test_prefix_sum_equals_cumsum(k, from_products):
  x = np.random.default_rng(k).random((2, 3, k)).astype(np.float32)
  got = jax.jit(functools.partial(prefix_sum, totals_from_products=from_products))(x)
  want = np.cumsum(x.astype(np.float64), axis=-1)
  assert got.shape == x.shape and got.dtype == jnp.float32
  np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6 * np.sqrt(k))


@pytest.mark.parametrize("from_products", [False, True])
def test_prefix_sum_derivatives_are_suffix_sums(from_products):
  prefix = functools.partial(prefix_sum, totals_from_products=from_products)
  with jax.enable_x64(True):
    x = np.random.default_rng(0).normal(size=(3, 300))
    g = np.random.default_rng(1).normal(size=(3, 300))
    _, vjp = jax.vjp(prefix, x)
    suffix = np.cumsum(g[:, ::-1], axis=-1)[:, ::-1]
    np.testing.assert_allclose(vjp(g)[0], suffix, rtol=1e-12, atol=1e-12)
    check_grads(prefix, (x[:, :150],), order=1, modes=["fwd", "rev"])
    vmapped = jax.vmap(prefix)(x)
    np.testing.assert_allclose(vmapped, np.cumsum(x, -1), rtol=1e-12, atol=1e-12)
