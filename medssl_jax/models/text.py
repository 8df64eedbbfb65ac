"""A small text transformer for report encoding (image-text pretraining: CLIP / ConVIRT).

Token embeddings plus learned position embeddings, pre-LN transformer blocks (as models/vit.py's
EncoderBlock, with a padding attention mask), a final LayerNorm, and the [CLS] token as the pooled
feature: position 0, which medssl_jax.text.tokenizer.Tokenizer.encode always fills with [CLS].
Padding keys are masked out of every attention, so the pooled output depends only on the unpadded
tokens (the tokens at masked positions can be anything). An optional bias-free projection maps the
pooled feature to `out_dim` (CLIP's text_projection).
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from medssl_jax.models.vit import MlpBlock

_dense_init = nn.initializers.xavier_uniform()


def _layer_norm(name=None):
  return nn.LayerNorm(epsilon=1e-6, dtype=jnp.float32, param_dtype=jnp.float32, name=name)


class TextBlock(nn.Module):
  """Pre-norm block: x + MHSA(LN(x)) with padding keys masked, then x + MLP(LN(x))."""
  num_heads: int
  mlp_ratio: float = 4.0

  @nn.compact
  def __call__(self, x, attention_mask):
    """x [B, L, D]; attention_mask bool broadcastable to [B, heads, L, L] (True = may attend)."""
    width = x.shape[-1]
    y = _layer_norm("norm1")(x)
    y = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, kernel_init=_dense_init,
                                        force_fp32_for_softmax=True, deterministic=True,
                                        name="attn")(y, y, mask=attention_mask)
    x = x + y
    y = _layer_norm("norm2")(x)
    return x + MlpBlock(int(width * self.mlp_ratio), name="mlp")(y)


class TextTransformer(nn.Module):
  """Transformer text encoder returning the final-normed [CLS] (position 0) feature [B, D], float32.

  Attributes:
    vocab_size: number of token ids (the tokenizer's vocab_size; [PAD] = 0).
    width, depth, heads: the transformer's size (MLP ratio 4).
    max_length: the number of learned position embeddings; longer inputs are an error.
    out_dim: if set, a bias-free Dense projection of the pooled feature to out_dim (D = out_dim),
      else D = width.
  """
  vocab_size: int
  width: int = 128
  depth: int = 2
  heads: int = 4
  max_length: int = 64
  out_dim: int | None = None

  @property
  def num_features(self) -> int:
    return self.width if self.out_dim is None else self.out_dim

  @nn.compact
  def __call__(self, ids, mask, *, train: bool):
    """ids [B, L] int token ids, mask [B, L] bool (True on real tokens, [CLS] at position 0).

    `train` is accepted for the encoder interface; there is no dropout, so both modes agree."""
    del train
    if ids.ndim != 2 or mask.shape != ids.shape:
      raise ValueError(f"ids and mask must both be [B, L], got shapes {ids.shape} and {mask.shape}")
    length = ids.shape[1]
    if length > self.max_length:
      raise ValueError(f"text length {length} exceeds TextTransformer.max_length={self.max_length} "
                       "(encode with a smaller max_length or build the model with a larger one)")
    x = nn.Embed(self.vocab_size, self.width, embedding_init=nn.initializers.normal(0.02),
                 name="token_embed")(ids.astype(jnp.int32))
    pos = self.param("pos_embed", nn.initializers.normal(0.01), (1, self.max_length, self.width), jnp.float32)
    x = x + pos[:, :length]
    # Keys only: padded positions never feed a real token (padded queries compute garbage nobody reads).
    attention_mask = mask.astype(jnp.bool_)[:, None, None, :]
    for i in range(self.depth):
      x = TextBlock(self.heads, name=f"block{i + 1}")(x, attention_mask)
    x = _layer_norm("norm")(x)[:, 0]
    if self.out_dim is not None:
      x = nn.Dense(self.out_dim, use_bias=False, kernel_init=_dense_init, name="projection")(x)
    return x.astype(jnp.float32)
