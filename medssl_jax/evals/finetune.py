"""Fine-tuning a pretrained backbone with a new classification head: the low-label (1% / 10% / 100%)
evaluation protocol, with a frozen-backbone ("linear", SGD-trained) variant to set beside the L-BFGS probe.

Protocol (`finetune`, named in its result as "protocol"):
  * Model: the SSL model's backbone (`model.backbone`, parameters `variables['params']['backbone']`,
    BatchNorm statistics `variables['batch_stats']['backbone']` when it has any, e.g. a ResNet; a ViT has
    none) -> its features (ResNet: global average pool; ViT: final-normed class token) -> a new Dense head
    (`num_classes` outputs, kernel ~ N(0, 0.01^2), bias 0, drawn from `seed`). Projector / predictor heads
    of the SSL model are dropped.
  * Loss: softmax cross-entropy on integer labels; multi-label: sigmoid binary cross-entropy averaged over
    examples and labels.
  * Optimiser: AdamW (b1 0.9, b2 0.999), learning rate `learning_rate` with cosine decay to 0 over `steps`
    (after `warmup_steps` of linear warm-up from 0 when given); weight decay `weight_decay` on kernels only
    (conv / dense / attention weights; not biases, norm parameters, position embeddings or class token);
    the backbone's learning rate (and so its decoupled weight decay) is scaled by `backbone_lr_scale`.
  * Full fine-tuning (`backbone_lr_scale` > 0): BatchNorm in train mode (batch statistics of the global
    batch, i.e. synchronised across devices; running statistics updated, momentum as the backbone's).
    Frozen backbone (`backbone_lr_scale` = 0): the backbone runs in inference mode (running statistics)
    and is not differentiated; its parameters and statistics come back unchanged. Only the head trains.
  * Data: each step draws `batch_size` examples from a stream of seeded permutations of the training set
    (epoch after epoch; a batch may straddle two epochs). Train view (`augment=True`): random resized crop
    (area scale (0.5, 1), aspect ratio (3/4, 4/3)) to `image_size` + horizontal flip (p 0.5), nothing
    else, via `medssl_jax.augment` (per-example keys, sharding-invariant); `augment=False` and evaluation:
    whole-image resize to `image_size` (`eval_view`). Then (x - mean) / std.
  * Evaluation: BatchNorm in inference mode; eval batches of `eval_batch_size` (default `batch_size`),
    the last one zero-padded to full size and masked out (static shapes). Metrics from
    `medssl_jax.evals.metrics`: accuracy (argmax; multi-label: per-label accuracy at probability 0.5,
    averaged over labels and examples) and AUROC (binary: positive class; multi-class: mean one-vs-rest;
    multi-label: mean over labels of each label's AUROC, labels with one class in the split skipped).
  * Checkpoint selection: with validation data, the validation set is scored every `eval_every` steps and
    at the last step, and the checkpoint with the highest validation AUROC (nan counts as lowest; ties,
    common on small or easy validation sets: the higher validation accuracy, then the lower validation
    loss, then the earlier step) is scored on the test set. Without validation
    data the last step's checkpoint is scored. The test set is never used for selection.
  * Sharding: the global batch is split over the mesh's data axis (`train.mesh.shard_batch`), state is
    replicated, and the steps are `jax.jit` over global arrays (no pmap / shard_map). The result is a
    deterministic function of `seed` (batch order, head init, augmentation keys) and, up to float
    reduction order, does not depend on the number of devices.

Single process: the arrays are in this host's memory and the metrics are gathered on it.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from medssl_jax.augment import views as views_lib
from medssl_jax import paths
from medssl_jax.evals import metrics as metrics_lib
from medssl_jax.train import checkpoint as ckpt_lib
from medssl_jax.train import guard as guard_lib
from medssl_jax.train import mesh as mesh_lib
from medssl_jax.train import supervised
from medssl_jax.train.step import normalize

PROTOCOL = ("fine-tuning: backbone features -> new Dense head; AdamW, cosine decay, weight decay on kernels; "
            "backbone lr x backbone_lr_scale (0: frozen backbone in inference mode), BatchNorm in train mode "
            "when fine-tuned; random resized crop (0.5, 1) + flip; checkpoint chosen by validation AUROC "
            "when validation data is given, else the last step")


def describe(*, schedule: str = "cosine", milestones=(0.5, 0.75), augment: bool = True,
             weight_decay: float = 1e-4) -> str:
  """PROTOCOL with this run's schedule, weight decay and augmentation."""
  text = PROTOCOL
  if schedule == "multistep":
    text = text.replace("cosine decay", "lr x0.1 at " + ", ".join(f"{m:.0%}" for m in milestones) + " of training")
  if not weight_decay:
    text = text.replace("AdamW", "Adam").replace(", weight decay on kernels", "")
  if not augment:
    text = text.replace("random resized crop (0.5, 1) + flip", "no augmentation")
  return text

