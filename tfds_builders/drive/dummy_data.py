"""Writes a miniature DRIVE in the official layout (our own random pixels) for tests."""
from __future__ import annotations

import pathlib

import numpy as np
from PIL import Image


def _gif(a: np.ndarray, path: pathlib.Path) -> None:
  Image.fromarray((a * 255).astype(np.uint8)).save(path)  # Official masks are 0/255 GIFs.


def write(root, *, n_train: int = 3, n_test: int = 2, size: tuple[int, int] = (30, 32), nested: bool = False,
          seed: int = 0) -> pathlib.Path:
  """Writes training images 21.. and test images 01..; `nested` adds the DRIVE/ top folder."""
  root = pathlib.Path(root)
  base = root / 'DRIVE' if nested else root
  rng = np.random.default_rng(seed)
  w, h = size
  yy, xx = np.mgrid[:h, :w]
  fov = (((yy - h / 2) / (h * 0.4)) ** 2 + ((xx - w / 2) / (w * 0.4)) ** 2 <= 1).astype(np.uint8)
  for folder, nums in (('training', range(21, 21 + n_train)), ('test', range(1, 1 + n_test))):
    for sub in ('images', '1st_manual', 'mask') + (('2nd_manual',) if folder == 'test' else ()):
      (base / folder / sub).mkdir(parents=True, exist_ok=True)
    for n in nums:
      img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8) * fov[..., None]
      Image.fromarray(img).save(base / folder / 'images' / f'{n:02d}_{folder}.tif')
      _gif((rng.random((h, w)) < 0.15) * fov, base / folder / '1st_manual' / f'{n:02d}_manual1.gif')
      _gif(fov, base / folder / 'mask' / f'{n:02d}_{folder}_mask.gif')
      if folder == 'test':
        _gif((rng.random((h, w)) < 0.15) * fov, base / folder / '2nd_manual' / f'{n:02d}_manual2.gif')
  return root
