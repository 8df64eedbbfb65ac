"""3D SimCLR and BYOL vs 2D SimCLR inflated vs random vs supervised at 10% / 100% labels on AdrenalMNIST3D and
VesselMNIST3D, 3 seeds.

Reproduces: the low-label SSL comparison on volumes: configs/volume_simclr.py and configs/volume_byol.py pretrained
            on each training split (labels unused), then linear probe and fine-tuning (best validation AUROC) at
            10% / 100% labels, beside a random encoder (probe) and supervised training from scratch (the same
            fine-tuning from random weights on the same labelled subset). Label subsets are stratified, seeded by
            the row's seed and nested across fractions. One more arm starts from 2D: SimCLR pretrained on
            PneumoniaMNIST chest X-rays (configs/volume_inflated.py: same seed, width, steps and batch as the 3D
            pretrainings; one 2D pretraining per seed, shared by both datasets' rows), I3D-inflated, then the same
            probe / fine-tuning. MedMNIST v2's published 3D rows (supervised, 100% labels) stand beside the 100%
            rows.
Command:    python -m medssl_jax.tables.runner --table=configs/table_medmnist3d_ssl.py:cpu --workdir=/tmp/m3d_ssl
            Variants: `:cpu` (ResNet-18 + 3D x0.125, 300 pretraining steps at batch 32, 200 fine-tuning steps at
            batch 32: what a 2-core CPU affords, not a converged recipe); `:quick` (one dataset, a narrow network,
            a few steps: the plumbing); none: x0.25 width, 1,000 pretraining steps at batch 64.
"""
import ml_collections

from medssl_jax import config as config_lib

VARIANTS = ("quick", "cpu")
_DATASETS = ("adrenalmnist3d", "vesselmnist3d")
_ARMS = ("simclr", "byol", "inflated")  # configs/volume_<arm>.py


def get_table(arg=None):
  if arg and arg not in VARIANTS:
    raise config_lib.unknown_variant(arg, VARIANTS, what="table variant", rest="(or none for the full table)")
  datasets = _DATASETS[:1] if arg == "quick" else _DATASETS
  quick = ",quick" if arg == "quick" else ""
  t = ml_collections.ConfigDict()
  t.name = "medmnist3d_ssl" + (f"_{arg}" if arg else "")
  t.description = ("3D SimCLR / BYOL pretrained on each training split vs 2D SimCLR (PneumoniaMNIST) inflated to 3D "
                   "vs a random encoder vs supervised from scratch; linear probe and fine-tuning (best validation "
                   "AUROC) at 10% / 100% labels; test split; "
                   "mean ± std over the seeds of the grid (seed varies pretraining, label subset and evaluation).")
  t.base_config = tuple(f"configs/volume_{arm}.py:{d}{quick}" for d in datasets for arm in _ARMS)
  t.grid = ml_collections.ConfigDict()
  t.grid.eval = ml_collections.ConfigDict()
  t.grid.eval.protocol = ("linear_probe", "finetune")
  t.grid.eval.train_subset = ("10%", "")
  t.grid.seed = (0, 1, 2)
  t.subset_seed_from_seed = True
  t.published_from = "medmnist_v2_3d"
  t.published = ()
  t.overrides = ml_collections.ConfigDict()
  t.overrides.eval = ml_collections.ConfigDict()
  t.overrides.eval.compare_random_init = True
  if arg == "cpu":
    t.description = ("CPU-budget variant (ResNet-18 + 3D x0.125; 300 pretraining steps at batch 32; fine-tuning 200 "
                     "steps at batch 32): " + t.description)
    t.overrides.model = ml_collections.ConfigDict()
    t.overrides.model.width_multiplier = 0.125
    t.overrides.train = ml_collections.ConfigDict()
    t.overrides.train.batch_size = 32
    t.overrides.train.num_steps = 300
    t.overrides.eval.finetune_steps = 200
    t.overrides.eval.finetune_batch_size = 32
    t.overrides.eval.finetune_eval_every = 25
  if arg == "quick":
    t.grid.seed = (0,)
    t.grid.eval.train_subset = ("10%",)
    t.overrides.eval.finetune_steps = 20
    t.overrides.eval.finetune_batch_size = 16
    t.overrides.eval.finetune_eval_every = 10
  return t


def get_config(arg=None):
  """The table's first row's recipe, as every file in configs/ provides (`:quick` shrinks it)."""
  return config_lib.with_variant(config_lib.table_base_config(get_table(arg)), arg, {v: lambda c: None for v in VARIANTS})
