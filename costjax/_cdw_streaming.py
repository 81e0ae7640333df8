"""CDW-CE for large ``(..., K)`` batches: row passes only, no ``(..., K)`` temporaries.

:func:`costjax.class_distance_weighted_cross_entropy` uses this kernel when the
logits hold more than ``STREAMING_MIN_ELEMENTS`` entries; smaller batches use
the kernel in ``_cdw_cross_entropy.py``, which keeps a few ``(..., K)`` arrays
and runs fewer passes. Measured on a 2-core XLA:CPU (value and gradient,
B = 4096): K = 100, 2.1 ms against 3.0 ms for this kernel; K = 400, 16 ms against
11 ms; K = 1000, 54 ms against 29 ms (``benchmarks/closed_forms.py``). Rows longer
than ``STREAMING_MAX_CLASSES`` also use the small kernel (see there).

Why: on XLA:CPU, row reductions run as fused library kernels that recompute an
elementwise expression cheaply, but an intermediate that two reductions share,
a broadcast row value that several of them read, or a compare/select inside a
reduced expression is written out as a ``(..., K)`` array, and at large ``B K``
those writes (fresh memory every call) dominate. This kernel computes every
row value with its own pass, gives each pass private copies of the row values
(:func:`_after`), and keeps compares and selects out of reduced expressions.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

# Logits with more entries than this use the streaming kernel ...
STREAMING_MIN_ELEMENTS = 2**20
# ... unless their rows are longer than this: XLA:CPU's fused row reductions
# slow down several-fold per element on rows of ~50,000 classes (B = 256:
# 0.70 s against 0.18 s for the small kernel at K = 50,000; 0.22 s against
# 0.29 s at K = 25,000).
STREAMING_MAX_CLASSES = 2**15


def use_streaming(logits: jax.Array) -> bool:
  """Whether :func:`cdw_streaming` is the faster kernel for these (static) shapes.

  Only on the CPU backend, where it was measured; GPU and TPU fusion handles
  the small kernel's shared intermediates differently.
  """
  return (jax.default_backend() == "cpu"
          and logits.size > STREAMING_MIN_ELEMENTS
          and logits.shape[-1] <= STREAMING_MAX_CLASSES)


def _after(x: jax.Array, *deps: jax.Array) -> jax.Array:
  """``x``, made to depend on ``deps`` (row sums, finite) for XLA's scheduler.

  XLA:CPU materialises an elementwise ``(..., K)`` intermediate that two
  *independent* row reductions share, while it recomputes one inside each
  reduction when they run one after the other. A zero-valued dependency
  (``x + 0 * dep``; XLA does not fold ``0 * y`` for floats) orders the passes,
  and saves one ``(..., K)`` temporary (a fresh allocation per call) each.
  """
  for dep in deps:
    x = x + 0.0 * dep
  return x


class _RowStats(NamedTuple):
  """Per-row pieces of ``log(1 - softmax(z))``; every field has shape ``(..., 1)``.

  Everything is relative to the row maximum ``m``, so logits of 1e4 lose no
  precision (``z - m`` is exact near the maximum).
  """

  m: jax.Array  # max(z) (a stop-gradient constant)
  total: jax.Array  # S = sum_k exp(z_k - m) >= 1
  log_total: jax.Array  # log S = LSE(z) - m
  tied: jax.Array  # 1.0 where the maximum is attained more than once, else 0.0
  top: jax.Array  # log(1 - p_t) of a unique arg-max t, finite (0 if none / -inf)
  top_is_neg_inf: jax.Array  # bool: a unique arg-max with every other logit -inf
  rest: jax.Array  # LSE of the logits below a unique maximum, minus m (0 if none)


def _row_stats(logits: jax.Array) -> _RowStats:
  """Row reductions only: nothing of shape ``(..., K)`` is kept.

  On XLA:CPU every ``(..., K)`` temporary costs a fresh allocation (and its
  page faults) per call, while an extra ``exp`` inside a reduction is nearly
  free; so each reduction recomputes what it needs from the logits and no two
  of them share an elementwise intermediate (which XLA would materialise).

  With ``m = max z``, ``S = sum_k exp(z_k - m)`` and ``R`` the same sum over
  the logits strictly below ``m``, ``S - R`` is the number of maxima (exact:
  every maximum contributes exactly 1). For a unique arg-max ``t``,
  ``log(1 - p_t) = log R - log S`` while ``R`` is a normal number (logit
  gaps up to ~69 in float32); only when some row's ``R`` underflows does a
  ``lax.cond`` take the slow branch (second maximum, another pass), so logits
  of 1e4 stay exact. Under ``vmap`` both branches run (a select), still exact.
  """
  dtype = logits.dtype
  m = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
  m = jnp.where(jnp.isfinite(m), m, jnp.zeros_like(m))
  total = jnp.sum(jnp.exp(logits - m), axis=-1, keepdims=True)  # >= 1
  # sign(m - z): 1 below the maximum, 0 on it (XLA:CPU's fast reductions take
  # arithmetic, sign and min/max, but not compares or selects).
  m_ = _after(m, total)
  rest = jnp.sum(jnp.exp(logits - m_) * jnp.sign(m_ - logits), axis=-1, keepdims=True)
  tiny = jnp.finfo(dtype).tiny * 2.0 ** (jnp.finfo(dtype).nmant + 3)
  # total - rest is the number of maxima (exact up to rounding).
  unique = total - rest < 1.5
  underflow = jnp.any(unique & (rest < tiny))

  # Every row value is finished inside the cond: XLA cannot fuse a conditional's
  # outputs into the (..., K) passes below, so each stays a (..., 1) array
  # instead of being broadcast into a (..., K) temporary.
  def finish(log_rest):
    log_rest = jnp.where(unique, log_rest, 0.0)
    has_rest = jnp.isfinite(log_rest)
    log_rest = jnp.where(has_rest, log_rest, 0.0)
    log_total = jnp.log(total)
    top = jnp.where(unique & has_rest, log_rest - log_total, 0.0)
    tied = jnp.where(unique, 0.0, 1.0).astype(dtype)
    return _RowStats(m, total, log_total, tied, top, ~has_rest, log_rest)

  def fast(operands):
    del operands
    return finish(jnp.log(jnp.where(unique, rest, 1.0)))

  def slow(operands):
    logits, m = operands  # the mask is recomputed: no (..., K) intermediate operand
    below = jnp.where(logits < m, logits, -jnp.inf)
    m2 = jax.lax.stop_gradient(jnp.max(below, axis=-1, keepdims=True))
    has_rest = jnp.isfinite(m2)
    safe_m2 = jnp.where(has_rest, m2, m)
    rest2 = jnp.sum(jnp.exp(below - safe_m2), axis=-1, keepdims=True)
    safe_rest2 = jnp.where(has_rest, rest2, jnp.ones_like(rest2))
    return finish(jnp.where(has_rest, (safe_m2 - m) + jnp.log(safe_rest2), -jnp.inf))

  return jax.lax.cond(underflow, slow, fast, (logits, m))


def _stats_after(s: _RowStats, dep: jax.Array) -> _RowStats:
  """A private copy of the row values for one pass over ``(..., K)`` (see :func:`_after`).

  XLA shares one broadcast of a row value among all its consumers, and a
  shared broadcast is written out as a ``(..., K)`` array; a copy per pass
  keeps every broadcast inside its own fused loop.
  """
  return s._replace(**{f: _after(getattr(s, f), dep) for f in
                       ("m", "total", "log_total", "tied", "top", "rest")})


def _not_top(logits: jax.Array, s: _RowStats) -> jax.Array:
  """``0.0`` on a unique arg-max, else ``1.0`` (elementwise, recomputed per use)."""
  return jnp.maximum(jnp.sign(s.m - logits), s.tied)


def _log1m_probs(logits: jax.Array, s: _RowStats) -> jax.Array:
  """``log(1 - p_j)``, finite stand-in ``0`` where it is ``-inf`` (see ``top_is_neg_inf``).

  Off a unique arg-max ``p_j <= 1/2`` (the maximum contributes 1 to the sum),
  so ``log1p(-p_j)`` is accurate; on it the row's ``top`` is used.
  """
  nt = _not_top(logits, s)
  # (No scalar constants in these (..., K) expressions: XLA:CPU copies each
  # into a (..., K) array when the expression feeds a fast reduction.)
  return jnp.log1p(-nt * jnp.exp(logits - s.m) / s.total) + (s.top - nt * s.top)


@jax.custom_jvp
def cdw_streaming(logits: jax.Array, weights: jax.Array) -> jax.Array:
  """``-sum_j w_j log(1 - p_j)``, with ``0 * inf = 0`` where ``w_j = 0``."""
  return _cdw_value(logits, weights, _row_stats(logits))


def _top_weight(logits: jax.Array, weights: jax.Array, s: _RowStats) -> jax.Array:
  """``w_t`` of a unique arg-max ``t`` (0 for tied rows), shape ``(..., 1)``."""
  return jnp.sum(weights - weights * _not_top(logits, s), axis=-1, keepdims=True)


def _cdw_value(logits: jax.Array, weights: jax.Array, s: _RowStats) -> jax.Array:
  # A private copy of the row values (see _stats_after): the cond's outputs
  # themselves would be broadcast into (..., K) temporaries.
  value = -jnp.sum(weights * _log1m_probs(logits, _stats_after(s, s.log_total)), axis=-1)
  # A unique arg-max with probability exactly 1 (every other logit -inf):
  # log(1 - p_t) = -inf, and the loss is inf unless w_t == 0.
  inf_rows = s.top_is_neg_inf[..., 0]
  positive = jax.lax.cond(jnp.any(inf_rows),
                          lambda _: _top_weight(logits, weights, s)[..., 0] > 0,
                          lambda _: jnp.zeros(inf_rows.shape, bool), None)
  return jnp.where(inf_rows & positive, jnp.inf, value)


@functools.partial(cdw_streaming.defjvp, symbolic_zeros=True)
def _cdw_jvp(primals, tangents):
  r"""Closed-form JVP; its transpose is one fused elementwise pass.

  With ``v_j = w_j p_j / (1 - p_j)``, ``dl/dz_k = v_k - p_k sum_j v_j``. For a
  unique arg-max ``t`` (``v_t`` may overflow) this is rearranged with
  ``V = sum_{j != t} v_j`` and ``r_k = p_k / (1 - p_t) = exp(z_k - LSE_{j != t} z_j)``:
  ``dl/dz_t = p_t (w_t - V)`` and ``dl/dz_k = v_k - p_k V - w_t p_t r_k``. With
  ``n_k`` (0 on a unique arg-max, else 1) both read
  ``dl/dz_k = w_k p_k / (1 - n_k p_k) - p_k V - n_k w_t p_t r_k``, where
  ``p_t = 1 / S`` on a unique arg-max (``exp(z_t - m) = 1``).
  ``dl/dw_j = -log(1 - p_j)``, 0 where ``w_j = 0``.

  The row sums recompute ``p`` from the logits rather than sharing a
  ``(..., K)`` array, and the gradient is an elementwise expression of the
  logits, the weights and row sums, which XLA fuses into its consumer.
  """
  logits, weights = primals
  dlogits, dweights = tangents
  s = _row_stats(logits)
  value = _cdw_value(logits, weights, s)
  tangent = jnp.zeros_like(value)
  if not isinstance(dlogits, SymbolicZero):
    # Each pass gets its own copy of the row values (see _stats_after).
    sv = _stats_after(s, value[..., None])
    nt = _not_top(logits, sv)
    e = jnp.exp(logits - sv.m)
    total_v = jnp.sum(weights * nt * e / (sv.total - nt * e), axis=-1, keepdims=True)
    st = _stats_after(s, total_v)
    # w_t p_t (exp(z_t - m) is 1, but its derivative is needed at second order).
    top_wp = jnp.sum((weights - weights * _not_top(logits, st)) * jnp.exp(logits - st.m),
                     axis=-1, keepdims=True) / st.total
    sg = _stats_after(s, top_wp)
    shifted = logits - sg.m
    nt = _not_top(logits, sg)
    p = jnp.exp(shifted) / sg.total
    r = jnp.exp(jnp.minimum(shifted - sg.rest, 0.0))  # <= 1 off the arg-max
    # Every term is 0 on a -inf logit (p = r = 0): no mask needed.
    grad = weights * p / (1.0 - nt * p) - p * total_v - nt * top_wp * r
    tangent = tangent + jnp.sum(grad * dlogits, axis=-1)
  if not isinstance(dweights, SymbolicZero):
    # (+ 1: a dependency unlike the logit pass's, so the two copies stay apart.)
    sw = _stats_after(s, value[..., None] + 1.0)
    log1m = _log1m_probs(logits, sw)
    penalty = jnp.where(sw.top_is_neg_inf & (_not_top(logits, sw) == 0), -jnp.inf, -log1m)
    penalty = jnp.where(weights != 0, penalty, jnp.zeros_like(penalty))
    tangent = tangent + jnp.sum(penalty * dweights, axis=-1)
  return value, tangent
