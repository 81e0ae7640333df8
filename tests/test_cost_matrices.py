"""Cost-matrix builders and eager validation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import shortest_path

import costjax as cj


def test_ordinal_cost_matrix():
  for power in (1.0, 2.0, 0.5):
    got = cj.ordinal_cost_matrix(6, power=power)
    i, j = np.meshgrid(np.arange(6), np.arange(6), indexing="ij")
    np.testing.assert_allclose(got, np.abs(i - j) ** power, rtol=1e-6)
  with pytest.raises(ValueError, match="num_classes"):
    cj.ordinal_cost_matrix(0)


def random_tree(rng, num_classes, num_internal):
  """Classes 0..K-1 hang (possibly deeply) under internal nodes; the root is last."""
  n = num_classes + num_internal
  root = n - 1
  parents = np.full(n, -1)
  for node in range(num_classes, root):  # internal nodes attach to later internal nodes
    parents[node] = rng.integers(node + 1, n)
  for cls in range(num_classes):
    parents[cls] = rng.integers(num_classes, n)
  return parents


def tree_distances(parents, weights):
  """All-pairs path lengths by Dijkstra on the undirected tree (an independent oracle)."""
  n = len(parents)
  child = np.flatnonzero(parents >= 0)
  w = np.where(weights[child] == 0, 1e-300, weights[child])  # csgraph drops explicit zeros
  g = csr_matrix((w, (child, parents[child])), shape=(n, n))
  return shortest_path(g, directed=False)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("weighted", [False, True])
def test_hierarchy_path_length_equals_graph_shortest_paths(seed, weighted):
  rng = np.random.default_rng(seed)
  k = 7
  parents = random_tree(rng, k, 5)
  weights = rng.uniform(0.1, 3.0, len(parents)) if weighted else np.ones(len(parents))
  got = cj.hierarchy_cost_matrix(parents, k, edge_weights=weights if weighted else None)
  want = tree_distances(parents, weights)[:k, :k]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seed", range(5))
def test_hierarchy_lca_height(seed):
  rng = np.random.default_rng(seed)
  k = 6
  parents = random_tree(rng, k, 4)
  weights = rng.uniform(0.1, 3.0, len(parents))
  d = tree_distances(parents, weights)
  root = int(np.flatnonzero(parents == -1)[0])
  depth = d[root]

  def ancestors(node):
    out = [node]
    while parents[out[-1]] >= 0:
      out.append(parents[out[-1]])
    return out

  want = np.zeros((k, k))
  for a in range(k):
    for b in range(k):
      common = set(ancestors(a)) & set(ancestors(b))
      lca = max(common, key=lambda n: depth[n])
      want[a, b] = 0 if a == b else max(depth[a], depth[b]) - depth[lca]
  got = cj.hierarchy_cost_matrix(parents, k, kind="lca_height", edge_weights=weights)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_hierarchy_on_a_deep_chain():
  n = 3000  # pointer doubling keeps this fast
  parents = np.arange(1, n + 1)
  parents[-1] = -1
  got = cj.hierarchy_cost_matrix(parents, 3)
  np.testing.assert_allclose(got, [[0, 1, 2], [1, 0, 1], [2, 1, 0]])


@pytest.mark.parametrize(
    "parents, k, match",
    [
        ([1, 2, 0], 2, "exactly one root"),
        ([1, -1, -1], 2, "exactly one root"),
        ([3, -1], 2, r"parents\[0\] = 3"),
        ([1, 2, 1, -1], 2, "cycle"),
        ([1, -1], 3, "exceeds the number of tree nodes"),
        ([[1, -1]], 1, "1-D"),
    ],
)
def test_hierarchy_rejects_malformed_trees(parents, k, match):
  with pytest.raises(ValueError, match=match):
    cj.hierarchy_cost_matrix(np.array(parents), k)


def test_hierarchy_rejects_bad_weights_and_kind():
  with pytest.raises(ValueError, match="negative"):
    cj.hierarchy_cost_matrix([2, 2, -1], 2, edge_weights=[1.0, -1.0, 0.0])
  with pytest.raises(ValueError, match="shape"):
    cj.hierarchy_cost_matrix([2, 2, -1], 2, edge_weights=[1.0, 1.0])
  with pytest.raises(ValueError, match="kind"):
    cj.hierarchy_cost_matrix([2, 2, -1], 2, kind="depth")
  with pytest.raises(TypeError, match="integer"):
    cj.hierarchy_cost_matrix(np.array([2.0, 2.0, -1.0]), 2)


@pytest.mark.parametrize(
    "matrix, err, match",
    [
        (np.ones((3, 4)), ValueError, r"square.*\(3, 4\)"),
        (np.ones(3), ValueError, "square"),
        (np.ones((1, 1)), ValueError, "at least 2"),
        (np.array([[0, np.nan], [1, 0]]), ValueError, r"non-finite entry: C\[0, 1\]"),
        (np.array([[0, 1], [np.inf, 0]]), ValueError, r"non-finite entry: C\[1, 0\]"),
        (np.array([[0, 1], [-2, 0]]), ValueError, r"negative entry: C\[1, 0\] = -2"),
        (np.array([["a", "b"], ["c", "d"]]), TypeError, "real-valued"),
    ],
)
def test_check_cost_matrix_rejects(matrix, err, match):
  with pytest.raises(err, match=match):
    cj.check_cost_matrix(matrix)


def test_check_cost_matrix_accepts_and_converts():
  out = cj.check_cost_matrix(np.array([[0, 1], [2, 0]]))
  assert out.dtype == jnp.float32
  np.testing.assert_array_equal(out, [[0, 1], [2, 0]])
  # A non-zero diagonal is allowed.
  cj.check_cost_matrix(np.array([[1.0, 2.0], [3.0, 0.5]]))


def test_ordinal_cost_matrix_defaults_dtypes_and_edge_cases():
  i, j = np.meshgrid(np.arange(4), np.arange(4), indexing="ij")
  np.testing.assert_array_equal(cj.ordinal_cost_matrix(4), np.abs(i - j))  # power=1 default
  assert cj.ordinal_cost_matrix(4).dtype == jnp.float32
  np.testing.assert_array_equal(cj.ordinal_cost_matrix(1), [[0.0]])  # one class is allowed
  # power=0 is the 0-1 cost: the diagonal stays 0 (not 0**0 = 1).
  np.testing.assert_array_equal(cj.ordinal_cost_matrix(4, power=0.0), 1 - np.eye(4))
  for dtype in (jnp.float16, jnp.bfloat16):
    got = cj.ordinal_cost_matrix(5, power=2, dtype=dtype)
    assert got.dtype == dtype
    np.testing.assert_array_equal(np.asarray(got, np.float32), np.abs(
        np.arange(5)[:, None] - np.arange(5)[None, :]) ** 2)
  with jax.enable_x64(True):
    assert cj.ordinal_cost_matrix(3, power=1.5).dtype == jnp.float32
    assert cj.ordinal_cost_matrix(3, power=np.float64(1.5)).dtype == jnp.float32
    assert cj.ordinal_cost_matrix(3, power=jnp.float64(2.0)).dtype == jnp.float32
    assert cj.ordinal_cost_matrix(3, dtype=jnp.float64).dtype == jnp.float64
    assert cj.hierarchy_cost_matrix([2, 2, -1], 2).dtype == jnp.float32
  for bad in (-1, 2.0, "3"):
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
      cj.ordinal_cost_matrix(bad)


def test_ordinal_cost_matrix_gradient_in_power_is_finite_on_the_diagonal():
  """d/dp sum |i-j|**p = sum_{i != j} |i-j|**p log|i-j|; the diagonal contributes 0."""
  g = jax.grad(lambda pw: cj.ordinal_cost_matrix(4, power=pw).sum())(2.0)
  d = np.abs(np.arange(4)[:, None] - np.arange(4)[None, :]).astype(np.float64)
  off = d > 0
  np.testing.assert_allclose(g, np.sum(d[off] ** 2 * np.log(d[off])), rtol=1e-5)


def test_hierarchy_errors_name_the_function():
  with pytest.raises(ValueError, match=r"^costjax\.hierarchy_cost_matrix: .*cycle"):
    cj.hierarchy_cost_matrix(np.array([1, 2, 1, -1]), 2)
  with pytest.raises(ValueError, match=r"^costjax\.hierarchy_cost_matrix: kind"):
    cj.hierarchy_cost_matrix([2, 2, -1], 2, kind="depth")
