"""tree_wasserstein against the LP (scipy), POT's emd2 and expected_cost."""

from __future__ import annotations

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import ot
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.experimental import checkify

import costjax as cj
from tests.reference import TREE_COST, TREE_PARENTS, lp_ot, np_expected_cost, one_hot


def _random_tree(rng, num_classes, num_internal):
  """Classes 0..K-1 (some internal), then extra internal nodes; last node is the root."""
  n = num_classes + num_internal
  parents = np.full(n, -1)
  order = rng.permutation(n - 1)  # nodes other than the root, in a random topological order
  placed = [n - 1]
  for node in order:
    parents[node] = rng.choice(placed)
    placed.append(node)
  return parents


def _path_lengths(parents, weights, k):
  """Brute-force path-length metric between the first k nodes, in NumPy."""
  n = parents.shape[0]

  def root_path(a):
    path = [a]
    while parents[path[-1]] != -1:
      path.append(parents[path[-1]])
    return path

  dist = np.zeros((k, k))
  for i in range(k):
    pi = root_path(i)
    for j in range(k):
      pj = set(root_path(j))
      lca = next(a for a in pi if a in pj)
      up_i = sum(weights[a] for a in pi[: pi.index(lca)])
      pj_list = root_path(j)
      up_j = sum(weights[a] for a in pj_list[: pj_list.index(lca)])
      dist[i, j] = up_i + up_j
  assert n >= k
  return dist


def _ancestors(parents, node):
  """node and every node above it."""
  out = [node]
  while parents[out[-1]] != -1:
    out.append(parents[out[-1]])
  return out


def _softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_lp_for_random_weighted_trees(seed):
  rng = np.random.default_rng(seed)
  k = 6
  parents = _random_tree(rng, k, 4)
  weights = rng.uniform(0.1, 3.0, parents.shape[0])
  cost = _path_lengths(parents, weights, k)
  logits = rng.normal(size=(4, k)) * 2
  q = rng.dirichlet(np.ones(k), size=4)
  got = cj.tree_wasserstein(logits.astype(np.float32), q.astype(np.float32), parents,
                            edge_weights=weights)
  for b in range(4):
    a = _softmax(logits[b])
    lp = lp_ot(a, q[b], cost)
    np.testing.assert_allclose(lp, ot.emd2(a, q[b], cost.T), atol=1e-8)
    np.testing.assert_allclose(got[b], lp, rtol=1e-5, atol=1e-5)
  # Also the package's own cost matrix agrees with the brute-force metric.
  np.testing.assert_allclose(
      cj.hierarchy_cost_matrix(parents, k, edge_weights=weights), cost, rtol=1e-5)


@settings(max_examples=10, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    logits=hnp.arrays(np.float32, (7,), elements=st.floats(-6, 6, width=32)),
    label=st.integers(0, 6),
)
def test_integer_labels_equal_expected_cost_with_path_length_matrix(seed, logits, label):
  rng = np.random.default_rng(seed)
  parents = _random_tree(rng, 7, int(rng.integers(0, 5)))
  # The brute-force metric of this file, not hierarchy_cost_matrix (which shares
  # tree_wasserstein's parser).
  cost = _path_lengths(parents, np.ones(len(parents)), 7)
  got = cj.tree_wasserstein(logits, np.int32(label), parents)
  ref = _softmax(logits.astype(np.float64)) @ cost[label]
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_jit_vmap_grad_and_unbatched():
  rng = np.random.default_rng(3)
  parents = _random_tree(rng, 5, 3)
  logits = rng.normal(size=(4, 5)).astype(np.float32)
  q = rng.dirichlet(np.ones(5), size=4).astype(np.float32)
  fn = lambda z, t: cj.tree_wasserstein(z, t, parents)
  batched = fn(logits, q)
  np.testing.assert_allclose(jax.jit(fn)(logits, q), batched, rtol=1e-6)
  np.testing.assert_allclose(jax.vmap(fn)(logits, q), batched, rtol=1e-6)
  assert fn(logits[0], q[0]).shape == ()
  # Gradient equals the expected-cost gradient for integer labels (same function).
  # The gradient for integer labels is that of p . C[y] with C the brute-force
  # metric: p_k (C[y, k] - p . C[y]).
  y = np.array([0, 4, 2, 1])
  c = _path_lengths(parents, np.ones(len(parents)), 5)
  g1 = jax.grad(lambda z: cj.tree_wasserstein(z, y, parents).sum())(logits)
  p = _softmax(logits.astype(np.float64))
  rows = c[y]
  np.testing.assert_allclose(g1, p * (rows - (p * rows).sum(-1, keepdims=True)), atol=1e-5)
  # With probability labels the gradient is that of the LP value (tested above) by
  # its dual: p_k (phi_k - p . phi) for the optimal potential phi, which for a tree is
  # phi_k = sum over k's ancestors n of w_n sign(p(subtree n) - q(subtree n)).
  g2 = jax.grad(lambda z: cj.tree_wasserstein(z, q, parents).sum())(logits)
  phi = np.zeros((4, 5))
  for b in range(4):
    for k in range(5):
      node = k
      while parents[node] != -1:
        members = [j for j in range(5) if node in _ancestors(parents, j)]
        diff = p[b, members].sum() - q[b, members].sum()
        phi[b, k] += np.sign(diff)
        node = parents[node]
  np.testing.assert_allclose(g2, p * (phi - (p * phi).sum(-1, keepdims=True)), atol=1e-5)


