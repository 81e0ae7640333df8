"""Input validation shared by every costjax function.

Three layers, from cheapest to most thorough:

* **Trace-time checks** (always on): ranks, shapes, dtypes and the number of
  classes ``K`` are static under ``jax.jit``, so mismatches raise ``TypeError``
  or ``ValueError`` while tracing, naming the argument and both shapes.
* **NaN poisoning** (always on): value properties cannot raise inside compiled
  code, so an out-of-range integer label (negative ones included) makes the
  loss of that example NaN instead of being clamped or wrapped by JAX indexing.
* **Checked mode** (opt in): inside :func:`checks_enabled` costjax functions
  emit :func:`jax.experimental.checkify.check` calls that report the offending
  label; :func:`checked` wraps a function so that those errors are raised.

:func:`check_cost_matrix` validates a concrete cost matrix eagerly.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from costjax import _sharding

_F = TypeVar("_F", bound=Callable[..., Any])

_CHECKS_ENABLED = contextvars.ContextVar("costjax_checks_enabled", default=False)


# --------------------------------------------------------------------------- #
# Public: eager validation and checked mode.
# --------------------------------------------------------------------------- #


def check_cost_matrix(cost_matrix: jax.typing.ArrayLike) -> jax.Array:
  """Validates a concrete cost matrix eagerly and returns it.

  A cost matrix ``C`` has shape ``(K, K)`` with ``C[i, j]`` the cost of
  predicting class ``j`` when the true class is ``i`` (rows are true classes,
  columns are predictions, as in :func:`sklearn.metrics.confusion_matrix`).
  Entries must be finite and non-negative; the diagonal need not be zero.

  Use it once on matrices that come from users or files, before training. It
  runs on concrete values, so it cannot be called under :func:`jax.jit`.

  Args:
    cost_matrix: candidate cost matrix, any real dtype.

  Returns:
    The matrix as a :class:`jax.Array` (integer matrices are converted to
    float32).

  Raises:
    TypeError: if the matrix is not real-valued, or is a tracer.
    ValueError: if it is not square and 2-D, has fewer than 2 classes,
      contains NaN or infinite entries, or contains negative entries. The
      message names the first offending entry.

  Examples:
    >>> import costjax as cj
    >>> cj.check_cost_matrix([[0, 1], [5, 0]])
    Array([[0., 1.],
           [5., 0.]], dtype=float32)
    >>> cj.check_cost_matrix([[0, -1], [1, 0]])
    Traceback (most recent call last):
      ...
    ValueError: cost_matrix has a negative entry: C[0, 1] = -1.0; costs must be >= 0.
  """
  if _sharding.is_tracer(cost_matrix):
    raise TypeError(
        "check_cost_matrix validates concrete values and cannot run under jit; "
        "call it once outside the jitted function."
    )
  try:
    arr = np.asarray(cost_matrix)
  except Exception as e:  # pragma: no cover - exotic inputs
    raise TypeError(f"cost_matrix could not be converted to an array: {e}") from e
  if arr.dtype == object or not (
      np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.bool_)
  ):
    raise TypeError(f"cost_matrix must be real-valued; got dtype {arr.dtype}.")
  if np.iscomplexobj(arr):
    raise TypeError(f"cost_matrix must be real-valued; got dtype {arr.dtype}.")
  if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
    raise ValueError(
        f"cost_matrix must be a square 2-D array of shape (K, K); got shape {arr.shape}."
    )
  if arr.shape[0] < 2:
    raise ValueError(f"cost_matrix needs at least 2 classes; got shape {arr.shape}.")
  arr = arr.astype(np.float64) if not np.issubdtype(arr.dtype, np.floating) else arr
  bad = ~np.isfinite(arr)
  if bad.any():
    i, j = np.argwhere(bad)[0]
    raise ValueError(
        f"cost_matrix has a non-finite entry: C[{i}, {j}] = {arr[i, j]}; "
        "costs must be finite."
    )
  neg = arr < 0
  if neg.any():
    i, j = np.argwhere(neg)[0]
    raise ValueError(
        f"cost_matrix has a negative entry: C[{i}, {j}] = {arr[i, j]}; costs must be >= 0."
    )
  out = jnp.asarray(cost_matrix)
  if not jnp.issubdtype(out.dtype, jnp.floating):
    out = out.astype(jnp.float32)
  return out


@contextlib.contextmanager
def checks_enabled() -> Iterator[None]:
  """Context manager: costjax functions traced inside it emit runtime checks.

  The checks are :func:`jax.experimental.checkify.check` calls: integer labels
  must lie in ``[0, K)``, cost matrices must be finite and non-negative, and
  probability labels must be non-negative. They take effect at trace time, so
  the function must be traced (first called, or re-jitted) inside the context
  and functionalised with :func:`jax.experimental.checkify.checkify`.
  :func:`checked` does both for you.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jax.experimental import checkify
    >>> import costjax as cj
    >>> def step(logits, labels, c):
    ...   return cj.expected_cost(logits, labels, c).mean()
    >>> with cj.checks_enabled():
    ...   err, _ = jax.jit(checkify.checkify(step))(
    ...       jnp.zeros((2, 3)), jnp.array([0, 7]), jnp.ones((3, 3)))
    >>> print(err.get())  # doctest: +ELLIPSIS
    costjax.expected_cost: labels must lie in [0, 3); got 7 at index (1,)...
  """
  token = _CHECKS_ENABLED.set(True)
  try:
    yield
  finally:
    _CHECKS_ENABLED.reset(token)


def checked(fn: _F) -> _F:
  """Wraps ``fn`` so that bad values raise instead of giving NaN.

  ``checked(cj.expected_cost)(logits, labels, cost_matrix)`` computes the same
  value as the plain call, but raises
  :class:`jax.experimental.checkify.JaxRuntimeError` naming the first
  out-of-range label (or negative / non-finite cost) instead of returning NaN.
  Python scalars and other non-array keyword arguments (``epsilon``,
  ``debiased``, ...) are bound statically. Works for any function built from
  costjax calls, such as a whole loss function or train step.

  It is a debugging aid. The checked function is compiled (one program per set
  of non-array keyword arguments and input shapes, reused by later calls with
  the same ones); ``fn`` must therefore be traceable, as it must be for
  :func:`jax.jit`. For a checked train step inside your own compiled code, use
  :func:`checks_enabled` with ``jax.jit(checkify.checkify(step))`` directly.

  Args:
    fn: a function that calls costjax functions.

  Returns:
    A function with the same signature that raises on bad values.

  Examples:
    >>> import jax.numpy as jnp
    >>> import costjax as cj
    >>> safe_loss = cj.checked(cj.expected_cost)
    >>> try:
    ...   safe_loss(jnp.zeros((2, 3)), jnp.array([0, -1]), jnp.ones((3, 3)))
    ... except Exception as e:  # checkify.JaxRuntimeError
    ...   print(e)  # doctest: +ELLIPSIS
    costjax.expected_cost: labels must lie in [0, 3); got -1 at index (1,)...
  """

  # One compiled program per set of static arguments (and, inside jax.jit, per input
  # shape): checkify evaluated eagerly would dispatch, and compile, every operation of
  # ``fn`` on its own. The most recent 32 are kept.
  @functools.lru_cache(maxsize=32)
  def program(num_args: int, fixed: tuple[tuple[int, Any], ...],
              static: tuple[tuple[str, Any], ...]) -> Callable[..., Any]:
    bound, keywords = dict(fixed), dict(static)

    def flagged(*traced, **k):
      rest = iter(traced)
      args = [bound[i] if i in bound else next(rest) for i in range(num_args)]
      with checks_enabled():
        return fn(*args, **keywords, **k)

    return jax.jit(checkify.checkify(flagged))

  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    static = tuple(sorted((k, v) for k, v in kwargs.items() if not _is_array(v)))
    dynamic = {k: v for k, v in kwargs.items() if _is_array(v)}
    # Positional arguments without any array (a list of tree parents, a Python number)
    # are bound as they are, like the keywords above; the others are traced.
    fixed = tuple((i, a) for i, a in enumerate(args) if not _holds_array(a))
    traced = [a for a in args if _holds_array(a)]
    try:
      run = program(len(args), fixed, static)
    except TypeError:  # an unhashable static argument: compile for this call only
      run = program.__wrapped__(len(args), fixed, static)
    err, out = run(*traced, **dynamic)
    err.throw()
    return out

  return wrapper  # type: ignore[return-value]


def _is_array(x: Any) -> bool:
  return isinstance(x, (jax.Array, np.ndarray))


def _holds_array(x: Any) -> bool:
  return any(_is_array(leaf) for leaf in jax.tree.leaves(x))


def checks_on() -> bool:
  return _CHECKS_ENABLED.get()


# --------------------------------------------------------------------------- #
# Internal: trace-time validation and label handling.
# --------------------------------------------------------------------------- #


def compute_dtype(dtype: Any) -> jnp.dtype:
  """float32 for half-precision inputs, else the input's own float dtype."""
  dtype = jnp.dtype(dtype)
  if jnp.finfo(dtype).bits < 32:
    return jnp.dtype(jnp.float32)
  return dtype


