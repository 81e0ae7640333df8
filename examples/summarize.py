"""Print compact Markdown tables from compare_losses.py's results.json files.

  python examples/summarize.py runs/results/*/results.json

Used to build docs/results.md from real runs (nothing is typed in by hand).
"""

from __future__ import annotations

import json
import sys

import numpy as np

HP_NAME = {"ce_ec": "λ", "soft0.5": "T", "soft1": "T", "soft2": "T", "cdw": "α",
           "sinkhorn": "ε/max C"}


def table(res: dict) -> str:
  out = []
  for cost in res["costs"]:
    rows = [r for r in res["rows"] if r["cost"] == cost]
    out += [f"**{res['data']}, cost `{cost}`** ({len(res['seeds'])} seeds, {res['epochs']} "
            f"epochs, {res['devices']}, {res['total_seconds']:.0f} s in total)", "",
            "| arm | decoding | chosen | test cost | test acc | p vs CE argmax | p vs CE Bayes "
            "| time (s) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
      c, a = np.asarray(r["test_cost"]), np.asarray(r["test_acc"])
      ref = r["arm"] == "ce"
      pa = "—" if ref and r["decoding"] == "argmax" else f"{r['p_vs_ce_argmax']:.3g}"
      pb = "—" if ref and r["decoding"] == "bayes" else f"{r['p_vs_ce_bayes']:.3g}"
      hp = f"lr={r['lr']:g}"
      if r["arm"] in HP_NAME:
        hp += f", {HP_NAME[r['arm']]}={r['hp']:g}"
      out.append(f"| {r['label']} | {r['decoding']} | {hp} | {c.mean():.4f} ± {c.std():.4f} "
                 f"| {a.mean():.3f} | {pa} | {pb} | {r['seconds']:.1f} |")
    out.append("")
  return "\n".join(out)


def main(paths):
  for p in paths:
    with open(p, encoding="utf-8") as f:
      print(table(json.load(f)))


if __name__ == "__main__":
  main(sys.argv[1:])
