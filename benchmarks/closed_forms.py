"""Closed-form costjax losses vs optax cross-entropy: jitted value_and_grad time.

For each (B, K) it times ``jax.jit(jax.value_and_grad(mean loss))`` of every
closed-form loss and of ``optax.softmax_cross_entropy_with_integer_labels``
in the same process, interleaving the candidates round by round so that
machine noise hits all of them alike, and prints the median time of each
divided by optax's. Goal (issue 2): every ratio <= 1.3.

  python benchmarks/closed_forms.py            # B=4096, K=100 and K=1000
  python benchmarks/closed_forms.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import costjax as cj

CANDIDATES = {
    "optax CE (integer labels)": lambda z, y, c, q: optax.softmax_cross_entropy_with_integer_labels(
        z, y
    ),
    "expected_cost": lambda z, y, c, q: cj.expected_cost(z, y, c),
    "cost_regularized_cross_entropy": lambda z, y, c, q: cj.cost_regularized_cross_entropy(
        z, y, c
    ),
    "soft_label_cross_entropy": lambda z, y, c, q: cj.soft_label_cross_entropy(z, y, c),
    "class_distance_weighted_cross_entropy": (
        lambda z, y, c, q: cj.class_distance_weighted_cross_entropy(z, y, c)
    ),
    "ordinal_emd (power=1)": lambda z, y, c, q: cj.ordinal_emd(z, y),
    "ordinal_emd (power=2)": lambda z, y, c, q: cj.ordinal_emd(z, y, power=2),
    "expected_cost, probability labels": lambda z, y, c, q: cj.expected_cost(z, q, c),
}


def bench(batch, num_classes, rounds, inner):
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(batch, num_classes)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, num_classes, batch), jnp.int32)
  cost = jnp.asarray(rng.uniform(0, 10, (num_classes, num_classes)), jnp.float32)
  soft = jax.nn.softmax(jnp.asarray(rng.normal(size=(batch, num_classes)), jnp.float32))
  # Everything is a jit argument: a cost matrix or targets closed over as constants would
  # let XLA constant-fold work (e.g. soft @ C) and flatter the numbers.
  args = (logits, labels, cost, soft)
  fns = {
      name: jax.jit(jax.value_and_grad(lambda z, y, c, q, f=f: jnp.mean(f(z, y, c, q))))
      for name, f in CANDIDATES.items()
  }
  for f in fns.values():  # compile and warm up
    jax.block_until_ready(f(*args))
  times = {name: [] for name in fns}
  for _ in range(rounds):
    for name, f in fns.items():
      start = time.perf_counter()
      for _ in range(inner):
        out = f(*args)
      jax.block_until_ready(out)
      times[name].append((time.perf_counter() - start) / inner)
  return {name: statistics.median(t) for name, t in times.items()}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="tiny sizes, few repetitions")
  parser.add_argument("--rounds", type=int, default=15)
  args = parser.parse_args()
  sizes = [(256, 10), (256, 100)] if args.quick else [(4096, 100), (4096, 1000)]
  rounds = 3 if args.quick else args.rounds
  cpu = platform.processor() or platform.machine()
  print(f"jax {jax.__version__}, optax {optax.__version__}, backend {jax.default_backend()}, "
        f"{jax.device_count()} device(s): {jax.devices()[0].device_kind} ({cpu})")
  results = {}
  for batch, k in sizes:
    results[(batch, k)] = bench(batch, k, rounds, inner=5 if k >= 1000 else 20)
  names = list(next(iter(results.values())))
  header = "| loss | " + " | ".join(f"B={b}, K={k}: ms (ratio)" for b, k in results) + " |"
  print(header)
  print("|---" * (1 + len(results)) + "|")
  worst = 0.0
  for name in names:
    cells = []
    for r in results.values():
      base = r["optax CE (integer labels)"]
      ratio = r[name] / base
      if not name.startswith("optax"):
        worst = max(worst, ratio)
      cells.append(f"{1e3 * r[name]:.3f} ({ratio:.2f}x)")
    print(f"| {name} | " + " | ".join(cells) + " |")
  print(f"\nworst ratio vs optax CE: {worst:.2f} (goal <= 1.3)")


if __name__ == "__main__":
  main()
