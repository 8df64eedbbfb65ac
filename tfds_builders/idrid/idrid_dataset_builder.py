"""TFDS builder for IDRiD, the Indian Diabetic Retinopathy Image Dataset (ISBI 2018 challenge).

Two config families read two parts of the official release:

* `grading_*` (part "B. Disease Grading"): 516 fundus photographs with a diabetic retinopathy grade
  (0-4) and a risk of diabetic macular edema grade (0-2); official split 413 train / 103 test.
* `segmentation_*` (part "A. Segmentation"): 81 photographs with pixel masks of four lesion types
  and the optic disc; official split 54 train / 27 test. Not every image has every map (the IDRiD
  paper counts 81 microaneurysm, 80 haemorrhage, 81 hard exudate, 40 soft exudate and 81 optic disc
  maps): a missing map is stored as an all-zero mask with `has_<lesion>` = False.

Records follow the image name order (IDRiD_001 ... / IDRiD_01 ...) within each official split. The
grading numbering restarts in the test set (IDRiD_001 ... IDRiD_103 are other images than the
training ones of the same name), so `file_name` keeps the split folder. IDRiD publishes no patient
ids: `patient_id` is "".
"""
from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from tfds_builders import common

_DATASET = 'idrid'
DR_GRADES = ('no DR', 'mild NPDR', 'moderate NPDR', 'severe NPDR', 'PDR')
DME_RISKS = ('no exudates', 'exudates beyond 1 disc diameter of the macula centre',
             'exudates within 1 disc diameter of the macula centre')
# (feature suffix, official folder, file-name suffix), in the official folder order.
LESIONS = (
    ('microaneurysms', '1. Microaneurysms', 'MA'),
    ('haemorrhages', '2. Haemorrhages', 'HE'),
    ('hard_exudates', '3. Hard Exudates', 'EX'),
    ('soft_exudates', '4. Soft Exudates', 'SE'),
    ('optic_disc', '5. Optic Disc', 'OD'),
)
_SPLITS = (('train', 'a. Training Set'), ('test', 'b. Testing Set'))
_GRADING = 'B. Disease Grading'
_SEGMENTATION = 'A. Segmentation'
_LABEL_CSV = {'train': 'a. IDRiD_Disease Grading_Training Labels.csv',
              'test': 'b. IDRiD_Disease Grading_Testing Labels.csv'}
_NAME_COL, _GRADE_COL, _DME_COL = 'Image name', 'Retinopathy grade', 'Risk of macular edema'  # CSV header has a trailing space; read_csv strips it.
_MASKS = 'A. Segmentation/2. All Segmentation Groundtruths'


@dataclasses.dataclass
class IdridConfig(tfds.core.BuilderConfig):
  task: str = 'grading'  # 'grading' (part B) or 'segmentation' (part A).
  image_size: int = 512  # 0 = original 4288x2848; else FOV-cropped, padded square and resized.


def _part_dir(root: pathlib.Path, part: str) -> pathlib.Path:
  """The folder of one part, directly in the manual dir or under the usual nestings."""
  found = common.find_first(root, [f'{part}/1. Original Images', f'IDRiD/{part}/1. Original Images',
                                   f'{part}/{part}/1. Original Images'], dataset=_DATASET)
  return found.parent


def lesion_mask(path: pathlib.Path) -> np.ndarray:
  """A lesion map as uint8 {0, 1} [H, W].

  The official .tif maps are not plain 0/255 grayscale: lesions are marked in one colour channel
  (e.g. red (255, 0, 0), which a luma conversion would bring below half), so a pixel counts as
  lesion when any channel is above half the map's maximum (which also accepts 0/1 maps).
  """
  a = np.asarray(common.load_image(path))
  if a.ndim == 3:
    a = a.max(-1)
  top = int(a.max()) if a.size else 0
  return (a > top / 2).astype(np.uint8) if top else np.zeros(a.shape, np.uint8)


