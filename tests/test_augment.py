"""Tests for medssl_jax.augment: per-op invariants, view policies, batching and sharding.

Images are tiny (16-24 px) and every composed pipeline is jitted once per shape (cached below), so
the file stays fast on a 2-core CPU.
"""
import colorsys
import functools
import hashlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import device_testing
from medssl_jax.augment import ops
from medssl_jax.augment import views

H = 16


def _rgb(seed=0, size=H, channels=3):
  return jax.random.uniform(jax.random.key(seed), (size, size, channels), jnp.float32)


def _keys(n=4):
  return [jax.random.key(i) for i in range(n)]


# One jitted function per op configuration (jit caches by shape/dtype after that).
@functools.lru_cache(maxsize=None)
def _op(name, **kwargs):
  fn = getattr(ops, name)
  return jax.jit(lambda key, image: fn(key, image, **kwargs))


_JITTER = dict(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)
# (op name, kwargs at full strength) for the generic invariants.
_RANDOM_OPS = [
    ("random_resized_crop", dict(out_size=12, scale=(0.2, 1.0))),
    ("random_flip", dict(p=0.5)),
    ("random_vflip", dict(p=0.5)),
    ("random_rot90", dict(p=0.75)),
    ("color_jitter", dict(_JITTER, p=1.0)),
    ("random_grayscale", dict(p=0.5)),
    ("gaussian_blur", dict(p=1.0, sigma=(0.5, 2.0), kernel_size=5)),
    ("solarize", dict(p=0.5, threshold=0.5)),
]


# --------------------------------------------------------------------------------------------------
# Generic invariants of every random op.
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,kwargs", _RANDOM_OPS, ids=[n for n, _ in _RANDOM_OPS])
@pytest.mark.parametrize("channels", [3, 1])
def test_op_shape_dtype_range_and_determinism(name, kwargs, channels):
  fn = _op(name, **kwargs)
  image = _rgb(channels=channels)
  outs = [np.asarray(fn(k, image)) for k in _keys(6)]
  size = kwargs.get("out_size", H)
  for out in outs:
    assert out.shape == (size, size, channels)
    assert out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
  # Same key -> bit-identical; different keys -> not all the same.
  np.testing.assert_array_equal(np.asarray(fn(jax.random.key(0), image)), outs[0])
  if not (name == "random_grayscale" and channels == 1):  # Grayscale of gray is the identity.
    assert any(not np.array_equal(outs[0], o) for o in outs[1:])


@pytest.mark.parametrize("name,kwargs", _RANDOM_OPS, ids=[n for n, _ in _RANDOM_OPS])
def test_op_jit_matches_eager(name, kwargs):
  image, key = _rgb(), jax.random.key(1)
  eager = getattr(ops, name)(key, image, **kwargs)
  # Fused code may contract a * b + c into an FMA, so jit and eager can round differently.
  np.testing.assert_allclose(_op(name, **kwargs)(key, image), eager, atol=1e-5)


def test_ops_vmap_per_example_keys():
  fn = jax.jit(jax.vmap(lambda k, x: ops.color_jitter(k, x, **_JITTER, p=1.0)))
  images = jnp.stack([_rgb()] * 4)
  out = np.asarray(fn(jax.random.split(jax.random.key(0), 4), images))
  assert out.shape == (4, H, H, 3)
  assert len({o.tobytes() for o in out}) == 4


# --------------------------------------------------------------------------------------------------
# Geometry.
# --------------------------------------------------------------------------------------------------


def test_crop_full_scale_unit_ratio_is_identity():
  image = _rgb()
  crop = _op("random_resized_crop", out_size=H, scale=(1.0, 1.0), ratio=(1.0, 1.0))
  for key in _keys(3):
    np.testing.assert_allclose(crop(key, image), image, atol=1e-5)
  np.testing.assert_allclose(ops.center_resize(image, out_size=H), image, atol=1e-5)


