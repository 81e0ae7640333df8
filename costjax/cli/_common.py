"""Argument parsing shared by every subcommand of the ``costjax`` command.

* :class:`HelpFormatter` — ``--help`` shows ``(default: ...)`` after a flag's help.
* :class:`ArgumentParser` — ``argparse``'s usage errors take the command's one error path
  (:func:`costjax.cli.errors.fail`): one line ``error: ...`` on stderr, exit status 2.
"""

from __future__ import annotations

import argparse

from costjax.cli.errors import UserInputError, fail


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
  """Shows ``(default: ...)`` after every flag, except where the help already says it or
  the default is None (then the help text describes what happens)."""

  def _get_help_string(self, action):
    text = action.help or ""
    if "(default" in text or action.default is None:
      return text
    return super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
  """argparse's usage errors as the one line ``error: <prog>: ...`` (exit status 2)."""

  def error(self, message):
    fail(UserInputError(f"{self.prog}: {message}"))
