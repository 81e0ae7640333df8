"""Entropic optimal transport between predicted and target class distributions.

The batch lives in the leading axes of one solver loop with a single shared
``(K, K)`` cost matrix, so a batch of ``B`` problems costs one ``(B, K) x
(K, K)`` product per half-iteration on the fast path, and converged examples
are frozen so the batched result equals the per-example one.

Notation (cost-matrix orientation, ``C[i, j]``: true ``i``, predicted ``j``):

* source ``p = softmax(logits)`` over predicted classes ``j``, potential ``f``;
* sink ``q`` (target) over true classes ``i``, potential ``g``;
* plan ``T[i, j] = q_i p_j exp((f_j + g_i - C[i, j]) / eps)``.

The objective ``<T, C> + eps KL(T || q p^T)`` has the dual
``D(f, g) = <f, p> + <g, q> - eps (sum_ij T[i, j] - 1)``, which equals the
optimum at the optimal potentials. Losses evaluate ``D`` at potentials found
under :func:`jax.lax.stop_gradient`, so gradients are the envelope-theorem
(Danskin) gradients: ``f`` for ``p``, ``g`` for ``q``, the plan for ``C``,
``KL(T || q p^T)`` for ``eps``; memory does not grow with the iteration count.
"""

from __future__ import annotations

import functools
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from costjax import _checks, _common, _sharding, _structures

# Largest (max(C) - min(C)) / epsilon at which the kernel exp(-C / eps) is used:
# every row/column sum of the max-shifted kernel products is then at least
# exp(-ratio), far above the smallest normal number, so the fast path computes
# the same log-domain update to rounding error.
_KERNEL_MAX_RATIO = {4: 50.0, 8: 500.0}
_SCALING = 0.98
_SCALING_START_RATIO = 50.0
# Tail compaction: once at most ceil(total / _COMPACT_FRACTION) problems (and at
# least _COMPACT_MIN) are unconverged, they finish in a buffer of that size.
_COMPACT_FRACTION = 16
_COMPACT_MIN = 8
_COMPACT_STAGES = 1
# Adaptive over-relaxation of problems unconverged after _RELAX_START iterations.
_RELAX_START = 10
_RELAX_WINDOW = 4
_RELAX_MAX = 1.8
# A relaxed problem with no new lowest error in this many iterations returns to plain steps.
_STALL_WINDOW = 64
# Largest K for which sinkhorn_loss and sinkhorn_solve densify a cost structure.
_MAX_DENSE_CLASSES = 4096


class SinkhornOutput(NamedTuple):
  """Result of :func:`sinkhorn_solve`; every field has the batch shape ``(...)`` first.

  Attributes:
    value: ``(...)`` entropic OT value ``<T, C> + eps KL(T || q p^T)`` (not
      debiased), the dual objective at the returned potentials.
    f: ``(..., K)`` dual potential on the predicted classes (source ``p``).
    g: ``(..., K)`` dual potential on the true classes (sink ``q``).
    plan: ``(..., K, K)`` transport plan in the cost matrix's orientation:
      ``plan[..., i, j]`` is the mass moved from predicted class ``j`` to true
      class ``i``; ``sum(plan * C)`` is the transport cost. Its column sums
      equal ``p`` exactly; its row sums approximate ``q``.
    converged: ``(...)`` bool, ``marginal_error <= tol``.
    iterations: ``(...)`` int32, Sinkhorn iterations used by each example.
    marginal_error: ``(...)`` L1 distance between the plan's row sums and ``q``.
  """

  value: jax.Array
  f: jax.Array
  g: jax.Array
  plan: jax.Array
  converged: jax.Array
  iterations: jax.Array
  marginal_error: jax.Array


class _Config(NamedTuple):
  """Static configuration of one solver program (hashable: a jit static argument).

  Attributes:
    tol: a problem is done once the L1 error of its plan's row sums is ``<= tol``.
    max_iterations: iteration cap per problem, epsilon-scaling levels included.
    use_scan: run a fixed-length :func:`jax.lax.scan` of ``max_iterations``
      steps instead of a :func:`jax.lax.while_loop` (checked mode).
    stages: number of compacted tail loops (0: none; see :func:`_compact_sizes`).
  """

  tol: float
  max_iterations: int
  use_scan: bool
  stages: int


class _Problems(NamedTuple):
  """``(G, ..., K)`` problems; group ``g`` has cost ``cost[g]`` and epsilon ``eps[g]``.

  Attributes:
    lp: ``(G, ..., K)`` log of the source ``p``.
    lq: ``(G, ..., K)`` log of the sink ``q`` (``-inf`` on zeros).
    cost: ``(G, K, K)`` cost matrices.
    eps: ``(G,)`` epsilons.
  """

  lp: jax.Array
  lq: jax.Array
  cost: jax.Array
  eps: jax.Array


class _State(NamedTuple):
  """Loop state of the solver; every field has the batch shape ``(G, ...)`` first.

  Attributes:
    f: ``(G, ..., K)`` source potential.
    g: ``(G, ..., K)`` sink potential; once ``done``, ``f`` is its exact update.
    g_next: ``(G, ..., K)`` update of ``g`` from ``f``, where the next
      iteration starts (before over-relaxation).
    err: L1 error of the plan's row sums at the last convergence test
      (``inf`` before the first).
    iters: iterations used, epsilon-scaling levels included.
    done: converged, NaN error, out of iterations or inactive: frozen.
    k: iterations at the target epsilon (after epsilon scaling).
    omega: over-relaxation factor (1: plain Sinkhorn steps; a relaxed problem
      whose error stops falling goes back to 1 for good).
    mark: error ``_RELAX_WINDOW`` iterations before ``_RELAX_START`` (from
      which the convergence rate is estimated), then the lowest error at the
      last stall checkpoint (every ``_STALL_WINDOW`` iterations from
      ``_RELAX_START`` on).
    best: lowest error since ``_RELAX_START`` (``inf`` before).
  """

  f: jax.Array
  g: jax.Array
  g_next: jax.Array
  err: jax.Array
  iters: jax.Array
  done: jax.Array
  k: jax.Array
  omega: jax.Array
  mark: jax.Array
  best: jax.Array


