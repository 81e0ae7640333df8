"""Expected misclassification cost, alone and as a regulariser of cross-entropy."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from costjax import _checks, _common


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

  Args:
    logits: unnormalised scores, shape ``(..., K)``, floating dtype.
    labels: integer class indices of shape ``(...)``, or probability vectors of
      shape ``(..., K)``.
    cost_matrix: ``(K, K)`` array; ``C[i, j]`` is the cost of predicting ``j``
      when the truth is ``i``.
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
  probs = jax.nn.softmax(p.logits, axis=-1)
  rows = _common.target_cost_rows(p)
  out = jnp.sum(probs * rows, axis=-1)
  return _checks.finalize(out, p.row_mask, p.out_dtype)


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

  Args:
    logits: unnormalised scores, shape ``(..., K)``.
    labels: integer indices ``(...)`` or probability vectors ``(..., K)``.
    cost_matrix: ``(K, K)`` cost matrix, rows true, columns predicted.
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
  p = _common.prepare(name, logits, labels, cost_matrix, where)
  log_probs = jax.nn.log_softmax(p.logits, axis=-1)
  probs = jnp.exp(log_probs)
  rows = _common.target_cost_rows(p)
  ec = jnp.sum(probs * rows, axis=-1)
  ce = _cross_entropy_from_log_probs(log_probs, p)
  return _checks.finalize(ce + jnp.asarray(lam, ec.dtype) * ec, p.row_mask, p.out_dtype)


def _cross_entropy_from_log_probs(log_probs: jax.Array, p: _common.Prepared) -> jax.Array:
  """``-sum q log p`` with 0 log 0 = 0; NaN for out-of-range integer labels."""
  if p.is_index:
    picked = jnp.take_along_axis(
        log_probs, p.labels[..., None], axis=-1, mode="fill", fill_value=jnp.nan
    )[..., 0]
    return -picked
  return soft_cross_entropy(log_probs, p.labels)


def soft_cross_entropy(log_probs: jax.Array, targets: jax.Array) -> jax.Array:
  """``-sum_j q_j log p_j`` treating ``0 * log 0`` as 0, with safe gradients."""
  nonzero = targets != 0
  safe_log_probs = jnp.where(nonzero, log_probs, jnp.zeros_like(log_probs))
  return -jnp.sum(jnp.where(nonzero, targets * safe_log_probs, 0.0), axis=-1)
