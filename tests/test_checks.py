"""The shared validation of every loss: `where` shapes, checked mode (non-finite and
negative costs, negative probability labels) and error messages that name the function."""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify

import costjax as cj
from tests.reference import TREE_PARENTS

K = 5


ALL_LOSSES = {
    "expected_cost": cj.expected_cost,
    "cost_regularized_ce": cj.cost_regularized_cross_entropy,
    "soft_label_ce": cj.soft_label_cross_entropy,
    "cdw_ce": cj.class_distance_weighted_cross_entropy,
    "ordinal_emd": lambda z, y, c, **kw: cj.ordinal_emd(z, y, **kw),
    "sinkhorn": functools.partial(cj.sinkhorn_loss, epsilon=0.5, max_iterations=50),
    "tree_wasserstein": lambda z, y, c, **kw: cj.tree_wasserstein(z, y, TREE_PARENTS, **kw),
}


@pytest.mark.parametrize("name", sorted(ALL_LOSSES))
def test_where_of_the_wrong_shape_names_both_shapes(name):
  fn = ALL_LOSSES[name]
  z = jnp.zeros((4, K))
  y = jnp.array([0, 1, 2, 3])
  c = jnp.ones((K, K)) - jnp.eye(K)
  for bad in ((3,), (4, K - 1), (4, 1, K), (K, 4)):
    match = re.escape(f"where.shape={bad}") + ".*" + re.escape(f"logits.shape=(4, {K})")
    with pytest.raises(ValueError, match=match):
      fn(z, y, c, where=jnp.ones(bad, bool))


COST_LOSSES = {k: v for k, v in ALL_LOSSES.items() if k not in ("ordinal_emd", "tree_wasserstein")}


@pytest.mark.parametrize("name", sorted(COST_LOSSES))
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_checked_mode_rejects_non_finite_costs(name, bad):
  fn = COST_LOSSES[name]
  c = np.ones((K, K), np.float32) - np.eye(K, dtype=np.float32)
  c[2, 3] = bad
  z = jnp.zeros((2, K))
  with pytest.raises(checkify.JaxRuntimeError, match="cost_matrix has a non-finite entry"):
    cj.checked(fn)(z, jnp.array([0, 1]), c)
  with pytest.raises(checkify.JaxRuntimeError, match="non-finite"):
    cj.checked(cj.cost_soft_labels)(jnp.array([0, 1]), c)


@pytest.mark.parametrize("name", sorted(ALL_LOSSES))
def test_checked_mode_rejects_negative_probability_labels(name):
  fn = ALL_LOSSES[name]
  c = np.ones((K, K), np.float32) - np.eye(K, dtype=np.float32)
  q = np.full((2, K), 0.2, np.float32)
  q[1] = [0.6, -0.1, 0.2, 0.2, 0.1]
  with pytest.raises(checkify.JaxRuntimeError,
                     match=r"probability labels have a negative entry \(min -0.1"):
    cj.checked(fn)(jnp.zeros((2, K)), q, c)
  # The valid labels pass through checked mode unchanged (to float32 rounding: checked mode
  # runs one compiled program, the plain call dispatches eagerly, and row 0's loss is 0).
  q[1] = [0.6, 0.1, 0.1, 0.1, 0.1]
  np.testing.assert_allclose(cj.checked(fn)(jnp.zeros((2, K)), q, c),
                             fn(jnp.zeros((2, K)), q, c), rtol=1e-6, atol=1e-7)


def test_checked_mode_negative_costs_in_every_cost_loss():
  c = np.ones((K, K), np.float32) - np.eye(K, dtype=np.float32)
  c[4, 0] = -2.0
  for fn in COST_LOSSES.values():
    with pytest.raises(checkify.JaxRuntimeError, match=r"negative entry \(min -2"):
      cj.checked(fn)(jnp.zeros((2, K)), jnp.array([0, 1]), c)
  for fn in (cj.bayes_decision,):
    with pytest.raises(checkify.JaxRuntimeError, match="negative entry"):
      cj.checked(fn)(jnp.zeros((2, K)), c)


NAMED = {
    "expected_cost": cj.expected_cost,
    "cost_regularized_cross_entropy": cj.cost_regularized_cross_entropy,
    "soft_label_cross_entropy": cj.soft_label_cross_entropy,
    "class_distance_weighted_cross_entropy": cj.class_distance_weighted_cross_entropy,
    "ordinal_emd": lambda z, y, c: cj.ordinal_emd(z, y),
    "sinkhorn_loss": functools.partial(cj.sinkhorn_loss, epsilon=0.5),
}


@pytest.mark.parametrize("name", sorted(NAMED))
def test_errors_and_checked_mode_name_the_function(name):
  fn = NAMED[name]
  c = np.ones((K, K), np.float32)
  with pytest.raises(TypeError, match=rf"^costjax\.{name}: logits must have a floating"):
    fn(jnp.zeros((2, K), jnp.int32), jnp.array([0, 1]), c)
  with pytest.raises(ValueError, match=rf"^costjax\.{name}: "):
    fn(jnp.zeros((2, K)), jnp.array([0, 1, 2]), c)
  with pytest.raises(checkify.JaxRuntimeError, match=rf"costjax\.{name}: labels must lie in"):
    cj.checked(fn)(jnp.zeros((2, K)), jnp.array([0, K]), c)


