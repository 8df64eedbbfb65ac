"""BYOL on volumes: a 3D ResNet-18 pretrained on a MedMNIST 3D training split (28³), then probed on the same dataset.

Reproduces: BYOL (Grill et al. 2020) on volumes with the volume family's recipe (configs/_volume.py: ResNet-18 + 3D
            x0.25 with CIFAR stem, two 3D views, AdamW 2e-3, batch 64, 1000 steps): EMA target (momentum 0.99
            rising to 1, cosine), MLP projector 256 -> 64 and predictor 256 -> 64, evaluated by eval.protocol beside
            a random encoder.
Command:    python main.py --config=configs/volume_byol.py:adrenalmnist3d --workdir=/tmp/adrenal_byol
            (`:<dataset>` is a MedMNIST 3D name; `:quick` = AdrenalMNIST3D, 20 steps of a narrow network, probe of
            the pretrained encoder only.)
Data:       medmnist3d/<dataset> from --config.data.manual_dir (default $MEDSSL_SHARED_DATA/<dataset>).
Adapted:    a short run needs a faster-moving target than ImageNet's 0.996 over 300 epochs (as configs/fundus_byol.py);
            AdamW instead of the paper's LARS, so the family's objectives compare on equal terms.
Wall-clock: `:quick` about 1.3x volume_simclr.py:quick's time (compiles and probe included; 236 s against
            186 s, one after the other on a 2-core CPU shared with other jobs).
"""
from medssl_jax import config as config_lib

_volume = config_lib.sibling(__file__, "_volume")
VARIANTS = _volume.VARIANTS


def get_config(arg=None):
  name, quick = _volume.parse(arg, config_file="configs/volume_byol.py")
  c = _volume.base("byol", name)
  c.model.predictor_hidden_dims = (256,)
  c.objective.momentum = 0.99
  if quick:
    _volume.quick(c)
    c.model.predictor_hidden_dims = (32,)
  return c
