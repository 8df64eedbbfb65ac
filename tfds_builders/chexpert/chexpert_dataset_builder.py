"""TFDS builder for CheXpert (Irvin et al. 2019): chest radiographs with 14 report-derived observations.

Splits: the official validation set (valid.csv, 234 images of 200 patients, labelled by radiologists)
is 'test'; train.csv is split by patient into 'train' (95%) and 'validation' (5%) with
`common.patient_split(seed=0)` (no stratification: the labels are multi-label). The patient split is
made over every row of train.csv before the view filter, so a patient is on the same side in every
config. Within a split, records are sorted by the CSV `Path`.

Labels: a length-14 int vector in `LABELS` order. CheXpert marks each observation 1.0 (positive),
0.0 (negative), -1.0 (uncertain) or blank (not mentioned); blanks become 0 and uncertain labels
follow the config's policy (Irvin et al. Sec. 4): `u_ones` -> 1, `u_zeros` -> 0, `u_keep` -> -1.

`require_files`, `parse_labels` and `LABELS` are shared with the MIMIC-CXR and COVIDx builders.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import re
from typing import Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds

from tfds_builders import common

# The 14 CheXpert observations, in the column order of CheXpert's train.csv / valid.csv.
LABELS = ('No Finding', 'Enlarged Cardiomediastinum', 'Cardiomegaly', 'Lung Opacity', 'Lung Lesion', 'Edema',
          'Consolidation', 'Pneumonia', 'Atelectasis', 'Pneumothorax', 'Pleural Effusion', 'Pleural Other',
          'Fracture', 'Support Devices')
# Uncertainty policy -> value stored for an uncertain (-1.0) mention.
POLICIES = {'u_ones': 1, 'u_zeros': 0, 'u_keep': -1}
_CELL = {'1.0': 1, '1': 1, '0.0': 0, '0': 0, '-1.0': -1, '-1': -1, '': None}
_COLUMNS = ('Path', 'Sex', 'Age', 'Frontal/Lateral', 'AP/PA') + LABELS
_PATIENT = re.compile(r'(patient\d+)')
_FOLDERS = ('CheXpert-v1.0-small', 'CheXpert-v1.0')
_VAL_FRACTION = 0.05
_SEED = 0


def parse_labels(row: Mapping[str, str], *, policy: str, where: str) -> list[int]:
  """The 14 observations of one CSV row as ints under an uncertainty policy (blank -> 0).

  Raises:
    ValueError naming `where` (file and row), the column, the value and the valid values.
  """
  unc = POLICIES[policy]
  out = []
  for name in LABELS:
    value = (row.get(name) or '').strip()
    if value not in _CELL:
      raise ValueError(f'{where}: column {name!r} has value {value!r}; valid values are 1.0, 0.0, -1.0 or blank')
    v = _CELL[value]
    out.append(0 if v is None else unc if v == -1 else v)
  return out


def require_files(paths: Sequence[pathlib.Path], *, dataset: str, what: str, limit: int = 5) -> None:
  """Raises LayoutError naming the first `limit` missing files (and how many) among `paths`.

  Like `common.require`, but for the hundreds of thousands of files a CSV lists: the message stays short.
  """
  missing = [p for p in paths if not os.path.isfile(p)]
  if missing:
    raise common.LayoutError(
        f'{dataset}: {len(missing)} of {len(paths)} {what} listed in the label files are missing, e.g. '
        f'{[str(p) for p in missing[:limit]]}. See MANUAL_DOWNLOAD_INSTRUCTIONS of tfds_builders.{dataset}.')


@dataclasses.dataclass
class ChexpertConfig(tfds.core.BuilderConfig):
  """Uncertainty policy x view filter x stored size."""
  policy: str = 'u_ones'  # A key of POLICIES.
  views: str = 'frontal'  # 'frontal' (Frontal/Lateral == Frontal) or 'all'.
  image_size: int = 320  # 0 = the original JPEG bytes, unchanged.


class Chexpert(tfds.core.GeneratorBasedBuilder):
  """CheXpert v1.0 chest radiographs (Stanford), 14 observations with an uncertainty policy."""

  name = 'chexpert'
  LABEL_NAMES = LABELS  # Names of the multi-label 'label' columns (pipeline.label_names).
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release: official valid as test; train.csv split 95/5 by patient (seed 0).'}
  BUILDER_CONFIGS = [
      ChexpertConfig(name='frontal_u_ones_320', policy='u_ones', views='frontal', image_size=320,
                     description='Frontal views; uncertain -> 1; padded square, 320x320 grayscale PNG.'),
      ChexpertConfig(name='frontal_u_zeros_320', policy='u_zeros', views='frontal', image_size=320,
                     description='Frontal views; uncertain -> 0; padded square, 320x320 grayscale PNG.'),
      ChexpertConfig(name='all_u_keep_320', policy='u_keep', views='all', image_size=320,
                     description='Frontal and lateral views; uncertain kept as -1; 320x320 grayscale PNG.'),
      ChexpertConfig(name='frontal_u_ones_original', policy='u_ones', views='frontal', image_size=0,
                     description='Frontal views; uncertain -> 1; the original JPEG bytes, unchanged.'),
  ]
  DEFAULT_CONFIG_NAME = 'frontal_u_ones_320'
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Register and download CheXpert from the Stanford AIMI page
  (https://stanfordmlgroup.github.io/competitions/chexpert/ -> Stanford AIMI shared datasets,
  https://aimi.stanford.edu/datasets/chexpert-chest-x-rays). Use is governed by the Stanford
  University School of Medicine CheXpert Dataset Research Use Agreement (non-commercial research
  only, no redistribution). Cite: Irvin et al., CheXpert: A Large Chest Radiograph Dataset with
  Uncertainty Labels and Expert Comparison, AAAI 2019.

  Unzip either the downsampled release (CheXpert-v1.0-small.zip, ~11 GB) or the full-size release
  (CheXpert-v1.0) into the manual directory:

    <manual_dir>/CheXpert-v1.0-small/train.csv
    <manual_dir>/CheXpert-v1.0-small/valid.csv
    <manual_dir>/CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg
    <manual_dir>/CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg

  (or the same under <manual_dir>/CheXpert-v1.0/, or with train.csv directly in <manual_dir>).
  CSV columns: Path, Sex, Age, Frontal/Lateral, AP/PA and the 14 observations No Finding ...
  Support Devices. `Path` starts with the release folder name (CheXpert-v1.0-small/train/...); it is
  resolved relative to the folder holding train.csv, so a renamed release folder still works.
  Splits: valid.csv -> 'test'; train.csv -> 'train'/'validation', 95/5 by patient, seed 0.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config
    s = c.image_size
    return self.dataset_info_from_configs(
        description=f'CheXpert v1.0 chest radiographs ({c.views} views, uncertainty policy {c.policy}).',
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(s or None, s or None, 1), encoding_format='png' if s else 'jpeg'),
            'label': tfds.features.Tensor(shape=(len(LABELS),), dtype=np.int64,
                                          doc='1/0 (and -1 = uncertain under u_keep) for: ' + ', '.join(LABELS)),
            'id': tfds.features.Scalar(dtype=np.int64, doc='Index in the split, records sorted by CSV Path.'),
            'file_name': tfds.features.Text(doc='Image path relative to the manual dir.'),
            'patient_id': tfds.features.Text(doc='"patientXXXXX" from the path.'),
            'sex': tfds.features.Text(doc='Sex column as given: Male, Female or Unknown.'),
            'age': tfds.features.Scalar(dtype=np.int64, doc='Age in years; -1 if blank.'),
            'view': tfds.features.ClassLabel(names=['frontal', 'lateral']),
            'ap_pa': tfds.features.Text(doc='AP/PA column (AP, PA, LL, RL) or "" for laterals.'),
        }),
        supervised_keys=('image', 'label'),
        disable_shuffling=True,
        homepage='https://stanfordmlgroup.github.io/competitions/chexpert/',
        citation='Irvin et al., CheXpert: A Large Chest Radiograph Dataset with Uncertainty Labels and Expert '
                 'Comparison, AAAI 2019.',
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual = pathlib.Path(dl_manager.manual_dir)
    train_csv = common.find_first(manual, [f'{f}/train.csv' for f in _FOLDERS] + ['train.csv'], dataset='chexpert')
    base = train_csv.parent
    valid_csv, = common.require(base, 'valid.csv', dataset='chexpert')
    splits = {}
    train_rows = self._read(train_csv, base, manual)
    keys = [r['file_name'] for r in train_rows]
    idx = common.patient_split(keys, fractions={'train': 1 - _VAL_FRACTION, 'validation': _VAL_FRACTION},
                               seed=_SEED, patient_ids=[r['patient_id'] for r in train_rows])
    for split, where, rows in (('train', train_csv, [train_rows[i] for i in idx['train']]),
                               ('validation', train_csv, [train_rows[i] for i in idx['validation']]),
                               ('test', valid_csv, sorted(self._read(valid_csv, base, manual),
                                                          key=lambda r: r['file_name']))):
      rows = [r for r in rows if self.builder_config.views == 'all' or r['view'] == 'frontal']
      common.check_nonempty(split, rows, dataset='chexpert', where=where)
      splits[split] = rows
    require_files([r['path'] for rows in splits.values() for r in rows], dataset='chexpert', what='images')
    return {split: self._generate_examples(rows) for split, rows in splits.items()}

  def _read(self, csv_path: pathlib.Path, base: pathlib.Path, manual: pathlib.Path) -> list[dict]:
    """Parsed, validated rows of train.csv / valid.csv (labels under the config's policy)."""
    out = []
    prefix = base.relative_to(manual).as_posix()  # '.' when train.csv lies in the manual dir itself.
    for i, row in enumerate(common.read_csv(csv_path, required=_COLUMNS, dataset='chexpert')):
      where = f'{csv_path} row {i + 2} (Path={row["Path"]!r})'  # Row 1 is the header.
      parts = pathlib.PurePosixPath(row['Path'].replace('\\', '/')).parts
      # Path starts with the release folder (CheXpert-v1.0-small/...): resolve it from the CSV's folder.
      rel = '/'.join(parts[1:] if parts and parts[0].lower().startswith('chexpert') else parts)
      patient = _PATIENT.search(row['Path'])
      view = row['Frontal/Lateral'].strip().lower()
      if view not in ('frontal', 'lateral'):
        raise ValueError(f'{where}: column \'Frontal/Lateral\' has value {row["Frontal/Lateral"]!r}; '
                         f'valid values are Frontal, Lateral')
      age = row['Age'].strip()
      try:
        age = int(float(age)) if age else -1
      except ValueError as e:
        raise ValueError(f'{where}: column \'Age\' has value {age!r}; expected a number or blank') from e
      out.append({
          'path': base / rel,
          'file_name': rel if prefix == '.' else f'{prefix}/{rel}',
          'patient_id': patient.group(1) if patient else '',
          'label': parse_labels(row, policy=self.builder_config.policy, where=where),
          'sex': row['Sex'], 'age': age, 'view': view, 'ap_pa': row['AP/PA'],
      })
    return out

  def _generate_examples(self, rows):
    size = self.builder_config.image_size
    for i, r in enumerate(rows):
      yield i, {
          'image': common.image_bytes(r['path'], mode='L', fmt='png' if size else 'jpeg', size=size, fit='pad'),
          'label': np.asarray(r['label'], np.int64),
          'id': i,
          'file_name': r['file_name'],
          'patient_id': r['patient_id'],
          'sex': r['sex'],
          'age': r['age'],
          'view': r['view'],
          'ap_pa': r['ap_pa'],
      }
