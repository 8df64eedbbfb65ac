"""TFDS builder for the RSNA Pneumonia Detection Challenge (Kaggle 2018, stage 2 training set).

26,684 frontal chest X-rays (DICOM, 1024x1024) from NIH ChestX-ray14, re-annotated by radiologists
(RSNA/STR) with lung-opacity bounding boxes and a 3-way class. Only stage_2_train is labelled, so it
is split here: train/validation/test = 80/10/10 with `common.patient_split(seed=0)`, stratified by
class. Each image has its own patientId (one image per id), which is the patient key. Records are
ordered by patientId within each split.
"""
from __future__ import annotations

import dataclasses
import math
import pathlib

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from tfds_builders import common

_DATASET = 'rsna_pneumonia'
# ClassLabel names, in the order of the official class names below.
CLASSES = ('normal', 'no_lung_opacity_not_normal', 'lung_opacity')
_OFFICIAL = {'Normal': 0, 'No Lung Opacity / Not Normal': 1, 'Lung Opacity': 2}
_LABELS_CSV = 'stage_2_train_labels.csv'
_CLASS_CSV = 'stage_2_detailed_class_info.csv'
_IMAGES = 'stage_2_train_images'
_NESTING = ('.', 'rsna-pneumonia-detection-challenge')
_FRACTIONS = {'train': 0.8, 'validation': 0.1, 'test': 0.1}


@dataclasses.dataclass
class RsnaPneumoniaConfig(tfds.core.BuilderConfig):
  image_size: int = 256  # 0 = original size (1024x1024).


def read_dicom(path: pathlib.Path):
  """(8-bit grayscale PIL image, pydicom Dataset) of a DICOM file: MONOCHROME1 inverted, >8-bit scaled by its range.

  Raises:
    ValueError naming the file when it cannot be read or decoded.
  """
  import pydicom  # pylint: disable=import-outside-toplevel
  try:
    ds = pydicom.dcmread(str(path))
    a = np.asarray(ds.pixel_array)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f'Could not read the image {path}: {e} (expected a readable DICOM file)') from e
  if a.ndim != 2:
    raise ValueError(f'Could not read the image {path}: pixel data has shape {a.shape}, expected one 2-D '
                     f'grayscale frame')
  if a.dtype != np.uint8:
    a = a.astype(np.float64)
    lo, hi = float(a.min()), float(a.max())
    a = np.zeros_like(a) if hi <= lo else (a - lo) * (255.0 / (hi - lo))
    a = np.round(a).astype(np.uint8)
  if str(getattr(ds, 'PhotometricInterpretation', 'MONOCHROME2')).upper() == 'MONOCHROME1':
    a = 255 - a  # MONOCHROME1: low values are white; store the usual MONOCHROME2 look.
  return Image.fromarray(a, 'L'), ds


