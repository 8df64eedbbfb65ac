"""MAE: patchify, random masking, the loss against explicit loops, and the model (masking, decoder
unshuffle, embed without masking, mixed precision); on volumes with a 3D ViT (3D patches, the loss against
numpy, training)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from medssl_jax import config as config_lib
from medssl_jax import objectives
from medssl_jax.models import vit as vit_lib
from medssl_jax.objectives import mae
from medssl_jax import experiment


def reference_mae_loss(pred, target, mask):
  """sum_{b,l} m_bl * mean_k (pred - target)^2 / sum m, and the same over visible patches, by loops."""
  num = {1: 0.0, 0: 0.0}
  den = {1: 0.0, 0: 0.0}
  for b in range(pred.shape[0]):
    for l in range(pred.shape[1]):
      err = sum((float(pred[b, l, k]) - float(target[b, l, k])) ** 2 for k in range(pred.shape[2])) / pred.shape[2]
      m = int(mask[b, l])
      num[m] += err
      den[m] += 1
  return num[1] / max(den[1], 1), num[0] / max(den[0], 1)


def reference_norm_pix(patches, eps=1e-6):
  out = np.zeros_like(patches, dtype=np.float64)
  for b in range(patches.shape[0]):
    for l in range(patches.shape[1]):
      v = patches[b, l].astype(np.float64)
      mean = sum(v) / len(v)
      var = sum((x - mean) ** 2 for x in v) / (len(v) - 1)  # Unbiased, as torch's .var() in MAE's code.
      out[b, l] = (v - mean) / np.sqrt(var + eps)
  return out


def test_patchify_layout_and_round_trip():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 12, 8, 3)).astype(np.float32)
  p = 4
  patches = np.asarray(mae.patchify(jnp.asarray(x), p))
  assert patches.shape == (2, 3 * 2, p * p * 3)
  for b in range(2):
    for i in range(3):
      for j in range(2):
        expected = [x[b, i * p + r, j * p + c, ch] for r in range(p) for c in range(p) for ch in range(3)]
        np.testing.assert_array_equal(patches[b, i * 2 + j], expected)
  np.testing.assert_array_equal(mae.unpatchify(jnp.asarray(patches), p, (3, 2)), x)
  with pytest.raises(ValueError, match="not divisible by the patch size 5"):
    mae.patchify(jnp.asarray(x), 5)
  with pytest.raises(ValueError, match="do not fit a 2x2 grid"):
    mae.unpatchify(jnp.asarray(patches), p, (2, 2))


@pytest.mark.parametrize("num_patches,ratio", [(16, 0.75), (49, 0.75), (64, 0.6), (10, 0.0), (10, 0.45)])
def test_random_masking_keeps_int_l_times_one_minus_ratio(num_patches, ratio):
  """MAE's reference keeps int(L * (1 - r)) patches (truncated: 10 patches at r = 0.45 keep 5, not round's 6)."""
  batch = 8
  keep, restore, mask = jax.device_get(mae.random_masking(jax.random.key(3), batch, num_patches, ratio))
  n = int(num_patches * (1 - ratio))
  assert keep.shape == (batch, n) and restore.shape == (batch, num_patches)
  np.testing.assert_array_equal(mask.sum(axis=1), num_patches - n)  # Exactly n visible in every example.
  for b in range(batch):
    assert np.all(mask[b, keep[b]] == 0)  # The kept indices are the visible patches.
    assert len(set(keep[b].tolist())) == n
    assert sorted(restore[b].tolist()) == list(range(num_patches))
  if ratio > 0:
    assert len({tuple(m) for m in mask}) == batch  # Each example its own mask.
  with pytest.raises(ValueError, match="mask_ratio=1.0 must be in"):
    mae.random_masking(jax.random.key(0), 2, 4, 1.0)


@pytest.mark.parametrize("batch,num_patches,dim", [(2, 4, 3), (5, 9, 12)])
def test_loss_matches_reference(batch, num_patches, dim):
  rng = np.random.default_rng(batch)
  pred = rng.normal(size=(batch, num_patches, dim)).astype(np.float32)
  target = rng.normal(size=(batch, num_patches, dim)).astype(np.float32)
  mask = (rng.random((batch, num_patches)) < 0.7).astype(np.float32)
  mask[0, 0], mask[0, 1] = 1.0, 0.0
  loss, metrics = mae.mae_loss(pred=jnp.asarray(pred), target=jnp.asarray(target), mask=jnp.asarray(mask))
  ref_masked, ref_visible = reference_mae_loss(pred, target, mask)
  np.testing.assert_allclose(float(loss), ref_masked, rtol=1e-5)
  np.testing.assert_allclose(float(metrics["visible_loss"]), ref_visible, rtol=1e-5)
  np.testing.assert_allclose(float(metrics["mask_fraction"]), mask.mean(), rtol=1e-6)


def test_norm_pix_target_matches_reference():
  patches = np.random.default_rng(1).normal(size=(3, 4, 12)).astype(np.float32) * 3 + 1
  np.testing.assert_allclose(mae.normalize_patches(jnp.asarray(patches)), reference_norm_pix(patches), rtol=1e-4,
                             atol=1e-5)
  flat = np.full((2, 3, 12), 0.7, np.float32)  # Zero-variance patches: target 0, not NaN.
  np.testing.assert_allclose(mae.normalize_patches(jnp.asarray(flat)), 0.0, atol=1e-3)


def test_loss_edge_cases():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 4, 6)), jnp.float32)
  ones = jnp.ones((2, 4))
  loss, metrics = mae.mae_loss(pred=x, target=x, mask=ones)  # Perfect reconstruction; no visible patch.
  assert float(loss) == 0.0 and float(metrics["visible_loss"]) == 0.0
  loss, metrics = mae.mae_loss(pred=x, target=x + 1.0, mask=jnp.zeros((2, 4)))  # Nothing masked: 0, not NaN.
  assert float(loss) == 0.0 and float(metrics["visible_loss"]) == pytest.approx(1.0)
  g = jax.grad(lambda p: mae.mae_loss(pred=p, target=x[::-1], mask=ones)[0])(x)
  assert np.all(np.isfinite(np.asarray(g))) and np.abs(np.asarray(g)).sum() > 0
  with pytest.raises(ValueError, match="same shape"):
    mae.mae_loss(pred=x, target=x[:, :3], mask=ones)
  with pytest.raises(ValueError, match=r"mask of shape \[B, L\]"):
    mae.mae_loss(pred=x, target=x, mask=ones[:, :3])


def _tiny_mae(mask_ratio=0.75, norm_pix_loss=True, dtype=jnp.float32, depth=1):
  backbone = vit_lib.ViT(width=32, depth=2, num_heads=2, patch_size=4, dtype=dtype)
  decoder = mae.MAEDecoder(width=16, depth=depth, num_heads=2, out_dim=4 * 4 * 3, dtype=dtype)
  return mae.MAEModel(backbone=backbone, decoder=decoder, mask_ratio=mask_ratio, norm_pix_loss=norm_pix_loss)


def random_variables(init_fn, seed=0):
  """Variables shaped like `init_fn()`'s, drawn with numpy (compiling flax's initialisers takes seconds
  per layer on a loaded CPU; these tests only need generic weights)."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(init_fn)
  return jax.tree.map(lambda s: jnp.asarray(rng.normal(scale=0.2, size=s.shape), s.dtype), shapes)


