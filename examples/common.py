"""Shared pieces of the examples, re-exported from the ``costjax`` command's modules.

The data loaders, cost matrices, models, losses and mesh helpers live in
``costjax.cli`` (installed with ``pip install -e ".[cli]"``); this module keeps the
names that ``flax_train.py`` uses. Temperature scaling is the library's
:func:`costjax.fit_temperature`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import costjax as cj
from costjax.cli import distributed
from costjax.cli.costs import (  # noqa: F401
    BUILTIN_COSTS,
    asymmetric_cost,
    builtin_cost,
    cost_matrix,
    csv_num_classes,
    forum_cost,
    load_cost_csv,
    parse_costs,
    random_cost,
)
from costjax.cli.data import (  # noqa: F401
    BUILTIN_DATA,
    Dataset,
    Splits,
    load_data,
    load_diamonds,
    load_digits,
    load_user_table,
    make_splits,
    validate_table,
)
from costjax.cli.distributed import data_mesh, device_summary, round_batch_size  # noqa: F401
from costjax.cli.errors import UserInputError, exit_on_user_error  # noqa: F401
from costjax.cli.training import CNN, COST_FREE, LOSSES, MLP  # noqa: F401

fit_temperature = cj.fit_temperature


def add_data_arguments(parser, *, ordinal_help: str,
                       max_rows_help: str = "stratified subsample of the data") -> None:
  """The data flags of the example scripts."""
  parser.add_argument("--data", default="digits",
                      help="digits (default), diamonds, or a .npz (x, y) / .csv file")
  parser.add_argument("--label-column", default="label", help="label column of a .csv file")
  parser.add_argument("--ordinal", action="store_true", help=ordinal_help)
  parser.add_argument("--max-rows", type=int, default=None, help=max_rows_help)


def make_model(kind: str, ds: Dataset, *, hidden: int, rngs: nnx.Rngs) -> nnx.Module:
  from costjax.cli.training import make_model as _make

  return _make(kind, num_features=ds.x.shape[1], num_classes=ds.num_classes, hidden=hidden,
               image_shape=ds.image_shape, rngs=rngs)


def batch_sharding(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
  """Leading (example) axis split over ``data``; other axes whole."""
  return jax.sharding.NamedSharding(mesh, jax.P("data"))


def replicated(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
  return jax.sharding.NamedSharding(mesh, jax.P())


def maybe_initialize_distributed() -> None:
  """``jax.distributed.initialize()`` under SLURM, multi-host TPU or COSTJAX_DISTRIBUTED=1."""
  if distributed.cluster_detected():
    jax.distributed.initialize()


def decode(logits: jax.Array, cost: jax.Array, temperature: jax.Array):
  """(argmax predictions, Bayes predictions after temperature scaling)."""
  return (jnp.argmax(logits, axis=-1).astype(jnp.int32),
          cj.bayes_decision(logits / temperature, cost))


def cost_weighted_confusion(pred: np.ndarray, y: np.ndarray, cost: np.ndarray) -> np.ndarray:
  """Total cost per (true, predicted) cell: ``confusion * C``."""
  k = cost.shape[0]
  conf = np.asarray(cj.confusion_matrix(jnp.asarray(pred), jnp.asarray(y), num_classes=k))
  return conf * cost
