"""Writes a miniature Montgomery County CXR set in the official layout (our own random pixels) for tests."""
from __future__ import annotations

import pathlib

import numpy as np
from PIL import Image


def write(root, *, count: int = 20, size: tuple[int, int] = (30, 36), seed: int = 0) -> pathlib.Path:
  """`count` images MCUCXR_0001_0, MCUCXR_0002_1, ... (labels alternate) with 0/255 lung masks and readings.

  The left-lung mask covers the image's right half (the patient's left), the right-lung mask its left half.
  """
  root = pathlib.Path(root)
  base = root / 'MontgomerySet'
  for d in ('CXR_png', 'ManualMask/leftMask', 'ManualMask/rightMask', 'ClinicalReadings'):
    (base / d).mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  w, h = size
  for k in range(count):
    label = k % 2
    name = f'MCUCXR_{k + 1:04d}_{label}'
    Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)).save(base / 'CXR_png' / f'{name}.png')
    left, right = np.zeros((h, w), np.uint8), np.zeros((h, w), np.uint8)
    top, bottom = h // 4 + k % 3, 3 * h // 4
    right[top:bottom, 2: w // 2 - 1] = 255
    left[top:bottom, w // 2 + 1: w - 2] = 255
    Image.fromarray(left).save(base / 'ManualMask/leftMask' / f'{name}.png')
    Image.fromarray(right).save(base / 'ManualMask/rightMask' / f'{name}.png')
    finding = 'normal' if not label else 'right upper lobe TB'
    reading = f"Patient's Sex: {'MF'[k % 2]}\nPatient's Age: {30 + k:03d}Y\n{finding}\n"
    (base / 'ClinicalReadings' / f'{name}.txt').write_text(reading)
  return root
