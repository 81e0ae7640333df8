"""Minimum-expected-cost (Bayes) decisions and cost-aware metrics."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from costjax import _checks


def bayes_decision(
    logits: jax.typing.ArrayLike, cost_matrix: jax.typing.ArrayLike
) -> jax.Array:
  r"""Minimum-expected-cost (Bayes) predictions.

  .. math::

    \hat y = \arg\min_j \sum_i p_i \, C_{ij}, \qquad p = \mathrm{softmax}(z).

  With ``C = 1 - I`` this is ``argmax``. When ``p`` is a calibrated posterior,
  no other decision rule has a lower expected cost; decoding a calibrated
  cross-entropy model this way is often the strongest cost-aware baseline.
  Calibrate first (for example temperature scaling on held-out data: pass
  ``logits / T``). Passing log-probabilities works the same as logits. The
  decision is invariant to scaling ``C`` and to adding a constant to a row.

  Args:
    logits: scores or log-probabilities, shape ``(..., K)``.
    cost_matrix: ``(K, K)`` cost matrix, rows true, columns predicted.

  Returns:
    Integer predictions of shape ``(...)`` (``int32``); ties go to the lowest
    class index.

  Examples:
    >>> import jax.numpy as jnp
    >>> import costjax as cj
    >>> C = jnp.array([[0., 1.], [20., 0.]])   # missing class 1 costs 20
    >>> logits = jnp.log(jnp.array([0.9, 0.1]))
    >>> int(jnp.argmax(logits)), int(cj.bayes_decision(logits, C))
    (0, 1)

  References:
    Elkan, "The Foundations of Cost-Sensitive Learning", IJCAI 2001.
  """
  name = "costjax.bayes_decision"
  logits = _checks.check_logits(logits, name)
  dtype = _checks.compute_dtype(logits.dtype)
  cost = _checks.check_cost_shape(cost_matrix, logits.shape[-1], name).astype(dtype)
  _checks.maybe_check_values(cost, None, name)
  probs = jax.nn.softmax(logits.astype(dtype), axis=-1)
  risk = probs @ cost
  return jnp.argmin(risk, axis=-1).astype(jnp.int32)


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
    cost_matrix: jax.typing.ArrayLike,
    *,
    where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
  r"""Mean misclassification cost ``mean(C[labels, predictions])``.

  Equals ``sum(confusion_matrix * C) / n`` with the confusion matrix's rows
  as true classes. Unlike "mistake severity" (the mean over errors only), it
  does not reward trading accuracy for milder mistakes.

  Args:
    predictions: integer predicted classes, any shape.
    labels: integer true classes, same shape.
    cost_matrix: ``(K, K)`` cost matrix, rows true, columns predicted.
    where: optional boolean mask of the same shape; only selected entries are
      averaged.

  Returns:
    Scalar mean cost (float32 for integer cost matrices). NaN if any label or
    prediction is outside ``[0, K)``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import costjax as cj
    >>> C = jnp.array([[0., 1., 4.], [1., 0., 3.], [4., 3., 0.]])
    >>> cj.mean_cost(jnp.array([0, 2, 2]), jnp.array([0, 0, 2]), C)
    Array(1.3333, dtype=float32)
  """
  name = "costjax.mean_cost"
  predictions, labels = _check_index_pair(predictions, labels, name)
  cost = jnp.asarray(cost_matrix)
  if cost.ndim != 2 or cost.shape[0] != cost.shape[1]:
    raise ValueError(f"{name}: cost_matrix must have shape (K, K); got {cost.shape}.")
  num_classes = cost.shape[0]
  if not jnp.issubdtype(cost.dtype, jnp.floating):
    cost = cost.astype(jnp.float32)
  _checks.maybe_check_values(cost, None, name)
  y = _checks.sanitize_indices(labels, num_classes, name + " (labels)")
  yhat = _checks.sanitize_indices(predictions, num_classes, name + " (predictions)")
  bad = (y == num_classes) | (yhat == num_classes)
  costs = _checks.gather_rows(cost.reshape(-1), y * num_classes + yhat)
  costs = jnp.where(bad, jnp.nan, costs)
  if where is None:
    return jnp.mean(costs)
  where = jnp.broadcast_to(jnp.asarray(where).astype(bool), costs.shape)
  return jnp.sum(jnp.where(where, costs, 0.0)) / jnp.sum(where)


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
  labels, predictions = _checks.replicate(labels), _checks.replicate(predictions)
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
