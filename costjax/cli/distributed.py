"""Devices and processes for ``costjax compare``: initialization, mesh, feeding, gathering.

One process (the default) uses every local device. Many processes (one per host, or
several on one machine) run the same command; each is started by the user or a cluster
launcher, and :func:`initialize` passes the flags ``--coordinator HOST:PORT
--num-processes N --process-id I`` to :func:`jax.distributed.initialize`. Without those
flags, a SLURM job with several tasks (``SLURM_NTASKS > 1``), a multi-host Cloud TPU
slice, or ``COSTJAX_DISTRIBUTED=1`` (with JAX's ``JAX_COORDINATOR_ADDRESS``,
``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``) calls ``jax.distributed.initialize()`` with
no arguments, which detects the cluster itself.

Every process reads the same table and computes the same splits; it then feeds only
the rows that its own devices hold (:func:`jax.make_array_from_callback` asks each
process for its addressable shards only). Outputs of the compiled programs are
replicated, so every process can read them, and only process 0 writes files. The
mesh is one ``data`` axis over all devices of all processes, so ``N`` processes with
``D`` devices each compute the same program as one process with ``N * D`` devices.
"""

from __future__ import annotations

import dataclasses
import math
import os

import jax
import numpy as np

from costjax.cli.errors import UserInputError


def add_arguments(parser) -> None:
  g = parser.add_argument_group(
      "many processes",
      "start the same command once per process (or let a launcher do it); without these "
      "flags, SLURM jobs with several tasks, multi-host TPU slices and COSTJAX_DISTRIBUTED=1 "
      "are detected by jax.distributed.initialize()")
  g.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                 help="address of process 0's coordinator service (default: none: one "
                 "process, or what a SLURM / TPU launcher sets)")
  g.add_argument("--num-processes", type=int, default=None, metavar="N",
                 help="total number of processes")
  g.add_argument("--process-id", type=int, default=None, metavar="I",
                 help="this process's index, 0 .. N-1 (process 0 writes the outputs)")


def check_arguments(args) -> None:
  """Validates the multi-process flags (before anything is initialized or written)."""
  given = [args.coordinator is not None, args.num_processes is not None,
           args.process_id is not None]
  if any(given) and not all(given):
    raise UserInputError("--coordinator, --num-processes and --process-id go together; "
                         "give all three or none.")
  if not any(given):
    return
  host, _, port = args.coordinator.rpartition(":")
  if not host or not port.isdigit():
    raise UserInputError(f"--coordinator {args.coordinator!r}: expected HOST:PORT.")
  if args.num_processes < 1:
    raise UserInputError(f"--num-processes must be >= 1; got {args.num_processes}.")
  if not 0 <= args.process_id < args.num_processes:
    raise UserInputError(f"--process-id must lie in 0 .. {args.num_processes - 1}; got "
                         f"{args.process_id}.")


def cluster_detected() -> bool:
  env = os.environ
  if env.get("COSTJAX_DISTRIBUTED") == "1":
    return True
  if int(env.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_JOB_ID" in env:
    return True
  hosts = env.get("TPU_WORKER_HOSTNAMES", "")
  return "," in hosts  # a multi-host TPU slice


def _cpu_collectives() -> None:
  """Cross-process collectives on CPU devices need an implementation (gloo); older JAX
  versions default to none."""
  try:
    current = jax.config.jax_cpu_collectives_implementation  # type: ignore[attr-defined]
    if current in (None, "", "none"):
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
  except AttributeError:  # a JAX without the option
    pass


def initialize(args) -> None:
  """Calls :func:`jax.distributed.initialize` when the flags or a cluster ask for it."""
  if args.coordinator is not None or cluster_detected():
    _cpu_collectives()
  if args.coordinator is not None:
    jax.distributed.initialize(coordinator_address=args.coordinator,
                               num_processes=args.num_processes, process_id=args.process_id)
  elif cluster_detected():
    jax.distributed.initialize()


def is_writer() -> bool:
  """Only process 0 writes files and prints progress."""
  return jax.process_index() == 0


def device_summary() -> str:
  d = jax.devices()
  return (f"{jax.device_count()} x {d[0].platform} ({d[0].device_kind}), "
          f"{jax.process_count()} process(es)")


def data_mesh() -> jax.sharding.Mesh:
  """A 1-D mesh named ``data`` over all devices of all processes (Auto axes)."""
  return jax.make_mesh((jax.device_count(),), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))


