"""Calibration and decoding of trained models for ``costjax compare``.

Every trained model is decoded three ways (:mod:`costjax.cli.calibration`, the
calibrate-then-decode path ``decide`` uses too):

* ``argmax`` — the most probable class;
* ``bayes_t`` — :func:`costjax.bayes_decision` on ``logits / T``, with ``T`` from
  :func:`costjax.fit_temperature` on the validation set (temperature scaling);
* ``bayes_vs`` — :func:`costjax.bayes_decision` on ``logits * scale + bias`` from
  :func:`costjax.fit_vector_scaling` on the validation set (vector scaling).

Validation costs, which choose grid points and the verdict's pick, are cross-fitted:
the calibration is fitted on one half of the validation set and scored on the other
(both ways). Test decisions use the calibration fitted on the whole validation set.

A model whose validation or test logits are not all finite has diverged: its costs
are NaN, and the selection and report flag it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from costjax.cli import calibration

DECODINGS = ("argmax", "bayes_t", "bayes_vs")
DECODING_LABELS = {
    "argmax": "argmax",
    "bayes_t": "Bayes (temperature)",
    "bayes_vs": "Bayes (vector scaling)",
}


def _decide(z, c, t, vs):
  """The three decodings of logits ``z``: argmax, and Bayes after the temperature ``t`` or
  the vector scaling ``vs``."""
  by_t = calibration.decode(z, c, 1.0 / t, jnp.zeros((), z.dtype))
  by_vs = calibration.decode(z, c, vs.scale, vs.bias)
  return {"argmax": by_t.argmax, "bayes_t": by_t.bayes, "bayes_vs": by_vs.bayes}


def _lookup(c, y, p):
  """Each row's cost ``C[y, p]``: ``c`` is one ``(K, K)`` matrix or per-row ``(N, K, K)``."""
  if c.ndim == 2:
    return c[y, p]
  return c[jnp.arange(y.shape[0]), y, p]


def _finite(z):
  """``z`` with non-finite entries replaced by 0 (a diverged model is flagged, not fitted)."""
  return jnp.where(jnp.isfinite(z), z, 0.0)


def _fit_all(val_logits, y_val):
  """Temperature and vector scaling of every model, each under three row masks.

  ``val_logits (M, S, N, K)``, ``y_val (S, N)``. The masks are all rows, the even rows
  and the odd rows (:func:`calibration.two_folds`). Returns ``(T, VectorScaling)`` with
  leading axes ``(M, S, 3)``.

  The ``3 M S`` fits run as one ``vmap`` over a flat batch. Nested ``vmap`` levels (masks
  inside seeds inside cost matrices) gave the same fits, but JAX batches the L-BFGS
  loops of :func:`costjax.fit_vector_scaling` again at every level, which made tracing
  several times slower, paid by every ``compare`` run (docs/testing.md, "The time budget").
  """
  m, s, n, k = val_logits.shape
  half = jnp.asarray(calibration.two_folds(n))
  masks = jnp.stack([jnp.ones_like(half), half, ~half])
  z = jnp.broadcast_to(_finite(val_logits)[:, :, None], (m, s, 3, n, k)).reshape(-1, n, k)
  y = jnp.broadcast_to(y_val[None, :, None], (m, s, 3, n)).reshape(-1, n)
  where = jnp.broadcast_to(masks[None, None], (m, s, 3, n)).reshape(-1, n)
  fits = jax.vmap(calibration.fit)(z, y, where)
  return jax.tree.map(lambda a: a.reshape((m, s, 3) + a.shape[1:]), fits)


