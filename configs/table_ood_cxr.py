"""Out-of-distribution matrix for chest X-rays: PneumoniaMNIST <-> NIH1000, each model tested on both.

Reproduces: the OOD protocol on the two real CXR datasets we have: a classifier trained on one
            dataset applied unchanged to the other's test split, which shares its label through a label map
            (medssl_jax/evals/ood.py). PneumoniaMNIST (paediatric, normal vs pneumonia) -> NIH1000 (adult,
            normal vs abnormal = any finding): {normal: normal, abnormal: pneumonia}; NIH1000 -> PneumoniaMNIST:
            {normal: normal, pneumonia: abnormal}. Both rows use the same recipe, MedMNIST v2's ResNet-18 (28)
            from scratch (configs/medmnist_supervised.py: Adam 1e-3, batch 128, 100 epochs, x0.1 at 50/75,
            best validation AUC, no augmentation), both at 28 px grayscale (the NIH 64 px images are resized by
            the pipeline). The diagonal is each row's own test AUROC; nothing published to compare with.
Command:    python -m medssl_jax.tables.runner --table=configs/table_ood_cxr.py:cpu --workdir=/tmp/ood_cxr
            (writes ood_cxr_cpu.{md,csv} and the matrix ood_cxr_cpu_ood.{md,png}; no variant: full-width
            ResNet-18, a GPU job; `:quick`: 2 epochs of ResNet-18 x0.125 per row, to check the plumbing.)
            As an experiment config: `configs/table_ood_cxr.py:<source>[,quick]` with source pneumoniamnist
            (default) or nih1000 is one row's run, e.g.
            python main.py --config=configs/table_ood_cxr.py:nih1000,quick --workdir=/tmp/ood_nih
Data:       $MEDSSL_SHARED_DATA/pneumoniamnist (the reconstructed npz, see its PROVENANCE.md) and
            $MEDSSL_SHARED_DATA/nih_cxr14_1000_64px (patient-level re-split: 619 / 182 / 199 images).
Expected:   no published numbers. Measured (`:cpu`, 3 seeds, 42 min on the 2-core dev machine; outputs in
            docs/tables/ood_cxr_cpu*.md): PneumoniaMNIST-trained AUROC 0.960 ± 0.014 in distribution, 0.442
            ± 0.023 on NIH1000 (below chance); NIH1000-trained 0.508 ± 0.003 on its own test split (chance at
            28 px from 619 images) but 0.737 ± 0.018 on PneumoniaMNIST. `:quick` a few minutes; the
            full-width table a GPU job.
"""

import ml_collections

from medssl_jax import config as config_lib
from medssl_jax.data import shared

VARIANTS = ("quick", "cpu")
SOURCES = ("pneumoniamnist", "nih1000")


def nih1000_target(**overrides) -> dict:
  """NIH1000's test split as an OOD target of a (normal, pneumonia) classifier."""
  return dict(dict(name="nih1000", builder="nih_chestxray14", builder_config="subset1000_patient_split",
                   manual_dir=str(shared.shared_data_dir() / "nih_cxr14_1000_64px"), split="test",
                   label_map={"normal": ("normal",), "abnormal": ("pneumonia",)}), **overrides)


def pneumoniamnist_target(**overrides) -> dict:
  """PneumoniaMNIST's test split as an OOD target of a (normal, abnormal) classifier."""
  return dict(dict(name="pneumoniamnist", builder="medmnist", builder_config="pneumoniamnist",
                   manual_dir=str(shared.shared_data_dir() / "pneumoniamnist"), split="test",
                   label_map={"normal": ("normal",), "pneumonia": ("abnormal",)}), **overrides)


def get_config(arg=None):
  """One row's experiment: '<source>[,quick]', source in SOURCES (default pneumoniamnist); 'quick' or 'cpu'
  alone are the table variants' first row."""
  parts = [p.strip() for p in (arg or "").split(",") if p.strip()]
  unknown = [p for p in parts if p not in SOURCES + VARIANTS]
  sources = [p for p in parts if p in SOURCES]
  if unknown or len(sources) > 1:
    raise config_lib.unknown_variant(arg, [*VARIANTS, "<source>", "<source>,quick"], what="configs/table_ood_cxr.py variant",
                                    rest=f"with <source> in {list(SOURCES)}")
  source = sources[0] if sources else "pneumoniamnist"
  quick = ",quick" if "quick" in parts else ""
  c = config_lib.load("medmnist_supervised", f"pneumoniamnist{quick}")
  if source == "pneumoniamnist":
    c.ood.targets = (nih1000_target(),)
    return c
  # NIH1000 with the same recipe: only the data change (the schedule is in epochs of the dataset opened).
  c.data.builder = "nih_chestxray14"
  c.data.builder_config = "subset1000_patient_split"
  c.data.manual_dir = str(shared.shared_data_dir() / "nih_cxr14_1000_64px")
  c.ood.targets = (pneumoniamnist_target(),)
  return c


def get_table(arg=None):
  if arg and arg not in VARIANTS:
    raise config_lib.unknown_variant(arg, VARIANTS, what="table variant", rest="(or none for the full table)")
  quick = ",quick" if arg == "quick" else ""
  t = ml_collections.ConfigDict()
  t.name = "ood_cxr" + (f"_{arg}" if arg else "")
  t.description = ("Train on one CXR dataset, test on both (label maps: PneumoniaMNIST pneumonia ~ NIH1000 abnormal); "
                   "MedMNIST v2 ResNet-18 (28) recipe from scratch, 28 px; mean ± std over the seeds of the grid.")
  t.base_config = tuple(f"configs/table_ood_cxr.py:{s}{quick}" for s in SOURCES)
  t.grid = ml_collections.ConfigDict()
  t.grid.seed = (0, 1, 2)
  if arg == "cpu":
    # What a 2-core CPU affords: ResNet-18 at a quarter of the width, NOT the published architecture.
    t.description += " CPU variant: ResNet-18 x0.25."
    t.overrides = ml_collections.ConfigDict()
    t.overrides.model = ml_collections.ConfigDict()
    t.overrides.model.width_multiplier = 0.25
  return t
