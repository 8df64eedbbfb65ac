"""SimCLR on volumes: a 3D ResNet-18 pretrained on a MedMNIST 3D training split (28³), then probed on the same dataset.

Reproduces: 3D contrastive pretraining (SimCLR, Chen et al. 2020, with volume views: random resized 3D crop, flips
            about each axis, intensity scale / shift / gamma, noise, 3D blur) on MedMNIST v2's "ResNet-18 + 3D"
            layout (every 2D op made 3D, CIFAR stem at 28³), evaluated by eval.protocol beside a random encoder.
Command:    python main.py --config=configs/volume_simclr.py:adrenalmnist3d --workdir=/tmp/adrenal_simclr
            (`:<dataset>` is a MedMNIST 3D name; `:quick` = AdrenalMNIST3D, 20 steps of a narrow network, probe of
            the pretrained encoder only.)
Data:       medmnist3d/<dataset> from --config.data.manual_dir (default $MEDSSL_SHARED_DATA/<dataset>; the shared
            data holds adrenalmnist3d and vesselmnist3d: binary shape volumes, 0/255 voxels); `:synthetic` =
            synthetic_volumes/28 (generated shape volumes with a hidden-cavity label), which `:quick` uses where
            the shared AdrenalMNIST3D is absent.
Budget:     ResNet-18 + 3D at a quarter of the width (what a 2-core CPU affords), not MedMNIST's full width;
            `--config.model.width_multiplier=1.0` is the published architecture.
Wall-clock: `:quick` about 2-3 minutes on the 2-core CPU with another job running (compiles and the TFDS build
            included).
The data, encoder, views, optimizer and probe are the volume family's (configs/_volume.py).
"""
from medssl_jax import config as config_lib

_volume = config_lib.sibling(__file__, "_volume")
VARIANTS = _volume.VARIANTS


def get_config(arg=None):
  name, quick = _volume.parse(arg, config_file="configs/volume_simclr.py")
  c = _volume.base("simclr", name)
  if quick:
    _volume.quick(c)
  return c