HEAD_INIT_STD = 0.01
CROP_SCALE = (0.5, 1.0)


def _train_view(image_size: int, *, volumes: bool = False):
  """Random resized crop (scale CROP_SCALE: of the area, of the volume for volumes) + flips (horizontal; each axis
  for volumes); every other op off (static zeros skip)."""
  if volumes:
    return views_lib.default_view3d(crop_size=image_size, crop_scale=CROP_SCALE, flip_p=0.5, rot90_p=0.0,
                                    intensity_p=0.0, gamma_p=0.0, blur_p=0.0, noise_p=0.0, erase_p=0.0)
  return views_lib.validate_view(dict(crop_size=image_size, crop_scale=CROP_SCALE, flip_p=0.5, jitter_p=0.0,
                                      grayscale_p=0.0, blur_p=0.0, solarize_p=0.0))


def _loss(logits, labels, multi_label: bool):
  """Per-example loss [B]."""
  logits = logits.astype(jnp.float32)
  if multi_label:
    return optax.sigmoid_binary_cross_entropy(logits, labels.astype(jnp.float32)).mean(axis=-1)
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def _probs(logits, multi_label: bool):
  logits = logits.astype(jnp.float32)
  return jax.nn.sigmoid(logits) if multi_label else jax.nn.softmax(logits)


# The schedule and decay mask live with the supervised training loop; re-exported for callers of this module.
SCHEDULES = supervised.SCHEDULES
learning_rate_at = supervised.learning_rate_at


@functools.lru_cache(maxsize=32)
def jitted_steps(backbone, num_classes: int, multi_label: bool, image_size: int, mean: tuple, std: tuple,
                 augment: bool, frozen: bool, has_bn: bool):
  """Jitted (init_head, train_step, eval_step), cached so repeated runs with one setup compile once.

  The optimiser's hyperparameters are traced arguments of the step (the learning rate is computed on the
  host per step), so a sweep over learning rate, weight decay, steps or backbone_lr_scale > 0 reuses one
  compiled step. AdamW is written as its parts (as optax.adamw): scale_by_adam, + weight_decay * param
  (kernels only), * -lr (x backbone_lr_scale for the backbone).
  """
  head = nn.Dense(num_classes, kernel_init=nn.initializers.normal(HEAD_INIT_STD), name="head")
  adam = optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8)

  def features(bb_params, batch_stats, x, train):
    return supervised.apply_with_batch_stats(backbone, bb_params, batch_stats, x, train=train, has_bn=has_bn)

  @jax.jit
  def init(key, bb_params, batch_stats, images):
    x = normalize(views_lib.eval_view(images, size=image_size), mean, std)
    f, _ = features(bb_params, batch_stats, x, False)
    params = {"head": head.init(key, f)["params"]}
    if not frozen:
      params["backbone"] = bb_params
    return params, adam.init(params)

  @jax.jit
  def train_step(params, frozen_bb, batch_stats, opt_state, images, labels, key, lr, weight_decay, bb_lr_scale):
    if augment:
      x = views_lib.augment_batch(key, images, _train_view(image_size, volumes=images.ndim == 5))
    else:
      x = views_lib.eval_view(images, size=image_size)
    x = normalize(x, mean, std)
    if frozen:
      f, _ = features(frozen_bb, batch_stats, x, False)
      f = jax.lax.stop_gradient(f)

    def loss_fn(params):
      if frozen:
        feats, new_bs = f, batch_stats
      else:
        feats, new_bs = features(params["backbone"], batch_stats, x, True)
      logits = head.apply({"params": params["head"]}, feats)
      return _loss(logits, labels, multi_label).mean(), new_bs

    (loss, new_bs), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = adam.update(grads, opt_state, params)
    decay = supervised.decay_mask(params)
    updates = jax.tree.map(lambda u, p, d: u + weight_decay * p if d else u, updates, params, decay)
    scale = {k: -lr * (bb_lr_scale if k == "backbone" else 1.0) for k in params}
    updates = {k: jax.tree.map(lambda u, s=scale[k]: (s * u).astype(u.dtype), v) for k, v in updates.items()}
    return optax.apply_updates(params, updates), new_bs, opt_state, loss

  @jax.jit
  def eval_step(bb_params, head_params, batch_stats, images, labels, mask):
    x = normalize(views_lib.eval_view(images, size=image_size), mean, std)
    f, _ = features(bb_params, batch_stats, x, False)
    logits = head.apply({"params": head_params}, f)
    return _probs(logits, multi_label), jnp.sum(_loss(logits, labels, multi_label) * mask)

  return init, train_step, eval_step


