"""Closed-form costjax losses vs optax cross-entropy: jitted value_and_grad time.

For each ``(B, K)`` it times ``jax.jit(jax.value_and_grad(mean loss))`` (w.r.t. the
logits) of every closed-form loss and of
``optax.softmax_cross_entropy_with_integer_labels`` in the same process. The
candidates are interleaved round by round (optax, loss 1, loss 2, ..., optax, ...),
so machine noise hits all of them alike, and each one's **minimum** over the rounds
is reported, divided by optax's minimum from the same run. The cost matrix, the
labels and the probability targets are jit arguments, so XLA cannot constant-fold
work on them. On a CPU backend the minimum process CPU time per call is printed
too: it is less sensitive than wall time to other jobs sharing the cores.

Each candidate's compiled scratch memory (XLA's temp buffer, ``memory_analysis()``)
and, on Linux, the page faults per call are printed as well. XLA:CPU takes the temp
buffer from ``malloc`` on every call, and glibc serves blocks above its 32 MiB mmap
ceiling with a fresh ``mmap``, whose pages are faulted in (and zeroed) again on each
call: at ``B = 4096, K = 1000`` three ``B x K`` float32 temporaries (47 MiB) cost
more than the arithmetic of a cheap loss (``docs/benchmarks.md``, rule 11).

Goals (issue 10): at most 1.3x (K = 100) and 1.6x (K = 1000) for expected_cost,
cost_regularized_cross_entropy, soft_label_cross_entropy and ordinal_emd(power=1);
at most 2.0x and 2.5x for class_distance_weighted_cross_entropy and
ordinal_emd(power=2).

  python benchmarks/closed_forms.py              # B=4096, K=100 and K=1000
  python benchmarks/closed_forms.py --quick      # a smoke run (small sizes)
  python benchmarks/closed_forms.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time

try:
  import resource
except ImportError:  # not on Windows
  resource = None

import jax
import jax.numpy as jnp
import numpy as np
import optax

import costjax as cj

BASELINE = "optax CE (integer labels)"

# name -> (loss(z, y, c, q), goal at K=100, goal at K=1000); None: no goal.
CANDIDATES = {
    BASELINE: (lambda z, y, c, q: optax.softmax_cross_entropy_with_integer_labels(z, y),
               None, None),
    "expected_cost": (lambda z, y, c, q: cj.expected_cost(z, y, c), 1.3, 1.6),
    "cost_regularized_cross_entropy": (
        lambda z, y, c, q: cj.cost_regularized_cross_entropy(z, y, c, lam=0.5), 1.3, 1.6),
    "soft_label_cross_entropy": (
        lambda z, y, c, q: cj.soft_label_cross_entropy(z, y, c, temperature=2.0), 1.3, 1.6),
    "ordinal_emd (power=1)": (lambda z, y, c, q: cj.ordinal_emd(z, y), 1.3, 1.6),
    "class_distance_weighted_cross_entropy": (
        lambda z, y, c, q: cj.class_distance_weighted_cross_entropy(z, y, c), 2.0, 2.5),
    "ordinal_emd (power=2)": (lambda z, y, c, q: cj.ordinal_emd(z, y, power=2), 2.0, 2.5),
    "expected_cost, probability labels": (lambda z, y, c, q: cj.expected_cost(z, q, c),
                                          None, None),
}


def goal_for(name: str, k: int) -> float | None:
  _, g100, g1000 = CANDIDATES[name]
  if g100 is None:
    return None
  return g100 if k <= 100 else g1000


def bench(batch: int, num_classes: int, rounds: int, inner: int) -> dict:
  """Minimum wall and CPU seconds per call of each candidate, interleaved."""
  rng = np.random.default_rng(0)
  logits = jnp.asarray(2.0 * rng.normal(size=(batch, num_classes)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, num_classes, batch), jnp.int32)
  cost = jnp.asarray(rng.uniform(0, 10, (num_classes, num_classes)), jnp.float32)
  soft = jax.nn.softmax(jnp.asarray(rng.normal(size=(batch, num_classes)), jnp.float32))
  args = (logits, labels, cost, soft)
  fns = {
      name: jax.jit(jax.value_and_grad(lambda z, y, c, q, f=f: jnp.mean(f(z, y, c, q))))
      for name, (f, _, _) in CANDIDATES.items()
  }
  temp = {}
  for name, f in fns.items():  # compile and warm up
    jax.block_until_ready(f(*args))
    temp[name] = temp_bytes(f, args)
  wall = {name: float("inf") for name in fns}
  cpu = {name: float("inf") for name in fns}
  faults = {name: 0 for name in fns}
  for _ in range(rounds):
    for name, f in fns.items():
      start_faults = minor_faults()
      start, start_cpu = time.perf_counter(), time.process_time()
      for _ in range(inner):
        out = f(*args)
      jax.block_until_ready(out)
      wall[name] = min(wall[name], (time.perf_counter() - start) / inner)
      cpu[name] = min(cpu[name], (time.process_time() - start_cpu) / inner)
      faults[name] += minor_faults() - start_faults
  page = 4096 if resource is None else resource.getpagesize()
  fault_mib = {name: n * page / 2**20 / (rounds * inner) for name, n in faults.items()}
  return {"wall": wall, "cpu": cpu, "temp": temp, "fault_mib": fault_mib}


def minor_faults() -> int:
  """This process's minor page faults so far (0 where ``resource`` is missing)."""
  return 0 if resource is None else resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def temp_bytes(fn, args) -> int | None:
  """XLA's scratch buffer for one call of the jitted ``fn`` (``None`` if not reported)."""
  try:
    return fn.lower(*args).compile().memory_analysis().temp_size_in_bytes
  except Exception:  # noqa: BLE001 - a backend without memory analysis
    return None


