"""The config schema: every key a run may set, its default, and validation with clear errors.

Experiment files in configs/ start from `base_config()` and override what they reproduce; a key that
is not in the schema (a typo) or a name that is not registered fails with the valid choices listed.
"""
from __future__ import annotations

from typing import Callable, Mapping

import ml_collections

from medssl_jax.augment import views as views_lib

MODES = ("pretrain", "linear_eval", "pretrain_and_probe", "supervised")
EVAL_PROTOCOLS = ("linear_probe", "knn", "finetune")


def base_config() -> ml_collections.ConfigDict:
  """Defaults for every key. Experiment configs change values, never add keys."""
  c = ml_collections.ConfigDict()
  c.mode = "pretrain_and_probe"
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.builder = "synthetic_fundus"   # A name in medssl_jax.data.pipeline.BUILDERS.
  c.data.builder_config = ""            # TFDS builder config ("" = the builder's default).
  c.data.data_dir = ""                  # "" = $TFDS_DATA_DIR or ~/tensorflow_datasets.
  c.data.manual_dir = ""                # Official files of a manual-download builder ("" = TFDS default).
  c.data.train_split = "train"
  c.data.val_split = "validation"       # Model selection for eval.protocol=finetune ("" = none: last step).
  c.data.test_split = "test"
  c.data.image_size = 64                # Host-side resize of decoded images (pixels).
  c.data.fit = "squash"                 # Non-square images: "squash", "pad" (black borders) or "center_crop".
  c.data.channels = 3
  c.data.mean = (0.5, 0.5, 0.5)         # Normalisation after augmentation.
  c.data.std = (0.5, 0.5, 0.5)
  c.data.worker_count = 0               # grain worker processes (0 = decode in the main process).

  c.model = ml_collections.ConfigDict()
  c.model.encoder = "resnet18"
  c.model.stem = "imagenet"             # "cifar" for 28-32 px inputs.
  c.model.width_multiplier = 1.0
  c.model.projector_hidden_dims = (2048,)
  c.model.projector_dim = 128
  c.model.predictor_hidden_dims = (512,)  # BYOL / SimSiam / MoCo v3 predictor (output: projector_dim).
  c.model.compute_dtype = "float32"     # "bfloat16": encoder compute in bf16; losses and norms stay float32.
  c.model.patch_size = 4                # ViT patch size (4 for 28-32 px, 8 for 64 px, 16 for 224 px).
  c.model.decoder_dim = 128             # MAE decoder width, depth and heads.
  c.model.decoder_depth = 2
  c.model.decoder_heads = 4

  c.objective = ml_collections.ConfigDict()
  c.objective.name = "simclr"
  c.objective.temperature = 0.1         # Contrastive / student softmax temperature.
  # EMA teacher (BYOL, MoCo, DINO): momentum rises from `momentum` to `momentum_final` (cosine).
  c.objective.momentum = 0.996
  c.objective.momentum_final = 1.0
  c.objective.queue_size = 4096         # MoCo v2 negatives (a multiple of the global batch size).
  c.objective.barlow_lambda = 0.0051    # Barlow Twins off-diagonal weight.
  c.objective.vicreg_sim = 25.0         # VICReg invariance / variance / covariance weights.
  c.objective.vicreg_std = 25.0
  c.objective.vicreg_cov = 1.0
  c.objective.num_prototypes = 256      # SwAV prototypes; DINO head output dimension.
  c.objective.sinkhorn_iters = 3        # SwAV Sinkhorn-Knopp iterations and epsilon.
  c.objective.sinkhorn_epsilon = 0.05
  c.objective.teacher_temperature = 0.04  # DINO: final teacher temperature, warmed up from
  c.objective.teacher_temperature_start = 0.04  # this start over `..._warmup_steps` steps.
  c.objective.teacher_temperature_warmup_steps = 0
  c.objective.center_momentum = 0.9     # DINO centre EMA.
  c.objective.num_global_views = 2      # Multi-crop: leading full-size views (teacher / assignments).
  c.objective.mask_ratio = 0.75         # MAE: fraction of patches masked.
  c.objective.norm_pix_loss = True      # MAE: per-patch normalised pixel targets.

  c.augment = ml_collections.ConfigDict()
  c.augment.views = [views_lib.default_view(), views_lib.default_view()]

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 256              # Global batch over all devices and hosts.
  c.train.num_steps = 1000
  c.train.optimizer = "lars"
  c.train.base_learning_rate = 0.3      # Scaled by batch_size / 256.
  c.train.warmup_steps = 100
  c.train.weight_decay = 1e-6
  c.train.grad_clip_norm = 0.0          # 0 = off.
  c.train.log_every = 50
  c.train.checkpoint_every = 500
  c.train.keep_checkpoints = 3

  c.eval = ml_collections.ConfigDict()
  c.eval.protocol = "linear_probe"
  c.eval.batch_size = 256
  c.eval.l2_grid = (1e-4, 1e-3, 1e-2, 1e-1)
  c.eval.max_iter = 200
  c.eval.knn_k = 20                     # protocol "knn": weighted cosine kNN (Wu et al. 2018 / DINO).
  c.eval.knn_temperature = 0.07
  c.eval.knn_weighting = "exp"          # "exp" (weights exp(sim / T)) or "uniform".
  # protocol "finetune": backbone + new head, AdamW with cosine decay, crop/flip augmentation,
  # checkpoint chosen by validation AUROC (medssl_jax/evals/finetune.py). backbone_lr_scale 0 = frozen.
  c.eval.finetune_steps = 500
  c.eval.finetune_batch_size = 64
  c.eval.finetune_learning_rate = 1e-3
  c.eval.finetune_weight_decay = 1e-4
  c.eval.finetune_backbone_lr_scale = 1.0
  c.eval.finetune_warmup_steps = 0
  c.eval.finetune_eval_every = 0        # Validation every N steps (0 = the module's default).
  c.eval.finetune_schedule = "cosine"   # Or "multistep": x0.1 at each of finetune_milestones (fractions).
  c.eval.finetune_milestones = (0.5, 0.75)
  c.eval.finetune_augment = True        # Random resized crop (0.5, 1) + flip; False: resize only.
  c.eval.compare_random_init = True     # Also probe a randomly initialised encoder as the floor.
  c.eval.max_train_examples = 0         # 0 = the whole training split.
  # Low-label protocol: the labelled training records the probe may use ("" = all, "1%", "10%", "k=5"),
  # chosen stratified, seeded and patient-aware (medssl_jax/data/subsets.py) and written to
  # <workdir>/subsets/*.json with a sha256; or a subset file written by an earlier run (wins if set).
  c.eval.train_subset = ""
  c.eval.subset_seed = 0
  c.eval.subset_file = ""
  return c


