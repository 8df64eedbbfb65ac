"""Shared base of the configs/volume_<objective>.py family (not itself a config): the `:<dataset>[,quick]`
argument, a MedMNIST 3D dataset (28³), the 3D ResNet-18 (CIFAR stem, quarter width), the volume views,
optimizer and probe, so objectives are compared on equal terms; each file then sets what its paper prescribes.
`quick` shrinks a config to its `:quick` variant (20 steps of a narrow network, probe of the pretrained
encoder only)."""
from medssl_jax import config as config_lib
from medssl_jax import experiment
from medssl_jax.augment import views
from medssl_jax.data import shared
from tfds_builders.medmnist3d import DATASETS

VARIANTS = ("quick", "synthetic", *sorted(DATASETS))
SYNTHETIC = "synthetic"  # synthetic_volumes/28: generated volumes, for runs without the shared data.


def parse(arg, *, config_file: str):
  """'<dataset>', '<dataset>,quick' or 'quick' -> (dataset, quick); <dataset> is a MedMNIST 3D name or
  "synthetic". The default dataset is AdrenalMNIST3D; `:quick` alone falls back to "synthetic" where the shared
  AdrenalMNIST3D is absent."""
  parts = [p.strip() for p in (arg or "").split(",") if p.strip()]
  names = [p for p in parts if p != "quick"]
  quick = "quick" in parts
  shared_adrenal = (shared.shared_data_dir() / "adrenalmnist3d").is_dir()
  name = names[0] if names else ("adrenalmnist3d" if shared_adrenal or not quick else SYNTHETIC)
  if name not in (*DATASETS, SYNTHETIC) or names[1:]:
    raise config_lib.unknown_variant(arg, ["<dataset>", "<dataset>,quick", "quick"],
                                    what=f"{config_file} variant",
                                    rest=f"with <dataset> in {[SYNTHETIC, *sorted(DATASETS)]}")
  return name, quick


def view(**overrides):
  """The family's volume view (`views.default_view3d` at 28³, crop scale (0.35, 1)), with `overrides`."""
  return views.default_view3d(**{"crop_size": 28, "crop_scale": (0.35, 1.0), **overrides})


def base(objective: str, name: str):
  """Pretraining of a ResNet-18 + 3D (x0.25, CIFAR stem) with `objective` on medmnist3d/<name>, then a probe
  beside a random encoder: two views of `view()`, AdamW 2e-3 (batch 64, 1000 steps)."""
  c = experiment.default_config()
  c.mode = "pretrain_and_probe"
  if name == SYNTHETIC:
    c.data.builder = "synthetic_volumes"
    c.data.builder_config = "28"
  else:
    c.data.builder = "medmnist3d"
    c.data.builder_config = name
    c.data.manual_dir = str(shared.shared_data_dir() / name)
  c.data.image_size = 28
  c.data.channels = 1
  c.data.mean = (0.5,)
  c.data.std = (0.5,)
  c.data.val_split = "validation"
  c.model.encoder = "resnet18_3d"
  c.model.stem = "cifar"
  c.model.width_multiplier = 0.25
  c.model.projector_hidden_dims = (256,)
  c.model.projector_dim = 64
  c.objective.name = objective
  c.objective.temperature = 0.2
  c.augment.views = [view(), view()]
  c.train.batch_size = 64
  c.train.num_steps = 1000
  c.train.optimizer = "adamw"
  c.train.base_learning_rate = 2e-3
  c.train.warmup_steps = 50
  c.train.weight_decay = 1e-4
  c.train.log_every = 50
  c.train.checkpoint_every = 250
  c.eval.batch_size = 128
  c.eval.compare_random_init = True
  return c


def quick(c):
  """20 steps of a narrow network (x0.125, heads of 32 -> 16, batch 16), probe of the pretrained encoder only."""
  c.model.width_multiplier = 0.125
  c.model.projector_hidden_dims = (32,)
  c.model.projector_dim = 16
  c.train.batch_size = 16
  c.train.num_steps = 20
  c.train.warmup_steps = 2
  c.train.log_every = 10
  c.train.checkpoint_every = 20
  c.eval.max_iter = 50
  c.eval.compare_random_init = False  # Halves the probe's feature extraction; the full variants keep it.
