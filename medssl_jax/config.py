"""The config schema: the core sections, the registry of the sections modes and projects own, and
validation of the core sections with clear errors.

`base_config()` holds the core sections every run reads (data, model, objective, text, augment, train,
distributed, eval). A mode or project that needs settings of its own owns a section: it calls
`register_section(name, defaults)` next to its code and checks the section itself.
`medssl_jax.experiment.default_config()` (core + every registered section) is where experiment files in
configs/ start; a key that is not in the schema (a typo) or a name that is not registered fails with the
valid choices listed.
"""
from __future__ import annotations

import difflib
import functools
import importlib.util
import json
import os
import pathlib
from typing import Callable, Mapping, Sequence

import ml_collections

from medssl_jax import models
from medssl_jax import objectives
from medssl_jax.augment import views as views_lib
from medssl_jax.data import masks as masks_lib
from medssl_jax.data import pipeline
from medssl_jax.data import subsets
from medssl_jax.models import inflate
from medssl_jax.objectives import swcl as swcl_objective

EVAL_PROTOCOLS = ("linear_probe", "knn", "finetune", "fewshot")
CORE_SECTIONS = ("data", "model", "objective", "text", "augment", "train", "distributed", "eval")

_SECTIONS: dict[str, Callable[[], ml_collections.ConfigDict]] = {}

# Keys that moved: {old dotted key: new dotted key}. An old key fails naming its new one wherever it is set (a
# config file, a --config.* override, a table's grid or overrides, a curriculum stage), and `migrate` moves
# them in configs saved before (a workdir's config.json), so those workdirs still resume. One old key set
# two objectives' sizes: it names both new keys (each under its objective's sub-section).
RENAMED = {
    "objective.queue_size": "objective.moco_v2.queue_size",
    "objective.barlow_lambda": "objective.barlow_twins.off_diagonal_weight",
    "objective.vicreg_sim": "objective.vicreg.sim_weight",
    "objective.vicreg_std": "objective.vicreg.std_weight",
    "objective.vicreg_cov": "objective.vicreg.cov_weight",
    "objective.num_prototypes": ("objective.swav.num_prototypes", "objective.dino.out_dim"),
    "objective.sinkhorn_iters": "objective.swav.sinkhorn_iters",
    "objective.sinkhorn_epsilon": "objective.swav.sinkhorn_epsilon",
    "objective.teacher_temperature": "objective.dino.teacher_temperature",
    "objective.teacher_temperature_start": "objective.dino.teacher_temperature_start",
    "objective.teacher_temperature_warmup_steps": "objective.dino.teacher_temperature_warmup_steps",
    "objective.center_momentum": "objective.dino.center_momentum",
    "objective.mask_ratio": "objective.mae.mask_ratio",
    "objective.norm_pix_loss": "objective.mae.norm_pix_loss",
    "objective.swcl_scheme": "objective.swcl.scheme",
    "swcl.abnormality_threshold": "objective.swcl.abnormality_threshold",
    "swcl.pseudo_label_threshold": "objective.swcl.pseudo_label_threshold",
    "objective.image_text_temperature": "objective.image_text.temperature",
    "objective.learn_temperature": "objective.image_text.learn_temperature",
    "objective.image_to_text_weight": "objective.image_text.image_to_text_weight",
    "objective.image_ssl_weight": "objective.image_text.image_ssl_weight",
}


def _new_keys(old: str) -> tuple[str, ...]:
  new = RENAMED[old]
  return (new,) if isinstance(new, str) else tuple(new)


def renamed_message(old: str) -> str:
  """'config.<old> was renamed: set config.<new>' for a key of RENAMED."""
  return f"config.{old} was renamed: set " + " or ".join(f"config.{k}" for k in _new_keys(old))


def check_renamed(dotted: str, where: str = ""):
  """Raises a ValueError naming the new key when `dotted` (e.g. 'objective.vicreg_sim') was renamed."""
  if dotted in RENAMED:
    raise ValueError(f"{where}: {renamed_message(dotted)}" if where else renamed_message(dotted))


def renamed_in_args(argv, flag: str = "config") -> list[str]:
  """renamed_message of every renamed key that a command line overrides (`--config.<old>=v`, `--config.<old> v`,
  `--noconfig.<old>`)."""
  out = []
  for arg in argv:
    name = arg.lstrip("-").split("=", 1)[0]
    for prefix in (f"{flag}.", f"no{flag}."):
      if arg.startswith("-") and name.startswith(prefix) and name[len(prefix):] in RENAMED:
        out.append(renamed_message(name[len(prefix):]))
  return out