@pytest.fixture(scope="module")
def tiny():
  model = _tiny_mae()
  x = jax.random.normal(jax.random.key(1), (3, 16, 16, 3))
  variables = random_variables(lambda: model.init({"params": jax.random.key(0)}, x, train=False))
  return model, variables, x


def test_model_outputs_and_masks(tiny):
  model, variables, x = tiny
  assert set(variables["params"]) == {"backbone", "decoder"}
  run = jax.jit(lambda v, k: model.apply(v, x, train=True, rngs={"mask": k}))
  out = run(variables, jax.random.key(5))
  assert out["features"].shape == (3, 32) and out["pred"].shape == (3, 16, 48)
  assert out["target"].shape == (3, 16, 48) and out["mask"].shape == (3, 16)
  np.testing.assert_array_equal(np.asarray(out["mask"]).sum(1), 12)  # 75% of 16 patches masked.
  np.testing.assert_allclose(out["target"], mae.normalize_patches(mae.patchify(x, 4)), rtol=1e-6)
  again = run(variables, jax.random.key(5))
  other = run(variables, jax.random.key(6))
  np.testing.assert_array_equal(out["mask"], again["mask"])
  assert not np.array_equal(out["mask"], other["mask"])
  with pytest.raises(ValueError, match="needs a 'mask' rng"):
    model.apply(variables, x, train=True)
  # Evaluation mode masks too (same shapes); without a 'mask' rng it uses a fixed key.
  ev = jax.jit(lambda v: model.apply(v, x, train=False))
  np.testing.assert_array_equal(ev(variables)["mask"], ev(variables)["mask"])
  raw = _tiny_mae(norm_pix_loss=False)
  out = jax.jit(lambda v: raw.apply(v, x, train=True, rngs={"mask": jax.random.key(5)}))(variables)
  np.testing.assert_allclose(out["target"], mae.patchify(x, 4))


