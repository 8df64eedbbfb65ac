"""Writes a miniature BCCD in the official VOC layout (our own random pixels and boxes) for tests.

Images are 48x36 (the originals are 640x480). Box quirks of the real annotations are included on
purpose: one zero-area RBC box (xmin == xmax, skipped) and one WBC box reaching past the right and
bottom borders (clipped).
"""
from __future__ import annotations

import pathlib

import numpy as np
from PIL import Image

WIDTH, HEIGHT = 48, 36
# Image ids per ImageSets list (gaps in the numbering, like the real data).
SPLITS = {'train': [0, 1, 2, 4], 'val': [5, 7], 'test': [8, 10]}
# Boxes per image: (class, xmin, ymin, xmax, ymax), the third box of image 1 has zero area.
_BOXES = [('RBC', 2, 3, 12, 13), ('WBC', 20, 10, 36, 26), ('Platelets', 40, 2, 45, 7)]
ZERO_AREA = (1, ('RBC', 30, 20, 30, 20))          # (image id, box): skipped by the builder.
OUTSIDE = (4, ('WBC', 38, 28, 52, 40))            # Clipped to (38, 28, 48, 36).


def boxes(image_id: int) -> list[tuple]:
  """The boxes written for one image, in XML order (quirky ones included)."""
  out = list(_BOXES[: 1 + image_id % 3])
  for special_id, box in (ZERO_AREA, OUTSIDE):
    if image_id == special_id:
      out.append(box)
  return out


def _xml(image_id: int) -> str:
  objects = ''.join(
      f'\t<object>\n\t\t<name>{n}</name>\n\t\t<pose>Unspecified</pose>\n\t\t<truncated>0</truncated>\n'
      f'\t\t<difficult>0</difficult>\n\t\t<bndbox>\n\t\t\t<xmin>{x0}</xmin>\n\t\t\t<ymin>{y0}</ymin>\n'
      f'\t\t\t<xmax>{x1}</xmax>\n\t\t\t<ymax>{y1}</ymax>\n\t\t</bndbox>\n\t</object>\n'
      for n, x0, y0, x1, y1 in boxes(image_id))
  return (f'<annotation>\n\t<folder>JPEGImages</folder>\n\t<filename>BloodImage_{image_id:05d}.jpg</filename>\n'
          f'\t<size>\n\t\t<width>{WIDTH}</width>\n\t\t<height>{HEIGHT}</height>\n\t\t<depth>3</depth>\n\t</size>\n'
          f'\t<segmented>0</segmented>\n{objects}</annotation>\n')


def write(root, *, seed: int = 0) -> pathlib.Path:
  """Writes <root>/BCCD/{Annotations,JPEGImages,ImageSets/Main}; returns root (the manual dir)."""
  root = pathlib.Path(root)
  bccd = root / 'BCCD'
  for d in ('Annotations', 'JPEGImages', 'ImageSets/Main'):
    (bccd / d).mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  for split, ids in SPLITS.items():
    (bccd / 'ImageSets/Main' / f'{split}.txt').write_text(''.join(f'BloodImage_{i:05d}\n' for i in ids))
    for i in ids:
      pixels = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
      Image.fromarray(pixels).save(bccd / 'JPEGImages' / f'BloodImage_{i:05d}.jpg', quality=95)
      (bccd / 'Annotations' / f'BloodImage_{i:05d}.xml').write_text(_xml(i))
  (bccd / 'ImageSets/Main/trainval.txt').write_text(
      ''.join(f'BloodImage_{i:05d}\n' for i in SPLITS['train'] + SPLITS['val']))
  return root