def test_resample_matches_scale_and_translate():
  # The crop/resize filter is scale_and_translate's antialiased linear filter, computed with taps.
  image = jax.random.uniform(jax.random.key(3), (20, 24, 3))
  out = 12

  @jax.jit
  def both(box):
    top, left, h, w = box
    got = ops._resample(image, out_size=out, top=top, left=left, height=h, width=w)
    scale = jnp.stack([out / h, out / w])
    want = jax.image.scale_and_translate(image, (out, out, 3), (0, 1), scale,
                                         -jnp.stack([top, left]) * scale, "linear")
    return got, jnp.clip(want, 0, 1)

  # Downscaling (antialiased), identity-size and upscaling boxes.
  for box in [(2.5, 3.0, 16.0, 18.5), (0.0, 0.0, 20.0, 24.0), (5.25, 1.0, 4.0, 6.0)]:
    got, want = both(jnp.asarray(box, jnp.float32))
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_crop_samples_varied_boxes_within_image():
  # A constant-gradient image: the crop's mean reveals where it was taken; boxes must vary.
  ramp = jnp.broadcast_to(jnp.linspace(0, 1, 32)[:, None, None], (32, 32, 1))
  fn = _op("random_resized_crop", out_size=8, scale=(0.08, 0.3))
  means = [float(fn(k, ramp).mean()) for k in _keys(8)]
  assert np.std(means) > 0.05
  assert min(means) >= 0.0 and max(means) <= 1.0


def test_crop_fallback_on_impossible_ratio():
  # No 4:1 box of the full area fits in a 16x16 image: fall back to the central 16x4 box.
  image = _rgb()
  out = ops.random_resized_crop(jax.random.key(0), image, out_size=8, scale=(1.0, 1.0),
                                ratio=(4.0, 4.0))
  want = ops._resample(image, out_size=8, top=jnp.float32(6), left=jnp.float32(0),
                       height=jnp.float32(4), width=jnp.float32(16))
  np.testing.assert_allclose(out, want, atol=1e-6)


def test_flip():
  image = _rgb()
  flip_always = _op("random_flip", p=1.0)
  key = jax.random.key(0)
  np.testing.assert_array_equal(flip_always(key, image), image[:, ::-1])
  np.testing.assert_array_equal(flip_always(key, flip_always(key, image)), image)  # Own inverse.
  np.testing.assert_array_equal(ops.random_flip(key, image, p=0.0), image)
  flipped = [bool(np.array_equal(_op("random_flip", p=0.5)(k, image), image[:, ::-1]))
             for k in _keys(16)]
  assert 0 < sum(flipped) < 16


def test_vflip():
  image = _rgb()
  key = jax.random.key(0)
  np.testing.assert_array_equal(_op("random_vflip", p=1.0)(key, image), image[::-1])
  np.testing.assert_array_equal(ops.random_vflip(key, image, p=0.0), image)
  flipped = [bool(np.array_equal(_op("random_vflip", p=0.5)(k, image), image[::-1])) for k in _keys(16)]
  assert 0 < sum(flipped) < 16


def _quarter_turns(out, image):
  """Which k in 0..3 gives out == rot90(image, k) (-1: none)."""
  for k in range(4):
    if np.array_equal(out, np.rot90(np.asarray(image), k, axes=(0, 1))):
      return k
  return -1


def test_rot90_turns_are_uniform_and_exact():
  image = _rgb(size=6)  # Asymmetric: the four orientations are distinct.
  keys = jax.random.split(jax.random.key(0), 600)
  for p, identity_rate in ((1.0, 0.0), (0.5, 0.5)):
    outs = np.asarray(jax.vmap(lambda k, p=p: ops.random_rot90(k, image, p=p))(keys))
    turns = np.array([_quarter_turns(o, image) for o in outs])
    assert np.all(turns >= 0)  # Every output is an exact rotation of the input.
    counts = np.bincount(turns, minlength=4) / len(turns)
    assert abs(counts[0] - identity_rate) < 0.07
    # k in {1, 2, 3} uniform among the rotated outputs.
    np.testing.assert_allclose(counts[1:] / counts[1:].sum(), [1 / 3] * 3, atol=0.07)
  # k = 1 is a counter-clockwise quarter turn: the top-right corner moves to the top-left.
  ccw = np.rot90(np.asarray(image), 1, axes=(0, 1))
  assert ccw[0, 0, 0] == image[0, -1, 0]
  np.testing.assert_array_equal(ops.random_rot90(jax.random.key(0), image, p=0.0), image)


