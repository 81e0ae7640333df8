"""Tests that fail when the code is wrong: contract points no other test pinned down.

Each test here was written against a specific wrong implementation that the rest of
the suite let through (see docs/testing.md): a dropped term that vanishes on a zero
diagonal, a hyperparameter applied squared or under ``stop_gradient``, a transposed
table, a clamped label, a computation silently done in bfloat16. The oracles are
NumPy float64 formulas written here, scipy's LP, POT and sklearn; never the package
checked against itself.
"""

from __future__ import annotations

import functools
import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import ot
import pytest
from jax.experimental import checkify
from scipy.optimize import linprog
from sklearn.metrics import cohen_kappa_score
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

import costjax as cj

K = 5


# --------------------------------------------------------------------------- #
# Independent float64 oracles (written here, sharing nothing with costjax).
# --------------------------------------------------------------------------- #


def np_softmax(z):
  z = np.asarray(z, np.float64)
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def np_logsumexp(z, axis=-1):
  z = np.asarray(z, np.float64)
  m = np.max(z, axis=axis, keepdims=True)
  m = np.where(np.isfinite(m), m, 0.0)
  return (m + np.log(np.sum(np.exp(z - m), axis=axis, keepdims=True))).squeeze(axis)


def np_log1m_softmax(z):
  """log(1 - p_j) = LSE_{k != j} z_k - LSE z, exact even when p_j rounds to 1."""
  z = np.asarray(z, np.float64)
  k = z.shape[-1]
  out = np.empty_like(z)
  for j in range(k):
    others = np.delete(z, j, axis=-1)
    out[..., j] = np_logsumexp(others) - np_logsumexp(z)
  return out


def one_hot(labels, k):
  return np.eye(k)[np.asarray(labels)]


def np_expected_cost(z, q, c):
  return np.einsum("...i,ij,...j->...", q, np.asarray(c, np.float64), np_softmax(z))


def np_soft_targets(q, c, t):
  """sum_i q_i softmax(-C[i] / T): hand-written, row by row."""
  c = np.asarray(c, np.float64)
  rows = np.stack([np.exp(-c[i] / t) / np.exp(-c[i] / t).sum() for i in range(c.shape[0])])
  return np.asarray(q, np.float64) @ rows


def np_cross_entropy(z, q):
  z = np.asarray(z, np.float64)
  log_p = z - np_logsumexp(z)[..., None]
  safe = np.where(q > 0, log_p, 0.0)
  return -(q * safe).sum(-1)


def np_cdw(z, q, c, alpha):
  w = np.asarray(q, np.float64) @ np.asarray(c, np.float64) ** alpha
  return -(w * np_log1m_softmax(z)).sum(-1)


def np_ordinal_emd(z, q, power):
  d = np.abs(np.cumsum(np_softmax(z), -1) - np.cumsum(q, -1))[..., :-1]
  return (d**power).sum(-1)


def lp_ot(a, b, cost):
  """Exact OT by scipy's LP: plan T[i, j], rows sum to b (true), columns to a (pred)."""
  k = cost.shape[0]
  a_eq = np.zeros((2 * k, k * k))
  for i in range(k):
    a_eq[i, i * k:(i + 1) * k] = 1
    a_eq[k + i, i::k] = 1
  res = linprog(np.asarray(cost, np.float64).ravel(), A_eq=a_eq, b_eq=np.concatenate([b, a]),
                bounds=(0, None), method="highs")
  assert res.status == 0
  return res.fun


def pot_entropic(a, b, cost, eps):
  """POT's log-domain Sinkhorn converted to the <P, C> + eps KL(P || a b^T) objective.

  POT's matrix is indexed [source = prediction a, sink = target b], i.e. C.T; the
  objectives differ by the constant eps (H(a) + H(b)).
  """
  def entropy(x):
    x = x[x > 0]
    return -np.sum(x * np.log(x))

  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    # The plain kernel iteration is exact enough while exp(-C / eps) stays normal.
    method = "sinkhorn" if cost.max() / eps < 50 else "sinkhorn_log"
    plan = ot.sinkhorn(a, b, cost.T, eps, method=method, stopThr=1e-10, numItermax=20000)
  return np.sum(plan * cost.T) - eps * entropy(plan) + eps * (entropy(a) + entropy(b))


def asymmetric(rng, k=K, diag=(0.0, 0.0)):
  c = rng.uniform(0.5, 6.0, size=(k, k))
  np.fill_diagonal(c, rng.uniform(*diag, size=k))
  assert not np.allclose(c, c.T)
  return c


# --------------------------------------------------------------------------- #
# 1-2. Sinkhorn with integer labels: the debiased diagonal term and epsilon = 0.
# --------------------------------------------------------------------------- #


def test_debiased_integer_labels_with_nonzero_diagonal_match_pot():
  """S(p, y) = OT(p, d_y) - OT(p, p)/2 - OT(d_y, d_y)/2 with C[y, y] > 0.

  With a one-hot target the only coupling is the product, so OT(p, d_y) = p . C[y]
  and OT(d_y, d_y) = C[y, y]; OT(p, p) comes from POT. Dropping the -C[y, y]/2
  term is invisible on the zero-diagonal matrices of every other test.
  """
  rng = np.random.default_rng(20)
  cost = asymmetric(rng, diag=(0.8, 2.5))
  logits = rng.normal(size=(4, K)) * 1.5
  labels = np.array([1, 0, 4, 2])
  eps = 0.4
  got = cj.sinkhorn_loss(logits.astype(np.float32), labels, cost.astype(np.float32),
                         epsilon=eps, debiased=True, tol=1e-6, max_iterations=5000)
  for b, y in enumerate(labels):
    a = np_softmax(logits[b])
    want = a @ cost[y] - 0.5 * pot_entropic(a, a, cost, eps) - 0.5 * cost[y, y]
    np.testing.assert_allclose(got[b], want, atol=2e-4)


