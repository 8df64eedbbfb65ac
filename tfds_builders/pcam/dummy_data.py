"""Writes a miniature PatchCamelyon (official HDF5 file names, dataset keys, dtypes and shapes; our own
random pixels) for tests."""
from __future__ import annotations

import csv
import gzip
import pathlib
import shutil

import h5py
import numpy as np

SIZES = {'train': 12, 'valid': 6, 'test': 6}


def labels(split: str) -> np.ndarray:
  """The labels written for one split (alternating 0/1, starting with 1 in 'valid')."""
  return (np.arange(SIZES[split]) + (split == 'valid')) % 2


def write(root, *, meta: bool = True, gz: tuple[str, ...] = (), seed: int = 0) -> pathlib.Path:
  """Writes camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5 (+ _meta.csv) into root.

  Args:
    meta: also write the *_meta.csv files (unnamed index, coord_y, coord_x, tumor_patch,
      center_tumor_patch, wsi), with one slide per split.
    gz: file names to leave only gzip-compressed (as downloaded), e.g. ('camelyonpatch_level_2_split_test_y.h5',).
  """
  root = pathlib.Path(root)
  root.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  for split, n in SIZES.items():
    stem = root / f'camelyonpatch_level_2_split_{split}'
    y = labels(split)
    with h5py.File(f'{stem}_x.h5', 'w') as f:
      f.create_dataset('x', data=rng.integers(0, 256, (n, 96, 96, 3), dtype=np.uint8), chunks=(4, 96, 96, 3))
    with h5py.File(f'{stem}_y.h5', 'w') as f:
      f.create_dataset('y', data=y.astype(np.uint8).reshape(n, 1, 1, 1))
    if meta:
      with open(f'{stem}_meta.csv', 'w', newline='') as f:
        w = csv.writer(f)
        w.writerow(['', 'coord_y', 'coord_x', 'tumor_patch', 'center_tumor_patch', 'wsi'])
        for i in range(n):
          w.writerow([i, 96 * i, 48 * i, bool(y[i]), bool(y[i]), f'{split}_slide_{i % 2:03d}'])
  for name in gz:
    with open(root / name, 'rb') as src, gzip.open(root / f'{name}.gz', 'wb') as dst:
      shutil.copyfileobj(src, dst)
    (root / name).unlink()
  return root
