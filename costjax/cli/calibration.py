"""Calibrate, then decode: the one path of ``costjax compare`` and ``costjax decide``.

Every calibration is an affine map of the logits, ``logits * scale + bias``
(:class:`costjax.VectorScaling`): temperature ``T`` is ``scale = 1 / T, bias = 0`` and no
calibration ``scale = 1, bias = 0``. The pieces (all traceable, so ``compare`` runs them inside
one jitted, vmapped program):

* :func:`fit` — temperature and vector scaling fitted on the examples ``where`` selects;
* :func:`decode` — argmax of the raw logits, and the Bayes decision (optionally abstaining)
  and the expected cost of every class under the calibrated logits;
* :func:`nll` — each example's negative log-likelihood under calibrated logits;
* :func:`two_folds` and :func:`cross_fitted` — 2-fold cross-fitting: every example is scored
  under the calibration fitted on the other fold, so a map with ``2K`` parameters is never
  scored on the examples it was fitted to.

How the commands use them (where they differ, they differ on purpose):

* ``compare`` (:mod:`costjax.cli.scoring`) fits both maps and scores decisions: validation
  *costs* are cross-fitted on the even / odd rows (deterministic, so every arm and seed sees
  the same folds), and test decisions use the fit on all of validation.
* ``decide`` (:func:`calibrate`) chooses among none, temperature and vector scaling by
  cross-fitted *NLL* on a random half (``--seed``) with the one-standard-error rule
  (:func:`choose`), and refits the chosen map on all of validation; :func:`programs` holds its
  compiled pieces.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import numpy as np

# L-BFGS budget of compare's vector-scaling fit. Validation logits of a trained network are
# often nearly separable, so the optimum drifts towards infinite scales and the fit
# runs to its budget; 50 steps keep decoding cheap (the library default is 200).
VS_MAX_ITERATIONS = 50
# Gradient-norm tolerance of decide's vector-scaling fit: the NLL agrees with 1e-6 to ~1e-6
# at a third of the cost.
VECTOR_TOLERANCE = 1e-4

METHODS = ("none", "temperature", "vector")  # from simplest to most flexible
METHOD_LABELS = {"none": "no calibration (raw outputs)", "temperature": "temperature scaling",
                 "vector": "vector scaling"}


# --------------------------------------------------------------------------- #
# The shared pieces.
# --------------------------------------------------------------------------- #


def affine(z, scale, bias):
  """Calibrated logits ``z * scale + bias``."""
  import costjax as cj

  return cj.VectorScaling(scale, bias).apply(z)


def fit(z, y, where, *, vs_max_iterations: int = VS_MAX_ITERATIONS):
  """Temperature ``T`` and vector scaling fitted on the rows ``where`` selects."""
  import costjax as cj

  t = cj.fit_temperature(z, y, where=where)
  vs = cj.fit_vector_scaling(z, y, where=where, max_iterations=vs_max_iterations)
  return t, vs


class Decoded(NamedTuple):
  """The decodings of one set of logits (``(N,)`` arrays unless said)."""

  argmax: Any  # argmax of the raw (uncalibrated) logits
  bayes: Any  # costjax.bayes_decision of the calibrated logits; -1 where it abstains
  risk: Any  # (N, K) expected cost of every class under the calibrated logits

  @property
  def cheapest(self):
    """The class of least expected cost (the Bayes decision, never abstaining)."""
    import jax.numpy as jnp

    return jnp.argmin(self.risk, axis=-1)

  @property
  def expected(self):
    """The expected cost of :attr:`cheapest`."""
    import jax.numpy as jnp

    return jnp.min(self.risk, axis=-1)


def decode(z, c, scale, bias, *, abstain_cost=None) -> Decoded:
  """Decodes logits ``z`` under costs ``c`` (``(K, K)`` or per-row ``(N, K, K)``) after the
  calibration ``(scale, bias)``; ``abstain_cost`` (finite) adds Chow's abstention."""
  import jax.numpy as jnp

  import costjax as cj

  a = affine(z, scale, bias)
  return Decoded(jnp.argmax(z, axis=-1).astype(jnp.int32),
                 cj.bayes_decision(a, c, abstain_cost=abstain_cost).astype(jnp.int32),
                 cj.decision_costs(a, c))


