"""Writes a miniature CheXpert in the official layout (our own random pixels and labels) for tests.

Train: patients 00001-000NN; patient k has 1 + (k % 2) studies, each with view1_frontal.jpg, plus
view2_lateral.jpg when (k + study) % 3 == 0. Valid: patients 64541-6454M with one frontal study each,
the first two with a lateral too, labels 0/1 only (as in the official valid.csv).
"""
from __future__ import annotations

import csv
import pathlib

import numpy as np
from PIL import Image

from tfds_builders.chexpert.chexpert_dataset_builder import LABELS

HEADER = ['Path', 'Sex', 'Age', 'Frontal/Lateral', 'AP/PA', *LABELS]


def _rows(folder: str, split: str, patients, rng, *, uncertain: bool):
  rows = []
  for k in patients:
    studies = 1 if split == 'valid' else 1 + (k % 2)
    for s in range(1, studies + 1):
      views = [('view1_frontal.jpg', 'Frontal', 'AP' if k % 2 else 'PA')]
      if (split == 'train' and (k + s) % 3 == 0) or (split == 'valid' and k < 64543):
        views.append(('view2_lateral.jpg', 'Lateral', ''))
      for name, view, ap_pa in views:
        values = ['1.0', '0.0', '-1.0', ''] if uncertain else ['1.0', '0.0']
        labels = [values[j] for j in rng.integers(0, len(values), len(LABELS))]
        rows.append([f'{folder}/{split}/patient{k:05d}/study{s}/{name}', ('Female', 'Male')[k % 2],
                     str(20 + k % 70), view, ap_pa, *labels])
  return rows


def write(root, *, folder: str = 'CheXpert-v1.0-small', train_patients: int = 40, valid_patients: int = 5,
          size: tuple[int, int] = (20, 24), seed: int = 0) -> pathlib.Path:
  """Writes `root/<folder>/{train.csv,valid.csv,train/...,valid/...}`; returns `root`."""
  root = pathlib.Path(root)
  rng = np.random.default_rng(seed)
  w, h = size
  for split, patients in (('train', range(1, train_patients + 1)),
                          ('valid', range(64541, 64541 + valid_patients))):
    rows = _rows(folder, split, patients, rng, uncertain=split == 'train')
    (root / folder).mkdir(parents=True, exist_ok=True)
    with open(root / folder / f'{split}.csv', 'w', newline='') as f:
      writer = csv.writer(f)
      writer.writerow(HEADER)
      writer.writerows(rows)
    for row in rows:
      path = root / row[0]
      path.parent.mkdir(parents=True, exist_ok=True)
      Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), 'L').save(path, quality=95)
  return root
