"""SWCL stage 1: the semi-supervised pseudo-labeller (FixMatch, Sohn et al. 2020).

A classifier (config.model's backbone + a Dense head, one output per class of the labelled set) is trained on
the labelled set `config.swcl.labelled` and the unlabelled pool `config.swcl.pool` at the same time:

  * Supervised term: softmax cross-entropy (multi-label data: sigmoid binary cross-entropy averaged over
    examples and classes) on a weakly augmented labelled batch of `swcl.batch_size` images.
  * Unlabelled term (weight `swcl.unlabelled_weight`, lambda_u): on `batch_size * unlabelled_ratio` pool images
    (FixMatch's mu), the weak view's prediction (stop-gradient) is the target for a strongly augmented view of
    the same image, used only where it is confident. Single-label: target = argmax, used when its probability
    >= `swcl.confidence_threshold` (tau); the masked cross-entropy is averaged over ALL pool images of the
    batch (as FixMatch, so confident images do not get a larger weight when few are confident). Multi-label:
    per class, p >= tau -> target 1, p <= 1 - tau -> target 0, otherwise masked; the masked binary
    cross-entropy is averaged over all (image, class) pairs. See `supervised_loss` / `unlabelled_loss`.
  * Views: weak = horizontal flip (p 0.5) + random translation by up to 12.5% of the side (reflect padding).
    Strong = weak + colour jitter (0.4, 0.4, 0.4, hue 0.1, p 0.8) + grayscale (p 0.2) + Gaussian blur (p 0.5)
    + solarize (p 0.2) + Cutout (a square of 1/4 of the side, filled with grey), the ops of
    medssl_jax.augment.ops standing in for FixMatch's RandAugment. The labelled, weak and strong batches go
    through the network as one batch (BatchNorm in train mode over all of them, as FixMatch does).
  * AdamW (b1 0.9, b2 0.999), `swcl.learning_rate` with cosine decay to 0 over `swcl.steps`, weight decay
    `swcl.weight_decay` on kernels only. The backbone starts from config.model.init_checkpoint when set
    (medssl_jax.models.convert_torch), else from a random init.
  * Logged: supervised loss, unlabelled loss and the mask rate (fraction of pool images whose weak-view
    prediction is confident; multi-label: fraction of confident (image, class) pairs). Pool labels are never
    read, so the pseudo-labels' accuracy is not measured.
  * Every `swcl.eval_every` steps and at the end: validation AUROC (macro one-vs-rest; multi-label: mean over
    classes) on `labelled.val_split` when set, and an orbax checkpoint.

Data: both sets are decoded once into host memory at `swcl.classifier_image_size`, squared by `swcl.fit`
(records' labels of the pool are dropped on decoding). That is fine at the scale of the public fundus sets
(thousands of images); a pool of EyePACS size (~90k images) wants pipeline.make_train_iterator (grain) instead.
Batches come from seeded per-epoch permutations of each set, indexed by step, so a resumed run sees the same
batches and augmentation keys; it continues from its last checkpoint (every eval and the end), which is not
bit-exact in general (float reduction order, lost metrics of the steps after that checkpoint are recomputed).

Outputs in <workdir>/pseudo_labeller/: settings.json (what determines the weights; a workdir trained with other
settings is refused), checkpoints/<step>/ (orbax: params, batch_stats, opt_state, step), progress.json (the
curves so far) and, when finished, summary.json. A finished run is loaded, not retrained (`load`).
"""
from __future__ import annotations

import json
import math
import os
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import tensorflow_datasets as tfds

from medssl_jax import models
from medssl_jax import paths
from medssl_jax.augment import ops
from medssl_jax.augment import views as views_lib
from medssl_jax.data import pipeline
from medssl_jax.evals import metrics as metrics_lib
from medssl_jax.evals.results import write_json as _write_json
from medssl_jax.models import convert_torch
from medssl_jax.projects.swcl import config as swcl_config
from medssl_jax.train import checkpoint as ckpt_lib
from medssl_jax.train import dry_parts
from medssl_jax.train import guard as guard_lib
from medssl_jax.train import mesh as mesh_lib
from medssl_jax.train import supervised
from medssl_jax.train.step import normalize

