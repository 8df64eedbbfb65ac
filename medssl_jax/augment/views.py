"""View policies: batched, keyed augmentation pipelines built from `medssl_jax.augment.ops`.

A view policy is a flat ConfigDict (or dict) of static strengths. `augment_batch` turns one key and
a batch of images into one augmented view of the batch, vmapping the per-image pipeline

    background -> crop -> flip -> vflip -> rot90 -> color_jitter -> grayscale -> blur -> solarize

with one key per example (op i of an example uses fold_in(example_key, i), so adding an op later
leaves the others' randomness unchanged; vflip, rot90 and background have indices 6, 7 and 8 and do
no work at probability 0, so policies without them give the same views bit for bit).

Background augmentation (`background_p` > 0) needs a foreground mask per image, aligned with it
(`augment_batch(..., masks=...)`; in training, the batch's "foreground" from config.augment.mask_key or
config.augment.derived_mask). It runs first, on the whole image, so the crop and the other ops treat the
new background like the rest of the image. Mode "swap" takes its background from another image of the
batch: all images are paired with the one `shift` places further on (one shift per batch, drawn from the
batch key).
Everything is jit-able and works on global arrays sharded over the batch axis; the result does not
depend on the sharding (the random draws use partitionable threefry, and `ops` keeps the arithmetic
sharding-invariant too; see its module docstring).

Volumes: a batch [B, D, H, W, C] takes a 3D view policy (`default_view3d`, `validate_view3d`) and the
per-volume pipeline of `medssl_jax.augment.ops3d`

    background -> crop -> flip -> rot90 -> intensity -> gamma -> blur -> noise -> erase

with the same per-example keying (background has index 8) and the same background modes and donor pairing,
on masks [B, D, H, W(, 1)] (e.g. the body outline, `config.augment.derived_mask = "body_outline"`).
`augment_batch`, `make_views` and `eval_view` take either rank: a rank-5 batch is a batch of volumes, and its
policy is validated as a 3D one.
"""
from __future__ import annotations

import functools
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections

from medssl_jax.augment import ops, ops3d

# SimCLR-style defaults (crop scale lower bound 0.2 as in MoCo v2, kinder to small images).
_DEFAULTS = dict(
    crop_size=64,
    crop_scale=(0.2, 1.0),
    crop_ratio=(3 / 4, 4 / 3),
    flip_p=0.5,
    vflip_p=0.0,  # Vertical flip and quarter turns: for data without an orientation (microscopy).
    rot90_p=0.0,  # Probability of a k * 90 degree turn, k uniform in {1, 2, 3}.
    jitter_p=0.8,
    brightness=0.4,
    contrast=0.4,
    saturation=0.4,
    hue=0.1,
    grayscale_p=0.2,
    blur_p=0.5,
    blur_sigma=(0.1, 2.0),
    blur_kernel_size=None,  # None: ~10% of crop_size, odd (ops.default_blur_kernel_size).
    solarize_p=0.0,
    solarize_threshold=0.5,
    grayscale_safe=False,
    background_p=0.0,  # Probability of replacing the background (needs foreground masks, see above).
    background="swap",  # ops.BACKGROUNDS: "swap", "constant", "noise" or "shuffle".
    background_value=0.0,  # The fill of background="constant", in [0, 1].
)
VALID_KEYS = tuple(_DEFAULTS)
# View keys added after view policies were first saved in workdirs (config.json) and table-row hashes, with the
# value that keeps the old behaviour. `strip_later_defaults` removes them at that value, so a config holding
# them there is the same run as one written before they existed (resume and cached rows stay valid).
LATER_KEYS = {"vflip_p": 0.0, "rot90_p": 0.0, "background_p": 0.0, "background": "swap", "background_value": 0.0}


def strip_later_defaults(obj):
  """A JSON-like copy of `obj` (a config as dicts / lists) in which every view policy (a dict with
  'crop_size' and 'flip_p') lacks the LATER_KEYS that hold their old-behaviour value."""
  if isinstance(obj, dict):
    is_view = "crop_size" in obj and "flip_p" in obj
    return {k: strip_later_defaults(v) for k, v in obj.items()
            if not (is_view and k in LATER_KEYS and v == LATER_KEYS[k])}
  if isinstance(obj, (list, tuple)):
    return [strip_later_defaults(v) for v in obj]
  return obj

