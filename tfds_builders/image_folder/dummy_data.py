"""Writes miniature user datasets (our own random pixels) in each layout image_folder accepts, for tests."""
from __future__ import annotations

import csv
import pathlib

import numpy as np
from PIL import Image

LAYOUTS = ('split_folders', 'class_folders', 'csv', 'csv_multilabel', 'unlabelled', 'unlabelled_nested',
           'unlabelled_split_folders', 'unlabelled_csv')
# split_folders: split folder -> class -> number of images ('val' is an accepted name of 'validation').
SPLIT_FOLDERS = {'train': {'benign': 4, 'malignant': 3}, 'val': {'benign': 2, 'malignant': 1},
                 'test': {'benign': 2, 'malignant': 2}}
CLASS_FOLDERS = {'normal': 10, 'pneumonia': 6, 'covid': 4}
FINDINGS = ('effusion', 'nodule', 'pneumonia')  # csv_multilabel label columns.
_FORMATS = ('png', 'jpg', 'bmp', 'tif')


def _image(rng, path: pathlib.Path, k: int, size) -> None:
  """A small random image; the format (and for PNG, the mode) cycles with k to cover what PIL reads."""
  w, h = size
  path.parent.mkdir(parents=True, exist_ok=True)
  if path.suffix == '.png' and k % 3 == 1:  # 16-bit grayscale, like many X-ray exports.
    Image.fromarray(rng.integers(0, 4096, (h, w), dtype=np.uint16)).save(path)
  elif path.suffix == '.png' and k % 3 == 2:
    Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), 'RGBA').save(path)
  else:
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


def write(root, *, layout: str = 'split_folders', size: tuple[int, int] = (20, 16), seed: int = 0) -> pathlib.Path:
  """Writes one miniature dataset under `root` in `layout` (one of LAYOUTS) and returns `root`.

  csv: 18 images of 9 patients (2 each) in images/, labels.csv with image,label,patient_id,split.
  csv_multilabel: 20 images of 10 patients in images/<patient>/, labels.csv with image, patient_id,
    the FINDINGS 0/1 columns and report; no split column.
  unlabelled: 20 images directly in root (auto-detected as unlabelled) and a notes.txt.
  unlabelled_nested: 20 images pat<PP>_<j>.* of 10 patients, 2 directly in root and the others in
    site_a/2019/, site_a/2020/ and site_b/ (needs "labels": "none": the top level mixes both).
  unlabelled_split_folders: train/ 6 and val/ 2 images, no sub-folders (auto-detected).
  unlabelled_csv: 20 images of 10 patients in images/, pool.csv with image and patient_id only.
  """
  root = pathlib.Path(root)
  root.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  k = 0
  if layout == 'split_folders':
    for split, classes in SPLIT_FOLDERS.items():
      for cls, n in classes.items():
        for j in range(n):
          _image(rng, root / split / cls / f'{split}_{cls}_{j}.{_FORMATS[k % 4]}', k, size)
          k += 1
  elif layout == 'class_folders':
    for cls, n in CLASS_FOLDERS.items():
      for j in range(n):
        sub = 'more/' if j == 0 else ''  # Nested folders inside a class folder are allowed.
        _image(rng, root / cls / f'{sub}{cls}_{j:02d}.{_FORMATS[k % 4]}', k, size)
        k += 1
    (root / 'normal' / 'notes.txt').write_text('not an image: ignored')
  elif layout == 'csv':
    rows = []
    splits = ['train'] * 5 + ['validation', 'val'] + ['test'] * 2
    for p in range(9):
      for j in range(2):
        name = f'images/p{p:02d}_{j}.png'
        _image(rng, root / name, k, size)
        k += 1
        rows.append({'image': name, 'label': ['mild', 'none', 'severe'][(p + j) % 3],
                     'patient_id': f'P{p:02d}', 'split': splits[p]})
    _write_csv(root / 'labels.csv', rows)
  elif layout == 'csv_multilabel':
    rows = []
    for p in range(10):
      for j in range(2):
        name = f'images/P{p:02d}/{j}.jpg'
        _image(rng, root / name, 0, size)
        vec = [int(b) for b in np.binary_repr((p * 2 + j) % 8, 3)]
        found = [f for f, v in zip(FINDINGS, vec) if v]
        rows.append({'image': name, 'patient_id': f'P{p:02d}', **dict(zip(FINDINGS, vec)),
                     'report': 'Findings: ' + (', '.join(found) if found else 'none') + '.'})
    _write_csv(root / 'labels.csv', rows)
  elif layout == 'unlabelled':
    for k in range(20):
      _image(rng, root / f'img_{k:02d}.{_FORMATS[k % 4]}', k, size)
    (root / 'notes.txt').write_text('not an image: ignored')
  elif layout == 'unlabelled_nested':
    folders = ['', 'site_a/2019/', 'site_a/2019/', 'site_a/2020/', 'site_b/']
    for k in range(20):
      _image(rng, root / f'{folders[k % 5] if k >= 2 else ""}pat{k // 2:02d}_{k % 2}.{_FORMATS[k % 4]}', k, size)
  elif layout == 'unlabelled_split_folders':
    for split, n in (('train', 6), ('val', 2)):
      for j in range(n):
        _image(rng, root / split / f'{split}_{j}.{_FORMATS[k % 4]}', k, size)
        k += 1
  elif layout == 'unlabelled_csv':
    rows = []
    for p in range(10):
      for j in range(2):
        name = f'images/p{p:02d}_{j}.png'
        _image(rng, root / name, k, size)
        k += 1
        rows.append({'image': name, 'patient_id': f'P{p:02d}'})
    _write_csv(root / 'pool.csv', rows)
  else:
    raise ValueError(f'layout={layout!r}; expected one of {LAYOUTS}')
  return root


def _write_csv(path: pathlib.Path, rows: list[dict]) -> None:
  with open(path, 'w', newline='', encoding='utf-8') as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
