"""mode "segmentation": a U-Net decoder on each encoder of config.segmentation.encoders (section `segmentation`),
trained on random patches of the training images and scored on whole test images (medssl_jax/evals/segmentation.py:
Dice / F1, pixel AUROC, accuracy, sensitivity, specificity pooled over the field of view), mean ± std over
`segmentation.seeds`. Results in <workdir>/segmentation/ (results.json, results.md, overlays); an encoder and seed
already scored with the same settings and backbone weights is read back, not recomputed.
"""
from __future__ import annotations

import hashlib
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from medssl_jax import config as config_lib
from medssl_jax import models
from medssl_jax import paths
from medssl_jax.data import pipeline
from medssl_jax.evals import attention
from medssl_jax.evals import metrics as metrics_lib
from medssl_jax.evals import results as results_lib
from medssl_jax.evals import segmentation_metrics
from medssl_jax.evals import segmentation as segmentation_lib
from medssl_jax.models.unet import UNet
from medssl_jax.protocols import encoders as encoders_lib
from medssl_jax.train import dry_parts
from medssl_jax.train import mesh as mesh_lib
from medssl_jax.train import reporting


def segmentation_section() -> ml_collections.ConfigDict:
  """The `segmentation` section (mode "segmentation", medssl_jax/evals/segmentation.py): a U-Net decoder on the
  encoder's backbone, trained on random patches of the training images, scored on whole test images (Dice / F1,
  pixel AUROC, accuracy, sensitivity, specificity, pooled over the field of view)."""
  c = pipeline.ref_section("chase_db1", "original")  # The dataset; "" data_dir = $TFDS_DATA_DIR.
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
  """The segmentation section."""
  g = config.segmentation
  pipeline.check_ref(g, "config.segmentation")
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


config_lib.register_section("segmentation", segmentation_section)


def _slug(name: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)).strip("_") or "encoder"


def _variables_sha256(variables) -> str:
  h = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_leaves_with_path(variables):
    a = np.asarray(leaf)
    h.update(jax.tree_util.keystr(path).encode())
    h.update(str(a.dtype).encode() + str(a.shape).encode())
    h.update(np.ascontiguousarray(a).tobytes())
  return h.hexdigest()


def _summary(runs: list[dict], metrics=segmentation_lib.METRICS) -> dict:
  """{"mean": {metric: ...}, "std": {metric: sample std, nan for one seed}, "n": seeds} over finite values."""
  out = {"mean": {}, "std": {}, "n": len(runs)}
  for k in metrics:
    vals = [r[k] for r in runs if r.get(k) is not None and np.isfinite(r[k])]
    mean, std, _ = metrics_lib.mean_std(vals) if vals else (float("nan"), float("nan"), 0)
    out["mean"][k], out["std"][k] = mean, std
  return out


def _fmt(runs, key):
  vals = [r[key] for r in runs if r.get(key) is not None and np.isfinite(r[key])]
  return metrics_lib.format_mean_std(vals, digits=4) if vals else "n/a"


def _markdown(results: dict) -> str:
  if results.get("mask_mode", "binary") == "classes":
    return _markdown_classes(results)
  lines = [f"# Segmentation transfer: {results['dataset']}", "",
           "| encoder | Dice | AUROC | accuracy | sensitivity | specificity |", "|---|---|---|---|---|---|"]
  for name, enc in results["encoders"].items():
    runs = [enc["seeds"][str(s)] for s in results["seeds"] if str(s) in enc["seeds"]]
    lines.append(f"| {name} | " + " | ".join(_fmt(runs, k) for k in segmentation_lib.METRICS) + " |")
  lines += ["", "Mean ± sample std over seeds " + ", ".join(str(s) for s in results["seeds"]) + ".", "",
            f"Data: {results['dataset']}, train split '{results['train_split']}' ({results['num_train']} images), "
            f"test split '{results['test_split']}' ({results['num_test']} images, {results['test_image_shape']}), "
            f"target '{results['mask_key']}' (> 0 = foreground), image size "
            f"{results['image_size'] or 'native'}.", "",
            f"Field of view: {results['fov_convention']}", "", f"Protocol: {results['protocol']}", ""]
  return "\n".join(lines)


