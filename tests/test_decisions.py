"""Bayes decisions and cost-aware metrics against brute force and scikit-learn."""

from __future__ import annotations

import functools

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


# Cases where kappa is undefined are drawn on purpose (both must give NaN);
# scikit-learn warns on each of them.
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.UndefinedMetricWarning")
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


# --------------------------------------------------------------------------- #
# decision_costs, abstention (Chow's rule with costs), structured costs.
# --------------------------------------------------------------------------- #


def _asym_problem(seed, n=64, k=5):
  rng = np.random.default_rng(seed)
  logits = (2 * rng.normal(size=(n, k))).astype(np.float32)
  c = rng.uniform(0, 10, size=(k, k)).astype(np.float32)
  np.fill_diagonal(c, 0)
  return logits, c


def test_decision_costs_matches_numpy_and_orientation():
  logits, c = _asym_problem(10)
  got = jax.jit(cj.decision_costs)(logits, c)
  want = ref.softmax(logits) @ c.astype(np.float64)  # sum_i p_i C[i, j]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  assert not np.allclose(got, ref.softmax(logits) @ c.T, atol=1e-3)
  np.testing.assert_array_equal(cj.bayes_decision(logits, c), np.argmin(want, -1))
  assert cj.decision_costs(logits[0], c).shape == (5,)
  # bf16 logits: computed in float32, returned in the input dtype.
  low = cj.decision_costs(logits.astype(jnp.bfloat16), c)
  assert low.dtype == jnp.bfloat16
  np.testing.assert_allclose(low.astype(np.float32), want, rtol=3e-2, atol=3e-2)


def test_decision_costs_check_grads():
  from jax.test_util import check_grads

  with jax.enable_x64(True):
    logits, c = _asym_problem(11, n=6, k=4)
    logits, c = jnp.asarray(logits, jnp.float64), jnp.asarray(c, jnp.float64)
    check_grads(jax.jit(lambda z: cj.decision_costs(z, c)), (logits,), order=2,
                modes=["fwd", "rev"], atol=1e-6, rtol=1e-6)
    # Strictly positive costs: finite differences step around the point, and a step below
    # a zero cost leaves the precondition (costs >= 0), where the output is NaN.
    check_grads(lambda m: cj.decision_costs(logits, m), (c + 1.0,), order=1, modes=["rev"],
                atol=1e-6, rtol=1e-6)


def test_decisions_through_a_cost_structure():
  from tests._dense_structure import DenseStructure

  logits, c = _asym_problem(12)
  s = DenseStructure(c)
  np.testing.assert_allclose(cj.decision_costs(logits, s), cj.decision_costs(logits, c),
                             rtol=1e-6)
  np.testing.assert_array_equal(
      jax.jit(lambda z, m: cj.bayes_decision(z, m, abstain_cost=2.0))(logits, s),
      cj.bayes_decision(logits, c, abstain_cost=2.0),
  )
  rng = np.random.default_rng(0)
  y = rng.integers(0, 5, 64)
  yhat = rng.integers(-1, 5, 64)
  np.testing.assert_allclose(cj.mean_cost(yhat, y, s, abstain_cost=1.5),
                             cj.mean_cost(yhat, y, c, abstain_cost=1.5), rtol=1e-6)
  with pytest.raises(ValueError, match="num_classes=5"):
    cj.decision_costs(np.zeros((2, 4), np.float32), s)


@pytest.mark.parametrize("abstain_cost", [0.0, 0.7, 2.0, 5.0, 1e6])
def test_abstention_is_chow_rule_with_costs(abstain_cost):
  logits, c = _asym_problem(13, n=400)
  r = ref.softmax(logits) @ c.astype(np.float64)
  best = r.min(-1)
  want = np.where(best > abstain_cost, -1, r.argmin(-1))
  got = jax.jit(lambda z, a: cj.bayes_decision(z, c, abstain_cost=a))(logits, abstain_cost)
  # float32 vs float64 risks: ignore examples within rounding of the threshold.
  clear = np.abs(best - abstain_cost) > 1e-4
  np.testing.assert_array_equal(np.asarray(got)[clear], want[clear])
  assert got.dtype == jnp.int32
  if abstain_cost == 0.0:  # zero diagonal: only certain examples are decided
    assert np.all(np.asarray(got)[best > 1e-4] == -1)
  if abstain_cost == 1e6:
    np.testing.assert_array_equal(got, cj.bayes_decision(logits, c))


