import atexit
import fcntl
import gc
import os
import shutil
import sys
import tempfile

import numpy as np
import pytest

# One XLA compilation cache for this test session, shared by the xdist workers and by
# the subprocesses the CLI, example and multi-process tests start (they inherit the
# environment): the same programs compile once instead of once per process. It is
# created empty per session, so timings stay those of a cold machine, and removed at
# the end. A cache hit returns the same executable, so no result depends on it.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache = tempfile.mkdtemp(prefix="costjax-tests-xla-cache-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
  # Programs that took at least 0.2 s to compile. Caching every program (0 s) was tried:
  # on jax 0.6.0 (the oldest version the library allows) it made one calibration test
  # return a wrong fit, and the fresh-clone suite was no faster (docs/testing.md).
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)

# The suite is bound by XLA compile time (about twelve thousand small programs), not by
# run time, so it compiles with LLVM's backend optimisation off and with XLA's CPU
# loop-fusion emitters instead of its newer MLIR fusion emitters, which take about twice
# as long to compile a small program (docs/testing.md, "Suite time"). The programs are
# the same (XLA's HLO passes, fusion included, still run; only how a fusion becomes
# machine code differs, which every test's tolerance absorbs). Subprocesses inherit it.
# COSTJAX_TESTS_FULL_OPT=1 runs the suite with XLA's and JAX's defaults, the ones users
# and the benchmarks get (this and the MLIR contexts below).
_FAST_COMPILE = ("--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
                 " --xla_cpu_use_fusion_emitters=false")
