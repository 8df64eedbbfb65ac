"""MedMNIST v2's official supervised baseline: ResNet-18 (28) trained from scratch with labels.

Reproduces: the "ResNet-18 (28)" row of MedMNIST v2 (Yang et al., Scientific Data 2023; TARGETS.md):
            CIFAR-style ResNet-18 on 28x28 inputs normalised with mean/std 0.5, cross-entropy, Adam lr
            1e-3 (no weight decay), batch 128, 100 epochs with lr x0.1 at epochs 50 and 75, no data
            augmentation, the checkpoint with the best validation AUC (scored every epoch) tested.
Command:    python main.py --config=configs/medmnist_supervised.py:retinamnist --workdir=/tmp/retina_sup
            (`:<dataset>` is any MedMNIST 2D name at 28 px, e.g. pneumoniamnist, breastmnist;
            `:<dataset>,quick` (`:quick` = RetinaMNIST) runs 2 epochs of a narrow network for smoke tests.)
Data:       medmnist/<dataset> from the official npz in --config.data.manual_dir (default
            $MEDSSL_SHARED_DATA/<dataset>: <dataset>.npz, or one renamed copy of it, e.g. the shared
            pneumoniamnist_reconstructed.npz).
Expected:   TARGETS.md: RetinaMNIST AUC 0.717 / ACC 0.524, PneumoniaMNIST 0.944 / 0.854 (one run each;
            an independent 3-seed rerun: 0.738±0.001 / 0.511±0.025 and 0.942±0.014 / 0.812±0.054).
Wall-clock: not yet measured here (900 / 3,700 steps for RetinaMNIST / PneumoniaMNIST: 100 epochs of ceil(N/128) steps; a GPU job).
"""

from medssl_jax.augment import views

from medssl_jax import config as config_lib

_medmnist = config_lib.sibling(__file__, "_medmnist")


_EPOCHS, _BATCH = 100, 128


def get_config(arg=None):
  name, quick = _medmnist.parse(arg, config_file="configs/medmnist_supervised.py")
  c = _medmnist.base(name)
  c.mode = "supervised"
  # One full-size view: the fine-tuning protocol resizes to its crop size; no augmentation is applied.
  c.augment.views = [views.default_view(crop_size=28), views.default_view(crop_size=28)]
  c.eval.protocol = "finetune"
  c.eval.compare_random_init = False
  c.eval.batch_size = 256
  # In epochs of the dataset actually opened (steps at run time), so another dataset by override trains as long.
  c.eval.finetune_epochs = _EPOCHS
  c.eval.finetune_batch_size = _BATCH
  c.eval.finetune_learning_rate = 1e-3
  c.eval.finetune_weight_decay = 0.0
  c.eval.finetune_schedule = "multistep"
  c.eval.finetune_milestones = (0.5, 0.75)
  c.eval.finetune_augment = False
  c.eval.finetune_eval_every_epoch = True
  if quick:
    c.model.width_multiplier = 0.125
    c.eval.finetune_epochs = 2
    c.eval.finetune_batch_size = 32
  return c
