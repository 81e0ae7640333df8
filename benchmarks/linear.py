"""Losses from features (blockwise over classes) against the materialized composition.

For each loss, ``jax.value_and_grad`` of the mean loss with respect to
``(features, weights, bias)``, jitted, against the same loss applied to
``features @ weights + bias`` (optax's integer-label cross-entropy, or the costjax
loss on the logits):

(a) memory: the compiled program's temporary bytes (``memory_analysis()``; compile
    only, nothing runs) at ``B = 2048, D = 512, K = 131,072``, float32. Goal: the
    blockwise ``linear_cross_entropy`` at most 5% of the materialized one;
(b) memory at a ``K`` where the materialized program needs more than 20 GB of
    temporaries while the blockwise one needs little (compile only);
(c) time: interleaved rounds, each candidate's minimum, at a smaller size (default
    ``B = 1024, D = 256, K = 32,768``) and optionally at the full size
    (``--full-time``: about 1 TFLOP per step on CPU, so only a round or two).
    Goals: ``linear_cross_entropy`` at most 1.3x the materialized composition; each
    cost-aware function at most 1.5x ``linear_cross_entropy`` with ``OrdinalCost``
    and ``TreeCost``;
(d) ``--blocks``: time of ``linear_cross_entropy`` per block size (the default's
    measurement).

  python benchmarks/linear.py                    # (a), (b), (c) at the small size
  python benchmarks/linear.py --full-time        # also (c) at the full size
  python benchmarks/linear.py --quick            # smoke run, small sizes
  python benchmarks/linear.py --blocks 1024 2048 4096 8192
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from structured import taxonomy  # the sibling benchmark's tree (run as a script)

import costjax as cj


def losses(k: int, rng: np.random.Generator, block: int | None) -> dict:
  """name -> (blockwise loss, materialized loss), both ``f(h, w, b, y)``."""
  # A random 4-level taxonomy with the classes as leaves (classes in tree order).
  tree = cj.TreeCost(taxonomy(k, rng, levels=4, smallest=8), k)
  ordinal = cj.OrdinalCost(k)
  kw = {"block_size": block}
  out = {
      "cross_entropy": (
          lambda h, w, b, y: cj.linear_cross_entropy(h, w, y, bias=b, **kw),
          lambda h, w, b, y: optax.softmax_cross_entropy_with_integer_labels(h @ w + b, y),
      ),
  }
  for cname, cost in (("OrdinalCost", ordinal), ("TreeCost", tree)):
    out[f"expected_cost {cname}"] = (
        lambda h, w, b, y, c=cost: cj.linear_expected_cost(h, w, y, c, bias=b, **kw),
        lambda h, w, b, y, c=cost: cj.expected_cost(h @ w + b, y, c),
    )
    out[f"cost_regularized_ce {cname}"] = (
        lambda h, w, b, y, c=cost: cj.linear_cost_regularized_cross_entropy(
            h, w, y, c, lam=0.5, bias=b, **kw),
        lambda h, w, b, y, c=cost: cj.cost_regularized_cross_entropy(h @ w + b, y, c, lam=0.5),
    )
    out[f"soft_label_ce {cname}"] = (
        lambda h, w, b, y, c=cost: cj.linear_soft_label_cross_entropy(
            h, w, y, c, temperature=2.0, bias=b, **kw),
        lambda h, w, b, y, c=cost: cj.soft_label_cross_entropy(h @ w + b, y, c, temperature=2.0),
    )
  return out


def step(f):
  return jax.jit(jax.value_and_grad(lambda h, w, b, y: jnp.mean(f(h, w, b, y)), argnums=(0, 1, 2)))


def shapes(b: int, d: int, k: int, dtype=jnp.float32):
  return (jax.ShapeDtypeStruct((b, d), dtype), jax.ShapeDtypeStruct((d, k), dtype),
          jax.ShapeDtypeStruct((k,), dtype), jax.ShapeDtypeStruct((b,), jnp.int32))


def temp_bytes(f, args) -> int:
  return int(step(f).lower(*args).compile().memory_analysis().temp_size_in_bytes)


def inputs(b: int, d: int, k: int, rng: np.random.Generator):
  h = jnp.asarray(rng.normal(size=(b, d)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(d, k)) / np.sqrt(d), jnp.float32)
  bias = jnp.asarray(rng.normal(size=(k,)) * 0.1, jnp.float32)
  y = jnp.asarray(rng.integers(0, k, b), jnp.int32)
  return h, w, bias, y


def interleaved(fns: dict, args, rounds: int) -> dict:
  """Each candidate's minimum seconds over ``rounds`` interleaved rounds (after a warm-up)."""
  for f in fns.values():
    jax.block_until_ready(f(*args))
  best = {name: float("inf") for name in fns}
  for _ in range(rounds):
    for name, f in fns.items():
      t0 = time.perf_counter()
      jax.block_until_ready(f(*args))
      best[name] = min(best[name], time.perf_counter() - t0)
  return best


def gib(n: int) -> str:
  return f"{n / 2**30:.3f} GiB" if n >= 2**27 else f"{n / 2**20:.1f} MiB"


