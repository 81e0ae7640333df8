"""``python -m costjax.cli`` is the ``costjax`` command."""

import sys

from costjax.cli.main import main

if __name__ == "__main__":
  sys.exit(main())
