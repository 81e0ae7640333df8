"""The classic baseline: class-weighted cross-entropy and cost-proportionate weights."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental import checkify

from costjax import _checks, _common, _sharding, _structures
from costjax._expected_cost import soft_cross_entropy


def weighted_cross_entropy(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    class_weights: jax.typing.ArrayLike,
    where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
  r"""Cross-entropy with one weight per true class.

  .. math::

    \ell(z, q) = -\sum_i q_i \, w_i \log p_i, \qquad p = \mathrm{softmax}(z),

  so that ``ell = w[y] * CE(z, y)`` for an integer label ``y``: per example,
  this is PyTorch's ``CrossEntropyLoss(weight=w, reduction="none")``. Nothing
  is normalised; PyTorch's ``reduction="mean"`` is
  ``loss.sum() / class_weights[labels].sum()``, not ``loss.mean()`` (see the
  example).

  Per-class weights can only say how much a mistake on each *true* class
  costs, not which wrong class was chosen; :func:`cost_class_weights` derives
  them from a cost matrix, and the guide "Choosing a loss" says when that is
  exact. An example with weight 0 contributes 0, even where ``p_y = 0``.

  Preconditions (unchecked, a violation gives the output in the last column, never a
  plausible value; under :func:`checked` it raises, naming the function, the argument and
  the first offending index):

  | input | must be | otherwise |
  |---|---|---|
  | ``logits`` | no NaN, no ``+inf`` (``-inf``: probability 0) | NaN or inf (that example) |
  | integer ``labels`` | in ``[0, K)`` | NaN (that example) |
  | probability ``labels`` | ``>= 0``, rows sum to 1 (tolerance [1]) | NaN (that example) |
  | ``class_weights`` | entries finite, ``>= 0`` | NaN (all) |

  [1] ``1e-3`` on each row's sum, ``2e-2`` for 16-bit labels.

  Args:
    logits: unnormalised scores, shape ``(..., K)``, floating dtype.
    labels: integer class indices of shape ``(...)``, or probability vectors of
      shape ``(..., K)``.
    class_weights: ``(K,)`` non-negative, finite weights (traced: gradients
      with respect to them work, and changing them does not recompile).
      Negative or non-finite weights make every loss NaN (and raise in
      checked mode, :func:`costjax.checked`).
    where: optional mask of shape ``(...)`` (examples) or ``(..., K)``
      (classes removed from the softmax). Masked examples give 0.

  Returns:
    Per-example loss, shape ``(...)``, in the dtype of ``logits``. NaN for
    out-of-range integer labels.

  Raises:
    ValueError: if ``class_weights`` does not have shape ``(K,)``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import costjax as cj
    >>> logits = jnp.array([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0], [1.0, 1.0, 1.0]])
    >>> labels = jnp.array([0, 1, 2])
    >>> w = jnp.array([1.0, 4.0, 0.5])
    >>> loss = cj.weighted_cross_entropy(logits, labels, class_weights=w)
    >>> loss  # w[y] * -log softmax(logits)[y], as torch's reduction="none"
    Array([0.2413, 8.6794, 0.5493], dtype=float32)
    >>> loss.sum() / w[labels].sum()  # torch's reduction="mean"
    Array(1.7218, dtype=float32)

    Probability labels weight each class's term:

    >>> q = jnp.array([0.5, 0.5, 0.0])
    >>> cj.weighted_cross_entropy(jnp.array([2.0, 0.5, -1.0]), q, class_weights=w)
    Array(3.6033, dtype=float32)
  """
  name = "costjax.weighted_cross_entropy"
  p = _common.prepare(name, logits, labels, None, where)
  w = _check_class_weights(class_weights, p.num_classes, name, p.logits.dtype)
  # Cross-entropy in shifted space, as optax does: (m - z_y) + log(total) is
  # exact to float32 rounding of the result even for logits of 1e4, where
  # logsumexp(z) - z_y would lose the digits below the ulp of 1e4.
  m = jax.lax.stop_gradient(jnp.max(p.logits, axis=-1, keepdims=True))
  shifted = p.logits - jnp.where(jnp.isfinite(m), m, jnp.zeros_like(m))
  log_total = jnp.log(jnp.sum(jnp.exp(shifted), axis=-1))
  if p.is_index:
    # Invalid labels (sanitized to K) read clamped entries; finish makes them NaN.
    wy = _sharding.gather_rows(w, p.labels)
    picked = jnp.take_along_axis(
        shifted, p.labels[..., None], axis=-1, mode="promise_in_bounds"
    )[..., 0]
    ce = log_total - picked
    # Weight 0 means "does not count", even where p_y = 0 (CE = inf).
    nonzero = wy != 0
    out = jnp.where(nonzero, wy * jnp.where(nonzero, ce, jnp.zeros_like(ce)), 0.0)
  else:
    targets = p.labels * jnp.broadcast_to(w, p.labels.shape)
    out = soft_cross_entropy(shifted, log_total[..., None], targets)
  valid = jnp.all((w >= 0) & jnp.isfinite(w))
  out = jnp.where(valid, out, jnp.nan)
  return _common.finish(out, p)


def _check_class_weights(
    class_weights: jax.typing.ArrayLike, num_classes: int, fn_name: str, dtype
) -> jax.Array:
  """Trace-time shape and dtype checks; checked-mode value checks."""
  w = jnp.asarray(class_weights)
  if not (
      jnp.issubdtype(w.dtype, jnp.floating)
      or jnp.issubdtype(w.dtype, jnp.integer)
      or jnp.issubdtype(w.dtype, jnp.bool_)
  ):
    raise TypeError(f"{fn_name}: class_weights must be real-valued; got {w.dtype}.")
  if w.shape != (num_classes,):
    raise ValueError(
        f"{fn_name}: class_weights must have shape (K,) = ({num_classes},) to match the "
        f"{num_classes} classes of logits; got class_weights.shape={w.shape}. "
        "(Use jax.vmap for stacks of weight vectors.)"
    )
  w = _checks.poison_param(w, lambda v: (v >= 0) & (v < jnp.inf), fn_name, "class_weights",
                           "finite and >= 0", dtype)
  w = jnp.where(jnp.all(w >= 0), w, jnp.nan)  # one bad weight: every example NaN
  if _checks.checks_on():
    checkify.check(
        jnp.all(jnp.isfinite(w)), f"{fn_name}: class_weights has a non-finite entry"
    )
    checkify.check(
        jnp.all(w >= 0),
        f"{fn_name}: class_weights has a negative entry (min {{m}})",
        m=jnp.min(w),
    )
  return w


def cost_class_weights(
    cost_matrix: jax.typing.ArrayLike | _structures.CostStructure,
) -> jax.Array:
  r"""Cost-proportionate class weights from a cost matrix.

  .. math::

    w_i \propto \frac{1}{K - 1} \sum_{j \ne i} C_{ij}, \qquad
    \frac{1}{K} \sum_i w_i = 1:

  the average cost of a mistake on true class ``i`` (a row of ``C``, diagonal
  excluded), rescaled to mean 1 over classes, for
  :func:`weighted_cross_entropy`. With a zero diagonal, the decision rule
  ``argmax_i w_i p_i`` is then the minimum-expected-cost decision exactly when
  the cost of a mistake depends on the true class only (``C[i, j] = c_i`` for
  ``j != i``; ``w`` is proportional to ``c``), and always for two classes,
  where ``w_0 / w_1 = C[0, 1] / C[1, 0]`` (Elkan 2001). For more classes,
  reweighting cannot say *which* wrong class was chosen (Zhou & Liu 2010);
  see the guide "Choosing a loss". Decisions depend only on
  ``C[i, j] - C[i, i]`` (Elkan), so for a matrix with a nonzero diagonal pass
  ``C - jnp.diag(C)[:, None]`` if you want weights that respect that.

  Args:
    cost_matrix: ``(K, K)`` array, ``K >= 2``, ``C[i, j]`` the cost of
      predicting ``j`` when the truth is ``i``; or a cost structure
      (``TreeCost``, ``OrdinalCost``, ``EmbeddingCost``), whose row sums are
      computed without a ``K x K`` matrix.

  Returns:
    ``(K,)`` weights with mean 1, in the cost's floating dtype (float32 for
    integer matrices). NaN if every off-diagonal cost is 0 (nothing to weight);
    negative or non-finite costs raise in checked mode.

  Raises:
    ValueError: if the matrix is not square and 2-D, or has fewer than 2
      classes.

  Examples:
    >>> import jax.numpy as jnp
    >>> import costjax as cj
    >>> C = jnp.array([[0., 1., 1.], [4., 0., 4.], [1., 1., 0.]])  # C[i, j] = c_i
    >>> cj.cost_class_weights(C)
    Array([0.5, 2. , 0.5], dtype=float32)
    >>> C = jnp.array([[7., 1., 5.], [1., 0., 1.], [2., 2., 0.]])  # diagonal ignored
    >>> cj.cost_class_weights(C)
    Array([1.5, 0.5, 1. ], dtype=float32)

  References:
    Elkan, "The Foundations of Cost-Sensitive Learning", IJCAI 2001.
    Zhou & Liu, "On Multi-Class Cost-Sensitive Learning", Computational
    Intelligence 26(3), 2010.
  """
  name = "costjax.cost_class_weights"
  k = _structures.num_classes(cost_matrix, name)
  if k < 2:
    raise ValueError(f"{name}: cost_matrix needs at least 2 classes; got K = {k}.")
  if _structures.is_structure(cost_matrix):
    cost = cost_matrix
  else:
    dense = jnp.asarray(cost_matrix)
    cost = _structures.check_cost(dense, k, name, _float_dtype(dense.dtype))
  _structures.check_values(cost, None, name)
  idx = jnp.arange(k)
  diag = _structures.entries(cost, idx, idx)
  totals = _row_sums(cost, k, diag.dtype)
  w = (totals - diag) / (k - 1)
  mean = jnp.mean(w)
  if _checks.checks_on():
    checkify.check(mean > 0, f"{name}: every off-diagonal cost is 0; no weights to derive")
  return w / mean


def _float_dtype(dtype) -> jnp.dtype:
  if jnp.issubdtype(dtype, jnp.floating):
    return jnp.dtype(dtype)
  return jnp.dtype(jnp.float32)


def _row_sums(cost, k: int, dtype) -> jax.Array:
  """``sum_j C[i, j]`` for every true class ``i`` (``C @ 1``)."""
  if not _structures.is_structure(cost):
    return jnp.sum(_structures.dense(cost), axis=-1)
  if cost.symmetric:
    # Row sums equal column sums, 1 @ C: the structure's fast vecmat.
    return _structures.vecmat(jnp.ones((k,), dtype), cost)
  # A non-symmetric structure: one row at a time, O(K) memory.
  return jax.lax.map(lambda i: jnp.sum(_structures.rows(cost, i)), jnp.arange(k))