def override_problem(argv, flag: str = "config") -> str | None:
  """What is wrong with the first `--<flag>.a.b=v` override of argv whose key the experiment schema lacks (with the
  closest valid key), or None when every overridden key exists."""
  schema = default_config()
  for arg in argv:
    name = arg.lstrip("-").split("=", 1)[0]
    if not arg.startswith("-") or not name.startswith((f"{flag}.", f"no{flag}.")):
      continue
    dotted = name.split(".", 1)[1]
    node, path = schema, ""
    for part in dotted.split("."):
      if not isinstance(node, ml_collections.ConfigDict):
        return f"--{name}: config.{path.rstrip('.')} is a value, not a section"
      if part not in node:
        close = difflib.get_close_matches(part, list(node.keys()), n=1)
        hint = f" (did you mean --{flag}.{path}{close[0]}?)" if close else ""
        section = f"config.{path.rstrip('.')}" if path else "the config"
        return (f"--{name}: {section} has no key {part!r}{hint}; valid keys: {sorted(node.keys())} "
                "(medssl_jax/config.py lists them with what they do)")
      node, path = node[part], f"{path}{part}."
  return None


def migrate(saved: Mapping) -> dict:
  """A copy of a config saved as nested dicts (a workdir's config.json) with every RENAMED key under its new
  name. An old key with two new ones goes to the one under the saved objective's own sub-section (it only
  mattered there), or to both for other objectives."""
  out = json.loads(json.dumps(saved))
  name = (out.get("objective") or {}).get("name")
  for old in RENAMED:
    *path, leaf = old.split(".")
    node = out
    for p in path:
      node = node.get(p) if isinstance(node, dict) else None
    if not isinstance(node, dict) or leaf not in node:
      continue
    value = node.pop(leaf)
    targets = _new_keys(old)
    own = [k for k in targets if k.startswith(f"objective.{name}.")]
    for new in own or targets:
      *sections, key = new.split(".")
      node = out
      for section in sections:
        node = node.setdefault(section, {})
      node.setdefault(key, value)
  return out


def old_names(flat: Mapping) -> dict:
  """{dotted key: value} with every renamed key under its old name (when no other key holds that name): table
  rows and pretrainings are found by a hash of such a dict, so those written before a rename keep theirs."""
  inverse = {new: old for old in RENAMED for new in _new_keys(old)}
  out = {k: v for k, v in flat.items() if k not in inverse}
  for k in sorted(set(flat) & set(inverse)):
    out[inverse[k] if inverse[k] not in out else k] = flat[k]
  return out


def register_section(name: str, defaults: Callable[[], ml_collections.ConfigDict]):
  """Adds the config section `name` (its defaults: a function returning a ConfigDict) that a mode or
  project owns. Registering a name twice with another function is refused."""
  if name in CORE_SECTIONS or name in ("mode", "seed"):
    raise ValueError(f"config section {name!r} is a core section; a mode or project adds a section of its own")
  if _SECTIONS.get(name, defaults) is not defaults:
    raise ValueError(f"config section {name!r} is already registered by {_SECTIONS[name].__module__}")
  _SECTIONS[name] = defaults


def default_config() -> ml_collections.ConfigDict:
  """The core sections plus every registered section (`medssl_jax.experiment.default_config()` registers
  them all)."""
  c = base_config()
  for name, defaults in _SECTIONS.items():
    c[name] = defaults()
  return c


def base_config() -> ml_collections.ConfigDict:
  """Defaults of the core sections. Experiment configs change values, never add keys."""
  c = ml_collections.ConfigDict()
  c.mode = "pretrain_and_probe"
  c.seed = 0
  c.data = data_section()
  c.model = model_section()
  c.objective = objective_section()
  c.text = text_section()
  c.augment = augment_section()
  c.train = train_section()
  c.distributed = distributed_section()
  c.eval = eval_section()
  return c


def data_section() -> ml_collections.ConfigDict:
  c = pipeline.ref_section("synthetic_fundus")  # The dataset: builder, builder_config, data_dir, manual_dir.
  c.train_split = "train"
  c.val_split = "validation"       # Model selection for eval.protocol=finetune ("" = none: last step).
  c.test_split = "test"
  c.image_size = 64                # Host-side resize of decoded images (pixels).
  c.fit = "squash"                 # Non-square images: "squash", "pad" (black borders) or "center_crop".
  c.channels = 3
  c.mean = (0.5, 0.5, 0.5)         # Normalisation after augmentation.
  c.std = (0.5, 0.5, 0.5)
  c.worker_count = 0               # grain worker processes (0 = decode in the main process).
  # Pretrain on the records of train_split that a subset file lists (data/subsets.py format, sha256 checked), e.g.
  # one written by mode "select_data" (medssl_jax/projects/selection); "" = the whole split.
  c.train_subset_file = ""
  return c


