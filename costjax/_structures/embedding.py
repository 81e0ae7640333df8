"""``EmbeddingCost``: squared Euclidean distances between class embeddings, in ``O(K D)``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from costjax._sharding import gather_rows, is_tracer
from costjax._structures.interface import CostStructure, check_cost_structure, to_rank


@jax.tree_util.register_pytree_node_class
class EmbeddingCost(CostStructure):
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

  zero_diagonal = True  # C[i, i] = 0 exactly: soft labels skip a row maximum

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
    out = jnp.sum(ey * ey, axis=-1, keepdims=True) + to_rank(n, y.ndim + 1) - 2 * (ey @ e.T)
    # Exact zeros on the diagonal (the expansion leaves rounding there).
    own = to_rank(jnp.arange(self.num_classes), y.ndim + 1) == y[..., None]
    return self.scale * jnp.where(own, 0, jnp.maximum(out, 0))

  def row_block(self, idx: jax.Array, cols: jax.Array) -> jax.Array:
    e = self.embeddings
    y = jnp.clip(jnp.asarray(idx), 0, self.num_classes - 1)
    cols = jnp.asarray(cols)
    ey = gather_rows(e, y)  # (..., D)
    ec = jnp.take(e, cols, axis=0, mode="clip")  # (n, D)
    n_c = to_rank(jnp.sum(ec * ec, axis=-1), y.ndim + 1)
    out = jnp.sum(ey * ey, axis=-1, keepdims=True) + n_c - 2 * (ey @ ec.T)
    own = to_rank(cols, y.ndim + 1) == y[..., None]
    return self.scale * jnp.where(own, 0, jnp.maximum(out, 0))

  def vecmat(self, v: jax.Array) -> jax.Array:
    e = self.embeddings.astype(v.dtype)
    n = jnp.sum(e * e, axis=-1)
    total = jnp.sum(v, axis=-1, keepdims=True)
    n = to_rank(n, v.ndim)
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

  def _leaves_to_check(self) -> Iterable[tuple[str, np.ndarray, bool]]:
    return [("embeddings", np.asarray(self.embeddings, np.float64), False),
            ("scale", np.asarray(self.scale, np.float64), True)]