def test_embed_is_the_encoder_without_masking(tiny):
  model, variables, x = tiny
  embed = jax.jit(lambda v: model.apply(v, x, method=model.embed))(variables)
  direct = model.backbone.apply({"params": variables["params"]["backbone"]}, x, train=False)
  np.testing.assert_allclose(embed, direct, rtol=1e-5, atol=1e-6)
  # With mask_ratio 0 every patch is encoded (in a shuffled order: self-attention is permutation-
  # equivariant once position embeddings are added, so the class token is unchanged).
  full = _tiny_mae(mask_ratio=0.0)
  out = jax.jit(lambda v: full.apply(v, x, train=True, rngs={"mask": jax.random.key(2)}))(variables)
  np.testing.assert_allclose(out["features"], embed, rtol=1e-4, atol=1e-5)
  assert float(out["mask"].sum()) == 0.0


def test_decoder_unshuffles_to_grid_order(tiny):
  """With every patch kept, predictions cannot depend on the random shuffle: the decoder must put each
  token back at its own grid position before adding its position embeddings."""
  _, variables, x = tiny
  full = _tiny_mae(mask_ratio=0.0)
  run = jax.jit(lambda v, k: full.apply(v, x, train=True, rngs={"mask": k})["pred"])
  a, b = run(variables, jax.random.key(2)), run(variables, jax.random.key(3))
  np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  assert not np.allclose(a[:, :1], a[:, 1:2])  # Positions differ, so the test can tell a permutation.


def reference_sincos(grid, width):
  """MAE's 2-D sin-cos table, element by element: row 0 (class token) zeros; for patch (h, w), channels
  [0, width/2) encode w and [width/2, width) encode h, each half sin then cos of pos / 10000^(2i / (width/2))."""
  quarter = width // 4
  out = np.zeros((1 + grid * grid, width))
  for h in range(grid):
    for w in range(grid):
      row = 1 + h * grid + w
      for half, pos in ((0, w), (1, h)):
        for i in range(quarter):
          angle = pos / 10000 ** (i / quarter)
          out[row, half * 2 * quarter + i] = np.sin(angle)
          out[row, half * 2 * quarter + quarter + i] = np.cos(angle)
  return out


def test_sincos_position_embeddings_match_mae():
  np.testing.assert_allclose(vit_lib.sincos_2d(3, 8), reference_sincos(3, 8), atol=1e-6)
  x = jnp.zeros((2, 16, 16, 3))
  fixed = vit_lib.ViT(width=16, depth=1, num_heads=2, patch_size=4, fixed_positions=True)
  variables = fixed.init(jax.random.key(0), x, train=False)
  assert "pos_embed" not in variables["params"]  # Fixed: no parameters.
  tokens = fixed.apply(variables, x, method="patch_tokens")
  bias = variables["params"]["patch_embed"]["bias"]  # A zero image embeds to the bias; what remains is position.
  np.testing.assert_allclose(tokens[0] - bias, vit_lib.sincos_2d(4, 16)[1:], atol=1e-5)


