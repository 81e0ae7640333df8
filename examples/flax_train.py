"""Train a Flax NNX classifier with any costjax loss, save it, and decide on new rows.

  python examples/flax_train.py                                  # digits, CE, asymmetric cost
  python examples/flax_train.py --loss ce_ec --loss-param 10 --cost asymmetric
  python examples/flax_train.py --model cnn --loss soft --loss-param 0.5
  python examples/flax_train.py --data diamonds --cost ordinal --loss emd
  python examples/flax_train.py --data penguins.csv --label-column species --cost cost.csv \\
      --out runs/penguins
  python examples/flax_train.py --predict new_rows.csv --out runs/penguins

Training writes to ``--out``: an Orbax checkpoint ``checkpoint/`` (the model's parameters,
the temperature fitted on validation with ``costjax.fit_temperature``, the cost matrix, the
class names and how to encode and standardize new rows), ``summary.md``, ``metrics.json``,
``val_outputs.npz`` / ``test_outputs.npz`` (logits and labels, ready for ``costjax decide``),
``learning_curves.png`` and ``confusion.png`` (cost-weighted confusion matrices, argmax and
Bayes decoding).

``--predict FILE`` (a CSV of feature columns, or a ``.npz`` with an array ``x``) loads
``--out``'s checkpoint (or ``--checkpoint DIR``) and writes ``predictions.csv`` there: the
minimum-expected-cost (Bayes) decision of the temperature-scaled model for every row, its
expected cost, and the plain argmax.

Data and costs come from ``costjax.cli.data`` / ``costjax.cli.costs`` (text labels and
features, a cost CSV with a header of class names; see ``costjax compare --help``).
Data parallelism: a 1-D mesh ``data`` over all devices; every minibatch is split along its
example axis and the model and optimizer state are replicated, so XLA inserts the gradient
all-reduce. The same command runs on one CPU, on 8 forced host devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=8``), a GPU or a TPU. Multi-host: start
the same command on every host with ``COSTJAX_DISTRIBUTED=1`` and JAX's coordinator settings;
every host feeds its slice of each global minibatch and process 0 writes the outputs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import costjax as cj
from costjax.cli import costs, data, distributed, training
from costjax.cli.errors import UserInputError, exit_on_user_error

DEFAULT_PARAM = {"ce": 0.0, "ec": 0.0, "ce_ec": 1.0, "soft": 0.5, "cdw": 1.0,
                 "sinkhorn": 0.1, "ce_sinkhorn": 1.0, "wce": 0.0, "emd": 0.0}
PARAM_DOC = "λ for ce_ec, T for soft, α for cdw, ε / max(C) for sinkhorn"


# --------------------------------------------------------------------------- #
# Sharded batches.
# --------------------------------------------------------------------------- #


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


# --------------------------------------------------------------------------- #
# Checkpoint: parameters + everything needed to decide on new rows.
# --------------------------------------------------------------------------- #


def save_checkpoint(path: str, model, meta: dict) -> None:
  """Orbax checkpoint: ``params`` (the model's ``nnx.Param`` leaves) and ``meta`` (JSON)."""
  import orbax.checkpoint as ocp

  params = jax.device_get(nnx.state(model, nnx.Param).to_pure_dict())
  ckpt = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
  ckpt.save(os.path.abspath(path), force=True, args=ocp.args.Composite(
      params=ocp.args.StandardSave(params), meta=ocp.args.JsonSave(meta)))


def load_checkpoint(path: str):
  """``(model, meta)`` from :func:`save_checkpoint`'s directory."""
  import orbax.checkpoint as ocp

  if not os.path.isdir(path):
    raise UserInputError(f"--checkpoint {path!r}: no checkpoint there; train first "
                         "(python examples/flax_train.py ... --out DIR).")
  ckpt = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
  got = ckpt.restore(os.path.abspath(path), args=ocp.args.Composite(
      params=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
  meta = got["meta"]
  m = meta["model"]
  model = nnx.eval_shape(lambda: training.make_model(
      m["kind"], num_features=m["num_features"], num_classes=m["num_classes"],
      hidden=m["hidden"], image_shape=m["image_shape"], rngs=nnx.Rngs(0)))
  params = nnx.state(model, nnx.Param)
  nnx.replace_by_pure_dict(params, got["params"])
  nnx.update(model, params)
  return model, meta


def features_of(path: str, meta: dict) -> np.ndarray:
  """Encodes and standardizes new rows exactly as in training."""
  where = f"--predict {path!r}"
  if not os.path.isfile(path):
    raise UserInputError(f"{where}: no such file.")
  if path.lower().endswith(".npz"):
    x = data.read_npz(path, where, required=("x",))["x"]
  else:
    frame = data.read_csv(path, where)
    if meta["encoding"] is not None:
      x = data.FeatureEncoding.from_json(meta["encoding"]).encode(frame, source=where)
    else:  # digits / .npz training data: numeric columns in training order
      x = frame.to_numpy()
  d = meta["model"]["num_features"]
  x = np.asarray(x)
  if x.ndim != 2 or x.shape[1] != d or not np.issubdtype(x.dtype, np.number):
    raise UserInputError(f"{where}: need {d} numeric feature columns; got shape {x.shape}.")
  if not np.all(np.isfinite(x)):
    raise UserInputError(f"{where}: features must be finite (missing values are not dropped "
                         "when predicting).")
  return ((x - np.asarray(meta["mean"])) / np.asarray(meta["scale"])).astype(np.float32)


def decide(model, meta: dict, x: np.ndarray):
  """``(bayes, expected cost, argmax)`` for standardized rows ``x``."""
  logits = nnx.jit(lambda m, xb: m(xb))(model, jnp.asarray(x)) / meta["temperature"]
  cost = jnp.asarray(meta["cost"], jnp.float32)
  risk = cj.decision_costs(logits, cost)
  return (np.asarray(cj.bayes_decision(logits, cost)), np.asarray(risk.min(-1)),
          np.asarray(logits.argmax(-1)))


def run_predict(args) -> None:
  ckpt_dir = args.checkpoint or os.path.join(args.out, "checkpoint")
  model, meta = load_checkpoint(ckpt_dir)
  x = features_of(args.predict, meta)
  bayes, expected, argmax = decide(model, meta, x)
  names = meta["class_names"]
  import pandas as pd

  os.makedirs(args.out, exist_ok=True)
  out = os.path.join(args.out, "predictions.csv")
  pd.DataFrame({"bayes": [names[i] for i in bayes], "expected_cost": expected.round(6),
                "argmax": [names[i] for i in argmax]}).to_csv(out, index=False)
  print(f"wrote {out}: {len(bayes)} Bayes decisions (T = {meta['temperature']:.3f}, "
        f"cost {meta['cost_spec']})")


# --------------------------------------------------------------------------- #
# Training.
# --------------------------------------------------------------------------- #


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--data", default="digits",
                 help="digits (default), diamonds, or a .npz (x, y) / .csv file")
  p.add_argument("--label-column", default="label", help="label column of a .csv file")
  p.add_argument("--features", default=None, help="comma-separated feature columns")
  p.add_argument("--ordinal", action="store_true", help="a user file's classes are ordered")
  p.add_argument("--max-rows", type=int, default=None, help="stratified subsample")
  p.add_argument("--cost", default="asymmetric",
                 help="forum, ordinal, asymmetric, random, or a CSV file (default: %(default)s)")
  p.add_argument("--loss", default="ce", choices=sorted(training.LOSSES))
  p.add_argument("--loss-param", type=float, default=None, help=PARAM_DOC)
  p.add_argument("--model", default="mlp", choices=("mlp", "cnn"))
  p.add_argument("--hidden", type=int, default=128)
  p.add_argument("--epochs", type=int, default=30)
  p.add_argument("--batch-size", type=int, default=128)
  p.add_argument("--lr", type=float, default=3e-3)
  p.add_argument("--weight-decay", type=float, default=1e-4)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default="runs/flax_train")
  p.add_argument("--predict", default=None, metavar="FILE",
                 help="decide on the rows of FILE with a saved checkpoint instead of training")
  p.add_argument("--checkpoint", default=None,
                 help="checkpoint directory (default: OUT/checkpoint)")
  p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
  args = p.parse_args(argv)
  if args.loss_param is None:
    args.loss_param = DEFAULT_PARAM[args.loss]
  if args.epochs < 1 or args.batch_size < 1 or not (args.lr > 0 and math.isfinite(args.lr)):
    raise UserInputError("--epochs, --batch-size and --lr must be positive.")
  return args


def train(args):
  """Trains, fits the temperature, evaluates, and returns ``(model, meta, metrics, extras)``."""
  if distributed.cluster_detected():
    jax.distributed.initialize()
  k_csv, names_csv = costs.cost_classes([args.cost])
  features = None if args.features is None else [f.strip() for f in args.features.split(",")]
  ds = data.load_data(args.data, label_column=args.label_column, max_rows=args.max_rows,
                      num_classes=k_csv, class_names=names_csv, ordinal=args.ordinal,
                      features=features)
  cost_np = costs.cost_matrix(args.cost, ds.num_classes, class_names=ds.class_names)
  sp = data.make_splits(ds, [args.seed])
  x_tr, y_tr, x_va, y_va, x_te, y_te = (a[0] for a in (
      sp.x_train, sp.y_train, sp.x_val, sp.y_val, sp.x_test, sp.y_test))

  mesh = distributed.data_mesh()
  jax.set_mesh(mesh)
  data_sh = jax.sharding.NamedSharding(mesh, jax.P("data"))
  rep = jax.sharding.NamedSharding(mesh, jax.P())
  batch = distributed.round_batch_size(args.batch_size, len(y_tr))
  if batch % jax.process_count():
    raise UserInputError("the batch size must be divisible by the number of processes.")
  steps = len(y_tr) // batch  # drop the remainder; every epoch reshuffles
  lead = jax.process_index() == 0

  model = training.make_model(args.model, num_features=ds.x.shape[1],
                              num_classes=ds.num_classes, hidden=args.hidden,
                              image_shape=ds.image_shape, rngs=nnx.Rngs(args.seed))
  optimizer = nnx.Optimizer(model, optax.adamw(args.lr, weight_decay=args.weight_decay),
                            wrt=nnx.Param)
  # Replicate model and optimizer state over the mesh.
  nnx.update((model, optimizer), jax.device_put(nnx.state((model, optimizer)), rep))
  cost = jax.device_put(jnp.asarray(cost_np), rep)
  loss_of = training.LOSSES[args.loss]
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
      losses.append(train_step(model, optimizer, global_batch(x_tr[idx], data_sh, batch),
                               global_batch(y_tr[idx], data_sh, batch)))
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
  temp = float(cj.fit_temperature(jnp.asarray(zv), jnp.asarray(y_va)))
  pred_arg = zt.argmax(-1)
  pred_bayes = np.asarray(cj.bayes_decision(jnp.asarray(zt) / temp, jnp.asarray(cost_np)))
  meta = {
      "model": {"kind": args.model, "hidden": args.hidden, "num_features": int(ds.x.shape[1]),
                "num_classes": ds.num_classes, "image_shape": ds.image_shape},
      "temperature": temp, "cost": cost_np.tolist(), "cost_spec": args.cost,
      "class_names": list(ds.class_names), "feature_names": list(ds.feature_names),
      "encoding": None if ds.encoding is None else ds.encoding.to_json(),
      "mean": sp.mean[0].tolist(), "scale": sp.scale[0].tolist(),
      "data": args.data, "label_column": args.label_column, "loss": args.loss,
      "loss_param": args.loss_param,
  }
  metrics = {
      "data": ds.name, "cost": args.cost, "loss": args.loss, "loss_param": args.loss_param,
      "model": args.model, "epochs": args.epochs, "lr": args.lr, "batch_size": batch,
      "devices": distributed.device_summary(), "train_seconds": train_seconds,
      "temperature": temp, "history": history, "data_notes": list(sp.notes),
  }
  for name, pred in (("argmax", pred_arg), ("bayes", pred_bayes)):
    metrics[f"test_acc_{name}"] = float(np.mean(pred == y_te))
    metrics[f"test_cost_{name}"] = float(np.mean(cost_np[y_te, pred]))
    if ds.ordinal:
      metrics[f"test_qwk_{name}"] = float(cj.quadratic_weighted_kappa(
          jnp.asarray(pred), jnp.asarray(y_te), num_classes=ds.num_classes))
  conf = {}
  for n, p in (("argmax", pred_arg), ("bayes", pred_bayes)):
    counts = np.zeros((ds.num_classes,) * 2)
    np.add.at(counts, (y_te, p), 1)
    conf[n] = counts * cost_np  # total cost per (true, predicted) cell
  metrics["cost_weighted_confusion"] = {n: c.tolist() for n, c in conf.items()}
  extras = {"ds": ds, "conf": conf, "outputs": {"val": (zv, y_va), "test": (zt, y_te)},
            "lead": lead}
  return model, meta, metrics, extras


def main(argv=None):
  args = parse_args(argv)
  if args.predict is not None:
    return run_predict(args)
  model, meta, metrics, ex = train(args)
  save_checkpoint(os.path.join(args.out, "checkpoint"), model, meta)  # every process takes part
  if not ex["lead"]:
    return model, meta, metrics
  ds = ex["ds"]
  summary = (
      f"{ds.name} ({len(ds.y)} examples, K={ds.num_classes}), cost {args.cost}, loss "
      f"{args.loss}({args.loss_param:g}), {args.model}, {args.epochs} epochs, batch "
      f"{metrics['batch_size']} on {metrics['devices']}: trained in "
      f"{metrics['train_seconds']:.1f} s\n"
      + "".join(f"note: {n}\n" for n in metrics["data_notes"])
      + f"temperature (validation NLL): {meta['temperature']:.3f}\n"
      f"test accuracy  argmax {metrics['test_acc_argmax']:.4f}   "
      f"Bayes {metrics['test_acc_bayes']:.4f}\n"
      f"test mean cost argmax {metrics['test_cost_argmax']:.4f}   "
      f"Bayes {metrics['test_cost_bayes']:.4f}\n"
  )
  print(summary, end="")
  os.makedirs(args.out, exist_ok=True)
  for split, (z, y) in ex["outputs"].items():
    np.savez(os.path.join(args.out, f"{split}_outputs.npz"), logits=z, y=y)
  with open(os.path.join(args.out, "metrics.json"), "w", encoding="utf-8") as f:
    json.dump(metrics, f, indent=1)
  with open(os.path.join(args.out, "summary.md"), "w", encoding="utf-8") as f:
    f.write("# flax_train\n\n```\n" + summary + "```\n")
  plot(args.out, metrics["history"], ex["conf"], ds.class_names,
       f"{ds.name}, {args.loss}, cost {args.cost}")
  print(f"wrote {args.out}/checkpoint, summary.md, metrics.json, val_outputs.npz, "
        "test_outputs.npz, learning_curves.png, confusion.png")
  return model, meta, metrics


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
  exit_on_user_error(main)
