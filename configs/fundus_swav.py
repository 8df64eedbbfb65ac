"""SwAV on the embedded synthetic fundus data (multi-crop), then a linear probe beside a random encoder.

Reproduces: SwAV (Caron et al. 2020) with this codebase's fundus recipe: multi-crop (2 global 64 px
            crops, scale (0.14, 1), + 4 local 32 px crops, scale (0.05, 0.14), as the paper's 2x224 +
            6x96 scaled to 64 px images), Sinkhorn-Knopp codes (epsilon 0.05, 3 iterations) on the
            global batch for the 2 global views, swapped prediction at temperature 0.1.
            Adapted for short runs: K = 128 prototypes (about the batch size: without SwAV's queue the
            codes are balanced over one batch of 128; the paper's 3000 is for batches of 4096), no
            queue, no first-epoch prototype freeze, AdamW of the shared fundus recipe instead of LARS.
Command:    python main.py --config=configs/fundus_swav.py --workdir=/tmp/fundus_swav
Variants:   `:quick` (40 steps of a tiny model on synthetic_fundus/small: 2 global 64 px crops, scale
            (0.4, 1), + 2 local 32 px crops, scale (0.05, 0.4); K = 32; for tests and smoke runs).
Expected / wall-clock: not yet measured as a table.
"""
from medssl_jax import config as config_lib
from medssl_jax.augment import views

_fundus = config_lib.sibling(__file__, "_fundus")


def multi_crop_views(*, global_size, local_size, global_scale, local_scale, num_local, **kw):
  """2 global views at `global_size` followed by `num_local` local views at `local_size`."""
  g = [views.default_view(crop_size=global_size, crop_scale=global_scale, **kw) for _ in range(2)]
  return g + [views.default_view(crop_size=local_size, crop_scale=local_scale, **kw) for _ in range(num_local)]


def _quick(c):
  _fundus.quick(c)
  # The shared quick variant keeps the number of views; rebuild the multi-crop set with milder colour.
  c.augment.views = multi_crop_views(global_size=64, local_size=32, global_scale=(0.4, 1.0),
                                     local_scale=(0.05, 0.4), num_local=2, brightness=0.2, contrast=0.2,
                                     saturation=0.2, hue=0.0, grayscale_p=0.0, blur_p=0.0)
  c.objective.swav.num_prototypes = 32


def get_config(arg=None):
  c = _fundus.base("swav")
  # SwAV applies the same augmentations (with blur p=0.5, no solarisation) to every crop.
  c.augment.views = multi_crop_views(global_size=64, local_size=32, global_scale=(0.14, 1.0),
                                     local_scale=(0.05, 0.14), num_local=4, blur_p=0.5, solarize_p=0.0)
  c.objective.num_global_views = 2
  c.objective.temperature = 0.1
  c.objective.swav.num_prototypes = 128
  c.objective.swav.sinkhorn_epsilon = 0.05
  c.objective.swav.sinkhorn_iters = 3
  return _fundus.with_quick(c, arg, quick=_quick)
