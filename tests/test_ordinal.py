"""ordinal_emd against NumPy's cumsum: many classes (the blocked prefix sums), any batch
shape, a traced power, and derivatives in the logits and in probability labels."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import costjax as cj
from tests.reference import np_ordinal_emd, one_hot

K = 5


@pytest.mark.parametrize("k", [129, 257, 1000])  # above the one-triangle limit: blocked sums
@pytest.mark.parametrize("power", [1, 2, 1.5])
def test_ordinal_emd_many_classes_against_cumsum(k, power):
  """Values against NumPy's cumsum and a directional derivative against central
  differences of that oracle, at class counts that take the blocked prefix sums
  (a divisor block, padding for the prime 257)."""
  rng = np.random.default_rng(k)
  logits = rng.normal(size=(3, k)) * 3
  q = rng.dirichlet(np.full(k, 0.3), size=3)
  labels = np.array([0, k // 2, k - 1])
  direction = rng.normal(size=(3, k))
  for target, q64 in ((q.astype(np.float32), q.astype(np.float32).astype(np.float64)),
                      (labels, one_hot(labels, k))):
    f = jax.jit(lambda z, target=target: cj.ordinal_emd(z, target, power=power))
    got, jvp = jax.jvp(f, (jnp.asarray(logits, jnp.float32),),
                       (jnp.asarray(direction, jnp.float32),))
    want = np_ordinal_emd(logits, q64, power)
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-4)
    h = 1e-4
    fd = (np_ordinal_emd(logits + h * direction, q64, power)
          - np_ordinal_emd(logits - h * direction, q64, power)) / (2 * h)
    np.testing.assert_allclose(jvp, fd, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("k", [6, 257])
@pytest.mark.parametrize("batch", [(), (2, 3)], ids=["unbatched", "2d-batch"])
def test_ordinal_emd_any_batch_shape_values_and_derivatives(batch, k):
  rng = np.random.default_rng(7)
  logits = rng.normal(size=batch + (k,)) * 3
  q = rng.dirichlet(np.full(k, 0.3), size=batch if batch else None)
  q64 = q.astype(np.float32).astype(np.float64)
  direction = rng.normal(size=logits.shape)
  for power in (1, 2, 1.5):
    f = jax.jit(lambda z, power=power: cj.ordinal_emd(z, q.astype(np.float32), power=power))
    got, jvp = jax.jvp(f, (jnp.asarray(logits, jnp.float32),),
                       (jnp.asarray(direction, jnp.float32),))
    assert got.shape == batch
    np.testing.assert_allclose(got, np_ordinal_emd(logits, q64, power), rtol=2e-4, atol=1e-4)
    h = 1e-4
    fd = (np_ordinal_emd(logits + h * direction, q64, power)
          - np_ordinal_emd(logits - h * direction, q64, power)) / (2 * h)
    np.testing.assert_allclose(jvp, fd, rtol=2e-3, atol=2e-3)
    grad = jax.jit(jax.grad(lambda z, f=f: f(z).sum()))(jnp.asarray(logits, jnp.float32))
    np.testing.assert_allclose(np.sum(np.asarray(grad, np.float64) * direction), fd.sum(),
                               rtol=2e-3, atol=2e-3)


def test_ordinal_emd_power_traced_under_jit():
  rng = np.random.default_rng(8)
  logits = rng.normal(size=(3, K))
  q = rng.dirichlet(np.ones(K), size=3)
  f = jax.jit(lambda z, r: cj.ordinal_emd(z, q.astype(np.float32), power=r))
  for power in (1.0, 1.5, 2.0):
    np.testing.assert_allclose(f(logits.astype(np.float32), power),
                               np_ordinal_emd(logits, q.astype(np.float32), power),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("k", [6, 257])
def test_ordinal_emd_derivative_in_probability_labels(k):
  """Soft targets can be learned too: d/dq against central differences of the oracle."""
  rng = np.random.default_rng(9)
  logits = rng.normal(size=(2, 3, k)) * 2
  q = rng.dirichlet(np.full(k, 0.5), size=(2, 3))
  direction = rng.normal(size=q.shape)
  z32 = jnp.asarray(logits, jnp.float32)
  for power in (1, 2, 1.5):
    f = lambda t, power=power: cj.ordinal_emd(z32, t, power=power)
    _, jvp = jax.jvp(f, (jnp.asarray(q, jnp.float32),), (jnp.asarray(direction, jnp.float32),))
    h = 1e-7  # the float64 oracle allows a step well inside the kinks of |.| (power 1)
    q64 = q.astype(np.float32).astype(np.float64)
    fd = (np_ordinal_emd(logits.astype(np.float32), q64 + h * direction, power)
          - np_ordinal_emd(logits.astype(np.float32), q64 - h * direction, power)) / (2 * h)
    np.testing.assert_allclose(jvp, fd, rtol=2e-3, atol=2e-3)
    grad = jax.grad(lambda t, f=f: f(t).sum())(jnp.asarray(q, jnp.float32))
    np.testing.assert_allclose(np.sum(np.asarray(grad, np.float64) * direction), fd.sum(),
                               rtol=2e-3, atol=2e-3)
