"""Transfer of a pretrained encoder to other datasets: mode "transfer" (classification targets, each evaluated
with config.eval's protocol; section `transfer`) and mode "segmentation" (a U-Net decoder on the encoder,
medssl_jax/evals/segmentation.py; section `segmentation`). Results in <workdir>/transfer/<name>/ and
<workdir>/segmentation/; finished work is read back, not recomputed.
"""
from __future__ import annotations

import json
import os

import ml_collections

from medssl_jax import config as config_lib
from medssl_jax.augment import views as views_lib
from medssl_jax.data import pipeline
from medssl_jax.evals import attention
from medssl_jax.evals import segmentation as segmentation_lib
from medssl_jax.protocols import encoders as encoders_lib
from medssl_jax.protocols import probe as probe_lib

TRANSFER_TARGET_KEYS = ("name", "builder", "builder_config", "data_dir", "manual_dir", "train_split", "val_split",
                        "test_split", "image_size", "fit", "ordinal")


def transfer_section() -> ml_collections.ConfigDict:
  """The `transfer` section (mode "transfer"): each of `targets` evaluated with config.eval's protocol on the
  pretrained encoder (and random init). `targets`: a tuple of dicts {name, builder, optional builder_config,
  data_dir, manual_dir, train_split, val_split, test_split, image_size, fit, ordinal}; results in
  <workdir>/transfer/<name>/."""
  c = ml_collections.ConfigDict()
  c.targets = ()
  return c


def segmentation_section() -> ml_collections.ConfigDict:
  """The `segmentation` section (mode "segmentation", medssl_jax/evals/segmentation.py): a U-Net decoder on the
  encoder's backbone, trained on random patches of the training images, scored on whole test images (Dice / F1,
  pixel AUROC, accuracy, sensitivity, specificity, pooled over the field of view)."""
  c = ml_collections.ConfigDict()
  c.builder = "chase_db1"
  c.builder_config = "original"
  c.data_dir = ""
  c.manual_dir = ""
  c.train_split = "train"
  c.test_split = "test"
  c.mask_key = "mask"      # The target map feature (vessels: 1, background: 0).
  # "binary": mask > 0 is foreground (one sigmoid output, e.g. vessels); "classes": mask values are class ids
  # 0..K-1 (0 = background, K = the training masks' largest id + 1; e.g. REFUGE 1 disc rim, 2 cup): softmax.
  c.mask_mode = "binary"
  # Field of view the metrics are pooled over: a mask feature (HRF/DRIVE "fov_mask"), "auto" (pixels whose
  # image is not near-black: CHASE_DB1 ships no FOV masks) or "none" (every pixel).
  c.fov = "auto"
  c.image_size = 0         # 0 = native resolution; else squared by data.fit and resized.
  c.patch_size = 128       # Training crops (pixels); test images are segmented whole.
  c.steps = 2000
  c.batch_size = 16
  c.learning_rate = 1e-3   # AdamW, cosine decay; the backbone at lr x backbone_lr_scale.
  c.weight_decay = 1e-4
  c.backbone_lr_scale = 1.0
  c.decoder_widths = ()    # () = each decoder block as wide as the skip it merges.
  c.augment = True         # Flips, 90-degree rotations, brightness/contrast jitter.
  c.threshold = 0.5        # Probability above which a pixel is predicted vessel (Dice, accuracy).
  # Encoders compared: "pretrained" (the workdir's checkpoint), "random" (random init, trained end to end),
  # "init_checkpoint" (model.init_checkpoint, e.g. ImageNet weights), "pseudo_labeller" (SWCL stage 1's
  # backbone: supervised cross-entropy + FixMatch, the supervised-pretraining baseline).
  c.encoders = ("pretrained", "random")
  c.seeds = (0,)           # Decoder init / patch sampling seeds; results are mean +- std.
  return c


