"""Print compact Markdown tables from ``costjax compare``'s results.json files.

  python examples/summarize.py runs/results/*/results.json

Used to build docs/results.md from real runs (nothing is typed in by hand).
"""

from __future__ import annotations

import json
import sys


def _num(x, digits=4) -> str:
  return "n/a" if x is None else f"{x:.{digits}f}"


def _p(x) -> str:
  return "n/a" if x is None else f"{x:.3g}"


def table(res: dict) -> str:
  out = []
  for cost, verdict in zip(res["costs"], res["verdicts"], strict=True):
    rows = [r for r in res["rows"] if r["cost"] == cost]
    out += [f"**{res['data']}, cost `{cost}`** ({len(res['seeds'])} seeds, {res['epochs']} "
            f"epochs, {res['devices']}, {res['total_seconds']:.0f} s in total)", "",
            (f"Verdict ({verdict['outcome']}): " if "outcome" in verdict else "Verdict: ")
            + verdict["sentence"], "",
            "| arm | decoding | chosen | test cost | 95% CI | test acc | p vs CE argmax "
            "| p vs CE Bayes (T) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
      ref = r["arm"] == "ce"
      pa = "—" if ref and r["decoding"] == "argmax" else _p(r["p_vs_ce_argmax"])
      pb = "—" if ref and r["decoding"] == "bayes_t" else _p(r["p_vs_ce_bayes"])
      if r["lr"] is None:  # the best constant prediction: no training
        hp = r.get("chosen") or "-"
      else:
        hp = f"lr={r['lr']:g}"
        if r["hp_name"]:
          hp += f", {r['hp_name']}={r['hp']:g}"
      lo, hi = r["test_cost_ci95"]
      flag = " (diverged)" if r["diverged"] else ""
      out.append(f"| {r['label']} | {r['decoding_label']} | {hp} "
                 f"| {_num(r['test_cost_mean'])} ± {_num(r['test_cost_std'])}{flag} "
                 f"| [{_num(lo)}, {_num(hi)}] | {_num(r['test_acc_mean'], 3)} | {pa} | {pb} |")
    out.append("")
  return "\n".join(out)


def main(paths):
  for p in paths:
    with open(p, encoding="utf-8") as f:
      print(table(json.load(f)))


if __name__ == "__main__":
  main(sys.argv[1:])