class _Solution(NamedTuple):
  """Solver result, all without gradient; fields have the batch shape first.

  Attributes:
    f: ``(..., K)`` source potential.
    g: ``(..., K)`` sink potential.
    err: L1 error of the plan's row sums (0 for inactive problems).
    iters: iterations used (0 for inactive problems).
  """

  f: jax.Array
  g: jax.Array
  err: jax.Array
  iters: jax.Array


# --------------------------------------------------------------------------- #
# Public API.
# --------------------------------------------------------------------------- #


def sinkhorn_loss(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    cost_matrix: jax.typing.ArrayLike,
    *,
    epsilon: jax.typing.ArrayLike,
    debiased: bool = False,
    ground: Literal["ordinal"] | None = None,
    tol: float = 1e-3,
    max_iterations: int = 2000,
    where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
  r"""Entropic Wasserstein loss between predicted and target class distributions.

  With source ``p = softmax(logits)`` (predictions) and sink ``q`` (the
  target), the ground cost of moving predicted mass at class ``j`` to true
  class ``i`` is ``C[i, j]``:

  .. math::

    \mathrm{OT}_\varepsilon(p, q) = \min_{T \in \Pi(q, p)} \sum_{ij} T_{ij} C_{ij}
      + \varepsilon\, \mathrm{KL}(T \,\|\, q p^\top).

  Under this KL convention a one-hot target admits the single plan
  ``q p^T``, so the value is *exactly* :func:`expected_cost` for every
  ``epsilon``; integer labels therefore take that closed form, with no
  iterations. ``debiased=True`` gives the Sinkhorn divergence

  .. math::

    S_\varepsilon(p, q) = \mathrm{OT}_\varepsilon(p, q)
      - \tfrac12 \mathrm{OT}_\varepsilon(p, p) - \tfrac12 \mathrm{OT}_\varepsilon(q, q),

  which is 0 at ``p = q`` (all three problems share one solver loop).

  **Solver.** Batched log-domain Sinkhorn: the leading axes are the batch
  inside one :func:`jax.lax.while_loop`, the cost matrix is shared, converged
  examples are frozen, and the loop stops when every example's L1 error on
  the target marginal is ``<= tol`` or after ``max_iterations``. When
  ``(max(C) - min(C)) / epsilon <= 50`` (float32; 500 in float64) the
  iterations use matrix products with the max-shifted kernel
  ``exp(-C / epsilon)``, which gives the log-domain update to rounding error
  at a fraction of the cost; otherwise every update is a log-sum-exp, after
  an epsilon-scaling warm start (epsilon decays by 0.98 per iteration from
  ``(max(C) - min(C)) / 50``; these iterations count towards
  ``max_iterations``). Problems still unconverged after 10 iterations
  over-relax their updates with a factor estimated from their own
  convergence rate (the returned state is always a plain Sinkhorn step).

  **Under** :func:`jax.vmap` (over models, seeds, cost matrices or epsilons)
  the solver is a :func:`jax.custom_batching.custom_vmap` function: the
  vmapped axes join the batch of one loop, the kernel/log-domain choice is
  made once for all of them (the log domain if any problem needs it) by a
  real :func:`jax.lax.cond`, and once at most 1/16 of the problems are left
  they finish in a compacted buffer, so the slowest example does not make
  every model iterate. Each example's result depends only on its own inputs.
  In float32, ``tol`` below about ``1e-5`` may be unreachable
  (rounding); the loop then stops at ``max_iterations``. Zero-mass
  classes (``-inf`` logits, zeros in ``q``) are handled in the log domain and
  give finite values and gradients down to ``epsilon = 1e-3 * max(C)``.

  **Gradients** come from the dual at potentials computed under
  ``stop_gradient`` (envelope theorem): ``f`` w.r.t. ``p``, the plan w.r.t.
  ``cost_matrix``, ``KL(T || q p^T)`` w.r.t. ``epsilon``. They are the exact
  gradients of the returned value (a smooth function of the inputs at fixed
  potentials) and converge with it; nothing is unrolled.

  **Checked mode.** Inside :func:`checks_enabled` (or :func:`checked`) the
  loop is a fixed-length :func:`jax.lax.scan` of ``max_iterations`` steps
  (same result, since converged examples are frozen), because checkify cannot
  functionalise a ``while_loop`` under ``vmap``; labels are checked before
  the solver runs.

  **Closed forms.** Auto-detected (static): integer labels => expected cost
  (plus one solve for ``OT(p, p)`` if ``debiased``). Not auto-detected: the
  cost matrix is usually traced, so its structure cannot be inspected. For the
  unregularised ``epsilon=0`` (a Python ``0``) this function accepts integer
  labels, or ``ground="ordinal"`` (you promise ``C[i, j] = |i - j|``; checked
  when ``cost_matrix`` is concrete), which uses the exact CDF formula of
  :func:`ordinal_emd`. For tree metrics use :func:`tree_wasserstein`.

  Preconditions (unchecked, a violation gives the output in the last column, never a
  plausible value; under :func:`checked` it raises, naming the function, the argument and
  the first offending index):

  | input | must be | otherwise |
  |---|---|---|
  | ``logits`` | no NaN, no ``+inf`` (``-inf``: probability 0) | NaN or inf (that example) |
  | integer ``labels`` | in ``[0, K)`` | NaN (that example) |
  | probability ``labels`` | ``>= 0``, rows sum to 1 (tolerance [1]) | NaN (that example) |
  | ``cost_matrix`` (dense) | every entry finite and ``>= 0`` | NaN (all) |
  | ``epsilon`` | finite, ``> 0`` (or ``0``); concrete: ``ValueError`` | NaN (all) |

  [1] ``1e-3`` on each row's sum, ``2e-2`` for 16-bit labels.

  Args:
    logits: unnormalised scores ``(..., K)``; the source is their softmax.
    labels: integer class indices ``(...)`` or probability vectors ``(..., K)``
      (normalised to sum 1 internally).
    cost_matrix: ``(K, K)`` costs, ``C[i, j]`` for predicting ``j`` when the
      truth is ``i``. Use :func:`jax.vmap` for stacks of cost matrices (a
      stack raises ``ValueError``, except in the closed form of integer labels
      without ``debiased``, which takes one matrix per example).
    epsilon: entropic regularisation (> 0, traced: changing it does not
      recompile). A Python ``0`` selects an exact closed form (see above).
    debiased: return the Sinkhorn divergence instead of ``OT_eps(p, q)``.
    ground: ``"ordinal"`` to declare ``C = |i - j|``; only used at
      ``epsilon=0``.
    tol: target L1 marginal error (static).
    max_iterations: static cap on Sinkhorn iterations.
    where: optional mask ``(...)`` (examples; masked ones give 0 and do not
      keep the loop running) or ``(..., K)`` (classes removed from ``p``).

  Returns:
    Per-example loss of shape ``logits.shape[:-1]`` in the dtype of
    ``logits``. NaN for out-of-range integer labels.

  Examples:
    >>> import jax.numpy as jnp
    >>> import costjax as cj
    >>> C = jnp.array([[0., 1., 4.], [2., 0., 1.], [3., 1., 0.]])
    >>> logits = jnp.array([[2., 0., -1.], [0., 1., 0.]])
    >>> q = jnp.array([[0.8, 0.2, 0.], [0.1, 0.1, 0.8]])
    >>> cj.sinkhorn_loss(logits, q, C, epsilon=0.1)
    Array([0.1624, 0.8327], dtype=float32)
    >>> cj.sinkhorn_loss(logits, q, C, epsilon=0.1, debiased=True)
    Array([0.1112, 0.752 ], dtype=float32)
    >>> cj.sinkhorn_loss(logits, jnp.array([0, 2]), C, epsilon=0.1)  # = expected_cost
    Array([0.2822, 1.2119], dtype=float32)
    >>> cj.expected_cost(logits, jnp.array([0, 2]), C)
    Array([0.2822, 1.2119], dtype=float32)

  References:
    Frogner et al., "Learning with a Wasserstein Loss", NeurIPS 2015.
    Cuturi, "Sinkhorn Distances", NeurIPS 2013.
    Feydy et al., "Interpolating between Optimal Transport and MMD using
    Sinkhorn Divergences", AISTATS 2019.
  """
  name = "costjax.sinkhorn_loss"
  _check_static(name, tol, max_iterations, ground)
  cost_matrix = _dense_for_sinkhorn(cost_matrix, name)
  p = _common.prepare(name, logits, labels, cost_matrix, where)
  exact = _is_static_zero(epsilon)
  if not exact:
    _check_epsilon(name, epsilon)
    epsilon = _checks.param(epsilon, lambda v: (v > 0) & (v < jnp.inf), name, "epsilon",
                            "finite and > 0")
  lp = jax.nn.log_softmax(p.logits, axis=-1)
  cost = p.cost_matrix
  if exact:
    out = _exact_value(name, p, lp, cost, ground)
    return _common.finish(out, p)
  if debiased or not p.is_index:
    _check_shared_cost(name, cost_matrix, p)
  eps = jnp.asarray(epsilon, lp.dtype)
  active = _active(p)
  solve = functools.partial(
      _solve_value, cost=cost, eps=eps, tol=tol, max_iterations=max_iterations
  )
  if p.is_index:
    probs = jnp.exp(lp)
    rows = _common.target_cost_rows(p)
    out = jnp.sum(probs * rows, axis=-1)
    if debiased:
      diag = _sharding.gather_rows(jnp.diagonal(cost)[:, None], p.labels)[..., 0]
      out = out - 0.5 * solve(lp, lp, active) - 0.5 * diag
  else:
    lq = _log_target(p.labels, active)
    if debiased:
      vals = solve(
          jnp.stack([lp, lp, lq]), jnp.stack([lq, lp, lq]), jnp.stack([active] * 3)
      )
      out = vals[0] - 0.5 * vals[1] - 0.5 * vals[2]
    else:
      out = solve(lp, lq, active)
  out = jnp.where(jnp.isnan(eps), jnp.nan, out)  # epsilon out of range (poisoned): NaN
  return _common.finish(out, p)


def sinkhorn_solve(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    cost_matrix: jax.typing.ArrayLike,
    *,
    epsilon: jax.typing.ArrayLike,
    tol: float = 1e-3,
    max_iterations: int = 2000,
    where: jax.typing.ArrayLike | None = None,
) -> SinkhornOutput:
  r"""Runs the batched Sinkhorn solver of :func:`sinkhorn_loss` and returns diagnostics.

  Same problem and conventions as :func:`sinkhorn_loss` (non-debiased);
  integer labels are turned into one-hot targets and solved (one iteration
  suffices) instead of taking the closed form, so the potentials and plan are
  available. ``value`` is differentiable exactly like the loss.

  Preconditions (unchecked, a violation gives the output in the last column, never a
  plausible value; under :func:`checked` it raises, naming the function, the argument and
  the first offending index):

  | input | must be | otherwise |
  |---|---|---|
  | ``logits`` | no NaN, no ``+inf`` (``-inf``: probability 0) | NaN or inf (that example) |
  | integer ``labels`` | in ``[0, K)`` | NaN (that example) |
  | probability ``labels`` | ``>= 0``, rows sum to 1 (tolerance [1]) | NaN (that example) |
  | ``cost_matrix`` (dense) | every entry finite and ``>= 0`` | NaN (all) |
  | ``epsilon`` | finite, ``> 0``; concrete: ``ValueError`` | NaN (all) |

  [1] ``1e-3`` on each row's sum, ``2e-2`` for 16-bit labels.

  Args:
    logits: ``(..., K)`` scores; source ``p = softmax(logits)``.
    labels: integer indices ``(...)`` or probability vectors ``(..., K)``.
    cost_matrix: ``(K, K)`` cost matrix (a per-example stack raises
      ``ValueError``: use :func:`jax.vmap`).
    epsilon: entropic regularisation (> 0, traced).
    tol: target L1 error on the target marginal (static).
    max_iterations: static iteration cap.
    where: optional example ``(...)`` or class ``(..., K)`` mask.

  Returns:
    A :class:`SinkhornOutput` with ``value`` ``(...)``, potentials ``f``, ``g``
    ``(..., K)``, ``plan`` ``(..., K, K)`` (``plan[..., i, j]``: predicted
    ``j`` to true ``i``), ``converged`` ``(...)``, ``iterations`` ``(...)`` and
    ``marginal_error`` ``(...)``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import costjax as cj
    >>> C = jnp.array([[0., 1., 4.], [2., 0., 1.], [3., 1., 0.]])
    >>> out = cj.sinkhorn_solve(jnp.array([2., 0., -1.]), jnp.array([0.8, 0.2, 0.]),
    ...                         C, epsilon=0.1, tol=1e-5)
    >>> out.value, out.converged
    (Array(0.1624, dtype=float32), Array(True, dtype=bool))
    >>> out.plan.sum(axis=-1)  # rows: the target q
    Array([0.8, 0.2, 0. ], dtype=float32)
    >>> out.plan.sum(axis=-2)  # columns: p = softmax(logits), exactly
    Array([0.8438, 0.1142, 0.042 ], dtype=float32)
  """
  name = "costjax.sinkhorn_solve"
  _check_static(name, tol, max_iterations, None)
  _check_epsilon(name, epsilon)
  epsilon = _checks.param(epsilon, lambda v: (v > 0) & (v < jnp.inf), name, "epsilon",
                          "finite and > 0")
  cost_matrix = _dense_for_sinkhorn(cost_matrix, name)
  p = _common.prepare(name, logits, labels, cost_matrix, where)
  _check_shared_cost(name, cost_matrix, p)
  lp = jax.nn.log_softmax(p.logits, axis=-1)
  if p.is_index:
    onehot = jax.nn.one_hot(p.labels, p.num_classes, dtype=lp.dtype)
    bad = (p.labels == p.num_classes)[..., None]
    q = jnp.where(bad, jnp.nan, onehot)
  else:
    q = p.labels
  active = _active(p)
  lq = _log_target(q, active)
  eps = jnp.asarray(epsilon, lp.dtype)
  cost = p.cost_matrix
  f, g, err, iters = _potentials(lp, lq, cost, eps, active, tol, max_iterations)
  value = _dual_value(lp, lq, cost, eps, f, g)
  plan = jnp.exp(_log_plan(lp, lq, cost, eps, f, g))
  value = _common.finish(value, p)
  return SinkhornOutput(
      value=value,
      f=f,
      g=g,
      plan=plan,
      converged=err <= tol,
      iterations=iters,
      marginal_error=err,
  )


# --------------------------------------------------------------------------- #
# Validation helpers.
# --------------------------------------------------------------------------- #


def _check_static(name, tol, max_iterations, ground) -> None:
  if not isinstance(max_iterations, (int, np.integer)) or max_iterations < 1:
    raise ValueError(f"{name}: max_iterations must be a positive int; got {max_iterations!r}.")
  if _sharding.is_tracer(tol) or not np.isfinite(tol) or tol <= 0:
    raise ValueError(f"{name}: tol must be a positive static float; got {tol!r}.")
  if ground not in (None, "ordinal"):
    raise ValueError(f"{name}: ground must be None or 'ordinal'; got {ground!r}.")


def _check_shared_cost(name: str, cost_matrix: Any, p: _common.Prepared) -> None:
  """The solver's one ``(K, K)`` matrix for the whole batch: a per-example stack raises."""
  if p.cost_matrix.ndim == 2:
    return
  k = p.num_classes
  raise ValueError(
      f"{name}: the Sinkhorn solver takes one cost_matrix of shape (K, K) = ({k}, {k}) "
      f"shared by every example; got cost_matrix.shape={tuple(jnp.shape(cost_matrix))}, a "
      "stack of per-example matrices. Use jax.vmap over the stack (and the examples) for "
      "per-example cost matrices."
  )


def _is_static_zero(epsilon) -> bool:
  if _sharding.is_tracer(epsilon):
    return False
  arr = np.asarray(epsilon)
  return arr.shape == () and float(arr) == 0.0


def _check_epsilon(name, epsilon) -> None:
  _checks.check_param(
      epsilon, name, "epsilon", strict=True, real_message=None,
      range_message="{fn}: {name} must be a finite positive number; got {bad!r} "
      "(epsilon=0 is only available through the exact closed forms).")


def _dense_for_sinkhorn(cost: Any, fn_name: str) -> Any:
  """A structure as its dense matrix while ``K <= 4096``; dense input unchanged."""
  if not _structures.is_structure(cost):
    return cost
  if cost.num_classes > _MAX_DENSE_CLASSES:
    raise ValueError(
        f"{fn_name}: a cost structure with K = {cost.num_classes} classes would be "
        f"densified to a {cost.num_classes} x {cost.num_classes} matrix (the limit is "
        f"K <= {_MAX_DENSE_CLASSES}). For tree costs use costjax.tree_wasserstein, "
        "the exact W1 in O(K * depth); otherwise expected_cost or a closed form."
    )
  return cost.dense()


def _active(p: _common.Prepared) -> jax.Array:
  shape = p.logits.shape[:-1]
  if p.row_mask is None:
    return jnp.ones(shape, bool)
  return jnp.broadcast_to(p.row_mask, shape)


def _log_target(q: jax.Array, active: jax.Array) -> jax.Array:
  """log of ``q / sum(q)``, ``-inf`` on zeros; inactive rows get a harmless uniform target."""
  num_classes = q.shape[-1]
  uniform = jnp.full_like(q, 1.0 / num_classes)
  q = jnp.where(active[..., None], q, uniform)
  q = q / jnp.sum(q, axis=-1, keepdims=True)
  return _safe_log(q)


def _safe_log(x: jax.Array) -> jax.Array:
  """``log(x)`` with ``-inf`` (and a zero gradient) where ``x == 0``."""
  pos = x > 0
  return jnp.where(pos, jnp.log(jnp.where(pos, x, 1.0)), -jnp.inf)


def _exact_value(name, p, lp, cost, ground) -> jax.Array:
  """Unregularised W1 (epsilon == 0) by a closed form."""
  probs = jnp.exp(lp)
  if p.is_index:
    return jnp.sum(probs * _common.target_cost_rows(p), axis=-1)
  if ground != "ordinal":
    raise ValueError(
        f"{name}: epsilon=0 (exact OT) is available for integer labels (expected cost) "
        "or with ground='ordinal' (C[i, j] = |i - j|); use epsilon > 0 otherwise."
    )
  if not _sharding.is_tracer(cost):
    k = np.arange(p.num_classes)
    if not np.allclose(np.asarray(cost), np.abs(k[:, None] - k[None, :])):
      raise ValueError(f"{name}: ground='ordinal' requires cost_matrix[i, j] == |i - j|.")
  q = p.labels / jnp.sum(p.labels, axis=-1, keepdims=True)
  diff = jnp.cumsum(probs, axis=-1) - jnp.cumsum(q, axis=-1)
  return jnp.sum(jnp.abs(diff[..., :-1]), axis=-1)


# --------------------------------------------------------------------------- #
# Solver.
# --------------------------------------------------------------------------- #


def _solve_value(lp, lq, active, *, cost, eps, tol, max_iterations) -> jax.Array:
  f, g, _, _ = _potentials(lp, lq, cost, eps, active, tol, max_iterations)
  return _dual_value(lp, lq, cost, eps, f, g)


def _potentials(lp, lq, cost, eps, active, tol, max_iterations):
  """Converged potentials ``(f, g)``, error and iteration counts, all without gradient.

  ``cost`` is ``(K, K)`` and ``eps`` a scalar for every problem of the batch
  ``lp.shape[:-1]``. Outside checked mode the solver is a
  :func:`jax.custom_batching.custom_vmap` function: a :func:`jax.vmap` over
  models, cost matrices or epsilons adds a leading batch axis to one solver
  call instead of batching its loop, so the kernel/log-domain choice stays one
  scalar :func:`jax.lax.cond` and converged problems of every model are
  compacted out together (see :func:`_solve_grouped`).
  """
  lp, lq, cost, eps = (lax.stop_gradient(x) for x in (lp, lq, cost, eps))
  tol, max_iterations = float(tol), int(max_iterations)
  if _checks.checks_on():
    # checkify cannot functionalise a while_loop under vmap (nor a custom_vmap):
    # a fixed-length scan gives the same result thanks to freezing.
    config = _Config(tol=tol, max_iterations=max_iterations, use_scan=True, stages=0)
    return _solve_jit(lp, lq, active, cost, eps, config=config)
  config = _Config(tol=tol, max_iterations=max_iterations, use_scan=False,
                   stages=_COMPACT_STAGES)
  return _batched_solver(config)(lp, lq, active, cost, eps)


@functools.cache
def _batched_solver(config: _Config):
  """The solver as a ``custom_vmap`` function for one static configuration.

  Arguments ``(lp, lq, active, cost, eps)``: problems ``(*batch, K)``, ``cost``
  ``(*prefix, K, K)`` and ``eps`` ``(*prefix)``, where every prefix axis has
  size 1 or the size of the corresponding batch axis. The batching rule puts
  the vmapped axis first on every argument (size 1 for unbatched costs and
  epsilons) and calls the same function again, so nested vmaps end in one
  call on the whole stack of problems.
  """

  @jax.custom_batching.custom_vmap
  def solver(lp, lq, active, cost, eps):
    return _solve_jit(lp, lq, active, cost, eps, config=config)

  @solver.def_vmap
  def _rule(axis_size, in_batched, lp, lq, active, cost, eps):
    lp, lq, active = (
        x if b else jnp.broadcast_to(x, (axis_size, *jnp.shape(x)))
        for x, b in zip((lp, lq, active), in_batched[:3], strict=True)
    )
    cost, eps = (x if b else x[None] for x, b in zip((cost, eps), in_batched[3:], strict=True))
    # custom_vmap wants the output's structure with a bool per leaf: every field is batched.
    batched = _Solution(f=True, g=True, err=True, iters=True)  # type: ignore[arg-type]
    return solver(lp, lq, active, cost, eps), batched

  return solver


@functools.partial(jax.jit, static_argnames=("config",))
def _solve_jit(lp, lq, active, cost, eps, *, config: _Config) -> _Solution:
  """Regroups ``(*batch, K)`` problems by distinct ``(cost, eps)`` and solves them.

  The batch axes along which the cost or epsilon varies move first (merged into
  one group axis ``G``; a new axis of size 1 when they never vary); the other
  batch axes stay as they are, so a sharded batch axis is never reshaped.
  """
  k = lp.shape[-1]
  bs = lp.shape[:-1]
  npre = cost.ndim - 2
  ks = np.broadcast_shapes(cost.shape[:npre], jnp.shape(eps))
  gdims = [i for i in range(npre) if ks[i] != 1]
  rest = [i for i in range(len(bs)) if i not in gdims]
  perm = gdims + rest
  groups = int(np.prod([bs[i] for i in gdims], dtype=np.int64))

  def to_groups(x):
    x = jnp.broadcast_to(x, bs + x.shape[len(bs):])
    x = jnp.transpose(x, perm + list(range(len(bs), x.ndim)))
    if not gdims:
      return x[None]
    if len(gdims) == 1:
      return x
    return x.reshape((groups,) + x.shape[len(gdims):])

  def from_groups(x):
    if not gdims:
      x = x[0]
    elif len(gdims) > 1:
      x = x.reshape(tuple(bs[i] for i in perm) + x.shape[1 + len(rest):])
    return jnp.transpose(x, list(np.argsort(perm)) + list(range(len(bs), x.ndim)))

  cost_g = jnp.broadcast_to(cost, ks + (k, k)).reshape(groups, k, k)
  eps_g = jnp.broadcast_to(jnp.asarray(eps, lp.dtype), ks).reshape(groups)
  # Compaction flattens the batch; an explicitly sharded batch axis cannot be
  # reshaped without naming the output sharding, so such batches skip it.
  if any(_sharding.explicit_sharding(x) is not None for x in (lp, lq, active)):
    config = config._replace(stages=0)
  problems = _Problems(lp=to_groups(lp), lq=to_groups(lq), cost=cost_g, eps=eps_g)
  out = _solve_grouped(problems, to_groups(active), config)
  return jax.tree.map(from_groups, out)


def _kernel_ok(cost: jax.Array, eps: jax.Array) -> jax.Array:
  """Whether every ``(cost[g], eps[g])`` may use the kernel path (one scalar)."""
  ratio = _KERNEL_MAX_RATIO.get(jnp.dtype(cost.dtype).itemsize, 50.0)
  spread = jnp.max(cost, axis=(-2, -1)) - jnp.min(cost, axis=(-2, -1))
  return jnp.all(spread <= ratio * eps)


def _lse_updates(cost, eps):
  """Exact log-domain half-steps on ``(G, ..., K)`` problems with ``cost`` ``(G, K, K)``.

  Each is a log-sum-exp over a ``(G, ..., K, K)`` tensor; the ``eps`` passed to
  an update broadcasts against ``(G, ...)``.
  """
  del eps  # epsilon varies during epsilon scaling: passed to each update

  def c_over(x, eps):
    c = cost.reshape(cost.shape[:1] + (1,) * (x.ndim - 2) + cost.shape[1:])
    return c / eps[..., None, None]

  def update_g(lp, f, eps):  # sink potential, one per true class i (rows of C)
    z = (lp + f / eps[..., None])[..., None, :] - c_over(lp, eps)
    return -eps[..., None] * jax.nn.logsumexp(z, axis=-1)

  def update_f(lq, g, eps):  # source potential, one per predicted class j (columns of C)
    z = (lq + g / eps[..., None])[..., :, None] - c_over(lq, eps)
    return -eps[..., None] * jax.nn.logsumexp(z, axis=-2)

  return update_g, update_f


def _kernel_updates(cost, eps):
  """The same half-steps with a max-shifted kernel: one batched matrix product each."""
  cmin = jnp.min(cost, axis=(-2, -1))  # (G,)
  kernel = jnp.exp(-(cost - cmin[:, None, None]) / eps[:, None, None])  # entries in [e^-ratio, 1]

  def shifted_log_matvec(logw, spec):
    m = jnp.max(logw, axis=-1, keepdims=True)
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    s = jnp.einsum(spec, jnp.exp(logw - m), kernel)
    # The floor only matters in the branch lax.cond discards under vmap.
    return m + jnp.log(jnp.maximum(s, jnp.finfo(s.dtype).tiny))

  def shift(x):
    return cmin.reshape(cmin.shape + (1,) * (x.ndim - 1))

  def update_g(lp, f, eps):  # sum over j: (G, ..., j) x (G, i, j) -> (G, ..., i)
    s = shifted_log_matvec(lp + f / eps[..., None], "g...j,gij->g...i")
    return shift(lp) - eps[..., None] * s

  def update_f(lq, g, eps):  # sum over i: (G, ..., i) x (G, i, j) -> (G, ..., j)
    s = shifted_log_matvec(lq + g / eps[..., None], "g...i,gij->g...j")
    return shift(lq) - eps[..., None] * s

  return update_g, update_f


def _sink_error(lq, g, g_next, eps):
  """L1 error of the plan's row sums: ``sum_i q_i |exp((g_i - g_next_i) / eps) - 1|``."""
  q = jnp.exp(lq)
  pos = q > 0
  ratio = jnp.exp(jnp.where(pos, (g - g_next) / eps[..., None], 0.0))
  return jnp.sum(jnp.where(pos, q * jnp.abs(ratio - 1.0), 0.0), axis=-1)


def _compact_sizes(total: int, stages: int) -> tuple[int, ...]:
  """Static slot counts of the compacted tail loops (each ``_COMPACT_FRACTION`` smaller)."""
  caps: list[int] = []
  size = total
  while len(caps) < stages:
    cap = max(_COMPACT_MIN, -(-size // _COMPACT_FRACTION))
    if cap * 2 > size:
      break
    caps.append(cap)
    size = cap
  return tuple(caps)


def _solve_grouped(problems: _Problems, active: jax.Array, config: _Config) -> _Solution:
  """Sinkhorn on ``(G, n, K)`` problems; group ``g`` has cost ``cost[g]`` and ``eps[g]``.

  Kernel or log domain is decided once for all groups (a scalar predicate).
  The log-domain path starts with an epsilon-scaling phase: epsilon decays
  geometrically from ``(max C - min C) / 50`` to ``eps``, one iteration per
  level, without convergence test; its iterations count towards
  ``max_iterations``. Then Sinkhorn iterates at ``eps`` with a convergence
  test per problem; converged problems are frozen, so every problem gets the
  iterates it would get alone. Once at most ``_compact_sizes(...)[0]`` problems are
  left, they are gathered into a small buffer and finished there, so the long
  tail of slow problems does not pay for the whole batch.
  """
  cost, eps = problems.cost, problems.eps
  use_kernel = _kernel_ok(cost, eps)
  range_ = jnp.max(cost, axis=(-2, -1)) - jnp.min(cost, axis=(-2, -1))
  eps_start = jnp.maximum(eps, range_ / _SCALING_START_RATIO)
  levels = jnp.ceil(jnp.log(eps / eps_start) / np.log(_SCALING)).astype(jnp.int32)
  levels = jnp.where(use_kernel, 0, jnp.clip(levels, 0, config.max_iterations // 2))
  return _run(functools.partial(_make_updates, use_kernel=use_kernel), problems, active=active,
              eps_start=eps_start, levels=levels, config=config)


def _make_updates(cost, eps, *, use_kernel):
  """Half-steps that take the kernel or the log-domain path (``use_kernel``, a scalar)."""
  kernel_g, kernel_f = _kernel_updates(cost, eps)
  lse_g, lse_f = _lse_updates(cost, eps)

  def update_g(lp, f, e):
    return lax.cond(use_kernel, kernel_g, lse_g, lp, f, e)

  def update_f(lq, g, e):
    return lax.cond(use_kernel, kernel_f, lse_f, lq, g, e)

  return update_g, update_f


def _body(state: _State, *, updates, lp, lq, eps, config: _Config) -> _State:
  """One Sinkhorn iteration for every unfinished problem, adaptively over-relaxed.

  A problem still unconverged after ``_RELAX_START`` iterations estimates its
  own convergence rate ``eta`` from its error over the last
  ``_RELAX_WINDOW`` iterations and from then on over-relaxes both half-steps
  with ``omega = 2 / (1 + sqrt(1 - eta))`` (Lehmann, von Renesse, Sambale,
  Uschmajew 2022; capped at ``_RELAX_MAX``): the slow problems converge in a
  fraction of the iterations. Over-relaxation is only locally convergent, so a
  relaxed problem that sets no new lowest error in ``_STALL_WINDOW``
  iterations returns to plain steps for good. The convergence test and the returned state are
  always those of a plain half-step: ``f`` is the exact update for ``g``, so
  the plan's column sums equal ``p``, and the row sums' L1 error is ``err``.
  Everything depends only on the problem's own history.
  """
  update_g, update_f = updates
  f, g, g_next, err, iters, done, k, omega, mark, best = (
      state.f, state.g, state.g_next, state.err, state.iters, state.done, state.k,
      state.omega, state.mark, state.best)
  plain = (omega == 1)[..., None]
  w = omega[..., None]
  g_new = jnp.where(plain, g_next, g + w * (g_next - g))
  f_plain = update_f(lq, g_new, eps)
  g_check = update_g(lp, f_plain, eps)
  err_new = _sink_error(lq, g_new, g_check, eps)
  f_relaxed = jnp.where(plain, f_plain, f + w * (f_plain - f))
  g_next_new = lax.cond(
      jnp.any(~plain & ~done[..., None]),
      lambda: jnp.where(plain, g_check, update_g(lp, f_relaxed, eps)),
      lambda: g_check,
  )
  iters = iters + (~done).astype(jnp.int32)
  k_new = k + 1
  # NaN errors (bad inputs) count as done so they never stall the batch.
  finished = (err_new <= config.tol) | jnp.isnan(err_new) | (iters >= config.max_iterations)
  keep = done[..., None]
  f = jnp.where(keep, f, jnp.where(finished[..., None], f_plain, f_relaxed))
  g = jnp.where(keep, g, g_new)
  g_next = jnp.where(keep, g_next, g_next_new)
  err = jnp.where(done, err, err_new)
  ratio = jnp.where(mark > 0, err_new / jnp.where(mark > 0, mark, 1.0), 1.0)
  eta = jnp.minimum(ratio, 1.0) ** (1.0 / _RELAX_WINDOW)
  new_omega = jnp.where(eta < 1, 2.0 / (1.0 + jnp.sqrt(1.0 - eta)), 1.0)
  new_omega = jnp.clip(new_omega, 1.0, _RELAX_MAX).astype(omega.dtype)
  omega = jnp.where(done | (k_new != _RELAX_START), omega, new_omega)
  # Safeguard: over-relaxation converges only near the solution, and from far away it can
  # cycle. From _RELAX_START on, every _STALL_WINDOW iterations a relaxed problem whose
  # error has set no new low since the last checkpoint goes back to plain steps for good
  # (plain Sinkhorn converges from any potentials). The relaxed error is not monotone,
  # so the test is on the lowest error over a long window, not on the last one.
  best = jnp.where(done | (k_new < _RELAX_START), best, jnp.minimum(best, err_new))
  checkpoint = (k_new >= _RELAX_START) & ((k_new - _RELAX_START) % _STALL_WINDOW == 0)
  stalled = checkpoint & (k_new > _RELAX_START) & ~(best < mark)
  omega = jnp.where(done | ~stalled, omega, jnp.ones_like(omega))
  mark = jnp.where(done | ((k_new != _RELAX_START - _RELAX_WINDOW) & ~checkpoint), mark,
                   jnp.where(checkpoint, best, err_new))
  k = jnp.where(done, k, k_new)
  done = done | finished
  return _State(f=f, g=g, g_next=g_next, err=err, iters=iters, done=done, k=k, omega=omega,
                mark=mark, best=best)


def _run(make_updates, problems: _Problems, *, active, eps_start, levels,
         config: _Config) -> _Solution:
  """The loops of :func:`_solve_grouped`: epsilon scaling, batched, compacted."""
  lp, lq, cost, eps = problems.lp, problems.lq, problems.cost, problems.eps
  max_iterations = config.max_iterations
  bshape = lp.shape[:-1]  # (G, ...)
  eps_b = eps.reshape(eps.shape + (1,) * (len(bshape) - 1))  # broadcasts against (G, ...)
  updates = make_updates(cost, eps)
  update_g, update_f = updates
  log_decay = np.log(_SCALING)
  levels = levels.reshape(eps_b.shape)
  start = eps_start.reshape(eps_b.shape)

  def anneal(t, f):
    e = jnp.maximum(eps_b, start * jnp.exp(log_decay * t.astype(eps.dtype)))
    return jnp.where((t < levels)[..., None], update_f(lq, update_g(lp, f, e), e), f)

  n_levels = max_iterations // 2 if config.use_scan else jnp.max(levels)
  f = lax.fori_loop(0, n_levels, anneal, jnp.zeros_like(lp))
  t0 = levels
  # Per-problem fields are sharded like the batch (explicit mesh axes): the loop
  # body selects between them and values computed from lp.
  batch = _sharding.sharded_like(lp[..., 0])
  iters = jnp.broadcast_to(t0, lp.shape[:-1], **batch)
  state = _State(
      f=f,
      g=jnp.zeros_like(lq),
      g_next=update_g(lp, f, eps_b),
      err=jnp.full(lp.shape[:-1], jnp.inf, lp.dtype, **batch),
      iters=iters,
      done=~active | (iters >= max_iterations),
      k=jnp.zeros(lp.shape[:-1], jnp.int32, **batch),
      omega=jnp.ones(lp.shape[:-1], lp.dtype, **batch),
      mark=jnp.full(lp.shape[:-1], jnp.inf, lp.dtype, **batch),
      best=jnp.full(lp.shape[:-1], jnp.inf, lp.dtype, **batch),
  )
  full = functools.partial(_body, updates=updates, lp=lp, lq=lq, eps=eps_b, config=config)
  caps = _compact_sizes(int(np.prod(bshape)), config.stages)
  if config.use_scan:
    state, _ = lax.scan(lambda s, _: (full(s), None), state, None, length=max_iterations)
  else:
    left = caps[0] if caps else 0
    state = lax.while_loop(lambda s: jnp.sum(~s.done) > left, full, state)
  if caps:
    state = _finish_compacted(state, problems, make_updates, caps, config)
  return _Solution(
      f=state.f,
      g=state.g,
      err=jnp.where(active, state.err, 0.0),
      iters=jnp.where(active, state.iters, 0),
  )


def _finish_compacted(state: _State, problems: _Problems, make_updates, caps: tuple[int, ...],
                      config: _Config) -> _State:
  """Runs the at most ``caps[0]`` unfinished problems in a ``caps[0]``-slot buffer.

  They iterate there until at most ``caps[1]`` are left, which move on to a
  smaller buffer in turn; the last buffer runs to the end. Results are
  scattered back, so every problem gets exactly its own iterates.
  """
  lp, lq, cost, eps = problems.lp, problems.lq, problems.cost, problems.eps
  cap = caps[0]
  nb = lp.ndim - 1
  groups = lp.shape[0]
  total = int(np.prod(lp.shape[:-1]))
  per_group = total // groups

  def flat(x):
    return x.reshape((total,) + x.shape[nb:])

  # Every unfinished problem (at most cap) and finished ones as fillers: those
  # are frozen, so writing them back changes nothing. (top_k compiles faster
  # than nonzero and needs no validity mask.)
  _, idx = lax.top_k((~flat(state.done)).astype(jnp.float32), cap)  # float: fast on CPU
  if groups == 1:  # one shared problem geometry: slots are (1, cap)
    shape, c_cost, c_eps = (1, cap), cost, eps
  else:  # every slot carries its own group's cost and epsilon: slots are (cap, 1)
    gid = idx // per_group
    shape, c_cost, c_eps = (cap, 1), cost[gid], eps[gid]

  def take(x):
    return flat(x).at[idx].get(mode="promise_in_bounds").reshape(shape + x.shape[nb:])

  sub = jax.tree.map(take, state)
  c_lp, c_lq = take(lp), take(lq)
  updates = make_updates(c_cost, c_eps)
  left = caps[1] if len(caps) > 1 else 0
  step = functools.partial(_body, updates=updates, lp=c_lp, lq=c_lq, eps=c_eps[:, None],
                           config=config)
  sub = lax.while_loop(lambda s: jnp.sum(~s.done) > left, step, sub)
  if len(caps) > 1:
    compacted = _Problems(lp=c_lp, lq=c_lq, cost=c_cost, eps=c_eps)
    sub = _finish_compacted(sub, compacted, make_updates, caps[1:], config)

  def put(x, y):
    y = y.reshape((cap,) + y.shape[2:])  # slots are 2-D: (1, cap) or (cap, 1)
    out = flat(x).at[idx].set(y, mode="promise_in_bounds", unique_indices=True)
    return out.reshape(x.shape)

  return jax.tree.map(put, state, sub)


@jax.custom_batching.custom_vmap
def _kernel_ok_custom(cost, eps):
  return _kernel_ok(cost, eps)


@_kernel_ok_custom.def_vmap
def _kernel_ok_rule(axis_size, in_batched, cost, eps):
  del axis_size
  cost, eps = (x if b else x[None] for x, b in zip((cost, eps), in_batched, strict=True))
  return _kernel_ok_custom(cost, eps), False


def _kernel_ok_everywhere(cost, eps):
  """:func:`_kernel_ok` for every problem of an enclosing ``vmap`` at once.

  Under :func:`jax.vmap` over cost matrices or epsilons the predicate stays an
  unbatched scalar (true only if every vmapped problem may use the kernel), so
  a :func:`jax.lax.cond` on it runs one branch instead of both; the log-domain
  branch is exact for every problem, the kernel branch for those allowed.
  """
  if _checks.checks_on():  # checkify has no rule for custom_vmap
    return _kernel_ok(cost, eps)
  return _kernel_ok_custom(cost, eps)


def _expand(cost: jax.Array, nbatch: int) -> jax.Array:
  return cost.reshape((1,) * nbatch + cost.shape)


def _log_plan(lp, lq, cost, eps, f, g):
  c = _expand(cost, lp.ndim - 1)
  return (lq + g / eps)[..., :, None] + (lp + f / eps)[..., None, :] - c / eps


@jax.jit
def _dual_value(lp, lq, cost, eps, f, g):
  """``<f, p> + <g, q> - eps (sum T - 1)``, differentiable at fixed potentials."""
  f = lax.stop_gradient(f)
  g = lax.stop_gradient(g)
  p = jnp.exp(lp)
  q = jnp.exp(lq)
  linear = jnp.sum(p * f, axis=-1) + jnp.sum(jnp.where(q > 0, q * g, 0.0), axis=-1)

  def mass_log():
    return jnp.exp(jax.nn.logsumexp(_log_plan(lp, lq, cost, eps, f, g), axis=(-2, -1)))

  def mass_kernel():
    cmin = lax.stop_gradient(jnp.min(cost))
    kernel = jnp.exp(-(cost - cmin) / eps)
    a = lax.stop_gradient(jnp.max(lp + f / eps, axis=-1, keepdims=True))
    b = lax.stop_gradient(jnp.max(lq + g / eps, axis=-1, keepdims=True))
    w = jnp.exp(lp + f / eps - a)
    v = jnp.exp(lq + g / eps - b)
    s = jnp.sum(v * jnp.tensordot(w, kernel, axes=([-1], [1])), axis=-1)
    # Floor and clip keep the branch that lax.cond discards under vmap finite
    # (with its gradient); on the taken branch s >= exp(-ratio) and log(mass) ~ 0.
    log_mass = a[..., 0] + b[..., 0] - cmin / eps + jnp.log(jnp.maximum(s, jnp.finfo(s.dtype).tiny))
    return jnp.exp(jnp.minimum(log_mass, 80.0))

  mass = lax.cond(_kernel_ok_everywhere(lax.stop_gradient(cost), lax.stop_gradient(eps)),
                  mass_kernel, mass_log)
  return linear - eps * (mass - 1.0)
