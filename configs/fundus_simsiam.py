"""SimSiam on the embedded synthetic fundus data, then a linear probe beside a random encoder.

Reproduces: SimSiam (Chen & He 2021) with this codebase's fundus recipe: no momentum encoder, a
            3-layer projector with BN on every layer (output BN without affine), a 2-layer bottleneck
            predictor (4:1, the paper's 2048 -> 512 -> 2048 scaled to 512 -> 128 -> 512) and a
            stop-gradient on the other view's projection; the demo's views and probe protocol.
Command:    python main.py --config=configs/fundus_simsiam.py --workdir=/tmp/fundus_simsiam
Variants:   `:quick` (40 steps of a tiny model on synthetic_fundus/small, for tests and smoke runs;
            base learning rate 0.2, see _quick).
Adapted:    the paper trains with SGD (lr 0.05 x batch/256, momentum 0.9, weight decay 1e-4) and a
            constant learning rate for the predictor; here the shared fundus recipe (AdamW 2e-3, cosine,
            weight decay 1e-4) is kept so objectives are compared on equal terms, and the trainer has
            one schedule for all parameters.
Expected / wall-clock: not yet measured as a table.
"""
from medssl_jax import config as config_lib

_fundus = config_lib.sibling(__file__, "_fundus")


def _quick(c):
  _fundus.quick(c)
  c.model.projector_hidden_dims = (64, 64)  # Still the paper's 3-layer projector, just narrow.
  c.model.predictor_hidden_dims = (16,)     # Bottleneck below projector_dim = 32.
  # SimSiam starts slowly (cosine ~0 until the predictor fits); 40 steps need a faster start than 0.03
  # (tried on the zoo test's 30 steps: 0.03 no clear gain, 0.1 -> cos 0.17, 0.2 -> 0.35, 0.3 -> 0.41).
  c.train.base_learning_rate = 0.2


def get_config(arg=None):
  c = _fundus.base("simsiam")
  c.model.projector_hidden_dims = (512, 512)
  c.model.projector_dim = 512
  c.model.predictor_hidden_dims = (128,)
  return _fundus.with_quick(c, arg, quick=_quick)
