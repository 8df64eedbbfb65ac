"""MoCo v3 on the embedded synthetic fundus data, then a linear probe beside a random encoder.

Reproduces: MoCo v3 (Chen, Xie & He 2021) with a ResNet: EMA key encoder (momentum 0.99 rising to 1,
            cosine), 3-layer projector with output BN and 2-layer predictor, in-batch negatives,
            loss ctr(q1, k2) + ctr(q2, k1) with ctr = 2t * InfoNCE and t = 0.2 (the paper's ResNet
            setting; its ViTs use t = 1.0), on this codebase's fundus recipe. Adapted for short runs:
            head widths 512 (paper 4096, output 256), AdamW (the paper uses LARS for ResNets), the
            fundus views.
Command:    python main.py --config=configs/fundus_moco_v3.py --workdir=/tmp/fundus_moco_v3
Variants:   `:quick` (40 steps of a tiny model on synthetic_fundus/small, for tests and smoke runs).
Expected / wall-clock: not yet measured as a table.
"""
from medssl_jax import config as config_lib

_fundus = config_lib.sibling(__file__, "_fundus")


def _quick(c):
  _fundus.quick(c)
  c.model.projector_hidden_dims = (64, 64)  # Keep the 3-layer projector in the tiny model.


def get_config(arg=None):
  c = _fundus.base("moco_v3")
  c.model.projector_hidden_dims = (512, 512)  # 3-layer projector (paper: 4096, 4096 -> 256).
  c.model.projector_dim = 128
  c.model.predictor_hidden_dims = (512,)      # 2-layer predictor (paper: 4096 -> 256).
  c.objective.temperature = 0.2
  c.objective.momentum = 0.99
  c.objective.momentum_final = 1.0
  c.train.base_learning_rate = 2e-3
  return _fundus.with_quick(c, arg, quick=_quick)