STAGE_DIR = "pseudo_labeller"
SUMMARY_FILE = "summary.json"
SETTINGS_FILE = "settings.json"
PROGRESS_FILE = "progress.json"
HEAD_INIT_STD = 0.01
TRANSLATE_FRACTION = 0.125   # Weak view: shift by up to this fraction of the side (FixMatch).
CUTOUT_FRACTION = 0.25       # Strong view: side of the Cutout square.
CUTOUT_FILL = 0.5
OBJECTIVE = ("FixMatch: CE on weak labelled views + lambda_u x masked CE of strong pool views against confident "
             "weak-view predictions (stop-gradient; multi-label: per-class BCE, p >= tau -> 1, p <= 1 - tau -> 0); "
             "weak = flip + translate 12.5%; strong = weak + colour jitter, grayscale, blur, solarize, Cutout; "
             "AdamW, cosine decay")


# ----------------------------------------------------------------------------------------------------
# Data.

def source_name(builder, split: str) -> str:
  """'builder/config:split' ('builder:split' for a builder without configs)."""
  return f"{pipeline.dataset_name(builder)}:{split}"


def label_info(builder) -> tuple[list[str], bool]:
  """(class names, multi_label) of a builder's 'label' feature: a ClassLabel (single-label) or a 0/1 vector
  (multi-label; names from the builder module's LABELS when it has them, else class_<i>)."""
  features = builder.info.features
  if "label" not in features:
    raise ValueError(f"config.swcl.labelled: dataset {builder.name!r} has no 'label' feature (its features: "
                     f"{sorted(features.keys())}); the pseudo-labeller needs image-level labels")
  label = features["label"]
  if isinstance(label, tfds.features.ClassLabel):
    return list(label.names), False
  k = int(label.shape[-1])
  names = getattr(sys.modules.get(type(builder).__module__), "LABELS", None)
  return (list(names) if names is not None and len(names) == k else [f"class_{i}" for i in range(k)]), True


def _as_dict(entry) -> dict:
  return entry.to_dict() if hasattr(entry, "to_dict") else dict(entry)


def pool_entries(config) -> list[dict]:
  """config.swcl.pool as plain dicts with every key of POOL_KEYS ('' when not given)."""
  return [{k: _as_dict(e).get(k, "") for k in swcl_config.POOL_KEYS} for e in config.swcl.pool]


def _load_labelled(config, size: int) -> dict:
  lab = config.swcl.labelled
  builder = pipeline.open_dataset(lab)
  classes, multi_label = label_info(builder)
  out = {"classes": classes, "multi_label": multi_label, "source": source_name(builder, lab.train_split)}
  splits = [("train", lab.train_split)] + ([("val", lab.val_split)] if lab.val_split else [])
  for name, split in splits:
    d = pipeline.load_split_arrays(builder, split=split, image_size=size, fit=config.swcl.fit)
    labels = d["label"]
    if multi_label:
      labels = labels.astype(np.float32)
    elif labels.min() < 0 or labels.max() >= len(classes):
      raise ValueError(f"config.swcl.labelled: labels of {source_name(builder, split)} lie in "
                       f"[{labels.min()}, {labels.max()}], not in [0, {len(classes)})")
    out[f"{name}_images"], out[f"{name}_labels"] = d["image"], labels
  return out


def _load_pool(config, size: int) -> tuple[np.ndarray, list[dict]]:
  images, sources = [], []
  for entry in pool_entries(config):
    builder = pipeline.open_dataset(entry)
    d = pipeline.load_split_arrays(builder, split=entry["split"], image_size=size, fit=config.swcl.fit)
    del d["label"]  # Decoded with the record, never used: the pool is unlabelled.
    images.append(d["image"])
    sources.append({"source": source_name(builder, entry["split"]), "num_images": int(len(d["image"]))})
  if not images:
    raise ValueError("config.swcl.pool is empty: the pseudo-labeller needs an unlabelled pool")
  channels = {im.shape[-1] for im in images}
  if len(channels) != 1:
    raise ValueError(f"config.swcl.pool: the sources have images with different channels {sorted(channels)} "
                     f"({[s['source'] for s in sources]})")
  return np.concatenate(images), sources