def test_abstention_boundary_is_strict():
  c = jnp.array([[0.0, 1.0], [1.0, 0.0]])
  logits = jnp.log(jnp.array([[0.75, 0.25], [0.5, 0.5]]))
  # decision costs [0.25, 0.75] and [0.5, 0.5]: abstain only where min > abstain_cost.
  np.testing.assert_array_equal(cj.bayes_decision(logits, c, abstain_cost=0.5), [0, 0])
  np.testing.assert_array_equal(cj.bayes_decision(logits, c, abstain_cost=0.3), [0, -1])
  np.testing.assert_array_equal(cj.bayes_decision(logits, c, abstain_cost=0.2), [-1, -1])


def test_abstention_lowers_expected_cost_under_the_model():
  """With labels drawn from the model, Chow's rule beats plain Bayes at price a."""
  rng = np.random.default_rng(14)
  logits, c = _asym_problem(14, n=20000)
  p = ref.softmax(logits)
  y = (p.cumsum(-1) > rng.random((20000, 1))).argmax(-1)
  a = 1.0
  plain = cj.mean_cost(cj.bayes_decision(logits, c), y, c)
  chow = cj.mean_cost(cj.bayes_decision(logits, c, abstain_cost=a), y, c, abstain_cost=a)
  # Expected values under the model, computed exactly:
  r = p @ c.astype(np.float64)
  np.testing.assert_allclose(chow, np.minimum(r.min(-1), a).mean(), rtol=0.05)
  np.testing.assert_allclose(plain, r.min(-1).mean(), rtol=0.05)
  assert chow < plain


def test_mean_cost_abstentions():
  c = np.array([[0.0, 1.0, 4.0], [1.0, 0.0, 3.0], [4.0, 3.0, 0.0]], np.float32)
  y = np.array([0, 1, 2, 2])
  yhat = np.array([2, -1, -1, 1])
  np.testing.assert_allclose(cj.mean_cost(yhat, y, c, abstain_cost=0.5), (4 + 0.5 + 0.5 + 3) / 4)
  f = jax.jit(lambda a: cj.mean_cost(yhat, y, c, abstain_cost=a))
  np.testing.assert_allclose(f(2.0), (4 + 2 + 2 + 3) / 4)
  np.testing.assert_allclose(
      cj.mean_cost(yhat, y, c, abstain_cost=0.5, where=np.array([True, True, False, False])),
      (4 + 0.5) / 2,
  )
  # Without abstain_cost, -1 is out of range; with it, -2 still is.
  assert np.isnan(cj.mean_cost(yhat, y, c))
  assert np.isnan(cj.mean_cost(np.array([-2, 0, 0, 0]), y, c, abstain_cost=0.5))
  with pytest.raises(Exception, match=r"predictions\): labels must lie in \[0, 3\); got -2"):
    cj.checked(cj.mean_cost)(np.array([-2, 0, 0, 0]), y, c, abstain_cost=0.5)


@pytest.mark.parametrize("bad", [-0.1, float("inf"), float("nan"), -np.inf])
def test_bad_abstain_cost(bad):
  logits, c = _asym_problem(15, n=4)
  with pytest.raises(ValueError, match="abstain_cost"):
    cj.bayes_decision(logits, c, abstain_cost=bad)
  with pytest.raises(ValueError, match="abstain_cost"):
    cj.mean_cost(np.array([0, -1]), np.array([0, 1]), c, abstain_cost=bad)
  with pytest.raises(ValueError, match="abstain_cost"):
    cj.bayes_decision(logits, c, abstain_cost=np.array([1.0, 2.0]))


