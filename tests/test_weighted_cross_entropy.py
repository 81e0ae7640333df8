"""weighted_cross_entropy and cost_class_weights against NumPy formulas written here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.experimental import checkify
from jax.test_util import check_grads

import costjax as cj
from costjax._structures import interface

K = 5


# --------------------------------------------------------------------------- #
# Oracles (float64 NumPy, straight from the formulas in API.md).
# --------------------------------------------------------------------------- #


def np_log_softmax(z):
  z = np.asarray(z, np.float64)
  m = np.max(z, axis=-1, keepdims=True)
  return z - m - np.log(np.sum(np.exp(z - m), axis=-1, keepdims=True))


def np_weighted_ce(logits, labels, w):
  """PyTorch CrossEntropyLoss(weight=w, reduction='none'); -sum q_i w_i log p_i for probs."""
  w = np.asarray(w, np.float64)
  ls = np_log_softmax(logits)
  labels = np.asarray(labels)
  if np.issubdtype(labels.dtype, np.integer):
    picked = np.take_along_axis(ls, labels[..., None], axis=-1)[..., 0]
    return -w[labels] * picked
  return -np.sum(labels * w * ls, axis=-1)


def np_cost_class_weights(c):
  c = np.asarray(c, np.float64)
  k = c.shape[0]
  w = np.array([sum(c[i, j] for j in range(k) if j != i) / (k - 1) for i in range(k)])
  return w / w.mean()


def data(seed=0, batch=(3, 4), k=K, probs=False):
  rng = np.random.default_rng(seed)
  logits = (rng.normal(size=batch + (k,)) * 2).astype(np.float32)
  if probs:
    labels = rng.dirichlet(np.ones(k), size=batch).astype(np.float32)
  else:
    labels = rng.integers(0, k, size=batch).astype(np.int32)
  weights = rng.uniform(0.2, 5.0, size=k).astype(np.float32)
  return logits, labels, weights


def asymmetric_cost(seed=0, k=K):
  rng = np.random.default_rng(seed)
  c = rng.uniform(0.0, 10.0, size=(k, k))  # nonzero diagonal on purpose
  assert not np.allclose(c, c.T) and np.all(np.diag(c) > 0)
  return c.astype(np.float32)


# --------------------------------------------------------------------------- #
# Values.
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("probs", [False, True], ids=["indices", "probabilities"])
def test_matches_numpy(probs):
  logits, labels, w = data(probs=probs)
  got = jax.jit(lambda z, y, w: cj.weighted_cross_entropy(z, y, class_weights=w))(
      logits, labels, w
  )
  assert got.shape == (3, 4) and got.dtype == jnp.float32
  np.testing.assert_allclose(got, np_weighted_ce(logits, labels, w), rtol=2e-6, atol=2e-6)


def test_unbatched_and_vmap_over_examples():
  logits, labels, w = data(batch=(6,))
  batched = cj.weighted_cross_entropy(logits, labels, class_weights=w)
  one = cj.weighted_cross_entropy(logits[2], labels[2], class_weights=w)
  assert one.shape == ()
  np.testing.assert_allclose(one, np_weighted_ce(logits[2], labels[2], w), rtol=2e-6)
  mapped = jax.vmap(lambda z, y: cj.weighted_cross_entropy(z, y, class_weights=w))(
      logits, labels
  )
  np.testing.assert_allclose(mapped, batched, rtol=1e-6)


def test_vmap_over_a_stack_of_weights():
  logits, labels, _ = data(batch=(6,))
  ws = np.random.default_rng(1).uniform(0.1, 3.0, size=(4, K)).astype(np.float32)
  got = jax.vmap(lambda w: cj.weighted_cross_entropy(logits, labels, class_weights=w))(ws)
  want = np.stack([np_weighted_ce(logits, labels, w) for w in ws])
  np.testing.assert_allclose(got, want, rtol=2e-6)


def test_torch_mean_reduction_divides_by_selected_weights():
  """torch reduction='mean' = sum_n w[y_n] CE_n / sum_n w[y_n]; written out by hand here."""
  logits, labels, w = data(batch=(8,))
  loss = cj.weighted_cross_entropy(logits, labels, class_weights=w)
  ls = np_log_softmax(logits)
  num = sum(-float(w[y]) * ls[n, y] for n, y in enumerate(labels))
  den = sum(float(w[y]) for y in labels)
  np.testing.assert_allclose(loss.sum() / w[labels].sum(), num / den, rtol=2e-6)


def test_unit_costs_give_unit_weights_and_plain_cross_entropy():
  c = 1.0 - np.eye(K, dtype=np.float32)
  w = cj.cost_class_weights(c)
  np.testing.assert_array_equal(w, np.ones(K, np.float32))
  logits, labels, _ = data(batch=(16,))
  got = cj.weighted_cross_entropy(logits, labels, class_weights=w)
  want = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  probs = np.random.default_rng(2).dirichlet(np.ones(K), size=16).astype(np.float32)
  got = cj.weighted_cross_entropy(logits, probs, class_weights=w)
  np.testing.assert_allclose(
      got, optax.softmax_cross_entropy(logits, probs), rtol=1e-6, atol=1e-6
  )


def test_probability_one_hot_equals_integer_labels():
  logits, labels, w = data(batch=(7,))
  onehot = np.eye(K, dtype=np.float32)[labels]
  np.testing.assert_allclose(
      cj.weighted_cross_entropy(logits, onehot, class_weights=w),
      cj.weighted_cross_entropy(logits, labels, class_weights=w),
      rtol=1e-6,
  )


# --------------------------------------------------------------------------- #
# cost_class_weights.
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [2, 3, 7])
def test_cost_class_weights_matches_numpy(seed, k):
  c = asymmetric_cost(seed, k)
  got = jax.jit(cj.cost_class_weights)(c)
  assert got.shape == (k,) and got.dtype == jnp.float32
  np.testing.assert_allclose(got, np_cost_class_weights(c), rtol=1e-6)
  np.testing.assert_allclose(np.mean(got), 1.0, rtol=1e-6)


def test_cost_class_weights_reads_rows_not_columns():
  """C[i, j] is the cost when the truth is i: the row of an expensive class weighs more."""
  c = np.array([[0, 9, 9], [1, 0, 1], [1, 1, 0]], np.float32)  # class 0's mistakes cost 9
  w = cj.cost_class_weights(c)
  np.testing.assert_allclose(w, np.array([9, 1, 1]) / (11 / 3), rtol=1e-6)
  # The transpose would make class 0 the cheapest.
  assert w[0] > w[1] and cj.cost_class_weights(c.T)[0] < cj.cost_class_weights(c.T)[1]


def test_cost_class_weights_integer_matrix_and_vmap():
  c = np.array([[0, 2], [6, 0]], np.int32)
  w = cj.cost_class_weights(c)
  assert w.dtype == jnp.float32
  np.testing.assert_allclose(w, [0.5, 1.5])  # w0 / w1 = C[0,1] / C[1,0] (Elkan, K = 2)
  stack = np.stack([asymmetric_cost(s, 4) for s in range(3)])
  got = jax.vmap(cj.cost_class_weights)(stack)
  np.testing.assert_allclose(got, np.stack([np_cost_class_weights(m) for m in stack]), rtol=1e-6)


def test_true_class_costs_are_exact_for_bayes_decisions():
  """For C[i, j] = c_i (j != i), argmax_i w_i p_i is the minimum-expected-cost decision."""
  rng = np.random.default_rng(3)
  c_true = rng.uniform(0.5, 10.0, size=K)
  c = np.repeat(c_true[:, None], K, axis=1)
  np.fill_diagonal(c, 0.0)
  w = np.asarray(cj.cost_class_weights(c.astype(np.float32)), np.float64)
  np.testing.assert_allclose(w / w[0], c_true / c_true[0], rtol=1e-6)
  p = rng.dirichlet(np.ones(K), size=500)
  bayes = np.argmin(p @ c, axis=1)  # argmin_j sum_i p_i C[i, j]
  np.testing.assert_array_equal(np.argmax(p * w, axis=1), bayes)


def _structures():
  rng = np.random.default_rng(6)
  # classes 0..5; internal nodes 6 (0, 1, 2), 7 (3, 4), 8 (6, 7), root 9 (8, 5).
  parents = np.array([6, 6, 6, 7, 7, 9, 8, 8, 9, -1])
  edges = rng.uniform(0.5, 3.0, size=10).astype(np.float32)
  return {
      "tree_path": cj.TreeCost(parents, 6, edge_weights=edges),
      "tree_lca": cj.TreeCost(parents, 6, kind="lca_height", edge_weights=edges),
      "ordinal_1": cj.OrdinalCost(7, power=1),
      "ordinal_2": cj.OrdinalCost(7, power=2),
      "embedding": cj.EmbeddingCost(rng.normal(size=(6, 3)).astype(np.float32), scale=0.7),
  }


@pytest.mark.skipif(not hasattr(cj, "TreeCost"), reason="cost structures not in this checkout")
@pytest.mark.parametrize("name", ["tree_path", "tree_lca", "ordinal_1", "ordinal_2", "embedding"])
def test_cost_class_weights_of_structures_equal_dense(name):
  cost = _structures()[name]
  dense = np.asarray(cost.dense())
  got = jax.jit(cj.cost_class_weights)(cost)
  np.testing.assert_allclose(got, np_cost_class_weights(dense), rtol=2e-6)
  np.testing.assert_allclose(got, cj.cost_class_weights(dense), rtol=2e-6)


@jax.tree_util.register_pytree_node_class
class _AsymmetricStructure(interface.CostStructure):
  """A dense asymmetric matrix behind the structure interface (symmetric=False)."""

  symmetric = False

  def __init__(self, c):
    self.c = jnp.asarray(c)

  def tree_flatten(self):
    return (self.c,), None

  @classmethod
  def tree_unflatten(cls, aux, children):
    return cls(*children)

  @property
  def num_classes(self):
    return self.c.shape[0]

  def dense(self):
    return self.c

  def rows(self, idx):
    return self.c[jnp.clip(idx, 0, self.num_classes - 1)]

  def vecmat(self, v):
    return v @ self.c


def test_cost_class_weights_of_an_asymmetric_structure_uses_rows():
  c = asymmetric_cost(7, 6)
  got = jax.jit(cj.cost_class_weights)(_AsymmetricStructure(c))
  np.testing.assert_allclose(got, np_cost_class_weights(c), rtol=2e-6)


def test_two_classes_are_exact_for_bayes_decisions():
  """K = 2: argmax_i w_i p_i is the Bayes decision; with a diagonal, after subtracting it."""
  rng = np.random.default_rng(8)
  p = rng.dirichlet(np.ones(2), size=2000)
  for _ in range(5):
    c = rng.uniform(0.1, 10.0, size=(2, 2))
    np.fill_diagonal(c, 0.0)
    w = np.asarray(cj.cost_class_weights(c.astype(np.float32)), np.float64)
    np.testing.assert_array_equal(np.argmax(p * w, axis=1), np.argmin(p @ c, axis=1))
    shifted = c + rng.uniform(0.0, 5.0, size=(2, 1)) * (1 - np.eye(2)) + np.diag([0.3, 0.7])
    regret = shifted - np.diag(shifted)[:, None]
    w = np.asarray(cj.cost_class_weights(regret.astype(np.float32)), np.float64)
    np.testing.assert_array_equal(np.argmax(p * w, axis=1), np.argmin(p @ shifted, axis=1))


def test_cost_class_weights_gradient():
  with jax.enable_x64(True):
    c = asymmetric_cost(4).astype(np.float64) + 0.5
    check_grads(lambda m: cj.cost_class_weights(m), (c,), order=2, modes=["rev", "fwd"])


# --------------------------------------------------------------------------- #
# Gradients, float64.
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("probs", [False, True], ids=["indices", "probabilities"])
def test_check_grads_logits(probs):
  with jax.enable_x64(True):
    logits, labels, w = data(probs=probs, batch=(3,))
    labels = labels.astype(np.float64) if probs else labels
    f = lambda z: cj.weighted_cross_entropy(z, labels, class_weights=w.astype(np.float64))
    check_grads(jax.jit(f), (logits.astype(np.float64),), order=2, modes=["rev", "fwd"],
                atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("probs", [False, True], ids=["indices", "probabilities"])
def test_check_grads_weights(probs):
  with jax.enable_x64(True):
    logits, labels, w = data(probs=probs, batch=(6,))
    logits = logits.astype(np.float64)
    labels = labels.astype(np.float64) if probs else labels
    f = lambda ww: cj.weighted_cross_entropy(logits, labels, class_weights=ww)
    check_grads(jax.jit(f), (w.astype(np.float64),), order=1, modes=["rev", "fwd"],
                atol=1e-6, rtol=1e-6)


def test_weight_gradient_is_per_class_cross_entropy():
  """d(sum loss)/dw_i = sum of CE over the examples of class i."""
  logits, labels, w = data(batch=(20,))
  g = jax.grad(lambda ww: cj.weighted_cross_entropy(logits, labels, class_weights=ww).sum())(w)
  ce = -np.take_along_axis(np_log_softmax(logits), labels[:, None], axis=1)[:, 0]
  want = np.array([ce[labels == i].sum() for i in range(K)])
  np.testing.assert_allclose(g, want, rtol=1e-5)


# --------------------------------------------------------------------------- #
# Masks, bad labels, bad inputs.
# --------------------------------------------------------------------------- #


def test_where_masks():
  logits, labels, w = data(batch=(8,))
  mask = np.array([1, 0, 1, 1, 0, 1, 0, 1], bool)
  got = cj.weighted_cross_entropy(logits, labels, class_weights=w, where=mask)
  np.testing.assert_allclose(got[mask], np_weighted_ce(logits[mask], labels[mask], w), rtol=2e-6)
  np.testing.assert_array_equal(got[~mask], 0.0)
  classes = np.ones((8, K), bool)
  classes[np.arange(8), (labels + 1) % K] = False
  got = cj.weighted_cross_entropy(logits, labels, class_weights=w, where=classes)
  want = np_weighted_ce(np.where(classes, logits, -1e30), labels, w)
  np.testing.assert_allclose(got, want, rtol=2e-6)


@pytest.mark.parametrize("bad", [K, K + 3, -1, -K])
def test_out_of_range_labels_give_nan(bad):
  logits, labels, w = data(batch=(4,))
  labels = labels.copy()
  labels[1] = bad
  got = jax.jit(lambda z, y: cj.weighted_cross_entropy(z, y, class_weights=w))(logits, labels)
  assert np.isnan(got[1])
  keep = np.arange(4) != 1
  np.testing.assert_allclose(got[keep], np_weighted_ce(logits[keep], labels[keep], w), rtol=2e-6)


def test_checked_mode_names_the_label():
  logits, labels, w = data(batch=(4,))
  labels = labels.copy()
  labels[2] = 9
  with pytest.raises(checkify.JaxRuntimeError, match=r"labels must lie in \[0, 5\); got 9"):
    cj.checked(cj.weighted_cross_entropy)(logits, labels, class_weights=jnp.asarray(w))


def test_wrong_weight_shape_is_a_trace_time_error():
  logits, labels, w = data(batch=(4,))
  with pytest.raises(ValueError, match=r"class_weights.*\(5,\).*\(4,\)"):
    jax.jit(lambda z: cj.weighted_cross_entropy(z, labels, class_weights=w[:4]))(logits)
  with pytest.raises(ValueError, match=r"\(5,\).*\(1, 5\)"):
    cj.weighted_cross_entropy(logits, labels, class_weights=w[None])
  with pytest.raises(TypeError, match="class_weights must be real"):
    cj.weighted_cross_entropy(logits, labels, class_weights=w.astype(np.complex64))
  with pytest.raises(TypeError, match="integer dtype"):
    cj.weighted_cross_entropy(logits, labels.astype(np.float32), class_weights=w)


@pytest.mark.parametrize("value", [-0.5, np.inf, np.nan])
@pytest.mark.parametrize("probs", [False, True], ids=["indices", "probabilities"])
def test_bad_weights_give_nan(value, probs):
  logits, labels, w = data(batch=(4,), probs=probs)
  w = w.copy()
  w[3] = value
  got = jax.jit(lambda z, y, ww: cj.weighted_cross_entropy(z, y, class_weights=ww))(
      logits, labels, w
  )
  assert np.all(np.isnan(got))


@pytest.mark.parametrize("probs", [False, True], ids=["indices", "probabilities"])
def test_zero_weights_drop_their_class_and_keep_the_rest(probs):
  """A weight of 0 is valid (>= 0): examples of that class count 0 (their cross-entropy
  times 0, even at p_y = 0), every other example keeps its weighted cross-entropy."""
  logits, labels, w = data(batch=(8,), probs=probs)
  w = w.copy()
  w[1] = 0.0
  if not probs:
    labels[:3] = 1
    logits[0, 1] = -np.inf  # p_y = 0: 0 * inf must still be 0
  got = np.asarray(jax.jit(lambda z, y: cj.weighted_cross_entropy(z, y, class_weights=w))(
      logits, labels))
  assert np.all(np.isfinite(got))
  want = np_weighted_ce(np.where(np.isinf(logits), -1e30, logits), labels, w)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  if not probs:
    np.testing.assert_array_equal(got[:3], 0.0)
    assert np.all(got[3:][labels[3:] != 1] > 0)
  # Checked mode accepts the zero weight too (a weight must be >= 0, not > 0).
  checked = cj.checked(cj.weighted_cross_entropy)(
      jnp.asarray(logits), jnp.asarray(labels), class_weights=jnp.asarray(w))
  np.testing.assert_allclose(checked, got, rtol=1e-6)


@pytest.mark.parametrize(("value", "shown"), [(-0.5, "-0.5"), (np.inf, "inf")])
def test_checked_mode_reports_bad_weights(value, shown):
  logits, labels, w = data(batch=(4,))
  w = w.copy()
  w[3] = value
  # The function, the argument, the value and the first offending index.
  message = (r"weighted_cross_entropy: class_weights must be finite and >= 0; "
             rf"got {shown} at index \(3,\)")
  with pytest.raises(checkify.JaxRuntimeError, match=message):
    cj.checked(cj.weighted_cross_entropy)(logits, labels, class_weights=jnp.asarray(w))


def test_cost_class_weights_bad_inputs():
  with pytest.raises(ValueError, match=r"\(K, K\).*\(3, 4\)"):
    cj.cost_class_weights(np.ones((3, 4)))
  with pytest.raises(ValueError, match="at least 2 classes"):
    cj.cost_class_weights(np.zeros((1, 1)))
  assert np.all(np.isnan(cj.cost_class_weights(np.eye(3))))  # no off-diagonal cost at all
  with pytest.raises(checkify.JaxRuntimeError, match="negative entry"):
    cj.checked(cj.cost_class_weights)(jnp.array([[0.0, -1.0], [1.0, 0.0]]))
  with pytest.raises(checkify.JaxRuntimeError, match="every off-diagonal cost is 0"):
    cj.checked(cj.cost_class_weights)(jnp.eye(3))


# --------------------------------------------------------------------------- #
# Numerics.
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("scale", [1e4, -1e4])
def test_extreme_logits(scale):
  rng = np.random.default_rng(0)
  logits = (rng.choice([-1.0, 0.0, 1.0], size=(6, K)) * scale).astype(np.float32)
  labels = np.arange(6) % K
  _, _, w = data()
  f = lambda z: cj.weighted_cross_entropy(z, labels, class_weights=w)
  value, grad = jax.value_and_grad(lambda z: f(z).sum())(jnp.asarray(logits))
  assert np.all(np.isfinite(grad))
  np.testing.assert_allclose(f(logits), np_weighted_ce(logits, labels, w), rtol=1e-6, atol=1e-6)
  # A wrong class ahead by 2e4 costs w[y] * 2e4; finite.
  worst = np.max(np_weighted_ce(logits, labels, w))
  assert np.isfinite(value) and worst >= 1e4


def test_neg_inf_logits():
  logits, labels, w = data(batch=(6,))
  labels = np.arange(6) % K
  logits[np.arange(6), (labels + 2) % K] = -np.inf  # an impossible wrong class
  f = lambda z, ww: cj.weighted_cross_entropy(z, labels, class_weights=ww)
  value, grad = jax.value_and_grad(lambda z: f(z, w).sum())(jnp.asarray(logits))
  assert np.isfinite(value) and np.all(np.isfinite(grad))
  np.testing.assert_allclose(
      f(logits, w), np_weighted_ce(np.where(np.isinf(logits), -1e30, logits), labels, w),
      rtol=2e-6,
  )
  # The true class impossible: infinite loss, unless its weight is 0 (it does not count).
  logits[0, labels[0]] = -np.inf
  assert f(logits, w)[0] == np.inf
  w0 = w.copy()
  w0[labels[0]] = 0.0
  value, grad = jax.value_and_grad(lambda z: f(z, w0).sum())(jnp.asarray(logits))
  assert f(logits, w0)[0] == 0.0 and np.isfinite(value) and np.all(np.isfinite(grad))
  np.testing.assert_array_equal(grad[0], 0.0)


@pytest.mark.parametrize("probs", [False, True], ids=["indices", "probabilities"])
def test_bfloat16_computes_in_float32(probs):
  """Logits near 300 with O(1) spread: bf16 arithmetic would be off by ~1 (spacing 2 at 300)."""
  rng = np.random.default_rng(5)
  logits = jnp.asarray(300.0 + 3.0 * rng.normal(size=(32, K)), jnp.bfloat16)
  _, labels, w = data(batch=(32,), probs=probs)
  got = cj.weighted_cross_entropy(logits, labels, class_weights=w)
  assert got.dtype == jnp.bfloat16
  want = np_weighted_ce(np.asarray(logits.astype(jnp.float32), np.float64), labels, w)
  tol = dict(rtol=2.0**-8, atol=1e-3)
  np.testing.assert_allclose(np.asarray(got.astype(jnp.float32)), want, **tol)
  # The same formula evaluated in bfloat16 misses this tolerance.
  lse = jax.nn.logsumexp(logits, axis=-1)
  if probs:
    naive = jnp.sum(labels * w * (lse[:, None] - logits), axis=-1)
  else:
    naive = w[labels] * (lse - logits[np.arange(32), labels])
  naive = np.asarray(naive.astype(jnp.float32), np.float64)
  assert not np.allclose(naive, want, **tol)
  grad = jax.grad(
      lambda z: cj.weighted_cross_entropy(z, labels, class_weights=w).astype(jnp.float32).sum()
  )(logits)
  assert grad.dtype == jnp.bfloat16 and np.all(np.isfinite(grad.astype(np.float32)))


def test_float64_stays_float64():
  with jax.enable_x64(True):
    logits, labels, w = data()
    got = cj.weighted_cross_entropy(logits.astype(np.float64), labels, class_weights=w)
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(got, np_weighted_ce(logits, labels, w), rtol=1e-12)
    c = asymmetric_cost(1).astype(np.float64)
    got = cj.cost_class_weights(c)
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(got, np_cost_class_weights(c), rtol=1e-12)


# --------------------------------------------------------------------------- #
# Eight devices.
# --------------------------------------------------------------------------- #

SHARDED_SCRIPT = textwrap.dedent(
    """
    import json
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    import costjax as cj

    assert jax.device_count() == 8
    mesh = jax.make_mesh((8,), ("data",))
    rng = np.random.default_rng(0)
    B, K = 64, 6
    logits = rng.normal(size=(B, K)).astype(np.float32)
    labels = rng.integers(0, K, B).astype(np.int32)
    labels[5] = K  # out of range: NaN on every layout
    probs = rng.dirichlet(np.ones(K), size=B).astype(np.float32)
    cost = rng.uniform(0, 5, (K, K)).astype(np.float32)
    w = cj.cost_class_weights(cost)

    def total(z, y, ww):
      per = cj.weighted_cross_entropy(z, y, class_weights=ww)
      return jnp.nansum(per), per

    step = jax.jit(jax.value_and_grad(total, argnums=(0, 2), has_aux=True))
    z8 = jax.device_put(logits, NamedSharding(mesh, P("data", None)))
    report = {}
    for name, y, y8 in [
        ("indices", labels, jax.device_put(labels, NamedSharding(mesh, P("data")))),
        ("probabilities", probs, jax.device_put(probs, NamedSharding(mesh, P("data", None)))),
    ]:
      (v1, per1), (gz1, gw1) = step(logits, y, w)
      (v8, per8), (gz8, gw8) = step(z8, y8, w)
      assert len(per8.sharding.device_set) == 8, per8.sharding
      assert np.array_equal(np.isnan(per1), np.isnan(per8))
      report[name] = max(
          float(abs(v1 - v8) / abs(v1)),  # a sum of 63 terms: relative
          float(np.nanmax(np.abs(per1 - per8))),
          float(jnp.max(jnp.abs(gz1 - gz8))),
          float(jnp.max(jnp.abs(gw1 - gw8))),
      )
      if name == "indices":
        report["nan_label"] = bool(np.isnan(np.asarray(per8)[5]))
    print(json.dumps(report))
    """
)


def test_eight_devices_equal_one():
  env = dict(os.environ)
  env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
  env["JAX_PLATFORMS"] = "cpu"
  root = Path(__file__).resolve().parents[1]
  out = subprocess.run(
      [sys.executable, "-c", SHARDED_SCRIPT],
      env=env, cwd=root, capture_output=True, text=True, timeout=300,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  report = json.loads(out.stdout.strip().splitlines()[-1])
  assert report.pop("nan_label") is True
  assert set(report) == {"indices", "probabilities"}
  for name, deviation in report.items():
    assert deviation <= 1e-5, (name, deviation)
