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
Wall-clock: 900 / 3,700 steps for RetinaMNIST / PneumoniaMNIST (100 epochs of ceil(N/128) steps): 2 / 4 min on one
            NVIDIA H200 shared with other jobs, about an hour per RetinaMNIST run on the 2-core CPU (docs/tables.md).
"""

from medssl_jax import config as config_lib
from medssl_jax.augment import views

_medmnist = config_lib.sibling(__file__, "_medmnist")


def get_config(arg=None):
  name, quick = _medmnist.parse(arg, config_file="configs/medmnist_supervised.py")
  c = _medmnist.base(name)
  _medmnist.supervised_recipe(c, batch_size=128, eval_batch_size=256)
  # One full-size view: the fine-tuning protocol resizes to its crop size; no augmentation is applied.
  c.augment.views = [views.default_view(crop_size=28), views.default_view(crop_size=28)]
  if quick:
    c.model.width_multiplier = 0.125
    c.eval.finetune_epochs = 2
    c.eval.finetune_batch_size = 32
  return c
