"""Image augmentations as pure JAX functions with explicit PRNG keys.

Every random op works on ONE image `[H, W, C]` (C = 1 or 3) with values in [0, 1], takes its key as
the first argument and its strengths as keyword-only arguments, and returns an image of the same
shape (except crops) and dtype, clipped to [0, 1]. There is no Python control flow on traced values,
so every op can be jitted and vmapped over a batch of (key, image) pairs; batching and key splitting
live in `medssl_jax.augment.views`.

Strengths and probabilities are meant to be static Python numbers taken from a view config. When one
is a static zero the op short-circuits to the identity; this only skips work, the output is the same
bit-for-bit as the `jnp.where(apply, ..., image)` path it replaces.

Reproducibility under sharding: the random draws are sharding-invariant (partitionable threefry),
and the arithmetic avoids what XLA:CPU compiles differently for different per-device batch sizes:
no float `reduce` or dot over image pixels (sums are fixed-order elementwise adds, the resampler
gathers taps instead of using a weight-matrix einsum), and multi-step ops run as rolled loops so
each step is materialised once instead of being fused and recomputed (which is also much faster).
`tests/test_augment.py` checks one device against eight bit for bit.
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp

# ITU-R BT.601 luma, as used by PIL/torchvision `rgb_to_grayscale`.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)

# Number of proposals tried by `random_resized_crop` before falling back to a central crop; the same
# as torchvision, so crops with extreme scale/ratio ranges behave the same.
_CROP_ATTEMPTS = 10


def _check_image(image, name: str):
  if image.ndim != 3 or image.shape[-1] not in (1, 3):
    raise ValueError(
        f"{name}: expected one image [H, W, C] with C in (1, 3), got shape {image.shape}")
  if not jnp.issubdtype(image.dtype, jnp.floating):
    raise ValueError(f"{name}: expected a float image in [0, 1], got dtype {image.dtype}")


def _static_zero(x) -> bool:
  """True when `x` is a Python number equal to 0 (so the op can be skipped at trace time)."""
  return isinstance(x, (int, float)) and x == 0


def _apply_with_prob(key, p, fn, image):
  """Returns fn(image) with probability p, else image (both branches share shape/dtype)."""
  if _static_zero(p):
    return image
  apply = jax.random.uniform(key) < p
  return jnp.where(apply, fn(image), image)


def _clip(x, dtype):
  return jnp.clip(x, 0.0, 1.0).astype(dtype)


def _fixed_order_mean(x):
  """Mean of all elements, summed as a fixed pairwise tree of elementwise adds.

  XLA:CPU picks the accumulation order of a `reduce` (and of a dot) from the whole operand shape,
  batch dimension included, so a vmapped `jnp.mean` can differ in the last bit between a batch on
  one device and the same batch sharded over eight. Elementwise adds in a static order do not.
  """
  flat = x.astype(jnp.float32).reshape(-1)
  n = flat.shape[0]
  size = 1 << max(0, (n - 1).bit_length())
  flat = jnp.pad(flat, (0, size - n))  # Zeros do not change the sum.
  while flat.shape[0] > 1:
    half = flat.shape[0] // 2
    flat = flat[:half] + flat[half:]
  return flat[0] / n


# --------------------------------------------------------------------------------------------------
# Geometry.
# --------------------------------------------------------------------------------------------------


def _resample_axis(x, axis: int, *, out_size: int, start, length):
  """Antialiased linear resample of x[start : start + length] along `axis` to `out_size` samples.

  Same filter as `jax.image.scale_and_translate(..., method="linear", antialias=True)` (a triangle
  of half-width max(length / out_size, 1) input pixels, renormalised over the taps inside the
  image), but as a static number of gathered taps summed in a fixed order instead of a dense
  weight-matrix einsum: XLA:CPU picks the dot's accumulation order (and library) from the whole
  operand shape, batch included, so the einsum is not bit-reproducible across batch shardings.
  """
  in_size = x.shape[axis]
  # Static bound on the taps: the triangle covers < 2 * half_width + 1 pixels, and the crop is never
  # longer than the image.
  max_half_width = max(in_size / out_size, 1.0)
  num_taps = int(math.floor(2 * max_half_width)) + 2
  inv_scale = length / out_size
  half_width = jnp.maximum(inv_scale, 1.0)
  # Centre of each output pixel in input pixel-index coordinates (pixel i spans [i, i + 1)).
  centre = start + (jnp.arange(out_size, dtype=jnp.float32) + 0.5) * inv_scale - 0.5
  first = jnp.floor(centre - half_width) + 1  # Smallest index with non-zero weight.
  taps = first[:, None] + jnp.arange(num_taps, dtype=jnp.float32)[None, :]  # [out, taps]
  inside = (taps >= 0) & (taps <= in_size - 1)
  triangle = jnp.maximum(0.0, 1.0 - jnp.abs(taps - centre[:, None]) / half_width)
  weights = jnp.where(inside, triangle, 0.0)
  total = sum(weights[:, t] for t in range(num_taps))  # Fixed order, see `_fixed_order_mean`.
  weights = weights / total[:, None]
  index = jnp.clip(taps, 0, in_size - 1).astype(jnp.int32)
  shape = [1] * x.ndim
  shape[axis] = out_size

  def add_tap(t, acc):
    w_t = jax.lax.dynamic_index_in_dim(weights, t, axis=1, keepdims=False).reshape(shape)
    i_t = jax.lax.dynamic_index_in_dim(index, t, axis=1, keepdims=False)
    return acc + w_t * jnp.take(x, i_t, axis=axis)

  out_shape = list(x.shape)
  out_shape[axis] = out_size
  # A rolled loop over the taps: the sum order is fixed, and the result is materialised, so XLA
  # cannot fuse the gathers into later ops and recompute them per output channel.
  return jax.lax.fori_loop(0, num_taps, add_tap, jnp.zeros(out_shape, x.dtype))


def _resample_window(x, *, out_size: int, starts, lengths):
  """Resamples the window [starts[i], starts[i] + lengths[i]) of each leading axis i to out_size.

  One `_resample_axis` pass per axis (linear, antialiased: bilinear for images, trilinear for volumes);
  the trailing axes (channels) are untouched. Returns float values clipped to [0, 1], in x's dtype.
  """
  y = x.astype(jnp.float32)
  for axis, (start, length) in enumerate(zip(starts, lengths)):
    y = _resample_axis(y, axis, out_size=out_size, start=start, length=length)
  return _clip(y, x.dtype)


def _resample(image, *, out_size: int, top, left, height, width):
  """Bilinear (antialiased) resample of the window [top, top+h) x [left, left+w) to out_size^2."""
  return _resample_window(image, out_size=out_size, starts=(top, left), lengths=(height, width))


def _place_box(sizes, fallback, shape, position_keys):
  """Picks the first proposed box that fits in `shape` and places it uniformly at random.

  Args:
    sizes: [n, ndim] proposed box extents (continuous), one row per proposal.
    fallback: static extents used, centred, when no proposal fits.
    shape: the static extents of the array the box lies in.
    position_keys: one PRNG key per axis for the box's position.

  Returns:
    (starts, lengths): per-axis lists of traced scalars, with the box inside [0, shape[i]].
  """
  # A relative tolerance so that a full-size proposal (equal to the extent up to float rounding in
  # sqrt / cbrt) counts as fitting instead of falling back.
  fits = functools.reduce(
      jnp.logical_and, [sizes[:, i] <= n * (1 + 1e-5) for i, n in enumerate(shape)])
  first = jnp.argmax(fits)
  any_fit = jnp.any(fits)
  starts, lengths = [], []
  for i, n in enumerate(shape):
    length = jnp.minimum(jnp.where(any_fit, sizes[first, i], fallback[i]), n)
    u = jnp.where(any_fit, jax.random.uniform(position_keys[i]), 0.5)
    starts.append(u * (n - length))
    lengths.append(length)
  return starts, lengths


def random_resized_crop(key, image, *, out_size: int, scale: Sequence[float] = (0.08, 1.0),
                        ratio: Sequence[float] = (3 / 4, 4 / 3)):
  """Inception-style random crop of the image, resized to (out_size, out_size).

  Like torchvision's RandomResizedCrop: propose up to 10 boxes with area fraction ~ U(scale) and
  aspect ratio (w/h) ~ logU(ratio); take the first that fits inside the image at a uniformly random
  position, else fall back to the largest central box whose aspect ratio is within `ratio`. All
  proposals are drawn at once (static shapes). Box sizes are continuous (sub-pixel) rather than
  rounded; the crop and the antialiased bilinear resize are one separable resampling (the filter of
  `jax.image.scale_and_translate`, computed so that it is bit-reproducible under any sharding).

  Args:
    key: PRNG key.
    image: float [H, W, C] in [0, 1].
    out_size: static output side.
    scale: (min, max) fraction of the image area covered by the crop.
    ratio: (min, max) aspect ratio width / height of the crop.

  Returns:
    float [out_size, out_size, C] in [0, 1], same dtype as `image`.
  """
  _check_image(image, "random_resized_crop")
  h_img, w_img = image.shape[0], image.shape[1]
  area = float(h_img * w_img)
  k_area, k_ratio, k_top, k_left = jax.random.split(key, 4)
  n = _CROP_ATTEMPTS
  target_area = area * jax.random.uniform(k_area, (n,), minval=scale[0], maxval=scale[1])
  log_ratio = jax.random.uniform(
      k_ratio, (n,), minval=math.log(ratio[0]), maxval=math.log(ratio[1]))
  aspect = jnp.exp(log_ratio)
  w = jnp.sqrt(target_area * aspect)
  h = jnp.sqrt(target_area / aspect)

  # Fallback box, computed statically from the image shape (as torchvision).
  in_ratio = w_img / h_img
  if in_ratio < min(ratio):
    fb_w, fb_h = float(w_img), w_img / min(ratio)
  elif in_ratio > max(ratio):
    fb_h, fb_w = float(h_img), h_img * max(ratio)
  else:
    fb_w, fb_h = float(w_img), float(h_img)

  (top, left), (crop_h, crop_w) = _place_box(jnp.stack([h, w], axis=1), (fb_h, fb_w), (h_img, w_img),
                                             (k_top, k_left))
  return _resample(image, out_size=out_size, top=top, left=left, height=crop_h, width=crop_w)


def center_resize(image, *, out_size: int):
  """Deterministically resizes the whole image to (out_size, out_size) (bilinear, antialiased).

  The whole field of view is kept, so non-square images are stretched rather than cropped.
  """
  _check_image(image, "center_resize")
  return _resample(image, out_size=out_size, top=jnp.float32(0), left=jnp.float32(0),
                   height=jnp.float32(image.shape[0]), width=jnp.float32(image.shape[1]))


def random_flip(key, image, *, p: float = 0.5):
  """Flips the image horizontally (along W) with probability p."""
  _check_image(image, "random_flip")
  return _apply_with_prob(key, p, lambda x: x[:, ::-1, :], image)


def random_vflip(key, image, *, p: float = 0.5):
  """Flips the image vertically (along H) with probability p (for data without an up direction)."""
  _check_image(image, "random_vflip")
  return _apply_with_prob(key, p, lambda x: x[::-1, :, :], image)


def random_rot90(key, image, *, p: float = 0.5):
  """With probability p, rotates a square image by k * 90 degrees, k uniform in {1, 2, 3}.

  k counts counter-clockwise quarter turns (`jnp.rot90(image, k, axes=(0, 1))`). With p = 0.75 every
  one of the four orientations is equally likely. Only square images [S, S, C]: a quarter turn of a
  non-square image would change its shape, which a jitted/vmapped pipeline cannot do per example.
  """
  _check_image(image, "random_rot90")
  if image.shape[0] != image.shape[1]:
    raise ValueError(f"random_rot90: expected a square image [S, S, C] (a quarter turn must keep the shape), "
                     f"got shape {image.shape}")
  if _static_zero(p):
    return image
  k_apply, k_turns = jax.random.split(key)
  turns = jax.random.randint(k_turns, (), 1, 4)  # 1, 2 or 3 quarter turns.
  branches = [lambda x, k=k: jnp.rot90(x, k, axes=(0, 1)) for k in (1, 2, 3)]
  return _apply_with_prob(k_apply, p, lambda x: jax.lax.switch(turns - 1, branches, x), image)


# --------------------------------------------------------------------------------------------------
# Colour.
# --------------------------------------------------------------------------------------------------


def to_grayscale(image):
  """Luma [H, W, 1] of an RGB image (identity for a 1-channel image)."""
  if image.shape[-1] == 1:
    return image
  x = image.astype(jnp.float32)
  # Explicit adds rather than a channel reduction: their order is fixed, see `_fixed_order_mean`.
  wr, wg, wb = LUMA_WEIGHTS
  gray = wr * x[..., 0:1] + wg * x[..., 1:2] + wb * x[..., 2:3]
  return gray.astype(image.dtype)


def adjust_brightness(image, factor):
  """image * factor, clipped (torchvision semantics)."""
  return _clip(image * factor, image.dtype)


def adjust_contrast(image, factor):
  """Blends the image with the mean of its grayscale: factor 0 -> flat grey, 1 -> unchanged."""
  mean = _fixed_order_mean(to_grayscale(image))
  # Blend form (rather than (x - m) * f + m) so that factor 1 returns the input exactly.
  return _clip(factor * image + (1 - factor) * mean, image.dtype)


def adjust_saturation(image, factor):
  """Blends an RGB image with its grayscale: factor 0 -> grayscale, 1 -> unchanged."""
  return _clip(factor * image + (1 - factor) * to_grayscale(image), image.dtype)


def _frac(x):
  """x mod 1 via floor (cheaper than jnp.mod's fmod, same result for these ranges)."""
  return x - jnp.floor(x)


def _hue_chroma_value(r, g, b):
  """(hue in turns, chroma = max - min, value = max) of RGB planes, with one division."""
  # Elementwise max/min rather than a channel reduction, which XLA fuses with its consumers.
  v = jnp.maximum(jnp.maximum(r, g), b)
  chroma = v - jnp.minimum(jnp.minimum(r, g), b)
  # Sector from channel comparisons (the ties of colorsys: r first, then g), not from `v == r`: if
  # XLA computes v and r in different fusions they may differ in the last bit, and a failed equality
  # would pick the wrong sector (a large error rather than a rounding one).
  r_is_max = (r >= g) & (r >= b)
  g_is_max = ~r_is_max & (g >= b)
  base = jnp.where(r_is_max, 0.0, jnp.where(g_is_max, 2.0, 4.0))
  num = jnp.where(r_is_max, g - b, jnp.where(g_is_max, b - r, r - g))
  h = _frac((base + num / jnp.where(chroma > 0, chroma, 1)) / 6.0)
  return jnp.where(chroma > 0, h, 0.0), chroma, v


def _hue_chroma_value_to_rgb(h, chroma, v):
  # Branch-free form: channel_n = v - chroma clip(min(k, 4 - k), 0, 1), k = (n + 6 h) mod 6; h is in
  # [0, 1], so one exact subtraction does the mod.
  def channel(n):
    k = n + 6.0 * h
    k = jnp.where(k >= 6.0, k - 6.0, k)
    return v - chroma * jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0)
  return channel(5.0), channel(3.0), channel(1.0)


