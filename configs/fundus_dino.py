"""DINO on the embedded synthetic fundus data (multi-crop), then a linear probe beside a random encoder.

Reproduces: DINO (Caron et al. 2021) with this codebase's fundus recipe: EMA teacher on the 2 global
            64 px crops (scale (0.4, 1)), student on those and 4 local 32 px crops (scale (0.05, 0.4));
            DINO head (3-layer GELU MLP, 256-d bottleneck, weight-normalised last layer with g = 1;
            BatchNorm in the head, DINO's `use_bn_in_head`, as on every ResNet here: without it the
            tiny runs collapse to a constant output);
            student temperature 0.1, teacher temperature warmed up 0.04 -> 0.07 over the first 30% of
            the run, centre momentum 0.9, gradient clipping at 3.0.
            Adapted for short runs: K = 1024 outputs (paper: 65536), hidden width 512, teacher
            momentum 0.99 rising to 1 (paper 0.996), 4 local crops (paper 6-10), AdamW of the shared
            fundus recipe; no last-layer freeze in the first epoch, no weight-decay schedule.
Command:    python main.py --config=configs/fundus_dino.py --workdir=/tmp/fundus_dino
Variants:   `:quick` (40 steps of a tiny model on synthetic_fundus/small: 2 global 64 px + 2 local
            32 px crops, head 64-64-32 -> K = 64, teacher temperature warm-up over 12 steps).
Expected / wall-clock: not yet measured as a table.
"""
from medssl_jax import config as config_lib
from medssl_jax.augment import views

_fundus = config_lib.sibling(__file__, "_fundus")


def multi_crop_views(*, global_size, local_size, global_scale, local_scale, num_local, **kw):
  """DINO's crops: global 1 (blur p=1), global 2 (blur p=0.1, solarise p=0.2), then local (blur p=0.5)."""
  g1 = views.default_view(crop_size=global_size, crop_scale=global_scale, **dict(kw, blur_p=kw.get("blur_p", 1.0)))
  g2 = views.default_view(crop_size=global_size, crop_scale=global_scale,
                          **dict(kw, blur_p=kw.get("blur_p", 0.1), solarize_p=kw.get("solarize_p", 0.2)))
  local = [views.default_view(crop_size=local_size, crop_scale=local_scale, **dict(kw, blur_p=kw.get("blur_p", 0.5)))
           for _ in range(num_local)]
  return [g1, g2] + local


def _quick(c):
  _fundus.quick(c)
  c.augment.views = multi_crop_views(global_size=64, local_size=32, global_scale=(0.4, 1.0),
                                     local_scale=(0.05, 0.4), num_local=2, brightness=0.2, contrast=0.2,
                                     saturation=0.2, hue=0.0, grayscale_p=0.0, blur_p=0.0, solarize_p=0.0)
  c.model.projector_hidden_dims = (64, 64)  # Keep DINO's 3-layer head in the tiny model.
  c.model.projector_dim = 32
  c.objective.dino.out_dim = 64
  c.objective.dino.teacher_temperature_warmup_steps = 12


def get_config(arg=None):
  c = _fundus.base("dino")
  c.augment.views = multi_crop_views(global_size=64, local_size=32, global_scale=(0.4, 1.0),
                                     local_scale=(0.05, 0.4), num_local=4)
  c.model.projector_hidden_dims = (512, 512)  # + the bottleneck layer: DINO's 3-layer MLP.
  c.model.projector_dim = 256                 # Bottleneck.
  c.objective.num_global_views = 2
  c.objective.dino.out_dim = 1024
  c.objective.temperature = 0.1
  c.objective.dino.teacher_temperature_start = 0.04
  c.objective.dino.teacher_temperature = 0.07
  c.objective.dino.teacher_temperature_warmup_steps = int(0.3 * c.train.num_steps)
  c.objective.dino.center_momentum = 0.9
  c.objective.momentum = 0.99
  c.train.grad_clip_norm = 3.0
  return _fundus.with_quick(c, arg, quick=_quick)