def check_logits(logits: jax.typing.ArrayLike, fn_name: str) -> jax.Array:
  logits = jnp.asarray(logits)
  if not jnp.issubdtype(logits.dtype, jnp.floating):
    raise TypeError(
        f"{fn_name}: logits must have a floating dtype; got {logits.dtype} "
        f"with shape {logits.shape}."
    )
  if logits.ndim < 1:
    raise ValueError(
        f"{fn_name}: logits must have at least one axis (classes last); got shape "
        f"{logits.shape}."
    )
  if logits.shape[-1] < 1:
    raise ValueError(f"{fn_name}: logits have no classes; got shape {logits.shape}.")
  if checks_on():
    report_first(jnp.isnan(logits) | (logits == jnp.inf),
                 "logits must not be NaN or +inf", fn_name, logits)
  return logits


def check_cost_shape(
    cost_matrix: jax.typing.ArrayLike,
    num_classes: int,
    fn_name: str,
    batch_shape: tuple[int, ...] | None = None,
    batch_desc: str = "",
) -> jax.Array:
  """``cost_matrix`` as an array of shape ``(K, K)`` or ``S + (K, K)``.

  With ``batch_shape`` (the examples' axes, for example ``logits.shape[:-1]``)
  a stack of per-example matrices is accepted when its leading axes ``S``
  broadcast to ``batch_shape`` (NumPy rules: aligned on the right, each axis 1
  or equal). ``batch_desc`` names the argument the batch shape comes from and
  its shape (``"logits.shape=(4, 3)"``), for the error message. Without
  ``batch_shape`` only ``(K, K)`` is accepted.
  """
  cost_matrix = jnp.asarray(cost_matrix)
  if not (
      jnp.issubdtype(cost_matrix.dtype, jnp.floating)
      or jnp.issubdtype(cost_matrix.dtype, jnp.integer)
      or jnp.issubdtype(cost_matrix.dtype, jnp.bool_)
  ):
    raise TypeError(f"{fn_name}: cost_matrix must be real-valued; got {cost_matrix.dtype}.")
  shape = cost_matrix.shape
  if shape == (num_classes, num_classes):
    return cost_matrix
  if batch_shape is None:
    raise ValueError(
        f"{fn_name}: cost_matrix must have shape (K, K) = ({num_classes}, {num_classes}) "
        f"to match the {num_classes} classes of logits; got cost_matrix.shape="
        f"{shape}. (Use jax.vmap for stacks of cost matrices.)"
    )
  lead = shape[:-2]
  if not (
      len(shape) >= 2
      and shape[-2:] == (num_classes, num_classes)
      and len(lead) <= len(batch_shape)
      and all(c in (1, b) for c, b in zip(lead[::-1], batch_shape[::-1], strict=False))
  ):
    raise ValueError(
        f"{fn_name}: cost_matrix must have shape (K, K) = ({num_classes}, {num_classes}), "
        f"or S + (K, K) (one matrix per example) with leading axes S that broadcast to "
        f"the batch shape {tuple(batch_shape)} of {batch_desc}; got "
        f"cost_matrix.shape={shape}."
    )
  return cost_matrix


