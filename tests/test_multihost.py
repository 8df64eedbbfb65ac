"""Multi-host: 2 processes x 4 CPU devices on loopback give the losses, checkpoints and resume of 1 process x 8.

The processes are started and stopped by the test (tests/multihost_worker.py); jax.distributed joins them
through a coordinator on 127.0.0.1 and gloo collectives, as a 2-host GPU or TPU job would over its network.
"""
import json
import os
import shutil
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from medssl_jax.train import checkpoint as ckpt_lib
from medssl_jax.train import pretrain as pretrain_lib
from medssl_jax import experiment

import device_testing
import run_testing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 4


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _run_processes(data_dir, workdir, *, num_processes=2, devices=4, grads=False):
  port = _free_port()
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir)
  # The suite's compile settings (tests/conftest.py); the worker sets its own device count.
  env["XLA_FLAGS"] = device_testing.suite_xla_flags(env)
  procs = [subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "multihost_worker.py"),
                             f"--process_id={i}", f"--num_processes={num_processes}", f"--devices={devices}",
                             f"--port={port}", f"--num_steps={STEPS}", f"--data_dir={data_dir}",
                             f"--workdir={workdir}", *(["--grads"] if grads else [])], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for i in range(num_processes)]
  outs = []
  try:
    for p in procs:
      outs.append(p.communicate(timeout=400)[0])
  finally:
    for p in procs:  # Never leave a process behind (e.g. one waiting for a peer that died).
      if p.poll() is None:
        p.kill()
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-4000:]
  return outs


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(l) for l in f]
  return {r["step"]: r["train/loss"] for r in rows}


def _config(data_dir):
  # Learning rate 0, as the worker (see there why).
  return run_testing.quick_config(data_dir, num_steps=STEPS, checkpoint_every=2, base_learning_rate=0.0)


def test_two_processes_give_the_loss_and_gradients_of_one(tmp_path):
  assert jax.device_count() == 8, "tests/conftest.py simulates 8 CPU devices"
  config = _config("/unused")
  _run_processes("", tmp_path, grads=True)
  model, _, tx, _ = pretrain_lib.build(config)
  state = pretrain_lib.init_train_state(config, model, tx, jax.random.key(0))
  one = device_testing.loss_and_grads(jax.devices(), config, state, device_testing.fixed_batch(config),
                                      jax.random.key(1))
  two = device_testing.unflatten(dict(np.load(tmp_path / "grads.npz")), one[2])
  device_testing.assert_same(one, two)


def test_two_processes_pretrain_like_one_and_resume(fundus_small_dir, tmp_path):
  config = _config(fundus_small_dir)
  _, reference = pretrain_lib.pretrain(config, str(tmp_path / "one"))

  multi = tmp_path / "two"
  outs = _run_processes(fundus_small_dir, multi)
  assert "process 1 of 2: 4 local of 8 devices" in outs[1]
  assert "step 4/4" in outs[0] and "step 4/4" not in outs[1]  # Progress lines from process 0 only.
  # The same global batches, augmentations and BatchNorm statistics in every step.
  one, two = _losses(tmp_path / "one"), _losses(multi)
  assert sorted(two) == list(range(1, STEPS + 1))
  np.testing.assert_allclose([two[s] for s in sorted(two)], [one[s] for s in sorted(one)], rtol=2e-6)

  step_dir = multi / "checkpoints" / str(STEPS)
  assert sorted(f for f in os.listdir(step_dir / "data_iters") if f.endswith(".json")) == [
      "process_0-of-2.json", "process_1-of-2.json"]
  prov = ckpt_lib.read_provenance(str(multi))
  assert prov["devices"]["processes"] == 2 and prov["devices"]["count"] == 8
  _, restored = pretrain_lib.pretrain(config, str(multi))  # One process reads the finished 2-process run.
  assert int(restored.step) == STEPS
  jax.tree.map(np.testing.assert_array_equal, restored.params, reference.params)

  # Resume on 2 processes from step 2 (the last checkpoint removed): each process continues its own rows.
  shutil.rmtree(step_dir)
  before = _losses(multi)
  outs = _run_processes(fundus_small_dir, multi)
  assert f"resumed from {multi}/checkpoints/2" in outs[0]
  with open(multi / "metrics.jsonl") as f:
    rows = [json.loads(l) for l in f]
  # Rows logged after the checkpoint were dropped and logged again: each step once, with the same losses.
  assert [r["step"] for r in rows] == [1, 2, 3, 4]
  np.testing.assert_array_equal([r["train/loss"] for r in rows[2:]], [before[3], before[4]])


def _dist(**kw):
  d = experiment.default_config().distributed
  for k, v in kw.items():
    d[k] = v
  return d


def test_distributed_settings_from_config_environment_and_cluster():
  from medssl_jax.train import distributed as dist
  assert dist.settings(_dist(), {}) is None  # One process: nothing to join.
  env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
  assert dist.settings(_dist(), env) == {"coordinator_address": "10.0.0.1:1234", "num_processes": 4,
                                         "process_id": 3, "initialization_timeout": 300}
  # The config wins over the environment, process_id 0 included; local devices and the timeout pass through.
  got = dist.settings(_dist(coordinator_address="h:9", num_processes=2, process_id=0, local_device_ids=(1,),
                            initialization_timeout=60), env)
  assert got == {"coordinator_address": "h:9", "num_processes": 2, "process_id": 0, "local_device_ids": [1],
                 "initialization_timeout": 60}
  assert dist.settings(_dist(num_processes=1), {}) is None
  # SLURM / Open MPI / TPU pods with several tasks: jax detects the rest itself.
  assert dist.settings(_dist(), {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "8"}) == {"initialization_timeout": 300}
  assert dist.settings(_dist(), {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}) is None
  assert dist.settings(_dist(auto_detect=False), {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "8"}) is None
  with pytest.raises(ValueError, match=r"\['process_id'\] not set; set config.distributed.process_id or "
                                       r"\$JAX_PROCESS_ID"):
    dist.settings(_dist(auto_detect=False), {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2"})


def test_distributed_config_errors():
  for kw, match in (({"coordinator_address": "10.0.0.1"}, r"coordinator_address='10.0.0.1': expected 'host:port'"),
                    ({"num_processes": 2, "process_id": 2}, r"process_id=2 must be in \[0, num_processes=2\)")):
    c = experiment.default_config()
    for k, v in kw.items():
      c.distributed[k] = v
    with pytest.raises(ValueError, match=match):
      experiment.validate(c)
