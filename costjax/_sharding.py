"""Trace state and placement of arrays: tracers, explicit mesh sharding, sharded gathers.

One rule decides whether an array is sharded: :func:`explicit_sharding` returns
its :class:`jax.sharding.NamedSharding` when the array is laid out over named
axes of a non-empty mesh with explicit axis types (the default of
``jax.make_mesh``), and ``None`` otherwise. Every helper here, and every caller
that branches on sharding, asks it.

Gathers from a replicated table indexed by a sharded batch (labels) cannot have
their output sharding inferred by JAX, so :func:`gather_rows` and
:func:`take_last` spell it out: the output is sharded like the batch.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def is_tracer(x: Any) -> bool:
  """Whether ``x`` is traced (under ``jit``, ``vmap``, ``grad``...), not a concrete value."""
  return isinstance(x, jax.core.Tracer)


def explicit_sharding(x: jax.Array) -> jax.sharding.NamedSharding | None:
  """The NamedSharding of ``x`` if it is sharded over explicit mesh axes, else None."""
  sharding = getattr(jax.typeof(x), "sharding", None)
  spec = getattr(sharding, "spec", None)
  if (
      isinstance(sharding, jax.sharding.NamedSharding)
      and not sharding.mesh.empty
      and spec is not None
      and any(axis is not None for axis in spec)
  ):
    return sharding
  return None


def sharded_like(x: jax.Array) -> dict[str, Any]:
  """``out_sharding=`` for a new array sharded like ``x`` over explicit mesh axes.

  Empty when ``x`` has no explicit sharding, so the call stays the plain one (which also
  keeps jax versions whose array constructors take no ``out_sharding`` working).
  """
  sharding = explicit_sharding(x)
  return {} if sharding is None else {"out_sharding": sharding}


def replicate(x: jax.Array) -> jax.Array:
  """Gathers an explicitly sharded array onto every device (no-op otherwise)."""
  sharding = explicit_sharding(x)
  if sharding is None:
    return x
  return jax.sharding.reshard(
      x, jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
  )


def gather_rows(table: jax.Array, indices: jax.Array) -> jax.Array:
  """``table[indices]`` along axis 0, for sanitized indices (invalid -> ``len(table)``).

  Rows of invalid indices are unspecified (XLA clamps): callers mask them
  explicitly (:func:`costjax._common.finish`), which is faster than a
  fill-mode gather's per-element bounds select and survives XLA reductions
  that drop NaNs. Under a mesh with explicit axes (the default of
  ``jax.make_mesh``) the output is sharded like ``indices``, with the class
  axis replicated; JAX cannot infer that for a gather from a replicated
  table, so it is spelled out.
  """
  sharding = explicit_sharding(indices)
  out = None
  if sharding is not None:
    spec = (*sharding.spec, *([None] * (table.ndim - 1)))
    out = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(*spec))
  return table.at[indices].get(mode="promise_in_bounds", out_sharding=out)


def take_last(x: jax.Array, idx: Any) -> jax.Array:
  """``x[..., idx]`` for in-bounds ``idx`` (static or a 1-D array), sharded like ``x``."""
  idx = jnp.asarray(idx)
  if x.ndim > 1 and idx.ndim == 1 and explicit_sharding(x) is None:
    # A batched gather: XLA:CPU transposes the operand of ``x[..., idx]``
    # (indexed axis first) inside the consumers' loops.
    idx = jnp.broadcast_to(idx, x.shape[:-1] + idx.shape)
    return jnp.take_along_axis(x, idx, axis=-1, mode="promise_in_bounds")
  return x.at[..., idx].get(mode="promise_in_bounds", out_sharding=explicit_sharding(x))