def _check_split(images, labels, *, name: str, num_classes: int, multi_label: bool):
  """Validates one split; returns (images, labels) as numpy arrays (labels int32 / float32)."""
  images = np.asarray(images)
  labels = np.asarray(labels)
  if images.ndim not in (4, 5) or images.shape[-1] not in (1, 3):
    raise ValueError(f"{name}_images must be images [N, H, W, C] or volumes [N, D, H, W, C] with C in (1, 3), "
                     f"got shape {images.shape}")
  if images.dtype != np.uint8:
    raise ValueError(f"{name}_images must be uint8, got {images.dtype}")
  if len(images) == 0:
    raise ValueError(f"{name}_images is empty")
  if len(labels) != len(images):
    raise ValueError(f"{name}_labels has {len(labels)} rows but {name}_images has {len(images)}; they must match")
  if multi_label:
    if labels.ndim != 2 or labels.shape[1] != num_classes:
      raise ValueError(f"{name}_labels must be [N, num_classes] = [{len(images)}, {num_classes}] 0/1 for "
                       f"multi_label=True, got shape {labels.shape}")
    if not np.isin(labels, (0, 1)).all():
      raise ValueError(f"{name}_labels must hold only 0/1 for multi_label=True")
    return images, labels.astype(np.float32)
  if labels.ndim != 1:
    raise ValueError(f"{name}_labels must be [N] integer classes for multi_label=False, got shape {labels.shape}"
                     + ("; pass multi_label=True for [N, K] 0/1 labels" if labels.ndim == 2 else ""))
  if not (np.issubdtype(labels.dtype, np.integer) or (labels == np.round(labels)).all()):
    raise ValueError(f"{name}_labels must be integer class indices, got dtype {labels.dtype}")
  if labels.min() < 0 or labels.max() >= num_classes:
    raise ValueError(f"{name}_labels must be in [0, num_classes={num_classes}), got range "
                     f"[{labels.min()}, {labels.max()}]")
  return images, labels.astype(np.int32)


def _check_splits(splits: dict, *, num_classes: int, multi_label: bool, mean, std) -> dict:
  """{name: (images, labels)} checked (`_check_split`; val may be (None, None)), one channel count throughout."""
  out = {name: (None, None) if images is None else
         _check_split(images, labels, name=name, num_classes=num_classes, multi_label=multi_label)
         for name, (images, labels) in splits.items()}
  channels = out["train"][0].shape[-1]
  for name, (images, _) in out.items():
    if images is not None and images.shape[-1] != channels:
      raise ValueError(f"{name}_images has {images.shape[-1]} channels, train_images has {channels}")
  if len(mean) not in (1, channels) or len(std) not in (1, channels):
    raise ValueError(f"mean / std must have 1 or {channels} entries (the images' channels), got {mean} / {std}")
  return out


def _metrics(labels, probs, multi_label: bool) -> dict:
  del multi_label  # Read from the labels' shape.
  return metrics_lib.classification_metrics(labels, probs)


