"""Validation and bookkeeping for class hierarchies given as parent arrays.

A hierarchy is an integer array ``parents`` over the tree's ``N`` nodes: the
root's parent is ``-1``, the first ``K`` nodes are the classes in class order,
and ``edge_weights[n]`` is the length of the edge from node ``n`` to its parent
(the root's entry is ignored). Parsing happens eagerly, in NumPy, because the
tree's structure decides array shapes.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np

from costjax import _sharding


class Tree(NamedTuple):
  """A validated class hierarchy (all NumPy arrays)."""

  parents: np.ndarray  # (N,) int64, root -> -1
  edge_weights: np.ndarray  # (N,) float64, root -> 0
  depth: np.ndarray  # (N,) number of edges to the root
  dist_to_root: np.ndarray  # (N,) weighted distance to the root
  root: int
  num_classes: int

  @property
  def num_nodes(self) -> int:
    return self.parents.shape[0]


def parse_tree(
    parents: jax.typing.ArrayLike,
    num_classes: int,
    edge_weights: jax.typing.ArrayLike | None = None,
    fn_name: str = "costjax",
) -> Tree:
  """Validates a parent array; raises ``ValueError``/``TypeError`` naming the problem."""
  if _sharding.is_tracer(parents) or _sharding.is_tracer(edge_weights):
    raise TypeError(
        f"{fn_name}: parents and edge_weights describe the tree's structure and must be "
        "concrete (NumPy or a jax.Array created outside jit), not traced values. Close "
        "over them instead of passing them as jit arguments."
    )
  par = np.asarray(parents)
  if par.ndim != 1:
    raise ValueError(f"{fn_name}: parents must be 1-D; got shape {par.shape}.")
  if not np.issubdtype(par.dtype, np.integer):
    raise TypeError(f"{fn_name}: parents must have an integer dtype; got {par.dtype}.")
  par = par.astype(np.int64)
  n = par.shape[0]
  if not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
    raise ValueError(f"{fn_name}: num_classes must be a positive int; got {num_classes!r}.")
  if num_classes > n:
    raise ValueError(
        f"{fn_name}: num_classes={num_classes} exceeds the number of tree nodes "
        f"{n} (parents.shape={par.shape}); the first K nodes must be the classes."
    )
  roots = np.flatnonzero(par == -1)
  if roots.size != 1:
    raise ValueError(
        f"{fn_name}: parents must have exactly one root (parent -1); found {roots.size}."
    )
  bad = np.flatnonzero((par < -1) | (par >= n))
  if bad.size:
    i = bad[0]
    raise ValueError(
        f"{fn_name}: parents[{i}] = {par[i]} is not a node index in [0, {n}) or -1."
    )
  root = int(roots[0])
  if edge_weights is None:
    w = np.ones(n, np.float64)
  else:
    w = np.asarray(edge_weights, dtype=np.float64)
    if w.shape != (n,):
      raise ValueError(
          f"{fn_name}: edge_weights must have shape parents.shape={par.shape}; got "
          f"{w.shape}."
      )
    finite = np.isfinite(w)
    finite[root] = True
    if not finite.all():
      i = np.flatnonzero(~finite)[0]
      raise ValueError(f"{fn_name}: edge_weights[{i}] = {w[i]} is not finite.")
    neg = (w < 0) & (np.arange(n) != root)
    if neg.any():
      i = np.flatnonzero(neg)[0]
      raise ValueError(f"{fn_name}: edge_weights[{i}] = {w[i]} is negative.")
  w = w.copy()
  w[root] = 0.0
  # Pointer doubling: after step t every node knows its 2**t-th ancestor and
  # the depth and length of the path to it, so O(N log N) for any tree shape.
  anc = np.where(np.arange(n) == root, root, par)
  depth = (np.arange(n) != root).astype(np.int64)
  dist = w.copy()
  for _ in range(max(1, int(np.ceil(np.log2(max(n, 2))))) + 1):
    depth = depth + depth[anc] * (anc != root)
    dist = dist + dist[anc] * (anc != root)
    anc = anc[anc]
  if np.any(anc != root):
    raise ValueError(f"{fn_name}: parents contains a cycle; it must describe a tree.")
  return Tree(par, w, depth, dist, root, int(num_classes))


def ancestor_matrix(tree: Tree, nodes: np.ndarray) -> np.ndarray:
  """Boolean ``(len(nodes), N)``: entry ``[a, n]`` is whether ``n`` is on ``a``'s root path."""
  out = np.zeros((nodes.shape[0], tree.num_nodes), bool)
  rows = np.arange(nodes.shape[0])
  cur = nodes.copy()
  out[rows, cur] = True
  for _ in range(int(tree.depth.max()) if tree.num_nodes else 0):
    cur = np.where(cur == tree.root, cur, tree.parents[cur])
    out[rows, cur] = True
  return out
