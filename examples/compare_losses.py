"""Compare cost-aware losses and decodings on the same splits and seeds.

Every arm trains an MLP (or a small CNN) with AdamW. For each arm, all seeds, all
grid points (learning rate x the arm's own hyperparameter) and all cost matrices
train together in ONE jitted program: the whole training run (epochs x minibatches)
is a ``lax.scan``, vmapped over seeds, grid points and a stack of cost matrices.
Each minibatch is sharded over a ``data`` mesh axis spanning every device
(parameters replicated), so the same command runs on one CPU, many forced host
devices, a GPU or a TPU.

Every trained model is decoded twice: by argmax, and by ``costjax.bayes_decision``
after temperature scaling fitted on validation NLL. Each arm's hyperparameters
(learning rate included, the same grid for every arm) are chosen per decoding by
mean validation cost, averaged over seeds. The report gives test cost and accuracy
(mean +- std over seeds), paired Wilcoxon p-values against cross-entropy with argmax
and with Bayes decoding, and training time.

  python examples/compare_losses.py --out runs/digits
  python examples/compare_losses.py --data diamonds --cost ordinal,forum --out runs/diamonds
  python examples/compare_losses.py --data my.csv --label-column y --cost my_cost.csv --out runs/me
"""

from __future__ import annotations

import argparse
import dataclasses
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


@dataclasses.dataclass(frozen=True)
class Arm:
  key: str  # short id
  label: str  # name in the report
  loss: str  # key of common.LOSSES
  hp_name: str | None  # name of the arm's own hyperparameter
  hp_values: tuple[float, ...]  # its grid (one value = fixed)


def default_arms(ordinal: bool) -> list[Arm]:
  arms = [
      Arm("ce", "cross-entropy", "ce", None, (0.0,)),
      Arm("ec", "expected cost", "ec", None, (0.0,)),
      Arm("ce_ec", "CE + λ·expected cost", "ce_ec", "λ", (1.0, 10.0)),
      Arm("soft0.5", "soft-label CE, T=0.5", "soft", "T", (0.5,)),
      Arm("soft1", "soft-label CE, T=1", "soft", "T", (1.0,)),
      Arm("soft2", "soft-label CE, T=2", "soft", "T", (2.0,)),
      Arm("cdw", "CDW-CE", "cdw", "α", (1.0, 2.0)),
      Arm("sinkhorn", "Sinkhorn (cost-smoothed targets)", "sinkhorn", "ε/max C", (0.1,)),
  ]
  if ordinal:
    arms.append(Arm("emd", "ordinal EMD", "emd", None, (0.0,)))
  return arms


# --------------------------------------------------------------------------- #
# Training: one compiled program per arm.
# --------------------------------------------------------------------------- #


def make_train_fn(graphdef, loss_fn, *, epochs, batch_size, n_train, weight_decay, sharding):
  """Returns ``train(params, x_tr, y_tr, x_val, x_te, cost, lr, hp, key)`` for ONE model."""
  steps = n_train // batch_size

  def apply(params, x):
    return nnx.merge(graphdef, params)(x)

  def train(params, x_tr, y_tr, x_val, x_te, cost, lr, hp, key):
    tx = optax.adamw(lr, weight_decay=weight_decay)

    def batch_loss(p, xb, yb):
      return loss_fn(apply(p, xb), yb, cost, hp).mean()

    def step(carry, idx):
      p, opt_state = carry
      # The minibatch is split over the "data" axis; params stay replicated.
      xb = jax.lax.with_sharding_constraint(x_tr[idx], sharding)
      yb = jax.lax.with_sharding_constraint(y_tr[idx], sharding)
      loss, grads = jax.value_and_grad(batch_loss)(p, xb, yb)
      updates, opt_state = tx.update(grads, opt_state, p)
      return (optax.apply_updates(p, updates), opt_state), loss

    def epoch(carry, k):
      perm = jax.random.permutation(k, n_train)[: steps * batch_size]
      carry, losses = jax.lax.scan(step, carry, perm.reshape(steps, batch_size))
      return carry, losses.mean()

    (params, _), curve = jax.lax.scan(epoch, (params, tx.init(params)),
                                      jax.random.split(key, epochs))
    return apply(params, x_val), apply(params, x_te), curve

  return train


