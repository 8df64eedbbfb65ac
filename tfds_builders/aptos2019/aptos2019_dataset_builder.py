"""TFDS builder for APTOS 2019 Blindness Detection (Kaggle; Aravind Eye Hospital, India).

Only the competition's training set is labelled (train.csv: 3,662 images, DR grade 0-4); the test
images' labels were never released. There is no official split, so the 3,662 labelled images are
split 70/10/20 into train/validation/test with `common.patient_split(seed=0)`, stratified by grade.
APTOS publishes no patient ids, so each image counts as its own patient (`patient_id` is "");
images of one person's two eyes may therefore fall on different sides. Records in a split are
ordered by id_code.
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
_DS = 'aptos2019'
_BASES = ('', 'aptos2019-blindness-detection')  # Flat, or inside the Kaggle download's folder name.


@dataclasses.dataclass
class Aptos2019Config(tfds.core.BuilderConfig):
  image_size: int = 0  # 0 = original PNG bytes; else field-of-view crop, pad to square, resize (JPEG).


def _candidates(*relpaths: str) -> list[str]:
  return [os.path.join(b, r) if b else r for b in _BASES for r in relpaths]


class Aptos2019(tfds.core.GeneratorBasedBuilder):
  """APTOS 2019 Blindness Detection: 3,662 labelled fundus photographs, DR grade 0-4, seeded 70/10/20 split."""

  name = 'aptos2019'
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release: train.csv split 70/10/20 (stratified by grade, seed 0).'}
  BUILDER_CONFIGS = [
      Aptos2019Config(name='512', image_size=512,
                      description='Cropped to the field of view, padded to square (black), resized to 512x512, '
                                  'JPEG quality 95.'),
      Aptos2019Config(name='original', description='Original PNG bytes, unchanged (sizes vary, up to 4288x2848).'),
  ]
  DEFAULT_CONFIG_NAME = '512'
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download the data of the Kaggle competition "APTOS 2019 Blindness Detection":
  https://www.kaggle.com/competitions/aptos2019-blindness-detection/data (accept the competition
  rules; the data are for non-commercial research use under those rules and may not be
  redistributed), e.g. `kaggle competitions download -c aptos2019-blindness-detection`, and unzip it.
  Expected layout:

    <manual_dir>/train.csv                   columns id_code,diagnosis (diagnosis 0-4), 3,662 rows
    <manual_dir>/train_images/<id_code>.png  the 3,662 labelled images

  Also accepted: the same inside <manual_dir>/aptos2019-blindness-detection/, and the images in
  train_images/train_images/. test.csv, test_images/ and sample_submission.csv may be present but are
  not used (the test labels were never published).
  Splits: no official labelled split exists; train.csv is split 70/10/20 into train/validation/test
  (seed 0, stratified by diagnosis; no patient ids exist, so each image is its own patient).
  Cite: Asia Pacific Tele-Ophthalmology Society (APTOS), APTOS 2019 Blindness Detection, Kaggle, 2019.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    s = self.builder_config.image_size
    return self.dataset_info_from_configs(
        description='APTOS 2019 Blindness Detection: diabetic retinopathy grade 0-4 (Aravind Eye Hospital).',
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(s or None, s or None, 3), encoding_format='jpeg' if s else 'png'),
            'label': tfds.features.ClassLabel(names=DR_GRADES),
            'id': tfds.features.Scalar(dtype=np.int64, doc='Index in the split, in id_code order.'),
            'file_name': tfds.features.Text(doc='Path relative to the manual dir, e.g. train_images/000c1434d8d7.png.'),
            'patient_id': tfds.features.Text(doc='Always "": APTOS publishes no patient ids.'),
        }),
        supervised_keys=('image', 'label'),
        disable_shuffling=True,
        homepage='https://www.kaggle.com/competitions/aptos2019-blindness-detection',
        citation='Karthik, Maggie, S. Dane. APTOS 2019 Blindness Detection. Kaggle, 2019. '
                 'https://kaggle.com/competitions/aptos2019-blindness-detection',
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = pathlib.Path(dl_manager.manual_dir)
    csv_path = common.find_first(root, _candidates('train.csv'), dataset=_DS)
    image_dir = common.find_first(root, _candidates('train_images/train_images', 'train_images'), dataset=_DS)
    table = common.read_csv(csv_path, required=('id_code', 'diagnosis'), dataset=_DS)
    present = set(os.listdir(image_dir))
    keys, labels, missing, seen = [], [], [], set()
    for row in table:
      key, value = row['id_code'], row['diagnosis']
      if value not in ('0', '1', '2', '3', '4'):
        raise ValueError(f'{_DS}: {csv_path}: id_code {key!r} has diagnosis {value!r}; '
                         f'valid values are 0, 1, 2, 3, 4')
      if key in seen:
        raise ValueError(f'{_DS}: {csv_path}: id_code {key!r} appears more than once')
      seen.add(key)
      if f'{key}.png' not in present:
        missing.append(f'{key}.png')
      keys.append(key)
      labels.append(int(value))
    if missing:
      raise common.LayoutError(f'{_DS}: {len(missing)} image(s) listed in {csv_path} are missing from {image_dir}: '
                               f'{missing[:10]}{" ..." if len(missing) > 10 else ""}')
    parts = common.patient_split(keys, fractions=FRACTIONS, seed=SEED, labels=labels)
    splits = {}
    for split, idx in parts.items():
      common.check_nonempty(split, idx, dataset=_DS, where=csv_path)
      splits[split] = self._generate_examples([(image_dir / f'{keys[i]}.png', labels[i]) for i in idx], root)
    return splits

  def _generate_examples(self, items, root: pathlib.Path):
    size = self.builder_config.image_size
    for i, (path, grade) in enumerate(items):
      yield i, {
          'image': common.image_bytes(path, mode='RGB', fmt='jpeg' if size else 'png', size=size, fit='fov'),
          'label': grade,
          'id': i,
          'file_name': path.relative_to(root).as_posix(),
          'patient_id': '',
      }
