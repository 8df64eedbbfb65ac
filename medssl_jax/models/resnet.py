"""ResNet-18/50 encoders in Flax (linen), with a CIFAR-style stem option for small medical images.

Layouts follow torchvision (ResNet v1.5: stride on the 3x3 conv of the bottleneck), so parameter counts
match torchvision's backbones exactly and weights can be mapped between the two.
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

ModuleDef = Any

# Stage depths per depth; the block type follows from the depth.
STAGE_SIZES = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
STEMS = ("imagenet", "cifar")
# "same": flax SAME padding for 3x3 convs, which pads a stride-2 conv on an even input (0, 1) (the
# default: existing checkpoints and results use it). "torch": symmetric (1, 1) like torchvision, so
# converted torchvision / timm weights compute the same features (models/convert_torch.py).
PADDINGS = ("same", "torch")
# Convolution kernel inits: "he_fan_out" (torchvision's ResNet: He normal over fan-out, the default) or
# "torch_default" (PyTorch's nn.Conv2d default, uniform with variance 1 / (3 fan-in): what ResNets that do not
# re-initialise, such as MedMNIST's 28 px baselines, train from).
CONV_INITS = {"he_fan_out": nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
              "torch_default": nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")}


def _last_bn_init(zero: bool):
  # Zero scale makes each block start as identity (Goyal et al. 2017); off by default as in torchvision,
  # because it also makes a randomly initialised encoder (a baseline we report) nearly linear.
  return nn.initializers.zeros if zero else nn.initializers.ones


def _kernel_shapes(x, strides: int):
  """(3x3 kernel, 1x1 kernel, strides) for the spatial rank of x [B, *spatial, C] (images or volumes)."""
  n = x.ndim - 2
  return (3,) * n, (1,) * n, (strides,) * n


# Where XLA's convolution is slow, `conv_general_dilated` (what every 2D ResNet conv calls) computes the same
# convolution another way; benchmarks/README.md has the measurements.
# - Output maps of at most SMALL_MAP_PIXELS pixels with a kernel larger than 1x1 (stage 4 at 64 px with the
#   ImageNet stem): XLA:CPU took ~2 s forward and ~2 s input gradient for a 3x3 conv on 2x2x512 maps and 256 images,
#   90x PyTorch. They run as im2col + one matmul, on every backend.
# - 1x1 convolutions on CPU run as one matmul (after subsampling when strided): XLA:CPU's filter gradient of a 1x1
#   conv takes about twice the matmul's, 6x PyTorch's for the strided projection at 28 px.
# - Strided convolutions with larger kernels on CPU: XLA:CPU takes the input gradient by convolving the zero-dilated
#   output gradient (2.8x PyTorch for the 28 px stage-2 3x3/2 conv). They keep XLA's forward and filter gradient and
#   take their input gradient through `_phase_conv`.
# GPU and TPU keep their own convolution apart from the tiny maps.
SMALL_MAP_PIXELS = 4  # Output maps of at most this many pixels (2x2) take the matmul.
_NHWC = ("NHWC", "HWIO", "NHWC")


def _pad_hw(x, pads):
  """x [N, H, W, C] zero-padded by pads ((top, bottom), (left, right))."""
  return jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))


def _phase_conv(x, w, strides, pads, precision):
  """The strided NHWC convolution as a sum of stride-1 VALID convolutions, one per phase (a, b) of the stride:
  padded input pixels (a + s*i, b + s*j) against the kernel taps (a + s*p, b + s*q). Its input gradient is then
  made of stride-1 convolutions and strided scatters, with no zero-dilated output gradient."""
  (sh, sw), (kh, kw) = strides, w.shape[:2]
  xp = _pad_hw(x, pads)
  oh, ow = (xp.shape[1] - kh) // sh + 1, (xp.shape[2] - kw) // sw + 1
  y = None
  for a in range(min(sh, kh)):
    ta = len(range(a, kh, sh))
    for b in range(min(sw, kw)):
      tb = len(range(b, kw, sw))
      xa = xp[:, a:a + sh * (oh + ta - 2) + 1:sh, b:b + sw * (ow + tb - 2) + 1:sw, :]
      part = lax.conv_general_dilated(xa, w[a::sh, b::sw], (1, 1), "VALID", dimension_numbers=_NHWC,
                                      precision=precision)
      y = part if y is None else y + part
  return y


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _strided_conv(x, w, strides, pads, precision):
  return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=_NHWC, precision=precision)


def _strided_conv_fwd(x, w, strides, pads, precision):
  return _strided_conv(x, w, strides, pads, precision), (x, w)


def _strided_conv_bwd(strides, pads, precision, res, dy):
  x, w = res
  dx = jax.vjp(lambda x: _phase_conv(x, w, strides, pads, precision), x)[1](dy)[0]
  dw = jax.vjp(lambda w: lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=_NHWC,
                                                  precision=precision), w)[1](dy)[0]
  return dx, dw


_strided_conv.defvjp(_strided_conv_fwd, _strided_conv_bwd)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, precision=None, **kwargs):
  """lax.conv_general_dilated (nn.Conv's signature), computed as described above for 2D NHWC convolutions with tiny
  output maps (im2col + matmul) and, on CPU, 1x1 kernels or strides; every other case is lax.conv_general_dilated."""
  plain = lambda: lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
                                           rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                                           feature_group_count=feature_group_count, precision=precision, **kwargs)
  dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  nhwc = lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))
  dilated = any(d != 1 for d in (lhs_dilation or ())) or any(d != 1 for d in (rhs_dilation or ()))
  if lhs.ndim != 4 or dn != nhwc or dilated or feature_group_count != 1 or kwargs:
    return plain()
  kh, kw, cin, cout = rhs.shape
  (sh, sw) = window_strides
  pads = lax.padtype_to_pads(lhs.shape[1:3], (kh, kw), window_strides, padding) if isinstance(padding, str) \
      else padding
  pads = tuple((int(lo), int(hi)) for lo, hi in pads)
  if min(min(p) for p in pads) < 0:
    return plain()
  n, h, w, _ = lhs.shape
  oh = (h + pads[0][0] + pads[0][1] - kh) // sh + 1
  ow = (w + pads[1][0] + pads[1][1] - kw) // sw + 1
  if kh * kw > 1 and oh * ow <= SMALL_MAP_PIXELS:
    x = _pad_hw(lhs, pads)
    cols = jnp.concatenate([x[:, i:i + (oh - 1) * sh + 1:sh, j:j + (ow - 1) * sw + 1:sw, :]
                            for i in range(kh) for j in range(kw)], axis=-1)
    y = jnp.dot(cols.reshape(n * oh * ow, kh * kw * cin), rhs.reshape(kh * kw * cin, cout), precision=precision)
    return y.reshape(n, oh, ow, cout)
  if jax.default_backend() != "cpu" or ((sh, sw) == (1, 1) and kh * kw > 1):
    return plain()
  if kh * kw == 1:
    x = _pad_hw(lhs, pads)[:, ::sh, ::sw, :]
    return jnp.dot(x.reshape(n * oh * ow, cin), rhs.reshape(cin, cout), precision=precision).reshape(n, oh, ow, cout)
  return _strided_conv(lhs, rhs, (sh, sw), pads, precision)


class BasicBlock(nn.Module):
  """Two 3x3 convs with an identity (or 1x1 projection) shortcut."""
  filters: int
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1
  zero_init_residual: bool = False
  padding: Any = "SAME"  # Of the 3x3 convs (ResNet.padding decides).
  expansion = 1

  @nn.compact
  def __call__(self, x):
    k3, k1, strides = _kernel_shapes(x, self.strides)
    residual = x
    y = self.conv(self.filters, k3, strides, padding=self.padding, name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y))
    y = self.conv(self.filters, k3, padding=self.padding, name="conv2")(y)
    y = self.norm(scale_init=_last_bn_init(self.zero_init_residual), name="bn2")(y)
    if residual.shape != y.shape:
      residual = self.conv(self.filters, k1, strides, name="proj_conv")(residual)
      residual = self.norm(name="proj_bn")(residual)
    return nn.relu(residual + y)


class Bottleneck(nn.Module):
  """1x1 -> 3x3 (strided, v1.5) -> 1x1 with 4x expansion."""
  filters: int
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1
  zero_init_residual: bool = False
  padding: Any = "SAME"  # Of the 3x3 conv (ResNet.padding decides).
  expansion = 4

  @nn.compact
  def __call__(self, x):
    k3, k1, strides = _kernel_shapes(x, self.strides)
    residual = x
    y = self.conv(self.filters, k1, name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y))
    y = self.conv(self.filters, k3, strides, padding=self.padding, name="conv2")(y)
    y = nn.relu(self.norm(name="bn2")(y))
    y = self.conv(self.filters * 4, k1, name="conv3")(y)
    y = self.norm(scale_init=_last_bn_init(self.zero_init_residual), name="bn3")(y)
    if residual.shape != y.shape:
      residual = self.conv(self.filters * 4, k1, strides, name="proj_conv")(residual)
      residual = self.norm(name="proj_bn")(residual)
    return nn.relu(residual + y)


class ResNetBase(nn.Module):
  """The ResNet of `spatial_dims` spatial axes (a class constant: 2 in `ResNet`, 3 in `ResNet3D`).

  Attributes: see `ResNet`; every kernel, stride, padding and pooling window has `spatial_dims` axes.
  """
  depth: int = 18
  stem: str = "imagenet"
  width_multiplier: float = 1.0
  bn_momentum: float = 0.9
  zero_init_residual: bool = False
  dtype: Any = jnp.float32
  padding: str = "same"
  conv_init: str = "he_fan_out"
  spatial_dims = 2
  input_layout = "[B, H, W, C]"

  def conv_module(self):
    """The convolution module class (nn.Conv's signature and parameters); `ResNet3D` may swap it."""
    return nn.Conv

  @property
  def num_features(self) -> int:
    block = Bottleneck if self.depth >= 50 else BasicBlock
    return int(512 * self.width_multiplier) * block.expansion

  @nn.compact
  def __call__(self, x, *, train: bool, return_stages: bool = False):
    name = type(self).__name__
    if self.depth not in STAGE_SIZES:
      raise ValueError(f"{name} depth {self.depth!r} is not supported; valid: {sorted(STAGE_SIZES)}")
    if self.stem not in STEMS:
      raise ValueError(f"{name} stem {self.stem!r} is not supported; valid: {list(STEMS)}")
    if self.padding not in PADDINGS:
      raise ValueError(f"{name} padding {self.padding!r} is not supported; valid: {list(PADDINGS)}")
    if self.conv_init not in CONV_INITS:
      raise ValueError(f"{name} conv_init {self.conv_init!r} is not supported; valid: {list(CONV_INITS)}")
    n = self.spatial_dims
    if x.ndim != n + 2:
      raise ValueError(f"{name}: expected a batch {self.input_layout}, got shape {x.shape}")
    pad3 = "SAME" if self.padding == "same" else ((1, 1),) * n
    block_cls = Bottleneck if self.depth >= 50 else BasicBlock
    module = self.conv_module()
    small_maps = {"conv_general_dilated": conv_general_dilated} if module is nn.Conv else {}
    conv = functools.partial(module, use_bias=False, dtype=self.dtype, kernel_init=CONV_INITS[self.conv_init],
                             **small_maps)
    # BatchNorm statistics are taken over the batch axis of the *global* array: under jit with a
    # data-sharded batch XLA inserts the cross-device reduction, so this is synchronised BN.
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=self.bn_momentum,
                             epsilon=1e-5, dtype=self.dtype, param_dtype=jnp.float32)
    width = lambda c: max(1, int(c * self.width_multiplier))

    x = x.astype(self.dtype)
    if self.stem == "imagenet":
      x = conv(width(64), (7,) * n, (2,) * n, padding=[(3, 3)] * n, name="stem_conv")(x)
      x = nn.relu(norm(name="stem_bn")(x))
      x = nn.max_pool(x, (3,) * n, strides=(2,) * n, padding=((1, 1),) * n)
    else:
      x = conv(width(64), (3,) * n, name="stem_conv")(x)
      x = nn.relu(norm(name="stem_bn")(x))
    stages = []
    for i, num_blocks in enumerate(STAGE_SIZES[self.depth]):
      for j in range(num_blocks):
        strides = 2 if i > 0 and j == 0 else 1
        x = block_cls(width(64 * 2**i), conv=conv, norm=norm, strides=strides,
                      zero_init_residual=self.zero_init_residual, padding=pad3,
                      name=f"stage{i + 1}_block{j + 1}")(x)
      stages.append(x)
    features = jnp.mean(x, axis=tuple(range(1, n + 1))).astype(jnp.float32)
    if return_stages:
      return features, stages
    return features


class ResNet(ResNetBase):
  """ResNet backbone returning globally average-pooled features [B, C] of images [B, H, W, C].

  Attributes:
    depth: 18, 34, 50 or 101.
    stem: "imagenet" (7x7/2 conv + 3x3/2 max-pool) or "cifar" (3x3/1 conv, no pool) for 28-64 px inputs.
    width_multiplier: scales every stage width (64, 128, 256, 512) x width; 0.25 gives tiny test models.
    bn_momentum: decay of the running BatchNorm statistics used in evaluation.
    zero_init_residual: zero-init the last BatchNorm scale of each residual block.
    dtype: compute dtype (e.g. bfloat16); parameters and BatchNorm statistics stay float32.
    padding: "same" (flax SAME for the 3x3 convs) or "torch" (symmetric, as torchvision: needed to reproduce
      converted torchvision / timm weights; same parameters either way). The ImageNet stem's 7x7 conv and
      max-pool pad symmetrically in both.
    conv_init: a key of CONV_INITS.
  """


def resnet(name: str, **kwargs) -> ResNet:
  """Builds a ResNet from a name like "resnet18" or "resnet50"."""
  valid = {f"resnet{d}": d for d in STAGE_SIZES}
  if name not in valid:
    raise ValueError(f"Unknown encoder {name!r}; valid choices: {sorted(valid)}")
  return ResNet(depth=valid[name], **kwargs)
