"""TFDS builder for CHASE_DB1 (Fraz et al. 2012): 28 child fundus images with two observers' vessel maps.

No official split exists; the common convention (followed by R2U-Net, IterNet and most vessel papers)
trains on the first 20 images (children 01-10) and tests on the last 8 (children 11-14), so the two
eyes of a child never straddle the split.
"""
from __future__ import annotations

import dataclasses
import pathlib
import re

import numpy as np
import tensorflow_datasets as tfds

from tfds_builders import common

_NAME = re.compile(r'^Image_(\d\d)([LR])\.jpg$', re.IGNORECASE)
_TRAIN_CHILDREN = 10  # Children 01-10 (20 images) train, 11-14 (8 images) test.


@dataclasses.dataclass
class ChaseDb1Config(tfds.core.BuilderConfig):
  image_size: int = 0  # 0 = original 999x960; else padded to square and resized.


class ChaseDb1(tfds.core.GeneratorBasedBuilder):
  """CHASE_DB1: fundus images of 14 children (left and right eye) with vessel masks from 2 observers."""

  name = 'chase_db1'
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release: 20 train / 8 test (children 01-10 / 11-14).'}
  BUILDER_CONFIGS = [
      ChaseDb1Config(name='original', description='Original 999x960 JPEGs (bytes unchanged), masks as PNG.'),
      ChaseDb1Config(name='512', image_size=512,
                     description='Padded to 999x999 (black), resized to 512x512 (image bicubic, masks nearest).'),
      ChaseDb1Config(name='224', image_size=224,
                     description='As 512 at 224x224: stored at the training resolution, so the input pipeline '
                                 'decodes a 224 px JPEG instead of resizing a larger one.'),
  ]
  DEFAULT_CONFIG_NAME = 'original'
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download CHASEDB1.zip from the Kingston University research data page for CHASE_DB1
  (https://researchdata.kingston.ac.uk/96/; cite Fraz et al., IEEE TBME 59(9), 2012; licence as
  stated there) and unzip it so the 84 files lie directly in the manual directory:

    <manual_dir>/Image_01L.jpg          fundus photograph, 999x960 RGB (Image_01L ... Image_14R)
    <manual_dir>/Image_01L_1stHO.png    vessel map by the first observer (the usual reference)
    <manual_dir>/Image_01L_2ndHO.png    vessel map by the second observer
  """

  def _info(self) -> tfds.core.DatasetInfo:
    s = self.builder_config.image_size
    shape = (s or None, s or None)
    return self.dataset_info_from_configs(
        description='CHASE_DB1 retinal vessel segmentation (Child Heart and Health Study in England).',
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=shape + (3,), encoding_format='jpeg'),
            'mask': tfds.features.Image(shape=shape + (1,), encoding_format='png',
                                        doc='Vessels (1) vs background (0), first observer (1stHO).'),
            'mask_2nd_observer': tfds.features.Image(shape=shape + (1,), encoding_format='png',
                                                     doc='Vessels by the second observer (2ndHO).'),
            'id': tfds.features.Scalar(dtype=np.int64, doc='Index in the split, in file-name order.'),
            'file_name': tfds.features.Text(),
            'patient_id': tfds.features.Text(doc='Child number, "01"-"14".'),
            'eye': tfds.features.ClassLabel(names=['left', 'right']),
        }),
        supervised_keys=('image', 'mask'),
        disable_shuffling=True,
        homepage='https://researchdata.kingston.ac.uk/96/',
        citation='Fraz et al., An ensemble classification-based approach applied to retinal blood vessel '
                 'segmentation, IEEE TBME 59(9):2538-2548, 2012.',
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = pathlib.Path(dl_manager.manual_dir)
    images = [p for p in common.list_files(root, ['.jpg'], dataset='chase_db1') if _NAME.match(p.name)]
    names = [p.name[:-4] for p in images]
    common.require(root, *[f'{n}_{o}.png' for n in names for o in ('1stHO', '2ndHO')], dataset='chase_db1')
    train = [p for p in images if int(_NAME.match(p.name).group(1)) <= _TRAIN_CHILDREN]
    test = [p for p in images if int(_NAME.match(p.name).group(1)) > _TRAIN_CHILDREN]
    for split, files in (('train', train), ('test', test)):
      common.check_nonempty(split, files, dataset='chase_db1', where=root)
    return {'train': self._generate_examples(train), 'test': self._generate_examples(test)}

  def _generate_examples(self, files):
    size = self.builder_config.image_size
    for i, path in enumerate(files):
      child, eye = _NAME.match(path.name).groups()
      masks = {}
      for key, observer in (('mask', '1stHO'), ('mask_2nd_observer', '2ndHO')):
        m = common.mask_array(path.with_name(f'{path.stem}_{observer}.png'))
        masks[key] = common.mask_bytes(m, size=size)
      yield i, {
          'image': common.image_bytes(path, mode='RGB', fmt='jpeg', size=size),
          **masks,
          'id': i,
          'file_name': path.name,
          'patient_id': child,
          'eye': 'left' if eye.upper() == 'L' else 'right',
      }
