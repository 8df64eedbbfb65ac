"""SupCon on the embedded synthetic fundus data (labels define positives), then a linear probe.

Reproduces: Supervised Contrastive Learning (Khosla et al. 2020) with the demo's encoder, views and
            probe: the fully supervised upper reference for the self-supervised objectives.
Command:    python main.py --config=configs/fundus_supcon.py --workdir=/tmp/fundus_supcon
Variants:   `:quick` (40 steps of a tiny model on synthetic_fundus/small).
Expected / wall-clock: not yet measured as a table.
"""
from medssl_jax import config as config_lib

_fundus = config_lib.sibling(__file__, "_fundus")


def get_config(arg=None):
  c = _fundus.base("supcon")
  c.objective.temperature = 0.1  # The paper's value.
  return _fundus.with_quick(c, arg)
