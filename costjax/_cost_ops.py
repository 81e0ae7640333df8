"""One interface over dense cost matrices and structured costs (no ``K x K`` matrix).

Every function that takes a ``cost_matrix`` reads it only through the operations
here, so that a dense ``(K, K)`` array and a :class:`CostStructure` (trees,
ordinal, embeddings; see ``costjax/_structures.py``) are interchangeable:

* :func:`check_cost` -- trace-time validation (shape / ``num_classes``) and the
  compute dtype; returns the dense array or the structure.
* :func:`rows` -- ``f(C[idx, :])`` for sanitized integer indices ``idx``.
* :func:`vecmat` -- ``sum_i v_i f(C[i, :])`` for weight vectors ``v`` (probability
  labels, predicted distributions): ``v @ C`` when ``f`` is the identity.
* :func:`entries` -- ``C[i, j]`` elementwise.
* :func:`max_cost`, :func:`dense`, :func:`num_classes`.

``f`` (``transform``) is an optional row-wise map applied to cost rows, such as
``c -> c ** alpha`` (CDW-CE) or ``c -> softmax(-c / T)`` (soft labels). It must
act on the last axis only, so that a structure can apply it to rows it computes
on the fly. Dense matrices apply it once to the whole table when that is cheaper.

All structured costs shipped with costjax are symmetric (``C[i, j] = C[j, i]``),
so their row and column operations coincide; a structure that is not symmetric
must say so through :attr:`CostStructure.symmetric`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from costjax import _checks

Transform = Callable[[jax.Array], jax.Array] | None

# Largest K for which sinkhorn_loss densifies a structure.
SINKHORN_MAX_DENSE_CLASSES = 4096


class CostStructure(abc.ABC):
  """Base class of structured costs: a ``(K, K)`` cost matrix never materialised.

  Subclasses are JAX pytrees (array leaves traced, sizes and kinds static).
  ``rows`` and ``vecmat`` are the two primitives every costjax function uses;
  the defaults of the others are built from them.
  """

  symmetric: bool = True

  @property
  @abc.abstractmethod
  def num_classes(self) -> int:
    """``K`` (static)."""

  @abc.abstractmethod
  def dense(self) -> jax.Array:
    """The ``(K, K)`` matrix (for tests and small ``K``)."""

  @abc.abstractmethod
  def rows(self, idx: jax.Array) -> jax.Array:
    """``C[idx, :]``, shape ``idx.shape + (K,)``, for indices in ``[0, K]``.

    Index ``K`` marks an invalid label: its row is unspecified but must not
    raise (callers mask it to NaN).
    """

  @abc.abstractmethod
  def vecmat(self, v: jax.Array) -> jax.Array:
    """``sum_i v[..., i] C[i, :]``, shape ``v.shape``."""

  def astype(self, dtype: Any) -> CostStructure:
    """The structure with floating leaves cast to ``dtype`` (default: unchanged)."""
    del dtype
    return self

  def max_cost(self) -> jax.Array:
    """``max_ij C[i, j]``."""
    return jnp.max(self.dense())

  def entries(self, i: jax.Array, j: jax.Array) -> jax.Array:
    """``C[i, j]`` elementwise for sanitized indices (``K`` marks invalid)."""
    k = self.num_classes
    r = self.rows(i)
    jj = jnp.clip(j, 0, k - 1)
    return jnp.take_along_axis(r, jj[..., None], axis=-1)[..., 0]

  def check_values(self, fn_name: str) -> None:
    """Checked-mode (checkify) checks of the leaves; default none."""
    del fn_name

  def bayes(self, weights: jax.Array) -> tuple[jax.Array, jax.Array] | None:
    """``(argmin_j (weights @ C)_j, min_j (weights @ C)_j)`` when the structure
    has a shortcut; ``None`` (the default) makes callers use :meth:`vecmat`.

    ``weights`` are non-negative and proportional to the posterior along the
    last axis (rows need not sum to one); ties go to the lowest class.
    """
    del weights
    return None


def is_structure(cost: Any) -> bool:
  return isinstance(cost, CostStructure)


def num_classes(cost: Any, fn_name: str) -> int:
  """``K`` of a dense matrix or a structure; ``ValueError`` if not square 2-D."""
  if is_structure(cost):
    return cost.num_classes
  cost = jnp.asarray(cost)
  if cost.ndim != 2 or cost.shape[0] != cost.shape[1]:
    raise ValueError(f"{fn_name}: cost_matrix must have shape (K, K); got {cost.shape}.")
  return cost.shape[0]


def check_cost(cost: Any, k: int, fn_name: str, dtype: Any) -> jax.Array | CostStructure:
  """Validates shape against ``K`` classes and casts to the compute ``dtype``."""
  if is_structure(cost):
    if cost.num_classes != k:
      raise ValueError(
          f"{fn_name}: cost_matrix (a {type(cost).__name__}) has num_classes="
          f"{cost.num_classes}, but logits have K = {k} classes (logits.shape[-1])."
      )
    return cost.astype(dtype)
  return _checks.poison_cost(_checks.check_cost_shape(cost, k, fn_name).astype(dtype), fn_name)


def check_values(cost: Any, probs: jax.Array | None, fn_name: str) -> None:
  """Checked-mode value checks (no-op outside :func:`costjax.checks_enabled`)."""
  if is_structure(cost):
    if _checks.checks_on():
      cost.check_values(fn_name)
    _checks.maybe_check_values(None, probs, fn_name)
  else:
    _checks.maybe_check_values(cost, probs, fn_name)


def rows(cost: Any, idx: jax.Array, transform: Transform = None) -> jax.Array:
  """``transform(C[idx, :])`` for sanitized indices; shape ``idx.shape + (K,)``."""
  if is_structure(cost):
    r = cost.rows(idx)
    return r if transform is None else transform(r)
  if transform is None:
    return _checks.gather_rows(cost, idx)
  if idx.size < cost.shape[0]:
    # Fewer examples than classes (one example under vmap, say): transform the
    # gathered rows instead of the whole (K, K) table.
    return transform(_checks.gather_rows(cost, idx))
  return _checks.gather_rows(transform(cost), idx)


def vecmat(v: jax.Array, cost: Any, transform: Transform = None) -> jax.Array:
  """``sum_i v[..., i] transform(C[i, :])``; shape ``v.shape``."""
  if is_structure(cost):
    if transform is None:
      return cost.vecmat(v)
    return _mixed_rows(v, cost, transform)
  table = cost if transform is None else transform(cost)
  return v @ table


def _mixed_rows(v: jax.Array, cost: CostStructure, transform: Callable) -> jax.Array:
  """``sum_i v_i f(C[i, :])`` without a ``K x K`` table: a scan over classes.

  ``O(B K^2)`` time but ``O(B K)`` memory: a nonlinear map of the rows does not
  commute with the structure's fast ``vecmat``. Used only for probability
  labels with a nonlinear row transform.
  """
  k = cost.num_classes

  def body(acc, i):
    row = transform(cost.rows(i))  # (K,)
    return acc + v[..., i, None] * jax.lax.broadcast_to_rank(row, v.ndim), None

  acc0 = jnp.zeros(v.shape, jnp.result_type(v.dtype, jnp.float32))
  acc, _ = jax.lax.scan(body, acc0, jnp.arange(k))
  return acc.astype(v.dtype)


def entries(cost: Any, i: jax.Array, j: jax.Array) -> jax.Array:
  """``C[i, j]`` elementwise for sanitized indices (``K`` marks invalid, unspecified)."""
  if is_structure(cost):
    return cost.entries(i, j)
  k = cost.shape[0]
  return _checks.gather_rows(cost.reshape(-1), i * k + j)


def max_cost(cost: Any) -> jax.Array:
  if is_structure(cost):
    return cost.max_cost()
  return jnp.max(cost)


def dense(cost: Any) -> jax.Array:
  if is_structure(cost):
    return cost.dense()
  return jnp.asarray(cost)


def dense_for_sinkhorn(cost: Any, fn_name: str) -> Any:
  """A structure as its dense matrix while ``K <= 4096``; dense input unchanged."""
  if not is_structure(cost):
    return cost
  if cost.num_classes > SINKHORN_MAX_DENSE_CLASSES:
    raise ValueError(
        f"{fn_name}: a cost structure with K = {cost.num_classes} classes would be "
        f"densified to a {cost.num_classes} x {cost.num_classes} matrix (the limit is "
        f"K <= {SINKHORN_MAX_DENSE_CLASSES}). For tree costs use costjax.tree_wasserstein, "
        "the exact W1 in O(K * depth); otherwise expected_cost or a closed form."
    )
  return cost.dense()
