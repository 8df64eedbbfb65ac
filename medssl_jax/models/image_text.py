"""Image + report model for image-text pretraining (CLIP / ConVIRT, and SLIP-style joint learning).

`ImageTextModel` keeps both towers in one parameter tree, so the trainer, checkpoints and every
evaluation treat it like any other model:

* `model(images, train=...)` -> {"features": backbone features, "projection": the image embedding in the
  joint image-text space (MLP `projector`), and "ssl_projection" when an image-only SSL head exists (the
  joint objective's SimCLR projector, a separate head as in SLIP)};
* `model.apply(variables, ids, mask, method="encode_text")` -> {"text_embedding": [B, D] (the text
  transformer's pooled [CLS] feature through a linear projection to D = projector output),
  "logit_scale": CLIP's learnable log(1 / temperature)}.

`embed` and the attributes `backbone` / `projector` are those of models.heads.SSLModel, so linear probes,
kNN, fine-tuning and layer-wise probes read image features the same way.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np


class ImageTextModel(nn.Module):
  """Backbone + image projector + text transformer (+ optional SSL projector) + a logit scale.

  Attributes:
    backbone: the image encoder (ResNet / ViT).
    projector: image head to the joint space (an MLPHead whose out_dim equals the text tower's out_dim).
    text: the text encoder (models.text.TextTransformer with out_dim set).
    ssl_projector: optional image-only head for a second, image-only loss (SLIP's SimCLR head).
    init_temperature: the temperature the logit scale starts at (logit_scale = log(1 / t)).
  """
  backbone: nn.Module
  projector: nn.Module
  text: nn.Module
  ssl_projector: nn.Module | None = None
  init_temperature: float = 0.07

  def setup(self):
    self.logit_scale = self.param("logit_scale", nn.initializers.constant(np.log(1.0 / self.init_temperature)),
                                  (), jnp.float32)

  def __call__(self, x, *, train: bool):
    features = self.backbone(x, train=train)
    out = {"features": features, "projection": self.projector(features, train=train)}
    if self.ssl_projector is not None:
      out["ssl_projection"] = self.ssl_projector(features, train=train)
    if self.is_initializing():
      # model.init sees images only; touch the text tower too so its parameters exist from the start.
      length = min(8, self.text.max_length)
      self.encode_text(jnp.zeros((1, length), jnp.int32), jnp.ones((1, length), jnp.bool_))
    return out

  def encode_text(self, ids, mask):
    """{"text_embedding": [B, D] float32, "logit_scale": scalar} for token ids / mask [B, L]."""
    return {"text_embedding": self.text(ids, mask, train=False), "logit_scale": self.logit_scale}

  def embed(self, x):
    """Frozen backbone features in inference mode (running BatchNorm statistics)."""
    return self.backbone(x, train=False)
