"""Attention maps: Grad-CAM and label-free maps (ResNet), attention rollout (ViT), fraction inside a mask,
PNG overlays. References are explicit numpy loops / jax.grad on toy functions, on tiny models."""
import numpy as np
import jax
import jax.numpy as jnp
import pytest
from PIL import Image

from medssl_jax.evals import attention
from medssl_jax.models.resnet import ResNet
from medssl_jax.models import vit as vit_lib


def he_variables(init_fn, seed=0):
  """He-normal conv kernels, BatchNorm at identity (mean 0, var 1, scale 1, bias 0): a random ResNet
  whose activations stay O(1), without compiling flax's initialisers."""
  rng = np.random.default_rng(seed)

  def draw(path, s):
    name = jax.tree_util.keystr(path)
    if "kernel" in name:
      return jnp.asarray(rng.normal(scale=np.sqrt(2.0 / np.prod(s.shape[:-1])), size=s.shape), s.dtype)
    return jnp.ones(s.shape, s.dtype) if ("var" in name or "scale" in name) else jnp.zeros(s.shape, s.dtype)

  return jax.tree_util.tree_map_with_path(draw, jax.eval_shape(init_fn))


def random_variables(init_fn, seed=0):
  """Variables shaped like init_fn()'s, drawn with numpy (skips compiling flax's initialisers);
  BatchNorm variances positive."""
  rng = np.random.default_rng(seed)

  def draw(path, s):
    name = jax.tree_util.keystr(path)
    if "var" in name:
      return jnp.asarray(rng.uniform(0.5, 1.5, s.shape), s.dtype)
    if "scale" in name:
      return jnp.asarray(rng.uniform(0.5, 1.5, s.shape), s.dtype)
    return jnp.asarray(rng.normal(scale=0.3, size=s.shape), s.dtype)

  return jax.tree_util.tree_map_with_path(draw, jax.eval_shape(init_fn))


def np_bilinear(m, size):
  """Half-pixel-centre bilinear resize of one map [h, w] with edge clamping (torch align_corners=False)."""
  h, w = m.shape
  out = np.zeros(size)
  for y in range(size[0]):
    sy = min(max((y + 0.5) * h / size[0] - 0.5, 0.0), h - 1)
    y0 = int(np.floor(sy)); y1 = min(y0 + 1, h - 1); wy = sy - y0
    for x in range(size[1]):
      sx = min(max((x + 0.5) * w / size[1] - 0.5, 0.0), w - 1)
      x0 = int(np.floor(sx)); x1 = min(x0 + 1, w - 1); wx = sx - x0
      out[y, x] = ((1 - wy) * (1 - wx) * m[y0, x0] + (1 - wy) * wx * m[y0, x1]
                   + wy * (1 - wx) * m[y1, x0] + wy * wx * m[y1, x1])
  return out


def np_normalise(m):
  return m / m.max() if m.max() > 0 else np.zeros_like(m)


# A ResNet-18 at 1/8 width with the CIFAR stem: 32 px -> last stage 4 x 4 x 64.
RESNET = ResNet(depth=18, stem="cifar", width_multiplier=0.125)
SIZE = 32


@pytest.fixture(scope="module")
def resnet_vars():
  return random_variables(lambda: RESNET.init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)), train=False))


def test_upsample_matches_numpy_bilinear():
  m = np.random.default_rng(0).normal(size=(2, 3, 5))
  out = np.asarray(attention.upsample(m, (12, 20)))
  for i in range(2):
    np.testing.assert_allclose(out[i], np_bilinear(m[i], (12, 20)), atol=1e-5)


