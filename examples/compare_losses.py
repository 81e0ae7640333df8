"""Compare cost-aware losses and decodings: a thin wrapper around ``costjax compare``.

  python examples/compare_losses.py --out runs/digits        # = costjax compare --out runs/digits
  python examples/compare_losses.py --data diamonds --cost ordinal --out runs/diamonds

Every flag is the command's (``costjax compare --help``); the implementation lives in
``costjax/cli/`` (installed with ``pip install -e ".[cli]"``).
"""

from __future__ import annotations

import sys

from costjax.cli.main import main

if __name__ == "__main__":
  sys.exit(main(["compare", *sys.argv[1:]]))
