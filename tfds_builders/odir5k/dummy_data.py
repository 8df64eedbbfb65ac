"""Writes a miniature ODIR-5K in the official layout (data.xlsx + Training Images, our own synthetic content)."""
from __future__ import annotations

import csv
import pathlib

import numpy as np
from PIL import Image

from tfds_builders.odir5k.odir5k_dataset_builder import COLUMNS, LABELS

HEADER = list(COLUMNS)


def rows(patients: int = 40, seed: int = 0) -> list[list]:
  """The sheet's rows (header first): IDs 0..patients-1 with two label patterns per class mix."""
  rng = np.random.default_rng(seed)
  out = [HEADER]
  for pid in range(patients):
    label = [0] * len(LABELS)
    label[pid % 4 if pid % 4 else 0] = 1  # Four label patterns of ten patients each: N, D, G, C.
    out.append([pid, int(rng.integers(20, 90)), 'Female' if pid % 2 else 'Male', f'{pid}_left.jpg',
                f'{pid}_right.jpg', f'keyword left {pid}', f'keyword right {pid}，normal fundus', *label])
  return out


def write(root, *, patients: int = 40, size: tuple[int, int] = (32, 24), seed: int = 0, nesting: str = 'ODIR-5K',
          table: str = 'xlsx', test_images: int = 2) -> pathlib.Path:
  """Writes `root/<nesting>/{data.xlsx|data.csv, Training Images/, Testing Images/}`."""
  import openpyxl  # pylint: disable=import-outside-toplevel
  root = pathlib.Path(root)
  base = root / nesting
  rng = np.random.default_rng(seed)
  w, h = size
  for folder, n in (('Training Images', patients), ('Testing Images', test_images)):
    (base / folder).mkdir(parents=True, exist_ok=True)
    first = 0 if folder == 'Training Images' else 10000
    for pid in range(first, first + n):
      for eye in ('left', 'right'):
        a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(a).save(base / folder / f'{pid}_{eye}.jpg', quality=95)
  data = rows(patients, seed)
  if table == 'xlsx':
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = 'Sheet1'
    for r in data:
      ws.append(r)
    wb.save(base / 'data.xlsx')
  else:
    with open(base / 'data.csv', 'w', newline='', encoding='utf-8') as f:
      csv.writer(f).writerows(data)
  return root
