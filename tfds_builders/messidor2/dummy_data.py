"""Writes a miniature Messidor-2 (ADCIS images + Kaggle adjudicated grades) with synthetic images, for tests."""
from __future__ import annotations

import csv
import pathlib

import numpy as np
from PIL import Image

EXAMS_PER_GRADE = 10  # Examinations per grade of the first (left) eye: 50 gradable exams.


def _image(rng, size=(30, 20)) -> Image.Image:
  w, h = size
  yy, xx = np.mgrid[:h, :w]
  disc = ((xx - w / 2) ** 2 + (yy - h / 2) ** 2 < (h / 2 - 1) ** 2)[..., None]
  return Image.fromarray((rng.integers(60, 256, (h, w, 3)) * disc).astype(np.uint8))


def write(root, *, pairing: bool = True, seed: int = 0) -> pathlib.Path:
  """Writes IMAGES/, messidor_data.csv and (if `pairing`) messidor-2.csv under `root`.

  Half the examinations are named like the Messidor-Original part (PNG, `2005..._PP.png`), half like
  the Brest extension (JPEG, `IM000123.JPG`, listed in the grades file as `.jpg`: the builder must
  match names without regard to case). Three exams per grade have a second eye one grade worse, so
  an exam's eyes can differ. One extra exam is ungradable (empty grades, adjudicated_gradable 0).

  Returns:
    `root`. Grades and DME of every written row are in `root/messidor_data.csv`.
  """
  root = pathlib.Path(root)
  rng = np.random.default_rng(seed)
  (root / 'IMAGES').mkdir(parents=True, exist_ok=True)
  exams, rows = [], []
  n = 0
  for grade in range(5):
    for k in range(EXAMS_PER_GRADE):
      n += 1
      grades = (grade, min(grade + 1, 4) if k < 3 else grade)
      if n % 2:
        names = [(f'2005{n:04d}_{10000 + 2 * n + e:05d}_0100_PP.png',) * 2 for e in range(2)]
      else:
        names = [(f'IM{2 * n + e:06d}.JPG', f'IM{2 * n + e:06d}.jpg') for e in range(2)]
      for (file_name, csv_name), g in zip(names, grades):
        _image(rng).save(root / 'IMAGES' / file_name, format='PNG' if file_name.endswith('.png') else 'JPEG')
        rows.append([csv_name, g, int(rng.integers(0, 2)), 1])
      exams.append([names[0][0], names[1][0]])
  names = ['IM009990.JPG', 'IM009991.JPG']  # The ungradable examination.
  for name in names:
    _image(rng).save(root / 'IMAGES' / name, format='JPEG')
    rows.append([name, '', '', 0])
  exams.append(names)
  with open(root / 'messidor_data.csv', 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(['image_id', 'adjudicated_dr_grade', 'adjudicated_dme', 'adjudicated_gradable'])
    w.writerows(rows)
  if pairing:  # As distributed: semicolon-separated, header "left;right".
    (root / 'messidor-2.csv').write_text('left;right\n' + ''.join(f'{l};{r}\n' for l, r in exams))
  return root
