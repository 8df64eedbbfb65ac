"""TFDS builder for NIH ChestX-ray14 (Wang et al., CVPR 2017): 112,120 frontal chest X-rays, 14 findings.

Two families of configs:

* Full dataset (`256`, `original`): the official NIH Clinical Center release. `test` is the official
  `test_list.txt`; the official `train_val_list.txt` is split by patient into `train` (90%) and
  `validation` (10%) with `common.patient_split(seed=0)`, stratified by "any finding" vs "No Finding".
  The official lists are already patient-disjoint, so no patient is on two sides.
* The 1000-image 64 px tutorial subset "NIH1000" (`subset1000`, `subset1000_patient_split`):
  normal ("No Finding") vs abnormal. `subset1000` keeps its own train/valid/test folders, which share
  patients between splits; `subset1000_patient_split` re-splits the same 1000 images by patient
  (60/20/20, seed 0, stratified by label) and is the one to use for any evaluation.

Records are ordered by Image Index (file name) within each split.
"""
from __future__ import annotations

import dataclasses
import pathlib
import re

import numpy as np
import tensorflow_datasets as tfds

from tfds_builders import common

_DATASET = 'nih_chestxray14'
# The 14 findings, in the order of the paper and of most CheXNet-style label vectors.
FINDINGS = ('Atelectasis', 'Cardiomegaly', 'Effusion', 'Infiltration', 'Mass', 'Nodule', 'Pneumonia',
            'Pneumothorax', 'Consolidation', 'Edema', 'Emphysema', 'Fibrosis', 'Pleural_Thickening', 'Hernia')
_NO_FINDING = 'No Finding'
_ENTRY_CSVS = ('Data_Entry_2017.csv', 'Data_Entry_2017_v2020.csv')
_COLUMNS = ('Image Index', 'Finding Labels', 'Follow-up #', 'Patient ID', 'Patient Age', 'Patient Gender',
            'View Position')
_VALIDATION_FRACTION = 0.1
_SUBSET_ROOTS = ('NIH1000', '.')
_SUBSET_SPLITS = (('train', 'train'), ('validation', 'valid'), ('test', 'test'))  # (TFDS split, folder)
_SUBSET_CLASSES = ('0_normal', '1_abnormal')
_SUBSET_FRACTIONS = {'train': 0.6, 'validation': 0.2, 'test': 0.2}
_INDEX = re.compile(r'^(\d{8})_(\d{3})\.png$')


@dataclasses.dataclass
class NihChestXray14Config(tfds.core.BuilderConfig):
  image_size: int = 256  # 0 = original size (bytes kept where already 8-bit grayscale PNG).
  subset: bool = False  # True: the NIH1000 64 px tutorial subset (binary label).
  patient_split: bool = False  # Subset only: re-split the 1000 images by patient.


