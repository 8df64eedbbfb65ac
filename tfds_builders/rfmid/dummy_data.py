"""Writes a miniature RFMiD in the official layout (three sets, label CSVs; our own synthetic content)."""
from __future__ import annotations

import csv
import pathlib

import numpy as np
from PIL import Image

from tfds_builders.rfmid.rfmid_dataset_builder import COLUMNS, LABELS, SPLITS

COUNTS = {'train': 6, 'validation': 3, 'test': 4}


def labels(split: str, n: int | None = None) -> list[tuple[int, int, list[int]]]:
  """(ID, Disease_Risk, 45 labels) rows written for `split`; IDs restart at 1 in each set, as officially."""
  out = []
  for i in range(COUNTS[split] if n is None else n):
    label = [0] * len(LABELS)
    if i % 3:
      label[(i * 7 + len(split)) % len(LABELS)] = 1
      label[i % len(LABELS)] = 1
    out.append((i + 1, int(any(label)), label))
  return out


def write(root, *, size: tuple[int, int] = (40, 30), seed: int = 0, kaggle: bool = False) -> pathlib.Path:
  """Writes `root/<Set>/{<images>/<ID>.png, <csv>}` (with `kaggle`, each set nested in its own name)."""
  root = pathlib.Path(root)
  rng = np.random.default_rng(seed)
  w, h = size
  for split, (set_name, images, csv_name) in SPLITS.items():
    base = root / set_name / (set_name if kaggle else '')
    (base / images).mkdir(parents=True, exist_ok=True)
    rows = labels(split)
    for key, _, _ in rows:
      Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(base / images / f'{key}.png')
    with open(base / csv_name, 'w', newline='') as f:
      wr = csv.writer(f)
      wr.writerow(COLUMNS)
      for key, risk, label in rows:
        wr.writerow([key, risk, *label])
  return root
