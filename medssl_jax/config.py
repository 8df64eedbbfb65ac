"""The config schema: every key a run may set, its default, and validation with clear errors.

Experiment files in configs/ start from `base_config()` and override what they reproduce; a key that
is not in the schema (a typo) or a name that is not registered fails with the valid choices listed.
"""
from __future__ import annotations

from typing import Callable, Mapping

import difflib

import ml_collections

from medssl_jax.augment import views as views_lib

MODES = ("pretrain", "linear_eval", "pretrain_and_probe", "supervised", "analyze",
         # SWCL stages (medssl_jax/swcl/): each a mode, and "swcl" runs them all in order, resuming.
         "pseudo_label", "propagate", "patches", "transfer", "segmentation", "swcl",
         # Microscopy particle embeddings (medssl_jax/evals/particles.py): pretrain without particles.holdout_class,
         # then cluster quality, few-label classification and novelty of the held-out class.
         "particles",
         # Curricular pretraining (medssl_jax/train/curriculum.py): curriculum.stages in order, each resuming.
         "curriculum")
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
  # Weights the encoder starts from instead of a random init (transfer stages and baselines): "" = random;
  # a torchvision / timm ResNet state dict (.pth/.pt/.bin, .safetensors) converted by
  # medssl_jax/models/convert_torch.py, or an .npz written by its export.
  c.model.init_checkpoint = ""

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
  # SWCL (objective "swcl", medssl_jax/objectives/swcl.py): which semi-weak labels make two patches
  # positives. ("pair",) = only the two views of one patch (SimCLR on patches); otherwise patches are
  # positives when they agree on every named key: "patient", "position", "abnormality" (thresholded),
  # and "pseudo_label" (multi-label: positive weight = Jaccard overlap of the thresholded pseudo-labels).
  c.objective.swcl_scheme = ("patient", "position", "abnormality")
  # Image-text objectives ("clip", "convirt", "joint"; medssl_jax/objectives/image_text.py): the initial
  # temperature t (logits = cosine / t), learnable as CLIP's logit scale when learn_temperature (clamped
  # at t >= 0.01); ConVIRT's image->text weight lambda; for "joint" (SLIP-style) the image-text loss on view
  # 0 plus image_ssl_weight x SimCLR on views 1.. (at least two more views).
  c.objective.image_text_temperature = 0.1
  c.objective.learn_temperature = True
  c.objective.image_to_text_weight = 0.75
  c.objective.image_ssl_weight = 1.0

  # Report text for image-text objectives (medssl_jax/text/, models/text.py): the dataset's text feature,
  # a WordPiece tokenizer trained on data.train_split's reports (saved as <workdir>/tokenizer.json and reused),
  # and the text transformer. Image and text projections both map to model.projector_dim.
  c.text = ml_collections.ConfigDict()
  c.text.key = "report"                 # Text feature of the dataset (e.g. "report", "impression").
  c.text.vocab_size = 2000              # Tokenizer vocabulary size (at most; fewer if the corpus is small).
  c.text.min_frequency = 2              # WordPiece merges need at least this many occurrences.
  c.text.max_length = 64                # Tokens per report incl. [CLS] / [SEP]; longer reports are truncated.
  # Train on one sentence of each report, drawn anew every epoch (ConVIRT's text view) instead of the whole
  # report; evaluation (retrieval) always reads whole reports.
  c.text.sample_sentences = False
  c.text.width = 128                    # Text transformer width, depth and heads.
  c.text.depth = 2
  c.text.heads = 4

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
  # Guards (train/guard.py): a non-finite metric stops the run at once; the projection's spread (mean
  # per-dimension std of the l2-normalised projections x sqrt(dim): 1 spread out, 0 every image mapped to one
  # point) below collapse_threshold for collapse_patience consecutive steps after warmup stops it as collapsed.
  # No checkpoint is written while a step is non-finite or the spread is below the threshold, so the last good
  # one is kept. collapse_threshold 0 = off.
  c.train.collapse_threshold = 0.01
  c.train.collapse_patience = 100

  # Multi-host (train/distributed.py): jax.distributed.initialize before any device is touched. Empty / 0 / -1
  # fall back to JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID, then to jax's detection of SLURM,
  # Open MPI, Kubernetes and Cloud TPU pods (auto_detect); one process when none applies.
  c.distributed = ml_collections.ConfigDict()
  c.distributed.coordinator_address = ""   # "host:port" of process 0.
  c.distributed.num_processes = 0
  c.distributed.process_id = -1
  c.distributed.local_device_ids = ()      # Devices of this process (e.g. one GPU per process); () = all.
  c.distributed.auto_detect = True
  c.distributed.initialization_timeout = 300  # Seconds to wait for every process to join.

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
  # Where to cut (protocols linear_probe and knn; issue 5's "guillotine" comparison): the layers whose
  # frozen features are probed, named as medssl_jax.evals.representation.available_layers gives them for
  # the model, e.g. ("backbone", "projector/hidden1", "projector/out") or ResNet "stage1".."stage3".
  # The default probes the backbone output only, with the results keys and file names of before.
  c.eval.feature_layers = ("backbone",)
  # Also neural-collapse measures (within- vs between-class variability, NC1/NC2, nearest class mean)
  # of each probed layer's train and test features, stored in the results per encoder and layer.
  c.eval.neural_collapse = False
  # Metrics beside accuracy / AUROC (medssl_jax.evals.metrics.report): quadratic-weighted kappa for graded
  # labels (DR grade 0-4: RetinaMNIST, EyePACS, APTOS, ...), and percentile bootstrap intervals (test
  # examples resampled within each class; 0 = none) of AUROC, accuracy (and kappa).
  c.eval.ordinal = False
  c.eval.bootstrap_samples = 1000

  # mode "analyze" (medssl_jax/analysis.py): representation analysis of the pretrained encoder in the
  # workdir (and a random-init one when eval.compare_random_init), written to <workdir>/analysis/.
  c.analysis = ml_collections.ConfigDict()
  c.analysis.split = ""                 # Records analysed ("" = data.test_split).
  c.analysis.max_examples = 512         # At most this many (a seeded random subset, split order kept; 0 = all).
  c.analysis.label_key = "label"        # Single-label class feature for colours / neural collapse (e.g. "eye").
  c.analysis.layers = ()                # Layers (representation.available_layers names); () = all of them.
  c.analysis.nc_weighting = "balanced"  # Neural-collapse class weighting: "balanced" or "samples".
  c.analysis.embedding_method = "tsne"  # 2-D map per layer: "tsne", "pca" or "none".
  # Attention maps: "auto" (grad_cam for ResNets, rollout for ViTs), "grad_cam" (linear probe head fit on
  # data.train_split features), "label_free" (= grad_feature_norm), "activation_norm",
  # "grad_feature_norm", "rollout" (ViT) or "none".
  c.analysis.attention = "auto"
  c.analysis.cam_target = "label"       # grad_cam target class: "label" (the true class) or "predicted".
  c.analysis.num_attention_images = 16  # Images in the overlay grid PNG (maps are computed for all).
  c.analysis.mask_key = ""              # Mask feature (e.g. "mask", "fov_mask"): fraction of attention inside.
  # A mask computed from the images instead of read from a feature (exclusive with mask_key): "" = none,
  # "lung_intensity" = lung fields found by a classical intensity segmentation of chest X-rays
  # (medssl_jax/evals/lung_mask.py), for the attention-in-lung measure on data without lung masks.
  c.analysis.derived_mask = ""

  # Out-of-distribution targets (medssl_jax/evals/ood.py): the trained classifier scored on other datasets'
  # splits sharing its label. A tuple of dicts: name, builder, label_map {target class: (source classes,)},
  # optional builder_config, data_dir, manual_dir, split ("test"). Empty: no OOD evaluation.
  c.ood = ml_collections.ConfigDict()
  c.ood.targets = ()

  # SWCL (Yap & Ng 2021), stages 1-3 (medssl_jax/swcl/): mode "pseudo_label" trains a semi-supervised
  # classifier on `labelled` + the unlabelled `pool` (<workdir>/pseudo_labeller/); "propagate" runs it over
  # the pool and writes images, class activation maps and pseudo-labels (<workdir>/propagation/);
  # "patches" builds the five-patch TFDS dataset `swcl_patches` from them (<workdir>/patches/). Stage 4 is
  # mode "pretrain" with objective "swcl" on that dataset; stage 5 is "transfer" / "segmentation".
  c.swcl = ml_collections.ConfigDict()
  c.swcl.labelled = ml_collections.ConfigDict()  # Images with image-level labels (e.g. ODIR, HRF).
  c.swcl.labelled.builder = "synthetic_fundus"
  c.swcl.labelled.builder_config = "small"
  c.swcl.labelled.data_dir = ""
  c.swcl.labelled.manual_dir = ""
  c.swcl.labelled.train_split = "train"
  c.swcl.labelled.val_split = "validation"  # Reported during training ("" = none).
  # Unlabelled pool (e.g. EyePACS): a tuple of dicts {builder, split, optional builder_config, data_dir,
  # manual_dir}; their labels, if any, are never read.
  c.swcl.pool = ({"builder": "synthetic_fundus", "builder_config": "small", "split": "test"},)
  c.swcl.image_size = 448               # Images of stages 2-3 (the patch source), pixels.
  c.swcl.patch_size = 224               # Stage 3: five patches of this size (four corners + centre).
  c.swcl.classifier_image_size = 224    # Stages 1-2: the pseudo-labeller's input size.
  c.swcl.fit = "pad"                    # How non-square fundus images become square (data.fit choices).
  c.swcl.steps = 2000                   # Stage 1 optimisation steps.
  c.swcl.batch_size = 32                # Labelled images per step.
  c.swcl.unlabelled_ratio = 1           # Unlabelled images per labelled one in a step (FixMatch's mu).
  c.swcl.learning_rate = 1e-3           # AdamW, cosine decay.
  c.swcl.weight_decay = 1e-4
  c.swcl.confidence_threshold = 0.95    # FixMatch: weak-view confidence for an unlabelled target.
  c.swcl.unlabelled_weight = 1.0        # lambda_u.
  c.swcl.eval_every = 500               # Validation AUROC every N steps (0 = at the end only).
  c.swcl.normal_classes = ("healthy",)  # Labelled classes that are not abnormal (abnormality = the rest).
  c.swcl.flip_right_eyes = True         # Stage 3: mirror right eyes so positions match left eyes.
  c.swcl.abnormality_threshold = 0.5    # Stage 3/4: a patch is abnormal when its score exceeds this.
  c.swcl.pseudo_label_threshold = 0.5   # Multi-label pseudo-labels: probability above which a class is on.

  # Transfer, classification (mode "transfer"): each target dataset evaluated with config.eval's protocol on
  # the pretrained encoder (and random init). A tuple of dicts {name, builder, optional builder_config,
  # data_dir, manual_dir, train_split, val_split, test_split, image_size, fit, ordinal}; results in
  # <workdir>/transfer/<name>/.
  c.transfer = ml_collections.ConfigDict()
  c.transfer.targets = ()

  # Transfer, segmentation (mode "segmentation", medssl_jax/evals/segmentation.py): a U-Net decoder on the
  # encoder's backbone, trained on random patches of the training images, scored on whole test images
  # (Dice / F1, pixel AUROC, accuracy, sensitivity, specificity, pooled over the field of view).
  c.segmentation = ml_collections.ConfigDict()
  c.segmentation.builder = "chase_db1"
  c.segmentation.builder_config = "original"
  c.segmentation.data_dir = ""
  c.segmentation.manual_dir = ""
  c.segmentation.train_split = "train"
  c.segmentation.test_split = "test"
  c.segmentation.mask_key = "mask"      # The target map feature (vessels: 1, background: 0).
  # "binary": mask > 0 is foreground (one sigmoid output, e.g. vessels); "classes": mask values are class ids
  # 0..K-1 (0 = background, K = the training masks' largest id + 1; e.g. REFUGE 1 disc rim, 2 cup): softmax.
  c.segmentation.mask_mode = "binary"
  # Field of view the metrics are pooled over: a mask feature (HRF/DRIVE "fov_mask"), "auto" (pixels whose
  # image is not near-black: CHASE_DB1 ships no FOV masks) or "none" (every pixel).
  c.segmentation.fov = "auto"
  c.segmentation.image_size = 0         # 0 = native resolution; else squared by data.fit and resized.
  c.segmentation.patch_size = 128       # Training crops (pixels); test images are segmented whole.
  c.segmentation.steps = 2000
  c.segmentation.batch_size = 16
  c.segmentation.learning_rate = 1e-3   # AdamW, cosine decay; the backbone at lr x backbone_lr_scale.
  c.segmentation.weight_decay = 1e-4
  c.segmentation.backbone_lr_scale = 1.0
  c.segmentation.decoder_widths = ()    # () = each decoder block as wide as the skip it merges.
  c.segmentation.augment = True         # Flips, 90-degree rotations, brightness/contrast jitter.
  c.segmentation.threshold = 0.5        # Probability above which a pixel is predicted vessel (Dice, accuracy).
  # Encoders compared: "pretrained" (the workdir's checkpoint), "random" (random init, trained end to end),
  # "init_checkpoint" (model.init_checkpoint, e.g. ImageNet weights), "pseudo_labeller" (SWCL stage 1's
  # backbone: supervised cross-entropy + FixMatch, the supervised-pretraining baseline).
  c.segmentation.encoders = ("pretrained", "random")
  c.segmentation.seeds = (0,)           # Decoder init / patch sampling seeds; results are mean +- std.

  # mode "particles" (medssl_jax/evals/particles.py): does the embedding separate particle types (cluster
  # quality, embedding map), can a few labels per class classify them, and does a type never seen in
  # pretraining stand out (novelty AUROC)? holdout_class ("" = none) is left out of pretraining and of the
  # few-label classes, and is the "novel" class of the novelty score.
  c.particles = ml_collections.ConfigDict()
  c.particles.holdout_class = ""        # A class name of the dataset's 'label' feature, e.g. "WBC".
  c.particles.shots = (1, 5, 10)        # Labelled training crops per known class for the few-label probe.
  c.particles.shot_seeds = (0, 1, 2)    # One k-per-class draw per seed; results are mean +- std.
  c.particles.knn_k = 10                # Neighbours for kNN purity and the novelty score (cosine).
  # Novelty scores, each with its AUROC for the held-out class: "knn" (1 - mean cosine similarity to the k
  # nearest known training embeddings), "local_density" (kNN distance relative to the neighbours' own kNN
  # distances, LOF-style), "mahalanobis" (min class-conditional Mahalanobis distance, shared covariance,
  # fit on the labelled known-class training embeddings).
  c.particles.novelty_methods = ("knn", "local_density", "mahalanobis")
  c.particles.max_examples = 2000       # Records per split (a seeded subset of larger splits; 0 = all).
  c.particles.embedding_method = "tsne"  # 2-D map of the test split: "tsne", "pca" or "none".

  # mode "curriculum" (medssl_jax/train/curriculum.py; de Andres Tame et al. 2023): pretext stages of rising
  # difficulty, each starting from the previous one's final params and batch_stats (fresh optimizer and
  # objective state). A tuple of dicts {"name": str, "num_steps": int, "overrides": {dotted key: value}};
  # overrides may set augment.*, objective.* (same parameter shapes), train.base_learning_rate, warmup_steps,
  # weight_decay. Stage k runs in <workdir>/stages/<k>_<name>/; the final variables go to <workdir>/checkpoints.
  c.curriculum = ml_collections.ConfigDict()
  c.curriculum.stages = ()
  return c


