"""Shared helper for the tests that pretrain the quick demo config (preemption, multi-host, provenance)."""
from medssl_jax.config import load as load_config


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
