"""Numeric helpers over the class axis, shared by the losses and the cost structures.

Reductions that XLA:CPU runs slowly as written (arg-min, long row sums), prefix sums as
matrix products, and a power with finite gradients at zero.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

# Below this many classes a plain argmin is as fast as anything.
_MIN_BLOCKED = 256


def nearest_divisor(k: int, lo: int, hi: int, target: float) -> int | None:
  """The divisor of ``k`` in ``[lo, hi]`` nearest to ``target`` (in ratio); ``None`` if none."""
  divisors = [d for d in range(lo, hi + 1) if k % d == 0]
  if not divisors:
    return None
  return min(divisors, key=lambda d: abs(math.log(d / target)))


def argmin_block(num_classes: int) -> int | None:
  """Block width for :func:`argmin_last`: a divisor of ``K`` near ``2 sqrt(K)``.

  ``None`` when ``num_classes`` is small or has no divisor in ``[16, K / 4]``
  (a prime, say): then a plain ``argmin`` runs.
  """
  k = int(num_classes)
  if k < _MIN_BLOCKED:
    return None
  return nearest_divisor(k, 16, k // 4, min(max(2 * math.sqrt(k), 32), 512))


def argmin_last(x: jax.Array) -> jax.Array:
  """``jnp.argmin(x, axis=-1)`` as ``int32``, with its exact tie and NaN rules.

  XLA:CPU runs an arg-min as a scalar loop, but a plain ``min`` as a
  vectorised reduction. So: the minimum of each block of ``c`` classes (one
  vectorised pass), the arg-min over the ``K / c`` block minima, then the
  arg-min inside the winning block (``c`` gathered values per row), several
  times faster (``docs/benchmarks.md``, section "Structured costs at huge K").
  The first occurrence of the row minimum lies in the first block whose
  minimum equals it, so ties go to the lowest index.

  XLA:CPU's vectorised ``min`` skips NaN, while ``argmin`` returns the first
  NaN. So the blocks are also summed (NaN if a block holds a NaN, or both
  infinities); rows whose sum is NaN take a plain ``argmin``, behind a
  ``lax.cond`` that costs nothing while no such row exists.
  """
  k = x.shape[-1]
  c = argmin_block(k)
  if c is None:
    return jnp.argmin(x, axis=-1).astype(jnp.int32)
  blocks = x.reshape(x.shape[:-1] + (k // c, c))
  block_min = jnp.min(blocks, axis=-1)
  block_sum = jnp.sum(blocks, axis=-1)  # NaN if the block has a NaN (or both infinities)
  special = jnp.isnan(jnp.sum(block_sum, axis=-1))
  block = jnp.argmin(block_min, axis=-1).astype(jnp.int32)
  lanes = jax.lax.broadcast_to_rank(jnp.arange(c, dtype=jnp.int32), block.ndim + 1)
  cols = block[..., None] * c + lanes
  inside = jnp.argmin(jnp.take_along_axis(x, cols, axis=-1), axis=-1).astype(jnp.int32)
  fast = block * c + inside
  return jax.lax.cond(
      jnp.any(special),
      lambda: jnp.where(special, jnp.argmin(x, axis=-1).astype(jnp.int32), fast),
      lambda: fast,
  )


# Rows at least this long sum products as matrix-vector products on XLA:CPU.
LONG_ROW_CLASSES = 2**15


def matvec_sum(x: jax.Array) -> jax.Array:
  """``jnp.sum(x, axis=-1)`` written as ``x @ ones(K)`` (see :func:`row_sum`).

  ``HIGHEST`` precision: no TF32 on GPUs.
  """
  ones = jnp.ones(x.shape[-1], x.dtype)
  return jnp.einsum("...k,k->...", x, ones, precision=jax.lax.Precision.HIGHEST)


def row_sum(x: jax.Array) -> jax.Array:
  """``jnp.sum(x, axis=-1)``, as ``x @ ones(K)`` for long rows on XLA:CPU.

  XLA:CPU fuses the elementwise producers of a row sum into a library
  reduction that is slow per element on long rows, but never fuses producers
  into a ``dot``: the product is then written by a parallel loop and summed by
  a GEMV, faster in all. Below ``LONG_ROW_CLASSES`` classes, or on other
  backends, the fused reduction is as fast or faster, so this is a plain
  ``jnp.sum`` there (timings and the crossover: ``docs/benchmarks.md``,
  section "Closed-form losses vs optax cross-entropy").
  """
  if jax.default_backend() != "cpu" or x.shape[-1] < LONG_ROW_CLASSES:
    return jnp.sum(x, axis=-1)
  return matvec_sum(x)


# Largest K summed with one triangular matrix product; beyond it, blocks.
_FULL_TRIANGLE_MAX = 128


def prefix_sum(x: jax.Array, *, totals_from_products: bool = False) -> jax.Array:
  """``jnp.cumsum(x, axis=-1)`` through small triangular matrix products.

  On XLA:CPU ``jnp.cumsum`` lowers to a windowed reduction with ``O(K^2)``
  work per row (many times an ``exp`` pass at ``K = 1000``), and
  ``lax.associative_scan`` is no faster (``docs/benchmarks.md``, section
  "Closed-form losses vs optax cross-entropy"). Here the last axis is cut into
  blocks of ``b ~ 40``; one ``(b, b)`` upper-triangular product gives the sums within
  blocks, and the exclusive prefix sums of the block totals (the same function,
  recursively) give the offsets: ``O(K b)`` multiply-adds that run as matrix
  products, and the reverse-mode derivative (a suffix sum) is again matrix
  products. ``precision=HIGHEST`` keeps float32 exact on GPUs that would
  otherwise use TF32. Rounding error matches ``cumsum``'s (a few ulps of the
  running total).

  ``totals_from_products`` (static) reads the block totals off the last
  column of the within-block products instead of summing the blocks again.
  On XLA:CPU that is faster where the prefix sum stands alone (the cost
  structures) and slower inside ordinal EMD ``power=2``'s fused gradient,
  which keeps the default (``docs/benchmarks.md``, sections
  "Structured costs at huge K" and "Closed-form losses vs optax cross-entropy").
  """
  k = x.shape[-1]
  lead = x.shape[:-1]
  hi = jax.lax.Precision.HIGHEST
  if k <= _FULL_TRIANGLE_MAX:
    tri = jnp.triu(jnp.ones((k, k), x.dtype))
    return jnp.matmul(x, tri, precision=hi)
  b = _block_size(k)
  padded = -(-k // b) * b
  if padded != k:
    x = jnp.pad(x, [(0, 0)] * len(lead) + [(0, padded - k)])
  blocks = x.reshape(*lead, padded // b, b)
  within = jnp.matmul(blocks, jnp.triu(jnp.ones((b, b), x.dtype)), precision=hi)
  totals = within[..., -1] if totals_from_products else jnp.sum(blocks, axis=-1)
  # exclusive prefix sums of block totals
  offsets = prefix_sum(totals, totals_from_products=totals_from_products) - totals
  out = (within + offsets[..., None]).reshape(*lead, padded)
  return out if padded == k else out[..., :k]


def _block_size(k: int) -> int:
  """Block length for :func:`prefix_sum`: a divisor of ``k``, else 40 (with padding).

  On XLA:CPU blocks near 40 ran the within-block product faster than blocks
  of 20 or 25; multiples of 8 between 32 and 64 are preferred
  (``docs/benchmarks.md``, section "Closed-form losses vs optax cross-entropy").
  """
  for lo, hi, step in ((32, 64, 8), (20, 80, 1)):
    divisors = [b for b in range(lo, hi + 1, step) if k % b == 0]
    if divisors:
      return min(divisors, key=lambda b: abs(b - 40))
  return 40


def safe_pow(x: jax.Array, power: jax.typing.ArrayLike) -> jax.Array:
  """``x ** power`` for ``x >= 0`` with finite gradients at ``x == 0``; NaN stays NaN."""
  positive = x != 0
  safe_x = jnp.where(positive, x, jnp.ones_like(x))
  return jnp.where(positive, safe_x**power, jnp.zeros_like(x))
