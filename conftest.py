import atexit
import os
import shutil
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
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)


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
