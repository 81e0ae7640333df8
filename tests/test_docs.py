"""The documentation site: page code runs, the API reference is complete, the build is strict.

* Every ```python block of every page under docs/ runs, the blocks of one page
  in order in one namespace (so a page reads as one script). A block is skipped
  when the line just before its opening fence is ``<!-- skip -->``; use that
  only for code that cannot run in CI (a real dataset, a GPU), never to hide a
  failure.
* The multi-device guide also runs in a subprocess with 8 simulated CPU devices
  (``XLA_FLAGS=--xla_force_host_platform_device_count=8``), so its sharding code
  is checked on a real multi-device mesh as well as on one device.
* Every name in ``costjax.__all__`` has a ``::: costjax.<name>`` entry in the
  API reference (docs/api.md or docs/api/*.md).
* ``mkdocs build --strict`` succeeds (skipped if the docs extra is not
  installed): broken links, missing nav targets, pages left out of the nav and
  docstring warnings all fail it.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import pytest

import costjax

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SKIP_MARK = "<!-- skip -->"
MULTI_DEVICE_PAGES = ("guides/multi_device.md",)

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\n`]*)$")


def python_blocks(text: str) -> list[tuple[int, str]]:
  """``(line number, code)`` of the runnable ```python blocks of a Markdown page."""
  lines = text.split("\n")
  blocks = []
  i = 0
  while i < len(lines):
    m = _FENCE.match(lines[i])
    if not m:
      i += 1
      continue
    indent, fence, info = m["indent"], m["fence"], m["info"].strip()
    start = i
    i += 1
    body = []
    while i < len(lines):
      close = _FENCE.match(lines[i])
      if (
          close
          and close["fence"][0] == fence[0]
          and len(close["fence"]) >= len(fence)
          and not close["info"].strip()
      ):
        break
      body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
      i += 1
    i += 1
    lang = info.lstrip("{.").split()[0].rstrip("}") if info else ""
    skipped = start > 0 and lines[start - 1].strip() == SKIP_MARK
    if lang in ("python", "py") and not skipped:
      blocks.append((start + 1, textwrap.dedent("\n".join(body))))
  return blocks


def _pages() -> list[Path]:
  return sorted(p for p in DOCS.rglob("*.md") if not any(s.startswith("_") for s in p.parts))


def _page_id(page: Path) -> str:
  return page.relative_to(DOCS).as_posix()


PAGES_WITH_CODE = [p for p in _pages() if python_blocks(p.read_text())]


def run_page(page: Path) -> dict:
  """Executes a page's python blocks in order in one fresh namespace."""
  page = Path(page).resolve()
  namespace: dict = {"__name__": "__docs__"}
  for line, code in python_blocks(page.read_text()):
    try:
      exec(compile(code, f"{_page_id(page)}:{line}", "exec"), namespace)  # noqa: S102
    except Exception as e:
      raise AssertionError(
          f"docs/{_page_id(page)}: the python block at line {line} failed: "
          f"{type(e).__name__}: {e}"
      ) from e
  return namespace


def test_fence_parser():
  page = textwrap.dedent("""\
      Text.

      ```python
      x = 1
      ```

      <!-- skip -->
      ```python
      raise RuntimeError
      ```

      !!! note
          ```python
          y = x + 1
          ```

      ```bash
      echo no
      ```
      """)
  assert [code.strip() for _, code in python_blocks(page)] == ["x = 1", "y = x + 1"]


@pytest.mark.parametrize("page", PAGES_WITH_CODE, ids=_page_id)
def test_page_code_runs(page):
  with jax.numpy_rank_promotion("allow"):  # user code runs under JAX's defaults
    run_page(page)


def test_readme_code_runs():
  """The README's quick start is real code too."""
  namespace: dict = {"__name__": "__readme__"}
  blocks = python_blocks((ROOT / "README.md").read_text())
  assert blocks, "README.md lost its python example"
  with jax.numpy_rank_promotion("allow"):  # user code runs under JAX's defaults
    for line, code in blocks:
      exec(compile(code, f"README.md:{line}", "exec"), namespace)  # noqa: S102
  assert float(namespace["loss"]) > 0


@pytest.mark.parametrize("page", MULTI_DEVICE_PAGES)
def test_page_code_runs_on_8_devices(page):
  path = DOCS / page
  if not path.exists():
    pytest.fail(f"docs/{page} is missing")
  script = f"""
import sys
sys.path.insert(0, {str(ROOT / "tests")!r})
import jax
assert jax.device_count() == 8, jax.devices()
from test_docs import run_page
from pathlib import Path
ns = run_page(Path({str(path)!r}))
print("devices:", jax.device_count())
"""
  env = dict(os.environ)
  env["XLA_FLAGS"] = (
      env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
  ).strip()
  env["JAX_PLATFORMS"] = "cpu"
  proc = subprocess.run(
      [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
      timeout=300,
  )
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert "devices: 8" in proc.stdout


def _api_pages() -> list[Path]:
  pages = [DOCS / "api.md"] if (DOCS / "api.md").exists() else []
  return pages + sorted((DOCS / "api").glob("*.md"))


def test_api_reference_covers_every_public_name():
  documented = set()
  for page in _api_pages():
    documented |= set(re.findall(r"^:::\s+costjax\.(\w+)\s*$", page.read_text(), re.M))
  missing = sorted(set(costjax.__all__) - documented)
  assert not missing, f"names in costjax.__all__ without a '::: costjax.<name>' entry: {missing}"
  unknown = sorted(documented - set(costjax.__all__))
  assert not unknown, f"API reference entries not in costjax.__all__: {unknown}"


def test_mkdocs_build_strict(tmp_path):
  for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
    if importlib.util.find_spec(module.split(".")[0]) is None:
      pytest.skip(f"the docs extra is not installed ({module} missing): pip install -e .[docs]")
  env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
  proc = subprocess.run(
      [sys.executable, "-m", "mkdocs", "build", "--strict",
       "-f", str(ROOT / "mkdocs.yml"), "-d", str(tmp_path / "site")],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
  )
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert (tmp_path / "site" / "api" / "index.html").exists()
  check_offline_math(tmp_path / "site")


KATEX = "javascripts/vendor/katex/"
_ARITHMATEX = re.compile(r'<(span|div) class="arithmatex">(.*?)</\1>', re.S)
_KATEX_JS = """
const katex = require(process.argv[1]);
const items = JSON.parse(require('fs').readFileSync(0, 'utf8'));
const bad = [];
for (const it of items) {
  try { katex.renderToString(it.tex, {displayMode: it.display, throwOnError: true}); }
  catch (e) { bad.push(it.page + ': ' + e.message); }
}
console.log(JSON.stringify(bad));
"""


def katex_errors(katex_js: Path, items: list[dict]) -> list[str]:
  """Renders each ``{"tex", "display", "page"}`` with KaTeX under Node.js; the parse errors."""
  import json

  proc = subprocess.run(["node", "-e", _KATEX_JS, str(katex_js)], input=json.dumps(items),
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  return json.loads(proc.stdout)


def check_offline_math(site: Path) -> None:
  """The built site renders math offline: vendored KaTeX on every page, no CDN, valid TeX."""
  import html
  import shutil

  pages = sorted(site.rglob("*.html"))
  items = []
  for page in pages:
    text = page.read_text()
    for url in re.findall(r'(?:src|href)="(https?://[^"]+)"', text):
      assert "cdn" not in url and "mathjax" not in url.lower(), f"{page}: loads {url}"
    assert not re.search(r"<script[^>]*mathjax|window\.MathJax", text, re.I), \
        f"{page} still loads MathJax"
    if page.name == "index.html" and "<article" in text:
      rel = os.path.relpath(site / KATEX, page.parent).replace(os.sep, "/")
      for name in ("katex.min.js", "contrib/auto-render.min.js"):
        assert f'<script src="{rel}/{name}"' in text, f"{page}: {name} not loaded"
      assert f'href="{rel}/katex.min.css"' in text, f"{page}: katex.min.css not linked"
    for _, body in _ARITHMATEX.findall(text):
      tex = html.unescape(body).strip()
      items.append({"page": str(page.relative_to(site)), "tex": tex[2:-2],
                    "display": tex.startswith("\\[")})
  for name in ("katex.min.js", "contrib/auto-render.min.js", "katex.min.css",
               "fonts/KaTeX_Main-Regular.woff2"):
    assert (site / KATEX / name).is_file(), f"{KATEX}{name} is not in the built site"
  assert len(items) > 50, f"only {len(items)} formulas found: did the math markup change?"
  if shutil.which("node") is None:
    return  # the references are checked; parsing every formula needs Node.js
  katex_js = site / KATEX / "katex.min.js"
  # The check itself works: a broken formula is caught.
  assert katex_errors(katex_js, [{"tex": "\\frac{1", "display": False, "page": "x"}])
  errors = katex_errors(katex_js, items)
  assert not errors, f"KaTeX cannot render {len(errors)} formula(s): {errors[:5]}"
  browser = shutil.which("chromium") or shutil.which("chromium-browser")
  if browser is not None:  # a real browser, offline (file://): every formula typeset
    page = site / "theory" / "index.html"
    proc = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
         "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    dom = proc.stdout
    formulas = dom.count('class="arithmatex"')
    assert formulas > 20, proc.stderr[-2000:]
    assert dom.count('class="katex"') == formulas and "katex-error" not in dom