def _score_one(zv, yv, zt, yt, cv, ct, fits):
  """``cv``/``ct``: the validation / test costs, one ``(K, K)`` matrix (the same for both)
  or each row's own ``(N, K, K)``; ``fits``: this model's ``(T, VectorScaling)`` under
  the three masks of :func:`_fit_all`."""
  finite = jnp.all(jnp.isfinite(zv)) & jnp.all(jnp.isfinite(zt))
  zv, zt = _finite(zv), _finite(zt)
  # Test decisions use the calibration fitted on the whole validation set. Validation
  # costs (for selection) are cross-fitted: calibrate on one half of the validation set,
  # decode the other, and swap, so that a calibration map with 2K parameters is never
  # scored on the examples it was fitted to.
  half = jnp.asarray(calibration.two_folds(yv.shape[0]))  # the even rows
  ts, vss = fits
  test_pred = _decide(zt, ct, ts[0], jax.tree.map(lambda a: a[0], vss))
  on_rest = _decide(zv, cv, ts[2], jax.tree.map(lambda a: a[2], vss))  # fitted on ~half
  on_half = _decide(zv, cv, ts[1], jax.tree.map(lambda a: a[1], vss))  # fitted on half
  val_pred = {k: calibration.cross_fitted(half, on_rest[k], on_half[k]) for k in on_half}
  t = ts[0]
  nan = jnp.float32(jnp.nan)
  out = {"finite": finite, "temperature": t}
  for name in DECODINGS:
    pv, pt = val_pred[name], test_pred[name]
    out[f"val_cost_{name}"] = jnp.where(finite, jnp.mean(_lookup(cv, yv, pv)), nan)
    out[f"test_cost_{name}"] = jnp.where(finite, jnp.mean(_lookup(ct, yt, pt)), nan)
    out[f"test_acc_{name}"] = jnp.where(finite, jnp.mean(pt == yt), nan)
    out[f"test_pred_{name}"] = pt
  return out


@jax.jit
def _score_grid_point(val_logits, y_val, test_logits, y_test, costs):
  f = jax.vmap(lambda zv, yv, zt, yt, c, fits: _score_one(zv, yv, zt, yt, c, c, fits),
               in_axes=(0, 0, 0, 0, None, 0))  # seeds
  f = jax.vmap(f, in_axes=(0, None, 0, None, 0, 0))  # cost matrices
  return f(val_logits, y_val, test_logits, y_test, costs, _fit_all(val_logits, y_val))


@jax.jit
def _score_grid_point_rows(val_logits, y_val, test_logits, y_test, c_val, c_test):
  """Per-row costs ``c_val (S, n_val, K, K)``, ``c_test (S, n_test, K, K)``; M = 1."""
  f = jax.vmap(_score_one, in_axes=(0, 0, 0, 0, 0, 0, 0))  # seeds
  f = jax.vmap(f, in_axes=(0, None, 0, None, None, None, 0))  # the one "matrix" axis
  return f(val_logits, y_val, test_logits, y_test, c_val, c_test, _fit_all(val_logits, y_val))


def compile_scorer(*, num_costs: int, num_seeds: int, n_val: int, n_test: int,
                   num_classes: int, per_row: bool = False):
  """Ahead-of-time compiled scorer for one grid point (may run in a background thread)."""
  f32, i32 = jnp.float32, jnp.int32
  sds = jax.ShapeDtypeStruct
  m, s, k = num_costs, num_seeds, num_classes
  head = (sds((m, s, n_val, k), f32), sds((s, n_val), i32), sds((m, s, n_test, k), f32),
          sds((s, n_test), i32))
  if per_row:
    return _score_grid_point_rows.lower(
        *head, sds((s, n_val, k, k), f32), sds((s, n_test, k, k), f32)).compile()
  return _score_grid_point.lower(*head, sds((m, k, k), f32)).compile()


def score(val_logits, y_val, test_logits, y_test, costs, *, scorer=None,
          row_costs=None) -> dict[str, np.ndarray]:
  """Scores every model under every decoding.

  Shapes: logits ``(M, G, S, N, K)`` for ``M`` cost matrices, ``G`` grid points and
  ``S`` seeds; labels ``(S, N)``; costs ``(M, K, K)``. With ``row_costs = (c_val, c_test)``
  (``(S, N, K, K)`` each; ``M = 1``) every row is decided and scored with its own matrix
  and ``costs`` is unused. Returns a dict of ``(M, G, S)`` arrays (``test_pred_*``:
  ``(M, G, S, N)``). Runs on this process's devices only (one compiled program, looped over
  grid points); ``scorer`` is that program from :func:`compile_scorer`.
  """
  extra: tuple[jax.Array, ...]
  if row_costs is None:
    fn = _score_grid_point if scorer is None else scorer
    extra = (jnp.asarray(costs, jnp.float32),)
  else:
    fn = _score_grid_point_rows if scorer is None else scorer
    extra = tuple(jnp.asarray(c, jnp.float32) for c in row_costs)
  outs = []
  for g in range(val_logits.shape[1]):
    o = fn(jnp.asarray(val_logits[:, g], jnp.float32), jnp.asarray(y_val, jnp.int32),
           jnp.asarray(test_logits[:, g], jnp.float32), jnp.asarray(y_test, jnp.int32),
           *extra)
    outs.append(jax.device_get(o))
  return {k: np.stack([o[k] for o in outs], axis=1) for k in outs[0]}
