"""TFDS builder for ODIR-5K (Ocular Disease Intelligent Recognition, ODIR-2019, Peking University).

3500 labelled patients (the challenge's training set), each with a left and a right fundus
photograph, doctors' diagnostic keywords per eye and patient-level labels over 8 classes. The
challenge's test patients were released without labels, so they are not used.

Split: no labelled official test set exists, so the 3500 patients are split 70/10/20 into
train/validation/test with `common.patient_split(seed=0)`, stratified by the patient's 8-class
label vector; both eyes of a patient are always in the same split. Records: one per eye image,
ordered by patient ID (numeric), left eye before right, within each split.
"""
from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from tfds_builders import common

_DATASET = 'odir5k'
LABELS = ('N', 'D', 'G', 'C', 'A', 'H', 'M', 'O')
LABEL_NAMES = ('normal', 'diabetes', 'glaucoma', 'cataract', 'age-related macular degeneration',
               'hypertension', 'pathological myopia', 'other diseases/abnormalities')
COLUMNS = ('ID', 'Patient Age', 'Patient Sex', 'Left-Fundus', 'Right-Fundus',
           'Left-Diagnostic Keywords', 'Right-Diagnostic Keywords') + LABELS
SEXES = ('female', 'male')
FRACTIONS = {'train': 0.7, 'validation': 0.1, 'test': 0.2}
SEED = 0
# (annotation file, image folder) relative to the manual dir, in the order they are looked for.
_LAYOUTS = (
    ('ODIR-5K/data.xlsx', 'ODIR-5K/Training Images'),
    ('ODIR-5K/ODIR-5K/data.xlsx', 'ODIR-5K/ODIR-5K/Training Images'),  # Kaggle mirror.
    ('ODIR-5K/data.csv', 'ODIR-5K/Training Images'),  # CSV export of the sheet.
    ('ODIR-5K/ODIR-5K/data.csv', 'ODIR-5K/ODIR-5K/Training Images'),
    ('data.xlsx', 'Training Images'),  # The ODIR-5K folder's contents directly in the manual dir.
    ('data.csv', 'Training Images'),
    ('ODIR-5K_Training_Annotations(Updated)_V2.xlsx', 'ODIR-5K_Training_Dataset'),  # Challenge-site release.
)


@dataclasses.dataclass
class Odir5kConfig(tfds.core.BuilderConfig):
  image_size: int = 512  # 0 = original JPEGs; else FOV-cropped, padded square and resized.


def read_xlsx(path: pathlib.Path) -> list[dict]:
  """Rows of the first sheet of an xlsx file as dicts of stripped strings (header = first row)."""
  import openpyxl  # pylint: disable=import-outside-toplevel
  try:
    wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
    try:
      rows = list(wb.worksheets[0].iter_rows(values_only=True))
    finally:
      wb.close()
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f'{_DATASET}: could not read the spreadsheet {path}: {e}') from e

  def text(v) -> str:
    if v is None:
      return ''
    if isinstance(v, float) and v.is_integer():
      return str(int(v))  # Numbers typed as floats by the sheet.
    return str(v).strip()

  if not rows:
    return []
  header = [text(c) for c in rows[0]]
  return [dict(zip(header, map(text, r))) for r in rows[1:] if any(c not in (None, '') for c in r)]


def _binary(value: str, path, pid: str, column: str) -> int:
  if value in ('0', '1', '0.0', '1.0'):
    return int(float(value))
  raise ValueError(f'{_DATASET}: {path}, patient ID {pid}: column {column!r} is {value!r}; valid values are 0 and 1')