def test_epsilon_zero_integer_labels_is_the_exact_lp():
  rng = np.random.default_rng(21)
  cost = asymmetric(rng, diag=(0.0, 1.0))
  logits = rng.normal(size=(4, K)) * 2
  labels = np.array([3, 0, 4, 1])
  got = cj.sinkhorn_loss(logits.astype(np.float32), labels, cost.astype(np.float32), epsilon=0)
  jitted = jax.jit(lambda z: cj.sinkhorn_loss(z, labels, cost.astype(np.float32), epsilon=0))
  for b, y in enumerate(labels):
    lp = lp_ot(np_softmax(logits[b]), one_hot(y, K), cost)
    np.testing.assert_allclose(got[b], lp, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(jitted(logits.astype(np.float32)), got, rtol=1e-6)
  bad = np.asarray(cj.sinkhorn_loss(logits.astype(np.float32), np.array([0, -1, K, 2]),
                                    cost.astype(np.float32), epsilon=0))
  assert np.isnan(bad[1]) and np.isnan(bad[2]) and np.isfinite(bad[[0, 3]]).all()


def test_epsilon_zero_ordinal_ground_with_unnormalised_target():
  """ground="ordinal" agrees with the LP; a target that does not sum to 1 breaks the
  precondition (issue 26) and gives NaN rather than a rescaled answer."""
  rng = np.random.default_rng(22)
  k = 6
  ordinal = np.abs(np.arange(k)[:, None] - np.arange(k)[None, :]).astype(np.float64)
  logits = rng.normal(size=(3, k))
  q = rng.dirichlet(np.ones(k), size=3)
  got = cj.sinkhorn_loss(logits.astype(np.float32), q.astype(np.float32),
                         ordinal.astype(np.float32), epsilon=0, ground="ordinal")
  for b in range(3):
    np.testing.assert_allclose(got[b], lp_ot(np_softmax(logits[b]), q[b], ordinal), atol=1e-5)
  bad = cj.sinkhorn_loss(logits.astype(np.float32), (3 * q).astype(np.float32),
                         ordinal.astype(np.float32), epsilon=0, ground="ordinal")
  assert np.isnan(np.asarray(bad)).all()


# --------------------------------------------------------------------------- #
# 3. cost_soft_labels against softmax(-C[y] / T) written by hand.
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("temperature", [0.3, 1.0, 2.5, 7.0])
def test_cost_soft_labels_integer_labels_match_hand_softmax(temperature):
  rng = np.random.default_rng(30)
  cost = asymmetric(rng, diag=(0.0, 1.5))  # the diagonal need not be the row minimum
  labels = np.array([[0, 4, 2], [1, 3, 3]])
  got = cj.cost_soft_labels(jnp.asarray(labels), cost.astype(np.float32),
                            temperature=temperature)
  assert got.shape == (2, 3, K) and got.dtype == jnp.float32
  want = np.empty((2, 3, K))
  for idx in np.ndindex(labels.shape):
    row = -cost[labels[idx]] / temperature
    want[idx] = np.exp(row - row.max()) / np.exp(row - row.max()).sum()
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  traced = jax.jit(lambda y, t: cj.cost_soft_labels(y, cost.astype(np.float32), temperature=t))
  np.testing.assert_allclose(traced(jnp.asarray(labels), temperature), want, rtol=1e-5,
                             atol=1e-7)


@pytest.mark.parametrize("temperature", [0.5, 3.0])
def test_cost_soft_labels_probability_labels_mix_rows_not_columns(temperature):
  rng = np.random.default_rng(31)
  cost = asymmetric(rng)
  r = rng.dirichlet(np.ones(K), size=4)
  got = cj.cost_soft_labels(jnp.asarray(r, jnp.float32), cost.astype(np.float32),
                            temperature=temperature)
  want = np_soft_targets(r, cost, temperature)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  wrong = r @ np_soft_targets(np.eye(K), cost, temperature).T  # the transposed table
  assert np.abs(wrong - want).max() > 1e-2
  # One-hot probability labels give the integer-label rows.
  np.testing.assert_allclose(
      cj.cost_soft_labels(jnp.eye(K, dtype=jnp.float32)[jnp.array([2, 0])],
                          cost.astype(np.float32), temperature=temperature),
      np_soft_targets(one_hot([2, 0], K), cost, temperature), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("bad", [-1, K, 1000, -1000])
def test_cost_soft_labels_out_of_range_rows_are_nan(bad):
  rng = np.random.default_rng(32)
  cost = asymmetric(rng).astype(np.float32)
  labels = jnp.array([1, bad, 3])
  for f in (cj.cost_soft_labels, jax.jit(cj.cost_soft_labels)):
    out = np.asarray(f(labels, cost))
    assert np.isnan(out[1]).all()
    np.testing.assert_allclose(out[[0, 2]], np_soft_targets(one_hot([1, 3], K), cost, 1.0),
                               rtol=1e-5, atol=1e-7)
  with pytest.raises(checkify.JaxRuntimeError, match=rf"got {bad} at index \(1,\)"):
    cj.checked(cj.cost_soft_labels)(labels, cost)


def test_cost_soft_labels_bad_shapes_and_dtypes():
  c = np.ones((K, K), np.float32) - np.eye(K, dtype=np.float32)
  with pytest.raises(ValueError, match=r"labels.shape=\(2, 4\)"):
    cj.cost_soft_labels(jnp.full((2, 4), 0.25), c)
  with pytest.raises(ValueError, match=r"labels.shape=\(\)"):
    cj.cost_soft_labels(jnp.float32(1.0), c)
  with pytest.raises(TypeError, match="bool"):
    cj.cost_soft_labels(jnp.ones((2, K), bool), c)
  with pytest.raises(ValueError, match=r"\(5, 4\)"):
    cj.cost_soft_labels(jnp.array([0, 1]), c[:, :4])
  # A per-example stack must broadcast against the labels' batch shape (2,): (3, 5, 5) does not.
  with pytest.raises(ValueError, match=r"\(3, 5, 5\)"):
    cj.cost_soft_labels(jnp.array([0, 1]), np.stack([c, c, c]))


# --------------------------------------------------------------------------- #
# 4. Metrics with out-of-range *labels* (not only predictions).
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("bad", [-1, K, 50])
def test_confusion_matrix_drops_pairs_with_bad_labels(bad):
  rng = np.random.default_rng(40)
  labels = rng.integers(0, K, 30)
  preds = rng.integers(0, K, 30)
  labels[[3, 17]] = bad
  got = np.asarray(cj.confusion_matrix(jnp.asarray(preds), jnp.asarray(labels), num_classes=K))
  ok = (labels >= 0) & (labels < K)
  want = sk_confusion_matrix(labels[ok], preds[ok], labels=np.arange(K))
  np.testing.assert_array_equal(got, want)
  assert got.sum() == 28


@pytest.mark.parametrize("bad", [-1, K, 50])
def test_kappa_is_nan_for_bad_labels_and_matches_sklearn_otherwise(bad):
  rng = np.random.default_rng(41)
  labels = rng.integers(0, K, 40)
  preds = np.clip(labels + rng.integers(-1, 2, 40), 0, K - 1)
  got = cj.quadratic_weighted_kappa(jnp.asarray(preds), jnp.asarray(labels), num_classes=K)
  want = cohen_kappa_score(labels, preds, weights="quadratic", labels=np.arange(K))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  labels[7] = bad
  f = jax.jit(functools.partial(cj.quadratic_weighted_kappa, num_classes=K))
  assert np.isnan(f(jnp.asarray(preds), jnp.asarray(labels)))
  assert np.isnan(cj.quadratic_weighted_kappa(jnp.asarray(labels), jnp.asarray(preds),
                                              num_classes=K))


def test_mean_cost_bad_label_is_nan_and_orientation():
  c = np.array([[0.0, 7.0, 1.0], [2.0, 0.0, 5.0], [3.0, 4.0, 0.0]], np.float32)
  preds, labels = jnp.array([1, 2, 0]), jnp.array([0, 1, 2])
  np.testing.assert_allclose(cj.mean_cost(preds, labels, c), (7 + 5 + 3) / 3, rtol=1e-6)
  for bad in (-1, 3):
    assert np.isnan(cj.mean_cost(preds, jnp.array([0, bad, 2]), c))


# --------------------------------------------------------------------------- #
# 5. Gradients with respect to the traced hyperparameters (float64 finite differences).
# --------------------------------------------------------------------------- #


def _hyper_problem(probs=False):
  rng = np.random.default_rng(50)
  logits = rng.normal(size=(3, K)) * 1.5
  labels = rng.dirichlet(np.ones(K), size=3) if probs else np.array([0, 3, 1])
  cost = asymmetric(rng) + 0.3  # positive everywhere: C**alpha is smooth in alpha
  return logits, labels, cost


def _weigh_classes(q):
  """``q * (1, 2, ..., K)`` along the last axis (a non-constant readout of ``q``)."""
  return q * jax.lax.broadcast_to_rank(jnp.arange(1.0, K + 1), q.ndim)


HYPER = {
    "temperature/soft_label_ce": (
        lambda z, y, c, h: cj.soft_label_cross_entropy(z, y, c, temperature=h), 1.7),
    "temperature/cost_soft_labels": (
        lambda z, y, c, h: _weigh_classes(cj.cost_soft_labels(y, c, temperature=h)),
        0.8),
    "alpha/cdw_ce": (
        lambda z, y, c, h: cj.class_distance_weighted_cross_entropy(z, y, c, alpha=h), 1.6),
    "lam/cost_regularized_ce": (
        lambda z, y, c, h: cj.cost_regularized_cross_entropy(z, y, c, lam=h), 0.7),
    "power/ordinal_emd": (lambda z, y, c, h: cj.ordinal_emd(z, y, power=h), 1.5),
}


@pytest.mark.parametrize("name", sorted(HYPER))
@pytest.mark.parametrize("probs", [False, True], ids=["indices", "probabilities"])
def test_hyperparameter_gradients_match_finite_differences(name, probs):
  fn, h0 = HYPER[name]
  with jax.enable_x64(True):
    logits, labels, cost = _hyper_problem(probs)
    f = lambda h: jnp.sum(fn(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(cost), h))
    h0 = jnp.float64(h0)
    g = jax.grad(f)(h0)
    fd = (f(h0 + 1e-6) - f(h0 - 1e-6)) / 2e-6
    assert abs(float(fd)) > 1e-3  # the hyperparameter matters here
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(jax.jvp(f, (h0,), (jnp.float64(1.0),))[1], fd, rtol=1e-6,
                               atol=1e-8)


@pytest.mark.parametrize("debiased", [False, True])
def test_sinkhorn_epsilon_gradient_matches_finite_differences(debiased):
  """d OT_eps / d eps = KL(T* || q p^T) (envelope theorem), not zero."""
  with jax.enable_x64(True):
    logits, q, cost = _hyper_problem(probs=True)
    for eps0 in (0.5 * cost.max(), 0.02 * cost.max()):  # kernel and log-domain paths
      def f(e):
        return cj.sinkhorn_loss(jnp.asarray(logits), jnp.asarray(q), jnp.asarray(cost),
                                epsilon=e, debiased=debiased, tol=1e-12,
                                max_iterations=50000).sum()

      h = 1e-5 * eps0
      fd = (f(eps0 + h) - f(eps0 - h)) / (2 * h)
      g = jax.grad(f)(jnp.float64(eps0))
      assert abs(float(fd)) > 1e-4
      np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------- #
# 7. Low precision and extreme logits against float64 oracles, not against themselves.
# --------------------------------------------------------------------------- #


def _closed_form_losses():
  """The losses of test_losses.py are checked there; these two reduce to p . C[y] too."""
  return {
      "sinkhorn_int": (functools.partial(cj.sinkhorn_loss, epsilon=0.5),
                       lambda z, q, c: np_expected_cost(z, q, c)),
      "tree_wasserstein": (
          lambda z, y, c: cj.tree_wasserstein(z, y, TREE_PARENTS),
          lambda z, q, c: np_expected_cost(z, q, TREE_COST)),
  }


# A fixed 5-class tree and its path lengths, counted by hand:
#       8
#     /   \
#    6     7
#   / \   / \
#  0   1 2   5        class 3 hangs under 5, class 4 under 7
#            |
#            3
TREE_PARENTS = np.array([6, 6, 7, 5, 7, 7, 8, 8, -1])
TREE_COST = np.array([
    [0, 2, 4, 5, 4],
    [2, 0, 4, 5, 4],
    [4, 4, 0, 3, 2],
    [5, 5, 3, 0, 3],
    [4, 4, 2, 3, 0],
], np.float64)


@pytest.mark.parametrize("name", sorted(_closed_form_losses()))
@pytest.mark.parametrize("dtype, bits", [(jnp.bfloat16, 8), (jnp.float16, 11)],
                         ids=["bfloat16", "float16"])
def test_half_precision_is_float32_math_rounded_once(name, dtype, bits):
  """Half-precision logits are computed in float32: the result is the float64 value
  correctly rounded to the output dtype (relative error <= 2**-bits), which a
  computation carried out in bfloat16/float16 misses. Inputs are multiples of 1/8,
  exact in both formats."""
  fn, oracle = _closed_form_losses()[name]
  rng = np.random.default_rng(70)
  logits = (rng.integers(-24, 25, size=(64, K)) / 8.0).astype(np.float32)
  labels = rng.integers(0, K, 64).astype(np.int32)
  cost = (rng.integers(1, 33, size=(K, K)) / 4.0).astype(np.float32)
  np.fill_diagonal(cost, 0)
  low = jnp.asarray(logits, dtype)
  assert np.array_equal(np.asarray(low, np.float32), logits)
  got = fn(low, labels, cost)
  assert got.dtype == dtype
  want = oracle(logits.astype(np.float64), one_hot(labels, K), cost)
  np.testing.assert_allclose(np.asarray(got, np.float64), want,
                             rtol=2.0**-bits * 1.02, atol=1e-6)


@pytest.mark.parametrize("name", sorted(_closed_form_losses()))
@pytest.mark.parametrize("scale", [1e4, -1e4])
def test_extreme_logits_values_and_gradients_match_float64(name, scale):
  """Logits of +-1e4 (ties included): values against the float64 oracle and
  gradients against its central differences."""
  fn, oracle = _closed_form_losses()[name]
  rng = np.random.default_rng(71)
  logits = rng.choice([-1.0, 0.0, 1.0], size=(6, K)) * scale
  logits[0] = [scale, scale, 0.0, -scale, 0.0]  # a tie at the top
  labels = np.arange(6) % K
  cost = asymmetric(rng).astype(np.float32)
  q = one_hot(labels, K)
  value, grad = jax.value_and_grad(lambda z: fn(z, labels, cost).sum())(
      jnp.asarray(logits, jnp.float32))
  want = oracle(logits, q, cost.astype(np.float64))
  # float32 resolves 1e4 to ~1e-3 (one ulp), and the losses subtract log-sum-exps of
  # that size: allow ten ulps, far below any clamping or log(0) artefact.
  np.testing.assert_allclose(fn(jnp.asarray(logits, jnp.float32), labels, cost), want,
                             rtol=1e-6, atol=1e-2)
  h = 1e-3
  fd = np.zeros_like(logits)
  for idx in np.ndindex(logits.shape):
    up, down = logits.copy(), logits.copy()
    up[idx] += h
    down[idx] -= h
    fd[idx] = (oracle(up, q, cost).sum() - oracle(down, q, cost).sum()) / (2 * h)
  np.testing.assert_allclose(grad, fd, atol=2e-3)
  assert np.isfinite(float(value))


# --------------------------------------------------------------------------- #
# 8. Paths no test reached: bad `where`, checked mode, Sinkhorn options, trees.
# --------------------------------------------------------------------------- #


ALL_LOSSES = {
    "expected_cost": cj.expected_cost,
    "cost_regularized_ce": cj.cost_regularized_cross_entropy,
    "soft_label_ce": cj.soft_label_cross_entropy,
    "cdw_ce": cj.class_distance_weighted_cross_entropy,
    "ordinal_emd": lambda z, y, c, **kw: cj.ordinal_emd(z, y, **kw),
    "sinkhorn": functools.partial(cj.sinkhorn_loss, epsilon=0.5, max_iterations=50),
    "tree_wasserstein": lambda z, y, c, **kw: cj.tree_wasserstein(z, y, TREE_PARENTS, **kw),
}


@pytest.mark.parametrize("name", sorted(ALL_LOSSES))
def test_where_of_the_wrong_shape_names_both_shapes(name):
  fn = ALL_LOSSES[name]
  z = jnp.zeros((4, K))
  y = jnp.array([0, 1, 2, 3])
  c = jnp.ones((K, K)) - jnp.eye(K)
  for bad in ((3,), (4, K - 1), (4, 1, K), (K, 4)):
    match = re.escape(f"where.shape={bad}") + ".*" + re.escape(f"logits.shape=(4, {K})")
    with pytest.raises(ValueError, match=match):
      fn(z, y, c, where=jnp.ones(bad, bool))


COST_LOSSES = {k: v for k, v in ALL_LOSSES.items() if k not in ("ordinal_emd", "tree_wasserstein")}


@pytest.mark.parametrize("name", sorted(COST_LOSSES))
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_checked_mode_rejects_non_finite_costs(name, bad):
  fn = COST_LOSSES[name]
  c = np.ones((K, K), np.float32) - np.eye(K, dtype=np.float32)
  c[2, 3] = bad
  z = jnp.zeros((2, K))
  with pytest.raises(checkify.JaxRuntimeError, match="cost_matrix has a non-finite entry"):
    cj.checked(fn)(z, jnp.array([0, 1]), c)
  with pytest.raises(checkify.JaxRuntimeError, match="non-finite"):
    cj.checked(cj.cost_soft_labels)(jnp.array([0, 1]), c)


@pytest.mark.parametrize("name", sorted(ALL_LOSSES))
def test_checked_mode_rejects_negative_probability_labels(name):
  fn = ALL_LOSSES[name]
  c = np.ones((K, K), np.float32) - np.eye(K, dtype=np.float32)
  q = np.full((2, K), 0.2, np.float32)
  q[1] = [0.6, -0.1, 0.2, 0.2, 0.1]
  with pytest.raises(checkify.JaxRuntimeError,
                     match=r"probability labels have a negative entry \(min -0.1"):
    cj.checked(fn)(jnp.zeros((2, K)), q, c)
  # The valid labels pass through checked mode unchanged.
  q[1] = [0.6, 0.1, 0.1, 0.1, 0.1]
  np.testing.assert_allclose(cj.checked(fn)(jnp.zeros((2, K)), q, c),
                             fn(jnp.zeros((2, K)), q, c), rtol=1e-6)


def test_checked_mode_negative_costs_in_every_cost_loss():
  c = np.ones((K, K), np.float32) - np.eye(K, dtype=np.float32)
  c[4, 0] = -2.0
  for fn in COST_LOSSES.values():
    with pytest.raises(checkify.JaxRuntimeError, match=r"negative entry \(min -2"):
      cj.checked(fn)(jnp.zeros((2, K)), jnp.array([0, 1]), c)
  for fn in (cj.bayes_decision,):
    with pytest.raises(checkify.JaxRuntimeError, match="negative entry"):
      cj.checked(fn)(jnp.zeros((2, K)), c)


@pytest.mark.parametrize("fn", [cj.sinkhorn_loss, cj.sinkhorn_solve], ids=["loss", "solve"])
def test_sinkhorn_static_option_validation(fn):
  z, y, c = jnp.zeros((2, 3)), jnp.array([0, 1]), jnp.ones((3, 3))
  for tol in (0.0, -1e-3, float("nan"), float("inf")):
    with pytest.raises(ValueError, match=r"tol must be a positive static float"):
      fn(z, y, c, epsilon=0.1, tol=tol)
  with pytest.raises(ValueError, match="tol must be a positive static float"):
    jax.jit(lambda t: fn(z, y, c, epsilon=0.1, tol=t))(1e-3)
  for its in (0, -5, 2.5):
    with pytest.raises(ValueError, match="max_iterations must be a positive int"):
      fn(z, y, c, epsilon=0.1, max_iterations=its)
  with pytest.raises(ValueError, match="epsilon must be a scalar"):
    jax.jit(lambda e: fn(z, y, c, epsilon=e))(jnp.ones(2))
  # Valid edge values pass.
  assert np.isfinite(np.asarray(fn(z, y, c, epsilon=0.1, tol=1.0, max_iterations=1)
                                if fn is cj.sinkhorn_loss else
                                fn(z, y, c, epsilon=0.1, tol=1.0, max_iterations=1).value)).all()


def test_sinkhorn_ground_validation():
  z = jnp.zeros((2, 3))
  q = jnp.full((2, 3), 1 / 3)
  ordinal = jnp.abs(jnp.arange(3.0)[:, None] - jnp.arange(3.0)[None, :])
  for bad in ("tree", "Ordinal", 1):
    with pytest.raises(ValueError, match=r"ground must be None or 'ordinal'"):
      cj.sinkhorn_loss(z, q, ordinal, epsilon=0, ground=bad)
  # A traced cost matrix cannot be inspected: the promise is taken on trust.
  got = jax.jit(lambda c: cj.sinkhorn_loss(z, q, c, epsilon=0, ground="ordinal"))(ordinal)
  np.testing.assert_allclose(got, 0.0, atol=1e-6)
  # With epsilon > 0 `ground` is ignored: the solver runs on the given matrix.
  np.testing.assert_allclose(
      cj.sinkhorn_loss(z, q, 2 * ordinal, epsilon=0.5, ground="ordinal"),
      cj.sinkhorn_loss(z, q, 2 * ordinal, epsilon=0.5), rtol=1e-6)


def _solve_problem(seed=80, batch=(3,)):
  rng = np.random.default_rng(seed)
  cost = asymmetric(rng).astype(np.float32)
  logits = (rng.normal(size=batch + (K,)) * 1.5).astype(np.float32)
  q = rng.dirichlet(np.full(K, 0.8), size=batch).astype(np.float32)
  return logits, q, cost


def test_sinkhorn_solve_potentials_plan_and_value_are_consistent():
  """T = q_i p_j exp((f_j + g_i - C_ij) / eps); value = <f, p> + <g, q> at convergence
  = <T, C> + eps KL(T || q p^T), all recomputed here in float64 from f and g."""
  logits, q, cost = _solve_problem()
  eps = 0.3
  out = cj.sinkhorn_solve(logits, q, cost, epsilon=eps, tol=1e-5, max_iterations=3000)
  assert out.g.shape == (3, K) and out.f.shape == (3, K) and bool(out.converged.all())
  for b in range(3):
    p = np_softmax(logits[b])
    f, g = np.asarray(out.f[b], np.float64), np.asarray(out.g[b], np.float64)
    plan = q[b][:, None] * p[None, :] * np.exp((f[None, :] + g[:, None] - cost) / eps)
    np.testing.assert_allclose(out.plan[b], plan, atol=1e-5)
    np.testing.assert_allclose(plan.sum(1), q[b], atol=1e-5)
    np.testing.assert_allclose(plan.sum(0), p, atol=1e-5)
    np.testing.assert_allclose(out.value[b], f @ p + g @ q[b], atol=1e-5)
    ratio = plan / (q[b][:, None] * p[None, :])
    kl = np.sum(plan * np.log(ratio))
    np.testing.assert_allclose(out.value[b], np.sum(plan * cost) + eps * kl, atol=1e-4)
    np.testing.assert_allclose(out.value[b], pot_entropic(p, q[b].astype(np.float64),
                                                          cost.astype(np.float64), eps),
                               atol=1e-4)


@pytest.mark.slow  # six solver compilations
def test_sinkhorn_solve_under_jit_vmap_and_grad():
  logits, q, cost = _solve_problem(81, batch=(4,))
  eps = 0.25
  kw = dict(tol=1e-5, max_iterations=3000)
  out = cj.sinkhorn_solve(logits, q, cost, epsilon=eps, **kw)
  jitted = jax.jit(lambda z, t, c, e: cj.sinkhorn_solve(z, t, c, epsilon=e, **kw))(
      logits, q, cost, eps)
  mapped = jax.vmap(lambda z, t: cj.sinkhorn_solve(z, t, cost, epsilon=eps, **kw))(logits, q)
  for other in (jitted, mapped):
    for field in ("value", "f", "g", "plan", "marginal_error"):
      np.testing.assert_allclose(getattr(other, field), getattr(out, field), atol=2e-5)
    np.testing.assert_array_equal(other.converged, out.converged)
  # Gradients of `value`: the plan for the cost, p (f - p.f) for the logits, and
  # g (centred) for the target, which sinkhorn_solve normalises like the loss.
  g_c = jax.grad(lambda c: cj.sinkhorn_solve(logits, q, c, epsilon=eps, **kw).value.sum())(cost)
  np.testing.assert_allclose(g_c, out.plan.sum(0), atol=1e-5)
  g_z = jax.grad(lambda z: cj.sinkhorn_solve(z, q, cost, epsilon=eps, **kw).value.sum())(logits)
  p = np_softmax(logits)
  f = np.asarray(out.f, np.float64)
  np.testing.assert_allclose(g_z, p * (f - (p * f).sum(-1, keepdims=True)), atol=1e-5)
  g_q = jax.grad(lambda t: cj.sinkhorn_loss(logits, t, cost, epsilon=eps, **kw).sum())(q)
  g = np.asarray(out.g, np.float64)
  np.testing.assert_allclose(g_q, g - (q * g).sum(-1, keepdims=True), atol=1e-4)


def test_sinkhorn_solve_integer_labels_and_where():
  logits, _, cost = _solve_problem(82, batch=(4,))
  labels = jnp.array([0, 4, -1, 2])
  out = cj.sinkhorn_solve(logits, labels, cost, epsilon=0.3)
  value = np.asarray(out.value)
  ec = np_expected_cost(logits, one_hot([0, 4, 0, 2], K), cost)
  np.testing.assert_allclose(value[[0, 1, 3]], ec[[0, 1, 3]], rtol=1e-4, atol=1e-5)
  assert np.isnan(value[2])
  where = jnp.array([True, False, True, True])
  masked = cj.sinkhorn_solve(logits, jnp.array([0, 4, 1, 2]), cost, epsilon=0.3, where=where)
  assert float(masked.value[1]) == 0.0
  np.testing.assert_allclose(np.asarray(masked.value)[[0, 3]], ec[[0, 3]], rtol=1e-4, atol=1e-5)


def test_tree_wasserstein_where_masks():
  rng = np.random.default_rng(90)
  logits = rng.normal(size=(6, K)).astype(np.float32)
  labels = np.arange(6) % K
  rows = np.array([1, 0, 1, 1, 0, 1], bool)
  got = cj.tree_wasserstein(logits, labels, TREE_PARENTS, where=rows)
  want = np_expected_cost(logits, one_hot(labels, K), TREE_COST)
  np.testing.assert_allclose(got, np.where(rows, want, 0.0), rtol=1e-5, atol=1e-6)
  classes = np.ones((6, K), bool)
  classes[np.arange(6), (labels + 2) % K] = False
  got = cj.tree_wasserstein(logits, labels, TREE_PARENTS, where=classes)
  masked_logits = np.where(classes, logits, -np.inf)
  np.testing.assert_allclose(got, np_expected_cost(masked_logits, one_hot(labels, K), TREE_COST),
                             rtol=1e-5, atol=1e-6)


def test_tree_wasserstein_and_hierarchy_reject_non_finite_edge_weights():
  z = jnp.zeros(K)
  for bad in (np.nan, np.inf, -np.inf):
    w = np.ones(len(TREE_PARENTS))
    w[2] = bad
    with pytest.raises(ValueError, match=r"edge_weights\[2\] = .* is not finite"):
      cj.tree_wasserstein(z, jnp.array(0), TREE_PARENTS, edge_weights=w)
    with pytest.raises(ValueError, match=r"edge_weights\[2\] = .* is not finite"):
      cj.hierarchy_cost_matrix(TREE_PARENTS, K, edge_weights=w)
  # The root has no edge: its entry is ignored, whatever it is.
  w = np.ones(len(TREE_PARENTS))
  w[-1] = np.nan
  np.testing.assert_allclose(cj.hierarchy_cost_matrix(TREE_PARENTS, K, edge_weights=w),
                             TREE_COST)
  np.testing.assert_allclose(
      cj.tree_wasserstein(z, jnp.array(3), TREE_PARENTS, edge_weights=w),
      TREE_COST[3].mean(), rtol=1e-6)


# --------------------------------------------------------------------------- #
# Found by mutation testing (docs/testing.md).
# --------------------------------------------------------------------------- #


NAMED = {
    "expected_cost": cj.expected_cost,
    "cost_regularized_cross_entropy": cj.cost_regularized_cross_entropy,
    "soft_label_cross_entropy": cj.soft_label_cross_entropy,
    "class_distance_weighted_cross_entropy": cj.class_distance_weighted_cross_entropy,
    "ordinal_emd": lambda z, y, c: cj.ordinal_emd(z, y),
    "sinkhorn_loss": functools.partial(cj.sinkhorn_loss, epsilon=0.5),
}


@pytest.mark.parametrize("name", sorted(NAMED))
def test_errors_and_checked_mode_name_the_function(name):
  fn = NAMED[name]
  c = np.ones((K, K), np.float32)
  with pytest.raises(TypeError, match=rf"^costjax\.{name}: logits must have a floating"):
    fn(jnp.zeros((2, K), jnp.int32), jnp.array([0, 1]), c)
  with pytest.raises(ValueError, match=rf"^costjax\.{name}: "):
    fn(jnp.zeros((2, K)), jnp.array([0, 1, 2]), c)
  with pytest.raises(checkify.JaxRuntimeError, match=rf"costjax\.{name}: labels must lie in"):
    cj.checked(fn)(jnp.zeros((2, K)), jnp.array([0, K]), c)


def test_cost_soft_labels_errors_name_the_function():
  with pytest.raises(ValueError, match=r"^costjax\.cost_soft_labels: "):
    cj.cost_soft_labels(jnp.full((2, 4), 0.25), jnp.ones((K, K)))
  with pytest.raises(checkify.JaxRuntimeError, match=r"costjax\.cost_soft_labels: labels must"):
    cj.checked(cj.cost_soft_labels)(jnp.array([0, 9]), jnp.ones((K, K)))


@pytest.mark.parametrize("alpha", [1, 1.0, 2, 2.0, 0.5])
@pytest.mark.parametrize("probs", [False, True], ids=["indices", "probabilities"])
def test_cdw_ce_at_integer_and_float_alphas(alpha, probs):
  """The alpha == 1 shortcut must not catch other exponents, nor miss 1.0 / traced 1."""
  rng = np.random.default_rng(60)
  logits = rng.normal(size=(4, K)) * 2
  cost = asymmetric(rng)
  np.fill_diagonal(cost, 0.0)
  q = rng.dirichlet(np.ones(K), size=4) if probs else one_hot([0, 2, 4, 1], K)
  labels = q.astype(np.float32) if probs else np.array([0, 2, 4, 1])
  want = np_cdw(logits, q, cost, alpha)
  got = cj.class_distance_weighted_cross_entropy(logits.astype(np.float32), labels,
                                                 cost.astype(np.float32), alpha=alpha)
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-5)
  traced = jax.jit(lambda a: cj.class_distance_weighted_cross_entropy(
      logits.astype(np.float32), labels, cost.astype(np.float32), alpha=a))(float(alpha))
  np.testing.assert_allclose(traced, want, rtol=2e-5, atol=1e-5)


def test_cost_soft_labels_dtypes_and_checked_probability_labels():
  labels = jnp.array([0, 3])
  c_int = np.array(np.abs(np.arange(K)[:, None] - 2 * np.arange(K)[None, :]), np.int32)
  got = cj.cost_soft_labels(labels, c_int, temperature=2.0)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, np_soft_targets(one_hot([0, 3], K), c_int, 2.0), rtol=1e-5)
  with jax.enable_x64(True):
    assert cj.cost_soft_labels(labels, c_int).dtype == jnp.float32  # integer costs: float32
    got = cj.cost_soft_labels(labels, c_int.astype(np.float64), temperature=2.0)
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(got, np_soft_targets(one_hot([0, 3], K), c_int, 2.0),
                               rtol=1e-12)
    r = np.full((2, K), 1.0 / K)
    assert cj.cost_soft_labels(r, c_int.astype(np.float64)).dtype == jnp.float64
    # Probability labels set the compute dtype, as logits do for the losses.
    assert cj.cost_soft_labels(r.astype(np.float32),
                               c_int.astype(np.float64)).dtype == jnp.float32
  r = np.full((2, K), 0.2, np.float32)
  r[1, :2] = [0.5, -0.1]
  with pytest.raises(checkify.JaxRuntimeError, match="costjax.cost_soft_labels: probability"):
    cj.checked(cj.cost_soft_labels)(r, c_int.astype(np.float32))


