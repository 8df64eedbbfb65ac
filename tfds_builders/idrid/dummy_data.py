"""Writes a miniature IDRiD in the official folder layout (our own synthetic pixels and labels) for tests."""
from __future__ import annotations

import csv
import pathlib

import numpy as np
from PIL import Image

from tfds_builders.idrid.idrid_dataset_builder import LESIONS

GRADING_COUNTS = {'train': 7, 'test': 4}
SEGMENTATION_COUNTS = {'train': 3, 'test': 2}
# Lesions without a map for some images, like soft exudates in the real release: (split, index) -> keys.
MISSING = {('train', 1): ('soft_exudates',), ('test', 0): ('soft_exudates', 'haemorrhages')}
_FOLDERS = {'train': 'a. Training Set', 'test': 'b. Testing Set'}
_CSV = {'train': 'a. IDRiD_Disease Grading_Training Labels.csv', 'test': 'b. IDRiD_Disease Grading_Testing Labels.csv'}


def _fundus(rng, w: int, h: int) -> Image.Image:
  """A bright disc on black, like a fundus photograph's field of view (so the FOV crop has work to do)."""
  yy, xx = np.mgrid[:h, :w]
  inside = (xx - w / 2) ** 2 + (yy - h / 2) ** 2 < (0.45 * h) ** 2
  a = rng.integers(60, 256, (h, w, 3), dtype=np.uint8) * inside[..., None]
  return Image.fromarray(a.astype(np.uint8))


def grading_labels(split: str) -> list[tuple[str, int, int]]:
  """(image name, DR grade, DME risk) rows written for `split`; the numbering restarts per split."""
  return [(f'IDRiD_{i + 1:03d}', (i * 3 + (split == 'test')) % 5, i % 3) for i in range(GRADING_COUNTS[split])]


def write(root, *, size: tuple[int, int] = (48, 32), seed: int = 0, parts=('grading', 'segmentation'),
          prefix: str = '') -> pathlib.Path:
  """Writes the parts under `root/prefix` ("" = the official layout directly in the manual dir)."""
  root = pathlib.Path(root)
  base = root / prefix
  rng = np.random.default_rng(seed)
  w, h = size
  if 'grading' in parts:
    part = base / 'B. Disease Grading'
    (part / '2. Groundtruths').mkdir(parents=True, exist_ok=True)
    for split in ('train', 'test'):
      folder = part / '1. Original Images' / _FOLDERS[split]
      folder.mkdir(parents=True, exist_ok=True)
      rows = grading_labels(split)
      for name, _, _ in rows:
        _fundus(rng, w, h).save(folder / f'{name}.jpg', quality=95)
      # Like the official files: trailing space in the last header, empty extra columns, blank rows.
      with open(part / '2. Groundtruths' / _CSV[split], 'w', newline='') as f:
        wr = csv.writer(f)
        wr.writerow(['Image name', 'Retinopathy grade', 'Risk of macular edema ', '', ''])
        for name, grade, dme in rows:
          wr.writerow([name, grade, dme, '', ''])
        wr.writerow(['', '', '', '', ''])
  if 'segmentation' in parts:
    part = base / 'A. Segmentation'
    number = 0
    for split in ('train', 'test'):
      folder = part / '1. Original Images' / _FOLDERS[split]
      folder.mkdir(parents=True, exist_ok=True)
      for _, lesion_folder, _ in LESIONS:
        (part / '2. All Segmentation Groundtruths' / _FOLDERS[split] / lesion_folder).mkdir(parents=True, exist_ok=True)
      for i in range(SEGMENTATION_COUNTS[split]):
        number += 1
        name = f'IDRiD_{number:02d}'
        _fundus(rng, w, h).save(folder / f'{name}.jpg', quality=95)
        for key, lesion_folder, abbr in LESIONS:
          if key in MISSING.get((split, i), ()):
            continue
          # The official maps mark lesions in the red channel of an RGB TIFF.
          lesion = rng.random((h, w)) < 0.1
          rgb = np.zeros((h, w, 3), np.uint8)
          rgb[..., 0] = lesion * 255
          Image.fromarray(rgb).save(part / '2. All Segmentation Groundtruths' / _FOLDERS[split] / lesion_folder /
                                    f'{name}_{abbr}.tif')
  return root