def test_large_hierarchy_without_a_k_by_k_matrix():
  # 100,000 classes: leaves of a 3-level tree (100 x 10 x 100), ~101k nodes.
  k = 100_000
  rng = np.random.default_rng(4)
  mid = np.arange(k, k + 1000)
  top = np.arange(k + 1000, k + 1100)
  root = k + 1100
  parents = np.concatenate([mid[np.arange(k) // 100], top[np.arange(1000) // 10], [root] * 100,
                            [-1]])
  logits = rng.normal(size=(2, k)).astype(np.float32)
  labels = np.array([5, 99_999])
  got = jax.jit(lambda z, y: cj.tree_wasserstein(z, y, parents))(logits, labels)
  # NumPy oracle: path length 2 within a leaf group, 4 within a top group, 6 otherwise.
  p = _softmax(logits.astype(np.float64))
  for b, y in enumerate(labels):
    j = np.arange(k)
    d = np.where(j == y, 0, np.where(j // 100 == y // 100, 2,
                                     np.where(j // 1000 == y // 1000, 4, 6)))
    np.testing.assert_allclose(got[b], p[b] @ d, rtol=1e-4)


def test_extreme_logits_bad_labels_and_errors():
  parents = np.array([3, 3, 4, 5, 5, -1])
  z = jnp.array([[1e4, -1e4, 0.], [-jnp.inf, 0., 1.]], jnp.float32)
  v, g = jax.value_and_grad(lambda z: cj.tree_wasserstein(z, jnp.array([1, 0]), parents).sum())(z)
  assert np.isfinite(float(v)) and np.all(np.isfinite(np.asarray(g)))
  out = cj.tree_wasserstein(jnp.zeros((3, 3)), jnp.array([0, -1, 3]), parents)
  assert np.isfinite(out[0]) and np.isnan(out[1]) and np.isnan(out[2])
  with pytest.raises(TypeError, match="concrete"):
    jax.jit(lambda par: cj.tree_wasserstein(jnp.zeros(3), jnp.array(0), par))(parents)
  with pytest.raises(ValueError, match="exceeds the number of tree nodes"):
    cj.tree_wasserstein(jnp.zeros(7), jnp.array(0), parents)
  with pytest.raises(ValueError, match="cycle"):
    cj.tree_wasserstein(jnp.zeros(3), jnp.array(0), np.array([1, 0, -1]))
  with pytest.raises(TypeError, match="integer dtype"):
    cj.tree_wasserstein(jnp.zeros(3), jnp.array(0.0), parents)
  with pytest.raises(checkify.JaxRuntimeError, match="labels must lie in"):
    cj.checked(lambda z, y: cj.tree_wasserstein(z, y, parents))(jnp.zeros((2, 3)),
                                                                  jnp.array([0, 9]))



def test_tree_errors_name_tree_wasserstein():
  name = "costjax.tree_wasserstein"
  parents = np.array([3, 3, 4, 5, 5, -1])
  with pytest.raises(ValueError, match=rf"^{name}: parents contains a cycle"):
    cj.tree_wasserstein(jnp.zeros(3), jnp.array(0), np.array([1, 0, -1]))
  with pytest.raises(ValueError, match=rf"^{name}: edge_weights\[2\] = -1.0 is negative"):
    cj.tree_wasserstein(jnp.zeros(3), jnp.array(0), parents,
                        edge_weights=np.array([1.0, 1.0, -1.0, 1.0, 1.0, 0.0]))
  with pytest.raises(TypeError, match=rf"^{name}: parents and edge_weights describe"):
    jax.jit(lambda par: cj.tree_wasserstein(jnp.zeros(3), jnp.array(0), par))(parents)


K = 5


def test_tree_wasserstein_where_masks():
  rng = np.random.default_rng(90)
  logits = rng.normal(size=(6, K)).astype(np.float32)
  labels = np.arange(6) % K
  rows = np.array([1, 0, 1, 1, 0, 1], bool)
  got = cj.tree_wasserstein(logits, labels, TREE_PARENTS, where=rows)
  want = np_expected_cost(logits, one_hot(labels, K), TREE_COST)
  np.testing.assert_allclose(got, np.where(rows, want, 0.0), rtol=1e-5, atol=1e-6)
  classes = np.ones((6, K), bool)
  classes[np.arange(6), (labels + 2) % K] = False
  got = cj.tree_wasserstein(logits, labels, TREE_PARENTS, where=classes)
  masked_logits = np.where(classes, logits, -np.inf)
  np.testing.assert_allclose(got, np_expected_cost(masked_logits, one_hot(labels, K), TREE_COST),
                             rtol=1e-5, atol=1e-6)


def test_tree_wasserstein_and_hierarchy_reject_non_finite_edge_weights():
  z = jnp.zeros(K)
  for bad in (np.nan, np.inf, -np.inf):
    w = np.ones(len(TREE_PARENTS))
    w[2] = bad
    with pytest.raises(ValueError, match=r"edge_weights\[2\] = .* is not finite"):
      cj.tree_wasserstein(z, jnp.array(0), TREE_PARENTS, edge_weights=w)
    with pytest.raises(ValueError, match=r"edge_weights\[2\] = .* is not finite"):
      cj.hierarchy_cost_matrix(TREE_PARENTS, K, edge_weights=w)
  # The root has no edge: its entry is ignored, whatever it is.
  w = np.ones(len(TREE_PARENTS))
  w[-1] = np.nan
  np.testing.assert_allclose(cj.hierarchy_cost_matrix(TREE_PARENTS, K, edge_weights=w),
                             TREE_COST)
  np.testing.assert_allclose(
      cj.tree_wasserstein(z, jnp.array(3), TREE_PARENTS, edge_weights=w),
      TREE_COST[3].mean(), rtol=1e-6)
