"""Shared base of the configs/fundus_<objective>.py family (not itself a config).

Every fundus_<objective> config starts from `base(name)`: the demo's data (synthetic_fundus/64px_lesions2x),
encoder (ResNet-18 x0.25 at 64 px), views and probe, so objectives are compared on equal terms; each
file then sets what its paper prescribes. `with_quick` adds the `:quick` variant that CI runs.
"""
from medssl_jax import config as config_lib
from medssl_jax import experiment
from medssl_jax.augment import views


def base(objective: str):
  c = experiment.default_config()
  c.mode = "pretrain_and_probe"
  c.seed = 0
  c.data.builder = "synthetic_fundus"
  # Lesions drawn twice as large as in "64px": the grade is then in structure a 64 px ResNet can see, so
  # what an objective learns shows in the probe (on "64px" SimCLR beat a random encoder by only ~5 points).
  c.data.builder_config = "64px_lesions2x"
  c.data.image_size = 64
  c.model.encoder = "resnet18"
  c.model.stem = "imagenet"
  c.model.width_multiplier = 0.25
  c.model.projector_hidden_dims = (512,)
  c.model.projector_dim = 128
  c.objective.name = objective
  c.objective.temperature = 0.2
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
  return c


def quick(c):
  """40 steps of a tiny model on synthetic_fundus/small: a smoke run that finishes in about a minute."""
  c.data.builder_config = "small"
  c.model.width_multiplier = 0.125
  c.model.projector_hidden_dims = (64,)
  c.model.projector_dim = 32
  c.model.predictor_hidden_dims = (64,)
  c.augment.views = [views.default_view(crop_size=v.crop_size, crop_scale=(0.5, 1.0), brightness=0.2, contrast=0.2,
                                        saturation=0.2, hue=0.0, grayscale_p=0.0, blur_p=0.0)
                     for v in c.augment.views]
  c.train.base_learning_rate = 0.03
  c.train.batch_size = 16
  c.train.num_steps = 40
  c.train.warmup_steps = 2
  c.train.log_every = 10
  c.train.checkpoint_every = 20
  c.eval.batch_size = 32
  c.eval.max_iter = 50


def with_quick(c, arg, **extra_variants):
  """Applies `--config=...:quick` (or another named variant) to a fundus config."""
  return config_lib.with_variant(c, arg, {"quick": quick, **extra_variants})
