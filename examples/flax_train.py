"""Train a Flax NNX classifier with any costjax loss, data-parallel on every device.

  python examples/flax_train.py                                  # digits, CE, asymmetric cost
  python examples/flax_train.py --loss ce_ec --loss-param 10 --cost asymmetric
  python examples/flax_train.py --model cnn --loss soft --loss-param 0.5
  python examples/flax_train.py --data diamonds --cost ordinal --loss emd
  python examples/flax_train.py --data my.npz --cost my_cost.csv --out runs/mine

Data parallelism: a 1-D mesh ``data`` over all devices (``jax.make_mesh``); every
minibatch is split along its example axis over that axis and the model and optimizer
state are replicated, so XLA inserts the gradient all-reduce. Nothing is
device-specific: the same command runs on one CPU, on 8 forced host devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=8``), on a GPU or on a TPU.

Multi-host: start the same command on every host with ``COSTJAX_DISTRIBUTED=1``
and JAX's usual coordinator settings (``JAX_COORDINATOR_ADDRESS=host0:1234``,
``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``; SLURM and TPU pods are auto-detected),
which calls ``jax.distributed.initialize()``. Every host reads the same table and
draws the same shuffle, then feeds only its own slice of each global minibatch
(``jax.make_array_from_process_local_data``); process 0 writes the outputs. The
multi-host path is not exercised by the tests (they run single-host, with 1 and 8
devices).

Outputs in ``--out``: ``summary.md``, ``metrics.json``, ``learning_curves.png`` and
``confusion.png`` (cost-weighted confusion matrices, argmax and Bayes decoding).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

import costjax as cj  # noqa: E402

DEFAULT_PARAM = {"ce": 0.0, "ec": 0.0, "ce_ec": 1.0, "soft": 0.5, "cdw": 1.0,
                 "sinkhorn": 0.1, "emd": 0.0}
PARAM_DOC = "λ for ce_ec, T for soft, α for cdw, ε / max(C) for sinkhorn"


def global_batch(local: np.ndarray, sharding, global_rows: int) -> jax.Array:
  """A global array sharded over ``data`` from this process's rows of the batch."""
  return jax.make_array_from_process_local_data(sharding, local,
                                                (global_rows, *local.shape[1:]))


def to_host(x: jax.Array) -> np.ndarray:
  """Global array -> NumPy on every process."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def local_rows(n: int) -> slice:
  """This process's contiguous share of ``n`` global rows (``n`` divisible by #processes)."""
  per = n // jax.process_count()
  return slice(jax.process_index() * per, (jax.process_index() + 1) * per)


def predict(model, x: np.ndarray, sharding, batch: int) -> np.ndarray:
  """Logits for all rows of ``x`` (same on every host), padded to whole sharded batches."""
  fwd = nnx.jit(lambda m, xb: m(xb))
  out = []
  for start in range(0, len(x), batch):
    xb = x[start:start + batch]
    n = len(xb)
    if n < batch:
      xb = np.concatenate([xb, np.zeros((batch - n, *xb.shape[1:]), xb.dtype)])
    out.append(to_host(fwd(model, global_batch(xb[local_rows(batch)], sharding, batch)))[:n])
  return np.concatenate(out)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  common.add_data_arguments(p, ordinal_help="a user file's classes are ordered")
  p.add_argument("--cost", default="asymmetric",
                 help="forum, ordinal, asymmetric, random, or a CSV file (default: %(default)s)")
  p.add_argument("--loss", default="ce", choices=sorted(common.LOSSES))
  p.add_argument("--loss-param", type=float, default=None, help=PARAM_DOC)
  p.add_argument("--model", default="mlp", choices=("mlp", "cnn"))
  p.add_argument("--hidden", type=int, default=128)
  p.add_argument("--epochs", type=int, default=30)
  p.add_argument("--batch-size", type=int, default=128)
  p.add_argument("--lr", type=float, default=3e-3)
  p.add_argument("--weight-decay", type=float, default=1e-4)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default="runs/flax_train")
  p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
  args = p.parse_args(argv)
  if args.loss_param is None:
    args.loss_param = DEFAULT_PARAM[args.loss]
  if args.epochs < 1 or args.batch_size < 1 or not (args.lr > 0 and math.isfinite(args.lr)):
    raise common.UserInputError("--epochs, --batch-size and --lr must be positive.")
  return args


