"""Shared plumbing for losses of the form ``loss(logits, labels, cost_matrix)``."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from costjax import _checks, _reductions, _structures


class Prepared(NamedTuple):
  """Validated, upcast inputs of a loss."""

  logits: jax.Array  # (..., K) in the compute dtype, `where` applied
  labels: jax.Array  # sanitized indices (...,) or probabilities (..., K)
  is_index: bool
  # (K, K) array, a per-example stack (..., K, K) padded to the rank of the
  # batch, or a _structures.CostStructure, in the compute dtype; read it only
  # through the _structures interface (rows / vecmat / entries).
  cost_matrix: Any
  row_mask: jax.Array | None  # per-example mask from `where`
  out_dtype: Any
  num_classes: int


def prepare(
    fn_name: str,
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    cost_matrix: jax.typing.ArrayLike | None = None,
    where: jax.typing.ArrayLike | None = None,
) -> Prepared:
  """Validates and canonicalises the inputs every loss shares."""
  logits = _checks.check_logits(logits, fn_name)
  num_classes = logits.shape[-1]
  labels, is_index = _checks.labels_are_indices(logits, labels, fn_name)
  dtype = _checks.compute_dtype(logits.dtype)
  cost = None
  if cost_matrix is not None:
    cost = _structures.check_cost(cost_matrix, num_classes, fn_name, dtype, logits.shape[:-1],
                                f"logits.shape={logits.shape}")
  if is_index:
    labels = _checks.sanitize_indices(labels, num_classes, fn_name)
    _structures.check_values(cost, None, fn_name)
  else:
    labels = _checks.poison_probs(labels.astype(dtype), fn_name)
    _structures.check_values(cost, labels, fn_name)
  x, row_mask = _checks.prepare_where(logits.astype(dtype), where, fn_name)
  return Prepared(x, labels, is_index, cost, row_mask, logits.dtype, num_classes)


def finish(out: jax.Array, p: Prepared) -> jax.Array:
  """Per-example output: NaN for out-of-range labels, 0 where masked, input dtype.

  The NaN is written explicitly rather than left to propagate from a
  fill-mode gather: compiled XLA reductions such as ``max`` may drop NaNs.
  """
  if p.is_index:
    out = jnp.where(p.labels == p.num_classes, jnp.nan, out)
  return _checks.finalize(out, p.row_mask, p.out_dtype)


def target_cost_rows(p: Prepared, transform: _structures.Transform = None) -> jax.Array:
  """``sum_i q_i f(C[i, :])`` per example: the (transformed) row for integer labels.

  ``transform`` (``f``) is an optional row-wise map of cost rows (see
  :mod:`costjax._structures.interface`). Shape ``(..., K)``. Rows of out-of-range labels
  are unspecified: every loss ends with :func:`finish`, which makes them NaN.
  """
  if p.is_index:
    return _structures.rows(p.cost_matrix, p.labels, transform)
  return _structures.vecmat(p.labels, p.cost_matrix, transform)


class SoftmaxParts(NamedTuple):
  """Pieces of ``softmax(z)`` along the last axis, shared by several losses.

  ``probs = exp_shifted / total`` and ``lse = logsumexp(z)``; one ``exp`` pass.
  """

  exp_shifted: jax.Array  # exp(z - max z), (..., K)
  total: jax.Array  # sum of exp_shifted, (..., 1)
  lse: jax.Array  # log-sum-exp, (..., 1)

  @property
  def probs(self) -> jax.Array:
    return self.exp_shifted / self.total


def softmax_parts(logits: jax.Array, *, matvec_total: bool = False) -> SoftmaxParts:
  """Numerically stable softmax pieces; rows of all ``-inf`` never occur here.

  (``prepare`` replaces fully masked rows with zeros.) The shift is a
  stop-gradient constant, as in ``jax.nn.logsumexp``, so ties at the maximum
  do not split gradients. ``matvec_total``: sum the row as a matrix-vector
  product (``_reductions.matvec_sum``), for callers where XLA:CPU would
  otherwise write ``1 / total`` out as a ``(..., K)`` array.
  """
  m = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
  m = jnp.where(jnp.isfinite(m), m, jnp.zeros_like(m))
  e = jnp.exp(logits - m)
  if matvec_total:
    total = _reductions.matvec_sum(e)[..., None]
  else:
    total = jnp.sum(e, axis=-1, keepdims=True)
  return SoftmaxParts(e, total, m + jnp.log(total))
