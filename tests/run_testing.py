"""Shared helpers for the tests that pretrain the quick demo config (preemption, GCS, multi-host, provenance)."""
import os
import signal
import subprocess
import time

from medssl_jax.config import load as load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def quick_config(data_dir, *, num_steps: int, **train):
  """`configs/demo_simclr.py:quick` in mode "pretrain" on `data_dir` (synthetic_fundus/small), logging every step,
  with `num_steps` and any other config.train.<key>=value."""
  config = load_config("demo_simclr", "quick")
  config.mode = "pretrain"
  config.data.data_dir = str(data_dir)
  config.train.num_steps = num_steps
  config.train.log_every = 1
  for k, v in train.items():
    config.train[k] = v
  return config


def run_until_sigterm(cmd, *, env, at: str, timeout: float = 300) -> tuple[int, str]:
  """Runs `cmd` in the repository root and sends it SIGTERM when an output line starts with `at`; returns
  (exit status, the whole output)."""
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  lines, deadline = [], time.time() + timeout
  for line in proc.stdout:
    lines.append(line)
    if line.startswith(at):
      proc.send_signal(signal.SIGTERM)
      break
    assert time.time() < deadline, "".join(lines[-20:])
  rest, _ = proc.communicate(timeout=timeout)
  return proc.returncode, "".join(lines) + rest
