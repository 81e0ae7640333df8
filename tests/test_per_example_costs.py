"""Example-dependent costs: one cost matrix per example (issue 23).

Every function is checked against ``jax.vmap`` of its shared-matrix self and
against NumPy formulas (``tests/reference.py`` applied example by example, in
float64), with a non-zero diagonal, probability labels and ``where`` masks.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import costjax as cj
from tests import reference as ref
from tests.test_conformal import _brute_force_threshold

K = 5
BATCH = (3, 4)


def _data(seed=0, batch=BATCH, k=K):
  rng = np.random.default_rng(seed)
  logits = (1.5 * rng.normal(size=(*batch, k))).astype(np.float32)
  labels = rng.integers(0, k, batch).astype(np.int32)
  probs = rng.dirichlet(np.ones(k), size=batch).astype(np.float32)
  # A non-zero diagonal everywhere (a retention offer costs its price either way).
  cost = rng.uniform(0.2, 4.0, (*batch, k, k)).astype(np.float32)
  return logits, labels, probs, cost


def _flat_vmap(fn, *args):
  """``jax.vmap(fn)`` over the examples of ``BATCH``-shaped arguments (flattened)."""
  flat = [a.reshape(-1, *a.shape[len(BATCH):]) for a in args]
  out = jax.vmap(fn)(*flat)
  return np.asarray(out).reshape(*BATCH, *out.shape[1:])


def _per_example_np(ref_fn, *args):
  """A NumPy reference applied to each example with its own matrix (last argument)."""
  out = np.empty(BATCH)
  for b in np.ndindex(*BATCH):
    out[b] = ref_fn(*(a[b] for a in args))
  return out


LOSSES = {
    "expected_cost": (cj.expected_cost, ref.expected_cost),
    "cost_regularized_cross_entropy": (
        functools.partial(cj.cost_regularized_cross_entropy, lam=0.7),
        functools.partial(ref.cost_regularized_cross_entropy, lam=0.7)),
    "soft_label_cross_entropy": (
        functools.partial(cj.soft_label_cross_entropy, temperature=1.3),
        functools.partial(ref.soft_label_cross_entropy, temperature=1.3)),
    "cdw_ce": (cj.class_distance_weighted_cross_entropy, ref.cdw_ce),
    "cdw_ce_alpha": (functools.partial(cj.class_distance_weighted_cross_entropy, alpha=1.5),
                     functools.partial(ref.cdw_ce, alpha=1.5)),
}


@pytest.mark.parametrize("kind", ["index", "probs"])
@pytest.mark.parametrize("name", list(LOSSES))
def test_losses_equal_vmap_and_numpy(name, kind):
  fn, ref_fn = LOSSES[name]
  logits, labels, probs, cost = _data(1)
  y = labels if kind == "index" else probs
  got = np.asarray(fn(logits, y, cost))
  np.testing.assert_allclose(got, _flat_vmap(fn, logits, y, cost), rtol=2e-6, atol=2e-6)
  np.testing.assert_allclose(got, _per_example_np(ref_fn, logits, y, cost), rtol=2e-5,
                             atol=2e-5)
  # Under jit; with integer labels also leading axes that broadcast: (4, K, K) is shared
  # by the 3 rows of the batch, (3, 1, K, K) by the 4 columns.
  np.testing.assert_allclose(jax.jit(fn)(logits, y, cost), got, rtol=2e-6, atol=2e-6)
  if kind == "probs":
    return  # broadcasting is checked once per loss (the label kind does not matter to it)
  for small in (cost[0], cost[:, :1]):
    full = np.broadcast_to(small, cost.shape)
    np.testing.assert_allclose(fn(logits, y, small), _per_example_np(ref_fn, logits, y, full),
                               rtol=2e-5, atol=2e-5)
  # (1, 1, K, K) and (1, K, K) are the shared matrix.
  np.testing.assert_allclose(fn(logits, y, cost[:1, :1]), fn(logits, y, cost[0, 0]),
                             rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(fn(logits, y, cost[0, :1]), fn(logits, y, cost[0, 0]),
                             rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", list(LOSSES))
def test_losses_with_where_masks(name):
  fn, _ = LOSSES[name]
  logits, labels, _, cost = _data(2)
  rng = np.random.default_rng(2)
  rows = rng.random(BATCH) < 0.7
  classes = rng.random((*BATCH, K)) < 0.8
  classes[..., 0] = True  # no fully masked row
  classes[np.arange(3)[:, None], np.arange(4)[None], labels] = True  # keep the label class
  for where in (rows, classes):
    got = np.asarray(fn(logits, labels, cost, where=where))
    want = _flat_vmap(lambda z, y, c, w: fn(z, y, c, where=w), logits, labels, cost, where)
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6)
  full = np.asarray(fn(logits, labels, cost))
  got = np.asarray(fn(logits, labels, cost, where=rows))
  np.testing.assert_array_equal(got[~rows], 0.0)
  np.testing.assert_allclose(got[rows], full[rows], rtol=1e-6)


def test_vmap_over_a_stack_shared_by_the_batch_still_works():
  logits, labels, _, cost = _data(3)
  stack = cost[0]  # (4, K, K): four matrices, each shared by the whole batch
  got = jax.vmap(cj.expected_cost, in_axes=(None, None, 0))(logits, labels, stack)
  for m in range(4):
    np.testing.assert_allclose(got[m], cj.expected_cost(logits, labels, stack[m]), rtol=1e-6)
  got = jax.vmap(cj.bayes_decision, in_axes=(None, 0))(logits, stack)
  for m in range(4):
    np.testing.assert_array_equal(got[m], cj.bayes_decision(logits, stack[m]))


def test_cost_soft_labels_per_example():
  _, labels, probs, cost = _data(4)
  for y in (labels, probs):
    got = np.asarray(cj.cost_soft_labels(y, cost, temperature=0.8))
    want = np.stack([ref.cost_soft_labels(y[b], cost[b], 0.8) for b in np.ndindex(*BATCH)])
    np.testing.assert_allclose(got.reshape(-1, K), want, rtol=2e-6, atol=2e-7)
    vm = _flat_vmap(lambda yy, c: cj.cost_soft_labels(yy, c, temperature=0.8), y, cost)
    np.testing.assert_allclose(got, vm, rtol=1e-6, atol=1e-7)


def test_decision_costs_and_bayes_decision_per_example():
  logits, _, _, cost = _data(5)
  risk = np.asarray(cj.decision_costs(logits, cost))
  want = np.einsum("...i,...ij->...j", ref.softmax(logits), cost.astype(np.float64))
  np.testing.assert_allclose(risk, want, rtol=2e-6, atol=2e-6)
  np.testing.assert_allclose(risk, _flat_vmap(cj.decision_costs, logits, cost), rtol=1e-6)
  decisions = np.asarray(jax.jit(cj.bayes_decision)(logits, cost))
  np.testing.assert_array_equal(decisions, want.argmin(-1))
  np.testing.assert_array_equal(decisions, _flat_vmap(cj.bayes_decision, logits, cost))
  # Per-example abstention costs: a scalar, a full array and one that broadcasts.
  best = want.min(-1)
  for abstain in (1.2, np.linspace(0.5, 2.5, 12).reshape(BATCH).astype(np.float32),
                  np.linspace(0.5, 2.5, 4).astype(np.float32)):
    got = np.asarray(cj.bayes_decision(logits, cost, abstain_cost=abstain))
    a = np.broadcast_to(abstain, BATCH)
    np.testing.assert_array_equal(got, np.where(best > a, -1, want.argmin(-1)))
    assert (got == -1).any() and (got != -1).any()
    jitted = jax.jit(lambda z, c, x: cj.bayes_decision(z, c, abstain_cost=x))
    np.testing.assert_array_equal(jitted(logits, cost, jnp.asarray(abstain)), got)
    vm = _flat_vmap(lambda z, c, x: cj.bayes_decision(z, c, abstain_cost=x), logits, cost,
                    np.ascontiguousarray(a))
    np.testing.assert_array_equal(got, vm)


def test_mean_cost_per_example_with_abstentions():
  logits, labels, _, cost = _data(6)
  preds = np.random.default_rng(6).integers(0, K, BATCH).astype(np.int32)
  picked = np.take_along_axis(
      np.take_along_axis(cost, labels[..., None, None], axis=-2)[..., 0, :],
      preds[..., None], axis=-1)[..., 0]
  assert float(cj.mean_cost(preds, labels, cost)) == pytest.approx(picked.mean(), rel=1e-6)
  preds[0, :2] = -1
  abstain = np.linspace(0.1, 1.2, 12).reshape(BATCH).astype(np.float32)
  want = np.where(preds == -1, abstain, picked)
  got = jax.jit(lambda p, y, c, a: cj.mean_cost(p, y, c, abstain_cost=a))(
      preds, labels, cost, abstain)
  assert float(got) == pytest.approx(want.mean(), rel=1e-6)
  where = np.arange(12).reshape(BATCH) % 3 != 0
  got = cj.mean_cost(preds, labels, cost, abstain_cost=abstain, where=where)
  assert float(got) == pytest.approx(want[where].mean(), rel=1e-6)


def test_cost_sets_and_set_cost_per_example():
  logits, labels, probs, cost = _data(7)
  gaps = np.einsum("...i,...ij->...j", ref.softmax(logits), cost.astype(np.float64))
  gaps -= gaps.min(-1, keepdims=True)
  for t in (0.0, 0.4, 1.5):
    sets = np.asarray(cj.cost_sets(logits, cost, threshold=t))
    np.testing.assert_array_equal(sets, gaps <= t + 1e-6)
    np.testing.assert_array_equal(
        sets, _flat_vmap(lambda z, c, t=t: cj.cost_sets(z, c, threshold=t), logits, cost))
    for y in (labels, probs):
      rows = np.einsum("...i,...ij->...j", ref.as_distribution(y, K), cost.astype(np.float64))
      got = np.asarray(cj.set_cost(sets, y, cost))
      np.testing.assert_allclose(got, np.where(sets, rows, np.inf).min(-1), rtol=1e-6)
      np.testing.assert_allclose(got, _flat_vmap(cj.set_cost, sets, y, cost), rtol=1e-6)


@pytest.mark.parametrize("kind", ["index", "probs"])
def test_calibrate_per_example_equals_brute_force(kind):
  rng = np.random.default_rng(8)
  n = 150
  logits = (2 * rng.normal(size=(n, K))).astype(np.float32)
  labels = rng.integers(0, K, n)
  probs = rng.dirichlet(np.ones(K), size=n).astype(np.float32)
  # A fixed matrix times a per-row amount, plus a per-row fee on the diagonal.
  base = rng.integers(0, 6, (K, K)).astype(np.float32)
  amount = rng.uniform(0.5, 3.0, n).astype(np.float32)
  cost = base * amount[:, None, None] + np.eye(K, dtype=np.float32) * 0.1
  y = labels if kind == "index" else probs
  rows = np.einsum("bi,bij->bj", ref.as_distribution(y, K), cost.astype(np.float64))
  r = np.asarray(cj.decision_costs(logits, cost))  # breakpoints bit for bit
  np.testing.assert_allclose(r, np.einsum("bi,bij->bj", ref.softmax(logits), cost), rtol=1e-5)
  gaps = r - r.min(1, keepdims=True)
  bound = float(cost.max())
  for alpha in (0.6, 1.0, 2.0, 4.0):
    want = _brute_force_threshold(gaps, rows, bound, alpha)
    got = float(cj.calibrate_cost_sets(logits, y, cost, alpha=alpha))
    assert got == pytest.approx(want, rel=2e-6, abs=0), (alpha, got, want)
  # The bound is the largest entry of the matrices given, not of one of them.
  # Example 0's matrix holds the largest cost, in a row that is not its label's.
  high = cost.copy()
  other = (labels[0] + 1) % K
  high[0, other, :] = 0.0
  high[0, other, other] = 60.0
  if kind == "probs":
    y = y.copy()
    y[0] = np.eye(K, dtype=np.float32)[labels[0]]
  alpha = 1.0
  rows_high = np.einsum("bi,bij->bj", ref.as_distribution(y, K), high.astype(np.float64))
  assert rows_high.max() < 60.0
  r = np.asarray(cj.decision_costs(logits, high))
  gaps = r - r.min(1, keepdims=True)
  want = _brute_force_threshold(gaps, rows_high, 60.0, alpha)
  assert want != _brute_force_threshold(gaps, rows_high, rows_high.max(), alpha)
  assert float(cj.calibrate_cost_sets(logits, y, high, alpha=alpha)) == pytest.approx(
      want, rel=2e-6, abs=0)


def test_calibrate_per_example_guarantee_simulation():
  """E[set cost] <= alpha over 200 random calibration/test splits, each example with its
  own matrix (a base matrix times a per-row amount; a per-row fee on the diagonal)."""
  rng = np.random.default_rng(9)
  pool_n, n_cal, k = 1200, 800, 6
  true = 2.0 * rng.normal(size=(pool_n, k))
  labels = (ref.softmax(true).cumsum(1) > rng.random((pool_n, 1))).argmax(1)
  logits = jnp.asarray(0.8 * true, jnp.float32)
  base = rng.uniform(0, 4, (k, k))
  np.fill_diagonal(base, 0)
  amount = rng.uniform(0.5, 2.0, pool_n)
  fee = rng.uniform(0, 0.1, pool_n)
  cost = jnp.asarray(base * amount[:, None, None] + fee[:, None, None] * np.eye(k),
                     jnp.float32)
  labels = jnp.asarray(labels)
  alpha = 0.5

  @jax.jit
  @jax.vmap
  def split(key):
    perm = jax.random.permutation(key, pool_n)
    cal, test = perm[:n_cal], perm[n_cal:]
    t = cj.calibrate_cost_sets(logits[cal], labels[cal], cost[cal], alpha=alpha)
    sets = cj.cost_sets(logits[test], cost[test], threshold=t)
    return jnp.mean(cj.set_cost(sets, labels[test], cost[test])), t

  risk, thresholds = split(jax.random.split(jax.random.key(3), 200))
  risk = np.asarray(risk)
  mean, se = risk.mean(), risk.std(ddof=1) / np.sqrt(len(risk))
  assert mean <= alpha + 4 * se, (mean, se)
  assert mean >= alpha - 2 * float(cost.max()) / (n_cal + 1) - 4 * se, (mean, se)
  assert np.all(np.isfinite(thresholds)) and np.all(np.asarray(thresholds) > 0)
  bayes_only = cj.set_cost(cj.cost_sets(logits, cost, threshold=0.0), labels, cost).mean()
  assert bayes_only > alpha


def test_gradients_check_grads():
  logits, labels, probs, cost = _data(10, batch=(4,), k=4)
  with jax.enable_x64(True):
    z = jnp.asarray(logits, jnp.float64)
    c = jnp.asarray(cost, jnp.float64)
    q = jnp.asarray(probs, jnp.float64)
    for m, (fn, _) in enumerate(LOSSES.values()):  # labels of both kinds, in turn
      y = labels if m % 2 == 0 else q
      check_grads(jax.jit(lambda zz, cc, fn=fn, y=y: fn(zz, y, cc).sum()), (z, c), order=1,
                  modes=["rev"], atol=1e-5, rtol=1e-5, eps=1e-5)
    check_grads(jax.jit(cj.decision_costs), (z, c), order=1, modes=["fwd", "rev"], atol=1e-5,
                rtol=1e-5, eps=1e-5)
    # The per-example gradient w.r.t. the costs: d expected_cost_b / d C_b = q_b p_b^T.
    grad_c = jax.grad(lambda cc: cj.expected_cost(z, labels, cc).sum())(c)
    want = np.eye(4)[labels][:, :, None] * ref.softmax(logits)[:, None, :]
    np.testing.assert_allclose(grad_c, want, rtol=1e-6, atol=1e-9)


def test_savings_score_by_hand():
  c = np.array([[0.0, 1.0], [5.0, 0.0]], np.float32)
  y = np.array([0, 0, 0, 1])
  # Constant 0 costs 5, constant 1 costs 3: the baseline is 3.
  assert float(cj.savings_score(np.array([0, 0, 1, 1]), y, c)) == pytest.approx(1 - 1 / 3)
  assert float(cj.savings_score(y, y, c)) == 1.0  # perfect
  assert float(cj.savings_score(np.ones(4, np.int32), y, c)) == pytest.approx(0.0)
  # Worse than the best constant: cost 1 + 1 + 1 + 5 = 8, savings 1 - 8/3.
  assert float(cj.savings_score(np.array([1, 1, 1, 0]), y, c)) == pytest.approx(1 - 8 / 3)
  # Per-example costs: the matrix times each row's amount.
  amount = np.array([1.0, 1.0, 2.0, 10.0], np.float32)
  stack = c * amount[:, None, None]
  # predictions cost 0 + 0 + 2 + 0; constant 0: 50, constant 1: 1 + 1 + 2 = 4.
  assert float(cj.savings_score(np.array([0, 0, 1, 1]), y, stack)) == pytest.approx(0.5)
  assert float(jax.jit(cj.savings_score)(np.array([1, 0, 0, 0]), y, stack)) == pytest.approx(
      1 - 51 / 4)
  # Abstentions: NaN without abstain_cost, priced with it (scalar or per example).
  preds = np.array([0, -1, 1, 1])
  assert np.isnan(float(cj.savings_score(preds, y, stack)))
  assert float(cj.savings_score(preds, y, stack, abstain_cost=0.5)) == pytest.approx(
      1 - 2.5 / 4)
  per_row = np.array([9.0, 2.0, 9.0, 9.0], np.float32)
  assert float(cj.savings_score(preds, y, stack, abstain_cost=per_row)) == pytest.approx(
      1 - 4 / 4)
  # The denominator is 0 (a free constant policy): NaN, even for perfect predictions.
  free = np.array([[0.0, 0.0], [0.0, 0.0]], np.float32)
  assert np.isnan(float(cj.savings_score(y, y, free)))
  # Out-of-range labels: NaN.
  assert np.isnan(float(cj.savings_score(y, np.array([0, 0, 2, 1]), c)))
  # A structure equals its dense matrix; a 2-D batch of examples.
  ordinal = cj.OrdinalCost(4)
  rng = np.random.default_rng(11)
  p2, y2 = rng.integers(0, 4, (5, 6)), rng.integers(0, 4, (5, 6))
  dense = np.asarray(ordinal.dense())
  total = dense[y2, p2].sum()
  best = min(dense[y2, k].sum() for k in range(4))
  assert float(cj.savings_score(p2, y2, ordinal)) == pytest.approx(1 - total / best, rel=1e-6)


def test_bad_broadcast_shapes_name_both_shapes():
  logits, labels, _, cost = _data(12)
  for fn, _ in LOSSES.values():
    with pytest.raises(ValueError, match=r"cost_matrix.shape=\(4, 3, 5, 5\)") as e:
      fn(logits, labels, cost.transpose(1, 0, 2, 3))
    assert "logits.shape=(3, 4, 5)" in str(e.value)
    with pytest.raises(ValueError, match=r"cost_matrix.shape=\(2, 3, 4, 5, 5\)"):
      fn(logits, labels, np.broadcast_to(cost, (2, *cost.shape)))
  with pytest.raises(ValueError, match=r"logits.shape=\(3, 4, 5\).*\(3, 4, 4, 4\)"):
    cj.bayes_decision(logits, cost[..., :4, :4])
  with pytest.raises(ValueError, match=r"logits.shape=\(3, 4, 5\).*\(2, 4, 5, 5\)"):
    cj.decision_costs(logits, cost[:2])
  with pytest.raises(ValueError, match=r"predictions.shape=\(3, 4\).*\(3, 2, 5, 5\)"):
    cj.mean_cost(labels, labels, cost[:, :2])
  with pytest.raises(ValueError, match=r"predictions.shape=\(3, 4\).*\(4, 3, 5, 5\)"):
    cj.savings_score(labels, labels, cost.transpose(1, 0, 2, 3))
  with pytest.raises(ValueError, match=r"sets.shape=\(3, 4, 5\).*\(2, 5, 5\)"):
    cj.set_cost(np.ones((3, 4, 5), bool), labels, cost[0, :2])
  with pytest.raises(ValueError, match=r"logits.shape=\(3, 4, 5\).*\(4, 3, 5, 5\)"):
    cj.calibrate_cost_sets(logits, labels, cost.transpose(1, 0, 2, 3), alpha=1.0)
  with pytest.raises(ValueError, match=r"labels.shape=\(3, 4\).*\(2, 5, 5\)"):
    cj.cost_soft_labels(labels, cost[0, :2])
  with pytest.raises(ValueError, match=r"logits.shape=\(3, 4, 5\).*abstain_cost.shape=\(3,\)"):
    cj.bayes_decision(logits, cost, abstain_cost=np.ones(3, np.float32))
  with pytest.raises(ValueError, match=r"predictions.shape=\(3, 4\).*abstain_cost.shape=\(2,"):
    cj.mean_cost(labels, labels, cost, abstain_cost=np.ones((2, 4), np.float32))
  with pytest.raises(ValueError, match="abstain_cost must be finite and >= 0"):
    cj.bayes_decision(logits, cost, abstain_cost=np.array([1.0, -1.0, 1.0, 1.0]))
  # Functions of one matrix still refuse stacks.
  with pytest.raises(ValueError, match=r"cost_matrix.shape=\(3, 4, 5, 5\)"):
    cj.cost_class_weights(cost)