def _check_settings(*, model, variables, num_classes, multi_label, steps, warmup_steps, backbone_lr_scale, schedule,
                    eval_every, val_given):
  """Refuses a model without a backbone and out-of-range settings, naming the argument."""
  if not hasattr(model, "backbone"):
    raise ValueError(f"model must have a `backbone` (e.g. SSLModel); got {type(model).__name__}")
  if "backbone" not in variables.get("params", {}):
    raise ValueError("variables['params'] has no 'backbone' entry; pass the SSL model's full variables "
                     f"(found params keys {sorted(variables.get('params', {}))})")
  if not isinstance(num_classes, int) or num_classes < (1 if multi_label else 2):
    raise ValueError(f"num_classes={num_classes!r} must be an int >= {1 if multi_label else 2}"
                     f"{' (multi-label)' if multi_label else ' (binary data: 2)'}")
  if not isinstance(steps, int) or steps < 1:
    raise ValueError(f"steps={steps!r} must be a positive int")
  if not isinstance(warmup_steps, int) or not 0 <= warmup_steps < steps:
    raise ValueError(f"warmup_steps={warmup_steps!r} must be an int in [0, steps={steps})")
  if not backbone_lr_scale >= 0:
    raise ValueError(f"backbone_lr_scale={backbone_lr_scale!r} must be >= 0 (0 freezes the backbone)")
  if schedule not in SCHEDULES:
    raise ValueError(f"schedule={schedule!r}; valid choices: {list(SCHEDULES)}")
  if eval_every is not None and (not isinstance(eval_every, int) or eval_every < 1):
    raise ValueError(f"eval_every={eval_every!r} must be None or a positive int")
  if val_given[0] != val_given[1]:
    raise ValueError("val_images and val_labels must be given together (or neither)")


def _result(test: dict, *, run, lrs, selected, has_val, eval_every, multi_label, num_train, steps, batch_size,
            learning_rate, weight_decay, backbone_lr_scale, augment, seed, image_size, schedule, milestones) -> dict:
  """The test metrics with the selection, curves, protocol and settings of one fine-tuning run."""
  sel_step, val_m = selected
  result = dict(test)
  result.update(
      selected_step=sel_step,
      selection=(f"highest validation AUROC over evaluations every {eval_every} steps and at step {steps}"
                 if has_val and eval_every else "validation AUROC scored at the last step only (eval_every=None)"
                 if has_val else "last step (no validation data)"),
      val_accuracy=None if val_m is None else val_m["accuracy"],
      val_auroc=None if val_m is None else val_m["auroc"],
      curve={"step": [e["step"] for e in run.train_curve], "train_loss": [e["loss"] for e in run.train_curve],
             "learning_rate": lrs},
      val_curve=[{k: v[k] for k in ("step", "loss", "accuracy", "auroc")} for v in run.val_curve],
      multi_label=bool(multi_label),
      protocol=describe(schedule=schedule, milestones=milestones, augment=augment, weight_decay=weight_decay),
      num_train=num_train, steps=steps, batch_size=batch_size, learning_rate=float(learning_rate),
      weight_decay=float(weight_decay),
      backbone_lr_scale=float(backbone_lr_scale), augment=bool(augment), seed=seed, image_size=int(image_size),
      schedule=schedule, milestones=list(milestones) if schedule == "multistep" else None)
  return result


def _predictor(eval_step, *, channels: int, num_classes: int, multi_label: bool, batch_size: int, mesh,
               ndim: int = 4):
  """uint8 images [M, H, W, C] (volumes [M, D, H, W, C] when `ndim` is 5) -> class probabilities of a trained
  head, as the test split is scored."""
  layout = "[M, D, H, W, " if ndim == 5 else "[M, H, W, "

  def predictor(images):
    images = np.asarray(images)
    if images.ndim != ndim or images.dtype != np.uint8 or images.shape[-1] != channels:
      raise ValueError(f"fine-tuned predictor: images must be uint8 {layout}{channels}] (the training "
                       f"images' rank and channels), got {images.dtype} {images.shape}")
    if not len(images):
      return np.zeros((0, num_classes), np.float32)
    label_shape = (num_classes,) if multi_label else ()
    zeros = np.zeros((len(images), *label_shape), np.float32 if multi_label else np.int32)  # Loss unused.
    probs, _ = mesh_lib.apply_batched(lambda b: eval_step(b["x"], b["y"], b["mask"]), {"x": images, "y": zeros},
                                      batch_size=batch_size, mesh=mesh, mask=True)
    return probs

  return predictor


def _fingerprint(variables) -> str:
  """A short hash of the starting weights: each leaf's path, shape and float64 sum."""
  leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(variables))[0]
  text = repr([(jax.tree_util.keystr(p), np.shape(x), float(np.sum(np.asarray(x, np.float64)))) for p, x in leaves])
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def _plain(tree):
  """JSON-able copy of metrics (numpy / jax scalars become Python numbers)."""
  return jax.tree.map(lambda v: v.tolist() if hasattr(v, "tolist") else v, tree)


