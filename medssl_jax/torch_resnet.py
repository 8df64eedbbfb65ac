"""PyTorch ResNet for backbones exported by `python -m medssl_jax.export`; needs only numpy and torch
(and safetensors for .safetensors files), so this one file can be copied into any PyTorch project.

  model, meta = load_exported("backbone.safetensors")     # or backbone.npz (+ backbone.npz.json)
  x = (images_nchw_float01 - mean) / std                  # meta["mean"], meta["std"]: per channel
  features = model(x)                                     # [B, meta["num_features"]], pooled, in eval mode

The module reproduces medssl_jax/models/resnet.py exactly, including its padding:
  * padding "same" (the default for pretrained runs): flax SAME for the 3x3 convs; a stride-2 3x3 conv on an
    even input pads (0, 1), not torchvision's (1, 1), so it is padded with F.pad before an unpadded conv;
  * padding "torch": symmetric (1, 1), as torchvision (runs started from converted torchvision weights).
  The ImageNet stem (7x7/2 conv padded 3, 3x3/2 max-pool padded 1 with -inf) and 1x1 convs are identical
  in both, and equal torchvision's. The "cifar" stem is a 3x3/1 conv, no max-pool.
Weights are torchvision-named (conv1, bn1, layer1.0.conv1, layer2.0.downsample.0, ...) and loaded strictly;
there is no fc layer. `head.*` tensors (--include_head) are returned by `read_exported` but not loaded.
"""
from __future__ import annotations

import json
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

FORMAT = "medssl_jax.resnet/1"
STAGE_SIZES = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
JSON_KEYS = ("depth", "width_multiplier", "num_features", "in_channels", "image_size", "mean", "std", "step",
             "config", "provenance", "include_head")


def _same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """TF / flax SAME padding (before, after) of one spatial axis: the extra pixel goes after."""
  total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


class Conv3x3(nn.Conv2d):
  """A bias-free 3x3 conv padded like flax SAME (`same=True`) or symmetrically by 1 (torchvision)."""

  def __init__(self, in_channels: int, out_channels: int, stride: int = 1, *, same: bool = True):
    super().__init__(in_channels, out_channels, 3, stride, padding=0 if same else 1, bias=False)
    self.same = same

  def forward(self, x):
    if not self.same:
      return super().forward(x)
    top, bottom = _same_pads(x.shape[-2], 3, self.stride[0])
    left, right = _same_pads(x.shape[-1], 3, self.stride[1])
    return super().forward(F.pad(x, (left, right, top, bottom)))