def round_batch_size(batch_size: int, n_train: int) -> int:
  """Batch size rounded up to a multiple of the device count, at most the training set."""
  n = jax.device_count()
  b = min(batch_size, n_train)
  b = int(math.ceil(b / n) * n)
  if b > n_train:
    b = (n_train // n) * n
  if b < n:
    raise UserInputError(f"{n_train} training examples are fewer than the {n} devices; "
                         "use more data or fewer devices.")
  return b


def put(array: np.ndarray, sharding: jax.sharding.Sharding) -> jax.Array:
  """A global array from a host array that every process holds in full.

  Each process materializes only the shards of its own devices.
  """
  array = np.asarray(array)
  return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def to_host(x: jax.Array) -> np.ndarray:
  """A replicated global array as NumPy (on every process)."""
  if x.is_fully_addressable:
    return np.asarray(x)
  return np.asarray(x.addressable_data(0))  # replicated: any local copy is the whole


def _pad_rows(a: np.ndarray, axis: int, multiple: int) -> np.ndarray:
  n = a.shape[axis]
  extra = (-n) % multiple
  if extra == 0:
    return a
  pad = [(0, 0)] * a.ndim
  pad[axis] = (0, extra)
  return np.pad(a, pad)  # zero rows (label 0): masked or sliced off by the consumers


@dataclasses.dataclass
class Feed:
  """The per-seed splits as global arrays, rows sharded over ``data``.

  Shapes are ``(S, rows, ...)`` with rows padded to a multiple of the device count;
  ``n_train``/``n_val``/``n_test`` are the real row counts.
  """

  mesh: jax.sharding.Mesh
  x_train: jax.Array
  y_train: jax.Array
  x_val: jax.Array
  y_val: jax.Array
  x_test: jax.Array
  seeds: jax.Array
  n_train: int
  n_val: int
  n_test: int
  # (S, rows, K, K) per-row costs, sharded like the rows (None: one shared matrix)
  c_train: jax.Array | None = None
  c_val: jax.Array | None = None
  c_test: jax.Array | None = None

  @property
  def replicated(self) -> jax.sharding.NamedSharding:
    return jax.sharding.NamedSharding(self.mesh, jax.P())

  @property
  def batch_sharding(self) -> jax.sharding.NamedSharding:
    """Leading (example) axis of a minibatch split over ``data``."""
    return jax.sharding.NamedSharding(self.mesh, jax.P("data"))

  def put_replicated(self, tree):
    return jax.tree.map(lambda a: put(np.asarray(a), self.replicated), tree)


def make_feed(splits, seeds, mesh: jax.sharding.Mesh) -> Feed:
  """Shards every split's rows (axis 1) over ``data``; seeds replicated."""
  d = mesh.devices.size
  rows = jax.sharding.NamedSharding(mesh, jax.P(None, "data"))
  rep = jax.sharding.NamedSharding(mesh, jax.P())

  def shard(a):
    return put(_pad_rows(np.asarray(a), 1, d), rows)

  return Feed(
      mesh=mesh,
      x_train=shard(splits.x_train), y_train=shard(splits.y_train),
      x_val=shard(splits.x_val), y_val=shard(splits.y_val), x_test=shard(splits.x_test),
      seeds=put(np.asarray(seeds, np.int32), rep),
      n_train=int(splits.x_train.shape[1]), n_val=int(splits.x_val.shape[1]),
      n_test=int(splits.x_test.shape[1]),
      **{f"c_{s}": None if getattr(splits, f"c_{s}", None) is None
         else shard(getattr(splits, f"c_{s}")) for s in ("train", "val", "test")})
