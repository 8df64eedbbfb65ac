"""Device mesh and shardings: one data axis over every device of every process."""
from __future__ import annotations

from typing import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh with Auto axes (classic jit sharding propagation) over `devices` (default: all)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the data axis."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def shard_batch(batch: dict, mesh: Mesh) -> dict:
  """Turns this process's slice of the batch (numpy) into global arrays sharded over the data axis.

  Works unchanged on one host and on many: each process passes only its own rows.
  """
  sharding = data_sharding(mesh)
  n = len(mesh.devices.flat)
  local_devices = sum(d.process_index == jax.process_index() for d in mesh.devices.flat)
  out = {}
  for k, v in batch.items():
    v = np.asarray(v)
    if v.shape[0] % local_devices:
      raise ValueError(f"batch[{k!r}] has {v.shape[0]} rows on this process, not divisible by its "
                       f"{local_devices} devices (global mesh of {n}); choose a batch size divisible by {n}")
    out[k] = jax.make_array_from_process_local_data(sharding, v)
  return out


def replicate(tree, mesh: Mesh):
  """Places a pytree (e.g. the train state) on every device of the mesh."""
  return jax.device_put(tree, replicated(mesh))
