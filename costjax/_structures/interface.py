"""One interface over dense cost matrices and structured costs (no ``K x K`` matrix).

Every function that takes a ``cost_matrix`` reads it only through the operations
here, so that a dense ``(K, K)`` array and a :class:`CostStructure` (trees,
ordinal, embeddings: the other modules of ``costjax/_structures/``, or a user's
subclass) are interchangeable:

* :func:`check_cost` -- trace-time validation (shape / ``num_classes``) and the
  compute dtype; returns the dense array or the structure.
* :func:`rows` -- ``f(C[idx, :])`` for sanitized integer indices ``idx``.
* :func:`vecmat` -- ``sum_i v_i f(C[i, :])`` for weight vectors ``v`` (probability
  labels, predicted distributions): ``v @ C`` when ``f`` is the identity.
* :func:`entries` -- ``C[i, j]`` elementwise.
* :func:`max_cost`, :func:`dense`, :func:`num_classes`.
* :func:`check_cost_structure` -- eager validation of a structure's leaves, through
  the structure's own hook (:meth:`CostStructure._leaves_to_check`).

A dense cost may also be a stack of per-example matrices (example-dependent
costs): :func:`check_cost` with ``batch_shape`` accepts ``S + (K, K)`` whose
leading axes ``S`` broadcast to the examples' axes, and returns it with ``S``
padded by leading 1s to the rank of ``batch_shape`` (a stack whose axes are all
1 becomes the shared ``(K, K)`` matrix). :func:`rows`, :func:`vecmat` and
:func:`entries` then read example ``b``'s own matrix for example ``b``; a
``(K, K)`` matrix takes the same code paths as before (the shared fast path).
Structures are always shared.

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
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from costjax import _checks, _sharding

Transform = Callable[[jax.Array], jax.Array] | None


class CostStructure(abc.ABC):
  r"""Base class of structured costs: a ``(K, K)`` cost matrix never materialised.

  The extension point of costjax: every function that accepts a
  ``cost_matrix`` also accepts an instance of a subclass, and reads it only
  through the methods below. :class:`TreeCost`, :class:`OrdinalCost` and
  :class:`EmbeddingCost` are subclasses; see the guide "Writing your own cost
  structure" for a complete example, and
  :func:`costjax.testing.check_cost_structure_conformance` for the tests every
  structure should pass.

  **Required** (abstract): :attr:`num_classes` (a static Python int),
  :meth:`dense` (the ``(K, K)`` matrix, for tests and small ``K``), and the two
  primitives :meth:`rows` (``C[idx, :]``) and :meth:`vecmat`
  (``v @ C``). Those alone make a structure work everywhere.

  **Optional fast paths** (defaults built from the primitives):
  :meth:`row_block` (``C[idx, cols]`` for a block of classes: the losses from
  features; the default costs ``O(len(cols) * K)`` per block), :meth:`entries`,
  :meth:`max_cost` (default: the maximum of :meth:`dense`), :meth:`bayes`
  (Bayes decisions without ``v @ C``), :meth:`astype`, :meth:`check_values`
  (checked-mode checks of the leaves), and the class attributes
  :attr:`symmetric` (``True`` by default; set it to ``False`` when
  ``C[i, j] != C[j, i]`` can happen) and :attr:`zero_diagonal` (``False`` by
  default; set it to ``True`` when every ``C[i, i]`` is exactly 0: the soft
  labels ``softmax(-C[i] / T)`` then skip a row maximum, which matters at huge
  ``K``; claiming it falsely gives NaN or wrong targets once ``C[i, i] / T``
  exceeds about 87 in float32).

  **What jit, vmap, grad and sharding require:**

  * Register the subclass as a pytree
    (``@jax.tree_util.register_pytree_node_class`` with ``tree_flatten`` /
    ``tree_unflatten``): arrays that may change between calls (weights,
    embeddings, scales) are leaves; sizes, kinds and NumPy topology are
    auxiliary data, static and hashable. ``tree_unflatten`` must not validate
    or convert its leaves: under ``jax.vmap`` and ``jax.grad`` they are
    tracers or stand-ins.
  * Methods are pure ``jax.numpy`` functions of the leaves and arguments: no
    Python control flow on array values, no host callbacks, no concrete
    values (``float(x)``) of leaves or indices.
  * Methods take arbitrary leading batch axes on ``idx`` / ``v`` and act on
    the last axis only; broadcast explicitly (``jax.lax.broadcast_to_rank``)
    so that code runs under ``jax.numpy_rank_promotion("raise")``. ``jax.vmap``
    over examples then needs nothing more; ``jax.vmap`` over a stack of
    structures works when every leaf has the stacked axis.
  * Index ``K`` marks an invalid label in :meth:`rows`, :meth:`row_block` and
    :meth:`entries`: the values returned for it are unspecified (callers make
    the loss NaN) but it must not raise; clamping with ``jnp.clip`` is enough.
  * Sharding: a batch sharded over devices reaches the methods as sharded
    ``idx`` / ``v``; leaves are replicated. Elementwise and matrix-product
    code needs nothing special; gathers from a leaf indexed by sharded labels
    should go through an indexing that keeps the batch sharding (for example
    ``table.at[idx].get(out_sharding=...)``, as the built-ins do).
  """

  symmetric: bool = True
  zero_diagonal: bool = False

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
    raise (callers mask it to NaN). Required.
    """

  @abc.abstractmethod
  def vecmat(self, v: jax.Array) -> jax.Array:
    """``sum_i v[..., i] C[i, :]``, shape ``v.shape`` (``v @ C``). Required."""

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

  def row_block(self, idx: jax.Array, cols: jax.Array) -> jax.Array:
    """``C[idx[..., None], cols]``: the columns ``cols`` of the rows ``idx``.

    Shape ``idx.shape + cols.shape``. ``cols`` is a 1-D integer array of
    in-range classes (traced: a block of consecutive classes); ``idx`` are
    sanitized indices (``K`` marks an invalid label: its entries are
    unspecified but must not raise). The losses from features
    (:func:`costjax.linear_expected_cost` and its siblings) read costs one
    block of columns at a time through this method, so that no ``B x K``
    array exists.

    The default is built from :meth:`rows`: for a symmetric structure
    ``C[i, j] = C[j, i]``, so it computes the ``len(cols)`` rows of the block's
    classes (``O(len(cols) * K)`` memory, independent of the batch) and reads
    the labels' columns; otherwise it computes the labels' rows
    (``O(idx.size * K)`` memory) and reads the block's columns. Override it
    with a direct formula (the built-in structures do) to make those losses
    ``O(idx.size * len(cols))`` in time and memory.
    """
    k = self.num_classes
    y = jnp.clip(jnp.asarray(idx), 0, k - 1)
    if self.symmetric:
      r = self.rows(cols)  # (n, K): row c is column c
      out = jnp.take(r, y.reshape(-1), axis=1, mode="clip")  # (n, idx.size)
      return out.T.reshape(y.shape + cols.shape)
    return jnp.take(self.rows(y), cols, axis=-1, mode="clip")

  def check_values(self, fn_name: str) -> None:
    """Checked-mode (checkify) checks of the leaves; default none."""
    del fn_name

  def _leaves_to_check(self) -> Iterable[tuple[str, np.ndarray, bool]]:
    """The concrete leaves :func:`costjax.check_cost_structure` validates eagerly.

    ``(name, values, non_negative)`` triples: ``values`` (NumPy, float64) must be
    finite, and ``>= 0`` where ``non_negative``; errors name the first offending
    entry as ``<Class>: <name>[i, ...] = <value> is ...``. Default: none.
    """
    return ()

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


