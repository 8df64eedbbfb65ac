"""Vision Transformer encoders (Dosovitskiy et al. 2021, ICLR) in Flax (linen), DeiT sizes.

    ViT-Ti: width 192, depth 12, 3 heads     ViT-S: 384 / 12 / 6     ViT-B: 768 / 12 / 12   (MLP ratio 4)

Layout follows timm's `VisionTransformer` (class token, learned position embeddings for the class
token and every patch, pre-norm blocks, final LayerNorm), so parameter counts match timm's
`vit_*_patch16_224(num_classes=0)` exactly. The features are the final-normed class token [B, D].

Mixed precision: with `dtype=bfloat16` the patch embedding, attention projections and MLPs compute in
bfloat16 (so does the residual stream) while parameters, LayerNorms and the attention softmax stay
float32; features are float32.

The position embeddings are sized at init from the input's patch grid (H/p x W/p); a later input with
another grid is a clear error rather than a silent interpolation.

Volumes: `input_dims` names the input ranks a ViT embeds, 2 (images [B, H, W, C]: a p x p patch conv
`patch_embed`, position embeddings `pos_embed`) and / or 3 (volumes [B, D, H, W, C]: a p x p x p patch conv
`patch_embed_3d`, position embeddings `pos_embed_3d`). The class token, the blocks and the final norm are
shared, so a ViT with input_dims (2, 3) trains one transformer on both images and volumes; the rank of each
input picks its patch and position embeddings. Every embedding of `input_dims` is created at init, whatever
the init input's rank: the other rank's from a stand-in of the same channels and sides, so a ViT initialised on
D x H x W volumes has learned 2D position embeddings for H x W images, and one initialised on H x W images
3D ones for H x H x W volumes (sin-cos ones have no size to fix). The default (2,) is the image-only ViT.
"""
from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

# name -> (width, depth, heads), DeiT sizes (Touvron et al. 2021).
VIT_SIZES = {"vit_tiny": (192, 12, 3), "vit_small": (384, 12, 6), "vit_base": (768, 12, 12)}
# Encoder names: the sizes for images, and "<size>_3d" for volumes (input_dims (3,)).
VIT_ENCODERS_3D = tuple(f"{name}_3d" for name in VIT_SIZES)
VIT_ENCODERS = (*VIT_SIZES, *VIT_ENCODERS_3D)

_dense_init = nn.initializers.xavier_uniform()  # As MAE and big_vision initialise transformer Dense layers.


def _layer_norm(name=None):
  # float32 compute whatever the input dtype; eps as in timm / MAE.
  return nn.LayerNorm(epsilon=1e-6, dtype=jnp.float32, param_dtype=jnp.float32, name=name)


def grid_size(image_shape, patch_size: int, spatial_dims: int = 2) -> tuple[int, ...]:
  """The patch grid (H/p, W/p) of an image shape [..., H, W, C], or with spatial_dims=3 (D/p, H/p, W/p) of
  a volume shape [..., D, H, W, C]; a ValueError if p does not divide every side."""
  if spatial_dims == 3:
    sides = tuple(image_shape[-4:-1])
    if any(s % patch_size for s in sides):
      raise ValueError(f"ViT input size {'x'.join(map(str, sides))} voxels is not divisible by the patch size "
                       f"{patch_size} (config.model.patch_size); use a divisor of every side, e.g. 4 or 7 for 28^3")
    return tuple(s // patch_size for s in sides)
  if spatial_dims != 2:
    raise ValueError(f"grid_size: spatial_dims must be 2 (images) or 3 (volumes), got {spatial_dims!r}")
  h, w = image_shape[-3], image_shape[-2]
  if h % patch_size or w % patch_size:
    raise ValueError(f"ViT input size {h}x{w} px is not divisible by the patch size {patch_size} "
                     "(config.model.patch_size); use 4 for 28-32 px, 8 for 64 px, 16 for 224 px")
  return h // patch_size, w // patch_size


class MlpBlock(nn.Module):
  """Dense(mlp_dim) -> GELU (exact, as timm) -> Dense(out)."""
  mlp_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    out = x.shape[-1]
    x = nn.Dense(self.mlp_dim, dtype=self.dtype, kernel_init=_dense_init, bias_init=nn.initializers.normal(1e-6),
                 name="fc1")(x)
    x = nn.gelu(x, approximate=False)
    return nn.Dense(out, dtype=self.dtype, kernel_init=_dense_init, bias_init=nn.initializers.normal(1e-6),
                    name="fc2")(x)


class EncoderBlock(nn.Module):
  """Pre-norm transformer block: x + MHSA(LN(x)), then x + MLP(LN(x))."""
  num_heads: int
  mlp_ratio: float = 4.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, return_attention: bool = False):
    """The block's output; with `return_attention`, also its softmax attention weights [B, heads, T, T]."""
    width = x.shape[-1]
    recorder = _AttentionRecorder() if return_attention else None
    # The recorder only observes the weights flax computes (its `module=` hook); same parameters and ops.
    attention_fn = (functools.partial(nn.dot_product_attention, module=recorder) if return_attention
                    else nn.dot_product_attention)
    y = _layer_norm("norm1")(x)
    y = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, dtype=self.dtype, kernel_init=_dense_init,
                                        force_fp32_for_softmax=True, deterministic=True,
                                        attention_fn=attention_fn, name="attn")(y, y)
    x = x + y.astype(x.dtype)
    y = _layer_norm("norm2")(x)
    y = MlpBlock(int(width * self.mlp_ratio), dtype=self.dtype, name="mlp")(y)
    out = x + y.astype(x.dtype)
    if return_attention:
      return out, recorder.weights[-1]
    return out


