"""A 2D encoder pretrained on images, inflated into a 3D ResNet-18 and evaluated on volumes (no 3D pretraining).

Reproduces: the 2D-to-3D transfer arm of the volume comparisons (I3D inflation, Carreira & Zisserman 2017: each
            k x k kernel repeated along depth and divided by k; `--config.model.inflate_method=acs` for ACS
            convolutions, Yang et al. 2021): SimCLR pretrained on PneumoniaMNIST chest X-rays (28 px,
            configs/medmnist_simclr.py), inflated into the volume family's ResNet-18 + 3D, BatchNorm statistics
            re-estimated on the volumes, then eval.protocol (linear probe by default) beside a random encoder.
Command:    python main.py --config=configs/volume_inflated.py:adrenalmnist3d --workdir=/tmp/adrenal_inflated
            (`:<dataset>[,quick]` as in the other volume configs.) The 2D pretraining runs first, in
            <workdir>/inflate_source, with this config's seed, width, steps and batch size, so the arm costs what a
            3D pretraining of the family costs; `--config.model.inflate_from=<a 2D pretraining workdir>` uses one
            that exists instead (same depth, stem and width).
Data:       the volumes as in configs/volume_simclr.py; the 2D source reads $MEDSSL_SHARED_DATA/pneumoniamnist.
The data, encoder and probe are the volume family's (configs/_volume.py).
"""
from medssl_jax import config as config_lib

_volume = config_lib.sibling(__file__, "_volume")
VARIANTS = _volume.VARIANTS
SOURCE = "configs/medmnist_simclr.py:pneumoniamnist"


def get_config(arg=None):
  name, quick = _volume.parse(arg, config_file="configs/volume_inflated.py")
  c = _volume.base("simclr", name)
  c.mode = "inflate_and_probe"
  c.model.inflate_from = SOURCE
  c.model.inflate_method = "i3d"
  if quick:
    _volume.quick(c)
  return c