def vmapped(train):
  """seeds (innermost) x grid points x cost matrices (outermost)."""
  over_seeds = jax.vmap(train, in_axes=(0, 0, 0, 0, 0, None, None, None, 0))
  over_grid = jax.vmap(over_seeds, in_axes=(None,) * 6 + (0, 0, None))
  return jax.vmap(over_grid, in_axes=(None,) * 5 + (0, None, None, None))


@jax.jit
def evaluate(val_logits, y_val, test_logits, y_test, costs):
  """Scores every model under both decodings.

  Shapes: logits (M, G, S, N, K) for M cost matrices, G grid points, S seeds;
  labels (S, N); costs (M, K, K). Returns dict of (M, G, S) arrays.
  """

  def one(zv, yv, zt, yt, c):
    t = common.fit_temperature(zv, yv)
    out = {"temperature": t, "finite": jnp.all(jnp.isfinite(zv)) & jnp.all(jnp.isfinite(zt))}
    decoded = zip(common.decode(zv, c, t), common.decode(zt, c, t), strict=True)
    for name, (pv, pt) in zip(("argmax", "bayes"), decoded, strict=True):
      out[f"val_cost_{name}"] = jnp.mean(c[yv, pv])
      out[f"test_cost_{name}"] = jnp.mean(c[yt, pt])
      out[f"test_acc_{name}"] = jnp.mean(pt == yt)
      out[f"test_pred_{name}"] = pt
    return out

  f = jax.vmap(one, in_axes=(0, 0, 0, 0, None))  # seeds
  f = jax.vmap(f, in_axes=(0, None, 0, None, None))  # grid
  f = jax.vmap(f, in_axes=(0, None, 0, None, 0))  # costs
  return f(val_logits, y_val, test_logits, y_test, costs)


def run_arm(arm, *, graphdef, params0, splits, costs, lrs, args, mesh):
  """Trains one arm for every (cost, grid point, seed); returns scores and timing."""
  grid = [(lr, hp) for lr in lrs for hp in arm.hp_values]
  lr_arr = jnp.asarray([g[0] for g in grid], jnp.float32)
  hp_arr = jnp.asarray([g[1] for g in grid], jnp.float32)
  cost_free = arm.loss in common.COST_FREE
  train_costs = costs[:1] if cost_free else costs
  n_train = splits.x_train.shape[1]
  bsz = common.round_batch_size(args.batch_size, n_train)
  train = make_train_fn(graphdef, common.LOSSES[arm.loss], epochs=args.epochs, batch_size=bsz,
                        n_train=n_train, weight_decay=args.weight_decay,
                        sharding=common.batch_sharding(mesh))
  rep = common.replicated(mesh)
  fn = jax.jit(vmapped(train), out_shardings=rep)
  put = lambda a: jax.device_put(a, rep)
  keys = jax.random.split(jax.random.key(args.shuffle_seed), len(args.seed_list))
  t0 = time.perf_counter()
  zv, zt, curves = fn(params0, put(splits.x_train), put(splits.y_train), put(splits.x_val),
                      put(splits.x_test), put(train_costs), lr_arr, hp_arr, keys)
  jax.block_until_ready((zv, zt, curves))
  seconds = time.perf_counter() - t0
  if cost_free and len(costs) > 1:  # same models, decoded under every cost matrix
    zv, zt, curves = (jnp.broadcast_to(a, (len(costs), *a.shape[1:])) for a in (zv, zt, curves))
  scores = jax.device_get(evaluate(zv, jnp.asarray(splits.y_val), zt,
                                   jnp.asarray(splits.y_test), jnp.asarray(costs)))
  return {"grid": grid, "scores": scores, "curves": np.asarray(curves), "seconds": seconds,
          "batch_size": bsz}