# Fixed per-op indices for fold_in: adding or removing an op never changes the others' randomness.
(_OP_CROP, _OP_FLIP, _OP_JITTER, _OP_GRAYSCALE, _OP_BLUR, _OP_SOLARIZE, _OP_VFLIP, _OP_ROT90,
 _OP_BACKGROUND) = range(9)
_BATCH_DONOR_SHIFT = 0x646F6E6F  # fold_in of the batch key that draws the "swap" pairing.


def default_view(**overrides) -> ml_collections.ConfigDict:
  """SimCLR default view policy, with `overrides` applied and validated."""
  return validate_view(dict(_DEFAULTS, **overrides))


def _is_number(x) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool)


def _check_prob(cfg, name, what="view config"):
  v = cfg[name]
  if not _is_number(v) or not 0.0 <= v <= 1.0:
    raise ValueError(f"{what}: {name}={v!r} must be a probability in [0, 1]")


def _check_range(cfg, name, *, lo_min, hi_max=None, lo_inclusive=False, what="view config"):
  v = cfg[name]
  ok = isinstance(v, (tuple, list)) and len(v) == 2 and all(_is_number(x) for x in v)
  if ok:
    lo, hi = v
    ok = (lo >= lo_min if lo_inclusive else lo > lo_min) and lo <= hi
    ok = ok and (hi_max is None or hi <= hi_max)
  if not ok:
    bound = f"{'[' if lo_inclusive else '('}{lo_min}, {hi_max if hi_max is not None else 'inf'}]"
    raise ValueError(f"{what}: {name}={v!r} must be an ordered pair (lo, hi) with lo <= hi, "
                     f"both in {bound}")