def rgb_to_hsv(rgb):
  """[..., 3] RGB in [0, 1] -> HSV in [0, 1] (hue as a fraction of a turn); branch-free."""
  h, chroma, v = _hue_chroma_value(rgb[..., 0], rgb[..., 1], rgb[..., 2])
  s = jnp.where(v > 0, chroma / jnp.where(v > 0, v, 1), 0.0)
  return jnp.stack([h, s, v], axis=-1)


def hsv_to_rgb(hsv):
  """Inverse of `rgb_to_hsv`."""
  h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
  return jnp.stack(_hue_chroma_value_to_rgb(h, v * s, v), axis=-1)


def adjust_hue(image, delta):
  """Rotates the hue of an RGB image by `delta` turns (HSV rotation; 0 and +-1 are no-ops).

  Works on (hue, chroma, value) rather than (hue, saturation, value): the same colours, without the
  saturation division and its rounding.
  """
  x = image.astype(jnp.float32)
  h, chroma, v = _hue_chroma_value(x[..., 0], x[..., 1], x[..., 2])
  rgb = _hue_chroma_value_to_rgb(_frac(h + delta), chroma, v)
  return _clip(jnp.stack(rgb, axis=-1), image.dtype)


def color_jitter(key, image, *, brightness: float, contrast: float, saturation: float, hue: float,
                 p: float = 0.8, grayscale_safe: bool = False):
  """SimCLR / torchvision ColorJitter, applied with probability p, ops in a random order.

  Factors for brightness, contrast and saturation are drawn from U[max(0, 1 - s), 1 + s]; the hue
  shift from U[-hue, hue] turns and applied as an HSV hue rotation (not a YIQ rotation), as in
  torchvision and tf.image.adjust_hue. The ops run in a random permutation per call (per image
  under vmap), each step picked with `lax.switch`. Each op clips to [0, 1], as torchvision does.

  `grayscale_safe=True` (X-ray, ultrasound, ...) applies only brightness and contrast: saturation
  and hue are ignored. Single-channel images have no colour, so they always get this behaviour,
  whatever `grayscale_safe` says (this is automatic, not an error).

  Args:
    key: PRNG key.
    image: float [H, W, C] in [0, 1].
    brightness, contrast, saturation: strengths s >= 0 (0 disables the op).
    hue: maximum hue shift in turns, in [0, 0.5] (0 disables the op).
    p: probability of applying the jitter at all.
    grayscale_safe: only brightness and contrast.

  Returns:
    The jittered image, same shape and dtype, in [0, 1].
  """
  _check_image(image, "color_jitter")
  if image.shape[-1] == 1:
    grayscale_safe = True
  k_apply, k_order, k_b, k_c, k_s, k_h = jax.random.split(key, 6)

  def factor(k, s):
    return jax.random.uniform(k, minval=max(0.0, 1.0 - s), maxval=1.0 + s)

  # Cheap linear ops first; hue, the expensive one, is kept apart (see `jitter`).
  linear_ops = []
  for k, s, fn in ((k_b, brightness, adjust_brightness), (k_c, contrast, adjust_contrast)):
    if not _static_zero(s):
      linear_ops.append(lambda x, f=factor(k, s), fn=fn: fn(x, f))
  use_hue = False
  if not grayscale_safe:
    if not _static_zero(saturation):
      linear_ops.append(lambda x, f=factor(k_s, saturation): adjust_saturation(x, f))
    use_hue = not _static_zero(hue)
  hue_shift = jax.random.uniform(k_h, minval=-hue, maxval=hue) if use_hue else None
  num_ops = len(linear_ops) + int(use_hue)
  if num_ops == 0:
    return image

  def jitter(x):
    # Op j of the random order is order[j]; index len(linear_ops) is hue. Under vmap a switch runs
    # every branch, so a plain loop of switches would pay for the HSV round trip at every step.
    # Instead: the linear ops that come before hue (masked loop), hue once, then those after it.
    # Loops are rolled so XLA materialises each step instead of fusing and recomputing the chain.
    order = jax.random.permutation(k_order, num_ops)
    hue_pos = jnp.argmax(order == len(linear_ops)) if use_hue else num_ops
    branches = linear_ops + ([lambda y: y] if use_hue else [])

    def run_linear(y, active):
      if not linear_ops:
        return y
      def step(i, y):
        return jnp.where(active(i), jax.lax.switch(order[i], branches, y), y)
      return jax.lax.fori_loop(0, num_ops, step, y)

    x = run_linear(x, lambda i: i < hue_pos)
    if use_hue:
      x = adjust_hue(x, hue_shift)
      x = run_linear(x, lambda i: i > hue_pos)
    return x

  return _apply_with_prob(k_apply, p, jitter, image)