def test_rot90_rejects_non_square():
  with pytest.raises(ValueError, match=r"random_rot90: expected a square image.*\(4, 6, 3\)"):
    ops.random_rot90(jax.random.key(0), jnp.zeros((4, 6, 3)), p=0.5)
  with pytest.raises(ValueError, match="square"):  # Even when p = 0: a config error, not a no-op.
    ops.random_rot90(jax.random.key(0), jnp.zeros((4, 6, 3)), p=0.0)


# --------------------------------------------------------------------------------------------------
# Colour.
# --------------------------------------------------------------------------------------------------


def test_color_jitter_zero_strength_is_identity():
  image = _rgb()
  for key in _keys(3):
    out = ops.color_jitter(key, image, brightness=0, contrast=0, saturation=0, hue=0, p=1.0)
    np.testing.assert_allclose(out, image, atol=1e-6)
    out = _op("color_jitter", **_JITTER, p=0.0)(key, image)
    np.testing.assert_array_equal(out, image)


def test_adjust_factor_one_is_identity():
  image = _rgb()
  for fn in (ops.adjust_brightness, ops.adjust_contrast, ops.adjust_saturation):
    np.testing.assert_allclose(fn(image, 1.0), image, atol=1e-6)


def test_hue_zero_and_full_turn_are_identity():
  image = _rgb()
  for delta in (0.0, 1.0, -1.0):
    np.testing.assert_allclose(ops.adjust_hue(image, delta), image, atol=2e-6)
  half = ops.adjust_hue(ops.adjust_hue(image, 0.5), 0.5)
  np.testing.assert_allclose(half, image, atol=1e-5)


def test_hsv_matches_colorsys():
  pixels = np.asarray(_rgb(size=8)).reshape(-1, 3)
  pixels = np.concatenate([pixels, [[0, 0, 0], [1, 1, 1], [0.5, 0.5, 0.5], [1, 0, 0], [0, 1, 1]]])
  pixels = pixels.astype(np.float32)
  want = np.array([colorsys.rgb_to_hsv(*p) for p in pixels])
  got = np.asarray(ops.rgb_to_hsv(jnp.asarray(pixels)))
  np.testing.assert_allclose(got, want, atol=1e-6)
  np.testing.assert_allclose(ops.hsv_to_rgb(jnp.asarray(got)), pixels, atol=1e-6)
  # A quarter-turn hue shift against colorsys, pixel by pixel.
  shifted = np.array([colorsys.hsv_to_rgb((h + 0.25) % 1.0, s, v) for h, s, v in want])
  got = ops.adjust_hue(jnp.asarray(pixels)[None], 0.25)[0]
  np.testing.assert_allclose(got, shifted, atol=1e-5)


def test_brightness_scales_mean():
  image = 0.5 * _rgb()  # Values <= 0.5: no clipping for factors <= 2.
  for factor in (0.6, 1.3, 2.0):
    out = ops.adjust_brightness(image, factor)
    np.testing.assert_allclose(out.mean(), factor * image.mean(), rtol=1e-5)
  # Through color_jitter (brightness only): one factor per image, within [1 - s, 1 + s].
  fn = _op("color_jitter", brightness=0.4, contrast=0, saturation=0, hue=0, p=1.0)
  for key in _keys(4):
    ratio = np.asarray(fn(key, image)) / np.asarray(image)
    assert 0.6 - 1e-6 <= ratio.min() and ratio.max() <= 1.4 + 1e-6
    np.testing.assert_allclose(ratio, ratio.flat[0], rtol=1e-5)


