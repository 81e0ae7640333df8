"""Test helpers for code that extends costjax.

:func:`check_cost_structure_conformance` runs the conformance suite that every
built-in :class:`~costjax.CostStructure` passes: each operation against the
structure's own ``dense()`` matrix in float64 NumPy, the pytree and
transformation contract (``jit``, ``vmap``), and a few losses and decisions
against the same function on the dense matrix. Call it from your tests on a
small instance (``K`` up to a few hundred) of your structure.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from costjax._structures import CostStructure

__all__ = ("check_cost_structure_conformance",)


def _close(name: str, got: Any, want: Any, rtol: float, atol: float) -> None:
  got = np.asarray(got, np.float64)
  want = np.asarray(want, np.float64)
  if got.shape != want.shape:
    raise AssertionError(f"{name}: shape {got.shape}, expected {want.shape}.")
  if not np.allclose(got, want, rtol=rtol, atol=atol, equal_nan=False):
    err = np.max(np.abs(got - want))
    raise AssertionError(f"{name}: differs from the dense matrix by up to {err:.3g}.")


def check_cost_structure_conformance(
    structure: CostStructure,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    seed: int = 0,
) -> None:
  """Checks that a cost structure honours the :class:`~costjax.CostStructure` contract.

  Every check compares against ``structure.dense()`` (converted to float64
  NumPy), so ``dense()`` must be right; test it against an independent
  formula of your own. Checked:

  * ``num_classes`` is a Python int ``K >= 1``; ``dense()`` is a finite,
    non-negative ``(K, K)`` array; a structure with ``symmetric = True`` has a
    symmetric matrix, one with ``zero_diagonal = True`` an exactly zero diagonal.
  * ``rows``, ``vecmat``, ``entries``, ``row_block`` and ``max_cost`` match
    the matrix, for batched index arrays; ``rows`` and ``row_block`` accept the
    invalid-label marker ``K`` without raising; ``bayes`` (when it returns a
    result) gives a minimiser and the minimum of ``weights @ C``.
  * The structure is a pytree that survives ``jax.jit`` as an argument (its
    leaves traced), ``jax.vmap`` over examples, and ``astype(jnp.float32)``.
  * ``expected_cost``, ``soft_label_cross_entropy`` (integer and probability
    labels), ``bayes_decision`` and ``linear_expected_cost`` give the results
    they give with the dense matrix.

  Args:
    structure: an instance with concrete leaves and a small ``K`` (its dense
      matrix is built).
    rtol: relative tolerance of the comparisons.
    atol: absolute tolerance of the comparisons.
    seed: seed of the random indices, weights and logits.

  Raises:
    AssertionError: naming the first operation that does not conform.
    TypeError: if ``structure`` is not a :class:`~costjax.CostStructure`.

  Examples:
    >>> import costjax as cj
    >>> from costjax.testing import check_cost_structure_conformance
    >>> check_cost_structure_conformance(cj.OrdinalCost(6, power=2))
  """
  import costjax as cj  # the losses; costjax.testing is imported on its own

  if not isinstance(structure, CostStructure):
    raise TypeError(
        f"check_cost_structure_conformance expects a CostStructure; got "
        f"{type(structure).__name__}."
    )
  leaves = jax.tree.leaves(structure)
  if len(leaves) == 1 and leaves[0] is structure:
    raise AssertionError(
        f"pytree: {type(structure).__name__} is not a registered pytree; decorate the class "
        "with @jax.tree_util.register_pytree_node_class (subclasses need it too).")
  k = structure.num_classes
  if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
    raise AssertionError(f"num_classes must be a Python int >= 1; got {k!r}.")
  k = int(k)
  c = np.asarray(structure.dense(), np.float64)
  if c.shape != (k, k):
    raise AssertionError(f"dense(): shape {c.shape}, expected ({k}, {k}).")
  if not np.isfinite(c).all() or (c < 0).any():
    raise AssertionError("dense(): costs must be finite and non-negative.")
  if structure.symmetric and not np.allclose(c, c.T, rtol=rtol, atol=atol):
    raise AssertionError(
        "symmetric is True but dense() is not symmetric; set symmetric = False.")
  if structure.zero_diagonal and np.any(np.diagonal(c) != 0):
    raise AssertionError(
        "zero_diagonal is True but dense() has a non-zero diagonal entry; set "
        "zero_diagonal = False.")

  rng = np.random.default_rng(seed)
  idx = rng.integers(0, k, (3, 4))
  v = rng.dirichlet(np.ones(k), (2, 5)) * rng.uniform(0.5, 2, (2, 5, 1))
  j = rng.integers(0, k, (3, 4))
  n = max(1, min(k, 5))
  start = int(rng.integers(0, k - n + 1))
  cols = np.arange(start, start + n)
  weights = rng.dirichlet(np.ones(k), 6)

  # One compiled program for the operations (the structure is a traced argument:
  # op-by-op dispatch would compile each primitive separately).
  @jax.jit
  def ops(s, idx, v, j, lo, weights):
    marker = jnp.asarray([0, k])  # index K marks an invalid label: must not raise
    return {
        "rows": s.rows(idx),
        "vecmat": s.vecmat(v),
        "entries": s.entries(idx, j),
        "row_block (traced columns)": s.row_block(idx, lo + jnp.arange(n)),
        "max_cost": s.max_cost(),
        "rows under vmap": jax.vmap(s.rows)(idx[0]),
        "marker": (s.rows(marker), s.row_block(marker, lo + jnp.arange(n))),
        "bayes": s.bayes(weights),
    }

  got = ops(structure, jnp.asarray(idx), jnp.asarray(v, jnp.float32), jnp.asarray(j),
            jnp.asarray(start), jnp.asarray(weights, jnp.float32))
  _close("rows", got["rows"], c[idx], rtol, atol)
  _close("vecmat", got["vecmat"], v @ c, rtol, atol * 10)
  _close("entries", got["entries"], c[idx, j], rtol, atol)
  _close("row_block", got["row_block (traced columns)"], c[idx][..., cols], rtol, atol)
  _close("max_cost", got["max_cost"], c.max(), rtol, atol)
  _close("rows under vmap", got["rows under vmap"], c[idx[0]], rtol, atol)
  if got["bayes"] is not None:
    decision, best = (np.asarray(x) for x in got["bayes"])
    risk = weights @ c
    _close("bayes (minimum)", best, risk.min(-1), rtol, atol * 10)
    _close("bayes (decision attains the minimum)", risk[np.arange(6), decision],
           risk.min(-1), rtol, atol * 10)
  # Called directly too (concrete leaves), as eager user code would.
  _close("row_block", structure.row_block(jnp.asarray(idx[:1]), jnp.asarray(cols)),
         c[idx[:1]][..., cols], rtol, atol)

  leaves, treedef = jax.tree.flatten(structure)
  rebuilt = jax.tree.unflatten(treedef, leaves)
  if not isinstance(rebuilt, type(structure)) or rebuilt.num_classes != k:
    raise AssertionError("pytree: unflatten(flatten(s)) is not the same structure.")
  cast = structure.astype(jnp.float32)
  if not isinstance(cast, CostStructure) or cast.num_classes != k:
    raise AssertionError("astype(float32) must return a structure with the same K.")

  logits = jnp.asarray(rng.normal(size=(4, k)) * 2, jnp.float32)
  labels = jnp.asarray(rng.integers(0, k, 4), jnp.int32)
  probs = jnp.asarray(rng.dirichlet(np.ones(k), 4), jnp.float32)
  h = jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(3, k)), jnp.float32)
  block = max(1, k // 2 + 1)  # two blocks, the second shifted back: does not divide K

  @jax.jit
  def functions(cost):
    out = {}
    for lab, kind in ((labels, "integer"), (probs, "probability")):
      out[f"expected_cost ({kind} labels)"] = cj.expected_cost(logits, lab, cost)
      out[f"soft_label_cross_entropy ({kind} labels)"] = cj.soft_label_cross_entropy(
          logits, lab, cost)
    out["linear_expected_cost"] = cj.linear_expected_cost(h, w, labels, cost, block_size=block)
    out["linear_soft_label_cross_entropy"] = cj.linear_soft_label_cross_entropy(
        h, w, labels, cost, block_size=block)
    return out, cj.bayes_decision(logits, cost)

  got, decisions = functions(structure)
  want, _ = functions(jnp.asarray(c, jnp.float32))
  for name in got:
    _close(name, got[name], want[name], rtol * 10, atol * 10)
  risk = np.asarray(jax.nn.softmax(logits), np.float64) @ c
  decisions = np.asarray(decisions)
  _close("bayes_decision", risk[np.arange(4), decisions], risk.min(-1), rtol * 10, atol * 10)
