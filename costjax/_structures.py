"""Structured cost matrices: trees, ordinal distances and embeddings, never ``K x K``.

Each structure is a :class:`costjax._cost_ops.CostStructure` and a JAX pytree:
its array leaves (edge weights, embeddings, scale) are traced, so they pass
through ``jit``, ``vmap`` (over a stack of structures) and ``grad``; sizes,
kinds, powers and the tree topology are static auxiliary data. Every costjax
function reads them through ``rows`` (``C[y, :]`` for integer labels) and
``vecmat`` (``q @ C`` for probability vectors), which here cost ``O(B K depth)``
(trees), ``O(B K)`` (ordinal) and ``O(B K D)`` (embeddings) time and
``O(B K)`` memory.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from costjax import _cost_ops, _reductions, _trees
from costjax._sharding import explicit_sharding, gather_rows, is_tracer, take_last

# Largest depth * K for which TreeCost.rows keeps a (depth, K) ancestor table;
# deeper trees use a top-down pass over the levels instead.
_MAX_ANCESTOR_TABLE = 1 << 25


def _cost_name(obj: Any) -> str:
  return type(obj).__name__


# --------------------------------------------------------------------------- #
# Trees.
# --------------------------------------------------------------------------- #


# Segment sums along the last axis are gathers. Segments are bucketed by
# size: a bucket of segments with at most ``F`` elements sums ``F`` fused
# gathers ("slots", masked past each segment's end) in one pass over the batch;
# segments larger than the widest bucket are first reduced in chunks (and their
# chunk sums planned again). The bucket outputs are put back in segment order
# by one gather over the (small) output. Reads stay below two per element
# whatever the fan-out, with no transposes, scatters or sorts.
_SLOT_WIDTHS = (1, 2, 4, 8, 16, 32)


class _SlotPlan:
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
    self.chunk_plan: _SlotPlan | None = None
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
      self.chunk_plan = _SlotPlan(owner, big.size)
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
    g = take_last(x, idx[f])
    if not mask[f].all():
      g = jnp.where(jnp.asarray(mask[f]), g, 0)
    out = g if out is None else out + g
  return out  # type: ignore[return-value]  # idx has at least one row


def _slot_sum(x: jax.Array, plan: _SlotPlan, compose: np.ndarray | None = None) -> jax.Array:
  """Segment sums of ``x`` along its last axis by a :class:`_SlotPlan`.

  ``compose`` (optional) maps the plan's element positions to positions of
  ``x``: the plan then reads ``x[..., compose[i]]`` (a fused permutation).
  """
  fix = (lambda idx: idx) if compose is None else (lambda idx: compose[idx].astype(np.int32))
  parts = [_slots(x, fix(idx), mask) for idx, mask in plan.buckets]
  if plan.chunks is not None:
    idx, mask = plan.chunks
    parts.append(_slot_sum(_slots(x, fix(idx), mask), plan.chunk_plan))  # type: ignore[arg-type]
  if plan.num_empty:
    zeros_shape = x.shape[:-1] + (plan.num_empty,)
    parts.append(jnp.zeros(zeros_shape, x.dtype, out_sharding=explicit_sharding(x)))
  out = parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=-1)
  return out if plan.inverse is None else take_last(out, plan.inverse)


class _Topology:
  """Static, hashable level layout of a class tree (NumPy only).

  Nodes that are neither classes nor ancestors of classes are dropped. The
  remaining ``N'`` nodes are numbered level by level from the root ("flat"
  order); within a level, nodes are sorted by their parent's position, so the
  children of a node are contiguous and every level's parent index array is
  sorted (segment sums need no sort).
  """

  def __init__(self, parents: np.ndarray, num_classes: int, fn_name: str):
    tree = _trees.parse_tree(parents, num_classes, None, fn_name)
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
        isinstance(other, _Topology)
        and self._hash == other._hash
        and self.num_classes == other.num_classes
        and np.array_equal(self.parents, other.parents)
    )

  @functools.cached_property
  def slot_plans(self) -> list[_SlotPlan | None]:
    """Per level ``t >= 1``: the plan summing level ``t`` into its parents."""
    return [None] + [
        _SlotPlan(self.parent_local[t], int(self.sizes[t - 1]))
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


def _level_split(x: jax.Array, topo: _Topology) -> list[jax.Array]:
  return [x[..., int(o):int(o + s)] for o, s in zip(topo.offsets, topo.sizes, strict=True)]


def _segment_max_last(x: jax.Array, seg: np.ndarray, num: int) -> jax.Array:
  out = jax.ops.segment_max(
      jnp.moveaxis(x, -1, 0), jnp.asarray(seg), num_segments=num, indices_are_sorted=True
  )
  return jnp.moveaxis(out, 0, -1)


def _rank(x: Any, ndim: int) -> jax.Array:
  """``x`` with leading unit axes up to ``ndim``: explicit broadcasting, so the
  structures also run where implicit rank promotion is disabled
  (``jax.numpy_rank_promotion("raise")``)."""
  return jax.lax.broadcast_to_rank(jnp.asarray(x), ndim)


@jax.tree_util.register_pytree_node_class
class TreeCost(_cost_ops.CostStructure):
  r"""Cost of a class hierarchy, ``hierarchy_cost_matrix(...)`` without the matrix.

  ``C[i, j]`` is ``hierarchy_cost_matrix(parents, num_classes, kind=kind,
  edge_weights=edge_weights)``: with ``d(n)`` the weighted distance from node
  ``n`` to the root and ``l = lca(i, j)``,

  * ``kind="path_length"``: ``C[i, j] = d(i) + d(j) - 2 d(l)``;
  * ``kind="lca_height"``: ``C[i, j] = max(d(i), d(j)) - d(l)``.

  Every costjax function that takes a ``cost_matrix`` accepts it. Rows
  ``C[y, :]`` come from comparing ancestor chains (one fused pass), and
  ``q @ C`` from a bottom-up pass (subtree masses) and a top-down pass, so a
  batch of ``B`` examples costs ``O(B * N)`` time and memory for a tree of
  ``N`` nodes — at ``K = 100,000`` classes a few times a cross-entropy,
  never ``K x K``. Bayes decisions for ``kind="path_length"`` skip ``q @ C``:
  one bottom-up and one top-down pass give the expected cost up to a
  per-example constant. ``kind="lca_height"`` with probability labels (and
  its Bayes decisions) also needs ``sum_i q_i max(d_i, d_j)``: cheap when the
  class depths are one non-decreasing value per tree level (unit edge
  weights, the default, or weights equal along each level); otherwise one
  sort of the ``K`` class depths per call and two permutations and prefix
  sums over the batch, several times slower at large ``K``.

  The topology (``parents``) is static and parsed once, eagerly, in NumPy;
  ``edge_weights`` is a traced pytree leaf, so you can differentiate with
  respect to it, or ``jax.vmap`` over a stack of trees that share
  ``parents``. The level passes are unrolled, one small block of operations
  per tree level: fine for taxonomies (depth 5 to 30), slow to compile for
  trees thousands of levels deep.

  Args:
    parents: integer array ``(N,)`` over the tree's nodes, ``N >= K``; the
      root's parent is ``-1`` and the first ``num_classes`` nodes are the
      classes in class order (leaves or internal nodes). Must be concrete.
    num_classes: ``K``.
    kind: ``"path_length"`` or ``"lca_height"`` (static).
    edge_weights: optional non-negative ``(N,)``; ``edge_weights[n]`` is the
      length of the edge from ``n`` to its parent (default 1; the root's entry
      is ignored). May be traced (checked eagerly when concrete).

  Raises:
    ValueError: for a malformed tree (a cycle, no or several roots, fewer
      than ``num_classes`` nodes, an index out of range), an unknown ``kind``,
      or edge weights of the wrong shape, or concrete ones that are negative
      or not finite.
    TypeError: if ``parents`` is traced.

  Examples:
    >>> import jax.numpy as jnp
    >>> import costjax as cj
    >>> # classes 0, 1 under node 3; class 2 under node 4; root 5.
    >>> tree = cj.TreeCost([3, 3, 4, 5, 5, -1], 3)
    >>> tree.dense()
    Array([[0., 2., 4.],
           [2., 0., 4.],
           [4., 4., 0.]], dtype=float32)
    >>> logits = jnp.array([[2., 1., 0.], [0., 0., 3.]])
    >>> cj.expected_cost(logits, jnp.array([0, 0]), tree)
    Array([0.8496, 3.7283], dtype=float32)
    >>> cj.bayes_decision(logits, tree)
    Array([0, 2], dtype=int32)
  """

  def __init__(
      self,
      parents: jax.typing.ArrayLike,
      num_classes: int,
      *,
      kind: Literal["path_length", "lca_height"] = "path_length",
      edge_weights: jax.typing.ArrayLike | None = None,
  ):
    name = "costjax.TreeCost"
    if kind not in ("path_length", "lca_height"):
      raise ValueError(f"{name}: kind must be 'path_length' or 'lca_height'; got {kind!r}.")
    if is_tracer(parents):
      raise TypeError(
          f"{name}: parents is the tree's static structure and must be concrete (NumPy or "
          "a jax.Array created outside jit); pass edge_weights as the traced part."
      )
    topo = _Topology(np.asarray(parents), num_classes, name)
    n = topo.num_nodes
    if edge_weights is None:
      w = jnp.ones((n,), jnp.float32)
    else:
      if not is_tracer(edge_weights):
        # Values (finite, non-negative) and shape, eagerly, by the shared parser.
        _trees.parse_tree(topo.parents, num_classes, np.asarray(edge_weights), name)
      w = jnp.asarray(edge_weights)
      if w.shape != (n,):
        raise ValueError(
            f"{name}: edge_weights must have shape parents.shape=({n},); got {w.shape}."
        )
      if not jnp.issubdtype(w.dtype, jnp.floating):
        w = w.astype(jnp.float32)
    self._topo = topo
    self.kind = kind
    self.edge_weights = w

  # -- pytree -------------------------------------------------------------- #

  def tree_flatten(self) -> tuple[tuple[Any, ...], Any]:
    return (self.edge_weights,), (self._topo, self.kind)

  @classmethod
  def tree_unflatten(cls, aux: Any, children: Any) -> TreeCost:
    obj = object.__new__(cls)
    obj._topo, obj.kind = aux
    (obj.edge_weights,) = children
    return obj

  def __repr__(self) -> str:
    return (
        f"TreeCost(num_classes={self.num_classes}, num_nodes={self._topo.num_nodes}, "
        f"depth={self._topo.max_depth}, kind={self.kind!r})"
    )

  # -- structure ----------------------------------------------------------- #

  @property
  def num_classes(self) -> int:
    return self._topo.num_classes

  @property
  def parents(self) -> np.ndarray:
    return self._topo.parents

  def astype(self, dtype: Any) -> TreeCost:
    return jax.tree.map(lambda w: w.astype(dtype), self)

  def _flat_weights(self) -> jax.Array:
    """Edge weight of every kept node in flat order (root: 0)."""
    w = take_last(self.edge_weights, self._topo.node_of_flat)
    return w.at[0].set(0)

  def _level_depths(self, w_flat: jax.Array) -> list[jax.Array]:
    """Weighted root distance of every kept node, per level."""
    topo = self._topo
    ws = _level_split(w_flat, topo)
    out = [jnp.zeros((1,), w_flat.dtype)]
    for t in range(1, topo.max_depth + 1):
      out.append(take_last(out[-1], topo.parent_local[t]) + ws[t])
    return out

  def _gather_classes(self, per_level: list[jax.Array]) -> jax.Array:
    topo = self._topo
    if topo.single_level is not None:
      return per_level[topo.single_level]
    return take_last(jnp.concatenate(per_level, axis=-1), topo.class_flat)

  def class_depths(self) -> jax.Array:
    """``(K,)`` weighted distance of each class to the root."""
    return self._gather_classes(self._level_depths(self._flat_weights()))

  def rows(self, idx: jax.Array) -> jax.Array:
    topo = self._topo
    k = self.num_classes
    w_flat = self._flat_weights()
    d = self._gather_classes(self._level_depths(w_flat))
    idx = jnp.asarray(idx)
    y = jnp.clip(idx, 0, k - 1)
    if topo.max_depth * k <= _MAX_ANCESTOR_TABLE:
      lca_c = self._lca_depth_by_table(y, w_flat)
    else:
      lca_c = self._lca_depth_by_levels(y, w_flat)
    d_y = gather_rows(d, y)[..., None]
    d = _rank(d, d_y.ndim)
    # Non-negative without a clamp: d(lca) is bitwise a partial sum of both root
    # distances (the same additions in the same order), so d_y - d(lca) >= 0
    # and d_j - d(lca) >= 0 exactly. (A clamp's broadcast zero was written out
    # as a B x K array in front of XLA:CPU's fused row sums.)
    if self.kind == "path_length":
      return (d_y - lca_c) + (d - lca_c)
    return jnp.maximum(d_y, d) - lca_c

  def row_block(self, idx: jax.Array, cols: jax.Array) -> jax.Array:
    """``C[idx[..., None], cols]`` by comparing ancestor chains on the block only.

    As :meth:`rows` with the ancestor table read at ``cols``: ``O(idx.size *
    len(cols) * depth)`` time, ``O(idx.size * len(cols))`` memory, plus the
    ``(depth + 1, K)`` table itself (used at any depth here: the default,
    ``len(cols)`` full rows per block, would cost ``O(K^2)`` per pass).
    """
    topo = self._topo
    k = self.num_classes
    w_flat = self._flat_weights()
    d = self._gather_classes(self._level_depths(w_flat))
    y = jnp.clip(jnp.asarray(idx), 0, k - 1)
    cols = jnp.asarray(cols)
    table = jnp.asarray(topo.ancestor_table)  # (L + 1, K), -1 below each class
    block_table = jnp.take(table, cols, axis=1, mode="clip")  # (L + 1, n)
    lca = jnp.zeros((), w_flat.dtype)
    d_anc = jnp.zeros(y.shape, w_flat.dtype)  # weighted depth of y's ancestor at level t
    for t in range(1, table.shape[0]):
      a_y = gather_rows(table[t], y)  # y's ancestor at level t, or -1
      d_anc = d_anc + jnp.where(a_y >= 0, gather_rows(w_flat, jnp.maximum(a_y, 0)), 0)
      a_y = jnp.where(a_y >= 0, a_y, -2)  # below y: matches no class (the table has -1)
      same = _rank(block_table[t], y.ndim + 1) == a_y[..., None]
      lca = jnp.where(same, d_anc[..., None], lca)
    d_y = gather_rows(d, y)[..., None]
    d_c = _rank(jnp.take(d, cols, mode="clip"), d_y.ndim)
    if self.kind == "path_length":
      return (d_y - lca) + (d_c - lca)
    return jnp.maximum(d_y, d_c) - lca

  def _lca_depth_by_table(self, y: jax.Array, w_flat: jax.Array) -> jax.Array:
    """``d(lca(y, j))`` for all classes ``j``: compare ancestor chains level by level.

    Shared ancestors form a prefix of both root paths, so the deepest level
    where ``j``'s ancestor is ``y``'s gives ``d(lca)``: one chain of selects
    over ``(..., K)`` with ``depth`` compares per entry, which XLA keeps in
    one fusion (a sum of per-level terms became one ``B x K`` pass per level
    in front of the fused row sums of the soft-label loss). ``O(K * depth)``
    static memory for the ancestor table.
    """
    table = self._topo.ancestor_table  # (L + 1, K), -1 below each class
    out = jnp.zeros((), w_flat.dtype)
    d_y = jnp.zeros(y.shape, w_flat.dtype)  # weighted depth of y's ancestor at level t
    for t in range(1, table.shape[0]):
      a_y = gather_rows(jnp.asarray(table[t]), y)  # y's ancestor at level t, or -1
      d_y = d_y + jnp.where(a_y >= 0, gather_rows(w_flat, jnp.maximum(a_y, 0)), 0)
      a_y = jnp.where(a_y >= 0, a_y, -2)  # below y: matches no class (the table has -1)
      out = jnp.where(_rank(table[t], y.ndim + 1) == a_y[..., None], d_y[..., None], out)
    return jnp.broadcast_to(out, y.shape + (self.num_classes,))

  def _lca_depth_by_levels(self, y: jax.Array, w_flat: jax.Array) -> jax.Array:
    """As :meth:`_lca_depth_by_table` by a top-down pass: ``O(N)`` static memory."""
    topo = self._topo
    ws = _level_split(w_flat, topo)
    # Flat position of y's ancestor at every level (-1 below y's depth).
    a = gather_rows(jnp.asarray(topo.class_flat), y)
    depth_flat = jnp.asarray(topo.depth_flat)
    parent_flat = jnp.asarray(topo.parent_flat)
    anc: list[Any] = [None] * (topo.max_depth + 1)
    for t in range(topo.max_depth, 0, -1):
      on = gather_rows(depth_flat, a) == t
      anc[t] = jnp.where(on, a - int(topo.offsets[t]), -1)
      a = jnp.where(on, gather_rows(parent_flat, a), a)
    # Top-down: lca[n] = d(lca(y, n)) accumulates the weights of shared ancestors.
    lca = [jnp.zeros(y.shape + (1,), w_flat.dtype)]
    for t in range(1, topo.max_depth + 1):
      nodes = _rank(jnp.arange(int(topo.sizes[t]), dtype=jnp.int32), y.ndim + 1)
      shared = nodes == anc[t][..., None]
      level_w = _rank(ws[t], y.ndim + 1)
      lca.append(take_last(lca[-1], topo.parent_local[t]) + jnp.where(shared, level_w, 0))
    return self._gather_classes(lca)

  def _subtree_masses(self, v: jax.Array) -> tuple[list[Any], jax.Array]:
    """Subtree sums of ``v`` (``(..., K)``, per class): per level ``1 .. L-1``
    (``(..., n_t)``) and per class in class order (``(..., K)``).

    Batch-major, with no transposes or scatters: fused slot gathers per level
    (:class:`_SlotPlan`), bottom-up. The deepest level's masses are the
    classes' own entries of ``v``, read in place.
    """
    topo = self._topo
    depth = topo.max_depth
    mass: list[Any] = [None] * max(depth, 1)
    if depth > 1:
      deepest = topo.slot_plans[depth]
      below = _slot_sum(v, deepest, topo.class_at_level[depth])  # type: ignore[arg-type]
    for t in range(depth - 1, 0, -1):
      cls = topo.class_at_level[t]
      has = cls >= 0
      m = below
      if has.any():
        own = take_last(v, np.where(has, cls, 0))
        if not has.all():
          own = jnp.where(_rank(has, own.ndim), own, 0)
        m = m + own
      mass[t] = m
      below = _slot_sum(m, topo.slot_plans[t])  # type: ignore[arg-type]
    m_class = v
    pos = topo.upper_class_pos
    if pos is not None and depth > 1:
      upper = jnp.concatenate(mass[1:], axis=-1)
      m_class = jnp.where(_rank(pos >= 0, v.ndim), take_last(upper, np.maximum(pos, 0)), v)
    return mass, m_class

  def _top_down(self, mass: list[Any], m_class: jax.Array, w_flat: jax.Array,
                edge_value: Any) -> jax.Array:
    """``T(j) = sum over j's ancestors a (j included) of w_a * edge_value(M(a))``
    for every class ``j`` (``(..., K)``), from :meth:`_subtree_masses`."""
    topo = self._topo
    ws = _level_split(w_flat, topo)
    nd = m_class.ndim
    acc = [jnp.zeros(m_class.shape[:-1] + (1,), m_class.dtype)]
    for t in range(1, topo.max_depth):
      acc.append(take_last(acc[-1], topo.parent_local[t])
                 + _rank(ws[t], nd) * edge_value(mass[t]))
    acc_all = acc[0] if len(acc) == 1 else jnp.concatenate(acc, axis=-1)
    w_class = _rank(take_last(w_flat, topo.class_flat), nd)
    return take_last(acc_all, topo.class_parent_flat) + w_class * edge_value(m_class)

  def _lca_weighted_mass(self, v: jax.Array, w_flat: jax.Array) -> jax.Array:
    """``sum_i v[..., i] d(lca(i, j))`` for every class ``j``: ``(..., K)``.

    ``d(lca(i, j))`` is the sum of the edge weights above both, so this is
    ``T(j) = sum over j's ancestors a of w_a M(a)``, with ``M(a)`` the mass of
    ``v`` below ``a``: a bottom-up then a top-down pass.
    """
    if self._topo.max_depth == 0:  # a single class that is the root
      return jnp.zeros_like(v)
    mass, m_class = self._subtree_masses(v)
    return self._top_down(mass, m_class, w_flat, lambda m: m)

  # Jitted: one compiled call when used eagerly (the level passes are many small ops).
  @jax.jit
  def bayes(self, weights: jax.Array) -> tuple[jax.Array, jax.Array] | None:
    """Bayes decisions without writing out :meth:`vecmat`'s ``(..., K)`` costs.

    ``kind="path_length"``: moving from a node into a child subtree of mass
    ``M`` (of total ``S``) along an edge of length ``w`` changes the expected
    path length by ``w (S - 2 M)``. So ``(weights @ C)_j = sum_i weights_i d_i +
    A(j)`` with ``A(j) = sum over j's ancestors a of w_a (S - 2 M(a))``: one
    bottom-up and one top-down pass, then a blocked arg-min; the constant term
    is only computed if the caller reads the minimum (abstention).

    ``kind="lca_height"``: the arg-min runs inside the branch that computes
    the costs (:meth:`_lca_height_costs`), so they are never an output.
    """
    topo = self._topo
    if topo.max_depth == 0:
      zeros = jnp.zeros(weights.shape[:-1], jnp.int32)
      return zeros, zeros.astype(weights.dtype)
    if self.kind == "lca_height":

      def decide(score):
        decision = _reductions.argmin_last(score)
        return decision, jnp.take_along_axis(score, decision[..., None], axis=-1)[..., 0]

      return self._lca_height_costs(weights, decide)
    w_flat = self._flat_weights().astype(weights.dtype)
    total = jnp.sum(weights, axis=-1, keepdims=True)
    mass, m_class = self._subtree_masses(weights)
    score = self._top_down(mass, m_class, w_flat, lambda m: total - 2 * m)
    decision = _reductions.argmin_last(score)
    d = _rank(self._gather_classes(self._level_depths(w_flat)), weights.ndim)
    best = (jnp.take_along_axis(score, decision[..., None], axis=-1)[..., 0]
            + jnp.sum(weights * d, axis=-1))
    return decision, jnp.maximum(best, 0)

  @jax.jit
  def vecmat(self, v: jax.Array) -> jax.Array:
    if self.kind == "lca_height":
      return self._lca_height_costs(v, lambda out: out)
    w_flat = self._flat_weights().astype(v.dtype)
    d = _rank(self._gather_classes(self._level_depths(w_flat)), v.ndim)
    lca = self._lca_weighted_mass(v, w_flat)
    total = jnp.sum(v, axis=-1, keepdims=True)
    vd = jnp.sum(v * d, axis=-1, keepdims=True)
    return jnp.maximum(total * d + vd - 2 * lca, 0)

  def _lca_height_costs(self, v: jax.Array, finish: Any) -> Any:
    """``finish(v @ C)`` for ``kind="lca_height"``.

    ``(v @ C)_j = sum_i v_i max(d_i, d_j) - sum_i v_i d(lca(i, j))``; the second
    sum is the tree passes' (:meth:`_lca_weighted_mass`), the first comes from
    one of two branches of a ``lax.cond`` on the ``K`` class depths:

    * when the depths are one value per tree level, non-decreasing with the
      level (unit edge weights, the default, or any weights equal along every
      level), ``max`` only compares the classes' static levels: matrix
      products with the ``(K, n_levels)`` level indicator, nothing sorted or
      permuted (:func:`_sum_max_by_level`);
    * otherwise one sort of the depths and two ``(..., K)`` permutations
      (:func:`_sum_max_sorted`), much slower (``docs/benchmarks.md``, section
      "Structured costs at huge K").

    ``finish`` (the identity, or an arg-min) runs inside the branch, so the
    ``(..., K)`` costs need not be the branch's output. Under ``vmap`` over
    stacked trees both branches run.
    """
    w_flat = self._flat_weights().astype(v.dtype)
    d = self._gather_classes(self._level_depths(w_flat))
    lca = self._lca_weighted_mass(v, w_flat)
    sorted_costs = lambda v, d, lca: finish(jnp.maximum(_sum_max_sorted(v, d) - lca, 0))
    index, rep, onehot = self._topo.class_levels
    if onehot.shape[1] > _MAX_LEVELS_BY_MATMUL:
      return sorted_costs(v, d, lca)

    def level_costs(v, d, lca):
      return finish(jnp.maximum(_sum_max_by_level(v, d, onehot) - lca, 0))

    g = take_last(d, rep)
    by_level = jnp.all(d == take_last(g, index))
    if g.shape[-1] > 1:
      by_level = by_level & jnp.all(g[1:] >= g[:-1])
    return jax.lax.cond(by_level, level_costs, sorted_costs, v, d, lca)

  def entries(self, i: jax.Array, j: jax.Array) -> jax.Array:
    topo = self._topo
    k = self.num_classes
    d_flat = jnp.concatenate(self._level_depths(self._flat_weights()))
    depth_flat = jnp.asarray(topo.depth_flat)
    parent_flat = jnp.asarray(topo.parent_flat)
    cls = jnp.asarray(topo.class_flat)
    a = gather_rows(cls, jnp.clip(i, 0, k - 1))
    b = gather_rows(cls, jnp.clip(j, 0, k - 1))
    a, b = jnp.broadcast_arrays(a, b)

    def up_deeper(_, ab):
      a, b = ab
      da, db = gather_rows(depth_flat, a), gather_rows(depth_flat, b)
      return (jnp.where(da > db, gather_rows(parent_flat, a), a),
              jnp.where(db > da, gather_rows(parent_flat, b), b))

    def up_both(_, ab):
      a, b = ab
      ne = a != b
      return (jnp.where(ne, gather_rows(parent_flat, a), a),
              jnp.where(ne, gather_rows(parent_flat, b), b))

    steps = topo.max_depth
    l_a, l_b = jax.lax.fori_loop(0, steps, up_deeper, (a, b))
    l_a, _ = jax.lax.fori_loop(0, steps, up_both, (l_a, l_b))
    da, db, dl = gather_rows(d_flat, a), gather_rows(d_flat, b), gather_rows(d_flat, l_a)
    if self.kind == "path_length":
      out = da + db - 2 * dl
    else:
      out = jnp.maximum(da, db) - dl
    return jnp.maximum(out, 0)

  @jax.jit
  def max_cost(self) -> jax.Array:
    topo = self._topo
    if self.kind == "path_length":
      # Double sweep: in a tree metric, the class farthest from any class is
      # an end of a longest path between classes.
      far = jnp.argmax(self.rows(jnp.array(0)))
      return jnp.max(self.rows(far))
    # lca_height: max over nodes l where two class-holding branches meet of
    # (deepest class below l) - d(l).
    w_flat = self._flat_weights()
    d_levels = self._level_depths(w_flat)
    d_flat = jnp.concatenate(d_levels)
    neg = jnp.full((topo.num_flat,), -jnp.inf, d_flat.dtype)
    own = neg.at[jnp.asarray(topo.class_flat)].set(d_flat[jnp.asarray(topo.class_flat)])
    own_levels = _level_split(own, topo)
    deepest: list[Any] = [None] * (topo.max_depth + 1)
    below = None
    for t in range(topo.max_depth, -1, -1):
      m = own_levels[t] if below is None else jnp.maximum(own_levels[t], below)
      deepest[t] = m
      if t > 0:
        below = _segment_max_last(m, topo.parent_local[t], int(topo.sizes[t - 1]))
    h = jnp.concatenate(deepest)
    join = jnp.asarray(topo.join_flat)
    return jnp.maximum(jnp.max(h[join] - d_flat[join]), 0)

  @jax.jit
  def dense(self) -> jax.Array:
    """The ``(K, K)`` matrix, from a per-level comparison of ancestor chains."""
    topo = self._topo
    table = topo.ancestor_table  # (L + 1, K), -1 below each class
    w_flat = self._flat_weights()
    d_flat = jnp.concatenate(self._level_depths(w_flat))
    lca: jax.Array | int = 0
    for t in range(1, topo.max_depth + 1):
      a = table[t]
      same = (a[:, None] == a[None, :]) & (a[:, None] >= 0)
      lca = lca + jnp.where(jnp.asarray(same), w_flat[np.maximum(a, 0)][:, None], 0)
    d = d_flat[topo.class_flat]
    if self.kind == "path_length":
      out = d[:, None] + d[None, :] - 2 * lca
    else:
      out = jnp.maximum(d[:, None], d[None, :]) - lca
    out = jnp.maximum(out, 0)
    return jnp.where(jnp.eye(self.num_classes, dtype=bool), 0, out)

  def check_values(self, fn_name: str) -> None:
    w = self._flat_weights()
    checkify.check(
        jnp.all(jnp.isfinite(w)),
        f"{fn_name}: TreeCost edge_weights has a non-finite entry",
    )
    checkify.check(
        jnp.all(w >= 0),
        f"{fn_name}: TreeCost edge_weights has a negative entry (min {{m}})",
        m=jnp.min(w),
    )


def _cumsum_last(x: jax.Array) -> jax.Array:
  """Inclusive cumulative sum along the last axis (:func:`costjax._reductions.prefix_sum`).

  XLA's CPU cumsum is slower over long rows (``docs/benchmarks.md``, section
  "Structured costs at huge K").
  """
  return _reductions.prefix_sum(x, totals_from_products=True)


# Levels holding classes up to which _sum_max_by_level's matrix products
# (4 B K levels multiply-adds) stay cheaper than a sort and two permutations
# (the crossover: docs/benchmarks.md, section "Structured costs at huge K").
_MAX_LEVELS_BY_MATMUL = 64


def _sum_max_by_level(v: jax.Array, d: jax.Array, onehot: np.ndarray) -> jax.Array:
  """``sum_i v_i max(d_i, d_j)`` when ``d`` is one non-decreasing value per level.

  With ``l(i)`` the level of class ``i``, ``max(d_i, d_j)`` is ``d_i`` above
  ``j``'s level and ``d_j`` below it; on ``j``'s own level ``d_i = d_j``,
  written ``(d_i + d_j) / 2`` so that gradients split between tied depths as
  the dense ``jnp.maximum`` does. So ``d_j (M_<(j) + M_=(j) / 2) + D_>(j) +
  D_=(j) / 2`` with ``M`` the mass of ``v`` and ``D`` that of ``v d`` on the
  levels below, at and above ``j``'s: one ``(..., K) @ (K, 2 n_levels)``
  product with the static level indicator ``onehot`` (``(K, n_levels)``) and
  ``d`` times it, prefix sums over the few levels, and two products back to
  the classes. Nothing ``(..., K)`` is formed but the result.
  """
  hi = jax.lax.Precision.HIGHEST
  ind = jnp.asarray(onehot, v.dtype)
  n = onehot.shape[1]
  sums = jnp.einsum("...k,kl->...l", v, jnp.concatenate([ind, ind * d[:, None]], axis=-1),
                    precision=hi)
  mass, mass_d = sums[..., :n], sums[..., n:]
  below = jnp.cumsum(mass, axis=-1) - mass
  above_d = jnp.sum(mass_d, axis=-1, keepdims=True) - jnp.cumsum(mass_d, axis=-1)
  coef = below + 0.5 * mass
  const = above_d + 0.5 * mass_d
  d = _rank(d, v.ndim)
  if n == 1:  # every class on one level: a broadcast
    return d * coef + const
  # Back to the classes by products with the indicator's transpose: XLA:CPU
  # runs the equivalent gathers from a (..., n_levels) table several times
  # slower (docs/benchmarks.md, section "Structured costs at huge K").
  back = lambda x: jnp.einsum("...l,kl->...k", x, ind, precision=hi)
  return d * back(coef) + back(const)


def _sum_max_sorted(v: jax.Array, d: jax.Array) -> jax.Array:
  """``sum_i v[..., i] max(d_i, d_j)`` for every ``j``, by one sort of ``d``."""
  order = jnp.argsort(d)
  inv = jnp.zeros_like(order).at[order].set(jnp.arange(order.shape[0], dtype=order.dtype))
  ds = _rank(d[order], v.ndim)
  vs = take_last(v, order)
  below = _cumsum_last(vs)  # mass with d_i <= d_j (ties: either side is exact)
  cum_vd = _cumsum_last(vs * ds)
  # The d_i > d_j side. The total is the prefix sum's last entry: a separate
  # row sum fused into the next pass ran as a slow reduction (a row reduction
  # whose body is not a plain product; docs/benchmarks.md, section
  # "Closed-form losses vs optax cross-entropy") and made XLA write d
  # broadcast to (..., K).
  above_d = cum_vd[..., -1:] - cum_vd
  return take_last(ds * below + above_d, inv)


# --------------------------------------------------------------------------- #
# Ordinal.
# --------------------------------------------------------------------------- #


@jax.tree_util.register_pytree_node_class
class OrdinalCost(_cost_ops.CostStructure):
  r"""Ordinal cost ``C[i, j] = |i - j| ** power`` for ``power`` 1 or 2, without the matrix.

  ``q @ C`` costs ``O(K)`` per example: prefix sums for ``power=1``, and for
  ``power=2`` the rank-3 identity ``(i - j)^2 = i^2 - 2 i j + j^2``. Other
  powers raise; build them with :func:`ordinal_cost_matrix`.
  :func:`bayes_decision` skips ``q @ C`` altogether: the decision is the median
  of the predicted distribution for ``power=1`` and the class nearest to its
  mean for ``power=2`` (the lower class on a tie, as ``argmin``).

  Args:
    num_classes: ``K`` (static).
    power: 1 or 2 (static).

  Raises:
    ValueError: if ``power`` is not 1 or 2, or ``num_classes`` is not a
      positive int.

  Examples:
    >>> import jax.numpy as jnp
    >>> import costjax as cj
    >>> cost = cj.OrdinalCost(4, power=2)
    >>> cj.decision_costs(jnp.log(jnp.array([0.5, 0., 0., 0.5])), cost)
    Array([4.5, 2.5, 2.5, 4.5], dtype=float32)
  """

  def __init__(self, num_classes: int, *, power: int = 1, dtype: Any = jnp.float32):
    name = "costjax.OrdinalCost"
    if not isinstance(num_classes, (int, np.integer)) or isinstance(num_classes, bool) or (
        num_classes < 1
    ):
      raise ValueError(f"{name}: num_classes must be a positive int; got {num_classes!r}.")
    if isinstance(power, bool) or power not in (1, 2):
      raise ValueError(
          f"{name}: power must be 1 or 2; got {power!r}. For other powers build the dense "
          "matrix with costjax.ordinal_cost_matrix(num_classes, power=power)."
      )
    self._k = int(num_classes)
    self.power = int(power)
    self._dtype = jnp.dtype(dtype)

  def tree_flatten(self) -> tuple[tuple[Any, ...], Any]:
    return (), (self._k, self.power, self._dtype)

  @classmethod
  def tree_unflatten(cls, aux: Any, children: Any) -> OrdinalCost:
    del children
    obj = object.__new__(cls)
    obj._k, obj.power, obj._dtype = aux
    return obj

  def __repr__(self) -> str:
    return f"OrdinalCost(num_classes={self._k}, power={self.power})"

  @property
  def num_classes(self) -> int:
    return self._k

  def astype(self, dtype: Any) -> OrdinalCost:
    return OrdinalCost(self._k, power=self.power, dtype=dtype)

  def _grid(self, ndim: int = 1, dtype: Any = None) -> jax.Array:
    """The class positions ``0 .. K - 1`` with leading unit axes up to ``ndim``."""
    return _rank(jnp.arange(self._k, dtype=self._dtype if dtype is None else dtype), ndim)

  def _pow(self, x: jax.Array) -> jax.Array:
    return jnp.abs(x) if self.power == 1 else x * x

  def rows(self, idx: jax.Array) -> jax.Array:
    y = jnp.asarray(idx).astype(self._dtype)
    return self._pow(y[..., None] - self._grid(y.ndim + 1))

  def row_block(self, idx: jax.Array, cols: jax.Array) -> jax.Array:
    y = jnp.clip(jnp.asarray(idx), 0, self._k - 1).astype(self._dtype)
    c = _rank(jnp.asarray(cols).astype(self._dtype), y.ndim + 1)
    return self._pow(y[..., None] - c)

  def vecmat(self, v: jax.Array) -> jax.Array:
    j = self._grid(v.ndim, v.dtype)
    if self.power == 2:
      s0 = jnp.sum(v, axis=-1, keepdims=True)
      s1 = jnp.sum(v * j, axis=-1, keepdims=True)
      s2 = jnp.sum(v * j * j, axis=-1, keepdims=True)
      return jnp.maximum(s0 * j * j - 2 * s1 * j + s2, 0)
    # sum_{i<j} v_i (j - i) + sum_{i>j} v_i (i - j), by exclusive prefix sums.
    q = _cumsum_last(v) - v  # sum_{i<j} v_i
    r = _cumsum_last(v * j) - v * j  # sum_{i<j} i v_i
    total_q = jnp.sum(v, axis=-1, keepdims=True)
    total_r = jnp.sum(v * j, axis=-1, keepdims=True)
    above_q = total_q - q - v
    above_r = total_r - r - v * j
    return jnp.maximum(j * q - r + above_r - j * above_q, 0)

  def bayes(self, weights: jax.Array) -> tuple[jax.Array, jax.Array] | None:
    """Bayes decisions without :meth:`vecmat`: the mean (``power=2``) or the median (``power=1``).

    For ``power=1`` the decision is the median of ``weights``: one prefix sum.

    ``g(j) = sum_i w_i |i - j|`` is convex with ``g(j + 1) - g(j) = 2 F(j) - S``
    (``F`` the CDF, ``S`` the total), so its smallest minimiser is the number of
    classes with ``F(j) < S / 2``. That skips :meth:`vecmat`'s second prefix sum
    and the arg-min over ``K``.
    """
    if self.power == 2:
      # g(j) = S j^2 - 2 M j + Q is a parabola with its vertex at the mean M / S:
      # the nearest class, the lower one on a tie at a half.
      j = self._grid(weights.ndim, weights.dtype)
      s0 = jnp.sum(weights, axis=-1)
      s1 = jnp.sum(weights * j, axis=-1)
      s2 = jnp.sum(weights * j * j, axis=-1)
      nearest = jnp.ceil(s1 / s0 - 0.5)
      decision = jnp.clip(nearest, 0, self._k - 1).astype(jnp.int32)
      d = decision.astype(weights.dtype)
      return decision, jnp.maximum(s0 * d * d - 2 * s1 * d + s2, 0)
    cdf = _cumsum_last(weights)
    flat = cdf.reshape(-1, self._k)
    # The first j with F(j) >= S / 2, by binary search: O(log K) per example (a
    # row count of F < S / 2 took most of the time at large K on XLA:CPU;
    # docs/benchmarks.md, section "Structured costs at huge K").
    first = jax.vmap(lambda c: jnp.searchsorted(c, 0.5 * c[-1], side="left"))(flat)
    decision = jnp.minimum(first.reshape(cdf.shape[:-1]), self._k - 1).astype(jnp.int32)
    grid = self._grid(weights.ndim, weights.dtype)
    best = jnp.sum(weights * jnp.abs(grid - decision[..., None].astype(weights.dtype)), axis=-1)
    return decision, best

  def entries(self, i: jax.Array, j: jax.Array) -> jax.Array:
    return self._pow(jnp.asarray(i).astype(self._dtype) - jnp.asarray(j).astype(self._dtype))

  def max_cost(self) -> jax.Array:
    return jnp.asarray(float(self._k - 1) ** self.power, self._dtype)

  def dense(self) -> jax.Array:
    g = self._grid()
    return self._pow(g[:, None] - g[None, :])


# --------------------------------------------------------------------------- #
# Embeddings.
# --------------------------------------------------------------------------- #


@jax.tree_util.register_pytree_node_class
class EmbeddingCost(_cost_ops.CostStructure):
  r"""Squared Euclidean distance between class embeddings, without the matrix.

  ``C[i, j] = scale * sum_d (e[i, d] - e[j, d]) ** 2`` for embeddings ``e`` of
  shape ``(K, D)`` (for example word vectors of class names, or learned
  prototypes). Rows and ``q @ C`` come from
  ``scale * (|e_i|^2 + |e_j|^2 - 2 e_i . e_j)`` in ``O(B K D)`` (two matrix
  products), clamped at 0 against rounding. ``embeddings`` and ``scale`` are
  traced pytree leaves: differentiate with respect to them, or ``jax.vmap``
  over a stack.

  Args:
    embeddings: ``(K, D)`` floating array.
    scale: non-negative scalar (traced).

  Raises:
    ValueError: if ``embeddings`` is not 2-D or ``scale`` is not a scalar, or
      (when concrete) either contains NaN/inf or ``scale`` is negative.

  Examples:
    >>> import jax.numpy as jnp
    >>> import costjax as cj
    >>> cost = cj.EmbeddingCost(jnp.array([[0., 0.], [1., 0.], [3., 4.]]))
    >>> cost.dense()
    Array([[ 0.,  1., 25.],
           [ 1.,  0., 20.],
           [25., 20.,  0.]], dtype=float32)
    >>> cj.expected_cost(jnp.zeros(3), jnp.array(1), cost)
    Array(7., dtype=float32)
  """

  def __init__(self, embeddings: jax.typing.ArrayLike, *, scale: jax.typing.ArrayLike = 1.0):
    name = "costjax.EmbeddingCost"
    e = jnp.asarray(embeddings)
    if e.ndim != 2:
      raise ValueError(
          f"{name}: embeddings must have shape (K, D); got embeddings.shape={e.shape}."
      )
    if e.shape[0] < 1:
      raise ValueError(f"{name}: embeddings has no classes; got shape {e.shape}.")
    if not jnp.issubdtype(e.dtype, jnp.floating):
      e = e.astype(jnp.float32)
    s = jnp.asarray(scale, e.dtype)
    if s.ndim != 0:
      raise ValueError(f"{name}: scale must be a scalar; got shape {s.shape}.")
    self.embeddings = e
    self.scale = s
    if not is_tracer(embeddings) and not is_tracer(scale):
      check_cost_structure(self)

  def tree_flatten(self) -> tuple[tuple[Any, ...], Any]:
    return (self.embeddings, self.scale), None

  @classmethod
  def tree_unflatten(cls, aux: Any, children: Any) -> EmbeddingCost:
    del aux
    obj = object.__new__(cls)
    obj.embeddings, obj.scale = children
    return obj

  def __repr__(self) -> str:
    return f"EmbeddingCost(num_classes={self.num_classes}, dim={self.embeddings.shape[-1]})"

  @property
  def num_classes(self) -> int:
    return self.embeddings.shape[-2]

  def astype(self, dtype: Any) -> EmbeddingCost:
    return jax.tree.map(lambda x: x.astype(dtype), self)

  def _norms(self) -> jax.Array:
    return jnp.sum(self.embeddings * self.embeddings, axis=-1)

  def rows(self, idx: jax.Array) -> jax.Array:
    e = self.embeddings
    y = jnp.clip(jnp.asarray(idx), 0, self.num_classes - 1)
    ey = gather_rows(e, y)  # (..., D)
    n = self._norms()
    out = jnp.sum(ey * ey, axis=-1, keepdims=True) + _rank(n, y.ndim + 1) - 2 * (ey @ e.T)
    # Exact zeros on the diagonal (the expansion leaves rounding there).
    own = _rank(jnp.arange(self.num_classes), y.ndim + 1) == y[..., None]
    return self.scale * jnp.where(own, 0, jnp.maximum(out, 0))

  def row_block(self, idx: jax.Array, cols: jax.Array) -> jax.Array:
    e = self.embeddings
    y = jnp.clip(jnp.asarray(idx), 0, self.num_classes - 1)
    cols = jnp.asarray(cols)
    ey = gather_rows(e, y)  # (..., D)
    ec = jnp.take(e, cols, axis=0, mode="clip")  # (n, D)
    n_c = _rank(jnp.sum(ec * ec, axis=-1), y.ndim + 1)
    out = jnp.sum(ey * ey, axis=-1, keepdims=True) + n_c - 2 * (ey @ ec.T)
    own = _rank(cols, y.ndim + 1) == y[..., None]
    return self.scale * jnp.where(own, 0, jnp.maximum(out, 0))

  def vecmat(self, v: jax.Array) -> jax.Array:
    e = self.embeddings.astype(v.dtype)
    n = jnp.sum(e * e, axis=-1)
    total = jnp.sum(v, axis=-1, keepdims=True)
    n = _rank(n, v.ndim)
    vn = jnp.sum(v * n, axis=-1, keepdims=True)
    out = total * n + vn - 2 * ((v @ e) @ e.T)
    return self.scale.astype(v.dtype) * jnp.maximum(out, 0)

  def entries(self, i: jax.Array, j: jax.Array) -> jax.Array:
    k = self.num_classes
    ei = gather_rows(self.embeddings, jnp.clip(jnp.asarray(i), 0, k - 1))
    ej = gather_rows(self.embeddings, jnp.clip(jnp.asarray(j), 0, k - 1))
    return self.scale * jnp.sum((ei - ej) ** 2, axis=-1)

  def max_cost(self) -> jax.Array:
    # Exact maximum needs all pairs; do it in blocks of rows (O(K^2 D) time,
    # O(K * block) memory).
    e = self.embeddings
    k = self.num_classes
    block = max(1, min(k, 1024))
    pad = (-k) % block
    idx = jnp.concatenate([jnp.arange(k), jnp.zeros(pad, jnp.int32)]).reshape(-1, block)

    def body(m, rows_idx):
      return jnp.maximum(m, jnp.max(self.rows(rows_idx))), None

    m, _ = jax.lax.scan(body, jnp.zeros((), e.dtype), idx)
    return m

  def dense(self) -> jax.Array:
    e = self.embeddings
    diff = e[:, None, :] - e[None, :, :]
    return self.scale * jnp.sum(diff * diff, axis=-1)

  def check_values(self, fn_name: str) -> None:
    checkify.check(
        jnp.all(jnp.isfinite(self.embeddings)),
        f"{fn_name}: EmbeddingCost embeddings has a non-finite entry",
    )
    checkify.check(
        jnp.isfinite(self.scale) & (self.scale >= 0),
        f"{fn_name}: EmbeddingCost scale must be finite and >= 0; got {{s}}",
        s=self.scale,
    )


# --------------------------------------------------------------------------- #
# Eager validation.
# --------------------------------------------------------------------------- #


def check_cost_structure(cost: _cost_ops.CostStructure) -> _cost_ops.CostStructure:
  """Validates the values of a cost structure eagerly and returns it.

  The counterpart of :func:`check_cost_matrix` for :class:`TreeCost`,
  :class:`OrdinalCost` and :class:`EmbeddingCost`: their array leaves (edge
  weights; embeddings and scale) must be finite, and edge weights and scale
  non-negative. Use it on structures whose leaves come from training or files;
  under :func:`checked` the same checks run inside compiled code.

  Args:
    cost: a cost structure with concrete leaves.

  Returns:
    ``cost`` unchanged.

  Raises:
    TypeError: if ``cost`` is not a cost structure or a leaf is traced.
    ValueError: naming the first offending leaf entry.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> import costjax as cj
    >>> tree = cj.TreeCost([3, 3, 4, 5, 5, -1], 3)
    >>> # e.g. edge weights after a bad optimiser step
    >>> bad = jax.tree.map(lambda w: w.at[1].set(jnp.nan), tree)
    >>> cj.check_cost_structure(bad)
    Traceback (most recent call last):
      ...
    ValueError: TreeCost: edge_weights[1] = nan is not finite.
  """
  if not _cost_ops.is_structure(cost):
    raise TypeError(
        "check_cost_structure expects a TreeCost, OrdinalCost or EmbeddingCost; got "
        f"{type(cost).__name__}. Use check_cost_matrix for dense matrices."
    )
  leaves = jax.tree.leaves(cost)
  if any(is_tracer(x) for x in leaves):
    raise TypeError(
        "check_cost_structure validates concrete values and cannot run under jit; "
        "call it once outside the jitted function."
    )
  name = _cost_name(cost)
  fields: list[tuple[str, Any, bool]] = []
  if isinstance(cost, TreeCost):
    w = np.array(cost.edge_weights, np.float64)
    if w.ndim == 1:
      w[cost._topo.levels[0][0]] = 0.0  # the root's entry is ignored
    fields.append(("edge_weights", w, True))
  elif isinstance(cost, EmbeddingCost):
    fields.append(("embeddings", np.asarray(cost.embeddings, np.float64), False))
    fields.append(("scale", np.asarray(cost.scale, np.float64), True))
  for field, arr, nonneg in fields:
    bad = ~np.isfinite(arr)
    if bad.any():
      at = tuple(int(i) for i in np.argwhere(bad)[0])
      where = f"[{', '.join(map(str, at))}]" if at else ""
      raise ValueError(f"{name}: {field}{where} = {arr[at]} is not finite.")
    if nonneg:
      neg = arr < 0
      if neg.any():
        at = tuple(int(i) for i in np.argwhere(neg)[0])
        where = f"[{', '.join(map(str, at))}]" if at else ""
        raise ValueError(f"{name}: {field}{where} = {arr[at]} is negative.")
  return cost