def _settings(config) -> dict:
  """What determines the stage-1 weights (JSON-normalised); a workdir trained with other values is refused."""
  s, m, lab = config.swcl, config.model, config.swcl.labelled
  out = {
      "labelled": {"builder": lab.builder, "builder_config": lab.builder_config, "train_split": lab.train_split},
      "pool": [{k: e[k] for k in ("builder", "builder_config", "split")} for e in pool_entries(config)],
      "model": {k: m[k] for k in ("encoder", "stem", "width_multiplier", "patch_size", "compute_dtype",
                                  "init_checkpoint")},
      "mean": list(config.data.mean), "std": list(config.data.std), "seed": config.seed,
      **{k: s[k] for k in ("classifier_image_size", "fit", "steps", "batch_size", "unlabelled_ratio",
                           "learning_rate", "weight_decay", "confidence_threshold", "unlabelled_weight")},
  }
  return json.loads(json.dumps(out))


def _check_settings(saved: dict, current: dict, where: str):
  diff = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
  if diff:
    details = "; ".join(f"swcl/model setting {k}: saved={saved.get(k)!r} now={current.get(k)!r}" for k in diff)
    raise ValueError(f"{where} holds a pseudo-labeller trained with other settings ({details}). Use a new "
                     f"--workdir, or delete {os.path.dirname(where)} to retrain stage 1.")


# ----------------------------------------------------------------------------------------------------
# Views (batched, on device; uint8 or [0, 1] float in, float32 [0, 1] out, same size).

def _translate(key, image, pad: int):
  """Random shift by up to `pad` pixels each way, borders filled by reflection (FixMatch's weak view)."""
  if pad == 0:
    return image
  h, w, c = image.shape
  x = jnp.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
  dy, dx = jax.random.randint(key, (2,), 0, 2 * pad + 1)
  return jax.lax.dynamic_slice(x, (dy, dx, 0), (h, w, c))


def _cutout(key, image, side: int, fill: float = CUTOUT_FILL):
  """A side x side square (clipped at the borders) at a uniformly random centre, set to `fill`."""
  if side == 0:
    return image
  h, w = image.shape[:2]
  cy, cx = jax.random.randint(key, (2,), 0, jnp.array([h, w]))
  top, left = cy - side // 2, cx - side // 2
  rows, cols = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
  inside = (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)
  return jnp.where(inside[..., None], jnp.asarray(fill, image.dtype), image)


def _weak_one(key, image):
  pad = int(round(TRANSLATE_FRACTION * min(image.shape[:2])))
  x = ops.random_flip(jax.random.fold_in(key, 0), image, p=0.5)
  return _translate(jax.random.fold_in(key, 1), x, min(pad, min(image.shape[:2]) - 1))


def _strong_one(key, image):
  x = _weak_one(key, image)
  x = ops.color_jitter(jax.random.fold_in(key, 2), x, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, p=0.8)
  x = ops.random_grayscale(jax.random.fold_in(key, 3), x, p=0.2)
  x = ops.gaussian_blur(jax.random.fold_in(key, 4), x, p=0.5)
  x = ops.solarize(jax.random.fold_in(key, 5), x, p=0.2)
  return _cutout(jax.random.fold_in(key, 6), x, int(round(CUTOUT_FRACTION * min(image.shape[:2]))))


def weak_view(key, images):
  """FixMatch's weak view of a batch [B, H, W, C]: flip + translation (one key per image)."""
  x = views_lib.to_float_images(images)
  return jax.vmap(_weak_one)(jax.random.split(key, x.shape[0]), x)


def strong_view(key, images):
  """The strong view of a batch: the weak view + colour jitter, grayscale, blur, solarize and Cutout."""
  x = views_lib.to_float_images(images)
  return jax.vmap(_strong_one)(jax.random.split(key, x.shape[0]), x)


# ----------------------------------------------------------------------------------------------------
# Losses (pure; `tests/test_swcl_pseudo.py` checks them against numpy).

