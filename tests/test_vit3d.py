"""ViTs on volumes: 3D patch and position embeddings, one transformer switching between images and volumes
(input_dims), parameter counts, config wiring (vit_*_3d, model.vit_input_dims) and clear errors.

Tiny ViTs (width 32-48, depth 1) on 8-16 voxel volumes; full-size ones are only traced for their counts."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medssl_jax import experiment
from medssl_jax import models
from medssl_jax.models import vit as vit_lib
from medssl_jax.train.state import num_params


def _tiny(input_dims=(2, 3), **kw):
  return vit_lib.ViT(**{"width": 32, "depth": 1, "num_heads": 2, "patch_size": 4, "input_dims": input_dims, **kw})


def _shapes(model, shape):
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=False))


def _random(shapes, seed=0):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(rng.normal(scale=0.2, size=s.shape), s.dtype), shapes)


def _tree_shapes(tree):
  return jax.tree.map(lambda x: x.shape, tree)


def _without(params, *names):
  return {"params": {k: v for k, v in params["params"].items() if k not in names}}


def _patches(x, p):
  """[B, D, H, W, C] -> [B, L, p^3 C] by loops: row-major patch grid, each patch as (slice, row, column, channel)."""
  b, d, h, w, c = x.shape
  out = []
  for i in range(d // p):
    for j in range(h // p):
      for k in range(w // p):
        out.append(x[:, i * p:(i + 1) * p, j * p:(j + 1) * p, k * p:(k + 1) * p, :].reshape(b, -1))
  return np.stack(out, axis=1)


def test_switchable_vit_embeds_images_and_volumes_with_one_transformer():
  model = _tiny()
  image, volume = (jax.random.normal(jax.random.key(1), s) for s in ((2, 16, 16, 1), (3, 16, 16, 16, 1)))
  shapes = _shapes(model, image.shape)
  params = shapes["params"]
  assert set(params) == {"patch_embed", "patch_embed_3d", "cls_token", "pos_embed", "pos_embed_3d", "block1", "norm"}
  assert params["patch_embed"]["kernel"].shape == (4, 4, 1, 32)
  assert params["patch_embed_3d"]["kernel"].shape == (4, 4, 4, 1, 32)
  assert params["pos_embed"]["embedding"].shape == (1, 1 + 16, 32)
  assert params["pos_embed_3d"]["embedding"].shape == (1, 1 + 64, 32)  # Stand-in volume 16 x 16 x 16.
  # Initialised on a volume: the same tree (the image stand-in is 16 x 16).
  assert _tree_shapes(_shapes(model, volume.shape)) == _tree_shapes(shapes)
  variables = _random(shapes)
  run = jax.jit(lambda v, x: model.apply(v, x, train=False))
  f2, f3 = run(variables, image), run(variables, volume)
  assert f2.shape == (2, 32) and f3.shape == (3, 32) and f3.dtype == jnp.float32
  # Each rank uses its own embeddings and the shared class token, blocks and norm: the same features as a
  # single-rank ViT holding just those parameters.
  only2 = jax.jit(lambda v, x: _tiny((2,)).apply(v, x, train=False))(_without(variables, "patch_embed_3d",
                                                                               "pos_embed_3d"), image)
  only3 = jax.jit(lambda v, x: _tiny((3,)).apply(v, x, train=False))(_without(variables, "patch_embed",
                                                                               "pos_embed"), volume)
  np.testing.assert_allclose(f2, only2, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(f3, only3, rtol=1e-5, atol=1e-6)
  # The blocks are shared: changing them changes both ranks' features.
  moved = jax.tree.map(lambda x: x, variables)
  moved["params"]["block1"] = jax.tree.map(lambda x: x + 0.1, moved["params"]["block1"])
  assert not np.allclose(run(moved, image), f2, atol=1e-4)
  assert not np.allclose(run(moved, volume), f3, atol=1e-4)


def test_3d_patch_tokens_are_patch_products_plus_positions():
  model = _tiny((3,))
  x = np.random.default_rng(0).normal(size=(2, 8, 12, 16, 2)).astype(np.float32)  # Grid 2 x 3 x 4.
  variables = _random(_shapes(model, x.shape))
  p = variables["params"]
  tokens = jax.jit(lambda v: model.apply(v, x, method="patch_tokens"))(variables)
  kernel = np.asarray(p["patch_embed_3d"]["kernel"]).reshape(-1, 32)  # (slice, row, column, channel) rows.
  want = _patches(x, 4) @ kernel + np.asarray(p["patch_embed_3d"]["bias"]) + np.asarray(p["pos_embed_3d"]["embedding"])[:, 1:]
  assert tokens.shape == (2, 24, 32)
  np.testing.assert_allclose(tokens, want, rtol=1e-4, atol=1e-4)


def reference_sincos_3d(grid, width):
  """Element by element: row 0 zeros; for patch (d, h, w), channel thirds encode d, h, w, each third sin then
  cos of pos / 10000^(i / (width / 6))."""
  sixth = width // 6
  out = np.zeros((1 + int(np.prod(grid)), width))
  row = 1
  for d in range(grid[0]):
    for h in range(grid[1]):
      for w in range(grid[2]):
        for third, pos in enumerate((d, h, w)):
          for i in range(sixth):
            angle = pos / 10000 ** (i / sixth)
            out[row, third * 2 * sixth + i] = np.sin(angle)
            out[row, third * 2 * sixth + sixth + i] = np.cos(angle)
        row += 1
  return out


def test_sincos_3d_position_embeddings():
  np.testing.assert_allclose(vit_lib.sincos_3d((2, 3, 2), 12), reference_sincos_3d((2, 3, 2), 12), atol=1e-6)
  model = _tiny((3,), width=48, fixed_positions=True)
  x = jnp.zeros((1, 8, 4, 12, 1))
  variables = _shapes(model, x.shape)
  assert "pos_embed_3d" not in variables["params"]  # Fixed: no parameters.
  variables = _random(variables)
  tokens = jax.jit(lambda v: model.apply(v, x, method="patch_tokens"))(variables)
  bias = variables["params"]["patch_embed_3d"]["bias"]  # A zero volume embeds to the bias.
  np.testing.assert_allclose(tokens[0] - bias, vit_lib.sincos_3d((2, 1, 3), 48)[1:], atol=1e-5)
  with pytest.raises(ValueError, match="width divisible by 6, got 32"):
    _shapes(_tiny((3,), fixed_positions=True), (1, 8, 8, 8, 1))


def test_parameter_counts():
  """Only the patch and position embeddings differ between ranks; the 2D-only ViT keeps timm's count."""
  width, p = 192, 16
  vit2 = vit_lib.vision_transformer("vit_tiny", patch_size=p)
  vit3 = vit_lib.vision_transformer("vit_tiny_3d", patch_size=p)
  both = vit_lib.vision_transformer("vit_tiny", patch_size=p, input_dims=(2, 3))
  assert (vit2.input_dims, vit3.input_dims, both.input_dims) == ((2,), (3,), (2, 3))
  n2 = num_params(_shapes(vit2, (1, 224, 224, 3))["params"])
  n3 = num_params(_shapes(vit3, (1, 32, 64, 64, 1))["params"])
  assert n2 == 5_524_416  # timm vit_tiny_patch16_224(num_classes=0).
  emb2 = p * p * 3 * width + width + 197 * width
  emb3 = p * p * p * 1 * width + width + (1 + 2 * 4 * 4) * width
  assert n3 == n2 - emb2 + emb3
  # Switchable, initialised on volumes: 3 channels, 2D stand-in 64 x 64 (16 patches).
  n23 = num_params(_shapes(both, (1, 32, 64, 64, 3))["params"])
  assert n23 == n2 + (p ** 3 * 3 * width + width + 33 * width) - 197 * width + 17 * width