def model_section() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.encoder = "resnet18"
  c.stem = "imagenet"              # "cifar" for 28-32 px inputs.
  c.width_multiplier = 1.0
  # ResNet 3x3 conv padding: "same" (flax SAME: a stride-2 conv on an even input pads (0, 1)), "torch" (symmetric,
  # as PyTorch ResNets), "auto": "torch" when init_checkpoint names converted weights, else "same".
  c.padding = "auto"
  c.conv_init = "he_fan_out"       # ResNet conv kernel init: "he_fan_out" or "torch_default" (models/resnet.py).
  c.projector_hidden_dims = (2048,)
  c.projector_dim = 128
  c.predictor_hidden_dims = (512,)  # BYOL / SimSiam / MoCo v3 predictor (output: projector_dim).
  c.compute_dtype = "float32"      # "bfloat16": encoder compute in bf16; losses and norms stay float32.
  c.patch_size = 4                 # ViT patch size (4 for 28-32 px, 8 for 64 px, 16 for 224 px).
  c.position_embedding = "learned"  # ViT (and MAE decoder): "learned", or "sincos" (MAE's fixed sin-cos).
  # ViT input ranks: () = the encoder's (2 for vit_*, 3 for vit_*_3d, which take volumes); (2, 3) = one
  # transformer with a patch embedding for images and one for volumes (models.vit_input_dims).
  c.vit_input_dims = ()
  c.decoder_dim = 128              # MAE decoder width, depth and heads.
  c.decoder_depth = 2
  c.decoder_heads = 4
  # Weights the encoder starts from instead of a random init (transfer stages and baselines): "" = random;
  # a torchvision / timm ResNet state dict (.pth/.pt/.bin, .safetensors) converted by
  # medssl_jax/models/convert_torch.py, or an .npz written by its export.
  c.init_checkpoint = ""
  # 3D encoders: a 2D pretraining workdir whose ResNet backbone (same depth, stem and width) is inflated into
  # this 3D one (models/inflate.py) for mode "inflate_and_probe"; "" = none. Method: "i3d" or "acs".
  c.inflate_from = ""
  c.inflate_method = "i3d"
  return c


def objective_section() -> ml_collections.ConfigDict:
  """Keys several objectives share stay flat; each objective's own keys live in a sub-section named after it."""
  c = ml_collections.ConfigDict()
  c.name = "simclr"
  c.temperature = 0.1              # Contrastive / student softmax temperature.
  # EMA teacher (BYOL, MoCo, DINO, ReLIC): momentum rises from `momentum` to `momentum_final` (cosine).
  c.momentum = 0.996
  c.momentum_final = 1.0
  c.num_global_views = 2           # Multi-crop: leading full-size views (teacher / assignments).
  c.moco_v2 = ml_collections.ConfigDict()
  c.moco_v2.queue_size = 4096      # Negatives (a multiple of the global batch size).
  c.barlow_twins = ml_collections.ConfigDict()
  c.barlow_twins.off_diagonal_weight = 0.0051  # The paper's lambda.
  c.vicreg = ml_collections.ConfigDict()
  c.vicreg.sim_weight = 25.0       # Invariance / variance / covariance weights (the paper's lambda, mu, nu).
  c.vicreg.std_weight = 25.0
  c.vicreg.cov_weight = 1.0
  c.relic = ml_collections.ConfigDict()
  c.relic.invariance_weight = 1.0  # The paper's alpha: weight of the KL invariance penalty.
  c.swav = ml_collections.ConfigDict()
  c.swav.num_prototypes = 256
  c.swav.sinkhorn_iters = 3        # Sinkhorn-Knopp iterations and epsilon.
  c.swav.sinkhorn_epsilon = 0.05
  c.dino = ml_collections.ConfigDict()
  c.dino.out_dim = 256             # Head output dimension (the prototypes).
  c.dino.teacher_temperature = 0.04  # Final teacher temperature, warmed up from
  c.dino.teacher_temperature_start = 0.04  # this start over `..._warmup_steps` steps.
  c.dino.teacher_temperature_warmup_steps = 0
  c.dino.center_momentum = 0.9     # Centre EMA.
  c.mae = ml_collections.ConfigDict()
  c.mae.mask_ratio = 0.75          # Fraction of patches masked.
  c.mae.norm_pix_loss = True       # Per-patch normalised pixel targets.
  # SWCL (medssl_jax/objectives/swcl.py): which semi-weak labels make two patches positives. ("pair",) = only
  # the two views of one patch (SimCLR on patches); otherwise patches are positives when they agree on every
  # named key: "patient", "position", "abnormality" (thresholded), and "pseudo_label" (multi-label: positive
  # weight = Jaccard overlap of the thresholded pseudo-labels).
  c.swcl = ml_collections.ConfigDict()
  c.swcl.scheme = ("patient", "position", "abnormality")
  c.swcl.abnormality_threshold = 0.5   # A patch is abnormal when its score exceeds this.
  c.swcl.pseudo_label_threshold = 0.5  # Multi-label pseudo-labels: probability above which a class is on.
  # Image-text objectives ("clip", "convirt", "joint"; medssl_jax/objectives/image_text.py): the initial
  # temperature t (logits = cosine / t), learnable as CLIP's logit scale when learn_temperature (clamped
  # at t >= 0.01); ConVIRT's image->text weight lambda; for "joint" (SLIP-style) the image-text loss on view
  # 0 plus image_ssl_weight x SimCLR on views 1.. (at least two more views).
  c.image_text = ml_collections.ConfigDict()
  c.image_text.temperature = 0.1
  c.image_text.learn_temperature = True
  c.image_text.image_to_text_weight = 0.75
  c.image_text.image_ssl_weight = 1.0
  return c


