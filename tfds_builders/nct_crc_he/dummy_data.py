"""Writes a miniature NCT-CRC-HE-100K / CRC-VAL-HE-7K in the official folder layout (our own pixels)."""
from __future__ import annotations

import pathlib

import numpy as np
from PIL import Image

CLASSES = ('ADI', 'BACK', 'DEB', 'LYM', 'MUC', 'MUS', 'NORM', 'STR', 'TUM')
# Random uppercase names like the official ones (e.g. ADI-AAAFLCLY.tif); the test set uses TCGA-like ones.
_LETTERS = np.array(list('ABCDEFGHIJKLMNOPQRSTUVWXYZ'))


def _tile(rng, size: int) -> Image.Image:
  """A smooth random RGB tile (upsampled noise: compresses well, so tests stay fast)."""
  low = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
  return Image.fromarray(low).resize((size, size), Image.BILINEAR)


def write(root, *, train_per_class: int = 10, test_per_class: int = 2, size: int = 32, nonorm: bool = False,
          seed: int = 0) -> pathlib.Path:
  """Writes <root>/NCT-CRC-HE-100K (and -NONORM when `nonorm`) and <root>/CRC-VAL-HE-7K; returns root."""
  root = pathlib.Path(root)
  rng = np.random.default_rng(seed)
  folders = [('NCT-CRC-HE-100K', train_per_class), ('CRC-VAL-HE-7K', test_per_class)]
  if nonorm:
    folders.append(('NCT-CRC-HE-100K-NONORM', train_per_class))
  for folder, n in folders:
    for c in CLASSES:
      (root / folder / c).mkdir(parents=True, exist_ok=True)
      for _ in range(n):
        stem = ''.join(rng.choice(_LETTERS, 8))
        name = f'{c}-{stem}.tif' if folder != 'CRC-VAL-HE-7K' else f'{c}-TCGA-{stem}.tif'
        _tile(rng, size).save(root / folder / c / name, format='TIFF')
  return root