class _AttentionRecorder:
  """Stands in for the `module` argument of `nn.dot_product_attention`, whose weights function calls
  `module.sow("intermediates", "attention_weights", w)`: keeps w (no mutable collection needed)."""

  def __init__(self):
    self.weights = []

  def sow(self, collection, name, value):
    del collection, name
    self.weights.append(value)


def sincos_2d(grid: int, width: int) -> np.ndarray:
  """MAE's fixed 2-D sin-cos position embeddings [1 + grid*grid, width] of a square patch grid, the class token's
  row zeros (He et al. 2022, `get_2d_sincos_pos_embed`): half the channels encode one grid coordinate, half the
  other, each as sin / cos of position x 10000^(-2i / (width / 2))."""
  if width % 4:
    raise ValueError(f"sin-cos position embeddings need a width divisible by 4, got {width}")
  ww, hh = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64))  # As MAE: w first.
  emb = np.concatenate([_sincos_1d(width // 2, ww), _sincos_1d(width // 2, hh)], axis=1)
  return np.concatenate([np.zeros((1, width)), emb], axis=0).astype(np.float32)


def sincos_3d(grid: tuple[int, int, int], width: int) -> np.ndarray:
  """Fixed 3-D sin-cos position embeddings [1 + d*h*w, width] of a (d, h, w) patch grid (row-major, as the
  ViT's volume tokens), the class token's row zeros: `sincos_2d`'s scheme with a third axis. Consecutive
  thirds of the channels encode the depth, row and column coordinates, each as sin / cos of
  position x 10000^(-2i / (width / 3))."""
  if width % 6:
    raise ValueError(f"3-D sin-cos position embeddings need a width divisible by 6, got {width}")
  coords = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in grid), indexing="ij")
  emb = np.concatenate([_sincos_1d(width // 3, pos) for pos in coords], axis=1)
  return np.concatenate([np.zeros((1, width)), emb], axis=0).astype(np.float32)


def _sincos_1d(dim, pos):
  """[N, dim]: sin then cos of every position in `pos` (flattened) times 10000^(-2i / dim), i < dim / 2."""
  omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
  out = np.outer(pos.reshape(-1), omega)
  return np.concatenate([np.sin(out), np.cos(out)], axis=1)


class PositionEmbedding(nn.Module):
  """Position embeddings [1, num_tokens, width] (class token first): learned and sized at init, or with
  `fixed`, MAE's 2-D sin-cos ones (`sincos_2d`, no parameters; a square patch grid), or for volumes
  (`grid` a (d, h, w) patch grid) the 3-D ones of `sincos_3d`.

  Called with num_tokens=None it returns the existing embeddings (fixed: the class token's zero row)."""
  width: int
  fixed: bool = False

  @nn.compact
  def __call__(self, num_tokens: int | None, grid: tuple[int, int, int] | None = None):
    volume = grid is not None
    if volume and num_tokens is not None and num_tokens != 1 + math.prod(grid):
      raise ValueError(f"{num_tokens} tokens do not fit the patch grid {tuple(grid)} plus the class token")
    if self.fixed:
      if num_tokens is None:
        return jnp.zeros((1, 1, self.width), jnp.float32)
      if volume:
        return jnp.asarray(sincos_3d(tuple(grid), self.width))[None]
      grid = math.isqrt(num_tokens - 1)
      if grid * grid != num_tokens - 1:
        raise ValueError(f"sin-cos position embeddings need a square patch grid, got {num_tokens - 1} patches")
      return jnp.asarray(sincos_2d(grid, self.width))[None]
    if num_tokens is None:
      if not self.has_variable("params", "embedding"):
        raise ValueError("ViT position embeddings do not exist yet: call patch_tokens first")
      return self.get_variable("params", "embedding")
    if self.has_variable("params", "embedding"):
      have = self.get_variable("params", "embedding").shape[1]
      if have != num_tokens:
        raise ValueError(f"ViT position embeddings were initialised for {have - 1} patches, the input has "
                         f"{num_tokens - 1}: encode {'volumes' if volume else 'images'} of the size the model "
                         "was initialised with")
    return self.param("embedding", nn.initializers.normal(0.02), (1, num_tokens, self.width), jnp.float32)


class ViT(nn.Module):
  """Vision Transformer backbone returning the final-normed class token [B, width].

  Attributes:
    width, depth, num_heads, mlp_ratio: the transformer's size (see VIT_SIZES).
    patch_size: side of the square (cubic for volumes) patches (config.model.patch_size).
    dtype: compute dtype (e.g. bfloat16); parameters, LayerNorms and softmax stay float32.
    fixed_positions: MAE's sin-cos position embeddings (`sincos_2d`, `sincos_3d`) instead of learned ones.
    input_dims: the input ranks embedded: 2 (images [B, H, W, C]) and / or 3 (volumes [B, D, H, W, C]),
      each with its own patch and position embeddings and one shared transformer (module docstring).

  Besides `__call__`, MAE uses the two halves separately: `patch_tokens` (patch embedding + position
  embeddings, [B, L, D], row-major grid order) and `encode_tokens` (prepend the class token, blocks,
  final norm, [B, 1 + n, D]) on any subset of the patch tokens.
  """
  width: int = 192
  depth: int = 12
  num_heads: int = 3
  patch_size: int = 16
  mlp_ratio: float = 4.0
  dtype: Any = jnp.float32
  fixed_positions: bool = False  # MAE's sin-cos position embeddings instead of learned ones.
  input_dims: tuple[int, ...] = (2,)

  @property
  def num_features(self) -> int:
    return self.width

  def setup(self):
    dims = tuple(self.input_dims)
    if not dims or len(set(dims)) != len(dims) or not set(dims) <= {2, 3}:
      raise ValueError(f"ViT input_dims={self.input_dims!r} must name 2 (images) and / or 3 (volumes) once each, "
                       "e.g. (2,), (3,) or (2, 3) (config.model.vit_input_dims)")
    p = self.patch_size
    if 2 in dims:
      self.patch_embed = nn.Conv(self.width, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                                 name="patch_embed")
    self.cls_token = self.param("cls_token", nn.initializers.normal(1e-6), (1, 1, self.width), jnp.float32)
    if 2 in dims:
      self.pos_embed = PositionEmbedding(self.width, fixed=self.fixed_positions, name="pos_embed")
    if 3 in dims:
      self.patch_embed_3d = nn.Conv(self.width, (p, p, p), strides=(p, p, p), padding="VALID", dtype=self.dtype,
                                    name="patch_embed_3d")
      self.pos_embed_3d = PositionEmbedding(self.width, fixed=self.fixed_positions, name="pos_embed_3d")
    self.blocks = [EncoderBlock(self.num_heads, self.mlp_ratio, dtype=self.dtype, name=f"block{i + 1}")
                   for i in range(self.depth)]
    self.norm = _layer_norm("norm")

  def _check_rank(self, x) -> int:
    """2 for images [B, H, W, C], 3 for volumes [B, D, H, W, C]; a ValueError for a rank not in input_dims."""
    dims = x.ndim - 2
    if dims not in self.input_dims:
      names = {2: "images [B, H, W, C]", 3: "volumes [B, D, H, W, C]"}
      raise ValueError(f"this ViT embeds {' and '.join(names[d] for d in sorted(self.input_dims) if d in names)} "
                       f"(input_dims {tuple(self.input_dims)}), got an input of shape {tuple(x.shape)}; set "
                       "config.model.encoder (vit_*_3d for volumes) or config.model.vit_input_dims")
    return dims

  def patch_tokens(self, x):
    """Patch embeddings plus their position embeddings, [B, L, D] (images: L = H/p * W/p; volumes:
    L = D/p * H/p * W/p; row-major)."""
    dims = self._check_rank(x)
    tokens = self._embed_2d(x) if dims == 2 else self._embed_3d(x)
    if self.is_initializing():  # Create the other rank's embeddings too (module docstring).
      c = x.shape[-1]
      if dims == 3 and 2 in self.input_dims:
        self._embed_2d(jnp.zeros((1, *x.shape[-3:-1], c), x.dtype))
      elif dims == 2 and 3 in self.input_dims:
        self._embed_3d(jnp.zeros((1, x.shape[-3], *x.shape[-3:-1], c), x.dtype))
    return tokens

  def _embed_2d(self, x):
    gh, gw = grid_size(x.shape, self.patch_size)
    x = self.patch_embed(x.astype(self.dtype))
    x = x.reshape(x.shape[0], gh * gw, self.width)
    pos = self.pos_embed(gh * gw + 1)
    return (x + pos[:, 1:].astype(self.dtype)).astype(self.dtype)

  def _embed_3d(self, x):
    grid = grid_size(x.shape, self.patch_size, spatial_dims=3)
    x = self.patch_embed_3d(x.astype(self.dtype))
    x = x.reshape(x.shape[0], math.prod(grid), self.width)
    pos = self.pos_embed_3d(math.prod(grid) + 1, grid)
    return (x + pos[:, 1:].astype(self.dtype)).astype(self.dtype)

  def encode_tokens(self, tokens, *, spatial_dims: int | None = None, return_attention: bool = False):
    """Prepends the class token (with its position embedding), runs the blocks and the final norm.

    `spatial_dims` (2 or 3) is the rank of the input the tokens came from, which picks the class token's
    position embedding; it may be left out when input_dims has one rank.
    With `return_attention`, returns (tokens, [per-block softmax attention weights [B, heads, T, T]])."""
    if spatial_dims is None:
      if len(self.input_dims) != 1:
        raise ValueError(f"encode_tokens of a ViT with input_dims {tuple(self.input_dims)} needs spatial_dims "
                         "(2 or 3, the rank of the input the tokens came from)")
      spatial_dims = self.input_dims[0]
    if spatial_dims not in self.input_dims:
      raise ValueError(f"encode_tokens: spatial_dims={spatial_dims!r} is not in input_dims {tuple(self.input_dims)}")
    b = tokens.shape[0]
    # Created by `patch_tokens`, which always runs first.
    pos = (self.pos_embed if spatial_dims == 2 else self.pos_embed_3d)(None)
    cls = jnp.broadcast_to((self.cls_token + pos[:, :1]).astype(self.dtype), (b, 1, self.width))
    x = jnp.concatenate([cls, tokens.astype(self.dtype)], axis=1)
    attentions = []
    for block in self.blocks:
      if return_attention:
        x, a = block(x, return_attention=True)
        attentions.append(a)
      else:
        x = block(x)
    return (self.norm(x), attentions) if return_attention else self.norm(x)

  def __call__(self, x, *, train: bool, return_attention: bool = False):
    """Class-token features [B, width] (float32) of images [B, H, W, C] or volumes [B, D, H, W, C] (as
    input_dims allows). `train` is accepted for the encoder interface; a ViT here has no dropout or
    BatchNorm, so both modes compute the same function.

    With `return_attention`, returns (features, attentions): one [B, heads, T, T] array of softmax
    attention weights per block (T = 1 + patches, the class token first; float32, rows sum to 1), as
    used by attention rollout (medssl_jax.evals.attention). Parameters and features are unchanged."""
    del train
    dims = x.ndim - 2
    if return_attention:
      tokens, attentions = self.encode_tokens(self.patch_tokens(x), spatial_dims=dims, return_attention=True)
      return tokens[:, 0].astype(jnp.float32), attentions
    return self.encode_tokens(self.patch_tokens(x), spatial_dims=dims)[:, 0].astype(jnp.float32)


def vision_transformer(name: str, *, patch_size: int, dtype: Any = jnp.float32, input_dims=None, **kwargs) -> ViT:
  """Builds a ViT from a name like "vit_tiny", "vit_small" or "vit_base" (images), or the same with "_3d"
  (volumes). `input_dims` (e.g. (2, 3) for both) replaces the rank the name implies."""
  if name not in VIT_ENCODERS:
    raise ValueError(f"Unknown encoder {name!r}; valid ViT choices: {list(VIT_ENCODERS)}")
  volumes = name.endswith("_3d")
  width, depth, heads = VIT_SIZES[name[:-3] if volumes else name]
  dims = tuple(input_dims) if input_dims is not None else ((3,) if volumes else (2,))
  return ViT(width=width, depth=depth, num_heads=heads, patch_size=patch_size, dtype=dtype, input_dims=dims,
             **kwargs)
