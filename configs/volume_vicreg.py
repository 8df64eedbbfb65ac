"""VICReg on volumes: a 3D ResNet-18 pretrained on a MedMNIST 3D training split (28³), then probed on the same dataset.

Reproduces: VICReg (Bardes et al. 2022) on volumes with the volume family's recipe (configs/_volume.py: ResNet-18 + 3D
            x0.25 with CIFAR stem, two 3D views, AdamW 2e-3, batch 64, 1000 steps): invariance (MSE), variance
            hinge and covariance terms over the global batch with the paper's weights 25 / 25 / 1, and a 3-layer
            expander 4x as wide as the backbone (512 on its 128 features; the paper: 8192 on ResNet-50's 2048),
            evaluated by eval.protocol beside a random encoder.
Command:    python main.py --config=configs/volume_vicreg.py:adrenalmnist3d --workdir=/tmp/adrenal_vicreg
            (`:<dataset>` is a MedMNIST 3D name; `:quick` = AdrenalMNIST3D, 20 steps of a narrow network with a
            64-64-64 expander, probe of the pretrained encoder only.)
Data:       medmnist3d/<dataset> from --config.data.manual_dir (default $MEDSSL_SHARED_DATA/<dataset>).
Adapted:    AdamW instead of the paper's LARS (base lr 0.2, weight decay 1e-6, batch 2048), as
            configs/fundus_vicreg.py. The variance and covariance terms are statistics of the global batch
            (64; 16 in `:quick`) on any number of devices.
            The loss is the paper's equation (6); the official code halves the variance term
            (set objective.vicreg.std_weight = 12.5 to match it).
Wall-clock: `:quick` about as long as volume_simclr.py:quick (compiles and probe included; 193 s against
            186 s, one after the other on a 2-core CPU shared with other jobs).
"""
from medssl_jax import config as config_lib

_volume = config_lib.sibling(__file__, "_volume")
VARIANTS = _volume.VARIANTS


def get_config(arg=None):
  name, quick = _volume.parse(arg, config_file="configs/volume_vicreg.py")
  c = _volume.base("vicreg", name)
  c.model.projector_hidden_dims = (512, 512)
  c.model.projector_dim = 512
  c.objective.vicreg.sim_weight = 25.0
  c.objective.vicreg.std_weight = 25.0
  c.objective.vicreg.cov_weight = 1.0
  if quick:
    _volume.quick(c)
    c.model.projector_hidden_dims = (64, 64)  # Still the paper's 3-layer expander, as wide as the 64 features.
    c.model.projector_dim = 64
  return c
