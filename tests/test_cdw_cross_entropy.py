"""class_distance_weighted_cross_entropy against the float64 oracle at integer and float
exponents (the alpha == 1 shortcut must catch exactly 1). The CPU kernel is tested in
test_cdw_dot_sums.py; the shared properties of the losses in test_losses.py."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import costjax as cj
from tests.reference import asymmetric, np_cdw, one_hot

K = 5


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
