"""Writes a miniature Shenzhen CXR set in the official layout (our own random pixels) for tests."""
from __future__ import annotations

import pathlib

import numpy as np
from PIL import Image


def write(root, *, count: int = 20, size: tuple[int, int] = (40, 36), masks: bool = True,
          mask_every: int = 3, seed: int = 0) -> pathlib.Path:
  """`count` images CHNCXR_0001_0, CHNCXR_0002_1, ... (labels alternate), readings, and lung masks.

  Masks (0/255, like the published ones) go to root/mask for all images but every `mask_every`-th
  (the published masks cover part of the set). Every 4th image is RGB (a few real files are).
  """
  root = pathlib.Path(root)
  base = root / 'ChinaSet_AllFiles'
  (base / 'CXR_png').mkdir(parents=True, exist_ok=True)
  (base / 'ClinicalReadings').mkdir(parents=True, exist_ok=True)
  if masks:
    (root / 'mask').mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  w, h = size
  for k in range(count):
    label = k % 2
    stem = f'CHNCXR_{k + 1:04d}_{label}'
    a = rng.integers(0, 256, (h, w), dtype=np.uint8)
    im = Image.fromarray(a)
    (im.convert('RGB') if k % 4 == 3 else im).save(base / 'CXR_png' / f'{stem}.png')
    finding = 'normal' if label == 0 else 'PTB in the left upper field'
    reading = f'{"male" if k % 2 else "female"} {20 + k}yrs\n{finding}\n'
    (base / 'ClinicalReadings' / f'{stem}.txt').write_text(reading)
    if masks and k % mask_every:
      m = np.zeros((h, w), np.uint8)
      m[h // 4: 3 * h // 4, w // 8: w // 2 - 2] = 255
      m[h // 4: 3 * h // 4, w // 2 + 2: 7 * w // 8] = 255
      Image.fromarray(m).save(root / 'mask' / f'{stem}_mask.png')
  return root