@pytest.mark.parametrize("name", ["expected_cost", "cost_regularized_ce", "cdw_ce"])
def test_probability_labels_with_zeros_at_impossible_classes(name):
  """q_j = 0 where z_j = -inf: the 0 * (-inf) terms are 0, value and gradient finite."""
  fn, oracle = {
      "expected_cost": (cj.expected_cost, np_expected_cost),
      "cost_regularized_ce": (
          functools.partial(cj.cost_regularized_cross_entropy, lam=0.7),
          lambda z, q, c: np_cross_entropy(z, q) + 0.7 * np_expected_cost(z, q, c)),
      "cdw_ce": (functools.partial(cj.class_distance_weighted_cross_entropy, alpha=1.5),
                 lambda z, q, c: np_cdw(z, q, c, 1.5)),
  }[name]
  rng = np.random.default_rng(61)
  logits = rng.normal(size=(4, K)).astype(np.float32)
  q = rng.dirichlet(np.ones(K), size=4)
  logits[:, 1] = -np.inf
  q[:, 1] = 0.0
  q /= q.sum(-1, keepdims=True)
  c = asymmetric(rng)
  value, grad = jax.value_and_grad(
      lambda z: fn(z, q.astype(np.float32), c.astype(np.float32)).sum())(jnp.asarray(logits))
  finite = np.where(np.isinf(logits), -1e30, logits).astype(np.float64)
  np.testing.assert_allclose(fn(logits, q.astype(np.float32), c.astype(np.float32)),
                             oracle(finite, q, c), rtol=1e-5, atol=1e-6)
  assert np.isfinite(float(value)) and np.isfinite(np.asarray(grad)).all()
  assert np.all(np.asarray(grad)[:, 1] == 0)


