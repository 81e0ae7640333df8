import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _doctest_printoptions(doctest_namespace):
  np.set_printoptions(precision=4, suppress=True)
  doctest_namespace["np"] = np
