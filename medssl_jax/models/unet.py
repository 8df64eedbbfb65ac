"""A U-Net decoder on top of this repo's ResNet backbones, for dense (per-pixel or per-voxel) transfer.

The backbone is an unchanged `ResNet` (images) or `ResNet3D` (volumes) submodule named "backbone", so its
parameter / BatchNorm subtrees are exactly those of the plain backbone (or of `SSLModel.backbone`) and
pretrained (or inflated) weights drop in: `variables["params"]["backbone"] = pretrained["params"]["backbone"]`
(same for "batch_stats"). The decoder has the backbone's number of spatial axes.
"""
from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from medssl_jax.models.resnet import ResNetBase


def resnet_feature_maps(backbone: ResNetBase, x, *, train: bool) -> list:
  """Calls `backbone` (a bound submodule) and returns its feature maps, shallowest first.

  [stem, stage1, ..., stageK]: the stem is the post-ReLU output of stem_conv/stem_bn (before the
  ImageNet stem's max-pool), the stages are `ResNet(return_stages=True)`'s outputs. The stem output is
  not returned by ResNet, so it is read by intercepting the backbone's stem_bn call (its ReLU is applied
  here); this leaves resnet.py and the parameter tree untouched.
  """
  captured = []
  backbone_path = tuple(backbone.path)

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if (context.method_name == "__call__" and context.module.name == "stem_bn"
        and tuple(context.module.path[:-1]) == backbone_path):
      captured.append(out)
    return out

  with nn.intercept_methods(interceptor):
    _, stages = backbone(x, train=train, return_stages=True)
  if len(captured) != 1:
    raise RuntimeError(f"resnet_feature_maps: expected one stem_bn call in the backbone at "
                       f"{backbone_path}, saw {len(captured)}")
  return [nn.relu(captured[0]), *stages]


class UNet(nn.Module):
  """U-Net: ResNet encoder (skip connections from the stem and stages) + linear-upsampling decoder.

  Decoding starts at the last stage; for each shallower feature map (stage K-1, ..., stage1, stem) it
  (bi/tri)linearly resizes to that map's size, concatenates it, and applies conv3x3-BN-ReLU x2. If the
  stem is below input resolution (ImageNet stem: H/2), a last block resizes to the input size and
  applies conv3x3-BN-ReLU x2 without a skip. A 1x1 conv gives the logits [B, H, W, num_classes]
  (float32). With a `ResNet3D` backbone every kernel is 3D and the input and logits are
  [B, D, H, W, C] / [B, D, H, W, num_classes].

  Attributes:
    backbone: a `ResNet` or `ResNet3D` (any depth, "cifar" or "imagenet" stem, any width multiplier).
    num_classes: output channels (1 for binary segmentation: apply a sigmoid).
    decoder_widths: channels of the decoder blocks, deepest first: one per skip (K for a K-stage
      ResNet: stage K-1..1, then stem) plus optionally one more for the full-resolution block (used
      only with the ImageNet stem; defaults to the last width). None: each block takes the channel
      count of the skip it merges (so widths scale with the backbone's width multiplier).
  """
  backbone: ResNetBase
  num_classes: int = 1
  decoder_widths: Sequence[int] | None = None

  @nn.compact
  def __call__(self, x, *, train: bool):
    if not isinstance(self.backbone, ResNetBase):
      raise TypeError(f"UNet: backbone must be a ResNet or ResNet3D, got {type(self.backbone).__name__}")
    n = self.backbone.spatial_dims
    if x.ndim != n + 2:
      raise ValueError(f"UNet: input must be {self.backbone.input_layout} for a "
                       f"{type(self.backbone).__name__} backbone, got shape {x.shape}")
    size = tuple(x.shape[1:-1])
    maps = resnet_feature_maps(self.backbone, x, train=train)
    skips = maps[-2::-1]  # stage K-1, ..., stage1, stem.
    if self.decoder_widths is None:
      widths = [s.shape[-1] for s in skips]
      widths.append(widths[-1])
    else:
      widths = list(self.decoder_widths)
      if len(widths) == len(skips):
        widths.append(widths[-1])
      if len(widths) != len(skips) + 1 or min(widths) < 1:
        raise ValueError(f"UNet: decoder_widths={tuple(self.decoder_widths)!r} needs {len(skips)} (or "
                         f"{len(skips) + 1}) positive widths for a {len(maps) - 1}-stage backbone")
    dtype = self.backbone.dtype
    conv = functools.partial(nn.Conv, kernel_size=(3,) * n, use_bias=False, dtype=dtype,
                             kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"))
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=self.backbone.bn_momentum,
                             epsilon=1e-5, dtype=dtype, param_dtype=jnp.float32)

    def block(y, width, name):
      for k in (1, 2):
        y = conv(width, name=f"{name}_conv{k}")(y)
        y = nn.relu(norm(name=f"{name}_bn{k}")(y))
      return y

    def resize(y, to):
      if y.shape[1:-1] == tuple(to):
        return y
      # "linear": bilinear for images, trilinear for volumes.
      return jax.image.resize(y, (y.shape[0], *to, y.shape[-1]), method="linear").astype(y.dtype)

    y = maps[-1]
    for i, skip in enumerate(skips):
      y = resize(y, skip.shape[1:-1])
      y = block(jnp.concatenate([y, skip.astype(y.dtype)], axis=-1), widths[i], name=f"up{i + 1}")
    if y.shape[1:-1] != size:
      y = block(resize(y, size), widths[-1], name="up_full")
    logits = nn.Conv(self.num_classes, (1,) * n, dtype=dtype, name="logits")(y)
    return logits.astype(jnp.float32)


__all__ = ["UNet", "resnet_feature_maps"]
