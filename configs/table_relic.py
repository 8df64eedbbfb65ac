"""ReLIC beside SimCLR and BYOL on MedMNIST, linear probe and few-shot episodes, 3 seeds.

Reproduces: ReLIC (Mitrovic et al. 2021, "Representation learning via invariant causal mechanisms"; objectives/relic.py)
            in the MedMNIST recipe shared with SimCLR and BYOL (configs/medmnist_relic.py), each pretrained on the
            training split of PneumoniaMNIST / RetinaMNIST and evaluated on its frozen backbone:
            - linear probe at 10% / 100% labels (AUROC, accuracy);
            - few-shot episodes (the seeds' few-shot learning with self-supervised features; evals/fewshot.py):
              all-way 1- and 5-shot, 15 test-split queries per class, 200 seeded episodes, nearest cosine prototype
              and a logistic head, mean accuracy ± the 95% interval over episodes;
            beside a random encoder. The rows are those of configs/table_background.py (its `<dataset>,<objective>`
            runs without their attention and OOD measures), so in one --workdir the SimCLR and BYOL pretrainings are
            shared between the two tables. The paper reports ImageNet linear accuracy (74.8% with ResNet-50); no
            medical-image numbers are published to compare with.
Command:    python -m medssl_jax.tables.runner --table=configs/table_relic.py:pneumonia_cpu --workdir=/tmp/bg
            python -m medssl_jax.tables.runner --table=configs/table_relic.py:retina_cpu --workdir=/tmp/bg
            Variants: `:pneumonia_cpu` / `:retina_cpu` (one dataset, ResNet-18 x0.25, 1,000 pretraining steps at
            batch 128, as configs/table_background.py); `:quick` (both datasets, a narrow network, a few steps).
Wall-clock: 9 pretrainings per dataset of about 10 min each on the 2-core dev machine (6 of them shared with
            configs/table_background.py), then seconds per evaluation.
"""
import ml_collections

from medssl_jax import config as config_lib

VARIANTS = ("quick", "pneumonia_cpu", "retina_cpu")
OBJECTIVES = ("simclr", "byol", "relic")
_background = config_lib.sibling(__file__, "table_background")


def get_config(arg=None):
  """The table's first row's recipe, as every file in configs/ provides (`:quick` shrinks it)."""
  return config_lib.with_variant(config_lib.table_base_config(get_table(arg)), arg, {v: lambda c: None for v in VARIANTS})


def get_table(arg=None):
  if arg and arg not in VARIANTS:
    raise config_lib.unknown_variant(arg, VARIANTS, what="table variant", rest="(or none for the full table)")
  t = _background.get_table(arg)  # Datasets, CPU budget and seeds as there.
  datasets = {"pneumonia_cpu": ("pneumoniamnist",), "retina_cpu": ("retinamnist",)}.get(arg, _background.DATASETS)
  quick = ",quick" if arg == "quick" else ""
  t.name = "relic" + (f"_{arg}" if arg else "")
  budget = _background.CPU_BUDGET + ": " if arg in ("pneumonia_cpu", "retina_cpu") else ""
  t.description = (budget + "ReLIC vs SimCLR vs BYOL pretrained on each training split (the same recipe), vs a random "
                   "encoder; linear probe at 10% / 100% labels, and few-shot episodes (all-way 1- and 5-shot, 200 "
                   "episodes, nearest cosine prototype / logistic head: accuracy ± 95% interval over episodes in "
                   "every run, mean ± std over seeds in the summary); test split.")
  t.base_config = tuple(f"configs/table_background.py:{d},{o}{quick}" for d in datasets for o in OBJECTIVES)
  t.grid.eval.protocol = ("linear_probe", "fewshot")
  if "overrides" not in t:
    t.overrides = ml_collections.ConfigDict()
  t.overrides.eval = ml_collections.ConfigDict()
  t.overrides.eval.attention_mask = ""  # Background augmentation's measures stay in that table.
  t.overrides.ood = ml_collections.ConfigDict()
  t.overrides.ood.targets = ()
  if arg == "quick":
    t.overrides.eval.fewshot = ml_collections.ConfigDict()
    t.overrides.eval.fewshot.episodes = 20
  return t
