"""TFDS builder for the Montgomery County chest X-ray set (Jaeger et al. 2014; NLM): normal vs tuberculosis.

138 frontal chest X-rays (80 normal, 58 TB) from the Montgomery County TB control program, with
manual lung masks (left and right lung in separate files) and a clinical reading per image. There is
no official split: train/validation/test = 70/10/20 with `common.patient_split(seed=0)`, stratified by
label (each image is treated as its own patient: the release has no patient ids). Records are
ordered by file name.

`mask` merges the two lung masks into one label map: 0 background, 1 left lung (the `leftMask`
file), 2 right lung (`rightMask`). The folder names follow the patient's anatomy as the dataset
names them; a pixel in both masks (not expected) keeps 1.
"""
from __future__ import annotations

import dataclasses
import pathlib
import re

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from tfds_builders import common

_DATASET = 'montgomery'
_NAME = re.compile(r'^MCUCXR_(\d{4})_(\d+)\.png$', re.IGNORECASE)
_LABELS = {'0': 'normal', '1': 'tuberculosis'}
_BASES = ('MontgomerySet', 'MontgomerySet/MontgomerySet', 'NLM-MontgomeryCXRSet/MontgomerySet', '.')
_FRACTIONS = {'train': 0.7, 'validation': 0.1, 'test': 0.2}
MASK_CLASSES = ('background', 'left_lung', 'right_lung')


@dataclasses.dataclass
class MontgomeryConfig(tfds.core.BuilderConfig):
  image_size: int = 512  # 0 = original size (4020x4892 or 4892x4020).


class Montgomery(tfds.core.GeneratorBasedBuilder):
  """Montgomery County CXR set: normal vs tuberculosis, left/right lung masks, clinical readings."""

  name = _DATASET
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release: seeded stratified 70/10/20 split (seed 0); lung label map.'}
  BUILDER_CONFIGS = [
      MontgomeryConfig(name='512', image_size=512,
                       description='Grayscale, padded to square (black), resized to 512x512 (image bicubic, '
                                   'mask nearest).'),
      MontgomeryConfig(name='original', image_size=0,
                       description='Original size; image bytes kept where the PNG already is 8-bit grayscale.'),
  ]
  DEFAULT_CONFIG_NAME = '512'
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download NLM-MontgomeryCXRSet.zip from the U.S. National Library of Medicine, "Tuberculosis Chest
  X-ray Image Data Sets" (https://lhncbc.nlm.nih.gov/LHC-downloads/downloads.html#tuberculosis-image-data-sets;
  also on https://data.lhncbc.nlm.nih.gov/public/Tuberculosis-Chest-X-ray-Datasets/). The NLM releases
  the set publicly for research and teaching; cite Jaeger et al., "Two public chest X-ray datasets for
  computer-aided screening of pulmonary diseases", Quant Imaging Med Surg 4(6):475-477, 2014, and
  Candemir et al., IEEE TMI 33(2), 2014 (lung masks). Unzip it so that the manual dir holds:

    <manual_dir>/MontgomerySet/CXR_png/MCUCXR_0001_0.png                  (_0 normal, _1 tuberculosis)
    <manual_dir>/MontgomerySet/ManualMask/leftMask/MCUCXR_0001_0.png      (left lung, 0/255)
    <manual_dir>/MontgomerySet/ManualMask/rightMask/MCUCXR_0001_0.png     (right lung, 0/255)
    <manual_dir>/MontgomerySet/ClinicalReadings/MCUCXR_0001_0.txt         (stored as `report`)

  (NLM-MontgomeryCXRSet/MontgomerySet/..., or CXR_png/ etc. directly in the manual dir, are also
  accepted). Split (no official one): train/validation/test = 70/10/20, seed 0, stratified by label.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    s = self.builder_config.image_size
    shape = (s or None, s or None, 1)
    return self.dataset_info_from_configs(
        description='Montgomery County chest X-ray set for tuberculosis screening (NLM), with lung masks.',
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=shape, encoding_format='png'),
            'label': tfds.features.ClassLabel(names=['normal', 'tuberculosis'], doc='File-name suffix _0 / _1.'),
            'mask': tfds.features.Image(shape=shape, encoding_format='png',
                                        doc='Label map: 0 background, 1 left lung (leftMask), 2 right lung '
                                            '(rightMask).'),
            'id': tfds.features.Scalar(dtype=np.int64, doc='Index in the split, in file-name order.'),
            'file_name': tfds.features.Text(doc='Path relative to the manual dir.'),
            'patient_id': tfds.features.Text(doc='Always "": the release has no patient ids.'),
            'report': tfds.features.Text(doc='The ClinicalReadings text (sex, age, findings).'),
        }),
        supervised_keys=('image', 'label'),
        disable_shuffling=True,
        homepage='https://lhncbc.nlm.nih.gov/LHC-downloads/downloads.html#tuberculosis-image-data-sets',
        citation='Jaeger et al., Two public chest X-ray datasets for computer-aided screening of pulmonary '
                 'diseases, Quant Imaging Med Surg 4(6):475-477, 2014.',
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = pathlib.Path(dl_manager.manual_dir)
    base = common.find_first(root, [f'{b}/CXR_png' for b in _BASES], dataset=_DATASET).parent
    items = []
    for p in common.list_files(base / 'CXR_png', ['.png'], dataset=_DATASET):
      m = _NAME.match(p.name)
      if not m or m.group(2) not in _LABELS:
        raise ValueError(f'{_DATASET}: unexpected image name {p}: expected MCUCXR_<4 digits>_<label>.png with '
                         f'label suffix in {sorted(_LABELS)} (0 normal, 1 tuberculosis)')
      items.append({'path': p, 'label': int(m.group(2))})
    common.require(base, *[f'{d}/{x["path"].name}' for x in items
                           for d in ('ManualMask/leftMask', 'ManualMask/rightMask')], dataset=_DATASET)
    common.require(base, *[f'ClinicalReadings/{x["path"].stem}.txt' for x in items], dataset=_DATASET)
    parts = common.patient_split([x['path'].name for x in items], fractions=_FRACTIONS, seed=0,
                                 labels=[x['label'] for x in items])
    out = {}
    for split, idx in parts.items():
      chosen = [items[i] for i in idx]
      common.check_nonempty(split, chosen, dataset=_DATASET, where=base)
      out[split] = self._generate_examples(root, base, chosen)
    return out

  def _generate_examples(self, root, base, items):
    size = self.builder_config.image_size
    for i, item in enumerate(items):
      path = item['path']
      left = common.mask_array(base / 'ManualMask/leftMask' / path.name, threshold=None)
      right = common.mask_array(base / 'ManualMask/rightMask' / path.name, threshold=None)
      image = common.image_bytes(path, mode='L', size=size, fit='pad')
      with Image.open(path) as probe:  # Header only: the image itself was checked by image_bytes.
        w, h = probe.size
      for name, m in (('leftMask', left), ('rightMask', right)):
        if m.shape != (h, w):
          raise ValueError(f'{_DATASET}: {base / "ManualMask" / name / path.name} is {m.shape[1]}x{m.shape[0]}, '
                           f'but its image {path} is {w}x{h}')
      mask = left.copy()
      mask[(right == 1) & (left == 0)] = 2
      yield i, {
          'image': image,
          'label': item['label'],
          'mask': common.mask_bytes(mask, size=size, fit='pad'),
          'id': i,
          'file_name': path.relative_to(root).as_posix(),
          'patient_id': '',
          'report': common.read_text(base / 'ClinicalReadings' / f'{path.stem}.txt'),
      }