def memory_section(b, d, k, rng, block, report, key, only=None):
  print(f"\n(a/b) compiled temporary memory of value_and_grad, B={b}, D={d}, K={k:,}")
  rows = {}
  for name, (blockwise, materialized) in losses(k, rng, block).items():
    if only is not None and not any(word in name for word in only):
      continue
    args = shapes(b, d, k)
    tb = temp_bytes(blockwise, args)
    tm = temp_bytes(materialized, args)
    rows[name] = {"blockwise": tb, "materialized": tm, "ratio": tb / tm}
    print(f"  {name:32s} blockwise {gib(tb):>12s}  materialized {gib(tm):>12s}  "
          f"ratio {100 * tb / tm:6.2f}%")
  report[key] = rows


def time_section(b, d, k, rng, block, rounds, report, key, only=None):
  print(f"\n(c) value_and_grad time, interleaved minima over {rounds} rounds, "
        f"B={b}, D={d}, K={k:,}")
  args = inputs(b, d, k, rng)
  fns = {}
  names = [n for n in losses(8, rng, block)
           if n == "cross_entropy" or only is None or any(word in n for word in only)]
  for name, (blockwise, materialized) in losses(k, rng, block).items():
    if name not in names:
      continue
    fns[f"{name} | blockwise"] = step(blockwise)
    fns[f"{name} | materialized"] = step(materialized)
  best = interleaved(fns, args, rounds)
  ce = best["cross_entropy | blockwise"]
  rows = {}
  for name in names:
    tb, tm = best[f"{name} | blockwise"], best[f"{name} | materialized"]
    rows[name] = {"blockwise_s": tb, "materialized_s": tm, "vs_materialized": tb / tm,
                  "vs_linear_ce": tb / ce}
    print(f"  {name:32s} blockwise {1e3 * tb:9.1f} ms  materialized {1e3 * tm:9.1f} ms  "
          f"x{tb / tm:5.2f} of materialized  x{tb / ce:5.2f} of linear_cross_entropy")
  report[key] = rows


def blocks_section(b, d, k, rng, blocks, rounds, report):
  print(f"\n(d) linear_cross_entropy value_and_grad per block size, B={b}, D={d}, K={k:,}")
  args = inputs(b, d, k, rng)
  fns = {bs: step(lambda h, w, bias, y, bs=bs: cj.linear_cross_entropy(
      h, w, y, bias=bias, block_size=bs)) for bs in blocks}
  fns["materialized"] = step(
      lambda h, w, bias, y: optax.softmax_cross_entropy_with_integer_labels(h @ w + bias, y))
  best = interleaved(fns, args, rounds)
  for bs, t in best.items():
    mem = ""
    if bs != "materialized":
      f = lambda h, w, bias, y, bs=bs: cj.linear_cross_entropy(h, w, y, bias=bias, block_size=bs)
      mem = f"  temp {gib(temp_bytes(f, shapes(b, d, k)))}"
    print(f"  block {bs!s:>12s}: {1e3 * t:9.1f} ms{mem}")
  report["blocks"] = {str(k_): v for k_, v in best.items()}


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
  ap.add_argument("--full-time", action="store_true",
                  help="also time B=2048, D=512, K=131,072 (about 1 TFLOP per step)")
  ap.add_argument("--full-only", nargs="*", default=None, metavar="WORD",
                  help="at the full size, time cross-entropy and only the losses whose name "
                  "contains one of these words (e.g. OrdinalCost)")
  ap.add_argument("--rounds", type=int, default=5, help="timing rounds (small size)")
  ap.add_argument("--full-rounds", type=int, default=2, help="timing rounds (full size)")
  ap.add_argument("--time-size", type=int, nargs=3, default=(1024, 256, 32768),
                  metavar=("B", "D", "K"), help="size of the timing section (c)")
  ap.add_argument("--block-size", type=int, default=None, help="block size (default: costjax's)")
  ap.add_argument("--blocks", type=int, nargs="*", default=None,
                  help="time linear_cross_entropy at these block sizes (section d)")
  ap.add_argument("--skip-memory", action="store_true", help="skip sections (a) and (b)")
  ap.add_argument("--json", default=None, help="write the results to this file")
  args = ap.parse_args(argv)
  rng = np.random.default_rng(0)
  report = {"machine": platform.processor() or platform.machine(),
            "backend": jax.default_backend(), "devices": str(jax.devices()),
            "jax": jax.__version__}
  print(json.dumps({k: report[k] for k in ("backend", "devices", "jax")}))
  if args.quick:
    memory_section(256, 64, 8192, rng, args.block_size, report, "memory")
    time_section(128, 32, 4096, rng, args.block_size, 2, report, "time")
  else:
    if not args.skip_memory:
      memory_section(2048, 512, 131072, rng, args.block_size, report, "memory")
      # 2048 x 2,097,152 float32 logits are 16 GiB: with their gradient the
      # materialized program needs 32 GiB or more of temporaries. (Cross-entropy and
      # OrdinalCost only: a 2-million-class tree as a jit constant takes minutes of
      # XLA constant folding.)
      memory_section(2048, 512, 1 << 21, rng, args.block_size, report, "memory_huge",
                     only=("cross_entropy", "OrdinalCost"))
    time_section(*args.time_size, rng, args.block_size, args.rounds, report, "time")
    if args.full_time:
      time_section(2048, 512, 131072, rng, args.block_size, args.full_rounds, report,
                   "time_full", only=args.full_only)
  if args.blocks:
    b, d, k = (128, 32, 4096) if args.quick else args.time_size
    blocks_section(b, d, k, rng, args.blocks, args.rounds, report)
  if args.json:
    with open(args.json, "w") as fh:
      json.dump(report, fh, indent=1)


if __name__ == "__main__":
  main()