def nll(z, y, scale, bias):
  """Each example's negative log-likelihood of the calibrated logits, ``(N,)``."""
  import jax
  import jax.numpy as jnp

  a = affine(z, scale, bias)
  return jax.nn.logsumexp(a, axis=-1) - jnp.take_along_axis(a, y[:, None], axis=-1)[:, 0]


def two_folds(n: int, *, seed: int | None = None) -> np.ndarray:
  """The first of two cross-fitting folds, a boolean ``(n,)`` mask (the second: its negation).

  ``seed=None``: the even rows (``compare``: the same folds for every arm and seed). A seed:
  a random half of the rows, ``n // 2`` of them (``decide --seed``).
  """
  if seed is None:
    return (np.arange(n) % 2) == 0
  fold = np.zeros(n, bool)
  fold[np.random.default_rng(seed).permutation(n)[: n // 2]] = True
  return fold


def cross_fitted(fold, fitted_on_rest, fitted_on_fold):
  """Each example's value under the fit on the *other* fold.

  ``fitted_on_rest``: values (leading axis: examples) under the calibration fitted on
  ``~fold``; ``fitted_on_fold``: under the one fitted on ``fold``. NumPy or JAX arrays.
  """
  if isinstance(fitted_on_rest, np.ndarray) and isinstance(fitted_on_fold, np.ndarray):
    xp: Any = np
  else:
    import jax.numpy as xp
  fold = xp.reshape(fold, fold.shape + (1,) * (fitted_on_rest.ndim - 1))
  return xp.where(fold, fitted_on_rest, fitted_on_fold)


# --------------------------------------------------------------------------- #
# decide: the choice among none, temperature and vector scaling.
# --------------------------------------------------------------------------- #


class Programs(NamedTuple):
  """``decide``'s compiled pieces (every fit takes a mask, so the half fits and the full fits
  share one program each)."""

  nll: Any  # nll(z, y, scale, bias) -> (N,)
  decode: Any  # decode(z, scale, bias, c, abstain_cost) -> Decoded
  sets: Any  # sets(zv, yv, zt, scale, bias, cv, ct, alpha) -> (threshold, (N, K) bool)
  fit_temperature: Any  # fit_temperature(z, y, where=mask) -> T
  fit_vector: Any  # fit_vector(z, y, where=mask) -> VectorScaling


@functools.cache
def programs(vector_tolerance: float = VECTOR_TOLERANCE) -> Programs:
  """The compiled pieces of ``decide`` (built on first use, so importing stays light)."""
  import jax

  import costjax as cj

  @jax.jit
  def decode_(z, scale, bias, c, abstain_cost):
    return decode(z, c, scale, bias, abstain_cost=abstain_cost)

  @jax.jit
  def sets(zv, yv, zt, scale, bias, cv, ct, alpha):
    threshold = cj.calibrate_cost_sets(affine(zv, scale, bias), yv, cv, alpha=alpha)
    return threshold, cj.cost_sets(affine(zt, scale, bias), ct, threshold=threshold)

  return Programs(
      nll=jax.jit(nll), decode=decode_, sets=sets, fit_temperature=jax.jit(cj.fit_temperature),
      fit_vector=jax.jit(functools.partial(cj.fit_vector_scaling, tolerance=vector_tolerance)))


def choose(heldout: dict[str, np.ndarray]) -> tuple[str, str]:
  """The one-standard-error rule on per-example held-out NLLs; returns ``(method, reason)``.

  ``heldout[m]`` holds each validation example's NLL under method ``m`` fitted without it. The
  method with the lowest mean is the best; the simplest method (in :data:`METHODS` order) whose
  mean is within one standard error of the paired difference from the best is chosen, so a
  calibration is applied only where it helps by more than the noise of the comparison.
  """
  means = {m: float(np.mean(v)) for m, v in heldout.items()}
  best = min(METHODS, key=lambda m: (means[m], METHODS.index(m)))
  n = len(heldout[best])
  se = {m: float(np.std(heldout[m] - heldout[best], ddof=1) / math.sqrt(n)) if n > 1 else 0.0
        for m in METHODS}
  chosen = next(m for m in METHODS if means[m] - means[best] <= se[m])
  nums = ", ".join(f"{METHOD_LABELS[m].split(' (')[0]} {means[m]:.4f}" for m in METHODS)
  if chosen == best:
    reason = (f"it has the lowest held-out NLL ({nums}; 2-fold cross-fitting on validation)")
  else:
    reason = (f"its held-out NLL {means[chosen]:.4f} is within one standard error "
              f"({se[chosen]:.4f}) of the lowest, {METHOD_LABELS[best]}'s {means[best]:.4f}, "
              f"so the simpler one is kept ({nums}; 2-fold cross-fitting on validation)")
  return chosen, reason


def calibrate(logits, labels, *, method: str = "auto", seed: int = 0):
  """Fits temperature and/or vector scaling; returns ``(scale, bias, info)``.

  Calibrated logits are ``logits * scale + bias``. ``auto`` scores *none*, temperature and
  vector scaling by held-out NLL with 2-fold cross-fitting (each half's NLL under the fit on the
  other half; :func:`two_folds` with ``seed``) and picks by :func:`choose`; the chosen method
  is refitted on all of validation.
  """
  import jax.numpy as jnp

  prog = programs()
  z = jnp.asarray(logits)
  y = jnp.asarray(labels)
  n, k = z.shape
  one, zero = jnp.ones(k, z.dtype), jnp.zeros(k, z.dtype)
  everything = jnp.ones(n, bool)
  raw_nll = np.asarray(prog.nll(z, y, one, zero), np.float64)
  info: dict = {"method": method, "nll_uncalibrated": float(raw_nll.mean())}
  if method == "auto":
    if n < 4:
      method = "none"
      info["reason"] = ("fewer than 4 validation examples, too few to check a calibration on "
                        "held-out data, so the raw outputs are kept")
    else:
      fold = two_folds(n, seed=seed)
      under: dict[str, list[np.ndarray]] = {"temperature": [], "vector": []}
      for fit_on in (~fold, fold):  # fitted on the rest, then on the fold
        mask = jnp.asarray(fit_on)
        t_half = prog.fit_temperature(z, y, where=mask)
        v_half = prog.fit_vector(z, y, where=mask)
        under["temperature"].append(np.asarray(prog.nll(z, y, one / t_half, zero)))
        under["vector"].append(np.asarray(prog.nll(z, y, v_half.scale, v_half.bias)))
      held = {"none": raw_nll}
      held |= {m: cross_fitted(fold, *v).astype(np.float64) for m, v in under.items()}
      for m, key in (("none", "uncalibrated"), ("temperature", "temperature"),
                     ("vector", "vector")):
        info[f"heldout_nll_{key}"] = float(held[m].mean())
      method, info["reason"] = choose(held)
  info["chosen"] = method
  if method == "none":
    return one, zero, info
  t = prog.fit_temperature(z, y, where=everything)
  info["temperature"] = float(t)
  info["nll_temperature"] = float(np.mean(prog.nll(z, y, one / t, zero)))
  if method == "temperature":
    return one / t, zero, info
  vs = prog.fit_vector(z, y, where=everything)
  info["nll_vector"] = float(np.mean(prog.nll(z, y, vs.scale, vs.bias)))
  info["vector_scale"] = np.asarray(vs.scale).tolist()
  info["vector_bias"] = np.asarray(vs.bias).tolist()
  return vs.scale, vs.bias, info
