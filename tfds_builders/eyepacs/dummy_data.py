"""Writes a miniature EyePACS (Kaggle DR Detection) in the official layout, with synthetic images, for tests."""
from __future__ import annotations

import csv
import pathlib

import numpy as np
from PIL import Image

# (patient, left grade, right grade); both eyes of a patient are always on the same side.
TRAIN = ((1, 0, 0), (3, 1, 2), (10, 4, 3), (13, 0, 2))
PUBLIC = ((2, 0, 1), (5, 4, 4))
PRIVATE = ((4, 0, 0), (6, 3, 2), (11, 1, 0))


def fundus(rng, size=(40, 30)) -> Image.Image:
  """A bright noisy disc on black, like a fundus photograph's field of view (wider than tall)."""
  w, h = size
  yy, xx = np.mgrid[:h, :w]
  disc = (xx - w / 2) ** 2 + (yy - h / 2) ** 2 < (h / 2 - 1) ** 2
  a = rng.integers(60, 256, (h, w, 3), dtype=np.uint8) * disc[..., None]
  return Image.fromarray(a.astype(np.uint8))


def write(root, *, nested: bool = False, seed: int = 0) -> pathlib.Path:
  """Writes trainLabels.csv, retinopathy_solution.csv, train/ and test/ under `root`.

  Args:
    root: the manual dir to create.
    nested: put the images in train/train/ and test/test/ (unzipping inside a same-named folder).
    seed: seed of the random pixels.
  """
  root = pathlib.Path(root)
  rng = np.random.default_rng(seed)
  train_dir = root / ('train/train' if nested else 'train')
  test_dir = root / ('test/test' if nested else 'test')
  for d in (train_dir, test_dir):
    d.mkdir(parents=True, exist_ok=True)

  def rows(patients):
    return [(f'{p}_{eye}', g) for p, *grades in patients for eye, g in zip(('left', 'right'), grades)]

  with open(root / 'trainLabels.csv', 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(['image', 'level'])
    for name, g in rows(TRAIN):
      w.writerow([name, g])
      fundus(rng).save(train_dir / f'{name}.jpeg', quality=95)
  # The solution file mixes Public and Private rows in patient order, as the real one does.
  solution = sorted([(n, g, 'Public') for n, g in rows(PUBLIC)] + [(n, g, 'Private') for n, g in rows(PRIVATE)],
                    key=lambda r: (int(r[0].split('_')[0]), r[0]))
  with open(root / 'retinopathy_solution.csv', 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(['image', 'level', 'Usage'])
    for name, g, usage in solution:
      w.writerow([name, g, usage])
      fundus(rng).save(test_dir / f'{name}.jpeg', quality=95)
  return root