def _markdown_classes(results: dict) -> str:
  """results.md for mask_mode "classes": mean and per-class Dice / IoU / AUROC and cumulative-group Dice."""
  k = results["num_classes"]
  fg = range(1, k)
  cols = ([("dice", "mean Dice"), ("iou", "mean IoU"), ("auroc", "mean AUROC"), ("accuracy", "accuracy")]
          + [(f"dice_class_{c}", f"Dice {c}") for c in fg] + [(f"iou_class_{c}", f"IoU {c}") for c in fg]
          + [(f"dice_ge_{c}", f"Dice >= {c}") for c in fg])
  lines = [f"# Segmentation transfer: {results['dataset']}", "",
           "| encoder | " + " | ".join(label for _, label in cols) + " |", "|---" * (len(cols) + 1) + "|"]
  for name, enc in results["encoders"].items():
    runs = [enc["seeds"][str(s)] for s in results["seeds"] if str(s) in enc["seeds"]]
    lines.append(f"| {name} | " + " | ".join(_fmt(runs, key) for key, _ in cols) + " |")
  lines += ["", "Mean ± sample std over seeds " + ", ".join(str(s) for s in results["seeds"]) + ". "
            f"Classes 1..{k - 1} are the foreground ids of the mask (0 = background); 'Dice >= c' is the Dice of "
            "the union of classes >= c (REFUGE: >= 1 the whole optic disc, >= 2 the cup). Prediction: argmax.", "",
            f"Data: {results['dataset']}, train split '{results['train_split']}' ({results['num_train']} images), "
            f"test split '{results['test_split']}' ({results['num_test']} images, {results['test_image_shape']}), "
            f"target '{results['mask_key']}' (class ids 0..{k - 1}), image size {results['image_size'] or 'native'}.",
            "", f"Field of view: {results['fov_convention']}", "", f"Protocol: {results['protocol']}", ""]
  return "\n".join(lines)


def _fov_convention(fov: str) -> str:
  if fov == "auto":
    return (f"'auto': pixels whose brightest channel > {segmentation_lib.AUTO_FOV_THRESHOLD}/255, largest connected "
            f"component, holes filled (no official FOV masks); metrics pool test pixels inside it")
  if fov == "none":
    return "'none': every pixel is scored"
  return f"the dataset's {fov!r} mask (non-zero = inside); metrics pool test pixels inside it"


def _check_maps(cfg, builder):
  """config.segmentation.fov and mask_key against the dataset's image features (one-line errors naming them)."""
  features, dataset = builder.info.features, pipeline.dataset_name(builder)
  image_features = sorted(k for k in features.keys() if k != "image" and type(features[k]).__name__ == "Image")
  if cfg.fov not in segmentation_lib.FOV_CHOICES and cfg.fov not in image_features:
    raise ValueError(f"config.segmentation.fov={cfg.fov!r} is not known for {dataset}; valid choices: "
                     f"{list(segmentation_lib.FOV_CHOICES) + image_features}")
  if cfg.mask_key not in image_features:
    raise ValueError(f"config.segmentation.mask_key={cfg.mask_key!r} is not an image feature of {dataset}; "
                     f"valid choices: {image_features}")