def main(argv=None):
  args = parse_args(argv)
  common.maybe_initialize_distributed()
  k_csv = common.csv_num_classes([args.cost])
  ds = common.load_data(args.data, label_column=args.label_column, max_rows=args.max_rows,
                        num_classes=k_csv, ordinal=args.ordinal)
  cost_np = common.cost_matrix(args.cost, ds.num_classes)
  sp = common.make_splits(ds, [args.seed])
  x_tr, y_tr, x_va, y_va, x_te, y_te = (a[0] for a in (
      sp.x_train, sp.y_train, sp.x_val, sp.y_val, sp.x_test, sp.y_test))

  mesh = common.data_mesh()
  jax.set_mesh(mesh)
  data_sh = common.batch_sharding(mesh)
  rep = common.replicated(mesh)
  batch = common.round_batch_size(args.batch_size, len(y_tr))
  if batch % jax.process_count():
    raise common.UserInputError("the batch size must be divisible by the number of processes.")
  steps = len(y_tr) // batch  # drop the remainder; every epoch reshuffles
  lead = jax.process_index() == 0

  model = common.make_model(args.model, ds, hidden=args.hidden, rngs=nnx.Rngs(args.seed))
  optimizer = nnx.Optimizer(model, optax.adamw(args.lr, weight_decay=args.weight_decay),
                            wrt=nnx.Param)
  # Replicate model and optimizer state over the mesh.
  state = jax.device_put(nnx.state((model, optimizer)), rep)
  nnx.update((model, optimizer), state)
  cost = jax.device_put(jnp.asarray(cost_np), rep)
  loss_of = common.LOSSES[args.loss]
  hp = jnp.float32(args.loss_param)

  @nnx.jit
  def train_step(model, optimizer, xb, yb):
    def loss_fn(model):
      return loss_of(model(xb), yb, cost, hp).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  from tqdm import tqdm

  rng = np.random.default_rng(args.seed)  # same shuffle on every host
  history = {k: [] for k in ("train_loss", "val_nll", "val_acc", "val_cost")}
  t0 = time.perf_counter()
  rows = local_rows(batch)
  for epoch in range(1, args.epochs + 1):
    perm = rng.permutation(len(y_tr))
    losses = []
    bar = tqdm(range(steps), desc=f"epoch {epoch}/{args.epochs}", unit="batch",
               disable=args.no_progress or not lead, leave=False, file=sys.stdout)
    for s in bar:
      idx = perm[s * batch:(s + 1) * batch][rows]  # this host's slice of the batch
      loss = train_step(model, optimizer, global_batch(x_tr[idx], data_sh, batch),
                        global_batch(y_tr[idx], data_sh, batch))
      losses.append(loss)
    zv = predict(model, x_va, data_sh, batch)
    pv = zv.argmax(-1)
    history["train_loss"].append(float(np.mean(jax.device_get(losses))))
    history["val_nll"].append(float(optax.softmax_cross_entropy_with_integer_labels(
        jnp.asarray(zv), jnp.asarray(y_va)).mean()))
    history["val_acc"].append(float(np.mean(pv == y_va)))
    history["val_cost"].append(float(np.mean(cost_np[y_va, pv])))
    if lead and not args.no_progress:
      tqdm.write(f"epoch {epoch:3d}  train loss {history['train_loss'][-1]:.4f}  "
                 f"val NLL {history['val_nll'][-1]:.4f}  val acc {history['val_acc'][-1]:.4f}  "
                 f"val cost (argmax) {history['val_cost'][-1]:.4f}", file=sys.stdout)
  train_seconds = time.perf_counter() - t0

  # Temperature scaling on validation, then both decodings on test.
  zv = predict(model, x_va, data_sh, batch)
  zt = predict(model, x_te, data_sh, batch)
  temp = float(common.fit_temperature(jnp.asarray(zv), jnp.asarray(y_va)))
  pred_arg, pred_bayes = (np.asarray(p) for p in common.decode(jnp.asarray(zt),
                                                                jnp.asarray(cost_np), temp))
  metrics = {
      "data": ds.name, "cost": args.cost, "loss": args.loss, "loss_param": args.loss_param,
      "model": args.model, "epochs": args.epochs, "lr": args.lr, "batch_size": batch,
      "devices": common.device_summary(), "train_seconds": train_seconds,
      "temperature": temp, "history": history,
  }
  for name, pred in (("argmax", pred_arg), ("bayes", pred_bayes)):
    metrics[f"test_acc_{name}"] = float(np.mean(pred == y_te))
    metrics[f"test_cost_{name}"] = float(cj.mean_cost(jnp.asarray(pred), jnp.asarray(y_te),
                                                      jnp.asarray(cost_np)))
    if ds.ordinal:
      metrics[f"test_qwk_{name}"] = float(cj.quadratic_weighted_kappa(
          jnp.asarray(pred), jnp.asarray(y_te), num_classes=ds.num_classes))
  conf = {n: common.cost_weighted_confusion(p, y_te, cost_np)
          for n, p in (("argmax", pred_arg), ("bayes", pred_bayes))}
  metrics["cost_weighted_confusion"] = {n: c.tolist() for n, c in conf.items()}

  summary = (
      f"{ds.name} ({len(ds.y)} examples, K={ds.num_classes}), cost {args.cost}, loss "
      f"{args.loss}({args.loss_param:g}), {args.model}, {args.epochs} epochs, batch {batch} on "
      f"{common.device_summary()}: trained in {train_seconds:.1f} s\n"
      f"temperature (validation NLL): {temp:.3f}\n"
      f"test accuracy  argmax {metrics['test_acc_argmax']:.4f}   "
      f"Bayes {metrics['test_acc_bayes']:.4f}\n"
      f"test mean cost argmax {metrics['test_cost_argmax']:.4f}   "
      f"Bayes {metrics['test_cost_bayes']:.4f}\n"
  )
  if not lead:
    return
  print(summary, end="")
  print("cost-weighted confusion (Bayes decoding; rows true, columns predicted):")
  print(np.array2string(conf["bayes"], precision=1, suppress_small=True, max_line_width=120))
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "metrics.json"), "w", encoding="utf-8") as f:
    json.dump(metrics, f, indent=1)
  with open(os.path.join(args.out, "summary.md"), "w", encoding="utf-8") as f:
    f.write("# flax_train\n\n```\n" + summary + "```\n")
  plot(args.out, history, conf, ds.class_names, f"{ds.name}, {args.loss}, cost {args.cost}")
  print(f"wrote {args.out}/summary.md, metrics.json, learning_curves.png, confusion.png")