def supervised_loss(logits, labels, *, multi_label: bool):
  """Mean softmax cross-entropy on integer labels [B], or sigmoid BCE on 0/1 labels [B, K] averaged over
  examples and classes."""
  logits = logits.astype(jnp.float32)
  if multi_label:
    return optax.sigmoid_binary_cross_entropy(logits, labels.astype(jnp.float32)).mean()
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def unlabelled_loss(weak_logits, strong_logits, *, threshold: float, multi_label: bool):
  """FixMatch's unlabelled term and mask rate (see the module docstring); no gradient through weak_logits.

  Returns (loss, mask_rate): loss = sum of masked per-target losses / number of targets (all pool images, or
  all (image, class) pairs for multi-label), mask_rate = fraction of targets that were confident.
  """
  weak = jax.lax.stop_gradient(weak_logits.astype(jnp.float32))
  strong = strong_logits.astype(jnp.float32)
  if multi_label:
    p = jax.nn.sigmoid(weak)
    positive = p >= threshold
    mask = (positive | (p <= 1.0 - threshold)).astype(jnp.float32)
    per = optax.sigmoid_binary_cross_entropy(strong, positive.astype(jnp.float32))
    return jnp.mean(per * mask), jnp.mean(mask)
  p = jax.nn.softmax(weak)
  mask = (jnp.max(p, axis=-1) >= threshold).astype(jnp.float32)
  per = optax.softmax_cross_entropy_with_integer_labels(strong, jnp.argmax(p, axis=-1))
  return jnp.mean(per * mask), jnp.mean(mask)


# ----------------------------------------------------------------------------------------------------
# Model and steps.

class Classifier(nn.Module):
  """backbone -> Dense head: logits [B, num_classes]. Parameters {"backbone", "head"}."""
  backbone: nn.Module
  num_classes: int

  @nn.compact
  def __call__(self, x, *, train: bool):
    f = self.backbone(x, train=train)
    return nn.Dense(self.num_classes, kernel_init=nn.initializers.normal(HEAD_INIT_STD), name="head")(f)


def _optimizer(config):
  s = config.swcl
  return optax.adamw(optax.cosine_decay_schedule(s.learning_rate, s.steps), b1=0.9, b2=0.999,
                     weight_decay=s.weight_decay, mask=supervised.decay_mask)


def _build(config, num_classes: int):
  backbone = models.build_backbone(config)
  return backbone, Classifier(backbone=backbone, num_classes=num_classes)


def _init_state(config, model, tx, channels: int, *, imported: bool = True):
  """{"params", ["batch_stats"], "opt_state", "step"} from config.seed, with the backbone from
  config.model.init_checkpoint when set and `imported` (False: the structure only, for restoring)."""
  size = config.swcl.classifier_image_size
  variables = models.init_variables(model, jax.random.key(config.seed), jnp.zeros((1, size, size, channels)),
                                    train=False)
  if imported and config.model.init_checkpoint:
    variables = convert_torch.init_backbone(config, variables)
  state = {"params": variables["params"], "opt_state": tx.init(variables["params"]), "step": jnp.int32(0)}
  if "batch_stats" in variables:
    state["batch_stats"] = variables["batch_stats"]
  return state


