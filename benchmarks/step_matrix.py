"""Train-step images/s and memory for each objective x encoder x image size (synthetic batches).

Usage:
  python benchmarks/step_matrix.py --quick
  python benchmarks/step_matrix.py --objectives=simclr,byol,dino,mae --encoders=resnet18,resnet50,vit_tiny \
      --sizes=28,64,224 --batch=32 --width=0.25 --steps=5 [--compute_dtype=bfloat16] [--peak_tflops=989]

Each cell builds the config's model / objective / optimizer, compiles medssl_jax.train.step.make_train_step
(augmentation of both views on device -> encode -> loss -> update) on a 1-device mesh and times it on a fixed
uint8 batch already on the device (the input pipeline is not in the number; see throughput.py for it).
Memory is XLA's own account of the compiled step (arguments + temporaries; the state is donated), which
every backend reports; on GPU / TPU the device's peak bytes in use is printed beside it. GFLOP/step comes
from the compiled step's cost analysis; MFU = FLOP/s / (--peak_tflops x 1e12) when --peak_tflops is set.
A cell that a combination does not support (MAE on a ResNet, image-text objectives without reports) is
reported as skipped with the reason. Prints a markdown table.

"""
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app
from absl import flags

import bench_lib
from bench_lib import bench_config, device_line, fmt, train_step_cell

_OBJECTIVES = flags.DEFINE_list("objectives", "simclr,byol,dino,mae", "Objectives (config.objective.name), "
                                "or 'all' for every registered one.")
_ENCODERS = flags.DEFINE_list("encoders", "resnet18,resnet50,vit_tiny", "Encoders (config.model.encoder).")
_SIZES = flags.DEFINE_list("sizes", "28,64,224", "Image / crop sizes in pixels.")
_BATCH = flags.DEFINE_integer("batch", 32, "Global batch (records; each gives 2 views).")
_WIDTH = flags.DEFINE_float("width", 0.25, "ResNet width multiplier (ViTs keep their fixed width).")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps per cell (after one warm-up step); the median is kept.")
_DTYPE = flags.DEFINE_enum("compute_dtype", "float32", ["float32", "bfloat16"], "config.model.compute_dtype.")
_PEAK = flags.DEFINE_float("peak_tflops", 0.0, "Device peak TFLOP/s for MFU (0 = no MFU column).")
_MAX_224 = flags.DEFINE_list("encoders_224", "resnet18", "Encoders also run at sizes >= 128 px ('all' = every "
                             "one); the others skip the big sizes (slow on a CPU).")
_QUICK = flags.DEFINE_bool("quick", False, "Smoke preset (< 2 min on 2 CPU cores): simclr + mae, resnet18 + "
                           "vit_tiny, 28 px, batch 16, width 0.125, 2 steps.")




def main(_):
  import jax

  from medssl_jax import objectives as objectives_lib
  objs, encs, sizes = list(_OBJECTIVES.value), list(_ENCODERS.value), [int(s) for s in _SIZES.value]
  batch, width, steps, big = _BATCH.value, _WIDTH.value, _STEPS.value, list(_MAX_224.value)
  if _QUICK.value:
    objs, encs, sizes, batch, width, steps, big = ["simclr", "mae"], ["resnet18", "vit_tiny"], [28], 16, 0.125, 2, []
  if objs == ["all"]:
    objs = [o for o in objectives_lib.OBJECTIVES if o not in bench_lib.TEXT_OBJECTIVES]
  print(device_line())
  print(f"batch {batch} records x 2 views, ResNet width {width}, {_DTYPE.value}, median of {steps} steps")
  peak = _PEAK.value
  head = ("| objective | encoder | px | ms/step | images/s | GFLOP/step | XLA args+temp MiB | device peak MiB | "
          f"compile s |{' MFU |' if peak else ''}")
  rows = []
  for enc in encs:
    for size in sizes:
      if size >= 128 and big != ["all"] and enc not in big:
        continue
      for obj in objs:
        try:
          config = bench_config(objective=obj, encoder=enc, size=size, batch=batch, width=width,
                                compute_dtype=_DTYPE.value)
          r = train_step_cell(config, steps=steps)
        except Exception as e:  # Unsupported combination: report it, go on.
          msg = re.split(r" \(|[,;]", str(e).splitlines()[0])[0][:60] if str(e) else type(e).__name__
          rows.append(f"| {obj} | {enc} | {size} | skipped: {msg} |{' |' * (5 + bool(_PEAK.value))}")
          print(rows[-1], flush=True)
          continue
        mfu = ""
        if peak:
          mfu = f" {fmt(r['gflop'] and r['gflop'] / (r['ms'] / 1e3) / (peak * 1e3) * 100, '.1f')}% |"
        rows.append(f"| {obj} | {enc} | {size} | {r['ms']:.0f} | {r['images_s']:.1f} | {fmt(r['gflop'], '.1f')} | "
                    f"{fmt(r['xla_mib'])} | {fmt(r['device_peak_mib'])} | {r['compile_s']:.0f} |{mfu}")
        print(rows[-1], flush=True)
        jax.clear_caches()
  print()
  print(head)
  print("|---" * (head.count("|") - 1) + "|")
  print("\n".join(rows))


if __name__ == "__main__":
  app.run(main)
