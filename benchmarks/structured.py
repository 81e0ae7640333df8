"""Structured costs (TreeCost, OrdinalCost, EmbeddingCost) at huge K: time and memory.

(a) ``K = 100,000``, ``B = 256``: jitted value-and-grad (w.r.t. the logits) of each
    loss with each structure, and the forward Bayes decision, against optax's
    integer-label cross-entropy value-and-grad at the same ``(B, K)``. Candidates
    are interleaved round by round and each one's minimum over the rounds is
    divided by optax's minimum. Goals: tree and ordinal <= 3x, embeddings
    (``D = 64``) <= 5x. Plus the peak resident memory (``ru_maxrss``) of a fresh
    process that builds a ``K = 100,000`` TreeCost and runs an expected-cost
    training step and Bayes decisions (goal < 6 GB).
(b) ``K = 10,000``: Bayes decisions with a TreeCost vs with its dense ``(K, K)``
    matrix: time (interleaved minimum) and memory (the compiled program's
    argument + temporary bytes from ``memory_analysis()``; also without the logits,
    which both read, and the bytes of the cost itself). Goal: structured >= 10x
    faster and >= 100x less memory.

The tree is a synthetic 7-level taxonomy (iNaturalist-like: 3 kingdoms ... 100,000
species as leaves, classes numbered in tree order), with random edge weights in
(a), plus one ``lca_height`` tree with unit weights (the default), whose decisions
skip the depth sort; (b) uses unit weights. Structures, labels and logits are
jit arguments (no constant folding).

  python benchmarks/structured.py                 # full run
  python benchmarks/structured.py --quick         # smoke run (K = 2,000 / 500)
  python benchmarks/structured.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import costjax as cj


def taxonomy(num_classes: int, rng: np.random.Generator, levels: int = 7,
             smallest: int = 3) -> np.ndarray:
  """Parents of a random taxonomy: leaves 0..K-1 (the classes) under ``levels`` levels.

  Below the root, level sizes grow geometrically from ``smallest`` to ``K``; each node
  of a level has at least one child. Also used by ``linear.py``.
  """
  sizes = np.unique(np.geomspace(smallest, num_classes, levels).astype(int))
  sizes = [1, *sizes[:-1].tolist(), num_classes]
  k = num_classes
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


def structures(k: int, rng: np.random.Generator) -> dict:
  parents = taxonomy(k, rng)
  w = rng.uniform(0.5, 2.0, parents.shape[0]).astype(np.float32)
  return {
      "TreeCost path_length": (cj.TreeCost(parents, k, edge_weights=w), 3.0),
      "TreeCost lca_height": (cj.TreeCost(parents, k, kind="lca_height", edge_weights=w), 3.0),
      # Unit edge weights: class depths are one value per level (no sort).
      "TreeCost lca_height, unit weights": (cj.TreeCost(parents, k, kind="lca_height"), 3.0),
      "OrdinalCost power=1": (cj.OrdinalCost(k), 3.0),
      "OrdinalCost power=2": (cj.OrdinalCost(k, power=2), 3.0),
      "EmbeddingCost D=64": (
          cj.EmbeddingCost(rng.normal(size=(k, 64)).astype(np.float32) / 8), 5.0),
  }


def _vg(f):
  return jax.jit(jax.value_and_grad(lambda z, y, c: jnp.mean(f(z, y, c))))


FUNCTIONS = {
    "expected_cost": _vg(cj.expected_cost),
    "cost_regularized_cross_entropy": _vg(cj.cost_regularized_cross_entropy),
    "soft_label_cross_entropy": _vg(
        lambda z, y, c: cj.soft_label_cross_entropy(z, y, c, temperature=2.0)),
    "class_distance_weighted_cross_entropy": _vg(cj.class_distance_weighted_cross_entropy),
    "bayes_decision (forward)": jax.jit(lambda z, y, c: cj.bayes_decision(z, c)),
}


def interleaved_min(fns: dict, args: dict, rounds: int) -> dict:
  for name, f in fns.items():
    jax.block_until_ready(f(*args[name]))
  best = dict.fromkeys(fns, float("inf"))
  for _ in range(rounds):
    for name, f in fns.items():
      t = time.perf_counter()
      jax.block_until_ready(f(*args[name]))
      best[name] = min(best[name], time.perf_counter() - t)
  return best


def part_a(k: int, b: int, rounds: int) -> list[dict]:
  rng = np.random.default_rng(0)
  z = jnp.asarray(rng.normal(size=(b, k)), jnp.float32)
  y = jnp.asarray(rng.integers(0, k, b), jnp.int32)
  ce = jax.jit(jax.value_and_grad(
      lambda z, y: jnp.mean(optax.softmax_cross_entropy_with_integer_labels(z, y))))
  rows = []
  for sname, (cost, goal) in structures(k, rng).items():
    fns = {"optax": ce, **{f"{sname} | {n}": f for n, f in FUNCTIONS.items()}}
    args = {n: ((z, y) if n == "optax" else (z, y, cost)) for n in fns}
    best = interleaved_min(fns, args, rounds)
    for name, t in best.items():
      if name == "optax":
        continue
      ratio = t / best["optax"]
      rows.append({"structure": sname, "function": name.split(" | ")[1], "seconds": t,
                   "optax_seconds": best["optax"], "ratio": ratio, "goal": goal})
      print(f"  {name:70s} {t * 1e3:8.1f} ms  {ratio:5.2f}x optax CE  (goal <= {goal}x)"
            f"{'' if ratio <= goal else '  MISSED'}", flush=True)
  return rows


_MEMORY_CHILD = """
import resource, sys, numpy as np, jax, jax.numpy as jnp
sys.path.insert(0, {root!r})
from benchmarks.structured import taxonomy
import costjax as cj
k, b, mode = {k}, {b}, {mode!r}
rng = np.random.default_rng(0)
parents = taxonomy(k, rng)
z = jnp.asarray(rng.normal(size=(b, k)), jnp.float32)
y = jnp.asarray(rng.integers(0, k, b), jnp.int32)
tree = cj.TreeCost(parents, k, kind="lca_height")
if mode == "train":
  step = jax.jit(jax.value_and_grad(lambda z, y, c: cj.expected_cost(z, y, c).mean()))
  jax.block_until_ready(step(z, y, tree))
  jax.block_until_ready(jax.jit(cj.bayes_decision)(z, tree))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def child_maxrss(k: int, b: int, mode: str) -> int:
  import os
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  code = _MEMORY_CHILD.format(root=root, k=k, b=b, mode=mode)
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       check=True, timeout=1800)
  return int(out.stdout.strip().splitlines()[-1])