def check(config):
  """The transfer (classification targets) and segmentation sections."""
  targets = config.transfer.targets
  config_lib.check_dicts(targets, where="config.transfer.targets", required=("name", "builder"),
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
  config_lib.check_choice(g.builder, sorted(pipeline.BUILDERS), "config.segmentation.builder")
  enc = g.encoders
  if isinstance(enc, str) or not isinstance(enc, (tuple, list)) or len(set(enc)) != len(enc):
    raise ValueError(f"config.segmentation.encoders must be a tuple of distinct names from "
                     f"{list(encoders_lib.names())}, got {enc!r}")
  for e in enc:
    config_lib.check_choice(e, encoders_lib.names(), "config.segmentation.encoders[...]")
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


config_lib.register_section("transfer", transfer_section)
config_lib.register_section("segmentation", segmentation_section)


def _target_config(config, target: dict):
  """A copy of config whose data section (and probe input size) is one transfer target's."""
  cfg = config.copy_and_resolve_references()
  defaults = config_lib.base_config().data
  with cfg.unlocked():
    # The target's own dataset: unnamed fields take the schema defaults, not the pretraining data's values.
    for k in ("builder", "builder_config", "data_dir", "manual_dir", "train_split", "val_split", "test_split",
              "fit"):
      cfg.data[k] = target.get(k, defaults[k])
    if target.get("image_size"):
      cfg.data.image_size = int(target["image_size"])
      # The probe encodes images at views[0]'s size.
      cfg.augment.views = [views_lib.default_view(**dict(v, crop_size=int(target["image_size"])))
                           for v in cfg.augment.views]
    if "ordinal" in target:
      cfg.eval.ordinal = bool(target["ordinal"])
  return cfg


def transfer(config, workdir: str, *, mesh=None) -> dict:
  """mode "transfer": each of config.transfer.targets evaluated with config.eval's protocol on the pretrained
  encoder of `workdir` (and a random one when eval.compare_random_init, the imported one when
  model.init_checkpoint is set, and any registered encoder the workdir holds, e.g. SWCL's pseudo-labeller). Results per
  target in <workdir>/transfer/<name>/; encoders already evaluated there are read back, not recomputed.
  Returns {target name: {encoder: metrics}}."""
  names = ["pretrained"] + (["random"] if config.eval.compare_random_init else [])
  if config.model.init_checkpoint:
    names.append("init_checkpoint")
  names += encoders_lib.present(workdir)  # E.g. an SWCL workdir's pseudo-labeller.
  encoders = None
  out = {}
  for target in config.transfer.targets:
    cfg = _target_config(config, target)
    tdir = os.path.join(workdir, "transfer", target["name"])
    path = os.path.join(tdir, probe_lib.results_name(cfg) + ".json")
    done = {}
    if os.path.exists(path):
      with open(path) as f:
        done = json.load(f)
    encoders = encoders or encoders_lib.transfer_encoders(config, workdir, names)
    todo = {k: v for k, v in encoders.items() if k not in done}
    if not todo:
      out[target["name"]] = done
      print(f"transfer [{target['name']}]: results already in {path}", flush=True)
      continue
    os.makedirs(tdir, exist_ok=True)
    builder = pipeline.open_data(cfg.data)
    print(f"transfer [{target['name']}]: {pipeline.dataset_name(builder)}, {cfg.eval.protocol}: {', '.join(todo)}", flush=True)
    results = dict(done, **probe_lib.probe(cfg, todo, builder=builder, mesh=mesh, workdir=tdir))
    table = probe_lib.format_table(results, config=cfg)
    print("\n" + table + "\n", flush=True)
    probe_lib.write_results(tdir, results, table, probe_lib.results_name(cfg))
    out[target["name"]] = results
  return out


def segmentation(config, workdir: str, *, mesh=None) -> dict:
  """mode "segmentation": a U-Net decoder on each encoder of config.segmentation.encoders, trained and scored
  on config.segmentation's dataset (medssl_jax/evals/segmentation.py); results in <workdir>/segmentation/."""
  encoders = {}
  for name, (model, variables, _) in encoders_lib.transfer_encoders(config, workdir, config.segmentation.encoders).items():
    # The U-Net takes the bare backbone module (its padding as the encoder was built) and its variables.
    encoders[name] = (model.backbone, attention.backbone_variables(variables))
  return segmentation_lib.run(config, workdir, encoders=encoders, mesh=mesh)


MODES = {"transfer": transfer, "segmentation": segmentation}
