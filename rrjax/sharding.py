"""The one parallelism code path: a 1-D data mesh over all devices, batches sharded on it.

Every trainer, evaluator and cache builder uses these helpers, so code that runs on
one CPU runs unchanged on 8 GPUs or a TPU pod slice (multi-host included).
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh named `data` over `devices` (default: all devices of all processes)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the data axis, other axes whole."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_batch_divisible(global_batch_size: int, mesh: Mesh, field: str = "batch_size") -> None:
  """Fail early, naming the config field, when a batch cannot be split evenly."""
  n = mesh.devices.size
  if global_batch_size <= 0 or global_batch_size % n:
    raise ValueError(
        f"{field}={global_batch_size} must be a positive multiple of the number of devices "
        f"({n}); set {field} to a multiple of {n}.")


def shard_batch(batch, mesh: Mesh):
  """Places a host-local batch (pytree of arrays with a leading batch axis) on the mesh.

  On a single process the local batch is the global batch. With several processes each
  passes its own share, and the global array is their concatenation in process order.
  """
  sharding = data_sharding(mesh)
  if jax.process_count() == 1:
    return jax.device_put(batch, sharding)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


def replicate(tree, mesh: Mesh):
  return jax.device_put(tree, replicated(mesh))
