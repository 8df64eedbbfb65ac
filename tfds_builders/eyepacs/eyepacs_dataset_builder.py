"""TFDS builder for EyePACS, the Kaggle Diabetic Retinopathy Detection competition data (2015).

Splits follow the usual convention (also TFDS's `diabetic_retinopathy_detection`): `train` is
`trainLabels.csv` (35,126 images); the competition's test images are labelled by
`retinopathy_solution.csv`, released after the competition, whose `Usage` column puts each image on
the public (`validation`, 10,906 images) or private (`test`, 42,670 images) leaderboard. Records keep
the row order of their label file (patient number, left before right). Labels are the ICDR-style DR
grade 0-4; the patient id is the number before `_left`/`_right`. Kaggle's Public/Private assignment
and its train/test division are kept exactly as published; whether they always keep a patient's two
eyes on one side could not be checked without the files, so patient-disjointness rests on Kaggle.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import re

import numpy as np
import tensorflow_datasets as tfds

from tfds_builders import common

DR_GRADES = ('No DR', 'Mild', 'Moderate', 'Severe', 'Proliferative DR')
_NAME = re.compile(r'^(\d+)_(left|right)$')
_DS = 'eyepacs'
# Accepted locations: the files directly in the manual dir, or inside the competition's folder name
# (the Kaggle CLI download unpacks into it); `train/train` is what unzipping the joined multi-part
# archive inside a folder called `train` gives.
_BASES = ('', 'diabetic-retinopathy-detection')
_USAGE = {'Public': 'validation', 'Private': 'test'}


@dataclasses.dataclass
class EyepacsConfig(tfds.core.BuilderConfig):
  image_size: int = 0  # 0 = original JPEG bytes; else field-of-view crop, pad to square, resize.


def _candidates(*relpaths: str) -> list[str]:
  return [os.path.join(b, r) if b else r for b in _BASES for r in relpaths]


def _parse_grade(value: str, *, where: pathlib.Path, key: str) -> int:
  """The DR grade of one label-file row; a ValueError names the file, the image and the valid values."""
  if value in ('0', '1', '2', '3', '4'):
    return int(value)
  raise ValueError(f'{_DS}: {where}: image {key!r} has level {value!r}; valid levels are 0, 1, 2, 3, 4')


class Eyepacs(tfds.core.GeneratorBasedBuilder):
  """EyePACS / Kaggle DR Detection: 88,702 colour fundus photographs graded 0-4 for diabetic retinopathy."""

  name = 'eyepacs'
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release: train = trainLabels.csv, validation/test = Public/Private '
                            'rows of retinopathy_solution.csv.'}
  BUILDER_CONFIGS = [
      EyepacsConfig(name='512', image_size=512,
                    description='Cropped to the field of view, padded to square (black), resized to 512x512, '
                                'JPEG quality 95.'),
      EyepacsConfig(name='original', description='Original JPEG bytes, unchanged (sizes vary, up to ~5184x3456).'),
  ]
  DEFAULT_CONFIG_NAME = '512'
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download the data of the Kaggle competition "Diabetic Retinopathy Detection" (EyePACS, 2015):
  https://www.kaggle.com/competitions/diabetic-retinopathy-detection/data (accept the competition
  rules; the data are for non-commercial research use under those rules and may not be
  redistributed), e.g. `kaggle competitions download -c diabetic-retinopathy-detection`.
  Join and unzip the multi-part archives (`cat train.zip.* > train.zip && unzip train.zip`, the same
  for test.zip.*, or `7z x train.zip.001`), unzip trainLabels.csv.zip, and add
  retinopathy_solution.csv (the test labels Kaggle published after the competition, linked from the
  competition forum: https://storage.googleapis.com/kaggle-forum-message-attachments/90528/2877/retinopathy_solution.csv).
  Expected layout:

    <manual_dir>/trainLabels.csv             columns image,level (image = e.g. 10_left; level 0-4)
    <manual_dir>/retinopathy_solution.csv    columns image,level,Usage (Usage = Public or Private)
    <manual_dir>/train/<id>_<left|right>.jpeg   35,126 images
    <manual_dir>/test/<id>_<left|right>.jpeg    53,576 images

  Also accepted: all of this inside <manual_dir>/diabetic-retinopathy-detection/, and the images in
  train/train/ and test/test/ (unzipping inside a folder of the same name).
  Splits: train = trainLabels.csv; validation = Usage Public (10,906); test = Usage Private (42,670).
  Cite: Kaggle & EyePACS, Diabetic Retinopathy Detection, 2015; Cuadros & Bresnick, EyePACS,
  J Diabetes Sci Technol 3(3), 2009.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    s = self.builder_config.image_size
    return self.dataset_info_from_configs(
        description='Kaggle Diabetic Retinopathy Detection (EyePACS): DR grade 0-4 per eye, two eyes per patient.',
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(s or None, s or None, 3), encoding_format='jpeg'),
            'label': tfds.features.ClassLabel(names=DR_GRADES),
            'id': tfds.features.Scalar(dtype=np.int64, doc='Index in the split, in label-file row order.'),
            'file_name': tfds.features.Text(doc='Path relative to the manual dir, e.g. train/10_left.jpeg.'),
            'patient_id': tfds.features.Text(doc='The number before _left/_right.'),
            'eye': tfds.features.ClassLabel(names=['left', 'right']),
        }),
        supervised_keys=('image', 'label'),
        disable_shuffling=True,
        homepage='https://www.kaggle.com/competitions/diabetic-retinopathy-detection',
        citation='Kaggle and EyePACS, Diabetic Retinopathy Detection, 2015. '
                 'https://www.kaggle.com/c/diabetic-retinopathy-detection',
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = pathlib.Path(dl_manager.manual_dir)
    train_csv = common.find_first(root, _candidates('trainLabels.csv'), dataset=_DS)
    solution_csv = common.find_first(root, _candidates('retinopathy_solution.csv'), dataset=_DS)
    train_dir = common.find_first(root, _candidates('train/train', 'train'), dataset=_DS)
    test_dir = common.find_first(root, _candidates('test/test', 'test'), dataset=_DS)
    splits = {'train': self._rows(train_csv, train_dir, usage=None)}
    for usage, split in _USAGE.items():
      splits[split] = self._rows(solution_csv, test_dir, usage=usage)
    for split, rows in splits.items():
      common.check_nonempty(split, rows, dataset=_DS, where=solution_csv if split != 'train' else train_csv)
    return {split: self._generate_examples(rows, root) for split, rows in splits.items()}

  def _rows(self, csv_path: pathlib.Path, image_dir: pathlib.Path, *, usage: str | None):
    """(image path, grade, patient, eye) per row of one label file; every check before any writing."""
    table = common.read_csv(csv_path, required=('image', 'level') + (('Usage',) if usage else ()), dataset=_DS)
    present = set(os.listdir(image_dir))  # One listing: tens of thousands of exists() calls are slow.
    rows, missing = [], []
    for row in table:
      key = row['image']
      m = _NAME.match(key)
      if not m:
        raise ValueError(f'{_DS}: {csv_path}: image {key!r} is not of the form <number>_<left|right>')
      if usage:
        if row['Usage'] not in _USAGE:
          raise ValueError(f'{_DS}: {csv_path}: image {key!r} has Usage {row["Usage"]!r}; '
                           f'valid values are {sorted(_USAGE)}')
        if row['Usage'] != usage:
          continue
      grade = _parse_grade(row['level'], where=csv_path, key=key)
      if f'{key}.jpeg' not in present:
        missing.append(f'{key}.jpeg')
      rows.append((image_dir / f'{key}.jpeg', grade, m.group(1), m.group(2)))
    if missing:
      raise common.LayoutError(f'{_DS}: {len(missing)} image(s) listed in {csv_path} are missing from {image_dir}: '
                               f'{missing[:10]}{" ..." if len(missing) > 10 else ""}')
    return rows

  def _generate_examples(self, rows, root: pathlib.Path):
    size = self.builder_config.image_size
    for i, (path, grade, patient, eye) in enumerate(rows):
      yield i, {
          'image': common.image_bytes(path, mode='RGB', fmt='jpeg', size=size, fit='fov'),
          'label': grade,
          'id': i,
          'file_name': path.relative_to(root).as_posix(),
          'patient_id': patient,
          'eye': eye,
      }
