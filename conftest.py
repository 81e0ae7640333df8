import jax
import numpy as np
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture(autouse=True)
def _doctest_printoptions(doctest_namespace):
  np.set_printoptions(precision=4, suppress=True)
  doctest_namespace["np"] = np