def _steps(model, tx, *, multi_label: bool, threshold: float, unlabelled_weight: float, mean: tuple, std: tuple,
           has_bn: bool):
  """Jitted (train_step, predict) of the classifier."""

  def apply(params, batch_stats, x, train):
    return supervised.apply_with_batch_stats(model, params, batch_stats, x, train=train, has_bn=has_bn)

  @jax.jit
  def train_step(state, x_lab, y_lab, x_pool, key):
    k_lab, k_weak, k_strong = jax.random.split(key, 3)
    parts = [weak_view(k_lab, x_lab)]
    if x_pool.shape[0]:
      parts += [weak_view(k_weak, x_pool), strong_view(k_strong, x_pool)]
    x = normalize(jnp.concatenate(parts), mean, std)
    n_lab, n_pool = x_lab.shape[0], x_pool.shape[0]

    def loss_fn(params):
      logits, new_bs = apply(params, state.get("batch_stats"), x, True)
      sup = supervised_loss(logits[:n_lab], y_lab, multi_label=multi_label)
      if n_pool:
        unsup, mask_rate = unlabelled_loss(logits[n_lab:n_lab + n_pool], logits[n_lab + n_pool:],
                                           threshold=threshold, multi_label=multi_label)
      else:
        unsup, mask_rate = jnp.float32(0), jnp.float32(0)
      return sup + unlabelled_weight * unsup, (sup, unsup, mask_rate, new_bs)

    (loss, (sup, unsup, mask_rate, new_bs)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    new = dict(state, params=optax.apply_updates(state["params"], updates), opt_state=opt_state,
               step=state["step"] + 1)
    if has_bn:
      new["batch_stats"] = new_bs
    return new, {"loss": loss, "sup_loss": sup, "unsup_loss": unsup, "mask_rate": mask_rate}

  @jax.jit
  def predict(params, batch_stats, images):
    x = normalize(views_lib.to_float_images(images), mean, std)
    logits, _ = apply(params, batch_stats, x, False)
    logits = logits.astype(jnp.float32)
    return jax.nn.sigmoid(logits) if multi_label else jax.nn.softmax(logits)

  return train_step, predict


class _Stream:
  """Batch `step` (1-based) of `size` indices from seeded per-epoch permutations of range(n): a pure function
  of (seed, step), so a resumed run draws the same batches."""

  def __init__(self, n: int, seed):
    self.n, self.seed, self._perms = n, seed, {}

  def batch(self, step: int, size: int) -> np.ndarray:
    pos = np.arange((step - 1) * size, step * size)
    out = np.empty(size, np.int64)
    for epoch in np.unique(pos // self.n):
      if epoch not in self._perms:
        self._perms = {epoch: np.random.default_rng([*self.seed, int(epoch)]).permutation(self.n)}
      sel = pos // self.n == epoch
      out[sel] = self._perms[epoch][pos[sel] % self.n]
    return out


def predict_probs(predict, params, batch_stats, images, *, mesh, batch_size: int) -> np.ndarray:
  """Class probabilities [N, C] of uint8 images in fixed-size batches (the last zero-padded, then dropped)."""
  return mesh_lib.apply_batched(lambda b: predict(params, batch_stats, b["x"]), {"x": images}, batch_size=batch_size,
                                mesh=mesh)


def _val_metrics(labels, probs, multi_label: bool) -> dict:
  if multi_label:
    per = np.array([metrics_lib.binary_auroc(labels[:, k], probs[:, k]) for k in range(labels.shape[1])])
    auc = float(np.nanmean(per)) if np.isfinite(per).any() else float("nan")
    acc = metrics_lib.accuracy(labels.ravel().astype(np.int32), probs.ravel())
  else:
    auc, _ = metrics_lib.auroc(labels, probs)
    acc = metrics_lib.accuracy(labels, probs)
  return {"auroc": _finite(auc), "accuracy": _finite(acc)}


def _finite(x):
  """float, or None for nan (JSON-safe and comparable)."""
  x = float(x)
  return x if math.isfinite(x) else None


# ----------------------------------------------------------------------------------------------------
# Public API.

def stage_dir(workdir: str) -> str:
  return paths.join(workdir, STAGE_DIR)


def read_summary(config, workdir: str) -> dict:
  """summary.json of a finished stage 1 in `workdir`, checked against config's settings (clear errors)."""
  path = paths.join(stage_dir(workdir), SUMMARY_FILE)
  summary = paths.read_json(path)
  if summary is None:
    raise FileNotFoundError(f"{path} does not exist: stage 1 (the pseudo-labeller) has not finished in workdir "
                            f"{workdir!r}; run mode 'pseudo_label' (or 'swcl', which runs every stage) first")
  _check_settings(summary["settings"], _settings(config), path)
  return summary


def load(config, workdir: str, *, mesh=None):
  """(backbone, variables, summary) of the finished stage 1 in `workdir`.

  variables = {"params": {"backbone", "head": {"kernel" [D, C], "bias" [C]}}, "batch_stats": {"backbone"}}
  (host numpy; no batch_stats for a ViT). Raises FileNotFoundError when stage 1 has not finished, and a
  ValueError when it was trained with other settings than config's.
  """
  summary = read_summary(config, workdir)
  backbone, model = _build(config, len(summary["classes"]))
  tx = _optimizer(config)
  abstract = jax.eval_shape(lambda: _init_state(config, model, tx, summary["channels"], imported=False))
  manager = ckpt_lib.make_manager(stage_dir(workdir), keep=2)
  restored = ckpt_lib.restore_latest(manager, abstract)
  if restored is None or restored[0] != summary["steps"]:
    raise FileNotFoundError(f"{stage_dir(workdir)}/checkpoints holds no checkpoint of step {summary['steps']} "
                            f"(found {None if restored is None else restored[0]}); delete {stage_dir(workdir)} "
                            "to retrain stage 1")
  state = jax.device_get(restored[1])
  variables = {"params": state["params"]}
  if "batch_stats" in state:
    variables["batch_stats"] = state["batch_stats"]
  return backbone, variables, summary


def _summary(config, *, lab, pool, pool_sources, progress, start, seconds, settings, out_dir) -> dict:
  """What <workdir>/pseudo_labeller/summary.json records of a finished stage 1."""
  s = config.swcl
  classes, multi_label, channels = lab["classes"], lab["multi_label"], lab["train_images"].shape[-1]
  size, bs, bu = s.classifier_image_size, s.batch_size, s.batch_size * s.unlabelled_ratio
  final = progress["val_curve"][-1] if progress["val_curve"] else {}
  summary = {
      "classes": classes, "multi_label": multi_label, "steps": s.steps, "channels": int(channels),
      "image_size": size, "fit": s.fit, "objective": OBJECTIVE,
      "labelled": lab["source"], "val_split": s.labelled.val_split,
      "num_labelled": int(len(lab["train_images"])), "num_val": int(len(lab.get("val_images", ()))),
      "num_pool": int(len(pool)), "pool": pool_sources,
      "batch_size": bs, "unlabelled_batch_size": bu,
      "val_curve": progress["val_curve"], "train_curve": progress["train_curve"],
      "final_val_auroc": final.get("auroc"), "final_val_accuracy": final.get("accuracy"),
      "final_mask_rate": progress["train_curve"][-1]["mask_rate"] if progress["train_curve"] else None,
      "resumed_from_step": start or None,
      "seconds": round(seconds, 1),
      "checkpoints": paths.absolute(paths.join(out_dir, "checkpoints")),
      "settings": settings,
  }
  return summary


def _load_data(config):
  """The labelled set and the unlabelled pool at swcl.classifier_image_size, checked against each other and
  data.mean / std: (labelled dict, pool images, pool sources, mean, std)."""
  s = config.swcl
  t0 = time.perf_counter()
  size = s.classifier_image_size
  lab = _load_labelled(config, size)
  pool, pool_sources = _load_pool(config, size)
  classes, multi_label = lab["classes"], lab["multi_label"]
  channels = lab["train_images"].shape[-1]
  if pool.shape[-1] != channels:
    raise ValueError(f"config.swcl.pool images have {pool.shape[-1]} channels, the labelled set "
                     f"{lab['source']} has {channels}")
  mean, std = tuple(float(v) for v in config.data.mean), tuple(float(v) for v in config.data.std)
  if len(mean) != channels or len(std) != channels:
    raise ValueError(f"config.data.mean / std need {channels} values (the labelled images' channels), got "
                     f"{mean} / {std}")
  print(f"pseudo-labeller: {len(lab['train_images'])} labelled images ({lab['source']}, {len(classes)} classes"
        f"{', multi-label' if multi_label else ''}), {len(pool)} unlabelled pool images "
        f"({', '.join(p['source'] for p in pool_sources)}), {size} px; data loaded in "
        f"{time.perf_counter() - t0:.0f}s", flush=True)
  return lab, pool, pool_sources, mean, std


def dry_run_part(config) -> dry_parts.Part:
  """Stage 1's training step for the dry run: `batch` labelled images of config.swcl.labelled (its classes and
  channels from the builder's feature spec) and `batch` x unlabelled_ratio pool images, at classifier_image_size."""
  s = config.swcl
  size = int(s.classifier_image_size)

  def make(batch: int):
    info = dry_parts.dataset_info(s.labelled)
    classes = [f"class_{i}" for i in range(info["num_classes"])]
    _, model = _build(config, len(classes))
    tx = _optimizer(config)
    init = lambda: _init_state(config, model, tx, info["channels"], imported=False)
    state_shape = jax.eval_shape(init)
    has_bn = "batch_stats" in state_shape
    train_step, _ = _steps(model, tx, multi_label=info["multi_label"], threshold=float(s.confidence_threshold),
                           unlabelled_weight=float(s.unlabelled_weight), mean=tuple(config.data.mean),
                           std=tuple(config.data.std), has_bn=has_bn)
    rng = np.random.default_rng(0)
    x_lab = rng.integers(0, 256, (batch, size, size, info["channels"]), dtype=np.uint8)
    y_lab = dry_parts.stand_in_labels(info, batch, rng)
    x_pool = rng.integers(0, 256, (batch * s.unlabelled_ratio, size, size, info["channels"]), dtype=np.uint8)
    abstract = lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype)
    lowered = train_step.lower(state_shape, abstract(x_lab), abstract(y_lab), abstract(x_pool), jax.random.key(1))

    def run(compiled, steps: int) -> list[float]:
      holder = {"state": init()}

      def call():
        holder["state"], metrics = compiled(holder["state"], x_lab, y_lab, x_pool, jax.random.key(1))
        return metrics

      return dry_parts.timed(steps, call)

    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state_shape["params"])), lowered, run

  lab = s.labelled
  describe = (f"SWCL stage 1: {config.model.encoder} x{config.model.width_multiplier:g} classifier at {size}px on "
              f"{lab.builder}:{lab.builder_config or 'default'} + {s.unlabelled_ratio}x unlabelled (FixMatch)")
  return dry_parts.Part("pseudo-labeller", describe, int(s.batch_size),
                        dry_parts.sections_key("pseudo-labeller", config, "model", "swcl", "data.mean", "data.std"),
                        make)


