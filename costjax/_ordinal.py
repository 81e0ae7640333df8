"""Closed-form losses for ordinal classes (cost ``|i - j|``)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from costjax import _checks, _common, _reductions


def ordinal_emd(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    power: jax.typing.ArrayLike = 1,
    where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
  r"""Earth mover's distance between ordinal distributions, via their CDFs.

  .. math::

    \ell(z, q) = \sum_{k=0}^{K-1} \left| F_p(k) - F_q(k) \right|^{r},
    \qquad F_p(k) = \sum_{j \le k} p_j,

  with ``p = softmax(z)`` and ``r = power``. With ``power=1`` this is the exact
  1-Wasserstein distance for the ground cost ``|i - j|``, i.e.
  ``expected_cost(logits, labels, ordinal_cost_matrix(K))`` for integer
  labels, in ``O(K)`` with no cost matrix. ``power=2`` is the squared-EMD loss
  of Hou et al. (the ranked probability score); it is *not* the Wasserstein
  distance for the cost ``(i - j)**2``.

  Preconditions (unchecked, a violation gives the output in the last column, never a
  plausible value; under :func:`checked` it raises, naming the function, the argument and
  the first offending index):

  | input | must be | otherwise |
  |---|---|---|
  | ``logits`` | no NaN, no ``+inf`` (``-inf``: probability 0) | NaN or inf (that example) |
  | integer ``labels`` | in ``[0, K)`` | NaN (that example) |
  | probability ``labels`` | ``>= 0``, rows sum to 1 (tolerance [1]) | NaN (that example) |
  | ``power`` | finite, ``> 0`` | NaN (all) |

  [1] ``1e-3`` on each row's sum, ``2e-2`` for 16-bit labels.

  Args:
    logits: unnormalised scores, shape ``(..., K)``; classes in their natural
      order.
    labels: integer indices ``(...)`` or probability vectors ``(..., K)``.
    power: exponent ``r > 0`` applied to the CDF differences (traced).
    where: optional example ``(...)`` or class ``(..., K)`` mask.

  Returns:
    Per-example loss, shape ``(...)``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import costjax as cj
    >>> logits = jnp.array([2., 1., 0., -1.])
    >>> cj.ordinal_emd(logits, jnp.array(2))
    Array(1.5568, dtype=float32)
    >>> cj.ordinal_emd(logits, jnp.array(2), power=2)
    Array(1.1915, dtype=float32)

  References:
    Hou, Yu & Samaras, "Squared Earth Mover's Distance-based Loss for Training
    Deep Neural Networks", arXiv:1611.05916, 2016.
  """
  power = _checks.param(power, lambda v: (v > 0) & (v < jnp.inf), "costjax.ordinal_emd",
                        "power", "finite and > 0")
  p = _common.prepare("costjax.ordinal_emd", logits, labels, None, where)
  position = jax.lax.broadcasted_iota(p.logits.dtype, p.logits.shape, p.logits.ndim - 1)
  if p.is_index and isinstance(power, (int, float)) and power == 1:
    sm = _common.softmax_parts(p.logits)
    # W1 to a point mass is the expected distance sum_j p_j |j - y|: no CDFs.
    label = jnp.where(p.labels == p.num_classes, jnp.nan, p.labels).astype(position.dtype)
    distance = jnp.abs(position - label[..., None])
    out = jnp.sum(sm.exp_shifted * distance, axis=-1) / sm.total[..., 0]
    return _common.finish(out, p)
  if p.is_index:
    # 1[k >= y]; a sanitized bad label (== K) gives 0 here and NaN in finish.
    cdf_q = (position >= p.labels[..., None].astype(position.dtype)).astype(position.dtype)
  else:
    cdf_q = _reductions.prefix_sum(p.labels)
  if isinstance(power, (int, float)) and power in (1, 2):
    out = _emd_static(p.logits, cdf_q, int(power))
  else:
    out = _emd_traced(p.logits, cdf_q, jnp.asarray(power, p.logits.dtype))
  return _common.finish(out, p)


def _cdf_gap(logits: jax.Array, cdf_q: jax.Array):
  """``(p, F_p - F_q)`` with the last, always-zero, column set to 0.

  The softmax total is a matrix-vector product: as a fused sum, XLA:CPU wrote
  ``1 / total`` out as a ``(..., K)`` array for its consumers (a large share
  of the loss's scratch memory, which XLA:CPU faults in on every call once it
  is large: ``docs/benchmarks.md``, section
  "Closed-form losses vs optax cross-entropy").
  """
  sm = _common.softmax_parts(logits, matvec_total=True)
  probs = sm.probs
  diff = _reductions.prefix_sum(sm.exp_shifted) / sm.total - cdf_q
  k = logits.shape[-1]
  last = jax.lax.broadcasted_iota(jnp.int32, (k,), 0) == k - 1
  return probs, jnp.where(last, jnp.zeros_like(diff), diff)


def _phi(diff: jax.Array, power) -> tuple[jax.Array, jax.Array]:
  """``(|d|^r, d/dd |d|^r)``; the derivative is 0 at ``d = 0``."""
  if isinstance(power, int) and power == 2:
    return diff * diff, 2.0 * diff
  if isinstance(power, int) and power == 1:
    return jnp.abs(diff), jnp.sign(diff)
  nonzero = diff != 0
  mag = jnp.where(nonzero, jnp.abs(diff), jnp.ones_like(diff))
  value = jnp.where(nonzero, mag**power, jnp.zeros_like(diff))
  slope = jnp.where(nonzero, power * mag ** (power - 1) * jnp.sign(diff), jnp.zeros_like(diff))
  return value, slope


def _emd_tangent(logits, cdf_q, power, dlogits, dcdf_q):
  """Closed-form JVP of ``sum_k phi(F_p(k) - F_q(k))``.

  With ``g = phi'(F_p - F_q)`` and the suffix sums ``u_i = sum_{k >= i} g_k``
  (``dl/dp_i``), ``dl/dz = p * (u - p . u)`` and ``dl/dF_q = -g``: one more
  prefix sum instead of the transposes of the forward pass.
  """
  probs, diff = _cdf_gap(logits, cdf_q)
  value, slope = _phi(diff, power)
  suffix = jnp.sum(slope, axis=-1, keepdims=True) - _reductions.prefix_sum(slope) + slope
  mean_u = _reductions.matvec_sum(probs * suffix)[..., None]  # as the total above
  tangent: jax.Array | float = 0.0
  if not isinstance(dlogits, SymbolicZero):
    dlogits = jnp.where(jnp.isfinite(logits), dlogits, jnp.zeros_like(dlogits))
    tangent = jnp.sum(probs * (suffix - mean_u) * dlogits, axis=-1)
  if not isinstance(dcdf_q, SymbolicZero):
    tangent = tangent - jnp.sum(slope * dcdf_q, axis=-1)
  return jnp.sum(value, axis=-1), tangent, diff


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _emd_static(logits: jax.Array, cdf_q: jax.Array, power: int) -> jax.Array:
  """``sum_k |F_p(k) - F_q(k)|^power`` for a static ``power`` of 1 or 2."""
  _, diff = _cdf_gap(logits, cdf_q)
  return jnp.sum(_phi(diff, power)[0], axis=-1)


def _emd_static_jvp(power, primals, tangents):
  value, tangent, _ = _emd_tangent(*primals, power, *tangents)  # type: ignore[call-arg]
  if isinstance(tangent, float):
    tangent = jnp.zeros_like(value)
  return value, tangent


_emd_static.defjvp(_emd_static_jvp, symbolic_zeros=True)


@jax.custom_jvp
def _emd_traced(logits: jax.Array, cdf_q: jax.Array, power: jax.Array) -> jax.Array:
  """``sum_k |F_p(k) - F_q(k)|^power`` for a traced ``power``."""
  _, diff = _cdf_gap(logits, cdf_q)
  return jnp.sum(_phi(diff, power)[0], axis=-1)


def _emd_traced_jvp(primals, tangents):
  logits, cdf_q, power = primals
  dlogits, dcdf_q, dpower = tangents
  value, tangent, diff = _emd_tangent(logits, cdf_q, power, dlogits, dcdf_q)
  if isinstance(tangent, float):
    tangent = jnp.zeros_like(value)
  if not isinstance(dpower, SymbolicZero):
    # d/dr |d|^r = |d|^r log|d|, 0 at d = 0.
    nonzero = diff != 0
    mag = jnp.where(nonzero, jnp.abs(diff), jnp.ones_like(diff))
    dvalue = jnp.where(nonzero, mag**power * jnp.log(mag), jnp.zeros_like(diff))
    tangent = tangent + jnp.sum(dvalue, axis=-1) * dpower
  return value, tangent


_emd_traced.defjvp(_emd_traced_jvp, symbolic_zeros=True)
