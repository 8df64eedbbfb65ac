"""BYOL on the embedded synthetic fundus data, then a linear probe beside a random encoder.

Reproduces: BYOL (Grill et al. 2020) with this codebase's fundus recipe: EMA target (momentum 0.99
            rising to 1, cosine), MLP predictor, the demo's views and probe protocol.
Command:    python main.py --config=configs/fundus_byol.py --workdir=/tmp/fundus_byol
Variants:   `:quick` (40 steps of a tiny model on synthetic_fundus/small, for tests and smoke runs).
Expected / wall-clock: not yet measured as a table.
"""
from medssl_jax import config as config_lib

_fundus = config_lib.sibling(__file__, "_fundus")


def get_config(arg=None):
  c = _fundus.base("byol")
  c.model.predictor_hidden_dims = (512,)
  # A short run needs a faster-moving target than ImageNet's 0.996 over 300 epochs.
  c.objective.momentum = 0.99
  c.train.base_learning_rate = 2e-3
  return _fundus.with_quick(c, arg)
