"""Input-pipeline records/s for 224 px fundus training with two views, next to the train step's demand.

Usage (defaults: real HRF photographs from the shared data, stored at 512 px by the `hrf` builder):
  python benchmarks/pipeline_fundus.py [--builder=hrf --builder_config=classification_512
      --manual_dir=../shared/data/hrf] [--workers=0,1,2] [--batch=32] [--batches=20] [--step_encoders=resnet18]

What is measured, per grain worker count:
  * "device views": the trainer's pipeline: decode the stored JPEG, resize to 224, batch. Both views
    are then cut on the device from that one image (medssl_jax/augment), so one record feeds 2 views.
  * "host views": the same plus two random-resized crops to 224 on the host per record (what a
    PyTorch-style loader does), to show what moving crops to the host would cost.
Then the train step's demand in records/s: a SimCLR step (2 views x 224 px) of each encoder in
--step_encoders on this machine's devices, and, for scale, the per-accelerator rates implied by
published figures (TARGETS.md). The pipeline keeps up when its records/s exceeds the demand.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app
from absl import flags

import bench_lib

_BUILDER = flags.DEFINE_string("builder", "hrf", "Dataset (a key of medssl_jax.data.pipeline.BUILDERS).")
_CONFIG = flags.DEFINE_string("builder_config", "classification_512", "Builder config.")
_MANUAL = flags.DEFINE_string("manual_dir", "", "Official files; default: the shared copy of the dataset.")
_DATA_DIR = flags.DEFINE_string("data_dir", "", "TFDS data dir (default $TFDS_DATA_DIR or ~/tensorflow_datasets).")
_SPLIT = flags.DEFINE_string("split", "train", "Split to read.")
_SIZE = flags.DEFINE_integer("image_size", 224, "Training resolution.")
_BATCH = flags.DEFINE_integer("batch", 32, "Records per batch.")
_BATCHES = flags.DEFINE_integer("batches", 20, "Timed batches per setting (after 2 warm-up batches).")
_WORKERS = flags.DEFINE_list("workers", ["0", "1", "2"], "grain worker counts to measure.")
_ENCODERS = flags.DEFINE_list("step_encoders", ["resnet18"], "Encoders whose train step is timed ('' = none).")
_STEP_BATCH = flags.DEFINE_integer("step_batch", 16, "Global batch of the timed train step.")
_STEPS = flags.DEFINE_integer("steps", 2, "Timed train steps (after compilation and one warm-up step).")

# Published single-view training rates (TARGETS.md), as images/s per accelerator; a SimCLR record
# costs about two of them (two views through the encoder).
PUBLISHED = (
    ("flax ResNet-50 supervised, 8x V100 mixed precision (8.3k img/s)", 8300 / 8),
    ("lightly ResNet-18 SimCLR on one A6000, incl. evaluation (about 350 img/s)", 350 * 2),
)


def _step_rate(encoder, channels):
  import jax
  import numpy as np
  from medssl_jax import config as config_lib
  from medssl_jax.augment import views
  from medssl_jax.train import mesh as mesh_lib
  from medssl_jax.train import pretrain as pretrain_lib
  from medssl_jax.train import step as step_lib
  c = config_lib.base_config()
  c.model.encoder = encoder
  c.data.image_size = _SIZE.value
  c.data.channels = channels
  c.data.mean = c.data.std = (0.5,) * channels
  c.augment.views = [views.default_view(crop_size=_SIZE.value)] * 2
  c.train.batch_size = _STEP_BATCH.value
  config_lib.validate(c)
  mesh = mesh_lib.make_mesh()
  model, objective, tx, schedule = pretrain_lib.build(c)
  state = mesh_lib.replicate(pretrain_lib.init_train_state(c, model, tx, jax.random.key(0)), mesh)
  rng = np.random.default_rng(0)
  n = c.train.batch_size
  batch = mesh_lib.shard_batch({"image": rng.integers(0, 256, (n, _SIZE.value, _SIZE.value, channels), dtype=np.uint8),
                                "label": np.zeros(n, np.int32), "id": np.arange(n, dtype=np.int32)}, mesh)
  step = step_lib.make_train_step(model, objective, tx, schedule, c, mesh)
  key = jax.random.key(1)
  for _ in range(2):  # Compile, then one warm-up step.
    state, m = step(state, batch, key)
    jax.block_until_ready(m)
  t0 = time.perf_counter()
  for _ in range(_STEPS.value):
    state, m = step(state, batch, key)
  jax.block_until_ready(m)
  return n * _STEPS.value / (time.perf_counter() - t0)


def main(_):
  from absl import logging
  logging.set_verbosity(logging.WARNING)  # TFDS logs every shard at INFO.
  import jax
  from medssl_jax.data import pipeline
  from medssl_jax.data import shared

  manual = _MANUAL.value
  if not manual and _BUILDER.value in ("hrf", "chase_db1", "bccd"):
    manual = str(shared.dataset_dir(_BUILDER.value))  # Names the path and setting when absent.
  builder = pipeline.get_builder(_BUILDER.value, config=_CONFIG.value or None, data_dir=_DATA_DIR.value or None,
                                 manual_dir=manual or None)
  n = pipeline.num_examples(builder, _SPLIT.value)
  feat = builder.info.features["image"]
  print(f"data: {builder.name}/{builder.builder_config.name if builder.builder_config else ''} '{_SPLIT.value}' "
        f"({n} records, stored {feat.encoding_format} {feat.shape}); host CPUs: {os.cpu_count()}; "
        f"batch {_BATCH.value}, {_BATCHES.value} timed batches per row")
  print(f"\n| pipeline ({_SIZE.value} px, 2 views per record) | grain workers | records/s |")
  print("|---|---|---|")
  best = 0.0
  for workers in (int(w) for w in _WORKERS.value):
    for host_views in (False, True):
      rate = bench_lib.pipeline_rate(builder, split=_SPLIT.value, batch=_BATCH.value, batches=_BATCHES.value,
                                     image_size=_SIZE.value, workers=workers, host_views=host_views)
      best = max(best, rate if not host_views else 0.0)
      what = "decode + resize on host, views cut on device" if not host_views else "decode + 2 crops on host"
      print(f"| {what} | {workers} | {rate:.0f} |", flush=True)

  print(f"\n| train step demand (SimCLR, 2 views x {_SIZE.value} px) | records/s | pipeline / demand |")
  print("|---|---|---|")
  channels = int(feat.shape[-1])
  for encoder in [e for e in _ENCODERS.value if e]:
    rate = _step_rate(encoder, channels)
    print(f"| {encoder}, measured here: {jax.devices()[0].device_kind} x{jax.device_count()}, batch "
          f"{_STEP_BATCH.value} | {rate:.1f} | {best / rate:.1f}x |", flush=True)
  for name, images_per_s in PUBLISHED:
    demand = images_per_s / 2
    print(f"| {name}: per accelerator | {demand:.0f} | {best / demand:.2f}x |")
  print(f"\nBest trainer pipeline on this host: {best:.0f} records/s. Each accelerator needs the demand above; "
        "add grain workers (data.worker_count) or hosts until the ratio is above 1.")


if __name__ == "__main__":
  app.run(main)
