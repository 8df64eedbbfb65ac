"""CHASE_DB1 vessel segmentation: SWCL-pretrained vs SimCLR vs random-init encoders under one U-Net decoder.

Reproduces: the SWCL transfer table (Yap & Ng 2021 transfer to vessel segmentation): a U-Net decoder on each encoder,
            trained on the 20 CHASE_DB1 training images (children 01-10) and scored on the 8 test images
            (children 11-14), pixel Dice / AUROC / accuracy pooled over the field of view, beside the
            published U-Net row (as reported in the R2U-Net paper, Alom et al. 2018).
Command:    python -m medssl_jax.tables.segmentation_table --table=configs/table_chase_db1_swcl.py:cpu \
              --workdir=/tmp/chase_swcl --out=docs/tables
            (resumable: rerun the same command after an interruption.)
Variants:   `cpu`: configs/fundus_swcl.py:cpu, :cpu_pair, :cpu_byol and :cpu_dino (ResNet-18 x0.25; HRF +
              CHASE_DB1-train pool; 5 segmentation seeds); the `cpu` run also gives the random-init and
              supervised (stage-1 pseudo-labeller) rows; `quick`: the synthetic smoke variant (no published row applies).
            (none): the paper-scale runs (configs/fundus_swcl.py, GPU + downloaded datasets).

`get_table` returns the table (medssl_jax/tables/segmentation_table.py documents its keys); `get_config`
returns the SWCL run of the same variant, so this file is also a normal config.
"""
from medssl_jax import config as config_lib

PUBLISHED = (
    {"method": "U-Net", "source": "Alom et al. 2018 (R2U-Net paper), as listed in ../shared/TARGETS.md",
     "dice": 0.7783, "auroc": 0.9772, "accuracy": 0.9578, "sensitivity": None, "specificity": None,
     "note": "U-Net (as reported in the R2U-Net paper, 2018) on CHASE_DB1 20 train / 8 test, full resolution, "
             "trained from scratch on many more patches; R2U-Net 0.8171 / 0.9784, IterNet 0.8073 / 0.9851."},
)


def get_table(arg=None):
  variant = arg or ""
  if variant not in ("", "cpu", "quick"):
    raise config_lib.unknown_variant(variant, ["cpu", "quick"], what="table variant", rest="(or none)")
  cfg = "configs/fundus_swcl.py"
  swcl = f"{cfg}:{variant}" if variant else cfg
  runs = {"swcl": swcl}
  rows = [{"label": "SWCL (patient + position + abnormality)", "run": "swcl", "encoder": "swcl (pretrained)"}]
  if variant != "quick":
    runs["simclr_patches"] = f"{cfg}:{variant}_pair" if variant else f"{cfg}:pair"
    rows.append({"label": "SimCLR (same patches, pair positives)", "run": "simclr_patches",
                 "encoder": "swcl (pretrained)"})
    if variant == "cpu":  # Full-scale BYOL / DINO recipes for 224 px patches are not written yet.
      for name, label in (("byol", "BYOL"), ("dino", "DINO")):
        runs[f"{name}_patches"] = f"{cfg}:cpu_{name}"
        rows.append({"label": f"{label} (same patches)", "run": f"{name}_patches", "encoder": f"{name} (pretrained)"})
    rows.append({"label": "supervised CE + FixMatch (stage-1 pseudo-labeller)", "run": "swcl",
                 "encoder": "pseudo-labeller (CE + FixMatch)"})
  rows.append({"label": "random init", "run": "swcl", "encoder": "random init"})
  return {
      "name": f"chase_db1_swcl{'_' + variant if variant else ''}",
      "description": ("CHASE_DB1 vessel segmentation (20 train / 8 test images, native 999x960): a U-Net decoder "
                      "on each encoder, fine-tuned end to end; mean ± std over the segmentation seeds. The SSL rows "
                      "pretrain on the same five-patch dataset (the pool's images, for `cpu` HRF + the CHASE_DB1 "
                      "training images; the test children are never seen before the test); the SimCLR row is "
                      "SWCL's loss with pair-only positives; the supervised row is SWCL's own stage-1 "
                      "pseudo-labeller (cross-entropy on the labelled set + FixMatch on the pool); random init is "
                      "the U-Net trained from scratch."),
      "runs": runs,
      "rows": tuple(rows),
      "published": PUBLISHED if variant != "quick" else (),
  }


def get_config(arg=None):
  from medssl_jax import config as config_lib
  spec = get_table(arg)["runs"]["swcl"]
  file, _, variant = spec.partition(":")
  return config_lib.load(file, variant or None)
