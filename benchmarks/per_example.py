"""Per-example cost matrices vs one shared matrix (issue 23).

Times jitted ``cj.expected_cost`` (value, and value-and-grad of the mean) and
``cj.bayes_decision`` with a ``(B, K, K)`` stack of per-example matrices against
the same functions with one shared ``(K, K)`` matrix, at B = 4096, K = 10 by
default. The two run side by side, interleaved round by round; each one's
minimum over rounds is reported with their ratio. Goal: per-example at most
1.5x the shared time for ``expected_cost`` and ``bayes_decision``.

  python benchmarks/per_example.py             # B = 4096, K = 10
  python benchmarks/per_example.py --quick     # a smoke run
  python benchmarks/per_example.py --batch 65536 --classes 10
"""

from __future__ import annotations

import argparse
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

import costjax as cj


def _time_pair(f, args_shared, args_per, rounds, inner):
  """Interleaved minima (seconds per call) of ``f(*args_shared)`` and ``f(*args_per)``."""
  for a in (args_shared, args_per):
    jax.block_until_ready(f(*a))  # compile and warm up
  best = [float("inf"), float("inf")]
  for _ in range(rounds):
    for m, a in enumerate((args_shared, args_per)):
      start = time.perf_counter()
      for _ in range(inner):
        out = f(*a)
      jax.block_until_ready(out)
      best[m] = min(best[m], (time.perf_counter() - start) / inner)
  return best


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="few rounds")
  parser.add_argument("--batch", type=int, default=4096)
  parser.add_argument("--classes", type=int, default=10)
  parser.add_argument("--rounds", type=int, default=30)
  parser.add_argument("--inner", type=int, default=20, help="calls per timed round")
  args = parser.parse_args()
  rounds = 5 if args.quick else args.rounds
  b, k = args.batch, args.classes
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(b, k)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, k, b), jnp.int32)
  probs = jax.nn.softmax(jnp.asarray(rng.normal(size=(b, k)), jnp.float32))
  shared = jnp.asarray(rng.uniform(0, 5, (k, k)), jnp.float32)
  per = jnp.asarray(rng.uniform(0, 5, (b, k, k)), jnp.float32)
  abstain = jnp.asarray(rng.uniform(0.5, 2.0, b), jnp.float32)

  cases = [
      ("expected_cost, integer labels", jax.jit(cj.expected_cost), (logits, labels)),
      ("expected_cost, probability labels", jax.jit(cj.expected_cost), (logits, probs)),
      ("expected_cost value-and-grad (mean)",
       jax.jit(jax.value_and_grad(lambda z, y, c: cj.expected_cost(z, y, c).mean())),
       (logits, labels)),
      ("bayes_decision", jax.jit(lambda z, c: cj.bayes_decision(z, c)), (logits,)),
      ("bayes_decision, per-example abstain_cost",
       jax.jit(lambda z, c, a: cj.bayes_decision(z, c, abstain_cost=a)), (logits,)),
  ]
  cpu = platform.processor() or platform.machine()
  print(f"jax {jax.__version__}, backend {jax.default_backend()}, "
        f"{jax.device_count()} device(s): {jax.devices()[0].device_kind} ({cpu}); "
        f"B = {b}, K = {k}, {rounds} interleaved rounds of {args.inner} calls")
  print("| function | shared (K, K) (us) | per-example (B, K, K) (us) | ratio |")
  print("|---|---:|---:|---:|")
  for name, f, head in cases:
    if "abstain" in name:
      a_shared, a_per = (*head, shared, abstain), (*head, per, abstain)
    else:
      a_shared, a_per = (*head, shared), (*head, per)
    t_shared, t_per = _time_pair(f, a_shared, a_per, rounds, args.inner)
    print(f"| {name} | {1e6 * t_shared:.1f} | {1e6 * t_per:.1f} | "
          f"{t_per / t_shared:.2f} |")


if __name__ == "__main__":
  main()