def random_grayscale(key, image, *, p: float = 0.2):
  """Replaces the image by its luma (repeated over the C channels) with probability p."""
  _check_image(image, "random_grayscale")
  return _apply_with_prob(key, p, lambda x: jnp.broadcast_to(to_grayscale(x), x.shape), image)


# --------------------------------------------------------------------------------------------------
# Filtering and pixel maps.
# --------------------------------------------------------------------------------------------------


def default_blur_kernel_size(side: int) -> int:
  """~10% of the image side, odd and at least 3 (SimCLR's rule: 23 taps for 224 px)."""
  k = max(3, int(round(0.1 * side)))
  return k if k % 2 == 1 else k + 1


def gaussian_blur(key, image, *, p: float = 0.5, sigma: Sequence[float] = (0.1, 2.0),
                  kernel_size: int | None = None):
  """Separable Gaussian blur with sigma ~ U(sigma) pixels, applied with probability p.

  The kernel has a static number of taps and weights computed from the traced sigma (normalised to
  sum 1), so it vmaps with a different sigma per image. Borders use reflect padding.

  Args:
    key: PRNG key.
    image: float [H, W, C] in [0, 1].
    p: probability of blurring.
    sigma: (min, max) standard deviation in pixels.
    kernel_size: odd number of taps; None -> `default_blur_kernel_size(min(H, W))`.
  """
  _check_image(image, "gaussian_blur")
  if kernel_size is None:
    kernel_size = default_blur_kernel_size(min(image.shape[:2]))
  return _separable_gaussian_blur(key, image, p=p, sigma=sigma, kernel_size=kernel_size, axes=(0, 1),
                                  name="gaussian_blur")


