"""Volume augmentations as pure JAX functions with explicit PRNG keys.

The 3D counterparts of `medssl_jax.augment.ops`, with the same contract: every random op works on ONE
volume `[D, H, W, C]` (any C >= 1) with float values in [0, 1], takes its key first and its strengths
as keyword-only static numbers, returns a volume of the same shape (except crops) and dtype clipped
to [0, 1], has no Python control flow on traced values (jit- and vmap-able), and short-circuits to the
identity when a strength or probability is a static zero. The resampler, the blur and the
apply-with-probability logic are those of `ops`, so the arithmetic is sharding-invariant in the same
way (no float reduction over voxels; fixed-order tap sums); `tests/test_augment3d.py` checks one
device against eight bit for bit.

Axes 0, 1, 2 are D, H, W (for CT / MRI in RAS-like order: axial slices along D). Intensity ops treat
all channels alike (one draw per volume).
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp

from medssl_jax.augment import ops

# Box proposals tried by `random_resized_crop` / `random_erasing` before their fallback (as 2D).
_BOX_ATTEMPTS = 10
_ALL_PLANES = ((1, 2), (0, 2), (0, 1))  # Axial (H, W), coronal (D, W), sagittal (D, H).


def _check_volume(volume, name: str):
  if volume.ndim != 4 or volume.shape[-1] < 1:
    raise ValueError(f"{name}: expected one volume [D, H, W, C], got shape {volume.shape}")
  if not jnp.issubdtype(volume.dtype, jnp.floating):
    raise ValueError(f"{name}: expected a float volume in [0, 1], got dtype {volume.dtype}")


def _cuboid_proposals(key, shape, *, scale, ratio, n: int):
  """[n, 3] cuboid extents (d, h, w): volume fraction ~ U(scale) of `shape`, h/d and w/d ~ logU(ratio)."""
  k_volume, k_ratio = jax.random.split(key)
  target = math.prod(shape) * jax.random.uniform(k_volume, (n,), minval=scale[0], maxval=scale[1])
  aspect = jnp.exp(jax.random.uniform(k_ratio, (n, 2), minval=math.log(ratio[0]),
                                      maxval=math.log(ratio[1])))
  d = jnp.cbrt(target / (aspect[:, 0] * aspect[:, 1]))
  return jnp.stack([d, aspect[:, 0] * d, aspect[:, 1] * d], axis=1)


# --------------------------------------------------------------------------------------------------
# Geometry.
# --------------------------------------------------------------------------------------------------


def random_resized_crop(key, volume, *, out_size: int, scale: Sequence[float] = (0.2, 1.0),
                        ratio: Sequence[float] = (3 / 4, 4 / 3)):
  """Random cuboid crop of the volume, resized to an (out_size,)*3 cube (trilinear, antialiased).

  The 3D `ops.random_resized_crop`: up to 10 proposals with volume fraction ~ U(scale) and aspect
  ratios h/d and w/d each ~ logU(ratio) (independently); the first that fits is placed uniformly at
  random, else the largest central box whose aspect ratios are within `ratio` is used. Extents are
  continuous; crop and resize are one separable resampling (`ops._resample_window`).

  Args:
    key: PRNG key.
    volume: float [D, H, W, C] in [0, 1].
    out_size: static side of the output cube.
    scale: (min, max) fraction of the volume covered by the crop.
    ratio: (min, max) range of each aspect ratio h/d and w/d.

  Returns:
    float [out_size, out_size, out_size, C] in [0, 1], same dtype as `volume`.
  """
  _check_volume(volume, "random_resized_crop")
  shape = volume.shape[:3]
  k_box, k_d, k_h, k_w = jax.random.split(key, 4)
  sizes = _cuboid_proposals(k_box, shape, scale=scale, ratio=ratio, n=_BOX_ATTEMPTS)
  # Largest box with both aspect ratios in range (static): d as large as the ratio floor allows
  # (h, w >= ratio[0] * d must fit), then h and w as large as the ratio ceiling allows.
  d_img, h_img, w_img = shape
  fb_d = min(d_img, h_img / ratio[0], w_img / ratio[0])
  fallback = (fb_d, min(h_img, ratio[1] * fb_d), min(w_img, ratio[1] * fb_d))
  starts, lengths = ops._place_box(sizes, fallback, shape, (k_d, k_h, k_w))
  return ops._resample_window(volume, out_size=out_size, starts=starts, lengths=lengths)


def center_resize(volume, *, out_size: int):
  """Deterministically resizes the whole volume to an (out_size,)*3 cube (trilinear, antialiased).

  The whole field of view is kept, so non-cubic volumes are stretched rather than cropped.
  """
  _check_volume(volume, "center_resize")
  return ops._resample_window(volume, out_size=out_size, starts=(jnp.float32(0),) * 3,
                              lengths=tuple(jnp.float32(n) for n in volume.shape[:3]))


def random_flip(key, volume, *, p: float = 0.5, axes: Sequence[int] = (0, 1, 2)):
  """Flips the volume along each axis in `axes` independently, each with probability p."""
  _check_volume(volume, "random_flip")
  for axis in axes:
    if axis not in (0, 1, 2):
      raise ValueError(f"random_flip: axes={tuple(axes)!r} must hold spatial axes 0 (D), 1 (H), 2 (W)")
  x = volume
  for axis in axes:
    x = ops._apply_with_prob(jax.random.fold_in(key, axis), p, lambda y, a=axis: jnp.flip(y, a), x)
  return x


def random_rot90(key, volume, *, p: float = 0.5, planes: Sequence[Sequence[int]] = _ALL_PLANES):
  """For each plane in `planes` in turn, with probability p, k * 90 degree turns in it, k ~ U{1, 2, 3}.

  A plane (a, b) turns like `jnp.rot90(volume, k, axes=(a, b))`; its two axes must have equal sizes
  (a jitted pipeline cannot change the shape per example), which a cubic crop always satisfies. The
  default turns in the axial, coronal and sagittal planes in that order; the composition reaches all
  24 orientations of the cube, though not uniformly. Pass `planes=((1, 2),)` for in-slice turns only
  (anisotropic volumes).
  """
  _check_volume(volume, "random_rot90")
  planes = tuple(tuple(int(a) for a in plane) for plane in planes)
  for plane in planes:
    if len(plane) != 2 or not set(plane) <= {0, 1, 2} or plane[0] == plane[1]:
      raise ValueError(f"random_rot90: planes={planes!r} must be pairs of distinct spatial axes in (0, 1, 2)")
    if volume.shape[plane[0]] != volume.shape[plane[1]]:
      raise ValueError(f"random_rot90: plane {plane} of a volume of shape {volume.shape} is not square "
                       f"(a quarter turn must keep the shape); crop to a cube or choose other planes")
  if ops._static_zero(p):
    return volume
  x = volume
  for i, plane in enumerate(planes):
    k_apply, k_turns = jax.random.split(jax.random.fold_in(key, i))
    turns = jax.random.randint(k_turns, (), 1, 4)  # 1, 2 or 3 quarter turns.
    branches = [lambda y, k=k, plane=plane: jnp.rot90(y, k, axes=plane) for k in (1, 2, 3)]
    x = ops._apply_with_prob(k_apply, p, lambda y, t=turns, b=branches: jax.lax.switch(t - 1, b, y), x)
  return x


# --------------------------------------------------------------------------------------------------
# Intensity.
# --------------------------------------------------------------------------------------------------


def random_intensity(key, volume, *, p: float = 0.8, scale: float = 0.2, shift: float = 0.1):
  """With probability p, x * f + o with f ~ U[1 - scale, 1 + scale] and o ~ U[-shift, shift], clipped.

  One (f, o) per volume. scale = shift = 0 (static) is the identity.
  """
  _check_volume(volume, "random_intensity")
  if ops._static_zero(scale) and ops._static_zero(shift):
    return volume
  k_apply, k_scale, k_shift = jax.random.split(key, 3)
  factor = jax.random.uniform(k_scale, minval=1.0 - scale, maxval=1.0 + scale)
  offset = jax.random.uniform(k_shift, minval=-shift, maxval=shift)
  return ops._apply_with_prob(k_apply, p, lambda x: ops._clip(x * factor + offset, x.dtype), volume)


def random_gamma(key, volume, *, p: float = 0.3, gamma: Sequence[float] = (0.7, 1.5)):
  """With probability p, x ** g with g ~ logU(gamma) (g < 1 brightens, g > 1 darkens; 0 and 1 stay).

  gamma = (1, 1) (static) is the identity.
  """
  _check_volume(volume, "random_gamma")
  if tuple(gamma) == (1, 1):
    return volume
  k_apply, k_gamma = jax.random.split(key)
  g = jnp.exp(jax.random.uniform(k_gamma, minval=math.log(gamma[0]), maxval=math.log(gamma[1])))
  return ops._apply_with_prob(k_apply, p, lambda x: ops._clip(jnp.power(x, g), x.dtype), volume)


def gaussian_noise(key, volume, *, p: float = 0.2, std: Sequence[float] = (0.0, 0.05)):
  """With probability p, adds N(0, s^2) noise per voxel with s ~ U(std), then clips.

  std = (0, 0) (static) is the identity.
  """
  _check_volume(volume, "gaussian_noise")
  if tuple(std) == (0, 0):
    return volume
  k_apply, k_std, k_noise = jax.random.split(key, 3)
  s = jax.random.uniform(k_std, minval=std[0], maxval=std[1])
  noise = jax.random.normal(k_noise, volume.shape, jnp.float32)
  return ops._apply_with_prob(k_apply, p, lambda x: ops._clip(x + s * noise, x.dtype), volume)


# --------------------------------------------------------------------------------------------------
# Filtering and occlusion.
# --------------------------------------------------------------------------------------------------


def gaussian_blur(key, volume, *, p: float = 0.5, sigma: Sequence[float] = (0.1, 1.0),
                  kernel_size: int | None = None):
  """Separable 3D Gaussian blur (three 1-D passes, D then H then W), sigma ~ U(sigma) voxels.

  The same kernel and reflect borders as `ops.gaussian_blur`, isotropic in voxels.

  Args:
    key: PRNG key.
    volume: float [D, H, W, C] in [0, 1].
    p: probability of blurring.
    sigma: (min, max) standard deviation in voxels.
    kernel_size: odd number of taps; None -> `ops.default_blur_kernel_size(min(D, H, W))`.
  """
  _check_volume(volume, "gaussian_blur")
  if kernel_size is None:
    kernel_size = ops.default_blur_kernel_size(min(volume.shape[:3]))
  return ops._separable_gaussian_blur(key, volume, p=p, sigma=sigma, kernel_size=kernel_size,
                                      axes=(0, 1, 2), name="gaussian_blur")


def random_erasing(key, volume, *, p: float = 0.25, scale: Sequence[float] = (0.02, 0.2),
                   ratio: Sequence[float] = (0.5, 2.0), value: float = 0.0, noise: bool = False):
  """With probability p, sets a random cuboid to `value` (or to U[0, 1] noise if `noise`).

  The cuboid is drawn like `random_resized_crop`'s box (volume fraction ~ U(scale), h/d and w/d ~
  logU(ratio), up to 10 proposals, uniform position); as torchvision's RandomErasing, nothing is erased
  when no proposal fits. A voxel is erased when its centre lies inside the (continuous) cuboid.

  Args:
    key: PRNG key.
    volume: float [D, H, W, C] in [0, 1].
    p: probability of erasing.
    scale: (min, max) fraction of the volume erased.
    ratio: (min, max) range of each aspect ratio h/d and w/d.
    value: fill value in [0, 1] (ignored with `noise`).
    noise: fill with independent U[0, 1] voxels instead of `value`.
  """
  _check_volume(volume, "random_erasing")
  if not 0.0 <= value <= 1.0:
    raise ValueError(f"random_erasing: value={value!r} must be in [0, 1] (volumes are in [0, 1])")
  if ops._static_zero(p):
    return volume
  shape = volume.shape[:3]
  k_apply, k_box, k_d, k_h, k_w, k_fill = jax.random.split(key, 6)
  sizes = _cuboid_proposals(k_box, shape, scale=scale, ratio=ratio, n=_BOX_ATTEMPTS)
  starts, lengths = ops._place_box(sizes, (0.0, 0.0, 0.0), shape, (k_d, k_h, k_w))
  inside = None
  for axis, (start, length) in enumerate(zip(starts, lengths)):
    view = [1, 1, 1, 1]
    view[axis] = shape[axis]
    centre = (jnp.arange(shape[axis], dtype=jnp.float32) + 0.5).reshape(view)
    axis_inside = (centre >= start) & (centre < start + length)
    inside = axis_inside if inside is None else inside & axis_inside
  if noise:
    fill = jax.random.uniform(k_fill, volume.shape, volume.dtype)
  else:
    fill = jnp.asarray(value, volume.dtype)
  return ops._apply_with_prob(k_apply, p, lambda x: jnp.where(inside, fill, x), volume)


def replace_background(key, volume, mask, *, p: float, mode: str = "swap", value: float = 0.0, donor=None,
                       donor_mask=None):
  """With probability p, keeps the foreground (mask) of `volume` and replaces its background: the volume
  counterpart of `ops.replace_background`, with the same modes ("swap": the background of `donor`, another
  volume of the batch, its own foreground filled with its shuffled background voxels; "constant": `value`;
  "noise": U[0, 1] per voxel and channel; "shuffle": this volume's background voxels in random order). A
  volume with an empty mask is left unchanged; foreground voxels are exactly the input's.

  Args:
    key: PRNG key.
    volume: float [D, H, W, C] in [0, 1].
    mask: [D, H, W] or [D, H, W, 1] foreground mask aligned with `volume` (see `ops.foreground`), e.g. the body
      outline of a CT (medssl_jax/data/masks.py `body_outline`).
    p: probability of replacing.
    mode: one of ops.BACKGROUNDS.
    value: the constant of mode "constant", in [0, 1].
    donor, donor_mask: the other volume and its mask, for mode "swap".
  """
  _check_volume(volume, "replace_background")
  return ops.replace_background_nd(key, volume, mask, p=p, mode=mode, value=value, donor=donor,
                                   donor_mask=donor_mask)
