"""SimCLR pretraining on a MedMNIST training split (28 px), then evaluation on the same dataset.

Reproduces: the SSL arm of the MedMNIST label-fraction table (configs/table_medmnist_ssl.py): SimCLR (Chen et al. 2020)
            on the *training split only* (labels unused), CIFAR-stem ResNet-18 at 28 px as MedMNIST v2's
            "ResNet-18 (28)", then the encoder evaluated by eval.protocol (linear probe / kNN / fine-tune)
            at eval.train_subset labels, beside a randomly initialised encoder (compare_random_init; with
            the fine-tune protocol that random encoder trained with labels is supervised-from-scratch).
Command:    python main.py --config=configs/medmnist_simclr.py:retinamnist --workdir=/tmp/retina_simclr
            (`:<dataset>` is any single-label MedMNIST 2D name at 28 px; `:<dataset>,quick` runs 30 steps of
            a narrow network for smoke tests; `:quick` = RetinaMNIST; `:<dataset>,background` adds background
            augmentation on every view, p 0.2, for RetinaMNIST and PneumoniaMNIST (configs/_medmnist.py
            BACKGROUNDS; the comparison is configs/table_background.py).)
Data:       medmnist/<dataset> from --config.data.manual_dir (default $MEDSSL_SHARED_DATA/<dataset>).
Recipe:     batch 256, AdamW 2e-3 (cosine, 50 warm-up steps), temperature 0.2, 2-layer projector; views:
            random resized crop (scale 0.35-1), flip, brightness/contrast jitter (hue/saturation too for RGB
            datasets), no blur at 28 px. Fine-tune (eval.protocol=finetune): AdamW 1e-3 cosine, batch 128,
            crop/flip, the checkpoint with the best validation AUROC (every 50 steps) tested; the linear
            probe: L2-regularised softmax regression, L2 chosen on held-out training features.
Wall-clock: see configs/table_medmnist_ssl.py (measured there, per row).
"""
from medssl_jax.augment import views
from tfds_builders.medmnist import DATASETS

from medssl_jax import config as config_lib

_medmnist = config_lib.sibling(__file__, "_medmnist")


def get_config(arg=None):
  return recipe(arg, config_file="configs/medmnist_simclr.py")


def recipe(arg, *, config_file: str):
  """This file's recipe for '<dataset>[,background][,quick]' (configs/medmnist_byol.py starts from it)."""
  name, quick, flags = _medmnist.parse_flags(arg, config_file=config_file, flags=("background",))
  channels = DATASETS[name][1]
  c = _medmnist.base(name)
  c.mode = "pretrain_and_probe"
  c.model.projector_hidden_dims = (512,)
  c.model.projector_dim = 128
  c.objective.name = "simclr"
  c.objective.temperature = 0.2
  colour = dict(saturation=0.4, hue=0.1, grayscale_p=0.2) if channels == 3 else dict(
      saturation=0.0, hue=0.0, grayscale_p=0.0)  # Grayscale scans: brightness / contrast only.
  view = dict(crop_size=28, crop_scale=(0.35, 1.0), blur_p=0.0, **colour)
  c.augment.views = [views.default_view(**view), views.default_view(**view)]
  c.train.batch_size = 256
  c.train.num_steps = 2000
  c.train.optimizer = "adamw"
  c.train.base_learning_rate = 2e-3
  c.train.warmup_steps = 50
  c.train.weight_decay = 1e-4
  c.train.log_every = 50
  c.train.checkpoint_every = 250
  c.eval.batch_size = 256
  c.eval.compare_random_init = True
  c.eval.finetune_steps = 600
  c.eval.finetune_batch_size = 128
  c.eval.finetune_learning_rate = 1e-3
  c.eval.finetune_weight_decay = 1e-4
  c.eval.finetune_eval_every = 50
  if quick:
    c.model.width_multiplier = 0.125
    c.model.projector_hidden_dims = (64,)
    c.model.projector_dim = 32
    c.train.batch_size = 32
    c.train.num_steps = 30
    c.train.warmup_steps = 2
    c.train.log_every = 10
    c.train.checkpoint_every = 30
    c.eval.max_iter = 50
    c.eval.finetune_steps = 20
    c.eval.finetune_batch_size = 32
    c.eval.finetune_eval_every = 10
  if "background" in flags:
    _medmnist.with_background(c, name)
  return c