def labels_are_indices(
    logits: jax.Array, labels: jax.typing.ArrayLike, fn_name: str
) -> tuple[jax.Array, bool]:
  """Dispatches on rank; validates shape and dtype. Returns (labels, is_index)."""
  labels = jnp.asarray(labels)
  if labels.ndim == logits.ndim:
    if labels.shape != logits.shape:
      raise ValueError(
          f"{fn_name}: probability labels must have the shape of logits; got "
          f"labels.shape={labels.shape} and logits.shape={logits.shape}."
      )
    if not (
        jnp.issubdtype(labels.dtype, jnp.floating)
        or jnp.issubdtype(labels.dtype, jnp.integer)
        or jnp.issubdtype(labels.dtype, jnp.bool_)
    ):
      raise TypeError(f"{fn_name}: probability labels must be real; got {labels.dtype}.")
    return labels, False
  if labels.ndim == logits.ndim - 1:
    if not jnp.issubdtype(labels.dtype, jnp.integer):
      raise TypeError(
          f"{fn_name}: class-index labels (labels.ndim == logits.ndim - 1) must have an "
          f"integer dtype; got {labels.dtype} with labels.shape={labels.shape} and "
          f"logits.shape={logits.shape}. Pass probability vectors with the shape of "
          "logits, or cast indices with labels.astype(int)."
      )
    if labels.shape != logits.shape[:-1]:
      raise ValueError(
          f"{fn_name}: integer labels must have shape logits.shape[:-1]; got "
          f"labels.shape={labels.shape} and logits.shape={logits.shape}."
      )
    return labels, True
  raise ValueError(
      f"{fn_name}: labels must be integer indices of shape logits.shape[:-1] or "
      f"probability vectors of shape logits.shape; got labels.shape={labels.shape} and "
      f"logits.shape={logits.shape}."
  )