def mib(nbytes: int | None) -> float | None:
  return None if nbytes is None else nbytes / 2**20


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true",
                      help="small sizes (B=512; K=100 and 1000), 3 rounds: a smoke run")
  parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds")
  parser.add_argument("--batch", type=int, default=4096)
  parser.add_argument("--classes", type=int, nargs="+", default=[100, 1000])
  parser.add_argument("--json", default=None, help="also write the results to this file")
  args = parser.parse_args()
  batch = 512 if args.quick else args.batch
  rounds = 3 if args.quick else args.rounds
  on_cpu = jax.default_backend() == "cpu"
  cpu_name = platform.processor() or platform.machine()
  print(f"jax {jax.__version__}, optax {optax.__version__}, backend {jax.default_backend()}, "
        f"{jax.device_count()} device(s): {jax.devices()[0].device_kind} ({cpu_name})")
  results = {}
  for k in args.classes:
    inner = 20 if k <= 100 else 5
    if args.quick:
      inner = 3
    results[k] = bench(batch, k, rounds, inner)
    print(f"  measured B={batch}, K={k}", flush=True)

  cols = [f"K={k}" for k in results]
  print(f"\nB={batch}; minimum over {rounds} interleaved rounds; ratio = time / optax time"
        + ("; CPU time ratio in brackets" if on_cpu else ""))
  print("| loss | " + " | ".join(f"{c}: ms (ratio) | goal" for c in cols) + " |")
  print("|---" * (1 + 2 * len(cols)) + "|")
  table = []
  all_met = True
  for name in CANDIDATES:
    cells = []
    row = {"loss": name}
    for k, r in results.items():
      ratio = r["wall"][name] / r["wall"][BASELINE]
      cpu_ratio = r["cpu"][name] / r["cpu"][BASELINE]
      goal = goal_for(name, k)
      met = None if goal is None else ratio <= goal
      if met is False:
        all_met = False
      text = f"{1e3 * r['wall'][name]:.3f} ({ratio:.2f}x"
      text += f"; cpu {cpu_ratio:.2f}x)" if on_cpu else ")"
      goal_text = "-" if goal is None else f"<= {goal}: {'met' if met else 'NOT met'}"
      cells += [text, goal_text]
      row[f"K={k}"] = {"ms": 1e3 * r["wall"][name], "ratio": ratio, "cpu_ms": 1e3 * r["cpu"][name],
                       "cpu_ratio": cpu_ratio, "goal": goal, "met": met,
                       "temp_mib": mib(r["temp"][name]), "fault_mib_per_call": r["fault_mib"][name]}
    table.append(row)
    print(f"| {name} | " + " | ".join(cells) + " |")
  print(f"\nall goals met: {all_met}")

  print("\nXLA scratch memory per call (MiB) / page faults per call (MiB of pages, "
        "process-wide; 0 where not measurable)")
  print("| loss | " + " | ".join(f"{c}: temp / faulted" for c in cols) + " |")
  print("|---" * (1 + len(cols)) + "|")
  for name in CANDIDATES:
    cells = []
    for r in results.values():
      temp = mib(r["temp"][name])
      cells.append(("?" if temp is None else f"{temp:.1f}") + f" / {r['fault_mib'][name]:.1f}")
    print(f"| {name} | " + " | ".join(cells) + " |")
  if args.json:
    meta = {"jax": jax.__version__, "backend": jax.default_backend(),
            "device": jax.devices()[0].device_kind, "batch": batch, "rounds": rounds}
    with open(args.json, "w") as fh:
      json.dump({"meta": meta, "table": table}, fh, indent=1)


if __name__ == "__main__":
  main()
