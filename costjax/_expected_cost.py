"""Expected misclassification cost, alone and as a regulariser of cross-entropy."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from costjax import _checks, _common, _reductions


def expected_cost(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    cost_matrix: jax.typing.ArrayLike,
    *,
    where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
  r"""Expected misclassification cost under the predicted distribution.

  The differentiable "distance-matrix loss": the cost the classifier would pay
  on average if it sampled its prediction from ``p = softmax(logits)``.

  .. math::

    \ell(z, q) = \sum_i q_i \sum_j p_j \, C_{ij}, \qquad p = \mathrm{softmax}(z),

  with ``q`` one-hot for integer labels, so that ``ell = sum_j p_j C[y, j]``.
  The gradient is :math:`\partial \ell / \partial z_k = p_k (c_k - \ell)` with
  :math:`c = q^\top C`; it vanishes when the model is confidently wrong, which
  is why the literature pairs it with cross-entropy
  (:func:`cost_regularized_cross_entropy`) or prefers cross-entropy plus
  :func:`bayes_decision`.

  Preconditions (unchecked, a violation gives the output in the last column, never a
  plausible value; under :func:`checked` it raises, naming the function, the argument and
  the first offending index):

  | input | must be | otherwise |
  |---|---|---|
  | ``logits`` | no NaN, no ``+inf`` (``-inf``: probability 0) | NaN or inf (that example) |
  | integer ``labels`` | in ``[0, K)`` | NaN (that example) |
  | probability ``labels`` | ``>= 0``, rows sum to 1 (tolerance [1]) | NaN (that example) |
  | ``cost_matrix`` (dense) | every entry finite and ``>= 0`` | NaN (examples using it) |

  [1] ``1e-3`` on each row's sum, ``2e-2`` for 16-bit labels.

  Args:
    logits: unnormalised scores, shape ``(..., K)``, floating dtype.
    labels: integer class indices of shape ``(...)``, or probability vectors of
      shape ``(..., K)``.
    cost_matrix: ``(K, K)`` array; ``C[i, j]`` is the cost of predicting ``j``
      when the truth is ``i``. Or a stack of per-example matrices whose
      leading axes broadcast to ``logits.shape[:-1]`` (example ``b`` uses its
      own ``C[b]``; same result as ``jax.vmap`` over the examples).
    where: optional mask of shape ``(...)`` (examples) or ``(..., K)``
      (classes removed from the softmax). Masked examples give 0.

  Returns:
    Per-example expected cost, shape ``(...)``, in the dtype of ``logits``.
    NaN for out-of-range integer labels.

  Examples:
    >>> import jax.numpy as jnp
    >>> import costjax as cj
    >>> C = jnp.array([[0., 1., 4., 5.], [1., 0., 3., 8.],
    ...                [4., 3., 0., 2.], [5., 8., 2., 0.]])
    >>> logits = jnp.array([[3., 5., 2.5, 6.], [7., 5.5, 2., 0.]])
    >>> cj.expected_cost(logits, jnp.array([3, 0]), C)
    Array([2.2463, 0.2069], dtype=float32)

  References:
    Galdran et al., "Cost-Sensitive Regularization for Diabetic Retinopathy
    Grading from Eye Fundus Images", MICCAI 2020.
  """
  p = _common.prepare("costjax.expected_cost", logits, labels, cost_matrix, where)
  sm = _common.softmax_parts(p.logits)
  rows = _common.target_cost_rows(p)
  out = _reductions.row_sum(sm.exp_shifted * rows) / sm.total[..., 0]
  return _common.finish(out, p)


def cost_regularized_cross_entropy(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    cost_matrix: jax.typing.ArrayLike,
    *,
    lam: jax.typing.ArrayLike = 1.0,
    where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
  r"""Cross-entropy plus ``lam`` times the expected cost.

  .. math::

    \ell(z, q) = -\sum_j q_j \log p_j + \lambda \sum_i q_i \sum_j p_j C_{ij}.

  Cross-entropy keeps gradients alive when the model is confidently wrong and
  keeps probabilities calibrated; the expected-cost term steers the remaining
  mass towards cheap mistakes. Galdran et al. report gains over either term
  alone; the expected cost alone tends to collapse onto a few classes.

  Preconditions (unchecked, a violation gives the output in the last column, never a
  plausible value; under :func:`checked` it raises, naming the function, the argument and
  the first offending index):

  | input | must be | otherwise |
  |---|---|---|
  | ``logits`` | no NaN, no ``+inf`` (``-inf``: probability 0) | NaN or inf (that example) |
  | integer ``labels`` | in ``[0, K)`` | NaN (that example) |
  | probability ``labels`` | ``>= 0``, rows sum to 1 (tolerance [1]) | NaN (that example) |
  | ``cost_matrix`` (dense) | every entry finite and ``>= 0`` | NaN (examples using it) |
  | ``lam`` | finite, ``>= 0`` | NaN (all) |

  [1] ``1e-3`` on each row's sum, ``2e-2`` for 16-bit labels.

  Args:
    logits: unnormalised scores, shape ``(..., K)``.
    labels: integer indices ``(...)`` or probability vectors ``(..., K)``.
    cost_matrix: ``(K, K)`` cost matrix, rows true, columns predicted, or a
      stack of per-example matrices whose leading axes broadcast to
      ``logits.shape[:-1]`` (example ``b`` uses its own ``C[b]``).
    lam: weight of the expected-cost term (traced; no recompilation when it
      changes).
    where: optional example ``(...)`` or class ``(..., K)`` mask.

  Returns:
    Per-example loss, shape ``(...)``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import costjax as cj
    >>> C = jnp.array([[0., 1.], [10., 0.]])
    >>> cj.cost_regularized_cross_entropy(jnp.array([0., 0.]), jnp.array(1), C, lam=0.1)
    Array(1.1931, dtype=float32)

  References:
    Galdran et al., MICCAI 2020 (see :func:`expected_cost`).
  """
  name = "costjax.cost_regularized_cross_entropy"
  lam = _checks.param(lam, lambda v: (v >= 0) & (v < jnp.inf), name, "lam", "finite and >= 0")
  p = _common.prepare(name, logits, labels, cost_matrix, where)
  sm = _common.softmax_parts(p.logits)
  rows = _common.target_cost_rows(p)
  ec = _reductions.row_sum(sm.exp_shifted * rows) / sm.total[..., 0]
  ce = cross_entropy(p, sm)
  return _common.finish(ce + jnp.asarray(lam, ec.dtype) * ec, p)


def cross_entropy(p: _common.Prepared, sm: _common.SoftmaxParts) -> jax.Array:
  """``-sum q log softmax(z)``; bad integer labels are masked by ``finish``."""
  if p.is_index:
    picked = jnp.take_along_axis(
        p.logits, p.labels[..., None], axis=-1, mode="promise_in_bounds"
    )[..., 0]
    return sm.lse[..., 0] - picked
  return soft_cross_entropy(p.logits, sm.lse, p.labels)


def soft_cross_entropy(logits: jax.Array, lse: jax.Array, targets: jax.Array) -> jax.Array:
  """``-sum_j q_j (z_j - lse)`` with ``0 * (-inf) = 0`` and safe gradients.

  Written as ``lse * sum(q) - sum(q z)`` so no ``log_softmax`` array is
  materialised; exact for targets that do not sum to one.
  """
  nonzero = targets != 0
  safe_logits = jnp.where(nonzero, logits, jnp.zeros_like(logits))
  dot = _reductions.row_sum(jnp.where(nonzero, targets * safe_logits, 0.0))
  return lse[..., 0] * _reductions.row_sum(targets) - dot
