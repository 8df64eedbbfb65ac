"""Writes a miniature REFUGE in the official layout (our own synthetic pixels and labels) for tests."""
from __future__ import annotations

import csv
import pathlib

import numpy as np
import openpyxl
from PIL import Image

from tfds_builders.refuge.refuge_dataset_builder import read_table

# (glaucoma, non-glaucoma) counts per split.
COUNTS = {'train': (2, 3), 'validation': (2, 4), 'test': (1, 3)}


def _fundus(rng, w, h):
  """A bright disc (the field of view) on black, with black margins, and its disc/cup mask (255/128/0)."""
  yy, xx = np.mgrid[:h, :w]
  r = np.hypot(yy - h / 2, xx - w / 2)
  img = rng.integers(60, 256, (h, w, 3), dtype=np.uint8) * (r <= min(w, h) * 0.4)[..., None].astype(np.uint8)
  d = np.hypot(yy - h / 2, xx - w * 0.6)
  mask = np.full((h, w), 255, np.uint8)
  mask[d <= 5] = 128
  mask[d <= 2.5] = 0
  return img, mask


def _table(path: pathlib.Path, header, rows) -> None:
  if path.suffix == '.csv':
    with open(path, 'w', newline='') as f:
      csv.writer(f).writerows([header, *rows])
    return
  wb = openpyxl.Workbook()
  ws = wb.active
  for row in [header, *rows]:
    ws.append(row)
  wb.save(path)


def write(root, *, size: tuple[int, int] = (40, 36), nested: bool = False, csv_tables: bool = False,
          seed: int = 0) -> pathlib.Path:
  """`nested` uses the zips' doubled top folders; `csv_tables` writes the GT tables as .csv."""
  root = pathlib.Path(root)
  rng = np.random.default_rng(seed)
  w, h = size
  ext = '.csv' if csv_tables else '.xlsx'
  train_img = root / ('REFUGE-Training400/Training400' if nested else 'Training400')
  train_mask = root / ('Annotation-Training400/Annotation-Training400' if nested else 'Annotation-Training400')
  g, n = COUNTS['train']
  for folder, prefix, count in (('Glaucoma', 'g', g), ('Non-Glaucoma', 'n', n)):
    (train_img / folder).mkdir(parents=True, exist_ok=True)
    (train_mask / 'Disc_Cup_Masks' / folder).mkdir(parents=True, exist_ok=True)
    for k in range(1, count + 1):
      img, mask = _fundus(rng, w, h)
      Image.fromarray(img).save(train_img / folder / f'{prefix}{k:04d}.jpg', quality=95)
      Image.fromarray(mask).save(train_mask / 'Disc_Cup_Masks' / folder / f'{prefix}{k:04d}.bmp')
  layouts = {
      'validation': ('REFUGE-Validation400/REFUGE-Validation400' if nested else 'REFUGE-Validation400',
                     'REFUGE-Validation400-GT', 'V', 'Fovea_locations', 'Glaucoma Label'),
      'test': ('REFUGE-Test400/Test400', 'REFUGE-Test-GT', 'T', 'Glaucoma_label_and_Fovea_location',
               'Label(Glaucoma=1)'),
  }
  for split, (img_dir, gt_dir, letter, table, label_col) in layouts.items():
    g, n = COUNTS[split]
    labels = [1] * g + [0] * n
    rng.shuffle(labels)  # Glaucoma cases are interleaved, as in the official lists.
    (root / img_dir).mkdir(parents=True, exist_ok=True)
    rows = []
    for k, label in enumerate(labels, start=1):
      name = f'{letter}{k:04d}'
      img, mask = _fundus(rng, w, h)
      Image.fromarray(img).save(root / img_dir / f'{name}.jpg', quality=95)
      # Test masks sorted into G/ and N/ sub-folders, validation masks flat: both forms are found.
      mask_dir = root / gt_dir / 'Disc_Cup_Masks' / (('G' if label else 'N') if split == 'test' else '')
      mask_dir.mkdir(parents=True, exist_ok=True)
      Image.fromarray(mask).save(mask_dir / f'{name}.bmp')
      rows.append([k, f'{name}.jpg', label, float(rng.integers(0, w)), float(rng.integers(0, h))])
    _table(root / gt_dir / f'{table}{ext}', ['ID', 'ImgName', label_col, 'Fovea_X', 'Fovea_Y'], rows)
  return root


def labels(root, split: str, *, csv_tables: bool = False) -> dict[str, int]:
  """The labels `write` put in a validation/test table (image name -> 0/1), read back with openpyxl/csv."""
  gt, table, col = (('REFUGE-Validation400-GT', 'Fovea_locations', 'Glaucoma Label') if split == 'validation'
                    else ('REFUGE-Test-GT', 'Glaucoma_label_and_Fovea_location', 'Label(Glaucoma=1)'))
  rows = read_table(pathlib.Path(root) / gt / f'{table}{".csv" if csv_tables else ".xlsx"}')
  return {r['ImgName']: int(float(r[col])) for r in rows}