def validate_view(cfg: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """Checks a view policy and returns it completed with defaults, as a new ConfigDict.

  Missing keys take their `default_view()` value, so partial dicts are accepted.

  Raises:
    ValueError: naming the offending key, for an unknown key (listing the valid keys) or an
      out-of-range value.
  """
  given = cfg.to_dict() if isinstance(cfg, ml_collections.ConfigDict) else dict(cfg)
  unknown = sorted(set(given) - set(VALID_KEYS))
  if unknown:
    raise ValueError(f"view config: unknown key(s) {unknown}; valid keys are {list(VALID_KEYS)}")
  c = dict(_DEFAULTS, **given)

  size = c["crop_size"]
  if not isinstance(size, int) or isinstance(size, bool) or size < 1:
    raise ValueError(f"view config: crop_size={size!r} must be a positive int")
  _check_range(c, "crop_scale", lo_min=0.0, hi_max=1.0)
  _check_range(c, "crop_ratio", lo_min=0.0)
  for name in ("flip_p", "vflip_p", "rot90_p", "jitter_p", "grayscale_p", "blur_p", "solarize_p",
               "solarize_threshold"):
    _check_prob(c, name)
  for name in ("brightness", "contrast", "saturation"):
    if not _is_number(c[name]) or c[name] < 0:
      raise ValueError(f"view config: {name}={c[name]!r} must be a number >= 0")
  if not _is_number(c["hue"]) or not 0.0 <= c["hue"] <= 0.5:
    raise ValueError(f"view config: hue={c['hue']!r} must be in [0, 0.5] (turns)")
  _check_range(c, "blur_sigma", lo_min=0.0)
  ks = c["blur_kernel_size"]
  if ks is not None and (not isinstance(ks, int) or isinstance(ks, bool) or ks < 1 or ks % 2 == 0):
    raise ValueError(f"view config: blur_kernel_size={ks!r} must be None or a positive odd int")
  if not isinstance(c["grayscale_safe"], bool):
    raise ValueError(f"view config: grayscale_safe={c['grayscale_safe']!r} must be a bool")
  _check_background(c, "view config")
  for name in ("crop_scale", "crop_ratio", "blur_sigma"):
    c[name] = tuple(float(x) for x in c[name])
  return ml_collections.ConfigDict(c)


def _check_background(c, what: str) -> None:
  _check_prob(c, "background_p", what)
  if c["background"] not in ops.BACKGROUNDS:
    raise ValueError(f"{what}: background={c['background']!r}; choose one of {list(ops.BACKGROUNDS)}")
  if not _is_number(c["background_value"]) or not 0.0 <= c["background_value"] <= 1.0:
    raise ValueError(f"{what}: background_value={c['background_value']!r} must be a number in [0, 1]")


def to_float_images(images):
  """uint8 -> float32 / 255; float -> float32 (assumed already in [0, 1])."""
  if images.ndim != 4:
    raise ValueError(f"expected a batch of images [B, H, W, C] (or volumes [B, D, H, W, C] where "
                     f"volumes are accepted), got shape {images.shape}")
  return _to_float(images)


def to_float_volumes(volumes):
  """`to_float_images` for a batch of volumes [B, D, H, W, C]."""
  if volumes.ndim != 5:
    raise ValueError(f"expected a batch of volumes [B, D, H, W, C], got shape {volumes.shape}")
  return _to_float(volumes)


def _to_float(x):
  if jnp.issubdtype(x.dtype, jnp.integer):
    if x.dtype != jnp.uint8:
      raise ValueError(f"integer images must be uint8, got {x.dtype}")
    return x.astype(jnp.float32) / 255.0
  return x.astype(jnp.float32)


def uses_background(view_cfg) -> bool:
  """Whether a view policy (2D or 3D) replaces backgrounds, and so needs foreground masks."""
  return view_cfg.get("background_p", 0.0) != 0


def augment_image(key, image, view_cfg, *, mask=None, donor=None, donor_mask=None):
  """The per-image pipeline background -> crop -> flip -> vflip -> rot90 -> jitter -> grayscale -> blur ->
  solarize.

  Args:
    key: PRNG key for this image; op i uses fold_in(key, i) with a fixed index per op.
    image: float32 [H, W, C] in [0, 1].
    view_cfg: a *validated* view policy (see `validate_view`).
    mask, donor, donor_mask: this image's foreground mask, and another image with its mask (background
      "swap"); needed only when the policy's background_p > 0 (see `ops.replace_background`).
  """
  c = view_cfg
  sub = lambda i: jax.random.fold_in(key, i)
  if uses_background(c):
    image = ops.replace_background(sub(_OP_BACKGROUND), image, mask, p=c.background_p, mode=c.background,
                                   value=c.background_value, donor=donor, donor_mask=donor_mask)
  x = ops.random_resized_crop(sub(_OP_CROP), image, out_size=c.crop_size, scale=c.crop_scale,
                              ratio=c.crop_ratio)
  x = ops.random_flip(sub(_OP_FLIP), x, p=c.flip_p)
  x = ops.random_vflip(sub(_OP_VFLIP), x, p=c.vflip_p)
  x = ops.random_rot90(sub(_OP_ROT90), x, p=c.rot90_p)  # The crop is square, as rot90 needs.
  x = ops.color_jitter(sub(_OP_JITTER), x, brightness=c.brightness, contrast=c.contrast,
                       saturation=c.saturation, hue=c.hue, p=c.jitter_p,
                       grayscale_safe=c.grayscale_safe)
  x = ops.random_grayscale(sub(_OP_GRAYSCALE), x, p=c.grayscale_p)
  x = ops.gaussian_blur(sub(_OP_BLUR), x, p=c.blur_p, sigma=c.blur_sigma,
                        kernel_size=c.blur_kernel_size)
  x = ops.solarize(sub(_OP_SOLARIZE), x, p=c.solarize_p, threshold=c.solarize_threshold)
  return x


def augment_batch(key, images, view_cfg, *, masks=None):
  """One augmented view of a batch of images or of volumes.

  The work is a jitted function with the validated policy as a static argument, so calling this
  outside `jax.jit` compiles once per (policy, shape) instead of dispatching op by op; inside an
  outer jit it is simply inlined.

  Args:
    key: PRNG key (typed or raw uint32); split into one key per example.
    images: [B, H, W, C] images (C in (1, 3)) or [B, D, H, W, C] volumes, uint8 (scaled by 1/255)
      or float in [0, 1]. May be a global array sharded over the batch axis.
    view_cfg: view policy (ConfigDict or dict; missing keys take defaults): a 2D one
      (`validate_view`) for images, a 3D one (`validate_view3d`) for volumes.
    masks: foreground masks [B, H, W(, 1)] aligned with `images` (see `ops.foreground`), or [B, D, H, W(, 1)]
      with volumes, needed by a policy with background_p > 0 and ignored otherwise.

  Returns:
    float32 [B, crop_size, crop_size, C] (images) or [B, crop_size, crop_size, crop_size, C]
    (volumes), in [0, 1].
  """
  volumes = images.ndim == 5
  validate = validate_view3d if volumes else validate_view
  cfg = ml_collections.FrozenConfigDict(validate(view_cfg))  # Hashable: a static arg.
  if not uses_background(cfg):
    return (_augment_volume_batch if volumes else _augment_batch)(key, images, cfg)
  if masks is None:
    example = "'body_outline'" if volumes else "'fundus_fov', 'lung_intensity'"
    raise ValueError(f"view config: background_p={cfg.background_p} replaces backgrounds, which needs a foreground "
                     f"mask per {'volume' if volumes else 'image'}; set config.augment.mask_key (a mask feature of "
                     f"the dataset) or config.augment.derived_mask (e.g. {example})")
  spatial = images.ndim - 2
  if masks.shape[0] != images.shape[0] or tuple(masks.shape[1:1 + spatial]) != tuple(images.shape[1:1 + spatial]):
    shape = "[D, H, W(, 1)] mask per volume" if volumes else "[H, W(, 1)] mask per image"
    raise ValueError(f"masks {masks.shape} do not match {'volumes' if volumes else 'images'} {images.shape}: "
                     f"one {shape}")
  return _augment_batch_background(key, images, masks, cfg)


@functools.partial(jax.jit, static_argnums=2)
def _augment_batch(key, images, cfg):
  x = to_float_images(images)
  keys = jax.random.split(key, x.shape[0])
  return jax.vmap(lambda k, im: augment_image(k, im, cfg))(keys, x)


@functools.partial(jax.jit, static_argnums=3)
def _augment_batch_background(key, images, masks, cfg):
  """Images [B, H, W, C] or volumes [B, D, H, W, C] with their masks, through a policy that replaces backgrounds."""
  x, augment = (to_float_volumes(images), augment_volume) if images.ndim == 5 else (to_float_images(images),
                                                                                    augment_image)
  b = x.shape[0]
  keys = jax.random.split(key, b)
  # Each example's donor is the one `shift` places on (never itself when the batch has two or more).
  shift = jax.random.randint(jax.random.fold_in(key, _BATCH_DONOR_SHIFT), (), 1, max(b, 2)) % b
  donors, donor_masks = jnp.roll(x, shift, axis=0), jnp.roll(masks, shift, axis=0)
  return jax.vmap(lambda k, im, m, d, dm: augment(k, im, cfg, mask=m, donor=d, donor_mask=dm))(
      keys, x, masks, donors, donor_masks)


def make_views(key, images, view_cfgs: Sequence[Mapping[str, Any]], *, masks=None) -> list:
  """One augmented batch per view policy, view i keyed by fold_in(key, i) (multi-crop friendly).

  Images [B, H, W, C] take 2D policies, volumes [B, D, H, W, C] 3D ones (see `augment_batch`); `masks`
  are the images' foreground masks, for policies that replace backgrounds.
  """
  return [augment_batch(jax.random.fold_in(key, i), images, cfg, masks=masks) for i, cfg in enumerate(view_cfgs)]


@functools.partial(jax.jit, static_argnames="size")
def eval_view(images, *, size: int):
  """Deterministic evaluation view: float conversion and resize of the whole image to (size, size),
  or of the whole volume [B, D, H, W, C] to (size, size, size)."""
  if images.ndim == 5:
    return jax.vmap(lambda v: ops3d.center_resize(v, out_size=size))(to_float_volumes(images))
  x = to_float_images(images)
  return jax.vmap(lambda im: ops.center_resize(im, out_size=size))(x)


# --------------------------------------------------------------------------------------------------
# Volume view policies.
# --------------------------------------------------------------------------------------------------

# Defaults for 28^3 volumes (MedMNIST 3D): geometric and intensity changes, no colour; erasing off.
_DEFAULTS3D = dict(
    crop_size=28,
    crop_scale=(0.25, 1.0),
    crop_ratio=(3 / 4, 4 / 3),      # Range of each aspect ratio h/d and w/d.
    flip_p=0.5,                     # Per axis in flip_axes.
    flip_axes=(0, 1, 2),
    rot90_p=0.0,                    # Per plane in rot90_planes: k * 90 degrees, k uniform in {1, 2, 3}.
    rot90_planes=((1, 2), (0, 2), (0, 1)),
    intensity_p=0.8,
    intensity_scale=0.2,            # x * U[1 - s, 1 + s] + U[-shift, shift].
    intensity_shift=0.1,
    gamma_p=0.3,
    gamma=(0.7, 1.5),
    blur_p=0.3,
    blur_sigma=(0.1, 1.0),
    blur_kernel_size=None,          # None: ~10% of crop_size, odd, >= 3 (ops.default_blur_kernel_size).
    noise_p=0.2,
    noise_std=(0.0, 0.05),
    erase_p=0.0,
    erase_scale=(0.02, 0.2),
    erase_ratio=(0.5, 2.0),
    erase_value=0.0,
    erase_noise=False,              # Fill the erased cuboid with U[0, 1] noise instead of erase_value.
    background_p=0.0,               # As for images: replace the background (needs foreground masks).
    background="swap",              # ops.BACKGROUNDS: "swap", "constant", "noise" or "shuffle".
    background_value=0.0,           # The fill of background="constant", in [0, 1].
)
VALID_KEYS3D = tuple(_DEFAULTS3D)
# Fixed per-op indices for fold_in, as for images.
(_OP3_CROP, _OP3_FLIP, _OP3_ROT90, _OP3_INTENSITY, _OP3_GAMMA, _OP3_BLUR, _OP3_NOISE,
 _OP3_ERASE, _OP3_BACKGROUND) = range(9)


def default_view3d(**overrides) -> ml_collections.ConfigDict:
  """The default volume view policy, with `overrides` applied and validated."""
  return validate_view3d(dict(_DEFAULTS3D, **overrides))


def validate_view_for(cfg: Mapping[str, Any], *, volumes: bool) -> ml_collections.ConfigDict:
  """`validate_view3d` for a run on volumes, else `validate_view`."""
  return validate_view3d(cfg) if volumes else validate_view(cfg)


def validate_view3d(cfg: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """Checks a volume view policy and returns it completed with defaults, as a new ConfigDict.

  Raises:
    ValueError: naming the offending key, for an unknown key (listing the valid keys) or an
      out-of-range value.
  """
  what = "view3d config"
  given = cfg.to_dict() if isinstance(cfg, ml_collections.ConfigDict) else dict(cfg)
  unknown = sorted(set(given) - set(VALID_KEYS3D))
  if unknown:
    raise ValueError(f"{what}: unknown key(s) {unknown}; valid keys are {list(VALID_KEYS3D)}")
  c = dict(_DEFAULTS3D, **given)

  size = c["crop_size"]
  if not isinstance(size, int) or isinstance(size, bool) or size < 1:
    raise ValueError(f"{what}: crop_size={size!r} must be a positive int")
  _check_range(c, "crop_scale", lo_min=0.0, hi_max=1.0, what=what)
  _check_range(c, "crop_ratio", lo_min=0.0, what=what)
  _check_range(c, "erase_scale", lo_min=0.0, hi_max=1.0, what=what)
  _check_range(c, "erase_ratio", lo_min=0.0, what=what)
  _check_range(c, "gamma", lo_min=0.0, what=what)
  _check_range(c, "blur_sigma", lo_min=0.0, what=what)
  _check_range(c, "noise_std", lo_min=0.0, lo_inclusive=True, what=what)
  for name in ("flip_p", "rot90_p", "intensity_p", "gamma_p", "blur_p", "noise_p", "erase_p"):
    _check_prob(c, name, what)
  for name in ("intensity_scale", "intensity_shift", "erase_value"):
    if not _is_number(c[name]) or not 0.0 <= c[name] <= 1.0:
      raise ValueError(f"{what}: {name}={c[name]!r} must be a number in [0, 1]")
  axes = c["flip_axes"]
  if (not isinstance(axes, (tuple, list)) or not all(a in (0, 1, 2) and not isinstance(a, bool) for a in axes)
      or len(set(axes)) != len(axes)):
    raise ValueError(f"{what}: flip_axes={axes!r} must be distinct spatial axes from (0, 1, 2)")
  planes = c["rot90_planes"]
  ok = isinstance(planes, (tuple, list)) and all(
      isinstance(pl, (tuple, list)) and len(pl) == 2 and all(a in (0, 1, 2) and not isinstance(a, bool)
                                                             for a in pl) and pl[0] != pl[1]
      for pl in planes)
  if not ok:
    raise ValueError(f"{what}: rot90_planes={planes!r} must be pairs of distinct spatial axes from "
                     f"(0, 1, 2), e.g. ((1, 2),) for in-slice turns")
  ks = c["blur_kernel_size"]
  if ks is not None and (not isinstance(ks, int) or isinstance(ks, bool) or ks < 1 or ks % 2 == 0):
    raise ValueError(f"{what}: blur_kernel_size={ks!r} must be None or a positive odd int")
  if not isinstance(c["erase_noise"], bool):
    raise ValueError(f"{what}: erase_noise={c['erase_noise']!r} must be a bool")
  _check_background(c, what)
  for name in ("crop_scale", "crop_ratio", "erase_scale", "erase_ratio", "gamma", "blur_sigma",
               "noise_std"):
    c[name] = tuple(float(x) for x in c[name])
  c["flip_axes"] = tuple(int(a) for a in axes)
  c["rot90_planes"] = tuple((int(a), int(b)) for a, b in planes)
  return ml_collections.ConfigDict(c)


def augment_volume(key, volume, view_cfg, *, mask=None, donor=None, donor_mask=None):
  """The per-volume pipeline background -> crop -> flip -> rot90 -> intensity -> gamma -> blur -> noise -> erase.

  Args:
    key: PRNG key for this volume; op i uses fold_in(key, i) with a fixed index per op.
    volume: float32 [D, H, W, C] in [0, 1].
    view_cfg: a *validated* volume view policy (see `validate_view3d`).
    mask, donor, donor_mask: this volume's foreground mask, and another volume with its mask (background
      "swap"); needed only when the policy's background_p > 0 (see `ops3d.replace_background`).
  """
  c = view_cfg
  sub = lambda i: jax.random.fold_in(key, i)
  if uses_background(c):
    volume = ops3d.replace_background(sub(_OP3_BACKGROUND), volume, mask, p=c.background_p, mode=c.background,
                                      value=c.background_value, donor=donor, donor_mask=donor_mask)
  x = ops3d.random_resized_crop(sub(_OP3_CROP), volume, out_size=c.crop_size, scale=c.crop_scale,
                                ratio=c.crop_ratio)
  x = ops3d.random_flip(sub(_OP3_FLIP), x, p=c.flip_p, axes=c.flip_axes)
  x = ops3d.random_rot90(sub(_OP3_ROT90), x, p=c.rot90_p, planes=c.rot90_planes)  # The crop is a cube.
  x = ops3d.random_intensity(sub(_OP3_INTENSITY), x, p=c.intensity_p, scale=c.intensity_scale,
                             shift=c.intensity_shift)
  x = ops3d.random_gamma(sub(_OP3_GAMMA), x, p=c.gamma_p, gamma=c.gamma)
  x = ops3d.gaussian_blur(sub(_OP3_BLUR), x, p=c.blur_p, sigma=c.blur_sigma, kernel_size=c.blur_kernel_size)
  x = ops3d.gaussian_noise(sub(_OP3_NOISE), x, p=c.noise_p, std=c.noise_std)
  x = ops3d.random_erasing(sub(_OP3_ERASE), x, p=c.erase_p, scale=c.erase_scale, ratio=c.erase_ratio,
                           value=c.erase_value, noise=c.erase_noise)
  return x


@functools.partial(jax.jit, static_argnums=2)
def _augment_volume_batch(key, volumes, cfg):
  x = to_float_volumes(volumes)
  keys = jax.random.split(key, x.shape[0])
  return jax.vmap(lambda k, v: augment_volume(k, v, cfg))(keys, x)
