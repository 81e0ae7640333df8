"""Post-hoc calibration: temperature scaling and vector scaling (Guo et al. 2017).

Both fit a few parameters on held-out data by minimising the mean negative
log-likelihood (NLL) and leave the ranking of the logits (temperature) or the
per-class structure (vector scaling) to the model. Calibrated probabilities are
what :func:`costjax.bayes_decision`, :func:`costjax.decision_costs` and the
abstention rule need: they trust ``softmax(logits)`` as a posterior.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from costjax import _checks

# Search range of the temperature: T in [T_MIN, T_MAX]. The inverse
# temperature beta = 1 / T is searched on [1 / T_MAX, 1 / T_MIN].
TEMPERATURE_MIN = 1e-3
TEMPERATURE_MAX = 1e3
# Safeguarded Newton on beta: at most this many passes over the data (it stops
# earlier, typically after 5-10, once the Newton step is below RTOL * beta).
_TEMPERATURE_MAX_PASSES = 40
_TEMPERATURE_RTOL = 1e-7  # or 64 float eps, whichever is larger


class VectorScaling(NamedTuple):
  """Per-class affine recalibration ``logits * scale + bias``.

  Attributes:
    scale: ``(K,)`` multiplicative factors.
    bias: ``(K,)`` offsets (their mean is fixed at 0: a constant shift of all
      biases does not change ``softmax``).
  """

  scale: jax.Array
  bias: jax.Array

  def apply(self, logits: jax.typing.ArrayLike) -> jax.Array:
    """Recalibrated logits ``logits * scale + bias`` (classes on the last axis)."""
    z = jnp.asarray(logits)
    rank = lambda x: jax.lax.broadcast_to_rank(x, z.ndim)  # no implicit rank promotion
    return z * rank(self.scale) + rank(self.bias)


class _Flat(NamedTuple):
  logits: jax.Array  # (N, K), compute dtype, masked classes -inf
  labels: jax.Array  # (N,) sanitized indices or (N, K) probabilities
  is_index: bool
  weight: jax.Array  # (N,) 1 for examples that count, 0 otherwise
  bad: jax.Array  # scalar bool: some counted label is out of range
  num_classes: int


def _as_arrays(logits, labels, where):
  """Array arguments for the jitted implementations (compiled once per shape)."""
  return jnp.asarray(logits), jnp.asarray(labels), None if where is None else jnp.asarray(where)


def _flatten(fn_name, logits, labels, where) -> _Flat:
  logits = _checks.check_logits(logits, fn_name)
  k = logits.shape[-1]
  labels, is_index = _checks.labels_are_indices(logits, labels, fn_name)
  dtype = _checks.compute_dtype(logits.dtype)
  x, row_mask = _checks.prepare_where(logits.astype(dtype), where, fn_name)
  x = x.reshape(-1, k)
  if row_mask is None:
    weight = jnp.ones(x.shape[:1], dtype)
  else:
    weight = jnp.broadcast_to(row_mask, logits.shape[:-1]).reshape(-1).astype(dtype)
  if is_index:
    labels = _checks.sanitize_indices(labels, k, fn_name).reshape(-1)
    bad = jnp.any((labels == k) & (weight > 0))
  else:
    labels = _checks.poison_probs(labels.astype(dtype), fn_name)
    _checks.maybe_check_values(None, labels, fn_name)
    labels = labels.reshape(-1, k)
    bad = jnp.any(jnp.isnan(labels).any(-1) & (weight > 0))  # poisoned rows
  bad = bad | jnp.any((jnp.isnan(x) | (x == jnp.inf)).any(-1) & (weight > 0))
  return _Flat(x, labels, is_index, weight, bad, k)


def fit_temperature(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
  r"""Temperature scaling: the ``T > 0`` minimising the mean NLL of ``softmax(logits / T)``.

  .. math::

    T^\star = \arg\min_{T} \; \frac{1}{n} \sum_i \Big[
      \log \sum_j e^{z_{ij} / T} - \sum_j q_{ij} z_{ij} / T \Big].

  The NLL is convex in ``beta = 1 / T``; its first two derivatives are the
  mean (over examples) of ``E_p[z] - q . z`` and ``Var_p[z]`` under
  ``p = softmax(beta z)``, both computed in a single pass over the logits.
  A Newton iteration on ``beta``, safeguarded by a bracket that is bisected
  (geometrically) whenever a Newton step leaves it, finds the root of the
  derivative to a relative step of ``64 * eps`` (float32: ``8e-6``): usually
  5-10 passes, at most 40.

  The search range is ``T in [1e-3, 1e3]`` (``TEMPERATURE_MIN``,
  ``TEMPERATURE_MAX``). When the optimum lies outside it the nearest edge is
  returned: perfectly separable data (every example's label has the largest
  logit, ties and constant rows included, so the NLL never increases as
  ``T -> 0``) gives ``T = 1e-3``; logits
  that carry no information or are anti-correlated with the labels give
  ``T = 1e3``. The result is never NaN for finite logits and valid labels.

  Deterministic; works under ``jax.jit`` and ``jax.vmap`` (for example over
  bootstrap resamples or seeds, passed as ``where`` weights). Not
  differentiable (the iteration is a ``lax.while_loop``); the fitted ``T`` is a
  constant for the model being calibrated.

  Preconditions (unchecked, a violation gives the output in the last column, never a
  plausible value; under :func:`checked` it raises, naming the function, the argument and
  the first offending index):

  | input | must be | otherwise |
  |---|---|---|
  | ``logits`` | no NaN, no ``+inf`` (``-inf``: probability 0) | NaN |
  | integer ``labels`` | in ``[0, K)`` | NaN (that example) |
  | probability ``labels`` | ``>= 0``, rows sum to 1 (tolerance [1]) | NaN |

  [1] ``1e-3`` on each row's sum, ``2e-2`` for 16-bit labels.

  Args:
    logits: held-out logits, shape ``(..., K)``. ``-inf`` marks impossible
      classes.
    labels: integer labels of shape ``logits.shape[:-1]`` or probability
      vectors of shape ``logits.shape``.
    where: optional mask, per example (shape ``logits.shape[:-1]``) or per
      class (shape ``logits.shape``, masked classes removed from the softmax);
      only selected examples enter the mean.

  Returns:
    Scalar ``T`` in the compute dtype (float32 for half-precision logits).
    Divide logits by it: ``softmax(logits / T)``. NaN if a selected integer
    label lies outside ``[0, K)`` (:func:`costjax.checked` names it); 1 if no
    example is selected.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> import costjax as cj
    >>> key_z, key_y = jax.random.split(jax.random.key(0))
    >>> true_logits = 2.0 * jax.random.normal(key_z, (5000, 4))
    >>> labels = jax.random.categorical(key_y, true_logits)
    >>> T = cj.fit_temperature(3.0 * true_logits, labels)   # overconfident by 3x
    >>> bool(jnp.abs(T - 3.0) < 0.15)
    True

  References:
    Guo, Pleiss, Sun, Weinberger, "On Calibration of Modern Neural Networks",
    ICML 2017.
  """
  return _fit_temperature_jit(*_as_arrays(logits, labels, where), _checks.checks_on())


@functools.partial(jax.jit, static_argnums=3)
def _fit_temperature_jit(logits, labels, where, checks):
  del checks  # a static cache key only: checked mode is read at trace time
  name = "costjax.fit_temperature"
  f = _flatten(name, logits, labels, where)
  dtype = f.logits.dtype
  z = f.logits
  finite = jnp.isfinite(z)
  row_max = jnp.max(jnp.where(finite, z, -jnp.inf), axis=-1, keepdims=True)
  row_ok = jnp.isfinite(row_max[:, 0])
  # Shifted logits z' = z - max z <= 0 (so exp never overflows for beta > 0);
  # non-finite entries are 0 here and excluded through `finite`.
  zs = jnp.where(finite, z - jnp.where(row_ok[:, None], row_max, 0.0), 0.0)
  weight = jnp.where(row_ok, f.weight, 0.0)
  if f.is_index:
    k = f.num_classes
    y = jnp.minimum(f.labels, k - 1)
    zy = jnp.take_along_axis(zs, y[:, None], axis=-1)[:, 0]
    fy = jnp.take_along_axis(finite, y[:, None], axis=-1)[:, 0]
    qz = jnp.where(fy, zy, -jnp.inf)  # q . z'
    qsum = jnp.ones_like(qz)
  else:
    q = f.labels
    impossible = jnp.any((q > 0) & ~finite, axis=-1)
    qz = jnp.where(impossible, -jnp.inf, jnp.sum(q * zs, axis=-1))
    qsum = jnp.sum(q, axis=-1)
  total_weight = jnp.sum(weight)
  norm = jnp.maximum(total_weight, 1.0)

  def derivatives(beta):
    """d/dbeta and d2/dbeta2 of the mean NLL at beta (one pass over zs)."""
    e = jnp.where(finite, jnp.exp(beta * zs), 0.0)
    s0 = jnp.sum(e, axis=-1)
    s1 = jnp.sum(e * zs, axis=-1)
    s2 = jnp.sum(e * zs * zs, axis=-1)
    s0 = jnp.maximum(s0, jnp.finfo(dtype).tiny)
    m1 = s1 / s0
    var = jnp.maximum(s2 / s0 - m1 * m1, 0.0)
    counted = weight > 0
    g = jnp.where(counted, weight * (qsum * m1 - qz), 0.0)
    h = jnp.where(counted, weight * qsum * var, 0.0)
    return jnp.sum(g) / norm, jnp.sum(h) / norm

  rtol = max(_TEMPERATURE_RTOL, 64 * float(jnp.finfo(dtype).eps))
  beta_min = jnp.asarray(1.0 / TEMPERATURE_MAX, dtype)
  beta_max = jnp.asarray(1.0 / TEMPERATURE_MIN, dtype)

  # State: beta, lo, hi, lo_evaluated, hi_evaluated, step, iteration.
  def cond(state):
    beta, lo, hi, _, _, step, it = state
    del beta, lo, hi
    return (it < _TEMPERATURE_MAX_PASSES) & ~step

  def body(state):
    beta, lo, hi, lo_eval, hi_eval, _, it = state
    g, h = derivatives(beta)
    # The derivative is increasing in beta: the root lies above beta if g < 0.
    above = g < 0
    lo = jnp.where(above, beta, lo)
    lo_eval = lo_eval | above
    below = g > 0
    hi = jnp.where(below, beta, hi)
    hi_eval = hi_eval | below
    exact = g == 0
    lo = jnp.where(exact, beta, lo)
    hi = jnp.where(exact, beta, hi)
    ok = (h > 0) & jnp.isfinite(g)
    safe_h = jnp.where(ok, h, 1.0)
    step = jnp.where(ok, g / safe_h, jnp.nan)
    # Newton on beta; if it leaves the bracket, Newton on log(beta) (a shorter
    # step in the same direction that keeps beta > 0); else bisect the bracket
    # geometrically. A step past a domain edge not yet evaluated goes to it.
    newton = beta - step
    log_newton = beta * jnp.exp(-jnp.clip(step / beta, -30.0, 30.0))
    inside = (newton > lo) & (newton < hi)
    log_inside = (log_newton > lo) & (log_newton < hi)
    nxt = jnp.where(log_inside, log_newton, jnp.sqrt(lo * hi))
    nxt = jnp.where(~log_inside & (newton >= hi) & ~hi_eval, hi, nxt)
    nxt = jnp.where(~log_inside & (newton <= lo) & ~lo_eval, lo, nxt)
    nxt = jnp.where(inside, newton, nxt)
    nxt = jnp.clip(nxt, lo, hi)
    small_step = jnp.abs(step) <= rtol * beta
    nxt = jnp.where(small_step & ok, jnp.clip(newton, lo, hi), nxt)
    done = exact | (small_step & ok) | (hi - lo <= rtol * lo)
    return nxt, lo, hi, lo_eval, hi_eval, done, it + 1

  one = jnp.asarray(1.0, dtype)
  init = (one, beta_min, beta_max, jnp.array(False), jnp.array(False), jnp.array(False), 0)
  beta = jax.lax.while_loop(cond, body, init)[0]
  temperature = 1.0 / beta
  # When every counted label has its row's largest logit, the derivative
  # E_p[z'] - q . z' = E_p[z'] is <= 0 for every beta: the NLL never increases
  # as T -> 0, so the edge T_MIN is optimal (the iteration may not see it: the
  # derivative underflows to 0 once softmax is one-hot in floating point).
  separable = jnp.all(jnp.where(weight > 0, qz >= 0, True))
  temperature = jnp.where(separable, jnp.asarray(TEMPERATURE_MIN, dtype), temperature)
  temperature = jnp.where(total_weight > 0, temperature, one)
  return jnp.where(f.bad, jnp.nan, temperature)


def _nll(params, z, finite, labels, is_index, weight, norm):
  """Mean NLL of ``softmax(z * scale + bias)`` over the weighted examples."""
  x = jnp.where(finite, VectorScaling(*params).apply(z), -jnp.inf)
  lse = jax.nn.logsumexp(x, axis=-1)
  safe_x = jnp.where(finite, x, 0.0)
  if is_index:
    xy = jnp.take_along_axis(safe_x, labels[:, None], axis=-1)[:, 0]
    nll = lse - xy
  else:
    nll = jnp.sum(labels, axis=-1) * lse - jnp.sum(labels * safe_x, axis=-1)
  nll = jnp.where(weight > 0, weight * nll, 0.0)
  return jnp.sum(nll) / norm


def fit_vector_scaling(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    where: jax.typing.ArrayLike | None = None,
    max_iterations: int = 200,
    tolerance: float = 1e-6,
) -> VectorScaling:
  r"""Vector scaling: per-class ``scale`` and ``bias`` minimising the mean NLL.

  .. math::

    (s^\star, b^\star) = \arg\min_{s, b} \; \frac{1}{n} \sum_i
      -\log \mathrm{softmax}(z_i \odot s + b)_{y_i}.

  The objective is convex in ``(s, b)``; it is minimised from ``s = 1, b = 0``
  (the uncalibrated model) by L-BFGS (:func:`optax.lbfgs` with its zoom line
  search) until the gradient norm falls below ``tolerance`` or after
  ``max_iterations`` steps. The biases keep mean 0 (adding a constant to every
  bias does not change ``softmax``). A static iteration budget keeps the
  result finite where the optimum is at infinity (a class that never occurs in
  the labels pushes its bias to ``-inf``; separable data pushes the scales
  up): then the result is the iterate after the budget. Prefer
  :func:`fit_temperature` when the calibration set is small relative to ``K``.

  Deterministic and jit-able (``max_iterations`` and ``tolerance`` are
  static); not differentiable.

  Preconditions (unchecked, a violation gives the output in the last column, never a
  plausible value; under :func:`checked` it raises, naming the function, the argument and
  the first offending index):

  | input | must be | otherwise |
  |---|---|---|
  | ``logits`` | no NaN, no ``+inf`` (``-inf``: probability 0) | NaN parameters |
  | integer ``labels`` | in ``[0, K)`` | NaN (that example) |
  | probability ``labels`` | ``>= 0``, rows sum to 1 (tolerance [1]) | NaN parameters |

  [1] ``1e-3`` on each row's sum, ``2e-2`` for 16-bit labels.

  Args:
    logits: held-out logits, shape ``(..., K)``; ``-inf`` marks impossible
      classes.
    labels: integer labels of shape ``logits.shape[:-1]`` or probability
      vectors of shape ``logits.shape``.
    where: optional mask, per example or per class, as in
      :func:`fit_temperature`.
    max_iterations: L-BFGS iteration budget (static).
    tolerance: stop when the gradient norm is below it (static).

  Returns:
    :class:`VectorScaling` ``(scale, bias)``, each ``(K,)``; recalibrated logits
    are ``logits * scale + bias`` (``VectorScaling.apply``). NaN if a selected
    integer label lies outside ``[0, K)``.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> import costjax as cj
    >>> key_z, key_y = jax.random.split(jax.random.key(0))
    >>> true_logits = jax.random.normal(key_z, (4000, 3))
    >>> labels = jax.random.categorical(key_y, true_logits)
    >>> distorted = true_logits * jnp.array([2.0, 0.5, 1.0]) + jnp.array([1.0, 0.0, -1.0])
    >>> vs = cj.fit_vector_scaling(distorted, labels)
    >>> recalibrated = vs.apply(distorted)   # close to true_logits up to a constant
    >>> bool(jnp.abs(vs.scale - jnp.array([0.5, 2.0, 1.0])).max() < 0.25)
    True

  References:
    Guo, Pleiss, Sun, Weinberger, "On Calibration of Modern Neural Networks",
    ICML 2017.
  """
  return _fit_vector_scaling_jit(
      *_as_arrays(logits, labels, where), max_iterations, tolerance, _checks.checks_on()
  )


@functools.partial(jax.jit, static_argnums=(3, 4, 5))
def _fit_vector_scaling_jit(logits, labels, where, max_iterations, tolerance, checks):
  del checks  # a static cache key only: checked mode is read at trace time
  name = "costjax.fit_vector_scaling"
  f = _flatten(name, logits, labels, where)
  dtype = f.logits.dtype
  k = f.num_classes
  finite = jnp.isfinite(f.logits)
  z = jnp.where(finite, f.logits, 0.0)
  labels_ = jnp.minimum(f.labels, k - 1) if f.is_index else f.labels
  weight = jnp.where(jnp.any(finite, axis=-1), f.weight, 0.0)
  norm = jnp.maximum(jnp.sum(weight), 1.0)

  def objective(params):
    return _nll(params, z, finite, labels_, f.is_index, weight, norm)

  opt = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(objective)
  params = (jnp.ones((k,), dtype), jnp.zeros((k,), dtype))

  def cond(carry):
    _, state = carry
    it = optax.tree.get(state, "count")
    grad = optax.tree.get(state, "grad")
    err = optax.tree.norm(grad)
    return (it == 0) | ((it < max_iterations) & (err >= tolerance))

  def body(carry):
    params, state = carry
    value, grad = value_and_grad(params, state=state)
    updates, state = opt.update(
        grad, state, params, value=value, grad=grad, value_fn=objective
    )
    params = optax.apply_updates(params, updates)
    return params, state

  state = opt.init(params)
  params, _ = jax.lax.while_loop(cond, body, (params, state))
  scale, bias = params
  bias = bias - jnp.mean(bias)
  scale = jnp.where(f.bad, jnp.nan, scale)
  bias = jnp.where(f.bad, jnp.nan, bias)
  return VectorScaling(scale, bias)
