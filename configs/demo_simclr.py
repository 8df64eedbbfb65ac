"""SimCLR on the embedded synthetic fundus data, then a linear probe beside a random encoder.

Reproduces: the README's demo table (SimCLR probe vs randomly initialised encoder probe).
Command:    python main.py --config=configs/demo_simclr.py --workdir=/tmp/medssl_demo
Variants:   `:quick` (40 steps of a tiny model on synthetic_fundus/small, for tests and smoke runs).
Data:       synthetic_fundus/64px (built on first use into $TFDS_DATA_DIR or ~/tensorflow_datasets;
            2048 train / 256 validation / 512 test images, 4 lesion classes).
Expected / wall-clock: see README "Demo" (numbers from this command on 2 CPU cores).
"""
from medssl_jax import config as config_lib
from medssl_jax.augment import views


def get_config(arg=None):
  c = config_lib.base_config()
  c.mode = "pretrain_and_probe"
  c.seed = 0
  c.data.builder = "synthetic_fundus"
  c.data.builder_config = "64px"
  c.data.image_size = 64
  c.model.encoder = "resnet18"
  c.model.stem = "imagenet"
  c.model.width_multiplier = 0.25
  c.model.projector_hidden_dims = (512,)
  c.model.projector_dim = 128
  c.objective.name = "simclr"
  c.objective.temperature = 0.2
  # SimCLR's colour recipe; crops no smaller than a quarter of the image, so most keep some lesions.
  # (A milder, fundus-style colour jitter learned faster but probed worse: 0.377 vs 0.414 accuracy.)
  view = dict(crop_size=64, crop_scale=(0.25, 1.0), blur_p=0.5, solarize_p=0.0)
  c.augment.views = [views.default_view(**view), views.default_view(**dict(view, blur_p=0.1, solarize_p=0.2))]
  c.train.batch_size = 128
  c.train.num_steps = 800
  c.train.optimizer = "adamw"
  c.train.base_learning_rate = 2e-3
  c.train.warmup_steps = 50
  c.train.weight_decay = 1e-4
  c.train.log_every = 25
  c.train.checkpoint_every = 200
  c.eval.batch_size = 256

  def quick(c):
    c.data.builder_config = "small"
    c.model.width_multiplier = 0.125
    c.model.projector_hidden_dims = (64,)
    c.model.projector_dim = 32
    # Tiny models cannot solve SimCLR's full-strength task in a few dozen steps; milder views let the
    # quick run learn something measurable.
    c.augment.views = [views.default_view(crop_size=64, crop_scale=(0.5, 1.0), brightness=0.2, contrast=0.2,
                                          saturation=0.2, hue=0.0, grayscale_p=0.0, blur_p=0.0)] * 2
    c.train.base_learning_rate = 0.03  # Linear scaling would give Adam 1e-4 at batch 16.
    c.train.batch_size = 16
    c.train.num_steps = 40
    c.train.warmup_steps = 2
    c.train.log_every = 10
    c.train.checkpoint_every = 20
    c.eval.batch_size = 32
    c.eval.max_iter = 50

  return config_lib.with_variant(c, arg, {"quick": quick})
