"""The same SimCLR ResNet step in JAX (this repo) and in PyTorch, timed in one run, with their ratio.

Usage:
  python benchmarks/torch_compare.py [--sizes=28] [--encoders=resnet18] [--batch=128] [--width=1.0] [--steps=5]
      [--big_batch=32 --big_width=0.25] [--torch=best,mirrored] [--stem=cifar] [--optimizer=adamw]
      [--compute_dtype=float32] [--peak_tflops=0] [--quick]
  python benchmarks/torch_compare.py --sizes=28,64,224 --encoders=resnet18,resnet50 --torch=compiled,best,mirrored

One cell per encoder x size (sizes >= 128 px at --big_batch and --big_width, to fit a CPU); in each, JAX against
every PyTorch variant of --torch (TORCH_VARIANTS): 'best' is PyTorch as its users run it (torchvision's
padding, channels_last), 'compiled' the same under torch.compile, 'mirrored' the model exactly as ours (flax SAME
padding through F.pad, NCHW); 'channels_last' and 'native_padding' take one change each. A Markdown table of
every cell ends the output.

Both sides: the ResNet (medssl_jax/torch_resnet.py mirrors models/resnet.py: same widths, stem, padding),
SimCLR's projector (Dense 2048 no bias -> BN -> ReLU -> Dense 128), NT-Xent at temperature 0.1 over the 2B
views, the optimizer (AdamW, lr 1e-3, or SGD + Nesterov momentum 0.9), fp32, all host threads
(torch.set_num_threads(os.cpu_count()); XLA uses every core, convolutions included since medssl_jax/xla_cpu.py
keeps them out of YNNPACK: MEDSSL_XLA_CPU_TUNING=0 measures the jaxlib default). The JAX and PyTorch steps are
timed in alternation (one of each per round, --steps rounds after a warm-up step each; JAX compiled before),
each step waited for, so both see the same background load; the median and the best are printed (on a
shared machine the best is the steadier: other jobs only add time).

Two rows per side:
  model only  the two views already made (float, normalised, on the device): forward of both views as one
              2B batch (BatchNorm over all views, as in SimCLR), backward, optimizer update.
              JAX: encode_views + the SIMCLR objective + optax, jitted with the state donated.
  full step   JAX: medssl_jax.train.step.make_train_step (the trainer's step: both views augmented on the
              device from the uint8 batch with the default SimCLR policy -- random resized crop, flip, colour
              jitter incl. hue, grayscale, Gaussian blur -- plus the collapse monitors (an SVD of the features
              and of the projections) and the LR schedule / grad-norm metrics).
              PyTorch: the same model-only step after a batched on-tensor augmentation of the same cost class
              (random resized crop + flip through one affine_grid / grid_sample, brightness / contrast /
              saturation, a YIQ hue rotation, grayscale, per-image Gaussian blur as a grouped separable conv);
              torchvision's per-image PIL pipeline is not used (it runs in data-loader workers instead).
The ratios printed are JAX images/s / PyTorch images/s (> 1: JAX faster), of the medians and of the bests.
"""
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app
from absl import flags

import bench_lib as sm
from torch_lib import TORCH_VARIANTS, torch_step

_SIZES = flags.DEFINE_list("sizes", "28", "Image and view sizes (px); one table cell per size x encoder.")
_BATCH = flags.DEFINE_integer("batch", 128, "Records per step (2 views each: 2x this many encoder images).")
_WIDTH = flags.DEFINE_float("width", 1.0, "ResNet width multiplier.")
_BIG_BATCH = flags.DEFINE_integer("big_batch", 32, "--batch for sizes >= 128 px (0 = --batch).")
_BIG_WIDTH = flags.DEFINE_float("big_width", 0.25, "--width for sizes >= 128 px (0 = --width).")
_ENCODERS = flags.DEFINE_list("encoders", "resnet18", "Encoders on both sides (resnet18, resnet50).")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps per measurement (median kept).")
_STEM = flags.DEFINE_enum("stem", None, ["cifar", "imagenet"], "Stem (default: cifar below 64 px, else imagenet).")
_OPT = flags.DEFINE_enum("optimizer", "adamw", ["adamw", "sgd"], "Optimizer on both sides.")
_DTYPE = flags.DEFINE_enum("compute_dtype", "float32", ["float32", "bfloat16"], "JAX encoder compute dtype "
                           "(the PyTorch side stays fp32; bf16 there would need autocast).")
_TORCH = flags.DEFINE_list("torch", "best,mirrored", "PyTorch variants (TORCH_VARIANTS), each timed against JAX: "
                           "'best' is what a PyTorch user runs, 'mirrored' the same model as ours.")
_SIDES = flags.DEFINE_list("sides", "jax,torch", "Which sides to run.")
_MODES = flags.DEFINE_list("modes", "model,full", "'model' (views made) and / or 'full' (with augmentation).")
_PEAK = flags.DEFINE_float("peak_tflops", 0.0, "Device peak TFLOP/s for the JAX MFU (0 = not printed).")
_QUICK = flags.DEFINE_bool("quick", False, "Smoke preset: batch 16, width 0.125, 2 steps.")




