"""3D ResNet-18/50 encoders for volumes [B, D, H, W, C]: MedMNIST v2's "ResNet-18+3D" / "ResNet-50+3D".

Those baselines are the 2D ResNet with every convolution, BatchNorm and pooling made 3D; for 28^3 inputs
the stem is the CIFAR-style 3x3x3 stride-1 conv without max-pool (`stem="cifar"`, the default here), so
the stages see 28^3, 14^3, 7^3 and 4^3. The module is this repo's `ResNetBase` with three spatial axes:
the same blocks, attribute names, parameter names and `__call__(x, *, train, return_stages)` as the 2D
`ResNet`, with 3x3 kernels as 3x3x3 ones, so 2D weights inflate onto it by name (`models.inflate`).
It is deliberately not a `ResNet` subclass: code that checks `isinstance(m, ResNet)` assumes images.
"""
from __future__ import annotations

from medssl_jax.models.resnet import STAGE_SIZES, ResNetBase


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
  """
  stem: str = "cifar"
  spatial_dims = 3
  input_layout = "[B, D, H, W, C]"


NAMES = {f"resnet{d}_3d": d for d in STAGE_SIZES}


def resnet3d(name: str, **kwargs) -> ResNet3D:
  """Builds a 3D ResNet from a name like "resnet18_3d" or "resnet50_3d"."""
  if name not in NAMES:
    raise ValueError(f"Unknown 3D encoder {name!r}; valid choices: {sorted(NAMES)}")
  return ResNet3D(depth=NAMES[name], **kwargs)


__all__ = ["NAMES", "ResNet3D", "resnet3d"]
