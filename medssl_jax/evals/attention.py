"""Attention maps of frozen encoders, the fraction of a map inside a region mask, and PNG overlays.

The "attention in the lungs" measure of curricular SSL for pneumonia (de Andres Tame et al. 2023): how
much of an encoder's saliency falls inside a (lung) segmentation mask. Maps come from one of:

* Grad-CAM (Selvaraju et al. 2017), ResNet backbones, `grad_cam`. The classifier is the frozen backbone
  plus a linear head on its pooled features (e.g. a linear probe, see `fit_probe_head`):
  logits = ((f - mean) / std) @ w + b with f = global average pool of A, the last-stage activations
  [h, w, K] (`ResNet(..., return_stages=True)`, inference-mode BatchNorm). For a target class c,
  alpha_k = mean_ij d logit_c / d A_ijk (by `jax.grad`), cam = relu(sum_k alpha_k A_k), upsampled
  bilinearly (half-pixel centres, `jax.image.resize`) to the input size and divided by its per-image
  maximum. The pool + head is applied to A explicitly: it is exactly what `ResNet.__call__` does after
  its last stage (computed here in float32).
* Label-free maps for SSL encoders (no head), `label_free_cam`:
    "activation_norm": the L2 norm over channels of A at each location, ||A_ij||_2;
    "grad_feature_norm": Grad-CAM with the score ||f||^2 in place of a class logit. Its weights are
      alpha_k = 2 f_k / (h w), so the map is relu(<f, A_ij>) up to scale: where the local activation
      agrees with the pooled embedding.
* Attention rollout (Abnar & Zuidema 2020), ViT backbones, `attention_rollout`: per block the softmax
  attention weights [heads, T, T] (`ViT(..., return_attention=True)`) are averaged over heads, the
  identity is added (the residual connection) and rows are re-normalised to sum to 1; the product over
  blocks R = A_L ... A_1 gives token-to-input attention. The class-token row over the patch tokens,
  R[0, 1:], reshaped to the patch grid, is upsampled bilinearly to the input and divided by its maximum.

Normalisation: every map is divided by its per-image maximum, so it lies in [0, 1] with 0 meaning no
evidence (an all-zero map stays zero). There is no min-max shift: a constant offset would change the
fraction inside a mask. Note that rollout maps keep a floor (the identity term), so their fractions
inside a mask sit closer to the mask's area fraction than Grad-CAM's.

All map functions take preprocessed float images [B, H, W, C] (as fed to the encoder: `eval_view` then
`normalize`) and are pure and jit-able over a batch (the module is a static Python object: close over
it). `compute_maps` runs one of them over uint8 images in fixed-size batches (one compile).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from medssl_jax import paths
from medssl_jax.augment import views as views_lib
from medssl_jax.evals import linear_probe as probe_lib
from medssl_jax.models.resnet import ResNet
from medssl_jax.models.vit import ViT, grid_size
from medssl_jax.train import mesh as mesh_lib
from medssl_jax.train.step import normalize

PROTOCOL = ("attention maps: ResNet Grad-CAM on the last stage (linear head on pooled features; label-free: "
            "activation norm or grad of ||f||^2), ViT attention rollout (head mean, +I, row-normalised); "
            "bilinear upsampling, divided by the per-image max; fraction = sum of map in mask / sum of map")

METHODS = ("grad_cam", "activation_norm", "grad_feature_norm", "rollout")
LABEL_FREE = ("activation_norm", "grad_feature_norm")


# ----------------------------------------------------------------------------------------------------
# Shared pieces.

def _normalise_max(maps):
  """Divides each map [B, H, W] by its maximum; all-zero (or non-positive) maps become zeros."""
  peak = jnp.max(maps, axis=(1, 2), keepdims=True)
  return jnp.where(peak > 0, maps / jnp.where(peak > 0, peak, 1.0), 0.0)


def upsample(maps, size):
  """Bilinear (half-pixel centres, edge-clamped) resize of maps [B, h, w] to size (H, W)."""
  maps = jnp.asarray(maps, jnp.float32)
  return jax.image.resize(maps, (maps.shape[0], *size), method="bilinear")


def _check_images(images):
  if images.ndim != 4:
    raise ValueError(f"images must be preprocessed float images [B, H, W, C]; got shape {images.shape}")


def _last_stage(backbone, variables, images):
  if not isinstance(backbone, ResNet):
    raise ValueError(f"Grad-CAM needs a ResNet backbone (its last stage via return_stages); got "
                     f"{type(backbone).__name__}: use attention_rollout for ViTs")
  _check_images(images)
  _, stages = backbone.apply(variables, images, train=False, return_stages=True)
  return stages[-1].astype(jnp.float32)


def _grad_cam_from_stage(a, score_fn, size):
  """Grad-CAM on activations a [B, h, w, K] for per-image scores score_fn(pooled [B, K]) -> [B]."""
  grads = jax.grad(lambda a: jnp.sum(score_fn(jnp.mean(a, axis=(1, 2)))))(a)  # Images are independent.
  alpha = jnp.mean(grads, axis=(1, 2))                                         # [B, K]
  cam = jax.nn.relu(jnp.einsum("bhwk,bk->bhw", a, alpha))
  return _normalise_max(upsample(cam, size))


def head_logits(head, features):
  """Logits [B, C] of a linear head {"w" [D, C], "b" [C], optional "mean", "std" [D]} on features [B, D]."""
  f = jnp.asarray(features, jnp.float32)
  if "mean" in head:
    f = (f - head["mean"]) / head["std"]
  return f @ head["w"] + head["b"]


def _check_head(head, num_features):
  if not isinstance(head, dict) or "w" not in head or "b" not in head:
    raise ValueError(f"head must be a dict with 'w' [D, C] and 'b' [C] (optionally 'mean', 'std' [D]); "
                     f"got {type(head).__name__} with keys {sorted(head) if isinstance(head, dict) else None}")
  w, b = head["w"], head["b"]
  if w.ndim != 2 or w.shape[0] != num_features or b.shape != (w.shape[1],):
    raise ValueError(f"head['w'] must be [D={num_features}, C] and head['b'] [C]; got {w.shape} and {b.shape}")
  if ("mean" in head) != ("std" in head):
    raise ValueError("head needs both 'mean' and 'std' (feature standardisation) or neither")


# ----------------------------------------------------------------------------------------------------
# ResNet: Grad-CAM and label-free maps.

def grad_cam(backbone, variables, images, *, head, target=None):
  """Grad-CAM maps [B, H, W] in [0, 1] for a ResNet backbone + linear head (see module docstring).

  Args:
    backbone: a `ResNet` module (e.g. `ssl_model.backbone`).
    variables: the backbone's variables {"params", "batch_stats"} (see `backbone_variables`).
    images: preprocessed float images [B, H, W, C].
    head: {"w": [D, C], "b": [C]} and optionally "mean", "std" [D] (the probe's feature standardisation).
    target: the class per image: an int, an int array [B], or None for the head's predicted class.
  """
  if isinstance(backbone, ResNet):
    _check_head(head, backbone.num_features)  # Before running the backbone: a clear error, fast.
  a = _last_stage(backbone, variables, images)
  logits_fn = lambda pooled: head_logits(head, pooled)
  if target is None:
    target = jnp.argmax(logits_fn(jnp.mean(a, axis=(1, 2))), axis=-1)
  target = jnp.broadcast_to(jnp.asarray(target, jnp.int32), (a.shape[0],))
  score_fn = lambda pooled: jnp.take_along_axis(logits_fn(pooled), target[:, None], axis=1)[:, 0]
  return _grad_cam_from_stage(a, score_fn, images.shape[1:3])


def label_free_cam(backbone, variables, images, *, method="grad_feature_norm"):
  """Label-free maps [B, H, W] in [0, 1] for a ResNet SSL encoder (no classifier head).

  method: "activation_norm" (||A_ij||_2 over channels of the last stage) or "grad_feature_norm"
  (Grad-CAM with score ||f||^2, f the pooled features: relu(<f, A_ij>) up to scale).
  """
  if method not in LABEL_FREE:
    raise ValueError(f"method={method!r} is not a label-free map; valid choices: {list(LABEL_FREE)}")
  a = _last_stage(backbone, variables, images)
  size = images.shape[1:3]
  if method == "activation_norm":
    return _normalise_max(upsample(jnp.sqrt(jnp.sum(a * a, axis=-1)), size))
  return _grad_cam_from_stage(a, lambda pooled: jnp.sum(pooled * pooled, axis=-1), size)


# ----------------------------------------------------------------------------------------------------
# ViT: attention rollout.

def rollout(attentions, *, grid, size):
  """Attention rollout from per-block attention weights (list of [B, heads, T, T], T = 1 + gh * gw).

  Returns the class-token rollout over the patch grid (gh, gw) = `grid`, upsampled to `size` (H, W)
  and divided by its per-image maximum: [B, H, W].
  """
  if not attentions:
    raise ValueError("attentions must be a non-empty list of [B, heads, T, T] arrays (one per block)")
  gh, gw = grid
  t = attentions[0].shape[-1]
  for a in attentions:
    if a.ndim != 4 or a.shape[-2:] != (t, t) or a.shape[0] != attentions[0].shape[0]:
      raise ValueError(f"every attention must be [B, heads, T, T] with the same B and T; got {a.shape}")
  if t != 1 + gh * gw:
    raise ValueError(f"attentions have T={t} tokens; grid {grid} needs 1 + {gh * gw} (class token first)")
  eye = jnp.eye(t, dtype=jnp.float32)
  result = None
  for a in attentions:
    a = jnp.mean(a.astype(jnp.float32), axis=1) + eye
    a = a / jnp.sum(a, axis=-1, keepdims=True)
    result = a if result is None else jnp.einsum("bij,bjk->bik", a, result)
  cls = result[:, 0, 1:].reshape(-1, gh, gw)
  return _normalise_max(upsample(cls, size))


def attention_rollout(backbone, variables, images):
  """Attention-rollout maps [B, H, W] in [0, 1] for a ViT backbone (see module docstring; label-free)."""
  if not isinstance(backbone, ViT):
    raise ValueError(f"attention rollout needs a ViT backbone; got {type(backbone).__name__}: use grad_cam "
                     "or label_free_cam for ResNets")
  _check_images(images)
  _, attentions = backbone.apply(variables, images, train=False, return_attention=True)
  return rollout(attentions, grid=grid_size(images.shape, backbone.patch_size), size=images.shape[1:3])


# ----------------------------------------------------------------------------------------------------
# Batched driver and helpers for wiring.

def backbone_variables(variables):
  """The backbone's variables out of an `SSLModel`'s ({"params": {"backbone": ...}, ...})."""
  out = {col: tree["backbone"] for col, tree in variables.items() if isinstance(tree, dict) and "backbone" in tree}
  if "params" not in out:
    raise ValueError(f"variables hold no 'backbone' params (collections: {sorted(variables)}); pass an "
                     "SSLModel's variables, or the backbone's own variables directly")
  return out


def fit_probe_head(train_x, train_y, *, num_classes, l2, max_iter=200):
  """A linear-probe head for `grad_cam`, fitted as `linear_probe.linear_probe` refits its chosen probe
  (features standardised with the training mean/std, softmax regression with L-BFGS, L2 weight `l2`).

  Returns {"w" [D, C], "b" [C], "mean" [D], "std" [D]} (float32 jnp arrays)."""
  train_x = np.asarray(train_x, np.float32)
  mu, sd = train_x.mean(0), train_x.std(0) + 1e-6
  p = probe_lib._fit_softmax_regression((train_x - mu) / sd, np.asarray(train_y), l2, num_classes=num_classes,
                                        max_iter=max_iter)
  return {"w": p["w"], "b": p["b"], "mean": jnp.asarray(mu), "std": jnp.asarray(sd)}


def map_fn(method, backbone, *, head=None):
  """fn(variables, images [B, H, W, C] float, target) -> maps [B, H, W] for one of METHODS (not jitted)."""
  if method not in METHODS:
    raise ValueError(f"attention method={method!r} is not known; valid choices: {list(METHODS)}")
  if method == "grad_cam":
    if head is None:
      raise ValueError("method='grad_cam' needs head={'w', 'b'[, 'mean', 'std']} (e.g. fit_probe_head)")
    return lambda v, x, t: grad_cam(backbone, v, x, head=head, target=t)
  if method == "rollout":
    return lambda v, x, t: attention_rollout(backbone, v, x)
  return lambda v, x, t: label_free_cam(backbone, v, x, method=method)


def compute_maps(method, backbone, variables, images, *, image_size, mean, std, head=None, target=None,
                 batch_size=64):
  """Maps [N, image_size, image_size] (numpy float32, in [0, 1]) for uint8 images [N, H, W, C].

  Images are preprocessed as for the linear probe (`eval_view` to image_size, then `normalize`). The
  last batch is zero-padded to full size (one compile) and the padding dropped. `target` (grad_cam
  only): None (predicted class), an int, or an int array [N].
  """
  fn = map_fn(method, backbone, head=head)
  if target is not None and method != "grad_cam":
    raise ValueError(f"target applies to method='grad_cam' only; got target with method={method!r}")
  n = len(images)
  targets = None if target is None else np.broadcast_to(np.asarray(target, np.int32), (n,))

  @jax.jit
  def run(variables, x, t):
    return fn(variables, normalize(views_lib.eval_view(x, size=image_size), mean, std), t)

  inputs = {"image": images} if targets is None else {"image": images, "target": targets}
  out = mesh_lib.apply_batched(lambda b: run(variables, b["image"], b.get("target")), inputs, batch_size=batch_size,
                               mesh=None)
  return np.zeros((0, image_size, image_size), np.float32) if out is None else out


# ----------------------------------------------------------------------------------------------------
# Fraction inside a mask.

def resize_nearest(masks, size):
  """Nearest-neighbour resize of masks [B, h, w] to size (H, W), half-pixel centres (numpy)."""
  masks = np.asarray(masks)
  h, w = masks.shape[1:3]
  rows = np.minimum(((np.arange(size[0]) + 0.5) * h / size[0]).astype(int), h - 1)
  cols = np.minimum(((np.arange(size[1]) + 0.5) * w / size[1]).astype(int), w - 1)
  return masks[:, rows][:, :, cols]


def _squeeze_channel(x, name):
  x = np.asarray(x)
  if x.ndim == 4 and x.shape[-1] == 1:
    x = x[..., 0]
  if x.ndim == 2:
    x = x[None]
  if x.ndim != 3:
    raise ValueError(f"{name} must be [B, H, W] (or [B, H, W, 1], or one [H, W]); got shape {x.shape}")
  return x


def fraction_inside(maps, masks):
  """Per image, the sum of the map inside the mask divided by the map's total: float64 [B].

  maps: non-negative [B, H, W] (e.g. from grad_cam / attention_rollout). masks: [B, h, w] (or one
  [h, w] for all images; a trailing channel of 1 is dropped); any non-zero value is inside (bool,
  0/1, 0/255 and label maps such as Montgomery's 0/1/2 lungs all work). Masks of another size are
  resized to the maps' size with nearest neighbour. An all-zero map gives NaN (no attention to
  share out): summarise with np.nanmean and report the count of NaNs.
  """
  maps = _squeeze_channel(maps, "maps").astype(np.float64)
  masks = _squeeze_channel(masks, "masks") != 0
  if masks.shape[0] == 1 and maps.shape[0] != 1:
    masks = np.broadcast_to(masks, (maps.shape[0], *masks.shape[1:]))
  if masks.shape[0] != maps.shape[0]:
    raise ValueError(f"masks has {masks.shape[0]} images, maps has {maps.shape[0]}")
  if np.any(maps < 0) or not np.all(np.isfinite(maps)):
    raise ValueError("maps must be finite and non-negative (a fraction of attention is undefined otherwise); "
                     f"min {np.nanmin(maps):g}")
  if masks.shape[1:] != maps.shape[1:]:
    masks = resize_nearest(masks, maps.shape[1:])
  total = maps.sum(axis=(1, 2))
  inside = np.where(masks, maps, 0.0).sum(axis=(1, 2))
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(total > 0, inside / np.where(total > 0, total, 1.0), np.nan)


def fraction_and_area(maps, masks):
  """(fraction_inside(maps, masks), the masks' area at the maps' resolution): the area is a uniform map's
  fraction inside, the chance level to read the fraction against."""
  return fraction_inside(maps, masks), fraction_inside(np.ones_like(maps), masks)


# ----------------------------------------------------------------------------------------------------
# Overlays.

def save_overlays(images, maps, path, *, masks=None, ncols=4, titles=None, alpha=0.45, cmap="jet", dpi=100):
  """Writes a PNG grid of images with their maps overlaid (and mask contours when given). Returns path.

  images: [N, H, W, C] (C = 1 or 3) uint8 or float (shown min-max scaled per image); maps: [N, h, w]
  (resized bilinearly to the image size, shown in [0, 1] with `cmap` at opacity `alpha`); masks:
  optional [N, h', w'] (non-zero inside; nearest-resized), drawn as a white contour; titles: optional
  strings, one per image (e.g. "pneumonia, 0.72 inside").
  """
  # The Agg canvas directly (no pyplot, so the global backend and figure registry are untouched).
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  images = np.asarray(images)
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f"images must be [N, H, W, C] with C 1 or 3; got shape {images.shape}")
  n, h, w = images.shape[:3]
  maps = _squeeze_channel(maps, "maps")
  if maps.shape[0] != n:
    raise ValueError(f"maps has {maps.shape[0]} images, images has {n}")
  if masks is not None:
    masks = _squeeze_channel(masks, "masks") != 0
    if masks.shape[0] != n:
      raise ValueError(f"masks has {masks.shape[0]} images, images has {n}")
    if masks.shape[1:] != (h, w):
      masks = resize_nearest(masks, (h, w))
  if titles is not None and len(titles) != n:
    raise ValueError(f"titles has {len(titles)} entries, images has {n}")
  if not isinstance(ncols, int) or ncols < 1:
    raise ValueError(f"ncols must be a positive int; got {ncols!r}")
  if maps.shape[1:] != (h, w):
    maps = np.asarray(upsample(maps, (h, w)))
  maps = np.asarray(maps, np.float32)

  ncols = min(ncols, max(n, 1))
  nrows = max(1, -(-n // ncols))
  fig = Figure(figsize=(2.2 * ncols, 2.2 * nrows))
  FigureCanvasAgg(fig)
  axes = fig.subplots(nrows, ncols, squeeze=False)
  for i, ax in enumerate(axes.ravel()):
    ax.axis("off")
    if i >= n:
      continue
    img = images[i].astype(np.float32)
    lo, hi = img.min(), img.max()
    img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
    ax.imshow(maps[i], cmap=cmap, alpha=alpha, vmin=0, vmax=max(1.0, float(maps[i].max())))
    if masks is not None and masks[i].any() and not masks[i].all():
      ax.contour(masks[i].astype(np.float32), levels=[0.5], colors="white", linewidths=1.0)
    if titles is not None:
      ax.set_title(str(titles[i]), fontsize=8)
  fig.tight_layout()
  paths.save_figure(fig, path, format="png", dpi=dpi)
  return path
