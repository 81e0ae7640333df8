"""Minimum-expected-cost (Bayes) decisions and cost-aware metrics."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from costjax import _checks, _reductions, _sharding, _structures


def check_abstain_cost(
    abstain_cost: jax.typing.ArrayLike,
    fn_name: str,
    batch_shape: tuple[int, ...] = (),
    batch_desc: str = "",
) -> jax.Array:
  """``abstain_cost`` broadcast to ``batch_shape`` (a scalar, or one cost per example).

  ``ValueError`` if its shape does not broadcast to ``batch_shape`` (NumPy
  rules; ``batch_desc`` names the argument it comes from), or if it is concrete
  and has a negative or non-finite entry.
  """
  return _checks.check_param(
      abstain_cost, fn_name, "abstain_cost", strict=False, batch_shape=batch_shape,
      batch_desc=batch_desc, shape_message="{fn}: {name} must be {what}; got {name}.shape={shape}.")


def _weights_and_cost(logits, cost_matrix, fn_name):
  """Validated ``exp(z - max z)`` and its row sums (the posterior is their ratio),
  the cost in the compute dtype, and the logits' dtype."""
  logits = _checks.check_logits(logits, fn_name)
  dtype = _checks.compute_dtype(logits.dtype)
  cost = _structures.check_cost(cost_matrix, logits.shape[-1], fn_name, dtype,
                              logits.shape[:-1], f"logits.shape={logits.shape}")
  _structures.check_values(cost, None, fn_name)
  z = logits.astype(dtype)
  # As jax.nn.softmax: NaN rows for all -inf or any +inf logits.
  weights = jnp.exp(z - jnp.max(z, axis=-1, keepdims=True))
  return weights, jnp.sum(weights, axis=-1, keepdims=True), cost, logits.dtype


def decision_costs_and_dtype(logits, cost_matrix, fn_name):
  """Validated ``softmax(logits) @ C`` in the compute dtype, and the logits' dtype
  (shared with the conformal cost sets)."""
  weights, total, cost, dtype = _weights_and_cost(logits, cost_matrix, fn_name)
  return _structures.vecmat(weights / total, cost), dtype


def decision_costs(
    logits: jax.typing.ArrayLike, cost_matrix: jax.typing.ArrayLike | _structures.CostStructure
) -> jax.Array:
  r"""Expected cost of every possible decision: ``softmax(logits) @ C``.

  .. math::

    r_j = \sum_i p_i \, C_{ij}, \qquad p = \mathrm{softmax}(z).

  Entry ``j`` is the cost the model expects to pay for predicting class ``j``
  (rows of ``C`` are true classes). :func:`bayes_decision` is its argmin;
  :func:`cost_sets` keeps the decisions within a threshold of the minimum.
  Differentiable in ``logits`` and in the cost matrix (or a structure's
  array leaves).

  Preconditions (unchecked, a violation gives the output in the last column, never a
  plausible value; under :func:`checked` it raises, naming the function, the argument and
  the first offending index):

  | input | must be | otherwise |
  |---|---|---|
  | ``logits`` | no NaN, no ``+inf`` (``-inf``: probability 0) | NaN or inf (that example) |
  | ``cost_matrix`` (dense) | every entry finite and ``>= 0`` | NaN (examples using it) |

  Args:
    logits: scores or log-probabilities, shape ``(..., K)``; calibrate them
      first (:func:`fit_temperature`).
    cost_matrix: ``(K, K)`` cost matrix, rows true, columns predicted; a
      stack of per-example matrices whose leading axes broadcast to
      ``logits.shape[:-1]`` (example ``b`` uses its own ``C[b]``); or a cost structure.

  Returns:
    ``(..., K)`` expected costs, in the dtype of ``logits``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import costjax as cj
    >>> C = jnp.array([[0., 1.], [20., 0.]])
    >>> cj.decision_costs(jnp.log(jnp.array([0.9, 0.1])), C).round(4)
    Array([2. , 0.9], dtype=float32)
  """
  risk, dtype = decision_costs_and_dtype(logits, cost_matrix, "costjax.decision_costs")
  return risk.astype(dtype)


