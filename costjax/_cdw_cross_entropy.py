"""Class-distance weighted cross-entropy (CDW-CE) for a general cost matrix."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from costjax import _cdw_dot_sums, _checks, _common, _reductions


@jax.custom_jvp
def log1m_softmax(logits: jax.Array) -> jax.Array:
  r"""``log(1 - softmax(logits))`` along the last axis, accurate for any logits.

  ``log(1 - p_j) = LSE_{k != j}(z_k) - LSE(z)``. With ``m`` the largest logit,
  ``sum_{k != j} exp(z_k - m) >= 1`` for every class but a unique arg-max, so
  one ``exp`` and one ``log`` pass give those entries to within ``K`` ulps;
  for a unique arg-max the sum over the other classes is taken relative to the
  second-largest logit, so ``p_j = 1 - exp(-1e4)`` still gives
  ``log(1 - p_j) = -1e4`` instead of ``log(0)``. The derivative is supplied in
  closed form, ``d log(1 - p_j) = (p_j / (1 - p_j)) (p . dz - dz_j)``, so
  gradients cost one more elementwise pass and are finite wherever the value
  is. ``-inf`` logits (impossible classes) are allowed.

  Preconditions (unchecked, a violation gives the output in the last column; this building
  block emits no checked-mode check of its own, the losses that call it do):

  | input | must be | otherwise |
  |---|---|---|
  | ``logits`` | no NaN, no ``+inf`` (``-inf``: probability 0) | NaN or inf (that example) |

  Args:
    logits: ``(..., K)`` floating array with at least one finite entry per row.

  Returns:
    ``(..., K)`` array of ``log(1 - p_j) <= 0``; ``-inf`` only where
    ``p_j == 1`` exactly (every other logit ``-inf``).

  Examples:
    >>> import jax.numpy as jnp
    >>> import costjax as cj
    >>> cj.log1m_softmax(jnp.array([1e4, 0.0, -jnp.inf]))
    Array([-10000.,      0.,      0.], dtype=float32)
  """
  return _log1m_softmax_parts(logits)[0]


def _log1m_softmax_parts(logits: jax.Array):
  """Returns ``(log(1 - p), lse, in_top, unique, others, lse_rest)``."""
  neg_inf = jnp.full_like(logits, -jnp.inf)
  m = jnp.max(logits, axis=-1, keepdims=True)
  m = jnp.where(jnp.isfinite(m), m, jnp.zeros_like(m))
  in_top = logits == m
  e = jnp.exp(logits - m)  # 1 on the maxima
  total = jnp.sum(e, axis=-1, keepdims=True)  # >= 1
  lse = m + jnp.log(total)
  # Second pass, per row only: the other classes relative to their own max.
  others = jnp.where(in_top, neg_inf, logits)
  m2 = jnp.max(others, axis=-1, keepdims=True)
  has_rest = jnp.isfinite(m2)
  rest = jnp.sum(jnp.exp(others - jnp.where(has_rest, m2, m)), axis=-1, keepdims=True)
  lse_rest = jnp.where(has_rest, m2 + jnp.log(jnp.where(has_rest, rest, 1.0)), -jnp.inf)
  # Every maximum gets one per-row value: LSE of the rest when it is the only
  # maximum, else m + log(total - 1) (another maximum keeps the sum >= 1).
  # (Per-row values and a select on `in_top` alone keep XLA from recomputing
  # row reductions per element, which made an element-wise mask much slower;
  # docs/benchmarks.md, section "Closed-form losses vs optax cross-entropy".)
  unique = jnp.sum(in_top, axis=-1, keepdims=True) == 1
  top_value = jnp.where(unique, lse_rest, m + jnp.log(jnp.maximum(total - 1.0, 1.0)))
  lse_excl = jnp.where(in_top, top_value, m + jnp.log(jnp.maximum(total - e, 1.0)))
  return lse_excl - lse, lse, in_top, unique, others, lse_rest


@log1m_softmax.defjvp
def _log1m_softmax_jvp(primals, tangents):
  """``d log(1 - p_j) = p_j (sum_{k != j} p_k / (1 - p_j) dz_k - dz_j)``.

  For every class but a unique arg-max, ``1 - p_j >= p_max >= 1 / K`` and the
  odds ``p_j / (1 - p_j) <= K - 1`` are safe to form. For the unique arg-max
  the bracket uses the softmax over the other classes directly, so a
  probability within ``exp(-1e4)`` of 1 gives a finite tangent.
  """
  (logits,), (dlogits,) = primals, tangents
  out, lse, in_top, unique, others, lse_rest = _log1m_softmax_parts(logits)
  dlogits = jnp.where(jnp.isfinite(logits), dlogits, 0.0)
  log_p = logits - lse
  p = jnp.exp(log_p)
  p_dot = jnp.sum(p * dlogits, axis=-1, keepdims=True)
  # Odds p_j / (1 - p_j) <= K - 1 except for a unique arg-max; clamp there
  # (that entry is replaced below) so no inf * 0 reaches the tangent.
  odds = jnp.exp(jnp.minimum(log_p - out, 0.0) + jnp.minimum(jnp.maximum(log_p - out, 0.0), 30.0))
  general = odds * (p_dot - dlogits)
  has_rest = jnp.isfinite(lse_rest)
  safe_lse_rest = jnp.where(has_rest, lse_rest, 0.0)
  rest_probs = jnp.exp(others - safe_lse_rest)  # 0 on the arg-max and on -inf logits
  rest_dot = jnp.where(has_rest, jnp.sum(rest_probs * dlogits, axis=-1, keepdims=True), 0.0)
  # The unique arg-max: p (rest . dz - dz) is finite however close p is to 1
  # (and 0 if nothing else is possible: log(1 - p) is then a constant -inf).
  top = jnp.where(has_rest, p * (rest_dot - dlogits), 0.0)
  return out, jnp.where(in_top & unique, top, general)


def class_distance_weighted_cross_entropy(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    cost_matrix: jax.typing.ArrayLike,
    *,
    alpha: jax.typing.ArrayLike = 1.0,
    where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
  r"""Class-distance weighted cross-entropy (CDW-CE).

  .. math::

    \ell(z, y) = -\sum_j C_{yj}^{\alpha} \log(1 - p_j), \qquad p = \mathrm{softmax}(z).

  For probability labels ``q`` the weights are ``w_j = sum_i q_i C[i, j]**alpha``.
  Since ``-log(1 - p) >= p``, CDW-CE is an upper bound on the expected cost
  with ``C**alpha``; unlike the expected cost its gradient does not vanish
  when the model is confidently wrong. The loss scale grows like
  ``max(C)**alpha``: retune the learning rate when ``alpha`` changes (or use an
  adaptive optimiser). ``log(1 - p)`` is computed in log space
  (:func:`log1m_softmax`), so logits of 1e4 give finite values.

  Preconditions (unchecked, a violation gives the output in the last column, never a
  plausible value; under :func:`checked` it raises, naming the function, the argument and
  the first offending index):

  | input | must be | otherwise |
  |---|---|---|
  | ``logits`` | no NaN, no ``+inf`` (``-inf``: probability 0) | NaN or inf (that example) |
  | integer ``labels`` | in ``[0, K)`` | NaN (that example) |
  | probability ``labels`` | ``>= 0``, rows sum to 1 (tolerance [1]) | NaN (that example) |
  | ``cost_matrix`` (dense) | every entry finite and ``>= 0`` | NaN (examples using it) |
  | ``alpha`` | finite, ``>= 0`` | NaN (all) |

  [1] ``1e-3`` on each row's sum, ``2e-2`` for 16-bit labels.

  Args:
    logits: unnormalised scores, shape ``(..., K)``.
    labels: integer indices ``(...)`` or probability vectors ``(..., K)``.
    cost_matrix: ``(K, K)`` cost matrix, rows true, columns predicted, or a
      stack of per-example matrices whose leading axes broadcast to
      ``logits.shape[:-1]`` (example ``b`` uses its own ``C[b]``).
    alpha: exponent applied to the costs (traced), ``alpha > 0``; Polat et
      al. use 5 to 7 with ``C = |i - j|``.
    where: optional example ``(...)`` or class ``(..., K)`` mask.

  Returns:
    Per-example loss, shape ``(...)``; ``inf`` only when a class with
    positive weight has probability exactly 1.

  Examples:
    >>> import jax.numpy as jnp
    >>> import costjax as cj
    >>> C = cj.ordinal_cost_matrix(3)
    >>> cj.class_distance_weighted_cross_entropy(jnp.array([0., 0., 0.]), jnp.array(0), C)
    Array(1.2164, dtype=float32)

  References:
    Polat et al., "Class Distance Weighted Cross-Entropy Loss for Ulcerative
    Colitis Severity Estimation", MIUA 2022.
  """
  name = "costjax.class_distance_weighted_cross_entropy"
  alpha = _checks.param(alpha, lambda v: (v >= 0) & (v < jnp.inf), name, "alpha",
                        "finite and >= 0")
  p = _common.prepare(name, logits, labels, cost_matrix, where)
  if isinstance(alpha, (int, float)) and alpha == 1:
    transform = None  # skip K * K transcendental ops in the common case
  else:
    alpha = jnp.asarray(alpha, p.logits.dtype)
    transform = lambda c: _reductions.safe_pow(c, alpha)
  weights = _common.target_cost_rows(p, transform)
  if _cdw_dot_sums.use_dot_sums(p.logits):
    out = _cdw_dot_sums.cdw_dot_sums(p.logits, weights)
  else:
    out = _cdw(p.logits, weights)
  return _common.finish(out, p)


class _Parts(NamedTuple):
  """Pieces of ``log(1 - softmax(z))`` (see :func:`_cdw_parts`)."""

  probs: jax.Array  # (..., K)
  not_top: jax.Array  # (..., K) 1.0 except 0.0 on a unique arg-max
  log1m_rest: jax.Array  # (..., K) log(1 - p_j) off a unique arg-max, 0 on it
  log1m_top: jax.Array  # (..., 1) log(1 - p_t) of a unique arg-max t (0 if none)
  lse_rest: jax.Array  # (..., 1) LSE of z without a unique arg-max (-inf if none)


def _indicator_not_max(e: jax.Array) -> jax.Array:
  """``1.0`` where ``e < 1``, ``0.0`` where ``e == 1``, for ``e = exp(z - max z)``.

  Exact with arithmetic only (``min(1, (1 - e) 2^{p+1})``): the next float below 1
  is ``1 - 2^-(p+1)``. XLA:CPU runs reductions over arithmetic expressions as
  fast library kernels, but splits off and writes out operands that contain
  compares or selects, so masks here are numbers, not booleans (what XLA:CPU
  does with these losses: ``docs/benchmarks.md``, section
  "Closed-form losses vs optax cross-entropy").
  """
  scale = 2.0 ** (jnp.finfo(e.dtype).nmant + 1)
  return jax.lax.stop_gradient(jnp.minimum(1.0, (1.0 - e) * scale))


def _cdw_parts(logits: jax.Array) -> _Parts:
  """``log(1 - p)`` with one ``exp`` and one ``log1p`` pass in the common case.

  For every class but a unique arg-max ``p_j <= 1/2``, so ``log1p(-p_j)`` is
  accurate. (Classes within rounding of the maximum, ``exp(z_j - m) == 1``,
  count as tied maxima, with ``p_j <= 1/2``.) For a unique arg-max ``t``,
  ``log(1 - p_t) = LSE_{k != t} z_k - LSE z``: with ``m = max z`` the rest sum
  ``R = sum_{k != t} exp(z_k - m)`` gives it as ``m + log R`` while ``R`` is a
  normal number (logit gaps up to ~69 in float32). Only when some row's ``R``
  underflows does a ``lax.cond`` take the slow branch (second maximum, second
  ``exp`` pass), so logits of 1e4 stay exact; under ``vmap`` both branches run
  (a select), still exact.
  """
  dtype = logits.dtype
  m = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
  m = jnp.where(jnp.isfinite(m), m, jnp.zeros_like(m))
  e = jnp.exp(logits - m)
  total = jnp.sum(e, axis=-1, keepdims=True)
  below = _indicator_not_max(e)
  rest = jnp.sum(e * below, axis=-1, keepdims=True)
  num_top = logits.shape[-1] - jnp.sum(below, axis=-1, keepdims=True)  # >= 1
  unique = num_top == 1
  # Tied maxima: every class is "rest"; the row needs no special entry.
  not_top = jnp.where(unique, below, jnp.ones_like(below))
  tiny = jnp.finfo(dtype).tiny * 2.0 ** (jnp.finfo(dtype).nmant + 3)

  def fast(operands):
    del operands
    safe = jnp.where(unique, rest, jnp.ones_like(rest))
    return jnp.where(unique, m + jnp.log(safe), -jnp.inf)

  def slow(operands):
    logits, m, unique = operands  # the mask is recomputed: no (..., K) operand
    below = _indicator_not_max(jnp.exp(logits - m))
    others = jnp.where((below == 1) | ~unique, logits, -jnp.inf)
    m2 = jax.lax.stop_gradient(jnp.max(others, axis=-1, keepdims=True))
    has_rest = jnp.isfinite(m2)
    safe_m2 = jnp.where(has_rest, m2, jnp.zeros_like(m2))
    rest2 = jnp.sum(jnp.exp(others - safe_m2), axis=-1, keepdims=True)
    safe_rest2 = jnp.where(has_rest, rest2, jnp.ones_like(rest2))
    return jnp.where(unique & has_rest, safe_m2 + jnp.log(safe_rest2), -jnp.inf)

  underflow = jnp.any(unique & (rest < tiny))
  lse_rest = jax.lax.cond(underflow, slow, fast, (logits, m, unique))
  lse = m + jnp.log(total)
  log1m_top = jnp.where(unique, lse_rest - lse, jnp.zeros_like(lse))
  probs = e / total
  log1m_rest = jnp.log1p(-probs * not_top)  # 0 on a unique arg-max
  return _Parts(probs, not_top, log1m_rest, log1m_top, lse_rest)


@jax.custom_jvp
def _cdw(logits: jax.Array, weights: jax.Array) -> jax.Array:
  """``-sum_j w_j log(1 - p_j)``, with ``0 * inf = 0`` where ``w_j = 0``."""
  return _cdw_value(weights, _cdw_parts(logits))


def _cdw_value(weights: jax.Array, parts: _Parts) -> jax.Array:
  rest = -jnp.sum(weights * parts.log1m_rest, axis=-1)
  top_weight = jnp.sum(weights * (1.0 - parts.not_top), axis=-1)
  # w_t * log(1 - p_t) is 0 when w_t == 0, even where p_t == 1.
  top = jnp.where(top_weight == 0, 0.0, -top_weight * parts.log1m_top[..., 0])
  return rest + top


@functools.partial(_cdw.defjvp, symbolic_zeros=True)
def _cdw_jvp(primals, tangents):
  r"""Closed-form JVP.

  With ``v_j = w_j p_j / (1 - p_j)``, ``dl/dz_k = v_k - p_k sum_j v_j``. For a
  unique arg-max ``t`` (``v_t`` may overflow) this is rearranged with
  ``V = sum_{j != t} v_j`` and ``r_k = p_k / (1 - p_t) = exp(z_k - LSE_{j != t} z_j)``:
  ``dl/dz_t = p_t (w_t - V)`` and ``dl/dz_k = v_k - p_k V - w_t p_t r_k``.
  ``dl/dw_j = -log(1 - p_j)``, 0 where ``w_j = 0``.
  """
  logits, weights = primals
  dlogits, dweights = tangents
  parts = _cdw_parts(logits)
  value = _cdw_value(weights, parts)
  tangent = jnp.zeros_like(value)
  probs, not_top = parts.probs, parts.not_top
  is_top = 1.0 - not_top
  if not isinstance(dlogits, SymbolicZero):
    rest_probs = probs * not_top  # <= 1/2
    v = weights * rest_probs / (1.0 - rest_probs)
    total_v = jnp.sum(v, axis=-1, keepdims=True)
    top_wp = jnp.sum(weights * probs * is_top, axis=-1, keepdims=True)
    has_rest = jnp.isfinite(parts.lse_rest)
    safe_lse_rest = jnp.where(has_rest, parts.lse_rest, jnp.zeros_like(parts.lse_rest))
    r = not_top * jnp.exp(jnp.minimum(logits - safe_lse_rest, 0.0))
    r = jnp.where(has_rest, r, jnp.zeros_like(r))
    grad = (not_top * (v - probs * total_v - top_wp * r)
            + is_top * probs * (weights - total_v))
    dlogits = jnp.where(jnp.isfinite(logits), dlogits, jnp.zeros_like(dlogits))
    tangent = tangent + jnp.sum(grad * dlogits, axis=-1)
  if not isinstance(dweights, SymbolicZero):
    # (A select, not is_top * log1m_top: that is 0 * -inf = NaN off the arg-max
    # of a row whose only finite logit has probability 1.)
    top_penalty = jnp.where(is_top > 0, parts.log1m_top, jnp.zeros_like(parts.log1m_top))
    penalty = -(parts.log1m_rest + top_penalty)
    penalty = jnp.where(weights != 0, penalty, jnp.zeros_like(penalty))
    tangent = tangent + jnp.sum(penalty * dweights, axis=-1)
  return value, tangent
