"""Input-pipeline records/s for 224 px fundus training with two views, next to the train step's demand.

Usage (defaults: real HRF photographs from the shared data, stored at 512 px by the `hrf` builder):
  python benchmarks/pipeline_fundus.py [--builder=hrf --builder_config=classification_512
      --manual_dir=../shared/data/hrf] [--workers=0,1,2] [--batch=32] [--batches=20] [--step_encoders=resnet18]

What is measured, per grain worker count:
  * "device views": the trainer's pipeline: decode the stored JPEG, resize to 224, batch. Both views
    are then cut on the device from that one image (medssl_jax/augment), so one record feeds 2 views.
  * "host views": the same plus two random-resized crops to 224 on the host per record (what a
    PyTorch-style loader does), to show what moving crops to the host would cost.
Each row also gives records/s per decoding core (the main process with no workers, else per worker).
Then the train step's demand in records/s: a SimCLR step (2 views x 224 px) of each encoder in
--step_encoders on this machine's devices, medssl_jax's per-GPU goal, and the per-accelerator rates implied
by published figures (TARGETS.md), each with the host cores it needs at the measured rate per core.
`--builder_config=classification_224` (HRF; `224` for chase_db1) reads images stored at the training
resolution: decode without the resize.
"""
import os
import sys

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
    ("medssl_jax's goal: SimCLR ResNet-50 224 px bf16 on one H100-class GPU (5,000 views/s)", 5000),
    ("flax ResNet-50 supervised, 8x V100 mixed precision (8.3k img/s)", 8300 / 8),
    ("lightly ResNet-18 SimCLR on one A6000, incl. evaluation (about 350 img/s)", 350 * 2),
)


def _step_rate(encoder, channels):
  """Records/s of a SimCLR train step (2 views of --image_size px, batch --step_batch) on one device."""
  config = bench_lib.bench_config(encoder=encoder, size=_SIZE.value, batch=_STEP_BATCH.value, channels=channels)
  return bench_lib.train_step_cell(config, steps=_STEPS.value)["images_s"]


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
  # Per decoding core: with no workers the main process decodes on one core; with w workers, w processes do.
  print(f"\n| pipeline ({_SIZE.value} px, 2 views per record) | grain workers | records/s | per decoding core |")
  print("|---|---|---|---|")
  best = per_core = 0.0
  for workers in (int(w) for w in _WORKERS.value):
    for host_views in (False, True):
      rate = bench_lib.pipeline_rate(builder, split=_SPLIT.value, batch=_BATCH.value, batches=_BATCHES.value,
                                     image_size=_SIZE.value, workers=workers, host_views=host_views)
      if not host_views:
        best, per_core = max(best, rate), max(per_core, rate / max(1, workers))
      what = "decode + resize on host, views cut on device" if not host_views else "decode + 2 crops on host"
      print(f"| {what} | {workers} | {rate:.0f} | {rate / max(1, workers):.0f} |", flush=True)

  print(f"\n| train step demand (SimCLR, 2 views x {_SIZE.value} px) | records/s | pipeline / demand | "
        "host cores needed |")
  print("|---|---|---|---|")
  channels = int(feat.shape[-1])
  for encoder in [e for e in _ENCODERS.value if e]:
    rate = _step_rate(encoder, channels)
    print(f"| {encoder}, measured here: {jax.devices()[0].device_kind} (one device), batch "
          f"{_STEP_BATCH.value} | {rate:.1f} | {best / rate:.1f}x | {rate / per_core:.2f} |", flush=True)
  for name, images_per_s in PUBLISHED:
    demand = images_per_s / 2
    print(f"| {name}: per accelerator | {demand:.0f} | {best / demand:.2f}x | {demand / per_core:.1f} |")
  print(f"\nBest trainer pipeline on this host: {best:.0f} records/s, {per_core:.0f} per decoding core. Each accelerator "
        "needs the demand above: give it the host cores of the last column (data.worker_count grain workers).")


if __name__ == "__main__":
  app.run(main)
