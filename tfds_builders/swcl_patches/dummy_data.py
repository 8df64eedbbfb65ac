"""Writes a miniature SWCL propagation folder (the stage-2 layout swcl_patches reads), for tests."""
from __future__ import annotations

import csv
import json
import pathlib
from typing import Sequence

import numpy as np
from PIL import Image


def write_dummy(dir, *, num_images: int = 6, image_size: int = 32, classes: Sequence[str] = ('healthy', 'dr'),
                seed: int = 0) -> pathlib.Path:  # pylint: disable=redefined-builtin
  """Writes a valid propagation folder under `dir` and returns it.

  Images are random RGB noise; each CAM is one Gaussian blob at a random place, max-normalised to 255.
  Images 2j and 2j+1 are the left and right eye of patient j (an odd last image has eye 'unknown' and
  a patient of its own). Pseudo-labels are seeded random probabilities (summing to 1); the first class
  is the only normal class and abnormal_prob = 1 - its probability. Keys are '000000', '000001', ...
  """
  root = pathlib.Path(dir)
  classes = list(classes)
  rng = np.random.default_rng(seed)
  for sub in ('images', 'cams'):
    (root / sub).mkdir(parents=True, exist_ok=True)
  yy, xx = np.mgrid[:image_size, :image_size]
  rows = []
  for i in range(num_images):
    key = f'{i:06d}'
    Image.fromarray(rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8), 'RGB').save(
        root / 'images' / f'{key}.png')
    cy, cx = rng.uniform(0, image_size, 2)
    blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (image_size / 6) ** 2))
    Image.fromarray(np.round(255 * blob / blob.max()).astype(np.uint8), 'L').save(root / 'cams' / f'{key}.png')
    probs = rng.dirichlet(np.ones(len(classes)))
    paired = i < num_images - num_images % 2
    rows.append({
        'key': key, 'source': 'dummy/pool:test', 'index': i,
        'patient_id': f'dummy/pool:test:P{i // 2:03d}' if paired else f'dummy/pool:test:P{i:03d}_alone',
        'eye': ('left', 'right')[i % 2] if paired else 'unknown',
        'abnormal_prob': repr(float(1.0 - probs[0])),
        **{f'prob_{c}': repr(float(p)) for c, p in zip(classes, probs)},
    })
  with open(root / 'pseudo_labels.csv', 'w', newline='', encoding='utf-8') as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
  manifest = {'classes': classes, 'normal_classes': classes[:1], 'multi_label': False, 'image_size': image_size,
              'num_images': num_images, 'sources': [{'builder': 'dummy', 'split': 'test'}]}
  (root / 'manifest.json').write_text(json.dumps(manifest, indent=2))
  return root