def train(config, workdir: str, *, mesh=None):
  """Stage 1: trains the pseudo-labeller (module docstring), or loads it when <workdir>/pseudo_labeller holds a
  finished run; an interrupted run resumes from its last checkpoint. Returns (backbone, variables, summary) as
  `load` does. summary: classes, multi_label, steps, val_curve, final_val_auroc, data sizes, seconds, ...
  """
  out_dir = stage_dir(workdir)
  settings = _settings(config)
  settings_path = paths.join(out_dir, SETTINGS_FILE)
  saved_settings = paths.read_json(settings_path)
  if saved_settings is not None:
    _check_settings(saved_settings, settings, settings_path)
  if paths.exists(paths.join(out_dir, SUMMARY_FILE)):
    backbone, variables, summary = load(config, workdir, mesh=mesh)
    print(f"pseudo-labeller: finished run in {out_dir} reused ({summary['steps']} steps, final val AUROC "
          f"{summary['final_val_auroc']})", flush=True)
    return backbone, variables, summary
  paths.makedirs(out_dir)
  _write_json(settings_path, settings)

  s = config.swcl
  lab, pool, pool_sources, mean, std = _load_data(config)
  classes, multi_label = lab["classes"], lab["multi_label"]
  channels = lab["train_images"].shape[-1]
  has_val = "val_images" in lab
  mesh = mesh or mesh_lib.make_mesh()
  n_dev = mesh.devices.size
  bs, bu = s.batch_size, s.batch_size * s.unlabelled_ratio
  if bs % n_dev or bu % n_dev:
    raise ValueError(f"config.swcl.batch_size={bs} (and x unlabelled_ratio={s.unlabelled_ratio}: {bu}) must be "
                     f"multiples of the mesh's {n_dev} devices")
  eval_bs = max(n_dev, (bs + bu) // n_dev * n_dev)

  backbone, model = _build(config, len(classes))
  tx = _optimizer(config)
  state = _init_state(config, model, tx, channels)
  has_bn = "batch_stats" in state
  train_step, predict = _steps(model, tx, multi_label=multi_label, threshold=float(s.confidence_threshold),
                               unlabelled_weight=float(s.unlabelled_weight), mean=mean, std=std, has_bn=has_bn)
  state = mesh_lib.replicate(state, mesh)
  manager = ckpt_lib.make_manager(out_dir, keep=2)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
  restored = ckpt_lib.restore_latest(manager, abstract)
  progress = {"val_curve": [], "train_curve": [], "seconds": 0.0}
  start = 0
  if restored is not None:
    start, state = restored[0], restored[1]
    saved = paths.read_json(paths.join(out_dir, PROGRESS_FILE))
    if saved is not None:
      progress = {"val_curve": [v for v in saved["val_curve"] if v["step"] <= start],
                  "train_curve": [v for v in saved["train_curve"] if v["step"] <= start],
                  "seconds": saved.get("seconds", 0.0)}
    print(f"pseudo-labeller: resuming from the checkpoint of step {start}/{s.steps}", flush=True)

  key = jax.random.key(config.seed)
  lab_stream = _Stream(len(lab["train_images"]), (config.seed, 1))
  pool_stream = _Stream(len(pool), (config.seed, 2))
  t_run = time.perf_counter()

  def step_fn(state, step):
    idx_l = lab_stream.batch(step, bs)
    batch = mesh_lib.shard_batch({"x": lab["train_images"][idx_l], "y": lab["train_labels"][idx_l]}, mesh)
    if bu:
      batch["u"] = mesh_lib.shard_batch({"u": pool[pool_stream.batch(step, bu)]}, mesh)["u"]
    else:  # unlabelled_ratio 0: supervised only (an empty pool batch, a static shape).
      batch["u"] = np.zeros((0, *pool.shape[1:]), pool.dtype)
    return train_step(state, batch["x"], batch["y"], batch["u"], jax.random.fold_in(key, step))

  def evaluate(state, step):
    if not has_val:
      return {}
    probs = predict_probs(predict, state["params"], state.get("batch_stats"), lab["val_images"], mesh=mesh,
                          batch_size=eval_bs)
    return _val_metrics(lab["val_labels"], probs, multi_label)

  def save(step, state, train_curve, val_curve, best):  # Stage 1 keeps its last state, not a selected one.
    del best
    ckpt_lib.save(manager, step, state)
    manager.wait_until_finished()
    _write_json(paths.join(out_dir, PROGRESS_FILE),
                {"val_curve": progress["val_curve"] + val_curve, "train_curve": progress["train_curve"] + train_curve,
                 "seconds": progress["seconds"] + time.perf_counter() - t_run})

  # SIGTERM / Ctrl-C: finish the step, checkpoint it (the batches are a function of the step), exit.
  with guard_lib.StopSignals() as signals:
    run = supervised.fit(name="pseudo-labeller", steps=s.steps, state=state, step_fn=step_fn, start=start,
                         evaluate=evaluate, eval_every=s.eval_every, save=save, signals=signals,
                         checkpoint_dir=str(manager.directory))
  state = run.state
  progress["val_curve"] += run.val_curve
  progress["train_curve"] += run.train_curve
  if start >= s.steps:  # Interrupted after the last checkpoint but before the summary: score it again.
    progress["val_curve"] = ([v for v in progress["val_curve"] if v["step"] != s.steps] +
                             [{"step": s.steps, **evaluate(state, s.steps)}])
  summary = _summary(config, lab=lab, pool=pool, pool_sources=pool_sources, progress=progress, start=start,
                     seconds=progress["seconds"] + time.perf_counter() - t_run, settings=settings, out_dir=out_dir)
  _write_json(paths.join(out_dir, SUMMARY_FILE), summary)
  fmt = lambda v: "n/a" if v is None else f"{v:.4f}"
  print(f"pseudo-labeller done: {s.steps} steps, final val AUROC {fmt(summary['final_val_auroc'])}, mask rate "
        f"{fmt(summary['final_mask_rate'])}; {summary['seconds']:.0f}s. Outputs in {out_dir}", flush=True)
  state = jax.device_get(state)
  variables = {"params": state["params"]}
  if has_bn:
    variables["batch_stats"] = state["batch_stats"]
  return backbone, variables, summary


__all__ = ["Classifier", "dry_run_part", "label_info", "load", "pool_entries", "read_summary", "source_name",
           "strong_view", "supervised_loss", "train", "unlabelled_loss", "weak_view"]