def text_section() -> ml_collections.ConfigDict:
  """Report text for image-text objectives (medssl_jax/text/, models/text.py): the dataset's text feature, a
  WordPiece tokenizer trained on data.train_split's reports (saved as <workdir>/tokenizer.json and reused), and
  the text transformer. Image and text projections both map to model.projector_dim."""
  c = ml_collections.ConfigDict()
  c.key = "report"                 # Text feature of the dataset (e.g. "report", "impression").
  c.vocab_size = 2000              # Tokenizer vocabulary size (at most; fewer if the corpus is small).
  # A vocabulary to use instead of training one: a BERT vocab.txt (e.g. a clinical BERT's) or a tokenizers
  # tokenizer.json; vocab_size must then be at least its size.
  c.vocab_file = ""
  c.min_frequency = 2              # WordPiece merges need at least this many occurrences.
  c.max_length = 64                # Tokens per report incl. [CLS] / [SEP]; longer reports are truncated.
  # Train on one sentence of each report, drawn anew every epoch (ConVIRT's text view) instead of the whole
  # report; evaluation (retrieval) always reads whole reports.
  c.sample_sentences = False
  c.width = 128                    # Text transformer width, depth and heads.
  c.depth = 2
  c.heads = 4
  return c


def foreground_spec(config):
  """pipeline.make_train_iterator's `foreground`, ('feature', key) or ('derived', masks.Derived(name)), when a
  view of config.augment replaces backgrounds, else None (no masks are read)."""
  a = config.augment
  if not any(views_lib.uses_background(v) for v in a.views):
    return None
  return ("feature", a.mask_key) if a.mask_key else ("derived", masks_lib.Derived(a.derived_mask))


def _check_foreground(config, volumes: bool) -> None:
  a = config.augment
  if a.mask_key and a.derived_mask:
    raise ValueError(f"config.augment.mask_key={a.mask_key!r} and derived_mask={a.derived_mask!r} both name the "
                     "foreground mask; set one of them")
  if a.derived_mask:
    masks_lib.check_name(a.derived_mask, "config.augment.derived_mask")
    if volumes:
      masks_lib.check_volume_name(a.derived_mask, "config.augment.derived_mask")
  users = [i for i, v in enumerate(a.views) if views_lib.uses_background(v)]
  if users and not (a.mask_key or a.derived_mask):
    raise ValueError(f"config.augment.views[{users[0]}].background_p={a.views[users[0]].background_p} replaces "
                     "backgrounds, which needs foreground masks: set config.augment.mask_key (a mask feature of "
                     f"the dataset) or config.augment.derived_mask (one of {sorted(masks_lib.NAMES)})")


def augment_section() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.views = [views_lib.default_view(), views_lib.default_view()]
  # The foreground masks of background augmentation (views with background_p > 0): a mask feature of the
  # dataset (e.g. "fov_mask"), or a mask derived from each image (medssl_jax/data/masks.py: "fundus_fov",
  # "lung_intensity", "body_outline"; volumes: "body_outline"). At most one; read only when a view replaces
  # backgrounds.
  c.mask_key = ""
  c.derived_mask = ""
  return c


def train_section() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.batch_size = 256               # Global batch over all devices and hosts.
  c.num_steps = 1000
  c.optimizer = "lars"
  c.base_learning_rate = 0.3       # Scaled by batch_size / 256.
  c.warmup_steps = 100
  c.weight_decay = 1e-6
  c.grad_clip_norm = 0.0           # 0 = off.
  c.log_every = 50
  c.checkpoint_every = 500
  c.keep_checkpoints = 3
  # Guards (train/guard.py): a non-finite metric stops the run at once; the projection's spread (mean
  # per-dimension std of the l2-normalised projections x sqrt(dim): 1 spread out, 0 every image mapped to one
  # point) below collapse_threshold for collapse_patience consecutive steps after warmup stops it as collapsed.
  # No checkpoint is written while a step is non-finite or the spread is below the threshold, so the last good
  # one is kept. collapse_threshold 0 = off.
  c.collapse_threshold = 0.01
  c.collapse_patience = 100
  # Resuming a checkpoint written on another number of devices is refused (the run would go on, but not bit for
  # bit as the uninterrupted one); True resumes it anyway.
  c.allow_device_change = False
  return c


