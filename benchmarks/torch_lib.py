"""The PyTorch side of the benchmarks: the SimCLR ResNet step of torch_compare.py and its batched augmentation
(also timed by augment.py), built to match medssl_jax's step (medssl_jax/torch_resnet.py mirrors its ResNet)."""
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medssl_jax.torch_resnet import ResNet

TEMPERATURE = 0.1
LR = 1e-3

# PyTorch variants: (conv padding, channels_last memory format, torch.compile).
TORCH_VARIANTS = {
    "mirrored": ("same", False, False),       # Ours: flax SAME padding (F.pad before stride-2 convs), NCHW.
    "channels_last": ("same", True, False),
    "native_padding": ("torch", False, False),  # torchvision's symmetric conv padding.
    "best": ("torch", True, False),           # What solo-learn / lightly / timm users run.
    "compiled": ("torch", True, True),        # best + torch.compile of the model.
}


def torch_model(depth, width, stem, padding="same"):
  """ResNet (medssl_jax.torch_resnet; padding "same" as ours, or "torch" as torchvision) + SimCLR projector, in
  train mode."""
  backbone = ResNet(depth=depth, width_multiplier=width, stem=stem, padding=padding)
  projector = nn.Sequential(nn.Linear(backbone.num_features, 2048, bias=False), nn.BatchNorm1d(2048), nn.ReLU(),
                            nn.Linear(2048, 128))
  return nn.Sequential(backbone, projector).train()


def nt_xent(z, temperature):
  """SimCLR's loss over [2B, D] projections (view 1 rows then view 2 rows)."""
  z = F.normalize(z, dim=1)
  n = z.shape[0] // 2
  logits = z @ z.T / temperature
  logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
  target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
  return F.cross_entropy(logits, target)


def torch_augment(images_u8, size, gen):
  """One batched SimCLR view of a uint8 NHWC batch -> normalised float NCHW [B, 3, size, size]."""
  x = images_u8.permute(0, 3, 1, 2).float() / 255.0
  b = x.shape[0]
  u = lambda lo, hi: torch.rand(b, generator=gen) * (hi - lo) + lo
  # Random resized crop (scale 0.2-1, ratio 3/4-4/3) + horizontal flip as one affine resampling.
  area, logr = u(0.2, 1.0), u(math.log(3 / 4), math.log(4 / 3))
  w = torch.sqrt(area * torch.exp(logr)).clamp(max=1.0)
  h = torch.sqrt(area / torch.exp(logr)).clamp(max=1.0)
  cx, cy = u(-1, 1) * (1 - w), u(-1, 1) * (1 - h)
  flip = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0)
  theta = torch.zeros(b, 2, 3)
  theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = w * flip, cx, h, cy
  grid = F.affine_grid(theta, (b, 3, size, size), align_corners=False)
  x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
  # Colour jitter with p 0.8: brightness, contrast, saturation 0.4, hue 0.1 (as a YIQ rotation).
  on = (torch.rand(b, generator=gen) < 0.8).float().view(b, 1, 1, 1)
  gray = lambda t: (0.299 * t[:, 0] + 0.587 * t[:, 1] + 0.114 * t[:, 2]).unsqueeze(1)
  y = x * u(0.6, 1.4).view(b, 1, 1, 1)
  m = gray(y).mean(dim=(2, 3), keepdim=True)
  y = (y - m) * u(0.6, 1.4).view(b, 1, 1, 1) + m
  g = gray(y)
  y = (y - g) * u(0.6, 1.4).view(b, 1, 1, 1) + g
  a = u(-0.1, 0.1) * 2 * math.pi
  to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
  rot = torch.zeros(b, 3, 3)
  rot[:, 0, 0], rot[:, 1, 1], rot[:, 2, 2] = 1, torch.cos(a), torch.cos(a)
  rot[:, 1, 2], rot[:, 2, 1] = -torch.sin(a), torch.sin(a)
  mat = torch.linalg.inv(to_yiq) @ rot @ to_yiq
  y = torch.einsum("bij,bjhw->bihw", mat, y).clamp(0, 1)
  x = on * y + (1 - on) * x
  # Grayscale with p 0.2.
  gs = (torch.rand(b, generator=gen) < 0.2).float().view(b, 1, 1, 1)
  x = gs * gray(x).expand_as(x) + (1 - gs) * x
  # Gaussian blur with p 0.5, sigma 0.1-2, kernel ~10% of the size (odd): per-image separable grouped conv.
  k = max(3, int(0.1 * size) // 2 * 2 + 1)
  sigma = torch.where(torch.rand(b, generator=gen) < 0.5, u(0.1, 2.0), torch.full((b,), 1e-3))
  t = torch.arange(k, dtype=torch.float32) - k // 2
  ker = torch.exp(-t[None] ** 2 / (2 * sigma[:, None] ** 2))
  ker = (ker / ker.sum(1, keepdim=True)).repeat_interleave(3, 0)  # [3B, k]
  z = F.pad(x.reshape(1, 3 * b, size, size), (k // 2,) * 4, mode="reflect")
  z = F.conv2d(z, ker.view(3 * b, 1, 1, k), groups=3 * b)
  z = F.conv2d(z, ker.view(3 * b, 1, k, 1), groups=3 * b)
  return (z.view(b, 3, size, size) - 0.5) / 0.5


def torch_step(*, depth, width, stem, size, batch, optimizer, full, channels_last, padding="same", compile=False):
  """run() doing one PyTorch step (model only, or after torch_augment of both views)."""
  torch.manual_seed(0)
  model = torch_model(depth, width, stem, padding)
  if channels_last:
    model = model.to(memory_format=torch.channels_last)
  forward = torch.compile(model) if compile else model
  if optimizer == "adamw":
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=1e-6)
  else:
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, nesterov=True, weight_decay=1e-6)
  gen = torch.Generator().manual_seed(1)
  images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8))
  fixed = torch.randn(2 * batch, 3, size, size, generator=gen)

  def run():
    x = torch.cat([torch_augment(images, size, gen), torch_augment(images, size, gen)]) if full else fixed
    if channels_last:
      x = x.contiguous(memory_format=torch.channels_last)
    opt.zero_grad(set_to_none=True)
    loss = nt_xent(forward(x), TEMPERATURE)
    loss.backward()
    opt.step()
    loss.item()
  return run
