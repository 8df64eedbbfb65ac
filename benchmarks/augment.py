"""On-device augmentation throughput (views/s) of the default SimCLR view policy.

Usage:
  python benchmarks/augment.py [--sizes=28,64,224] [--batch=256] [--steps=10] [--quick]

Times medssl_jax.augment.views.make_views with two default SimCLR views (random resized crop 0.2-1,
flip, colour jitter p 0.8 incl. hue, grayscale p 0.2, Gaussian blur p 0.5) of a uint8 batch already on the
device, the images as big as the views, jitted alone (in the train step XLA fuses it with the encoder).
Also times each op family alone (crop+flip only, + colour, + blur) so the costly one is visible, and
(--torch) the PyTorch augmentation of torch_compare.py's full step (torch_lib.py) (the same policy as
batched tensor ops: one affine_grid / grid_sample crop + flip, colour jitter with a YIQ hue rotation,
grayscale, a per-image separable blur as grouped convolutions), alternated with the JAX default policy.
"""
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app
from absl import flags

import bench_lib

_SIZES = flags.DEFINE_list("sizes", "28,64,224", "Image / view sizes (px).")
_BATCH = flags.DEFINE_integer("batch", 256, "Images per call (each gives 2 views).")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed calls (median kept, after one warm-up).")
_QUICK = flags.DEFINE_bool("quick", False, "Smoke preset: 28 and 64 px, batch 64, 3 calls.")
_TORCH = flags.DEFINE_bool("torch", True, "Also time the batched PyTorch augmentation (torch_lib.py) of the same "
                           "policy (2 views), alternated with the JAX default policy.")

# Policies from cheap to the full default, to attribute the cost.
VARIANTS = {
    "crop+flip": dict(jitter_p=0.0, grayscale_p=0.0, blur_p=0.0),
    "+colour": dict(blur_p=0.0),
    "default (+blur)": {},
}


def main(_):
  import jax
  import numpy as np

  from medssl_jax.augment import views as views_lib
  if _TORCH.value:
    import torch

    import torch_lib
    torch.set_num_threads(os.cpu_count())
  sizes, batch, steps = [int(s) for s in _SIZES.value], _BATCH.value, _STEPS.value
  if _QUICK.value:
    sizes, batch, steps = [28, 64], 64, 3
  print(bench_lib.device_line())
  print(f"batch {batch} uint8 images -> 2 views each, median of {steps} calls")
  rows = []
  for size in sizes:
    images = jax.device_put(np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8))
    for name, overrides in VARIANTS.items():
      cfgs = [views_lib.default_view(crop_size=size, **overrides)] * 2
      fn = jax.jit(lambda key, cfgs=cfgs: views_lib.make_views(key, images, cfgs))
      # The carry holds the views too, so each timed call waits for them (not just for the dispatch).
      dt, _ = bench_lib.time_steps(lambda c, fn=fn: (fn(c[1]), jax.random.fold_in(c[1], 1)),
                                   (None, jax.random.key(0)), steps=steps)
      rows.append(f"| {size} | {name} | {dt * 1e3:.1f} | {2 * batch / dt:.0f} |")
      print(rows[-1], flush=True)
    if _TORCH.value:
      images_t = torch.from_numpy(np.asarray(images))
      gen = torch.Generator().manual_seed(0)
      cfgs = [views_lib.default_view(crop_size=size)] * 2
      fn = jax.jit(lambda key: views_lib.make_views(key, images, cfgs))
      times = bench_lib.interleaved_times({
          "jax": lambda: jax.block_until_ready(fn(jax.random.key(0))),
          "torch": lambda: [torch_lib.torch_augment(images_t, size, gen) for _ in range(2)]}, steps=steps)
      for side in ("jax", "torch"):
        dt = statistics.median(times[side])
        rows.append(f"| {size} | default, {'JAX' if side == 'jax' else 'PyTorch (torch_lib.py)'}, alternated | "
                    f"{dt * 1e3:.1f} | {2 * batch / dt:.0f} |")
        print(rows[-1], flush=True)
  print("\n| px | policy | ms / call (2 views) | views/s |\n|---|---|---|---|")
  print("\n".join(rows))


if __name__ == "__main__":
  app.run(main)
