"""Train-step images/s next to input-pipeline records/s for a config, so both can be compared.

Usage:
  python benchmarks/throughput.py --config=configs/demo_simclr.py [--steps=20] [--pipeline_batches=30] [--peak_tflops=0]

Prints the steady-state train step rate (after compilation, on synthetic uint8 batches already on
device, so the pipeline is not in the measurement) and the host pipeline's rate for the same config
(decode + resize + batch, no training). The pipeline is a bottleneck when its records/s is below the
step's images/s.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/demo_simclr.py", "Config to measure.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed train steps (after 2 warm-up steps).")
_BATCHES = flags.DEFINE_integer("pipeline_batches", 30, "Timed pipeline batches (after 2 warm-up batches).")
_PEAK = flags.DEFINE_float("peak_tflops", 0.0, "Device peak TFLOP/s for the step's MFU (0 = not printed).")


def main(_):
  import jax
  import numpy as np

  import bench_lib

  from medssl_jax import config as config_lib
  from medssl_jax.data import pipeline
  from medssl_jax.train import mesh as mesh_lib
  from medssl_jax.train import pretrain as pretrain_lib
  from medssl_jax.train import step as step_lib

  config = config_lib.validate(_CONFIG.value)
  t = config.train
  mesh = mesh_lib.make_mesh()
  print(bench_lib.device_line())
  print(f"config: {config.model.encoder} x{config.model.width_multiplier} {config.model.stem} stem, "
        f"{config.objective.name}, {len(config.augment.views)} views at {config.augment.views[0].crop_size}px, "
        f"global batch {t.batch_size}")

  # Train step on a fixed device batch.
  model, objective, tx, schedule = pretrain_lib.build(config)
  state = mesh_lib.replicate(pretrain_lib.init_train_state(config, model, tx, jax.random.key(0)), mesh)
  size, ch = config.data.image_size, config.data.channels
  rng = np.random.default_rng(0)
  batch = mesh_lib.shard_batch({"image": rng.integers(0, 256, (t.batch_size, size, size, ch), dtype=np.uint8),
                                "label": rng.integers(0, 2, t.batch_size).astype(np.int32),
                                "id": np.arange(t.batch_size, dtype=np.int32)}, mesh)
  step = step_lib.make_train_step(model, objective, tx, schedule, config, mesh)
  key = jax.random.key(1)
  t0 = time.perf_counter()
  step = step.lower(state, batch, key).compile()
  gflop, xla_mib = bench_lib.compiled_stats(step)
  state, m = step(state, batch, key)
  jax.block_until_ready(m)
  print(f"train step: compiled + first step in {time.perf_counter() - t0:.1f}s; "
        f"{bench_lib.fmt(gflop, '.1f')} GFLOP/step, XLA arguments + temporaries {bench_lib.fmt(xla_mib)} MiB")
  state, m = step(state, batch, key)
  jax.block_until_ready(m)
  t0 = time.perf_counter()
  for _ in range(_STEPS.value):
    state, m = step(state, batch, key)
  jax.block_until_ready(m)
  dt = (time.perf_counter() - t0) / _STEPS.value
  step_rate = t.batch_size / dt
  print(f"train step: {dt * 1000:.1f} ms/step, {step_rate:.0f} images/s "
        f"({step_rate * len(config.augment.views):.0f} view-images/s through the encoder)")
  peak_mib = bench_lib.device_peak_mib()
  if peak_mib is not None:
    print(f"device peak memory: {peak_mib:.0f} MiB")
  if _PEAK.value and gflop:
    print(f"MFU: {gflop / dt / (_PEAK.value * 1e3) * 100:.1f}% of {_PEAK.value} TFLOP/s")

  # Input pipeline alone.
  builder = pipeline.open_dataset(config.data)
  it = pipeline.make_train_iterator(builder, split=config.data.train_split, global_batch_size=t.batch_size,
                                    seed=0, image_size=config.data.image_size, worker_count=config.data.worker_count)
  for _ in range(2):
    next(it)
  t0 = time.perf_counter()
  for _ in range(_BATCHES.value):
    next(it)
  pipe_rate = _BATCHES.value * t.batch_size / (time.perf_counter() - t0)
  print(f"input pipeline: {pipe_rate:.0f} records/s (worker_count={config.data.worker_count})")
  verdict = "pipeline keeps up" if pipe_rate >= step_rate else "PIPELINE IS THE BOTTLENECK"
  print(f"ratio pipeline/step: {pipe_rate / step_rate:.1f}x -> {verdict}")


if __name__ == "__main__":
  app.run(main)