def bayes_decision(
    logits: jax.typing.ArrayLike,
    cost_matrix: jax.typing.ArrayLike | _structures.CostStructure,
    *,
    abstain_cost: jax.typing.ArrayLike | None = None,
) -> jax.Array:
  r"""Minimum-expected-cost (Bayes) predictions, optionally with abstention.

  .. math::

    \hat y = \arg\min_j \sum_i p_i \, C_{ij}, \qquad p = \mathrm{softmax}(z).

  With ``C = 1 - I`` this is ``argmax``. When ``p`` is a calibrated posterior,
  no other decision rule has a lower expected cost; decoding a calibrated
  cross-entropy model this way is often the strongest cost-aware baseline.
  Calibrate first (for example :func:`fit_temperature` on held-out data: pass
  ``logits / T``). Passing log-probabilities works the same as logits. The
  decision is invariant to scaling ``C`` and to adding a constant to a row.

  With ``abstain_cost`` (Chow's reject rule with costs), an example whose
  cheapest decision is expected to cost more than ``abstain_cost`` gets ``-1``
  (abstain, for example hand it to a person): ``-1`` where
  ``min_j decision_costs_j > abstain_cost``. With calibrated probabilities this
  minimises the expected cost when abstaining costs ``abstain_cost``;
  :func:`mean_cost` scores ``-1`` at that price.

  Preconditions (unchecked, a violation gives the output in the last column, never a
  plausible value; under :func:`checked` it raises, naming the function, the argument and
  the first offending index):

  | input | must be | otherwise |
  |---|---|---|
  | ``logits`` | no NaN, no ``+inf`` (``-inf``: probability 0) | ``-2**31`` [2] (that example) |
  | ``cost_matrix`` (dense) | every entry finite and ``>= 0`` | ``-2**31`` [2] (examples using it) |
  | ``abstain_cost`` | finite, ``>= 0``; concrete: ``ValueError`` | ``-2**31`` [2] (all) |

  [2] ``INVALID_DECISION = -2**31``: not a class and not ``-1`` (abstain);
  :func:`mean_cost` scores it NaN, and NumPy indexing with it raises.

  Args:
    logits: scores or log-probabilities, shape ``(..., K)``.
    cost_matrix: ``(K, K)`` cost matrix, rows true, columns predicted; a
      stack of per-example matrices whose leading axes broadcast to
      ``logits.shape[:-1]`` (example ``b`` uses its own ``C[b]``); or a cost structure.
    abstain_cost: optional cost of abstaining: a scalar, or an array
      broadcasting to ``logits.shape[:-1]`` (one per example); may be traced.

  Returns:
    Integer predictions of shape ``(...)`` (``int32``); ties go to the lowest
    class index; ``-1`` for abstentions; ``-2**31`` where no decision is defined
    (NaN or ``+inf`` logits, a bad cost or ``abstain_cost``; see Preconditions).

  Raises:
    ValueError: if ``abstain_cost`` does not broadcast to the batch shape, or
      a concrete one has a negative or non-finite entry.

  Examples:
    >>> import jax.numpy as jnp
    >>> import costjax as cj
    >>> C = jnp.array([[0., 1.], [20., 0.]])   # missing class 1 costs 20
    >>> logits = jnp.log(jnp.array([0.9, 0.1]))
    >>> int(jnp.argmax(logits)), int(cj.bayes_decision(logits, C))
    (0, 1)
    >>> int(cj.bayes_decision(logits, C, abstain_cost=0.5))   # 0.9 > 0.5: abstain
    -1

    Example-dependent costs, one matrix per example: a false alarm costs 1,
    missing a fraud costs that transaction's amount (also an array
    ``abstain_cost`` may differ per example):

    >>> amounts = jnp.array([1., 5., 20.])
    >>> C_b = jnp.zeros((3, 2, 2)).at[:, 0, 1].set(1.).at[:, 1, 0].set(amounts)
    >>> cj.bayes_decision(jnp.broadcast_to(logits, (3, 2)), C_b)
    Array([0, 0, 1], dtype=int32)

  References:
    Elkan, "The Foundations of Cost-Sensitive Learning", IJCAI 2001.
    Chow, "On optimum recognition error and reject tradeoff", IEEE Trans. Inf.
    Theory 1970.
  """
  name = "costjax.bayes_decision"
  weights, total, cost, _ = _weights_and_cost(logits, cost_matrix, name)
  if abstain_cost is not None:
    abstain_cost = check_abstain_cost(abstain_cost, name, weights.shape[:-1],
                                      f"logits.shape={weights.shape}")
  # A structure may know its minimiser without the (..., K) decision costs; it
  # reads the unnormalised weights (skipping a pass that divides by the total).
  shortcut = cost.bayes(weights) if _structures.is_structure(cost) else None
  if shortcut is not None:
    decision, best = shortcut
    best = best / total[..., 0]
  else:
    risk = _structures.vecmat(weights / total, cost)
    decision = _reductions.argmin_last(risk)
    best = jnp.min(risk, axis=-1)
  # Non-finite logits or costs leave no decision: a sentinel that is no class and not -1.
  undefined = jnp.isnan(best)
  if abstain_cost is not None:
    undefined = undefined | ~((abstain_cost >= 0) & (abstain_cost < jnp.inf))
    _checks.report_first(~((abstain_cost >= 0) & jnp.isfinite(abstain_cost)),
                         "abstain_cost must be finite and >= 0", name, abstain_cost)
    decision = jnp.where(best > abstain_cost, jnp.int32(-1), decision)
  return jnp.where(undefined, jnp.int32(_checks.INVALID_DECISION), decision)


