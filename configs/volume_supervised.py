"""MedMNIST v2's 3D supervised baseline: ResNet-18 + 3D trained from scratch with labels on a MedMNIST 3D dataset.

Reproduces: the "ResNet-18 + 3D" rows of MedMNIST v2's 3D benchmark (Yang et al., Scientific Data 2023;
            medssl_jax/tables/published.py, registry medmnist_v2_3d): the CIFAR-stem ResNet-18 with every op
            made 3D on 28³ volumes, cross-entropy, Adam lr 1e-3 (no weight decay), batch 32, 100 epochs with lr
            x0.1 at epochs 50 and 75, the checkpoint with the best validation AUC (scored every epoch) tested.
Departs:    volumes are normalised with mean / std 0.5 like every other config here, not read as [0, 1]; the
            official code's "shape transform" for the binary shape datasets (AdrenalMNIST3D, VesselMNIST3D:
            training volumes multiplied by U(0, 1), evaluation volumes by 0.5) is not applied.
Command:    python main.py --config=configs/volume_supervised.py:adrenalmnist3d --workdir=/tmp/adrenal_sup
            (`:<dataset>` is a MedMNIST 3D name; `:<dataset>,quick` runs 2 epochs of a narrow network.)
Data:       medmnist3d/<dataset> from --config.data.manual_dir (default $MEDSSL_SHARED_DATA/<dataset>).
Wall-clock: about 9 min per AdrenalMNIST3D run on one NVIDIA H200 shared with other jobs (docs/volumes.md); the CPU
            variant of the table (configs/table_medmnist3d_supervised.py:cpu) trains x0.125 for 20 epochs.
"""
from medssl_jax import config as config_lib

_volume = config_lib.sibling(__file__, "_volume")
_medmnist = config_lib.sibling(__file__, "_medmnist")

VARIANTS = _volume.VARIANTS


def get_config(arg=None):
  name, quick = _volume.parse(arg, config_file="configs/volume_supervised.py")
  c = _volume.base("simclr", name)  # The objective is unused: no pretraining in mode "supervised".
  c.model.width_multiplier = 1.0
  _medmnist.supervised_recipe(c, batch_size=32, eval_batch_size=64)
  if quick:
    c.model.width_multiplier = 0.0625
    c.eval.finetune_epochs = 2
    c.eval.finetune_batch_size = 16
  return c
