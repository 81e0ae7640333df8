#!/usr/bin/env bash
# CI after the test suite: build, check and test what users install (issue 27).
#
#  1. Build the sdist, the wheel from that sdist, and the wheel from the tree; check them
#     with `twine check --strict`; the two wheels must hold the same files, the wheel must
#     carry LICENSE and CHANGELOG.md in its .dist-info and the sdist both files.
#  2. Install the wheel into fresh virtual environments (uv: one download cache for all of
#     them) and run .ci/smoke_test.py from outside the source tree:
#       - Python 3.11 and 3.13, `cli` extra, the newest versions the index serves;
#       - Python 3.10, the library alone, newest versions (the `cli` extra needs 3.11);
#       - Python 3.11, `cli` extra, the oldest versions it allows (.ci/min-versions-cli.txt).
#  3. Minimum versions: Python 3.10 with the oldest versions the library allows, pinned
#     (.ci/min-versions.txt), runs the library's unit tests of losses, decisions, cost
#     matrices and calibration (no `cli` extra, no subprocess; listed below).
#  4. Every public function and method annotated (.ci/check_annotations.py); mypy on costjax/
#     (configuration in pyproject.toml).
#
# Runs in the CI virtual environment (the `test` extra: build, twine, uv, mypy). Python
# interpreters: $PYTHON310 / $PYTHON313, else pyenv's newest 3.10.x / 3.13.x, else uv finds
# (or downloads) one. Prints the seconds each step took.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export UV_NO_PROGRESS=1 PIP_DISABLE_PIP_VERSION_CHECK=1
start=$SECONDS
step() {  # wall seconds so far; CPU (user, sys) of this shell's finished child processes
  local f="$work/.times.$BASHPID"
  times >"$f"  # (a redirected builtin runs in this shell, not in a subshell)
  echo "== [$((SECONDS - start)) s; CPU $(tail -n 1 "$f")] $*"
}

find_python() {  # VERSION -> an interpreter path, or VERSION itself for uv to find
  local p
  p="$(ls -d "$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")/versions/$1".*/bin/python 2>/dev/null \
       | sort -V | tail -n 1 || true)"
  echo "${p:-$1}"
}
py310="${PYTHON310:-$(find_python 3.10)}"
py311="$(python -c 'import sys; print(sys.executable)')"  # the CI environment's (3.11)
py313="${PYTHON313:-$(find_python 3.13)}"

# ---- 1. distributions
step "build: sdist, wheel from the sdist, wheel from the tree"
python -m build --no-isolation --outdir "$work/dist" . >"$work/build.log" 2>&1 \
  || { cat "$work/build.log"; exit 1; }
python -m build --no-isolation --wheel --outdir "$work/tree" . >>"$work/build.log" 2>&1 \
  || { cat "$work/build.log"; exit 1; }
sdist="$(ls "$work"/dist/costjax-*.tar.gz)"
wheel="$(ls "$work"/dist/costjax-*.whl)"
python -m twine check --strict "$sdist" "$wheel"
python - "$wheel" "$(ls "$work"/tree/costjax-*.whl)" "$sdist" <<'EOF'
import sys, tarfile, zipfile

def files(path):
  with zipfile.ZipFile(path) as z:
    return {i.filename: i.CRC for i in z.infolist()}

from_sdist, from_tree = files(sys.argv[1]), files(sys.argv[2])
if from_sdist != from_tree:
  diff = sorted(set(from_sdist.items()) ^ set(from_tree.items()))
  sys.exit(f"the wheel built from the sdist differs from the tree's: {diff}")
info = next(n.split("/")[0] for n in from_sdist if n.endswith(".dist-info/METADATA"))
for need in ("licenses/LICENSE", "extra_metadata/CHANGELOG.md"):
  assert f"{info}/{need}" in from_sdist, f"the wheel lacks {info}/{need}"
names = tarfile.open(sys.argv[3]).getnames()
top = names[0].split("/")[0]
for need in ("LICENSE", "CHANGELOG.md", "pyproject.toml", "costjax/py.typed"):
  assert f"{top}/{need}" in names, f"the sdist lacks {need}"
print(f"{len(from_sdist)} files, the same in both wheels; LICENSE and CHANGELOG.md present")
EOF

# ---- 2. the wheel in fresh environments, tested from outside the tree; 3. min versions
env_for() {  # NAME PYTHON [uv pip install arguments...]
  local name=$1 python=$2
  shift 2
  uv venv --quiet --python "$python" "$work/$name"
  uv pip install --quiet --python "$work/$name/bin/python" "$@"
}
smoke() {  # NAME [smoke_test.py flags...]
  local name=$1
  shift
  (cd "$work" && "$work/$name/bin/python" "$root/.ci/smoke_test.py" "$@" "$work/smoke-$name")
}

# Two lanes, one per core (each smoke test is mostly one thread compiling XLA programs);
# uv shares one download cache between them. Each lane's output goes to its log, printed
# when both are done.
lane_a() {
  step "A: Python 3.11, newest versions: wheel[cli]"
  env_for py311 "$py311" "$wheel[cli]"
  smoke py311
  step "A: Python 3.11, the oldest versions the cli extra allows: wheel[cli]"
  env_for min311 "$py311" -c .ci/min-versions-cli.txt "$wheel[cli]"
  smoke min311 --pins "$root/.ci/min-versions-cli.txt"
  step "A: done"
}
lane_b() {
  step "B: Python 3.13, newest versions: wheel[cli]"
  env_for py313 "$py313" "$wheel[cli]"
  smoke py313
  step "B: Python 3.10, newest versions: the wheel (the library; the cli extra needs 3.11)"
  env_for py310 "$py310" "$wheel"
  smoke py310 --library-only
  # ---- 3. minimum versions: the library's unit tests that need neither the `cli` extra
  # nor a subprocess, on the oldest versions it allows.
  step "B: Python 3.10, the oldest versions the library allows: unit tests"
  env_for min310 "$py310" -c .ci/min-versions.txt "$wheel" pytest pytest-xdist hypothesis \
    chex scikit-learn pot
  smoke min310 --library-only --pins "$root/.ci/min-versions.txt"
  # From the tree (the tests import tests/ and conftest.py). -o addopts= leaves out the
  # doctests (their printed digits follow the newest NumPy). jax_compat gives jax 0.6 the
  # tests' spelling jax.enable_x64. Deselected: a test whose oracle, SciPy 1.11's bounded
  # scalar minimiser, stops 2e-4 away from the optimum of a flat NLL (T ~ 534; costjax's
  # fit is the same as with the newest versions, and its NLL is lower). Two workers: the
  # longest step, it gets both cores once lane A is done.
  PYTHONPATH="$root/.ci" "$work/min310/bin/python" -m pytest -q -p jax_compat \
    -p no:cacheprovider -o addopts= -m "not slow" -n 2 \
    --deselect tests/test_calibration.py::test_temperature_probability_labels_and_where_match_scipy \
    tests/test_losses.py tests/test_decisions.py tests/test_cost_matrices.py \
    tests/test_calibration.py
  step "B: done"
}
lane_a >"$work/lane_a.log" 2>&1 &
pid_a=$!
lane_b >"$work/lane_b.log" 2>&1 &
pid_b=$!
status=0
wait "$pid_a" || status=1
wait "$pid_b" || status=1
cat "$work/lane_a.log" "$work/lane_b.log"
[ "$status" = 0 ] || { echo "package checks FAILED"; exit 1; }

# ---- 4. types
step "types: public annotations, mypy costjax"
python .ci/check_annotations.py
python -m mypy

step "package checks passed"
