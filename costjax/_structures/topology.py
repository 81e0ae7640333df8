"""NumPy layout of class trees: parsing, the level layout, and segment-sum plans.

Everything here is eager NumPy, because a tree's structure decides array shapes:

* :func:`parse_tree` -- validation of a hierarchy given as a parent array, and
  :class:`Tree`, its validated form (used by :func:`costjax.hierarchy_cost_matrix`
  and :func:`costjax.tree_wasserstein` too);
* :class:`Topology` -- the static, hashable level-by-level layout that
  :class:`costjax.TreeCost` carries as pytree auxiliary data;
* :class:`SlotPlan` and :func:`slot_sum` -- segment sums along the last axis as
  fused gathers (the only JAX code here: it runs a plan).

A hierarchy is an integer array ``parents`` over the tree's ``N`` nodes: the
root's parent is ``-1``, the first ``K`` nodes are the classes in class order,
and ``edge_weights[n]`` is the length of the edge from node ``n`` to its parent
(the root's entry is ignored).
"""

from __future__ import annotations

import functools
import hashlib
from typing import NamedTuple

import jax
import jax.numpy as jnp
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


# Segment sums along the last axis are gathers. Segments are bucketed by
# size: a bucket of segments with at most ``F`` elements sums ``F`` fused
# gathers ("slots", masked past each segment's end) in one pass over the batch;
# segments larger than the widest bucket are first reduced in chunks (and their
# chunk sums planned again). The bucket outputs are put back in segment order
# by one gather over the (small) output. Reads stay below two per element
# whatever the fan-out, with no transposes, scatters or sorts.
_SLOT_WIDTHS = (1, 2, 4, 8, 16, 32)


class SlotPlan:
  """Plan for ``out[..., s] = sum of x[..., i] over elements i with seg[i] == s``."""

  def __init__(self, seg: np.ndarray, num_segments: int):
    seg = np.asarray(seg, np.int64)
    order = np.argsort(seg, kind="stable")
    counts = np.bincount(seg, minlength=num_segments)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    self.num_segments = int(num_segments)
    self.buckets: list[tuple[np.ndarray, np.ndarray]] = []  # (idx (F, G), mask (F, G))
    placed: list[np.ndarray] = []  # segment ids in output order
    lo = 0
    for width in _SLOT_WIDTHS:
      segs = np.flatnonzero((counts > lo) & (counts <= width))
      lo = width
      if segs.size == 0:
        continue
      f = np.arange(width)[:, None]
      mask = f < counts[segs][None, :]
      idx = np.where(mask, order[np.minimum(starts[segs][None, :] + f, seg.size - 1)], 0)
      self.buckets.append((idx.astype(np.int32), mask))
      placed.append(segs)
    # Segments larger than the widest bucket: chunk sums, planned again.
    self.chunks: tuple[np.ndarray, np.ndarray] | None = None
    self.chunk_plan: SlotPlan | None = None
    big = np.flatnonzero(counts > _SLOT_WIDTHS[-1])
    if big.size:
      c = _SLOT_WIDTHS[-1]
      groups = -(-counts[big] // c)
      owner = np.repeat(np.arange(big.size), groups)  # chunk -> position among big
      first = np.concatenate([[0], np.cumsum(groups)[:-1]])
      rank = np.arange(owner.size) - first[owner]
      g_start = starts[big][owner] + rank * c
      g_len = np.minimum(c, counts[big][owner] - rank * c)
      f = np.arange(c)[:, None]
      mask = f < g_len[None, :]
      idx = np.where(mask, order[np.minimum(g_start[None, :] + f, seg.size - 1)], 0)
      self.chunks = (idx.astype(np.int32), mask)
      self.chunk_plan = SlotPlan(owner, big.size)
      placed.append(big)
    empty = np.flatnonzero(counts == 0)
    self.num_empty = int(empty.size)
    placed.append(empty)
    pos = np.concatenate(placed)
    self.inverse = None  # output order -> segment order, None when already in order
    if not np.array_equal(pos, np.arange(num_segments)):
      inv = np.empty(num_segments, np.int64)
      inv[pos] = np.arange(num_segments)
      self.inverse = inv.astype(np.int32)

  @property
  def reads(self) -> int:
    """Gathers per batch row (for tests: stays below two per element)."""
    n = sum(int(idx.size) for idx, _ in self.buckets)
    if self.chunks is not None:
      n += int(self.chunks[0].size) + self.chunk_plan.reads  # type: ignore[union-attr]
    return n + (0 if self.inverse is None else self.num_segments)


def _slots(x: jax.Array, idx: np.ndarray, mask: np.ndarray) -> jax.Array:
  out = None
  for f in range(idx.shape[0]):
    g = _sharding.take_last(x, idx[f])
    if not mask[f].all():
      g = jnp.where(jnp.asarray(mask[f]), g, 0)
    out = g if out is None else out + g
  return out  # type: ignore[return-value]  # idx has at least one row


def slot_sum(x: jax.Array, plan: SlotPlan, compose: np.ndarray | None = None) -> jax.Array:
  """Segment sums of ``x`` along its last axis by a :class:`SlotPlan`.

  ``compose`` (optional) maps the plan's element positions to positions of
  ``x``: the plan then reads ``x[..., compose[i]]`` (a fused permutation).
  """
  fix = (lambda idx: idx) if compose is None else (lambda idx: compose[idx].astype(np.int32))
  parts = [_slots(x, fix(idx), mask) for idx, mask in plan.buckets]
  if plan.chunks is not None:
    idx, mask = plan.chunks
    parts.append(slot_sum(_slots(x, fix(idx), mask), plan.chunk_plan))  # type: ignore[arg-type]
  if plan.num_empty:
    zeros_shape = x.shape[:-1] + (plan.num_empty,)
    parts.append(jnp.zeros(zeros_shape, x.dtype, **_sharding.sharded_like(x)))
  out = parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=-1)
  return out if plan.inverse is None else _sharding.take_last(out, plan.inverse)


