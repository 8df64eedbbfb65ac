"""MoCo v2 on the embedded synthetic fundus data, then a linear probe beside a random encoder.

Reproduces: MoCo v2 (He et al. 2020; Chen et al. 2020, "Improved Baselines with Momentum Contrastive
            Learning"): EMA key encoder, 2-layer MLP projector, InfoNCE with t = 0.2 against a
            queue of negatives; here symmetrised over the two views, on this codebase's fundus recipe.
            Adapted for short runs on 2048 images: queue 1024 (8 global batches, half the data set,
            not 65536), constant momentum 0.99 (not 0.999: 800 steps would barely move the keys),
            AdamW (not SGD 0.03), the fundus views. Projector: the codebase's default MLP (Linear-BN-
            ReLU-Linear; the paper's has no BN).
Command:    python main.py --config=configs/fundus_moco_v2.py --workdir=/tmp/fundus_moco_v2
Variants:   `:quick` (40 steps of a tiny model on synthetic_fundus/small, for tests and smoke runs;
            queue of one batch, momentum 0.9, base learning rate 0.1).
Expected / wall-clock: not yet measured as a table.
"""
from medssl_jax import config as config_lib

_fundus = config_lib.sibling(__file__, "_fundus")


def _quick(c):
  """The shared quick variant, with MoCo settings a 40-step run on 16 images can learn from."""
  _fundus.quick(c)
  # One batch of negatives: the fixed tiny batch fills any queue with keys of its own images (false
  # negatives), and the random initial queue makes the first steps' loss artificially low; a one-batch
  # queue is replaced after one step.
  c.objective.moco_v2.queue_size = c.train.batch_size
  c.objective.momentum = 0.9                 # Keys that follow the encoder within 40 steps.
  c.objective.momentum_final = 0.9
  c.train.base_learning_rate = 0.1           # Only the queries get gradients: learn faster than 0.03.


def get_config(arg=None):
  c = _fundus.base("moco_v2")
  c.model.projector_hidden_dims = (512,)  # 2-layer MLP; the paper's hidden width is 2048 for ResNet-50.
  c.model.projector_dim = 128
  c.objective.temperature = 0.2
  c.objective.moco_v2.queue_size = 1024           # A multiple of train.batch_size (128).
  # MoCo keeps the key encoder's momentum constant (schedule from 0.99 to 0.99).
  c.objective.momentum = 0.99
  c.objective.momentum_final = 0.99
  c.train.base_learning_rate = 2e-3
  return _fundus.with_quick(c, arg, quick=_quick)
