"""Writes a miniature APTOS 2019 in the official Kaggle layout, with synthetic images, for tests."""
from __future__ import annotations

import csv
import pathlib

import numpy as np
from PIL import Image

COUNTS = (20, 10, 10, 10, 10)  # Images per grade 0-4: multiples of 10 make the 70/10/20 split exact.


def write(root, *, counts=COUNTS, size=(36, 28), seed: int = 0) -> pathlib.Path:
  """Writes train.csv, train_images/, test.csv and test_images/ under `root`; returns `root`."""
  root = pathlib.Path(root)
  rng = np.random.default_rng(seed)
  (root / 'train_images').mkdir(parents=True, exist_ok=True)
  (root / 'test_images').mkdir(parents=True, exist_ok=True)
  w, h = size
  yy, xx = np.mgrid[:h, :w]
  disc = ((xx - w / 2) ** 2 + (yy - h / 2) ** 2 < (h / 2 - 1) ** 2)[..., None]

  def image():
    return Image.fromarray((rng.integers(60, 256, (h, w, 3)) * disc).astype(np.uint8))

  rows = [(rng.bytes(6).hex(), g) for g, n in enumerate(counts) for _ in range(n)]
  with open(root / 'train.csv', 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['id_code', 'diagnosis'])
    for code, g in rows:  # Grade order, not id order: the builder must not depend on the row order.
      writer.writerow([code, g])
      image().save(root / 'train_images' / f'{code}.png')
  with open(root / 'test.csv', 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['id_code'])
    for _ in range(3):
      code = rng.bytes(6).hex()
      writer.writerow([code])
      image().save(root / 'test_images' / f'{code}.png')
  return root