def _resumable_fit(fit, state, *, settings: dict, directory: str, every_s: float, progress: str | None):
  """`supervised.fit` from the checkpoint in <directory>/<hash of settings> when there is one, writing one there
  at validations (at most every `every_s` seconds, and at the last step) and on SIGTERM / Ctrl-C."""
  key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
  folder = paths.join(directory, key)
  manager = ckpt_lib.make_manager(folder, keep=1)
  steps = settings["steps"]
  tree = {"state": state, "best": state[:2]}
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
  restored = ckpt_lib.restore_latest(manager, abstract, data_iter=False)
  start, best, done = 0, None, {"train_curve": [], "val_curve": [], "seconds": 0.0}
  if restored is not None:
    start, tree = restored[0], restored[1]
    done = ckpt_lib.read_json_item(folder, start, "metrics")
    state = tree["state"]
    if done["best_step"] is not None:  # Its optimizer state is not kept: only its weights are scored.
      best = (done["best_step"], (*tree["best"], None), done["best_metrics"])
    if progress:
      print(f"finetune [{progress}]: resuming from the checkpoint of step {start}/{steps} in {folder}", flush=True)
  t0, last = time.perf_counter(), [time.perf_counter()]

  def save(step, state, train_curve, val_curve, best):
    if not (step == steps or signals.requested or time.perf_counter() - last[0] >= every_s):
      return
    b_step, b_state, b_metrics = best if best is not None else (None, state, None)
    ckpt_lib.save(manager, step, {"state": state, "best": tuple(b_state[:2])}, metrics=_plain(dict(
        settings=settings, best_step=b_step, best_metrics=b_metrics, train_curve=done["train_curve"] + train_curve,
        val_curve=done["val_curve"] + val_curve, seconds=done["seconds"] + time.perf_counter() - t0)))
    manager.wait_until_finished()
    last[0] = time.perf_counter()

  with guard_lib.StopSignals() as signals:
    run = fit(state=state, start=start, best=best, save=save, signals=signals, checkpoint_dir=str(manager.directory))
  run.train_curve = done["train_curve"] + run.train_curve
  run.val_curve = done["val_curve"] + run.val_curve
  run.seconds += done["seconds"]
  return run