def test_grad_cam_matches_explicit_formula(resnet_vars):
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(3, SIZE, SIZE, 3)), jnp.float32)
  d, c = RESNET.num_features, 3
  head = {"w": jnp.asarray(rng.normal(size=(d, c)), jnp.float32), "b": jnp.asarray(rng.normal(size=c), jnp.float32),
          "mean": jnp.asarray(rng.normal(size=d), jnp.float32), "std": jnp.asarray(rng.uniform(0.5, 2, d), jnp.float32)}
  target = np.array([0, 2, 1])

  @jax.jit
  def run(v, x):
    feats, stages = RESNET.apply(v, x, train=False, return_stages=True)
    return (feats, stages[-1], attention.grad_cam(RESNET, v, x, head=head, target=target),
            attention.grad_cam(RESNET, v, x, head=head),
            attention.label_free_cam(RESNET, v, x, method="activation_norm"),
            attention.label_free_cam(RESNET, v, x, method="grad_feature_norm"))

  feats, a, cam, cam_pred, act_norm, grad_norm = jax.tree.map(np.asarray, run(resnet_vars, x))
  assert a.shape == (3, 4, 4, d) and cam.shape == (3, SIZE, SIZE)
  np.testing.assert_allclose(feats, a.mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)  # The model pools A.
  w, b, mu, sd = (np.asarray(head[k], np.float64) for k in ("w", "b", "mean", "std"))
  logits = ((feats - mu) / sd) @ w + b
  for i in range(3):
    # Toy function of one image's activations: the target logit after pooling and the head.
    toy = lambda a_i, c=target[i]: ((jnp.mean(a_i, axis=(0, 1)) - head["mean"]) / head["std"] @ head["w"]
                                    + head["b"])[c]
    g = np.asarray(jax.grad(toy)(jnp.asarray(a[i])), np.float64)
    alpha = g.mean(axis=(0, 1))
    np.testing.assert_allclose(alpha, w[:, target[i]] / sd / 16, rtol=1e-4)  # Closed form for a linear head.
    ref = np_normalise(np_bilinear(np.maximum(0.0, np.einsum("hwk,k->hw", a[i].astype(np.float64), alpha)),
                                   (SIZE, SIZE)))
    np.testing.assert_allclose(cam[i], ref, atol=1e-5)
    # Predicted class when no target is given.
    c = int(np.argmax(logits[i]))
    alpha = w[:, c] / sd / 16
    ref = np_normalise(np_bilinear(np.maximum(0.0, np.einsum("hwk,k->hw", a[i], alpha)), (SIZE, SIZE)))
    np.testing.assert_allclose(cam_pred[i], ref, atol=1e-5)
    # Label-free: channel norm, and grad of ||f||^2 = relu(<f, A_ij>) up to scale.
    np.testing.assert_allclose(act_norm[i], np_normalise(np_bilinear(np.linalg.norm(a[i], axis=-1), (SIZE, SIZE))),
                               atol=1e-5)
    ref = np_normalise(np_bilinear(np.maximum(0.0, np.einsum("hwk,k->hw", a[i], feats[i])), (SIZE, SIZE)))
    np.testing.assert_allclose(grad_norm[i], ref, atol=1e-5)
  for m in (cam, cam_pred, act_norm, grad_norm):
    peak = m.max(axis=(1, 2))  # 1, or 0 for an all-negative cam (random head).
    assert m.min() >= 0 and np.all(np.isclose(peak, 1.0) | (peak == 0)), peak


def test_grad_cam_peaks_on_the_region_that_differs_between_classes():
  """uint8 images share random backgrounds; class 1 adds a bright square in one fixed place. A linear
  probe fitted on the frozen features of a random ResNet, then Grad-CAM for class 1 on class-1 images
  peaks at the square (within one last-stage cell, the map's resolution; 64 px -> an 8 x 8 grid) and
  puts more of its mass there than in the same-size square mirrored to the other side, and than the
  class-0 map does (Grad-CAM is class-discriminative). A random network's maps keep a broad floor,
  hence the modest margins. Also checks
  `compute_maps` (uint8 in, preprocessing, padded batches) against the direct computation."""
  size, n = 64, 32
  v = he_variables(lambda: RESNET.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False))
  rng = np.random.default_rng(2)
  y = np.arange(n) % 2
  region = np.zeros((size, size), bool)
  region[16:32, 32:48] = True
  near = np.zeros((size, size), bool)
  near[8:40, 24:56] = True                                          # The square grown by one cell (8 px).
  x = rng.normal(128, 20, size=(n, size, size, 3)) + 80.0 * (y[:, None, None, None] * region[None, :, :, None])
  images = np.clip(x, 0, 255).astype(np.uint8)
  mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
  pre = (images.astype(np.float32) / 255.0 - 0.5) / 0.25

  @jax.jit
  def run(v, x, head, target):
    return RESNET.apply(v, x, train=False), attention.grad_cam(RESNET, v, x, head=head, target=target)

  d = RESNET.num_features
  feats, _ = run(v, pre, {"w": jnp.zeros((d, 2)), "b": jnp.zeros(2), "mean": jnp.zeros(d), "std": jnp.ones(d)},
                 np.ones(n, np.int32))
  head = attention.fit_probe_head(feats, y, num_classes=2, l2=1.0, max_iter=30)
  assert head["w"].shape == (d, 2) and head["mean"].shape == (d,)
  _, maps = run(v, pre, head, np.ones(n, np.int32))
  _, maps0 = run(v, pre, head, np.zeros(n, np.int32))
  maps, maps0 = np.asarray(maps)[y == 1], np.asarray(maps0)[y == 1]
  for m in maps:
    r, c = np.unravel_index(np.argmax(m), m.shape)
    assert near[r, c], (r, c)
  frac, mirrored = attention.fraction_inside(maps, region), attention.fraction_inside(maps, region[:, ::-1])
  frac0 = np.nan_to_num(attention.fraction_inside(maps0, region))  # The other class's map (may be all 0).
  assert np.all(frac > 1.1 * mirrored) and np.all(frac > 1.5 * frac0), (frac, mirrored, frac0)
  # compute_maps: 5 images in batches of 4 (the last padded), same maps.
  pos = np.flatnonzero(y == 1)[:5]
  batched = attention.compute_maps("grad_cam", RESNET, v, images[pos], image_size=size, mean=mean, std=std,
                                   head=head, target=1, batch_size=4)
  assert batched.shape == (5, size, size) and batched.dtype == np.float32
  np.testing.assert_allclose(batched, maps[:5], atol=1e-4)


