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
without another pass. Its timings against the other kernel and optax's
cross-entropy are in ``docs/benchmarks.md``, section
"Closed-form losses vs optax cross-entropy".

Accuracy is that of the other kernel, with no branch: everything is relative to
the row maximum ``m``. A unique arg-max ``t`` is kept out of the row sums; every
other class, tied maxima included, has ``p_j <= 1/2``, where ``log1p(-p_j)`` is
exact. ``log(1 - p_t) = log R - log S`` with ``R = sum_{k != t} exp(z_k - m)``, a
sum of its own (no ``1 - p`` cancellation). Where the top leads the next logit by
more than 64, ``R`` would lose precision or underflow (logit gaps beyond ~87 in
float32), so that row's exponentials are taken relative to its second-largest
logit instead; ``p_t = 1 - exp(-1e4)`` still gives ``log(1 - p_t) = -1e4`` and a
finite, exact gradient.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from costjax import _reductions


@functools.cache
def block_width(num_classes: int) -> int | None:
  """Block width for the blocked arg-max: a divisor of ``K`` near ``2 sqrt(K)``.

  At least 4 wide, at least two blocks; ``None`` for fewer than 16 classes or
  when ``K`` has no such divisor (a prime, say).
  """
  k = int(num_classes)
  if k < 16:
    return None
  return _reductions.nearest_divisor(k, 4, k // 2, min(max(2.0 * math.sqrt(k), 8.0), 512.0))


def use_dot_sums(logits: jax.Array) -> bool:
  """Whether this kernel runs for these (static) shapes: CPU backend, blockable ``K``.

  Only on the CPU backend, where it was measured (GPU and TPU fusion treats row
  reductions differently).
  """
  return jax.default_backend() == "cpu" and block_width(logits.shape[-1]) is not None


def _row_sum(x: jax.Array) -> jax.Array:
  """``sum(x, -1, keepdims=True)`` as a matrix-vector product (see the module doc)."""
  return _reductions.matvec_sum(x)[..., None]


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
  lanes = jax.lax.broadcast_to_rank(jnp.arange(c, dtype=jnp.int32), block.ndim)
  cols = block * c + lanes
  inside_vals = jnp.take_along_axis(logits, cols, axis=-1)
  inside = jnp.argmax(inside_vals, axis=-1).astype(jnp.int32)[..., None]
  second_inside = jnp.max(jnp.where(lanes == inside, neg_inf, inside_vals),
                          axis=-1, keepdims=True)
  blocks = jax.lax.broadcast_to_rank(jnp.arange(k // c, dtype=jnp.int32), block.ndim)
  second_outside = jnp.max(jnp.where(blocks == block, neg_inf, block_max),
                           axis=-1, keepdims=True)
  return m, block * c + inside, jnp.maximum(second_inside, second_outside)


# A unique maximum that leads the next logit by more than this shifts its row by
# the second-largest logit instead, so the sum below the top stays a normal
# float (exp(-64) ~ 1.6e-28): no branch on underflow is needed.
_GAP_SHIFT = 64.0


class _Rows(NamedTuple):
  """Per-row values (shape ``(..., 1)`` unless noted) and the ``(..., K)`` arrays the JVP reads."""

  value: jax.Array  # (...,) the loss
  is_top: jax.Array  # (..., K) bool: a unique arg-max
  below: jax.Array  # (..., K) exp(z - s), 0 on a unique arg-max (s: the row's shift)
  probs: jax.Array  # (..., K) p = below * exp(s - m) / S, 0 on a unique arg-max
  top_prob: jax.Array  # p_t of a unique arg-max (with its derivative), 0 for tied rows
  inv_rest: jax.Array  # 1 / R, R = sum of below (0 where R = 0): r_k = below_k / R
  log1m_top: jax.Array  # log(1 - p_t) of a unique arg-max, finite (0 otherwise)
  top_is_neg_inf: jax.Array  # bool: a unique arg-max with every other logit -inf
  top_weight: jax.Array  # w_t of a unique arg-max, 0 for tied rows
  odds_sum: jax.Array | None  # V = sum_j w_j p_j / (1 - p_j), without a unique arg-max


def _rows(logits: jax.Array, weights: jax.Array, with_odds: bool) -> _Rows:
  """The loss and what its derivative needs: two or three ``(..., K)`` passes and
  as many matrix-vector products; no branch.

  A unique maximum ``t`` is kept out of the row sums and handled per row; every
  other class, tied maxima included, has ``p <= 1/2`` and enters through
  ``log1p(-p)``.
  """
  c = block_width(logits.shape[-1])
  assert c is not None  # use_dot_sums chose this kernel: K has a block width
  m, top, second = jax.tree.map(jax.lax.stop_gradient, _top_two(logits, c))
  m = jnp.where(jnp.isfinite(m), m, jnp.zeros_like(m))
  # The maxima are the classes with z == m. (A class within rounding of the
  # maximum, exp(z - m) == 1 but z < m, is an ordinary class with p = 1/S <= 1/2.)
  unique = second < m
  far = unique & jnp.isfinite(second) & (m - second > _GAP_SHIFT)
  shift = jnp.where(far, second, m)
  is_top = (logits == m) & unique
  below = jnp.where(is_top, jnp.zeros_like(logits), jnp.exp(logits - shift))
  rest = _row_sum(below)  # R, relative to the shift; it holds the maxima of tied rows

  # exp(z_t - m) is exactly 1, but it carries the derivative of p_t's numerator
  # (m is a constant), which second derivatives need.
  top_e = jnp.where(unique, jnp.exp(jnp.take_along_axis(logits, top, axis=-1) - m), 0.0)
  rest_scale = jnp.exp(shift - m)  # 1, or exp(-gap) (may underflow) for far rows
  total = top_e + rest * rest_scale  # S = sum_k exp(z_k - m) >= 1
  inv_total = 1.0 / total
  scale = rest_scale * inv_total
  top_prob = top_e * inv_total
  has_rest = rest > 0
  safe_rest = jnp.where(has_rest, rest, jnp.ones_like(rest))
  # log(1 - p_t) = log(R exp(s - m)) - log S, without forming 1 - p_t.
  log1m_top = jnp.where(unique & has_rest,
                        jnp.log(safe_rest) + (shift - m) - jnp.log(total), 0.0)
  inv_rest = jnp.where(has_rest, 1.0 / safe_rest, jnp.zeros_like(rest))
  top_weight = jnp.where(unique, jnp.take_along_axis(weights, top, axis=-1), 0.0)

  probs = below * scale  # p off a unique arg-max (0 on it)
  rest_value = _row_sum(weights * jnp.log1p(-probs))
  value = -(rest_value + top_weight * log1m_top)[..., 0]
  top_is_neg_inf = unique & ~has_rest
  # A unique arg-max with probability exactly 1 (every other logit -inf):
  # log(1 - p_t) = -inf, and the loss is inf unless w_t == 0.
  value = jnp.where((top_is_neg_inf & (top_weight > 0))[..., 0], jnp.inf, value)
  odds_sum = _row_sum(weights * probs / (1.0 - probs)) if with_odds else None
  return _Rows(value, is_top, below, probs, top_prob, inv_rest, log1m_top, top_is_neg_inf,
               top_weight, odds_sum)


@jax.custom_jvp
def cdw_dot_sums(logits: jax.Array, weights: jax.Array) -> jax.Array:
  """``-sum_j w_j log(1 - p_j)``, with ``0 * inf = 0`` where ``w_j = 0``.

  ``logits`` and ``weights`` are ``(..., K)`` floats with ``block_width(K)`` set.
  """
  return _rows(logits, weights, with_odds=False).value


@functools.partial(cdw_dot_sums.defjvp, symbolic_zeros=True)
def _cdw_dot_sums_jvp(primals, tangents):
  r"""Closed-form JVP; its transpose is one elementwise pass.

  With ``v_j = w_j p_j / (1 - p_j)``, ``dl/dz_k = v_k - p_k sum_j v_j``; for a
  unique arg-max ``t`` (whose ``v_t`` may overflow) with
  ``V = sum_{j != t} v_j`` and ``r_k = p_k / (1 - p_t) = below_k / R``:
  ``dl/dz_t = p_t (w_t - V)``, ``dl/dz_k = v_k - p_k V - w_t p_t r_k``.
  ``dl/dw_j = -log(1 - p_j)``, 0 where ``w_j = 0``.
  """
  logits, weights = primals
  dlogits, dweights = tangents
  with_logits = not isinstance(dlogits, SymbolicZero)
  r = _rows(logits, weights, with_odds=with_logits)
  tangent = jnp.zeros_like(r.value)
  probs = r.probs
  if with_logits:
    assert r.odds_sum is not None  # with_odds=with_logits
    top_wp = r.top_weight * r.top_prob  # w_t p_t (0 for tied rows)
    off_top = (weights * probs / (1.0 - probs) - probs * r.odds_sum
               - top_wp * (r.below * r.inv_rest))
    grad = jnp.where(r.is_top, top_wp - r.top_prob * r.odds_sum, off_top)
    tangent = tangent + jnp.sum(grad * dlogits, axis=-1)
  if not isinstance(dweights, SymbolicZero):
    top_penalty = jnp.where(r.top_is_neg_inf, jnp.inf, -r.log1m_top)
    penalty = jnp.where(r.is_top, top_penalty, -jnp.log1p(-probs))
    penalty = jnp.where(weights != 0, penalty, jnp.zeros_like(penalty))
    tangent = tangent + jnp.sum(penalty * dweights, axis=-1)
  return r.value, tangent