def run(config, workdir, *, encoders, mesh=None) -> dict:
  """The segmentation-transfer stage of `config.segmentation` for each encoder and seed.

  Args:
    config: the experiment config (reads `config.segmentation`, `config.data.fit/mean/std`).
    workdir: results go to <workdir>/segmentation/: results.json, results.md (the table) and
      overlays_<encoder slug>.png (the first seed's test maps).
    encoders: {name: (ResNet module, its variables)}: a plain ResNet's {"params", "batch_stats"}, or an
      SSL model's variables (their "backbone" subtrees are taken).
    mesh: optional 1-D data mesh for training (see `evals.segmentation.finetune_segmentation`).

  results.json (and the returned dict): {"dataset", "train_split", "test_split", "mask_key", "fov",
  "fov_convention", "image_size", "num_train", "num_test", "test_image_shape", "seeds" [list], "protocol",
  "encoders": {name: {"seeds": {"<seed>": finetune_segmentation's result + "settings", "backbone_sha256"},
  "mean": {metric: ...}, "std": {metric: sample std over seeds (NaN for one seed)}, "n": seeds}}} for
  the metrics dice, auroc, accuracy, sensitivity, specificity. With config.segmentation.mask_mode "classes"
  (class-id masks, K = the training masks' largest id + 1) it also holds "mask_mode" and "num_classes", and
  the summarised metrics are `segmentation_metrics.class_metric_names(K)`. A finished (encoder, seed)
  result already in results.json is reused when its settings and backbone weights (sha256) are unchanged,
  so the stage resumes after an interruption; encoders of earlier calls not named now are kept in the file.
  "settings" is config.segmentation less encoders / seeds and less keys holding SETTINGS_DEFAULTS (keys
  added later, so results from before them stay reusable), plus data.fit / mean / std.
  """

  cfg = config.segmentation
  out_dir = paths.join(workdir, "segmentation")
  paths.makedirs(out_dir)
  builder = pipeline.open_dataset(cfg)
  dataset = pipeline.dataset_name(builder)
  _check_maps(cfg, builder)
  fov = cfg.fov
  mask_mode = cfg.get("mask_mode", "binary")
  if mask_mode not in segmentation_lib.MASK_MODES:
    raise ValueError(f"config.segmentation.mask_mode={mask_mode!r} is not known; valid choices: "
                     f"{list(segmentation_lib.MASK_MODES)}")
  classes = mask_mode == "classes"
  extra = (cfg.mask_key,) + ((fov,) if fov not in segmentation_lib.FOV_CHOICES and fov != cfg.mask_key else ())
  image_size = int(cfg.image_size) or None
  splits = {}
  for split in (cfg.train_split, cfg.test_split):
    a = pipeline.load_split_arrays(builder, split=split, image_size=image_size, fit=config.data.fit,
                                   extra_keys=extra)
    masks = a[cfg.mask_key][..., 0] if classes else (a[cfg.mask_key][..., 0] > 0).astype(np.uint8)
    fmask = segmentation_lib.fov_masks(a["image"], fov=fov, masks=a.get(fov))
    splits[split] = (a["image"], masks, fmask)
  (tr_x, tr_m, tr_f), (te_x, te_m, te_f) = splits[cfg.train_split], splits[cfg.test_split]
  num_classes = None
  if classes:
    try:
      num_classes = segmentation_lib.num_classes_of(tr_m, te_m, None)
    except ValueError as e:
      raise ValueError(f"config.segmentation.mask_mode='classes' on {dataset} {cfg.mask_key!r}: {e}") from e
  print(f"segmentation: {dataset} train '{cfg.train_split}' {tr_x.shape}, test '{cfg.test_split}' {te_x.shape}, "
        f"fov {fov!r}" + (f", {num_classes} classes" if classes else ""), flush=True)

  settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.to_dict().items()
              if k not in ("encoders", "seeds") and segmentation_lib.SETTINGS_DEFAULTS.get(k, object()) != v}
  settings.update(fit=config.data.fit, mean=list(config.data.mean), std=list(config.data.std))
  path = paths.join(out_dir, "results.json")
  previous = paths.read_json(path, missing={}).get("encoders", {})
  seeds = [int(s) for s in cfg.seeds]
  results = {"dataset": dataset, "train_split": cfg.train_split, "test_split": cfg.test_split,
             "mask_key": cfg.mask_key, "fov": fov, "fov_convention": _fov_convention(fov),
             "image_size": image_size, "num_train": len(tr_x), "num_test": len(te_x),
             "test_image_shape": "x".join(map(str, te_x.shape[1:3])), "seeds": seeds,
             "protocol": segmentation_lib.describe(patch_size=int(cfg.patch_size), augment=bool(cfg.augment),
                                  backbone_lr_scale=float(cfg.backbone_lr_scale), threshold=float(cfg.threshold),
                                  mask_mode=mask_mode, num_classes=num_classes),
             "encoders": {}}
  if classes:
    results.update(mask_mode=mask_mode, num_classes=num_classes)
  metrics = segmentation_metrics.class_metric_names(num_classes) if classes else segmentation_lib.METRICS
  for name, (backbone, variables) in encoders.items():
    if "backbone" in variables.get("params", {}):
      variables = attention.backbone_variables(variables)
    sha = _variables_sha256(variables)
    runs = {k: v for k, v in previous.get(name, {}).get("seeds", {}).items()
            if v.get("settings") == settings and v.get("backbone_sha256") == sha}
    for seed in seeds:
      if str(seed) in runs:
        print(f"segmentation: {name} seed {seed}: reusing the finished result in {path}", flush=True)
        continue
      first = seed == seeds[0]
      res = segmentation_lib.finetune_segmentation(
          backbone=backbone, backbone_variables=variables, train_images=tr_x, train_masks=tr_m, train_fov=tr_f,
          test_images=te_x, test_masks=te_m, test_fov=te_f, patch_size=int(cfg.patch_size), steps=int(cfg.steps),
          batch_size=int(cfg.batch_size), learning_rate=float(cfg.learning_rate),
          weight_decay=float(cfg.weight_decay), backbone_lr_scale=float(cfg.backbone_lr_scale),
          decoder_widths=tuple(cfg.decoder_widths) or None, augment=bool(cfg.augment),
          threshold=float(cfg.threshold), mean=config.data.mean, std=config.data.std, seed=seed,
          progress=f"{name} seed {seed}", return_predictions=first, mesh=mesh, mask_mode=mask_mode,
          num_classes=num_classes)
      if first:
        probs = res.pop("probabilities")
        segmentation_lib.save_overlays(te_x, te_m, probs, paths.join(out_dir, f"overlays_{_slug(name)}.png"),
                                       fov=te_f,
                      threshold=float(cfg.threshold))
      runs[str(seed)] = dict(res, settings=settings, backbone_sha256=sha)
      results["encoders"][name] = {"seeds": runs}
      results_lib.write_json(path, {**results, "encoders": {**previous, **results["encoders"]}}, indent=1,
                             default=float)
    # Only this config's seeds are kept and summarised (a seed dropped from config.segmentation.seeds goes).
    chosen = {str(s): runs[str(s)] for s in seeds}
    results["encoders"][name] = {"seeds": chosen, **_summary(list(chosen.values()), metrics)}
  # Encoders of earlier calls that this one did not ask for stay in the file (not in the table).
  results_lib.write_json(path, {**results, "encoders": {**previous, **results["encoders"]}}, indent=1, default=float)
  table = _markdown(results)
  results_lib.write_text(paths.join(out_dir, "results.md"), table)
  reporting.write_eval_scalars(str(workdir), "segmentation", {n: e["mean"] for n, e in results["encoders"].items()},
                               step=config.train.num_steps)  # Each encoder's mean over seeds.
  print(table, flush=True)
  return results


