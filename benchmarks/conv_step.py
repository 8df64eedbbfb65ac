"""The whole SimCLR train step with the ResNet's own convolution against XLA's convolution everywhere, timed in
alternation in one process.

Usage:
  python benchmarks/conv_step.py [--size=28] [--width=1.0] [--batch=128] [--encoder=resnet18] [--steps=4]

`models/resnet.py`'s conv_general_dilated computes some 2D convolutions another way (im2col + matmul for output
maps of at most 4 pixels; on CPU, strided convolutions as subsampling + matmul for 1x1 kernels and with the phase
input gradient otherwise). This compiles the trainer's step (bench_lib.bench_config: 2 SimCLR views per record,
default augmentations, collapse monitors) twice, once with that convolution and once with lax.conv_general_dilated
in its place, checks that both give the same loss, and times one step of each per round, --steps rounds after a
warm-up each. Prints the median and best ms per step and the speed-up (XLA's / the ResNet's).
"""
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

import bench_lib  # noqa: E402  (imports medssl_jax first: its XLA:CPU setting applies)

_SIZE = flags.DEFINE_integer("size", 28, "Input size (px); CIFAR stem below 64 px, ImageNet stem from 64 px.")
_WIDTH = flags.DEFINE_float("width", 1.0, "ResNet width multiplier.")
_BATCH = flags.DEFINE_integer("batch", 128, "Records per step (2 views each).")
_ENCODER = flags.DEFINE_string("encoder", "resnet18", "resnet18 or resnet50.")
_STEPS = flags.DEFINE_integer("steps", 4, "Timed rounds (one step of each variant per round).")


def main(argv):
  del argv
  import importlib

  import jax
  from jax import lax
  resnet_lib = importlib.import_module("medssl_jax.models.resnet")  # The module; models.resnet is a function.
  print(bench_lib.device_line())
  config = bench_lib.bench_config(size=_SIZE.value, width=_WIDTH.value, batch=_BATCH.value, encoder=_ENCODER.value)
  own = resnet_lib.conv_general_dilated
  steps = {}
  try:
    for name, conv in (("ResNet's convolution", own), ("XLA's convolution", lax.conv_general_dilated)):
      resnet_lib.conv_general_dilated = conv  # Read when the ResNet is traced, so each compile takes its own.
      steps[name] = bench_lib.compile_train_step(config)[:4]
  finally:
    resnet_lib.conv_general_dilated = own
  state = {}
  for name, (compiled, s, batch, key) in steps.items():
    state[name], metrics = compiled(s, batch, key)
    print(f"{name}: first-step loss {float(metrics['loss']):.6f}")

  def runner(name):
    compiled, _, batch, key = steps[name]

    def run():
      state[name] = compiled(state[name], batch, key)[0]
      jax.block_until_ready(state[name])
    return run
  times = bench_lib.interleaved_times({name: runner(name) for name in steps}, steps=_STEPS.value)
  print(f"{_ENCODER.value} x{_WIDTH.value} at {config.data.image_size} px ({config.model.stem} stem), batch "
        f"{_BATCH.value} x 2 views, {_STEPS.value} rounds, ms per step (median / best):")
  med = {name: 1e3 * statistics.median(t) for name, t in times.items()}
  best = {name: 1e3 * min(t) for name, t in times.items()}
  for name in times:
    print(f"  {name}: {med[name]:.0f} / {best[name]:.0f}")
  a, b = "XLA's convolution", "ResNet's convolution"
  print(f"speed-up (XLA's / the ResNet's): {med[a] / med[b]:.3f} median, {best[a] / best[b]:.3f} best")


if __name__ == "__main__":
  app.run(main)