class Topology:
  """Static, hashable level layout of a class tree (NumPy only).

  Nodes that are neither classes nor ancestors of classes are dropped. The
  remaining ``N'`` nodes are numbered level by level from the root ("flat"
  order); within a level, nodes are sorted by their parent's position, so the
  children of a node are contiguous and every level's parent index array is
  sorted (segment sums need no sort).
  """

  def __init__(self, parents: np.ndarray, num_classes: int, fn_name: str):
    tree = parse_tree(parents, num_classes, None, fn_name)
    par = tree.parents
    depth = tree.depth
    n = par.shape[0]
    k = int(num_classes)
    self.parents = par
    self.num_classes = k
    self.num_nodes = n
    # Keep the classes and their ancestors.
    keep = np.zeros(n, bool)
    keep[:k] = True
    max_depth = int(depth[:k].max())
    for t in range(max_depth, 0, -1):
      at = np.flatnonzero(keep & (depth == t))
      keep[par[at]] = True
    # Level-by-level flat numbering.
    flat_of = np.full(n, -1, np.int64)
    levels = [np.array([tree.root], np.int64)]
    flat_of[tree.root] = 0
    offsets = [0]
    parent_local = [np.zeros(0, np.int32)]
    pos_in_level = np.full(n, -1, np.int64)
    pos_in_level[tree.root] = 0
    total = 1
    for t in range(1, max_depth + 1):
      cand = np.flatnonzero(keep & (depth == t))
      key = pos_in_level[par[cand]]
      order = np.lexsort((cand, key))
      nodes = cand[order]
      pos_in_level[nodes] = np.arange(nodes.shape[0])
      flat_of[nodes] = total + np.arange(nodes.shape[0])
      offsets.append(total)
      total += nodes.shape[0]
      levels.append(nodes)
      parent_local.append(pos_in_level[par[nodes]].astype(np.int32))
    self.levels = levels  # original node ids per level
    self.offsets = np.asarray(offsets, np.int64)
    self.sizes = np.asarray([lv.shape[0] for lv in levels], np.int64)
    self.parent_local = parent_local  # per level, sorted, into the level above
    self.max_depth = max_depth
    self.num_flat = total
    node_of_flat = np.concatenate(levels)
    self.node_of_flat = node_of_flat.astype(np.int32)
    self.depth_flat = depth[node_of_flat].astype(np.int32)
    pf = flat_of[par[node_of_flat]]
    pf[0] = 0  # the root is its own parent
    self.parent_flat = pf.astype(np.int32)
    self.class_flat = flat_of[:k].astype(np.int32)
    # Per level: class index of each node (-1 if not a class).
    self.class_at_level = [np.where(lv < k, lv, -1).astype(np.int32) for lv in levels]
    # Fast path: all classes on one level, in class order.
    self.single_level = None
    for t, lv in enumerate(levels):
      if lv.shape[0] == k and np.array_equal(lv, np.arange(k)):
        self.single_level = t
    # Nodes where two branches that hold classes meet (for lca_height max).
    branches = np.zeros(total, np.int64)
    np.add.at(branches, self.parent_flat[1:], 1)
    branches[self.class_flat] += 1
    self.join_flat = np.flatnonzero(branches >= 2).astype(np.int32)
    digest = hashlib.sha1(par.tobytes()).hexdigest()
    self._hash = hash((digest, k))

  def __hash__(self) -> int:
    return self._hash

  def __eq__(self, other: object) -> bool:
    if self is other:
      return True
    return (
        isinstance(other, Topology)
        and self._hash == other._hash
        and self.num_classes == other.num_classes
        and np.array_equal(self.parents, other.parents)
    )

  @functools.cached_property
  def slot_plans(self) -> list[SlotPlan | None]:
    """Per level ``t >= 1``: the plan summing level ``t`` into its parents."""
    return [None] + [
        SlotPlan(self.parent_local[t], int(self.sizes[t - 1]))
        for t in range(1, self.max_depth + 1)
    ]

  @functools.cached_property
  def class_parent_flat(self) -> np.ndarray:
    """``(K,)`` flat index of each class's parent (0, the root, for a root class)."""
    return self.parent_flat[self.class_flat]

  @functools.cached_property
  def upper_class_pos(self) -> np.ndarray | None:
    """For classes above the deepest level, their position among levels ``1..L-1``.

    ``None`` when every class is on the deepest level (then a class's subtree
    mass is its own probability). Other classes get -1.
    """
    bottom = int(self.offsets[-1])
    f = self.class_flat.astype(np.int64)
    if np.all(f >= bottom):
      return None
    return np.where((f >= 1) & (f < bottom), f - 1, -1).astype(np.int32)

  @functools.cached_property
  def class_levels(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The levels that hold classes, for :meth:`TreeCost._lca_height_costs`.

    ``(index, representative, onehot)``: ``index[j]`` is the position of class
    ``j``'s level among the ``n`` levels that hold a class (ascending),
    ``representative[l]`` the first class on the ``l``-th of them, and
    ``onehot`` the ``(K, n)`` indicator of ``index``.
    """
    level = self.depth_flat[self.class_flat]
    levels, index = np.unique(level, return_inverse=True)
    representative = np.array([np.flatnonzero(index == i)[0] for i in range(levels.size)])
    onehot = (index[:, None] == np.arange(levels.size)).astype(np.float32)
    return index.astype(np.int32), representative.astype(np.int32), onehot

  @functools.cached_property
  def ancestor_table(self) -> np.ndarray:
    """``(max_depth + 1, K)`` flat index of each class's ancestor per level, -1 below."""
    k = self.num_classes
    out = np.full((self.max_depth + 1, k), -1, np.int32)
    cur = self.class_flat.astype(np.int64)
    for _ in range(self.max_depth + 1):
      out[self.depth_flat[cur], np.arange(k)] = cur
      cur = self.parent_flat[cur].astype(np.int64)
    return out