def test_contrast_and_saturation_extremes():
  image = 0.8 * _rgb() + 0.1
  gray = ops.to_grayscale(image)
  flat = ops.adjust_contrast(image, 0.0)
  np.testing.assert_allclose(flat, jnp.full_like(image, gray.mean()), atol=1e-6)
  # A contrast change keeps the mean luma when nothing clips.
  np.testing.assert_allclose(ops.to_grayscale(ops.adjust_contrast(image, 1.1)).mean(), gray.mean(),
                             atol=1e-5)
  desat = ops.adjust_saturation(image, 0.0)
  np.testing.assert_allclose(desat, jnp.broadcast_to(gray, image.shape), atol=1e-6)


def test_color_jitter_applies_ops_in_drawn_order():
  # White-box: mirrors color_jitter's key layout and checks the masked-loop evaluation equals the
  # ops applied one after the other in the sampled permutation.
  image = _rgb(size=8)
  jitter = _op("color_jitter", **_JITTER, p=1.0)
  orders = set()
  for key in _keys(8):
    got = jitter(key, image)
    _, k_order, k_b, k_c, k_s, k_h = jax.random.split(key, 6)
    factor = lambda k: jax.random.uniform(k, minval=0.6, maxval=1.4)
    fns = [lambda x: ops.adjust_brightness(x, factor(k_b)),
           lambda x: ops.adjust_contrast(x, factor(k_c)),
           lambda x: ops.adjust_saturation(x, factor(k_s)),
           lambda x: ops.adjust_hue(x, jax.random.uniform(k_h, minval=-0.1, maxval=0.1))]
    order = tuple(int(i) for i in jax.random.permutation(k_order, 4))
    orders.add(order)
    want = image
    for i in order:
      want = fns[i](want)
    np.testing.assert_allclose(got, want, atol=5e-6)
  assert len(orders) > 3  # The order really is random.


def test_grayscale_safe_and_single_channel():
  rgb = _rgb()
  key = jax.random.key(0)
  safe = ops.color_jitter(key, rgb, **_JITTER, p=1.0, grayscale_safe=True)
  bc_only = ops.color_jitter(key, rgb, brightness=0.4, contrast=0.4, saturation=0, hue=0, p=1.0)
  np.testing.assert_array_equal(safe, bc_only)  # Saturation and hue are never applied.
  gray_rgb = jnp.broadcast_to(ops.to_grayscale(rgb), rgb.shape)
  out = ops.color_jitter(key, gray_rgb, **_JITTER, p=1.0, grayscale_safe=True)
  np.testing.assert_allclose(out[..., 0], out[..., 1], atol=1e-6)  # Stays gray.
  # One channel: saturation/hue requests are ignored automatically.
  one = _rgb(channels=1)
  out1 = ops.color_jitter(key, one, **_JITTER, p=1.0)
  assert out1.shape == one.shape
  np.testing.assert_array_equal(
      out1, ops.color_jitter(key, one, brightness=0.4, contrast=0.4, saturation=0, hue=0, p=1.0))


def test_random_grayscale():
  image = _rgb()
  out = _op("random_grayscale", p=1.0)(jax.random.key(0), image)
  assert out.shape == image.shape
  np.testing.assert_array_equal(out[..., 0], out[..., 1])
  np.testing.assert_array_equal(out[..., 0], out[..., 2])
  luma = 0.299 * image[..., 0] + 0.587 * image[..., 1] + 0.114 * image[..., 2]
  np.testing.assert_allclose(out[..., 0], luma, atol=1e-6)
  np.testing.assert_array_equal(ops.random_grayscale(jax.random.key(0), image, p=0.0), image)
  one = _rgb(channels=1)
  np.testing.assert_array_equal(ops.random_grayscale(jax.random.key(0), one, p=1.0), one)


# --------------------------------------------------------------------------------------------------
# Blur, solarize, normalize.
# --------------------------------------------------------------------------------------------------


