"""Writes a miniature CHASE_DB1 in the official flat layout (our own random pixels) for tests."""
from __future__ import annotations

import pathlib

import numpy as np
from PIL import Image


def write(root, *, children: int = 14, size: tuple[int, int] = (40, 38), seed: int = 0) -> pathlib.Path:
  root = pathlib.Path(root)
  root.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  w, h = size
  for child in range(1, children + 1):
    for eye in 'LR':
      name = f'Image_{child:02d}{eye}'
      Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / f'{name}.jpg', quality=95)
      for observer in ('1stHO', '2ndHO'):
        Image.fromarray(rng.random((h, w)) < 0.1).save(root / f'{name}_{observer}.png')  # 1-bit like the originals.
  return root