def finetune(*, model, variables, train_images, train_labels, val_images=None, val_labels=None, test_images,
             test_labels, num_classes: int, multi_label: bool = False, image_size: int, mean, std, steps: int,
             batch_size: int, learning_rate: float, weight_decay: float, backbone_lr_scale: float = 1.0,
             augment: bool = True, seed: int = 0, mesh=None, eval_every: int | None = None,
             warmup_steps: int = 0, eval_batch_size: int | None = None, return_variables: bool = False,
             schedule: str = "cosine", milestones=(0.5, 0.75), return_predictor: bool = False,
             progress: str | None = None, checkpoint_dir: str | None = None, checkpoint_every_s: float = 300.0,
             test_curve: bool = False):
  """Fine-tunes `model.backbone` with a new Dense head and scores it (protocol: see the module docstring).

  Args:
    model, variables: an SSL model with a `backbone` attribute (SSLModel, MAEModel) and its variables.
    train_images, val_images, test_images: uint8 [N, H, W, C]. Validation data is optional (both or none).
    train_labels, val_labels, test_labels: int [N] (multi_label=False) or 0/1 [N, num_classes].
    num_classes: head outputs (>= 2 for single-label data; binary data uses 2 softmax outputs).
    image_size, mean, std: the input resolution and per-channel normalisation used in pretraining.
    steps, batch_size, learning_rate, weight_decay, warmup_steps: optimisation (global batch; batch_size
      must be divisible by the mesh's device count).
    backbone_lr_scale: backbone learning-rate multiplier; 0 freezes the backbone (linear head by SGD).
    augment: random resized crop (0.5, 1) + flip on training batches; False: whole-image resize only.
    seed: batch order, head init and augmentation keys.
    mesh: a 1-D data mesh (`train.mesh.make_mesh`); default all devices.
    eval_every: score the validation set every this many steps (and at the last step) for checkpoint
      selection; None: only at the last step.
    eval_batch_size: evaluation batch (default batch_size), rounded down to a multiple of the devices.
    return_variables: add "variables" (the selected checkpoint: {"params": {"backbone", "head"},
      "batch_stats": {"backbone"}}, host numpy) to the result; off by default so results stay JSON-able.
    schedule, milestones: "cosine" (default) or "multistep" (x0.1 at each milestone, given as fractions
      of `steps`; the MedMNIST recipe uses (0.5, 0.75)); see `learning_rate_at`.
    progress: a name to print progress lines under (step, train loss, validation AUROC, best so far,
      steps/s, ETA) at each validation and about ten times a run; None prints nothing.
    return_predictor: return (result, predictor) instead of result, where predictor(uint8 images
      [M, H, W, C]) -> probabilities [M, num_classes] (softmax; sigmoid for multi-label) of the selected
      checkpoint, evaluated exactly as the test split is (e.g. on another dataset: evals/ood.py).
    checkpoint_dir: resume and checkpoint here (None: neither). The checkpoint (training state, the state
      selected so far, curves) goes to <checkpoint_dir>/<fingerprint>/, the fingerprint being a hash of the
      settings, data sizes and starting weights, so a call that would compute something else never resumes it.
      It is written at a validation when `checkpoint_every_s` seconds have passed since the last one, at the last
      step, and on SIGTERM / Ctrl-C (which then stops the run); without validation data only on those signals.
      A resumed run draws the same batches and keys as an uninterrupted one (they are functions of the step).
    test_curve: a diagnostic: also score the test split at every validation, returned as "test_curve"
      [{"step", "accuracy", "auroc"}]; never used for selection (the test metrics returned are the same).

  Returns:
    dict: test "accuracy", "auroc", "auroc_per_class", "loss"; "selected_step", "selection" (how it was
    chosen), "val_accuracy" / "val_auroc" at that step (None without validation data); "curve" {"step",
    "train_loss"} for every step and "val_curve" [{"step", "loss", "accuracy", "auroc"}]; "protocol" and
    the hyperparameters.
  """
  _check_settings(model=model, variables=variables, num_classes=num_classes, multi_label=multi_label, steps=steps,
                  warmup_steps=warmup_steps, backbone_lr_scale=backbone_lr_scale, schedule=schedule,
                  eval_every=eval_every, val_given=(val_images is not None, val_labels is not None))
  mean, std = tuple(float(m) for m in np.ravel(mean)), tuple(float(s) for s in np.ravel(std))
  splits = _check_splits(dict(train=(train_images, train_labels), val=(val_images, val_labels),
                              test=(test_images, test_labels)), num_classes=num_classes, multi_label=multi_label,
                         mean=mean, std=std)
  (train_images, train_labels), (val_images, val_labels), (test_images, test_labels) = (
      splits["train"], splits["val"], splits["test"])
  has_val, channels = val_images is not None, train_images.shape[-1]

  mesh = mesh or mesh_lib.make_mesh()
  n_dev = mesh.devices.size
  if not isinstance(batch_size, int) or batch_size < 1 or batch_size % n_dev:
    raise ValueError(f"batch_size={batch_size!r} must be a positive multiple of the mesh's {n_dev} devices")
  eval_bs = max(n_dev, (eval_batch_size or batch_size) // n_dev * n_dev)

  frozen = backbone_lr_scale == 0
  bb_params = variables["params"]["backbone"]
  batch_stats = variables.get("batch_stats", {}).get("backbone", {})
  has_bn = bool(jax.tree.leaves(batch_stats))
  init, train_step, eval_step = jitted_steps(model.backbone, num_classes, bool(multi_label), int(image_size), mean,
                                             std, bool(augment), frozen, has_bn)

  rep = lambda t: mesh_lib.replicate(t, mesh)
  # Own copies: the caller's variables are never aliased by the training state.
  bb_params, batch_stats = rep(jax.tree.map(np.asarray, bb_params)), rep(jax.tree.map(np.asarray, batch_stats))
  key = jax.random.key(seed)
  params, opt_state = init(jax.random.fold_in(key, 0), bb_params, batch_stats,
                           mesh_lib.shard_batch({"x": train_images[:n_dev]}, mesh)["x"])
  params, opt_state = rep(params), rep(opt_state)

  def evaluate(bb, hd, bs, images, labels):
    probs, loss = mesh_lib.apply_batched(lambda b: eval_step(bb, hd, bs, b["x"], b["y"], b["mask"]),
                                         {"x": images, "y": labels}, batch_size=eval_bs, mesh=mesh, mask=True)
    return dict(_metrics(labels, probs, multi_label), loss=loss / len(images))

  # Batch order: a stream of seeded permutations, one per epoch.
  rng = np.random.default_rng(seed)
  n = len(train_images)
  order = np.concatenate([rng.permutation(n) for _ in range(math.ceil(steps * batch_size / n))])

  def step_fn(state, step):
    params, batch_stats, opt_state = state
    idx = order[(step - 1) * batch_size:step * batch_size]
    b = mesh_lib.shard_batch({"x": train_images[idx], "y": train_labels[idx]}, mesh)
    lr = learning_rate_at(step, learning_rate=learning_rate, steps=steps, warmup_steps=warmup_steps,
                          schedule=schedule, milestones=tuple(milestones))
    params, batch_stats, opt_state, loss = train_step(
        params, bb_params, batch_stats, opt_state, b["x"], b["y"], jax.random.fold_in(key, step),
        np.float32(lr), np.float32(weight_decay), np.float32(backbone_lr_scale))
    return (params, batch_stats, opt_state), {"loss": loss}

  def validate(state, step):
    params, batch_stats, _ = state
    bb = bb_params if frozen else params["backbone"]
    m = evaluate(bb, params["head"], batch_stats, val_images, val_labels)
    if test_curve:  # Extra keys: the selection ranks validation auroc / accuracy / loss only.
      t = evaluate(bb, params["head"], batch_stats, test_images, test_labels)
      m.update(test_accuracy=t["accuracy"], test_auroc=t["auroc"])
    return m
  # Selection: the highest validation AUROC (nan lowest), then accuracy, then the lower loss, then the earlier step.
  rank = lambda m: (m["auroc"] if np.isfinite(m["auroc"]) else -np.inf, m["accuracy"], -m["loss"])
  state = (params, batch_stats, opt_state)
  fit = functools.partial(supervised.fit, name=f"finetune [{progress}]", steps=steps, step_fn=step_fn,
                          evaluate=validate if has_val else None, eval_every=eval_every or 0, rank=rank,
                          record_every=1, quiet=not progress)
  if checkpoint_dir is None:
    run = fit(state=state)
  else:
    settings = dict(steps=steps, batch_size=batch_size, learning_rate=float(learning_rate),
                    weight_decay=float(weight_decay), backbone_lr_scale=float(backbone_lr_scale), augment=bool(augment),
                    seed=seed, image_size=int(image_size), schedule=schedule, milestones=list(milestones),
                    warmup_steps=warmup_steps, eval_every=eval_every, num_classes=num_classes,
                    multi_label=bool(multi_label), mean=mean, std=std,
                    sizes=[None if x is None else len(x) for x in (train_images, val_images, test_images)],
                    test_curve=bool(test_curve),
                    start=_fingerprint(variables))
    run = _resumable_fit(fit, state, settings=settings, directory=checkpoint_dir, every_s=checkpoint_every_s,
                         progress=progress)
  lrs = [learning_rate_at(s, learning_rate=learning_rate, steps=steps, warmup_steps=warmup_steps,
                          schedule=schedule, milestones=tuple(milestones)) for s in range(1, steps + 1)]
  sel_step, (sel_params, sel_bs, _), val_m = ((steps, run.state, None) if run.best_state is None else
                                              (run.best_step, run.best_state, run.best_metrics))
  sel_bb = bb_params if frozen else sel_params["backbone"]
  test = evaluate(sel_bb, sel_params["head"], sel_bs, test_images, test_labels)
  result = _result(test, run=run, lrs=lrs, selected=(sel_step, val_m), has_val=has_val, eval_every=eval_every,
                   multi_label=multi_label, num_train=n, steps=steps, batch_size=batch_size,
                   learning_rate=learning_rate, weight_decay=weight_decay, backbone_lr_scale=backbone_lr_scale,
                   augment=augment, seed=seed, image_size=image_size, schedule=schedule, milestones=milestones)
  if test_curve:
    result["test_curve"] = [{"step": v["step"], "accuracy": v["test_accuracy"], "auroc": v["test_auroc"]}
                            for v in run.val_curve]
  if return_variables:
    out = {"params": {"backbone": sel_bb, "head": sel_params["head"]}}
    if has_bn:
      out["batch_stats"] = {"backbone": sel_bs}
    result["variables"] = jax.device_get(out)
  if not return_predictor:
    return result
  return result, _predictor(functools.partial(eval_step, sel_bb, sel_params["head"], sel_bs), channels=channels,
                            num_classes=num_classes, multi_label=multi_label, batch_size=eval_bs, mesh=mesh,
                            ndim=train_images.ndim)