def test_gaussian_blur():
  image = _rgb()
  key = jax.random.key(0)
  np.testing.assert_array_equal(ops.gaussian_blur(key, image, p=0.0, kernel_size=5), image)
  # A vanishing sigma puts all the weight on the centre tap.
  tiny = ops.gaussian_blur(key, image, p=1.0, sigma=(0.01, 0.01), kernel_size=5)
  np.testing.assert_allclose(tiny, image, atol=1e-6)
  blurred = _op("gaussian_blur", p=1.0, sigma=(0.5, 2.0), kernel_size=5)(key, image)
  assert float(blurred.std()) < 0.8 * float(image.std())  # Smooths noise.
  np.testing.assert_allclose(blurred.mean(), image.mean(), atol=0.02)  # ~Mean preserving.
  const = jnp.full((H, H, 3), 0.3, jnp.float32)
  np.testing.assert_allclose(ops.gaussian_blur(key, const, p=1.0, kernel_size=5), const, atol=1e-6)
  # Kernel wider than the image still works (reflect padding).
  small = ops.gaussian_blur(key, image[:4, :4], p=1.0, kernel_size=9)
  assert small.shape == (4, 4, 3)
  assert ops.default_blur_kernel_size(224) == 23 and ops.default_blur_kernel_size(16) == 3
  with pytest.raises(ValueError, match="kernel_size"):
    ops.gaussian_blur(key, image, p=1.0, kernel_size=4)


def test_solarize():
  image = _rgb().at[0, 0].set(1.0)
  key = jax.random.key(0)
  np.testing.assert_array_equal(ops.solarize(key, image, p=1.0, threshold=1.0), image)
  np.testing.assert_array_equal(ops.solarize(key, image, p=0.0, threshold=0.0), image)
  out = ops.solarize(key, image, p=1.0, threshold=0.5)
  np.testing.assert_allclose(out, jnp.where(image > 0.5, 1 - image, image))
  assert float(out.max()) <= 0.5


def test_normalize():
  image = _rgb()
  mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
  out = ops.normalize(image, mean=mean, std=std)
  np.testing.assert_allclose(out, (np.asarray(image) - mean) / np.asarray(std), atol=1e-6)


def test_ops_reject_bad_images():
  with pytest.raises(ValueError, match="float"):
    ops.random_flip(jax.random.key(0), jnp.zeros((4, 4, 3), jnp.uint8))
  with pytest.raises(ValueError, match=r"\[H, W, C\]"):
    ops.random_flip(jax.random.key(0), jnp.zeros((2, 4, 4, 3)))


# --------------------------------------------------------------------------------------------------
# View policies.
# --------------------------------------------------------------------------------------------------


def test_default_view_and_overrides():
  cfg = views.default_view()
  assert cfg.crop_size == 64 and cfg.crop_scale == (0.2, 1.0)
  assert cfg.flip_p == 0.5 and cfg.jitter_p == 0.8 and cfg.grayscale_p == 0.2
  assert (cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue) == (0.4, 0.4, 0.4, 0.1)
  assert cfg.blur_p == 0.5 and cfg.blur_sigma == (0.1, 2.0) and cfg.solarize_p == 0.0
  assert cfg.grayscale_safe is False
  assert cfg.vflip_p == 0.0 and cfg.rot90_p == 0.0  # Off by default: earlier configs are unchanged.
  assert views.default_view(vflip_p=1, rot90_p=0.5).rot90_p == 0.5
  cfg = views.default_view(crop_size=32, blur_p=0.1, crop_scale=[0.5, 1.0])
  assert cfg.crop_size == 32 and cfg.blur_p == 0.1 and cfg.crop_scale == (0.5, 1.0)
  # Partial plain dicts are completed with defaults.
  assert views.validate_view(dict(crop_size=8)).jitter_p == 0.8


@pytest.mark.parametrize("overrides,key", [
    (dict(flip_pp=0.5), "flip_pp"),
    (dict(flip_p=1.5), "flip_p"),
    (dict(solarize_p=-0.1), "solarize_p"),
    (dict(vflip_p=1.01), "vflip_p"),
    (dict(rot90_p=-0.5), "rot90_p"),
    (dict(rot90_p="0.5"), "rot90_p"),
    (dict(crop_scale=(0.9, 0.2)), "crop_scale"),
    (dict(crop_scale=(0.0, 1.0)), "crop_scale"),
    (dict(crop_scale=(0.2, 1.5)), "crop_scale"),
    (dict(crop_size=0), "crop_size"),
    (dict(crop_size=16.0), "crop_size"),
    (dict(hue=0.7), "hue"),
    (dict(brightness=-0.1), "brightness"),
    (dict(blur_sigma=(2.0, 0.1)), "blur_sigma"),
    (dict(blur_kernel_size=4), "blur_kernel_size"),
    (dict(grayscale_safe=1), "grayscale_safe"),
])
def test_validate_view_names_bad_key(overrides, key):
  with pytest.raises(ValueError, match=key):
    views.validate_view(dict(views.default_view().to_dict(), **overrides))


