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
  """A copy of `tree` on every device of the mesh; `tree` must be the same on every process.

  With several processes, `jax.device_put` refuses arrays committed to one local device
  (jitted initialisations, restored weights), so each process fills its own devices.
  """
  target = replicated(mesh)
  if jax.process_count() == 1:
    return jax.device_put(tree, target)
  return jax.tree.map(lambda x: _replicate_across_processes(x, target), tree)


def _replicate_across_processes(x, target: NamedSharding) -> jax.Array:
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return jax.device_put(x, target)  # Already global: at most a reshard.
  if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    data = _replicate_across_processes(jax.random.key_data(x), target)
    return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
  host = np.asarray(jax.device_get(x))
  return jax.make_array_from_callback(host.shape, target, lambda index: host[index])


# Tensors smaller than this stay replicated when parameters are sharded: splitting them
# saves little memory and costs a gather each.
SHARD_MIN_SIZE = 2**14


def param_sharding(x, mesh: Mesh) -> NamedSharding:
  """Splits a large tensor over the data axis along its largest evenly divisible axis
  (ZeRO-3 / FSDP style: XLA gathers it where the computation needs it whole)."""
  n = mesh.devices.size
  divisible = [a for a in range(x.ndim) if x.shape[a] % n == 0]
  if x.size < SHARD_MIN_SIZE or not divisible:
    return replicated(mesh)
  spec = [None] * x.ndim
  spec[max(divisible, key=lambda a: x.shape[a])] = DATA_AXIS
  return NamedSharding(mesh, P(*spec))


def place_state(tree, mesh: Mesh, shard_params: bool = False):
  """Training state on the mesh: replicated, or with its large tensors (parameters and
  their optimiser moments alike) split over the data axis."""
  tree = replicate(tree, mesh)
  if not shard_params:
    return tree
  return jax.tree.map(lambda x: jax.device_put(x, param_sharding(x, mesh)), tree)
