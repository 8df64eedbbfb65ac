"""Writes a miniature COVIDx CXR-4 (or CXR-2/3: no val split) in the official layout for tests.

Patients: 20 train, 4 val, 5 test; patient k has 1 + (k % 2) images, `positive` when k % 3 == 0.
Images rotate through grayscale PNG, RGB PNG and grayscale JPEG (the sources differ); the first
train file name contains a space.
"""
from __future__ import annotations

import pathlib

import numpy as np
from PIL import Image

SOURCES = ('rsna', 'bimcv', 'ricord', 'sirm', 'cohen')


def write(root, *, release: str = 'cxr4', size: tuple[int, int] = (28, 22), seed: int = 0) -> pathlib.Path:
  """Writes `root/{train,val,test}.txt` and the image folders ('cxr4'), or without val ('cxr2')."""
  root = pathlib.Path(root)
  rng = np.random.default_rng(seed)
  w, h = size
  splits = {'train': range(0, 20), 'val': range(20, 24), 'test': range(24, 29)}
  if release == 'cxr2':
    splits.pop('val')
  n = 0
  for split, patients in splits.items():
    (root / split).mkdir(parents=True, exist_ok=True)
    lines = []
    for k in patients:
      for j in range(1 + k % 2):
        kind = n % 3
        name = f'{SOURCES[k % 5]}-{k:04d}-{j}' + ('.jpg' if kind == 2 else '.png')
        if n == 0:
          name = 'case (1).png'
        if kind == 1:
          Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), 'RGB').save(root / split / name)
        else:
          Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), 'L').save(root / split / name, quality=95)
        lines.append(f'{1000 + k} {name} {"positive" if k % 3 == 0 else "negative"} {SOURCES[k % 5]}')
        n += 1
    (root / f'{split}.txt').write_text('\n'.join(lines) + '\n')
  return root