# Novelty scores of mode "particles" (medssl_jax/evals/particles.py).
NOVELTY_METHODS = ("knn", "local_density", "mahalanobis")

def _check_keys(config, schema, path=""):
  for key in config.keys():
    if key not in schema:
      close = difflib.get_close_matches(key, list(schema.keys()), n=1)
      hint = f" (did you mean config.{path}{close[0]}?)" if close else ""
      section = f"config.{path.rstrip('.')}" if path else "config"
      raise ValueError(f"Unknown config key config.{path}{key}{hint}; valid keys of {section}: "
                       f"{sorted(schema.keys())}")
    value, ref = config[key], schema[key]
    if isinstance(ref, ml_collections.ConfigDict):
      if not isinstance(value, (ml_collections.ConfigDict, Mapping)):
        raise ValueError(f"config.{path}{key} must be a section like the default, got {value!r}")
      _check_keys(value, ref, f"{path}{key}.")


def _check_choice(value, choices, name):
  if value not in choices:
    raise ValueError(f"{name}={value!r} is not known; valid choices: {list(choices)}")


def _check_feature_layers(config):
  """eval.feature_layers / eval.neural_collapse: known layer names of this model, protocols that use them."""
  from medssl_jax import models  # Local import: the registries import jax.
  from medssl_jax.evals import representation

  e = config.eval
  layers = e.feature_layers
  if (isinstance(layers, str) or not isinstance(layers, (tuple, list)) or not layers
      or not all(isinstance(l, str) for l in layers)):
    raise ValueError(f"config.eval.feature_layers must be a non-empty tuple of layer names, e.g. "
                     f"('backbone', 'projector/out'), got {layers!r}")
  if len(set(layers)) != len(layers):
    raise ValueError(f"config.eval.feature_layers lists a layer twice: {tuple(layers)!r}")
  if e.protocol == "finetune" and (tuple(layers) != ("backbone",) or e.neural_collapse):
    raise ValueError("config.eval.feature_layers and eval.neural_collapse apply to the frozen-feature protocols "
                     "(linear_probe, knn); eval.protocol='finetune' trains a head on the backbone output, so it "
                     f"needs feature_layers=('backbone',) and neural_collapse=False, got {tuple(layers)!r} and "
                     f"{e.neural_collapse!r}")
  # Building the module is cheap (no parameters are created) and names exactly what layer_features accepts.
  valid = representation.available_layers(models.build_model(config))
  unknown = [l for l in layers if l not in valid]
  if unknown:
    raise ValueError(f"config.eval.feature_layers: unknown layer(s) {unknown} for {config.model.encoder} with "
                     f"the {config.objective.name!r} heads; valid layers: {valid}")


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
  if objective.text:
    _check_text(config, len(config.augment.views))
  for k in ("batch_size", "num_steps", "log_every", "checkpoint_every", "keep_checkpoints"):
    if config.train[k] <= 0:
      raise ValueError(f"config.train.{k} must be a positive integer, got {config.train[k]!r}")
  if not 0 <= config.train.collapse_threshold < 1 or config.train.collapse_patience < 1:
    raise ValueError("config.train.collapse_threshold must be in [0, 1) (0 = off) and collapse_patience >= 1 step, "
                     f"got {config.train.collapse_threshold!r} and {config.train.collapse_patience!r}")
  _check_distributed(config.distributed)
  if len(config.data.mean) != config.data.channels or len(config.data.std) != config.data.channels:
    raise ValueError(f"config.data.mean/std need {config.data.channels} values (config.data.channels), "
                     f"got {tuple(config.data.mean)} / {tuple(config.data.std)}")
  if not isinstance(config.eval.bootstrap_samples, int) or config.eval.bootstrap_samples < 0:
    raise ValueError(f"config.eval.bootstrap_samples must be an integer >= 0 (0 = no intervals), got "
                     f"{config.eval.bootstrap_samples!r}")
  _check_feature_layers(config)  # Last: it builds the model, which needs the checks above to have passed.
  _check_analysis(config)
  _check_ood(config)
  _check_swcl(config)
  _check_transfer(config)
  _check_particles(config)
  _check_curriculum(config)
  return config