def test_vit_return_attention_keeps_features_and_matches_hand_computed_weights():
  model = vit_lib.ViT(width=16, depth=2, num_heads=2, patch_size=4)
  x = jax.random.normal(jax.random.key(1), (2, 8, 12, 3))
  v = random_variables(lambda: model.init(jax.random.key(0), x, train=False))

  @jax.jit
  def run(v):
    tokens = model.apply(v, x, method=lambda m, x: m.patch_tokens(x))
    return (model.apply(v, x, train=False), model.apply(v, x, train=False, return_attention=True), tokens,
            attention.attention_rollout(model, v, x))

  plain, (feats, atts), tokens, maps = run(v)
  np.testing.assert_array_equal(plain, feats)
  assert len(atts) == 2 and all(a.shape == (2, 2, 7, 7) and a.dtype == jnp.float32 for a in atts)
  # Block 1 by hand: class token + position, LayerNorm, q/k projections, softmax(q k^T / sqrt(d)).
  p = jax.tree.map(lambda t: np.asarray(t, np.float64), v["params"])
  cls = p["cls_token"] + p["pos_embed"]["embedding"][:, :1]
  z = np.concatenate([np.broadcast_to(cls, (2, 1, 16)), np.asarray(tokens, np.float64)], axis=1)
  ln = p["block1"]["norm1"]
  z = (z - z.mean(-1, keepdims=True)) / np.sqrt(z.var(-1, keepdims=True) + 1e-6) * ln["scale"] + ln["bias"]
  att = p["block1"]["attn"]
  q = np.einsum("btd,dhk->bhtk", z, att["query"]["kernel"]) + att["query"]["bias"][None, :, None]
  k = np.einsum("btd,dhk->bhtk", z, att["key"]["kernel"]) + att["key"]["bias"][None, :, None]
  s = np.einsum("bhtk,bhsk->bhts", q, k) / np.sqrt(8)
  ref = np.exp(s - s.max(-1, keepdims=True))
  ref /= ref.sum(-1, keepdims=True)
  np.testing.assert_allclose(atts[0], ref, atol=1e-5)
  np.testing.assert_allclose(np.asarray(atts[1]).sum(-1), 1.0, atol=1e-5)
  # attention_rollout = rollout of those weights over the 2 x 3 patch grid.
  np.testing.assert_allclose(maps, attention.rollout(atts, grid=(2, 3), size=(8, 12)), atol=1e-6)