# --------------------------------------------------------------------------- #
# Selection, statistics, report.
# --------------------------------------------------------------------------- #


def select(result, m: int, decoding: str) -> dict:
  """Grid point with the lowest mean validation cost (over seeds) for cost matrix ``m``."""
  s = result["scores"]
  val = np.asarray(s[f"val_cost_{decoding}"][m], np.float64)  # (G, S)
  finite = np.asarray(s["finite"][m])
  mean_val = np.where(finite.all(axis=1), val.mean(axis=1), np.inf)
  if not np.isfinite(mean_val).any():
    g = 0
  else:
    g = int(np.argmin(mean_val))
  return {
      "g": g,
      "lr": result["grid"][g][0],
      "hp": result["grid"][g][1],
      "val_cost": float(mean_val[g]),
      "test_cost": np.asarray(s[f"test_cost_{decoding}"][m, g], np.float64),
      "test_acc": np.asarray(s[f"test_acc_{decoding}"][m, g], np.float64),
      "test_pred": np.asarray(s[f"test_pred_{decoding}"][m, g]),
      "temperature": np.asarray(s["temperature"][m, g], np.float64),
      "diverged": int((~finite[g]).sum()),
  }


def wilcoxon_p(a: np.ndarray, b: np.ndarray) -> float:
  """Two-sided paired Wilcoxon signed-rank p-value; 1.0 when all differences are 0."""
  from scipy.stats import wilcoxon

  d = np.asarray(a) - np.asarray(b)
  if len(d) < 2 or np.allclose(d, 0.0, atol=1e-12):
    return 1.0
  if not np.all(np.isfinite(d)):
    return float("nan")
  return float(wilcoxon(a, b).pvalue)


def fmt_hp(arm: Arm, sel: dict, n_lrs: int) -> str:
  parts = []
  if n_lrs > 1:
    parts.append(f"lr={sel['lr']:g}")
  if arm.hp_name is not None:
    parts.append(f"{arm.hp_name}={sel['hp']:g}")
  return ", ".join(parts) if parts else "-"


def fmt_p(p: float) -> str:
  if p != p:  # NaN
    return "n/a"
  return f"{p:.3g}"


def build_rows(arms, results, m, n_lrs):
  rows = []
  for arm in arms:
    for dec in ("argmax", "bayes"):
      sel = select(results[arm.key], m, dec)
      rows.append({"arm": arm, "decoding": dec, "sel": sel,
                   "seconds": results[arm.key]["seconds"]})
  ref = {r["decoding"]: r["sel"]["test_cost"] for r in rows if r["arm"].key == "ce"}
  for r in rows:
    r["p_argmax"] = wilcoxon_p(r["sel"]["test_cost"], ref["argmax"])
    r["p_bayes"] = wilcoxon_p(r["sel"]["test_cost"], ref["bayes"])
  return rows


def matrix_md(mat: np.ndarray, names, fmt="{:.1f}") -> str:
  head = "| true \\ pred | " + " | ".join(names) + " |"
  sep = "|---" * (len(names) + 1) + "|"
  body = [f"| **{names[i]}** | " + " | ".join(fmt.format(v) for v in mat[i]) + " |"
          for i in range(len(names))]
  return "\n".join([head, sep, *body])