class Idrid(tfds.core.GeneratorBasedBuilder):
  """IDRiD: DR / DME grading (516 images) and lesion + optic disc segmentation (81 images)."""

  name = _DATASET
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release: grading 413/103 and segmentation 54/27 (official splits).'}
  BUILDER_CONFIGS = [
      IdridConfig(name='grading_512', task='grading', image_size=512,
                  description='Disease grading; cropped to the field of view, padded square, 512x512 JPEG.'),
      IdridConfig(name='grading_original', task='grading', image_size=0,
                  description='Disease grading; original 4288x2848 JPEGs (bytes unchanged).'),
      IdridConfig(name='segmentation_512', task='segmentation', image_size=512,
                  description='Lesion/optic disc segmentation; image and masks cropped to the image\'s field '
                              'of view, padded square, 512x512 (image bicubic JPEG, masks nearest PNG).'),
      IdridConfig(name='segmentation_original', task='segmentation', image_size=0,
                  description='Lesion/optic disc segmentation; original JPEGs (bytes unchanged), '
                              'full-size binary PNG masks.'),
  ]
  DEFAULT_CONFIG_NAME = 'grading_512'
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download IDRiD from IEEE DataPort, https://ieee-dataport.org/open-access/indian-diabetic-retinopathy-image-dataset-idrid
  (free account; licence CC BY 4.0 as stated there; cite Porwal et al., "Indian Diabetic Retinopathy
  Image Dataset (IDRiD): A Database for Diabetic Retinopathy Screening Research", Data 3(3):25, 2018).
  Unzip "A. Segmentation.zip" (segmentation configs) and/or "B. Disease Grading.zip" (grading
  configs) into the manual directory, keeping the official folder names:

    <manual_dir>/B. Disease Grading/1. Original Images/a. Training Set/IDRiD_001.jpg ... IDRiD_413.jpg
    <manual_dir>/B. Disease Grading/1. Original Images/b. Testing Set/IDRiD_001.jpg ... IDRiD_103.jpg
    <manual_dir>/B. Disease Grading/2. Groundtruths/a. IDRiD_Disease Grading_Training Labels.csv
    <manual_dir>/B. Disease Grading/2. Groundtruths/b. IDRiD_Disease Grading_Testing Labels.csv
        (columns "Image name" (e.g. IDRiD_001), "Retinopathy grade" (0-4),
         "Risk of macular edema " (0-2; the trailing space and empty extra columns are accepted))

    <manual_dir>/A. Segmentation/1. Original Images/a. Training Set/IDRiD_01.jpg ... IDRiD_54.jpg
    <manual_dir>/A. Segmentation/1. Original Images/b. Testing Set/IDRiD_55.jpg ... IDRiD_81.jpg
    <manual_dir>/A. Segmentation/2. All Segmentation Groundtruths/a. Training Set/1. Microaneurysms/IDRiD_01_MA.tif
        (and 2. Haemorrhages/*_HE.tif, 3. Hard Exudates/*_EX.tif, 4. Soft Exudates/*_SE.tif,
         5. Optic Disc/*_OD.tif; the same under b. Testing Set). A map may be absent for an image
         without that lesion: it is stored as an all-zero mask with has_<lesion> = False.

  Also accepted: the same tree under <manual_dir>/IDRiD/, or each part nested once more in a folder
  of its own name (<manual_dir>/B. Disease Grading/B. Disease Grading/...). Splits are the official
  ones; records are in image-name order.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config
    s = c.image_size
    shape = (s or None, s or None)
    common_features = {
        'image': tfds.features.Image(shape=shape + (3,), encoding_format='jpeg'),
        'id': tfds.features.Scalar(dtype=np.int64, doc='Index in the split, in image-name order.'),
        'file_name': tfds.features.Text(doc='Path relative to the manual dir (keeps the split folder).'),
        'patient_id': tfds.features.Text(doc='Always "": IDRiD publishes no patient ids.'),
    }
    if c.task == 'grading':
      features = {
          **common_features,
          'label': tfds.features.ClassLabel(names=list(DR_GRADES), doc='Retinopathy grade 0-4 (ordinal).'),
          'dme_risk': tfds.features.ClassLabel(names=list(DME_RISKS), doc='Risk of macular edema 0-2.'),
      }
      supervised = ('image', 'label')
    else:
      features = dict(common_features)
      for key, folder, abbr in LESIONS:
        features[f'mask_{key}'] = tfds.features.Image(
            shape=shape + (1,), encoding_format='png',
            doc=f'{folder[3:]} (1) vs background (0), from *_{abbr}.tif; all zero when has_{key} is False.')
        features[f'has_{key}'] = tfds.features.Scalar(
            dtype=np.bool_, doc=f'Whether the official release has a {folder[3:]} map for this image.')
      supervised = None
    return self.dataset_info_from_configs(
        description='IDRiD: Indian Diabetic Retinopathy Image Dataset (ISBI 2018 challenge), '
                    f'{c.task} part.',
        features=tfds.features.FeaturesDict(features),
        supervised_keys=supervised,
        disable_shuffling=True,
        homepage='https://ieee-dataport.org/open-access/indian-diabetic-retinopathy-image-dataset-idrid',
        citation='Porwal et al., Indian Diabetic Retinopathy Image Dataset (IDRiD): A Database for Diabetic '
                 'Retinopathy Screening Research, Data 3(3):25, 2018.',
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = pathlib.Path(dl_manager.manual_dir)
    if self.builder_config.task == 'grading':
      items = self._grading_items(root)
    else:
      items = self._segmentation_items(root)
    return {split: self._generate_examples(root, rows) for split, rows in items.items()}

  def _grading_items(self, root: pathlib.Path) -> dict[str, list]:
    part = _part_dir(root, _GRADING)
    csvs = common.require(part, *[f'2. Groundtruths/{_LABEL_CSV[s]}' for s, _ in _SPLITS], dataset=_DATASET)
    out = {}
    for (split, folder), csv_path in zip(_SPLITS, csvs):
      rows = common.read_csv(csv_path, required=[_NAME_COL, _GRADE_COL, _DME_COL], dataset=_DATASET)
      items = []
      for row in rows:
        stem = row[_NAME_COL]
        if not stem:
          continue  # The official CSVs end with blank rows.
        stem = stem[:-4] if stem.lower().endswith('.jpg') else stem
        grade = _parse_label(row[_GRADE_COL], len(DR_GRADES), csv_path, stem, _GRADE_COL)
        dme = _parse_label(row[_DME_COL], len(DME_RISKS), csv_path, stem, _DME_COL)
        items.append((f'1. Original Images/{folder}/{stem}.jpg', grade, dme))
      if len({i[0] for i in items}) != len(items):
        raise ValueError(f'{_DATASET}: {csv_path} lists an image name twice')
      common.require(part, *[i[0] for i in items], dataset=_DATASET)
      common.check_nonempty(split, items, dataset=_DATASET, where=csv_path)
      out[split] = [dict(path=part / rel, label=g, dme_risk=d) for rel, g, d in sorted(items)]
    return out

  def _segmentation_items(self, root: pathlib.Path) -> dict[str, list]:
    part = _part_dir(root, _SEGMENTATION)
    out = {}
    for split, folder in _SPLITS:
      mask_dirs = common.require(part, *[f'2. All Segmentation Groundtruths/{folder}/{f}' for _, f, _ in LESIONS],
                                 dataset=_DATASET)
      images = common.list_files(part / '1. Original Images' / folder, ['.jpg'], dataset=_DATASET)
      items = []
      for path in images:
        masks = {}
        for (key, _, abbr), mask_dir in zip(LESIONS, mask_dirs):
          candidates = [mask_dir / f'{path.stem}_{abbr}{ext}' for ext in ('.tif', '.tiff', '.TIF')]
          masks[key] = next((m for m in candidates if m.exists()), None)
        items.append(dict(path=path, masks=masks))
      common.check_nonempty(split, items, dataset=_DATASET, where=part / '1. Original Images' / folder)
      out[split] = items
    return out

  def _generate_examples(self, root: pathlib.Path, items):
    c = self.builder_config
    size = c.image_size
    for i, item in enumerate(items):
      path = item['path']
      example = {'id': i, 'file_name': path.relative_to(root).as_posix(), 'patient_id': ''}
      if c.task == 'grading':
        example.update(image=common.image_bytes(path, mode='RGB', fmt='jpeg', size=size, fit='fov'),
                       label=item['label'], dme_risk=item['dme_risk'])
        yield i, example
        continue
      pil = common.load_image(path, mode='RGB')
      box = common.fov_box(pil) if size else None
      if size:
        example['image'] = common.encode(
            common.square(pil, fit='fov', box=box).resize((size, size), Image.BICUBIC), fmt='jpeg')
      else:
        example['image'] = common.image_bytes(path, mode='RGB', fmt='jpeg')  # Original bytes.
      for key, _, _ in LESIONS:
        mask_path = item['masks'][key]
        if mask_path is None:
          m = np.zeros((pil.height, pil.width), np.uint8)
        else:
          m = lesion_mask(mask_path)
          if m.shape != (pil.height, pil.width):
            raise ValueError(f'{_DATASET}: mask {mask_path} is {m.shape[1]}x{m.shape[0]}, but its image '
                             f'{path} is {pil.width}x{pil.height}')
        example[f'mask_{key}'] = common.mask_bytes(m, size=size, fit='fov', box=box)
        example[f'has_{key}'] = mask_path is not None
      yield i, example


def _parse_label(value: str, n: int, csv_path, key: str, column: str) -> int:
  """An integer class id in [0, n); anything else raises naming the file, image and valid values."""
  try:
    v = float(value)
    if v == int(v) and 0 <= int(v) < n:
      return int(v)
  except (TypeError, ValueError):
    pass
  raise ValueError(f'{_DATASET}: {csv_path}, image {key!r}: {column!r} is {value!r}; '
                   f'valid values are {list(range(n))}')
