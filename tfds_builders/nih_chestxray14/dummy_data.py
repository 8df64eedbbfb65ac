"""Writes miniature NIH ChestX-ray14 layouts (our own random pixels) for tests.

`write` makes the full-dataset layout (Data_Entry_2017.csv, the two official lists, images in the
Kaggle `images_00N/images/` folders or in one `images/` folder); `write_subset` makes the NIH1000
tutorial layout `NIH1000/{train,valid,test}/{0_normal,1_abnormal}/<Image Index>.png`.
"""
from __future__ import annotations

import csv
import pathlib

import numpy as np
from PIL import Image

from tfds_builders.nih_chestxray14.nih_chestxray14_dataset_builder import FINDINGS

COLUMNS = ['Image Index', 'Finding Labels', 'Follow-up #', 'Patient ID', 'Patient Age', 'Patient Gender',
           'View Position', 'OriginalImage[Width', 'Height]', 'OriginalImagePixelSpacing[x', 'y]']


def _finding(rng, k: int) -> str:
  if k % 3 == 0:
    return 'No Finding'
  n = 1 + k % 2
  return '|'.join(sorted(rng.choice(FINDINGS, size=n, replace=False).tolist()))


def write(root, *, patients: int = 20, test_patients: int = 5, per_patient: int = 2, size: int = 40,
          kaggle_layout: bool = True, seed: int = 0) -> pathlib.Path:
  """Full layout: patients 1..patients; the last `test_patients` are in test_list.txt.

  Returns the root. Image i of patient p is `{p:08d}_{i:03d}.png`; images alternate between
  images_001/images and images_002/images (kaggle_layout) or all lie in images/. Alternating images
  are 'L' and 'RGBA' (a few real files are RGBA).
  """
  root = pathlib.Path(root)
  rng = np.random.default_rng(seed)
  rows, train_val, test = [], [], []
  k = 0
  for p in range(1, patients + 1):
    for i in range(per_patient):
      name = f'{p:08d}_{i:03d}.png'
      folder = root / (f'images_{1 + k % 2:03d}/images' if kaggle_layout else 'images')
      folder.mkdir(parents=True, exist_ok=True)
      a = rng.integers(0, 256, (size, size), dtype=np.uint8)
      (Image.fromarray(a) if k % 2 == 0 else Image.fromarray(a).convert('RGBA')).save(folder / name)
      rows.append([name, _finding(rng, k), i, p, 20 + p, 'MF'[p % 2], ('PA', 'AP')[i % 2], 2500, 2048, 0.143, 0.143])
      (test if p > patients - test_patients else train_val).append(name)
      k += 1
  with open(root / 'Data_Entry_2017.csv', 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(COLUMNS)
    w.writerows(rows)
  (root / 'train_val_list.txt').write_text('\n'.join(train_val) + '\n')
  (root / 'test_list.txt').write_text('\n'.join(test) + '\n')
  return root


def write_subset(root, *, per_class: dict[str, int] | None = None, size: int = 16, seed: int = 0) -> pathlib.Path:
  """NIH1000 layout under root/NIH1000 with `per_class[split]` images per class (RGB, equal channels).

  Patient p has images in several folders, like the real subset. Returns root (the manual dir).
  """
  root = pathlib.Path(root)
  per_class = per_class or {'train': 6, 'valid': 2, 'test': 2}
  rng = np.random.default_rng(seed)
  k = 0
  for split, n in per_class.items():
    for cls in ('0_normal', '1_abnormal'):
      folder = root / 'NIH1000' / split / cls
      folder.mkdir(parents=True, exist_ok=True)
      for _ in range(n):
        patient = 1 + k % 10  # 10 patients, several spread over two splits or classes.
        a = rng.integers(0, 256, (size, size), dtype=np.uint8)
        im = Image.fromarray(np.stack([a] * 3, -1))
        (im if k % 4 else im.convert('RGBA')).save(folder / f'{patient:08d}_{k:03d}.png')
        k += 1
  return root