def write_report(path, *, args, ds, splits, cost_names, costs, arms, results, all_rows,
                 total_seconds, bsz):
  n_lrs = len(args.lr_list)
  s = len(args.seed_list)
  lines = [
      f"# Loss comparison: {ds.name}",
      "",
      f"- data: `{ds.name}`, K = {ds.num_classes} classes, {len(ds.y)} examples; per seed a "
      f"stratified split {splits.x_train.shape[1]} train / {splits.x_val.shape[1]} validation "
      f"/ {splits.x_test.shape[1]} test, standardized on train",
      f"- model: {args.model}" + (f" (hidden {args.hidden})" if args.model == "mlp" else "")
      + f"; AdamW (weight decay {args.weight_decay:g}), batch {bsz}, {args.epochs} epochs",
      f"- seeds: {s} ({', '.join(map(str, args.seed_list))}); init and shuffling shared by "
      "every arm",
      f"- learning-rate grid (every arm): {', '.join(f'{v:g}' for v in args.lr_list)}; each "
      "arm's hyperparameters chosen per decoding by mean validation cost",
      "- Bayes decoding: `costjax.bayes_decision` on logits / T, T fitted on validation NLL",
      "- p-values: two-sided paired Wilcoxon over seeds on test cost, no correction for "
      f"multiple tests (smallest possible with {s} seeds: "
      f"{2.0 / 2 ** s if s > 1 else float('nan'):.3g})",
      f"- devices: {common.device_summary()}; total wall time {total_seconds:.0f} s",
      "- time: wall seconds to compile and train the arm's whole grid x seeds "
      f"x cost matrices{' (cost-free arms train once)' if len(costs) > 1 else ''}",
      "",
  ]
  for m, cname in enumerate(cost_names):
    rows = all_rows[m]
    lines += [f"## Cost: {cname}", "", matrix_md(costs[m], ds.class_names, "{:g}"), ""]
    lines += [
        "| arm | decoding | chosen | test cost | test accuracy | p vs CE argmax "
        "| p vs CE Bayes | time (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
      sel = r["sel"]
      is_ce = r["arm"].key == "ce"
      div = f" ({sel['diverged']} seeds diverged)" if sel["diverged"] else ""
      lines.append(
          f"| {r['arm'].label} | {r['decoding']} | {fmt_hp(r['arm'], sel, n_lrs)} "
          f"| {np.nanmean(sel['test_cost']):.4f} ± {np.nanstd(sel['test_cost']):.4f}{div} "
          f"| {np.nanmean(sel['test_acc']):.4f} ± {np.nanstd(sel['test_acc']):.4f} "
          f"| {'—' if is_ce and r['decoding'] == 'argmax' else fmt_p(r['p_argmax'])} "
          f"| {'—' if is_ce and r['decoding'] == 'bayes' else fmt_p(r['p_bayes'])} "
          f"| {r['seconds']:.1f} |"
      )
    best = min(rows, key=lambda r: r["sel"]["val_cost"])
    lines += ["", f"Best on validation: **{best['arm'].label}, {best['decoding']}** "
              f"({fmt_hp(best['arm'], best['sel'], n_lrs)}), validation cost "
              f"{best['sel']['val_cost']:.4f}. Its cost-weighted test confusion matrix "
              "(confusion counts x C, summed over seeds; rows true, columns predicted):", ""]
    conf = sum(
        common.cost_weighted_confusion(best["sel"]["test_pred"][i], splits.y_test[i], costs[m])
        for i in range(s))
    lines += [matrix_md(conf, ds.class_names), ""]
    ce_bayes = next(r for r in rows if r["arm"].key == "ce" and r["decoding"] == "bayes")
    conf = sum(
        common.cost_weighted_confusion(ce_bayes["sel"]["test_pred"][i], splits.y_test[i],
                                       costs[m]) for i in range(s))
    lines += ["Cross-entropy with Bayes decoding, for comparison:", "",
              matrix_md(conf, ds.class_names), ""]
  lines += ["![test cost per arm](test_cost.png)", ""]
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines))