def test_validate_view_lists_valid_keys():
  with pytest.raises(ValueError) as err:
    views.validate_view(dict(bogus=1))
  assert "bogus" in str(err.value) and "crop_size" in str(err.value) and "hue" in str(err.value)


# --------------------------------------------------------------------------------------------------
# Batched views.
# --------------------------------------------------------------------------------------------------

_VIEW = views.default_view(crop_size=12, solarize_p=0.2)
_B = 16  # Every test below uses a [16, 24, 24, C] uint8 batch so they share compiled executables.


_AUTO = (jax.sharding.AxisType.Auto,)


def _on_one_device(x):
  mesh1 = jax.make_mesh((1,), ("data",), axis_types=_AUTO, devices=jax.devices()[:1])
  return jax.device_put(x, NamedSharding(mesh1, P("data")))


def _batch(channels=3, seed=0):
  """A global uint8 batch on a one-device mesh (the sharding test compares it with eight)."""
  rs = np.random.RandomState(seed)
  return _on_one_device((rs.rand(_B, 24, 24, channels) * 255).astype(np.uint8))


def test_to_float_images():
  images = np.asarray(_batch())
  np.testing.assert_array_equal(views.to_float_images(images), images.astype(np.float32) / 255)
  floats = np.random.RandomState(0).rand(2, 4, 4, 3).astype(np.float32)
  np.testing.assert_array_equal(views.to_float_images(floats), floats)
  with pytest.raises(ValueError, match="uint8"):
    views.to_float_images(images.astype(np.int32))
  with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
    views.to_float_images(images[0])


def test_augment_batch_shape_range_and_reproducibility():
  images = _batch()
  out = np.asarray(views.augment_batch(jax.random.key(0), images, _VIEW))
  assert out.shape == (_B, 12, 12, 3) and out.dtype == np.float32
  assert out.min() >= 0.0 and out.max() <= 1.0
  np.testing.assert_array_equal(views.augment_batch(jax.random.key(0), images, _VIEW), out)
  assert not np.array_equal(views.augment_batch(jax.random.key(1), images, _VIEW), out)
  # A plain dict with the same values is the same policy.
  np.testing.assert_array_equal(
      views.augment_batch(jax.random.key(0), images, _VIEW.to_dict()), out)


def test_augment_batch_per_example_randomness():
  same = _on_one_device(np.repeat(np.asarray(_batch())[:1], _B, axis=0))  # 16 copies of one.
  out = np.asarray(views.augment_batch(jax.random.key(0), same, _VIEW))
  assert len({o.tobytes() for o in out}) == _B


def test_augment_batch_under_jit_matches_direct_call():
  images = _batch()
  key = jax.random.key(3)
  jitted = jax.jit(lambda k, x: views.augment_batch(k, x, _VIEW))(key, images)
  direct = views.augment_batch(key, images, _VIEW)
  np.testing.assert_allclose(jitted, direct, atol=1e-6)


def test_augment_batch_single_channel():
  images = _batch(channels=1)
  out = np.asarray(views.augment_batch(jax.random.key(0), images, _VIEW))  # No saturation/hue.
  assert out.shape == (_B, 12, 12, 1)
  assert out.min() >= 0.0 and out.max() <= 1.0