def distributed_section() -> ml_collections.ConfigDict:
  """Multi-host (train/distributed.py): jax.distributed.initialize before any device is touched. Empty / 0 / -1
  fall back to JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID, then to jax's detection of SLURM,
  Open MPI, Kubernetes and Cloud TPU pods (auto_detect); one process when none applies."""
  c = ml_collections.ConfigDict()
  c.coordinator_address = ""       # "host:port" of process 0.
  c.num_processes = 0
  c.process_id = -1
  c.local_device_ids = ()          # Devices of this process (e.g. one GPU per process); () = all.
  c.auto_detect = True
  c.initialization_timeout = 300   # Seconds to wait for every process to join.
  return c


def eval_section() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.protocol = "linear_probe"
  c.batch_size = 256
  c.l2_grid = (1e-4, 1e-3, 1e-2, 1e-1)
  c.max_iter = 200
  c.knn_k = 20                     # protocol "knn": weighted cosine kNN (Wu et al. 2018 / DINO).
  c.knn_temperature = 0.07
  c.knn_weighting = "exp"          # "exp" (weights exp(sim / T)) or "uniform".
  # protocol "fewshot": N-way K-shot episodes on frozen features (medssl_jax/evals/fewshot.py), support from the
  # (label subset of the) training split, queries from the test split; one result per shots x classifier.
  c.fewshot = ml_collections.ConfigDict()
  c.fewshot.n_way = 0              # Classes per episode (0: all of them).
  c.fewshot.shots = (1, 5)         # K: support examples per class.
  c.fewshot.n_query = 15           # Query examples per class and episode.
  c.fewshot.episodes = 200
  c.fewshot.classifiers = ("prototype", "logistic")
  # protocol "finetune": backbone + new head, AdamW with cosine decay, crop/flip augmentation,
  # checkpoint chosen by validation AUROC (medssl_jax/evals/finetune.py). backbone_lr_scale 0 = frozen.
  c.finetune_steps = 500
  c.finetune_batch_size = 64
  c.finetune_learning_rate = 1e-3
  c.finetune_weight_decay = 1e-4
  c.finetune_backbone_lr_scale = 1.0
  c.finetune_warmup_steps = 0
  c.finetune_eval_every = 0        # Validation every N steps (0 = the module's default).
  c.finetune_schedule = "cosine"   # Or "multistep": x0.1 at each of finetune_milestones (fractions).
  c.finetune_milestones = (0.5, 0.75)
  # A schedule in epochs of the training split (all of it, also under a label subset): finetune_epochs > 0 sets
  # finetune_steps = epochs x ceil(split size / finetune_batch_size) from the dataset opened at run time, and
  # finetune_eval_every_epoch sets finetune_eval_every to one epoch; so a config follows whatever dataset it runs on.
  c.finetune_epochs = 0
  c.finetune_eval_every_epoch = False
  c.finetune_augment = True        # Random resized crop (0.5, 1) + flip; False: resize only.
  # A diagnostic: also score the test split at every validation ("test_curve" in the results), e.g. to see what
  # the checkpoint selection costs. Never used for selection; the reported test metrics are unchanged.
  c.finetune_test_curve = False
  c.compare_random_init = True     # Also probe a randomly initialised encoder as the floor.
  # Where fine-tuned random inits' results are kept by settings and starting weights (protocol "finetune"; "" =
  # none): a supervised-from-scratch baseline whose settings and backbone weights match one kept there reuses its
  # result. The table runner sets <workdir>/finetune_cache, so the arms of a table train their shared baseline once.
  c.finetune_cache_dir = ""
  c.max_train_examples = 0         # 0 = the whole training split.
  # Low-label protocol: the labelled training records the probe may use ("" = all, "1%", "10%", "k=5"),
  # chosen stratified, seeded and patient-aware (medssl_jax/data/subsets.py) and written to
  # <workdir>/subsets/*.json with a sha256; or a subset file written by an earlier run (wins if set).
  c.train_subset = ""
  c.subset_seed = 0
  c.subset_file = ""
  # Where to cut (protocols linear_probe and knn; the "guillotine" comparison): the layers whose
  # frozen features are probed, named as medssl_jax.evals.representation.available_layers gives them for
  # the model, e.g. ("backbone", "projector/hidden1", "projector/out") or ResNet "stage1".."stage3".
  # The default probes the backbone output only, with the results keys and file names of before.
  c.feature_layers = ("backbone",)
  # Also neural-collapse measures (within- vs between-class variability, NC1/NC2, nearest class mean)
  # of each probed layer's train and test features, stored in the results per encoder and layer.
  c.neural_collapse = False
  # Metrics beside accuracy / AUROC (medssl_jax.evals.metrics.report): quadratic-weighted kappa for graded
  # labels (DR grade 0-4: RetinaMNIST, EyePACS, APTOS, ...), and percentile bootstrap intervals (test
  # examples resampled within each class; 0 = none) of AUROC, accuracy (and kappa).
  c.ordinal = False
  c.bootstrap_samples = 1000
  # Attention inside a mask, beside each frozen-feature result of the backbone: maps of the first
  # attention_images test images ("grad_cam": of the linear probe's classifier for the image's class; or a
  # label-free map, medssl_jax/evals/attention.py), and the fraction of each map inside the mask: a mask derived
  # from the images (medssl_jax/data/masks.py, e.g. "lung_intensity") or a mask feature of the dataset.
  c.attention_mask = ""
  c.attention_method = "grad_cam"
  c.attention_images = 256
  return c