def zero_diagonal(cost: Any) -> bool:
  """Whether ``cost`` is a structure that declares an exactly zero diagonal."""
  return isinstance(cost, CostStructure) and bool(cost.zero_diagonal)


def num_classes(cost: Any, fn_name: str) -> int:
  """``K`` of a dense matrix (or stack ``(..., K, K)``) or a structure.

  ``ValueError`` if the last two axes are not square; :func:`check_cost`
  decides whether leading (per-example) axes are allowed.
  """
  if is_structure(cost):
    return cost.num_classes
  cost = jnp.asarray(cost)
  if cost.ndim < 2 or cost.shape[-1] != cost.shape[-2]:
    raise ValueError(f"{fn_name}: cost_matrix must have shape (K, K); got {cost.shape}.")
  return cost.shape[-1]


def check_cost(
    cost: Any,
    k: int,
    fn_name: str,
    dtype: Any,
    batch_shape: tuple[int, ...] | None = None,
    batch_desc: str = "",
) -> jax.Array | CostStructure:
  """Validates shape against ``K`` classes and casts to the compute ``dtype``.

  With ``batch_shape`` (the examples' axes) a dense stack ``S + (K, K)`` whose
  leading axes broadcast to it is accepted (see the module docstring);
  ``batch_desc`` (``"logits.shape=(4, 3)"``) names the other shape in errors.
  """
  if is_structure(cost):
    if cost.num_classes != k:
      raise ValueError(
          f"{fn_name}: cost_matrix (a {type(cost).__name__}) has num_classes="
          f"{cost.num_classes}, but logits have K = {k} classes (logits.shape[-1])."
      )
    return cost.astype(dtype)
  cost = _checks.check_cost_shape(cost, k, fn_name, batch_shape, batch_desc).astype(dtype)
  cost = _checks.poison_cost(cost, fn_name)
  if cost.ndim == 2:
    return cost
  if all(d == 1 for d in cost.shape[:-2]):
    return cost.reshape(k, k)  # broadcasts to every example: the shared matrix
  assert batch_shape is not None  # check_cost_shape allows leading axes only with it
  return jax.lax.broadcast_to_rank(cost, len(batch_shape) + 2)


