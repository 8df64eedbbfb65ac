"""SimCLR on volumes: a 3D ResNet-18 pretrained on a MedMNIST 3D training split (28³), then probed on the same dataset.

Reproduces: 3D contrastive pretraining (SimCLR, Chen et al. 2020, with volume views: random resized 3D crop, flips
            about each axis, intensity scale / shift / gamma, noise, 3D blur) on MedMNIST v2's "ResNet-18 + 3D"
            layout (every 2D op made 3D, CIFAR stem at 28³), evaluated by eval.protocol beside a random encoder.
Command:    python main.py --config=configs/volume_simclr.py:adrenalmnist3d --workdir=/tmp/adrenal_simclr
            (`:<dataset>` is a MedMNIST 3D name; `:quick` = AdrenalMNIST3D, 20 steps of a narrow network, probe of
            the pretrained encoder only.)
Data:       medmnist3d/<dataset> from --config.data.manual_dir (default $MEDSSL_SHARED_DATA/<dataset>; the shared
            data holds adrenalmnist3d and vesselmnist3d: binary shape volumes, 0/255 voxels); `:synthetic` =
            synthetic_volumes/28 (generated shape volumes with a hidden-cavity label), which `:quick` uses where
            the shared AdrenalMNIST3D is absent.
Budget:     ResNet-18 + 3D at a quarter of the width (what a 2-core CPU affords), not MedMNIST's full width;
            `--config.model.width_multiplier=1.0` is the published architecture.
Wall-clock: `:quick` about a minute on the 2-core CPU (compiles included).
"""
from medssl_jax import config as config_lib
from medssl_jax import experiment
from medssl_jax.augment import views
from medssl_jax.data import shared
from tfds_builders.medmnist3d import DATASETS

VARIANTS = ("quick", "synthetic", *sorted(DATASETS))


def get_config(arg=None):
  parts = [p.strip() for p in (arg or "").split(",") if p.strip()]
  names = [p for p in parts if p != "quick"]
  quick = "quick" in parts
  # `:quick` runs on the shared AdrenalMNIST3D, or on generated volumes where the shared data is absent.
  default = "adrenalmnist3d" if not quick or (shared.shared_data_dir() / "adrenalmnist3d").is_dir() else "synthetic"
  name = names[0] if names else default
  if name not in (*DATASETS, "synthetic") or names[1:]:
    raise config_lib.unknown_variant(arg, ["<dataset>", "<dataset>,quick", "quick"],
                                    what="configs/volume_simclr.py variant",
                                    rest=f"with <dataset> in {['synthetic', *sorted(DATASETS)]}")
  c = experiment.default_config()
  c.mode = "pretrain_and_probe"
  if name == "synthetic":
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
  c.objective.name = "simclr"
  c.objective.temperature = 0.2
  view = views.default_view3d(crop_size=28, crop_scale=(0.35, 1.0))
  c.augment.views = [view, view]
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
  if quick:
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
  return c
