"""TFDS builder for DRIVE (Staal et al. 2004): 40 fundus images with vessel maps and field-of-view masks.

The official split is used: 20 training images (21-40, one manual vessel map each) and 20 test images
(01-20, a first manual map, the usual reference, and a second observer's map). Training images have
no second observer: their `mask_2nd_observer` is stored all-zero with `has_2nd_observer` False, so
every record has the same features; filter on the flag before using it.
"""
from __future__ import annotations

import dataclasses
import re

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from tfds_builders import common

_DATASET = 'drive'
_NAME = re.compile(r'^(\d\d)_(training|test)\.tif$', re.IGNORECASE)
_SPLITS = (('train', 'training'), ('test', 'test'))  # (TFDS split, official folder)


@dataclasses.dataclass
class DriveConfig(tfds.core.BuilderConfig):
  image_size: int = 0  # 0 = original 565x584; else cropped to the FOV, padded square and resized.


class Drive(tfds.core.GeneratorBasedBuilder):
  """DRIVE: 40 colour fundus images (565x584) with manual vessel maps and FOV masks, official 20/20 split."""

  name = _DATASET
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release: official 20 train / 20 test split, both observers for test.'}
  BUILDER_CONFIGS = [
      DriveConfig(name='original', description='Original 565x584 images as PNG (TIFF re-encoded losslessly), '
                                               'masks as PNG.'),
      DriveConfig(name='512', image_size=512,
                  description='Cropped to the bounding box of the FOV mask, padded square (black), resized to '
                              '512x512 (image bicubic, masks nearest); images PNG.'),
  ]
  DEFAULT_CONFIG_NAME = 'original'
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  DRIVE (Digital Retinal Images for Vessel Extraction) is distributed after registration at
  https://drive.grand-challenge.org/ (originally https://www.isi.uu.nl/Research/Databases/DRIVE/).
  Terms as the owners state them: for research use; publications must cite Staal et al.,
  "Ridge-based vessel segmentation in color images of the retina", IEEE TMI 23(4):501-509, 2004.
  This builder needs the full release with the test-set manual annotations (test/1st_manual and
  test/2nd_manual); the grand-challenge archive without them cannot build the test split.

  Unzip so that the manual dir holds (a top folder DRIVE/ is also accepted):

    <manual_dir>/training/images/21_training.tif       ... 40_training.tif (565x584 RGB)
    <manual_dir>/training/1st_manual/21_manual1.gif    vessel map (the reference)
    <manual_dir>/training/mask/21_training_mask.gif    field-of-view mask
    <manual_dir>/test/images/01_test.tif               ... 20_test.tif
    <manual_dir>/test/1st_manual/01_manual1.gif        vessel map, first observer (the reference)
    <manual_dir>/test/2nd_manual/01_manual2.gif        vessel map, second observer
    <manual_dir>/test/mask/01_test_mask.gif            field-of-view mask
  """

  def _info(self) -> tfds.core.DatasetInfo:
    s = self.builder_config.image_size
    shape = (s or None, s or None)
    mask = lambda doc: tfds.features.Image(shape=shape + (1,), encoding_format='png', doc=doc)
    return self.dataset_info_from_configs(
        description='DRIVE retinal vessel segmentation (Utrecht, Dutch diabetic retinopathy screening).',
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=shape + (3,), encoding_format='png'),
            'mask': mask('Vessels (1) vs background (0), 1st_manual (the usual reference).'),
            'fov_mask': mask('Field of view (1) vs outside (0), from the official mask/ folder.'),
            'mask_2nd_observer': mask('Vessels by the second observer (test only; all-zero in train).'),
            'has_2nd_observer': tfds.features.Scalar(dtype=np.bool_, doc='False in train: no 2nd_manual.'),
            'id': tfds.features.Scalar(dtype=np.int64, doc='Index in the split, in file-name order.'),
            'file_name': tfds.features.Text(),
            'patient_id': tfds.features.Text(doc='Empty: DRIVE gives no patient ids (one image per subject).'),
        }),
        supervised_keys=('image', 'mask'),
        disable_shuffling=True,
        homepage='https://drive.grand-challenge.org/',
        citation='Staal et al., Ridge-based vessel segmentation in color images of the retina, '
                 'IEEE TMI 23(4):501-509, 2004.',
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = common.find_first(dl_manager.manual_dir, ['training', 'DRIVE/training'], dataset=_DATASET).parent
    out = {}
    for split, folder in _SPLITS:
      images = [p for p in common.list_files(root / folder / 'images', ['.tif'], dataset=_DATASET)
                if _NAME.match(p.name)]
      common.check_nonempty(split, images, dataset=_DATASET, where=root / folder / 'images')
      items = []
      for p in images:
        num = _NAME.match(p.name).group(1)
        item = {'image': p, 'mask': root / folder / '1st_manual' / f'{num}_manual1.gif',
                'fov_mask': root / folder / 'mask' / f'{num}_{folder}_mask.gif'}
        if folder == 'test':
          item['mask_2nd_observer'] = root / folder / '2nd_manual' / f'{num}_manual2.gif'
        items.append(item)
      # Every annotation checked before anything is written; the error names all missing files.
      common.require(root, *[str(v.relative_to(root)) for it in items for v in it.values()], dataset=_DATASET)
      out[split] = self._generate_examples(root, items)
    return out

  def _generate_examples(self, root, items):
    size = self.builder_config.image_size
    for i, item in enumerate(items):
      fov = common.mask_array(item['fov_mask'])
      # Crop box from the official FOV mask (exact), shared by the image and all masks.
      box = common.fov_box(Image.fromarray(fov * 255)) if size else None
      pil = common.load_image(item['image'], mode='RGB')
      if size:
        pil = common.square(pil, fit='fov', box=box).resize((size, size), Image.BICUBIC)
      has_2nd = 'mask_2nd_observer' in item
      second = common.mask_array(item['mask_2nd_observer']) if has_2nd else np.zeros_like(fov)
      yield i, {
          'image': common.encode(pil, fmt='png'),
          'mask': common.mask_bytes(common.mask_array(item['mask']), size=size, fit='fov', box=box),
          'fov_mask': common.mask_bytes(fov, size=size, fit='fov', box=box),
          'mask_2nd_observer': common.mask_bytes(second, size=size, fit='fov', box=box),
          'has_2nd_observer': has_2nd,
          'id': i,
          'file_name': str(item['image'].relative_to(root)),
          'patient_id': '',
      }