def valid_index_mask(labels: jax.Array, num_classes: int) -> jax.Array:
  return (labels >= 0) & (labels < num_classes)


def sanitize_indices(labels: jax.Array, num_classes: int, fn_name: str) -> jax.Array:
  """Maps every invalid index to ``num_classes``, the one marker callers test for.

  JAX would wrap negative indices (even in ``mode="fill"``) and clamp large
  ones; after this every invalid index is ``K`` and the loss masks it to NaN.
  In checked mode it also emits a checkify check naming the first offending
  label.
  """
  valid = valid_index_mask(labels, num_classes)
  if checks_on():
    flat = labels.reshape(-1)
    flat_valid = valid.reshape(-1)
    first = jnp.argmin(flat_valid) if flat.size else jnp.int32(0)
    where = jnp.unravel_index(first, labels.shape) if labels.ndim else ()
    bad = flat[first] if flat.size else jnp.int32(0)
    index_args: dict[str, Any] = {f"i{n}": w for n, w in enumerate(where)}
    trailing = "," if len(index_args) == 1 else ""
    index_fmt = "(" + ", ".join("{" + k + "}" for k in index_args) + trailing + ")"
    checkify.check(
        jnp.all(valid),
        f"{fn_name}: labels must lie in [0, {num_classes}); got {{bad}} at index {index_fmt}",
        bad=bad,
        **index_args,
    )
  return jnp.where(valid, labels, num_classes)


def maybe_check_values(
    cost_matrix: jax.Array | None, probs: jax.Array | None, fn_name: str
) -> None:
  """Checked-mode value checks on cost matrices and probability labels."""
  if not checks_on():
    return
  if cost_matrix is not None:
    report_first(~jnp.isfinite(cost_matrix), "cost_matrix has a non-finite entry (costs must "
                 "be finite and >= 0)", fn_name, cost_matrix)
    report_first(cost_matrix < 0, "cost_matrix has a negative entry (min {m}); costs must be "
                 ">= 0", fn_name, cost_matrix, m=jnp.min(cost_matrix))
  if probs is not None and probs.size:  # (an empty batch has nothing to report)
    report_first(probs < 0, "probability labels have a negative entry (min {m}); they must be "
                 ">= 0", fn_name, probs, m=jnp.min(probs))


def prepare_where(
    logits: jax.Array, where: jax.typing.ArrayLike | None, fn_name: str
) -> tuple[jax.Array, jax.Array | None]:
  """Applies an optax-style ``where`` mask to logits.

  ``where`` has shape ``logits.shape[:-1]`` (per example) or ``logits.shape``
  (per class; masked classes are removed from the softmax, like a ``-inf``
  logit). Returns the masked logits and the per-example mask (``None`` if no
  mask). Fully masked rows get safe zero logits so no NaN reaches gradients;
  their loss is replaced by 0 in :func:`finalize`.
  """
  if where is None:
    return logits, None
  where = jnp.asarray(where)
  if where.dtype != jnp.bool_:
    where = where.astype(bool)
  if where.shape == logits.shape:
    row = jnp.any(where, axis=-1)
    masked = jnp.where(where, logits, -jnp.inf)
    logits = jnp.where(row[..., None], masked, jnp.zeros_like(logits))
    return logits, row
  if where.shape == logits.shape[:-1]:
    return logits, where
  raise ValueError(
      f"{fn_name}: where must have shape logits.shape[:-1] or logits.shape; got "
      f"where.shape={where.shape} and logits.shape={logits.shape}."
  )


def finalize(out: jax.Array, row_mask: jax.Array | None, dtype: Any) -> jax.Array:
  if row_mask is not None:
    out = jnp.where(row_mask, out, jnp.zeros_like(out))
  return out.astype(dtype)