if not os.environ.get("COSTJAX_TESTS_FULL_OPT") and _FAST_COMPILE not in os.environ.get(
    "XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FAST_COMPILE}".strip()
  # Each lowered operation's MLIR location is its innermost user frame instead of the full
  # Python traceback (JAX's default, up to 100 frames, and a test's stack is deep with
  # pytest's frames): less CPU, measured side by side (docs/testing.md, "The time budget").
  # Only the source information inside compiled programs changes, never a value or an
  # error message.
  os.environ.setdefault("JAX_INCLUDE_FULL_TRACEBACKS_IN_LOCATIONS", "false")


@pytest.fixture(scope="session")
def run_once(request, tmp_path_factory):
  """``run_once(name, make)``: a folder that ``make(folder)`` filled once per test session.

  For an expensive end-to-end run that several tests read (a training run, a report):
  a module-scoped fixture runs once per xdist worker that takes one of the module's
  tests, and work stealing often splits a module, so the run would be paid twice. The
  workers share the parent of their base temporary folders; a file lock there makes the
  first one run it and the other wait for it and read the same files. ``make`` must put
  everything the tests read into the folder; when it raises, the next caller retries.
  """
  base = tmp_path_factory.getbasetemp()
  root = base.parent if hasattr(request.config, "workerinput") else base

  def run(name, make):
    folder = root / f"run-once-{name}"
    with open(root / f"run-once-{name}.lock", "w") as lock:
      fcntl.flock(lock, fcntl.LOCK_EX)
      if not (folder / ".done").exists():
        folder.mkdir(exist_ok=True)
        make(folder)
        (folder / ".done").write_text("")
    return folder

  return run


@pytest.fixture(autouse=True)
def _strict_rank_promotion(request):
  """costjax must not rely on implicit rank promotion: users may forbid it
  (``jax.numpy_rank_promotion("raise")``, as optax's tests do). Every test runs
  under it; code written as a user would (the docstring examples here, the docs'
  pages in tests/test_docs.py) runs under JAX's defaults."""
  import jax
  from _pytest.doctest import DoctestItem

  mode = "allow" if isinstance(request.node, DoctestItem) else "raise"
  with jax.numpy_rank_promotion(mode):
    yield


@pytest.fixture(autouse=True)
def _doctest_printoptions(doctest_namespace):
  np.set_printoptions(precision=4, suppress=True)
  doctest_namespace["np"] = np


def _one_mlir_context_per_thread():
  """Lowers every program of a test process into one MLIR context per thread.

  JAX creates a fresh MLIR context for each program it lowers (loading and registering
  its dialects each time) and the lowered programs it caches keep theirs alive, so a
  worker that lowers thousands of small programs spends CPU on contexts and holds
  gigabytes of them. Reusing one per thread saves CPU and most of that memory (measured
  in docs/testing.md, "The time budget", seventh session). What is lowered is the same; a
  context only holds dialect registrations and uniqued types and attributes, nothing a
  program's meaning depends on. Subprocesses (the command line, the examples) keep JAX's
  default: their few large programs gained nothing from it.
  """
  import threading

  from jax._src.interpreters import mlir

  make = getattr(mlir, "make_ir_context", None)
  if make is None:  # a JAX without it: the suite runs as JAX's default, only slower
    return
  local = threading.local()

  def reused():
    context = getattr(local, "context", None)
    if context is None:
      context = local.context = make()
    return context

  mlir.make_ir_context = reused


def pytest_configure(config):
  # In the processes that run tests: an xdist controller never imports JAX.
  if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
    return
  if not os.environ.get("COSTJAX_TESTS_FULL_OPT"):
    _one_mlir_context_per_thread()


def pytest_collection_finish(session):
  """Fewer, cheaper garbage collections while the tests run (docs/testing.md).

  Tracing and compiling allocate millions of short-lived objects, and every JAX cache
  entry the suite builds is long-lived, so CPython's default thresholds (a collection
  every 700 allocations, a full one every 100 of those) spent about 16 s per worker
  scanning the same long-lived objects again (6 s with the settings below). After
  collection, everything imported so far (JAX, SciPy, the test modules) is moved out of
  the collector's sight (``gc.freeze``) and collections run 14 times less often.
  Reference counting still frees everything else at once; cycles are still collected,
  only later.
  """
  del session
  gc.collect()
  gc.freeze()
  gc.set_threshold(10_000, 20, 20)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
  """An xdist worker leaves without tearing JAX down (docs/testing.md, "Sixth session").

  By now the worker has sent its results and its ``workerfinished`` event (in
  ``pytest_sessionfinish``), and this is the last hook it runs. What would follow is
  interpreter shutdown: JAX's ``atexit`` clean-up destroys every compiled program the
  worker holds (thousands), and freeing them took longer than the controller waits for a
  worker to exit before it kills it: wall time spent waiting for nothing. The operating
  system frees the memory at once. The main
  process (and a run without xdist) exits normally.
  """
  if not hasattr(config, "workerinput"):
    return
  for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
    if stream is not None:
      stream.flush()
  os._exit(0)


def pytest_collection_modifyitems(config, items):
  _pair_precondition_tests(items)
  if getattr(config.option, "numprocesses", None):
    _slow_tests_first_on_each_worker(items)


def _pair_precondition_tests(items):
  """Runs each precondition case's valid-input test right after its broken-input test.

  Both use the case's two compiled programs (``_programs`` in tests/test_preconditions.py,
  cached per process); xdist's work stealing hands out contiguous runs of tests, so
  neighbours share a worker and the programs compile once instead of once per worker.
  """
  prefix = "tests/test_preconditions.py::"
  valid = {it.nodeid.split("[", 1)[1]: it for it in items
           if it.nodeid.startswith(prefix + "test_valid_input_passes[")}
  if not valid:
    return
  order = []
  for it in items:
    if it.nodeid.startswith(prefix + "test_valid_input_passes["):
      continue
    order.append(it)
    if it.nodeid.startswith(prefix + "test_precondition["):
      pair = valid.pop(it.nodeid.split("[", 1)[1], None)
      if pair is not None:
        order.append(pair)
  items[:] = order + list(valid.values())


def _slow_tests_first_on_each_worker(items):
  """Orders the collection so that each of two xdist workers starts with slow tests.

  Work stealing (``--dist worksteal``) gives the first half of the collection to one worker
  and the second half to the other, and an idle worker takes the back half of the other's
  queue. A long test that starts last bounds the wall time, so the slow tests go first in
  each half, a test module's slow tests together (they may share one run: ``run_once``),
  the modules alternating between the halves; the fast tests fill both halves up.
  """
  groups: dict[str, list] = {}
  fast = []
  for it in items:
    if it.get_closest_marker("slow") is not None:
      groups.setdefault(it.nodeid.split("::", 1)[0], []).append(it)
    else:
      fast.append(it)
  if not groups:
    return
  # Longest first, each to the lighter half. A module's weight: its end-to-end run(s) plus
  # a little per test (the precondition sweep's 102 small tests weigh about 6 runs).
  weight = {name: 1 + len(group) / 20 for name, group in groups.items()}
  halves: tuple[list, list] = ([], [])
  loads = [0.0, 0.0]
  for name in sorted(groups, key=lambda n: -weight[n]):
    side = loads.index(min(loads))
    halves[side].extend(groups[name])
    loads[side] += weight[name]
  half = (len(items) + 1) // 2
  room = max(0, half - len(halves[0]))
  items[:] = halves[0] + fast[:room] + halves[1] + fast[room:]
