"""Losses from features and classifier weights, blockwise over classes.

``loss(features @ weights + bias, labels, cost)`` without the ``B x K``
logits: the classes are visited in blocks of ``block_size`` columns of
``weights``. The forward pass keeps, per example, an online log-sum-exp
(running maximum ``m`` and rescaled sum ``s = sum_j exp(z_j - m)``) and, for
the cost-aware terms, running sums rescaled the same way:

* expected cost: ``a = sum_j exp(z_j - m) C[y, j]``, so ``E_p[C[y]] = a / s``;
* soft labels: an online log-sum-exp of ``-C[y, j] / T`` (the targets'
  normaliser over all ``K``) and ``u = sum_j exp(-C[y, j] / T - mc) z_j``, so
  ``sum_j q_j z_j = u / zc``.

A ``jax.custom_vjp`` stores only per-example statistics and recomputes each
block's logits (and cost entries) in the backward pass, where the gradient
with respect to the block's logits is formed and contracted at once with the
features (``dW`` for the block), the block's weights (``dfeatures``) and the
batch (``dbias``). Peak memory is ``O(B * block_size + D * K)``.

Cost entries ``C[y, j]`` for a block come from
:meth:`costjax.CostStructure.row_block` (or a gather for a dense matrix).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from costjax import _checks, _sharding, _structures

# Default number of classes per block; see "Losses from features" in
# docs/benchmarks.md for the measurement behind it.
DEFAULT_BLOCK_SIZE = 4096


class _Config(NamedTuple):
  """Static configuration of the blockwise pass (hashable)."""

  block: int
  num_classes: int
  expected_cost: bool  # accumulate sum_j p_j C[y, j]
  soft_labels: bool  # accumulate the soft-label targets' normaliser and dot product
  cost_is_dense: bool


# --------------------------------------------------------------------------- #
# Input validation.
# --------------------------------------------------------------------------- #


class _Inputs(NamedTuple):
  features: jax.Array  # (B, D), input dtype
  weights: jax.Array  # (D, K), input dtype
  bias: jax.Array  # (K,) compute dtype (zeros when absent)
  labels: jax.Array  # (B,) sanitized: invalid -> K
  cost: Any  # None, a (K, K) array or a CostStructure, compute dtype
  row_mask: jax.Array | None  # (B,) or None
  batch_shape: tuple[int, ...]
  dtype: Any  # compute dtype
  out_dtype: Any
  block: int


def _prepare(
    fn_name: str,
    features: jax.typing.ArrayLike,
    weights: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    cost_matrix: Any,
    bias: jax.typing.ArrayLike | None,
    where: jax.typing.ArrayLike | None,
    block_size: int | None,
) -> _Inputs:
  features = jnp.asarray(features)
  weights = jnp.asarray(weights)
  for name, x in (("features", features), ("weights", weights)):
    if not jnp.issubdtype(x.dtype, jnp.floating):
      raise TypeError(f"{fn_name}: {name} must have a floating dtype; got {x.dtype}.")
  if features.ndim < 1:
    raise ValueError(
        f"{fn_name}: features must have shape (..., D); got features.shape={features.shape}."
    )
  if weights.ndim != 2 or weights.shape[0] != features.shape[-1]:
    raise ValueError(
        f"{fn_name}: weights must have shape (D, K) with D = features.shape[-1] = "
        f"{features.shape[-1]}; got weights.shape={weights.shape} and "
        f"features.shape={features.shape}."
    )
  d, k = weights.shape
  if k < 1:
    raise ValueError(f"{fn_name}: weights have no classes; got shape {weights.shape}.")
  out_dtype = jnp.result_type(features.dtype, weights.dtype)
  if bias is not None:
    bias = jnp.asarray(bias)
    if not jnp.issubdtype(bias.dtype, jnp.floating):
      raise TypeError(f"{fn_name}: bias must have a floating dtype; got {bias.dtype}.")
    if bias.shape != (k,):
      raise ValueError(
          f"{fn_name}: bias must have shape (K,) = ({k},) to match weights.shape="
          f"{weights.shape}; got bias.shape={bias.shape}."
      )
    out_dtype = jnp.result_type(out_dtype, bias.dtype)
  dtype = _checks.compute_dtype(out_dtype)
  labels = jnp.asarray(labels)
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise TypeError(
        f"{fn_name}: labels must be integer class indices of shape features.shape[:-1]; "
        f"got dtype {labels.dtype} with labels.shape={labels.shape}. Probability labels "
        "are not supported by the losses from features: a (..., K) label array is the "
        "batch x classes array these losses exist to avoid."
    )
  batch_shape = features.shape[:-1]
  if labels.shape != batch_shape:
    raise ValueError(
        f"{fn_name}: labels must have shape features.shape[:-1]; got labels.shape="
        f"{labels.shape} and features.shape={features.shape}."
    )
  cost = None
  if cost_matrix is not None:
    cost = _structures.check_cost(cost_matrix, k, fn_name, dtype)
    _structures.check_values(cost, None, fn_name)
    if not _structures.is_structure(cost):
      cost = jax.lax.stop_gradient(cost)
    else:
      cost = jax.tree.map(jax.lax.stop_gradient, cost)
  labels = _checks.sanitize_indices(labels, k, fn_name)
  row_mask = None
  if where is not None:
    where = jnp.asarray(where)
    if where.shape != batch_shape:
      raise ValueError(
          f"{fn_name}: where must have shape features.shape[:-1] (one flag per example; "
          "remove classes with a -inf bias entry); got where.shape="
          f"{where.shape} and features.shape={features.shape}."
      )
    row_mask = where.astype(bool).reshape(-1)
  if block_size is None:
    block = min(k, DEFAULT_BLOCK_SIZE)
  else:
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
      raise ValueError(f"{fn_name}: block_size must be a positive int; got {block_size!r}.")
    block = min(k, block_size)
  b = jnp.zeros((k,), dtype) if bias is None else bias.astype(dtype)
  # Under explicit mesh axes, weights and bias sharded over classes are gathered:
  # the scan slices blocks of classes at traced offsets. (Automatic sharding
  # under jit leaves the placement to XLA.)
  weights, b = _sharding.replicate(weights), _sharding.replicate(b)
  return _Inputs(
      features.reshape(-1, d), weights, b, labels.reshape(-1), cost, row_mask,
      batch_shape, dtype, out_dtype, block,
  )


# --------------------------------------------------------------------------- #
# The blockwise pass.
# --------------------------------------------------------------------------- #


class _Block(NamedTuple):
  start: jax.Array  # first column (clamped so the block lies inside [0, K))
  cols: jax.Array  # (n,) its classes
  fresh: jax.Array  # (n,) classes not already visited by an earlier block


def _block(cfg: _Config, i: jax.Array) -> _Block:
  """Block ``i``. The last one is shifted back to end at ``K`` when
  ``block_size`` does not divide ``K``; its columns that the previous block
  covered are masked out (``-inf`` logits), so no padded copy of the weights
  is made."""
  nominal = i * cfg.block
  start = jnp.minimum(nominal, cfg.num_classes - cfg.block)
  cols = start + jnp.arange(cfg.block, dtype=start.dtype)
  return _Block(start, cols, cols >= nominal)


def _num_blocks(cfg: _Config) -> int:
  return -(-cfg.num_classes // cfg.block)


def _logits(cfg, h, w, b, blk: _Block, dtype) -> jax.Array:
  """``(B, n)`` logits of the block, float32 (or wider) accumulation; ``-inf``
  on columns an earlier block covered."""
  wb = jax.lax.dynamic_slice_in_dim(w, blk.start, cfg.block, axis=1)
  bb = jax.lax.dynamic_slice_in_dim(b, blk.start, cfg.block)
  z = jnp.matmul(h, wb, preferred_element_type=dtype) + bb[None, :]
  return jnp.where(blk.fresh[None, :], z, -jnp.inf)


def _costs(cfg, cost, y, blk: _Block, dtype) -> jax.Array:
  """``C[y, cols]``, ``(B, n)``."""
  y = jnp.minimum(y, cfg.num_classes - 1)
  if cfg.cost_is_dense:
    sub = jax.lax.dynamic_slice_in_dim(cost, blk.start, cfg.block, axis=1)  # (K, n)
    return _sharding.gather_rows(sub, y).astype(dtype)
  return cost.row_block(y, blk.cols).astype(dtype)


def _safe(m: jax.Array) -> jax.Array:
  return jnp.where(jnp.isfinite(m), m, jnp.zeros_like(m))


def _replicated_like(x: jax.Array) -> dict[str, Any]:
  """``out_sharding=`` replicated over the explicit mesh of ``x``; empty without one."""
  sharding = _sharding.explicit_sharding(x)
  if sharding is None:
    return {}
  return {"out_sharding": jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())}


def _match(new: Any, old: Any) -> Any:
  """``new`` with the (explicit-mesh) sharding of ``old``, leaf by leaf: scan carries
  must keep their type when, say, the labels are sharded and the features are not."""

  def one(x, ref):
    want = getattr(jax.typeof(ref), "sharding", None)
    have = getattr(jax.typeof(x), "sharding", None)
    if (want is None or have is None or getattr(want, "mesh", None) is None
        or want.mesh.empty or want == have):
      return x
    return jax.sharding.reshard(x, want)

  return jax.tree.map(one, new, old)


def _forward(cfg: _Config, h, w, b, y, cost, temperature):
  dtype = b.dtype
  # Per-example carries shaped (and, under explicit mesh axes, sharded) like the labels.
  # (``*_like`` of a concrete array drops its sharding: matched explicitly.)
  neg = _match(jnp.full_like(y, -jnp.inf, dtype=dtype), y)
  zero = _match(jnp.zeros_like(y, dtype=dtype), y)
  # m, s, picked, a, mc, zc, u, and for d/dT: uc = sum e_t z c, cq = sum e_t c
  init = (neg, zero, zero, zero, neg, zero, zero, zero, zero)

  def body(carry, i):
    m, s, picked, a, mc, zc, u, uc, cq = carry
    blk = _block(cfg, i)
    z = _logits(cfg, h, w, b, blk, dtype)
    m_new = jnp.maximum(m, jnp.max(z, axis=-1))
    m_safe = _safe(m_new)
    scale = jnp.exp(m - m_safe)
    e = jnp.exp(z - m_safe[:, None])
    s = s * scale + jnp.sum(e, axis=-1)
    hit = (blk.cols[None, :] == y[:, None]) & blk.fresh[None, :]
    picked = picked + jnp.sum(jnp.where(hit, z, 0), axis=-1)
    if cfg.expected_cost or cfg.soft_labels:
      c = _costs(cfg, cost, y, blk, dtype)
    if cfg.expected_cost:
      a = a * scale + jnp.sum(e * c, axis=-1)
    if cfg.soft_labels:
      t = jnp.where(blk.fresh[None, :], -c / temperature, -jnp.inf)
      mc_new = _safe(jnp.maximum(mc, jnp.max(t, axis=-1)))
      tscale = jnp.exp(mc - mc_new)
      et = jnp.exp(t - mc_new[:, None])
      zc = zc * tscale + jnp.sum(et, axis=-1)
      # -inf logits (masked classes) are left out here; the loss adds +inf for them.
      etz = jnp.where(jnp.isfinite(z), et * z, 0)
      u = u * tscale + jnp.sum(etz, axis=-1)
      # For the temperature's gradient: d/dT sum_j q_j z_j = Cov_q(z, c) / T^2.
      uc = uc * tscale + jnp.sum(etz * c, axis=-1)
      cq = cq * tscale + jnp.sum(et * c, axis=-1)
      mc = mc_new
    return _match((m_new, s, picked, a, mc, zc, u, uc, cq), carry), None

  (m, s, picked, a, mc, zc, u, uc, cq), _ = jax.lax.scan(
      body, init, jnp.arange(_num_blocks(cfg), dtype=jnp.int32)
  )
  lse = _safe(m) + jnp.log(s)
  ec = a / s if cfg.expected_cost else zero
  log_zc = mc + jnp.log(zc) if cfg.soft_labels else zero
  zq = u / zc if cfg.soft_labels else zero
  # d zq / dT per example: (E_q[z c] - E_q[z] E_q[c]) / T^2.
  dzq_dt = (uc / zc - zq * (cq / zc)) / (temperature * temperature) if cfg.soft_labels else zero
  return (lse, picked, ec, zq), (lse, ec, log_zc, dzq_dt)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _stats(cfg: _Config, h, w, b, y, cost, temperature):
  """Per-example ``(lse, z_y, E_p[C[y]], sum_j q_j z_j)`` of ``z = h @ w + b``."""
  return _forward(cfg, h, w, b, y, cost, temperature)[0]


def _stats_fwd(cfg, h, w, b, y, cost, temperature):
  out, (lse, ec, log_zc, dzq_dt) = _forward(cfg, h, w, b, y, cost, temperature)
  return out, (h, w, b, y, cost, temperature, lse, ec, log_zc, dzq_dt)


def _stats_bwd(cfg, res, g):
  h, w, b, y, cost, temperature, lse, ec, log_zc, dzq_dt = res
  g_lse, g_pick, g_ec, g_zq = g
  dtype = b.dtype

  def body(carry, i):
    dh, dw, db = carry
    blk = _block(cfg, i)
    z = _logits(cfg, h, w, b, blk, dtype)
    p = jnp.exp(z - lse[:, None])  # 0 on masked and already visited columns
    gz = g_lse[:, None] * p
    hit = (blk.cols[None, :] == y[:, None]) & blk.fresh[None, :]
    gz = gz + jnp.where(hit, g_pick[:, None], 0)
    if cfg.expected_cost or cfg.soft_labels:
      c = _costs(cfg, cost, y, blk, dtype)
    if cfg.expected_cost:
      gz = gz + g_ec[:, None] * p * (c - ec[:, None])
    if cfg.soft_labels:
      q = jnp.where(blk.fresh[None, :], jnp.exp(-c / temperature - log_zc[:, None]), 0)
      gz = gz + g_zq[:, None] * q
    wb = jax.lax.dynamic_slice_in_dim(w, blk.start, cfg.block, axis=1)
    dh = dh + jnp.matmul(gz.astype(wb.dtype), wb.T, preferred_element_type=dtype)
    # A sum over the (possibly sharded) batch: replicated like dw.
    dwb = jnp.matmul(h.T, gz.astype(h.dtype), preferred_element_type=dtype,
                     **_replicated_like(h))
    old = jax.lax.dynamic_slice_in_dim(dw, blk.start, cfg.block, axis=1)
    dw = jax.lax.dynamic_update_slice_in_dim(dw, old + dwb.astype(dw.dtype), blk.start, axis=1)
    old_b = jax.lax.dynamic_slice_in_dim(db, blk.start, cfg.block)
    db = jax.lax.dynamic_update_slice_in_dim(db, old_b + jnp.sum(gz, axis=0), blk.start, 0)
    return _match((dh, dw, db), carry), None

  init = _match((jnp.zeros_like(h, dtype=dtype), jnp.zeros_like(w), jnp.zeros_like(b)), (h, w, b))
  (dh, dw, db), _ = jax.lax.scan(body, init, jnp.arange(_num_blocks(cfg), dtype=jnp.int32))
  zeros_cost = None if cost is None else jax.tree.map(jnp.zeros_like, cost)
  return (dh.astype(h.dtype), dw, db.astype(b.dtype), None, zeros_cost,
          jnp.sum(g_zq * dzq_dt).astype(temperature.dtype))


_stats.defvjp(_stats_fwd, _stats_bwd)


def _run(fn_name, features, weights, labels, cost_matrix, bias, where, block_size, *,
         expected_cost=False, soft_labels=False, temperature=1.0):
  x = _prepare(fn_name, features, weights, labels, cost_matrix, bias, where, block_size)
  cfg = _Config(
      x.block, x.weights.shape[1], expected_cost, soft_labels,
      x.cost is not None and not _structures.is_structure(x.cost),
  )
  t = jnp.asarray(temperature, x.dtype)
  stats = _stats(cfg, x.features, x.weights, x.bias, x.labels, x.cost, t)
  return x, stats


def _finish(out: jax.Array, x: _Inputs) -> jax.Array:
  out = jnp.where(x.labels == x.weights.shape[1], jnp.nan, out)
  out = _checks.finalize(out, x.row_mask, x.out_dtype)
  return out.reshape(x.batch_shape)


# --------------------------------------------------------------------------- #
# Public losses.
# --------------------------------------------------------------------------- #


def linear_cross_entropy(
    features: jax.typing.ArrayLike,
    weights: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    bias: jax.typing.ArrayLike | None = None,
    block_size: int | None = None,
    where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
  r"""Softmax cross-entropy of ``features @ weights + bias``, never forming the logits.

  Equals ``optax.softmax_cross_entropy_with_integer_labels(features @ weights
  + bias, labels)`` in value and in its gradients with respect to
  ``features``, ``weights`` and ``bias``, but visits the ``K`` classes in
  blocks of ``block_size`` columns of ``weights``: an online log-sum-exp in
  the forward pass, and a backward pass that recomputes each block's logits.
  Peak memory is ``O(B * block_size + D * K)`` for ``B`` examples, never
  ``O(B * K)`` (the cut / fused linear cross-entropy of large-vocabulary
  language models).

  Args:
    features: ``(..., D)`` floating array (the last hidden layer).
    weights: ``(D, K)`` classifier weights. bfloat16 / float16 features and
      weights are multiplied with float32 accumulation.
    labels: integer class indices of shape ``features.shape[:-1]``.
      Probability labels are not supported: a ``(..., K)`` label array is the
      ``B x K`` array these losses avoid.
    bias: optional ``(K,)`` bias; a ``-inf`` entry removes a class from the
      softmax.
    block_size: classes per block (static; default
      ``min(K, DEFAULT_BLOCK_SIZE)``, 4096). Need not divide ``K``.
    where: optional per-example mask of shape ``features.shape[:-1]``;
      masked examples give 0 and no gradient.

  Returns:
    Per-example loss, shape ``features.shape[:-1]``, in the dtype of the
    logits ``features @ weights + bias`` would have. NaN for out-of-range
    labels.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import costjax as cj
    >>> h = jnp.array([[1., 0.], [0., 2.]])  # features (B, D)
    >>> w = jnp.array([[1., 0., -1.], [0., 1., 0.5]])  # weights (D, K)
    >>> cj.linear_cross_entropy(h, w, jnp.array([0, 1]), block_size=2)
    Array([0.4076, 0.4076], dtype=float32)
    >>> optax.softmax_cross_entropy_with_integer_labels(h @ w, jnp.array([0, 1]))
    Array([0.4076, 0.4076], dtype=float32)
  """
  x, (lse, picked, _, _) = _run(
      "costjax.linear_cross_entropy", features, weights, labels, None, bias, where, block_size
  )
  return _finish(lse - picked, x)


def linear_expected_cost(
    features: jax.typing.ArrayLike,
    weights: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    cost_matrix: Any,
    *,
    bias: jax.typing.ArrayLike | None = None,
    block_size: int | None = None,
    where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
  r""":func:`expected_cost` of ``features @ weights + bias``, blockwise over classes.

  ``sum_j p_j C[y, j]`` with ``p = softmax(features @ weights + bias)``: the
  forward pass carries ``sum_j exp(z_j - m) C[y, j]`` beside the online
  log-sum-exp, rescaled with it whenever the running maximum ``m`` grows.
  Cost entries are read one block at a time through
  :meth:`CostStructure.row_block`, so a :class:`TreeCost`,
  :class:`OrdinalCost`, :class:`EmbeddingCost` or a user structure never
  becomes a ``K x K`` (or ``B x K``) array; a dense ``(K, K)`` matrix works
  where it fits in memory.

  The cost is a constant here: no gradient flows to a dense matrix or to a
  structure's leaves (use :func:`expected_cost` on materialized logits to
  learn costs).

  Args:
    features: ``(..., D)`` floating array.
    weights: ``(D, K)`` classifier weights.
    labels: integer class indices of shape ``features.shape[:-1]``.
    cost_matrix: a ``(K, K)`` array or a :class:`CostStructure`.
    bias: optional ``(K,)`` bias (``-inf`` removes a class).
    block_size: classes per block (static; default 4096).
    where: optional per-example mask, shape ``features.shape[:-1]``.

  Returns:
    Per-example expected cost, shape ``features.shape[:-1]``; NaN for
    out-of-range labels.

  Examples:
    >>> import jax.numpy as jnp
    >>> import costjax as cj
    >>> h = jnp.array([[1., 0.], [0., 2.]])
    >>> w = jnp.array([[1., 0., -1.], [0., 1., 0.5]])
    >>> cj.linear_expected_cost(h, w, jnp.array([0, 1]), cj.OrdinalCost(3), block_size=2)
    Array([0.4248, 0.3348], dtype=float32)
  """
  x, (_, _, ec, _) = _run(
      "costjax.linear_expected_cost", features, weights, labels, cost_matrix, bias, where,
      block_size, expected_cost=True,
  )
  return _finish(ec, x)


def linear_cost_regularized_cross_entropy(
    features: jax.typing.ArrayLike,
    weights: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    cost_matrix: Any,
    *,
    lam: jax.typing.ArrayLike,
    bias: jax.typing.ArrayLike | None = None,
    block_size: int | None = None,
    where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
  r""":func:`cost_regularized_cross_entropy` of ``features @ weights + bias``, blockwise.

  Cross-entropy plus ``lam`` times the expected cost, both from one blockwise
  pass (see :func:`linear_cross_entropy` and :func:`linear_expected_cost`).
  ``lam`` is traced and differentiable; the cost is a constant.

  Args:
    features: ``(..., D)`` floating array.
    weights: ``(D, K)`` classifier weights.
    labels: integer class indices of shape ``features.shape[:-1]``.
    cost_matrix: a ``(K, K)`` array or a :class:`CostStructure`.
    lam: weight of the expected-cost term.
    bias: optional ``(K,)`` bias (``-inf`` removes a class).
    block_size: classes per block (static; default 4096).
    where: optional per-example mask, shape ``features.shape[:-1]``.

  Returns:
    Per-example loss, shape ``features.shape[:-1]``; NaN for out-of-range
    labels.

  Examples:
    >>> import jax.numpy as jnp
    >>> import costjax as cj
    >>> h = jnp.array([[1., 0.], [0., 2.]])
    >>> w = jnp.array([[1., 0., -1.], [0., 1., 0.5]])
    >>> cj.linear_cost_regularized_cross_entropy(
    ...     h, w, jnp.array([0, 1]), cj.OrdinalCost(3), lam=0.5)
    Array([0.62 , 0.575], dtype=float32)
  """
  x, (lse, picked, ec, _) = _run(
      "costjax.linear_cost_regularized_cross_entropy", features, weights, labels, cost_matrix,
      bias, where, block_size, expected_cost=True,
  )
  return _finish(lse - picked + jnp.asarray(lam, ec.dtype) * ec, x)


def linear_soft_label_cross_entropy(
    features: jax.typing.ArrayLike,
    weights: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    cost_matrix: Any,
    *,
    temperature: jax.typing.ArrayLike = 1.0,
    bias: jax.typing.ArrayLike | None = None,
    block_size: int | None = None,
    where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
  r""":func:`soft_label_cross_entropy` of ``features @ weights + bias``, blockwise.

  Cross-entropy against the targets ``q = softmax(-C[y] / T)``. Their
  normaliser over all ``K`` classes is an online log-sum-exp of
  ``-C[y, j] / T`` carried beside the logits' one, with the running dot
  product ``sum_j exp(-C[y, j] / T) z_j`` rescaled alike, so neither ``q`` nor
  the logits ever exist as ``B x K`` arrays. The gradient with respect to the
  logits is ``softmax(z) - q``, recomputed block by block.

  As in :func:`soft_label_cross_entropy`, every target is positive, so a
  ``-inf`` bias entry gives the loss's mathematical value ``+inf`` with
  finite gradients. ``temperature`` is differentiable (two more running
  sums give ``d/dT sum_j q_j z_j = Cov_q(z, C[y]) / T^2``); the cost is a
  constant here (no gradient flows to a matrix or to a structure's leaves).

  Args:
    features: ``(..., D)`` floating array.
    weights: ``(D, K)`` classifier weights.
    labels: integer class indices of shape ``features.shape[:-1]``.
    cost_matrix: a ``(K, K)`` array or a :class:`CostStructure`.
    temperature: target temperature ``T`` in cost units (traced, differentiable).
    bias: optional ``(K,)`` bias.
    block_size: classes per block (static; default 4096).
    where: optional per-example mask, shape ``features.shape[:-1]``.

  Returns:
    Per-example loss, shape ``features.shape[:-1]``; NaN for out-of-range
    labels.

  Examples:
    >>> import jax.numpy as jnp
    >>> import costjax as cj
    >>> h = jnp.array([[1., 0.], [0., 2.]])
    >>> w = jnp.array([[1., 0., -1.], [0., 1., 0.5]])
    >>> cj.linear_soft_label_cross_entropy(h, w, jnp.array([0, 1]), cj.OrdinalCost(3))
    Array([0.8324, 1.0434], dtype=float32)
  """
  x, (lse, _, _, zq) = _run(
      "costjax.linear_soft_label_cross_entropy", features, weights, labels, cost_matrix, bias,
      where, block_size, soft_labels=True, temperature=temperature,
  )
  # A -inf logit has a positive target: the loss is +inf (its gradient stays finite).
  masked = jnp.any(jnp.isneginf(x.bias))
  return _finish(lse - zq + jnp.where(masked, jnp.inf, 0).astype(lse.dtype), x)
