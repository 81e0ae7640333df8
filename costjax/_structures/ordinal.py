"""``OrdinalCost``: ``C[i, j] = |i - j| ** power`` (``power`` 1 or 2) in ``O(K)`` per example."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from costjax import _reductions
from costjax._structures.interface import CostStructure, to_rank


@jax.tree_util.register_pytree_node_class
class OrdinalCost(CostStructure):
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

  zero_diagonal = True  # C[i, i] = 0 exactly: soft labels skip a row maximum

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
    return to_rank(jnp.arange(self._k, dtype=self._dtype if dtype is None else dtype), ndim)

  def _pow(self, x: jax.Array) -> jax.Array:
    return jnp.abs(x) if self.power == 1 else x * x

  def rows(self, idx: jax.Array) -> jax.Array:
    y = jnp.asarray(idx).astype(self._dtype)
    return self._pow(y[..., None] - self._grid(y.ndim + 1))

  def row_block(self, idx: jax.Array, cols: jax.Array) -> jax.Array:
    y = jnp.clip(jnp.asarray(idx), 0, self._k - 1).astype(self._dtype)
    c = to_rank(jnp.asarray(cols).astype(self._dtype), y.ndim + 1)
    return self._pow(y[..., None] - c)

  def vecmat(self, v: jax.Array) -> jax.Array:
    j = self._grid(v.ndim, v.dtype)
    if self.power == 2:
      s0 = jnp.sum(v, axis=-1, keepdims=True)
      s1 = jnp.sum(v * j, axis=-1, keepdims=True)
      s2 = jnp.sum(v * j * j, axis=-1, keepdims=True)
      return jnp.maximum(s0 * j * j - 2 * s1 * j + s2, 0)
    # sum_{i<j} v_i (j - i) + sum_{i>j} v_i (i - j), by exclusive prefix sums.
    q = _reductions.prefix_sum(v, totals_from_products=True) - v  # sum_{i<j} v_i
    r = _reductions.prefix_sum(v * j, totals_from_products=True) - v * j  # sum_{i<j} i v_i
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
    cdf = _reductions.prefix_sum(weights, totals_from_products=True)
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
