"""TFDS builder for NCT-CRC-HE-100K and CRC-VAL-HE-7K (Kather et al. 2019): 9 colorectal tissue classes.

Splits: `train` = NCT-CRC-HE-100K (official training set, 100,000 patches of 86 slides) less a
validation part; `validation` = a seeded stratified 5% of NCT-CRC-HE-100K (seed 0, by class, via
`common.patient_split`); `test` = CRC-VAL-HE-7K (official external test set, 7,180 patches of 50
other patients). The dataset gives no slide or patient ids, so patches of one slide may straddle
train and validation (validation scores are optimistic); the test set comes from other patients.
"""
from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from tfds_builders import common

# (folder, meaning) in the official order (also the label order of PathMNIST, derived from this data).
_CLASSES = (
    ('ADI', 'adipose tissue'),
    ('BACK', 'background'),
    ('DEB', 'debris'),
    ('LYM', 'lymphocytes'),
    ('MUC', 'mucus'),
    ('MUS', 'smooth muscle'),
    ('NORM', 'normal colon mucosa'),
    ('STR', 'cancer-associated stroma'),
    ('TUM', 'colorectal adenocarcinoma epithelium'),
)
CLASSES = tuple(c for c, _ in _CLASSES)
VALIDATION_FRACTION = 0.05
SPLIT_SEED = 0
_TEST = 'CRC-VAL-HE-7K'
_SUFFIXES = ('.tif', '.tiff')


@dataclasses.dataclass
class NctCrcHeConfig(tfds.core.BuilderConfig):
  image_size: int = 224  # Stored size (the patches are 224x224; other sizes are resized, bicubic).
  train_folder: str = 'NCT-CRC-HE-100K'  # Or the unnormalised NCT-CRC-HE-100K-NONORM.


class NctCrcHe(tfds.core.GeneratorBasedBuilder):
  """NCT-CRC-HE-100K (train/validation) and CRC-VAL-HE-7K (test): H&E patches of 9 colorectal tissue classes."""

  name = 'nct_crc_he'
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release: 100K train (5% stratified validation, seed 0), 7K test.'}
  BUILDER_CONFIGS = [
      NctCrcHeConfig(name='224', image_size=224,
                     description='Macenko-normalised NCT-CRC-HE-100K, 224x224 PNG (pixels unchanged).'),
      NctCrcHeConfig(name='112', image_size=112, description='As `224`, resized to 112x112 (bicubic).'),
      NctCrcHeConfig(name='nonorm_224', image_size=224, train_folder='NCT-CRC-HE-100K-NONORM',
                     description='Train/validation from NCT-CRC-HE-100K-NONORM (no colour normalisation), '
                                 '224x224 PNG; the test set is CRC-VAL-HE-7K as published (normalised).'),
  ]
  DEFAULT_CONFIG_NAME = '224'
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download NCT-CRC-HE-100K.zip and CRC-VAL-HE-7K.zip (for the `nonorm_224` config also
  NCT-CRC-HE-100K-NONORM.zip) from Zenodo record 1214456 (https://zenodo.org/records/1214456,
  "100,000 histological images of human colorectal cancer and healthy tissue", Kather, Halama and
  Marx; licence CC BY 4.0; cite Kather et al., PLOS Medicine 16(1):e1002730, 2019) and unzip them in
  the manual directory, giving one folder per tissue class with 224x224 RGB TIFF patches:

    <manual_dir>/NCT-CRC-HE-100K/{ADI,BACK,DEB,LYM,MUC,MUS,NORM,STR,TUM}/*.tif          (100,000)
    <manual_dir>/CRC-VAL-HE-7K/{ADI,BACK,DEB,LYM,MUC,MUS,NORM,STR,TUM}/*.tif            (7,180)
    <manual_dir>/NCT-CRC-HE-100K-NONORM/{ADI,...,TUM}/*.tif                             (nonorm_224 only)

  A doubled folder from unzipping into a folder of the same name (NCT-CRC-HE-100K/NCT-CRC-HE-100K/ADI/...)
  is accepted too. Every one of the 9 class folders must be present; any other folder is an error.
  Validation is a seeded (0) stratified 5% of the 100K set keyed on <class>/<file name>; the data has
  no patient or slide ids, so patches of one slide may fall on both sides of train/validation.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    s = self.builder_config.image_size
    return self.dataset_info_from_configs(
        description='Colorectal cancer H&E tissue patches (0.5 um/px), 9 tissue classes '
                    f'({"unnormalised" if "NONORM" in self.builder_config.train_folder else "Macenko-normalised"} '
                    f'training set), at {s} px.',
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(s, s, 3), encoding_format='png'),
            'label': tfds.features.ClassLabel(
                names=list(CLASSES), doc=', '.join(f'{c}: {meaning}' for c, meaning in _CLASSES)),
            'id': tfds.features.Scalar(dtype=np.int64, doc='Index in the split, in <class>/<file name> order.'),
            'file_name': tfds.features.Text(doc='Path relative to the manual dir.'),
            'patient_id': tfds.features.Text(doc='Always "": the dataset gives no patient or slide ids.'),
        }),
        supervised_keys=('image', 'label'),
        disable_shuffling=True,
        homepage='https://zenodo.org/records/1214456',
        citation='Kather et al., Predicting survival from colorectal cancer histology slides using deep '
                 'learning: a retrospective multicenter study, PLOS Medicine 16(1):e1002730, 2019.',
    )

  def _list(self, manual: pathlib.Path, folder: str) -> tuple[list[pathlib.Path], list[int]]:
    """The patches of one official folder and their labels, sorted by <class>/<file name>."""
    root = common.find_first(manual, [f'{folder}/{folder}', folder], dataset='nct_crc_he')
    extra = sorted(p.name for p in root.iterdir()
                   if p.is_dir() and p.name not in CLASSES and not p.name.startswith(('.', '__MACOSX')))
    if extra:
      raise ValueError(f'nct_crc_he: unknown class folder(s) {extra} in {root}; valid class folders: {list(CLASSES)}')
    common.require(root, *CLASSES, dataset='nct_crc_he')
    files, labels = [], []
    for label, c in enumerate(CLASSES):
      found = common.list_files(root / c, _SUFFIXES, dataset='nct_crc_he')
      files += found
      labels += [label] * len(found)
    return files, labels

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual = pathlib.Path(dl_manager.manual_dir)
    train_files, train_labels = self._list(manual, self.builder_config.train_folder)
    test_files, test_labels = self._list(manual, _TEST)
    keys = [f'{p.parent.name}/{p.name}' for p in train_files]
    parts = common.patient_split(keys, fractions={'train': 1 - VALIDATION_FRACTION,
                                                  'validation': VALIDATION_FRACTION},
                                 seed=SPLIT_SEED, labels=train_labels)
    splits = {s: [(train_files[i], train_labels[i]) for i in idx] for s, idx in parts.items()}
    splits['test'] = list(zip(test_files, test_labels))
    for split, items in splits.items():
      common.check_nonempty(split, items, dataset='nct_crc_he', where=manual)
    return {split: self._generate_examples(manual, items) for split, items in splits.items()}

  def _generate_examples(self, manual: pathlib.Path, items):
    size = self.builder_config.image_size
    for i, (path, label) in enumerate(items):
      # TIFF cannot be stored: re-encode as lossless PNG (a 224 patch at size 224 keeps its pixels).
      yield i, {
          'image': common.image_bytes(path, mode='RGB', fmt='png', size=size),
          'label': label,
          'id': i,
          'file_name': path.relative_to(manual).as_posix(),
          'patient_id': '',
      }
