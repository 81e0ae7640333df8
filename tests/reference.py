"""Independent NumPy (float64) reference formulas for the closed-form losses.

Written directly from the formulas in ../shared/API.md, without sharing any
code with costjax, so that tests compare against an oracle rather than the
implementation itself. The second half holds the oracles that take the target as a
probability vector ``q`` (and the exact LP, POT's entropic OT, a fixed tree), shared by the
contract tests of several modules.
"""

from __future__ import annotations

import warnings

import numpy as np


def softmax(z):
  z = np.asarray(z, np.float64)
  m = np.max(z, axis=-1, keepdims=True)
  m = np.where(np.isfinite(m), m, 0.0)
  e = np.exp(z - m)
  return e / e.sum(axis=-1, keepdims=True)


def log_softmax(z):
  z = np.asarray(z, np.float64)
  m = np.max(z, axis=-1, keepdims=True)
  return z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))


def as_distribution(labels, num_classes):
  labels = np.asarray(labels)
  if np.issubdtype(labels.dtype, np.integer):
    return np.eye(num_classes)[labels]
  return labels.astype(np.float64)


def expected_cost(logits, labels, c):
  c = np.asarray(c, np.float64)
  q = as_distribution(labels, c.shape[0])
  p = softmax(logits)
  # sum_i q_i sum_j p_j C[i, j]
  return np.einsum("...i,ij,...j->...", q, c, p)


def cost_soft_labels(labels, c, temperature=1.0):
  c = np.asarray(c, np.float64)
  rows = np.exp(-c / temperature)
  rows /= rows.sum(axis=1, keepdims=True)
  q = as_distribution(labels, c.shape[0])
  return q @ rows


def soft_label_cross_entropy(logits, labels, c, temperature=1.0):
  t = cost_soft_labels(labels, c, temperature)
  return -(t * log_softmax(logits)).sum(-1)


def log1m_softmax(z):
  """log(1 - p_j) = logsumexp_{k != j} z_k - logsumexp_k z_k, exact when p_j rounds to 1."""
  z = np.asarray(z, np.float64)
  out = np.empty_like(z)
  lse = logsumexp(z)
  for j in range(z.shape[-1]):
    out[..., j] = logsumexp(np.delete(z, j, axis=-1)) - lse
  return out


def logsumexp(z):
  z = np.asarray(z, np.float64)
  m = np.max(z, axis=-1, keepdims=True)
  m = np.where(np.isfinite(m), m, 0.0)
  return m[..., 0] + np.log(np.exp(z - m).sum(-1))


def cdw_ce(logits, labels, c, alpha=1.0):
  c = np.asarray(c, np.float64)
  q = as_distribution(labels, c.shape[0])
  w = q @ (c**alpha)
  log1m = log1m_softmax(logits)
  return -(np.where(w != 0, w * np.where(w != 0, log1m, 0.0), 0.0)).sum(-1)


def ordinal_emd(logits, labels, power=1.0):
  p = softmax(logits)
  k = p.shape[-1]
  q = as_distribution(labels, k)
  d = np.abs(np.cumsum(p, -1) - np.cumsum(q, -1))
  return (d**power).sum(-1)


def cross_entropy(logits, labels, num_classes):
  q = as_distribution(labels, num_classes)
  return -(q * log_softmax(logits)).sum(-1)


def cost_regularized_cross_entropy(logits, labels, c, lam=1.0):
  c = np.asarray(c)
  return cross_entropy(logits, labels, c.shape[0]) + lam * expected_cost(logits, labels, c)


def bayes_decision(logits, c):
  p = softmax(logits)
  k = p.shape[-1]
  # brute force: evaluate every candidate decision's risk in a Python loop
  risks = np.stack([(p * np.asarray(c)[:, j]).sum(-1) for j in range(k)], -1)
  return np.argmin(risks, -1)


# --------------------------------------------------------------------------- #
# Oracles on probability targets ``q`` (rows of the target distribution), exact LP and
# entropic OT, and a fixed tree: the contract tests of several modules share them.
# --------------------------------------------------------------------------- #


def one_hot(labels, k):
  return np.eye(k)[np.asarray(labels)]


def np_expected_cost(z, q, c):
  return np.einsum("...i,ij,...j->...", q, np.asarray(c, np.float64), softmax(z))


def np_soft_targets(q, c, t):
  """sum_i q_i softmax(-C[i] / T): hand-written, row by row."""
  c = np.asarray(c, np.float64)
  rows = np.stack([np.exp(-c[i] / t) / np.exp(-c[i] / t).sum() for i in range(c.shape[0])])
  return np.asarray(q, np.float64) @ rows


def np_cross_entropy(z, q):
  z = np.asarray(z, np.float64)
  log_p = z - logsumexp(z)[..., None]
  safe = np.where(q > 0, log_p, 0.0)
  return -(q * safe).sum(-1)


def np_cdw(z, q, c, alpha):
  w = np.asarray(q, np.float64) @ np.asarray(c, np.float64) ** alpha
  return -(w * log1m_softmax(z)).sum(-1)


def np_ordinal_emd(z, q, power):
  d = np.abs(np.cumsum(softmax(z), -1) - np.cumsum(q, -1))[..., :-1]
  return (d**power).sum(-1)