def test_make_views():
  images = _batch()
  key = jax.random.key(0)
  out = views.make_views(key, images, [_VIEW, _VIEW])
  assert [v.shape for v in out] == [(_B, 12, 12, 3)] * 2
  assert not np.array_equal(out[0], out[1])  # Same policy, independent keys.
  for i, view in enumerate(out):  # View i is augment_batch with fold_in(key, i): reproducible.
    np.testing.assert_array_equal(
        view, views.augment_batch(jax.random.fold_in(key, i), images, _VIEW))
  assert not np.array_equal(out[0], views.make_views(jax.random.key(1), images, [_VIEW])[0])
  # Multi-crop: views of different sizes (shapes only, to skip compiling another pipeline).
  small = views.default_view(crop_size=8, crop_scale=(0.05, 0.3))
  shapes = jax.eval_shape(lambda k, x: views.make_views(k, x, [_VIEW, _VIEW, small]), key, images)
  assert [s.shape for s in shapes] == [(_B, 12, 12, 3), (_B, 12, 12, 3), (_B, 8, 8, 3)]


def test_eval_view():
  images = np.asarray(_batch())[:2]
  out = views.eval_view(images, size=12)
  assert out.shape == (2, 12, 12, 3) and out.dtype == jnp.float32
  np.testing.assert_array_equal(out, views.eval_view(images, size=12))
  np.testing.assert_allclose(views.eval_view(images, size=24), images / 255.0, atol=1e-6)


def test_augment_batch_bit_identical_across_shardings():
  assert jax.device_count() >= 8, "conftest.py should provide 8 CPU devices"
  images = np.asarray(_batch(seed=1))
  key = jax.random.key(7)
  mesh8 = jax.make_mesh((8,), ("data",), axis_types=_AUTO)
  augment = lambda k, x: views.augment_batch(k, x, _VIEW)
  out8 = device_testing.run_compiled(augment, key, jax.device_put(images, NamedSharding(mesh8, P("data"))))
  out1 = device_testing.run_compiled(augment, key, _on_one_device(images))
  np.testing.assert_array_equal(np.asarray(out8), np.asarray(out1))
  # The work really was split over the batch axis.
  assert out8.sharding.is_equivalent_to(NamedSharding(mesh8, P("data")), out8.ndim)


# sha256 of views.augment_batch(key(0), _batch(), _VIEW) and of key(5) on the 1-channel batch, recorded
# with the code before vflip_p / rot90_p existed: policies that leave them at 0 must not change a bit.
_REFERENCE_SHA256 = {
    3: "5f7b1c88fb55b4fe1a683735f5b1e4a43dbfc61191c5ed5b440d969d017f1ae7",
    1: "3048987f3dbf76a9e4c79551c4b134e26e3a3d7f100efc4436c632c17946b3cc",
}


@pytest.mark.parametrize("channels,seed", [(3, 0), (1, 5)])
def test_default_view_output_matches_recorded_reference(channels, seed):
  # Compiled as medssl_jax's runs compile it (the suite's XLA settings round otherwise).
  key, images = jax.random.key(seed), _batch(channels=channels)
  out = np.asarray(device_testing.run_compiled(lambda k, x: views.augment_batch(k, x, _VIEW), key, images))
  assert out.dtype == np.float32
  assert hashlib.sha256(out.tobytes()).hexdigest() == _REFERENCE_SHA256[channels], (
      "a view policy without vflip/rot90 no longer reproduces the views recorded before they were added")


def test_view_vflip_and_rot90_act_after_the_horizontal_flip():
  # Without colour ops (spatially equivariant up to rounding), vflip_p=1 / rot90_p=1 give the views of
  # the same policy without them, flipped / turned: the other ops' keys are unchanged.
  plain = dict(crop_size=12, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0)
  images = _batch()
  key = jax.random.key(2)
  base = np.asarray(views.augment_batch(key, images, plain))
  vflipped = np.asarray(views.augment_batch(key, images, dict(plain, vflip_p=1.0)))
  np.testing.assert_array_equal(vflipped, base[:, ::-1])
  turned = np.asarray(views.augment_batch(key, images, dict(plain, rot90_p=1.0)))
  turns = [_quarter_turns(t, b) for t, b in zip(turned, base)]
  assert all(k in (1, 2, 3) for k in turns) and len(set(turns)) > 1, turns
