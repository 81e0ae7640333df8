"""Packaging: ``import costjax`` stays light, and an editable install survives the namespace trap.

The trap: a user clones the repository into a folder named ``costjax``, installs it with
``pip install -e``, and saves a script next to the clone. Python then finds the clone's
folder (no ``__init__.py``) on ``sys.path[0]`` and imports it as an empty namespace
package, unless the installed package is found by the same path search: setuptools'
editable finder, a meta-path hook consulted after the path search, loses
(``AttributeError: module 'costjax' has no attribute 'check_cost_matrix'``); hatchling's
``.pth`` line with the project root wins, since a regular package on any path entry
beats a namespace portion.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import sysconfig

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_import_costjax_does_not_import_the_cli_dependencies():
  code = (
      "import sys, costjax\n"
      "costjax.check_cost_matrix([[0.0, 1.0], [1.0, 0.0]])\n"
      "heavy = ['flax', 'matplotlib', 'sklearn', 'pandas', 'plotnine', 'tqdm', 'orbax', "
      "'costjax.cli']\n"
      "print(sorted(m for m in heavy if m in sys.modules))\n"
  )
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       check=True, env=dict(os.environ, JAX_PLATFORMS="cpu")).stdout
  assert out.strip() == "[]"


def test_cli_is_not_imported_by_the_package():
  with open(os.path.join(ROOT, "costjax", "__init__.py"), encoding="utf-8") as f:
    assert "cli" not in f.read().replace("client", "")


@pytest.mark.skipif(not os.path.isdir(os.path.join(ROOT, ".git")) or shutil.which("git") is None,
                    reason="needs a git checkout")
def test_script_beside_a_clone_named_costjax_imports_the_installed_package(tmp_path):
  clone = tmp_path / "costjax"
  subprocess.run(["git", "clone", "--quiet", "--depth", "1", f"file://{ROOT}", str(clone)],
                 check=True, capture_output=True)
  # A fresh virtual environment that borrows this one's packages (hatchling included)
  # through a .pth line, so that the install needs no network and no copies.
  venv = tmp_path / "venv"
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
  py = str(venv / "bin" / "python")
  venv_site = subprocess.run(
      [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
      capture_output=True, text=True, check=True).stdout.strip()
  ours = [p for p in {sysconfig.get_paths()["purelib"], *site.getsitepackages()}
          if os.path.isdir(p)]
  with open(os.path.join(venv_site, "zz_borrowed.pth"), "w", encoding="utf-8") as f:
    f.write("\n".join(ours) + "\n")
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
  env["JAX_PLATFORMS"] = "cpu"
  proc = subprocess.run(
      [py, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
       "--no-index", "-e", str(clone)], capture_output=True, text=True, env=env, cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]

  script = tmp_path / "use_costjax.py"
  script.write_text(
      "import costjax\n"
      "print(costjax.__file__)\n"
      "print(costjax.check_cost_matrix([[0.0, 2.0], [1.0, 0.0]]).sum())\n")
  proc = subprocess.run([py, str(script)], capture_output=True, text=True, env=env,
                        cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  file, total = proc.stdout.split()
  # The clone's package, imported through the editable install (not the folder beside).
  assert os.path.realpath(file) == os.path.realpath(clone / "costjax" / "__init__.py")
  assert float(total) == 3.0
  # The console script is installed too.
  assert (venv / "bin" / "costjax").exists()
