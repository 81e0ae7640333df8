"""Every closed-form loss against NumPy oracles, under jit / grad / vmap, and at extremes."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import costjax as cj
from tests import reference as ref
from tests.reference import (
  TREE_COST,
  TREE_PARENTS,
  asymmetric,
  hyper_problem,
  np_cdw,
  np_cross_entropy,
  np_expected_cost,
  np_ordinal_emd,
  np_soft_targets,
  one_hot,
)

K = 5


@dataclass(frozen=True)
class Loss:
  name: str
  fn: Callable  # fn(logits, labels, cost_matrix)
  ref: Callable  # ref(logits, labels, cost_matrix) in float64 NumPy
  uses_cost: bool = True
  finite_at_neg_inf: bool = True  # is the mathematical value finite with -inf logits?

  def __repr__(self):
    return self.name


LOSSES = [
    Loss("expected_cost", cj.expected_cost, ref.expected_cost),
    Loss(
        "cost_regularized_cross_entropy",
        functools.partial(cj.cost_regularized_cross_entropy, lam=0.7),
        functools.partial(ref.cost_regularized_cross_entropy, lam=0.7),
    ),
    Loss(
        "soft_label_cross_entropy",
        functools.partial(cj.soft_label_cross_entropy, temperature=0.8),
        functools.partial(ref.soft_label_cross_entropy, temperature=0.8),
        finite_at_neg_inf=False,  # every soft target is > 0, so -log p = inf
    ),
    Loss(
        "cdw_ce",
        functools.partial(cj.class_distance_weighted_cross_entropy, alpha=1.5),
        functools.partial(ref.cdw_ce, alpha=1.5),
    ),
    Loss(
        "ordinal_emd_p1",
        lambda z, y, c: cj.ordinal_emd(z, y, power=1),
        lambda z, y, c: ref.ordinal_emd(z, y, power=1),
        uses_cost=False,
    ),
    Loss(
        "ordinal_emd_p2",
        lambda z, y, c: cj.ordinal_emd(z, y, power=2),
        lambda z, y, c: ref.ordinal_emd(z, y, power=2),
        uses_cost=False,
    ),
]

COST_LOSSES = [loss for loss in LOSSES if loss.uses_cost]
loss_param = pytest.mark.parametrize("loss", LOSSES, ids=repr)


def asymmetric_cost(rng, k=K, zero_diag=True):
  c = rng.uniform(0.5, 10.0, size=(k, k))
  if zero_diag:
    np.fill_diagonal(c, 0.0)
  assert not np.allclose(c, c.T)
  return c.astype(np.float32)


def data(seed=0, batch=(3, 4), k=K, probs=False):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=batch + (k,)).astype(np.float32) * 2
  if probs:
    labels = rng.dirichlet(np.ones(k), size=batch).astype(np.float32)
  else:
    labels = rng.integers(0, k, size=batch).astype(np.int32)
  return logits, labels, asymmetric_cost(rng, k)


# --------------------------------------------------------------------------- #
# Values against oracles.
# --------------------------------------------------------------------------- #


@loss_param
@pytest.mark.parametrize("probs", [False, True], ids=["indices", "probabilities"])
def test_matches_numpy_reference(loss, probs):
  logits, labels, c = data(probs=probs)
  got = jax.jit(loss.fn)(logits, labels, c)
  assert got.shape == logits.shape[:-1]
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, loss.ref(logits, labels, c), rtol=2e-5, atol=2e-5)


@loss_param
def test_unbatched_inputs(loss):
  logits, labels, c = data(batch=(4,))
  batched = loss.fn(logits, labels, c)
  for i in range(4):
    single = loss.fn(logits[i], labels[i], c)
    assert single.shape == ()
    np.testing.assert_allclose(single, batched[i], rtol=1e-6)


def test_forum_scenario():
  """The forum's 4x4 matrix, logits and labels, against hand-written NumPy."""
  c = np.array([[0, 1, 4, 5], [1, 0, 3, 8], [4, 3, 0, 2], [5, 8, 2, 0]], np.float32)
  logits = np.array([[3, 5, 2.5, 6], [7, 5.5, 2, 0]], np.float32)
  labels = np.array([3, 0])
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  want = np.array([p[0] @ c[3], p[1] @ c[0]])  # rows of the TRUE classes
  got = cj.expected_cost(logits, labels, c)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  # The forum's backwards soft target gives the true class the smallest mass;
  # cost_soft_labels gives it the largest.
  backwards = np.exp(c[labels]) / np.exp(c[labels]).sum(1, keepdims=True)
  assert (backwards.argmin(1) == labels).all()
  targets = cj.cost_soft_labels(jnp.asarray(labels), c)
  assert (np.argmax(targets, 1) == labels).all()
  # The loss is differentiable, unlike argmax; the gradient moves mass off
  # the expensive classes: for example 0 (true class 3), class 1 costs 8.
  g = jax.grad(lambda z: cj.expected_cost(z, labels, c).sum())(jnp.asarray(logits))
  assert g[0, 1] > 0 and g[0, 3] < 0
  np.testing.assert_array_equal(cj.bayes_decision(logits, c), ref.bayes_decision(logits, c))


