"""mode "pretrain": the pretraining loop (medssl_jax/train/pretrain.py) on config.data, resumable; from a 2D encoder
inflated into the 3D one when config.model.inflate_from is set."""
from __future__ import annotations

from medssl_jax.data import pipeline
from medssl_jax.protocols import encoders as encoders_lib
from medssl_jax.train import pretrain as pretrain_lib


def pretrain(config, workdir: str, *, mesh=None) -> dict:
  """Pretrains from a random init, or from a 2D encoder inflated into the 3D one when config.model.inflate_from
  is set (protocols/encoders.py)."""
  pretrain_lib.pretrain(config, workdir, builder=pipeline.open_dataset(config.data), mesh=mesh,
                        init_variables=encoders_lib.inflated_start(config, workdir, mesh=mesh))
  return {}


def check(config):
  del config  # The core checks (medssl_jax/config.py) cover pretraining.


MODES = {"pretrain": pretrain}
PRETRAINING_MODES = ("pretrain",)  # Modes whose run includes the objective's pretraining step (the dry run).
