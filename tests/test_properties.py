"""Hypothesis property tests of the closed-form losses."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import costjax as cj
from tests import reference as ref

SETTINGS = settings(max_examples=30, deadline=None)


@st.composite
def problems(draw, zero_diag=True):
  # Few distinct shapes keep JAX's per-shape compilation cache warm.
  k = draw(st.sampled_from([2, 3, 6]))
  b = 4
  logits = draw(
      hnp.arrays(np.float32, (b, k), elements=st.floats(-20, 20, width=32))
  )
  labels = draw(hnp.arrays(np.int32, (b,), elements=st.integers(0, k - 1)))
  cost = draw(hnp.arrays(np.float32, (k, k), elements=st.floats(0, 10, width=32)))
  if zero_diag:
    np.fill_diagonal(cost, 0)
  return logits, labels, cost


LOSSES = {
    "expected_cost": cj.expected_cost,
    "soft_label_cross_entropy": cj.soft_label_cross_entropy,
    "cdw_ce": cj.class_distance_weighted_cross_entropy,
    "cost_regularized_cross_entropy": cj.cost_regularized_cross_entropy,
    "ordinal_emd": lambda z, y, c: cj.ordinal_emd(z, y),
}


_VALUE_AND_GRAD = {
    name: jax.jit(jax.value_and_grad(lambda z, y, c, f=f: f(z, y, c).sum()))
    for name, f in LOSSES.items()
}


@SETTINGS
@given(problems(), st.floats(-50, 50), st.sampled_from(sorted(LOSSES)))
def test_logit_shift_invariance(problem, shift, name):
  logits, labels, cost = problem
  f = _VALUE_AND_GRAD[name]  # jitted: three shapes compile once each (eager took ~40 s)
  base, g0 = f(logits, labels, cost)
  moved, g1 = f(logits + np.float32(shift), labels, cost)
  np.testing.assert_allclose(moved, base, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(g1, g0, rtol=1e-3, atol=1e-4)


@SETTINGS
@given(problems(zero_diag=False))
def test_expected_cost_between_row_min_and_max(problem):
  logits, labels, cost = problem
  ec = np.asarray(cj.expected_cost(logits, labels, cost))
  rows = cost[labels]
  assert np.all(ec >= rows.min(-1) - 1e-4)
  assert np.all(ec <= rows.max(-1) + 1e-4)


@SETTINGS
@given(problems())
def test_confident_correct_prediction_costs_nothing(problem):
  _, labels, cost = problem
  k = cost.shape[0]
  logits = 60.0 * np.eye(k, dtype=np.float32)[labels]
  for name in ("expected_cost", "cdw_ce", "ordinal_emd"):
    np.testing.assert_allclose(LOSSES[name](logits, labels, cost), 0.0, atol=1e-5)


@SETTINGS
@given(problems(), st.sampled_from([False, True]))
def test_ordinal_emd_power1_is_expected_cost_with_ordinal_matrix(problem, probs):
  logits, labels, _ = problem
  k = logits.shape[-1]
  if probs:
    labels = ref.softmax(np.roll(logits, 1, axis=0)).astype(np.float32)
  emd = cj.ordinal_emd(logits, labels, power=1)
  if probs:  # W1 between two distributions: the CDF formula against the oracle
    np.testing.assert_allclose(emd, ref.ordinal_emd(logits, labels), rtol=1e-4, atol=1e-5)
  else:
    ec = cj.expected_cost(logits, labels, cj.ordinal_cost_matrix(k))
    np.testing.assert_allclose(emd, ec, rtol=1e-4, atol=1e-5)


@SETTINGS
@given(problems())
def test_cdw_ce_upper_bounds_expected_cost(problem):
  logits, labels, cost = problem
  alpha = 2.0
  cdw = cj.class_distance_weighted_cross_entropy(logits, labels, cost, alpha=alpha)
  ec = cj.expected_cost(logits, labels, cost**alpha)
  assert np.all(np.asarray(cdw) >= np.asarray(ec) - 1e-3 * (1 + np.asarray(ec)))


@SETTINGS
@given(problems(), st.floats(0.05, 20))
def test_soft_labels_are_distributions_peaked_at_cheapest_class(problem, temperature):
  _, labels, cost = problem
  q = np.asarray(cj.cost_soft_labels(jnp.asarray(labels), cost, temperature=temperature))
  np.testing.assert_allclose(q.sum(-1), 1.0, rtol=1e-5)
  rows = cost[labels]
  # the cheapest class of each row (the true class, with a zero diagonal) gets the most mass
  np.testing.assert_allclose(q.max(-1), q[np.arange(len(labels)), rows.argmin(-1)], rtol=1e-6)


@SETTINGS
@given(problems())
def test_soft_label_ce_is_minimised_at_the_target(problem):
  logits, labels, cost = problem
  q = ref.cost_soft_labels(labels, cost)
  at_target = cj.soft_label_cross_entropy(np.log(q).astype(np.float32), labels, cost)
  entropy = -(q * np.log(q)).sum(-1)
  np.testing.assert_allclose(at_target, entropy, rtol=1e-4, atol=1e-5)
  assert np.all(np.asarray(cj.soft_label_cross_entropy(logits, labels, cost)) >= entropy - 1e-4)


@SETTINGS
@given(problems())
def test_soft_label_temperature_limits(problem):
  _, labels, cost = problem
  assume(np.all(np.sort(cost[labels], -1)[:, 1] > 0.05))  # a unique cheapest class
  cold = cj.cost_soft_labels(jnp.asarray(labels), cost, temperature=1e-3)
  np.testing.assert_allclose(cold, np.eye(cost.shape[0])[labels], atol=1e-5)
  hot = cj.cost_soft_labels(jnp.asarray(labels), cost, temperature=1e6)
  np.testing.assert_allclose(hot, 1.0 / cost.shape[0], rtol=1e-3)


@SETTINGS
@given(problems(), st.data())
def test_bayes_decision_brute_force(problem, data):
  logits, _, cost = problem
  if data.draw(st.booleans()):
    cost = 1.0 - np.eye(cost.shape[0], dtype=np.float32)
    p = ref.softmax(logits)
    got = np.asarray(cj.bayes_decision(logits, cost))
    # argmax, up to float32 ties
    np.testing.assert_allclose(p[np.arange(len(got)), got], p.max(-1), rtol=1e-5)
  got = np.asarray(cj.bayes_decision(logits, cost))
  p = ref.softmax(logits)
  risk = p @ cost.astype(np.float64)
  # allow float32 ties: the chosen class's risk is within rounding of the minimum
  chosen = risk[np.arange(len(got)), got]
  np.testing.assert_allclose(chosen, risk.min(-1), rtol=1e-5, atol=1e-5)


@SETTINGS
@given(problems(), st.floats(0.0, 5.0))
def test_row_shift_of_cost_shifts_expected_cost(problem, d):
  """C -> C + d 1^T (a constant per true-class row) shifts EC by d_y; gradient unchanged."""
  logits, labels, cost = problem
  shifts = (np.arange(cost.shape[0], dtype=np.float32) * d)[:, None]
  f = functools.partial(cj.expected_cost, labels=labels)
  v0, g0 = jax.value_and_grad(lambda z: f(z, cost_matrix=cost).sum())(logits)
  v1, g1 = jax.value_and_grad(lambda z: f(z, cost_matrix=cost + shifts).sum())(logits)
  np.testing.assert_allclose(v1 - v0, shifts[labels, 0].sum(), rtol=1e-3, atol=1e-3)
  np.testing.assert_allclose(g1, g0, atol=1e-3)