class NihChestXray14(tfds.core.GeneratorBasedBuilder):
  """NIH ChestX-ray14: frontal chest X-rays with 14 NLP-mined finding labels (multi-label)."""

  name = _DATASET
  LABEL_NAMES = FINDINGS  # Multi-label configs' 'label' columns (pipeline.label_names; subsets: ClassLabel).
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release: official test list, patient-level 90/10 train/validation '
                            'split of train_val_list (seed 0); NIH1000 64 px subset configs.'}
  BUILDER_CONFIGS = [
      NihChestXray14Config(name='256', image_size=256,
                           description='Full dataset, grayscale, padded to square, resized to 256x256 (bicubic).'),
      NihChestXray14Config(name='original', image_size=0,
                           description='Full dataset at the original 1024x1024, grayscale PNG (bytes kept '
                                       'where the file already is 8-bit grayscale).'),
      NihChestXray14Config(name='subset1000', image_size=0, subset=True,
                           description='NIH1000 64 px tutorial subset, its own train/valid/test folders '
                                       '(600/200/200; patients shared between splits).'),
      NihChestXray14Config(name='subset1000_patient_split', image_size=0, subset=True, patient_split=True,
                           description='NIH1000 64 px subset re-split by patient: 60/20/20, seed 0, '
                                       'stratified by label; no patient on two sides.'),
  ]
  DEFAULT_CONFIG_NAME = '256'
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Full dataset (configs 256, original): download from the NIH Clinical Center,
  https://nihcc.app.box.com/v/ChestXray-NIHCC (also mirrored on Kaggle as nih-chest-xrays/data).
  Terms as stated by the NIH Clinical Center: there are no restrictions on the use of the images;
  attribution is required: link to the NIH download site, cite Wang et al., "ChestX-ray8:
  Hospital-scale Chest X-ray Database and Benchmarks on Weakly-Supervised Classification and
  Localization of Common Thorax Diseases", CVPR 2017, and acknowledge the NIH Clinical Center as the
  data provider. Expected layout (extract the 12 archives images_001.tar.gz ... images_012.tar.gz):

    <manual_dir>/Data_Entry_2017.csv        (or Data_Entry_2017_v2020.csv) with columns Image Index,
                                            Finding Labels ('|'-separated, or 'No Finding'),
                                            Follow-up #, Patient ID, Patient Age, Patient Gender,
                                            View Position, ...
    <manual_dir>/train_val_list.txt         official train+validation image list (one name a line)
    <manual_dir>/test_list.txt              official test image list
    <manual_dir>/images/00000001_000.png    all 112,120 PNGs in one folder (the NIH tar.gz archives), or
    <manual_dir>/images_001/images/*.png    ... images_012/images/*.png (the Kaggle layout).

  Splits: test = test_list.txt; train/validation = train_val_list.txt split by Patient ID, 90/10,
  seed 0, stratified by 'No Finding' vs any finding.

  NIH1000 subset (configs subset1000, subset1000_patient_split): the 1000-image 64x64 normal/abnormal
  subset from the KCR 2019 tutorial repository dinbe0527/kcr2019d1 (same NIH terms). Layout:

    <manual_dir>/NIH1000/{train,valid,test}/{0_normal,1_abnormal}/<Image Index>.png

  (the NIH1000 folder itself may also be the manual dir). 0_normal = 'No Finding', 1_abnormal = any of
  the 14 findings. The patient id is the first 8 digits of the file name.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config
    s = c.image_size
    features = {
        'image': tfds.features.Image(shape=(s or None, s or None, 1), encoding_format='png'),
        'id': tfds.features.Scalar(dtype=np.int64, doc='Index in the split, in Image Index order.'),
        'file_name': tfds.features.Text(doc='Path relative to the manual dir.'),
        'patient_id': tfds.features.Text(doc='NIH Patient ID, 8 digits (first 8 characters of Image Index).'),
    }
    if c.subset:
      features['label'] = tfds.features.ClassLabel(names=['normal', 'abnormal'])
    else:
      features.update({
          'label': tfds.features.Tensor(shape=(len(FINDINGS),), dtype=np.int64,
                                        doc='Multi-hot over ' + ', '.join(FINDINGS) + '; all 0 = No Finding.'),
          'follow_up': tfds.features.Scalar(dtype=np.int64, doc='Follow-up # of the study.'),
          'patient_age': tfds.features.Scalar(dtype=np.int64, doc='Patient Age in years (-1 if unreadable).'),
          'patient_sex': tfds.features.Text(doc="Patient Gender as in the CSV ('M' or 'F')."),
          'view_position': tfds.features.Text(doc="View Position as in the CSV ('PA' or 'AP')."),
      })
    return self.dataset_info_from_configs(
        description='NIH ChestX-ray14 chest X-rays with 14 finding labels mined from radiology reports.',
        features=tfds.features.FeaturesDict(features),
        supervised_keys=('image', 'label'),
        disable_shuffling=True,
        homepage='https://nihcc.app.box.com/v/ChestXray-NIHCC',
        citation='Wang et al., ChestX-ray8: Hospital-scale Chest X-ray Database and Benchmarks on '
                 'Weakly-Supervised Classification and Localization of Common Thorax Diseases, CVPR 2017.',
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = pathlib.Path(dl_manager.manual_dir)
    if self.builder_config.subset:
      splits = self._subset_splits(root)
    else:
      splits = self._full_splits(root)
    for split, items in splits.items():
      common.check_nonempty(split, items, dataset=_DATASET, where=root)
    return {split: self._generate_examples(items) for split, items in splits.items()}

  # ------------------------------------------------------------ full dataset

  def _full_splits(self, root: pathlib.Path) -> dict[str, list[dict]]:
    csv_path = common.find_first(root, _ENTRY_CSVS, dataset=_DATASET)
    train_val_path, test_path = common.require(root, 'train_val_list.txt', 'test_list.txt', dataset=_DATASET)
    folders = [root / 'images'] if (root / 'images').is_dir() else []
    folders += sorted(p / 'images' for p in root.glob('images_[0-9][0-9][0-9]') if (p / 'images').is_dir())
    if not folders:
      common.find_first(root, ['images', 'images_001/images'], dataset=_DATASET)  # Raises with a listing.
    paths = {}
    for folder in folders:
      for p in common.list_files(folder, ['.png'], dataset=_DATASET, min_count=0):
        paths.setdefault(p.name, p)
    rows = {}
    for n, row in enumerate(common.read_csv(csv_path, required=_COLUMNS, dataset=_DATASET)):
      rows[row['Image Index']] = (n + 2, row)  # CSV line number (header is line 1), for error messages.

    def read_list(path):
      names = [l.strip() for l in path.read_text().splitlines() if l.strip()]
      missing_rows = [x for x in names if x not in rows]
      if missing_rows:
        raise ValueError(f'{_DATASET}: {len(missing_rows)} image(s) of {path} have no row in {csv_path}, '
                         f'e.g. {missing_rows[:5]}')
      missing_files = [x for x in names if x not in paths]
      if missing_files:
        raise common.LayoutError(f'{_DATASET}: {len(missing_files)} image(s) of {path} are not in '
                                 f'{[str(f) for f in folders]}, e.g. {missing_files[:5]}')
      return sorted(set(names))

    train_val, test = read_list(train_val_path), read_list(test_path)
    both = sorted(set(train_val) & set(test))
    if both:
      raise ValueError(f'{_DATASET}: {len(both)} image(s) are in both {train_val_path} and {test_path}, '
                       f'e.g. {both[:5]}')
    items = {}
    for name in train_val + test:
      line, row = rows[name]
      items[name] = self._full_item(root, paths[name], row, csv_path, line)
    parts = common.patient_split(
        train_val, fractions={'train': 1 - _VALIDATION_FRACTION, 'validation': _VALIDATION_FRACTION}, seed=0,
        patient_ids=[items[x]['patient_id'] for x in train_val],
        labels=[int(items[x]['label'].any()) for x in train_val])
    out = {s: [items[train_val[i]] for i in idx] for s, idx in parts.items()}
    out['test'] = [items[x] for x in test]
    return out

  @staticmethod
  def _full_item(root, path, row, csv_path, line) -> dict:
    label = np.zeros(len(FINDINGS), np.int64)
    findings = [f.strip() for f in row['Finding Labels'].split('|') if f.strip()]
    for f in findings:
      if f == _NO_FINDING and len(findings) == 1:
        continue
      if f not in FINDINGS:
        raise ValueError(f"{_DATASET}: {csv_path} line {line} (Image Index {row['Image Index']}): unknown "
                         f"Finding Labels value {f!r}; valid: {list(FINDINGS)} or {_NO_FINDING!r} alone")
      label[FINDINGS.index(f)] = 1
    age = re.match(r'\d+', row['Patient Age'] or '')
    try:
      follow_up = int(row['Follow-up #'])
    except ValueError as e:
      raise ValueError(f"{_DATASET}: {csv_path} line {line} (Image Index {row['Image Index']}): Follow-up # "
                       f"{row['Follow-up #']!r} is not an integer") from e
    pid = row['Patient ID'].strip()
    return {
        'path': path,
        'file_name': path.relative_to(root).as_posix(),
        'patient_id': f'{int(pid):08d}' if pid.isdigit() else pid,
        'label': label,
        'follow_up': follow_up,
        'patient_age': int(age.group()) if age else -1,
        'patient_sex': row['Patient Gender'],
        'view_position': row['View Position'],
    }

  # ------------------------------------------------------------ NIH1000 subset

  def _subset_splits(self, root: pathlib.Path) -> dict[str, list[dict]]:
    base = common.find_first(root, [f'{r}/train' for r in _SUBSET_ROOTS], dataset=_DATASET).parent
    common.require(base, *[f'{folder}/{cls}' for _, folder in _SUBSET_SPLITS for cls in _SUBSET_CLASSES],
                   dataset=_DATASET)
    by_split = {}
    for split, folder in _SUBSET_SPLITS:
      extra = sorted(p.name for p in (base / folder).iterdir() if p.is_dir() and p.name not in _SUBSET_CLASSES)
      if extra:
        raise ValueError(f'{_DATASET}: unknown class folder(s) {extra} in {base / folder}; valid: '
                         f'{list(_SUBSET_CLASSES)}')
      items = []
      for label, cls in enumerate(_SUBSET_CLASSES):
        for p in common.list_files(base / folder / cls, ['.png'], dataset=_DATASET):
          m = _INDEX.match(p.name)
          if not m:
            raise ValueError(f'{_DATASET}: {p} is not named <8-digit patient>_<3-digit follow-up>.png '
                             f'like an NIH Image Index')
          items.append({'path': p, 'file_name': p.relative_to(root).as_posix(), 'patient_id': m.group(1),
                        'label': label})
      by_split[split] = sorted(items, key=lambda x: (x['path'].name, x['file_name']))
    if not self.builder_config.patient_split:
      return by_split
    pool = sorted((x for items in by_split.values() for x in items), key=lambda x: (x['path'].name, x['file_name']))
    parts = common.patient_split([x['file_name'] for x in pool], fractions=_SUBSET_FRACTIONS, seed=0,
                                 patient_ids=[x['patient_id'] for x in pool], labels=[x['label'] for x in pool])
    return {s: sorted((pool[i] for i in idx), key=lambda x: (x['path'].name, x['file_name']))
            for s, idx in parts.items()}

  def _generate_examples(self, items):
    c = self.builder_config
    for i, item in enumerate(items):
      ex = {k: v for k, v in item.items() if k != 'path'}
      ex['image'] = common.image_bytes(item['path'], mode='L', size=c.image_size, fit='pad')
      ex['id'] = i
      yield i, ex
