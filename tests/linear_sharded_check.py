"""Run in a subprocess with 8 forced host devices (see test_linear.py).

Each loss from features, value and gradients with respect to features, weights and
bias, with the batch sharded over devices and the classifier weights sharded over
classes (vocabulary-parallel): on one 8-device axis used for both, and on a 2 x 4
(data, model) mesh. Prints the maximum deviation from one device per case.
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
  rng = np.random.default_rng(0)
  b, d, k = 32, 8, 64
  h = rng.normal(size=(b, d)).astype(np.float32)
  w = rng.normal(size=(d, k)).astype(np.float32)
  bias = rng.normal(size=(k,)).astype(np.float32)
  y = rng.integers(0, k, b).astype(np.int32)
  cost = cj.OrdinalCost(k)
  losses = {
      "ce": lambda h, w, b, y: cj.linear_cross_entropy(h, w, y, bias=b, block_size=6),
      "ec": lambda h, w, b, y: cj.linear_expected_cost(h, w, y, cost, bias=b, block_size=6),
      "crce": lambda h, w, b, y: cj.linear_cost_regularized_cross_entropy(
          h, w, y, cost, lam=0.5, bias=b, block_size=6),
      "sl": lambda h, w, b, y: cj.linear_soft_label_cross_entropy(
          h, w, y, cost, temperature=2.0, bias=b, block_size=6),
  }
  meshes = {
      "batch+classes": (jax.make_mesh((8,), ("x",)), "x", "x"),
      "2x4 mesh": (jax.make_mesh((2, 4), ("data", "model")), "data", "model"),
  }
  def value_and_grads(f):  # mean loss, per-example losses and the three gradients
    return jax.jit(jax.value_and_grad(
        lambda h, w, b, y: (jnp.mean(out := f(h, w, b, y)), out), argnums=(0, 1, 2),
        has_aux=True))

  # The one-device reference, computed once per loss (not once per mesh).
  single = {name: value_and_grads(f)(h, w, bias, y) for name, f in losses.items()}
  report = {}
  for mesh_name, (mesh, batch_axis, class_axis) in meshes.items():
    hs = jax.device_put(h, NamedSharding(mesh, P(batch_axis, None)))
    ys = jax.device_put(y, NamedSharding(mesh, P(batch_axis)))
    ws = jax.device_put(w, NamedSharding(mesh, P(None, class_axis)))
    bs = jax.device_put(bias, NamedSharding(mesh, P(class_axis)))
    for name, f in losses.items():
      (v1, per1), g1 = single[name]
      with jax.set_mesh(mesh):
        (v8, per8), g8 = value_and_grads(f)(hs, ws, bs, ys)
      dev = [float(jnp.abs(v1 - v8)), float(jnp.max(jnp.abs(np.asarray(per8) - per1)))]
      dev += [float(jnp.max(jnp.abs(a - np.asarray(c)))) for a, c in zip(g1, g8, strict=True)]
      # Features and labels closed over as constants, gradient for the weights only.
      with jax.set_mesh(mesh):
        gw = jax.jit(jax.grad(lambda w, f=f, hs=hs, bs=bs, ys=ys: jnp.mean(f(hs, w, bs, ys))))(ws)
      dev.append(float(jnp.max(jnp.abs(np.asarray(gw) - g1[1]))))
      report[f"{name} {mesh_name}"] = max(dev)
  print(json.dumps(report))


if __name__ == "__main__":
  main()