def test_orientation_rows_are_true_classes():
  """C[true, pred]: predicting 1 when the truth is 0 costs C[0, 1] = 10, not C[1, 0]."""
  c = np.array([[0.0, 10.0], [1.0, 0.0]], np.float32)
  logits = np.array([0.0, 30.0], np.float32)  # confidently predicts class 1
  np.testing.assert_allclose(cj.expected_cost(logits, np.array(0), c), 10.0, rtol=1e-6)
  np.testing.assert_allclose(cj.expected_cost(logits, np.array(1), c), 0.0, atol=1e-6)
  np.testing.assert_allclose(cj.mean_cost(np.array([1]), np.array([0]), c), 10.0)


# --------------------------------------------------------------------------- #
# Gradients.
# --------------------------------------------------------------------------- #


@loss_param
@pytest.mark.parametrize("probs", [False, True], ids=["indices", "probabilities"])
def test_check_grads_logits(loss, probs):
  with jax.enable_x64(True):
    logits, labels, c = data(probs=probs, batch=(3,))
    logits = logits.astype(np.float64)
    labels = labels.astype(np.float64) if probs else labels
    c = c.astype(np.float64)
    f = lambda z: loss.fn(z, labels, c)
    # Jitted: eager op-by-op dispatch of the order-2 derivatives took ~40 s here.
    check_grads(jax.jit(f), (logits,), order=2, modes=["rev", "fwd"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("loss", COST_LOSSES, ids=repr)
def test_check_grads_cost_matrix(loss):
  with jax.enable_x64(True):
    logits, labels, c = data(batch=(3,))
    logits = logits.astype(np.float64)
    c = c.astype(np.float64) + 0.5  # keep away from the kink of C**alpha at 0
    f = lambda cm: loss.fn(logits, labels, cm)
    check_grads(jax.jit(f), (c,), order=1, modes=["rev"], atol=1e-5, rtol=1e-5)


def test_expected_cost_gradient_formula():
  """dEC/dz_k = p_k (c_k - EC), the formula in papers.md."""
  logits, labels, c = data(batch=(6,))
  g = jax.grad(lambda z: cj.expected_cost(z, labels, c).sum())(logits)
  p = ref.softmax(logits)
  rows = c[labels].astype(np.float64)
  ec = (p * rows).sum(-1, keepdims=True)
  np.testing.assert_allclose(g, p * (rows - ec), atol=1e-6)


def test_soft_label_ce_gradient_is_p_minus_q():
  logits, labels, c = data(batch=(6,))
  g = jax.grad(lambda z: cj.soft_label_cross_entropy(z, labels, c, temperature=2.0).sum())(
      logits
  )
  np.testing.assert_allclose(
      g, ref.softmax(logits) - ref.cost_soft_labels(labels, c, 2.0), atol=1e-6
  )


@pytest.mark.parametrize("structure", [False, True], ids=["dense", "OrdinalCost"])
def test_soft_label_ce_with_underflowing_targets(structure):
  """Targets exp(-C / T) that underflow float32 (C / T up to 300) are still positive
  mathematically: finite logits give the float64 value, a -inf logit on any class
  gives +inf (never NaN), and the gradient stays p - q, finite."""
  k, temperature = 7, 0.02
  c = cj.OrdinalCost(k) if structure else np.abs(np.subtract.outer(np.arange(k), np.arange(k)))
  dense = np.abs(np.subtract.outer(np.arange(k), np.arange(k))).astype(np.float64)
  rng = np.random.default_rng(4)
  logits = rng.normal(size=(5, k)).astype(np.float32)
  labels = np.array([0, 3, 6, 2, 5])
  loss = lambda z: cj.soft_label_cross_entropy(z, labels, c, temperature=temperature)
  q = ref.cost_soft_labels(labels, dense, temperature)
  assert np.all(q > 0) and np.any(q.astype(np.float32) == 0)  # underflows in float32
  np.testing.assert_allclose(loss(logits), ref.soft_label_cross_entropy(
      logits, labels, dense, temperature), rtol=1e-6)
  impossible = logits.copy()
  impossible[np.arange(5), (labels + 3) % k] = -np.inf  # a class far from the label
  value, grad = jax.value_and_grad(lambda z: loss(z).sum())(jnp.asarray(impossible))
  assert np.all(np.asarray(loss(impossible)) == np.inf)
  assert value == np.inf and np.all(np.isfinite(grad))
  np.testing.assert_allclose(grad, ref.softmax(impossible) - q, atol=1e-6)


# --------------------------------------------------------------------------- #
# Transformations: jit, vmap, stacks of cost matrices.
# --------------------------------------------------------------------------- #


@loss_param
def test_jit_equals_eager(loss):
  logits, labels, c = data()
  np.testing.assert_allclose(
      jax.jit(loss.fn)(logits, labels, c), loss.fn(logits, labels, c), rtol=1e-5
  )


@loss_param
def test_vmap_over_examples(loss):
  logits, labels, c = data(batch=(7,))
  mapped = jax.vmap(loss.fn, in_axes=(0, 0, None))(logits, labels, c)
  np.testing.assert_allclose(mapped, loss.fn(logits, labels, c), rtol=1e-6)


@pytest.mark.parametrize("loss", COST_LOSSES, ids=repr)
def test_vmap_over_stack_of_cost_matrices(loss):
  logits, labels, _ = data(batch=(6,))
  rng = np.random.default_rng(3)
  stack = np.stack([asymmetric_cost(rng) for _ in range(4)])
  got = jax.vmap(loss.fn, in_axes=(None, None, 0))(logits, labels, stack)
  assert got.shape == (4, 6)
  for m in range(4):
    np.testing.assert_allclose(got[m], loss.ref(logits, labels, stack[m]), rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("loss", COST_LOSSES, ids=repr)
def test_vmap_with_per_example_cost_matrices(loss):
  logits, labels, _ = data(batch=(6,))
  rng = np.random.default_rng(4)
  per_example = np.stack([asymmetric_cost(rng) for _ in range(6)])
  got = jax.jit(jax.vmap(loss.fn))(logits, labels, per_example)
  want = [loss.ref(logits[i], labels[i], per_example[i]) for i in range(6)]
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


@loss_param
def test_no_recompilation_on_second_call(loss):
  import chex

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(z, y, c):
    return jax.value_and_grad(lambda zz: loss.fn(zz, y, c).mean())(z)

  chex.clear_trace_counter()
  logits, labels, c = data()
  step(logits, labels, c)
  logits2, labels2, c2 = data(seed=1)
  step(logits2, labels2, c2)  # same shapes and dtypes: must reuse the trace


# --------------------------------------------------------------------------- #
# Numerics: extremes and low precision.
# --------------------------------------------------------------------------- #


@loss_param
@pytest.mark.parametrize("scale", [1e4, -1e4])
def test_extreme_logits_match_float64(loss, scale):
  """Logits of +-1e4 (a tie at the top included): values against the float64 oracle,
  gradients against its central differences."""
  rng = np.random.default_rng(0)
  raw = rng.choice([-1.0, 0.0, 1.0], size=(6, K)) * scale
  raw[0] = [scale, scale, 0.0, -scale, 0.0]
  logits = jnp.asarray(raw, jnp.float32)
  labels = np.arange(6) % K
  c = asymmetric_cost(rng)
  value, grad = jax.value_and_grad(lambda z: loss.fn(z, labels, c).sum())(logits)
  assert np.isfinite(value)
  # float32 resolves 1e4 to ~1e-3 (one ulp) and the losses subtract log-sum-exps of
  # that size: allow ten ulps, far below any clamping or log(0) artefact.
  np.testing.assert_allclose(loss.fn(logits, labels, c), loss.ref(raw, labels, c), rtol=1e-6,
                             atol=1e-2)
  h = 1e-3
  fd = np.zeros_like(raw)
  for idx in np.ndindex(raw.shape):
    up, down = raw.copy(), raw.copy()
    up[idx] += h
    down[idx] -= h
    fd[idx] = (loss.ref(up, labels, c).sum() - loss.ref(down, labels, c).sum()) / (2 * h)
  np.testing.assert_allclose(grad, fd, atol=2e-3)


def test_cdw_extreme_logits_exact():
  """log(1 - p) for p = 1 - exp(-1e4) is -1e4, not -inf."""
  c = np.array([[0.0, 2.0], [3.0, 0.0]], np.float32)
  got = cj.class_distance_weighted_cross_entropy(jnp.array([1e4, 0.0]), jnp.array(1), c)
  np.testing.assert_allclose(got, 3.0 * 1e4, rtol=1e-6)
  got = cj.class_distance_weighted_cross_entropy(jnp.array([30.0, 0.0]), jnp.array(1), c)
  np.testing.assert_allclose(got, 3.0 * 30.0, rtol=1e-5)


@loss_param
def test_neg_inf_logits(loss):
  """-inf marks an impossible class; the true class stays possible."""
  logits, labels, c = data(batch=(6,))
  labels = np.arange(6) % K
  logits = logits.copy()
  impossible = (labels + 2) % K
  logits[np.arange(6), impossible] = -np.inf
  value, grad = jax.value_and_grad(lambda z: loss.fn(z, labels, c).sum())(jnp.asarray(logits))
  assert np.all(np.isfinite(grad))
  if loss.finite_at_neg_inf:
    assert np.isfinite(value)
    finite_logits = np.where(np.isinf(logits), -1e30, logits)  # same math, via the oracle
    np.testing.assert_allclose(
        loss.fn(logits, labels, c), loss.ref(finite_logits, labels, c), rtol=1e-5, atol=1e-5
    )
  else:
    assert value == np.inf


@loss_param
@pytest.mark.parametrize("dtype, bits", [(jnp.bfloat16, 8), (jnp.float16, 11)],
                         ids=["bfloat16", "float16"])
def test_half_precision_is_float32_math_rounded_once(loss, dtype, bits):
  """Half-precision logits are computed in float32: the result is the float64 value
  rounded once to the output dtype (relative error <= 2**-bits), which a computation
  carried out in bfloat16/float16 misses. Logits and costs are multiples of 1/8 and
  1/4, exact in both formats, so the oracle sees the same inputs."""
  rng = np.random.default_rng(70)
  logits = (rng.integers(-24, 25, size=(64, K)) / 8.0).astype(np.float32)
  labels = rng.integers(0, K, 64).astype(np.int32)
  c = (rng.integers(1, 33, size=(K, K)) / 4.0).astype(np.float32)
  np.fill_diagonal(c, 0)
  low = jnp.asarray(logits, dtype)
  assert np.array_equal(np.asarray(low, np.float32), logits)
  got = loss.fn(low, labels, c)
  assert got.dtype == dtype
  np.testing.assert_allclose(np.asarray(got, np.float64), loss.ref(logits, labels, c),
                             rtol=2.0**-bits * 1.02, atol=1e-6)
  grad = jax.grad(lambda z: loss.fn(z, labels, c).astype(jnp.float32).sum())(low)
  assert grad.dtype == dtype
  g32 = jax.grad(lambda z: loss.fn(z, labels, c).sum())(jnp.asarray(logits))
  np.testing.assert_allclose(np.asarray(grad, np.float32), g32, rtol=2.0**-bits * 1.02,
                             atol=1e-6)


@loss_param
def test_float64_inputs_stay_float64(loss):
  with jax.enable_x64(True):
    logits, labels, c = data()
    got = loss.fn(logits.astype(np.float64), labels, c.astype(np.float64))
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(got, loss.ref(logits, labels, c), rtol=1e-6)


# --------------------------------------------------------------------------- #
# Masks.
# --------------------------------------------------------------------------- #


@loss_param
def test_where_example_mask_equals_indexing(loss):
  logits, labels, c = data(batch=(8,))
  mask = np.array([1, 0, 1, 1, 0, 1, 0, 1], bool)
  fn = lambda z, y, cc, **kw: _call_with_where(loss, z, y, cc, **kw)
  got = fn(logits, labels, c, where=mask)
  np.testing.assert_allclose(got[mask], loss.fn(logits[mask], labels[mask], c), rtol=1e-6)
  np.testing.assert_array_equal(got[~mask], 0.0)


@loss_param
def test_where_class_mask_equals_neg_inf_logits(loss):
  logits, labels, c = data(batch=(6,))
  labels = np.arange(6) % K
  mask = np.ones((6, K), bool)
  mask[np.arange(6), (labels + 1) % K] = False
  mask[0] = False  # a fully masked row gives 0 and finite gradients
  got, grad = jax.value_and_grad(
      lambda z: _call_with_where(loss, z, labels, c, where=mask).sum()
  )(jnp.asarray(logits))
  assert np.all(np.isfinite(grad)) and np.all(grad[0] == 0)
  if loss.finite_at_neg_inf:
    want = loss.fn(np.where(mask, logits, -np.inf)[1:], labels[1:], c).sum()
    np.testing.assert_allclose(got, want, rtol=1e-5)


def _call_with_where(loss, logits, labels, c, where):
  fn = loss.fn
  base = fn.func if isinstance(fn, functools.partial) else None
  if base is not None:
    return base(logits, labels, c, where=where, **fn.keywords)
  if loss.name.startswith("ordinal_emd"):
    return cj.ordinal_emd(logits, labels, power=int(loss.name[-1]), where=where)
  return fn(logits, labels, c, where=where)


# --------------------------------------------------------------------------- #
# Bad input.
# --------------------------------------------------------------------------- #


@loss_param
@pytest.mark.parametrize("bad", [-1, K, 1000, -1000])
def test_out_of_range_label_is_nan_not_clamped(loss, bad):
  logits, labels, c = data(batch=(4,))
  labels = labels.copy()
  labels[2] = bad
  for f in (loss.fn, jax.jit(loss.fn)):
    out = np.asarray(f(logits, labels, c))
    assert np.isnan(out[2])
    assert np.all(np.isfinite(np.delete(out, 2)))


@loss_param
def test_checked_mode_names_offending_label(loss):
  logits, labels, c = data(batch=(4,))
  labels = labels.copy()
  labels[3] = 9
  with pytest.raises(Exception, match=r"labels must lie in \[0, 5\); got 9 at index \(3,\)"):
    cj.checked(loss.fn)(logits, labels, c)
  # Valid labels pass through checked mode with the plain result.
  labels[3] = 1
  np.testing.assert_allclose(
      cj.checked(loss.fn)(logits, labels, c), loss.fn(logits, labels, c), rtol=1e-6
  )


def test_checked_mode_under_vmap_and_jit():
  from jax.experimental import checkify

  logits, labels, c = data(batch=(3, 4))
  labels = labels.copy()
  labels[1, 2] = -3
  f = jax.vmap(lambda z, y: cj.expected_cost(z, y, c))
  with cj.checks_enabled():
    err, _ = jax.jit(checkify.checkify(f))(logits, labels)
  assert "got -3" in err.get()


def test_checked_mode_rejects_negative_costs():
  logits, labels, c = data(batch=(4,))
  c = c.copy()
  c[0, 1] = -1
  with pytest.raises(Exception, match="negative entry"):
    cj.checked(cj.expected_cost)(logits, labels, c)


@loss_param
def test_float_index_labels_are_type_error(loss):
  logits, labels, c = data(batch=(4,))
  with pytest.raises(TypeError, match="integer dtype"):
    loss.fn(logits, labels.astype(np.float32), c)


@loss_param
def test_integer_logits_are_type_error(loss):
  logits, labels, c = data(batch=(4,))
  with pytest.raises(TypeError, match="floating"):
    loss.fn(logits.astype(np.int32), labels, c)


@loss_param
def test_label_shape_mismatch_names_both_shapes(loss):
  logits, labels, c = data(batch=(4,))
  with pytest.raises(ValueError, match=r"labels.shape=\(3,\).*logits.shape=\(4, 5\)"):
    loss.fn(logits, labels[:3], c)
  with pytest.raises(ValueError, match=r"labels.shape=\(4, 4\).*logits.shape=\(4, 5\)"):
    loss.fn(logits, np.full((4, 4), 0.25, np.float32), c)
  with pytest.raises(ValueError, match=r"labels.shape=\(2, 2, 2\)"):
    loss.fn(logits, np.zeros((2, 2, 2), np.int32), c)


@pytest.mark.parametrize("loss", COST_LOSSES, ids=repr)
def test_cost_matrix_shape_mismatch_names_both_shapes(loss):
  logits, labels, c = data(batch=(4,))
  with pytest.raises(ValueError, match=r"\(5, 5\).*cost_matrix.shape=\(4, 4\)"):
    loss.fn(logits, labels, c[:4, :4])
  with pytest.raises(ValueError, match=r"cost_matrix.shape=\(2, 5, 5\)"):
    loss.fn(logits, labels, np.stack([c, c]))  # (2,) does not broadcast to the batch (4,)
  with pytest.raises(ValueError, match=r"cost_matrix.shape=\(5, 4\)"):
    loss.fn(logits, labels, c[:, :4])


@pytest.mark.parametrize("alpha", [np.inf, -0.5, np.nan])
def test_cdw_invalid_alpha_gives_nan_and_checked_mode_names_it(alpha):
  """alpha must be finite and >= 0: otherwise NaN, and checked mode names the function."""
  name = "costjax.class_distance_weighted_cross_entropy"
  logits = jnp.array([[1.0, 0.0, -1.0], [0.0, 2.0, 0.5]])
  labels = jnp.array([0, 2])
  c = jnp.array([[0.0, 1.0, 2.0], [1.0, 0.0, 1.0], [2.0, 1.0, 0.0]])
  assert np.all(np.isnan(cj.class_distance_weighted_cross_entropy(logits, labels, c,
                                                                 alpha=alpha)))
  assert np.all(np.isnan(jax.jit(
      lambda a: cj.class_distance_weighted_cross_entropy(logits, labels, c, alpha=a))(alpha)))
  with pytest.raises(Exception, match=f"{name}: alpha must be finite and >= 0; got"):
    cj.checked(cj.class_distance_weighted_cross_entropy)(logits, labels, c, alpha=alpha)
  with pytest.raises(Exception, match=rf"{name}: labels must lie in \[0, 3\); got 3"):
    cj.checked(cj.class_distance_weighted_cross_entropy)(logits, jnp.array([0, 3]), c)
  with pytest.raises(ValueError, match=name):
    cj.class_distance_weighted_cross_entropy(logits, labels, c[:2, :2])


def test_shared_preparation_warns_nothing_and_names_the_function():
  """float32 inputs need no dtype JAX lacks (no "float64 ... truncated" warning), and
  checked mode names the loss for bad probability labels."""
  import warnings

  logits = jnp.array([[1.0, 0.0, -1.0], [0.0, 2.0, 0.5]])
  c = jnp.array([[0.0, 1.0, 2.0], [1.0, 0.0, 1.0], [2.0, 1.0, 0.0]])
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    for fn in (cj.expected_cost, cj.class_distance_weighted_cross_entropy):
      assert fn(logits, jnp.array([0, 2]), c).dtype == jnp.float32
  q = jnp.array([[0.5, 0.7, -0.2], [0.0, 1.0, 0.0]])
  for name in ("expected_cost", "class_distance_weighted_cross_entropy"):
    with pytest.raises(Exception, match=rf"^costjax.{name}: probability labels have a negative "
                                        r"entry"):
      cj.checked(getattr(cj, name))(logits, q, c)


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
    logits, labels, cost = hyper_problem(probs)
    f = lambda h: jnp.sum(fn(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(cost), h))
    h0 = jnp.float64(h0)
    g = jax.grad(f)(h0)
    fd = (f(h0 + 1e-6) - f(h0 - 1e-6)) / 2e-6
    assert abs(float(fd)) > 1e-3  # the hyperparameter matters here
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(jax.jvp(f, (h0,), (jnp.float64(1.0),))[1], fd, rtol=1e-6,
                               atol=1e-8)


def _closed_form_losses():
  """The losses of test_losses.py are checked there; these two reduce to p . C[y] too."""
  return {
      "sinkhorn_int": (functools.partial(cj.sinkhorn_loss, epsilon=0.5),
                       lambda z, q, c: np_expected_cost(z, q, c)),
      "tree_wasserstein": (
          lambda z, y, c: cj.tree_wasserstein(z, y, TREE_PARENTS),
          lambda z, q, c: np_expected_cost(z, q, TREE_COST)),
  }


@pytest.mark.parametrize("name", sorted(_closed_form_losses()))
@pytest.mark.parametrize("dtype, bits", [(jnp.bfloat16, 8), (jnp.float16, 11)],
                         ids=["bfloat16", "float16"])
def test_half_precision_sinkhorn_and_tree_are_float32_math_rounded_once(name, dtype, bits):
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
def test_extreme_logits_sinkhorn_and_tree_values_and_gradients_match_float64(name, scale):
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
