"""Independent NumPy (float64) reference formulas for the closed-form losses.

Written directly from the formulas in ../shared/API.md, without sharing any
code with costjax, so that tests compare against an oracle rather than the
implementation itself.
"""

from __future__ import annotations

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
