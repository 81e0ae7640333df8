"""Every public function x every precondition: checked mode names it, unchecked gives NaN.

For each row of :data:`CASES` (a public function and one of its preconditions, the table in
docs/testing.md), hypothesis draws a valid input, breaks the precondition at a random place
(index and bad value), and asserts both behaviours:

* **checked** (``costjax.checks_enabled`` + ``checkify``): an error whose message names the
  function, the argument and the first offending index (or the bad scalar);
* **unchecked**: NaN in the floating output (NaN or inf for a ``+inf`` logit; in the
  affected rows at least, and nowhere plausible), or, for :func:`costjax.bayes_decision`,
  the documented sentinel ``-2**31`` (not a class, not ``-1`` = abstain); for
  :func:`costjax.cost_sets`, an empty set.

The oracle is the precondition itself, written here with NumPy. Shapes are small and fixed
and every case is compiled once (the bad values are jit arguments); compiling 2 programs for
each of the ~50 rows is most of its time.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.experimental import checkify

import costjax as cj

B, K = 3, 4
SENTINEL = -(2**31)
RNG = np.random.default_rng(0)
Z = RNG.normal(size=(B, K)).astype(np.float32)
Y = np.array([0, 3, 1], np.int32)
Q = (np.exp(Z) / np.exp(Z).sum(-1, keepdims=True)).astype(np.float32)
C = (np.abs(np.arange(K)[:, None] - np.arange(K)[None, :]) ** 1.5).astype(np.float32)
C[0, 3] = 7.0  # asymmetric


@dataclasses.dataclass(frozen=True)
class Case:
  fn: str  # public name
  precondition: str  # row label of the table
  arg: str  # the argument named in the checked-mode message
  call: Callable  # (logits, labels, cost, hyper) -> output
  kind: str  # "logits", "probs", "cost", or "scalar:<bad values>"
  labels: str = "int"  # "int" or "probs"
  out: str = "nan"  # "nan", "sentinel", "empty"
  rows: bool = True  # the NaN / sentinel lands in the offending row (else anywhere)


def _loss(name, **kw):
  f = getattr(cj, name)
  return lambda z, y, c, h: f(z, y, c, **kw)


LOSSES = ("expected_cost", "cost_regularized_cross_entropy",
          "class_distance_weighted_cross_entropy", "soft_label_cross_entropy")

CASES: list[Case] = []
for name in LOSSES:
  CASES += [
      Case(name, "logits finite (no NaN, no +inf)", "logits", _loss(name), "logits"),
      Case(name, "probability labels >= 0", "probability labels", _loss(name), "probs-neg",
           labels="probs"),
      Case(name, "probability labels sum to 1", "probability label rows", _loss(name),
           "probs-sum", labels="probs"),
      Case(name, "costs finite and >= 0", "cost_matrix", _loss(name), "cost", rows=False),
  ]
CASES += [
    Case("cost_regularized_cross_entropy", "lam finite and >= 0", "lam",
         lambda z, y, c, h: cj.cost_regularized_cross_entropy(z, y, c, lam=h), "scalar",
         rows=False),
    Case("class_distance_weighted_cross_entropy", "alpha finite and >= 0", "alpha",
         lambda z, y, c, h: cj.class_distance_weighted_cross_entropy(z, y, c, alpha=h),
         "scalar", rows=False),
    Case("soft_label_cross_entropy", "temperature > 0", "temperature",
         lambda z, y, c, h: cj.soft_label_cross_entropy(z, y, c, temperature=h), "scalar-pos",
         rows=False),
    Case("cost_soft_labels", "temperature > 0", "temperature",
         lambda z, y, c, h: cj.cost_soft_labels(y, c, temperature=h), "scalar-pos",
         rows=False),
    Case("cost_soft_labels", "costs finite and >= 0", "cost_matrix",
         lambda z, y, c, h: cj.cost_soft_labels(y, c), "cost", rows=False),
    Case("weighted_cross_entropy", "logits finite (no NaN, no +inf)", "logits",
         lambda z, y, c, h: cj.weighted_cross_entropy(z, y, class_weights=c[0] + 1), "logits"),
    Case("weighted_cross_entropy", "probability labels sum to 1", "probability label rows",
         lambda z, y, c, h: cj.weighted_cross_entropy(z, y, class_weights=c[0] + 1),
         "probs-sum", labels="probs"),
    Case("weighted_cross_entropy", "class_weights finite and >= 0", "class_weights",
         lambda z, y, c, h: cj.weighted_cross_entropy(z, y, class_weights=h * c[0] + 1),
         "scalar-weights", rows=False),
    Case("ordinal_emd", "logits finite (no NaN, no +inf)", "logits",
         lambda z, y, c, h: cj.ordinal_emd(z, y), "logits"),
    Case("ordinal_emd", "probability labels sum to 1", "probability label rows",
         lambda z, y, c, h: cj.ordinal_emd(z, y), "probs-sum", labels="probs"),
    Case("ordinal_emd", "power finite and > 0", "power",
         lambda z, y, c, h: cj.ordinal_emd(z, y, power=h), "scalar-pos", rows=False),
    Case("sinkhorn_loss", "logits finite (no NaN, no +inf)", "logits",
         lambda z, y, c, h: cj.sinkhorn_loss(z, y, c, epsilon=0.5), "logits"),
    Case("sinkhorn_loss", "probability labels sum to 1", "probability label rows",
         lambda z, y, c, h: cj.sinkhorn_loss(z, y, c, epsilon=0.5), "probs-sum",
         labels="probs"),
    Case("sinkhorn_loss", "costs finite and >= 0", "cost_matrix",
         lambda z, y, c, h: cj.sinkhorn_loss(z, y, c, epsilon=0.5), "cost", rows=False),
    Case("sinkhorn_loss", "epsilon > 0", "epsilon",
         lambda z, y, c, h: cj.sinkhorn_loss(z, y, c, epsilon=h), "scalar-pos", rows=False),
    Case("sinkhorn_solve", "epsilon > 0", "epsilon",
         lambda z, y, c, h: cj.sinkhorn_solve(z, y, c, epsilon=h).value, "scalar-pos",
         rows=False),
    Case("sinkhorn_solve", "costs finite and >= 0", "cost_matrix",
         lambda z, y, c, h: cj.sinkhorn_solve(z, y, c, epsilon=0.5).value, "cost", rows=False),
    Case("tree_wasserstein", "logits finite (no NaN, no +inf)", "logits",
         lambda z, y, c, h: cj.tree_wasserstein(z, y, [-1, 0, 0, 1]), "logits"),
    Case("tree_wasserstein", "probability labels sum to 1", "probability label rows",
         lambda z, y, c, h: cj.tree_wasserstein(z, y, [-1, 0, 0, 1]), "probs-sum",
         labels="probs"),
    Case("decision_costs", "logits finite (no NaN, no +inf)", "logits",
         lambda z, y, c, h: cj.decision_costs(z, c), "logits"),
    Case("decision_costs", "costs finite and >= 0", "cost_matrix",
         lambda z, y, c, h: cj.decision_costs(z, c), "cost", rows=False),
    Case("bayes_decision", "logits finite (no NaN, no +inf)", "logits",
         lambda z, y, c, h: cj.bayes_decision(z, c), "logits", out="sentinel"),
    Case("bayes_decision", "costs finite and >= 0", "cost_matrix",
         lambda z, y, c, h: cj.bayes_decision(z, c), "cost", out="sentinel", rows=False),
    Case("bayes_decision", "abstain_cost finite and >= 0", "abstain_cost",
         lambda z, y, c, h: cj.bayes_decision(z, c, abstain_cost=h), "scalar", out="sentinel",
         rows=False),
    Case("mean_cost", "costs finite and >= 0", "cost_matrix",
         lambda z, y, c, h: cj.mean_cost(jnp.argmax(z, -1), y, c), "cost", rows=False),
    Case("mean_cost", "abstain_cost finite and >= 0", "abstain_cost",
         lambda z, y, c, h: cj.mean_cost(jnp.array([0, -1, 1]), y, c, abstain_cost=h),
         "scalar", rows=False),
    Case("cost_sets", "logits finite (no NaN, no +inf)", "logits",
         lambda z, y, c, h: cj.cost_sets(z, c, threshold=0.5), "logits", out="empty"),
    Case("set_cost", "costs finite and >= 0", "cost_matrix",
         lambda z, y, c, h: cj.set_cost(z > 0, y, c), "cost", rows=False),
    Case("calibrate_cost_sets", "logits finite (no NaN, no +inf)", "logits",
         lambda z, y, c, h: cj.calibrate_cost_sets(z, y, c, alpha=0.5), "logits", rows=False),
    Case("calibrate_cost_sets", "costs finite and >= 0", "cost_matrix",
         lambda z, y, c, h: cj.calibrate_cost_sets(z, y, c, alpha=0.5), "cost", rows=False),
    Case("calibrate_cost_sets", "alpha > 0", "alpha",
         lambda z, y, c, h: cj.calibrate_cost_sets(z, y, c, alpha=h), "scalar-pos", rows=False),
    Case("fit_temperature", "logits finite (no NaN, no +inf)", "logits",
         lambda z, y, c, h: cj.fit_temperature(z, y), "logits", rows=False),
    Case("fit_temperature", "probability labels sum to 1", "probability label rows",
         lambda z, y, c, h: cj.fit_temperature(z, y), "probs-sum", labels="probs", rows=False),
    Case("fit_vector_scaling", "logits finite (no NaN, no +inf)", "logits",
         lambda z, y, c, h: cj.fit_vector_scaling(z, y).scale, "logits", rows=False),
    Case("ordinal_cost_matrix", "power finite and >= 0", "power",
         lambda z, y, c, h: cj.ordinal_cost_matrix(K, power=h)[~np.eye(K, dtype=bool)],
         "scalar", rows=False),  # the diagonal stays 0
]


def _ids(case: Case) -> str:
  return f"{case.fn}-{case.precondition.split(' ')[0]}-{case.arg.replace(' ', '_')}"


@functools.cache
def _programs(i: int):
  case = CASES[i]

  def f(z, y, c, h):
    return case.call(z, y, c, h)

  with cj.checks_enabled():
    checked = jax.jit(checkify.checkify(f))
  return jax.jit(f), checked


def _checked_error(i, *args) -> str | None:
  _, checked = _programs(i)
  with cj.checks_enabled():  # traced on the first call, inside the context
    err, _ = checked(*args)
  return err.get()


def _broken(case: Case, data):
  """The inputs with the precondition broken at a drawn place; (args, row, index text)."""
  z, y, c, h = Z.copy(), (Q.copy() if case.labels == "probs" else Y.copy()), C.copy(), 1.0
  i = data.draw(st.integers(0, B - 1), label="row")
  j = data.draw(st.integers(0, K - 1), label="class")
  kind = case.kind
  if kind == "logits":
    z[i, j] = data.draw(st.sampled_from([np.nan, np.inf]), label="bad logit")
    where = rf"\({i}, {j}\)"
  elif kind == "probs-neg":
    bad = data.draw(st.floats(0.01, 2.0), label="negative mass")
    y[i, j] -= y[i, j] + bad
    y[i, (j + 1) % K] += Q[i, j] + bad  # the row still sums to 1
    where = rf"\({i}, {j}\)"
  elif kind == "probs-sum":
    y[i] *= data.draw(st.sampled_from([0.5, 0.99, 1.01, 3.0]), label="row scale")
    where = rf"\({i},\)"
  elif kind == "cost":
    jj = (i + 1 + j % (K - 1)) % K  # off the diagonal
    c[i, jj] = data.draw(st.sampled_from([-1.0, -1e-3, np.nan, np.inf]), label="bad cost")
    where = rf"\({i}, {jj}\)"
  elif kind.startswith("scalar"):
    low = [0.0, -1e-3, -2.0, np.nan] if kind != "scalar" else [-1e-3, -2.0, np.nan, np.inf]
    if kind == "scalar-weights":
      low = [-1.0, -5.0, np.nan]
    h = data.draw(st.sampled_from(low), label="bad value")
    where = "got"
  else:
    raise AssertionError(kind)
  args = (jnp.asarray(z), jnp.asarray(y), jnp.asarray(c), jnp.float32(h))
  return args, i, where


@pytest.mark.slow  # ~100 small programs to compile: about 1-2 min on 2 idle cores
@pytest.mark.parametrize("i", range(len(CASES)), ids=[_ids(c) for c in CASES])
@settings(max_examples=6, deadline=None, derandomize=True)
@given(data=st.data())
def test_precondition(i, data):
  case = CASES[i]
  args, row, where = _broken(case, data)
  # Checked: an error naming the function, the argument and where.
  msg = _checked_error(i, *args)
  assert msg is not None, f"{case.fn}: no checked-mode error for {case.precondition}"
  first = msg.split("\n")[0]
  assert f"costjax.{case.fn}" in first and case.arg in first, first
  assert re.search(where, first), (where, first)
  # Unchecked: no plausible answer.
  unchecked, _ = _programs(i)
  out = np.asarray(unchecked(*args))
  if case.out == "sentinel":
    bad = out == SENTINEL
  elif case.out == "empty":
    bad = ~out.any(-1)
  elif case.kind == "logits":
    bad = ~np.isfinite(out)  # NaN, or inf for a +inf logit: never a plausible finite value
  else:
    bad = np.isnan(out)
  if case.rows and out.ndim >= 1:
    assert np.all(bad.reshape(B, -1)[row]), (case.fn, out)
  else:
    assert np.all(bad) if case.out == "sentinel" or case.kind.startswith("scalar") else \
        np.any(bad), (case.fn, out)


@pytest.mark.slow
@pytest.mark.parametrize("i", range(len(CASES)), ids=[_ids(c) for c in CASES])
def test_valid_input_passes(i):
  case = CASES[i]
  y = Q if case.labels == "probs" else Y
  h = 1.0 if case.kind != "scalar-weights" else 0.5
  args = (jnp.asarray(Z), jnp.asarray(y), jnp.asarray(C), jnp.float32(h))
  assert _checked_error(i, *args) is None
  out = np.asarray(_programs(i)[0](*args))
  if case.out == "sentinel":
    assert np.all((out >= -1) & (out < K))
  elif case.out == "empty":
    assert out.any(-1).all()
  else:
    assert not np.isnan(out).any()  # (calibrate_cost_sets may return +inf: sets of all)


def test_python_scalar_hyperparameters_and_nan_rows():
  """The issue's cases, called as a user would (Python numbers, no jit)."""
  z, c = jnp.asarray(Z), jnp.asarray(C)
  assert np.isnan(cj.soft_label_cross_entropy(z, Y, c, temperature=0.0)).all()
  with pytest.raises(checkify.JaxRuntimeError, match=r"costjax.soft_label_cross_entropy: "
                     r"temperature must be > 0; got 0"):
    cj.checked(cj.soft_label_cross_entropy)(z, Y, c, temperature=0.0)
  nan_rows = z.at[1, 2].set(jnp.nan).at[2].set(jnp.nan)
  np.testing.assert_array_equal(cj.bayes_decision(nan_rows, c)[1:], [SENTINEL, SENTINEL])
  assert np.isnan(cj.mean_cost(cj.bayes_decision(nan_rows, c), jnp.asarray(Y), c))
  assert np.isnan(cj.expected_cost(z, jnp.asarray(Q) * 1.1, c)).all()
  assert np.isnan(cj.expected_cost(z, jnp.asarray(Y), c.at[0, 1].set(-1.0))).all()
