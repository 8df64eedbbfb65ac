"""3D ResNet-18/50 encoders for volumes [B, D, H, W, C]: MedMNIST v2's "ResNet-18+3D" / "ResNet-50+3D".

Those baselines are the 2D ResNet with every convolution, BatchNorm and pooling made 3D; for 28^3 inputs
the stem is the CIFAR-style 3x3x3 stride-1 conv without max-pool (`stem="cifar"`, the default here), so
the stages see 28^3, 14^3, 7^3 and 4^3. The module is this repo's `ResNetBase` with three spatial axes:
the same blocks, attribute names, parameter names and `__call__(x, *, train, return_stages)` as the 2D
`ResNet`, with 3x3 kernels as 3x3x3 ones, so 2D weights inflate onto it by name (`models.inflate`).
It is deliberately not a `ResNet` subclass: code that checks `isinstance(m, ResNet)` assumes images.

On CPU, XLA's native 3D convolution is several times slower than its 2D one, so there each 3D convolution
runs as one 2D convolution over depth-unfolded input (`DepthUnfoldConv`: same parameters, same numbers up to
float rounding); `benchmarks/volumes.py` measures the two.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from medssl_jax.models.resnet import STAGE_SIZES, ResNetBase, conv_general_dilated

CONV3D_IMPLS = ("auto", "native", "depth_unfold")


class DepthUnfoldConv(nn.Module):
  """A 3D convolution (no dilation, no groups) computed as a 2D one: the kd depth taps are stacked on the
  channel axis ([B, D', H, W, kd * C]) and the depth axis folded into the batch, so XLA's fast 2D kernel
  does the work. Parameters as `nn.Conv` with a 3D kernel: `kernel` [kd, kh, kw, C, O] (and `bias` [O]),
  so checkpoints and inflated weights are interchangeable with it."""
  features: int
  kernel_size: Sequence[int]
  strides: Sequence[int] | int = 1
  padding: Any = "SAME"
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Callable = nn.linear.default_kernel_init
  bias_init: Callable = nn.initializers.zeros

  @nn.compact
  def __call__(self, x):
    kd, kh, kw = self.kernel_size
    strides = (self.strides,) * 3 if isinstance(self.strides, int) else tuple(self.strides)
    c = x.shape[-1]
    kernel = self.param("kernel", self.kernel_init, (kd, kh, kw, c, self.features), self.param_dtype)
    dtype = self.dtype or jnp.result_type(x, kernel)
    x, kernel = x.astype(dtype), kernel.astype(dtype)
    if isinstance(self.padding, str):
      pads = lax.padtype_to_pads(x.shape[1:4], (kd, kh, kw), strides, self.padding)
    else:
      pads = [tuple(p) for p in self.padding]
    b, d = x.shape[0], x.shape[1]
    x = jnp.pad(x, ((0, 0), pads[0], (0, 0), (0, 0), (0, 0)))
    d_out = (d + sum(pads[0]) - kd) // strides[0] + 1
    last = strides[0] * (d_out - 1) + 1
    taps = [x[:, i:i + last:strides[0]] for i in range(kd)]  # Each [B, D', H, W, C].
    x = taps[0] if kd == 1 else jnp.concatenate(taps, axis=-1)
    x = x.reshape(b * d_out, *x.shape[2:])
    # [kd, kh, kw, C, O] -> [kh, kw, kd * C, O], matching the tap-major channel order above.
    kernel2d = jnp.transpose(kernel, (1, 2, 0, 3, 4)).reshape(kh, kw, kd * c, self.features)
    # The 2D ResNet's convolution: on CPU its strided and 1x1 rewrites apply to these 2D convolutions too.
    y = conv_general_dilated(x, kernel2d, strides[1:], pads[1:], dimension_numbers=("NHWC", "HWIO", "NHWC"))
    y = y.reshape(b, d_out, *y.shape[1:])
    if self.use_bias:
      y = y + self.param("bias", self.bias_init, (self.features,), self.param_dtype).astype(dtype)
    return y


class ResNet3D(ResNetBase):
  """3D ResNet backbone returning globally average-pooled features [B, C] of volumes [B, D, H, W, C].

  Attributes (as `ResNet`'s):
    depth: 18, 34, 50 or 101.
    stem: "cifar" (3x3x3/1 conv, no pool; MedMNIST 3D's layout for 28^3 inputs) or "imagenet"
      (7x7x7/2 conv + 3x3x3/2 max-pool, the target of ImageNet weights inflated from 2D).
    width_multiplier: scales every stage width (64, 128, 256, 512).
    bn_momentum: decay of the running BatchNorm statistics used in evaluation.
    zero_init_residual: zero-init the last BatchNorm scale of each residual block.
    dtype: compute dtype; parameters and BatchNorm statistics stay float32.
    padding: "same" (flax SAME) or "torch" (symmetric, as torchvision) for the 3x3x3 convs; use the
      padding of the 2D network the weights come from, so inflated weights sample the same positions.
    conv_init: a key of `resnet.CONV_INITS` (fans count all three kernel axes).
    conv3d: "native" (XLA's 3D convolution), "depth_unfold" (`DepthUnfoldConv`) or "auto" (depth_unfold on
      CPU, native on GPU / TPU). The parameters are the same in all three.
  """
  stem: str = "cifar"
  conv3d: str = "auto"
  spatial_dims = 3
  input_layout = "[B, D, H, W, C]"

  def conv_module(self):
    if self.conv3d not in CONV3D_IMPLS:
      raise ValueError(f"ResNet3D conv3d {self.conv3d!r} is not supported; valid: {list(CONV3D_IMPLS)}")
    unfold = self.conv3d == "depth_unfold" or (self.conv3d == "auto" and jax.default_backend() == "cpu")
    return DepthUnfoldConv if unfold else nn.Conv


NAMES = {f"resnet{d}_3d": d for d in STAGE_SIZES}


def resnet3d(name: str, **kwargs) -> ResNet3D:
  """Builds a 3D ResNet from a name like "resnet18_3d" or "resnet50_3d"."""
  if name not in NAMES:
    raise ValueError(f"Unknown 3D encoder {name!r}; valid choices: {sorted(NAMES)}")
  return ResNet3D(depth=NAMES[name], **kwargs)


__all__ = ["CONV3D_IMPLS", "DepthUnfoldConv", "NAMES", "ResNet3D", "resnet3d"]
