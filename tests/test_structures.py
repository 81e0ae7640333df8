"""Structured costs (TreeCost, OrdinalCost, EmbeddingCost) against dense matrices and oracles.

Every function that accepts a ``cost_matrix`` is run with each structure and
with the structure's dense matrix; the dense matrices themselves are checked
against NumPy oracles written here (tree distances by explicit ancestor walks,
independent of costjax's tree parser).
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
from jax.experimental import checkify
from jax.test_util import check_grads

import costjax as cj
from costjax._structures import topology as _topology
from costjax._structures import tree as _tree

# --------------------------------------------------------------------------- #
# Oracles.
# --------------------------------------------------------------------------- #


def random_tree(num_nodes: int, rng: np.random.Generator) -> np.ndarray:
  """A random tree over ``num_nodes`` nodes in random order (any node may be the root)."""
  perm = rng.permutation(num_nodes)
  parents = np.full(num_nodes, -1, np.int64)
  for i in range(1, num_nodes):
    parents[perm[i]] = perm[rng.integers(0, i)]
  return parents


def taxonomy(sizes, rng) -> np.ndarray:
  """Leaves ``0..K-1`` (the classes) under levels of the given sizes (root first)."""
  k = sizes[-1]
  ids, start = [], k
  for s in sizes[:-1]:
    ids.append(np.arange(start, start + s))
    start += s
  ids.append(np.arange(k))
  parents = np.full(start, -1, np.int64)
  for t in range(1, len(sizes)):
    npar, nch = sizes[t - 1], sizes[t]
    assign = np.sort(np.concatenate([np.arange(npar), rng.integers(0, npar, nch - npar)]))
    parents[ids[t]] = ids[t - 1][assign]
  return parents


def chain_to_root(parents: np.ndarray, node: int) -> list[int]:
  out = [node]
  while parents[out[-1]] != -1:
    out.append(int(parents[out[-1]]))
  return out


def tree_oracle_rows(parents, weights, ys, num_classes, kind):
  """``C[y, :]`` for each ``y`` in ``ys``, by explicit ancestor walks (float64 NumPy)."""
  parents = np.asarray(parents)
  w = np.asarray(weights, np.float64).copy()
  w[parents == -1] = 0.0
  # Weighted root distance of every class: walk all classes up in lockstep.
  cur = np.arange(num_classes)
  dist = np.zeros(num_classes)
  while np.any(cur >= 0):
    alive = cur >= 0
    dist[alive] += w[cur[alive]]
    cur = np.where(alive, parents[np.maximum(cur, 0)], -1)
  out = []
  for y in ys:
    on_path = np.zeros(parents.shape[0], bool)
    on_path[chain_to_root(parents, int(y))] = True
    cur = np.arange(num_classes)
    while not np.all(on_path[cur]):
      cur = np.where(on_path[cur], cur, parents[cur])
    lca = cur
    # Weighted depth of the lca: sum of weights on its root path.
    lca_depth = np.array([w[chain_to_root(parents, int(n))].sum() for n in np.unique(lca)])
    lca_d = lca_depth[np.searchsorted(np.unique(lca), lca)]
    if kind == "path_length":
      row = dist[y] + dist - 2 * lca_d
    else:
      row = np.maximum(dist[y], dist) - lca_d
    out.append(np.maximum(row, 0))
  return np.stack(out)


def tree_oracle_dense(parents, weights, num_classes, kind):
  return tree_oracle_rows(parents, weights, np.arange(num_classes), num_classes, kind)


# --------------------------------------------------------------------------- #
# Fixtures: one structure of each kind with its dense matrix.
# --------------------------------------------------------------------------- #

K = 7


def _tree_case(kind, seed):
  rng = np.random.default_rng(seed)
  n = 12
  parents = random_tree(n, rng)
  weights = rng.uniform(0.2, 2.0, n).astype(np.float32)
  return cj.TreeCost(parents, K, kind=kind, edge_weights=weights), (parents, weights)


def make_structure(name):
  if name == "tree_path":
    return _tree_case("path_length", 1)[0]
  if name == "tree_lca":
    return _tree_case("lca_height", 2)[0]
  if name == "ordinal1":
    return cj.OrdinalCost(K, power=1)
  if name == "ordinal2":
    return cj.OrdinalCost(K, power=2)
  if name == "embedding":
    e = np.random.default_rng(3).normal(size=(K, 3)).astype(np.float32)
    return cj.EmbeddingCost(e, scale=0.7)
  raise AssertionError(name)


STRUCTURES = ["tree_path", "tree_lca", "ordinal1", "ordinal2", "embedding"]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("kind", ["path_length", "lca_height"])
def test_tree_dense_matches_oracle_and_hierarchy_matrix(kind, seed):
  tree, (parents, weights) = _tree_case(kind, 10 + seed)
  oracle = tree_oracle_dense(parents, weights, K, kind)
  np.testing.assert_allclose(tree.dense(), oracle, atol=1e-5)
  np.testing.assert_allclose(
      cj.hierarchy_cost_matrix(parents, K, kind=kind, edge_weights=weights), oracle, atol=1e-5
  )


def test_ordinal_and_embedding_dense_match_formula():
  i = np.arange(K)
  np.testing.assert_allclose(cj.OrdinalCost(K).dense(), np.abs(i[:, None] - i[None]))
  np.testing.assert_allclose(cj.OrdinalCost(K, power=2).dense(), (i[:, None] - i[None]) ** 2)
  e = np.random.default_rng(0).normal(size=(K, 4))
  cost = cj.EmbeddingCost(e.astype(np.float32), scale=2.0)
  oracle = 2.0 * ((e[:, None, :] - e[None, :, :]) ** 2).sum(-1)
  np.testing.assert_allclose(cost.dense(), oracle, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", STRUCTURES)
def test_primitives_match_dense(name):
  s = make_structure(name)
  c = np.asarray(s.dense(), np.float64)
  rng = np.random.default_rng(0)
  y = rng.integers(0, K, (3, 4))
  np.testing.assert_allclose(s.rows(jnp.asarray(y)), c[y], rtol=1e-5, atol=1e-5)
  q = rng.dirichlet(np.ones(K), (2, 5)) * rng.uniform(0.5, 2, (2, 5, 1))  # unnormalised
  np.testing.assert_allclose(s.vecmat(jnp.asarray(q, jnp.float32)), q @ c, rtol=1e-5, atol=1e-4)
  j = rng.integers(0, K, (3, 4))
  np.testing.assert_allclose(s.entries(jnp.asarray(y), jnp.asarray(j)), c[y, j], atol=1e-5)
  np.testing.assert_allclose(s.max_cost(), c.max(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["path_length", "lca_height"])
def test_tree_level_pass_fallback_matches(kind, monkeypatch):
  """Deep trees use a top-down level pass instead of the ancestor table."""
  tree, (parents, weights) = _tree_case(kind, 5)
  y = jnp.arange(K)
  table = tree.rows(y)
  # A private seam on purpose: the level pass runs when max_depth * K exceeds 2**25, which an
  # input reaches only at millions of table entries (a K = 6,000 path), far too slow for a
  # unit test and for its dense oracle.
  monkeypatch.setattr(_tree, "_MAX_ANCESTOR_TABLE", 0)
  levels = jax.jit(lambda t, y: t.rows(y))(tree, y)
  np.testing.assert_allclose(levels, tree_oracle_dense(parents, weights, K, kind), atol=1e-5)
  np.testing.assert_allclose(levels, table, atol=1e-5)


@pytest.mark.parametrize("table", [True, False], ids=["ancestor_table", "level_pass"])
def test_tree_rows_are_exactly_non_negative_with_a_zero_diagonal(table, monkeypatch):
  """Rows are built without a clamp: d(lca) must be bitwise a partial sum of both root
  distances, so no entry rounds below zero and the diagonal is exactly 0."""
  if not table:  # private seam: see test_tree_level_pass_fallback_matches
    monkeypatch.setattr(_tree, "_MAX_ANCESTOR_TABLE", 0)
  rng = np.random.default_rng(21)
  rows = jax.jit(lambda t, y: t.rows(y))
  for _ in range(5):
    parents = random_tree(40, rng)
    w = rng.uniform(0.0, 3.0, 40).astype(np.float32) * (rng.random(40) > 0.2)
    for kind in ("path_length", "lca_height"):
      r = np.asarray(rows(cj.TreeCost(parents, 25, kind=kind, edge_weights=w), jnp.arange(25)))
      assert np.all(r >= 0) and np.all(np.diag(r) == 0), kind


def test_tree_classes_internal_extra_nodes_and_class_root():
  # 0 is the root and a class; 1 internal class; 2, 3 leaves; 4, 5 non-class nodes
  # (5 is a non-class leaf that must be ignored).
  parents = np.array([-1, 0, 1, 4, 0, 4])
  w = np.array([9.0, 1.5, 0.5, 2.0, 1.0, 7.0], np.float32)
  for kind in ["path_length", "lca_height"]:
    tree = cj.TreeCost(parents, 4, kind=kind, edge_weights=w)
    oracle = tree_oracle_dense(parents, w, 4, kind)
    np.testing.assert_allclose(tree.rows(jnp.arange(4)), oracle, atol=1e-6)
    q = np.random.default_rng(1).dirichlet(np.ones(4), 3)
    np.testing.assert_allclose(tree.vecmat(jnp.asarray(q, jnp.float32)), q @ oracle, atol=1e-5)
    np.testing.assert_allclose(tree.max_cost(), oracle.max(), atol=1e-6)


@pytest.mark.parametrize("counts", [
    [3, 0, 1, 5, 2],  # small fan-outs and an empty segment
    [1] * 40 + [700] + [0, 2, 0],  # one huge fan-out among small ones: chunked
    [100_000],  # a star: chunks of chunks
    [0, 0, 33, 64, 65, 1, 0, 32, 31, 17],
])
def test_slot_segment_sums_equal_numpy(counts):
  counts = np.asarray(counts)
  rng = np.random.default_rng(0)
  seg = rng.permutation(np.repeat(np.arange(counts.shape[0]), counts))  # any order
  plan = _topology.SlotPlan(seg, counts.shape[0])
  # Reads stay below two per element whatever the fan-out (no max-fan-out padding).
  assert plan.reads <= 2 * seg.shape[0] + 2 * counts.shape[0]
  x = rng.normal(size=(3, seg.shape[0]))
  want = np.zeros((3, counts.shape[0]))
  np.add.at(want.T, seg, x.T)
  got = jax.jit(lambda x: _topology.slot_sum(x, plan))(jnp.asarray(x, jnp.float32))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3)
  # With a composed permutation, the plan reads x through it.
  perm = rng.permutation(seg.shape[0])
  got = _topology.slot_sum(jnp.asarray(x[:, perm], jnp.float32), plan, np.argsort(perm))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("kind", ["path_length", "lca_height"])
def test_wide_and_deep_tree_vecmat_matches_oracle(kind):
  """A root with 300 leaf classes, a class-less chain, internal classes out of tree order."""
  rng = np.random.default_rng(4)
  k, wide = 320, 300
  # nodes: classes 0..319; 320 root; 321..330 a chain under the root; the first
  # 300 classes (shuffled) hang from the root, the other 20 along the chain.
  parents = np.full(331, -1, np.int64)
  order = rng.permutation(k)
  parents[order[:wide]] = 320
  parents[321] = 320
  parents[322:331] = np.arange(321, 330)
  parents[order[wide:]] = rng.integers(321, 331, k - wide)
  parents[order[wide]] = order[wide + 1]  # one class under another class
  w = rng.uniform(0.2, 2.0, 331).astype(np.float32)
  tree = cj.TreeCost(parents, k, kind=kind, edge_weights=w)
  oracle = tree_oracle_dense(parents, w, k, kind)
  q = rng.dirichlet(np.ones(k), 4) * rng.uniform(0.5, 2, (4, 1))
  got = jax.jit(lambda t, q: t.vecmat(q))(tree, jnp.asarray(q, jnp.float32))
  np.testing.assert_allclose(got, q @ oracle, rtol=1e-5, atol=1e-3)


# --------------------------------------------------------------------------- #
# Every public function: structure vs its dense matrix.
# --------------------------------------------------------------------------- #

LOSSES = {
    "expected_cost": cj.expected_cost,
    "cost_regularized_cross_entropy": functools.partial(
        cj.cost_regularized_cross_entropy, lam=0.6
    ),
    "soft_label_cross_entropy": functools.partial(cj.soft_label_cross_entropy, temperature=1.3),
    "cdw_ce": cj.class_distance_weighted_cross_entropy,
    "cdw_ce_alpha2": functools.partial(cj.class_distance_weighted_cross_entropy, alpha=2.0),
}


@pytest.mark.parametrize("kind", ["path_length", "lca_height"])
def test_tree_row_block_matches_the_oracle_when_class_0_is_an_ancestor(kind):
  """row_block (the losses from features read their cost blocks through it) gives
  C[idx, cols] by matching ancestor chains: every entry against the float64 oracle, on
  trees with classes at internal nodes (class 0 the ancestor of other classes), weighted
  and not, with columns in any order and repeated."""
  rng = np.random.default_rng(3)
  cases = [(np.array([3, 0, 0, -1]), 3, None),
           (np.array([4, 0, 0, 1, -1]), 4, np.array([2.0, 0.5, 1.5, 3.0, 0.0], np.float32))]
  parents = random_tree(40, rng)
  cases.append((parents, 25, rng.uniform(0.2, 2.0, 40).astype(np.float32)))
  for parents, k, w in cases:
    tree = cj.TreeCost(parents, k, kind=kind, edge_weights=w)
    oracle = tree_oracle_dense(parents, np.ones(len(parents)) if w is None else w, k, kind)
    idx = np.arange(k).reshape(-1, 1) if k < 5 else rng.integers(0, k, (3, 4))
    cols = np.r_[np.arange(k)[::-1], 0, 0]
    got = jax.jit(tree.row_block)(jnp.asarray(idx), jnp.asarray(cols))
    np.testing.assert_allclose(got, oracle[idx[..., None], cols], rtol=1e-6, atol=1e-6,
                               err_msg=f"{kind}, K={k}")


def _node_levels(parents) -> np.ndarray:
  return np.array([len(chain_to_root(parents, n)) - 1 for n in range(len(parents))])


def _lca_level_cases(seed):
  """(name, parents, K, weights, by_level) for kind="lca_height"'s two branches.

  ``by_level``: the class depths are one non-decreasing value per tree level, so
  ``_sum_max_by_level`` must run; otherwise the sort.
  """
  rng = np.random.default_rng(seed)
  parents = random_tree(40, rng)  # classes at several levels, internal classes too
  levels = _node_levels(parents)
  per_level = rng.uniform(0.2, 2.0, levels.max() + 1)
  return [
      ("unit", parents, 25, None, True),
      ("per-level", parents, 25, per_level[levels].astype(np.float32), True),
      ("random", parents, 25, rng.uniform(0.2, 2.0, 40).astype(np.float32), False),
      # Class 0 (level 1) lies deeper than classes 1, 2 (level 2): one value per
      # level, but decreasing, so the levels alone cannot order the depths.
      ("decreasing", np.array([4, 3, 3, 4, -1]), 3, np.array([5, 1, 1, 1, 0], np.float32),
       False),
  ]


@pytest.mark.parametrize("seed", range(3))
def test_tree_lca_height_both_branches_match_oracle(seed, monkeypatch):
  """vecmat and Bayes decisions of kind="lca_height" on unbalanced trees, and the branch
  taken: with the sort replaced by NaNs, exactly the cases whose depths are not one
  non-decreasing value per level turn NaN."""
  for name, parents, k, w, _ in _lca_level_cases(seed):
    tree = cj.TreeCost(parents, k, kind="lca_height", edge_weights=w)
    oracle = tree_oracle_dense(parents, np.ones(len(parents)) if w is None else w, k,
                               "lca_height")
    rng = np.random.default_rng(seed)
    q = rng.dirichlet(np.ones(k) * 0.5, (3, 4)) * rng.uniform(0.5, 2, (3, 4, 1))
    np.testing.assert_allclose(tree.vecmat(jnp.asarray(q, jnp.float32)), q @ oracle,
                               rtol=1e-5, atol=1e-5, err_msg=name)
    logits = jnp.asarray(rng.normal(size=(64, k)) * 2, jnp.float32)
    risk = np.asarray(jax.nn.softmax(logits), np.float64) @ oracle
    got = np.asarray(jax.jit(cj.bayes_decision)(logits, tree))
    # Equal up to float32 near-ties of the expected cost.
    picked = risk[np.arange(64), got]
    np.testing.assert_allclose(picked, risk.min(-1), rtol=1e-5, atol=1e-6, err_msg=name)
    assert np.mean(got == risk.argmin(-1)) > 0.9, name
    got_best = cj.decision_costs(logits, tree).min(-1)
    np.testing.assert_allclose(got_best, risk.min(-1), rtol=1e-5, atol=1e-5, err_msg=name)
  # Which branch ran is not visible in the values (both are exact), so a private seam: the
  # sort is replaced by NaN, and only the trees that must take the level branch stay finite.
  # Traced afresh through a new function (the jitted method's own cache may hold a program
  # traced with the real sort), so that no program traced with the fake one is left behind
  # in a cache other tests read.
  monkeypatch.setattr(_tree, "_sum_max_sorted", lambda v, d: jnp.full_like(v, jnp.nan))
  for name, parents, k, w, by_level in _lca_level_cases(seed):
    tree = cj.TreeCost(parents, k, kind="lca_height", edge_weights=w)
    vecmat = jax.jit(lambda t, v: cj.TreeCost.vecmat.__wrapped__(t, v))
    out = vecmat(tree, jnp.full((2, k), 1.0 / k, jnp.float32))
    assert bool(jnp.all(jnp.isfinite(out))) == by_level, name


def test_tree_lca_height_many_class_levels_take_the_sort():
  """A tree with more class levels than _MAX_LEVELS_BY_MATMUL (64): only the sort runs
  there (no per-level matmul), reached by the input's shape, and it is still exact. A path
  of 70 classes under a root puts every class on a level of its own; unit weights."""
  k = 70
  parents = np.append(np.arange(1, k + 1), -1)  # class i under class i + 1, the root last
  tree = cj.TreeCost(parents, k, kind="lca_height")
  q = np.random.default_rng(0).dirichlet(np.ones(k), 4)
  oracle = tree_oracle_dense(parents, np.ones(len(parents)), k, "lca_height")
  np.testing.assert_allclose(jax.jit(lambda t, v: t.vecmat(v))(tree, jnp.asarray(q, jnp.float32)),
                             q @ oracle, rtol=1e-5, atol=1e-4)


def test_sum_max_by_level_against_numpy():
  """The level formula itself, with tied depths on each level and gaps between levels."""
  rng = np.random.default_rng(3)
  index = rng.integers(0, 4, 30).astype(np.int32)
  index[:4] = np.arange(4)  # every level holds a class
  g = np.array([0.0, 1.5, 1.5, 4.0])  # two levels at the same depth
  d = g[index]
  v = rng.uniform(0, 1, (5, 30))
  onehot = (index[:, None] == np.arange(4)).astype(np.float32)
  got = _tree._sum_max_by_level(jnp.asarray(v, jnp.float32), jnp.asarray(d, jnp.float32),
                                      onehot)
  want = (v[:, :, None] * np.maximum(d[:, None], d[None, :])).sum(1)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  np.testing.assert_allclose(
      _tree._sum_max_sorted(jnp.asarray(v, jnp.float32), jnp.asarray(d, jnp.float32)),
      want, rtol=1e-6)


@pytest.mark.parametrize("shape", ["random", "one_level"])
def test_tree_lca_height_unit_weight_gradients_split_ties_like_dense(shape):
  """At unit weights every class on a level ties in depth; the level branch's gradient
  with respect to the edge weights splits each tie as the dense ``jnp.maximum`` does
  (trees with classes on several levels, and all on one)."""
  rng = np.random.default_rng(8)
  if shape == "random":
    parents = random_tree(40, rng)
  else:
    parents = taxonomy([1, 3, 8, 25], rng)
  k = 25
  logits = jnp.asarray(rng.normal(size=(6, k)), jnp.float32)
  make = lambda w: cj.TreeCost(parents, k, kind="lca_height", edge_weights=w)
  w = jnp.ones(len(parents), jnp.float32)
  for f in (lambda c: jnp.sum(cj.decision_costs(logits, c) ** 2),
            lambda c: jnp.sum(cj.expected_cost(logits, jax.nn.softmax(logits * 0.5), c))):
    got = jax.jit(jax.grad(lambda w, f=f: f(make(w))))(w)
    want = jax.jit(jax.grad(lambda w, f=f: f(make(w).dense())))(w)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_tree_lca_height_vmap_over_trees_on_both_branches():
  """A stack of edge weights where some trees take the level branch and some the sort."""
  rng = np.random.default_rng(9)
  parents = random_tree(40, rng)
  k = 25
  levels = _node_levels(parents)
  ws = np.stack([np.ones(40), rng.uniform(0.2, 2, levels.max() + 1)[levels],
                 rng.uniform(0.2, 2, 40)]).astype(np.float32)
  stack = jax.tree.map(lambda *x: jnp.stack(x),
                       *[cj.TreeCost(parents, k, kind="lca_height", edge_weights=w) for w in ws])
  logits = jnp.asarray(rng.normal(size=(16, k)) * 2, jnp.float32)
  costs = jax.jit(jax.vmap(cj.decision_costs, in_axes=(None, 0)))(logits, stack)
  decisions = jax.jit(jax.vmap(cj.bayes_decision, in_axes=(None, 0)))(logits, stack)
  p = np.asarray(jax.nn.softmax(logits), np.float64)
  for i, w in enumerate(ws):
    risk = p @ tree_oracle_dense(parents, w, k, "lca_height")
    np.testing.assert_allclose(costs[i], risk, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(risk[np.arange(16), decisions[i]], risk.min(-1), rtol=1e-5)


def _inputs(seed=0, batch=(2, 3)):
  rng = np.random.default_rng(seed)
  logits = jnp.asarray(rng.normal(size=batch + (K,)) * 2, jnp.float32)
  labels = jnp.asarray(rng.integers(0, K, batch), jnp.int32)
  probs = jnp.asarray(rng.dirichlet(np.ones(K) * 0.5, batch), jnp.float32)
  return logits, labels, probs


@pytest.mark.parametrize("name", STRUCTURES)
@pytest.mark.parametrize("loss", list(LOSSES))
def test_losses_match_dense(name, loss):
  s = make_structure(name)
  c = s.dense()
  fn = LOSSES[loss]
  logits, labels, probs = _inputs()
  for lab in (labels, probs):
    np.testing.assert_allclose(fn(logits, lab, s), fn(logits, lab, c), rtol=2e-5, atol=2e-5)
  bad = labels.at[0, 1].set(K)
  out = fn(logits, bad, s)
  assert np.isnan(out[0, 1]) and np.isfinite(np.delete(np.ravel(out), 1)).all()


@pytest.mark.parametrize("name", STRUCTURES)
def test_cost_soft_labels_match_dense(name):
  s = make_structure(name)
  c = s.dense()
  _, labels, probs = _inputs()
  for lab in (labels, probs, labels[0, 0]):
    np.testing.assert_allclose(
        cj.cost_soft_labels(lab, s, temperature=0.9),
        cj.cost_soft_labels(lab, c, temperature=0.9),
        rtol=1e-5, atol=1e-6,
    )
  assert np.isnan(cj.cost_soft_labels(jnp.array([0, -1]), s)[1]).all()


@pytest.mark.parametrize("name", STRUCTURES)
def test_decisions_match_dense(name):
  s = make_structure(name)
  c = s.dense()
  logits, labels, probs = _inputs(1, (40,))
  dc_s, dc_d = cj.decision_costs(logits, s), cj.decision_costs(logits, c)
  np.testing.assert_allclose(dc_s, dc_d, rtol=1e-5, atol=1e-5)
  # Bayes decisions: the same up to ties within rounding.
  pred = cj.bayes_decision(logits, s)
  chosen = np.take_along_axis(np.asarray(dc_d), np.asarray(pred)[:, None], 1)[:, 0]
  np.testing.assert_allclose(chosen, np.min(dc_d, axis=1), rtol=1e-5, atol=1e-5)
  thr = float(np.median(np.min(dc_d, axis=1)))
  np.testing.assert_array_equal(
      cj.bayes_decision(logits, s, abstain_cost=thr) == -1,
      cj.bayes_decision(logits, c, abstain_cost=thr) == -1,
  )
  np.testing.assert_allclose(cj.mean_cost(pred, labels, s), cj.mean_cost(pred, labels, c),
                             rtol=1e-5)
  # Conformal cost sets.
  t = 0.3 * float(np.max(c))
  sets_s, sets_d = cj.cost_sets(logits, s, threshold=t), cj.cost_sets(logits, c, threshold=t)
  gap = np.asarray(dc_d) - np.min(dc_d, axis=1, keepdims=True)
  clear = np.abs(gap - t) > 1e-4  # away from the boundary
  np.testing.assert_array_equal(np.asarray(sets_s)[clear], np.asarray(sets_d)[clear])
  for lab in (labels, probs):
    np.testing.assert_allclose(cj.set_cost(sets_d, lab, s), cj.set_cost(sets_d, lab, c),
                               rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(cj.cost_class_weights(s), cj.cost_class_weights(c), rtol=1e-5)


def test_ordinal_power1_bayes_is_the_float64_median_decision():
  """OrdinalCost(power=1) decides by the median (one prefix sum, no K-wide arg-min):
  its decision's exact (float64) expected cost is the minimum, the smallest minimiser on
  exact ties (as argmin), abstention compares that minimum, under jit and vmap."""
  rng = np.random.default_rng(11)
  decide = jax.jit(cj.bayes_decision)
  for k in (2, 9, 130, 1000):
    z = np.asarray(3.0 * rng.normal(size=(300, k)), np.float32)
    got = np.asarray(decide(z, cj.OrdinalCost(k)))
    p = np.exp(z.astype(np.float64) - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    g = p @ np.abs(np.arange(k)[:, None] - np.arange(k)[None, :])  # exact costs, float64
    chosen = g[np.arange(len(g)), got]
    np.testing.assert_allclose(chosen, g.min(-1), rtol=1e-6, atol=0)
    thr = float(np.median(g.min(-1)))
    abst = np.asarray(decide(z, cj.OrdinalCost(k), abstain_cost=thr))
    clear = np.abs(g.min(-1) - thr) > 1e-6 * thr  # away from the threshold
    np.testing.assert_array_equal((abst == -1)[clear], (g.min(-1) > thr)[clear])
    np.testing.assert_array_equal(abst[abst >= 0], got[abst >= 0])
  # Exact ties: uniform over 4 classes has F = (.25, .5, .75, 1); classes 1 and 2 tie.
  assert cj.bayes_decision(jnp.zeros(4), cj.OrdinalCost(4)) == 1
  assert cj.bayes_decision(jnp.zeros(4), cj.OrdinalCost(4).dense()) == 1
  # A class mask (-inf logits) and a vmapped batch of batches.
  assert cj.bayes_decision(jnp.array([0.0, -jnp.inf, -jnp.inf, 0.0, -jnp.inf]),
                           cj.OrdinalCost(5)) == 0
  zz = jnp.asarray(rng.normal(size=(3, 4, 6)), jnp.float32)
  np.testing.assert_array_equal(
      jax.vmap(lambda x: cj.bayes_decision(x, cj.OrdinalCost(6)))(zz),
      cj.bayes_decision(zz, cj.OrdinalCost(6).dense()))


@pytest.mark.parametrize("shape", ["taxonomy", "random"])
def test_tree_path_bayes_is_the_float64_optimum(shape):
  """TreeCost(path_length) decides by one bottom-up and one top-down pass (no vecmat):
  its decision's exact (float64) expected cost is the minimum, abstention compares that
  minimum, exact ties go to the lowest class (as argmin), under jit and vmap."""
  rng = np.random.default_rng(12)
  decide = jax.jit(cj.bayes_decision)
  for k in (7, 900):
    if shape == "taxonomy":
      sizes = [1, 3, max(4, k // 20), max(5, k // 4), k]
      parents = taxonomy(sizes, rng)
    else:  # classes anywhere (internal, root), extra class-less nodes, random order
      parents = random_tree(k + k // 3 + 1, rng)
    w = rng.uniform(0.2, 2.0, parents.shape[0]).astype(np.float32)
    tree = cj.TreeCost(parents, k, edge_weights=w)
    c = tree_oracle_dense(parents, w, k, "path_length")
    z = np.asarray(3.0 * rng.normal(size=(300, k)), np.float32)
    got = np.asarray(decide(z, tree))
    p = np.exp(z.astype(np.float64) - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    g = p @ c
    chosen = g[np.arange(len(g)), got]
    np.testing.assert_allclose(chosen, g.min(-1), rtol=2e-6, atol=1e-6)
    thr = float(np.median(g.min(-1)))
    abst = np.asarray(decide(z, tree, abstain_cost=thr))
    clear = np.abs(g.min(-1) - thr) > 1e-5 * thr
    np.testing.assert_array_equal((abst == -1)[clear], (g.min(-1) > thr)[clear])
    np.testing.assert_array_equal(abst[abst >= 0], got[abst >= 0])
  # Exact ties: a symmetric tree and uniform posteriors: every leaf costs the same.
  sym = cj.TreeCost([4, 4, 5, 5, 6, 6, -1], 4)
  assert decide(jnp.zeros(4), sym) == 0
  assert decide(jnp.array([-jnp.inf, 0.0, -jnp.inf, 0.0]), sym) == 1
  zz = jnp.asarray(rng.normal(size=(3, 4, 4)), jnp.float32)
  np.testing.assert_array_equal(
      jax.jit(jax.vmap(decide, in_axes=(0, None)))(zz, sym), decide(zz, sym.dense()))


def test_ordinal_power2_bayes_is_the_nearest_class_to_the_mean():
  """OrdinalCost(power=2) decides by the mean (no K-wide arg-min): the exact (float64)
  optimum, the lower class on a tie at a half, abstention on that minimum."""
  rng = np.random.default_rng(12)
  for k in (2, 9, 130, 1000):
    z = np.asarray(3.0 * rng.normal(size=(300, k)), np.float32)
    got = np.asarray(jax.jit(cj.bayes_decision)(z, cj.OrdinalCost(k, power=2)))
    p = np.exp(z.astype(np.float64) - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    g = p @ (np.arange(k)[:, None] - np.arange(k)[None, :]) ** 2.0
    np.testing.assert_allclose(g[np.arange(len(g)), got], g.min(-1), rtol=1e-6, atol=0)
    thr = float(np.median(g.min(-1)))
    abst = np.asarray(cj.bayes_decision(z, cj.OrdinalCost(k, power=2), abstain_cost=thr))
    clear = np.abs(g.min(-1) - thr) > 1e-5 * thr
    np.testing.assert_array_equal((abst == -1)[clear], (g.min(-1) > thr)[clear])
  for k in (2, 4):  # uniform: mean (k - 1) / 2, a tie between two classes
    assert cj.bayes_decision(jnp.zeros(k), cj.OrdinalCost(k, power=2)) == k // 2 - 1
    assert cj.bayes_decision(jnp.zeros(k), cj.OrdinalCost(k, power=2).dense()) == k // 2 - 1


@pytest.mark.parametrize("name", STRUCTURES)
def test_calibrate_cost_sets_matches_dense(name):
  s = make_structure(name)
  c = s.dense()
  logits, labels, probs = _inputs(1, (40,))
  for lab in (labels, probs):
    np.testing.assert_allclose(
        cj.calibrate_cost_sets(logits, lab, s, alpha=0.4 * float(np.max(c))),
        cj.calibrate_cost_sets(logits, lab, c, alpha=0.4 * float(np.max(c))),
        rtol=1e-4, atol=1e-4,
    )


@pytest.mark.parametrize("name", STRUCTURES)
def test_sinkhorn_densifies_small_structures(name):
  s = make_structure(name)
  logits, labels, probs = _inputs()
  for lab in (labels, probs):
    np.testing.assert_allclose(
        cj.sinkhorn_loss(logits, lab, s, epsilon=0.5),
        cj.sinkhorn_loss(logits, lab, s.dense(), epsilon=0.5),
        rtol=1e-5, atol=1e-5,
    )


def test_sinkhorn_refuses_huge_structures():
  k = 5000
  with pytest.raises(ValueError, match="tree_wasserstein"):
    cj.sinkhorn_loss(jnp.zeros((2, k)), jnp.array([0, 1]), cj.OrdinalCost(k), epsilon=0.1)


# --------------------------------------------------------------------------- #
# Gradients, jit, vmap.
# --------------------------------------------------------------------------- #


def _tree_from_weights(parents, kind):
  return lambda w: cj.TreeCost(parents, K, kind=kind, edge_weights=w)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["path_length", "lca_height"])
def test_tree_gradients_match_dense_chain_rule(kind):
  tree, (parents, weights) = _tree_case(kind, 7)
  make = _tree_from_weights(parents, kind)
  logits, labels, probs = _inputs(2)
  cases = [(cj.expected_cost, labels), (cj.expected_cost, probs),
           (LOSSES["soft_label_cross_entropy"], labels), (LOSSES["cdw_ce_alpha2"], probs)]
  for loss, lab in cases:
    if True:  # (every derivative is jitted: eager dispatch took ~30 s)
      def structured(z, w, loss=loss, lab=lab):
        return jnp.sum(loss(z, lab, make(w)) * jnp.arange(1, 3)[:, None])

      def dense(z, w, loss=loss, lab=lab):
        return jnp.sum(loss(z, lab, make(w).dense()) * jnp.arange(1, 3)[:, None])

      gs = jax.jit(jax.grad(structured, argnums=(0, 1)))(logits, jnp.asarray(weights))
      gd = jax.jit(jax.grad(dense, argnums=(0, 1)))(logits, jnp.asarray(weights))
      for a, b in zip(gs, gd, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  # Gradient of the decision costs (vecmat) w.r.t. the weights.
  g1 = jax.jit(jax.grad(lambda w: jnp.sum(cj.decision_costs(logits, make(w)) ** 2)))(
      jnp.asarray(weights))
  g2 = jax.jit(jax.grad(lambda w: jnp.sum(cj.decision_costs(logits, make(w).dense()) ** 2)))(
      jnp.asarray(weights))
  np.testing.assert_allclose(g1, g2, rtol=1e-4, atol=1e-4)
  # Gradient with respect to the structure itself (a pytree of edge weights).
  gt = jax.jit(jax.grad(lambda t: jnp.sum(cj.expected_cost(logits, labels, t))))(tree)
  assert isinstance(gt, cj.TreeCost)
  gw = jax.jit(jax.grad(lambda w: jnp.sum(cj.expected_cost(logits, labels, make(w).dense()))))(
      jnp.asarray(weights))
  np.testing.assert_allclose(gt.edge_weights, gw, rtol=1e-4, atol=1e-5)


def test_embedding_gradients_match_dense_chain_rule():
  rng = np.random.default_rng(4)
  e = jnp.asarray(rng.normal(size=(K, 3)), jnp.float32)
  logits, labels, probs = _inputs(3)
  for lab in (labels, probs):
    def structured(z, e, s, lab=lab):
      return jnp.sum(cj.expected_cost(z, lab, cj.EmbeddingCost(e, scale=s)))

    def dense(z, e, s, lab=lab):
      return jnp.sum(cj.expected_cost(z, lab, cj.EmbeddingCost(e, scale=s).dense()))

    gs = jax.jit(jax.grad(structured, argnums=(0, 1, 2)))(logits, e, 0.8)
    gd = jax.jit(jax.grad(dense, argnums=(0, 1, 2)))(logits, e, 0.8)
    for a, b in zip(gs, gd, strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_check_grads_float64():
  with jax.enable_x64(True):
    rng = np.random.default_rng(5)
    parents = random_tree(10, rng)
    w = jnp.asarray(rng.uniform(0.5, 2, 10))
    z = jnp.asarray(rng.normal(size=(3, K)))
    y = jnp.asarray([0, 3, 6])
    q = jnp.asarray(rng.dirichlet(np.ones(K), 3))
    for kind in ["path_length", "lca_height"]:
      make = _tree_from_weights(parents, kind)
      check_grads(jax.jit(lambda z, w, make=make: cj.expected_cost(z, y, make(w))), (z, w), order=1,
                  modes=["rev"], atol=1e-5, rtol=1e-5)
      # lca_height: away from ties between class depths the sort is locally constant.
      check_grads(jax.jit(lambda z, w, make=make: cj.expected_cost(z, q, make(w))), (z, w), order=1,
                  modes=["rev"], atol=1e-5, rtol=1e-5)
    e = jnp.asarray(rng.normal(size=(K, 2)))
    check_grads(jax.jit(lambda z, e: cj.soft_label_cross_entropy(z, y, cj.EmbeddingCost(e))),
                (z, e), order=1, modes=["rev"], atol=1e-5, rtol=1e-5)
    check_grads(jax.jit(lambda z: cj.class_distance_weighted_cross_entropy(
        z, q, cj.OrdinalCost(K, power=2))), (z,), order=1, modes=["rev"], atol=1e-5, rtol=1e-5)


def test_jit_with_structure_argument_does_not_retrace():
  tree, (parents, weights) = _tree_case("path_length", 8)
  logits, labels, _ = _inputs()
  traces = []

  @jax.jit
  def f(z, y, c):
    traces.append(1)
    return cj.expected_cost(z, y, c)

  out1 = f(logits, labels, tree)
  tree2 = cj.TreeCost(parents, K, edge_weights=weights * 2)
  out2 = f(logits, labels, tree2)
  assert len(traces) == 1
  np.testing.assert_allclose(out1, cj.expected_cost(logits, labels, tree.dense()), rtol=1e-5)
  np.testing.assert_allclose(out2, 2 * np.asarray(out1), rtol=1e-5)
  # A different kind is a different static structure: a retrace.
  f(logits, labels, cj.TreeCost(parents, K, kind="lca_height", edge_weights=weights))
  assert len(traces) == 2


@pytest.mark.slow
def test_vmap_over_stacks_of_structures():
  rng = np.random.default_rng(6)
  parents = random_tree(12, rng)
  ws = rng.uniform(0.1, 3, (4, 12)).astype(np.float32)
  trees = [cj.TreeCost(parents, K, kind="lca_height", edge_weights=w) for w in ws]
  stack = jax.tree.map(lambda *x: jnp.stack(x), *trees)
  logits, labels, probs = _inputs()
  for lab in (labels, probs):
    out = jax.jit(jax.vmap(cj.expected_cost, in_axes=(None, None, 0)))(logits, lab, stack)
    for i, t in enumerate(trees):
      np.testing.assert_allclose(out[i], cj.expected_cost(logits, lab, t.dense()),
                                 rtol=1e-5, atol=1e-5)
  embs = [cj.EmbeddingCost(rng.normal(size=(K, 2)).astype(np.float32), scale=s)
          for s in (0.5, 1.0, 2.0)]
  estack = jax.tree.map(lambda *x: jnp.stack(x), *embs)
  out = jax.vmap(cj.decision_costs, in_axes=(None, 0))(logits, estack)
  for i, e in enumerate(embs):
    np.testing.assert_allclose(out[i], cj.decision_costs(logits, e.dense()), rtol=1e-5,
                               atol=1e-5)
  # Bayes decisions (the path-length shortcut) for a stack of edge weights.
  paths = [cj.TreeCost(parents, K, edge_weights=w) for w in ws]
  pstack = jax.tree.map(lambda *x: jnp.stack(x), *paths)
  got = jax.jit(jax.vmap(cj.bayes_decision, in_axes=(None, 0)))(logits, pstack)
  p64 = np.exp(np.asarray(logits, np.float64))
  for i, t in enumerate(paths):
    np.testing.assert_array_equal(got[i], np.argmin(p64 @ np.asarray(t.dense(), np.float64), -1))
  # vmap over examples with one shared structure.
  per_ex = jax.vmap(cj.soft_label_cross_entropy, in_axes=(0, 0, None))(
      logits[0], labels[0], trees[0])
  np.testing.assert_allclose(
      per_ex, cj.soft_label_cross_entropy(logits[0], labels[0], trees[0].dense()), rtol=1e-5)


# --------------------------------------------------------------------------- #
# K = 100,000 against the NumPy oracle.
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("kind", ["path_length", "lca_height"])
def test_tree_k100k_rows_against_oracle(kind):
  rng = np.random.default_rng(7)
  k = 100_000
  parents = taxonomy([1, 3, 20, 100, 600, 4000, 20000, k], rng)
  w = rng.uniform(0.1, 2.0, parents.shape[0]).astype(np.float32)
  tree = cj.TreeCost(parents, k, kind=kind, edge_weights=w)
  ys = np.array([0, 51_234, k - 1])
  oracle = tree_oracle_rows(parents, w, ys, k, kind)
  rows = jax.jit(lambda t, y: t.rows(y))
  np.testing.assert_allclose(rows(tree, jnp.asarray(ys)), oracle, rtol=1e-5, atol=1e-5)
  # q @ C for sparse q: a mixture of the same rows.
  q = np.zeros((2, k), np.float32)
  q[0, ys] = [0.5, 0.3, 0.2]
  q[1, ys[1]] = 1.0
  expect = q[:, ys] @ oracle
  vecmat = jax.jit(lambda t, q: t.vecmat(q))
  np.testing.assert_allclose(vecmat(tree, jnp.asarray(q)), expect, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(
      jax.jit(lambda t, i, j: t.entries(i, j))(tree, jnp.asarray(ys), jnp.asarray([7, 99_000, 3])),
      oracle[np.arange(3), [7, 99_000, 3]], rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- #
# Bad input.
# --------------------------------------------------------------------------- #


def test_bad_trees_raise():
  with pytest.raises(ValueError, match="cycle"):
    cj.TreeCost([1, 2, 0, -1], 3)
  with pytest.raises(ValueError, match="exactly one root"):
    cj.TreeCost([-1, -1, 0], 3)
  with pytest.raises(ValueError, match="num_classes=5 exceeds"):
    cj.TreeCost([2, 2, -1], 5)
  with pytest.raises(ValueError, match="kind"):
    cj.TreeCost([2, 2, -1], 2, kind="depth")
  with pytest.raises(ValueError, match="edge_weights must have shape"):
    cj.TreeCost([2, 2, -1], 2, edge_weights=np.ones(4))
  with pytest.raises(ValueError, match=r"edge_weights\[1\] = nan"):
    cj.TreeCost([2, 2, -1], 2, edge_weights=np.array([1.0, np.nan, 1.0]))
  with pytest.raises(ValueError, match="negative"):
    cj.TreeCost([2, 2, -1], 2, edge_weights=np.array([1.0, -1.0, 1.0]))
  with pytest.raises(TypeError, match=re.escape(
      "costjax.TreeCost: parents is the tree's static structure and must be concrete")):
    jax.jit(lambda p: cj.TreeCost(p, 2))(jnp.array([2, 2, -1]))
  # The functions that take a whole tree (parents and weights) as arguments.
  with pytest.raises(TypeError, match=re.escape(
      "costjax.hierarchy_cost_matrix: parents and edge_weights describe the tree's structure and "
      "must be concrete (NumPy or a jax.Array created outside jit), not traced values. Close "
      "over them instead of passing them as jit arguments.")):
    jax.jit(lambda p: cj.hierarchy_cost_matrix(p, 2))(jnp.array([2, 2, -1]))
  # A parent below -1 (or past the last node) is not a node: named with its index.
  for parents, i, v in (([3, -2, 3, -1], 1, -2), ([3, 7, 3, -1], 1, 7)):
    with pytest.raises(ValueError, match=re.escape(
        f"costjax.TreeCost: parents[{i}] = {v} is not a node index in [0, 4) or -1.")):
      cj.TreeCost(parents, 3)


def test_bad_ordinal_and_embeddings_raise():
  for power in (0, 3, 1.5, True):
    with pytest.raises(ValueError, match=re.escape(
        f"costjax.OrdinalCost: power must be 1 or 2; got {power!r}. For other powers build "
        "the dense matrix with costjax.ordinal_cost_matrix(num_classes, power=power).")):
      cj.OrdinalCost(4, power=power)
  for k in (0, 2.0, True):
    with pytest.raises(ValueError, match=re.escape(
        f"costjax.OrdinalCost: num_classes must be a positive int; got {k!r}.")):
      cj.OrdinalCost(k)
  with pytest.raises(ValueError, match="embeddings must have shape"):
    cj.EmbeddingCost(jnp.ones(4))
  with pytest.raises(ValueError, match="not finite"):
    cj.EmbeddingCost(jnp.array([[0.0, np.nan], [1.0, 1.0]]))
  with pytest.raises(ValueError, match="scale"):
    cj.EmbeddingCost(jnp.ones((3, 2)), scale=-1.0)
  with pytest.raises(ValueError, match=re.escape(
      "costjax.EmbeddingCost: embeddings has no classes; got shape (0, 2).")):
    cj.EmbeddingCost(jnp.ones((0, 2)))
  # A structure changed after construction (as jax.tree.map can) is caught by the eager check.
  bad = jax.tree.map(lambda x: x if x.ndim else -jnp.ones_like(x),
                     cj.EmbeddingCost(jnp.ones((3, 2))))
  with pytest.raises(ValueError, match=re.escape("EmbeddingCost: scale = -1.0 is negative.")):
    cj.check_cost_structure(bad)


def test_embedding_max_cost_over_several_row_blocks():
  """max_cost scans the rows in blocks of 1024: K = 1500 needs a padded second block."""
  e = np.random.default_rng(4).normal(size=(1500, 3)).astype(np.float32)
  e[1234] = 6.0  # the farthest pair involves a row of the second block
  cost = cj.EmbeddingCost(jnp.asarray(e), scale=0.5)
  d2 = (e.astype(np.float64) ** 2).sum(1)
  want = 0.5 * np.max(d2[:, None] + d2[None, :] - 2 * e.astype(np.float64) @ e.T)
  np.testing.assert_allclose(cost.max_cost(), want, rtol=1e-5)


@pytest.mark.parametrize("fn", [cj.expected_cost, cj.soft_label_cross_entropy,
                                cj.class_distance_weighted_cross_entropy])
def test_class_count_mismatch_is_a_trace_time_error(fn):
  cost = cj.EmbeddingCost(jnp.ones((5, 2)))
  with pytest.raises(ValueError, match=r"num_classes=5.*K = 4"):
    jax.jit(fn)(jnp.zeros((3, 4)), jnp.zeros(3, jnp.int32), cost)
  with pytest.raises(ValueError, match=r"num_classes=5.*K = 4"):
    cj.decision_costs(jnp.zeros((3, 4)), cost)


def test_check_cost_structure_and_checked_mode_catch_nan_leaves():
  tree = cj.TreeCost([3, 3, 4, 5, 5, -1], 3)
  assert cj.check_cost_structure(tree) is tree
  bad_tree = jax.tree.map(lambda w: w.at[4].set(jnp.nan), tree)
  with pytest.raises(ValueError, match=r"edge_weights\[4\] = nan"):
    cj.check_cost_structure(bad_tree)
  neg_tree = jax.tree.map(lambda w: w.at[0].set(-2.0), tree)
  with pytest.raises(ValueError, match=r"edge_weights\[0\] = -2.0 is negative"):
    cj.check_cost_structure(neg_tree)
  emb = cj.EmbeddingCost(jnp.ones((3, 2)))
  bad_emb = jax.tree.map(lambda x: jnp.where(x.ndim == 2, x.at[..., 1].set(jnp.inf), x)
                         if x.ndim else x, emb)
  with pytest.raises(ValueError, match=r"embeddings\[0, 1\] = inf"):
    cj.check_cost_structure(bad_emb)
  with pytest.raises(TypeError, match="check_cost_matrix"):
    cj.check_cost_structure(jnp.ones((3, 3)))
  z, y = jnp.zeros((2, 3)), jnp.array([0, 2])
  for bad in (bad_tree, neg_tree, bad_emb):
    with pytest.raises(checkify.JaxRuntimeError, match="non-finite|negative"):
      cj.checked(cj.expected_cost)(z, y, bad)
  # Good structures pass checked mode and give the plain value.
  np.testing.assert_allclose(cj.checked(cj.expected_cost)(z, y, tree),
                             cj.expected_cost(z, y, tree))


# --------------------------------------------------------------------------- #
# Sharded batches.
# --------------------------------------------------------------------------- #

_SHARDED = textwrap.dedent("""
    import json, jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    import costjax as cj
    mesh = jax.make_mesh((8,), ("data",))
    rng = np.random.default_rng(0)
    parents = np.array([6, 6, 7, 7, 8, 8, 9, 9, 9, -1])
    tree = cj.TreeCost(parents, 6, kind="lca_height",
                       edge_weights=rng.uniform(0.5, 2, 10).astype(np.float32))
    emb = cj.EmbeddingCost(rng.normal(size=(6, 3)).astype(np.float32))
    z = rng.normal(size=(32, 6)).astype(np.float32)
    y = rng.integers(0, 6, 32).astype(np.int32)
    zs = jax.device_put(z, NamedSharding(mesh, P("data", None)))
    ys = jax.device_put(y, NamedSharding(mesh, P("data")))
    out = {}
    # Unit weights, classes on two levels: the level branch's matrix products.
    unit = cj.TreeCost(np.array([8, 8, 6, 6, 7, 7, 8, 8, -1]), 6, kind="lca_height")
    for name, c in [("tree", tree), ("tree_unit", unit), ("emb", emb),
                    ("ord", cj.OrdinalCost(6, power=2))]:
      f = jax.jit(jax.value_and_grad(lambda z, y, c: cj.expected_cost(z, y, c).mean()))
      v1, g1 = f(z, y, c)
      v8, g8 = f(zs, ys, c)
      d1 = cj.decision_costs(z, c)
      d8 = jax.jit(cj.decision_costs)(zs, c)
      out[name] = max(float(abs(v1 - v8)), float(jnp.max(jnp.abs(g1 - g8))),
                      float(jnp.max(jnp.abs(d1 - d8))),
                      float(abs(v1 - cj.expected_cost(z, y, c.dense()).mean())))
    # Bayes decisions at K = 300: the tree's top-down shortcut and the blocked
    # arg-min (dense) on a sharded batch; out["bayes"] counts disagreements.
    big = cj.TreeCost(np.r_[np.repeat(np.arange(300, 320), 15), np.full(20, 320), -1], 300,
                      edge_weights=rng.uniform(0.5, 2, 321).astype(np.float32))
    zb = rng.normal(size=(32, 300)).astype(np.float32)
    zbs = jax.device_put(zb, NamedSharding(mesh, P("data", None)))
    big_unit = cj.TreeCost(big.parents, 300, kind="lca_height")
    decide = jax.jit(cj.bayes_decision)
    out["bayes"] = sum(int(np.sum(np.asarray(decide(zbs, c)) != np.asarray(decide(zb, c))))
                       for c in (big, big.dense(), big_unit))
    pb = np.exp(zb - zb.max(-1, keepdims=True)).astype(np.float64)
    oracle = np.argmin(pb @ np.asarray(big.dense(), np.float64), axis=-1)  # NumPy, float64
    out["bayes"] += int(np.sum(np.asarray(decide(zb, big)) != oracle))
    unit_risk = pb @ np.asarray(big_unit.dense(), np.float64)
    picked = unit_risk[np.arange(32), np.asarray(decide(zbs, big_unit))]
    out["bayes"] += int(np.sum(picked > unit_risk.min(-1) * (1 + 1e-6)))
    print(json.dumps(out))