def _downsample(in_channels, out_channels, stride):
  return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels))


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, in_channels, filters, stride, *, same):
    super().__init__()
    self.conv1 = Conv3x3(in_channels, filters, stride, same=same)
    self.bn1 = nn.BatchNorm2d(filters)
    self.conv2 = Conv3x3(filters, filters, 1, same=same)
    self.bn2 = nn.BatchNorm2d(filters)
    # As the flax block: a projection where the shape changes (stride or channels).
    self.downsample = _downsample(in_channels, filters, stride) if stride != 1 or in_channels != filters else None

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    return F.relu((x if self.downsample is None else self.downsample(x)) + y)


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, in_channels, filters, stride, *, same):
    super().__init__()
    out = filters * 4
    self.conv1 = nn.Conv2d(in_channels, filters, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(filters)
    self.conv2 = Conv3x3(filters, filters, stride, same=same)  # v1.5: the stride is on the 3x3 conv.
    self.bn2 = nn.BatchNorm2d(filters)
    self.conv3 = nn.Conv2d(filters, out, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(out)
    self.downsample = _downsample(in_channels, out, stride) if stride != 1 or in_channels != out else None

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = F.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return F.relu((x if self.downsample is None else self.downsample(x)) + y)


class ResNet(nn.Module):
  """ResNet backbone returning globally average-pooled features [B, num_features] from NCHW input."""

  def __init__(self, *, depth: int = 18, width_multiplier: float = 1.0, stem: str = "imagenet",
               padding: str = "same", in_channels: int = 3):
    super().__init__()
    if depth not in STAGE_SIZES:
      raise ValueError(f"depth={depth!r} is not supported; valid: {sorted(STAGE_SIZES)}")
    if stem not in ("imagenet", "cifar"):
      raise ValueError(f"stem={stem!r} is not supported; valid: ['imagenet', 'cifar']")
    if padding not in ("same", "torch"):
      raise ValueError(f"padding={padding!r} is not supported; valid: ['same', 'torch']")
    width = lambda c: max(1, int(c * width_multiplier))  # As models/resnet.py.
    block = Bottleneck if depth >= 50 else BasicBlock
    self.stem = stem
    if stem == "imagenet":
      self.conv1 = nn.Conv2d(in_channels, width(64), 7, 2, padding=3, bias=False)
      self.maxpool = nn.MaxPool2d(3, 2, padding=1)  # Pads with -inf, as flax's max_pool.
    else:
      self.conv1 = nn.Conv2d(in_channels, width(64), 3, 1, padding=1, bias=False)  # SAME at stride 1.
      self.maxpool = nn.Identity()
    self.bn1 = nn.BatchNorm2d(width(64))
    channels = width(64)
    for i, num_blocks in enumerate(STAGE_SIZES[depth]):
      blocks = []
      for j in range(num_blocks):
        blocks.append(block(channels, width(64 * 2**i), 2 if i > 0 and j == 0 else 1, same=padding == "same"))
        channels = width(64 * 2**i) * block.expansion
      setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
    self.num_features = channels

  def forward(self, x):
    x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    return x.mean(dim=(2, 3))


def parse_metadata(raw: dict) -> dict:
  """An export's metadata with its JSON values (numbers, lists, the config) decoded."""
  if raw.get("format") != FORMAT:
    raise ValueError(f"metadata format {raw.get('format')!r} is not {FORMAT!r}: not a file written by "
                     "`python -m medssl_jax.export` (or a newer format than this loader knows)")
  return {k: json.loads(v) if k in JSON_KEYS and isinstance(v, str) else v for k, v in raw.items()}


def build_resnet(metadata: dict) -> ResNet:
  """The (randomly initialised) ResNet an export's metadata describes (raw string values or parsed)."""
  m = parse_metadata(metadata) if any(isinstance(metadata.get(k), str) for k in JSON_KEYS) else metadata
  missing = [k for k in ("depth", "width_multiplier", "stem", "padding") if k not in m]
  if missing:
    raise ValueError(f"export metadata lacks {missing}; keys present: {sorted(m)}")
  return ResNet(depth=int(m["depth"]), width_multiplier=float(m["width_multiplier"]), stem=m["stem"],
                padding=m["padding"], in_channels=int(m.get("in_channels", 3)))


def read_exported(path: str) -> tuple[dict, dict]:
  """({name: numpy array}, parsed metadata) of an export (.safetensors, or .npz with its <path>.json)."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path!r} does not exist")
  suffix = os.path.splitext(path)[1].lower()
  if suffix == ".safetensors":
    from safetensors import safe_open
    with safe_open(path, framework="np") as f:
      raw = f.metadata() or {}
      tensors = {k: f.get_tensor(k) for k in f.keys()}
  elif suffix == ".npz":
    sidecar = path + ".json"
    if not os.path.exists(sidecar):
      raise FileNotFoundError(f"{sidecar!r} (the metadata of {path!r}) does not exist; it is written beside "
                              "every .npz export")
    with open(sidecar) as f:
      raw = json.load(f)
    with np.load(path, allow_pickle=False) as f:
      tensors = {k: f[k] for k in f.files}
  else:
    raise ValueError(f"{path!r}: unknown file type {suffix!r}; expected .safetensors or .npz")
  return tensors, parse_metadata(raw)


def load_exported(path: str) -> tuple[ResNet, dict]:
  """(model in eval mode with the exported weights loaded strictly, parsed metadata)."""
  tensors, meta = read_exported(path)
  model = build_resnet(meta)
  state = {k: torch.from_numpy(np.array(v)) for k, v in tensors.items() if not k.startswith("head.")}
  model.load_state_dict(state, strict=True)
  if model.num_features != meta.get("num_features", model.num_features):
    raise ValueError(f"{path!r}: the model gives {model.num_features} features, the metadata says "
                     f"{meta['num_features']}")
  return model.eval(), meta
