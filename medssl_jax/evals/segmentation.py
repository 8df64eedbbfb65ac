"""Segmentation transfer: a U-Net on a (pretrained) ResNet encoder, trained on patches, scored on whole images.

Protocol (`finetune_segmentation`, named in its result as "protocol"):
  * Model: `UNet(backbone, num_classes=1)` (medssl_jax/models/unet.py). Its "backbone" parameters and
    BatchNorm statistics start from the given backbone variables (the tree of a plain `ResNet`, e.g. an
    SSL model's `backbone`); the decoder is randomly initialised from `seed`, except the output bias, set to
    the log-odds of the foreground fraction of the training FOV pixels (the prior init of Lin et al. 2017:
    otherwise the first steps go to pushing every background pixel down from p = 0.5).
  * Training data: `batch_size` random `patch_size` x `patch_size` crops per step, drawn on device from
    the training images (uniform over images and crop origins; origins lie on a grid of stride
    patch_size // 16 plus a uniform jitter, and only crops at least MIN_CROP_FOV inside the field of view
    are drawn). Augmentation (`augment=True`, on device with jax.random, one key per crop): horizontal
    and vertical flips (p 0.5 each), a rotation by k x 90 degrees (k uniform in 0-3), brightness x U(0.8,
    1.2) and contrast x U(0.8, 1.2) about the crop's mean, clipped to [0, 1]. Then (x - mean) / std.
  * Loss: binary cross-entropy + soft Dice (1 - (2 sum p y + 1) / (sum p + sum y + 1) over the batch),
    on every pixel of the crops.
  * Optimiser: AdamW (b1 0.9, b2 0.999), cosine decay of `learning_rate` to 0 over `steps`, weight decay on
    kernels only; the backbone's learning rate (and decoupled weight decay) is x `backbone_lr_scale`
    (0: the backbone's parameters are not trained; its BatchNorm running statistics still adapt).
    BatchNorm in train mode (batch statistics of the crops; running statistics updated).
  * Test: each whole image (any size) is padded (reflect where it fits, else zeros) at the bottom and
    right to a multiple of 32, segmented in inference mode (running BatchNorm statistics) in batches of
    up to EVAL_BATCH images, and the logits are cropped back to the image. Metrics
    (`segmentation_metrics.segmentation_report`): Dice, pixel AUROC, accuracy, sensitivity, specificity
    over all test pixels inside the FOV pooled across images (the retinal-vessel literature's
    convention; probability >= `threshold` is vessel), plus the mean per-image Dice. No validation
    split and no checkpoint selection: the last step is scored.

Mask modes (`mask_mode`, config.segmentation.mask_mode): "binary" (above; mask > 0 is foreground, e.g. vessel
maps) or "classes": masks are class-id label maps 0..K-1 (0 = background; e.g. REFUGE: 1 optic disc rim,
2 optic cup), K inferred from the training masks (max id + 1) unless given. Then the U-Net has K output
channels with a softmax; output biases at the log of each class's training FOV pixel fraction (the same
prior init); loss = softmax cross-entropy + multi-class soft Dice (`multiclass_soft_dice_loss`: the mean over
the foreground classes of the binary soft Dice loss); the augmentation moves the class map with the image.
A pixel's prediction is the argmax class (no threshold); metrics are those of
`segmentation_metrics.multiclass_segmentation_report` (per foreground class Dice / IoU / one-vs-rest pixel
AUROC and their means, accuracy, Dice of each cumulative group "class >= k": REFUGE's whole disc and cup).

FOV convention (`fov_masks`): True = the pixel is inside the field of view and is scored. "auto" (CHASE_DB1
ships no FOV masks): pixels whose brightest channel exceeds AUTO_FOV_THRESHOLD (20 / 255), cleaned up
per image by keeping the largest connected component and filling its holes. A mask feature
(e.g. HRF / DRIVE "fov_mask"): its non-zero pixels. "none": every pixel.

Mode "segmentation" (medssl_jax/modes/segmentation.py) runs this protocol for every encoder and seed of
config.segmentation.
"""
from __future__ import annotations

import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from medssl_jax import models
from medssl_jax import paths
from medssl_jax.evals import segmentation_metrics
from medssl_jax.models.resnet import ResNet
from medssl_jax.models.unet import UNet
from medssl_jax.train import mesh as mesh_lib
from medssl_jax.train import supervised
from medssl_jax.train.supervised import learning_rate_at
from medssl_jax.train.step import normalize

PROTOCOL = ("segmentation transfer: U-Net (encoder from the given backbone, bilinear decoder from random init, "
            "output bias at the foreground prior) "
            "trained on random {patch}px crops (at least {min_fov:.0%} field of view){aug}; BCE + soft Dice; AdamW, cosine "
            "decay, weight decay on kernels, backbone lr x {bb}; BatchNorm in train mode; whole test images padded "
            "to a multiple of 32; metrics over field-of-view pixels pooled across test images, threshold {thr}")

