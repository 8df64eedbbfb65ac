"""MAE (He et al. 2022): mask most patches, encode the visible ones, reconstruct the pixels of the rest.

Each image is cut into L patches of p x p x C pixels (each volume [D, H, W, C], with a 3D ViT
encoder such as vit_tiny_3d, into L patches of p x p x p x C voxels); a random subset of int(L (1 - r)) patches
(r = config.objective.mae.mask_ratio) is kept per example and encoded by the ViT (class token included);
a light transformer decoder receives the encoded visible tokens plus a shared learned mask token at
every masked position (each with the decoder's own position embedding) and predicts every patch's
pixels. With m_bl = 1 for masked patches,

    L = sum_{b,l} m_bl * mean_k (pred_blk - target_blk)^2 / sum_{b,l} m_bl

where target is the patch's pixels, normalised per patch ((x - mean) / sqrt(var + 1e-6) over its
p*p*C values, p*p*p*C for volumes; unbiased var as in the reference code) when
config.objective.mae.norm_pix_loss (the paper's default: better representations). The decoder
predicts patches of the rank the run feeds (config.model.encoder: vit_* images, vit_*_3d volumes).

Linear probe / `embed`: the encoder on all patches (no masking), final-normed class token.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from medssl_jax import models
from medssl_jax.models import vit as vit_lib
from medssl_jax.objectives.base import Objective


def patchify(images, patch_size: int):
  """[B, H, W, C] -> [B, L, p*p*C], patches in row-major grid order (the ViT's token order), each
  flattened as (row in patch, column in patch, channel). Volumes [B, D, H, W, C] -> [B, L, p*p*p*C]
  likewise, each patch flattened as (slice, row, column in patch, channel)."""
  if images.ndim == 5:
    b, d, h, w, c = images.shape
    gd, gh, gw = vit_lib.grid_size(images.shape, patch_size, spatial_dims=3)
    p = patch_size
    x = images.reshape(b, gd, p, gh, p, gw, p, c).transpose(0, 1, 3, 5, 2, 4, 6, 7)
    return x.reshape(b, gd * gh * gw, p * p * p * c)
  b, h, w, c = images.shape
  gh, gw = vit_lib.grid_size(images.shape, patch_size)
  p = patch_size
  x = images.reshape(b, gh, p, gw, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, gh * gw, p * p * c)


def unpatchify(patches, patch_size: int, grid: tuple[int, ...]):
  """Inverse of `patchify`: [B, L, p*p*C] -> [B, gh*p, gw*p, C] for grid (gh, gw), and
  [B, L, p*p*p*C] -> [B, gd*p, gh*p, gw*p, C] for a volume's grid (gd, gh, gw)."""
  b, num, dim = patches.shape
  if len(grid) == 3:
    gd, gh, gw = grid
    p = patch_size
    if num != gd * gh * gw or dim % (p * p * p):
      raise ValueError(f"unpatchify: patches of shape {patches.shape} do not fit a {gd}x{gh}x{gw} grid of "
                       f"{p}x{p}x{p} patches")
    c = dim // (p * p * p)
    x = patches.reshape(b, gd, gh, gw, p, p, p, c).transpose(0, 1, 4, 2, 5, 3, 6, 7)
    return x.reshape(b, gd * p, gh * p, gw * p, c)
  gh, gw = grid
  p = patch_size
  if num != gh * gw or dim % (p * p):
    raise ValueError(f"unpatchify: patches of shape {patches.shape} do not fit a {gh}x{gw} grid of "
                     f"{p}x{p} patches")
  c = dim // (p * p)
  x = patches.reshape(b, gh, gw, p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, gh * p, gw * p, c)


def normalize_patches(patches, eps: float = 1e-6):
  """Per-patch (x - mean) / sqrt(var + eps) over the last axis (MAE's norm_pix_loss target).

  var is the unbiased variance (divisor P - 1), as torch's `Tensor.var` in the reference code."""
  patches = patches.astype(jnp.float32)
  mean = patches.mean(axis=-1, keepdims=True)
  var = patches.var(axis=-1, keepdims=True, ddof=1 if patches.shape[-1] > 1 else 0)
  return (patches - mean) / jnp.sqrt(var + eps)


def num_kept(num_patches: int, mask_ratio: float) -> int:
  """Patches kept visible per example: int(L (1 - r)), truncated as MAE's reference code does, at least 1."""
  if not 0.0 <= mask_ratio < 1.0:
    raise ValueError(f"config.objective.mae.mask_ratio={mask_ratio!r} must be in [0, 1)")
  return max(1, min(num_patches, int(num_patches * (1.0 - mask_ratio))))


def random_masking(key, batch: int, num_patches: int, mask_ratio: float):
  """Per-example random subsets of patches to keep, as in the reference implementation.

  Returns (keep [B, n] indices of the kept patches, in shuffled order; restore [B, L] the inverse
  permutation of the shuffle; mask [B, L] float32, 1 = masked). Sorting uniform noise gives each
  example its own uniformly random permutation.
  """
  n = num_kept(num_patches, mask_ratio)
  noise = jax.random.uniform(key, (batch, num_patches))
  shuffle = jnp.argsort(noise, axis=1)
  restore = jnp.argsort(shuffle, axis=1)
  keep = shuffle[:, :n]
  mask = jnp.take_along_axis((jnp.arange(num_patches) >= n).astype(jnp.float32)[None].repeat(batch, 0),
                             restore, axis=1)
  return keep, restore, mask


def mae_loss(*, pred, target, mask):
  """MAE's reconstruction loss: the per-patch MSE averaged over the masked patches.

  Args:
    pred: [B, L, P] predicted patch pixels.
    target: [B, L, P] target patch pixels (already per-patch normalised for norm_pix_loss).
    mask: [B, L], 1 = masked (counted in the loss), 0 = visible.

  Returns:
    (loss, metrics) with metrics["visible_loss"], the same mean over the visible patches (not
    optimised; a reconstruction much better there than on masked patches is expected).
  """
  if pred.ndim != 3 or pred.shape != target.shape:
    raise ValueError(f"mae_loss needs pred and target of the same shape [B, L, P], got {pred.shape} and "
                     f"{target.shape}")
  if mask.shape != pred.shape[:2]:
    raise ValueError(f"mae_loss needs mask of shape [B, L] = {pred.shape[:2]}, got {mask.shape}")
  per_patch = jnp.mean((pred.astype(jnp.float32) - target.astype(jnp.float32)) ** 2, axis=-1)
  mask = mask.astype(jnp.float32)
  masked = jnp.sum(per_patch * mask) / jnp.maximum(jnp.sum(mask), 1.0)
  visible = jnp.sum(per_patch * (1.0 - mask)) / jnp.maximum(jnp.sum(1.0 - mask), 1.0)
  return masked, {"visible_loss": visible, "mask_fraction": jnp.mean(mask)}


class MAEDecoder(nn.Module):
  """MAE's light decoder: embed, insert mask tokens, unshuffle, add position embeddings, pre-norm
  blocks, norm, per-patch linear prediction of out_dim values (p*p*C pixels, p*p*p*C voxels)."""
  width: int
  depth: int
  num_heads: int
  out_dim: int
  dtype: Any = jnp.float32
  fixed_positions: bool = False  # MAE's fixed sin-cos position embeddings.

  @nn.compact
  def __call__(self, encoded, restore, grid: tuple[int, int, int] | None = None):
    """encoded: [B, 1 + n, D] encoder output (class token first); restore: [B, L]; grid: a volume's
    (d, h, w) patch grid (None for images). Returns [B, L, out_dim]."""
    b, num_patches = restore.shape
    x = nn.Dense(self.width, dtype=self.dtype, kernel_init=vit_lib._dense_init, name="embed")(encoded)
    mask_token = self.param("mask_token", nn.initializers.normal(0.02), (1, 1, self.width), jnp.float32)
    n = x.shape[1] - 1
    tokens = jnp.concatenate([x[:, 1:], jnp.broadcast_to(mask_token.astype(x.dtype),
                                                         (b, num_patches - n, self.width))], axis=1)
    tokens = jnp.take_along_axis(tokens, restore[:, :, None], axis=1)  # Back to grid order.
    x = jnp.concatenate([x[:, :1], tokens], axis=1)
    x = x + vit_lib.PositionEmbedding(self.width, fixed=self.fixed_positions,
                                      name="pos_embed")(num_patches + 1, grid).astype(x.dtype)
    for i in range(self.depth):
      x = vit_lib.EncoderBlock(self.num_heads, dtype=self.dtype, name=f"block{i + 1}")(x)
    x = vit_lib._layer_norm("norm")(x)
    x = nn.Dense(self.out_dim, dtype=self.dtype, kernel_init=vit_lib._dense_init, name="pred")(x)
    return x[:, 1:].astype(jnp.float32)


class MAEModel(nn.Module):
  """ViT encoder on the visible patches + MAE decoder.

  `__call__(x, *, train)` on images [B, H, W, C] or volumes [B, D, H, W, C] returns {"features": class
  token of the encoded visible patches [B, D], "pred": [B, L, p*p*C] (p*p*p*C), "target": patchified x (per-patch normalised if norm_pix_loss), "mask":
  [B, L], 1 = masked}. The mask is drawn from the 'mask' rng (the trainer passes one). Masking happens
  in both modes, so the outputs have the same shapes; in train mode the rng is required, with
  train=False and no 'mask' rng a fixed key is used (reproducible evaluation reconstructions).

  `embed(x)`: the encoder on ALL patches, no masking: the final-normed class token [B, D] (what the
  linear probe uses; MAE's paper probes the class token too).
  """
  backbone: vit_lib.ViT
  decoder: MAEDecoder
  mask_ratio: float = 0.75
  norm_pix_loss: bool = True

  def __call__(self, x, *, train: bool):
    p = self.backbone.patch_size
    dims = x.ndim - 2
    tokens = self.backbone.patch_tokens(x)
    b, num_patches, _ = tokens.shape
    if self.has_rng("mask"):
      key = self.make_rng("mask")
    elif train:
      raise ValueError("MAEModel in train mode needs a 'mask' rng: model.apply(..., rngs={'mask': key})")
    else:
      key = jax.random.key(0)
    keep, restore, mask = random_masking(key, b, num_patches, self.mask_ratio)
    visible = jnp.take_along_axis(tokens, keep[:, :, None], axis=1)
    encoded = self.backbone.encode_tokens(visible, spatial_dims=dims)
    grid = vit_lib.grid_size(x.shape, p, spatial_dims=3) if dims == 3 else None
    pred = self.decoder(encoded, restore, grid)
    target = patchify(x.astype(jnp.float32), p)
    if self.norm_pix_loss:
      target = normalize_patches(target)
    return {"features": encoded[:, 0].astype(jnp.float32), "pred": pred,
            "target": jax.lax.stop_gradient(target), "mask": mask}

  def embed(self, x):
    """Encoder class-token features [B, D] of the whole (unmasked) image or volume."""
    return self.backbone(x, train=False)


def build_mae(config) -> MAEModel:
  """The MAE model of a config: config.model.encoder (a ViT) + the config.model.decoder_* decoder, which
  predicts patches of the config's inputs (volumes for a 3D encoder, models.takes_volumes)."""
  m, o = config.model, config.objective.mae
  backbone = models.build_backbone(config)
  if not isinstance(backbone, vit_lib.ViT):
    raise ValueError(f"MAE needs a ViT encoder ({list(vit_lib.VIT_ENCODERS)}), config.model.encoder={m.encoder!r}")
  num_kept(4, o.mask_ratio)  # Validates the ratio before any tracing.
  volumes = models.takes_volumes(config)
  if volumes and m.position_embedding == "sincos" and m.decoder_dim % 6:
    raise ValueError(f"config.model.decoder_dim={m.decoder_dim} must be divisible by 6 for 3-D sin-cos position "
                     "embeddings (config.model.position_embedding='sincos' on volumes), e.g. 96 or 192")
  out_dim = m.patch_size ** (3 if volumes else 2) * config.data.channels
  decoder = MAEDecoder(width=m.decoder_dim, depth=m.decoder_depth, num_heads=m.decoder_heads, out_dim=out_dim,
                       dtype=models.compute_dtype(config), fixed_positions=m.position_embedding == "sincos")
  return MAEModel(backbone=backbone, decoder=decoder, mask_ratio=o.mask_ratio, norm_pix_loss=o.norm_pix_loss)


def _loss(*, student, teacher, batch, state, step, config):
  del teacher, batch, state, step, config
  # MAE uses one view; with more, every view's masked patches count equally.
  cat = lambda k: jnp.concatenate([s[k] for s in student], axis=0)
  loss, metrics = mae_loss(pred=cat("pred"), target=cat("target"), mask=cat("mask"))
  return loss, metrics, {}


MAE = Objective("mae", "He et al. 2022, Masked Autoencoders Are Scalable Vision Learners (CVPR)", _loss,
                build_model=build_mae)