def plot(out, history, conf, names, title):
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  ep = np.arange(1, len(history["train_loss"]) + 1)
  fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
  axes[0].plot(ep, history["train_loss"], label="train loss")
  axes[0].plot(ep, history["val_nll"], label="validation NLL")
  axes[0].legend()
  axes[1].plot(ep, history["val_acc"])
  axes[1].set_title("validation accuracy")
  axes[2].plot(ep, history["val_cost"])
  axes[2].set_title("validation mean cost (argmax)")
  for ax in axes:
    ax.set_xlabel("epoch")
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(os.path.join(out, "learning_curves.png"), dpi=110)
  plt.close(fig)

  fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
  vmax = max(float(c.max()) for c in conf.values()) or 1.0
  for ax, (name, c) in zip(axes, conf.items(), strict=True):
    im = ax.imshow(c, cmap="Reds", vmin=0, vmax=vmax)
    ax.set_title(f"{name}: total test cost {c.sum():.1f}")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names, fontsize=7)
    for i, j in zip(*np.nonzero(c), strict=True):
      ax.text(j, i, f"{c[i, j]:.0f}", ha="center", va="center", fontsize=6)
  fig.colorbar(im, ax=axes, shrink=0.8, label="cost")
  fig.suptitle(f"cost-weighted confusion (counts x C), {title}", fontsize=10)
  fig.savefig(os.path.join(out, "confusion.png"), dpi=110)
  plt.close(fig)


if __name__ == "__main__":
  common.exit_on_user_error(main)