PROTOCOL_CLASSES = ("segmentation transfer, {k} classes (class-id masks, 0 = background): U-Net (encoder from the "
                    "given backbone, bilinear decoder from random init, softmax output biases at the class priors) "
                    "trained on random {patch}px crops (at least {min_fov:.0%} field of view){aug}; softmax CE + "
                    "soft Dice averaged over the foreground classes; AdamW, cosine decay, weight decay on kernels, "
                    "backbone lr x {bb}; BatchNorm in train mode; whole test images padded to a multiple of 32; "
                    "argmax prediction; metrics over field-of-view pixels pooled across test images")

MASK_MODES = ("binary", "classes")
FOV_CHOICES = ("auto", "none")
AUTO_FOV_THRESHOLD = 20  # uint8 level of the brightest channel above which a pixel is inside the FOV.
MIN_CROP_FOV = 0.25      # Training crops hold at least this fraction of FOV pixels.
PAD_MULTIPLE = 32        # Total stride of a ResNet with the ImageNet stem.
EVAL_BATCH = 4
BRIGHTNESS = 0.2         # Brightness / contrast factors drawn from U(1 - x, 1 + x).
CONTRAST = 0.2
METRICS = ("dice", "auroc", "accuracy", "sensitivity", "specificity")
# config.segmentation keys added after results.json files existed, with their defaults: `run` leaves a key out of
# a run's "settings" while it holds this value, so results computed before the key existed are still reused.
SETTINGS_DEFAULTS = {"mask_mode": "binary"}


def describe(*, patch_size: int, augment: bool, backbone_lr_scale: float, threshold: float,
             mask_mode: str = "binary", num_classes: int | None = None) -> str:
  """PROTOCOL (PROTOCOL_CLASSES for mask_mode "classes", with `num_classes`) with this run's patch size,
  augmentation, backbone lr scale and threshold (binary only)."""
  aug = " with flips, 90-degree rotations, brightness/contrast jitter" if augment else ", no augmentation"
  bb = f"{backbone_lr_scale:g}" + (" (frozen parameters)" if backbone_lr_scale == 0 else "")
  if mask_mode == "classes":
    return PROTOCOL_CLASSES.format(k=num_classes, patch=patch_size, min_fov=MIN_CROP_FOV, aug=aug, bb=bb)
  return PROTOCOL.format(patch=patch_size, min_fov=MIN_CROP_FOV, aug=aug, bb=bb, thr=f"{threshold:g}")


# ----------------------------------------------------------------------------------------------------
# Field of view.

def _auto_fov(image: np.ndarray) -> np.ndarray:
  from scipy import ndimage
  fov = image.max(axis=-1) > AUTO_FOV_THRESHOLD
  # The largest 8-connected component: drops bright speckle (JPEG noise, text) outside the disc.
  labels, n = ndimage.label(fov, structure=np.ones((3, 3), bool))
  if n > 1:
    sizes = ndimage.sum(fov, labels, index=np.arange(1, n + 1))
    fov = labels == 1 + int(np.argmax(sizes))
  return ndimage.binary_fill_holes(fov)  # Dark vessels / lesions inside the disc stay in the FOV.


def fov_masks(images, *, fov, masks=None) -> np.ndarray:
  """Field-of-view masks bool [N, H, W] (True = inside, scored) of uint8 images [N, H, W, C].

  fov: "auto": pixels whose brightest channel is above AUTO_FOV_THRESHOLD (20 of 255), per image cleaned
    to the largest connected component (8-connected) with its holes filled (for fundus
    photographs without official FOV masks, e.g. CHASE_DB1); "none": every pixel; an array [N, H, W(, 1)]:
    that mask (non-zero = inside); or the name of a mask feature, with its array passed as `masks`.
  Raises ValueError for an unknown `fov`, a shape mismatch, or an image whose FOV is empty.
  """
  images = np.asarray(images)
  if images.ndim != 4:
    raise ValueError(f"fov_masks: images must be [N, H, W, C], got shape {images.shape}")
  n, h, w = images.shape[:3]
  if isinstance(fov, str) and fov in FOV_CHOICES:
    if fov == "none":
      return np.ones((n, h, w), bool)
    out = np.stack([_auto_fov(im) for im in images]) if n else np.zeros((0, h, w), bool)
    source = "fov='auto'"
  else:
    if isinstance(fov, str):
      if masks is None:
        raise ValueError(f"fov={fov!r} is not known; valid choices: {list(FOV_CHOICES)}, a mask array, or the "
                         f"name of a FOV mask feature together with its array as masks=")
      source = f"fov mask {fov!r}"
    else:
      masks, source = fov, "the fov mask array"
    out = np.asarray(masks)
    if out.ndim == 4 and out.shape[-1] == 1:
      out = out[..., 0]
    if out.shape != (n, h, w):
      raise ValueError(f"fov_masks: {source} has shape {out.shape}; expected [N, H, W] = {(n, h, w)} "
                       f"(or [N, H, W, 1]) to match the images {images.shape}")
    out = out != 0
  empty = np.flatnonzero(~out.reshape(n, -1).any(axis=1))
  if empty.size:
    raise ValueError(f"fov_masks: {source} is empty (no pixel inside) for image(s) {empty[:10].tolist()}")
  return out


