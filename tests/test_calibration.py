"""Temperature and vector scaling against scipy.optimize optima of the NumPy NLL."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import minimize, minimize_scalar
from scipy.special import logsumexp

import costjax as cj
from costjax import _calibration


def _sample(seed, n, k, scale):
  """Labels drawn from softmax(true logits); returns (scale * true logits, labels)."""
  rng = np.random.default_rng(seed)
  true = 2.0 * rng.normal(size=(n, k))
  p = np.exp(true - logsumexp(true, axis=1, keepdims=True))
  labels = (p.cumsum(1) > rng.random((n, 1))).argmax(1)
  return (scale * true).astype(np.float32), labels


def _nll_np(logits, q, w=None):
  """Mean NLL in float64 for probability targets q (rows), weights w."""
  z = np.asarray(logits, np.float64)
  per = q.sum(1) * logsumexp(z, axis=1) - (q * z).sum(1)
  w = np.ones(len(z)) if w is None else w
  return (w * per).sum() / w.sum()


def _scipy_temperature(logits, q, w=None):
  res = minimize_scalar(
      lambda log_t: _nll_np(logits / np.exp(log_t), q, w),
      bounds=(np.log(1e-3), np.log(1e3)), method="bounded", options={"xatol": 1e-12},
  )
  return float(np.exp(res.x))


@pytest.mark.parametrize("seed,scale", [(0, 0.3), (1, 1.0), (2, 2.5), (3, 6.0)])
def test_temperature_matches_scipy(seed, scale):
  logits, y = _sample(seed, 3000, 6, scale)
  want = _scipy_temperature(logits, np.eye(6)[y])
  got = float(jax.jit(cj.fit_temperature)(logits, y))
  assert abs(got / want - 1) < 1e-4, (got, want)
  # The model was scale x overconfident: T recovers the scale (sampling error aside).
  assert abs(got / scale - 1) < 0.1


def test_temperature_probability_labels_and_where_match_scipy():
  rng = np.random.default_rng(4)
  logits, y = _sample(4, 2000, 5, 2.0)
  q = rng.dirichlet(np.ones(5) * 0.3, size=2000)
  want = _scipy_temperature(logits, q)
  got = float(cj.fit_temperature(logits, q.astype(np.float32)))
  assert abs(got / want - 1) < 1e-4
  mask = rng.random(2000) < 0.4
  want_w = _scipy_temperature(logits, np.eye(5)[y], mask.astype(float))
  got_w = float(cj.fit_temperature(logits, y, where=mask))
  assert abs(got_w / want_w - 1) < 1e-4
  np.testing.assert_allclose(got_w, cj.fit_temperature(logits[mask], y[mask]), rtol=1e-5)
  # A per-class mask removes classes from the softmax (like a -inf logit).
  cls = np.ones((2000, 5), bool)
  cls[:, 4] = False
  keep = y != 4
  want_c = _scipy_temperature(logits[keep][:, :4], np.eye(4)[y[keep]])
  got_c = float(cj.fit_temperature(logits[keep], y[keep], where=cls[keep]))
  assert abs(got_c / want_c - 1) < 1e-4
  inf_logits = np.where(cls, logits, -np.inf)[keep]
  np.testing.assert_allclose(cj.fit_temperature(inf_logits, y[keep]), got_c, rtol=1e-5)


def test_temperature_vmap_over_seeds_and_batch_shapes():
  logits = np.stack([_sample(s, 500, 4, 0.5 + s)[0] for s in range(4)])
  labels = np.stack([_sample(s, 500, 4, 0.5 + s)[1] for s in range(4)])
  batched = jax.jit(jax.vmap(cj.fit_temperature))(logits, labels)
  for s in range(4):
    want = _scipy_temperature(logits[s], np.eye(4)[labels[s]])
    assert abs(float(batched[s]) / want - 1) < 1e-4
    np.testing.assert_allclose(batched[s], cj.fit_temperature(logits[s], labels[s]), rtol=1e-5)
  # Leading axes are all examples.
  np.testing.assert_allclose(
      cj.fit_temperature(logits[:2], labels[:2]),
      cj.fit_temperature(logits[:2].reshape(-1, 4), labels[:2].reshape(-1)), rtol=1e-5,
  )
  # bf16 logits are fitted in float32.
  t16 = cj.fit_temperature(logits[1].astype(jnp.bfloat16), labels[1])
  assert t16.dtype == jnp.float32
  np.testing.assert_allclose(t16, batched[1], rtol=2e-2)


def test_temperature_range_edges_and_never_nan():
  rng = np.random.default_rng(5)
  z = rng.normal(size=(200, 4)).astype(np.float32)
  separable = z.argmax(1)
  t = cj.fit_temperature(z, separable)
  assert float(t) == pytest.approx(_calibration.TEMPERATURE_MIN, rel=1e-5)
  # Anti-correlated logits: the optimum would be T < 0, the search stops at T_MAX.
  anti = z.argmin(1)
  assert float(cj.fit_temperature(z, anti)) == pytest.approx(_calibration.TEMPERATURE_MAX,
                                                             rel=1e-5)
  # Huge logits, -inf logits on the label, constant logits: finite.
  big = 1e4 * z
  assert float(cj.fit_temperature(big, separable)) == pytest.approx(1e-3, rel=1e-5)
  noisy = rng.integers(0, 4, 200)
  assert np.isfinite(float(cj.fit_temperature(big, noisy)))
  impossible = z.copy()
  impossible[0, noisy[0]] = -np.inf
  assert float(cj.fit_temperature(impossible, noisy)) == pytest.approx(1e3, rel=1e-5)
  assert np.isfinite(float(cj.fit_temperature(np.zeros((10, 3), np.float32), noisy[:10] % 3)))
  assert float(cj.fit_temperature(z, noisy, where=np.zeros(200, bool))) == 1.0


def test_temperature_bad_labels_nan_and_checked():
  logits, y = _sample(6, 50, 4, 1.0)
  y = y.copy()
  y[7] = 4
  assert np.isnan(cj.fit_temperature(logits, y))
  # A masked-out bad label does not count.
  assert np.isfinite(cj.fit_temperature(logits, y, where=np.arange(50) != 7))
  y[7] = -1
  with pytest.raises(Exception, match=r"fit_temperature: labels must lie in \[0, 4\); got -1 "
                                      r"at index \(7,\)"):
    cj.checked(cj.fit_temperature)(logits, y)
  with pytest.raises(TypeError, match="integer dtype"):
    cj.fit_temperature(logits, y.astype(np.float32))
  with pytest.raises(ValueError, match=r"labels.shape=\(49,\) and logits.shape=\(50, 4\)"):
    cj.fit_temperature(logits, y[:49])


def _scipy_vector_scaling(logits, q):
  k = logits.shape[1]
  z = logits.astype(np.float64)

  def f(theta):
    s, b = theta[:k], theta[k:]
    x = z * s + b
    per = logsumexp(x, axis=1) - (q * x).sum(1)
    p = np.exp(x - logsumexp(x, axis=1, keepdims=True))
    d = (p - q) / len(z)
    return per.mean(), np.concatenate([(d * z).sum(0), d.sum(0)])

  res = minimize(f, np.r_[np.ones(k), np.zeros(k)], jac=True, method="L-BFGS-B",
                 options={"gtol": 1e-12, "ftol": 1e-15, "maxiter": 10000})
  s, b = res.x[:k], res.x[k:]
  return s, b - b.mean(), res.fun


@pytest.mark.parametrize("probabilities", [False, True])
def test_vector_scaling_matches_scipy(probabilities):
  logits, y = _sample(7, 4000, 4, 1.0)
  rng = np.random.default_rng(7)
  distorted = (logits * np.array([2.0, 0.5, 1.0, 1.5]) + np.array([1.0, 0.0, -1.0, 0.3]))
  distorted = distorted.astype(np.float32)
  q = rng.dirichlet(np.ones(4), size=4000) if probabilities else np.eye(4)[y]
  labels = q.astype(np.float32) if probabilities else y
  s_want, b_want, f_want = _scipy_vector_scaling(distorted, q)
  vs = jax.jit(cj.fit_vector_scaling)(distorted, labels)
  assert isinstance(vs, cj.VectorScaling) and vs.scale.shape == (4,) and vs.bias.shape == (4,)
  f_got = _nll_np(np.asarray(vs.apply(distorted)), q)
  assert f_got <= f_want + 1e-6 * abs(f_want)
  np.testing.assert_allclose(vs.scale, s_want, rtol=1e-3, atol=1e-3)
  np.testing.assert_allclose(vs.bias, b_want, atol=1e-3)
  assert abs(float(jnp.mean(vs.bias))) < 1e-5
  if not probabilities:  # undoes the distortion (up to sampling error)
    np.testing.assert_allclose(vs.scale, [0.5, 2.0, 1.0, 1 / 1.5], rtol=0.15)


def test_vector_scaling_where_and_bad_labels():
  logits, y = _sample(8, 1000, 3, 2.0)
  mask = np.arange(1000) < 600
  a = cj.fit_vector_scaling(logits, y, where=mask)
  b = cj.fit_vector_scaling(logits[:600], y[:600])
  np.testing.assert_allclose(a.scale, b.scale, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(a.bias, b.bias, atol=1e-4)
  y = y.copy()
  y[3] = 3
  everything = np.ones(1000, bool)  # the same compiled function as `a`
  bad = cj.fit_vector_scaling(logits, y, where=everything)
  assert np.all(np.isnan(bad.scale)) and np.all(np.isnan(bad.bias))
  # A class that never occurs: the optimum is at infinity; the result stays finite.
  never = np.where(y == 2, 0, y)
  never[3] = 1
  vs = cj.fit_vector_scaling(logits, never, where=everything)
  assert np.all(np.isfinite(vs.scale)) and np.all(np.isfinite(vs.bias))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_logits_give_nan_unless_masked(bad):
  """A NaN or +inf logit breaks the precondition (NaN result); a masked-out row does not count."""
  logits, y = _sample(8, 60, 3, 1.0)
  logits = logits.copy()
  logits[5, 1] = bad
  q = np.eye(3)[y]
  keep = np.arange(60) != 5
  assert np.isnan(cj.fit_temperature(logits, y))
  assert np.all(np.isnan(cj.fit_vector_scaling(logits, y).scale))
  got = cj.fit_temperature(logits, y, where=keep)
  np.testing.assert_allclose(got, _scipy_temperature(logits[keep], q[keep]), rtol=2e-3)
  np.testing.assert_allclose(got, cj.fit_temperature(logits[keep], y[keep]), rtol=1e-5)
  assert np.all(np.isfinite(cj.fit_vector_scaling(logits, y, where=keep).scale))


def test_float32_logits_stay_float32_under_x64_and_warn_nothing():
  import warnings

  logits, y = _sample(9, 80, 3, 1.0)
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # e.g. "float64 requested ... truncated to float32"
    t = cj.fit_temperature(logits, y)
    cj.fit_vector_scaling(logits, y)
  with jax.enable_x64(True):
    t64 = cj.fit_temperature(logits, y)
    vs = cj.fit_vector_scaling(logits, y)
    assert t64.dtype == jnp.float32 and vs.scale.dtype == jnp.float32
    assert vs.bias.dtype == jnp.float32
    assert cj.fit_temperature(logits.astype(np.float64), y).dtype == jnp.float64
  np.testing.assert_allclose(t64, t, rtol=1e-5)
