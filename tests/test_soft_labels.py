"""cost_soft_labels against softmax(-C[y] / T) written by hand: integer and probability
labels, temperatures, out-of-range labels, shapes, dtypes and checked mode."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify

import costjax as cj
from tests.reference import asymmetric, np_soft_targets, one_hot

K = 5


@pytest.mark.parametrize("temperature", [0.3, 1.0, 2.5, 7.0])
def test_cost_soft_labels_integer_labels_match_hand_softmax(temperature):
  rng = np.random.default_rng(30)
  cost = asymmetric(rng, diag=(0.0, 1.5))  # the diagonal need not be the row minimum
  labels = np.array([[0, 4, 2], [1, 3, 3]])
  got = cj.cost_soft_labels(jnp.asarray(labels), cost.astype(np.float32),
                            temperature=temperature)
  assert got.shape == (2, 3, K) and got.dtype == jnp.float32
  want = np.empty((2, 3, K))
  for idx in np.ndindex(labels.shape):
    row = -cost[labels[idx]] / temperature
    want[idx] = np.exp(row - row.max()) / np.exp(row - row.max()).sum()
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  traced = jax.jit(lambda y, t: cj.cost_soft_labels(y, cost.astype(np.float32), temperature=t))
  np.testing.assert_allclose(traced(jnp.asarray(labels), temperature), want, rtol=1e-5,
                             atol=1e-7)


@pytest.mark.parametrize("temperature", [0.5, 3.0])
def test_cost_soft_labels_probability_labels_mix_rows_not_columns(temperature):
  rng = np.random.default_rng(31)
  cost = asymmetric(rng)
  r = rng.dirichlet(np.ones(K), size=4)
  got = cj.cost_soft_labels(jnp.asarray(r, jnp.float32), cost.astype(np.float32),
                            temperature=temperature)
  want = np_soft_targets(r, cost, temperature)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  wrong = r @ np_soft_targets(np.eye(K), cost, temperature).T  # the transposed table
  assert np.abs(wrong - want).max() > 1e-2
  # One-hot probability labels give the integer-label rows.
  np.testing.assert_allclose(
      cj.cost_soft_labels(jnp.eye(K, dtype=jnp.float32)[jnp.array([2, 0])],
                          cost.astype(np.float32), temperature=temperature),
      np_soft_targets(one_hot([2, 0], K), cost, temperature), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("bad", [-1, K, 1000, -1000])
def test_cost_soft_labels_out_of_range_rows_are_nan(bad):
  rng = np.random.default_rng(32)
  cost = asymmetric(rng).astype(np.float32)
  labels = jnp.array([1, bad, 3])
  for f in (cj.cost_soft_labels, jax.jit(cj.cost_soft_labels)):
    out = np.asarray(f(labels, cost))
    assert np.isnan(out[1]).all()
    np.testing.assert_allclose(out[[0, 2]], np_soft_targets(one_hot([1, 3], K), cost, 1.0),
                               rtol=1e-5, atol=1e-7)
  with pytest.raises(checkify.JaxRuntimeError, match=rf"got {bad} at index \(1,\)"):
    cj.checked(cj.cost_soft_labels)(labels, cost)


def test_cost_soft_labels_bad_shapes_and_dtypes():
  c = np.ones((K, K), np.float32) - np.eye(K, dtype=np.float32)
  with pytest.raises(ValueError, match=r"labels.shape=\(2, 4\)"):
    cj.cost_soft_labels(jnp.full((2, 4), 0.25), c)
  with pytest.raises(ValueError, match=r"labels.shape=\(\)"):
    cj.cost_soft_labels(jnp.float32(1.0), c)
  with pytest.raises(TypeError, match="bool"):
    cj.cost_soft_labels(jnp.ones((2, K), bool), c)
  with pytest.raises(ValueError, match=r"\(5, 4\)"):
    cj.cost_soft_labels(jnp.array([0, 1]), c[:, :4])
  # A per-example stack must broadcast against the labels' batch shape (2,): (3, 5, 5) does not.
  with pytest.raises(ValueError, match=r"\(3, 5, 5\)"):
    cj.cost_soft_labels(jnp.array([0, 1]), np.stack([c, c, c]))


def test_cost_soft_labels_errors_name_the_function():
  with pytest.raises(ValueError, match=r"^costjax\.cost_soft_labels: "):
    cj.cost_soft_labels(jnp.full((2, 4), 0.25), jnp.ones((K, K)))
  with pytest.raises(checkify.JaxRuntimeError, match=r"costjax\.cost_soft_labels: labels must"):
    cj.checked(cj.cost_soft_labels)(jnp.array([0, 9]), jnp.ones((K, K)))


def test_cost_soft_labels_dtypes_and_checked_probability_labels():
  labels = jnp.array([0, 3])
  c_int = np.array(np.abs(np.arange(K)[:, None] - 2 * np.arange(K)[None, :]), np.int32)
  got = cj.cost_soft_labels(labels, c_int, temperature=2.0)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, np_soft_targets(one_hot([0, 3], K), c_int, 2.0), rtol=1e-5)
  with jax.enable_x64(True):
    assert cj.cost_soft_labels(labels, c_int).dtype == jnp.float32  # integer costs: float32
    got = cj.cost_soft_labels(labels, c_int.astype(np.float64), temperature=2.0)
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(got, np_soft_targets(one_hot([0, 3], K), c_int, 2.0),
                               rtol=1e-12)
    r = np.full((2, K), 1.0 / K)
    assert cj.cost_soft_labels(r, c_int.astype(np.float64)).dtype == jnp.float64
    # Probability labels set the compute dtype, as logits do for the losses.
    assert cj.cost_soft_labels(r.astype(np.float32),
                               c_int.astype(np.float64)).dtype == jnp.float32
  r = np.full((2, K), 0.2, np.float32)
  r[1, :2] = [0.5, -0.1]
  with pytest.raises(checkify.JaxRuntimeError, match="costjax.cost_soft_labels: probability"):
    cj.checked(cj.cost_soft_labels)(r, c_int.astype(np.float32))