def _separable_gaussian_blur(key, x, *, p, sigma, kernel_size: int, axes: Sequence[int], name: str):
  """`gaussian_blur` of any rank: one 1-D pass per axis in `axes`, all with the same drawn sigma."""
  if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 != 1:
    raise ValueError(f"{name}: kernel_size must be a positive odd int, got {kernel_size}")
  if _static_zero(p):
    return x
  k_apply, k_sigma = jax.random.split(key)
  s = jax.random.uniform(k_sigma, minval=sigma[0], maxval=sigma[1])
  radius = kernel_size // 2
  offsets = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  weights = jnp.exp(-0.5 * jnp.square(offsets / s))
  # Fixed-order normalisation, see `_fixed_order_mean`.
  weights = weights / sum(weights[i] for i in range(kernel_size))

  def blur_axis(y, axis):
    n = y.shape[axis]
    pad = [(0, 0)] * y.ndim
    pad[axis] = (radius, radius)
    yp = jnp.pad(y, pad, mode="reflect")

    def add_tap(t, acc):
      return acc + weights[t] * jax.lax.dynamic_slice_in_dim(yp, t, n, axis=axis)

    # Rolled loop over the taps: fixed sum order, and the pass is materialised rather than fused
    # (and recomputed) into the next pass and later ops.
    return jax.lax.fori_loop(0, kernel_size, add_tap, jnp.zeros_like(y))

  def blur(y):
    out = y.astype(jnp.float32)
    for axis in axes:
      out = blur_axis(out, axis)
    return _clip(out, y.dtype)

  return _apply_with_prob(k_apply, p, blur, x)