def per_example(cost: Any) -> bool:
  """Whether ``cost`` (checked by :func:`check_cost`) is a stack of per-example matrices."""
  return not is_structure(cost) and cost.ndim > 2


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
  if cost.ndim > 2:
    # Example b's row of its own matrix: K entries gathered per example.
    r = jnp.take_along_axis(cost, idx[..., None, None], axis=-2, mode="clip")[..., 0, :]
    return r if transform is None else transform(r)
  if transform is None:
    return _sharding.gather_rows(cost, idx)
  if idx.size < cost.shape[0]:
    # Fewer examples than classes (one example under vmap, say): transform the
    # gathered rows instead of the whole (K, K) table.
    return transform(_sharding.gather_rows(cost, idx))
  return _sharding.gather_rows(transform(cost), idx)


def vecmat(v: jax.Array, cost: Any, transform: Transform = None) -> jax.Array:
  """``sum_i v[..., i] transform(C[i, :])``; shape ``v.shape``."""
  if is_structure(cost):
    if transform is None:
      return cost.vecmat(v)
    return _mixed_rows(v, cost, transform)
  table = cost if transform is None else transform(cost)
  if table.ndim > 2:
    # One matrix per example: a batched vector-matrix product (dot_general
    # with the examples as batch axes; axes of size 1 in the stack broadcast).
    # Faster on XLA:CPU than a fused multiply and sum over the middle axis.
    return jnp.einsum("...i,...ij->...j", v, table)
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
  k = cost.shape[-1]
  if cost.ndim > 2:
    flat = cost.reshape(*cost.shape[:-2], k * k)
    return jnp.take_along_axis(flat, (i * k + j)[..., None], axis=-1, mode="clip")[..., 0]
  return _sharding.gather_rows(cost.reshape(-1), i * k + j)


def max_cost(cost: Any) -> jax.Array:
  if is_structure(cost):
    return cost.max_cost()
  return jnp.max(cost)


def dense(cost: Any) -> jax.Array:
  if is_structure(cost):
    return cost.dense()
  return jnp.asarray(cost)


def to_rank(x: Any, ndim: int) -> jax.Array:
  """``x`` with leading unit axes up to ``ndim``: explicit broadcasting, so the
  structures also run where implicit rank promotion is disabled
  (``jax.numpy_rank_promotion("raise")``)."""
  return jax.lax.broadcast_to_rank(jnp.asarray(x), ndim)


def check_cost_structure(cost: CostStructure) -> CostStructure:
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
  if not is_structure(cost):
    raise TypeError(
        "check_cost_structure expects a TreeCost, OrdinalCost or EmbeddingCost; got "
        f"{type(cost).__name__}. Use check_cost_matrix for dense matrices."
    )
  leaves = jax.tree.leaves(cost)
  if any(_sharding.is_tracer(x) for x in leaves):
    raise TypeError(
        "check_cost_structure validates concrete values and cannot run under jit; "
        "call it once outside the jitted function."
    )
  name = type(cost).__name__
  for field, arr, nonneg in cost._leaves_to_check():
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