def check_keys(config, schema, path=""):
  """Raises a ValueError naming the first key of config that schema lacks (with the closest valid key)."""
  for key in config.keys():
    if key not in schema:
      check_renamed(f"{path}{key}")
      close = difflib.get_close_matches(key, list(schema.keys()), n=1)
      hint = f" (did you mean config.{path}{close[0]}?)" if close else ""
      section = f"config.{path.rstrip('.')}" if path else "config"
      raise ValueError(f"Unknown config key config.{path}{key}{hint}; valid keys of {section}: "
                       f"{sorted(schema.keys())}")
    value, ref = config[key], schema[key]
    if isinstance(ref, ml_collections.ConfigDict):
      if not isinstance(value, (ml_collections.ConfigDict, Mapping)):
        raise ValueError(f"config.{path}{key} must be a section like the default, got {value!r}")
      check_keys(value, ref, f"{path}{key}.")


def check_choice(value, choices, name):
  """Raises a ValueError naming `name`, the value and the valid choices when value is not one of them."""
  if value not in choices:
    raise ValueError(f"{name}={value!r} is not known; valid choices: {list(choices)}")


def validate(config) -> ml_collections.ConfigDict:
  """Checks keys against the schema (`default_config()`) and the core sections' values against the
  registries; returns the config. `medssl_jax.experiment.validate` adds the mode and section checks."""
  check_keys(config, default_config())
  check_choice(config.model.encoder, models.ENCODERS, "config.model.encoder")
  check_choice(config.objective.name, sorted(objectives.OBJECTIVES), "config.objective.name")
  check_choice(config.eval.protocol, EVAL_PROTOCOLS, "config.eval.protocol")
  check_choice(config.eval.finetune_schedule, ("cosine", "multistep"), "config.eval.finetune_schedule")
  pipeline.check_ref(config.data, "config.data")
  check_choice(config.data.fit, pipeline.FITS, "config.data.fit")
  if config.eval.train_subset and not config.eval.subset_file:
    subsets.parse_spec(config.eval.train_subset)  # A typo fails before any work, with the accepted forms.
  if not config.augment.views:
    raise ValueError("config.augment.views is empty; a contrastive objective needs at least 2 views")
  sizes = set()
  volumes = models.takes_volumes(config)
  for i, view in enumerate(config.augment.views):
    try:
      views_lib.validate_view_for(view, volumes=volumes)
    except ValueError as e:
      raise ValueError(f"config.augment.views[{i}]: {e}") from None
    sizes.add(view["crop_size"])
  _check_foreground(config, volumes)
  objective = objectives.get_objective(config.objective.name)
  if len(sizes) != 1 and not objective.multi_crop:
    raise ValueError(f"config.augment.views have different crop sizes {sorted(sizes)}; only multi-crop "
                     f"objectives (swav, dino) encode views of several sizes, {objective.name!r} needs one")
  if objective.multi_crop and config.augment.views[0]["crop_size"] != max(sizes):
    raise ValueError("multi-crop: the first views must be the full-size (global) ones; "
                     f"config.augment.views[0].crop_size={config.augment.views[0]['crop_size']} < {max(sizes)}")
  check_choice(config.model.compute_dtype, ("float32", "bfloat16"), "config.model.compute_dtype")
  check_choice(config.model.inflate_method, inflate.METHODS, "config.model.inflate_method")
  if config.model.inflate_from and not volumes:
    raise ValueError(f"config.model.inflate_from={config.model.inflate_from!r} inflates a 2D encoder into a 3D one, "
                     f"but config.model.encoder={config.model.encoder!r} is 2D; use its 3D version (e.g. "
                     "'resnet18_3d') on volume data")
  if config.model.inflate_from and not config.model.encoder.startswith("resnet"):
    raise ValueError(f"config.model.inflate_from inflates 2D ResNet weights (models/inflate.py); "
                     f"config.model.encoder={config.model.encoder!r} is not a ResNet: use resnet18_3d / resnet50_3d")
  check_choice(config.model.position_embedding, ("learned", "sincos"), "config.model.position_embedding")
  models.vit_input_dims(config)
  if objective.text:
    _check_text(config, len(config.augment.views))
  if config.objective.name == "swcl":
    swcl_objective.check_scheme(config.objective.swcl.scheme)
  for k in ("abnormality_threshold", "pseudo_label_threshold"):
    if not 0.0 <= config.objective.swcl[k] <= 1.0:
      raise ValueError(f"config.objective.swcl.{k} must lie in [0, 1], got {config.objective.swcl[k]!r}")
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
  return config


