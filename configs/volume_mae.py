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
Data:       medmnist3d/<dataset> from --config.data.manual_dir (default $MEDSSL_SHARED_DATA/<dataset>), or
            `:synthetic` (generated volumes; `:quick` uses them where the shared AdrenalMNIST3D is absent).
The data, optimizer and probe are the volume family's (configs/_volume.py); the encoder, view and schedule are MAE's.
Budget:     1000 steps at batch 64 and base learning rate 1.5e-3 (MAE's schedule spans 800 ImageNet epochs); the
            full variants are sized for an accelerator.
Wall-clock: `:quick` about two minutes on the 2-core CPU (compiles and the probe's feature extraction included).
"""
from medssl_jax import config as config_lib

_volume = config_lib.sibling(__file__, "_volume")
VARIANTS = _volume.VARIANTS


def get_config(arg=None):
  name, quick = _volume.parse(arg, config_file="configs/volume_mae.py")
  c = _volume.base("mae", name)
  c.model.encoder = "vit_tiny_3d"
  c.model.width_multiplier = 1.0
  c.model.patch_size = 4
  c.model.position_embedding = "sincos"  # 3-D sin-cos embeddings, encoder and decoder.
  c.model.decoder_dim = 96
  c.model.decoder_depth = 2
  c.model.decoder_heads = 4
  c.objective.mae.mask_ratio = 0.75
  c.objective.mae.norm_pix_loss = True
  # MAE's only augmentation: random resized crop + flips (no intensity, gamma, blur or noise).
  c.augment.views = [_volume.view(intensity_p=0.0, gamma_p=0.0, blur_p=0.0, noise_p=0.0)]
  c.train.base_learning_rate = 1.5e-3
  c.train.weight_decay = 0.05
  if quick:
    _volume.quick(c)
    c.model.width_multiplier = 1.0  # A ViT keeps its width; quick shrinks the patch grid and the decoder.
    c.model.patch_size = 7
    c.model.decoder_depth = 1
  return c