class Odir5k(tfds.core.GeneratorBasedBuilder):
  """ODIR-5K: 7000 fundus photographs of 3500 patients, 8-class patient-level multi-label diagnoses."""

  name = _DATASET
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release: 3500 labelled patients, seeded patient-level split 70/10/20.'}
  BUILDER_CONFIGS = [
      Odir5kConfig(name='512', image_size=512,
                   description='Cropped to the field of view, padded square, resized to 512x512 (JPEG).'),
      Odir5kConfig(name='original', image_size=0, description='Original JPEGs (bytes unchanged, sizes vary).'),
  ]
  DEFAULT_CONFIG_NAME = '512'
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download ODIR-5K from the ODIR-2019 challenge (https://odir2019.grand-challenge.org/dataset/, Peking
  University / Shanggong Medical Technology; terms as stated there: research use with citation of the
  challenge) or its Kaggle mirror
  https://www.kaggle.com/datasets/andrewmvd/ocular-disease-recognition-odir5k (cite "Peking University
  International Competition on Ocular Disease Intelligent Recognition (ODIR-2019)"). Expected layout:

    <manual_dir>/ODIR-5K/data.xlsx                    patient sheet: ID, Patient Age, Patient Sex,
                                                      Left-Fundus, Right-Fundus, Left-Diagnostic Keywords,
                                                      Right-Diagnostic Keywords, N, D, G, C, A, H, M, O
    <manual_dir>/ODIR-5K/Training Images/0_left.jpg   the files named in Left-/Right-Fundus
    <manual_dir>/ODIR-5K/Testing Images/              (unlabelled; not used)

  Also accepted: the Kaggle nesting <manual_dir>/ODIR-5K/ODIR-5K/{data.xlsx, Training Images/}; a CSV
  export of the sheet named data.csv in place of data.xlsx (same columns); the contents of ODIR-5K/
  directly in the manual dir; and the challenge-site file names
  "ODIR-5K_Training_Annotations(Updated)_V2.xlsx" with "ODIR-5K_Training_Dataset/".
  Only the first sheet of the xlsx is read. Split: the 3500 labelled patients are split 70/10/20
  (train/validation/test) by patient, seed 0, stratified by the 8-class label vector.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    s = self.builder_config.image_size
    shape = (s or None, s or None)
    return self.dataset_info_from_configs(
        description='ODIR-5K: Ocular Disease Intelligent Recognition (ODIR-2019), patient-level multi-label '
                    'diagnoses from both eyes.',
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=shape + (3,), encoding_format='jpeg'),
            'label': tfds.features.Tensor(
                shape=(len(LABELS),), dtype=np.int64,
                doc='Patient-level 0/1 over ' + ', '.join(f'{k} ({v})' for k, v in zip(LABELS, LABEL_NAMES)) +
                    '; the same for both eyes of a patient.'),
            'keywords': tfds.features.Text(doc="This eye's diagnostic keywords (Left-/Right-Diagnostic Keywords)."),
            'eye': tfds.features.ClassLabel(names=['left', 'right']),
            'patient_age': tfds.features.Scalar(dtype=np.int64, doc='Years; -1 if not given.'),
            'patient_sex': tfds.features.ClassLabel(names=list(SEXES)),
            'id': tfds.features.Scalar(dtype=np.int64, doc='Index in the split: patient ID order, left then right.'),
            'file_name': tfds.features.Text(doc='Path relative to the manual dir.'),
            'patient_id': tfds.features.Text(doc='The sheet\'s ID.'),
        }),
        supervised_keys=('image', 'label'),
        disable_shuffling=True,
        homepage='https://odir2019.grand-challenge.org/',
        citation='Peking University International Competition on Ocular Disease Intelligent Recognition '
                 '(ODIR-2019), https://odir2019.grand-challenge.org/.',
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = pathlib.Path(dl_manager.manual_dir)
    table = common.find_first(root, [t for t, _ in _LAYOUTS], dataset=_DATASET)
    folder = root / dict(_LAYOUTS)[table.relative_to(root).as_posix()]
    common.require(root, folder.relative_to(root).as_posix(), dataset=_DATASET)
    if table.suffix == '.xlsx':
      rows = read_xlsx(table)
      missing = [c for c in COLUMNS if rows and c not in rows[0]]
      if missing or not rows:
        raise ValueError(f'{_DATASET}: {table} lacks column(s) {missing or list(COLUMNS)}; '
                         f'found columns {list(rows[0]) if rows else []}')
    else:
      rows = common.read_csv(table, required=COLUMNS, dataset=_DATASET)
    patients = {}
    for row in rows:
      pid = row['ID']
      if not pid:
        continue
      if pid in patients:
        raise ValueError(f'{_DATASET}: {table} lists patient ID {pid} twice')
      sex = row['Patient Sex'].lower()
      if sex not in SEXES:
        raise ValueError(f'{_DATASET}: {table}, patient ID {pid}: Patient Sex is {row["Patient Sex"]!r}; '
                         f'valid values are Female and Male')
      age = row['Patient Age']
      try:
        age = int(float(age)) if age else -1
      except ValueError as e:
        raise ValueError(f'{_DATASET}: {table}, patient ID {pid}: Patient Age is {age!r}, expected a number') from e
      patients[pid] = dict(
          label=tuple(_binary(row[k], table, pid, k) for k in LABELS), age=age, sex=sex,
          eyes=(('left', row['Left-Fundus'], row['Left-Diagnostic Keywords']),
                ('right', row['Right-Fundus'], row['Right-Diagnostic Keywords'])))
    common.check_nonempty('all', list(patients), dataset=_DATASET, where=table)
    for pid, p in patients.items():
      for eye, name, _ in p['eyes']:
        if not name:
          raise ValueError(f'{_DATASET}: {table}, patient ID {pid}: no {eye} fundus file name')
    # Every image up front, so a missing file stops the build before anything is written.
    common.require(folder, *[n for p in patients.values() for _, n, _ in p['eyes']], dataset=_DATASET)
    pids = sorted(patients, key=lambda p: (len(p), p))  # Numeric order of (digit) IDs.
    keys = [f'{i:06d}' for i in range(len(pids))]  # patient_split orders by key: ID order.
    split = common.patient_split(keys, fractions=FRACTIONS, seed=SEED, patient_ids=pids,
                                 labels=[patients[p]['label'] for p in pids])
    out = {}
    for name, idx in split.items():
      common.check_nonempty(name, idx, dataset=_DATASET, where=table)
      out[name] = self._generate_examples(root, folder, [(pids[i], patients[pids[i]]) for i in idx])
    return out

  def _generate_examples(self, root: pathlib.Path, folder: pathlib.Path, patients):
    size = self.builder_config.image_size
    i = 0
    for pid, p in patients:
      for eye, name, keywords in p['eyes']:
        path = folder / name
        yield i, {
            'image': common.image_bytes(path, mode='RGB', fmt='jpeg', size=size, fit='fov'),
            'label': np.asarray(p['label'], np.int64),
            'keywords': keywords,
            'eye': eye,
            'patient_age': p['age'],
            'patient_sex': p['sex'],
            'id': i,
            'file_name': path.relative_to(root).as_posix(),
            'patient_id': pid,
        }
        i += 1
