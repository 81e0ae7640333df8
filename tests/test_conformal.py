"""Conformal cost sets: brute-force thresholds, set properties, and the CRC guarantee."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify

import costjax as cj
from tests import reference as ref
from tests._dense_structure import DenseStructure


def _problem(seed, n, k, *, integer_costs=True, zero_diagonal=True):
  rng = np.random.default_rng(seed)
  logits = (2 * rng.normal(size=(n, k))).astype(np.float32)
  p = ref.softmax(logits)
  labels = (p.cumsum(1) > rng.random((n, 1))).argmax(1)
  if integer_costs:
    c = rng.integers(0, 6, size=(k, k)).astype(np.float32)
  else:
    c = rng.uniform(0, 5, size=(k, k)).astype(np.float32)
  if zero_diagonal:
    np.fill_diagonal(c, 0)
  return logits, labels, c


def _brute_force_threshold(gaps, cost_rows, bound, alpha):
  """Scan every breakpoint (each gap value) in increasing order; NumPy, float64 sums."""
  n = len(gaps)
  for t in np.unique(gaps):
    loss = np.where(gaps <= t, cost_rows, np.inf).min(1)
    if (loss.astype(np.float64).sum() + bound) / (n + 1) <= alpha:
      return t
  return np.inf


def _gaps_np(logits, c):
  # The same float32 decision costs the library uses (the breakpoints must match bit for
  # bit), checked against the NumPy formula.
  r = np.asarray(cj.decision_costs(logits, c))
  np.testing.assert_allclose(r, ref.softmax(logits) @ c.astype(np.float64), rtol=1e-5,
                             atol=1e-5)
  return r - r.min(1, keepdims=True)


@pytest.mark.parametrize("seed", range(12))
def test_threshold_equals_brute_force(seed):
  rng = np.random.default_rng(100 + seed)
  n, k = [(1, 3), (7, 2), (40, 5), (79, 6)][seed % 4]
  logits, y, c = _problem(seed, n, k, zero_diagonal=seed % 3 != 0)
  gaps = _gaps_np(logits, c)
  bound = c.max()
  # alphas around the interesting range: from below B / (n + 1) to above the Bayes-set cost.
  for alpha in [0.5 * bound / (n + 1), *rng.uniform(0.02, 0.75 * max(bound, 1.0), 4)]:
    want = _brute_force_threshold(gaps, c[y], bound, alpha)
    got = float(cj.calibrate_cost_sets(logits, y, c, alpha=float(alpha)))
    assert got == pytest.approx(want, rel=2e-6, abs=0), (n, k, alpha, got, want)
    if np.isfinite(got):  # the smallest qualifying threshold, and it does qualify
      loss = cj.set_cost(cj.cost_sets(logits, c, threshold=got), y, c)
      assert (float(np.sum(loss)) + bound) / (n + 1) <= alpha
      below = np.max(gaps[gaps < want], initial=-1.0)  # the breakpoint before
      if below >= 0:
        loss = cj.set_cost(cj.cost_sets(logits, c, threshold=below), y, c)
        assert (float(np.sum(loss)) + bound) / (n + 1) > alpha


def test_threshold_equals_brute_force_real_costs_and_ties():
  logits, y, c = _problem(50, 300, 6, integer_costs=False)
  gaps = _gaps_np(logits, c)
  for alpha in [0.2, 0.5, 1.0]:
    want = _brute_force_threshold(gaps, c[y], c.max(), alpha)
    got = float(jax.jit(lambda a: cj.calibrate_cost_sets(logits, y, c, alpha=a))(alpha))
    assert got == pytest.approx(want, rel=2e-6, abs=0)
    loss = cj.set_cost(cj.cost_sets(logits, c, threshold=got), y, c)
    assert (float(np.sum(np.asarray(loss, np.float64))) + c.max()) / 301 <= alpha
  # Tied logits (duplicated examples and equal columns) create equal breakpoints.
  logits = np.repeat(np.round(logits[:40], 1), 3, axis=0)
  logits[:, 5] = logits[:, 4]
  y = np.repeat(y[:40], 3)
  cc = np.round(c)
  gaps = _gaps_np(logits, cc)
  for alpha in [0.3, 0.8, 1.5]:
    assert float(cj.calibrate_cost_sets(logits, y, cc, alpha=alpha)) == pytest.approx(
        _brute_force_threshold(gaps, cc[y], cc.max(), alpha), rel=2e-6, abs=0)


def test_probability_labels_brute_force():
  logits, _, c = _problem(51, 120, 4)
  q = np.random.default_rng(51).dirichlet(np.ones(4), size=120).astype(np.float32)
  rows = np.asarray(q @ c)  # min over the set of sum_i q_i C[i, j]
  gaps = _gaps_np(logits, c)
  for alpha in [0.5, 1.0, 2.0]:
    want = _brute_force_threshold(gaps, rows, c.max(), alpha)
    got = float(cj.calibrate_cost_sets(logits, q, c, alpha=alpha))
    assert got == pytest.approx(want, rel=2e-6, abs=0)
  np.testing.assert_allclose(
      cj.set_cost(cj.cost_sets(logits, c, threshold=0.3), q, c),
      np.where(gaps <= 0.3, rows, np.inf).min(1), rtol=1e-6)


def test_infinite_threshold_cases():
  logits, y, c = _problem(52, 50, 4)
  bound = c.max()
  # alpha below B / (n + 1): even a zero total loss cannot qualify.
  assert float(cj.calibrate_cost_sets(logits, y, c, alpha=0.99 * bound / 51)) == np.inf
  # Non-zero diagonal: full sets still cost min_j C[y, j] > alpha.
  c_diag = c + 1.0
  full = cj.set_cost(cj.cost_sets(logits, c_diag, threshold=np.inf), y, c_diag)
  np.testing.assert_allclose(full, c_diag[y].min(1))
  assert float(cj.calibrate_cost_sets(logits, y, c_diag, alpha=0.9)) == np.inf
  # ... but a large enough alpha is reachable.
  assert np.isfinite(float(cj.calibrate_cost_sets(logits, y, c_diag, alpha=1.2 + bound / 51)))
  # A generous alpha: threshold 0, the Bayes decisions alone.
  assert float(cj.calibrate_cost_sets(logits, y, c, alpha=10 * bound)) == 0.0


def test_set_properties():
  logits, y, c = _problem(53, 200, 6, integer_costs=False)
  r = np.asarray(cj.decision_costs(logits, c))
  bayes = np.asarray(cj.bayes_decision(logits, c))
  previous = np.zeros((200, 6), bool)
  for t in [0.0, 0.1, 0.5, 1.0, 3.0, np.inf]:
    sets = np.asarray(jax.jit(lambda z, th: cj.cost_sets(z, c, threshold=th))(logits, t))
    assert sets.dtype == bool and sets.shape == (200, 6)
    assert np.all(sets[np.arange(200), bayes])  # always holds the Bayes decision
    assert np.all(sets >= previous)  # nested
    np.testing.assert_array_equal(sets, r - r.min(1, keepdims=True) <= t)
    cost = np.asarray(cj.set_cost(sets, y, c))
    np.testing.assert_allclose(cost, np.where(sets, c[y], np.inf).min(1))
    previous = sets
  assert previous.all()  # threshold = inf: full sets
  assert not np.asarray(cj.cost_sets(logits, c, threshold=-1.0)).any()
  assert np.all(np.isinf(cj.set_cost(np.zeros((3, 6), bool), y[:3], c)))
  # Unbatched.
  assert cj.cost_sets(logits[0], c, threshold=0.5).shape == (6,)
  assert cj.set_cost(cj.cost_sets(logits[0], c, threshold=0.5), y[0], c).shape == ()


def test_cost_structure_and_jit_vmap():
  logits, y, c = _problem(54, 90, 5)
  s = DenseStructure(c)
  want = cj.calibrate_cost_sets(logits, y, c, alpha=0.7)
  assert float(jax.jit(lambda m: cj.calibrate_cost_sets(logits, y, m, alpha=0.7))(s)) == want
  np.testing.assert_array_equal(cj.cost_sets(logits, s, threshold=0.4),
                                cj.cost_sets(logits, c, threshold=0.4))
  sets = cj.cost_sets(logits, c, threshold=0.4)
  np.testing.assert_array_equal(cj.set_cost(sets, y, s), cj.set_cost(sets, y, c))
  # vmap over alphas and over a stack of calibration sets.
  alphas = jnp.array([0.3, 0.7, 1.5])
  got = jax.vmap(lambda a: cj.calibrate_cost_sets(logits, y, c, alpha=a))(alphas)
  for a, g in zip([0.3, 0.7, 1.5], got, strict=True):
    assert float(g) == float(cj.calibrate_cost_sets(logits, y, c, alpha=a))
  assert np.all(np.diff(np.asarray(got)) <= 0)  # a larger alpha never needs larger sets
  stack = jax.vmap(lambda z, t: cj.calibrate_cost_sets(z, t, c, alpha=0.7))(
      logits.reshape(3, 30, 5), y.reshape(3, 30))
  for m in range(3):  # a batched matmul may round decision costs differently
    assert float(stack[m]) == pytest.approx(float(
        cj.calibrate_cost_sets(logits[30 * m:30 * (m + 1)], y[30 * m:30 * (m + 1)], c, alpha=0.7)
    ), rel=1e-5)


def _digits_like(seed, n, k=10):
  """A mis-specified, overconfident model of labels drawn from a 10-class softmax."""
  key = jax.random.key(seed)
  k1, k2, k3 = jax.random.split(key, 3)
  true = 1.5 * jax.random.normal(k1, (n, k))
  labels = jax.random.categorical(k2, true)
  model = 2.0 * true + 0.5 * jax.random.normal(k3, (n, k))
  return model, labels


def _digits_cost():
  c = 1.0 - jnp.eye(10)
  for i, j in [(7, 1), (3, 8), (8, 3), (4, 9), (9, 4), (5, 6)]:
    c = c.at[i, j].set(20.0)
  return c


@pytest.mark.parametrize("alpha", [0.15, 0.4])
def test_guarantee_over_random_splits(alpha):
  """200 random calibration/test splits of a fixed pool (exchangeable given the pool).

  Conformal risk control: E[test set cost] <= alpha, and for a loss with
  small jumps also >= alpha - 2B/(n+1) (Angelopoulos et al., Thm 2). Both
  checked within 4 standard errors of the mean over splits.
  """
  c = _digits_cost()
  pool, labels = _digits_like(0, 3000)
  n_cal = 2000
  bound = float(c.max())

  @jax.jit
  @jax.vmap
  def split(key):
    perm = jax.random.permutation(key, 3000)
    cal, test = perm[:n_cal], perm[n_cal:]
    t = cj.calibrate_cost_sets(pool[cal], labels[cal], c, alpha=alpha)
    sets = cj.cost_sets(pool[test], c, threshold=t)
    return jnp.mean(cj.set_cost(sets, labels[test], c)), jnp.mean(sets.sum(-1)), t

  risk, size, thresholds = split(jax.random.split(jax.random.key(1), 200))
  risk = np.asarray(risk)
  mean, se = risk.mean(), risk.std(ddof=1) / np.sqrt(len(risk))
  assert mean <= alpha + 4 * se, (mean, se)
  assert mean >= alpha - 2 * bound / (n_cal + 1) - 4 * se, (mean, se)
  # Not the trivial answers: sets are neither the Bayes singletons nor everything.
  assert np.all(np.isfinite(thresholds)) and np.all(np.asarray(thresholds) > 0)
  assert 1.0 < float(size.mean()) < 9.0
  bayes_only = cj.set_cost(cj.cost_sets(pool, c, threshold=0.0), labels, c).mean()
  assert bayes_only > alpha


def test_bad_labels_nan_and_checked():
  logits, y, c = _problem(55, 20, 4)
  y = y.copy()
  y[5] = 4
  assert np.isnan(cj.calibrate_cost_sets(logits, y, c, alpha=1.0))
  assert np.isnan(cj.set_cost(cj.cost_sets(logits, c, threshold=1.0), y, c)[5])
  y[5] = -1
  with pytest.raises(Exception, match=r"calibrate_cost_sets: labels must lie in \[0, 4\); "
                                      r"got -1 at index \(5,\)"):
    cj.checked(cj.calibrate_cost_sets)(logits, y, c, alpha=1.0)
  with pytest.raises(Exception, match=r"set_cost: labels must lie in \[0, 4\); got -1"):
    cj.checked(cj.set_cost)(np.ones((20, 4), bool), y, c)


@pytest.mark.parametrize("alpha", [0.0, -1.0, float("inf"), float("nan")])
def test_bad_alpha(alpha):
  logits, y, c = _problem(56, 10, 3)
  with pytest.raises(ValueError, match="alpha"):
    cj.calibrate_cost_sets(logits, y, c, alpha=alpha)


def test_shape_errors():
  logits, y, c = _problem(57, 10, 3)
  with pytest.raises(ValueError, match=r"labels.shape=\(9,\) and sets.shape=\(10, 3\)"):
    cj.set_cost(np.ones((10, 3), bool), y[:9], c)
  with pytest.raises(ValueError, match=r"sets.shape=\(10, 4\) and cost_matrix.shape=\(3, 3\)"):
    cj.set_cost(np.ones((10, 4), bool), y, c)
  with pytest.raises(ValueError, match=r"labels.shape=\(10, 4\) and sets.shape=\(10, 3\)"):
    cj.set_cost(np.ones((10, 3), bool), np.ones((10, 4), np.float32), c)
  with pytest.raises(ValueError, match=r"cost_matrix.shape=\(4, 4\)"):
    cj.calibrate_cost_sets(logits, y, np.ones((4, 4), np.float32), alpha=0.5)
  with pytest.raises(ValueError, match=r"labels.shape=\(9,\) and logits.shape=\(10, 3\)"):
    cj.calibrate_cost_sets(logits, y[:9], c, alpha=0.5)
  with pytest.raises(TypeError, match="integer dtype"):
    cj.calibrate_cost_sets(logits, y.astype(np.float32), c, alpha=0.5)


def test_shipped_cost_structures_match_their_dense_matrices():
  structures = pytest.importorskip("costjax._structures")
  logits, y, _ = _problem(58, 120, 6)
  emb = np.random.default_rng(58).normal(size=(6, 3)).astype(np.float32)
  for s in [structures.OrdinalCost(6, power=2), structures.EmbeddingCost(emb, scale=0.5)]:
    dense = np.asarray(s.dense())
    np.testing.assert_allclose(cj.decision_costs(logits, s), cj.decision_costs(logits, dense),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(cj.bayes_decision(logits, s, abstain_cost=1.0),
                                  cj.bayes_decision(logits, dense, abstain_cost=1.0))
    alpha = 0.3 * float(dense.max())
    got = float(cj.calibrate_cost_sets(logits, y, s, alpha=alpha))
    want = _brute_force_threshold(_gaps_np(logits, dense), dense[y], dense.max(), alpha)
    assert got == pytest.approx(want, rel=1e-5, abs=1e-6)
    sets = cj.cost_sets(logits, s, threshold=got)
    np.testing.assert_allclose(cj.set_cost(sets, y, s), np.where(sets, dense[y], np.inf).min(1),
                               rtol=1e-6)
    pred = np.asarray(cj.bayes_decision(logits, s))
    np.testing.assert_allclose(cj.mean_cost(pred, y, s), dense[y, pred].mean(), rtol=1e-6)


def test_set_cost_per_example_costs_and_dtypes():
  """set_cost = min over the set of C_b[y_b, j], with each example's own matrix (NumPy)."""
  rng = np.random.default_rng(30)
  n, k = 12, 4
  sets = rng.random((n, k)) < 0.5
  sets[:, 0] = True  # never empty
  y = rng.integers(0, k, size=n).astype(np.int32)
  c = rng.uniform(0, 5, size=(n, k, k)).astype(np.float32)
  want = np.where(sets, c[np.arange(n), y], np.inf).min(-1)
  np.testing.assert_allclose(cj.set_cost(sets, y, c), want, rtol=1e-6)
  c_int = rng.integers(0, 6, size=(k, k)).astype(np.int32)
  with jax.enable_x64(True):  # integer costs: float32 even where float64 is available
    got = cj.set_cost(sets, y, c_int)
  assert got.dtype == jnp.float32
  np.testing.assert_array_equal(got, np.where(sets, c_int[y], np.inf).min(-1))