def test_checked_compiles_once_per_static_arguments_and_shapes():
  """``checked`` compiles its checkified function and reuses the program: ``fn`` is traced
  again only for new non-array keyword arguments or input shapes, the values equal the
  plain call's, and an unhashable static argument still works (compiled for that call)."""
  traces = []

  def loss(z, y, c, *, alpha=1.0, reduction="none"):
    traces.append((z.shape, alpha))
    out = cj.class_distance_weighted_cross_entropy(z, y, c, alpha=alpha)
    return out.mean() if reduction == "mean" else out

  safe = cj.checked(loss)
  rng = np.random.default_rng(0)
  z = jnp.asarray(rng.normal(size=(4, K)), jnp.float32)
  y = jnp.array([0, 1, 2, 3])
  c = jnp.asarray(np.abs(np.subtract.outer(np.arange(K), np.arange(K))), jnp.float32)
  for _ in range(3):
    np.testing.assert_allclose(safe(z, y, c, alpha=2.0), loss(z, y, c, alpha=2.0), rtol=1e-6)
  assert len(traces) == 4  # one trace for the three checked calls, three plain calls
  safe(z, y, c, alpha=3.0)
  safe(z[:2], y[:2], c, alpha=3.0)
  safe(z[:2], y[:2], c, alpha=3.0)
  assert len(traces) == 6
  np.testing.assert_allclose(safe(z, y, c, reduction="mean", alpha=2.0),
                             loss(z, y, c, alpha=2.0).mean(), rtol=1e-6)
  unhashable = {"alpha": 2.0}
  np.testing.assert_allclose(
      cj.checked(lambda z, y, c, opts: loss(z, y, c, **opts))(z, y, c, opts=unhashable),
      loss(z, y, c, alpha=2.0), rtol=1e-6)
  with pytest.raises(checkify.JaxRuntimeError, match="labels must lie in"):
    safe(z, jnp.array([0, 1, 2, 9]), c, alpha=2.0)
  # Positional arguments without arrays (a list of tree parents) are bound, not traced.
  parents = list(TREE_PARENTS)
  np.testing.assert_allclose(cj.checked(cj.tree_wasserstein)(z[:, :3], y % 3, parents),
                             cj.tree_wasserstein(z[:, :3], y % 3, parents), rtol=1e-6)


@pytest.mark.parametrize("name", sorted(COST_LOSSES))
def test_complex_cost_matrix_is_a_type_error_naming_the_function(name):
  z = jnp.zeros((2, K))
  y = jnp.array([0, 1])
  fn = ALL_LOSSES[name]
  with pytest.raises(TypeError, match=r"costjax\.\w+: cost_matrix must be real-valued; "
                                      r"got complex64\."):
    fn(z, y, jnp.ones((K, K), jnp.complex64))
  # Integer and boolean matrices are real: they are accepted and computed in float32.
  want = fn(z, y, jnp.ones((K, K)) - jnp.eye(K))
  np.testing.assert_allclose(fn(z, y, (1 - np.eye(K)).astype(np.int32)), want, rtol=1e-6)


def test_integer_array_hyperparameters_are_read_as_floats():
  """An integer array hyperparameter is a real number: a valid one gives the float's value,
  an invalid one (negative alpha or lam, zero temperature) NaN, like its float."""
  rng = np.random.default_rng(2)
  z = jnp.asarray(rng.normal(size=(3, K)), jnp.float32)
  y = jnp.array([0, 2, 4])
  c = jnp.asarray(np.abs(np.subtract.outer(np.arange(K), np.arange(K))), jnp.float32)
  cases = [
      (lambda v: cj.class_distance_weighted_cross_entropy(z, y, c, alpha=v), 2, -1),
      (lambda v: cj.cost_regularized_cross_entropy(z, y, c, lam=v), 3, -2),
      (lambda v: cj.soft_label_cross_entropy(z, y, c, temperature=v), 2, 0),
  ]
  for fn, good, bad in cases:
    np.testing.assert_allclose(fn(jnp.array(good, jnp.int32)), fn(float(good)), rtol=1e-6)
    assert np.all(np.isnan(fn(jnp.array(bad, jnp.int32))))
    assert np.all(np.isnan(jax.jit(fn)(jnp.array(bad, jnp.int32))))  # traced: NaN too


def test_checked_mode_on_an_empty_batch_returns_an_empty_result():
  """No example, nothing to report: checked mode returns the plain call's empty output."""
  z = jnp.zeros((0, K))
  y = jnp.zeros((0,), jnp.int32)
  c = jnp.ones((K, K)) - jnp.eye(K)
  for name in ("expected_cost", "cdw_ce", "soft_label_ce"):
    for labels in (y, jnp.zeros((0, K))):  # indices and probabilities
      got = cj.checked(ALL_LOSSES[name])(z, labels, c)
      assert got.shape == (0,), name
