"""``costjax compare``: train every loss arm on the same splits and seeds, decode each three
ways, and write a report with a plain verdict.

For each arm, every seed x grid point (learning rate x the arm's own hyperparameter) x
cost matrix trains in ONE jitted program (``costjax.cli.training``), sharded over a
``data`` mesh axis across every device of every process (``costjax.cli.distributed``).
Every arm gets the same learning-rate grid. Each trained model is decoded by argmax and
by ``costjax.bayes_decision`` after temperature scaling and after vector scaling, both
fitted on validation (``costjax.cli.scoring``); each arm's grid point is chosen per
decoding by mean validation cost, and the verdict is chosen on validation and tested on
test (``costjax.cli.stats``).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

from costjax.cli._common import HelpFormatter
from costjax.cli.errors import UserInputError

DEFAULTS = {
    # data: (epochs, batch size, max rows). Digits: 30 epochs (validation cost is flat after
    # about 15 at the chosen learning rates) keep the default run near a minute on 2 cores.
    "digits": (30, 128, None),
    "diamonds": (20, 256, 12000),
    "file": (30, 128, None),
}


def add_parser(subparsers) -> argparse.ArgumentParser:
  from costjax.cli import distributed
  from costjax.cli.training import ARM_KEYS

  p = subparsers.add_parser(
      "compare", help="compare cost-aware losses and decodings on one table",
      description=(
          "Train every loss arm (cross-entropy, class-weighted CE, expected cost, "
          "CE + λ·expected cost, soft-label CE, CDW-CE, Sinkhorn, CE + λ·Sinkhorn, ordinal "
          "EMD) on the same stratified splits and seeds, with the same learning-rate grid; "
          "decode each model by argmax and by Bayes decision after temperature or vector "
          "scaling; choose everything on validation; write report.md (with a ## Verdict), "
          "results.json, results.csv and PNG plots to --out."),
      formatter_class=HelpFormatter)
  g = p.add_argument_group("data")
  g.add_argument("--data", default="digits",
                 help="digits, diamonds, or a .csv / .npz file (.npz: arrays x and y)")
  g.add_argument("--label-column", default="label", help="label column of a .csv file")
  g.add_argument("--features", default=None,
                 help="comma-separated feature columns to use (default: all but the label)")
  g.add_argument("--ordinal", action="store_true",
                 help="the classes are ordered (adds the ordinal EMD arm; diamonds always is)")
  g.add_argument("--max-rows", type=int, default=None,
                 help="stratified subsample of the data (default: 12000 for diamonds, else all)")
  g = p.add_argument_group("costs and arms")
  g.add_argument("--cost", default=None,
                 help="comma-separated built-ins (forum, ordinal, asymmetric, random) or CSV "
                 "files (rows true, columns predicted; optional header of class names); "
                 "several train together through jax.vmap; optional with --cost-columns, "
                 "where it only fixes the classes (default: asymmetric)")
  g.add_argument("--cost-columns", default=None, metavar="TEMPLATE",
                 help="per-row costs from columns of the --data CSV: TEMPLATE holds {true} "
                 "and {pred} (e.g. cost_{true}_{pred}), replaced by class names; a pair "
                 "without a column costs 0. Every arm trains, decides and is scored with "
                 "each row's own costs; these columns are not features unless --features "
                 "names them")
  g.add_argument("--cost-scale", default=None, metavar="COLUMN",
                 help="per-row costs: the --cost matrix times each row's value of COLUMN "
                 "(e.g. a transaction amount); not a feature unless --features names it")
  g.add_argument("--arms", default=None,
                 help=f"comma-separated subset of arm ids ({', '.join(ARM_KEYS)}); "
                 "cross-entropy always runs (default: all, emd only for ordinal data)")
  g.add_argument("--rope", type=float, default=None,
                 help="region of practical equivalence of the verdict, in cost units: two "
                 "recipes whose mean test costs differ by less are practically the same "
                 "(default: 5%% of cross-entropy + Bayes (temperature)'s mean validation "
                 "cost, per cost matrix)")
  g = p.add_argument_group("training")
  g.add_argument("--seeds", type=int, default=10,
                 help="number of seeds (each its own split, initialization and shuffle)")
  g.add_argument("--epochs", type=int, default=None,
                 help="training epochs (default: 30, diamonds 20)")
  g.add_argument("--lrs", default="1e-3,3e-3,1e-2",
                 help="learning-rate grid, the same for every arm")
  g.add_argument("--model", default="mlp", choices=("mlp", "cnn"),
                 help="MLP, or a small CNN for image data (digits)")
  g.add_argument("--hidden", type=int, default=128, help="hidden units of the MLP")
  g.add_argument("--batch-size", type=int, default=None,
                 help="global minibatch size, rounded to a multiple of the device count "
                 "(default: 128, diamonds 256)")
  g.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay")
  g = p.add_argument_group("output")
  g.add_argument("--out", default="runs/compare", help="output directory")
  g.add_argument("--progress", choices=("auto", "bar", "lines", "none"), default="auto",
                 help="progress display: a bar on a terminal, one line per arm otherwise")
  distributed.add_arguments(p)
  p.set_defaults(run=run)
  return p


def _positive_floats(text: str, flag: str) -> list[float]:
  try:
    vals = [float(v) for v in text.split(",") if v.strip()]
  except ValueError:
    raise UserInputError(f"{flag} {text!r}: expected comma-separated numbers.") from None
  if not vals or not all(v > 0 and math.isfinite(v) for v in vals):
    raise UserInputError(f"{flag} {text!r}: values must be positive and finite.")
  return vals


def check_arguments(args) -> None:
  """Flag checks that need no data (run before anything is loaded or written)."""
  from costjax.cli import distributed, rowcosts

  args.cost_columns = getattr(args, "cost_columns", None)
  args.cost_scale = getattr(args, "cost_scale", None)
  rowcosts.check_flags(args.cost_columns, args.cost_scale)
  per_row = args.cost_columns is not None or args.cost_scale is not None
  if per_row and args.data in DEFAULTS and args.data != "file":
    raise UserInputError(f"--data {args.data}: --cost-columns and --cost-scale read columns "
                         "of a .csv table, not the built-in data.")
  if args.cost is None and args.cost_columns is None:
    args.cost = "asymmetric"
  if per_row and args.cost is not None and "," in args.cost:
    raise UserInputError(f"--cost {args.cost!r}: with --cost-columns or --cost-scale give one "
                         "matrix (or none with --cost-columns), not several.")

  if args.seeds < 1:
    raise UserInputError(f"--seeds must be >= 1; got {args.seeds}.")
  args.seed_list = list(range(args.seeds))
  args.lr_list = _positive_floats(args.lrs, "--lrs")
  kind = args.data if args.data in DEFAULTS else "file"
  epochs, batch, max_rows = DEFAULTS[kind]
  args.epochs = epochs if args.epochs is None else args.epochs
  args.batch_size = batch if args.batch_size is None else args.batch_size
  args.max_rows = max_rows if args.max_rows is None else args.max_rows
  for flag, v in (("--epochs", args.epochs), ("--batch-size", args.batch_size),
                  ("--hidden", args.hidden)):
    if v < 1:
      raise UserInputError(f"{flag} must be >= 1; got {v}.")
  if not (args.weight_decay >= 0 and math.isfinite(args.weight_decay)):
    raise UserInputError(f"--weight-decay must be >= 0; got {args.weight_decay}.")
  if args.rope is not None and not (args.rope >= 0 and math.isfinite(args.rope)):
    raise UserInputError(f"--rope must be finite and >= 0 (cost units); got {args.rope}.")
  if os.path.exists(args.out) and not os.path.isdir(args.out):
    raise UserInputError(f"--out {args.out!r} exists and is not a directory.")
  args.feature_list = (None if args.features is None else
                       [f.strip() for f in args.features.split(",") if f.strip()])
  distributed.check_arguments(args)


def _progress(args, total: int):
  """A tqdm bar on a terminal; one plain line per arm otherwise (no carriage returns)."""
  from costjax.cli import distributed

  mode = args.progress
  if mode == "auto":
    mode = "bar" if sys.stdout.isatty() else "lines"
  if not distributed.is_writer():
    mode = "none"
  return mode


def load_table(args):
  """The table and its costs, validated: ``(ds, costs (M, K, K), cost names)``.

  With ``--cost-columns`` / ``--cost-scale``, ``ds.row_costs`` holds every row's matrix,
  ``M = 1`` and ``costs`` is their mean (for the report); ``check_arguments`` must run first.
  """
  import numpy as np

  from costjax.cli import costs as costs_mod
  from costjax.cli import data as data_mod
  from costjax.cli import rowcosts

  cost_specs = [] if args.cost is None else costs_mod.parse_costs(args.cost)
  k_cost, names_cost = costs_mod.cost_classes(cost_specs)
  where = f"--data {args.data!r}"
  row_costs = cost_columns = None
  if args.cost_columns is not None:
    def cost_columns(df):
      return rowcosts.matching_columns(df.columns, args.cost_columns)

    def row_costs(df, names):
      return rowcosts.from_columns(df, args.cost_columns, names, source=where)
  elif args.cost_scale is not None:
    def cost_columns(df):
      return [args.cost_scale]

    def row_costs(df, names):
      matrix = costs_mod.cost_matrix(cost_specs[0], len(names), class_names=names)
      return rowcosts.from_scale(df, args.cost_scale, matrix, source=where)
  ds = data_mod.load_data(args.data, label_column=args.label_column, max_rows=args.max_rows,
                          num_classes=k_cost, class_names=names_cost, ordinal=args.ordinal,
                          features=args.feature_list, cost_columns=cost_columns,
                          row_costs=row_costs)
  if ds.row_costs is not None:
    # One "matrix" (M = 1): the rows' mean, shown in the report; every computation uses
    # the rows' own matrices.
    costs = ds.row_costs.astype(np.float64).mean(axis=0, keepdims=True).astype(np.float32)
    cost_names = ([f"per-row {args.cost_columns}"] if args.cost_columns is not None else
                  [f"{os.path.basename(cost_specs[0])} x {args.cost_scale}"])
  else:
    costs = np.stack([costs_mod.cost_matrix(c, ds.num_classes, class_names=ds.class_names)
                      for c in cost_specs]).astype(np.float32)
    cost_names = [os.path.basename(c) for c in cost_specs]
  return ds, costs, cost_names


def run(args) -> dict:
  """Runs ``costjax compare``; returns the results dictionary (as written to results.json)."""
  check_arguments(args)
  from costjax.cli import data as data_mod
  from costjax.cli import distributed, plots, report, scoring, stats, training

  t_start = time.perf_counter()
  # Validate every input before anything is initialized or written.
  ds, costs, cost_names = load_table(args)
  if len(set(cost_names)) != len(cost_names):
    raise UserInputError(f"--cost {args.cost!r}: the same matrix name appears twice.")
  arms = training.select_arms(args.arms, ordinal=ds.ordinal)
  training.check_model(args.model, num_features=ds.x.shape[1], image_shape=ds.image_shape)
  splits = data_mod.make_splits(ds, args.seed_list)

  distributed.initialize(args)
  mesh = distributed.data_mesh()
  n_train = splits.x_train.shape[1]
  bsz = distributed.round_batch_size(args.batch_size, n_train)
  writer = distributed.is_writer()
  mode = _progress(args, len(arms))

  def say(msg):
    if mode != "none":
      print(msg, flush=True)

  say(f"{ds.name}: {len(ds.y)} examples, K={ds.num_classes}; costs {', '.join(cost_names)}; "
      f"{len(args.seed_list)} seeds, {args.epochs} epochs, {len(arms)} arms; devices: "
      f"{distributed.device_summary()}")

  def model_fn(rngs):
    return training.make_model(args.model, num_features=ds.x.shape[1],
                               num_classes=ds.num_classes, hidden=args.hidden,
                               image_shape=ds.image_shape, rngs=rngs)

  graphdef, params0 = training.init_params(model_fn, len(args.seed_list))
  feed = distributed.make_feed(splits, args.seed_list, mesh)

  # Compile ahead in two background threads while the main thread trains: XLA compiles
  # with the GIL released, so compilation of arm i+1 overlaps the training of arm i.
  from concurrent.futures import ThreadPoolExecutor

  common = dict(graphdef=graphdef, params0=params0, feed=feed, costs=costs, lrs=args.lr_list,
                epochs=args.epochs, batch_size=bsz, weight_decay=args.weight_decay)
  results, scores = {}, {}
  bar = None
  if mode == "bar":
    from tqdm import tqdm

    bar = tqdm(total=len(arms), desc="arms", unit="arm", file=sys.stdout)
  groups = training.group_arms(arms)
  done = 0
  with ThreadPoolExecutor(max_workers=2) as pool:
    pending = [pool.submit(training.prepare_arm, training.merge(groups[0]), **common)]
    scorer = pool.submit(scoring.compile_scorer, num_costs=len(costs),
                         num_seeds=len(args.seed_list), n_val=feed.n_val, n_test=feed.n_test,
                         num_classes=ds.num_classes, per_row=ds.row_costs is not None)
    pending += [pool.submit(training.prepare_arm, training.merge(g), **common)
                for g in groups[1:]]
    for group, fut in zip(groups, pending, strict=True):
      merged = training.execute(fut.result(), feed=feed, num_costs=len(costs))
      for key, res in training.split(merged, group).items():
        arm = next(a for a in group if a.key == key)
        if bar is not None:
          bar.set_postfix_str(arm.label)
        t0 = time.perf_counter()
        scores[key] = scoring.score(
            res.val_logits, splits.y_val, res.test_logits, splits.y_test, costs,
            scorer=scorer.result(),
            row_costs=None if splits.c_val is None else (splits.c_val, splits.c_test))
        results[key] = res
        done += 1
        n_m = 1 if arm.loss in training.COST_FREE else len(costs)
        shared = f" (one program with {len(group) - 1} other arm(s))" if len(group) > 1 else ""
        msg = (f"[{done}/{len(arms)}] {arm.label}: {len(res.grid)} grid point(s) x "
               f"{len(args.seed_list)} seed(s) x {n_m} matrix(es): compiled in "
               f"{res.compile_seconds:.1f} s, trained in {res.train_seconds:.1f} s{shared}, "
               f"decoded in {time.perf_counter() - t0:.1f} s")
        if bar is not None:
          bar.update(1)
          bar.write(msg, file=sys.stdout)
        else:
          say(msg)
  if bar is not None:
    bar.close()

  all_rows = [stats.build_rows(arms, results, scores, m, scoring.DECODINGS, splits=splits,
                               cost=costs[m], rope=args.rope, class_names=ds.class_names)
              for m in range(len(costs))]
  n_tr, n_te = splits.y_train.shape[1], splits.y_test.shape[1]
  verdicts = [stats.verdict(rows, scoring.DECODING_LABELS, n_train=n_tr, n_test=n_te,
                            rope=rows[0].rope) for rows in all_rows]
  total = time.perf_counter() - t_start
  compare_run = report.CompareRun(
      args=args, ds=ds, splits=splits, cost_names=cost_names, costs=costs, arms=arms,
      results=results, scores=scores, all_rows=all_rows, verdicts=verdicts, total_seconds=total,
      batch_size=bsz, devices=distributed.device_summary())
  summary = report.results_dict(compare_run)
  if writer:
    os.makedirs(args.out, exist_ok=True)
    report.write_all(args.out, summary)
    figures = plots.write_all(args.out, summary, compare_run)
    report.write_markdown(os.path.join(args.out, "report.md"), summary, figures=figures,
                          class_names=ds.class_names)
    for v in summary["verdicts"]:
      say(f"verdict ({v['cost']}): {v['sentence']}")
    pngs = [f for files in figures.values() for f in files.values()]
    say(f"wrote {args.out}/report.md, results.json, results.csv, {', '.join(pngs)} "
        f"({total:.0f} s)")
  return summary
