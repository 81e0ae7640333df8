"""Builders for common cost matrices."""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from costjax import _checks, _structures


def ordinal_cost_matrix(
    num_classes: int, *, power: jax.typing.ArrayLike = 1.0,
    dtype: jax.typing.DTypeLike = jnp.float32,
) -> jax.Array:
  r"""Ordinal cost matrix ``C[i, j] = |i - j| ** power``.

  ``power=1`` is the absolute-error cost (the ground metric of
  :func:`ordinal_emd`); ``power=2`` the squared error behind quadratic kappa.

  Preconditions (unchecked, a violation gives the output in the last column, never a
  plausible value; under :func:`checked` it raises, naming the function, the argument and
  the first offending index):

  | input | must be | otherwise |
  |---|---|---|
  | ``power`` | finite, ``>= 0`` (``0``: the 0-1 cost) | NaN (off the diagonal) |

  Args:
    num_classes: ``K`` (static).
    power: exponent (traced; may be a JAX value).
    dtype: output dtype.

  Returns:
    ``(K, K)`` array with a zero diagonal.

  Examples:
    >>> import costjax as cj
    >>> cj.ordinal_cost_matrix(3, power=2)
    Array([[0., 1., 4.],
           [1., 0., 1.],
           [4., 1., 0.]], dtype=float32)
  """
  if not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
    raise ValueError(
        f"ordinal_cost_matrix: num_classes must be a positive int; got {num_classes!r}."
    )
  k = jnp.arange(num_classes, dtype=dtype)
  dist = jnp.abs(k[:, None] - k[None, :])
  off_diag = dist > 0
  safe = jnp.where(off_diag, dist, jnp.ones_like(dist))
  power = _checks.poison_param(power, lambda v: (v >= 0) & (v < jnp.inf),
                               "costjax.ordinal_cost_matrix", "power", "finite and >= 0", dtype)
  out = jnp.where(off_diag, safe**power, jnp.zeros_like(dist))
  return jnp.where(off_diag & jnp.isnan(power), jnp.nan, out)  # 1 ** nan is 1 in IEEE


def hierarchy_cost_matrix(
    parents: jax.typing.ArrayLike,
    num_classes: int,
    *,
    kind: Literal["path_length", "lca_height"] = "path_length",
    edge_weights: jax.typing.ArrayLike | None = None,
) -> jax.Array:
  r"""Cost matrix from a class hierarchy.

  The hierarchy is a tree over ``N >= K`` nodes given by ``parents`` (the
  root's parent is ``-1``); the first ``K`` nodes are the classes, in class
  order, and may be leaves or internal nodes. ``edge_weights[n]`` is the length
  of the edge from ``n`` to its parent (default 1). With ``d(n)`` the distance
  from node ``n`` to the root and ``l = lca(i, j)``:

  * ``kind="path_length"``: ``C[i, j] = d(i) + d(j) - 2 d(l)``, the length of
    the path between the classes — a tree metric, for which
    :func:`tree_wasserstein` is the exact 1-Wasserstein distance.
  * ``kind="lca_height"``: ``C[i, j] = max(d(i), d(j)) - d(l)``, the height of
    the lowest common ancestor above the deeper class ("mistake severity" of
    Bertinetto et al.).

  Both are symmetric with a zero diagonal. Runs eagerly in NumPy (the tree is
  structure, not data).

  Args:
    parents: integer array of shape ``(N,)``.
    num_classes: ``K``.
    kind: ``"path_length"`` or ``"lca_height"``.
    edge_weights: optional non-negative array of shape ``(N,)``.

  Returns:
    ``(K, K)`` float32 cost matrix.

  Raises:
    ValueError: for a malformed tree (no or several roots, a cycle, an index
      out of range, ``K > N``), bad edge weights, or an unknown ``kind``.

  Examples:
    >>> import costjax as cj
    >>> # classes 0, 1 under node 3; class 2 under node 4; root 5.
    >>> parents = [3, 3, 4, 5, 5, -1]
    >>> cj.hierarchy_cost_matrix(parents, 3)
    Array([[0., 2., 4.],
           [2., 0., 4.],
           [4., 4., 0.]], dtype=float32)
    >>> cj.hierarchy_cost_matrix(parents, 3, kind="lca_height")
    Array([[0., 1., 2.],
           [1., 0., 2.],
           [2., 2., 0.]], dtype=float32)
  """
  name = "costjax.hierarchy_cost_matrix"
  if kind not in ("path_length", "lca_height"):
    raise ValueError(f"{name}: kind must be 'path_length' or 'lca_height'; got {kind!r}.")
  tree = _structures.parse_tree(parents, num_classes, edge_weights, name)
  classes = np.arange(num_classes)
  anc = _structures.ancestor_matrix(tree, classes).astype(np.float64)
  # Distance from the root to lca(i, j) = total weight of the shared ancestors'
  # edges (each ancestor n contributes the edge n -> parent(n); the root has 0).
  lca_depth = (anc * tree.edge_weights) @ anc.T
  d = tree.dist_to_root[:num_classes]
  if kind == "path_length":
    cost = d[:, None] + d[None, :] - 2.0 * lca_depth
  else:
    cost = np.maximum(d[:, None], d[None, :]) - lca_depth
  cost = np.maximum(cost, 0.0)  # rounding
  np.fill_diagonal(cost, 0.0)
  return jnp.asarray(cost, jnp.float32)
