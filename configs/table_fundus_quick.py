"""Table: SimCLR vs BYOL linear probes at 10% and 100% labels, 2 seeds, on the quick fundus configs.

Reproduces: nothing published (synthetic data); the smallest paper-style table: each objective's own
            `:quick` recipe (configs/fundus_simclr.py, configs/fundus_byol.py), pretrained per seed and
            linear-probed (beside a random encoder) on a 10% label subset and on all labels; the two probes
            of a seed share one pretraining. The SimCLR / BYOL ImageNet headlines (TARGETS.md) are listed
            beside ours, marked published, for scale only: another dataset and a far larger model.
Command:    python -m medssl_jax.tables.runner --table=configs/table_fundus_quick.py --workdir=/tmp/table_fundus_quick
            (writes /tmp/table_fundus_quick/fundus_quick.{md,csv,png}; rerunning reuses every finished row).
Variants:   `:quick` is accepted and is the same table (the rows are already the quick runs).
Data:       synthetic_fundus/small (built on first use; 512 train / 64 validation / 256 test images).
Expected / wall-clock: 105 s on the 2-core dev machine from a cold XLA compile cache, about 40 s warm
            (4 pretrainings x 40 steps, 8 rows x 2 probes). AUROC 0.52-0.57, within seed noise of the random
            encoder (std 0.02-0.06 over 2 seeds): 40 steps of a tiny model; this table exercises the runner.

`get_table` returns the table (medssl_jax/tables/runner.py documents its keys); `get_config` returns the
base experiment (fundus_simclr:quick), so this file is also a normal config: main.py runs its base row.
"""
import ml_collections

from medssl_jax import config as config_lib


def _variant(c, arg):
  return config_lib.with_variant(c, arg, {"quick": lambda c: None})


def get_table(arg=None):
  t = ml_collections.ConfigDict()
  t.name = "fundus_quick"
  t.description = ("SimCLR vs BYOL (ResNet-18 x0.125, 40 steps, batch 16) on synthetic_fundus/small, linear probe "
                   "on the test split; seeds vary pretraining and probe (the 10% subset is fixed: subset seed 0).")
  # One recipe per objective (BYOL's target momentum and predictor come from its own config).
  t.base_config = ("configs/fundus_simclr.py:quick", "configs/fundus_byol.py:quick")
  t.grid = ml_collections.ConfigDict()
  t.grid.eval = ml_collections.ConfigDict()
  t.grid.eval.protocol = ("linear_probe",)
  t.grid.eval.train_subset = ("10%", "")
  t.grid.seed = (0, 1)
  t.published = (
      dict(dataset="ImageNet-1k", method="SimCLR (ResNet-50 4x)", protocol="linear_probe", labels="100%",
           accuracy=0.765, source="Chen et al. 2020 (ICML)", note="top-1; scale reference only"),
      dict(dataset="ImageNet-1k", method="BYOL (ResNet-50)", protocol="linear_probe", labels="100%",
           accuracy=0.743, source="Grill et al. 2020 (NeurIPS)", note="top-1; scale reference only"),
  )
  return _variant(t, arg)


def get_config(arg=None):
  """The table's base experiment config (its first row's recipe), as every file in configs/ provides."""
  return _variant(config_lib.table_base_config(get_table()), arg)