def test_cross_entropy_terms_with_soft_targets_and_unnormalised_ones():
  """-sum_j q_j log p_j and sum_i q_i (p . C[i]) as written for soft q; q that sums to 2
  breaks the precondition (issue 26): NaN, not a doubled loss."""
  rng = np.random.default_rng(62)
  logits = rng.normal(size=(3, K))
  q = rng.dirichlet(np.ones(K), size=3)
  c = asymmetric(rng)
  got = cj.cost_regularized_cross_entropy(logits.astype(np.float32), q.astype(np.float32),
                                          c.astype(np.float32), lam=0.5)
  want = np_cross_entropy(logits, q) + 0.5 * np_expected_cost(logits, q, c)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  bad = cj.cost_regularized_cross_entropy(logits.astype(np.float32), (2 * q).astype(np.float32),
                                          c.astype(np.float32), lam=0.5)
  assert np.isnan(np.asarray(bad)).all()


def test_documented_default_hyperparameters():
  """temperature=1, alpha=1, lam=1, power=1 when not given."""
  rng = np.random.default_rng(63)
  logits = rng.normal(size=(4, K)) * 2
  labels = np.array([0, 2, 4, 1])
  q = one_hot(labels, K)
  c = asymmetric(rng)
  z32, c32 = logits.astype(np.float32), c.astype(np.float32)
  cases = [
      (cj.cost_regularized_cross_entropy(z32, labels, c32),
       np_cross_entropy(logits, q) + np_expected_cost(logits, q, c)),
      (cj.soft_label_cross_entropy(z32, labels, c32),
       np_cross_entropy(logits, np_soft_targets(q, c, 1.0))),
      (cj.cost_soft_labels(jnp.asarray(labels), c32), np_soft_targets(q, c, 1.0)),
      (cj.class_distance_weighted_cross_entropy(z32, labels, c32), np_cdw(logits, q, c, 1.0)),
      (cj.ordinal_emd(z32, labels), np_ordinal_emd(logits, q, 1)),
  ]
  for got, want in cases:
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)