# Messages of check_param: format strings over fn, name, shape and what (the shape rule),
# value and dtype (the argument as given), op ("> 0" or ">= 0") and bad (the first offending
# entry, a float).
_PARAM_SHAPE = "{fn}: {name} must be {what}; got shape {shape}."
_PARAM_REAL = "{fn}: {name} must be real; got {value!r} (shape {shape}, dtype {dtype})."
_PARAM_RANGE = "{fn}: {name} must be finite and {op} 0; got {name}={bad}."


def check_param(
    value: Any,
    fn_name: str,
    name: str,
    *,
    strict: bool,
    batch_shape: tuple[int, ...] = (),
    batch_desc: str = "",
    shape_message: str = _PARAM_SHAPE,
    concrete_shape_message: str | None = None,
    real_message: str | None = _PARAM_REAL,
    range_message: str = _PARAM_RANGE,
) -> jax.Array:
  """A real hyperparameter (a scalar, or one value per example), ``value`` broadcast to
  ``batch_shape``; ``ValueError`` naming ``fn_name`` and ``name`` otherwise.

  ``value`` must broadcast to ``batch_shape`` (NumPy rules; ``()`` means a scalar,
  ``batch_desc`` names the argument the batch shape comes from). A concrete value must
  also be real (an integer or floating dtype; skipped when ``real_message`` is ``None``)
  with every entry finite and ``> 0`` (``strict``) or ``>= 0``. A traced value is only
  checked for shape: :func:`param` and checked mode take care of its values.

  The messages are the format strings above; ``concrete_shape_message`` (default
  ``shape_message``) is the one for a concrete value of the wrong shape.
  """
  shape = jnp.shape(value)
  what = "a scalar" if not batch_shape else (
      f"a scalar or an array that broadcasts to the batch shape {tuple(batch_shape)} of "
      f"{batch_desc}")
  fields: dict[str, Any] = {"fn": fn_name, "name": name, "shape": shape, "what": what,
                            "value": value, "op": ">" if strict else ">="}
  fits = len(shape) <= len(batch_shape) and all(
      a in (1, b) for a, b in zip(shape[::-1], batch_shape[::-1], strict=False))
  traced = _sharding.is_tracer(value)
  if not fits:
    message = shape_message if traced or concrete_shape_message is None else (
        concrete_shape_message)
    raise ValueError(message.format(**fields))
  if traced:
    return jnp.broadcast_to(value, batch_shape)
  arr = np.asarray(value)
  if real_message is not None and not (
      np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
  ):
    raise ValueError(real_message.format(**fields, dtype=arr.dtype))
  flat = arr.reshape(-1)
  ok = np.isfinite(flat) & ((flat > 0) if strict else (flat >= 0))
  if not np.all(ok):
    raise ValueError(range_message.format(**fields, dtype=arr.dtype,
                                          bad=float(flat[np.argmax(~ok)])))
  return jnp.broadcast_to(jnp.asarray(value), batch_shape)


# --------------------------------------------------------------------------- #
# Internal: preconditions on values (NaN poisoning, and checked-mode reports
# naming the function, the argument and the first offending index).
# --------------------------------------------------------------------------- #

# Probability labels must sum to 1 per row within this (absolute) tolerance; 16-bit
# labels, whose rounding alone can move a row sum by ~1e-2, get PROB_SUM_TOLERANCE_16.
PROB_SUM_TOLERANCE = 1e-3
PROB_SUM_TOLERANCE_16 = 2e-2
# bayes_decision's output for a row whose decision is undefined (non-finite logits or
# costs): not a class, not -1 (abstain), and an index error wherever it is used as one.
INVALID_DECISION = int(np.iinfo(np.int32).min)


def prob_sum_tolerance(dtype: Any) -> float:
  return PROB_SUM_TOLERANCE_16 if jnp.finfo(dtype).bits < 32 else PROB_SUM_TOLERANCE


