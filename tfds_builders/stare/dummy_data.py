"""Writes a miniature STARE vessel subset in the official layout (our own random pixels) for tests."""
from __future__ import annotations

import gzip
import io
import pathlib

import numpy as np
from PIL import Image

from tfds_builders.stare.stare_dataset_builder import IMAGE_IDS


def _save(a: np.ndarray, path: pathlib.Path, gz: bool) -> None:
  buf = io.BytesIO()
  Image.fromarray(a).save(buf, format='PPM')
  if gz:
    pathlib.Path(f'{path}.gz').write_bytes(gzip.compress(buf.getvalue()))
  else:
    path.write_bytes(buf.getvalue())


def write(root, *, size: tuple[int, int] = (28, 24), gz: bool = True, nested: bool = False,
          seed: int = 0) -> pathlib.Path:
  """All 20 labelled ids; `gz` keeps the .gz of the official tars; `nested` adds a STARE/ top folder."""
  root = pathlib.Path(root)
  base = root / 'STARE' if nested else root
  rng = np.random.default_rng(seed)
  w, h = size
  for sub in ('stare-images', 'labels-ah', 'labels-vk'):
    (base / sub).mkdir(parents=True, exist_ok=True)
  for name in IMAGE_IDS:
    img = rng.integers(20, 256, (h, w, 3), dtype=np.uint8)
    img[:2] = 0  # A dark border outside the field of view, cropped away by the resized config.
    _save(img, base / 'stare-images' / f'{name}.ppm', gz)
    for obs in ('ah', 'vk'):
      _save(((rng.random((h, w)) < 0.1) * 255).astype(np.uint8), base / f'labels-{obs}' / f'{name}.{obs}.ppm', gz)
  return root
