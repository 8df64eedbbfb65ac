"""Foreground masks derived from the images themselves, on the host (numpy + scipy.ndimage).

For data that ships no masks, a config can name one of these instead of a mask feature: background
augmentation (`config.augment.derived_mask`, see medssl_jax/augment/ops.py `replace_background`) keeps the
foreground of each view and replaces the rest; mode "analyze" (`config.analysis.derived_mask`) measures the
fraction of attention inside the mask. Each function maps one decoded image (uint8 [H, W, C], or float in
[0, 1]) to a bool [H, W] mask:

- `fundus_fov`: the circular field of view of a fundus photograph: pixels brighter than a tenth of the
  image's bright level (its 99th percentile of the brightest channel), the largest connected component,
  holes filled. The black surround of a fundus camera is far darker than any part of the retina.
- `lung_intensity`: the lung fields of a frontal chest X-ray (medssl_jax/data/lung_mask.py: a classical
  intensity proxy, with its limits stated there).
- `body_outline`: the body in a radiograph, CT or MR slice: pixels above Otsu's threshold of the image, the
  largest connected component, holes filled (the air around the patient is the darkest class). It is the one
  mask derived from volumes too (uint8 [D, H, W, C] -> bool [D, H, W]: the same steps in 3D, connectivity
  and holes included), e.g. the body in a CT or the organ in a MedMNIST 3D shape volume.

A flat image (nothing brighter than the rest) gets a full mask for `fundus_fov` and `body_outline`: with no
background to tell apart, everything counts as foreground and a background op leaves it unchanged.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from medssl_jax.data import lung_mask as lung_mask_lib

NAMES = {
    "fundus_fov": "fundus field of view (intensity threshold)",
    "lung_intensity": lung_mask_lib.NAME,
    "body_outline": "body outline (Otsu threshold)",
}


def _float_gray(image: np.ndarray, *, reduce: str) -> np.ndarray:
  """float [H, W] in [0, 1]: the brightest channel ('max') or the channel mean ('mean')."""
  x = np.asarray(image)
  if x.ndim == 3:
    x = x.max(axis=-1) if reduce == "max" else x.mean(axis=-1)
  if x.ndim != 2:
    raise ValueError(f"a mask is derived from one image [H, W] or [H, W, C]; got shape {np.shape(image)}")
  return x.astype(np.float64) / 255.0 if np.asarray(image).dtype == np.uint8 else x.astype(np.float64)


def _float_volume(volume: np.ndarray) -> np.ndarray:
  """float [D, H, W] in [0, 1]: the channel mean of a volume [D, H, W, C]."""
  x = np.asarray(volume)
  return x.mean(axis=-1, dtype=np.float64) / (255.0 if x.dtype == np.uint8 else 1.0)


def _largest_filled(mask: np.ndarray) -> np.ndarray:
  """The largest connected component of `mask` with its holes filled; all True when `mask` is empty."""
  labels, n = ndimage.label(mask)
  if n == 0:
    return np.ones_like(mask, dtype=bool)
  sizes = np.bincount(labels.ravel())[1:]
  return ndimage.binary_fill_holes(labels == 1 + int(np.argmax(sizes)))


def fundus_fov(image: np.ndarray) -> np.ndarray:
  """The field of view of one fundus photograph (method in the module docstring)."""
  x = _float_gray(image, reduce="max")
  bright = float(np.percentile(x, 99))
  if bright <= 0:
    return np.ones(x.shape, dtype=bool)
  return _largest_filled(x > 0.1 * bright)


def body_outline(image: np.ndarray) -> np.ndarray:
  """The body in one radiograph / CT / MR slice, or in one volume [D, H, W, C] (method in the module docstring)."""
  x = _float_volume(image) if np.ndim(image) == 4 else _float_gray(image, reduce="mean")
  if x.max() - x.min() < 1e-6:
    return np.ones(x.shape, dtype=bool)
  return _largest_filled(x > lung_mask_lib.otsu(x))


def lung_intensity(image: np.ndarray) -> np.ndarray:
  """The lung fields of one frontal chest X-ray (medssl_jax/data/lung_mask.py)."""
  return lung_mask_lib.lung_mask(_float_gray(image, reduce="mean"))


_FUNCTIONS = {"fundus_fov": fundus_fov, "lung_intensity": lung_intensity, "body_outline": body_outline}
assert set(_FUNCTIONS) == set(NAMES)
VOLUME_NAMES = ("body_outline",)  # The masks that are defined on volumes [D, H, W, C] too.


def check_name(name: str, what: str) -> None:
  """Raises a ValueError naming the setting `what` when `name` is no derived mask."""
  if name not in _FUNCTIONS:
    raise ValueError(f"{what}={name!r} is no derived mask; choose one of {sorted(_FUNCTIONS)} (medssl_jax/data/masks.py)")


def check_volume_name(name: str, what: str) -> None:
  """Raises a ValueError naming the setting `what` when `name` is no derived mask of volumes."""
  if name not in VOLUME_NAMES:
    raise ValueError(f"{what}={name!r} derives masks from 2D images, not volumes; for volumes choose one of "
                     f"{list(VOLUME_NAMES)} (or a mask feature of the dataset)")


def derive(name: str, image: np.ndarray) -> np.ndarray:
  """The mask `name` (a key of NAMES) of one image: bool [H, W]; of a volume [D, H, W, C]: bool [D, H, W]."""
  check_name(name, "derived mask")
  if np.ndim(image) == 4:
    check_volume_name(name, "derived mask")
  return np.asarray(_FUNCTIONS[name](image), dtype=bool)


class Derived:
  """The mask `name` as a picklable function of one image (for grain workers): bool [H, W] (or [D, H, W] of a
  volume)."""

  def __init__(self, name: str):
    check_name(name, "derived mask")
    self.name = name
    self.volumes = name in VOLUME_NAMES  # Defined on volumes too (the pipeline checks it for volume datasets).

  def __call__(self, image: np.ndarray) -> np.ndarray:
    return derive(self.name, image)

  def __eq__(self, other):
    return isinstance(other, Derived) and other.name == self.name

  def __repr__(self):
    return f"Derived({self.name!r})"


def derive_all(name: str, images) -> np.ndarray:
  """The mask `name` of each image of a batch [N, H, W(, C)]: bool [N, H, W] (volumes [N, D, H, W, C]: [N, D, H, W])."""
  check_name(name, "derived mask")
  return np.stack([derive(name, im) for im in np.asarray(images)]) if len(images) else np.zeros((0,), bool)
