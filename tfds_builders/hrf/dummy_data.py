"""Writes a miniature HRF in the official layout (our own synthetic pixels) for tests."""
from __future__ import annotations

import pathlib

import numpy as np
from PIL import Image

GROUPS = ('h', 'dr', 'g')


def write(root, *, per_group: int = 5, size: tuple[int, int] = (48, 32), masks: bool = True,
          nested: bool = False, seed: int = 0) -> pathlib.Path:
  """`per_group` images per group (DR ones as .JPG like the originals); `masks` adds manual1/ and mask/."""
  root = pathlib.Path(root)
  base = root / 'all' if nested else root
  rng = np.random.default_rng(seed)
  w, h = size
  yy, xx = np.mgrid[:h, :w]
  fov = (((yy - h / 2) / (h * 0.45)) ** 2 + ((xx - w / 2) / (h * 0.45)) ** 2 <= 1).astype(np.uint8)
  for sub in ('images',) + (('manual1', 'mask') if masks else ()):
    (base / sub).mkdir(parents=True, exist_ok=True)
  for group in GROUPS:
    for n in range(1, per_group + 1):
      stem = f'{n:02d}_{group}'
      img = rng.integers(40, 256, (h, w, 3), dtype=np.uint8) * fov[..., None]
      Image.fromarray(img).save(base / 'images' / f'{stem}.{"JPG" if group == "dr" else "jpg"}', quality=95)
      if masks:
        Image.fromarray((rng.random((h, w)) < 0.1) & fov.astype(bool)).save(base / 'manual1' / f'{stem}.tif')
        Image.fromarray(fov * 255).save(base / 'mask' / f'{stem}_mask.tif')
  return root
