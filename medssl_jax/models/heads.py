"""Projector heads and the encoder+projector model used for self-supervised pretraining."""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn


class MLPHead(nn.Module):
  """SimCLR-style MLP: (Dense -> BN -> ReLU) x (n-1) -> Dense [-> BN without affine].

  Attributes:
    hidden_dims: widths of the hidden layers (empty for a linear head).
    out_dim: output width.
    out_bn: add a non-affine BatchNorm on the output (SimCLR v2 / BYOL-style heads use it).
  """
  hidden_dims: Sequence[int] = (2048,)
  out_dim: int = 128
  out_bn: bool = False
  bn_momentum: float = 0.9

  @nn.compact
  def __call__(self, x, *, train: bool, return_layers: bool = False):
    layers = []
    for i, h in enumerate(self.hidden_dims):
      x = nn.Dense(h, use_bias=False, name=f"dense{i + 1}")(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum, name=f"bn{i + 1}")(x)
      x = nn.relu(x)
      layers.append(x)
    x = nn.Dense(self.out_dim, use_bias=not self.out_bn, name="out")(x)
    if self.out_bn:
      x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum, use_scale=False,
                       use_bias=False, name="out_bn")(x)
    layers.append(x)
    return (x, layers) if return_layers else x


class SSLModel(nn.Module):
  """Backbone + heads. Returns a dict with "features" (backbone), "projection" and, when the
  objective has one, "prediction" (BYOL / SimSiam / MoCo v3 predictor on the projection).

  A projector may also return a dict (e.g. DINO / SwAV heads: {"projection", "logits"}); its entries
  are merged into the output.
  """
  backbone: nn.Module
  projector: nn.Module
  predictor: nn.Module | None = None

  def __call__(self, x, *, train: bool):
    features = self.backbone(x, train=train)
    out = {"features": features}
    head = self.projector(features, train=train)
    out.update(head if isinstance(head, dict) else {"projection": head})
    if self.predictor is not None:
      out["prediction"] = self.predictor(out["projection"], train=train)
    return out

  def embed(self, x):
    """Frozen backbone features in inference mode (running BatchNorm statistics)."""
    return self.backbone(x, train=False)