""")


@pytest.mark.slow
def test_sharded_batches_match_single_device():
  flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=flags)
  res = subprocess.run([sys.executable, "-c", _SHARDED], capture_output=True, text=True,
                       env=env, timeout=300, check=False)
  assert res.returncode == 0, res.stderr[-3000:]
  report = json.loads(res.stdout.strip().splitlines()[-1])
  assert set(report) == {"tree", "tree_unit", "emb", "ord", "bayes"}
  for name, err in report.items():
    assert err < 1e-5, (name, err)


def test_tree_max_cost_below_a_long_trunk():
  # Classes 0 and 1 under node 2, which hangs from the root 3 by a long edge:
  # the largest cost is far below the classes' depth for lca_height.
  parents = np.array([2, 2, 3, -1])
  w = np.array([1.0, 2.0, 5.0, 0.0], np.float32)
  for kind, expect in [("path_length", 3.0), ("lca_height", 7.0 - 5.0)]:
    tree = cj.TreeCost(parents, 2, kind=kind, edge_weights=w)
    np.testing.assert_allclose(tree.max_cost(), expect)
    np.testing.assert_allclose(tree.dense(), tree_oracle_dense(parents, w, 2, kind))


# --------------------------------------------------------------------------- #
# The public conformance suite (costjax.testing).
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("name", STRUCTURES + ["dense_asymmetric"])
def test_builtin_structures_pass_the_conformance_suite(name):
  from costjax.testing import check_cost_structure_conformance
  from tests._dense_structure import DenseStructure

  if name == "dense_asymmetric":  # only the required operations, symmetric = False
    c = np.random.default_rng(0).uniform(0, 3, (K, K)).astype(np.float32)
    check_cost_structure_conformance(DenseStructure(c))
  else:
    check_cost_structure_conformance(make_structure(name))


def test_soft_labels_of_a_structure_with_a_nonzero_diagonal_match_the_dense_matrix():
  """A structure need not have a zero diagonal: with every cost in the thousands (the row
  minimum over 87 T) the soft targets and the loss are still the dense matrix's, not
  0 / 0. A structure that declares ``zero_diagonal`` gets the same values."""
  from tests._dense_structure import DenseStructure

  rng = np.random.default_rng(3)
  c = rng.uniform(1000, 3000, (K, K)).astype(np.float32)
  logits = jnp.asarray(rng.normal(size=(4, K)), jnp.float32)
  labels = jnp.asarray([0, 1, 2, K - 1])
  probs = jnp.asarray(rng.dirichlet(np.ones(K), 4), jnp.float32)
  for t in (1.0, 300.0):
    want = scipy.special.softmax(-c.astype(np.float64) / t, axis=-1)[np.asarray(labels)]
    np.testing.assert_allclose(cj.cost_soft_labels(labels, DenseStructure(c), temperature=t),
                               want, rtol=1e-5, atol=1e-30)
    for lab in (labels, probs):
      got = cj.soft_label_cross_entropy(logits, lab, DenseStructure(c), temperature=t)
      dense = cj.soft_label_cross_entropy(logits, lab, jnp.asarray(c), temperature=t)
      assert np.isfinite(np.asarray(got)).all()
      np.testing.assert_allclose(got, dense, rtol=1e-5)
  c0 = c.copy()
  np.fill_diagonal(c0, 0.0)

  @jax.tree_util.register_pytree_node_class
  class ZeroDiagonal(DenseStructure):
    zero_diagonal = True

  for t in (1.0, 300.0):
    want = scipy.special.softmax(-c0.astype(np.float64) / t, axis=-1)[np.asarray(labels)]
    np.testing.assert_allclose(cj.cost_soft_labels(labels, ZeroDiagonal(c0), temperature=t),
                               want, rtol=1e-5, atol=1e-30)
    np.testing.assert_allclose(
        cj.soft_label_cross_entropy(logits, labels, ZeroDiagonal(c0), temperature=t),
        cj.soft_label_cross_entropy(logits, labels, jnp.asarray(c0), temperature=t), rtol=1e-5)


def test_conformance_suite_honours_its_tolerances():
  """A structure whose operations are off by a relative 1e-4 (a float16 table, say) on costs
  in the thousands: over the default tolerances, within ``rtol=1e-3``."""
  from costjax.testing import check_cost_structure_conformance
  from tests._dense_structure import DenseStructure

  @jax.tree_util.register_pytree_node_class
  class Rounded(DenseStructure):
    def rows(self, idx):
      return super().rows(idx) * (1 + 1e-4)

    def vecmat(self, v):
      return super().vecmat(v) * (1 + 1e-4)

  c = np.random.default_rng(2).uniform(1000, 3000, (K, K)).astype(np.float32)
  with pytest.raises(AssertionError, match=r"^rows: differs"):
    check_cost_structure_conformance(Rounded(c))
  check_cost_structure_conformance(Rounded(c), rtol=1e-3)


def test_conformance_suite_catches_a_broken_structure():
  from costjax.testing import check_cost_structure_conformance
  from tests._dense_structure import DenseStructure

  c = np.random.default_rng(1).uniform(0, 3, (K, K)).astype(np.float32)

  class Unregistered(DenseStructure):  # a subclass is not a pytree by inheritance
    pass

  with pytest.raises(AssertionError, match="not a registered pytree"):
    check_cost_structure_conformance(Unregistered(c))

  @jax.tree_util.register_pytree_node_class
  class ClaimsSymmetric(DenseStructure):
    symmetric = True

  with pytest.raises(AssertionError, match="symmetric is True"):
    check_cost_structure_conformance(ClaimsSymmetric(c))

  @jax.tree_util.register_pytree_node_class
  class WrongBlock(DenseStructure):
    def row_block(self, idx, cols):  # reads C[cols, idx]: rows and columns swapped
      return jnp.moveaxis(jnp.take(self.matrix, cols, axis=0)[:, idx], 0, -1)

  with pytest.raises(AssertionError, match="row_block"):
    check_cost_structure_conformance(WrongBlock(c))

  @jax.tree_util.register_pytree_node_class
  class TransposedRows(DenseStructure):
    def rows(self, idx):  # the columns of C
      return jnp.take(self.matrix.T, jnp.minimum(idx, self.num_classes - 1), axis=0)

  with pytest.raises(AssertionError, match=r"^rows: differs from the dense matrix by up to"):
    check_cost_structure_conformance(TransposedRows(c))

  @jax.tree_util.register_pytree_node_class
  class TransposedVecmat(DenseStructure):
    def vecmat(self, v):  # v @ C.T
      return v @ self.matrix.T

  with pytest.raises(AssertionError, match=r"^vecmat: differs from the dense matrix by up to"):
    check_cost_structure_conformance(TransposedVecmat(c))

  @jax.tree_util.register_pytree_node_class
  class ClaimsZeroDiagonal(DenseStructure):
    zero_diagonal = True

  with pytest.raises(AssertionError, match="zero_diagonal is True"):
    check_cost_structure_conformance(ClaimsZeroDiagonal(c + 1.0))
  with pytest.raises(TypeError, match="expects a CostStructure"):
    check_cost_structure_conformance(c)
