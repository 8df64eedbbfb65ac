"""Multi-host setup: `jax.distributed.initialize` from the config or the environment, and the few
cross-process agreements the trainer needs (a barrier, "does any process want to stop?").

One place decides whether a run is multi-process, before any device is touched: after `initialize`,
`jax.devices()` lists every process's devices, the mesh (train/mesh.py) spans them all, each process
reads its own records (data/pipeline.py, `[process_index::process_count]`) and passes only its rows
(mesh.shard_batch), and the global batch (config.train.batch_size) sets the learning rate and every loss
normaliser, as on one host.
"""
from __future__ import annotations

import os

import jax
import numpy as np

# Environment variables read when the config leaves a setting empty (jax itself reads only the address).
ENV_ADDRESS, ENV_NUM_PROCESSES, ENV_PROCESS_ID = "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"
# Cluster managers whose variables jax.distributed.initialize() reads by itself (jax/_src/clusters).
_CLUSTER_HINTS = {"SLURM_JOB_ID": "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE": "OMPI_COMM_WORLD_SIZE",
                  "TPU_WORKER_HOSTNAMES": "TPU_WORKER_HOSTNAMES"}


def settings(dist_config, environ=None) -> dict | None:
  """The arguments for jax.distributed.initialize, or None for a single-process run.

  Config values win; empty ones are read from JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID.
  With none of those and config.distributed.auto_detect, a multi-process SLURM / Open MPI / Cloud TPU job
  gives {} (jax detects the rest itself).
  """
  env = os.environ if environ is None else environ
  d = dist_config
  address = d.coordinator_address or env.get(ENV_ADDRESS, "")
  num = d.num_processes or int(env.get(ENV_NUM_PROCESSES, "0") or 0)
  pid = d.process_id if d.process_id >= 0 else int(env.get(ENV_PROCESS_ID, "-1") or -1)
  given = {"coordinator_address": address or None, "num_processes": num or None,
           "process_id": pid if pid >= 0 else None}
  if address or num > 1 or pid >= 0:
    missing = [k for k, v in given.items() if v is None]
    if missing and not d.auto_detect:
      names = {"coordinator_address": ENV_ADDRESS, "num_processes": ENV_NUM_PROCESSES, "process_id": ENV_PROCESS_ID}
      raise ValueError(f"multi-process run: {missing} not set; set config.distributed.{missing[0]} or "
                       f"${names[missing[0]]} (given: {given})")
    if num == 1:
      return None
    out = {k: v for k, v in given.items() if v is not None}  # jax detects the missing ones (SLURM, MPI, TPU).
  elif d.auto_detect and _cluster_size(env) > 1:
    out = {}
  else:
    return None
  if d.local_device_ids:
    out["local_device_ids"] = [int(i) for i in d.local_device_ids]
  out["initialization_timeout"] = int(d.initialization_timeout)
  return out


def _cluster_size(env) -> int:
  for marker, size in _CLUSTER_HINTS.items():
    if marker in env:
      value = env.get(size, "1")
      return len(value.split(",")) if size == "TPU_WORKER_HOSTNAMES" else int(value or 1)
  return 1


def initialize(config) -> bool:
  """Joins the processes of a multi-host run (see `settings`); returns whether this run is multi-process.

  Must run before anything touches a device. Idempotent: a second call (e.g. a curriculum stage) does nothing.
  """
  kwargs = settings(config.distributed)
  if kwargs is None:
    return False
  if not jax.distributed.is_initialized():
    print(f"jax.distributed.initialize({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})", flush=True)
    jax.distributed.initialize(**kwargs)
  print(f"process {jax.process_index()} of {jax.process_count()}: {jax.local_device_count()} local of "
        f"{jax.device_count()} devices", flush=True)
  return True


def is_primary() -> bool:
  """Process 0 writes the files every process would write alike (config.json, tables)."""
  return jax.process_index() == 0


def barrier(name: str):
  """Every process waits here until all arrive (a no-op on one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def any_process(flag: bool) -> bool:
  """True on every process when `flag` is true on any (e.g. one of them got SIGTERM).

  All processes must call it at the same point; on one process it returns `flag` without device work.
  """
  if jax.process_count() == 1:
    return bool(flag)
  from jax.experimental import multihost_utils
  return bool(np.any(multihost_utils.process_allgather(np.asarray([flag], np.int32))))