def follow_image_size(config, loaded_image_size: int, overrides: Sequence[str] = ()) -> list[int]:
  """Derived sizes follow what they derive from: when an override changed config.data.image_size from
  `loaded_image_size` (the config file's value), each view whose crop size was that value takes the new one.

  A crop size that differed from the image size was chosen on purpose (multi-crop local views, crops of a
  larger image) and is kept, as are all views when `overrides` (the dotted keys overridden) set a view
  themselves. Returns the indices of the views changed. Runs before validation and before table rows are
  hashed, so a config whose image size is unchanged hashes as before.
  """
  new = config.data.image_size
  if new == loaded_image_size or any(k.startswith("augment.views") for k in overrides):
    return []
  validate = functools.partial(views_lib.validate_view_for, volumes=models.takes_volumes(config))
  views = [validate(v) for v in config.augment.views]
  changed = [i for i, v in enumerate(views) if v.crop_size == loaded_image_size]
  if changed:
    config.augment.views = [validate(dict(v.to_dict(), crop_size=new)) if i in changed else v
                            for i, v in enumerate(views)]
  return changed


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
  name, o, t = config.objective.name, config.objective.image_text, config.text
  if name in ("clip", "convirt") and num_views != 1:
    raise ValueError(f"config.objective.name={name!r} pairs one augmented image view with its report; "
                     f"config.augment.views has {num_views} (use one view)")
  if name == "joint" and num_views < 3:
    raise ValueError(f"config.objective.name='joint' uses view 0 with the report and SimCLR on views 1.., so it needs "
                     f"at least 3 views; config.augment.views has {num_views}")
  if not o.temperature > 0:
    raise ValueError(f"config.objective.image_text.temperature must be > 0, got {o.temperature!r}")
  if not 0.0 <= o.image_to_text_weight <= 1.0:
    raise ValueError(f"config.objective.image_text.image_to_text_weight (ConVIRT's lambda) must be in [0, 1], got "
                     f"{o.image_to_text_weight!r}")
  if o.image_ssl_weight < 0:
    raise ValueError(f"config.objective.image_text.image_ssl_weight must be >= 0, got {o.image_ssl_weight!r}")
  for k, lo in (("vocab_size", 16), ("min_frequency", 1), ("max_length", 2), ("width", 1), ("depth", 1), ("heads", 1)):
    if not isinstance(t[k], int) or t[k] < lo:
      raise ValueError(f"config.text.{k} must be an integer >= {lo}, got {t[k]!r}")
  if t.width % t.heads:
    raise ValueError(f"config.text.width={t.width} must be divisible by config.text.heads={t.heads}")
  if not t.key:
    raise ValueError("config.text.key must name the dataset's report feature (e.g. 'report'), got ''")
  if t.vocab_file and not os.path.isfile(t.vocab_file):
    raise ValueError(f"config.text.vocab_file={t.vocab_file!r} does not exist; give a BERT vocab.txt or a tokenizers "
                     "tokenizer.json, or '' to train a vocabulary on the reports")


# ---------------------------------------------------------------------------------------------------
# Config files: found by path or by the name of a shipped config, loaded as `--config` loads them.

class UnknownVariant(ValueError):
  """A `--config=file.py:<variant>` the file does not define; `valid` lists what it accepts."""
  valid: list = []


def unknown_variant(variant: str, valid: Sequence[str], *, what: str = "config variant",
                    rest: str = "") -> UnknownVariant:
  """The UnknownVariant a config raises for `variant`, naming the valid ones."""
  e = UnknownVariant(f"Unknown {what} {variant!r}; valid variants: {list(valid)}" + (f" {rest}" if rest else ""))
  e.valid = list(valid)
  return e


def with_variant(config, arg: str | None, variants: Mapping[str, Callable]) -> ml_collections.ConfigDict:
  """Applies the variant named by `--config=file.py:<arg>` (e.g. "quick") to a config.

  Raises UnknownVariant listing the valid variants for an unknown name.
  """
  arg = (arg or "").strip()
  if arg:
    if arg not in variants:
      raise unknown_variant(arg, sorted(variants), rest="(or none for the full run)")
    variants[arg](config)
  return config


