"""MedMNIST v2's 3D supervised baseline (ResNet-18 + 3D, 28³) on AdrenalMNIST3D and VesselMNIST3D, 3 seeds.

Reproduces: MedMNIST v2's "ResNet-18 + 3D" rows (Yang et al. 2023; medssl_jax/tables/published.py, registry
            medmnist_v2_3d, every published 3D row of the dataset beside ours) with configs/volume_supervised.py:
            Adam 1e-3, batch 32, 100 epochs, x0.1 at epochs 50 and 75, no augmentation, best validation AUC.
Command:    python -m medssl_jax.tables.runner --table=configs/table_medmnist3d_supervised.py:cpu --workdir=/tmp/m3d_sup
            Variants: `:cpu` (ResNet-18 + 3D at x0.125 width for 20 epochs, x0.1 at 10 and 15: what a 2-core CPU
            affords, NOT the published architecture or schedule); `:quick` (2 epochs of a narrow network, the
            plumbing); none: the published recipe at full width (a GPU job).
Departs:    mean / std 0.5 normalisation and no "shape transform" (configs/volume_supervised.py says how).
Wall-clock: the full table, about 9 min per AdrenalMNIST3D seed on one NVIDIA H200 shared with other jobs
            (docs/volumes.md); `:cpu` 18-20 min per row on 2 CPU cores (AdrenalMNIST3D 760 steps, VesselMNIST3D 840).
"""
import ml_collections

from medssl_jax import config as config_lib

VARIANTS = ("quick", "cpu")
_DATASETS = ("adrenalmnist3d", "vesselmnist3d")


def get_table(arg=None):
  if arg and arg not in VARIANTS:
    raise config_lib.unknown_variant(arg, VARIANTS, what="table variant", rest="(or none for the full table)")
  quick = ",quick" if arg == "quick" else ""
  t = ml_collections.ConfigDict()
  t.name = "medmnist3d_resnet18_3d" + (f"_{arg}" if arg else "")
  t.description = ("MedMNIST v2 3D recipe, ResNet-18 + 3D (28³), trained from scratch; test split; mean ± std over "
                   "the seeds of the grid.")
  t.base_config = tuple(f"configs/volume_supervised.py:{d}{quick}" for d in _DATASETS)
  t.grid = ml_collections.ConfigDict()
  t.grid.seed = (0, 1, 2)
  t.published_from = "medmnist_v2_3d"
  t.published = ()
  if arg == "cpu":
    t.description = ("CPU-budget variant: ResNet-18 + 3D (28³) at x0.125 width, 20 epochs (x0.1 at 10 / 15), "
                     "trained from scratch, otherwise the MedMNIST v2 3D recipe: not the published architecture or "
                     "schedule. Test split; mean ± std over the seeds of the grid.")
    t.overrides = ml_collections.ConfigDict()
    t.overrides.model = ml_collections.ConfigDict()
    t.overrides.model.width_multiplier = 0.125
    t.overrides.eval = ml_collections.ConfigDict()
    t.overrides.eval.finetune_epochs = 20
  if arg == "quick":
    t.grid.seed = (0,)
  return t


def get_config(arg=None):
  """The table's first row's recipe, as every file in configs/ provides (`:quick` shrinks it)."""
  return config_lib.with_variant(config_lib.table_base_config(get_table(arg)), arg, {v: lambda c: None for v in VARIANTS})