def test_objective_registered_and_built_from_config():
  assert objectives.get_objective("mae") is mae.MAE
  c = config_lib.load("fundus_mae", None)
  experiment.validate(c)
  model = objectives.build_model(c)
  assert isinstance(model, mae.MAEModel) and isinstance(model.backbone, vit_lib.ViT)
  assert (model.backbone.width, model.backbone.patch_size, model.decoder.out_dim) == (192, 8, 8 * 8 * 3)
  assert model.backbone.fixed_positions and model.decoder.fixed_positions  # MAE's sin-cos, both halves.
  assert len(c.augment.views) == 1 and c.augment.views[0].jitter_p == 0.0
  c.model.encoder = "resnet18"
  c.model.width_multiplier = 1.0
  with pytest.raises(ValueError, match="MAE needs a ViT encoder"):
    objectives.build_model(c)


def test_bf16_model_keeps_float32_params_and_outputs():
  model = _tiny_mae(dtype=jnp.bfloat16)
  x = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
  rngs = {"params": jax.random.key(0), "mask": jax.random.key(1)}
  variables = jax.eval_shape(lambda: model.init(rngs, x, train=False))
  assert {a.dtype for a in jax.tree.leaves(variables)} == {jnp.dtype("float32")}
  out = jax.eval_shape(lambda v: model.apply(v, x, train=True, rngs={"mask": jax.random.key(1)}), variables)
  assert {k: v.dtype for k, v in out.items()} == {k: jnp.dtype("float32") for k in out}


def test_trainer_loss_adapter_concatenates_views():
  rng = np.random.default_rng(0)
  views = [{k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in
            (("pred", (2, 4, 3)), ("target", (2, 4, 3)))} | {"mask": jnp.asarray(rng.random((2, 4)) < 0.5, jnp.float32)}
           for _ in range(2)]
  loss, _, updates = mae.MAE.loss(student=views, teacher=None, batch=None, state={}, step=0, config=None)
  cat = lambda k: np.concatenate([np.asarray(v[k]) for v in views])
  np.testing.assert_allclose(float(loss), reference_mae_loss(cat("pred"), cat("target"), cat("mask"))[0], rtol=1e-5)
  assert updates == {}


# --------------------------------------------------------------------------------------------------
# Volumes [B, D, H, W, C] with a 3D ViT.
# --------------------------------------------------------------------------------------------------


def numpy_patchify_3d(x, p):
  """[B, D, H, W, C] -> [B, L, p^3 C] by slicing: row-major patch grid, each patch as (slice, row, column, channel)."""
  b, d, h, w, _ = x.shape
  return np.stack([x[:, i:i + p, j:j + p, k:k + p].reshape(b, -1) for i in range(0, d, p) for j in range(0, h, p)
                   for k in range(0, w, p)], axis=1)


def test_patchify_volumes_layout_and_round_trip():
  x = np.random.default_rng(0).normal(size=(2, 8, 12, 4, 2)).astype(np.float32)
  p = 4
  patches = np.asarray(mae.patchify(jnp.asarray(x), p))
  assert patches.shape == (2, 2 * 3 * 1, p ** 3 * 2)
  b, i, j = 1, 1, 2
  expected = [x[b, i * p + s, j * p + r, c, ch] for s in range(p) for r in range(p) for c in range(p) for ch in range(2)]
  np.testing.assert_array_equal(patches[b, i * 3 + j], expected)
  np.testing.assert_array_equal(patches, numpy_patchify_3d(x, p))
  np.testing.assert_array_equal(mae.unpatchify(jnp.asarray(patches), p, (2, 3, 1)), x)
  with pytest.raises(ValueError, match=r"8x12x4 voxels is not divisible by the patch size 3 \(config.model.patch_size\)"):
    mae.patchify(jnp.asarray(x), 3)
  with pytest.raises(ValueError, match="do not fit a 2x2x2 grid of 4x4x4 patches"):
    mae.unpatchify(jnp.asarray(patches), p, (2, 2, 2))