def solarize(key, image, *, p: float = 0.2, threshold: float = 0.5):
  """With probability p, inverts pixels strictly above `threshold` (x -> 1 - x)."""
  _check_image(image, "solarize")
  return _apply_with_prob(key, p, lambda x: jnp.where(x > threshold, 1 - x, x), image)


# --------------------------------------------------------------------------------------------------
# Background (Ryali et al. 2021, "Characterizing and improving the robustness of self-supervised
# learning through background augmentations").
# --------------------------------------------------------------------------------------------------

# How `replace_background` fills the background: another image's background, a constant, uniform noise,
# or this image's own background pixels in random order (its intensity histogram without its layout).
BACKGROUNDS = ("swap", "constant", "noise", "shuffle")


def foreground(mask, *, spatial: int = 2):
  """A mask [H, W] or [H, W, 1] (bool, integer: non-zero is inside, or float: > 0.5 is inside) as bool
  [H, W, 1]; with spatial=3, a volume's mask [D, H, W(, 1)] as bool [D, H, W, 1]."""
  if mask.ndim == spatial + 1 and mask.shape[-1] == 1:
    mask = mask[..., 0]
  if mask.ndim != spatial:
    axes = "D, H, W" if spatial == 3 else "H, W"
    raise ValueError(f"replace_background: expected one mask [{axes}] or [{axes}, 1], got shape {mask.shape}")
  inside = mask > 0.5 if jnp.issubdtype(mask.dtype, jnp.floating) else mask != 0
  return inside[..., None]


