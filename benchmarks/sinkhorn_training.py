"""Benchmark: CE + λ·Sinkhorn inside vmapped training, against CE + λ·expected cost.

The setup of the comparison harness (``examples/compare_losses.py``): sklearn
digits, the asymmetric cost matrix (every error costs 1 except C[7,1], C[3,8],
C[8,3], C[4,9], C[9,4], C[5,6] = 20), MLPs (hidden 128) trained with AdamW at
batch 128, 10 seeds x 3 learning rates x 2 values of λ = 60 models, the whole
training run one jitted ``lax.scan`` vmapped over seeds, grid points and a
stack of (here one) cost matrices, exactly as ``make_train_fn``/``vmapped``
do. Both arms have the same program shape and differ only in the loss:

* ``ce_ec``: ``cost_regularized_cross_entropy(z, y, C, lam=λ)`` (CE + λ·EC);
* ``ce_sk``: CE + λ·``sinkhorn_loss(z, cost_soft_labels(y, C, temperature=0.5),
  C, epsilon=0.1 * max C)`` (Frogner et al.'s cost-smoothed targets), with
  the default ``tol``/``max_iterations`` unless ``--tol`` is given.

For each epoch count the two programs are compiled first (compile time
reported separately), then timed interleaved, minimum over ``--repeats``.
After training, the Sinkhorn value of every Sinkhorn-trained model's test
logits is compared with a tight solve (``tol=1e-6``, float64): the largest
absolute difference divided by max C. Iteration counts at the trained logits
are reported as well (the long tail is what the solver's compaction is for).

Usage: ``python benchmarks/sinkhorn_training.py [--epochs 20,60] [--repeats 2]``.
"""

from __future__ import annotations

import argparse
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import costjax as cj

EXPENSIVE = ((7, 1), (3, 8), (8, 3), (4, 9), (9, 4), (5, 6))
LRS = (1e-3, 3e-3, 1e-2)
LAMS = (1.0, 10.0)
REL_EPS = 0.1
TARGET_TEMPERATURE = 0.5


def asymmetric_cost() -> np.ndarray:
  c = 1.0 - np.eye(10, dtype=np.float32)
  for i, j in EXPENSIVE:
    c[i, j] = 20.0
  return c


def splits(seeds):
  """Per seed a stratified 60/20/20 split of digits, standardized on train."""
  from sklearn.datasets import load_digits
  from sklearn.model_selection import train_test_split

  x, y = load_digits(return_X_y=True)
  n = len(y)
  n_test = n_val = int(round(0.2 * n))
  out = {k: [] for k in ("x_tr", "y_tr", "x_te", "y_te")}
  for seed in seeds:
    rest, test = train_test_split(np.arange(n), test_size=n_test, stratify=y, random_state=seed)
    train, _ = train_test_split(rest, test_size=n_val, stratify=y[rest],
                                random_state=seed + 10_000)
    mu, sd = x[train].mean(0), x[train].std(0)
    sd = np.where(sd > 1e-6, sd, 1.0)
    out["x_tr"].append(((x[train] - mu) / sd).astype(np.float32))
    out["y_tr"].append(y[train].astype(np.int32))
    out["x_te"].append(((x[test] - mu) / sd).astype(np.float32))
    out["y_te"].append(y[test].astype(np.int32))
  return {k: jnp.asarray(np.stack(v)) for k, v in out.items()}


class MLP(nnx.Module):
  def __init__(self, din, hidden, k, *, rngs):
    self.hidden = nnx.Linear(din, hidden, rngs=rngs)
    self.out = nnx.Linear(hidden, k, rngs=rngs)

  def __call__(self, x):
    return self.out(jax.nn.relu(self.hidden(x)))


def ce_ec(z, y, c, lam, **_):
  return cj.cost_regularized_cross_entropy(z, y, c, lam=lam)


def ce_sk(z, y, c, lam, **kw):
  targets = cj.cost_soft_labels(y, c, temperature=TARGET_TEMPERATURE)
  sk = cj.sinkhorn_loss(z, targets, c, epsilon=REL_EPS * jnp.max(c), **kw)
  return optax.softmax_cross_entropy_with_integer_labels(z, y) + lam * sk


def make_program(graphdef, loss_fn, *, epochs, n_train, batch_size=128, weight_decay=1e-4):
  """One compiled training run for every (cost, grid point, seed), as in compare_losses."""
  steps = n_train // batch_size

  def apply(params, x):
    return nnx.merge(graphdef, params)(x)

  def train(params, x_tr, y_tr, x_te, cost, lr, lam, key):
    tx = optax.adamw(lr, weight_decay=weight_decay)

    def batch_loss(p, xb, yb):
      return loss_fn(apply(p, xb), yb, cost, lam).mean()

    def step(carry, idx):
      p, opt_state = carry
      loss, grads = jax.value_and_grad(batch_loss)(p, x_tr[idx], y_tr[idx])
      updates, opt_state = tx.update(grads, opt_state, p)
      return (optax.apply_updates(p, updates), opt_state), loss

    def epoch(carry, k):
      perm = jax.random.permutation(k, n_train)[: steps * batch_size]
      carry, losses = jax.lax.scan(step, carry, perm.reshape(steps, batch_size))
      return carry, losses.mean()

    (params, _), curve = jax.lax.scan(epoch, (params, tx.init(params)),
                                      jax.random.split(key, epochs))
    return apply(params, x_te), curve

  over_seeds = jax.vmap(train, in_axes=(0, 0, 0, 0, None, None, None, 0))
  over_grid = jax.vmap(over_seeds, in_axes=(None,) * 5 + (0, 0, None))
  return jax.jit(jax.vmap(over_grid, in_axes=(None,) * 4 + (0, None, None, None)))