# ---------------------------------------------------------------------------------------------- JAX side

def jax_full(config):
  """(run, GFLOP/step): run() does one step of the trainer's make_train_step (augmentation included)."""
  import jax
  compiled, state, batch, key, _ = sm.compile_train_step(config)
  box = [state]

  def run():
    box[0] = jax.block_until_ready(compiled(box[0], batch, key)[0])
  return run, sm.compiled_stats(compiled)[0]


def cell(*, encoder, size, batch, width, steps):
  """Times JAX and each PyTorch variant in alternation for each mode; returns table rows and prints lines."""
  stem = _STEM.value or ("cifar" if size < 64 else "imagenet")
  print(f"\n{encoder} x{width} {stem} stem, {size} px, batch {batch} x 2 views, {_OPT.value}, JAX "
        f"{_DTYPE.value}, median / best of {steps} interleaved rounds", flush=True)
  config = sm.bench_config(encoder=encoder, size=size, batch=batch, width=width, stem=stem,
                           optimizer=_OPT.value, compute_dtype=_DTYPE.value)
  depth = int(encoder[len("resnet"):])
  line = lambda name, med, best: (f"{name:24s}: {med * 1e3:8.1f} ms/step, {batch / med:7.1f} images/s "
                                  f"(best {best * 1e3:.1f} ms, {batch / best:.1f} images/s)")
  rows = []
  for mode in _MODES.value:
    runs, gflop = {}, None
    if "jax" in _SIDES.value:
      runs["JAX"], gflop = (sm.model_only_step if mode == "model" else jax_full)(config)
    if "torch" in _SIDES.value:
      for v in _TORCH.value:
        padding, channels_last, compile = TORCH_VARIANTS[v]
        runs[f"PyTorch {v}"] = torch_step(depth=depth, width=width, stem=stem, size=size, batch=batch,
                                          optimizer=_OPT.value, full=mode == "full", channels_last=channels_last,
                                          padding=padding, compile=compile)
    times = sm.interleaved_times(runs, steps=steps)
    stats = {name: (statistics.median(t), min(t)) for name, t in times.items()}
    for name, (med, best) in stats.items():
      extra = ""
      if name == "JAX" and gflop:
        extra = f", {gflop:.1f} GFLOP/step"
        if _PEAK.value:
          extra += f", MFU {gflop / best / (_PEAK.value * 1e3) * 100:.1f}% (best)"
      print(f"{mode:5s} " + line(name, med, best) + extra, flush=True)
    jax_stats = stats.get("JAX")
    cells = [f"{encoder} x{width:g}", str(size), str(batch), mode,
             f"{batch / jax_stats[0]:.1f}" if jax_stats else "-"]
    for v in _TORCH.value:
      t = stats.get(f"PyTorch {v}")
      cells.append(f"{batch / t[0]:.1f}" if t else "-")
      if t and jax_stats:
        ratio = f"{t[0] / jax_stats[0]:.2f}x / {t[1] / jax_stats[1]:.2f}x"
        cells.append(ratio)
        print(f"ratio JAX / PyTorch {v} images/s ({mode}): {ratio} (medians / bests)", flush=True)
      else:
        cells.append("-")
    rows.append("| " + " | ".join(cells) + " |")
  return rows


def main(_):
  import torch
  batch, width, steps = _BATCH.value, _WIDTH.value, _STEPS.value
  big_batch, big_width = _BIG_BATCH.value or batch, _BIG_WIDTH.value or width
  if _QUICK.value:
    batch = big_batch = 16
    width = big_width = 0.125
    steps = 2
  unknown = [v for v in _TORCH.value if v not in TORCH_VARIANTS]
  if unknown:
    raise app.UsageError(f"--torch={','.join(_TORCH.value)}: unknown {unknown}; choose from {list(TORCH_VARIANTS)}")
  torch.set_num_threads(os.cpu_count())
  print(sm.device_line())
  print(f"torch {torch.__version__}, threads {torch.get_num_threads()}; PyTorch variants (padding, channels_last, "
        f"torch.compile): " + ", ".join(f"{v} {TORCH_VARIANTS[v]}" for v in _TORCH.value))
  rows = []
  for encoder in _ENCODERS.value:
    for size in (int(s) for s in _SIZES.value):
      big = size >= 128
      rows += cell(encoder=encoder, size=size, batch=big_batch if big else batch, width=big_width if big else width,
                   steps=steps)
  head = ("| encoder | px | batch | step | JAX images/s | "
          + " | ".join(f"PyTorch {v} images/s | JAX / PyTorch {v} (medians / bests)" for v in _TORCH.value) + " |")
  print("\n" + head + "\n" + "|---" * (head.count("|") - 1) + "|\n" + "\n".join(rows))


if __name__ == "__main__":
  app.run(main)