def shipped_config_dir() -> pathlib.Path | None:
  """The folder of the configs that come with medssl_jax: the installed package's medssl_jax/configs, or the
  checkout's configs/ beside medssl_jax/."""
  spec = importlib.util.find_spec("medssl_jax.configs")
  if spec is not None and spec.submodule_search_locations:
    return pathlib.Path(next(iter(spec.submodule_search_locations)))
  checkout = pathlib.Path(__file__).resolve().parents[1] / "configs"
  return checkout if (checkout / "demo_simclr.py").is_file() else None


def shipped_configs() -> list[str]:
  """Names of the shipped configs (files in shipped_config_dir() not starting with '_')."""
  folder = shipped_config_dir()
  return sorted(p.stem for p in folder.glob("*.py") if not p.name.startswith("_")) if folder else []


def config_path(spec: str) -> str:
  """The file of a `--config` value without its variant: a path to a .py file, or the name of a shipped config
  ("demo_simclr" or "demo_simclr.py"). Raises FileNotFoundError in one line naming the choices."""
  if os.path.isfile(spec):
    return spec
  folder = shipped_config_dir()
  name = os.path.basename(spec)[:-3] if spec.endswith(".py") else spec
  if folder is not None and "/" not in spec.replace(os.sep, "/").removeprefix("configs/") and \
      (folder / f"{name}.py").is_file():
    return str(folder / f"{name}.py")
  close = difflib.get_close_matches(name, shipped_configs(), n=1)
  hint = f" (did you mean {close[0]!r}?)" if close else ""
  raise FileNotFoundError(f"config file {spec!r} does not exist{hint}; give the path of a config file or the name "
                          f"of a shipped config: {', '.join(shipped_configs())}")


def split_spec(spec: str) -> tuple[str, str | None]:
  """'file.py:variant' -> ('file.py', 'variant'); 'file.py' -> ('file.py', None)."""
  path, sep, arg = spec.rpartition(":")
  if not sep or "/" in arg or arg.endswith(".py"):
    return spec, None
  return path, arg


def sibling(file: str, name: str):
  """The module `name` (a shared recipe, e.g. "_fundus", or another config) from the folder of the config file
  `file` (the caller's __file__), loaded once. Configs use it instead of `import configs...`, so they work from a
  checkout, an installed package and a copied folder alike."""
  path = os.path.join(os.path.dirname(os.path.abspath(file)), f"{name}.py")
  if path not in _SIBLINGS:
    if not os.path.isfile(path):
      raise FileNotFoundError(f"{file} uses {name!r}, but {path} does not exist: keep the shared config files "
                              "(configs/_*.py) beside the configs that use them")
    module_spec = importlib.util.spec_from_file_location(f"medssl_config_{name}", path)
    module = importlib.util.module_from_spec(module_spec)
    _SIBLINGS[path] = module
    module_spec.loader.exec_module(module)
  return _SIBLINGS[path]


_SIBLINGS: dict = {}


def load_module(spec: str):
  """(module, variant) of a config spec 'path-or-name[:variant]': the config file executed as a module."""
  path, variant = split_spec(spec)
  path = config_path(path)
  module_spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module, variant


def load(spec: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """`get_config(arg)` of a config file, as `--config` loads it: `spec` is a path or a shipped config's name,
  optionally with ':variant' (e.g. "demo_simclr:quick"); `arg` overrides that variant."""
  module, variant = load_module(spec)
  return module.get_config(arg if arg is not None else variant)


def table_base_config(table) -> ml_collections.ConfigDict:
  """The first base experiment config of a table (`table.base_config`: one config spec or a tuple of them): what a
  table file's `get_config` returns, so that a table file is an experiment config too."""
  bases = table.base_config
  return load(bases if isinstance(bases, str) else bases[0])


def resolve_config_flag(argv: list[str], flag: str = "config") -> list[str]:
  """argv with the value of --<flag> made a file path (a shipped config's name becomes its file), for absl's
  config_flags, which read a path."""
  out = list(argv)
  for i, a in enumerate(out):
    if a.startswith(f"--{flag}="):
      value = a[len(flag) + 3:]
    elif a == f"--{flag}" and i + 1 < len(out):
      value = out[i + 1]
    else:
      continue
    path, variant = split_spec(value)
    resolved = config_path(path) + (f":{variant}" if variant is not None else "")
    if a == f"--{flag}":
      out[i + 1] = resolved
    else:
      out[i] = f"--{flag}=" + resolved
  return out


def variants_of(path: str) -> list[str] | None:
  """The variants a config file accepts (UnknownVariant.valid of a name it cannot know); None when it accepts any."""
  try:
    load(path, "\x00")
  except UnknownVariant as e:
    return e.valid
  except Exception:  # A config that cannot load here (e.g. its data is absent) lists no variants.
    return None
  return None
