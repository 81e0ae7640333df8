"""Calibration and conformal cost sets vs one cross-entropy value-and-grad.

Times ``cj.fit_temperature`` (n=100,000, K=1000) and ``cj.calibrate_cost_sets``
(n=10,000, K=100), each jitted, against one jitted
``jax.value_and_grad(mean optax.softmax_cross_entropy_with_integer_labels)`` on
the same ``(n, K)`` logits, interleaving the two round by round and reporting
each one's minimum over rounds, and their ratio. Goals (issue 8): at most 30
for ``fit_temperature``, at most 100 for ``calibrate_cost_sets``. Also reports
how many passes ``fit_temperature`` made.

  python benchmarks/decisions.py            # the sizes above
  python benchmarks/decisions.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import costjax as cj


def _ce_value_and_grad():
  def loss(z, y):
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(z, y))

  return jax.jit(jax.value_and_grad(loss))


def _problem(n, k, seed, scale):
  """Labels drawn from softmax(true logits); the model sees `scale` times the logits."""
  key_z, key_y = jax.random.split(jax.random.key(seed))
  true = 2.0 * jax.random.normal(key_z, (n, k), jnp.float32)
  labels = jax.random.categorical(key_y, true).astype(jnp.int32)
  return scale * true, labels


def _time(fns, args, rounds):
  for f, a in zip(fns, args, strict=True):
    jax.block_until_ready(f(*a))  # compile and warm up
  best = [float("inf")] * len(fns)
  for _ in range(rounds):
    for m, (f, a) in enumerate(zip(fns, args, strict=True)):
      start = time.perf_counter()
      jax.block_until_ready(f(*a))
      best[m] = min(best[m], time.perf_counter() - start)
  return best


def bench_temperature(n, k, rounds):
  logits, labels = _problem(n, k, 0, 2.5)
  ce = _ce_value_and_grad()
  fit = jax.jit(cj.fit_temperature)
  t_ce, t_fit = _time([ce, fit], [(logits, labels)] * 2, rounds)
  return {"name": f"fit_temperature (n={n:,}, K={k})", "ce_s": t_ce, "fn_s": t_fit,
          "value": f"T = {float(fit(logits, labels)):.5f}"}


def bench_conformal(n, k, rounds):
  logits, labels = _problem(n, k, 1, 1.0)
  rng = np.random.default_rng(0)
  cost = jnp.asarray(rng.uniform(0, 10, (k, k)), jnp.float32)
  cost = cost * (1 - jnp.eye(k))
  ce = _ce_value_and_grad()
  cal = jax.jit(lambda z, y, c, a: cj.calibrate_cost_sets(z, y, c, alpha=a))
  alpha = jnp.float32(1.0)
  t_ce, t_cal = _time([ce, cal], [(logits, labels), (logits, labels, cost, alpha)], rounds)
  return {"name": f"calibrate_cost_sets (n={n:,}, K={k})", "ce_s": t_ce, "fn_s": t_cal,
          "value": f"threshold = {float(cal(logits, labels, cost, alpha)):.4f}"}


def bench_vector_scaling(n, k, rounds):
  logits, labels = _problem(n, k, 2, 2.5)
  ce = _ce_value_and_grad()
  fit = jax.jit(lambda z, y: cj.fit_vector_scaling(z, y).scale)
  t_ce, t_fit = _time([ce, fit], [(logits, labels)] * 2, rounds)
  scale = fit(logits, labels)
  return {"name": f"fit_vector_scaling (n={n:,}, K={k})", "ce_s": t_ce, "fn_s": t_fit,
          "value": f"mean scale = {float(scale.mean()):.4f} (no goal)"}


def count_passes(n, k):
  """Number of Newton/bisection passes fit_temperature makes (its while_loop, run eagerly)."""
  from costjax import _calibration

  logits, labels = _problem(n, k, 0, 2.5)
  calls = []
  original = jax.lax.while_loop

  def counting_while(cond, body, init):
    state = init
    while bool(cond(state)):
      state = body(state)
      calls.append(1)
    return state

  _calibration.jax.lax.while_loop = counting_while
  try:
    with jax.disable_jit():  # run the loop in Python to count its iterations
      _calibration.fit_temperature(logits, labels)
  finally:
    _calibration.jax.lax.while_loop = original
  return len(calls)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="small sizes, few rounds")
  parser.add_argument("--rounds", type=int, default=7)
  args = parser.parse_args()
  rounds = 2 if args.quick else args.rounds
  t_size = (10_000, 100) if args.quick else (100_000, 1000)
  c_size = (2_000, 50) if args.quick else (10_000, 100)
  cpu = platform.processor() or platform.machine()
  print(f"jax {jax.__version__}, optax {optax.__version__}, backend {jax.default_backend()}, "
        f"{jax.device_count()} device(s): {jax.devices()[0].device_kind} ({cpu})")
  print(f"fit_temperature passes over the data: {count_passes(*t_size)}")
  rows = [bench_temperature(*t_size, rounds), bench_conformal(*c_size, rounds),
          bench_vector_scaling(*c_size, rounds)]
  print("| function | CE value-and-grad (ms) | function (ms) | ratio | result |")
  print("|---|---:|---:|---:|---|")
  for r in rows:
    print(f"| {r['name']} | {1e3 * r['ce_s']:.2f} | {1e3 * r['fn_s']:.2f} | "
          f"{r['fn_s'] / r['ce_s']:.1f} | {r['value']} |")


if __name__ == "__main__":
  main()
