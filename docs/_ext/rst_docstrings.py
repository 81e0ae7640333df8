"""Griffe extension: render the reST bits of costjax's Google-style docstrings.

costjax docstrings follow optax: Google sections (``Args:``, ``Returns:``,
``Examples:``) with a few reST constructs inside. mkdocstrings renders
docstrings as Markdown, so without help those show up verbatim. Before the
docstrings are parsed, this extension rewrites

* ``.. math::`` blocks into ``$$ ... $$`` display math (pymdownx.arithmatex),
* ``:math:`x``` into ``$x$``,
* ``:func:`name``` / ``:class:`name``` / ``:meth:`` / ``:mod:`` / ``:obj:`` /
  ``:attr:`` / ``:data:`` into a cross-reference when ``name`` is a public
  costjax name (autorefs), and into inline code otherwise (no inventories are
  fetched: the build is offline),
* ``.. note::`` / ``.. warning::`` / ``.. seealso::`` into admonitions and
  ``.. versionadded:: X`` / ``.. versionchanged:: X`` into an italic line.

Doctest examples are left untouched. The source files are not modified.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(func|class|meth|mod|obj|attr|data|exc):`~?([^`]+)`")
_MATH_ROLE = re.compile(r":math:`([^`]+)`")
_DIRECTIVE = re.compile(r"^(?P<indent>[ \t]*)\.\. (?P<name>[a-z]+)::[ \t]*(?P<arg>.*)$")
_ADMONITIONS = {"note": "note", "warning": "warning", "seealso": "info", "tip": "tip"}


def _indent_of(line: str) -> int:
  return len(line) - len(line.lstrip())


def _rewrite_directives(text: str) -> str:
  lines = text.split("\n")
  out: list[str] = []
  i = 0
  while i < len(lines):
    m = _DIRECTIVE.match(lines[i])
    if not m or lines[i].lstrip().startswith(">>>"):
      out.append(lines[i])
      i += 1
      continue
    indent, name, arg = m["indent"], m["name"], m["arg"].strip()
    base = len(indent)
    # The directive's body: following lines that are blank or indented deeper.
    j = i + 1
    body: list[str] = []
    while j < len(lines) and (not lines[j].strip() or _indent_of(lines[j]) > base):
      body.append(lines[j])
      j += 1
    while body and not body[-1].strip():
      body.pop()
      j -= 1
    content = [ln for ln in body]
    depth = min((_indent_of(ln) for ln in content if ln.strip()), default=base)
    content = [ln[depth:] if ln.strip() else "" for ln in content]
    while content and not content[0]:
      content.pop(0)
    if name == "math":
      math = ([arg] if arg else []) + content
      out += [indent + "$$"] + [indent + ln if ln else "" for ln in math] + [indent + "$$"]
    elif name in _ADMONITIONS:
      out.append(f'{indent}!!! {_ADMONITIONS[name]} "{name.capitalize()}"')
      first = [arg] if arg else []
      out += [indent + "    " + ln if ln else "" for ln in first + content]
    elif name in ("versionadded", "versionchanged", "deprecated"):
      words = {"versionadded": "Added in", "versionchanged": "Changed in",
               "deprecated": "Deprecated since"}[name]
      version, _, rest = arg.partition(" ")
      tail = " ".join([rest] + content).strip()
      out.append(f"{indent}*{words} version {version}.*" + (f" {tail}" if tail else ""))
    else:  # unknown directive: keep its body as text
      out += [indent + ln if ln else "" for ln in content]
    i = j
  return "\n".join(out)


def rst_to_markdown(text: str, public: set[str]) -> str:
  """Rewrites the reST constructs of one docstring (see the module docstring)."""

  def role(m: re.Match[str]) -> str:
    target = m[2].strip()
    short = target.removeprefix("costjax.")
    if short in public:
      return f"[`{short}`][costjax.{short}]"
    return f"`{target}`"

  text = _rewrite_directives(text)
  text = _MATH_ROLE.sub(lambda m: f"${m[1].strip()}$", text)
  return _ROLE.sub(role, text)


class RstToMarkdown(griffe.Extension):
  """Rewrites reST roles and directives of every docstring before parsing."""

  def __init__(self, package: str = "costjax") -> None:
    super().__init__()
    self.package = package

  def _public(self, obj: griffe.Object) -> set[str]:
    try:
      pkg = obj.package
      if pkg.path != self.package:
        return set()
      return {str(name) for name in (pkg.exports or ())}
    except Exception:  # noqa: BLE001 - never break the build over a cross-reference
      return set()

  def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
    if obj.is_alias or obj.docstring is None:
      return
    obj.docstring.value = rst_to_markdown(obj.docstring.value, self._public(obj))
