"""Background augmentation: SimCLR and BYOL with and without it, on fundus (RetinaMNIST) and chest X-ray
(PneumoniaMNIST) data, probed in distribution, out of distribution, and for attention inside the foreground.

Reproduces: background augmentations (Ryali, Schwab & Morcos 2021, "Characterizing and improving the robustness of
            self-supervised learning through background augmentations") on medical images, whose foreground masks
            come from the images themselves (medssl_jax/data/masks.py): the lung fields of the chest X-rays
            (`lung_intensity`), whose background is swapped with another image's; the field of view of the fundus
            photographs (`fundus_fov`), whose black surround gets uniform noise. Every view replaces its
            background with probability 0.2 (configs/_medmnist.py with_background). The recipes are
            configs/medmnist_simclr.py and configs/medmnist_byol.py. Each pretrained encoder, and a random one (once
            per dataset and seed, beside the plain SimCLR rows), is
            linear-probed at 10% and 100% labels; beside each result, the fraction of its Grad-CAM (of the probe's
            classifier, for the image's class) inside the same mask on the first 256 test images, with the mask's
            area (a uniform map's fraction). PneumoniaMNIST's classifiers are also scored on NIH1000's test split
            (the OOD pair of configs/table_ood_cxr.py; written to background_<variant>_ood.{md,png}).
            Ryali et al. report +1-2% ImageNet linear accuracy and larger gains with few labels and under
            distribution shift; no medical-image numbers are published to compare with.
Command:    python -m medssl_jax.tables.runner --table=configs/table_background.py:pneumonia_cpu --workdir=/tmp/bg
            python -m medssl_jax.tables.runner --table=configs/table_background.py:retina_cpu --workdir=/tmp/bg
            Variants: `:pneumonia_cpu` / `:retina_cpu` (one dataset, ResNet-18 x0.25, 1,000 pretraining steps at
            batch 128: the CPU budget of configs/table_medmnist_ssl.py, so the SimCLR rows without background
            augmentation repeat that table's recipe); `:quick` (both datasets, a narrow network, a few steps: the
            plumbing). One row's run: `configs/table_background.py:<dataset>,<simclr|byol|relic>[,background][,quick]`
            (configs/table_relic.py names the same rows, so in one --workdir the two tables share pretrainings).
Wall-clock: 12 pretrainings per dataset of about 10 min each on the 2-core dev machine, then seconds per probe.
"""
import ml_collections

from medssl_jax import config as config_lib

VARIANTS = ("quick", "pneumonia_cpu", "retina_cpu")
DATASETS = ("pneumoniamnist", "retinamnist")
OBJECTIVES = ("simclr", "byol")  # This table's arms.
ROW_OBJECTIVES = (*OBJECTIVES, "relic")  # What one row's run may name (configs/table_relic.py shares these rows).
CPU_BUDGET = "CPU-budget variant (ResNet-18 x0.25 (28); 1,000 pretraining steps at batch 128)"
_table_ood_cxr = config_lib.sibling(__file__, "table_ood_cxr")
_medmnist = config_lib.sibling(__file__, "_medmnist")


def get_config(arg=None):
  """One row's run: '<dataset>,<objective>[,background][,quick]'; 'quick' or a CPU variant alone is the table's
  first row."""
  parts = [p.strip() for p in (arg or "").split(",") if p.strip()]
  if not parts or parts[0] in VARIANTS:
    return config_lib.with_variant(_first_row(parts[0] if parts else None), parts[0] if parts else None,
                                   {v: lambda c: None for v in VARIANTS})
  flags = {"background", "quick"}
  rest = [p for p in parts if p not in flags]
  if len(rest) != 2 or rest[0] not in DATASETS or rest[1] not in ROW_OBJECTIVES:
    raise config_lib.unknown_variant(arg, [*VARIANTS, "<dataset>,<objective>[,background][,quick]"],
                                    what="configs/table_background.py variant",
                                    rest=f"with <dataset> in {list(DATASETS)} and <objective> in {list(ROW_OBJECTIVES)}")
  dataset, objective = rest
  spec = ",".join([dataset, *(f for f in ("background", "quick") if f in parts)])
  c = config_lib.load(f"medmnist_{objective}", spec)
  # The random encoder (same seed, same model in every arm) once per dataset and seed: beside the plain SimCLR rows.
  c.eval.compare_random_init = objective == "simclr" and "background" not in parts
  c.eval.attention_mask = _medmnist.BACKGROUNDS[dataset][0]
  c.eval.attention_images = 256
  if dataset == "pneumoniamnist":
    c.ood.targets = (_table_ood_cxr.nih1000_target(),)
  return c


def _first_row(variant):
  return config_lib.table_base_config(get_table(variant))


def get_table(arg=None):
  if arg and arg not in VARIANTS:
    raise config_lib.unknown_variant(arg, VARIANTS, what="table variant", rest="(or none for the full table)")
  datasets = {"pneumonia_cpu": ("pneumoniamnist",), "retina_cpu": ("retinamnist",)}.get(arg, DATASETS)
  quick = ",quick" if arg == "quick" else ""
  t = ml_collections.ConfigDict()
  t.name = "background" + (f"_{arg}" if arg else "")
  t.description = ("SimCLR and BYOL pretrained on each training split, with and without background augmentation "
                   "(`.background` rows: p 0.2 per view; chest X-rays: lung fields kept, background swapped; fundus: "
                   "field of view kept, noise outside), vs a random encoder; linear probe at 10% / 100% labels; "
                   "attention in mask: Grad-CAM fraction inside the lung fields / field of view on 256 test images "
                   "(mask area in brackets); mean ± std over the seeds of the grid.")
  t.base_config = tuple(f"configs/table_background.py:{d},{o}{bg}{quick}"
                        for d in datasets for o in OBJECTIVES for bg in ("", ",background"))
  t.grid = ml_collections.ConfigDict()
  t.grid.eval = ml_collections.ConfigDict()
  t.grid.eval.train_subset = ("10%", "")
  t.grid.seed = (0, 1, 2)
  t.subset_seed_from_seed = True
  if arg in ("pneumonia_cpu", "retina_cpu"):
    t.description = CPU_BUDGET + ": " + t.description
    t.overrides = ml_collections.ConfigDict()
    t.overrides.model = ml_collections.ConfigDict()
    t.overrides.model.width_multiplier = 0.25
    t.overrides.train = ml_collections.ConfigDict()
    t.overrides.train.batch_size = 128
    t.overrides.train.num_steps = 1000
  if arg == "quick":
    t.grid.seed = (0,)
    t.grid.eval.train_subset = ("",)
  return t