def _check_distributed(d):
  addr = d.coordinator_address
  if addr and (":" not in addr or not addr.rsplit(":", 1)[1].isdigit()):
    raise ValueError(f"config.distributed.coordinator_address={addr!r}: expected 'host:port' of process 0, "
                     "e.g. '10.0.0.1:1234'")
  if d.num_processes < 0 or not -1 <= d.process_id < max(d.num_processes, 1) and d.num_processes:
    raise ValueError(f"config.distributed: process_id={d.process_id} must be in [0, num_processes="
                     f"{d.num_processes}) (or -1 / 0 to read the environment)")


def _check_text(config, num_views: int):
  """Image-text objectives: view count, temperatures, weights and the text tower's sizes."""
  name, o, t = config.objective.name, config.objective, config.text
  if name in ("clip", "convirt") and num_views != 1:
    raise ValueError(f"config.objective.name={name!r} pairs one augmented image view with its report; "
                     f"config.augment.views has {num_views} (use one view)")
  if name == "joint" and num_views < 3:
    raise ValueError(f"config.objective.name='joint' uses view 0 with the report and SimCLR on views 1.., so it needs "
                     f"at least 3 views; config.augment.views has {num_views}")
  if not o.image_text_temperature > 0:
    raise ValueError(f"config.objective.image_text_temperature must be > 0, got {o.image_text_temperature!r}")
  if not 0.0 <= o.image_to_text_weight <= 1.0:
    raise ValueError(f"config.objective.image_to_text_weight (ConVIRT's lambda) must be in [0, 1], got "
                     f"{o.image_to_text_weight!r}")
  if o.image_ssl_weight < 0:
    raise ValueError(f"config.objective.image_ssl_weight must be >= 0, got {o.image_ssl_weight!r}")
  for k, lo in (("vocab_size", 16), ("min_frequency", 1), ("max_length", 2), ("width", 1), ("depth", 1), ("heads", 1)):
    if not isinstance(t[k], int) or t[k] < lo:
      raise ValueError(f"config.text.{k} must be an integer >= {lo}, got {t[k]!r}")
  if t.width % t.heads:
    raise ValueError(f"config.text.width={t.width} must be divisible by config.text.heads={t.heads}")
  if not t.key:
    raise ValueError("config.text.key must name the dataset's report feature (e.g. 'report'), got ''")