def _check_index_pair(
    predictions: jax.typing.ArrayLike, labels: jax.typing.ArrayLike, fn_name: str
) -> tuple[jax.Array, jax.Array]:
  predictions = jnp.asarray(predictions)
  labels = jnp.asarray(labels)
  for arg, value in (("predictions", predictions), ("labels", labels)):
    if not jnp.issubdtype(value.dtype, jnp.integer):
      raise TypeError(
          f"{fn_name}: {arg} must be integer class indices; got dtype {value.dtype} "
          f"with shape {value.shape}."
      )
  if predictions.shape != labels.shape:
    raise ValueError(
        f"{fn_name}: predictions and labels must have the same shape; got "
        f"predictions.shape={predictions.shape} and labels.shape={labels.shape}."
    )
  return predictions, labels


def mean_cost(
    predictions: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    cost_matrix: jax.typing.ArrayLike | _structures.CostStructure,
    *,
    abstain_cost: jax.typing.ArrayLike | None = None,
    where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
  r"""Mean misclassification cost ``mean(C[labels, predictions])``.

  Equals ``sum(confusion_matrix * C) / n`` with the confusion matrix's rows
  as true classes. Unlike "mistake severity" (the mean over errors only), it
  does not reward trading accuracy for milder mistakes. With
  ``abstain_cost``, a prediction of ``-1`` (an abstention from
  :func:`bayes_decision`) costs ``abstain_cost``.

  Preconditions (unchecked, a violation gives the output in the last column, never a
  plausible value; under :func:`checked` it raises, naming the function, the argument and
  the first offending index):

  | input | must be | otherwise |
  |---|---|---|
  | ``predictions``, ``labels`` | in ``[0, K)``; ``-1`` abstains [3] | NaN |
  | ``cost_matrix`` (dense) | every entry finite and ``>= 0`` | NaN |
  | ``abstain_cost`` | finite, ``>= 0``; concrete: ``ValueError`` | NaN |

  [3] with ``abstain_cost``.

  Args:
    predictions: integer predicted classes, any shape; ``-1`` abstains when
      ``abstain_cost`` is given.
    labels: integer true classes, same shape.
    cost_matrix: ``(K, K)`` cost matrix, rows true, columns predicted; a
      stack of per-example matrices whose leading axes broadcast to
      ``predictions.shape`` (example ``b`` uses its own ``C[b]``); or a cost structure.
    abstain_cost: optional cost of a ``-1`` prediction: a scalar, or an array
      broadcasting to ``predictions.shape``; may be traced.
      Without it ``-1`` is out of range like any other invalid index.
    where: optional boolean mask of the same shape; only selected entries are
      averaged.

  Returns:
    Scalar mean cost (float32 for integer cost matrices). NaN if any label or
    prediction is outside ``[0, K)`` (``-1`` allowed with ``abstain_cost``).

  Raises:
    ValueError: if a concrete ``abstain_cost`` is negative or not finite.

  Examples:
    >>> import jax.numpy as jnp
    >>> import costjax as cj
    >>> C = jnp.array([[0., 1., 4.], [1., 0., 3.], [4., 3., 0.]])
    >>> cj.mean_cost(jnp.array([0, 2, 2]), jnp.array([0, 0, 2]), C)
    Array(1.3333, dtype=float32)
    >>> cj.mean_cost(jnp.array([0, -1, 2]), jnp.array([0, 0, 2]), C, abstain_cost=0.5)
    Array(0.1667, dtype=float32)
  """
  name = "costjax.mean_cost"
  predictions, labels = _check_index_pair(predictions, labels, name)
  if abstain_cost is not None:
    abstain_cost = check_abstain_cost(abstain_cost, name, predictions.shape,
                                      f"predictions.shape={predictions.shape}")
  num_classes = _structures.num_classes(cost_matrix, name)
  if _structures.is_structure(cost_matrix):
    dtype = jnp.dtype(jnp.float32)
  else:
    dtype = jnp.asarray(cost_matrix).dtype
    if not jnp.issubdtype(dtype, jnp.floating):
      dtype = jnp.dtype(jnp.float32)
  cost = _structures.check_cost(cost_matrix, num_classes, name, dtype, predictions.shape,
                              f"predictions.shape={predictions.shape}")
  _structures.check_values(cost, None, name)
  y = _checks.sanitize_indices(labels, num_classes, name + " (labels)")
  if abstain_cost is None:
    abstain = jnp.zeros(predictions.shape, bool)
  else:
    abstain = predictions == -1
  yhat = _checks.sanitize_indices(
      jnp.where(abstain, 0, predictions), num_classes, name + " (predictions)"
  )
  bad = (y == num_classes) | (yhat == num_classes)
  costs = _structures.entries(cost, y, jnp.minimum(yhat, num_classes - 1))
  if abstain_cost is not None:
    abstain_cost = _checks.poison_param(abstain_cost, lambda a: (a >= 0) & (a < jnp.inf),
                                        name, "abstain_cost", "finite and >= 0", costs.dtype)
    costs = jnp.where(abstain, abstain_cost, costs)
  costs = jnp.where(bad, jnp.nan, costs)
  if where is None:
    return jnp.mean(costs)
  where = jnp.broadcast_to(jnp.asarray(where).astype(bool), costs.shape)
  return jnp.sum(jnp.where(where, costs, 0.0)) / jnp.sum(where)


def savings_score(
    predictions: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    cost_matrix: jax.typing.ArrayLike | _structures.CostStructure,
    *,
    abstain_cost: jax.typing.ArrayLike | None = None,
) -> jax.Array:
  r"""Savings over the best constant prediction (Correa Bahnsen's savings score).

  .. math::

    \mathrm{savings} = 1 - \frac{\sum_b C_b[y_b, \hat y_b]}
    {\min_k \sum_b C_b[y_b, k]},

  the fraction of the cost of the best single-class policy ("predict ``k``
  for everyone", with ``k`` chosen knowing the labels) that the predictions
  save. ``1`` is perfect (no cost at all), ``0`` is no better than the best
  constant prediction, and negative values are worse than it (there is no
  lower bound). With per-example costs ``C_b`` (a ``batch_shape + (K, K)``
  stack) each example is scored with its own matrix, in numerator and
  denominator alike.

  Abstentions: without ``abstain_cost`` a prediction of ``-1`` is out of range
  like any other invalid index (the result is NaN); with it, ``-1`` costs
  ``abstain_cost`` in the numerator, as in :func:`mean_cost`. The constant
  policies of the denominator never abstain.

  Args:
    predictions: integer predicted classes, any shape ``(...)``; all axes are
      examples.
    labels: integer true classes, same shape.
    cost_matrix: ``(K, K)`` cost matrix, rows true, columns predicted; a
      stack whose leading axes broadcast to ``predictions.shape`` (one matrix
      per example); or a cost structure.
    abstain_cost: optional cost of a ``-1`` prediction: a scalar or an array
      broadcasting to ``predictions.shape`` (may be traced).

  Returns:
    Scalar savings (float32 for integer cost matrices). NaN if some best
    constant prediction costs nothing (the denominator is 0: every class is
    free for some constant policy, so savings are undefined), or if any label
    or prediction lies outside ``[0, K)`` (``-1`` allowed with
    ``abstain_cost``).

  Raises:
    ValueError: if the shapes do not match, or a concrete ``abstain_cost`` is
      negative or not finite.

  Examples:
    >>> import jax.numpy as jnp
    >>> import costjax as cj
    >>> C = jnp.array([[0., 1.], [5., 0.]])
    >>> labels = jnp.array([0, 0, 0, 1])
    >>> # Constant 0 costs 5, constant 1 costs 3: the baseline is 3.
    >>> cj.savings_score(jnp.array([0, 0, 1, 1]), labels, C)   # cost 1
    Array(0.6667, dtype=float32)
    >>> cj.savings_score(jnp.array([1, 1, 1, 0]), labels, C)   # cost 8: worse
    Array(-1.6667, dtype=float32)

    Per-example costs, such as a fixed matrix times each row's amount:

    >>> amount = jnp.array([1., 1., 2., 10.])
    >>> cj.savings_score(jnp.array([0, 0, 1, 1]), labels, C * amount[:, None, None])
    Array(0.5, dtype=float32)

  References:
    Correa Bahnsen, Aouada, Ottersten, "Example-dependent cost-sensitive
    decision trees", Expert Systems with Applications 42(19), 2015.
  """
  name = "costjax.savings_score"
  predictions, labels = _check_index_pair(predictions, labels, name)
  num_classes = _structures.num_classes(cost_matrix, name)
  if _structures.is_structure(cost_matrix):
    dtype = jnp.dtype(jnp.float32)
  else:
    dtype = jnp.asarray(cost_matrix).dtype
    if not jnp.issubdtype(dtype, jnp.floating):
      dtype = jnp.dtype(jnp.float32)
  cost = _structures.check_cost(cost_matrix, num_classes, name, dtype, predictions.shape,
                              f"predictions.shape={predictions.shape}")
  _structures.check_values(cost, None, name)
  if abstain_cost is not None:
    abstain_cost = check_abstain_cost(abstain_cost, name, predictions.shape,
                                      f"predictions.shape={predictions.shape}")
    abstain = predictions == -1
  else:
    abstain = jnp.zeros(predictions.shape, bool)
  y = _checks.sanitize_indices(labels, num_classes, name + " (labels)")
  yhat = _checks.sanitize_indices(
      jnp.where(abstain, 0, predictions), num_classes, name + " (predictions)"
  )
  bad = jnp.any(y == num_classes) | jnp.any(yhat == num_classes)
  costs = _structures.entries(cost, y, jnp.minimum(yhat, num_classes - 1))
  if abstain_cost is not None:
    costs = jnp.where(abstain, abstain_cost.astype(costs.dtype), costs)
  total = jnp.sum(costs)
  # The cost of each constant policy k: sum_b C_b[y_b, k].
  constant = jnp.sum(_structures.rows(cost, y).reshape(-1, num_classes), axis=0)
  best = jnp.min(constant)
  safe = jnp.where(best > 0, best, jnp.ones_like(best))
  out = jnp.where(best > 0, 1 - total / safe, jnp.nan)
  return jnp.where(bad, jnp.nan, out)


def confusion_matrix(
    predictions: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    num_classes: int,
) -> jax.Array:
  """Confusion counts, rows true classes and columns predictions.

  Same orientation as :func:`sklearn.metrics.confusion_matrix`, so
  ``jnp.sum(confusion_matrix(...) * C)`` is the total cost and
  ``confusion_matrix(...) * C`` the cost-weighted confusion matrix.

  Args:
    predictions: integer predicted classes, any shape.
    labels: integer true classes, same shape.
    num_classes: ``K`` (static).

  Returns:
    ``(K, K)`` int32 counts. Pairs with an index outside ``[0, K)`` are not
    counted (use :func:`checked` to catch them).

  Examples:
    >>> import jax.numpy as jnp
    >>> import costjax as cj
    >>> cj.confusion_matrix(jnp.array([0, 2, 2]), jnp.array([0, 0, 2]), num_classes=3)
    Array([[1, 0, 1],
           [0, 0, 0],
           [0, 0, 1]], dtype=int32)
  """
  name = "costjax.confusion_matrix"
  predictions, labels = _check_index_pair(predictions, labels, name)
  # A scatter into one small (K, K) table: gather sharded batches first.
  labels, predictions = _sharding.replicate(labels), _sharding.replicate(predictions)
  y = _checks.sanitize_indices(labels.reshape(-1), num_classes, name + " (labels)")
  yhat = _checks.sanitize_indices(predictions.reshape(-1), num_classes, name + " (predictions)")
  counts = jnp.zeros((num_classes, num_classes), jnp.int32)
  return counts.at[y, yhat].add(1, mode="drop")


def quadratic_weighted_kappa(
    predictions: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    num_classes: int,
) -> jax.Array:
  r"""Cohen's kappa with quadratic weights ``(i - j)^2``.

  .. math::

    \kappa = 1 - \frac{\sum_{ij} W_{ij} O_{ij}}{\sum_{ij} W_{ij} E_{ij}},
    \qquad W_{ij} = (i - j)^2, \; E = \frac{O 1 \, 1^\top O}{n}.

  Equals ``sklearn.metrics.cohen_kappa_score(labels, predictions,
  weights="quadratic", labels=range(K))`` (and the call without ``labels=``
  whenever every class occurs in ``labels`` or ``predictions``). Jittable; the
  inputs are flattened.

  Args:
    predictions: integer predicted classes, any shape.
    labels: integer true classes, same shape.
    num_classes: ``K`` (static).

  Returns:
    Scalar kappa in ``[-1, 1]``; NaN when undefined (all examples in one class
    for both raters) or when any index is outside ``[0, K)``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import costjax as cj
    >>> cj.quadratic_weighted_kappa(jnp.array([0, 1, 2, 2]), jnp.array([0, 1, 1, 2]),
    ...                             num_classes=3)
    Array(0.8, dtype=float32)
  """
  name = "costjax.quadratic_weighted_kappa"
  predictions, labels = _check_index_pair(predictions, labels, name)
  valid = jnp.all(_checks.valid_index_mask(labels, num_classes)) & jnp.all(
      _checks.valid_index_mask(predictions, num_classes)
  )
  observed = confusion_matrix(predictions, labels, num_classes=num_classes)
  observed = observed.astype(jnp.float32)
  n = jnp.sum(observed)
  expected = jnp.outer(observed.sum(axis=1), observed.sum(axis=0)) / n
  k = jnp.arange(num_classes, dtype=jnp.float32)
  weights = (k[:, None] - k[None, :]) ** 2
  kappa = 1.0 - jnp.sum(weights * observed) / jnp.sum(weights * expected)
  return jnp.where(valid, kappa, jnp.nan)
