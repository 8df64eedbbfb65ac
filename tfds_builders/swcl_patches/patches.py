"""SWCL stage 3: the five patches of an image and their abnormality scores (pure numpy).

SWCL (Yap & Ng 2021) pretrains on patches rather than whole fundus photographs: each squared image
gives five patches, its four corners and its centre, and patches are positives when they share
semi-weak labels (patient, position, abnormality). For positions to mean the same anatomy in both
eyes, right eyes are mirrored left-right first, so the optic disc sits on the same side as in left
eyes.

Patch abnormality. The paper derives a patch's abnormality from the pseudo-labeller's activation
maps; our concrete rule (`abnormality_scores`) is

    score_k = abnormal_prob * mean(cam in patch k) / max_j mean(cam in patch j)     (k, j = 0..4)

with `cam` the image's abnormality activation map and `abnormal_prob` the pseudo-labeller's
probability that the image is abnormal (both written by stage 2). The most activated patch of a
confidently abnormal image scores about `abnormal_prob` (near 1), its less activated patches score
in proportion to their activation, and every patch of an image the pseudo-labeller calls normal
scores at most its small `abnormal_prob`. The ratio does not depend on the CAM's scale (0-1 floats
or 0-255 bytes give the same scores); an all-zero CAM gives scores of 0.
"""
from __future__ import annotations

import numpy as np

POSITIONS = ("top_left", "top_right", "bottom_left", "bottom_right", "centre")


def patch_boxes(image_size: int, patch_size: int) -> list[tuple[int, int]]:
  """(top, left) of the five patch_size x patch_size patches of a square image, in POSITIONS order.

  Corners are flush with the image edges; the centre patch starts at (image_size - patch_size) // 2
  on both axes (for an odd difference it sits half a pixel towards the top left).
  """
  image_size, patch_size = int(image_size), int(patch_size)
  if patch_size < 1 or patch_size > image_size:
    raise ValueError(f"patch_size={patch_size} must be in [1, image_size={image_size}]")
  far, mid = image_size - patch_size, (image_size - patch_size) // 2
  return [(0, 0), (0, far), (far, 0), (far, far), (mid, mid)]


def _square_size(a: np.ndarray, what: str) -> int:
  if a.ndim not in (2, 3) or a.shape[0] != a.shape[1]:
    raise ValueError(f"{what} must be a square [S, S] or [S, S, C] array, got shape {a.shape}")
  return int(a.shape[0])


def five_patches(image, *, patch_size: int, flip: bool = False) -> np.ndarray:
  """The five patches of a square image: [5, p, p, C] for an [S, S, C] image ([5, p, p] for [S, S]).

  Args:
    image: a square image (any dtype; the patches keep it).
    patch_size: p, at most S.
    flip: mirror the image left-right first (right eyes, so they align with left eyes), then cut.
  """
  a = np.asarray(image)
  size = _square_size(a, "image")
  if flip:
    a = a[:, ::-1]
  return np.stack([a[t:t + patch_size, l:l + patch_size] for t, l in patch_boxes(size, patch_size)])


def abnormality_scores(cam, *, abnormal_prob: float, patch_size: int, flip: bool = False) -> np.ndarray:
  """Abnormality of the five patches (float32 [5], POSITIONS order); see the module docstring.

  Args:
    cam: the image's abnormality activation map, square [S, S] (or [S, S, 1]), non-negative, any scale.
    abnormal_prob: the pseudo-labeller's probability that the image is abnormal, in [0, 1].
    patch_size: p, as for `five_patches`.
    flip: as for `five_patches` (the CAM is cut exactly like its image).
  """
  cam = np.asarray(cam, np.float64)
  if cam.ndim == 3 and cam.shape[-1] == 1:
    cam = cam[..., 0]
  if cam.ndim != 2:
    raise ValueError(f"cam must be a square [S, S] map, got shape {cam.shape}")
  if cam.size and cam.min() < 0:
    raise ValueError(f"cam must be non-negative (an activation map after ReLU), its minimum is {cam.min()}")
  p = float(abnormal_prob)
  if not 0.0 <= p <= 1.0:
    raise ValueError(f"abnormal_prob={abnormal_prob} must be in [0, 1]")
  means = five_patches(cam, patch_size=patch_size, flip=flip).mean(axis=(1, 2))
  top = means.max()
  if top <= 0:
    return np.zeros(len(POSITIONS), np.float32)
  return (p * means / top).astype(np.float32)


__all__ = ["POSITIONS", "abnormality_scores", "five_patches", "patch_boxes"]