POOL_KEYS = ("builder", "split", "builder_config", "data_dir", "manual_dir")
TRANSFER_TARGET_KEYS = ("name", "builder", "builder_config", "data_dir", "manual_dir", "train_split", "val_split",
                        "test_split", "image_size", "fit", "ordinal")
SEGMENTATION_ENCODERS = ("pretrained", "random", "init_checkpoint", "pseudo_labeller")


def _check_dicts(entries, *, where: str, required, allowed, builders):
  if isinstance(entries, (str, Mapping)) or not isinstance(entries, (tuple, list)):
    raise ValueError(f"{where} must be a tuple of dicts, got {entries!r}")
  for i, e in enumerate(entries):
    if not isinstance(e, Mapping):
      raise ValueError(f"{where}[{i}] must be a dict with keys {list(allowed)}, got {e!r}")
    unknown = sorted(set(e) - set(allowed))
    missing = [k for k in required if not e.get(k)]
    if unknown or missing:
      raise ValueError(f"{where}[{i}]: " + (f"unknown key(s) {unknown}" if unknown else f"missing {missing}") +
                       f"; valid keys: {list(allowed)} (required: {list(required)})")
    _check_choice(e["builder"], sorted(builders), f"{where}[{i}].builder")


def _check_swcl(config):
  """The swcl section (SWCL stages 1-3) and objective.swcl_scheme."""
  from medssl_jax.data import pipeline

  s = config.swcl
  _check_choice(s.labelled.builder, sorted(pipeline.BUILDERS), "config.swcl.labelled.builder")
  _check_dicts(s.pool, where="config.swcl.pool", required=("builder", "split"), allowed=POOL_KEYS,
               builders=pipeline.BUILDERS)
  if config.mode in ("pseudo_label", "propagate", "swcl") and not s.pool:
    raise ValueError(f"config.mode={config.mode!r} needs an unlabelled pool: config.swcl.pool is empty")
  _check_choice(s.fit, pipeline.FITS, "config.swcl.fit")
  for k in ("image_size", "patch_size", "classifier_image_size", "steps", "batch_size"):
    if not isinstance(s[k], int) or s[k] <= 0:
      raise ValueError(f"config.swcl.{k} must be a positive integer, got {s[k]!r}")
  if s.patch_size > s.image_size:
    raise ValueError(f"config.swcl.patch_size={s.patch_size} is larger than config.swcl.image_size={s.image_size}")
  if not isinstance(s.unlabelled_ratio, int) or s.unlabelled_ratio < 0:
    raise ValueError(f"config.swcl.unlabelled_ratio must be an integer >= 0, got {s.unlabelled_ratio!r}")
  for k in ("confidence_threshold", "abnormality_threshold", "pseudo_label_threshold"):
    if not 0.0 <= s[k] <= 1.0:
      raise ValueError(f"config.swcl.{k} must lie in [0, 1], got {s[k]!r}")
  if config.objective.name == "swcl":
    from medssl_jax.objectives import swcl as swcl_objective
    swcl_objective.check_scheme(config.objective.swcl_scheme)


