"""MAE on the embedded synthetic fundus data, then a linear probe beside a random encoder.

Reproduces: MAE (He et al. 2022) with a ViT-Ti/8 encoder at 64 px (8x8 patches): 75% of the patches
            masked per image, per-patch normalised pixel targets, a light decoder (128 wide, 4 blocks,
            4 heads), one view with crop + flip only, AdamW with weight decay 0.05. Adapted for a short
            run on small data: 800 steps at batch 128, base learning rate 1.5e-3 (10x the paper's 1.5e-4,
            whose schedule spans 800 ImageNet epochs), a narrower and shallower decoder than the paper's
            512 x 8 (sized for ViT-Ti), AdamW's default beta2 (the paper uses 0.95; the trainer does not
            expose betas).
Command:    python main.py --config=configs/fundus_mae.py --workdir=/tmp/fundus_mae
Variants:   `:quick` (40 steps on synthetic_fundus/small, decoder 1 block, for tests and smoke runs).
Expected / wall-clock: not yet measured as a table.
"""
from medssl_jax import config as config_lib
from medssl_jax.augment import views

_fundus = config_lib.sibling(__file__, "_fundus")


def _view(crop_size, crop_scale=(0.2, 1.0)):
  # MAE's only augmentation: random resized crop + horizontal flip (no colour jitter, blur, solarize).
  return views.default_view(crop_size=crop_size, crop_scale=crop_scale, jitter_p=0.0, grayscale_p=0.0,
                            blur_p=0.0, solarize_p=0.0)


def quick(c):
  _fundus.quick(c)
  c.model.width_multiplier = 1.0  # ViT widths are fixed; the shared quick variant shrinks ResNets.
  c.model.decoder_depth = 1
  c.augment.views = [_view(v.crop_size, (0.5, 1.0)) for v in c.augment.views]
  c.train.base_learning_rate = 1.5e-3


def get_config(arg=None):
  c = _fundus.base("mae")
  c.model.encoder = "vit_tiny"
  c.model.width_multiplier = 1.0
  c.model.patch_size = 8
  c.model.position_embedding = "sincos"  # MAE's fixed 2-D sin-cos embeddings, encoder and decoder.
  c.model.decoder_dim = 128
  c.model.decoder_depth = 4
  c.model.decoder_heads = 4
  c.objective.mae.mask_ratio = 0.75
  c.objective.mae.norm_pix_loss = True
  c.augment.views = [_view(64)]
  c.train.optimizer = "adamw"
  c.train.base_learning_rate = 1.5e-3
  c.train.weight_decay = 0.05
  c.train.warmup_steps = 40
  return _fundus.with_quick(c, arg, quick=quick)
