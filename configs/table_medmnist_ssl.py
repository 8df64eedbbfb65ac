"""SimCLR vs random vs supervised at 1% / 10% / 100% labels: SimCLR on each MedMNIST training split, then linear probe and fine-tuning at 1% / 10% /
100% labels, against a randomly initialised encoder and against supervised training from scratch, 3 seeds.

Reproduces: the standard low-label SSL comparison (SimCLR, Chen et al. 2020; the MedMNIST-scale setting of
            e.g. Azizi et al. 2021) on RetinaMNIST and PneumoniaMNIST with MedMNIST v2's ResNet-18 (28):
            - SimCLR (pretrained) + linear probe / fine-tune: configs/medmnist_simclr.py pretrained on the
              training split (its labels unused), one pretraining per dataset and seed;
            - random init + linear probe: the floor (frozen random features, BN statistics recomputed);
            - supervised (random init) + fine-tune: the same fine-tuning recipe from random weights, i.e.
              supervised training from scratch on the same labelled subset.
            Label subsets are stratified and seeded by the row's seed (subset_seed_from_seed), nested
            across fractions; each row names its subset file (sha256) in rows/*/result.json.
Command:    python -m medssl_jax.tables.runner --table=configs/table_medmnist_ssl.py --workdir=/tmp/medmnist_t2
            Variants: `:retina_cpu` / `:pneumonia_cpu` (one dataset, ResNet-18 x0.25, 1,000 pretraining
            steps at batch 128, 300 fine-tuning steps at batch 64: what a 2-core CPU affords, not the
            full recipe); `:quick` (both datasets, a narrow network, a few steps: the plumbing, as CI runs it).
Published:  MedMNIST v2 ResNet-18 (28), supervised on 100% labels (TARGETS.md), beside the 100% rows.
Wall-clock: on the 2-core dev machine, `:retina_cpu` about 48 min and `:pneumonia_cpu` 34 min (3 pretrainings of
            7-15 min, then 18 evaluation rows of 5-60 s; partly shared with other jobs; per row in docs/tables/medmnist_simclr_*.md);
            the full table (full width, 2,000 steps at batch 256) is a GPU job.
Results:    docs/tables/medmnist_simclr_{retina,pneumonia}_cpu.md and the README's table 2.
"""
import ml_collections

from medssl_jax import config as config_lib

VARIANTS = ("quick", "retina_cpu", "pneumonia_cpu")
_DATASETS = ("retinamnist", "pneumoniamnist")
_PUBLISHED = {
    "retinamnist": (0.524, 0.717, 0.511, 0.738, "std 0.025 / 0.001"),
    "pneumoniamnist": (0.854, 0.944, 0.812, 0.942, "std 0.054 / 0.014"),
}


def get_table(arg=None):
  if arg and arg not in VARIANTS:
    raise config_lib.unknown_variant(arg, VARIANTS, what="table variant", rest="(or none for the full table)")
  datasets = {"retina_cpu": ("retinamnist",), "pneumonia_cpu": ("pneumoniamnist",)}.get(arg, _DATASETS)
  quick = ",quick" if arg == "quick" else ""
  t = ml_collections.ConfigDict()
  t.name = "medmnist_simclr" + (f"_{arg}" if arg else "")
  t.description = ("SimCLR pretrained on each training split vs a random encoder vs supervised from scratch; "
                   "linear probe and fine-tuning (best validation AUROC) at 1% / 10% / 100% labels; test split; "
                   "mean ± std over the seeds of the grid (seed varies pretraining, label subset and evaluation).")
  bases = tuple(f"configs/medmnist_simclr.py:{d}{quick}" for d in datasets)
  t.base_config = bases if len(bases) > 1 else bases[0]
  t.grid = ml_collections.ConfigDict()
  t.grid.eval = ml_collections.ConfigDict()
  t.grid.eval.protocol = ("linear_probe", "finetune")
  t.grid.eval.train_subset = ("1%", "10%", "")
  t.grid.seed = (0, 1, 2)
  t.subset_seed_from_seed = True
  published = []
  for d in datasets:
    acc, auc, acc3, auc3, note = _PUBLISHED[d]
    published += [
        dict(dataset=f"medmnist/{d}", method="ResNet-18 (28), supervised", protocol="supervised", labels="100%",
             accuracy=acc, auroc=auc, source="Yang et al. 2023 (MedMNIST v2)"),
        dict(dataset=f"medmnist/{d}", method="ResNet-18 (28), supervised, 3 seeds", protocol="supervised",
             labels="100%", accuracy=acc3, auroc=auc3, source="independent rerun quoted in TARGETS.md", note=note)]
  t.published = tuple(published)
  if arg in ("retina_cpu", "pneumonia_cpu"):
    t.description = ("CPU-budget variant (ResNet-18 x0.25 (28); SimCLR 1,000 steps at batch 128; fine-tuning 300 "
                     "steps at batch 64): " + t.description)
    t.overrides = ml_collections.ConfigDict()
    t.overrides.model = ml_collections.ConfigDict()
    t.overrides.model.width_multiplier = 0.25
    t.overrides.train = ml_collections.ConfigDict()
    t.overrides.train.batch_size = 128
    t.overrides.train.num_steps = 1000
    t.overrides.eval = ml_collections.ConfigDict()
    t.overrides.eval.finetune_steps = 300
    t.overrides.eval.finetune_batch_size = 64
    t.overrides.eval.finetune_eval_every = 25
  if arg == "quick":
    t.grid.seed = (0, 1)
  return t


def get_config(arg=None):
  """The table's first row's recipe, as every file in configs/ provides (`:quick` shrinks it)."""
  return config_lib.with_variant(config_lib.table_base_config(get_table(arg)), arg, {v: lambda c: None for v in VARIANTS})
