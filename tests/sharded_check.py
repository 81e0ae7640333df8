"""Run in a subprocess with 8 forced host devices (see test_sharding.py).

Computes every closed-form loss, its gradient, Bayes decisions and mean cost on
a batch sharded over a ``data`` mesh axis, also with per-example cost matrices
sharded with the batch, and prints the maximum deviation from the same
computation on one device.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import costjax as cj


def main():
  assert jax.device_count() == 8, jax.devices()
  mesh = jax.make_mesh((8,), ("data",))
  rng = np.random.default_rng(0)
  B, K = 64, 6
  logits = rng.normal(size=(B, K)).astype(np.float32)
  labels = rng.integers(0, K, B).astype(np.int32)
  cost = rng.uniform(0, 5, (K, K)).astype(np.float32)
  np.fill_diagonal(cost, 0)

  losses = {
      "expected_cost": lambda z, y: cj.expected_cost(z, y, cost),
      "cost_regularized_cross_entropy": lambda z, y: cj.cost_regularized_cross_entropy(z, y, cost),
      "soft_label_cross_entropy": lambda z, y: cj.soft_label_cross_entropy(z, y, cost),
      "cdw_ce": lambda z, y: cj.class_distance_weighted_cross_entropy(z, y, cost),
      "ordinal_emd": lambda z, y: cj.ordinal_emd(z, y),
  }

  row = NamedSharding(mesh, P("data"))
  z_sharded = jax.device_put(logits, NamedSharding(mesh, P("data", None)))
  y_sharded = jax.device_put(labels, row)
  assert len(z_sharded.sharding.device_set) == 8

  report = {}
  for name, f in losses.items():
    # The per-example losses come out as the gradient program's aux: one compile per layout.
    step = jax.jit(jax.value_and_grad(lambda z, y, f=f: ((out := f(z, y)).mean(), out),
                                      has_aux=True))
    (v1, per1), g1 = step(logits, labels)  # one device (committed to device 0 by default)
    (v8, per_example), g8 = step(z_sharded, y_sharded)
    assert len(per_example.sharding.device_set) == 8, per_example.sharding
    report[name] = max(
        float(jnp.abs(v1 - v8)),
        float(jnp.max(jnp.abs(g1 - g8))),
        float(jnp.max(jnp.abs(per_example - per1))),
    )
  decisions = jax.jit(cj.bayes_decision)(z_sharded, cost)
  single = np.asarray(cj.bayes_decision(logits, cost))
  report["bayes_decision"] = int(np.sum(np.asarray(decisions) != single))
  sharded_cost = jax.jit(cj.mean_cost)(decisions, y_sharded, cost)
  report["mean_cost"] = float(abs(sharded_cost - cj.mean_cost(single, labels, cost)))
  kappa = jax.jit(cj.quadratic_weighted_kappa, static_argnames="num_classes")
  report["quadratic_weighted_kappa"] = float(
      abs(kappa(decisions, y_sharded, num_classes=K) - kappa(single, labels, num_classes=K))
  )
  # Per-example cost matrices (issue 23), sharded with the batch.
  stack = rng.uniform(0, 5, (B, K, K)).astype(np.float32)  # non-zero diagonal
  c_sharded = jax.device_put(stack, NamedSharding(mesh, P("data", None, None)))
  probs = rng.dirichlet(np.ones(K), B).astype(np.float32)
  q_sharded = jax.device_put(probs, NamedSharding(mesh, P("data", None)))
  abstain = rng.uniform(0.5, 3.0, B).astype(np.float32)
  a_sharded = jax.device_put(abstain, row)
  per_example_losses = {
      "per_example expected_cost": cj.expected_cost,
      "per_example soft_label_cross_entropy": cj.soft_label_cross_entropy,
      "per_example cdw_ce": cj.class_distance_weighted_cross_entropy,
  }
  for name, f in per_example_losses.items():
    kinds = (("", labels, y_sharded), (" probs", probs, q_sharded))
    for kind, y1, y8 in kinds if name == "per_example expected_cost" else kinds[:1]:
      step = jax.jit(jax.value_and_grad(lambda z, y, c, f=f: ((out := f(z, y, c)).mean(), out),
                                        argnums=(0, 2), has_aux=True))
      (v1, per1), (gz1, gc1) = step(logits, y1, stack)
      (v8, per_example), (gz8, gc8) = step(z_sharded, y8, c_sharded)
      assert len(per_example.sharding.device_set) == 8, per_example.sharding
      report[name + kind] = max(
          float(jnp.abs(v1 - v8)),
          float(jnp.max(jnp.abs(gz1 - gz8))),
          float(jnp.max(jnp.abs(gc1 - gc8))),
          float(jnp.max(jnp.abs(per_example - per1))),
      )
  bayes = jax.jit(lambda z, c, a: cj.bayes_decision(z, c, abstain_cost=a))
  decisions = bayes(z_sharded, c_sharded, a_sharded)
  single = np.asarray(bayes(logits, stack, abstain))
  assert (single == -1).any()
  report["per_example bayes_decision"] = int(np.sum(np.asarray(decisions) != single))
  mean = jax.jit(lambda p, y, c, a: cj.mean_cost(p, y, c, abstain_cost=a))
  report["per_example mean_cost"] = float(abs(
      mean(decisions, y_sharded, c_sharded, a_sharded) - mean(single, labels, stack, abstain)))
  savings = jax.jit(lambda p, y, c, a: cj.savings_score(p, y, c, abstain_cost=a))
  report["per_example savings_score"] = float(abs(
      savings(decisions, y_sharded, c_sharded, a_sharded)
      - savings(single, labels, stack, abstain)))
  calibrate = jax.jit(lambda z, y, c: cj.calibrate_cost_sets(z, y, c, alpha=1.0))
  threshold = calibrate(logits, labels, stack)
  assert 0 < float(threshold) < np.inf, threshold
  report["per_example calibrate_cost_sets"] = float(abs(
      calibrate(z_sharded, y_sharded, c_sharded) - threshold))
  report.update(explicit_mesh_checks(mesh))
  print(json.dumps(report))


def explicit_mesh_checks(mesh):
  """Under ``jax.set_mesh`` (explicit axes): tree passes and Sinkhorn equal one device.

  Probability labels take TreeCost's top-down passes (depth >= 2), integer ones
  its large-tree LCA pass (forced by a zero table limit); tree_wasserstein's
  scatter and the Sinkhorn loop state also build arrays that must be sharded
  like the batch. One program for all, compiled once per layout.
  """
  rng = np.random.default_rng(1)
  B, K = 8, 5
  logits = rng.normal(size=(B, K)).astype(np.float32)
  probs = rng.dirichlet(np.ones(K), B).astype(np.float32)
  labels = rng.integers(0, K, B).astype(np.int32)
  parents = [5, 5, 6, 6, 8, 7, 7, 8, -1]  # depth 3: classes 0-3 two levels below the root
  weights = rng.uniform(0.5, 2.0, 9).astype(np.float32)
  tree = cj.TreeCost(parents, K, edge_weights=weights)
  dense = np.asarray(tree.dense())

  @jax.jit
  def outputs(z, q, y):
    return {
        "mesh tree expected_cost probs": cj.expected_cost(z, q, tree),
        "mesh tree bayes_decision": cj.bayes_decision(z, tree),
        "mesh tree expected_cost levels": cj.expected_cost(z, y, tree),
        "mesh tree_wasserstein probs": cj.tree_wasserstein(z, q, parents, edge_weights=weights),
        "mesh sinkhorn_loss probs": cj.sinkhorn_loss(z, q, dense, epsilon=0.1),
    }

  table = cj._structures.tree._MAX_ANCESTOR_TABLE
  cj._structures.tree._MAX_ANCESTOR_TABLE = 0  # integer rows by the top-down pass
  single = outputs(logits, probs, labels)
  with jax.set_mesh(mesh):
    sharded = outputs(jax.device_put(logits, P("data", None)),
                      jax.device_put(probs, P("data", None)), jax.device_put(labels, P("data")))
  cj._structures.tree._MAX_ANCESTOR_TABLE = table
  report = {}
  for name, out in sharded.items():
    assert len(out.sharding.device_set) == 8, (name, out.sharding)
    report[name] = float(np.max(np.abs(np.asarray(out, np.float32) - np.asarray(single[name]))))
  return report


if __name__ == "__main__":
  main()