def _tiny_mae_3d(norm_pix_loss=True, fixed_positions=True):
  backbone = vit_lib.ViT(width=48, depth=1, num_heads=2, patch_size=4, input_dims=(3,),
                         fixed_positions=fixed_positions)
  decoder = mae.MAEDecoder(width=24, depth=1, num_heads=2, out_dim=4 ** 3, fixed_positions=fixed_positions)
  return mae.MAEModel(backbone=backbone, decoder=decoder, mask_ratio=0.75, norm_pix_loss=norm_pix_loss)


@pytest.mark.parametrize("norm_pix_loss", [True, False])
def test_volume_loss_matches_numpy(norm_pix_loss):
  """MAE on 8 x 8 x 12 volumes (a 2 x 2 x 3 grid of 4^3 patches, 3 kept): the objective's loss equals the
  formula in numpy: patchify, per-patch normalisation, mean squared error averaged over the masked patches."""
  model = _tiny_mae_3d(norm_pix_loss)
  x = np.random.default_rng(1).normal(size=(2, 8, 8, 12, 1)).astype(np.float32) * 2 + 1
  variables = random_variables(lambda: model.init({"params": jax.random.key(0)}, x, train=False))
  out = jax.jit(lambda v: model.apply(v, x, train=True, rngs={"mask": jax.random.key(4)}))(variables)
  assert out["pred"].shape == (2, 12, 64) and out["features"].shape == (2, 48)
  pred, mask = np.asarray(out["pred"], np.float64), np.asarray(out["mask"])
  np.testing.assert_array_equal(mask.sum(axis=1), 12 - 3)
  target = numpy_patchify_3d(x.astype(np.float64), 4)
  if norm_pix_loss:
    target = (target - target.mean(-1, keepdims=True)) / np.sqrt(target.var(-1, ddof=1, keepdims=True) + 1e-6)
  np.testing.assert_allclose(out["target"], target, rtol=1e-4, atol=1e-4)
  per_patch = ((pred - target) ** 2).mean(-1)
  want = (per_patch * mask).sum() / mask.sum()
  loss, metrics, _ = mae.MAE.loss(student=[out], teacher=None, batch=None, state={}, step=0, config=None)
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  np.testing.assert_allclose(float(metrics["visible_loss"]), (per_patch * (1 - mask)).sum() / (1 - mask).sum(),
                             rtol=1e-5)


def test_volume_loss_falls():
  model = _tiny_mae_3d(norm_pix_loss=False, fixed_positions=False)
  grid = np.stack(np.meshgrid(*[np.arange(8)] * 3, indexing="ij"), -1) - 3.5
  radii = np.array([2.0, 2.5, 3.0, 3.5])[:, None, None, None]
  x = jnp.asarray((np.linalg.norm(grid, axis=-1)[None] < radii)[..., None], jnp.float32)  # Balls, [4, 8, 8, 8, 1].
  params = jax.jit(lambda: model.init({"params": jax.random.key(0)}, x, train=False))()["params"]
  tx = optax.adam(3e-3)

  def loss_fn(params, key):
    out = model.apply({"params": params}, x, train=True, rngs={"mask": key})
    return mae.MAE.loss(student=[out], teacher=None, batch=None, state={}, step=0, config=None)[0]

  @jax.jit
  def step(params, opt_state, key):
    loss, grads = jax.value_and_grad(loss_fn)(params, key)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  opt_state, losses = tx.init(params), []
  for i in range(8):
    params, opt_state, loss = step(params, opt_state, jax.random.key(i))
    losses.append(float(loss))
  assert np.all(np.isfinite(losses)) and losses[-1] < 0.5 * losses[0], losses


def test_volume_objective_built_from_config():
  c = experiment.default_config()
  c.objective.name = "mae"
  c.model.encoder = "vit_tiny_3d"
  c.model.patch_size = 7
  c.data.channels = 1
  c.model.position_embedding = "sincos"
  c.model.decoder_dim = 96
  model = objectives.build_model(c)
  assert model.backbone.input_dims == (3,) and model.decoder.out_dim == 7 ** 3
  c.model.decoder_dim = 128
  with pytest.raises(ValueError, match="config.model.decoder_dim=128 must be divisible by 6"):
    objectives.build_model(c)
