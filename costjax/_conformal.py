"""Cost-controlled prediction sets calibrated by conformal risk control.

A *cost set* keeps every decision whose expected cost is within ``threshold``
of the cheapest one. Its loss on an example with true class ``y`` is the cost
of the best choice in the set, ``min_{j in set} C[y, j]`` -- what a person who
picks from the set (knowing ``y``) would pay. Conformal risk control
(Angelopoulos, Bates, Fisch, Lei, Schuster, ICLR 2024) picks the threshold on
held-out data so that this loss is at most ``alpha`` on average over new
exchangeable examples.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from costjax import _checks, _decisions, _sharding, _structures

_THRESHOLD_SLACK_ULPS = 16


def _gaps(logits, cost_matrix, fn_name):
  """``decision_costs - min decision_costs`` (>= 0, exactly 0 at the Bayes decision)."""
  risk, _ = _decisions.decision_costs_and_dtype(logits, cost_matrix, fn_name)
  # Non-negative by definition; clamped because XLA may recompute `risk` inside
  # a fusion with different rounding, which can leave -0.0 or -1e-7 here.
  return jnp.maximum(risk - jnp.min(risk, axis=-1, keepdims=True), 0.0)


def cost_sets(
    logits: jax.typing.ArrayLike,
    cost_matrix: jax.typing.ArrayLike | _structures.CostStructure,
    *,
    threshold: jax.typing.ArrayLike,
) -> jax.Array:
  r"""Sets of near-optimal decisions: expected cost within ``threshold`` of the best.

  .. math::

    S(z) = \{\, j : r_j - \min_k r_k \le t \,\}, \qquad r = \mathrm{softmax}(z) \, C.

  The sets are nested (a larger ``threshold`` gives a superset), always hold
  the Bayes decision for ``threshold >= 0``, and are the full class set for
  ``threshold = +inf``. A negative or NaN threshold gives empty sets. Choose
  the threshold with :func:`calibrate_cost_sets`.

  Preconditions (unchecked, a violation gives the output in the last column, never a
  plausible value; under :func:`checked` it raises, naming the function, the argument and
  the first offending index):

  | input | must be | otherwise |
  |---|---|---|
  | ``logits`` | no NaN, no ``+inf`` (``-inf``: probability 0) | empty set (that example) |
  | ``cost_matrix`` (dense) | every entry finite and ``>= 0`` | empty sets (examples using it) |

  Args:
    logits: calibrated scores or log-probabilities, shape ``(..., K)``.
    cost_matrix: ``(K, K)`` cost matrix, rows true, columns predicted; a
      stack of per-example matrices whose leading axes broadcast to
      ``logits.shape[:-1]`` (example ``b`` uses its own ``C[b]``); or a cost structure.
    threshold: scalar (or an array broadcastable to ``logits.shape[:-1]``)
      in units of cost; may be traced.

  Returns:
    Boolean ``(..., K)`` membership.

  Examples:
    >>> import jax.numpy as jnp
    >>> import costjax as cj
    >>> C = jnp.array([[0., 1., 4.], [1., 0., 1.], [4., 1., 0.]])
    >>> logits = jnp.log(jnp.array([0.5, 0.3, 0.2]))
    >>> cj.decision_costs(logits, C).round(4)     # expected cost of each decision
    Array([1.1, 0.7, 2.3], dtype=float32)
    >>> cj.cost_sets(logits, C, threshold=0.5)
    Array([ True,  True, False], dtype=bool)
  """
  gaps = _gaps(logits, cost_matrix, "costjax.cost_sets")
  threshold = jnp.asarray(threshold)[..., None]
  return gaps <= jax.lax.broadcast_to_rank(threshold, gaps.ndim)


def _labels_for_sets(sets, labels, fn_name) -> tuple[jax.Array, bool]:
  """Validates labels against ``sets`` (..., K); returns (labels, is_index)."""
  labels = jnp.asarray(labels)
  if labels.ndim == sets.ndim and not jnp.issubdtype(labels.dtype, jnp.integer):
    if labels.shape != sets.shape:
      raise ValueError(
          f"{fn_name}: probability labels must have the shape of sets; got "
          f"labels.shape={labels.shape} and sets.shape={sets.shape}."
      )
    return labels, False
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise TypeError(
        f"{fn_name}: class-index labels must have an integer dtype; got {labels.dtype} with "
        f"labels.shape={labels.shape} and sets.shape={sets.shape}."
    )
  if labels.shape != sets.shape[:-1]:
    raise ValueError(
        f"{fn_name}: integer labels must have shape sets.shape[:-1]; got "
        f"labels.shape={labels.shape} and sets.shape={sets.shape}."
    )
  return labels, True


def set_cost(
    sets: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    cost_matrix: jax.typing.ArrayLike | _structures.CostStructure,
) -> jax.Array:
  r"""Cost of the best choice in each set: ``min_{j in set} C[y, j]``.

  The loss that :func:`calibrate_cost_sets` controls. For probability labels
  ``q`` it is ``min_{j in set} sum_i q_i C[i, j]``. An empty set costs
  ``+inf``.

  Preconditions (unchecked, a violation gives the output in the last column, never a
  plausible value; under :func:`checked` it raises, naming the function, the argument and
  the first offending index):

  | input | must be | otherwise |
  |---|---|---|
  | integer ``labels`` | in ``[0, K)`` | NaN (that example) |
  | ``cost_matrix`` (dense) | every entry finite and ``>= 0`` | NaN (examples using it) |

  Args:
    sets: boolean ``(..., K)`` membership, for example from :func:`cost_sets`.
    labels: integer true classes of shape ``sets.shape[:-1]``, or probability
      vectors of shape ``sets.shape``.
    cost_matrix: ``(K, K)`` cost matrix, rows true, columns predicted; a
      stack of per-example matrices whose leading axes broadcast to
      ``sets.shape[:-1]`` (example ``b`` uses its own ``C[b]``); or a cost structure.

  Returns:
    Per-example costs of shape ``sets.shape[:-1]`` (float32 for integer cost
    matrices); NaN where an integer label lies outside ``[0, K)``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import costjax as cj
    >>> C = jnp.array([[0., 1., 4.], [1., 0., 1.], [4., 1., 0.]])
    >>> sets = jnp.array([[True, True, False], [False, True, False]])
    >>> cj.set_cost(sets, jnp.array([2, 0]), C)
    Array([1., 1.], dtype=float32)
  """
  name = "costjax.set_cost"
  sets = jnp.asarray(sets)
  if sets.ndim < 1:
    raise ValueError(f"{name}: sets must have a class axis (..., K); got sets.shape={sets.shape}.")
  k = _structures.num_classes(cost_matrix, name)
  if sets.shape[-1] != k:
    shape = (
        f"num_classes={k}" if _structures.is_structure(cost_matrix)
        else f"cost_matrix.shape={jnp.shape(cost_matrix)}"  # type: ignore[arg-type]
    )
    raise ValueError(
        f"{name}: sets must have K = {k} classes on the last axis to match the cost matrix; "
        f"got sets.shape={sets.shape} and {shape}."
    )
  labels, is_index = _labels_for_sets(sets, labels, name)
  if _structures.is_structure(cost_matrix):
    dtype = jnp.dtype(jnp.float32)
  else:
    dtype = jnp.asarray(cost_matrix).dtype
    if not jnp.issubdtype(dtype, jnp.floating):
      dtype = jnp.dtype(jnp.float32)
  cost = _structures.check_cost(cost_matrix, k, name, dtype, sets.shape[:-1],
                              f"sets.shape={sets.shape}")
  if is_index:
    _structures.check_values(cost, None, name)
    y = _checks.sanitize_indices(labels, k, name)
    rows = _structures.rows(cost, y)
  else:
    q = labels.astype(dtype)
    _structures.check_values(cost, q, name)
    rows = _structures.vecmat(q, cost)
  out = jnp.min(jnp.where(sets.astype(bool), rows, jnp.inf), axis=-1)
  if is_index:
    out = jnp.where(y == k, jnp.nan, out)
  return out


def calibrate_cost_sets(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    cost_matrix: jax.typing.ArrayLike | _structures.CostStructure,
    *,
    alpha: jax.typing.ArrayLike,
) -> jax.Array:
  r"""Threshold for :func:`cost_sets` with expected set cost at most ``alpha``.

  Conformal risk control for the loss ``L_i(t) = set_cost(cost_sets(z_i, C,
  threshold=t), y_i)``, which is non-increasing in ``t`` and bounded by
  ``B = max C``: on ``n`` calibration examples it returns

  .. math::

    \hat t = \min \Big\{ t : \frac{\sum_{i=1}^n L_i(t) + B}{n + 1} \le \alpha \Big\}.

  Guarantee: if the calibration examples and a new example are
  exchangeable (for example i.i.d. from the same distribution), then
  ``E[set_cost] <= alpha`` for the new example's set built with ``t_hat``.
  The guarantee is *marginal*: an average over the draw of the calibration
  set and the new example, not a promise for each example, class or
  calibration set. It needs neither a calibrated nor a good model (a poor
  model gets larger sets), but shifts between calibration and test data
  void it.

  Example-dependent costs (a stack ``C_i``, one matrix per calibration
  example): each example's loss uses its own matrix, ``L_i(t) =
  min_{j in S_i(t)} C_i[y_i, j]``, and the examples are pooled as above with
  ``B`` the largest entry of all the matrices given. The guarantee then holds
  for a new example's set built with its own matrix ``C_{n+1}``, under two
  assumptions: the triples ``(logits_i, y_i, C_i)`` are exchangeable (the
  costs are drawn with the examples, not chosen after seeing the sets), and
  the new example's loss is at most ``B`` too (its costs do not exceed the
  largest calibration cost; cap unbounded costs such as amounts, or include
  the cap in one calibration matrix).

  The minimum is computed exactly, without bisection or a sort of the data.
  Each ``L_i`` is a step function of ``t``: with the costs of row ``C[y_i]``
  in increasing order ``c_(0) <= ... <= c_(K-1)`` (the ``K`` rows of a dense
  ``C`` are sorted once; a structure sorts each example's row instead, never
  building ``K x K``), the set reaches cost level ``c_(m)`` once ``t`` passes
  ``tau_im``, the smallest gap ``r_ij - min_k r_ik`` (``r`` the decision costs)
  among the classes that cost at most ``c_(m)`` (a running minimum). The total
  loss is then ``sum_i c_(K-1) - sum_{i,m} [tau_im <= t] (c_(m+1) - c_(m))``,
  so the threshold is a weighted quantile of the ``tau_im``, found exactly by
  radix selection on their float bit patterns (four 256-bin weighted
  histograms). The result is the smallest breakpoint that satisfies the
  inequality (up to float rounding of the summed costs), rounded up by 16
  float ulps so that :func:`cost_sets` recomputed elsewhere (another compiled
  program may round the decision costs differently in the last bit) still
  holds every decision counted here. Cost ``O(n K)``
  besides the decision costs; jit-able; ``alpha`` may be traced. (Probability
  labels sort each example's row instead, which is slower.)

  Preconditions (unchecked, a violation gives the output in the last column, never a
  plausible value; under :func:`checked` it raises, naming the function, the argument and
  the first offending index):

  | input | must be | otherwise |
  |---|---|---|
  | ``logits`` | no NaN, no ``+inf`` (``-inf``: probability 0) | NaN or inf (that example) |
  | integer ``labels`` | in ``[0, K)`` | NaN (that example) |
  | ``cost_matrix`` (dense) | every entry finite and ``>= 0`` | NaN |
  | ``alpha`` | finite, ``> 0``; concrete: ``ValueError`` | NaN |

  Args:
    logits: calibration logits, shape ``(..., K)`` (all leading axes are
      examples); calibrate them first (:func:`fit_temperature`) for smaller
      sets, though the guarantee does not need it.
    labels: integer labels of shape ``logits.shape[:-1]`` or probability
      vectors of shape ``logits.shape`` (the loss is then
      ``min_{j in set} sum_i q_i C[i, j]``).
    cost_matrix: ``(K, K)`` cost matrix, rows true, columns predicted; a
      stack of per-example matrices whose leading axes broadcast to
      ``logits.shape[:-1]`` (example ``b`` uses its own ``C[b]``); or a cost structure.
    alpha: target expected set cost, in units of cost; finite and ``> 0``.

  Returns:
    Scalar threshold ``t_hat >= 0``. ``+inf`` when no threshold qualifies:
    ``alpha < B / (n + 1)`` (too few calibration examples for this ``alpha``)
    or even the full sets cost too much (their cost is ``min_j C[y, j]``,
    not 0 when the diagonal is not); ``cost_sets`` with ``+inf`` gives the full
    sets, the best this method can do. NaN if an integer label lies outside
    ``[0, K)`` (:func:`costjax.checked` names it).

  Raises:
    ValueError: if a concrete ``alpha`` is not finite or not positive.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> import costjax as cj
    >>> key_z, key_y = jax.random.split(jax.random.key(0))
    >>> logits = 2.0 * jax.random.normal(key_z, (2000, 5))
    >>> labels = jax.random.categorical(key_y, logits)
    >>> C = 1.0 - jnp.eye(5)
    >>> t = cj.calibrate_cost_sets(logits, labels, C, alpha=0.1)
    >>> sets = cj.cost_sets(logits, C, threshold=t)
    >>> bool(cj.set_cost(sets, labels, C).mean() <= 0.1)
    True

  References:
    Angelopoulos, Bates, Fisch, Lei, Schuster, "Conformal Risk Control",
    ICLR 2024.
  """
  name = "costjax.calibrate_cost_sets"
  real_scalar = "{fn}: {name} must be a real scalar; got {value!r} (shape {shape})."
  alpha = _checks.check_param(alpha, name, "alpha", strict=True,
                              concrete_shape_message=real_scalar, real_message=real_scalar)
  alpha = _checks.param(alpha, lambda v: (v > 0) & (v < jnp.inf), name, "alpha",
                        "finite and > 0")
  if not _sharding.is_tracer(logits):
    logits = jnp.asarray(logits)
  if not _sharding.is_tracer(labels):
    labels = jnp.asarray(labels)
  if not _structures.is_structure(cost_matrix):
    cost_matrix = jnp.asarray(cost_matrix)
  return _calibrate_jit(logits, labels, cost_matrix, alpha, _checks.checks_on())


@functools.partial(jax.jit, static_argnums=4)
def _calibrate_jit(logits, labels, cost_matrix, alpha, checks):
  del checks  # a static cache key only: checked mode is read at trace time
  name = "costjax.calibrate_cost_sets"
  logits = _checks.check_logits(logits, name)
  k = logits.shape[-1]
  labels, is_index = _checks.labels_are_indices(logits, labels, name)
  dtype = _checks.compute_dtype(logits.dtype)
  cost = _structures.check_cost(cost_matrix, k, name, dtype, logits.shape[:-1],
                              f"logits.shape={logits.shape}")
  gaps = _gaps(logits, cost, name).reshape(-1, k)
  n = gaps.shape[0]
  if is_index:
    y = _checks.sanitize_indices(labels, k, name)
    # Each example's own row C_i[y_i] when the costs are per example.
    rows = _structures.rows(cost, y).reshape(-1, k)
    y = y.reshape(-1)
    bad = jnp.any(y == k)
  else:
    q = labels.astype(dtype)
    _structures.check_values(cost, q, name)
    rows = _structures.vecmat(q, cost).reshape(-1, k)
    bad = jnp.array(False)
  bound = _structures.max_cost(cost).astype(dtype)
  # L_i(t) = min {c_ij : g_ij <= t} with c_i = C[y_i]. Order the costs of
  # row c_i increasingly, c_(0) <= ... <= c_(K-1); the set reaches cost level
  # c_(m) once t >= tau_im = min_{m' <= m} g_i(m'). So
  #   L_i(t) = c_(K-1) - sum_{m < K-1} [tau_im <= t] (c_(m+1) - c_(m)),
  # and the total loss is a weighted count of the pairs (i, m) with
  # tau_im <= t: the threshold is a weighted quantile of the tau.
  if is_index and not _structures.is_structure(cost) and not _structures.per_example(cost):
    # Only K distinct cost rows: sort those once, not one row per example. A
    # structure never builds that K x K table: it sorts each example's row.
    table = _structures.rows(cost, jnp.arange(k))
    order = jnp.argsort(table, axis=1)
    table_sorted = jnp.take_along_axis(table, order, axis=1)
    perm = _sharding.gather_rows(order, jnp.minimum(y, k - 1))
    costs_sorted = _sharding.gather_rows(table_sorted, jnp.minimum(y, k - 1))
  else:
    perm = jnp.argsort(rows, axis=1)
    costs_sorted = jnp.take_along_axis(rows, perm, axis=1)
  gaps_by_cost = jnp.take_along_axis(gaps, perm, axis=1)
  tau = jax.lax.associative_scan(jnp.minimum, gaps_by_cost, axis=1) + 0.0  # no -0.0
  weight = jnp.concatenate(
      [costs_sorted[:, 1:] - costs_sorted[:, :-1], jnp.zeros((n, 1), dtype)], axis=1
  )
  need = jnp.sum(costs_sorted[:, -1]) + bound - alpha * (n + 1)
  # The histograms scatter into 256 bins: gather an explicitly sharded batch first
  # (as confusion_matrix does), since JAX cannot infer the sharding of that scatter.
  tau_hat = _weighted_quantile(_sharding.replicate(tau.reshape(-1)),
                               _sharding.replicate(weight.reshape(-1)), need)
  # Rounded up by 16 ulps: decision costs recomputed in another compiled
  # program (cost_sets outside this jit) may differ in their last bits, and the
  # sets at the returned threshold must still hold every decision counted here.
  tau_hat = tau_hat * (1 + _THRESHOLD_SLACK_ULPS * jnp.finfo(dtype).eps)
  threshold = jnp.where(need <= 0, jnp.zeros((), dtype), tau_hat)
  bad = bad | jnp.isnan(need)  # a broken precondition (alpha, costs): no threshold
  return jnp.where(bad, jnp.nan, threshold).astype(dtype)


def _weighted_quantile(values: jax.Array, weights: jax.Array, need: jax.Array) -> jax.Array:
  """Smallest ``v`` in ``values`` (all ``>= +0``) with ``sum(weights[values <= v]) >= need``.

  ``+inf`` if the total weight is below ``need``. Exact radix selection on the
  bit patterns (monotone for non-negative floats): one 256-bin weighted
  histogram per byte, most significant first, each restricted to the values
  whose higher bytes match those chosen so far. Four (eight for float64)
  scatter-adds over the data instead of a sort.
  """
  bits = jnp.finfo(values.dtype).bits
  utype = jnp.uint32 if bits == 32 else jnp.uint64
  codes = jax.lax.bitcast_convert_type(values, utype)
  # Order-preserving keys for every float (a stray -0.0 or tiny negative value
  # would otherwise sort last): flip all bits of negatives, set the sign bit of
  # the rest.
  sign_bit = jnp.asarray(1 << (bits - 1), utype)
  codes = jnp.where((codes & sign_bit) != 0, ~codes, codes | sign_bit)
  weights = weights.astype(values.dtype)
  below = jnp.zeros((), values.dtype)  # weight of values under the current prefix
  prefix = jnp.zeros((), utype)
  for byte in range(bits // 8 - 1, -1, -1):
    shift = 8 * byte
    digit = ((codes >> shift) & 0xFF).astype(jnp.int32)
    if byte == bits // 8 - 1:
      match = jnp.ones(codes.shape, bool)
    else:
      match = (codes >> (shift + 8)) == prefix
    hist = jnp.zeros((256,), values.dtype).at[digit].add(jnp.where(match, weights, 0.0))
    cum = below + jnp.cumsum(hist)
    chosen = jnp.argmax(cum >= need)  # first bin that reaches `need`
    below = cum[chosen] - hist[chosen]
    prefix = (prefix << 8) | chosen.astype(utype)
  found = jnp.sum(weights) >= need
  prefix = jnp.where((prefix & sign_bit) != 0, prefix & ~sign_bit, ~prefix)
  value = jax.lax.bitcast_convert_type(prefix, values.dtype)
  return jnp.where(found, value, jnp.inf)