def plot_bars(path, cost_names, all_rows, title):
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  m = len(cost_names)
  n = len(all_rows[0])
  fig, axes = plt.subplots(m, 1, figsize=(max(8, 0.55 * n), 3.2 * m), squeeze=False)
  for ax, cname, rows in zip(axes[:, 0], cost_names, all_rows, strict=True):
    means = [np.nanmean(r["sel"]["test_cost"]) for r in rows]
    stds = [np.nanstd(r["sel"]["test_cost"]) for r in rows]
    colors = ["tab:blue" if r["decoding"] == "argmax" else "tab:orange" for r in rows]
    ax.bar(range(n), means, yerr=stds, color=colors, capsize=3)
    ref = next(r for r in rows if r["arm"].key == "ce" and r["decoding"] == "bayes")
    ax.axhline(np.nanmean(ref["sel"]["test_cost"]), color="k", ls="--", lw=1,
               label="cross-entropy + Bayes")
    ax.set_xticks(range(n))
    ax.set_xticklabels([f"{r['arm'].label}\n{r['decoding']}" for r in rows], rotation=60,
                       ha="right", fontsize=7)
    ax.set_ylabel("mean test cost")
    ax.set_title(f"{title}, cost: {cname} (blue argmax, orange Bayes; mean ± std over seeds)",
                 fontsize=9)
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_curves(path, arms, results, lrs):
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(7, 4))
  for arm in arms:
    res = results[arm.key]
    g = next(i for i, (lr, _) in enumerate(res["grid"]) if lr == lrs[len(lrs) // 2])
    curve = res["curves"][0, g].mean(axis=0)  # first cost matrix, mean over seeds
    ax.plot(np.arange(1, len(curve) + 1), curve / max(abs(curve[0]), 1e-12), label=arm.label)
  ax.set_xlabel("epoch")
  ax.set_ylabel("training loss / first-epoch loss")
  ax.set_title(f"training curves (lr={lrs[len(lrs) // 2]:g}, mean over seeds)", fontsize=9)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


# --------------------------------------------------------------------------- #
# Command line.
# --------------------------------------------------------------------------- #


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  common.add_data_arguments(
      p, ordinal_help="a user file's classes are ordered (adds the ordinal EMD arm)",
      max_rows_help="stratified subsample of the data (diamonds default: 12000)")
  p.add_argument("--cost", default="asymmetric",
                 help="comma-separated built-ins (forum, ordinal, asymmetric, random) or CSV "
                 "files; all train together through jax.vmap (default: %(default)s)")
  p.add_argument("--seeds", type=int, default=10, help="number of seeds (splits, init, shuffle)")
  p.add_argument("--epochs", type=int, default=None, help="digits: 60, diamonds: 20")
  p.add_argument("--lrs", default="1e-3,3e-3,1e-2", help="learning-rate grid, every arm")
  p.add_argument("--arms", default=None,
                 help="comma-separated subset of arm ids (ce always included): "
                 "ce, ec, ce_ec, soft0.5, soft1, soft2, cdw, sinkhorn, emd")
  p.add_argument("--model", default="mlp", choices=("mlp", "cnn"))
  p.add_argument("--hidden", type=int, default=128)
  p.add_argument("--batch-size", type=int, default=None, help="digits: 128, diamonds: 256")
  p.add_argument("--weight-decay", type=float, default=1e-4)
  p.add_argument("--shuffle-seed", type=int, default=0)
  p.add_argument("--out", default="runs/compare", help="output directory")
  args = p.parse_args(argv)
  if args.seeds < 1:
    raise common.UserInputError("--seeds must be >= 1.")
  args.seed_list = list(range(args.seeds))
  try:
    args.lr_list = [float(v) for v in args.lrs.split(",") if v.strip()]
  except ValueError:
    raise common.UserInputError(f"--lrs {args.lrs!r}: expected comma-separated numbers.") from None
  if not args.lr_list or not all(v > 0 and math.isfinite(v) for v in args.lr_list):
    raise common.UserInputError(f"--lrs {args.lrs!r}: learning rates must be positive.")
  big = args.data == "diamonds"
  if args.epochs is None:
    args.epochs = 20 if big else 60
  if args.batch_size is None:
    args.batch_size = 256 if big else 128
  if args.max_rows is None and big:
    args.max_rows = 12000
  if args.epochs < 1 or args.batch_size < 1:
    raise common.UserInputError("--epochs and --batch-size must be >= 1.")
  return args


def main(argv=None):
  args = parse_args(argv)
  common.maybe_initialize_distributed()
  t_start = time.perf_counter()
  cost_specs = common.parse_costs(args.cost)
  k_csv = common.csv_num_classes(cost_specs)
  ds = common.load_data(args.data, label_column=args.label_column, max_rows=args.max_rows,
                        num_classes=k_csv, ordinal=args.ordinal)
  costs = np.stack([common.cost_matrix(c, ds.num_classes) for c in cost_specs])
  cost_names = [os.path.basename(c) for c in cost_specs]
  splits = common.make_splits(ds, args.seed_list)

  arms = default_arms(ds.ordinal)
  if args.arms:
    wanted = {a.strip() for a in args.arms.split(",")} | {"ce"}
    unknown = wanted - {a.key for a in default_arms(True)}
    if unknown:
      raise common.UserInputError(f"--arms: unknown arm id(s) {sorted(unknown)}.")
    arms = [a for a in arms if a.key in wanted]

  mesh = common.data_mesh()
  jax.set_mesh(mesh)
  abstract = nnx.eval_shape(
      lambda: common.make_model(args.model, ds, hidden=args.hidden, rngs=nnx.Rngs(0)))
  graphdef, _ = nnx.split(abstract)

  @jax.jit
  def init(keys):
    return jax.vmap(lambda k: nnx.split(
        common.make_model(args.model, ds, hidden=args.hidden, rngs=nnx.Rngs(k)))[1])(keys)

  params0 = init(jax.random.split(jax.random.key(1234), len(args.seed_list)))
  params0 = jax.device_put(params0, common.replicated(mesh))

  os.makedirs(args.out, exist_ok=True)
  print(f"{ds.name}: {len(ds.y)} examples, K={ds.num_classes}; costs {cost_names}; "
        f"{len(args.seed_list)} seeds; {args.epochs} epochs; devices: {common.device_summary()}",
        flush=True)
  from tqdm import tqdm

  results = {}
  bar = tqdm(arms, desc="arms", unit="arm", file=sys.stdout)
  for arm in bar:
    bar.set_postfix_str(arm.label)
    results[arm.key] = run_arm(arm, graphdef=graphdef, params0=params0, splits=splits,
                               costs=costs, lrs=args.lr_list, args=args, mesh=mesh)
    tqdm.write(f"  {arm.label}: {results[arm.key]['seconds']:.1f} s", file=sys.stdout)
  bsz = results["ce"]["batch_size"]

  all_rows = [build_rows(arms, results, m, len(args.lr_list)) for m in range(len(costs))]
  total = time.perf_counter() - t_start
  write_report(os.path.join(args.out, "report.md"), args=args, ds=ds, splits=splits,
               cost_names=cost_names, costs=costs, arms=arms, results=results,
               all_rows=all_rows, total_seconds=total, bsz=bsz)
  plot_bars(os.path.join(args.out, "test_cost.png"), cost_names, all_rows, ds.name)
  plot_curves(os.path.join(args.out, "training_curves.png"), arms, results, args.lr_list)
  dump = {
      "data": ds.name, "costs": cost_names, "seeds": args.seed_list, "epochs": args.epochs,
      "lrs": args.lr_list, "devices": common.device_summary(), "total_seconds": total,
      "rows": [
          {"cost": cost_names[m], "arm": r["arm"].key, "label": r["arm"].label,
           "decoding": r["decoding"], "lr": r["sel"]["lr"], "hp": r["sel"]["hp"],
           "val_cost": r["sel"]["val_cost"], "test_cost": r["sel"]["test_cost"].tolist(),
           "test_acc": r["sel"]["test_acc"].tolist(),
           "temperature": r["sel"]["temperature"].tolist(), "p_vs_ce_argmax": r["p_argmax"],
           "p_vs_ce_bayes": r["p_bayes"], "seconds": r["seconds"]}
          for m in range(len(costs)) for r in all_rows[m]],
  }
  with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as f:
    json.dump(dump, f, indent=1)
  print(f"wrote {args.out}/report.md, test_cost.png, training_curves.png, results.json "
        f"({total:.0f} s)")


if __name__ == "__main__":
  common.exit_on_user_error(main)