def test_float64_hyperparameters_do_not_promote_float32_outputs():
  rng = np.random.default_rng(64)
  c32 = asymmetric(rng).astype(np.float32)
  z32 = rng.normal(size=(2, K)).astype(np.float32)
  y = jnp.array([1, 3])
  with jax.enable_x64(True):
    t = np.float64(2.0)
    assert cj.cost_soft_labels(y, c32, temperature=t).dtype == jnp.float32
    assert cj.cost_soft_labels(jnp.full((2, K), 0.2, jnp.float32), c32,
                               temperature=t).dtype == jnp.float32
    assert cj.soft_label_cross_entropy(z32, y, c32, temperature=t).dtype == jnp.float32
    assert cj.class_distance_weighted_cross_entropy(z32, y, c32, alpha=t).dtype == jnp.float32
    assert cj.cost_regularized_cross_entropy(z32, y, c32, lam=t).dtype == jnp.float32
    assert cj.ordinal_emd(z32, y, power=t).dtype == jnp.float32


@pytest.mark.parametrize("k", [129, 257, 1000])  # above the one-triangle limit: blocked sums
@pytest.mark.parametrize("power", [1, 2, 1.5])
def test_ordinal_emd_many_classes_against_cumsum(k, power):
  """Values against NumPy's cumsum and a directional derivative against central
  differences of that oracle, at class counts that take the blocked prefix sums
  (a divisor block, padding for the prime 257)."""
  rng = np.random.default_rng(k)
  logits = rng.normal(size=(3, k)) * 3
  q = rng.dirichlet(np.full(k, 0.3), size=3)
  labels = np.array([0, k // 2, k - 1])
  direction = rng.normal(size=(3, k))
  for target, q64 in ((q.astype(np.float32), q.astype(np.float32).astype(np.float64)),
                      (labels, one_hot(labels, k))):
    f = lambda z, target=target: cj.ordinal_emd(z, target, power=power)
    got, jvp = jax.jvp(f, (jnp.asarray(logits, jnp.float32),),
                       (jnp.asarray(direction, jnp.float32),))
    want = np_ordinal_emd(logits, q64, power)
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-4)
    h = 1e-4
    fd = (np_ordinal_emd(logits + h * direction, q64, power)
          - np_ordinal_emd(logits - h * direction, q64, power)) / (2 * h)
    np.testing.assert_allclose(jvp, fd, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("k", [6, 257])
@pytest.mark.parametrize("batch", [(), (2, 3)], ids=["unbatched", "2d-batch"])
def test_ordinal_emd_any_batch_shape_values_and_derivatives(batch, k):
  rng = np.random.default_rng(7)
  logits = rng.normal(size=batch + (k,)) * 3
  q = rng.dirichlet(np.full(k, 0.3), size=batch if batch else None)
  q64 = q.astype(np.float32).astype(np.float64)
  direction = rng.normal(size=logits.shape)
  for power in (1, 2, 1.5):
    f = lambda z, power=power: cj.ordinal_emd(z, q.astype(np.float32), power=power)
    got, jvp = jax.jvp(f, (jnp.asarray(logits, jnp.float32),),
                       (jnp.asarray(direction, jnp.float32),))
    assert got.shape == batch
    np.testing.assert_allclose(got, np_ordinal_emd(logits, q64, power), rtol=2e-4, atol=1e-4)
    h = 1e-4
    fd = (np_ordinal_emd(logits + h * direction, q64, power)
          - np_ordinal_emd(logits - h * direction, q64, power)) / (2 * h)
    np.testing.assert_allclose(jvp, fd, rtol=2e-3, atol=2e-3)
    grad = jax.grad(lambda z, f=f: f(z).sum())(jnp.asarray(logits, jnp.float32))
    np.testing.assert_allclose(np.sum(np.asarray(grad, np.float64) * direction), fd.sum(),
                               rtol=2e-3, atol=2e-3)


def test_ordinal_emd_power_traced_under_jit():
  rng = np.random.default_rng(8)
  logits = rng.normal(size=(3, K))
  q = rng.dirichlet(np.ones(K), size=3)
  f = jax.jit(lambda z, r: cj.ordinal_emd(z, q.astype(np.float32), power=r))
  for power in (1.0, 1.5, 2.0):
    np.testing.assert_allclose(f(logits.astype(np.float32), power),
                               np_ordinal_emd(logits, q.astype(np.float32), power),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("k", [6, 257])
def test_ordinal_emd_derivative_in_probability_labels(k):
  """Soft targets can be learned too: d/dq against central differences of the oracle."""
  rng = np.random.default_rng(9)
  logits = rng.normal(size=(2, 3, k)) * 2
  q = rng.dirichlet(np.full(k, 0.5), size=(2, 3))
  direction = rng.normal(size=q.shape)
  z32 = jnp.asarray(logits, jnp.float32)
  for power in (1, 2, 1.5):
    f = lambda t, power=power: cj.ordinal_emd(z32, t, power=power)
    _, jvp = jax.jvp(f, (jnp.asarray(q, jnp.float32),), (jnp.asarray(direction, jnp.float32),))
    h = 1e-7  # the float64 oracle allows a step well inside the kinks of |.| (power 1)
    q64 = q.astype(np.float32).astype(np.float64)
    fd = (np_ordinal_emd(logits.astype(np.float32), q64 + h * direction, power)
          - np_ordinal_emd(logits.astype(np.float32), q64 - h * direction, power)) / (2 * h)
    np.testing.assert_allclose(jvp, fd, rtol=2e-3, atol=2e-3)
    grad = jax.grad(lambda t, f=f: f(t).sum())(jnp.asarray(q, jnp.float32))
    np.testing.assert_allclose(np.sum(np.asarray(grad, np.float64) * direction), fd.sum(),
                               rtol=2e-3, atol=2e-3)