# ----------------------------------------------------------------------------------------------------
# Training and inference.

def _augment_one(key, image, mask):
  """Flips, a k x 90-degree rotation (image and mask alike) and brightness/contrast jitter (image only)."""
  k_h, k_v, k_rot, k_b, k_c = jax.random.split(key, 5)
  channels = image.shape[-1]
  both = jnp.concatenate([image, mask[..., None]], axis=-1)
  both = jnp.where(jax.random.bernoulli(k_h), both[:, ::-1], both)
  both = jnp.where(jax.random.bernoulli(k_v), both[::-1], both)
  both = jax.lax.switch(jax.random.randint(k_rot, (), 0, 4),
                        [functools.partial(jnp.rot90, k=k) for k in range(4)], both)
  image, mask = both[..., :channels], both[..., channels]
  image = image * jax.random.uniform(k_b, (), minval=1 - BRIGHTNESS, maxval=1 + BRIGHTNESS)
  mu = jnp.mean(image)
  image = (image - mu) * jax.random.uniform(k_c, (), minval=1 - CONTRAST, maxval=1 + CONTRAST) + mu
  return jnp.clip(image, 0.0, 1.0), mask


def soft_dice_loss(probs, targets, *, smooth: float = 1.0):
  """1 - (2 sum p y + smooth) / (sum p + sum y + smooth), summed over every pixel of the batch."""
  inter = jnp.sum(probs * targets)
  return 1.0 - (2.0 * inter + smooth) / (jnp.sum(probs) + jnp.sum(targets) + smooth)


def multiclass_soft_dice_loss(probs, onehot, *, smooth: float = 1.0):
  """Mean over the foreground classes k = 1..K-1 of 1 - (2 sum p_k y_k + smooth) / (sum p_k + sum y_k + smooth),
  each sum over every pixel of the batch; probs, onehot: [..., K] (class 0 = background, left out)."""
  axes = tuple(range(probs.ndim - 1))
  inter = jnp.sum(probs[..., 1:] * onehot[..., 1:], axis=axes)
  den = jnp.sum(probs[..., 1:], axis=axes) + jnp.sum(onehot[..., 1:], axis=axes)
  return jnp.mean(1.0 - (2.0 * inter + smooth) / (den + smooth))


