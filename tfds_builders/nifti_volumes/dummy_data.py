"""Small CT-like NIfTI volumes and their table, in the layout nifti_volumes reads (for tests).

Each volume is air (-1000 HU) around an ellipsoidal body (40 HU) holding a sphere of 300 HU
(malignant) or 100 HU (benign). The affine flips the first axis (an LAS orientation, as many
converters write), so a build must reorient it.
"""
from __future__ import annotations

import csv
import pathlib

import nibabel as nib
import numpy as np

CLASSES = ('benign', 'malignant')


def volume(shape=(12, 10, 8), *, lesion_hu: float = 300.0, seed: int = 0) -> np.ndarray:
  """int16 Hounsfield units [X, Y, Z]."""
  rng = np.random.default_rng(seed)
  grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing='ij'))
  out = np.full(shape, -1000.0)
  out[(grid ** 2).sum(0) < 0.8] = 40.0
  centre = rng.uniform(-0.3, 0.3, 3)[:, None, None, None]
  out[((grid - centre) ** 2).sum(0) < 0.1] = lesion_hu
  return np.rint(out + rng.normal(0, 5, shape)).astype(np.int16)


def save(path, data: np.ndarray, spacing=(0.9, 0.9, 2.0), *, flip_x: bool = True) -> pathlib.Path:
  """Writes `data` [X, Y, Z] as NIfTI with voxel `spacing` (mm); flip_x: an LAS affine, else RAS."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  affine = np.diag([-spacing[0] if flip_x else spacing[0], spacing[1], spacing[2], 1.0])
  nib.save(nib.Nifti1Image(data, affine), str(path))
  return path


def write_table(path, rows: list[dict]) -> pathlib.Path:
  path = pathlib.Path(path)
  columns = list(dict.fromkeys(k for r in rows for k in r))
  with open(path, 'w', newline='') as f:
    w = csv.DictWriter(f, fieldnames=columns)
    w.writeheader()
    w.writerows(rows)
  return path


def write(root, *, patients: int = 6, per_patient: int = 2, shape=(12, 10, 8), spacing=(0.9, 0.9, 2.0),
          split: bool = False, seed: int = 0) -> list[dict]:
  """Writes `patients` x `per_patient` volumes under root/scans and root/volumes.csv (path, label, patient_id,
  and with `split` a split column: patients 0-3 of every 6 train, 4 validation, 5 test); returns the rows."""
  root = pathlib.Path(root)
  rows = []
  for p in range(patients):
    label = CLASSES[p % 2]
    for k in range(per_patient):
      rel = f'scans/p{p:03d}_{k}.nii.gz'
      save(root / rel, volume(shape, lesion_hu=300.0 if label == 'malignant' else 100.0, seed=seed + 10 * p + k),
           spacing)
      row = {'path': rel, 'label': label, 'patient_id': f'p{p:03d}'}
      if split:
        row['split'] = ('train', 'train', 'train', 'train', 'val', 'test')[p % 6]
      rows.append(row)
  write_table(root / 'volumes.csv', rows)
  return rows
