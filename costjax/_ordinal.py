"""Closed-form losses for ordinal classes (cost ``|i - j|``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from costjax import _checks, _common


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
  p = _common.prepare("costjax.ordinal_emd", logits, labels, None, where)
  sm = _common.softmax_parts(p.logits)
  position = jax.lax.broadcasted_iota(p.logits.dtype, p.logits.shape, p.logits.ndim - 1)
  if p.is_index and isinstance(power, (int, float)) and power == 1:
    # W1 to a point mass is the expected distance sum_j p_j |j - y|: no CDFs.
    label = jnp.where(p.labels == p.num_classes, jnp.nan, p.labels).astype(position.dtype)
    distance = jnp.abs(position - label[..., None])
    out = jnp.sum(sm.exp_shifted * distance, axis=-1) / sm.total[..., 0]
    return _common.finish(out, p)
  cdf_p = jnp.cumsum(sm.exp_shifted, axis=-1) / sm.total
  if p.is_index:
    # 1[k >= y]; a sanitized bad label (== K) gives NaN.
    label = p.labels[..., None].astype(position.dtype)
    step = (position >= label).astype(cdf_p.dtype)
    cdf_q = jnp.where(p.labels[..., None] == p.num_classes, jnp.nan, step)
  else:
    cdf_q = jnp.cumsum(p.labels, axis=-1)
  diff = jnp.abs(cdf_p - cdf_q)[..., :-1]  # the last CDF difference is 0
  out = jnp.sum(_checks.safe_pow(diff, jnp.asarray(power, diff.dtype)), axis=-1)
  return _common.finish(out, p)