@functools.lru_cache(maxsize=16)
def train_functions(model: UNet, patch: int, mean: tuple, std: tuple, augment: bool, frozen: bool, batch_size: int,
               stride: int, batch_sharding):
  """Jitted train_step(params, batch_stats, opt_state, images, masks, origins, key, lr, weight_decay, bb_lr_scale)
  -> (params, batch_stats, opt_state, loss) and init_opt(params), cached so repeated seeds / encoders with one
  setup compile once. Each step crops `batch_size` patches of uint8 `images` [N, H, W, C] / `masks` [N, H, W] at
  random rows of `origins` [M, 3] (image index, top, left) jittered by up to `stride` pixels.

  The learning rate, weight decay and backbone lr scale are traced arguments (computed on the host).
  model.num_classes 1: binary (sigmoid, BCE + soft Dice); K >= 2: class ids (softmax CE + multi-class soft Dice).
  """
  num_classes = model.num_classes
  adam = optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8)

  def sample(key, images, masks, origins):
    k_idx, k_jit, k_aug = jax.random.split(key, 3)
    h, w, c = images.shape[1:]
    o = origins[jax.random.randint(k_idx, (batch_size,), 0, origins.shape[0])]
    jit = jax.random.randint(k_jit, (batch_size, 2), 0, stride)
    y0 = jnp.minimum(o[:, 1] + jit[:, 0], h - patch)
    x0 = jnp.minimum(o[:, 2] + jit[:, 1], w - patch)
    crop = lambda i, y, x: (jax.lax.dynamic_slice(images, (i, y, x, 0), (1, patch, patch, c))[0],
                            jax.lax.dynamic_slice(masks, (i, y, x), (1, patch, patch))[0])
    x, m = jax.vmap(crop)(o[:, 0], y0, x0)
    x, m = x.astype(jnp.float32) / 255.0, m.astype(jnp.float32)
    if augment:
      x, m = jax.vmap(_augment_one)(jax.random.split(k_aug, batch_size), x, m)
    if batch_sharding is not None:
      x, m = (jax.lax.with_sharding_constraint(a, batch_sharding) for a in (x, m))
    return normalize(x, mean, std), m

  @jax.jit
  def train_step(params, batch_stats, opt_state, images, masks, origins, key, lr, weight_decay, bb_lr_scale):
    x, m = sample(key, images, masks, origins)
    trainable = {k: v for k, v in params.items() if not (frozen and k == "backbone")}

    def loss_fn(trainable):
      logits, new = model.apply({"params": {**params, **trainable}, "batch_stats": batch_stats}, x, train=True,
                                mutable=["batch_stats"])
      if num_classes == 1:
        logits = logits[..., 0]
        loss = (optax.sigmoid_binary_cross_entropy(logits, m).mean()
                + soft_dice_loss(jax.nn.sigmoid(logits), m))
      else:  # m holds class ids as float32 (exact after flips / rotations).
        labels = m.astype(jnp.int32)
        loss = (optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
                + multiclass_soft_dice_loss(jax.nn.softmax(logits), jax.nn.one_hot(labels, num_classes)))
      return loss, new["batch_stats"]

    (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
    updates, opt_state = adam.update(grads, opt_state, trainable)
    updates = jax.tree.map(lambda u, p, d: u + weight_decay * p if d else u, updates, trainable,
                           supervised.decay_mask(trainable))
    updates = {k: jax.tree.map(lambda u, s=-lr * (bb_lr_scale if k == "backbone" else 1.0): (s * u).astype(u.dtype),
                               v) for k, v in updates.items()}
    return {**params, **optax.apply_updates(trainable, updates)}, new_stats, opt_state, loss

  def init_opt(params):
    return adam.init({k: v for k, v in params.items() if not (frozen and k == "backbone")})

  return train_step, init_opt


@functools.lru_cache(maxsize=16)
def predict_fn(model: UNet, mean: tuple, std: tuple):
  """Jitted predict(params, batch_stats, uint8 images [B, H, W, C]) -> probabilities (inference mode), cached
  per model and normalisation (one compile per input shape): [B, H, W] sigmoid foreground probabilities when
  model.num_classes == 1 (binary), else [B, H, W, K] softmax class probabilities."""

  @jax.jit
  def predict(params, batch_stats, images):
    x = normalize(images.astype(jnp.float32) / 255.0, mean, std)
    logits = model.apply({"params": params, "batch_stats": batch_stats}, x, train=False)
    if model.num_classes > 1:
      return jax.nn.softmax(logits, axis=-1)
    return jax.nn.sigmoid(logits[..., 0])

  return predict


def _pad_to_multiple(images: np.ndarray, multiple: int) -> np.ndarray:
  """Pads [N, H, W, C] at the bottom / right to multiples of `multiple` (reflect where it fits, else 0)."""
  h, w = images.shape[1:3]
  ph, pw = -h % multiple, -w % multiple
  if not (ph or pw):
    return images
  mode = "reflect" if ph < h and pw < w else "constant"
  return np.pad(images, ((0, 0), (0, ph), (0, pw), (0, 0)), mode=mode)


def predict_images(predict, params, batch_stats, images, *, batch: int = EVAL_BATCH) -> np.ndarray:
  """Probabilities float32 [N, H, W] (binary; [N, H, W, K] for a K-class `predict`) of uint8 images
  [N, H, W, C]: padded to a multiple of PAD_MULTIPLE, run `batch` at a time (the last batch zero-filled, so
  one compile per image size), cropped back."""
  n, h, w = images.shape[:3]
  padded = _pad_to_multiple(images, PAD_MULTIPLE)
  batch = max(1, min(batch, n))
  return mesh_lib.apply_batched(lambda b: np.asarray(predict(params, batch_stats, b["x"]), np.float32)[:, :h, :w],
                                {"x": padded}, batch_size=batch, mesh=None)


def _per_pixel(x, images, what: str, images_name: str) -> np.ndarray:
  """A per-pixel map ([N, H, W] or [N, H, W, 1]) as [N, H, W], checked against its images' geometry."""
  x = np.asarray(x)
  if x.ndim == 4 and x.shape[-1] == 1:
    x = x[..., 0]
  if x.shape != images.shape[:3]:
    raise ValueError(f"{what} shape {x.shape} does not match {images_name} {images.shape}: expected "
                     f"[N, H, W] = {images.shape[:3]} (or [N, H, W, 1])")
  return x


def _check_split(images, masks, fov, *, name: str, mask_mode: str = "binary"):
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[-1] not in (1, 3) or images.dtype != np.uint8:
    raise ValueError(f"{name}_images must be uint8 [N, H, W, C] with C in (1, 3), got {images.dtype} "
                     f"{images.shape}")
  if len(images) == 0:
    raise ValueError(f"{name}_images is empty")
  masks = _per_pixel(masks, images, f"{name}_masks", f"{name}_images")
  if mask_mode == "classes":
    ok = masks.dtype != bool and (np.issubdtype(masks.dtype, np.integer)
                                  or (np.issubdtype(masks.dtype, np.floating) and np.all(masks == np.round(masks))))
    if not ok or masks.min() < 0 or masks.max() > 255:
      raise ValueError(f"{name}_masks must hold integer class ids in [0, 255] for mask_mode='classes'; got dtype "
                       f"{masks.dtype}, values {np.unique(masks)[:5].tolist()}...")
  elif not (masks.dtype == bool or np.isin(masks, (0, 1)).all()):
    raise ValueError(f"{name}_masks must be binary {{0, 1}}; found values {np.unique(masks)[:5].tolist()} "
                     f"(binarise first, e.g. masks > 0, or mask_mode='classes' for class-id maps)")
  if fov is None:
    fov = np.ones(images.shape[:3], bool)
  else:
    fov = _per_pixel(fov, images, f"{name}_fov", f"{name}_images") != 0
    empty = np.flatnonzero(~fov.reshape(len(fov), -1).any(axis=1))
    if empty.size:
      raise ValueError(f"{name}_fov is empty (no pixel inside the field of view) for image(s) {empty[:10].tolist()}")
  return images, masks.astype(np.uint8), fov


def _crop_origins(fov: np.ndarray, patch: int, stride: int) -> np.ndarray:
  """int32 [K, 3] (image, y, x) of crop origins on a `stride` grid whose crop is >= MIN_CROP_FOV inside
  the FOV (all origins with any FOV pixel when no crop reaches that)."""
  n, h, w = fov.shape
  ys = np.unique(np.r_[np.arange(0, h - patch + 1, stride), h - patch])
  xs = np.unique(np.r_[np.arange(0, w - patch + 1, stride), w - patch])
  integral = np.pad(fov.astype(np.int64).cumsum(1).cumsum(2), ((0, 0), (1, 0), (1, 0)))
  y, x = ys[:, None], xs[None, :]
  inside = (integral[:, y + patch, x + patch] - integral[:, y, x + patch] - integral[:, y + patch, x]
            + integral[:, y, x]) / float(patch * patch)  # [N, len(ys), len(xs)]
  ok = inside >= MIN_CROP_FOV
  if not ok.any():
    ok = inside > 0
  i, a, b = np.nonzero(ok)
  return np.stack([i, ys[a], xs[b]], axis=1).astype(np.int32)


def num_classes_of(train_masks, test_masks, num_classes) -> int:
  """K for mask_mode "classes": `num_classes`, or the training masks' largest id + 1; checks both splits."""
  largest = int(train_masks.max())
  if num_classes is None:
    num_classes, source = largest + 1, "inferred from train_masks: largest class id + 1"
  else:
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
      raise ValueError(f"num_classes={num_classes!r} must be an integer >= 2 (background + foreground classes)")
    num_classes, source = int(num_classes), "given"
    if largest >= num_classes:
      raise ValueError(f"train_masks has class id {largest} >= num_classes={num_classes}")
  if num_classes < 2:
    raise ValueError("mask_mode='classes': train_masks hold only class 0 (background); need at least one "
                     "foreground class id")
  bad = np.unique(test_masks[test_masks >= num_classes])
  if bad.size:
    raise ValueError(f"test_masks has class id(s) {bad[:5].tolist()} >= num_classes={num_classes} ({source}); "
                     f"every test class must occur in the training masks (or pass num_classes)")
  return num_classes


def _init_variables(model: UNet, backbone_variables, *, key, patch_size: int, channels: int, train_masks, train_fov,
                    num_classes: int | None):
  """(params, batch_stats) of a new U-Net: the given backbone's (copies), a fresh decoder, and the output bias at
  the training masks' prior (num_classes None: binary)."""
  variables = models.init_variables(model, key, jnp.zeros((1, patch_size, patch_size, channels), jnp.float32),
                                    train=False)
  backbone = model.backbone
  given = {c: backbone_variables.get(c, {}) for c in ("params", "batch_stats")}
  for col in ("params", "batch_stats"):
    want = jax.tree.map(np.shape, variables[col]["backbone"])
    got = jax.tree.map(np.shape, given[col])
    if want != got:
      raise ValueError(f"backbone_variables[{col!r}] do not fit the backbone {backbone.__class__.__name__}"
                       f"(depth={backbone.depth}, stem={backbone.stem!r}, width={backbone.width_multiplier}): "
                       f"tree/shapes differ (expected {len(jax.tree.leaves(want))} leaves, got "
                       f"{len(jax.tree.leaves(got))}); pass the plain ResNet's variables")
  # Own copies: the caller's arrays are never aliased (or donated) by the training state.
  params = {**variables["params"], "backbone": jax.tree.map(lambda a: jnp.array(a, copy=True), given["params"])}
  # Output bias at the log-odds of the training foreground fraction (Lin et al. 2017's prior init): the
  # first steps then do not spend themselves pushing every background pixel down from p = 0.5.
  if num_classes is not None:  # Softmax biases at log(class fraction): the initial prediction is the class prior.
    frac = np.bincount(train_masks[train_fov].ravel(), minlength=num_classes) / float(train_fov.sum())
    bias = np.log(np.clip(frac, 1e-3, None)).astype(np.float32)
    params["logits"] = {**params["logits"], "bias": jnp.asarray(bias, params["logits"]["bias"].dtype)}
  else:
    prior = float(np.clip(train_masks[train_fov].mean(), 1e-3, 1 - 1e-3))
    params["logits"] = {**params["logits"],
                        "bias": jnp.full_like(params["logits"]["bias"], math.log(prior / (1 - prior)))}
  stats = {**variables["batch_stats"], "backbone": jax.tree.map(lambda a: jnp.array(a, copy=True),
                                                                given["batch_stats"])}
  return params, stats


def _test_report(probs, masks, fov, *, num_classes: int | None, threshold: float, progress: str | None, t0: float):
  """The test metrics of predicted maps (num_classes None: binary at `threshold`), printed under `progress`."""
  if num_classes is not None:
    report = segmentation_metrics.multiclass_segmentation_report(probs, masks, valid=fov)
    per = " ".join(f"{report[f'dice_class_{k}']:.4f}" for k in range(1, num_classes))
    line = (f"mean Dice {report['dice']:.4f} (per class {per}) | mean IoU {report['iou']:.4f} | mean AUROC "
            f"{report['auroc']:.4f} | accuracy {report['accuracy']:.4f}")
  else:
    report = segmentation_metrics.segmentation_report(probs, masks, valid=fov, threshold=threshold)
    line = (f"Dice {report['dice']:.4f} | AUROC {report['auroc']:.4f} | sensitivity {report['sensitivity']:.4f} | "
            f"specificity {report['specificity']:.4f}")
  if progress:
    print(f"segmentation [{progress}] test: {line} ({len(masks)} images, {time.perf_counter() - t0:.1f}s)",
          flush=True)
  return report


def _check_inputs(*, backbone, patch_size, steps, backbone_lr_scale, batch_size, mesh, mask_mode, num_classes, mean,
                  std, train, test):
  """The settings and splits of `finetune_segmentation` checked: (train, test, num_classes, mean, std)."""
  if not isinstance(backbone, ResNet):
    raise ValueError(f"finetune_segmentation: backbone must be a ResNet (the U-Net taps its stages), got "
                     f"{type(backbone).__name__}")
  if not isinstance(patch_size, int) or patch_size < PAD_MULTIPLE or patch_size % PAD_MULTIPLE:
    raise ValueError(f"patch_size={patch_size!r} must be a positive multiple of {PAD_MULTIPLE}")
  if not isinstance(steps, int) or steps < 1:
    raise ValueError(f"steps={steps!r} must be a positive int")
  if not backbone_lr_scale >= 0:
    raise ValueError(f"backbone_lr_scale={backbone_lr_scale!r} must be >= 0 (0 freezes the backbone's parameters)")
  n_dev = 1 if mesh is None else mesh.devices.size
  if not isinstance(batch_size, int) or batch_size < 1 or batch_size % n_dev:
    raise ValueError(f"batch_size={batch_size!r} must be a positive multiple of the mesh's {n_dev} devices")
  if mask_mode not in MASK_MODES:
    raise ValueError(f"mask_mode={mask_mode!r} is not known; valid choices: {list(MASK_MODES)}")
  classes = mask_mode == "classes"
  train_images, train_masks, train_fov = _check_split(*train, name="train", mask_mode=mask_mode)
  test_images, test_masks, test_fov = _check_split(*test, name="test", mask_mode=mask_mode)
  if classes:
    num_classes = num_classes_of(train_masks, test_masks, num_classes)
  elif num_classes not in (None, 1):
    raise ValueError(f"num_classes={num_classes!r} is for mask_mode='classes'; mask_mode='binary' has one output")
  channels = train_images.shape[-1]
  if test_images.shape[-1] != channels:
    raise ValueError(f"test_images has {test_images.shape[-1]} channels, train_images has {channels}")
  if min(train_images.shape[1:3]) < patch_size:
    raise ValueError(f"patch_size={patch_size} is larger than the training images {train_images.shape[1:3]}")
  mean, std = tuple(float(m) for m in np.ravel(mean)), tuple(float(s) for s in np.ravel(std))
  if len(mean) not in (1, channels) or len(std) not in (1, channels):
    raise ValueError(f"mean / std must have 1 or {channels} entries (the images' channels), got {mean} / {std}")
  return (train_images, train_masks, train_fov), (test_images, test_masks, test_fov), num_classes, mean, std


def finetune_segmentation(*, backbone, backbone_variables, train_images, train_masks, test_images, test_masks,
                          test_fov=None, train_fov=None, patch_size: int, steps: int, batch_size: int,
                          learning_rate: float, weight_decay: float, backbone_lr_scale: float = 1.0,
                          decoder_widths=None, augment: bool = True, threshold: float = 0.5, mean, std,
                          seed: int = 0, progress: str | None = None, return_predictions: bool = False,
                          return_variables: bool = False, mesh=None, mask_mode: str = "binary",
                          num_classes: int | None = None) -> dict:
  """Trains a U-Net on `backbone` (from `backbone_variables`) and scores it (protocol: module docstring).

  Args:
    backbone: a `ResNet` module; backbone_variables: its variables {"params", "batch_stats"} (a plain
      ResNet's tree, e.g. `attention.backbone_variables(ssl_variables)`), copied, never modified.
    train_images, test_images: uint8 [N, H, W, C] (training images all of one size >= patch_size; test
      images of any one size). train_masks, test_masks: [N, H, W] (or [N, H, W, 1]): {0, 1} (mask_mode
      "binary") or integer class ids 0..K-1 (mask_mode "classes", 0 = background).
    train_fov, test_fov: optional bool [N, H, W] fields of view (None: every pixel): training crops hold
      >= MIN_CROP_FOV of FOV pixels, test metrics pool FOV pixels only (see `fov_masks`).
    patch_size: training crop side, a multiple of 32. steps, batch_size, learning_rate, weight_decay:
      AdamW with cosine decay. backbone_lr_scale: backbone lr multiplier (0 = parameters frozen).
    decoder_widths: `UNet.decoder_widths` (None: as wide as each skip). augment: flips, rotations,
      brightness/contrast jitter. threshold: probability from which a pixel is predicted foreground (binary
      only; "classes" predicts the argmax class).
    mean, std: per-channel normalisation of [0, 1] images (as in pretraining).
    seed: decoder init, crop sampling and augmentation keys.
    progress: a tag; prints progress lines (step, loss, steps/s, ETA) when given.
    return_predictions: add "probabilities" (float32 [N, H, W] test maps; not JSON-able).
    return_variables: add "variables" (the trained U-Net's {"params", "batch_stats"}, host numpy).
    mesh: optional 1-D data mesh: crops are sharded over it (batch_size divisible by its devices) and
      the state replicated; None: the default device.
    mask_mode: "binary" (sigmoid output, BCE + soft Dice) or "classes" (softmax over K classes, CE +
      multi-class soft Dice; see the module docstring). num_classes: K for "classes" (None: the training
      masks' largest id + 1); test masks with an id >= K are refused.

  Returns:
    dict: the metrics of `segmentation_report` (binary: dice, auroc, accuracy, sensitivity, specificity,
    dice_per_image_mean, n_images) or `multiclass_segmentation_report` ("classes": dice, iou, auroc,
    accuracy, per-class and cumulative-group keys, num_classes, ...) plus steps, train_seconds, curve
    {"step", "loss"} (mean training loss over each block of steps), protocol and the settings ("classes"
    adds mask_mode and class_fraction_in_fov, the test FOV pixel fraction of each class, instead of
    vessel_fraction_in_fov and threshold). "probabilities" ([N, H, W] or [N, H, W, K]) when asked.
  """
  (train_images, train_masks, train_fov), (test_images, test_masks, test_fov_arr), num_classes, mean, std = (
      _check_inputs(backbone=backbone, patch_size=patch_size, steps=steps, backbone_lr_scale=backbone_lr_scale,
                    batch_size=batch_size, mesh=mesh, mask_mode=mask_mode, num_classes=num_classes, mean=mean,
                    std=std, train=(train_images, train_masks, train_fov), test=(test_images, test_masks, test_fov)))
  classes = mask_mode == "classes"
  channels = train_images.shape[-1]
  widths = tuple(int(w) for w in decoder_widths) if decoder_widths else None
  model = UNet(backbone=backbone, num_classes=num_classes if classes else 1, decoder_widths=widths)
  frozen = backbone_lr_scale == 0
  stride = max(1, patch_size // 16)
  sharding = None if mesh is None else mesh_lib.data_sharding(mesh)
  train_step, init_opt = train_functions(model, patch_size, mean, std, bool(augment), frozen, batch_size, stride,
                                    sharding)
  predict = predict_fn(model, mean, std)

  key = jax.random.key(seed)
  params, stats = _init_variables(model, backbone_variables, key=jax.random.fold_in(key, 0), patch_size=patch_size,
                                  channels=channels, train_masks=train_masks, train_fov=train_fov,
                                  num_classes=num_classes if classes else None)
  opt_state = init_opt(params)
  origins = _crop_origins(train_fov, patch_size, stride)
  data = (train_images, train_masks, origins)
  if mesh is not None:
    params, stats, opt_state, data = mesh_lib.replicate((params, stats, opt_state, data), mesh)
  else:
    data = jax.device_put(data)

  def step_fn(state, step):
    params, stats, opt_state = state
    lr = learning_rate_at(step, learning_rate=learning_rate, steps=steps)
    params, stats, opt_state, loss = train_step(params, stats, opt_state, *data, jax.random.fold_in(key, step),
                                                np.float32(lr), np.float32(weight_decay),
                                                np.float32(backbone_lr_scale))
    return (params, stats, opt_state), {"loss": loss}

  run = supervised.fit(name=f"segmentation [{progress}]", steps=steps, state=(params, stats, opt_state),
                       step_fn=step_fn, record_every=max(1, steps // 50), quiet=not progress)
  params, stats, _ = run.state
  train_seconds = run.seconds
  curve = {"step": [e["step"] for e in run.train_curve], "loss": [e["loss"] for e in run.train_curve]}

  t1 = time.perf_counter()
  if mesh is not None:  # Inference on one device: whole images do not split over a data axis evenly.
    params, stats = jax.device_get((params, stats))
  probs = predict_images(predict, params, stats, test_images)
  report = _test_report(probs, test_masks, test_fov_arr, num_classes=num_classes if classes else None,
                        threshold=threshold, progress=progress, t0=t1)
  result = dict(report)
  result.update(
      steps=steps, train_seconds=train_seconds, test_seconds=time.perf_counter() - t1, curve=curve,
      protocol=describe(patch_size=patch_size, augment=bool(augment), backbone_lr_scale=float(backbone_lr_scale),
                        threshold=float(threshold), mask_mode=mask_mode, num_classes=num_classes),
      patch_size=patch_size, batch_size=batch_size, learning_rate=float(learning_rate),
      weight_decay=float(weight_decay), backbone_lr_scale=float(backbone_lr_scale),
      decoder_widths=list(widths) if widths else None, augment=bool(augment), threshold=float(threshold),
      seed=seed, num_train=len(train_images), fov_pixel_fraction=float(test_fov_arr.mean()),
      vessel_fraction_in_fov=float(test_masks[test_fov_arr].mean()))
  if classes:
    del result["vessel_fraction_in_fov"], result["threshold"]
    counts = np.bincount(test_masks[test_fov_arr].ravel(), minlength=num_classes)
    result.update(mask_mode=mask_mode, class_fraction_in_fov=(counts / counts.sum()).tolist())
  if return_predictions:
    result["probabilities"] = probs
  if return_variables:
    result["variables"] = jax.device_get({"params": params, "batch_stats": stats})
  return result


# ----------------------------------------------------------------------------------------------------
# Figures.

def save_overlays(images, masks, probs, path, *, fov=None, max_images: int = 4, threshold: float = 0.5):
  """PNG grid, one row per image (first `max_images`): image | truth | probability | thresholded.

  probs [N, H, W] (binary): foreground probability, thresholded at `threshold`. probs [N, H, W, K] (class
  ids, masks 0..K-1): the truth and argmax panels are colour-coded class maps (0 black, 1.. tab10 colours)
  and the probability panel is P(foreground) = 1 - P(class 0). Outside the FOV (when given) the probability
  and prediction panels are greyed out.
  """
  # A pyplot-free Figure: no backend switch, so a notebook that calls this keeps its inline plots.
  import matplotlib
  from matplotlib.figure import Figure

  images, masks, probs = np.asarray(images), np.asarray(masks), np.asarray(probs)
  if masks.ndim == 4:
    masks = masks[..., 0]
  n = min(max_images, len(images))
  if n == 0:
    raise ValueError("save_overlays: no images")
  fov = np.ones(masks.shape, bool) if fov is None else np.asarray(fov).reshape(masks.shape) != 0
  h, w = images.shape[1:3]
  classes = probs.ndim == 4
  if classes:
    k = probs.shape[-1]
    colours = ["black"] + [matplotlib.colormaps["tab10"](i % 10) for i in range(k - 1)]
    class_cm = matplotlib.colors.ListedColormap(colours).with_extremes(bad="0.5")
  fig = Figure(figsize=(4 * 3 * w / max(h, w), n * 3 * h / max(h, w)))
  axes = fig.subplots(n, 4, squeeze=False)
  for r in range(n):
    img = images[r, ..., 0] if images.shape[-1] == 1 else images[r]
    if classes:
      p = np.where(fov[r], 1.0 - probs[r, ..., 0], np.nan)
      t = np.where(fov[r], np.argmax(probs[r], axis=-1).astype(float), np.nan)
      panels = [(img, "image", "gray"), (masks[r].astype(float), f"truth (classes 0-{k - 1})", class_cm),
                (p, "P(foreground)", "magma"), (t, "argmax class", class_cm)]
    else:
      p = np.where(fov[r], probs[r], np.nan)
      t = np.where(fov[r], (probs[r] >= threshold).astype(float), np.nan)
      panels = [(img, "image", "gray"), (masks[r], "truth", "gray"), (p, "probability", "magma"),
                (t, f"p >= {threshold:g}", "gray")]
    for ax, (a, title, cmap) in zip(axes[r], panels):
      if not isinstance(cmap, str):  # A class map: one colour per id.
        ax.imshow(a, cmap=cmap, vmin=-0.5, vmax=k - 0.5, interpolation="nearest")
      else:
        cm = matplotlib.colormaps[cmap].with_extremes(bad="0.5")  # Outside the FOV: grey.
        ax.imshow(a, cmap=cm, vmin=0, vmax=1 if a.ndim == 2 else None, interpolation="nearest")
      ax.set_xticks([])
      ax.set_yticks([])
      if r == 0:
        ax.set_title(title)
  fig.tight_layout()
  paths.save_figure(fig, path, dpi=100)
  return str(path)


__all__ = ["finetune_segmentation", "fov_masks", "predict_fn", "predict_images", "save_overlays", "soft_dice_loss",
           "multiclass_soft_dice_loss", "describe", "PROTOCOL", "PROTOCOL_CLASSES", "FOV_CHOICES", "MASK_MODES",
           "SETTINGS_DEFAULTS"]
