"""expected_cost / cost_regularized_cross_entropy with soft targets, against the float64
oracles (the shared properties of the losses are in test_losses.py)."""

from __future__ import annotations

import numpy as np

import costjax as cj
from tests.reference import asymmetric, np_cross_entropy, np_expected_cost

K = 5


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