def compiled_bytes(fn, *args) -> int:
  m = jax.jit(fn).lower(*args).compile().memory_analysis()
  return int(m.argument_size_in_bytes + m.temp_size_in_bytes)


def part_b(k: int, b: int, rounds: int, kind: str) -> dict:
  rng = np.random.default_rng(1)
  tree = cj.TreeCost(taxonomy(k, rng), k, kind=kind)
  dense = tree.dense()
  z = jnp.asarray(rng.normal(size=(b, k)), jnp.float32)
  decide = jax.jit(cj.bayes_decision)
  best = interleaved_min({"structured": decide, "dense": decide},
                         {"structured": (z, tree), "dense": (z, dense)}, rounds)
  mem_s = compiled_bytes(cj.bayes_decision, z, tree)
  mem_d = compiled_bytes(cj.bayes_decision, z, dense)
  cost_s = sum(x.nbytes for x in jax.tree.leaves(tree)) + tree.parents.nbytes
  cost_d = dense.nbytes
  res = {
      "K": k, "B": b, "kind": kind,
      "time_structured_s": best["structured"], "time_dense_s": best["dense"],
      "speedup": best["dense"] / best["structured"],
      "compiled_bytes_structured": mem_s, "compiled_bytes_dense": mem_d,
      "compiled_memory_ratio": mem_d / mem_s,
      "beyond_logits_ratio": (mem_d - z.nbytes) / (mem_s - z.nbytes),
      "cost_bytes_structured": cost_s, "cost_bytes_dense": cost_d,
      "agree": float(jnp.mean(decide(z, tree) == decide(z, dense))),
  }
  print(f"  Bayes decisions, TreeCost {kind}, K={k}, B={b}: structured "
        f"{best['structured'] * 1e3:.1f} ms, dense {best['dense'] * 1e3:.1f} ms -> "
        f"{res['speedup']:.1f}x faster (goal >= 10x)")
  print(f"  compiled argument+temp bytes: structured {mem_s / 2**20:.1f} MiB, dense "
        f"{mem_d / 2**20:.1f} MiB -> {res['compiled_memory_ratio']:.0f}x less (goal >= 100x)")
  print(f"  the same without the {z.nbytes / 2**20:.1f} MiB of logits both read: "
        f"{res['beyond_logits_ratio']:.0f}x less; the cost itself: {cost_s / 2**10:.0f} KiB "
        f"(edge weights + parents) vs {cost_d / 2**20:.0f} MiB")
  print(f"  decisions agree on {res['agree']:.1%} of examples")
  return res


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--quick", action="store_true",
                  help="smoke run: K = 2,000 in (a), 500 in (b), B = 64")
  ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds per comparison")
  ap.add_argument("--json", default=None, help="also write the results to this file")
  args = ap.parse_args()
  ka, kb, b = (2000, 500, 64) if args.quick else (100_000, 10_000, 256)
  print(f"{platform.processor() or platform.machine()}, {jax.devices()[0].device_kind}, "
        f"jax {jax.__version__}")
  print(f"(a) K={ka}, B={b}: value-and-grad time vs optax CE value-and-grad")
  rows = part_a(ka, b, args.rounds)
  rss = child_maxrss(ka, b, "train")
  print(f"  peak process memory, TreeCost K={ka} training step + decisions: "
        f"{rss / 2**30:.2f} GiB (goal < 6 GB)")
  print(f"(b) K={kb}: structured vs dense")
  res_b = [part_b(kb, b, args.rounds, kind) for kind in ("path_length", "lca_height")]
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"a": rows, "a_maxrss": rss, "b": res_b,
                 "machine": platform.platform(), "jax": jax.__version__}, f, indent=1)


if __name__ == "__main__":
  main()