def _np_savings(pred, y, c, abstain_cost=None):
  """Correa Bahnsen's savings in float64 NumPy: 1 - cost / (best constant policy's cost)."""
  c = np.broadcast_to(np.asarray(c, np.float64), y.shape + c.shape[-2:])
  rows = np.take_along_axis(c, y[..., None, None], axis=-2)[..., 0, :]  # C_b[y_b, :]
  made = np.take_along_axis(rows, np.maximum(pred, 0)[..., None], axis=-1)[..., 0]
  if abstain_cost is not None:
    made = np.where(pred == -1, np.broadcast_to(abstain_cost, pred.shape), made)
  return 1.0 - made.sum() / rows.reshape(-1, c.shape[-1]).sum(0).min()


@pytest.mark.parametrize("per_example", [False, True])
def test_savings_score_matches_numpy(per_example):
  rng = np.random.default_rng(7)
  k, n = 4, 60
  y = rng.integers(0, k, size=(3, n // 3)).astype(np.int32)
  pred = rng.integers(0, k, size=y.shape).astype(np.int32)
  c = rng.uniform(0.5, 10.0, size=(k, k)).astype(np.float32)
  if per_example:  # one matrix per example: a fixed matrix times each example's amount
    c = c * rng.uniform(0.1, 5.0, size=y.shape + (1, 1)).astype(np.float32)
  got = jax.jit(cj.savings_score)(pred, y, c)
  assert got.shape == () and got.dtype == jnp.float32
  np.testing.assert_allclose(got, _np_savings(pred, y, c), rtol=1e-5)
  c_free_diag = c * (1 - np.eye(k, dtype=np.float32))  # correct predictions cost nothing
  assert float(cj.savings_score(y, y, c_free_diag)) == 1.0
  # The best constant policy, predicted for everyone, saves exactly nothing.
  y_flat = y.reshape(-1)
  rows = np.broadcast_to(c, y.shape + (k, k)).reshape(-1, k, k)[np.arange(y.size), y_flat]
  best = np.full_like(y, int(np.argmin(rows.sum(0))))
  np.testing.assert_allclose(cj.savings_score(best, y, c), 0.0, atol=1e-6)


def test_savings_score_abstentions_and_integer_costs():
  y = np.array([0, 0, 0, 1, 2, 2], np.int32)
  pred = np.array([0, -1, 1, 1, -1, 2], np.int32)
  c = np.array([[0, 1, 4], [1, 0, 1], [4, 2, 0]], np.int32)  # integer costs: float32 result
  got = cj.savings_score(pred, y, c, abstain_cost=0.5)
  assert got.dtype == jnp.float32
  # Constants cost 9, 7, 13 (C[y, k] summed over the labels): the baseline is 7;
  # the predictions cost 0 + 0.5 + 1 + 0 + 0.5 + 0 = 2.
  np.testing.assert_allclose(got, 1 - 2 / 7, rtol=1e-6)
  np.testing.assert_allclose(got, _np_savings(pred, y, c, 0.5), rtol=1e-6)
  per_example = np.array([0.0, 0.25, 1.0, 2.0, 3.0, 0.0], np.float32)
  np.testing.assert_allclose(cj.savings_score(pred, y, c, abstain_cost=per_example),
                             _np_savings(pred, y, c, per_example), rtol=1e-6)
  # Without abstain_cost a -1 is an out-of-range prediction: NaN.
  assert np.isnan(cj.savings_score(pred, y, c))


@pytest.mark.parametrize("which", ["label_high", "label_negative", "pred_high", "pred_negative"])
def test_savings_score_bad_indices_are_nan(which):
  y = np.array([0, 1, 2, 1], np.int32)
  pred = np.array([0, 2, 2, 1], np.int32)
  c = np.array([[0.0, 1.0, 4.0], [1.0, 0.0, 1.0], [4.0, 2.0, 0.0]], np.float32)
  assert np.isfinite(cj.savings_score(pred, y, c))
  arr, value = {"label_high": (y, 3), "label_negative": (y, -1), "pred_high": (pred, 3),
                "pred_negative": (pred, -2)}[which]
  arr[1] = value
  assert np.isnan(cj.savings_score(pred, y, c))
  assert np.isnan(cj.savings_score(pred, y, c, abstain_cost=1.0))


def test_savings_score_is_nan_when_a_constant_policy_is_free():
  y = np.array([0, 0, 1], np.int32)
  c = np.array([[0.0, 1.0], [0.0, 0.0]], np.float32)  # predicting 0 for everyone costs 0
  assert np.isnan(cj.savings_score(np.array([1, 0, 1], np.int32), y, c))
  with pytest.raises(ValueError, match="abstain_cost"):
    cj.savings_score(y, y, c, abstain_cost=-1.0)
  with pytest.raises(ValueError, match="same shape"):
    cj.savings_score(y[:2], y, c)


def test_per_example_abstain_costs_broadcast_to_the_batch():
  """Chow's rule with one abstention price per example (or per row of a 2-D batch)."""
  logits, c = _asym_problem(16, n=24)
  r = ref.softmax(logits) @ c.astype(np.float64)
  prices = np.linspace(0.0, 1.5 * r.min(-1).max(), 24).astype(np.float32)
  want = np.where(r.min(-1) > prices, -1, r.argmin(-1))
  clear = np.abs(r.min(-1) - prices) > 1e-4
  got = np.asarray(cj.bayes_decision(logits, c, abstain_cost=prices))
  np.testing.assert_array_equal(got[clear], want[clear])
  assert 0 < np.sum(got == -1) < 24  # both outcomes occur
  # Integer prices are real numbers too, the same as their float values.
  np.testing.assert_array_equal(cj.bayes_decision(logits, c, abstain_cost=1),
                                cj.bayes_decision(logits, c, abstain_cost=1.0))
  np.testing.assert_allclose(cj.mean_cost(np.array([-1, 0]), np.array([0, 1]), c, abstain_cost=2),
                             (2.0 + c[1, 0]) / 2)
  # A (4, 1) column of prices broadcasts along a (4, 6) batch: one price per row.
  z = logits.reshape(4, 6, -1)
  col = prices[::6].reshape(4, 1)
  got2 = np.asarray(cj.bayes_decision(z, c, abstain_cost=col))
  want2 = np.where(r.min(-1).reshape(4, 6) > col, -1, r.argmin(-1).reshape(4, 6))
  clear2 = np.abs(r.min(-1).reshape(4, 6) - col) > 1e-4
  np.testing.assert_array_equal(got2[clear2], want2[clear2])
  with pytest.raises(ValueError, match=r"broadcasts to the batch shape \(4, 6\)"):
    cj.bayes_decision(z, c, abstain_cost=np.ones((1, 4), np.float32))


def test_checked_mode_names_a_bad_traced_abstain_cost_and_label():
  logits, c = _asym_problem(17, n=3)
  ok = np.array([0.5, 1.0, 2.0], np.float32)
  np.testing.assert_array_equal(cj.checked(cj.bayes_decision)(logits, c, abstain_cost=ok),
                                cj.bayes_decision(logits, c, abstain_cost=ok))
  # Under jit the concrete check cannot see the value; the checked-mode check does.
  decide = cj.checked(jax.jit(lambda z, a: cj.bayes_decision(z, c, abstain_cost=a)))
  np.testing.assert_array_equal(decide(logits, ok), cj.bayes_decision(logits, c, abstain_cost=ok))
  with pytest.raises(Exception, match=r"costjax.bayes_decision: abstain_cost must be finite "
                                      r"and >= 0; got inf at index \(2,\)"):
    decide(logits, np.array([0.5, 1.0, np.inf], np.float32))
  with pytest.raises(Exception, match=r"costjax.confusion_matrix \(labels\): labels must lie "
                                      r"in \[0, 3\); got 5 at index \(1,\)"):
    cj.checked(lambda p, y: cj.confusion_matrix(p, y, num_classes=3))(
        np.array([0, 1, 2]), np.array([0, 5, 2]))


def test_savings_score_dtypes_and_messages_name_the_function():
  name = "costjax.savings_score"
  y = np.array([0, 1, 2, 1], np.int32)
  pred = np.array([0, 2, 2, 1], np.int32)
  c = np.array([[0, 1, 4], [1, 0, 1], [4, 2, 0]], np.int32)
  with jax.enable_x64(True):  # integer costs give float32 even where float64 is available
    assert cj.savings_score(pred, y, c).dtype == jnp.float32
    assert cj.savings_score(pred, y, c.astype(np.float64)).dtype == jnp.float64
  with pytest.raises(ValueError, match=f"{name}: abstain_cost must be finite"):
    cj.savings_score(pred, y, c, abstain_cost=-1.0)
  with pytest.raises(ValueError, match=f"{name}: predictions and labels must have the same"):
    cj.savings_score(pred[:2], y, c)
  with pytest.raises(Exception, match=rf"{name} \(predictions\): labels must lie in \[0, 3\); "
                                      r"got 5 at index \(2,\)"):
    cj.checked(cj.savings_score)(np.array([0, 2, 5, 1], np.int32), y, c.astype(np.float32))
  with pytest.raises(Exception, match=rf"{name} \(labels\): labels must lie in \[0, 3\); "
                                      r"got -1 at index \(0,\)"):
    cj.checked(cj.savings_score)(pred, np.array([-1, 1, 2, 1], np.int32), c.astype(np.float32))


K = 5


@pytest.mark.parametrize("bad", [-1, K, 50])
def test_confusion_matrix_drops_pairs_with_bad_labels(bad):
  rng = np.random.default_rng(40)
  labels = rng.integers(0, K, 30)
  preds = rng.integers(0, K, 30)
  labels[[3, 17]] = bad
  got = np.asarray(cj.confusion_matrix(jnp.asarray(preds), jnp.asarray(labels), num_classes=K))
  ok = (labels >= 0) & (labels < K)
  want = sk_confusion_matrix(labels[ok], preds[ok], labels=np.arange(K))
  np.testing.assert_array_equal(got, want)
  assert got.sum() == 28


@pytest.mark.parametrize("bad", [-1, K, 50])
def test_kappa_is_nan_for_bad_labels_and_matches_sklearn_otherwise(bad):
  rng = np.random.default_rng(41)
  labels = rng.integers(0, K, 40)
  preds = np.clip(labels + rng.integers(-1, 2, 40), 0, K - 1)
  got = cj.quadratic_weighted_kappa(jnp.asarray(preds), jnp.asarray(labels), num_classes=K)
  want = cohen_kappa_score(labels, preds, weights="quadratic", labels=np.arange(K))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  labels[7] = bad
  f = jax.jit(functools.partial(cj.quadratic_weighted_kappa, num_classes=K))
  assert np.isnan(f(jnp.asarray(preds), jnp.asarray(labels)))
  assert np.isnan(cj.quadratic_weighted_kappa(jnp.asarray(labels), jnp.asarray(preds),
                                              num_classes=K))


def test_mean_cost_bad_label_is_nan_and_orientation():
  c = np.array([[0.0, 7.0, 1.0], [2.0, 0.0, 5.0], [3.0, 4.0, 0.0]], np.float32)
  preds, labels = jnp.array([1, 2, 0]), jnp.array([0, 1, 2])
  np.testing.assert_allclose(cj.mean_cost(preds, labels, c), (7 + 5 + 3) / 3, rtol=1e-6)
  for bad in (-1, 3):
    assert np.isnan(cj.mean_cost(preds, jnp.array([0, bad, 2]), c))
