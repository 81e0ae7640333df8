"""Reductions over the class axis that XLA:CPU runs slowly as written."""

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
