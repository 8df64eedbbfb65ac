"""MAE on volumes: a 3D ViT-Ti pretrained on a MedMNIST 3D training split (28³), then probed on the same dataset.

Reproduces: MAE (He et al. 2022) on volumes: the 28³ volume cut into p x p x p patches (p = 4: a 7 x 7 x 7 grid),
            75% of them masked per volume, per-patch normalised voxel targets (p³ values), fixed 3-D sin-cos
            position embeddings in encoder and decoder, a light decoder (96 wide, 2 blocks, 4 heads; a width
            divisible by 6 for the 3-D sin-cos table), one view with crop + flips only, AdamW with weight decay
            0.05; evaluated by eval.protocol beside a random encoder.
Command:    python main.py --config=configs/volume_mae.py:adrenalmnist3d --workdir=/tmp/adrenal_mae
            (`:<dataset>` is a MedMNIST 3D name; `:quick` = AdrenalMNIST3D, 20 steps with 7³ patches (a 4 x 4 x 4
            grid), a 1-block decoder, probe of the pretrained encoder only.)
Encoder:    config.model.encoder="vit_tiny_3d" (ViT-Ti on volumes: p x p x p patch embedding); with
            `--config.model.vit_input_dims="(2, 3)"` the same transformer also gets a 2D patch embedding, so its
            weights encode 28 x 28 images too (models.vit_input_dims).
Data:       medmnist3d/<dataset> from --config.data.manual_dir (default $MEDSSL_SHARED_DATA/<dataset>; the shared
            data holds adrenalmnist3d and vesselmnist3d: binary shape volumes, 0/255 voxels).
Budget:     1000 steps at batch 64 and base learning rate 1.5e-3 (MAE's schedule spans 800 ImageNet epochs); the
            full variants are sized for an accelerator.
Wall-clock: `:quick` about two minutes on the 2-core CPU (compiles and the probe's feature extraction included).
"""
from medssl_jax import config as config_lib
from medssl_jax import experiment
from medssl_jax.augment import views
from medssl_jax.data import shared
from tfds_builders.medmnist3d import DATASETS

VARIANTS = ("quick", *sorted(DATASETS))


def get_config(arg=None):
  parts = [p.strip() for p in (arg or "").split(",") if p.strip()]
  names = [p for p in parts if p != "quick"]
  name = names[0] if names else "adrenalmnist3d"
  if name not in DATASETS or names[1:]:
    raise config_lib.unknown_variant(arg, ["<dataset>", "<dataset>,quick", "quick"],
                                    what="configs/volume_mae.py variant", rest=f"with <dataset> in {sorted(DATASETS)}")
  quick = "quick" in parts
  c = experiment.default_config()
  c.mode = "pretrain_and_probe"
  c.data.builder = "medmnist3d"
  c.data.builder_config = name
  c.data.manual_dir = str(shared.shared_data_dir() / name)
  c.data.image_size = 28
  c.data.channels = 1
  c.data.mean = (0.5,)
  c.data.std = (0.5,)
  c.data.val_split = "validation"
  c.model.encoder = "vit_tiny_3d"
  c.model.width_multiplier = 1.0
  c.model.patch_size = 4
  c.model.position_embedding = "sincos"  # 3-D sin-cos embeddings, encoder and decoder.
  c.model.decoder_dim = 96
  c.model.decoder_depth = 2
  c.model.decoder_heads = 4
  c.objective.name = "mae"
  c.objective.mae.mask_ratio = 0.75
  c.objective.mae.norm_pix_loss = True
  # MAE's only augmentation: random resized crop + flips (no intensity, gamma, blur or noise).
  view = views.default_view3d(crop_size=28, crop_scale=(0.35, 1.0), intensity_p=0.0, gamma_p=0.0, blur_p=0.0,
                              noise_p=0.0)
  c.augment.views = [view]
  c.train.batch_size = 64
  c.train.num_steps = 1000
  c.train.optimizer = "adamw"
  c.train.base_learning_rate = 1.5e-3
  c.train.warmup_steps = 50
  c.train.weight_decay = 0.05
  c.train.log_every = 50
  c.train.checkpoint_every = 250
  c.eval.batch_size = 128
  c.eval.compare_random_init = True
  if quick:
    c.model.patch_size = 7
    c.model.decoder_depth = 1
    c.train.batch_size = 16
    c.train.num_steps = 20
    c.train.warmup_steps = 2
    c.train.log_every = 10
    c.train.checkpoint_every = 20
    c.eval.max_iter = 50
    c.eval.compare_random_init = False  # Halves the probe's feature extraction; the full variants keep it.
  return c