def test_rollout_matches_numpy_loop():
  rng = np.random.default_rng(3)
  b, heads, gh, gw, depth = 2, 3, 2, 3, 4
  t = 1 + gh * gw
  atts = [rng.dirichlet(np.ones(t), size=(b, heads, t)) for _ in range(depth)]  # Rows sum to 1.
  out = np.asarray(jax.jit(lambda a: attention.rollout(a, grid=(gh, gw), size=(8, 12)))(
      [jnp.asarray(a, jnp.float32) for a in atts]))
  for i in range(b):
    r = np.eye(t)
    for a in atts:
      m = np.zeros((t, t))
      for h in range(heads):
        m += a[i, h] / heads
      m += np.eye(t)
      for row in range(t):
        m[row] /= m[row].sum()
      r = m @ r
    grid = np.zeros((gh, gw))
    for j in range(gh * gw):
      grid[j // gw, j % gw] = r[0, 1 + j]  # Row-major patch order.
    np.testing.assert_allclose(out[i], np_normalise(np_bilinear(grid, (8, 12))), atol=1e-5)


def test_fraction_inside_on_constructed_maps():
  maps = np.zeros((4, 4, 4))
  maps[0] = 1.0                       # Uniform: the mask's area fraction.
  maps[1, 0, 0], maps[1, 3, 3] = 3.0, 1.0
  maps[2, 2:, :] = 0.5                # All mass in the bottom half.
  masks = np.zeros((4, 4, 4), np.uint8)
  masks[:, :2, :2] = 255              # 0/255 masks: top-left quadrant.
  masks[2] = 0
  masks[2, 2:, :] = 1
  frac = attention.fraction_inside(maps, masks)
  np.testing.assert_allclose(frac[:3], [0.25, 0.75, 1.0])
  assert np.isnan(frac[3])            # All-zero map.
  # A low-resolution mask is resized with nearest neighbour; one mask broadcasts over the batch.
  small = np.array([[0, 2], [1, 0]])  # A label map: non-zero is inside.
  big = np.kron(small, np.ones((2, 2)))
  m = np.random.default_rng(4).uniform(size=(3, 4, 4))
  expected = [(mi * (big > 0)).sum() / mi.sum() for mi in m]
  np.testing.assert_allclose(attention.fraction_inside(m, small), expected)
  np.testing.assert_allclose(attention.fraction_inside(m[..., None], np.stack([small] * 3)[..., None]), expected)
  np.testing.assert_array_equal(attention.resize_nearest(small[None], (4, 4))[0], big)
  with pytest.raises(ValueError, match="non-negative"):
    attention.fraction_inside(-m, small)
  with pytest.raises(ValueError, match="masks has 2 images, maps has 3"):
    attention.fraction_inside(m, np.stack([small] * 2))


def test_save_overlays_writes_a_png(tmp_path):
  rng = np.random.default_rng(5)
  images = rng.integers(0, 255, size=(5, 16, 16, 1), dtype=np.uint8)
  maps = rng.uniform(size=(5, 4, 4))
  masks = np.zeros((5, 8, 8), bool)
  masks[:, 2:6, 1:4] = True
  path = attention.save_overlays(images, maps, str(tmp_path / "sub" / "overlay.png"), masks=masks, ncols=3,
                                 titles=[f"{i}" for i in range(5)])
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  with Image.open(path) as im:
    im.verify()
  with Image.open(path) as im:
    assert im.format == "PNG" and im.size[0] > im.size[1] > 0  # 3 columns x 2 rows.
  attention.save_overlays(rng.uniform(size=(2, 16, 16, 3)), maps[:2], str(tmp_path / "rgb.png"))
  assert (tmp_path / "rgb.png").stat().st_size > 0
  with pytest.raises(ValueError, match="maps has 5 images, images has 2"):
    attention.save_overlays(images[:2], maps, str(tmp_path / "bad.png"))


def test_clear_errors(resnet_vars):
  images = np.zeros((2, SIZE, SIZE, 3), np.uint8)
  mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
  x = jnp.zeros((2, SIZE, SIZE, 3))
  with pytest.raises(ValueError, match="valid choices"):
    attention.compute_maps("saliency", RESNET, resnet_vars, images, image_size=SIZE, mean=mean, std=std)
  with pytest.raises(ValueError, match="needs head"):
    attention.map_fn("grad_cam", RESNET)
  with pytest.raises(ValueError, match="needs a ResNet backbone"):
    attention.grad_cam(vit_lib.ViT(width=16, depth=1, num_heads=2, patch_size=4), {}, x,
                       head={"w": jnp.zeros((16, 2)), "b": jnp.zeros(2)})
  with pytest.raises(ValueError, match="needs a ViT backbone"):
    attention.attention_rollout(RESNET, resnet_vars, x)
  with pytest.raises(ValueError, match=r"head\['w'\] must be \[D=64, C\]"):
    attention.grad_cam(RESNET, resnet_vars, x, head={"w": jnp.zeros((10, 2)), "b": jnp.zeros(2)})
  with pytest.raises(ValueError, match="T=7 tokens; grid"):
    attention.rollout([jnp.ones((1, 1, 7, 7))], grid=(3, 3), size=(6, 6))