def lp_ot(a, b, cost):
  """Exact OT by scipy's LP: plan T[i, j], rows sum to b (true), columns to a (pred)."""
  k = cost.shape[0]
  from scipy.optimize import linprog

  a_eq = np.zeros((2 * k, k * k))
  for i in range(k):
    a_eq[i, i * k:(i + 1) * k] = 1
    a_eq[k + i, i::k] = 1
  res = linprog(np.asarray(cost, np.float64).ravel(), A_eq=a_eq, b_eq=np.concatenate([b, a]),
                bounds=(0, None), method="highs")
  assert res.status == 0
  return res.fun


def pot_sinkhorn(a, b, cost, eps):
  """POT's Sinkhorn, converted to the ``<P, C> + eps KL(P || a b^T)`` objective.

  Returns ``(value, plan)``. POT's matrix is indexed [source = prediction a, sink =
  target b], i.e. C.T, so ``plan`` is too; the objectives differ by the constant
  ``eps (H(a) + H(b))``. Both marginals are taken in float64 and scaled to sum to 1:
  POT needs equal masses, and float32 inputs are off by ~1e-8, a marginal error POT's
  1e-10 threshold never reaches (it then ran its 20,000-iteration cap). The plain kernel
  iteration (about 30 times cheaper) is used while ``exp(-C / eps)`` stays normal, the
  log-domain one otherwise. Raises if POT stops at its iteration cap: an unconverged
  oracle.
  """
  import ot

  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  a, b = a / a.sum(), b / b.sum()
  cost = np.asarray(cost, np.float64)
  kernel = cost.max() / eps < 50
  method, cap = ("sinkhorn", 200_000) if kernel else ("sinkhorn_log", 20_000)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    plan, log = ot.sinkhorn(a, b, cost.T, eps, method=method, stopThr=1e-10, numItermax=cap,
                            log=True)
  assert log["niter"] < cap - 1, f"POT ({method}) did not converge in {cap} iterations"
  value = np.sum(plan * cost.T) - eps * entropy(plan) + eps * (entropy(a) + entropy(b))
  return value, plan


def pot_entropic(a, b, cost, eps):
  """The value of :func:`pot_sinkhorn`."""
  return pot_sinkhorn(a, b, cost, eps)[0]


def entropy(x):
  """Shannon entropy ``-sum x log x`` over the positive entries (0 log 0 = 0)."""
  x = x[x > 0]
  return -np.sum(x * np.log(x))


def over_relaxed_sinkhorn(p, q, cost, eps, tol, max_iterations, relax=True):
  """Sinkhorn with the adaptive over-relaxation that ``sinkhorn_solve`` documents, one
  problem, scalar NumPy float64 (no epsilon scaling: the caller picks
  ``eps >= (max C - min C) / 50``). Returns ``(iterations, f, g)``.

  From the documentation: ``f`` lives on the predicted classes (source ``p``), ``g`` on
  the true classes (sink ``q``), the plan is ``q_i p_j exp((f_j + g_i - C_ij) / eps)``,
  both start at zero; an iteration updates ``g`` then ``f``, and tests the L1 error of the
  plan's row sums after a plain update of ``g``. After 10 iterations a problem estimates
  its contraction ``eta`` from its errors at iterations 6 and 10 (``(e10 / e6) ** (1/4)``)
  and over-relaxes both half-steps with ``omega = 2 / (1 + sqrt(1 - eta))``, at most 1.8
  (Lehmann et al. 2022). Every 64 iterations from then on, a problem whose lowest error
  has not improved on the lowest at the last check goes back to plain steps for good.
  ``relax=False``: plain Sinkhorn.
  """
  lp, lq = np.log(p), np.log(q)

  def update_g(f):  # over the predicted classes j (the columns)
    return -eps * logsumexp(lp[None, :] + (f[None, :] - cost) / eps)

  def update_f(g):  # over the true classes i (the rows)
    return -eps * logsumexp((lq[:, None] + (g[:, None] - cost) / eps).T)

  start, window, cap, stall = 10, 4, 1.8, 64
  f, g = np.zeros_like(p), np.zeros_like(q)
  g_next = update_g(f)
  omega, mark, best = 1.0, np.inf, np.inf
  for it in range(1, max_iterations + 1):
    g = g + omega * (g_next - g)
    f_plain = update_f(g)
    g_check = update_g(f_plain)
    err = np.sum(q * np.abs(np.exp((g - g_check) / eps) - 1.0))
    if err <= tol:
      return it, f_plain, g
    f = f + omega * (f_plain - f)
    g_next = update_g(f)
    if it == start - window:
      mark = err
    if it >= start:
      if it == start and relax:
        eta = min(err / mark, 1.0) ** (1.0 / window)
        omega = min(2.0 / (1.0 + np.sqrt(1.0 - eta)), cap) if eta < 1 else 1.0
      best = min(best, err)
      if (it - start) % stall == 0:
        if it > start and not best < mark:
          omega = 1.0
        mark = best
  return max_iterations, f, g


def asymmetric(rng, k=5, diag=(0.0, 0.0)):
  c = rng.uniform(0.5, 6.0, size=(k, k))
  np.fill_diagonal(c, rng.uniform(*diag, size=k))
  assert not np.allclose(c, c.T)
  return c


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


def hyper_problem(probs=False, k=5):
  """Logits, labels (indices or probabilities) and a cost positive everywhere (so that
  C**alpha is smooth in alpha): the problem of the hyperparameter-gradient tests."""
  rng = np.random.default_rng(50)
  logits = rng.normal(size=(3, k)) * 1.5
  labels = rng.dirichlet(np.ones(k), size=3) if probs else np.array([0, 3, 1])
  cost = asymmetric(rng, k) + 0.3
  return logits, labels, cost