def segmentation(config, workdir: str, *, mesh=None) -> dict:
  """mode "segmentation": a U-Net decoder on each encoder of config.segmentation.encoders, trained and scored
  on config.segmentation's dataset (medssl_jax/evals/segmentation.py); results in <workdir>/segmentation/."""
  encoders = {}
  wanted = config.segmentation.encoders
  for name, (model, variables, _) in encoders_lib.transfer_encoders(config, workdir, wanted).items():
    # The U-Net takes the bare backbone module (its padding as the encoder was built) and its variables.
    encoders[name] = (model.backbone, attention.backbone_variables(variables))
  return run(config, workdir, encoders=encoders, mesh=mesh)


# Stand-in side of the training images of a dataset at native resolution (segmentation.image_size 0), for the dry
# run: about that of the fundus photographs segmented here (CHASE_DB1 999x960, DRIVE 565x584, HRF 3504x2336).
DRY_RUN_NATIVE_SIDE = 1024


def dry_run_part(config) -> dry_parts.Part:
  """The U-Net training step of config.segmentation on config.model's encoder, for the dry run: random crops of
  `patch_size` from four stand-in training images (at segmentation.image_size, or DRY_RUN_NATIVE_SIDE px when
  native), the backbone trained at backbone_lr_scale."""
  g = config.segmentation
  side = int(g.image_size) or DRY_RUN_NATIVE_SIDE
  classes = g.mask_mode == "classes"
  # "classes" learns K from the masks; three (background + two) stands in, as REFUGE's disc rim and cup.
  num_classes = 3 if classes else 1
  m = config.model

  def make(batch: int):
    info = dry_parts.dataset_info(g)
    channels, patch = info["channels"], int(g.patch_size)
    backbone = models.build_backbone(config)
    model = UNet(backbone=backbone, num_classes=num_classes,
                 decoder_widths=tuple(int(w) for w in g.decoder_widths) or None)
    mesh = dry_parts.one_device_mesh()
    frozen = float(g.backbone_lr_scale) == 0
    train_step, init_opt = segmentation_lib.train_functions(
        model, patch, tuple(config.data.mean), tuple(config.data.std), bool(g.augment), frozen, batch,
        max(1, patch // 16), mesh_lib.data_sharding(mesh))
    init = lambda: models.init_variables(model, jax.random.key(0), jnp.zeros((1, patch, patch, channels)),
                                         train=False)
    variables_shape = jax.eval_shape(init)
    opt_shape = jax.eval_shape(init_opt, variables_shape["params"])
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, side, side, channels), dtype=np.uint8)
    masks = rng.integers(0, num_classes + 1 if classes else 2, (4, side, side), dtype=np.uint8)
    origins = np.stack(np.meshgrid(np.arange(4), np.arange(0, side - patch, patch),
                                   np.arange(0, side - patch, patch), indexing="ij"), -1).reshape(-1, 3).astype(np.int32)
    scalars = (np.float32(g.learning_rate), np.float32(g.weight_decay), np.float32(g.backbone_lr_scale))
    abstract = lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype)
    lowered = train_step.lower(variables_shape["params"], variables_shape["batch_stats"], opt_shape,
                               abstract(images), abstract(masks), abstract(origins), jax.random.key(1), *scalars)

    def run(compiled, steps: int) -> list[float]:
      variables = init()
      holder = {"s": (variables["params"], variables["batch_stats"], init_opt(variables["params"]))}
      data = jax.device_put((images, masks, origins))

      def call():
        p, s, o, loss = compiled(*holder["s"], *data, jax.random.key(1), *scalars)
        holder["s"] = (p, s, o)
        return loss

      return dry_parts.timed(steps, call)

    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables_shape["params"])), lowered, run

  encoder = m.encoder if m.encoder.startswith("vit") else f"{m.encoder} x{m.width_multiplier:g}"
  describe = (f"U-Net on {encoder}, {g.patch_size}px crops of {g.builder}:{g.builder_config or 'default'} "
              f"({'native, stand-in ' if not int(g.image_size) else ''}{side}px images)")
  return dry_parts.Part("segmentation", describe, int(g.batch_size),
                        dry_parts.sections_key("segmentation", config, "model", "segmentation", "data.mean", "data.std"),
                        make)


def dry_run_parts(config) -> list:
  return [dry_run_part(config)] if config.mode == "segmentation" else []


MODES = {"segmentation": segmentation}
