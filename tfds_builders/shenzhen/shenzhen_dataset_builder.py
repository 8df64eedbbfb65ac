"""TFDS builder for the Shenzhen Hospital chest X-ray set (Jaeger et al. 2014; NLM): normal vs tuberculosis.

662 frontal chest X-rays (326 normal, 336 TB) from Shenzhen No.3 People's Hospital, each with a short
clinical reading (sex, age, findings). There is no official split: train/validation/test are made
with `common.patient_split(fractions=70/10/20, seed=0)`, stratified by label, over all images (each
image is treated as its own patient: the release has no patient ids). Records are ordered by file name.

The official release has no lung masks. Config `with_lung_masks_512` adds the separately published
manual lung masks (Stirenko et al. 2018), which cover only part of the images: it keeps the images
that have a mask, with the same split assignment as `512` (so test images never move to train).
"""
from __future__ import annotations

import dataclasses
import pathlib
import re

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from tfds_builders import common

_DATASET = 'shenzhen'
_NAME = re.compile(r'^CHNCXR_(\d{4})_(\d+)\.png$', re.IGNORECASE)
_LABELS = {'0': 'normal', '1': 'tuberculosis'}
_BASES = ('ChinaSet_AllFiles', 'ChinaSet_AllFiles/ChinaSet_AllFiles', '.')
_MASK_DIRS = ('mask', 'masks', 'ChinaSet_AllFiles/mask', 'ChinaSet_AllFiles/masks')
_FRACTIONS = {'train': 0.7, 'validation': 0.1, 'test': 0.2}


@dataclasses.dataclass
class ShenzhenConfig(tfds.core.BuilderConfig):
  image_size: int = 512
  lung_masks: bool = False  # Requires the Stirenko et al. masks; keeps only images that have one.