def shuffled_background(key, image, inside):
  """This image's background pixels (where `inside` is False) in a random order, tiled over the whole
  image; the image itself where it has no background. `image`: [..., C] (an image [H, W, C] or a volume
  [D, H, W, C]); `inside`: bool of the same shape with one channel."""
  c = image.shape[-1]
  n = math.prod(image.shape[:-1])
  flat, fg = image.reshape(n, c), inside.reshape(n)
  # Background pixels first, in random order: a sort key of 0 + u for background, 1 + u for foreground.
  order = jnp.argsort(fg.astype(jnp.float32) + jax.random.uniform(key, (n,), maxval=0.5))
  n_bg = jnp.sum(~fg, dtype=jnp.int32)  # An integer count: exact in any order.
  picked = flat[order[jnp.arange(n) % jnp.maximum(n_bg, 1)]]
  return jnp.where(n_bg > 0, picked, flat).reshape(image.shape)


def replace_background(key, image, mask, *, p: float, mode: str = "swap", value: float = 0.0, donor=None,
                       donor_mask=None):
  """With probability p, keeps the foreground (mask) of `image` and replaces its background.

  mode "swap": the background of `donor` (another image of the batch, same shape), whose own foreground
  is filled with its shuffled background pixels so no second foreground appears; "constant": `value`;
  "noise": U[0, 1] per pixel and channel; "shuffle": this image's background pixels in random order.
  An image whose mask is empty (no foreground found) is left unchanged. The composite is a `where`, so
  foreground pixels are exactly the input's.

  Args:
    key: PRNG key.
    image: float [H, W, C] in [0, 1].
    mask: [H, W] or [H, W, 1] foreground mask aligned with `image` (see `foreground`).
    p: probability of replacing.
    mode: one of BACKGROUNDS.
    value: the constant of mode "constant", in [0, 1].
    donor, donor_mask: the other image and its mask, for mode "swap".
  """
  _check_image(image, "replace_background")
  return replace_background_nd(key, image, mask, p=p, mode=mode, value=value, donor=donor, donor_mask=donor_mask)


