"""ReLIC pretraining on a MedMNIST training split (28 px), then evaluation on the same dataset.

Reproduces: ReLIC (Mitrovic et al. 2021; objectives/relic.py) in the MedMNIST SimCLR recipe
            (configs/medmnist_simclr.py: the same data, CIFAR-stem ResNet-18 (28), views, optimizer and evaluation):
            instance discrimination of the online projections against an EMA target's projections of the other
            view (temperature 0.2, as SimCLR's here) plus alpha = 1 times the KL invariance penalty; the target's
            momentum 0.99 rising to 1 (cosine), as configs/medmnist_byol.py. One arm of configs/table_relic.py.
Command:    python main.py --config=configs/medmnist_relic.py:pneumoniamnist --workdir=/tmp/pneumonia_relic
            (variants as configs/medmnist_simclr.py: `:<dataset>[,background][,quick]`.)
Wall-clock: see configs/table_relic.py (measured there, per row).
"""
from medssl_jax import config as config_lib

_simclr = config_lib.sibling(__file__, "medmnist_simclr")


def get_config(arg=None):
  c = _simclr.recipe(arg, config_file="configs/medmnist_relic.py")
  c.objective.name = "relic"
  c.objective.relic.invariance_weight = 1.0
  c.objective.momentum = 0.99
  return c
