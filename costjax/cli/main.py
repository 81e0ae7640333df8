"""Entry point of the ``costjax`` command: argument parsing and subcommand dispatch.

  costjax compare --out runs/digits
  costjax compare --data diamonds --cost ordinal --out runs/diamonds
  costjax decide --val val.npz --test test.npz --cost cost.csv --out runs/decide
  costjax study --quick --out runs/study

Every subcommand answers bad input with one line ``error: ...`` on stderr and exit
status 2, and writes nothing then.
"""

from __future__ import annotations

import argparse
import sys

from costjax.cli._common import ArgumentParser, HelpFormatter
from costjax.cli.errors import EXIT_STATUS, exit_on_user_error

DESCRIPTION = (
    "costjax: cost-sensitive classification from the command line. 'costjax compare' trains "
    "cost-aware losses on one table and reports which recipe to use; 'costjax study' does the "
    "same over many tables (a built-in suite of real tables, or a manifest of your own) and "
    "gives the answer across them; 'costjax decide' turns "
    "a model's predicted probabilities into cost-minimising decisions. Run 'costjax COMMAND "
    "--help' for a command's flags.")


def build_parser() -> argparse.ArgumentParser:
  from costjax.cli import compare, decide, study

  p = ArgumentParser(prog="costjax", description=DESCRIPTION, formatter_class=HelpFormatter)
  sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgumentParser)
  sub.required = True
  compare.add_parser(sub)
  decide.add_parser(sub)  # sets run=decide.run
  study.add_parser(sub)
  return p


def main(argv=None) -> int:
  """Runs the command line; returns the exit status (2 for bad input)."""
  parser = build_parser()
  args = parser.parse_args(argv)
  try:
    exit_on_user_error(args.run, args)
  except SystemExit as e:  # a rejected input: errors.fail has printed the one line
    if e.code != EXIT_STATUS:
      raise
    return EXIT_STATUS
  return 0


if __name__ == "__main__":
  sys.exit(main())