def _check_transfer(config):
  """The transfer (classification targets) and segmentation sections."""
  from medssl_jax.data import pipeline

  targets = config.transfer.targets
  _check_dicts(targets, where="config.transfer.targets", required=("name", "builder"),
               allowed=TRANSFER_TARGET_KEYS, builders=pipeline.BUILDERS)
  names = [t["name"] for t in targets]
  for n in names:
    if not isinstance(n, str) or not n.replace("_", "").replace("-", "").isalnum():
      raise ValueError(f"config.transfer.targets: name {n!r} must be letters, digits, '-' or '_' (a folder name)")
  if len(set(names)) != len(names):
    raise ValueError(f"config.transfer.targets: names must be distinct, got {names}")
  if config.mode == "transfer" and not targets:
    raise ValueError("config.mode='transfer' needs config.transfer.targets (a tuple of dataset dicts)")
  g = config.segmentation
  _check_choice(g.builder, sorted(pipeline.BUILDERS), "config.segmentation.builder")
  enc = g.encoders
  if isinstance(enc, str) or not isinstance(enc, (tuple, list)) or len(set(enc)) != len(enc):
    raise ValueError(f"config.segmentation.encoders must be a tuple of distinct names from "
                     f"{list(SEGMENTATION_ENCODERS)}, got {enc!r}")
  for e in enc:
    _check_choice(e, SEGMENTATION_ENCODERS, "config.segmentation.encoders[...]")
  if "init_checkpoint" in enc and not config.model.init_checkpoint:
    raise ValueError("config.segmentation.encoders has 'init_checkpoint' but config.model.init_checkpoint is empty")
  if config.mode in ("segmentation",) and not enc:
    raise ValueError("config.mode='segmentation' needs config.segmentation.encoders")
  if enc and config.mode in ("segmentation", "swcl") and config.model.encoder not in ("resnet18", "resnet50"):
    raise ValueError(f"segmentation transfer puts a U-Net decoder on a ResNet; config.model.encoder="
                     f"{config.model.encoder!r} is not one")
  for k in ("patch_size", "steps", "batch_size"):
    if not isinstance(g[k], int) or g[k] <= 0:
      raise ValueError(f"config.segmentation.{k} must be a positive integer, got {g[k]!r}")
  if not isinstance(g.image_size, int) or g.image_size < 0:
    raise ValueError(f"config.segmentation.image_size must be an integer >= 0 (0 = native), got {g.image_size!r}")
  seeds = g.seeds
  if isinstance(seeds, (str, int)) or not seeds or not all(isinstance(x, int) for x in seeds):
    raise ValueError(f"config.segmentation.seeds must be a non-empty tuple of integers, got {seeds!r}")
  if g.backbone_lr_scale < 0:
    raise ValueError(f"config.segmentation.backbone_lr_scale must be >= 0 (0 = frozen), got {g.backbone_lr_scale!r}")
  if not isinstance(g.fov, str) or not g.fov:
    raise ValueError(f"config.segmentation.fov must be 'auto', 'none' or a mask feature name, got {g.fov!r}")
  if g.mask_mode not in ("binary", "classes"):
    raise ValueError(f"config.segmentation.mask_mode={g.mask_mode!r} is not known; valid choices: 'binary' "
                     f"(mask > 0 = foreground) or 'classes' (mask values are class ids 0..K-1)")


