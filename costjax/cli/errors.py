"""User-input errors of the ``costjax`` command.

Interface (shared by every subcommand):

* :class:`UserInputError` — raise it for any problem with a file or flag the user gave. Its
  message is one line that names the file (or flag) and the problem; it is printed as
  ``error: <message>`` on stderr, with exit status 2 and no traceback.
* :func:`exit_on_user_error` — ``exit_on_user_error(main, argv)`` runs ``main(argv)`` and turns a
  :class:`UserInputError` into that one line and ``SystemExit(2)``.
* :func:`fail` — the one exit path: prints that line and raises ``SystemExit(2)``. Usage
  errors of the parsers (:class:`costjax.cli._common.ArgumentParser`) take it too.
* :func:`report` — prints the one line.

Subcommands validate every input before they create an output directory, so a rejected
command writes nothing.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, NoReturn

EXIT_STATUS = 2  # the exit status of every rejected input


class UserInputError(ValueError):
  """A problem with a file or flag the user gave; reported as one line, without a traceback."""

  def __init__(self, message: str):
    # One line, always: a multi-line message (e.g. from a parser) is folded.
    super().__init__(" ".join(str(message).split()))


def report(error: BaseException, stream=None) -> None:
  """Prints ``error: <message>`` (one line) on ``stream`` (default stderr)."""
  print(f"error: {error}", file=sys.stderr if stream is None else stream)


def exit_on_user_error(main: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
  """Runs ``main(*args, **kwargs)``; a :class:`UserInputError` exits with status 2.

  Returns whatever ``main`` returns. Any other exception propagates unchanged (a bug, not
  bad input, so the traceback is wanted).
  """
  try:
    return main(*args, **kwargs)
  except UserInputError as e:
    fail(e)


def fail(error: BaseException) -> NoReturn:
  """Prints ``error: <message>`` (one line) on stderr and exits with status 2."""
  report(error)
  raise SystemExit(EXIT_STATUS) from None