def test_set_cost_integer_labels_of_the_sets_shape_are_refused():
  sets = np.ones((3, 4), bool)
  with pytest.raises(ValueError, match=r"integer labels must have shape sets.shape\[:-1\]"):
    cj.set_cost(sets, np.zeros((3, 4), np.int32), np.ones((4, 4), np.float32))


def test_calibrate_alpha_traced_shape_and_value_checks():
  logits, labels, c = _problem(31, 40, 3)
  name = "costjax.calibrate_cost_sets"
  calibrate = jax.jit(lambda a: cj.calibrate_cost_sets(logits, labels, c, alpha=a))
  with pytest.raises(ValueError, match=rf"{name}: alpha must be a scalar; got shape \(2,\)\."):
    calibrate(jnp.array([0.1, 0.2]))
  np.testing.assert_allclose(calibrate(jnp.float32(0.5)),
                             cj.calibrate_cost_sets(logits, labels, c, alpha=0.5))
  assert np.isnan(calibrate(jnp.float32(-1.0)))  # traced: cannot raise, so no threshold
  fresh = jax.jit(lambda a: cj.calibrate_cost_sets(logits, labels, c, alpha=a))  # traced checked
  with pytest.raises(Exception, match=rf"{name}: alpha must be finite and > 0; got -1"):
    cj.checked(fresh)(jnp.float32(-1.0))