def _check_ood(config):
  """The ood section: target keys, builder names and label-map shape (class names are checked at run time,
  against the datasets, by medssl_jax.evals.ood.evaluate_targets)."""
  from medssl_jax.data import pipeline
  from medssl_jax.evals import ood as ood_lib

  ood_lib.validate_targets(config.ood.targets, builders=pipeline.BUILDERS)


def _check_particles(config):
  """The particles section (mode "particles"); the holdout class name is checked against the dataset at run time."""
  p = config.particles
  if not isinstance(p.holdout_class, str):
    raise ValueError(f"config.particles.holdout_class must be a class name or '' (none), got {p.holdout_class!r}")
  for k, lo in (("shots", 1), ("shot_seeds", 0)):
    v = p[k]
    if (isinstance(v, (str, int)) or not isinstance(v, (tuple, list)) or not v
        or not all(isinstance(x, int) and not isinstance(x, bool) and x >= lo for x in v)):
      raise ValueError(f"config.particles.{k} must be a non-empty tuple of integers >= {lo}, got {v!r}")
  if not isinstance(p.knn_k, int) or p.knn_k < 1:
    raise ValueError(f"config.particles.knn_k must be a positive integer, got {p.knn_k!r}")
  if not isinstance(p.max_examples, int) or p.max_examples < 0:
    raise ValueError(f"config.particles.max_examples must be an integer >= 0 (0 = all), got {p.max_examples!r}")
  _check_choice(p.embedding_method, ("tsne", "pca", "none"), "config.particles.embedding_method")
  methods = p.novelty_methods
  if isinstance(methods, str) or not isinstance(methods, (tuple, list)) or len(set(methods)) != len(methods) \
      or any(m not in NOVELTY_METHODS for m in methods):
    raise ValueError(f"config.particles.novelty_methods must be a tuple of distinct names from {list(NOVELTY_METHODS)} "
                     f"(() = none), got {methods!r}")


