"""Exact 1-Wasserstein distance for the tree metric of a class hierarchy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from costjax import _checks, _common, _sharding, _structures


def tree_wasserstein(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    parents: jax.typing.ArrayLike,
    *,
    edge_weights: jax.typing.ArrayLike | None = None,
    where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
  r"""Exact Wasserstein-1 loss for the path-length metric of a class tree.

  On a tree metric the optimal transport problem has a closed form (Le et
  al., 2019): every unit of mass that leaves a subtree crosses the edge above
  it, so

  .. math::

    W_T(p, q) = \sum_{n \neq \mathrm{root}} w_n \,
      \bigl| p(\Gamma(n)) - q(\Gamma(n)) \bigr|,

  where ``Gamma(n)`` is the set of classes in the subtree rooted at node
  ``n`` and ``w_n`` the length of the edge from ``n`` to its parent. It
  equals the LP optimum of OT with cost
  ``hierarchy_cost_matrix(parents, K, kind="path_length")``, and for integer
  labels :func:`expected_cost` with that matrix. It costs ``O(K * depth)``
  time and memory per example and never builds a ``K x K`` matrix, so it
  scales to ``K = 100,000`` classes.

  The tree is structure, not data: ``parents`` (and ``edge_weights``) must be
  concrete; they are parsed once in NumPy into a sparse class-to-ancestor
  list, and the subtree masses are one gather and one
  :func:`jax.ops.segment_sum`, so the loss jits, vmaps and differentiates.

  Preconditions (unchecked, a violation gives the output in the last column, never a
  plausible value; under :func:`checked` it raises, naming the function, the argument and
  the first offending index):

  | input | must be | otherwise |
  |---|---|---|
  | ``logits`` | no NaN, no ``+inf`` (``-inf``: probability 0) | NaN or inf (that example) |
  | integer ``labels`` | in ``[0, K)`` | NaN (that example) |
  | probability ``labels`` | ``>= 0``, rows sum to 1 (tolerance [1]) | NaN (that example) |

  [1] ``1e-3`` on each row's sum, ``2e-2`` for 16-bit labels.

  Args:
    logits: unnormalised scores ``(..., K)``.
    labels: integer indices ``(...)`` or probability vectors ``(..., K)``
      (normalised to sum 1 internally).
    parents: integer array ``(N,)`` over the tree's nodes, ``N >= K``; the
      root's parent is ``-1`` and the first ``K`` nodes are the classes in
      class order (they may be internal nodes).
    edge_weights: optional non-negative ``(N,)``; ``edge_weights[n]`` is the
      length of the edge from ``n`` to its parent (default 1; the root's
      entry is ignored). Must be concrete, like ``parents``.
    where: optional example ``(...)`` or class ``(..., K)`` mask.

  Returns:
    Per-example distance, shape ``logits.shape[:-1]``, in the dtype of
    ``logits``. NaN for out-of-range integer labels.

  Raises:
    TypeError: if ``parents`` or ``edge_weights`` is traced.
    ValueError: for a malformed tree (see :func:`hierarchy_cost_matrix`), or a
      tree with fewer nodes than ``logits`` has classes.

  Examples:
    >>> import jax.numpy as jnp
    >>> import costjax as cj
    >>> # classes 0, 1 under node 3; class 2 under node 4; root 5
    >>> parents = jnp.array([3, 3, 4, 5, 5, -1])
    >>> logits = jnp.array([[2., 1., 0.], [0., 0., 3.]])
    >>> cj.tree_wasserstein(logits, jnp.array([0, 0]), parents)
    Array([0.8496, 3.7283], dtype=float32)
    >>> C = cj.hierarchy_cost_matrix(parents, 3)
    >>> cj.expected_cost(logits, jnp.array([0, 0]), C)
    Array([0.8496, 3.7283], dtype=float32)

  References:
    Le, Yamada, Fukumizu & Cuturi, "Tree-Sliced Variants of Wasserstein
    Distances", NeurIPS 2019.
  """
  name = "costjax.tree_wasserstein"
  logits_arr = _checks.check_logits(logits, name)
  num_classes = logits_arr.shape[-1]
  tree = _structures.parse_tree(parents, num_classes, edge_weights, fn_name=name)
  cls, anc, weight = _ancestor_pairs(tree)
  p = _common.prepare(name, logits, labels, None, where)
  probs = jax.nn.softmax(p.logits, axis=-1)
  if p.is_index:
    q = jax.nn.one_hot(p.labels, num_classes, dtype=probs.dtype)
  else:
    q = p.labels / jnp.sum(p.labels, axis=-1, keepdims=True)
  diff = probs - q  # (..., K)
  batch = diff.shape[:-1]
  flat = diff.reshape((-1, num_classes)).T  # (K, B)
  # Subtree mass differences of the nodes that weigh something: (M, B).
  # A scatter-add into zeros sharded like the batch (explicit mesh axes), which
  # jax.ops.segment_sum cannot be told.
  zeros = jnp.zeros((weight.shape[0], flat.shape[1]), flat.dtype,
                    **_sharding.sharded_like(flat))
  mass = zeros.at[anc].add(flat[cls], indices_are_sorted=True, mode="drop")  # anc >= 0
  w = jnp.asarray(weight, diff.dtype)
  out = jnp.sum(w[:, None] * jnp.abs(mass), axis=0).reshape(batch)
  return _common.finish(out, p)


def _ancestor_pairs(tree: _structures.Tree) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Sparse (class, ancestor) incidence restricted to edges of positive weight.

  Returns ``(cls, seg, weight)``: pair ``t`` says class ``cls[t]`` lies in the
  subtree of the node numbered ``seg[t]`` (nodes renumbered ``0..M-1`` over
  the non-root ancestors of classes with a positive edge weight; ``seg`` is
  sorted) and ``weight[m]`` is that node's edge length. ``O(K * depth)``.
  """
  k = tree.num_classes
  cls_list, anc_list = [], []
  cur = np.arange(k)
  alive = cur != tree.root
  while alive.any():
    cls_list.append(np.flatnonzero(alive))
    anc_list.append(cur[alive])
    cur = np.where(alive, tree.parents[np.where(alive, cur, 0)], cur)
    alive = alive & (cur != tree.root)
  if cls_list:
    cls = np.concatenate(cls_list)
    anc = np.concatenate(anc_list)
  else:
    cls = anc = np.zeros(0, np.int64)
  keep = tree.edge_weights[anc] > 0
  cls, anc = cls[keep], anc[keep]
  nodes, seg = np.unique(anc, return_inverse=True)
  order = np.argsort(seg, kind="stable")
  return (
      cls[order].astype(np.int32),
      seg[order].astype(np.int32),
      tree.edge_weights[nodes],
  )
