"""ViT encoders: exact timm parameter counts, output shapes, mixed precision, clear size errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medssl_jax import models
from medssl_jax.models import vit as vit_lib
from medssl_jax.train.state import num_params
from medssl_jax import experiment


def _init_shapes(model, shape):
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=False))


@pytest.mark.parametrize("name,expected", [("vit_tiny", 5_524_416), ("vit_small", 21_665_664),
                                           ("vit_base", 85_798_656)])
def test_parameter_counts_match_timm(name, expected):
  """timm vit_*_patch16_224(num_classes=0): patch embedding, class token, 197 position embeddings,
  12 blocks, final norm."""
  model = vit_lib.vision_transformer(name, patch_size=16)
  assert num_params(_init_shapes(model, (1, 224, 224, 3))["params"]) == expected
  assert model.num_features == vit_lib.VIT_SIZES[name][0]


@pytest.mark.parametrize("size,patch", [(28, 4), (32, 4), (64, 8)])
def test_output_shapes(size, patch):
  model = vit_lib.vision_transformer("vit_tiny", patch_size=patch)
  variables = _init_shapes(model, (2, size, size, 3))
  grid = (size // patch) ** 2
  assert variables["params"]["pos_embed"]["embedding"].shape == (1, grid + 1, 192)
  out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((3, size, size, 3)), train=True), variables)
  assert out.shape == (3, 192) and out.dtype == jnp.float32


def random_variables(init_fn, seed=0):
  """Variables shaped like `init_fn()`'s, drawn with numpy (compiling flax's initialisers takes seconds
  per layer on a loaded CPU; these tests only need generic weights)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(rng.normal(scale=0.2, size=s.shape), s.dtype), jax.eval_shape(init_fn))


def _small(dtype=jnp.float32, patch=4):
  return vit_lib.ViT(width=32, depth=2, num_heads=2, patch_size=patch, dtype=dtype)


def _equations(jaxpr):
  """Every equation of a jaxpr, nested ones (pjit, custom_jvp) included."""
  for e in jaxpr.eqns:
    yield e
    for p in e.params.values():
      for sub in p if isinstance(p, (list, tuple)) else [p]:
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          yield from _equations(inner)


def test_bf16_compute_keeps_float32_params_norms_and_softmax():
  x = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
  f32, bf16 = _small(), _small(jnp.bfloat16)
  variables = random_variables(lambda: f32.init(jax.random.key(0), x, train=False))
  shapes = jax.eval_shape(lambda: bf16.init(jax.random.key(0), x, train=False))
  assert {a.dtype for a in jax.tree.leaves(shapes)} == {jnp.dtype("float32")}
  out32 = jax.jit(lambda v: f32.apply(v, x, train=False))(variables)
  out16 = jax.jit(lambda v: bf16.apply(v, x, train=False))(variables)
  assert out16.dtype == jnp.float32
  np.testing.assert_allclose(out16, out32, atol=0.1)
  assert not np.allclose(out16, out32, atol=1e-6)  # bf16 really is used.
  jaxpr = jax.make_jaxpr(lambda v: bf16.apply(v, x, train=False))(variables)
  ops, dots = {}, []
  for e in _equations(jaxpr.jaxpr):
    dtypes = {str(v.aval.dtype) for v in e.invars if hasattr(v, "aval")}
    ops.setdefault(e.primitive.name, set()).update(dtypes)
    if e.primitive.name == "dot_general":
      dots.append(dtypes)
  # Per block: q, k, v, q.k, out, fc1, fc2 in bf16; flax multiplies the float32 softmax weights by the
  # bf16 values in mixed precision (force_fp32_for_softmax), the only matmul with a float32 operand.
  assert dots.count({"bfloat16"}) == 7 * 2 and dots.count({"bfloat16", "float32"}) == 1 * 2, dots
  assert ops["conv_general_dilated"] == {"bfloat16"}              # Patch embedding.
  assert ops["exp"] == {"float32"}                                # Softmax.
  assert ops["rsqrt"] == {"float32"}                              # LayerNorm.


def test_class_token_features_and_train_flag():
  model = _small()
  x = jax.random.normal(jax.random.key(1), (3, 16, 16, 3))
  variables = random_variables(lambda: model.init(jax.random.key(0), x, train=False))
  feats, tokens = jax.jit(lambda v: (model.apply(v, x, train=True), model.apply(
      v, x, method=lambda m, x: m.encode_tokens(m.patch_tokens(x)))))(variables)
  assert tokens.shape == (3, 1 + 16, 32)
  np.testing.assert_allclose(feats, tokens[:, 0], rtol=1e-6)
  np.testing.assert_allclose(feats, jax.jit(lambda v: model.apply(v, x, train=False))(variables), rtol=1e-6)
  assert np.all(np.isfinite(feats))


def test_bad_input_sizes_are_clear_errors():
  model = vit_lib.vision_transformer("vit_tiny", patch_size=4)
  with pytest.raises(ValueError, match="30x30 px is not divisible by the patch size 4"):
    _init_shapes(model, (1, 30, 30, 3))
  variables = _init_shapes(model, (1, 32, 32, 3))
  with pytest.raises(ValueError, match="initialised for 64 patches, the input has 256"):
    jax.eval_shape(lambda v: model.apply(v, jnp.zeros((1, 64, 64, 3)), train=False), variables)
  with pytest.raises(ValueError, match="valid ViT choices"):
    vit_lib.vision_transformer("vit_huge", patch_size=16)


def test_build_backbone_passes_patch_size_and_dtype_and_rejects_width_multiplier():
  c = experiment.default_config()
  c.model.encoder = "vit_small"
  c.model.patch_size = 8
  c.model.compute_dtype = "bfloat16"
  b = models.build_backbone(c)
  assert isinstance(b, vit_lib.ViT) and (b.width, b.depth, b.num_heads, b.patch_size) == (384, 12, 6, 8)
  assert b.dtype == jnp.bfloat16 and b.num_features == 384
  c.model.width_multiplier = 0.5
  with pytest.raises(ValueError, match="width_multiplier=0.5 applies to ResNets only"):
    models.build_backbone(c)
  assert {"vit_tiny", "vit_small", "vit_base"} <= set(models.ENCODERS)