def test_calibrate_accepts_array_likes_and_flags_infinite_logits():
  logits, labels, c = _problem(32, 40, 3)
  want = cj.calibrate_cost_sets(logits, labels, c, alpha=0.5)
  np.testing.assert_array_equal(
      cj.calibrate_cost_sets(logits.tolist(), labels.tolist(), c.tolist(), alpha=0.5), want)
  # +inf logits break the precondition: the threshold is not a plausible (finite) value.
  bad = logits.copy()
  bad[:, 0] = np.inf
  assert not np.isfinite(cj.calibrate_cost_sets(bad, labels, c, alpha=0.5))


def test_checked_mode_names_negative_probability_labels_with_a_cost_structure():
  """set_cost with probability labels and a cost structure: checked mode reports a negative
  label entry (the structure's own check covers its leaves, not the labels)."""
  sets = jnp.ones((2, 5), bool)
  q = jnp.array([[0.5, 0.6, -0.1, 0.0, 0.0], [0.2, 0.2, 0.2, 0.2, 0.2]])
  for cost in (cj.OrdinalCost(5), jnp.asarray(cj.ordinal_cost_matrix(5))):
    with pytest.raises(checkify.JaxRuntimeError, match=r"costjax\.set_cost: probability labels "
                                                       r"have a negative entry"):
      cj.checked(cj.set_cost)(sets, q, cost)
  good = q.at[0].set(q[1])
  np.testing.assert_allclose(cj.checked(cj.set_cost)(sets, good, cj.OrdinalCost(5)),
                             cj.set_cost(sets, good, cj.OrdinalCost(5)))