def value_error(test_logits, y_te, cost, kw):
  """max |default value - tight float64 value| / max C at the trained test logits."""
  q = cj.cost_soft_labels(y_te, cost, temperature=TARGET_TEMPERATURE)
  z = test_logits.reshape((-1,) + test_logits.shape[-3:])  # (models, seeds, N, K)
  eps = REL_EPS * float(cost.max())
  default = jax.jit(jax.vmap(lambda zz: cj.sinkhorn_loss(zz, q, cost, epsilon=eps, **kw)))(z)
  out = jax.jit(jax.vmap(lambda zz: cj.sinkhorn_solve(zz, q, cost, epsilon=eps, **kw)))(z)
  with jax.enable_x64(True):
    tight = jax.jit(jax.vmap(lambda zz: cj.sinkhorn_solve(
        zz.astype(jnp.float64), q.astype(jnp.float64), cost.astype(jnp.float64),
        epsilon=eps, tol=1e-6, max_iterations=20000)))(z)
    err = float(jnp.max(jnp.abs(default.astype(jnp.float64) - tight.value)))
    converged = bool(jnp.all(tight.converged))
  iters = np.asarray(out.iterations).ravel()
  return err / float(cost.max()), converged, iters, float(jnp.max(out.marginal_error))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--epochs", default="20,60", help="comma-separated epoch counts")
  p.add_argument("--repeats", type=int, default=2)
  p.add_argument("--seeds", type=int, default=10)
  p.add_argument("--tol", type=float, default=None, help="sinkhorn_loss tol (default: its own)")
  p.add_argument("--max-iterations", type=int, default=None,
                 help="sinkhorn_loss max_iterations (default: its own)")
  args = p.parse_args(argv)
  kw = {} if args.tol is None else {"tol": args.tol}
  if args.max_iterations is not None:
    kw["max_iterations"] = args.max_iterations

  seeds = list(range(args.seeds))
  data = splits(seeds)
  cost = jnp.asarray(asymmetric_cost())
  n_train = data["x_tr"].shape[1]
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: MLP(64, 128, 10, rngs=nnx.Rngs(0))))
  params0 = jax.jit(jax.vmap(lambda k: nnx.split(MLP(64, 128, 10, rngs=nnx.Rngs(k)))[1]))(
      jax.random.split(jax.random.key(1234), len(seeds)))
  grid = [(lr, lam) for lr in LRS for lam in LAMS]
  lrs = jnp.asarray([g[0] for g in grid], jnp.float32)
  lams = jnp.asarray([g[1] for g in grid], jnp.float32)
  keys = jax.random.split(jax.random.key(0), len(seeds))
  inputs = (params0, data["x_tr"], data["y_tr"], data["x_te"], cost[None], lrs, lams, keys)

  print(f"# {platform.processor() or platform.machine()}, {jax.device_count()} x "
        f"{jax.devices()[0].platform}, jax {jax.__version__}; {len(seeds)} seeds x "
        f"{len(grid)} grid points = {len(seeds) * len(grid)} models, n_train {n_train}, "
        f"sinkhorn kwargs {kw or 'defaults'}")
  print("| epochs | CE + λ·EC (s) | CE + λ·Sinkhorn (s) | ratio | compile EC / SK (s) "
        "| value error / max C | max marginal error | iterations (median / p99 / max) |")
  print("|---|---|---|---|---|---|---|---|")
  for epochs in (int(e) for e in args.epochs.split(",")):
    fns = {"ec": make_program(graphdef, ce_ec, epochs=epochs, n_train=n_train),
           "sk": make_program(graphdef, lambda *a: ce_sk(*a, **kw), epochs=epochs,
                              n_train=n_train)}
    compiled, compile_s = {}, {}
    for name, fn in fns.items():
      t = time.perf_counter()
      compiled[name] = fn.lower(*inputs).compile()
      compile_s[name] = time.perf_counter() - t
    best = dict.fromkeys(fns, np.inf)
    outs = {}
    for _ in range(args.repeats):
      for name, fn in compiled.items():  # interleaved: both see the same machine load
        t = time.perf_counter()
        outs[name] = jax.block_until_ready(fn(*inputs))
        best[name] = min(best[name], time.perf_counter() - t)
    err, conv, iters, marg = value_error(outs["sk"][0], data["y_te"], cost, kw)
    assert conv, "the tight reference solve did not converge"
    print(f"| {epochs} | {best['ec']:.2f} | {best['sk']:.2f} | {best['sk'] / best['ec']:.2f} "
          f"| {compile_s['ec']:.1f} / {compile_s['sk']:.1f} | {err:.1e} | {marg:.1e} "
          f"| {np.median(iters):.0f} / {np.percentile(iters, 99):.0f} / {iters.max()} |",
          flush=True)


if __name__ == "__main__":
  main()