def test_bad_inputs_are_clear_errors():
  with pytest.raises(ValueError, match=r"30x28x28 voxels is not divisible by the patch size 4 \(config.model.patch_size\)"):
    _shapes(_tiny((3,)), (1, 30, 28, 28, 1))
  with pytest.raises(ValueError, match=r"embeds images \[B, H, W, C\] \(input_dims \(2,\)\), got an input of shape "
                                       r"\(1, 8, 8, 8, 1\).*vit_\*_3d"):
    _shapes(_tiny((2,)), (1, 8, 8, 8, 1))
  with pytest.raises(ValueError, match=r"embeds volumes \[B, D, H, W, C\] \(input_dims \(3,\)\)"):
    _shapes(_tiny((3,)), (1, 8, 8, 1))
  with pytest.raises(ValueError, match=r"input_dims=\(4,\) must name 2 \(images\) and / or 3"):
    _shapes(_tiny((4,)), (1, 8, 8, 1))
  model = _tiny()
  variables = _shapes(model, (1, 16, 16, 1))
  with pytest.raises(ValueError, match=r"initialised for 64 patches, the input has 8: encode volumes"):
    jax.eval_shape(lambda v: model.apply(v, jnp.zeros((1, 8, 8, 8, 1)), train=False), variables)
  with pytest.raises(ValueError, match=r"input_dims \(2, 3\) needs spatial_dims"):
    jax.eval_shape(lambda v: model.apply(v, jnp.zeros((1, 1, 32)), method="encode_tokens"), variables)


def test_config_chooses_3d_and_switchable_vits():
  c = experiment.default_config()
  c.model.encoder = "vit_small_3d"
  c.model.patch_size = 7
  assert models.takes_volumes(c) and {"vit_tiny_3d", "vit_small_3d", "vit_base_3d"} <= set(models.ENCODERS_3D)
  b = models.build_backbone(c)
  assert isinstance(b, vit_lib.ViT) and (b.width, b.patch_size, b.input_dims) == (384, 7, (3,))
  c.model.vit_input_dims = (3, 2)
  assert models.build_backbone(c).input_dims == (2, 3)
  c.model.encoder = "vit_small"
  assert not models.takes_volumes(c) and models.build_backbone(c).input_dims == (2, 3)
  c.model.vit_input_dims = (3,)
  with pytest.raises(ValueError, match=r"config.model.vit_input_dims=\(3,\) must be .* including 2: "
                                       r"config.model.encoder='vit_small' takes images"):
    models.build_backbone(c)
  c.model.encoder = "resnet18_3d"
  with pytest.raises(ValueError, match=r"vit_input_dims=\(3,\) applies to ViT encoders only"):
    models.build_backbone(c)