def replace_background_nd(key, image, mask, *, p: float, mode: str, value: float, donor=None, donor_mask=None):
  """`replace_background`'s work for an image [H, W, C] or a volume [D, H, W, C] (`ops3d.replace_background`),
  whose rank and dtype the caller has checked; masks are [spatial...] or [spatial..., 1] (see `foreground`)."""
  spatial = image.ndim - 1
  if mode not in BACKGROUNDS:
    raise ValueError(f"replace_background: mode={mode!r}; choose one of {list(BACKGROUNDS)}")
  inside = foreground(mask, spatial=spatial)
  if inside.shape[:-1] != image.shape[:-1]:
    what = "volume" if spatial == 3 else "image"
    raise ValueError(f"replace_background: mask {mask.shape} does not match {what} {image.shape}")
  if mode == "swap" and (donor is None or donor_mask is None or donor.shape != image.shape):
    raise ValueError("replace_background: mode 'swap' needs a donor of the same shape and its mask")
  if _static_zero(p):
    return image
  k_apply, k_fill, k_donor = jax.random.split(key, 3)
  if mode == "constant":
    background = jnp.full_like(image, value)
  elif mode == "noise":
    background = jax.random.uniform(k_fill, image.shape, image.dtype)
  elif mode == "shuffle":
    background = shuffled_background(k_fill, image, inside)
  else:
    donor_inside = foreground(donor_mask, spatial=spatial)
    background = jnp.where(donor_inside, shuffled_background(k_donor, donor, donor_inside), donor)
  apply = (jax.random.uniform(k_apply) < p) & jnp.any(inside)
  return jnp.where(apply & ~inside, background.astype(image.dtype), image)


def normalize(image, *, mean, std):
  """(image - mean) / std with per-channel (broadcastable) mean and std; output is not clipped."""
  mean = jnp.asarray(mean, image.dtype)
  std = jnp.asarray(std, image.dtype)
  return (image - mean) / std