class Shenzhen(tfds.core.GeneratorBasedBuilder):
  """Shenzhen Hospital CXR set: normal vs tuberculosis, clinical readings, optional lung masks."""

  name = _DATASET
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release: seeded stratified 70/10/20 split (seed 0); optional lung masks.'}
  BUILDER_CONFIGS = [
      ShenzhenConfig(name='512', image_size=512,
                     description='Grayscale, padded to square (black), resized to 512x512 (bicubic).'),
      ShenzhenConfig(name='with_lung_masks_512', image_size=512, lung_masks=True,
                     description='As 512 plus the Stirenko et al. lung masks (nearest), images with a mask only.'),
  ]
  DEFAULT_CONFIG_NAME = '512'
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download ChinaSet_AllFiles.zip from the U.S. National Library of Medicine, "Tuberculosis Chest
  X-ray Image Data Sets" (https://lhncbc.nlm.nih.gov/LHC-downloads/downloads.html#tuberculosis-image-data-sets;
  also on https://data.lhncbc.nlm.nih.gov/public/Tuberculosis-Chest-X-ray-Datasets/). The NLM releases
  the set publicly for research and teaching; cite Jaeger et al., "Two public chest X-ray datasets for
  computer-aided screening of pulmonary diseases", Quant Imaging Med Surg 4(6):475-477, 2014, and
  Candemir et al., IEEE TMI 33(2), 2014. Unzip it so that the manual dir holds:

    <manual_dir>/ChinaSet_AllFiles/CXR_png/CHNCXR_0001_0.png            (_0 normal, _1 tuberculosis)
    <manual_dir>/ChinaSet_AllFiles/ClinicalReadings/CHNCXR_0001_0.txt   (stored as `report`)

  (ChinaSet_AllFiles/ChinaSet_AllFiles/..., or CXR_png/ and ClinicalReadings/ directly in the manual
  dir, are also accepted). For config with_lung_masks_512, also put the manual lung masks of Stirenko
  et al. 2018 ("Chest X-ray analysis of tuberculosis by deep learning with segmentation and
  augmentation", published on Kaggle as "Shenzhen chest X-ray masks"; they cover part of the 662
  images) in

    <manual_dir>/mask/CHNCXR_0001_0_mask.png     (or masks/, or ChinaSet_AllFiles/mask/)

  Split (no official one): train/validation/test = 70/10/20, seed 0, stratified by label.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config
    s = c.image_size
    features = {
        'image': tfds.features.Image(shape=(s, s, 1), encoding_format='png'),
        'label': tfds.features.ClassLabel(names=['normal', 'tuberculosis'], doc='File-name suffix _0 / _1.'),
        'id': tfds.features.Scalar(dtype=np.int64, doc='Index in the split, in file-name order.'),
        'file_name': tfds.features.Text(doc='Path relative to the manual dir.'),
        'patient_id': tfds.features.Text(doc='Always "": the release has no patient ids.'),
        'report': tfds.features.Text(doc='The ClinicalReadings text (sex, age, findings).'),
    }
    if c.lung_masks:
      features['mask'] = tfds.features.Image(shape=(s, s, 1), encoding_format='png',
                                             doc='Lungs (1) vs background (0), Stirenko et al. 2018.')
    return self.dataset_info_from_configs(
        description='Shenzhen Hospital chest X-ray set for tuberculosis screening (NLM).',
        features=tfds.features.FeaturesDict(features),
        supervised_keys=('image', 'label'),
        disable_shuffling=True,
        homepage='https://lhncbc.nlm.nih.gov/LHC-downloads/downloads.html#tuberculosis-image-data-sets',
        citation='Jaeger et al., Two public chest X-ray datasets for computer-aided screening of pulmonary '
                 'diseases, Quant Imaging Med Surg 4(6):475-477, 2014.',
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = pathlib.Path(dl_manager.manual_dir)
    base = common.find_first(root, [f'{b}/CXR_png' for b in _BASES], dataset=_DATASET).parent
    files = common.list_files(base / 'CXR_png', ['.png'], dataset=_DATASET)
    items = []
    for p in files:
      m = _NAME.match(p.name)
      if not m or m.group(2) not in _LABELS:
        raise ValueError(f'{_DATASET}: unexpected image name {p}: expected CHNCXR_<4 digits>_<label>.png with '
                         f'label suffix in {sorted(_LABELS)} (0 normal, 1 tuberculosis)')
      items.append({'path': p, 'label': int(m.group(2))})
    common.require(base, *[f'ClinicalReadings/{x["path"].stem}.txt' for x in items], dataset=_DATASET)
    if self.builder_config.lung_masks:
      mask_dir = None
      for d in _MASK_DIRS:
        if (root / d).is_dir():
          mask_dir = root / d
          break
      if mask_dir is None:
        raise common.LayoutError(
            f'{_DATASET}: config {self.builder_config.name!r} needs the Stirenko et al. lung masks, but none of '
            f'{list(_MASK_DIRS)} exists in the manual dir {root}; expected <manual_dir>/mask/CHNCXR_0001_0_mask.png '
            f'(see MANUAL_DOWNLOAD_INSTRUCTIONS), or use config 512 without masks')
      for x in items:
        m = mask_dir / f'{x["path"].stem}_mask.png'
        x['mask'] = m if m.is_file() else None
      if not any(x['mask'] for x in items):
        raise common.LayoutError(f'{_DATASET}: no <image>_mask.png for any image in {mask_dir} (expected e.g. '
                                 f'{mask_dir / "CHNCXR_0001_0_mask.png"})')
    keys = [x['path'].name for x in items]
    parts = common.patient_split(keys, fractions=_FRACTIONS, seed=0, labels=[x['label'] for x in items])
    out = {}
    for split, idx in parts.items():
      chosen = [items[i] for i in idx]
      if self.builder_config.lung_masks:
        chosen = [x for x in chosen if x['mask']]
      common.check_nonempty(split, chosen, dataset=_DATASET, where=base)
      out[split] = self._generate_examples(root, base, chosen)
    return out

  def _generate_examples(self, root, base, items):
    c = self.builder_config
    for i, item in enumerate(items):
      path = item['path']
      pil = common.load_image(path, mode='L')  # Decoded once: the originals are ~3000x3000.
      ex = {
          'image': common.encode(common.square(pil, fit='pad').resize((c.image_size,) * 2, Image.BICUBIC)),
          'label': item['label'],
          'id': i,
          'file_name': path.relative_to(root).as_posix(),
          'patient_id': '',
          'report': common.read_text(base / 'ClinicalReadings' / f'{path.stem}.txt'),
      }
      if c.lung_masks:
        mask = common.mask_array(item['mask'], threshold=None)
        (w, h), (mw, mh) = pil.size, mask.shape[::-1]
        if (mw, mh) != (w, h):
          # Some mask releases are rescaled copies; accept them only with the image's aspect ratio.
          if abs(mw / mh - w / h) > 0.01 * (w / h):
            raise ValueError(f'{_DATASET}: mask {item["mask"]} is {mw}x{mh}, but its image {path} is {w}x{h}')
          mask = np.asarray(Image.fromarray(mask).resize((w, h), Image.NEAREST))
        ex['mask'] = common.mask_bytes(mask, size=c.image_size, fit='pad')
      yield i, ex
