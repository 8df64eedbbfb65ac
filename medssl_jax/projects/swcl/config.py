"""The SWCL project's config section `swcl` and its checks."""
from __future__ import annotations

import ml_collections

from medssl_jax import config as config_lib
from medssl_jax.data import pipeline

# Keys of an unlabelled pool entry (config.swcl.pool): a dataset reference and its split.
POOL_KEYS = pipeline.REF_KEYS + ("split",)


def swcl_section() -> ml_collections.ConfigDict:
  """The `swcl` section (SWCL, Yap & Ng 2021, stages 1-3): mode "pseudo_label" trains a semi-supervised
  classifier on `labelled` + the unlabelled `pool` (<workdir>/pseudo_labeller/); "propagate" runs it over the pool
  and writes images, class activation maps and pseudo-labels (<workdir>/propagation/); "patches" builds the
  five-patch TFDS dataset `swcl_patches` from them (<workdir>/patches/). Stage 4 is mode "pretrain" with objective
  "swcl" on that dataset; stage 5 is "transfer" / "segmentation"."""
  c = ml_collections.ConfigDict()
  c.labelled = pipeline.ref_section("synthetic_fundus", "small")  # Images with image-level labels (e.g. ODIR, HRF).
  c.labelled.train_split = "train"
  c.labelled.val_split = "validation"  # Reported during training ("" = none).
  # Unlabelled pool (e.g. EyePACS): a tuple of dicts {builder, split, optional builder_config, data_dir,
  # manual_dir}; their labels, if any, are never read.
  c.pool = ({"builder": "synthetic_fundus", "builder_config": "small", "split": "test"},)
  c.image_size = 448               # Images of stages 2-3 (the patch source), pixels.
  c.patch_size = 224               # Stage 3: five patches of this size (four corners + centre).
  c.classifier_image_size = 224    # Stages 1-2: the pseudo-labeller's input size.
  c.fit = "pad"                    # How non-square fundus images become square (data.fit choices).
  c.steps = 2000                   # Stage 1 optimisation steps.
  c.batch_size = 32                # Labelled images per step.
  c.unlabelled_ratio = 1           # Unlabelled images per labelled one in a step (FixMatch's mu).
  c.learning_rate = 1e-3           # AdamW, cosine decay.
  c.weight_decay = 1e-4
  c.confidence_threshold = 0.95    # FixMatch: weak-view confidence for an unlabelled target.
  c.unlabelled_weight = 1.0        # lambda_u.
  c.eval_every = 500               # Validation AUROC every N steps (0 = at the end only).
  c.normal_classes = ("healthy",)  # Labelled classes that are not abnormal (abnormality = the rest).
  c.flip_right_eyes = True         # Stage 3: mirror right eyes so positions match left eyes.
  # The abnormality and pseudo-label thresholds (stages 2-4) are the objective's: config.objective.swcl.*.
  return c


def check(config):
  """The swcl section (SWCL stages 1-3)."""
  s = config.swcl
  pipeline.check_ref(s.labelled, "config.swcl.labelled")
  pipeline.check_refs(s.pool, where="config.swcl.pool", required=("builder", "split"), extra_keys=("split",))
  if config.mode in ("pseudo_label", "propagate", "swcl") and not s.pool:
    raise ValueError(f"config.mode={config.mode!r} needs an unlabelled pool: config.swcl.pool is empty")
  config_lib.check_choice(s.fit, pipeline.FITS, "config.swcl.fit")
  for k in ("image_size", "patch_size", "classifier_image_size", "steps", "batch_size"):
    if not isinstance(s[k], int) or s[k] <= 0:
      raise ValueError(f"config.swcl.{k} must be a positive integer, got {s[k]!r}")
  if s.patch_size > s.image_size:
    raise ValueError(f"config.swcl.patch_size={s.patch_size} is larger than config.swcl.image_size={s.image_size}")
  if not isinstance(s.unlabelled_ratio, int) or s.unlabelled_ratio < 0:
    raise ValueError(f"config.swcl.unlabelled_ratio must be an integer >= 0, got {s.unlabelled_ratio!r}")
  if not 0.0 <= s.confidence_threshold <= 1.0:
    raise ValueError(f"config.swcl.confidence_threshold must lie in [0, 1], got {s.confidence_threshold!r}")


config_lib.register_section("swcl", swcl_section)
