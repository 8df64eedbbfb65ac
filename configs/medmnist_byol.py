"""BYOL pretraining on a MedMNIST training split (28 px), then evaluation on the same dataset.

Reproduces: BYOL (Grill et al. 2020) in the MedMNIST SimCLR recipe (configs/medmnist_simclr.py: the same data,
            CIFAR-stem ResNet-18 (28), views, optimizer and evaluation), with BYOL's EMA target (momentum 0.99
            rising to 1, cosine: a short run needs a faster-moving target than ImageNet's 0.996) and a 2-layer
            predictor. One arm of configs/table_background.py.
Command:    python main.py --config=configs/medmnist_byol.py:pneumoniamnist --workdir=/tmp/pneumonia_byol
            (variants as configs/medmnist_simclr.py: `:<dataset>[,background][,quick]`.)
Wall-clock: see configs/table_background.py (measured there, per row).
"""
from medssl_jax import config as config_lib

_simclr = config_lib.sibling(__file__, "medmnist_simclr")


def get_config(arg=None):
  c = _simclr.recipe(arg, config_file="configs/medmnist_byol.py")
  c.objective.name = "byol"
  c.objective.momentum = 0.99
  c.model.predictor_hidden_dims = (64,) if c.model.projector_hidden_dims == (64,) else (512,)
  return c
