"""VICReg on the embedded synthetic fundus data, then a linear probe beside a random encoder.

Reproduces: VICReg (Bardes et al. 2022) with this codebase's fundus recipe: invariance (MSE), variance
            hinge (gamma 1, eps 1e-4) and covariance terms over the global batch with the paper's
            weights 25 / 25 / 1, a 3-layer expander 4x as wide as the backbone (the paper: 8192 on
            ResNet-50's 2048; here 512 on 128); the demo's views and probe protocol.
Command:    python main.py --config=configs/fundus_vicreg.py --workdir=/tmp/fundus_vicreg
Variants:   `:quick` (40 steps of a tiny model on synthetic_fundus/small, for tests and smoke runs).
Adapted:    the paper's LARS (base lr 0.2, weight decay 1e-6, batch 2048, 1000 epochs) is replaced by
            the shared fundus recipe (AdamW 2e-3, cosine) so objectives are compared on equal terms.
            The loss is the paper's equation (6); the official code halves the variance term
            (set objective.vicreg.std_weight = 12.5 to match it).
Expected / wall-clock: not yet measured as a table.
"""
from medssl_jax import config as config_lib

_fundus = config_lib.sibling(__file__, "_fundus")


def _quick(c):
  _fundus.quick(c)
  c.model.projector_hidden_dims = (64, 64)  # Still the paper's 3-layer expander, just narrow.


def get_config(arg=None):
  c = _fundus.base("vicreg")
  c.model.projector_hidden_dims = (512, 512)
  c.model.projector_dim = 512
  c.objective.vicreg.sim_weight = 25.0
  c.objective.vicreg.std_weight = 25.0
  c.objective.vicreg.cov_weight = 1.0
  return _fundus.with_quick(c, arg, quick=_quick)
