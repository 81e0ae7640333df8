"""Class-distance weighted cross-entropy (CDW-CE) for a general cost matrix."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from costjax import _checks, _common


def log1m_softmax(logits: jax.Array) -> jax.Array:
  r"""``log(1 - softmax(logits))`` along the last axis, accurate for any logits.

  ``log(1 - p_j) = LSE_{k != j}(z_k) - LSE(z)``, computed with one ``exp``
  pass. Let ``T`` be the set of maximal logits (value ``m``) and ``m2`` the
  largest logit outside it. Terms outside ``T`` are scaled by ``exp(-m2)``,
  those in ``T`` by ``exp(-m)``, so that a class with ``p_j`` as close to 1 as
  ``1 - exp(-1e4)`` still gets ``log(1 - p_j) = m2 - m + ... = -1e4`` instead of
  ``log(0)``. Gradients are finite wherever the value is (double-``where``
  guards); ``-inf`` logits are allowed.

  Args:
    logits: ``(..., K)`` floating array.

  Returns:
    ``(..., K)`` array of ``log(1 - p_j) <= 0``; ``-inf`` only where
    ``p_j == 1`` exactly (every other logit ``-inf``).
  """
  neg_inf = jnp.full_like(logits, -jnp.inf)
  m = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
  m = jnp.where(jnp.isfinite(m), m, jnp.zeros_like(m))
  in_top = logits == m
  m2 = jax.lax.stop_gradient(jnp.max(jnp.where(in_top, neg_inf, logits), axis=-1, keepdims=True))
  has_rest = jnp.isfinite(m2)
  m2 = jnp.where(has_rest, m2, m)
  g = jnp.exp(logits - jnp.where(in_top, m, m2))
  top = jnp.sum(jnp.where(in_top, g, 0.0), axis=-1, keepdims=True)  # = |T|, with gradient
  rest = jnp.sum(jnp.where(in_top, 0.0, g), axis=-1, keepdims=True)  # in [0, K)
  scale = jnp.exp(m2 - m)  # <= 1
  lse = m + jnp.log(top + rest * scale)
  # j outside T: the other terms include all of T, so the sum is >= 1.
  others = top + (rest - g) * scale
  lse_excl = m + jnp.log(jnp.where(in_top, jnp.ones_like(g), others))
  # j in T with another maximum beside it: the sum is >= 1 again.
  several = jnp.sum(in_top, axis=-1, keepdims=True) > 1
  tied = (top - g) + rest * scale
  lse_tied = m + jnp.log(jnp.where(in_top & several, tied, jnp.ones_like(g)))
  # j the unique maximum: LSE of the rest, relative to m2 (rest >= 1 if any).
  safe_rest = jnp.where(has_rest, rest, jnp.ones_like(rest))
  lse_unique = jnp.where(has_rest, m2 + jnp.log(safe_rest), -jnp.inf)
  lse_excl = jnp.where(in_top, jnp.where(several, lse_tied, lse_unique), lse_excl)
  return lse_excl - lse


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

  Args:
    logits: unnormalised scores, shape ``(..., K)``.
    labels: integer indices ``(...)`` or probability vectors ``(..., K)``.
    cost_matrix: ``(K, K)`` cost matrix, rows true, columns predicted.
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
  p = _common.prepare(name, logits, labels, cost_matrix, where)
  alpha = jnp.asarray(alpha, p.cost_matrix.dtype)
  weights = _common.target_cost_rows(p, _checks.safe_pow(p.cost_matrix, alpha))
  penalty = -log1m_softmax(p.logits)  # >= 0, +inf where p_j == 1
  active = weights != 0  # NaN weights (bad labels) stay active -> NaN loss
  safe_penalty = jnp.where(active, penalty, jnp.zeros_like(penalty))
  terms = jnp.where(active, weights * safe_penalty, jnp.zeros_like(penalty))
  return _common.finish(jnp.sum(terms, axis=-1), p)
