"""Bayes decisions and cost-aware metrics against brute force and scikit-learn."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import cohen_kappa_score
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

import costjax as cj
from tests import reference as ref


def test_bayes_matches_brute_force_on_asymmetric_costs():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(200, 6)).astype(np.float32) * 2
  c = rng.uniform(0, 10, size=(6, 6)).astype(np.float32)
  got = jax.jit(cj.bayes_decision)(logits, c)
  assert got.dtype == jnp.int32 and got.shape == (200,)
  np.testing.assert_array_equal(got, ref.bayes_decision(logits, c))
  # Using the transpose would give different decisions for an asymmetric C.
  assert not np.array_equal(got, ref.bayes_decision(logits, c.T))


def test_bayes_is_argmax_for_zero_one_cost():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(100, 7)).astype(np.float32)
  c = 1.0 - np.eye(7, dtype=np.float32)
  np.testing.assert_array_equal(cj.bayes_decision(logits, c), np.argmax(logits, -1))


def test_bayes_accepts_log_probabilities_and_is_scale_invariant():
  rng = np.random.default_rng(2)
  logits = rng.normal(size=(50, 4)).astype(np.float32)
  c = rng.uniform(0, 5, size=(4, 4)).astype(np.float32)
  log_p = jax.nn.log_softmax(logits)
  base = cj.bayes_decision(logits, c)
  np.testing.assert_array_equal(cj.bayes_decision(log_p, c), base)
  np.testing.assert_array_equal(cj.bayes_decision(logits, 3.5 * c), base)
  # Adding a constant to a true-class row does not change decisions.
  row_shift = np.array([[1.0], [0], [2], [0]], np.float32)
  np.testing.assert_array_equal(cj.bayes_decision(logits, c + row_shift), base)


def test_bayes_lowers_mean_cost_on_labels_drawn_from_the_model():
  rng = np.random.default_rng(3)
  logits = rng.normal(size=(20000, 5)).astype(np.float32)
  p = ref.softmax(logits)
  labels = np.array([rng.choice(5, p=pi) for pi in p])
  c = rng.uniform(0, 10, size=(5, 5)).astype(np.float32)
  np.fill_diagonal(c, 0)
  bayes = cj.mean_cost(cj.bayes_decision(logits, c), labels, c)
  argmax = cj.mean_cost(jnp.argmax(logits, -1), labels, c)
  assert bayes < argmax


def test_bayes_unbatched_and_vmapped_over_cost_stack():
  rng = np.random.default_rng(4)
  logits = rng.normal(size=(9, 3)).astype(np.float32)
  stack = rng.uniform(0, 4, size=(5, 3, 3)).astype(np.float32)
  got = jax.vmap(cj.bayes_decision, in_axes=(None, 0))(logits, stack)
  for m in range(5):
    np.testing.assert_array_equal(got[m], ref.bayes_decision(logits, stack[m]))
  assert cj.bayes_decision(logits[0], stack[0]).shape == ()


def test_bayes_bad_inputs():
  with pytest.raises(TypeError, match="floating"):
    cj.bayes_decision(np.zeros((2, 3), np.int32), np.ones((3, 3)))
  with pytest.raises(ValueError, match=r"cost_matrix.shape=\(4, 4\)"):
    cj.bayes_decision(np.zeros((2, 3), np.float32), np.ones((4, 4)))


def test_mean_cost_matches_confusion_weighted_sum():
  rng = np.random.default_rng(5)
  y = rng.integers(0, 6, 300)
  yhat = rng.integers(0, 6, 300)
  c = rng.uniform(0, 9, size=(6, 6))
  want = (sk_confusion_matrix(y, yhat, labels=range(6)) * c).sum() / 300
  np.testing.assert_allclose(cj.mean_cost(yhat, y, c.astype(np.float32)), want, rtol=1e-5)
  np.testing.assert_array_equal(
      cj.confusion_matrix(yhat, y, num_classes=6), sk_confusion_matrix(y, yhat, labels=range(6))
  )
  mask = rng.random(300) < 0.5
  np.testing.assert_allclose(
      cj.mean_cost(yhat, y, c.astype(np.float32), where=mask),
      c[y[mask], yhat[mask]].mean(),
      rtol=1e-5,
  )


@pytest.mark.parametrize("bad", [-1, 6, 99])
def test_mean_cost_out_of_range_is_nan(bad):
  c = np.ones((6, 6), np.float32)
  assert np.isnan(cj.mean_cost(np.array([0, bad]), np.array([0, 1]), c))
  assert np.isnan(cj.mean_cost(np.array([0, 1]), np.array([bad, 1]), c))
  assert np.isnan(cj.quadratic_weighted_kappa(np.array([0, bad]), np.array([0, 1]), num_classes=6))
  with pytest.raises(Exception, match=rf"got {bad} at index \(1,\)"):
    cj.checked(cj.mean_cost)(np.array([0, bad]), np.array([0, 1]), c)


def test_metric_type_and_shape_errors():
  c = np.ones((3, 3), np.float32)
  with pytest.raises(TypeError, match="predictions must be integer"):
    cj.mean_cost(np.array([0.0]), np.array([0]), c)
  with pytest.raises(ValueError, match=r"predictions.shape=\(2,\) and labels.shape=\(3,\)"):
    cj.mean_cost(np.array([0, 1]), np.array([0, 1, 2]), c)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(2, 7).flatmap(
        lambda k: st.tuples(
            st.just(k),
            st.lists(st.tuples(st.integers(0, k - 1), st.integers(0, k - 1)), min_size=2,
                     max_size=60),
        )
    )
)
def test_kappa_equals_sklearn(case):
  k, pairs = case
  y = np.array([a for a, _ in pairs])
  yhat = np.array([b for _, b in pairs])
  want = cohen_kappa_score(y, yhat, weights="quadratic", labels=np.arange(k))
  got = cj.quadratic_weighted_kappa(yhat, y, num_classes=k)
  if np.isnan(want):
    assert np.isnan(got)
  else:
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  if len(set(y) | set(yhat)) == k:  # the contract's call without labels=
    np.testing.assert_allclose(
        got, cohen_kappa_score(y, yhat, weights="quadratic"), rtol=1e-4, atol=1e-5
    )


def test_kappa_is_jittable():
  f = jax.jit(cj.quadratic_weighted_kappa, static_argnames="num_classes")
  y = np.array([0, 1, 2, 3, 3, 2])
  np.testing.assert_allclose(
      f(y[::-1].copy(), y, num_classes=4),
      cohen_kappa_score(y, y[::-1], weights="quadratic"),
      rtol=1e-5,
  )
