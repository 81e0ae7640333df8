"""CDW-CE on XLA:CPU with every row sum as a matrix-vector product.

:func:`costjax.class_distance_weighted_cross_entropy` uses this kernel on the CPU
backend whenever the number of classes has a block divisor (:func:`block_width`);
otherwise, and on GPU / TPU, the kernel in ``_cdw_cross_entropy.py`` runs.

Why: XLA:CPU fuses the elementwise producers of a row reduction into the
reduction, and runs such fused reductions slowly (a library kernel that is fast
only for ``sum(x)`` and ``sum(x * y)``, with scalar constants in the body written
out as ``(..., K)`` arrays). It never fuses producers into a ``dot``. So each row
sum here is ``x @ ones(K)``: the elementwise terms become parallel loop fusions
that write one array each, and the sums are fast matrix-vector products. The row
maximum and the arg-max come from block maxima (a vectorised ``max`` over
``(..., K / c, c)``, then ``c`` gathered logits per row), which also give the
largest logit other than the arg-max, and with it whether the maximum is unique,
without another pass. Measured on a 2-core XLA:CPU (value and gradient against
optax's integer-label cross-entropy, ``benchmarks/closed_forms.py`` and
``benchmarks/structured.py``): ``256 x 100,000`` 2.5x (the other kernel 6.1x),
``4096 x 1000`` 3.7x (11x), ``4096 x 100`` about 3x (4x).

Accuracy is that of the other kernel: everything is relative to the row maximum
``m``; for every class below the maximum ``p_j <= 1/2`` and ``log1p(-p_j)`` is
exact; for a unique arg-max ``t``, ``log(1 - p_t) = log R - log S`` with
``R = sum_{k != t} exp(z_k - m)`` a sum of its own (no ``1 - p`` cancellation),
and a ``lax.cond`` recomputes ``R`` relative to the second-largest logit when
some row's ``R`` underflows (logit gaps beyond ~87 in float32). Tied maxima and
that underflow take a general (slower) gradient branch; under ``vmap`` with a
batched predicate both branches run, still exact.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

_HIGHEST = jax.lax.Precision.HIGHEST


def block_width(num_classes: int) -> int | None:
  """Block width for the blocked arg-max: a divisor of ``K`` near ``2 sqrt(K)``.

  At least 4 wide, at least two blocks; ``None`` for fewer than 16 classes or
  when ``K`` has no such divisor (a prime, say).
  """
  k = int(num_classes)
  if k < 16:
    return None
  target = min(max(2.0 * math.sqrt(k), 8.0), 512.0)
  divisors = [d for d in range(4, k // 2 + 1) if k % d == 0]
  if not divisors:
    return None
  return min(divisors, key=lambda d: abs(math.log(d / target)))


def use_dot_sums(logits: jax.Array) -> bool:
  """Whether this kernel runs for these (static) shapes: CPU backend, blockable ``K``.

  Only on the CPU backend, where it was measured (GPU and TPU fusion treats row
  reductions differently).
  """
  return jax.default_backend() == "cpu" and block_width(logits.shape[-1]) is not None


def _row_sum(x: jax.Array) -> jax.Array:
  """``sum(x, -1, keepdims=True)`` as a matrix-vector product (see the module doc)."""
  ones = jnp.ones(x.shape[-1], x.dtype)
  return jnp.einsum("...k,k->...", x, ones, precision=_HIGHEST)[..., None]


def _is_max(logits: jax.Array, m: jax.Array) -> jax.Array:
  """The row's maxima, ``z == m`` (a compare: cheap inside XLA:CPU's loop fusions)."""
  return logits == m


def _top_two(logits: jax.Array, c: int):
  """Row maximum, its first position and the largest logit at any other position.

  Block maxima over ``(..., K / c, c)`` (one vectorised pass), the first block
  holding the maximum, and the ``c`` logits of that block; every result has
  shape ``(..., 1)``.
  """
  k = logits.shape[-1]
  neg_inf = jnp.array(-jnp.inf, logits.dtype)
  block_max = jnp.max(logits.reshape(logits.shape[:-1] + (k // c, c)), axis=-1)
  block = jnp.argmax(block_max, axis=-1).astype(jnp.int32)[..., None]
  m = jnp.take_along_axis(block_max, block, axis=-1)
  cols = block * c + jnp.arange(c, dtype=jnp.int32)
  inside_vals = jnp.take_along_axis(logits, cols, axis=-1)
  inside = jnp.argmax(inside_vals, axis=-1).astype(jnp.int32)[..., None]
  second_inside = jnp.max(jnp.where(jnp.arange(c) == inside, neg_inf, inside_vals),
                          axis=-1, keepdims=True)
  second_outside = jnp.max(jnp.where(jnp.arange(k // c) == block, neg_inf, block_max),
                           axis=-1, keepdims=True)
  return m, block * c + inside, jnp.maximum(second_inside, second_outside)


class _Rows(NamedTuple):
  """Per-row values (shape ``(..., 1)`` unless noted) and the one kept ``(..., K)`` array."""

  value: jax.Array  # (...,) the loss
  m: jax.Array  # row maximum (0 where it is not finite)
  top: jax.Array  # first arg-max position (int32)
  below: jax.Array  # (..., K) exp(z - m), 0 on every maximum
  inv_total: jax.Array  # 1 / S, S = sum_k exp(z_k - m) >= 1
  unique: jax.Array  # bool: the maximum is attained once
  log1m_top: jax.Array  # log(1 - p_t) of a unique arg-max, finite (0 otherwise)
  top_is_neg_inf: jax.Array  # bool: a unique arg-max with every other logit -inf
  log_rest: jax.Array  # log R (R: the sum below a unique maximum), 0 if none
  top_weight: jax.Array  # w_t of a unique arg-max, 0 for tied rows
  top_prob: jax.Array  # p_t of a unique arg-max (1 / S, with its derivative)
  general: jax.Array  # bool scalar: some row is tied or its R underflows
  odds_sum: jax.Array | None  # V = sum_{j != t} w_j p_j / (1 - p_j) (unique rows only)


def _rows(logits: jax.Array, weights: jax.Array, with_odds: bool) -> _Rows:
  """The loss and what its derivative needs: three ``(..., K)`` passes, three products."""
  dtype = logits.dtype
  c = block_width(logits.shape[-1])
  m, top, second = jax.tree.map(jax.lax.stop_gradient, _top_two(logits, c))
  m = jnp.where(jnp.isfinite(m), m, jnp.zeros_like(m))
  # The maxima are the classes with z == m. (A class within rounding of the
  # maximum, exp(z - m) == 1 but z < m, is not one: its p = 1 / S <= 1/2.)
  unique = second < m
  below = jnp.where(_is_max(logits, m), jnp.zeros_like(logits), jnp.exp(logits - m))
  rest = _row_sum(below)

  # exp(z_t - m) is exactly 1, but it carries the derivative of p_t's numerator
  # (m is a constant), which second derivatives need.
  top_e = jnp.exp(jnp.take_along_axis(logits, top, axis=-1) - m)

  def tied_counts(_):
    is_max = _is_max(logits, m)
    # exp(z - m) is 1 on the maxima: the count, with its derivative.
    count = _row_sum(jnp.where(is_max, jnp.exp(logits - m), jnp.zeros_like(logits)))
    weight = _row_sum(jnp.where(is_max, weights, jnp.zeros_like(weights)))
    return (jnp.where(unique, top_e, count),
            jnp.where(unique, jnp.take_along_axis(weights, top, axis=-1), weight))

  def unique_counts(_):
    return top_e, jnp.take_along_axis(weights, top, axis=-1)

  # Number of maxima and their total weight: gathers while every row is unique.
  num_max, max_weight = jax.lax.cond(jnp.any(~unique), tied_counts, unique_counts, None)
  total = rest + num_max
  inv_total = 1.0 / total

  tiny = jnp.finfo(dtype).tiny * 2.0 ** (jnp.finfo(dtype).nmant + 3)
  underflow = jnp.any(unique & (rest < tiny))

  def fast(_):
    return jnp.log(jnp.where(unique, rest, jnp.ones_like(rest)))

  def slow(operands):
    logits, m = operands
    others = jnp.where(logits < m, logits, -jnp.inf)
    m2 = jax.lax.stop_gradient(jnp.max(others, axis=-1, keepdims=True))
    has_rest = jnp.isfinite(m2)
    safe_m2 = jnp.where(has_rest, m2, m)
    rest2 = jnp.sum(jnp.exp(others - safe_m2), axis=-1, keepdims=True)
    safe_rest2 = jnp.where(has_rest, rest2, jnp.ones_like(rest2))
    return jnp.where(has_rest, (safe_m2 - m) + jnp.log(safe_rest2), -jnp.inf)

  log_rest = jax.lax.cond(underflow, slow, fast, (logits, m))
  log_rest = jnp.where(unique, log_rest, jnp.zeros_like(log_rest))
  has_rest = jnp.isfinite(log_rest)
  log_rest = jnp.where(has_rest, log_rest, jnp.zeros_like(log_rest))
  log1m_top = jnp.where(unique & has_rest, log_rest + jnp.log(inv_total), 0.0)

  # Classes below the maximum: p_j = below_j / S <= 1/2; every maximum of a tied
  # row has p = 1 / S <= 1/2 and was left out of the row sums.
  rest_value = _row_sum(weights * jnp.log1p(-below * inv_total))
  tied_value = jnp.where(unique, 0.0, max_weight * jnp.log1p(-inv_total))
  top_weight = jnp.where(unique, max_weight, jnp.zeros_like(max_weight))
  value = -(rest_value + tied_value + top_weight * log1m_top)[..., 0]
  top_is_neg_inf = unique & ~has_rest
  # A unique arg-max with probability exactly 1 (every other logit -inf):
  # log(1 - p_t) = -inf, and the loss is inf unless w_t == 0.
  value = jnp.where((top_is_neg_inf & (top_weight > 0))[..., 0], jnp.inf, value)
  odds_sum = None
  if with_odds:
    q = below * inv_total
    odds_sum = _row_sum(weights * q / (1.0 - q))
  return _Rows(value, m, top, below, inv_total, unique, log1m_top, top_is_neg_inf,
               log_rest, top_weight, top_e * inv_total, jnp.any(~unique) | underflow,
               odds_sum)


@jax.custom_jvp
def cdw_dot_sums(logits: jax.Array, weights: jax.Array) -> jax.Array:
  """``-sum_j w_j log(1 - p_j)``, with ``0 * inf = 0`` where ``w_j = 0``.

  ``logits`` and ``weights`` are ``(..., K)`` floats with ``block_width(K)`` set.
  """
  return _rows(logits, weights, with_odds=False).value


def _not_top(logits: jax.Array, r: _Rows) -> jax.Array:
  """``0.0`` on a unique arg-max, else ``1.0``."""
  return jnp.where(_is_max(logits, r.m) & r.unique, 0.0, 1.0).astype(logits.dtype)


def _log1m_probs(logits: jax.Array, r: _Rows) -> tuple[jax.Array, jax.Array]:
  """``log(1 - p_j)`` (finite stand-in 0 where it is ``-inf``) and the not-top mask."""
  e = jnp.exp(logits - r.m)
  not_top = _not_top(logits, r)
  return jnp.log1p(-not_top * e * r.inv_total) + (1.0 - not_top) * r.log1m_top, not_top


@functools.partial(cdw_dot_sums.defjvp, symbolic_zeros=True)
def _cdw_dot_sums_jvp(primals, tangents):
  r"""Closed-form JVP; its transpose is one elementwise pass.

  With ``v_j = w_j p_j / (1 - p_j)``, ``dl/dz_k = v_k - p_k sum_j v_j``; for a
  unique arg-max ``t`` (whose ``v_t`` may overflow) with
  ``V = sum_{j != t} v_j`` and ``r_k = p_k / (1 - p_t) = exp(z_k - m) / R``:
  ``dl/dz_t = p_t (w_t - V)``, ``dl/dz_k = v_k - p_k V - w_t p_t r_k``.
  ``dl/dw_j = -log(1 - p_j)``, 0 where ``w_j = 0``.
  """
  logits, weights = primals
  dlogits, dweights = tangents
  with_logits = not isinstance(dlogits, SymbolicZero)
  r = _rows(logits, weights, with_odds=with_logits)
  tangent = jnp.zeros_like(r.value)
  if with_logits:
    top_wp = r.top_weight * r.top_prob  # w_t p_t

    def unique_rows():
      # Every row has a unique arg-max and a normal rest sum: below_k / R = r_k.
      q = r.below * r.inv_total
      off_top = (weights * q / (1.0 - q) - q * r.odds_sum
                 - top_wp * (r.below * jnp.exp(-r.log_rest)))
      at_top = jnp.arange(logits.shape[-1]) == r.top
      return jnp.where(at_top, top_wp - r.top_prob * r.odds_sum, off_top)

    def any_rows():
      e = jnp.exp(logits - r.m)
      not_top = _not_top(logits, r)
      p = e * r.inv_total
      # V over every class of a tied row (one more pass, in this branch only).
      odds_sum = _row_sum(weights * (not_top * p) / (1.0 - not_top * p))
      ratio = jnp.exp(jnp.minimum(logits - r.m - r.log_rest, 0.0))  # r_k <= 1 off t
      grad = weights * p / (1.0 - not_top * p) - p * odds_sum - not_top * top_wp * ratio
      return jnp.where(jnp.isfinite(logits), grad, jnp.zeros_like(grad))

    grad = jax.lax.cond(r.general, any_rows, unique_rows)
    tangent = tangent + jnp.sum(grad * dlogits, axis=-1)
  if not isinstance(dweights, SymbolicZero):
    log1m, not_top = _log1m_probs(logits, r)
    penalty = jnp.where(r.top_is_neg_inf & (not_top == 0), -jnp.inf, log1m)
    penalty = jnp.where(weights != 0, -penalty, jnp.zeros_like(penalty))
    tangent = tangent + jnp.sum(penalty * dweights, axis=-1)
  return r.value, tangent