class RsnaPneumonia(tfds.core.GeneratorBasedBuilder):
  """RSNA Pneumonia Detection Challenge: chest X-rays with a 3-way class and lung-opacity boxes."""

  name = _DATASET
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release: stage 2 training set split 80/10/10 (seed 0, stratified).'}
  BUILDER_CONFIGS = [
      RsnaPneumoniaConfig(name='256', image_size=256,
                          description='Padded to square (black), resized to 256x256 (bicubic); boxes rescaled.'),
      RsnaPneumoniaConfig(name='original', image_size=0,
                          description='Original size (1024x1024), 8-bit grayscale PNG; boxes as in the CSV.'),
  ]
  DEFAULT_CONFIG_NAME = '256'
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download the competition data of the RSNA Pneumonia Detection Challenge from Kaggle,
  https://www.kaggle.com/c/rsna-pneumonia-detection-challenge/data (accept the competition rules;
  the data may be used as stated in those rules and the RSNA terms: non-commercial research and
  education, with attribution). Cite Shih et al., "Augmenting the National Institutes of Health Chest
  Radiograph Dataset with Expert Annotations of Possible Pneumonia", Radiology: AI 1(1), 2019, and
  Wang et al., CVPR 2017 (the NIH source images). Unzip it so that the manual dir holds:

    <manual_dir>/stage_2_train_labels.csv           patientId,x,y,width,height,Target (one row per box;
                                                    one row with empty box when Target is 0)
    <manual_dir>/stage_2_detailed_class_info.csv    patientId,class (Normal | No Lung Opacity / Not
                                                    Normal | Lung Opacity)
    <manual_dir>/stage_2_train_images/<patientId>.dcm

  (the same inside a folder rsna-pneumonia-detection-challenge/ is accepted). stage_2_test_images is
  unlabelled and not used. Splits: stage_2_train split 80/10/10 (train/validation/test), seed 0,
  stratified by class; every patientId is one image.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    s = self.builder_config.image_size
    return self.dataset_info_from_configs(
        description='RSNA Pneumonia Detection Challenge (stage 2 train), chest X-rays with opacity boxes.',
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(s or None, s or None, 1), encoding_format='png'),
            'label': tfds.features.ClassLabel(names=list(CLASSES), doc='stage_2_detailed_class_info class.'),
            'target': tfds.features.Scalar(dtype=np.int64, doc='Target of stage_2_train_labels: 1 = lung opacity.'),
            'boxes': tfds.features.Sequence(
                tfds.features.Tensor(shape=(4,), dtype=np.float32),
                doc='Lung-opacity boxes (x, y, width, height) in pixels of the stored image; empty if Target 0.'),
            'id': tfds.features.Scalar(dtype=np.int64, doc='Index in the split, in patientId order.'),
            'file_name': tfds.features.Text(doc='Path relative to the manual dir.'),
            'patient_id': tfds.features.Text(doc='patientId (one image per id).'),
            'view_position': tfds.features.Text(doc="DICOM ViewPosition ('PA' or 'AP'; '' if absent)."),
            'patient_sex': tfds.features.Text(doc="DICOM PatientSex ('M' or 'F'; '' if absent)."),
            'patient_age': tfds.features.Scalar(dtype=np.int64, doc='DICOM PatientAge in years (-1 if absent).'),
        }),
        supervised_keys=('image', 'label'),
        disable_shuffling=True,
        homepage='https://www.kaggle.com/c/rsna-pneumonia-detection-challenge',
        citation='Shih et al., Augmenting the National Institutes of Health Chest Radiograph Dataset with '
                 'Expert Annotations of Possible Pneumonia, Radiology: Artificial Intelligence 1(1), 2019.',
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = pathlib.Path(dl_manager.manual_dir)
    base = common.find_first(root, [f'{n}/{_LABELS_CSV}' for n in _NESTING], dataset=_DATASET).parent
    labels_csv, class_csv, images = common.require(base, _LABELS_CSV, _CLASS_CSV, _IMAGES, dataset=_DATASET)
    classes = {}
    for line, row in enumerate(common.read_csv(class_csv, required=('patientId', 'class'), dataset=_DATASET), 2):
      pid, cls = row['patientId'], row['class']
      if cls not in _OFFICIAL:
        raise ValueError(f'{_DATASET}: {class_csv} line {line} (patientId {pid}): unknown class {cls!r}; '
                         f'valid: {list(_OFFICIAL)}')
      if classes.setdefault(pid, _OFFICIAL[cls]) != _OFFICIAL[cls]:
        raise ValueError(f'{_DATASET}: {class_csv} line {line} (patientId {pid}): class {cls!r} contradicts '
                         f'an earlier row ({CLASSES[classes[pid]]})')
    targets, boxes = {}, {}
    rows = common.read_csv(labels_csv, required=('patientId', 'x', 'y', 'width', 'height', 'Target'),
                           dataset=_DATASET)
    for line, row in enumerate(rows, 2):
      pid, target = row['patientId'], row['Target']
      where = f'{labels_csv} line {line} (patientId {pid})'
      if target not in ('0', '1'):
        raise ValueError(f'{_DATASET}: {where}: unknown Target {target!r}; valid: 0, 1')
      if targets.setdefault(pid, int(target)) != int(target):
        raise ValueError(f'{_DATASET}: {where}: Target {target} contradicts an earlier row of the same image')
      boxes.setdefault(pid, [])
      if target == '1':
        try:
          box = [float(row[k]) for k in ('x', 'y', 'width', 'height')]
        except ValueError as e:
          raise ValueError(f'{_DATASET}: {where}: Target 1 needs numeric x, y, width, height, got '
                           f"{[row[k] for k in ('x', 'y', 'width', 'height')]}") from e
        if not all(math.isfinite(v) for v in box):
          raise ValueError(f'{_DATASET}: {where}: box {box} is not finite')
        boxes[pid].append(box)
      if pid not in classes:
        raise ValueError(f'{_DATASET}: {where}: no row for this patientId in {class_csv}')
      if (classes[pid] == _OFFICIAL['Lung Opacity']) != (target == '1'):
        raise ValueError(f'{_DATASET}: {where}: Target {target} disagrees with class {CLASSES[classes[pid]]!r} '
                         f'in {class_csv} (Target 1 <=> Lung Opacity)')
    pids = sorted(targets)
    missing = [p for p in pids if not (images / f'{p}.dcm').is_file()]
    if missing:
      raise common.LayoutError(f'{_DATASET}: {len(missing)} image(s) listed in {labels_csv} are missing from '
                               f'{images}, e.g. {[f"{p}.dcm" for p in missing[:5]]}')
    parts = common.patient_split(pids, fractions=_FRACTIONS, seed=0, labels=[classes[p] for p in pids])
    out = {}
    for split, idx in parts.items():
      items = [{'path': images / f'{pids[i]}.dcm', 'patient_id': pids[i], 'label': classes[pids[i]],
                'target': targets[pids[i]], 'boxes': boxes[pids[i]]} for i in idx]
      common.check_nonempty(split, items, dataset=_DATASET, where=base)
      out[split] = self._generate_examples(root, items)
    return out

  def _generate_examples(self, root, items):
    size = self.builder_config.image_size
    for i, item in enumerate(items):
      pil, ds = read_dicom(item['path'])
      w, h = pil.size
      boxes = np.asarray(item['boxes'], np.float32).reshape(-1, 4)
      if size:
        # Same geometry as common.square(fit='pad') then resize: shift by the padding, then scale.
        s = max(w, h)
        scale = size / s
        boxes = (boxes + np.asarray([(s - w) // 2, (s - h) // 2, 0, 0], np.float32)) * scale
        pil = common.square(pil, fit='pad').resize((size, size), Image.BICUBIC)
      age = ''.join(ch for ch in str(getattr(ds, 'PatientAge', '') or '') if ch.isdigit())
      yield i, {
          'image': common.encode(pil, fmt='png'),
          'label': item['label'],
          'target': item['target'],
          'boxes': boxes.astype(np.float32),
          'id': i,
          'file_name': item['path'].relative_to(root).as_posix(),
          'patient_id': item['patient_id'],
          'view_position': str(getattr(ds, 'ViewPosition', '') or ''),
          'patient_sex': str(getattr(ds, 'PatientSex', '') or ''),
          'patient_age': int(age) if age else -1,
      }
