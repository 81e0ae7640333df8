"""A minimal CostStructure over a dense matrix, to test that functions read costs via the interface.

It implements only the abstract primitives (``rows``, ``vecmat``, ``dense``,
``num_classes``) with an asymmetric matrix allowed, so a function that indexes
the structure directly, or mixes up rows and columns, fails the tests that use it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from costjax._structures import CostStructure


@jax.tree_util.register_pytree_node_class
class DenseStructure(CostStructure):
  symmetric = False

  def __init__(self, matrix):
    self.matrix = jnp.asarray(matrix)

  @property
  def num_classes(self):
    return self.matrix.shape[0]

  def dense(self):
    return self.matrix

  def rows(self, idx):
    return jnp.take(self.matrix, jnp.minimum(idx, self.num_classes - 1), axis=0)

  def vecmat(self, v):
    return v @ self.matrix

  def astype(self, dtype):
    return DenseStructure(self.matrix.astype(dtype))

  def tree_flatten(self):
    return (self.matrix,), None

  @classmethod
  def tree_unflatten(cls, aux, leaves):
    del aux
    obj = object.__new__(cls)
    obj.matrix = leaves[0]
    return obj
