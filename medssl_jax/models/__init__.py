"""Encoders and heads, built from a config by name."""
from medssl_jax.models.heads import MLPHead, SSLModel
from medssl_jax.models.resnet import ResNet, resnet

ENCODERS = ("resnet18", "resnet50")


def build_model(config) -> SSLModel:
  """Builds the SSLModel described by `config.model` (encoder name, stem, width, projector dims)."""
  m = config.model
  if m.encoder not in ENCODERS:
    raise ValueError(f"config.model.encoder={m.encoder!r} is not known; valid choices: {list(ENCODERS)}")
  backbone = resnet(m.encoder, stem=m.stem, width_multiplier=m.width_multiplier)
  projector = MLPHead(hidden_dims=tuple(m.projector_hidden_dims), out_dim=m.projector_dim)
  return SSLModel(backbone=backbone, projector=projector)


__all__ = ["ENCODERS", "MLPHead", "ResNet", "SSLModel", "build_model", "resnet"]
