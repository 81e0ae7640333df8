"""``TreeCost``: the cost of a class hierarchy, never ``K x K``.

Rows ``C[y, :]`` compare ancestor chains; ``q @ C`` is a bottom-up pass (subtree
masses, by the segment-sum plans of :mod:`costjax._structures.topology`) and a
top-down pass, so ``O(B K depth)`` time and ``O(B K)`` memory. The topology is
static pytree auxiliary data; the edge weights are a traced leaf.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from costjax import _reductions
from costjax._sharding import gather_rows, is_tracer, sharded_like, take_last
from costjax._structures.interface import CostStructure, to_rank
from costjax._structures.topology import Topology, parse_tree, slot_sum

# Largest depth * K for which TreeCost.rows keeps a (depth, K) ancestor table;
# deeper trees use a top-down pass over the levels instead.
_MAX_ANCESTOR_TABLE = 1 << 25


def _level_split(x: jax.Array, topo: Topology) -> list[jax.Array]:
  return [x[..., int(o):int(o + s)] for o, s in zip(topo.offsets, topo.sizes, strict=True)]


def _segment_max_last(x: jax.Array, seg: np.ndarray, num: int) -> jax.Array:
  out = jax.ops.segment_max(
      jnp.moveaxis(x, -1, 0), jnp.asarray(seg), num_segments=num, indices_are_sorted=True
  )
  return jnp.moveaxis(out, 0, -1)


@jax.tree_util.register_pytree_node_class
class TreeCost(CostStructure):
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

  zero_diagonal = True  # C[i, i] = 0 exactly: soft labels skip a row maximum

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
    topo = Topology(np.asarray(parents), num_classes, name)
    n = topo.num_nodes
    if edge_weights is None:
      w = jnp.ones((n,), jnp.float32)
    else:
      if not is_tracer(edge_weights):
        # Values (finite, non-negative) and shape, eagerly, by the shared parser.
        parse_tree(topo.parents, num_classes, np.asarray(edge_weights), name)
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
    d = to_rank(d, d_y.ndim)
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
      same = to_rank(block_table[t], y.ndim + 1) == a_y[..., None]
      lca = jnp.where(same, d_anc[..., None], lca)
    d_y = gather_rows(d, y)[..., None]
    d_c = to_rank(jnp.take(d, cols, mode="clip"), d_y.ndim)
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
      out = jnp.where(to_rank(table[t], y.ndim + 1) == a_y[..., None], d_y[..., None], out)
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
    # Sharded like y (explicit mesh axes): it is concatenated with the levels below.
    lca = [jnp.zeros(y.shape + (1,), w_flat.dtype, **sharded_like(y))]
    for t in range(1, topo.max_depth + 1):
      nodes = to_rank(jnp.arange(int(topo.sizes[t]), dtype=jnp.int32), y.ndim + 1)
      shared = nodes == anc[t][..., None]
      level_w = to_rank(ws[t], y.ndim + 1)
      lca.append(take_last(lca[-1], topo.parent_local[t]) + jnp.where(shared, level_w, 0))
    return self._gather_classes(lca)

  def _subtree_masses(self, v: jax.Array) -> tuple[list[Any], jax.Array]:
    """Subtree sums of ``v`` (``(..., K)``, per class): per level ``1 .. L-1``
    (``(..., n_t)``) and per class in class order (``(..., K)``).

    Batch-major, with no transposes or scatters: fused slot gathers per level
    (:class:`SlotPlan`), bottom-up. The deepest level's masses are the
    classes' own entries of ``v``, read in place.
    """
    topo = self._topo
    depth = topo.max_depth
    mass: list[Any] = [None] * max(depth, 1)
    if depth > 1:
      deepest = topo.slot_plans[depth]
      below = slot_sum(v, deepest, topo.class_at_level[depth])  # type: ignore[arg-type]
    for t in range(depth - 1, 0, -1):
      cls = topo.class_at_level[t]
      has = cls >= 0
      m = below
      if has.any():
        own = take_last(v, np.where(has, cls, 0))
        if not has.all():
          own = jnp.where(to_rank(has, own.ndim), own, 0)
        m = m + own
      mass[t] = m
      below = slot_sum(m, topo.slot_plans[t])  # type: ignore[arg-type]
    m_class = v
    pos = topo.upper_class_pos
    if pos is not None and depth > 1:
      upper = jnp.concatenate(mass[1:], axis=-1)
      m_class = jnp.where(to_rank(pos >= 0, v.ndim), take_last(upper, np.maximum(pos, 0)), v)
    return mass, m_class

  def _top_down(self, mass: list[Any], m_class: jax.Array, w_flat: jax.Array,
                edge_value: Any) -> jax.Array:
    """``T(j) = sum over j's ancestors a (j included) of w_a * edge_value(M(a))``
    for every class ``j`` (``(..., K)``), from :meth:`_subtree_masses`."""
    topo = self._topo
    ws = _level_split(w_flat, topo)
    nd = m_class.ndim
    # Sharded like the masses (explicit mesh axes): it is concatenated with the levels below.
    acc = [jnp.zeros(m_class.shape[:-1] + (1,), m_class.dtype, **sharded_like(m_class))]
    for t in range(1, topo.max_depth):
      acc.append(take_last(acc[-1], topo.parent_local[t])
                 + to_rank(ws[t], nd) * edge_value(mass[t]))
    acc_all = acc[0] if len(acc) == 1 else jnp.concatenate(acc, axis=-1)
    w_class = to_rank(take_last(w_flat, topo.class_flat), nd)
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
    d = to_rank(self._gather_classes(self._level_depths(w_flat)), weights.ndim)
    best = (jnp.take_along_axis(score, decision[..., None], axis=-1)[..., 0]
            + jnp.sum(weights * d, axis=-1))
    return decision, jnp.maximum(best, 0)

  @jax.jit
  def vecmat(self, v: jax.Array) -> jax.Array:
    if self.kind == "lca_height":
      return self._lca_height_costs(v, lambda out: out)
    w_flat = self._flat_weights().astype(v.dtype)
    d = to_rank(self._gather_classes(self._level_depths(w_flat)), v.ndim)
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

  def _leaves_to_check(self) -> Iterable[tuple[str, np.ndarray, bool]]:
    w = np.array(self.edge_weights, np.float64)
    if w.ndim == 1:
      w[self._topo.levels[0][0]] = 0.0  # the root's entry is ignored
    return [("edge_weights", w, True)]


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
  d = to_rank(d, v.ndim)
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
  ds = to_rank(d[order], v.ndim)
  vs = take_last(v, order)
  # Prefix sums as matrix products (XLA:CPU's cumsum is slower over long rows).
  # below: the mass with d_i <= d_j (ties: either side is exact).
  below = _reductions.prefix_sum(vs, totals_from_products=True)
  cum_vd = _reductions.prefix_sum(vs * ds, totals_from_products=True)
  # The d_i > d_j side. The total is the prefix sum's last entry: a separate
  # row sum fused into the next pass ran as a slow reduction (a row reduction
  # whose body is not a plain product; docs/benchmarks.md, section
  # "Closed-form losses vs optax cross-entropy") and made XLA write d
  # broadcast to (..., K).
  above_d = cum_vd[..., -1:] - cum_vd
  return take_last(ds * below + above_d, inv)
