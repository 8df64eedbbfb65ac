"""Encoders and heads, built from a config by name."""
import jax
import jax.numpy as jnp

from medssl_jax.models.heads import MLPHead, SSLModel
from medssl_jax.models.resnet import CONV_INITS, PADDINGS, ResNet, resnet
from medssl_jax.models.resnet3d import ResNet3D, resnet3d
from medssl_jax.models.vit import VIT_ENCODERS, VIT_ENCODERS_3D, VIT_SIZES, ViT, vision_transformer

# The 3D encoders (ResNets and ViTs) take volumes [B, D, H, W, C]; the others take images [B, H, W, C].
ENCODERS_3D = ("resnet18_3d", "resnet50_3d", *VIT_ENCODERS_3D)
ENCODERS = ("resnet18", "resnet50", "resnet18_3d", "resnet50_3d", *VIT_ENCODERS)
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(config):
  """The encoder's compute dtype from config.model.compute_dtype (losses and norms stay float32)."""
  name = config.model.compute_dtype
  if name not in DTYPES:
    raise ValueError(f"config.model.compute_dtype={name!r} is not known; valid choices: {sorted(DTYPES)}")
  return DTYPES[name]


def takes_volumes(config) -> bool:
  """Whether config.model.encoder takes volumes [B, D, H, W, C] (a 3D encoder) rather than images."""
  return config.model.encoder in ENCODERS_3D


def vit_input_dims(config) -> tuple[int, ...]:
  """The input ranks of a ViT encoder (`ViT.input_dims`): config.model.vit_input_dims, sorted, where () means
  the encoder's own rank (2 for vit_*, 3 for vit_*_3d). (2, 3) adds the other rank's patch and position
  embeddings to the same transformer (a 2D+3D switchable ViT); the encoder name still decides what the run
  feeds it, so a set value must include the encoder's rank. A ValueError names the key; non-ViT encoders
  need ()."""
  m = config.model
  dims = tuple(m.get("vit_input_dims", ()) or ())
  if m.encoder not in VIT_ENCODERS:
    if dims:
      raise ValueError(f"config.model.vit_input_dims={dims!r} applies to ViT encoders only; "
                       f"config.model.encoder={m.encoder!r}: set it to ()")
    return ()
  rank = 3 if takes_volumes(config) else 2
  if not dims:
    return (rank,)
  if len(set(dims)) != len(dims) or not set(dims) <= {2, 3} or rank not in dims:
    raise ValueError(f"config.model.vit_input_dims={dims!r} must be () (the encoder's rank), or (2,), (3,) or "
                     f"(2, 3) including {rank}: config.model.encoder={m.encoder!r} takes "
                     f"{'volumes' if rank == 3 else 'images'}")
  return tuple(sorted(dims))


def build_backbone(config):
  """The encoder named by config.model.encoder.

  ResNets (2D and 3D) take config.model.stem, width_multiplier and conv_init, and config.model.padding ("auto":
  pad like torchvision, padding="torch", when config.model.init_checkpoint names weights to start from); the 3D
  ResNets (ENCODERS_3D) take volumes, and MedMNIST's 28^3 layout is stem "cifar". ViTs take
  config.model.patch_size, ignore the stem, and reject a width_multiplier other than 1.0 (their widths are the
  fixed DeiT sizes); vit_*_3d take volumes (p x p x p patches), and config.model.vit_input_dims (2, 3) gives
  either kind a second patch embedding for the other rank (`vit_input_dims`).
  """
  m = config.model
  if m.encoder not in ENCODERS:
    raise ValueError(f"config.model.encoder={m.encoder!r} is not known; valid choices: {list(ENCODERS)}")
  input_dims = vit_input_dims(config)
  if m.encoder in VIT_ENCODERS:
    if m.width_multiplier != 1.0:
      raise ValueError(f"config.model.width_multiplier={m.width_multiplier!r} applies to ResNets only; "
                       f"{m.encoder} has a fixed width: set it to 1.0 or pick a smaller ViT "
                       f"({sorted(VIT_SIZES)})")
    return vision_transformer(m.encoder, patch_size=m.patch_size, dtype=compute_dtype(config),
                              fixed_positions=m.position_embedding == "sincos", input_dims=input_dims)
  padding = m.get("padding", "auto")
  if padding not in ("auto", *PADDINGS):
    raise ValueError(f"config.model.padding={padding!r} is not known; valid choices: {['auto', *PADDINGS]}")
  if padding == "auto":  # Converted torchvision / timm weights (model.init_checkpoint) need symmetric padding.
    padding = "torch" if m.get("init_checkpoint") else "same"
  conv_init = m.get("conv_init", "he_fan_out")
  if conv_init not in CONV_INITS:
    raise ValueError(f"config.model.conv_init={conv_init!r} is not known; valid choices: {list(CONV_INITS)}")
  build = resnet3d if m.encoder in ENCODERS_3D else resnet
  return build(m.encoder, stem=m.stem, width_multiplier=m.width_multiplier, dtype=compute_dtype(config),
               padding=padding, conv_init=conv_init)


def init_variables(model, rngs, *inputs, **kwargs):
  """`model.init(rngs, *inputs, **kwargs)` as one compiled program.

  On CPU it is compiled without XLA's optimisations: it runs once, and optimising its random-number code is most of
  the compile (a ResNet-18 10.5 s with them, 1.7 s without; the values agree to the last bits: docs/speed.md).
  """
  init = jax.jit(lambda r: model.init(r, *inputs, **kwargs))
  if any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves((rngs, inputs))):
    return init(rngs)  # Inside another trace (eval_shape, an outer jit): that one compiles it.
  lowered = init.lower(rngs)
  options = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
  return lowered.compile(compiler_options=options)(rngs)


def default_heads(config) -> dict:
  """SimCLR's MLP projector (the heads of contrastive objectives)."""
  m = config.model
  return {"projector": MLPHead(hidden_dims=tuple(m.projector_hidden_dims), out_dim=m.projector_dim)}


__all__ = ["DTYPES", "ENCODERS", "ENCODERS_3D", "takes_volumes", "MLPHead", "ResNet", "ResNet3D", "SSLModel", "build_backbone",
           "compute_dtype", "default_heads", "init_variables", "resnet", "resnet3d", "VIT_ENCODERS", "VIT_ENCODERS_3D", "VIT_SIZES", "ViT",
           "vision_transformer", "vit_input_dims"]
