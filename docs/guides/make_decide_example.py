"""Regenerates every number of docs/guides/decide.md (not run in CI).

Runs the page's own python blocks (the scikit-learn and gradient-boosting recipes; blocks
marked ``<!-- skip -->``, such as the PyTorch one, are left out) in a temporary folder, then
``costjax decide`` on the files they wrote, exactly as the page's commands do, and writes
what the page shows:

* ``docs/_generated/decide_<name>_report.md``: the calibration, test cost and verdict sections
  of each run's ``report.md`` (headings demoted to fit the page);
* ``docs/_generated/decide_<name>_predictions.md``: the first rows of ``predictions.csv``;
* ``docs/guides/img/decide_expected_cost.png``: the scikit-learn run's plot.

  python docs/guides/make_decide_example.py
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import pandas as pd

from costjax.cli import decide

HERE = Path(__file__).resolve().parent
PAGE = HERE / "decide.md"
GENERATED = HERE.parent / "_generated"
# (name, the files the page's blocks write, extra flags); the same commands as the page shows.
RUNS = (
    ("sklearn", "sk", ["--abstain-cost", "0.5", "--id-column", "patient"]),
    ("hgb", "hgb", []),
)


def page_blocks(text: str) -> list[str]:
  blocks, lines, i = [], text.split("\n"), 0
  while i < len(lines):
    if lines[i].strip() == "```python":
      skipped = i > 0 and lines[i - 1].strip() == "<!-- skip -->"
      j = lines.index("```", i + 1)
      if not skipped:
        blocks.append("\n".join(lines[i + 1:j]))
      i = j
    i += 1
  return blocks


def report_sections(report: str) -> str:
  """The calibration, test cost and verdict sections, headings demoted by two levels."""
  body = report.split("## Calibration", 1)[1].split("## Predicted against realized cost")[0]
  body = "## Calibration" + body
  return re.sub(r"^## ", "#### ", body, flags=re.M).strip() + "\n"


def main() -> None:
  GENERATED.mkdir(exist_ok=True)
  work = Path(tempfile.mkdtemp(prefix="decide_docs_"))
  old = os.getcwd()
  try:
    namespace = {"__name__": "__docs__", "DEMO": str(work)}
    os.chdir(work)
    for code in page_blocks(PAGE.read_text()):
      exec(compile(code, str(PAGE), "exec"), namespace)  # noqa: S102
    demo = Path(namespace["demo"])
    for name, prefix, flags in RUNS:
      out = work / f"out_{name}"
      argv = ["--val", str(demo / f"{prefix}_val.csv"), "--test", str(demo / f"{prefix}_test.csv"),
              "--cost", str(demo / "cost.csv"), "--out", str(out), "--quiet", *flags]
      decide.main(argv)
      report = (out / "report.md").read_text().replace(str(demo) + "/", "")
      (GENERATED / f"decide_{name}_report.md").write_text(report_sections(report))
      preds = pd.read_csv(out / "predictions.csv", dtype=str, keep_default_na=False).head(6)
      rows = ["| " + " | ".join(preds.columns) + " |", "|" + "---|" * len(preds.columns)]
      rows += ["| " + " | ".join(r) + " |" for r in preds.itertuples(index=False)]
      (GENERATED / f"decide_{name}_predictions.md").write_text("\n".join(rows) + "\n")
      if name == "sklearn":
        shutil.copy(out / "expected_cost.png", HERE / "img" / "decide_expected_cost.png")
      print(f"{name}: wrote docs/_generated/decide_{name}_*.md")
  finally:
    os.chdir(old)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
  main()
