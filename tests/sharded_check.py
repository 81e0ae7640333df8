"""Run in a subprocess with 8 forced host devices (see test_sharding.py).

Computes every closed-form loss, its gradient, Bayes decisions and mean cost on
a batch sharded over a ``data`` mesh axis, and prints the maximum deviation
from the same computation on one device.
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
    step = jax.jit(jax.value_and_grad(lambda z, y, f=f: f(z, y).mean()))
    v1, g1 = step(logits, labels)  # one device (committed to device 0 by default)
    v8, g8 = step(z_sharded, y_sharded)
    per_example = jax.jit(f)(z_sharded, y_sharded)
    assert len(per_example.sharding.device_set) == 8, per_example.sharding
    report[name] = max(
        float(jnp.abs(v1 - v8)),
        float(jnp.max(jnp.abs(g1 - g8))),
        float(jnp.max(jnp.abs(per_example - f(logits, labels)))),
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
  print(json.dumps(report))


if __name__ == "__main__":
  main()
