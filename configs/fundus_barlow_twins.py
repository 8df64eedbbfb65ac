"""Barlow Twins on the embedded synthetic fundus data, then a linear probe beside a random encoder.

Reproduces: Barlow Twins (Zbontar et al. 2021) with this codebase's fundus recipe: cross-correlation
            of the two views' standardised projections over the global batch, pushed to the identity;
            a 3-layer projector 4x as wide as the backbone (the paper: 8192 on ResNet-50's 2048; here
            512 on 128); the demo's views and probe protocol.
Command:    python main.py --config=configs/fundus_barlow_twins.py --workdir=/tmp/fundus_barlow_twins
Variants:   `:quick` (40 steps of a tiny model on synthetic_fundus/small, for tests and smoke runs).
Adapted:    lambda stays the paper's 0.0051 (not 1/D): at initialisation the off-diagonal term is about
            lambda * D^2 / N against D on the diagonal, and D / N is 4 both in the paper (8192 / 2048)
            and here (512 / 128), so the two terms keep the paper's balance. The paper's LARS
            (lr 0.2, weight decay 1.5e-6, batch 2048, 1000 epochs) is replaced by the shared fundus
            recipe (AdamW 2e-3, cosine) so objectives are compared on equal terms.
Expected / wall-clock: not yet measured as a table.
"""
from medssl_jax import config as config_lib

_fundus = config_lib.sibling(__file__, "_fundus")


def _quick(c):
  _fundus.quick(c)
  c.model.projector_hidden_dims = (64, 64)  # Still the paper's 3-layer projector, just narrow.


def get_config(arg=None):
  c = _fundus.base("barlow_twins")
  c.model.projector_hidden_dims = (512, 512)
  c.model.projector_dim = 512
  c.objective.barlow_twins.off_diagonal_weight = 0.0051
  return _fundus.with_quick(c, arg, quick=_quick)