def _check_curriculum(config):
  """The curriculum section: stage dicts, override keys (medssl_jax/train/curriculum.py checks them)."""
  from medssl_jax.train import curriculum  # Local import: it imports jax.

  curriculum.check_stages(config)


ANALYSIS_ATTENTION = ("auto", "grad_cam", "label_free", "activation_norm", "grad_feature_norm", "rollout", "none")


def _check_analysis(config):
  """The analysis section (mode "analyze"): choices, counts, and layer names of this model."""
  from medssl_jax import models  # Local import: the registries import jax.
  from medssl_jax.evals import representation

  a = config.analysis
  _check_choice(a.embedding_method, ("tsne", "pca", "none"), "config.analysis.embedding_method")
  _check_choice(a.nc_weighting, representation.WEIGHTINGS, "config.analysis.nc_weighting")
  _check_choice(a.attention, ANALYSIS_ATTENTION, "config.analysis.attention")
  _check_choice(a.cam_target, ("label", "predicted"), "config.analysis.cam_target")
  _check_choice(a.derived_mask, ("", "lung_intensity"), "config.analysis.derived_mask")
  if a.derived_mask and a.mask_key:
    raise ValueError(f"config.analysis.mask_key={a.mask_key!r} and derived_mask={a.derived_mask!r} both name the mask "
                     "attention is measured in; set one of them")
  if a.derived_mask and a.attention == "none":
    raise ValueError(f"config.analysis.derived_mask={a.derived_mask!r} measures attention inside a mask, but "
                     "config.analysis.attention='none' computes no maps; set attention (e.g. 'auto')")
  for k in ("max_examples", "num_attention_images"):
    if not isinstance(a[k], int) or a[k] < 0:
      raise ValueError(f"config.analysis.{k} must be an integer >= 0, got {a[k]!r}")
  if not a.label_key:
    raise ValueError("config.analysis.label_key must name the dataset's class feature (e.g. 'label'), got ''")
  if a.mask_key and a.attention == "none":
    raise ValueError(f"config.analysis.mask_key={a.mask_key!r} measures attention inside a mask, but "
                     "config.analysis.attention='none' computes no maps; set attention (e.g. 'auto') or clear mask_key")
  layers = a.layers
  if isinstance(layers, str) or not isinstance(layers, (tuple, list)) or not all(isinstance(l, str) for l in layers):
    raise ValueError(f"config.analysis.layers must be a tuple of layer names (() = all), got {layers!r}")
  if len(set(layers)) != len(layers):
    raise ValueError(f"config.analysis.layers lists a layer twice: {tuple(layers)!r}")
  if config.mode == "analyze":
    vit = config.model.encoder not in ("resnet18", "resnet50")  # The ViTs (MAE's encoder is one).
    if vit and a.attention in ("grad_cam", "label_free", "activation_norm", "grad_feature_norm"):
      raise ValueError(f"config.analysis.attention={a.attention!r} needs a ResNet; {config.model.encoder} is a ViT: "
                       "use 'rollout' (or 'auto')")
    if not vit and a.attention == "rollout":
      raise ValueError(f"config.analysis.attention='rollout' needs a ViT; {config.model.encoder} is a ResNet: use "
                       "'grad_cam', 'label_free' (or 'auto')")
    if layers:
      valid = representation.available_layers(models.build_model(config))
      unknown = [l for l in layers if l not in valid]
      if unknown:
        raise ValueError(f"config.analysis.layers: unknown layer(s) {unknown} for {config.model.encoder} with the "
                         f"{config.objective.name!r} heads; valid layers: {valid}")


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
