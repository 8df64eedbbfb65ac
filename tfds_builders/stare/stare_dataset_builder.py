"""TFDS builder for the STARE vessel subset (Hoover et al. 2000): 20 fundus images, two observers' vessel maps.

STARE has no official train/test split (Hoover et al. evaluated every image, many papers use
leave-one-out). This builder follows the other common convention: the first 10 of the 20 labelled
images in file-name order (im0001-im0139) train and the last 10 (im0162-im0324) test. For
leave-one-out, concatenate both splits and index by `id`/`file_name`.
"""
from __future__ import annotations

import dataclasses
import gzip
import io
import pathlib

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from tfds_builders import common

_DATASET = 'stare'
# The 20 images with hand-labelled vessels (Hoover et al. 2000), in file-name order.
IMAGE_IDS = ('im0001', 'im0002', 'im0003', 'im0004', 'im0005', 'im0044', 'im0077', 'im0081', 'im0082', 'im0139',
             'im0162', 'im0163', 'im0235', 'im0236', 'im0239', 'im0240', 'im0255', 'im0291', 'im0319', 'im0324')
TRAIN_IDS = IMAGE_IDS[:10]


@dataclasses.dataclass
class StareConfig(tfds.core.BuilderConfig):
  image_size: int = 0  # 0 = original 700x605; else cropped to the FOV, padded square and resized.


def _open(path: pathlib.Path) -> Image.Image:
  """A fully decoded image from a plain or gzipped (.gz, as STARE distributes them) file; errors name it."""
  try:
    data = gzip.decompress(path.read_bytes()) if path.name.lower().endswith('.gz') else path.read_bytes()
    with Image.open(io.BytesIO(data)) as im:
      im.load()
      return common.to_8bit(im)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f'Could not read the image {path}: {e} (expected a readable image file)') from e


def _find(folder: pathlib.Path, stem: str) -> pathlib.Path:
  """`stem` or `stem.gz` in folder (the archives ship .gz; unpacked copies drop it)."""
  plain = folder / stem
  return plain if plain.exists() or not (folder / f'{stem}.gz').exists() else folder / f'{stem}.gz'


class Stare(tfds.core.GeneratorBasedBuilder):
  """STARE: 20 colour fundus images (700x605) with vessel maps by two observers (Hoover: ah, Kouznetsova: vk)."""

  name = _DATASET
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release: first 10 / last 10 of the 20 labelled images as train / test.'}
  BUILDER_CONFIGS = [
      StareConfig(name='original', description='Original 700x605 images as PNG (PPM re-encoded losslessly), '
                                               'masks as PNG.'),
      StareConfig(name='512', image_size=512,
                  description='Cropped to the field of view (non-dark pixels), padded square (black), resized '
                              'to 512x512 (image bicubic, masks nearest); images PNG.'),
  ]
  DEFAULT_CONFIG_NAME = 'original'
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download the vessel-segmentation files of the STARE project (Structured Analysis of the Retina,
  A. Hoover, Clemson University) from https://cecas.clemson.edu/~ahoover/stare/probing/index.html:
  stare-images.tar (the 20 images), labels-ah.tar (Hoover's labels) and labels-vk.tar
  (Kouznetsova's labels). Terms as the owners state them: free for research; cite Hoover, Kouznetsova
  and Goldbaum, "Locating blood vessels in retinal images by piecewise threshold probing of a matched
  filter response", IEEE TMI 19(3):203-210, 2000. Unpack each tar into its own folder (the .gz files
  may stay compressed or be gunzipped; a top folder STARE/ is also accepted):

    <manual_dir>/stare-images/im0001.ppm.gz     (or im0001.ppm) 700x605 RGB; the 20 ids im0001 ... im0324
    <manual_dir>/labels-ah/im0001.ah.ppm.gz     vessel map by A. Hoover (the usual reference -> mask)
    <manual_dir>/labels-vk/im0001.vk.ppm.gz     vessel map by V. Kouznetsova (-> mask_2nd_observer)

  The full 397-image archive (all-images) may be unpacked into stare-images/ instead: only the 20
  images with labels are used. Split: im0001-im0139 train, im0162-im0324 test (no official split).
  """

  def _info(self) -> tfds.core.DatasetInfo:
    s = self.builder_config.image_size
    shape = (s or None, s or None)
    mask = lambda doc: tfds.features.Image(shape=shape + (1,), encoding_format='png', doc=doc)
    return self.dataset_info_from_configs(
        description='STARE retinal vessel segmentation (20 labelled images, two observers).',
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=shape + (3,), encoding_format='png'),
            'mask': mask('Vessels (1) vs background (0) by A. Hoover (labels-ah, the usual reference).'),
            'mask_2nd_observer': mask('Vessels by V. Kouznetsova (labels-vk).'),
            'id': tfds.features.Scalar(dtype=np.int64, doc='Index in the split, in file-name order.'),
            'file_name': tfds.features.Text(),
            'patient_id': tfds.features.Text(doc='Empty: STARE gives no patient ids.'),
        }),
        supervised_keys=('image', 'mask'),
        disable_shuffling=True,
        homepage='https://cecas.clemson.edu/~ahoover/stare/',
        citation='Hoover, Kouznetsova, Goldbaum, Locating blood vessels in retinal images by piecewise threshold '
                 'probing of a matched filter response, IEEE TMI 19(3):203-210, 2000.',
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    images = common.find_first(dl_manager.manual_dir, ['stare-images', 'STARE/stare-images'], dataset=_DATASET)
    root = images.parent
    common.require(root, 'labels-ah', 'labels-vk', dataset=_DATASET)
    items = [{'image': _find(images, f'{i}.ppm'), 'mask': _find(root / 'labels-ah', f'{i}.ah.ppm'),
              'mask_2nd_observer': _find(root / 'labels-vk', f'{i}.vk.ppm')} for i in IMAGE_IDS]
    common.require(root, *[str(p.relative_to(root)) for it in items for p in it.values()], dataset=_DATASET)
    train = [it for i, it in zip(IMAGE_IDS, items) if i in TRAIN_IDS]
    test = [it for i, it in zip(IMAGE_IDS, items) if i not in TRAIN_IDS]
    return {'train': self._generate_examples(root, train), 'test': self._generate_examples(root, test)}

  def _generate_examples(self, root, items):
    size = self.builder_config.image_size
    for i, item in enumerate(items):
      pil = _open(item['image']).convert('RGB')
      box = common.fov_box(pil) if size else None  # One crop box for the image and both masks.
      if size:
        pil = common.square(pil, fit='fov', box=box).resize((size, size), Image.BICUBIC)
      masks = {k: common.mask_bytes((np.asarray(_open(item[k]).convert('L')) > 127).astype(np.uint8),
                                    size=size, fit='fov', box=box) for k in ('mask', 'mask_2nd_observer')}
      yield i, {
          'image': common.encode(pil, fmt='png'),
          **masks,
          'id': i,
          'file_name': str(item['image'].relative_to(root)),
          'patient_id': '',
      }
