"""SimCLR on the 1000-image NIH ChestX-ray14 subset (64 px, grayscale), then linear probes at 10% labels.

Reproduces: a real-data smoke run of the data layer: a manual-download builder on real X-rays,
            a patient-level re-split (the subset's own folders share patients across splits), a
            grayscale-safe view policy and a fixed, hashed 10% label subset for the probe.
Command:    python main.py --config=configs/nih1000_simclr.py --workdir=/tmp/nih1000_simclr
            (variants: `:quick` for a 30-step smoke run; `--config.eval.train_subset=` for all labels)
Data:       nih_chestxray14/subset1000_patient_split from $MEDSSL_SHARED_DATA/nih_cxr14_1000_64px
            (override with --config.data.manual_dir=/path/holding/NIH1000). 1000 images, normal vs
            abnormal, split 60/20/20 by patient (seed 0).
Expected / wall-clock: not yet measured as a table.
"""
from medssl_jax import config as config_lib
from medssl_jax import experiment
from medssl_jax.augment import views
from medssl_jax.data import shared


def get_config(arg=None):
  c = experiment.default_config()
  c.mode = "pretrain_and_probe"
  c.data.builder = "nih_chestxray14"
  c.data.builder_config = "subset1000_patient_split"
  c.data.manual_dir = str(shared.shared_data_dir() / "nih_cxr14_1000_64px")
  c.data.image_size = 64
  c.data.channels = 1
  c.data.mean = (0.5,)
  c.data.std = (0.5,)
  c.model.encoder = "resnet18"
  c.model.width_multiplier = 0.25
  c.model.projector_hidden_dims = (512,)
  c.objective.name = "simclr"
  c.objective.temperature = 0.2
  # X-rays: no hue/saturation jitter (the grayscale-safe mode applies brightness/contrast only).
  view = dict(crop_size=64, crop_scale=(0.35, 1.0), hue=0.0, saturation=0.0, grayscale_p=0.0, blur_p=0.3)
  c.augment.views = [views.default_view(**view), views.default_view(**dict(view, solarize_p=0.1))]
  c.train.batch_size = 128
  c.train.num_steps = 600
  c.train.optimizer = "adamw"
  c.train.base_learning_rate = 2e-3
  c.train.warmup_steps = 50
  c.train.weight_decay = 1e-4
  c.train.log_every = 25
  c.train.checkpoint_every = 200
  c.eval.train_subset = "10%"

  def quick(c):
    c.model.width_multiplier = 0.125
    c.model.projector_hidden_dims = (64,)
    c.model.projector_dim = 32
    c.train.batch_size = 32
    c.train.num_steps = 30
    c.train.warmup_steps = 2
    c.train.log_every = 10
    c.train.checkpoint_every = 30
    c.eval.max_iter = 50

  return config_lib.with_variant(c, arg, {"quick": quick})