def report_first(bad: jax.Array, message: str, fn_name: str, value: jax.Array,
                 **extra: jax.Array) -> None:
  """Checked mode: a checkify error naming the first index where ``bad`` holds.

  ``message`` describes the precondition (``"logits must be finite"``); the error reads
  ``"<fn_name>: <message>; got <value at that index> at index (i, j)"``. ``extra`` are
  further values formatted into ``message`` (``{name}`` fields).
  """
  if not checks_on():
    return
  bad = jnp.asarray(bad)
  if bad.size == 0:  # an empty batch: nothing to report (and no first index)
    return
  if bad.ndim == 0:
    checkify.check(~bad, f"{fn_name}: {message}; got {{v}}", v=jnp.asarray(value),
                   **extra)  # type: ignore[arg-type]
    return
  flat = bad.reshape(-1)
  first = jnp.argmax(flat)
  where = jnp.unravel_index(first, bad.shape)
  index_args = {f"i{n}": w for n, w in enumerate(where)}
  trailing = "," if len(index_args) == 1 else ""
  index_fmt = "(" + ", ".join("{" + k + "}" for k in index_args) + trailing + ")"
  v = jnp.broadcast_to(jnp.asarray(value), bad.shape).reshape(-1)[first]
  checkify.check(~jnp.any(flat), f"{fn_name}: {message}; got {{v}} at index {index_fmt}",
                 v=v, **index_args, **extra)  # type: ignore[arg-type]


def check_finite_logits(logits: jax.Array, fn_name: str, name: str = "logits") -> None:
  """Checked mode: NaN or infinite logits are reported (unchecked they give NaN)."""
  if checks_on() and jnp.issubdtype(logits.dtype, jnp.floating):
    report_first(~jnp.isfinite(logits), f"{name} must be finite", fn_name, logits)


def poison_probs(labels: jax.Array, fn_name: str) -> jax.Array:
  """Probability labels with NaN rows where a row has a negative or non-finite entry, or
  does not sum to 1 within :func:`prob_sum_tolerance`; checked mode names the first.

  One fused pass over the labels (a row minimum and a row sum).
  """
  tol = prob_sum_tolerance(labels.dtype)
  total = jnp.sum(labels, axis=-1, keepdims=True)
  lowest = jnp.min(labels, axis=-1, keepdims=True)
  row_ok = (lowest >= 0) & (jnp.abs(total - 1) <= tol)  # NaN / inf fail both
  if checks_on():
    report_first(~jnp.isfinite(labels), "probability labels have a non-finite entry", fn_name,
                 labels)
    maybe_check_values(None, labels, fn_name)
    report_first(~(jnp.abs(total[..., 0] - 1) <= tol),
                 f"probability label rows must sum to 1 (tolerance {tol:g})",
                 fn_name, total[..., 0])
  return jnp.where(row_ok, labels, jnp.nan)


def poison_cost(cost: jax.Array, fn_name: str, name: str = "cost_matrix") -> jax.Array:
  """A dense cost table, all NaN if any entry is negative or non-finite (one scalar
  reduction over ``K x K``, fused by XLA into the select). Checked mode names the first bad
  entry (:func:`maybe_check_values`)."""
  if not jnp.issubdtype(cost.dtype, jnp.floating):
    return cost
  maybe_check_values(cost, None, fn_name)  # on the values as given, before poisoning
  # One verdict per matrix: a bad entry poisons its own example's matrix only (a stack of
  # per-example matrices, batch_shape + (K, K)), or the whole shared (K, K) matrix.
  ok = jnp.min(jnp.where(jnp.isfinite(cost), cost, -1), axis=(-2, -1), keepdims=True) >= 0
  return jnp.where(ok, cost, jnp.nan)


def poison_param(value: Any, ok: Any, fn_name: str, name: str, requirement: str,
                 dtype: Any) -> jax.Array:
  """A hyperparameter as an array of ``dtype``, NaN where ``ok(value)`` fails.

  ``requirement`` reads like ``"> 0"``; checked mode reports
  ``"<fn_name>: <name> must be <requirement>; got <value>"`` (with the first offending index
  for arrays).
  """
  value = jnp.asarray(value, dtype)
  good = ok(value)
  report_first(~good, f"{name} must be {requirement}", fn_name, value)
  return jnp.where(good, value, jnp.nan)


def param(value: Any, ok: Callable[[Any], Any], fn_name: str, name: str,
          requirement: str) -> Any:
  """A hyperparameter: a valid Python number is returned as is (static fast paths keep
  working); anything else goes through :func:`poison_param` (NaN where ``ok`` fails)."""
  if isinstance(value, (int, float)) and not isinstance(value, bool) and bool(ok(value)):
    return value
  value = jnp.asarray(value)
  if not jnp.issubdtype(value.dtype, jnp.floating):
    value = value.astype(jnp.float32)
  return poison_param(value, ok, fn_name, name, requirement, value.dtype)
