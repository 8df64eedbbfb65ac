"""ReLIC on the embedded synthetic fundus data, then a linear probe beside a random encoder.

Reproduces: ReLIC (Mitrovic et al. 2021, ICLR; objectives/relic.py): instance discrimination of the online
            projection against an EMA target network's projections of the other view (t = 0.2) plus the
            invariance penalty alpha * KL between the two augmentation orders' similarity distributions
            (alpha = 1), on this codebase's fundus recipe: EMA target (momentum 0.99 rising to 1, cosine; the
            paper follows BYOL's 0.996 over long ImageNet runs), the fundus views and probe.
Command:    python main.py --config=configs/fundus_relic.py --workdir=/tmp/fundus_relic
Variants:   `:quick` (40 steps of a tiny model on synthetic_fundus/small, for tests and smoke runs).
Expected / wall-clock: not yet measured as a table.
"""
from medssl_jax import config as config_lib

_fundus = config_lib.sibling(__file__, "_fundus")


def get_config(arg=None):
  c = _fundus.base("relic")
  c.objective.temperature = 0.2
  c.objective.relic.invariance_weight = 1.0
  # A short run needs a faster-moving target than ImageNet's 0.996 over hundreds of epochs.
  c.objective.momentum = 0.99
  c.train.base_learning_rate = 2e-3
  return _fundus.with_quick(c, arg)