def _check_keys(config, schema, path=""):
  for key in config.keys():
    if key not in schema:
      where = path.rstrip(".") or "config"
      raise ValueError(f"Unknown config key {path}{key!r} in {where}; valid keys: {sorted(schema.keys())}")
    value, ref = config[key], schema[key]
    if isinstance(ref, ml_collections.ConfigDict):
      if not isinstance(value, (ml_collections.ConfigDict, Mapping)):
        raise ValueError(f"config.{path}{key} must be a section like the default, got {value!r}")
      _check_keys(value, ref, f"{path}{key}.")


def _check_choice(value, choices, name):
  if value not in choices:
    raise ValueError(f"{name}={value!r} is not known; valid choices: {list(choices)}")


def validate(config) -> ml_collections.ConfigDict:
  """Checks keys against the schema and names against the registries; returns the config."""
  from medssl_jax import models, objectives  # Local import: the registries import jax.
  from medssl_jax.data import pipeline

  _check_keys(config, base_config())
  _check_choice(config.mode, MODES, "config.mode")
  _check_choice(config.model.encoder, models.ENCODERS, "config.model.encoder")
  _check_choice(config.objective.name, sorted(objectives.OBJECTIVES), "config.objective.name")
  _check_choice(config.eval.protocol, EVAL_PROTOCOLS, "config.eval.protocol")
  if config.mode == "supervised" and config.eval.protocol != "finetune":
    raise ValueError("config.mode='supervised' trains a randomly initialised encoder with labels, which is "
                     f"eval.protocol='finetune'; got eval.protocol={config.eval.protocol!r}")
  _check_choice(config.eval.finetune_schedule, ("cosine", "multistep"), "config.eval.finetune_schedule")
  _check_choice(config.data.builder, sorted(pipeline.BUILDERS), "config.data.builder")
  _check_choice(config.data.fit, pipeline.FITS, "config.data.fit")
  if config.eval.train_subset and not config.eval.subset_file:
    from medssl_jax.data import subsets
    subsets.parse_spec(config.eval.train_subset)  # A typo fails before any work, with the accepted forms.
  if not config.augment.views:
    raise ValueError("config.augment.views is empty; a contrastive objective needs at least 2 views")
  sizes = set()
  for i, view in enumerate(config.augment.views):
    try:
      views_lib.validate_view(view)
    except ValueError as e:
      raise ValueError(f"config.augment.views[{i}]: {e}") from None
    sizes.add(view["crop_size"])
  objective = objectives.get_objective(config.objective.name)
  if len(sizes) != 1 and not objective.multi_crop:
    raise ValueError(f"config.augment.views have different crop sizes {sorted(sizes)}; only multi-crop "
                     f"objectives (swav, dino) encode views of several sizes, {objective.name!r} needs one")
  if objective.multi_crop and config.augment.views[0]["crop_size"] != max(sizes):
    raise ValueError("multi-crop: the first views must be the full-size (global) ones; "
                     f"config.augment.views[0].crop_size={config.augment.views[0]['crop_size']} < {max(sizes)}")
  _check_choice(config.model.compute_dtype, ("float32", "bfloat16"), "config.model.compute_dtype")
  for k in ("batch_size", "num_steps", "log_every", "checkpoint_every", "keep_checkpoints"):
    if config.train[k] <= 0:
      raise ValueError(f"config.train.{k} must be a positive integer, got {config.train[k]!r}")
  if len(config.data.mean) != config.data.channels or len(config.data.std) != config.data.channels:
    raise ValueError(f"config.data.mean/std need {config.data.channels} values (config.data.channels), "
                     f"got {tuple(config.data.mean)} / {tuple(config.data.std)}")
  return config


def with_variant(config, arg: str | None, variants: Mapping[str, Callable]) -> ml_collections.ConfigDict:
  """Applies the variant named by `--config=file.py:<arg>` (e.g. "quick") to a config.

  Raises a ValueError listing the valid variants for an unknown name.
  """
  arg = (arg or "").strip()
  if arg:
    if arg not in variants:
      raise ValueError(f"Unknown config variant {arg!r}; valid variants: {sorted(variants)} "
                       "(or none for the full run)")
    variants[arg](config)
  return config


def load(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """Loads `get_config(arg)` from a config file (e.g. "configs/demo_simclr.py"), as `--config` does.

  A bare name like "demo_simclr" is looked up in the repository's configs/ folder.
  """
  import importlib.util
  import os

  if not path.endswith(".py"):
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", path + ".py")
  if not os.path.exists(path):
    raise FileNotFoundError(f"Config file {path!r} does not exist")
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)
