"""Soft targets derived from a cost matrix, and cross-entropy against them."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from costjax import _checks, _common, _reductions, _structures


def cost_soft_labels(
    labels: jax.typing.ArrayLike,
    cost_matrix: jax.typing.ArrayLike,
    *,
    temperature: jax.typing.ArrayLike = 1.0,
) -> jax.Array:
  r"""Soft targets that put less mass on more expensive mistakes.

  .. math::

    q_j = \frac{\exp(-C_{yj} / T)}{\sum_k \exp(-C_{yk} / T)}

  Note the minus sign: with a zero diagonal the true class gets the *largest*
  probability. (``softmax(C[y])`` — a common first attempt — gives it the
  smallest.) For probability labels ``r`` the result is the mixture
  ``sum_i r_i softmax(-C[i] / T)`` of those rows.

  ``temperature`` is in cost units: as ``T -> 0`` the targets become one-hot
  on the cheapest class of each row (the true class when the diagonal is the
  row minimum); as ``T -> inf`` they become uniform. Bertinetto et al. use
  ``T = max(C) / beta`` with ``beta`` in 4 to 30.

  Preconditions (unchecked, a violation gives the output in the last column, never a
  plausible value; under :func:`checked` it raises, naming the function, the argument and
  the first offending index):

  | input | must be | otherwise |
  |---|---|---|
  | integer ``labels`` | in ``[0, K)`` | NaN (that example) |
  | probability ``labels`` | ``>= 0``, rows sum to 1 (tolerance [1]) | NaN (that example) |
  | ``cost_matrix`` (dense) | every entry finite and ``>= 0`` | NaN (examples using it) |
  | ``temperature`` | ``> 0`` | NaN (all) |

  [1] ``1e-3`` on each row's sum, ``2e-2`` for 16-bit labels.

  Args:
    labels: integer class indices of any shape ``(...)`` (integer dtype), or
      probability vectors ``(..., K)`` (floating dtype). Dispatch is on dtype.
    cost_matrix: ``(K, K)`` cost matrix, rows true, columns predicted, or a
      stack of per-example matrices whose leading axes broadcast to the
      examples' axes (``labels.shape`` for integer labels, else
      ``labels.shape[:-1]``).
    temperature: positive scale ``T`` (traced).

  Returns:
    Targets of shape ``(..., K)`` that sum to 1 over the last axis. Rows of
    out-of-range integer labels are NaN.

  Examples:
    >>> import jax.numpy as jnp
    >>> import costjax as cj
    >>> C = cj.ordinal_cost_matrix(4)
    >>> cj.cost_soft_labels(jnp.array(1), C)
    Array([0.1966, 0.5344, 0.1966, 0.0723], dtype=float32)

  References:
    Díaz & Marathe, "Soft Labels for Ordinal Regression", CVPR 2019.
    Bertinetto et al., "Making Better Mistakes", CVPR 2020.
  """
  name = "costjax.cost_soft_labels"
  temperature = _checks.param(temperature, lambda v: v > 0, name, "temperature", "> 0")
  labels = jnp.asarray(labels)
  num_classes = _structures.num_classes(cost_matrix, name)
  transform = lambda c: _target_table(c, temperature, _structures.zero_diagonal(cost_matrix))
  if jnp.issubdtype(labels.dtype, jnp.integer):
    cost_dtype = (jnp.float32 if _structures.is_structure(cost_matrix)
                  else jnp.asarray(cost_matrix).dtype)
    dtype = jnp.dtype(jnp.float32) if not jnp.issubdtype(cost_dtype, jnp.floating) else (
        _checks.compute_dtype(cost_dtype))
    cost = _structures.check_cost(cost_matrix, num_classes, name, dtype, labels.shape,
                                f"labels.shape={labels.shape}")
    _structures.check_values(cost, None, name)
    idx = _checks.sanitize_indices(labels, num_classes, name)
    rows = _structures.rows(cost, idx, transform)
    return jnp.where((idx == num_classes)[..., None], jnp.nan, rows)
  if not jnp.issubdtype(labels.dtype, jnp.floating):
    raise TypeError(
        f"{name}: labels must be integer indices or floating probability vectors; "
        f"got dtype {labels.dtype}."
    )
  if labels.ndim < 1 or labels.shape[-1] != num_classes:
    raise ValueError(
        f"{name}: probability labels must have K = {num_classes} entries on their last "
        f"axis to match the cost matrix's K = {num_classes} classes; got "
        f"labels.shape={labels.shape}."
    )
  dtype = _checks.compute_dtype(labels.dtype)
  cost = _structures.check_cost(cost_matrix, num_classes, name, dtype, labels.shape[:-1],
                              f"labels.shape={labels.shape}")
  labels = labels.astype(dtype)
  _structures.check_values(cost, labels, name)
  return _structures.vecmat(labels, cost, transform)


def _target_table(cost: jax.Array, temperature: jax.typing.ArrayLike,
                  zero_min: bool = False) -> jax.Array:
  """Row ``i`` is ``softmax(-C[i] / T)``.

  ``zero_min``: every row's minimum is exactly 0 (a structure that declares
  ``zero_diagonal``: costs are non-negative), so the softmax needs no
  max-subtraction pass: ``exp(-C / T) <= 1`` with a 1 on the diagonal, the
  same values. (XLA:CPU runs that extra row maximum over a fused expression
  as a slow reduction on long rows; ``docs/benchmarks.md``, section
  "Structured costs at huge K".)
  """
  scaled = -cost / jnp.asarray(temperature, cost.dtype)
  if not zero_min:
    return jax.nn.softmax(scaled, axis=-1)
  e = jnp.exp(scaled)
  return e / jnp.sum(e, axis=-1, keepdims=True)


def soft_label_cross_entropy(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    cost_matrix: jax.typing.ArrayLike,
    *,
    temperature: jax.typing.ArrayLike = 1.0,
    where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
  r"""Cross-entropy against cost-derived soft targets (SORD / "soft labels").

  .. math::

    \ell(z, y) = -\sum_j q_j \log \mathrm{softmax}(z)_j, \qquad
    q = \texttt{cost\_soft\_labels}(y, C, T).

  The gradient with respect to the logits is ``softmax(z) - q``: well
  behaved everywhere, never vanishing while the prediction is wrong. The
  minimum over ``z`` is the entropy of ``q``, reached at ``softmax(z) = q``,
  so trained models are under-confident by design; decode them with
  :func:`bayes_decision` after temperature scaling, or with ``argmax``.

  Every target ``q_j`` is positive (for finite costs ``exp(-C / T) > 0``;
  entries that underflow the floating-point format are held at its smallest
  normal number), so a ``-inf`` logit or a class masked out by ``where`` gives
  the loss's mathematical value ``+inf``, with finite gradients.

  Preconditions (unchecked, a violation gives the output in the last column, never a
  plausible value; under :func:`checked` it raises, naming the function, the argument and
  the first offending index):

  | input | must be | otherwise |
  |---|---|---|
  | ``logits`` | no NaN, no ``+inf`` (``-inf``: probability 0) | NaN or inf (that example) |
  | integer ``labels`` | in ``[0, K)`` | NaN (that example) |
  | probability ``labels`` | ``>= 0``, rows sum to 1 (tolerance [1]) | NaN (that example) |
  | ``cost_matrix`` (dense) | every entry finite and ``>= 0`` | NaN (examples using it) |
  | ``temperature`` | ``> 0`` | NaN (all) |

  [1] ``1e-3`` on each row's sum, ``2e-2`` for 16-bit labels.

  Args:
    logits: unnormalised scores, shape ``(..., K)``.
    labels: integer indices ``(...)`` or probability vectors ``(..., K)``.
    cost_matrix: ``(K, K)`` cost matrix, rows true, columns predicted, or a
      stack of per-example matrices whose leading axes broadcast to
      ``logits.shape[:-1]`` (example ``b`` uses its own ``C[b]``).
    temperature: target temperature ``T`` in cost units (traced).
    where: optional example ``(...)`` or class ``(..., K)`` mask.

  Returns:
    Per-example loss, shape ``(...)``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import costjax as cj
    >>> C = cj.ordinal_cost_matrix(3)
    >>> cj.soft_label_cross_entropy(jnp.array([2., 0., -2.]), jnp.array(0), C)
    Array(0.9925, dtype=float32)

  References:
    Díaz & Marathe, CVPR 2019; Bertinetto et al., CVPR 2020.
  """
  name = "costjax.soft_label_cross_entropy"
  temperature = _checks.param(temperature, lambda v: v > 0, name, "temperature", "> 0")
  p = _common.prepare(name, logits, labels, cost_matrix, where)
  zero_min = _structures.zero_diagonal(p.cost_matrix)
  tiny = jnp.finfo(p.logits.dtype).tiny

  def positive_table(c):
    # softmax(-C / T) is positive for finite costs; entries that underflow are
    # kept at the smallest normal number, so that sum_j q_j z_j needs no
    # 0 * (-inf) select (XLA:CPU splits a select out of a fused row sum and
    # writes a (..., K) array for it) and a -inf logit gives the loss's
    # mathematical value, +inf, whatever the costs.
    return jnp.maximum(_target_table(c, temperature, zero_min), tiny)

  targets = _common.target_cost_rows(p, positive_table)
  if p.is_index and not _structures.is_structure(p.cost_matrix):
    # The target mass from the (K, K) table's row sums: one gather per example
    # instead of a row sum over the batch.
    mass = _structures.rows(p.cost_matrix, p.labels,
                          lambda c: jnp.sum(positive_table(c), axis=-1, keepdims=True))[..., 0]
  else:
    mass = _reductions.row_sum(targets)
  sm = _common.softmax_parts(p.logits)
  # -sum_j q_j (z_j - lse), exact for targets that do not sum to one.
  out = sm.lse[..., 0] * mass - _reductions.row_sum(targets * p.logits)
  return _common.finish(out, p)  # NaN target rows (bad labels) become NaN there
