"""TFDS builder for Messidor-2 with the adjudicated DR grades of Krause et al. (2018).

Messidor-2 (ADCIS / LaTIM, Brest) has 874 examinations of two eyes (1,748 images) and ships no
grades; Google published adjudicated ICDR grades, DME and gradability for them (Kaggle dataset
"messidor2-dr-grades", `messidor_data.csv`). Only images marked gradable are kept (1,744 of 1,748).

No official split exists: the gradable images are split 70/10/20 into train/validation/test with
`common.patient_split(seed=0)`, stratified by grade, keeping the two eyes of an examination on one
side. Examinations come from the official pairing file `messidor-2.csv` (one `left;right` row per
examination); `patient_id` is the examination's 1-based row number in that file, zero-padded
("001"-"874"). Without the pairing file `patient_id` is "" and every image is split on its own (so
two eyes of a person may fall on different sides). Records in a split are ordered by image name.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from tfds_builders import common

DR_GRADES = ('No DR', 'Mild', 'Moderate', 'Severe', 'Proliferative DR')
FRACTIONS = {'train': 0.7, 'validation': 0.1, 'test': 0.2}
SEED = 0
_DS = 'messidor2'
_IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.tif', '.tiff')
# The grades (Kaggle) and the images (ADCIS) come from two downloads; accept each flat in the manual
# dir or inside the folder names their archives or the Kaggle CLI use.
_BASES = ('', 'messidor-2', 'Messidor-2', 'messidor2-dr-grades')
_REQUIRED = ('image_id', 'adjudicated_dr_grade', 'adjudicated_dme', 'adjudicated_gradable')


@dataclasses.dataclass
class Messidor2Config(tfds.core.BuilderConfig):
  image_size: int = 0  # 0 = original bytes (PNG or JPEG as distributed); else FOV crop, pad, resize (JPEG).


def _candidates(*relpaths: str) -> list[str]:
  return [os.path.join(b, r) if b else r for b in _BASES for r in relpaths]


def _int_value(value: str, valid: tuple[int, ...], *, where: pathlib.Path, key: str, column: str) -> int:
  """An integer cell ("2" or "2.0"); a ValueError names the file, the image, the column and the valid values."""
  try:
    f = float(value)
    if f.is_integer() and int(f) in valid:
      return int(f)
  except (TypeError, ValueError):
    pass
  raise ValueError(f'{_DS}: {where}: image {key!r} has {column} {value!r}; valid values are {list(valid)}')


def read_pairs(path: pathlib.Path) -> dict[str, str]:
  """Lower-cased image name -> examination id ("001", ...) from the official pairing file.

  The file has one examination per row, `left;right` (semicolon-separated, as distributed; commas are
  accepted too) with an optional header row; cells that are not image names are ignored.
  """
  try:
    lines = [l.strip() for l in path.read_text(encoding='utf-8-sig').splitlines() if l.strip()]
  except (OSError, UnicodeDecodeError) as e:
    raise ValueError(f'{_DS}: could not read the pairing file {path}: {e}') from e
  out: dict[str, str] = {}
  exam = 0
  for line in lines:
    cells = [c.strip().strip('"') for c in line.replace(';', ',').split(',')]
    images = [c for c in cells if c.lower().endswith(_IMAGE_SUFFIXES)]
    if not images:
      continue  # The header row.
    exam += 1
    for name in images:
      if name.lower() in out:
        raise ValueError(f'{_DS}: {path}: image {name!r} is listed in two examinations')
      out[name.lower()] = f'{exam:03d}'
  if not out:
    raise ValueError(f'{_DS}: {path} lists no image pairs (expected rows like "a.png;b.png")')
  return out


class Messidor2(tfds.core.GeneratorBasedBuilder):
  """Messidor-2: 1,744 gradable fundus photographs with adjudicated DR grade 0-4 and DME, seeded 70/10/20 split."""

  name = 'messidor2'
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release: gradable images, examination-level split 70/10/20 (stratified, seed 0).'}
  BUILDER_CONFIGS = [
      Messidor2Config(name='512', image_size=512,
                      description='Cropped to the field of view, padded to square (black), resized to 512x512, '
                                  'JPEG quality 95.'),
      Messidor2Config(name='original', description='Original bytes, unchanged: PNG (Messidor-Original part) or '
                                                   'JPEG (Messidor-Extension part), 1440x960 to 2304x1536.'),
  ]
  DEFAULT_CONFIG_NAME = '512'
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Two downloads are needed.
  1. The images: Messidor-2 from ADCIS, https://www.adcis.net/en/third-party/messidor2/ (free after
     registration; use under the Messidor-2 terms of use: research and teaching only, no
     redistribution, cite Decencière et al., Image Anal Stereol 33(3), 2014 and Abràmoff et al.,
     JAMA Ophthalmol 131(3), 2013). Extract IMAGES.part1-4.rar (IMAGES/) and keep messidor-2.csv.
  2. The grades: the Kaggle dataset "messidor2-dr-grades" by Google,
     https://www.kaggle.com/datasets/google-brain/messidor2-dr-grades (its licence as stated there;
     cite Krause et al., Ophthalmology 125(8), 2018), e.g.
     `kaggle datasets download -d google-brain/messidor2-dr-grades`, unzipped.
  Expected layout:

    <manual_dir>/IMAGES/                 1,748 images, e.g. 20051020_43808_0100_PP.png, IM000001.JPG
    <manual_dir>/messidor_data.csv       columns image_id, adjudicated_dr_grade (0-4),
                                         adjudicated_dme (0/1), adjudicated_gradable (0/1)
    <manual_dir>/messidor-2.csv          optional but recommended: one examination per row, "left;right"
                                         image names (the two eyes of one patient)

  Also accepted: any of these inside <manual_dir>/messidor-2/, <manual_dir>/Messidor-2/ or
  <manual_dir>/messidor2-dr-grades/, and images/ for IMAGES/. Image names are matched without regard
  to case (the files mix .png, .JPG and .jpg). Ungradable rows (adjudicated_gradable 0) are dropped.
  Splits: no official split; 70/10/20 train/validation/test by examination (seed 0, stratified by
  grade). Without messidor-2.csv patient_id is "" and images are split one by one.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    s = self.builder_config.image_size
    return self.dataset_info_from_configs(
        description='Messidor-2 fundus photographs with adjudicated DR grades and DME (Krause et al. 2018).',
        features=tfds.features.FeaturesDict({
            # Original config: bytes as distributed, PNG or JPEG, hence no single encoding format.
            'image': tfds.features.Image(shape=(s or None, s or None, 3), encoding_format='jpeg' if s else None),
            'label': tfds.features.ClassLabel(names=DR_GRADES),
            'dme': tfds.features.ClassLabel(names=['no', 'yes'], doc='Adjudicated diabetic macular edema.'),
            'id': tfds.features.Scalar(dtype=np.int64, doc='Index in the split, in image-name order.'),
            'file_name': tfds.features.Text(doc='Path relative to the manual dir, e.g. IMAGES/IM000001.JPG.'),
            'patient_id': tfds.features.Text(doc='Examination number in messidor-2.csv ("001"-"874"); "" without it.'),
        }),
        supervised_keys=('image', 'label'),
        disable_shuffling=True,
        homepage='https://www.adcis.net/en/third-party/messidor2/',
        citation='Decencière et al., Feedback on a publicly distributed image database: the Messidor database, '
                 'Image Anal Stereol 33(3):231-234, 2014. Abràmoff et al., JAMA Ophthalmol 131(3):351-357, 2013. '
                 'Krause et al., Grader variability and the importance of reference standards for evaluating '
                 'machine learning models for diabetic retinopathy, Ophthalmology 125(8):1264-1272, 2018.',
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = pathlib.Path(dl_manager.manual_dir)
    csv_path = common.find_first(root, _candidates('messidor_data.csv'), dataset=_DS)
    image_dir = common.find_first(root, _candidates('IMAGES', 'images'), dataset=_DS)
    pair_path = next((root / c for c in _candidates('messidor-2.csv') if (root / c).is_file()), None)
    files: dict[str, pathlib.Path] = {}
    for p in common.list_files(image_dir, _IMAGE_SUFFIXES, dataset=_DS):
      if p.name.lower() in files:
        raise ValueError(f'{_DS}: {image_dir} holds two files named {p.name!r} up to case')
      files[p.name.lower()] = p
    table = common.read_csv(csv_path, required=_REQUIRED, dataset=_DS)
    pairs = read_pairs(pair_path) if pair_path else {}
    items, missing, seen = [], [], set()
    for row in table:
      key = row['image_id']
      if key.lower() in seen:
        raise ValueError(f'{_DS}: {csv_path}: image {key!r} appears more than once')
      seen.add(key.lower())
      gradable = _int_value(row['adjudicated_gradable'], (0, 1), where=csv_path, key=key, column='adjudicated_gradable')
      if not gradable:
        continue  # Ungradable images have no grade.
      grade = _int_value(row['adjudicated_dr_grade'], tuple(range(5)), where=csv_path, key=key,
                         column='adjudicated_dr_grade')
      dme = _int_value(row['adjudicated_dme'], (0, 1), where=csv_path, key=key, column='adjudicated_dme')
      if key.lower() not in files:
        missing.append(key)
        continue
      items.append((files[key.lower()], grade, dme, pairs.get(key.lower(), '')))
    if missing:
      raise common.LayoutError(f'{_DS}: {len(missing)} image(s) listed in {csv_path} are missing from {image_dir}: '
                               f'{missing[:10]}{" ..." if len(missing) > 10 else ""}')
    parts = common.patient_split([p.name for p, *_ in items], fractions=FRACTIONS, seed=SEED,
                                 patient_ids=[pid for *_, pid in items], labels=[g for _, g, *_ in items])
    splits = {}
    for split, idx in parts.items():
      common.check_nonempty(split, idx, dataset=_DS, where=csv_path)
      splits[split] = self._generate_examples([items[i] for i in idx], root)
    return splits

  def _generate_examples(self, items, root: pathlib.Path):
    size = self.builder_config.image_size
    for i, (path, grade, dme, patient) in enumerate(items):
      if size:
        image = common.image_bytes(path, mode='RGB', fmt='jpeg', size=size, fit='fov')
      else:  # Unchanged bytes in the file's own format (re-encoded only if not plain RGB).
        fmt = 'jpeg' if path.suffix.lower() in ('.jpg', '.jpeg') else 'png'
        image = common.image_bytes(path, mode='RGB', fmt=fmt)
      yield i, {
          'image': image,
          'label': grade,
          'dme': dme,
          'id': i,
          'file_name': path.relative_to(root).as_posix(),
          'patient_id': patient,
      }
