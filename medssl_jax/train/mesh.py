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


def apply_batched(fn, inputs: dict, *, batch_size: int, mesh: Mesh | None, mask: bool = False):
  """`fn` over every row of `inputs` ({name: numpy [N, ...]}, one N) in global batches sharded over the data axis
  (mesh None: numpy batches, unsharded).

  Batches hold `batch_size` rows (with a mesh rounded down to a multiple of its devices, at least one per device);
  the last is zero-padded to full size, so every call has one static shape (one compile). With `mask`, each batch also
  carries "mask" (float32 [B]: 1 for a real row, 0 for padding). `fn(batch)` returns a pytree of arrays: leaves
  with a leading batch axis come back concatenated over all batches, padding dropped; scalar leaves (e.g. a
  masked loss sum) come back summed over the batches. None when N is 0.
  """
  if mesh is not None:
    n_dev = mesh.devices.size
    batch_size = max(n_dev, batch_size // n_dev * n_dev)
  n = len(next(iter(inputs.values())))
  outs = []
  for i in range(0, n, batch_size):
    chunk = {k: np.asarray(v[i:i + batch_size]) for k, v in inputs.items()}
    real = min(batch_size, n - i)
    pad = batch_size - real
    if pad:
      chunk = {k: np.concatenate([v, np.zeros((pad, *v.shape[1:]), v.dtype)]) for k, v in chunk.items()}
    if mask:
      chunk["mask"] = np.concatenate([np.ones(real, np.float32), np.zeros(pad, np.float32)])
    out = fn(chunk if mesh is None else shard_batch(chunk, mesh))
    outs.append(jax.tree.map(lambda a: np.asarray(a)[:real] if np.ndim(a) else float(a), out))
  if not outs:
    return None
  return jax.tree.map(lambda *parts: np.concatenate(parts) if np.ndim(parts[0]) else sum(parts), *outs)
