"""TFDS builder for HRF, the High-Resolution Fundus image database (Budai et al. 2013).

45 photographs (3504x2336) of 45 different people: 15 healthy (`NN_h`), 15 with diabetic retinopathy
(`NN_dr`) and 15 with glaucoma (`NN_g`). The classification configs use the group in the file name as
the label; `segmentation_1024` adds the manual vessel maps (`manual1/`) and FOV masks (`mask/`).

There is no official split. Every config uses the same seeded split, stratified by group:
`common.patient_split(fractions={'train': .6, 'validation': .2, 'test': .2}, seed=0)` over the file
stems (each image its own patient), i.e. 27 / 9 / 9 images, 9 / 3 / 3 per group.
"""
from __future__ import annotations

import dataclasses
import pathlib
import re

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from tfds_builders import common

_DATASET = 'hrf'
LABELS = ('healthy', 'diabetic_retinopathy', 'glaucoma')
_SUFFIX = {'h': 0, 'dr': 1, 'g': 2}  # File-name group -> index in LABELS.
_NAME = re.compile(r'^(\d+)_([A-Za-z]+)\.jpe?g$', re.IGNORECASE)
SPLIT_FRACTIONS = {'train': 0.6, 'validation': 0.2, 'test': 0.2}
SPLIT_SEED = 0


@dataclasses.dataclass
class HrfConfig(tfds.core.BuilderConfig):
  image_size: int = 512
  segmentation: bool = False  # Adds `mask` (manual1/) and `fov_mask` (mask/); both folders required.


def load_rgb(path: pathlib.Path, *, min_side: int = 0) -> Image.Image:
  """An RGB image, decoded at a reduced scale when it is a JPEG larger than needed.

  JPEG `draft` decodes at 1/2, 1/4 or 1/8 scale (the largest reduction keeping the shorter side at
  least `min_side`), several times faster than a full decode of a 3504x2336 photograph. Errors name
  the file, like `common.load_image`.
  """
  try:
    with Image.open(path) as im:
      if min_side and im.format == 'JPEG':
        w, h = im.size
        scale = min_side / min(w, h)
        im.draft('RGB', (int(np.ceil(w * scale)), int(np.ceil(h * scale))))
      im.load()
      return common.to_8bit(im).convert('RGB')
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f'Could not read the image {path}: {e} (expected a readable image file)') from e


class Hrf(tfds.core.GeneratorBasedBuilder):
  """HRF: 45 high-resolution fundus photographs (healthy / DR / glaucoma), vessel maps in `segmentation_1024`."""

  name = _DATASET
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release: seeded stratified split 27/9/9 (seed 0), 3-class labels.'}
  BUILDER_CONFIGS = [
      HrfConfig(name='classification_512', image_size=512,
                description='Images cropped to the field of view, padded square, resized to 512x512 (JPEG); '
                            '3-class label from the file name.'),
      HrfConfig(name='classification_224', image_size=224,
                description='As classification_512 at 224x224: stored at the training resolution, so the input '
                            'pipeline decodes a 224 px JPEG instead of resizing a 512 px one.'),
      HrfConfig(name='classification_1024', image_size=1024,
                description='As classification_512 at 1024x1024.'),
      HrfConfig(name='segmentation_1024', image_size=1024, segmentation=True,
                description='1024x1024 images (cropped to the FOV mask box) with vessel maps (manual1/) and FOV '
                            'masks (mask/); needs both folders.'),
  ]
  DEFAULT_CONFIG_NAME = 'classification_512'
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download the HRF image database from the Pattern Recognition Lab of FAU Erlangen-Nuremberg:
  https://www5.cs.fau.de/research/data/fundus-images/ (the full archive all.zip, or images.zip +
  manual1.zip + mask.zip). Licence: CC BY 4.0 as given by a public mirror (not confirmed on the
  owners' page); cite Budai, Bock, Maier, Hornegger, Michelson, "Robust Vessel Segmentation in Fundus
  Images", International Journal of Biomedical Imaging 2013:154860. Unzip so the manual dir holds
  (a top folder all/ or HRF/ is also accepted):

    <manual_dir>/images/01_h.jpg          3504x2336 RGB; NN_h (healthy), NN_dr (diabetic retinopathy),
                                          NN_g (glaucoma), NN = 01-15; some are .JPG
    <manual_dir>/manual1/01_h.tif         vessel map (only needed by segmentation_1024)
    <manual_dir>/mask/01_h_mask.tif       field-of-view mask (only needed by segmentation_1024)

  No official split: a seeded (seed 0) split stratified by group gives train 27 / validation 9 /
  test 9 images (9/3/3 per group) in every config.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    shape = (cfg.image_size, cfg.image_size)
    features = {
        'image': tfds.features.Image(shape=shape + (3,), encoding_format='jpeg'),
        'label': tfds.features.ClassLabel(names=LABELS, doc='Group from the file name: _h, _dr, _g.'),
        'id': tfds.features.Scalar(dtype=np.int64, doc='Index in the split, in file-name order.'),
        'file_name': tfds.features.Text(),
        'patient_id': tfds.features.Text(doc='The file stem, e.g. "01_h": each image is a different person.'),
    }
    if cfg.segmentation:
      features['mask'] = tfds.features.Image(shape=shape + (1,), encoding_format='png',
                                             doc='Vessels (1) vs background (0), manual1/.')
      features['fov_mask'] = tfds.features.Image(shape=shape + (1,), encoding_format='png',
                                                 doc='Field of view (1) vs outside (0), mask/.')
    return self.dataset_info_from_configs(
        description='HRF high-resolution fundus images (FAU Erlangen-Nuremberg / Brno University of Technology).',
        features=tfds.features.FeaturesDict(features),
        supervised_keys=('image', 'mask' if cfg.segmentation else 'label'),
        disable_shuffling=True,
        homepage='https://www5.cs.fau.de/research/data/fundus-images/',
        citation='Budai, Bock, Maier, Hornegger, Michelson, Robust Vessel Segmentation in Fundus Images, '
                 'Int. J. Biomedical Imaging 2013:154860.',
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    images = common.find_first(dl_manager.manual_dir, ['images', 'all/images', 'HRF/images'], dataset=_DATASET)
    root = images.parent
    files = common.list_files(images, ['.jpg', '.jpeg'], dataset=_DATASET)
    labels = []
    for p in files:
      m = _NAME.match(p.name)
      if not m or m.group(2).lower() not in _SUFFIX:
        raise ValueError(f'{_DATASET}: cannot tell the group of {p}: expected NN_<group>.jpg with <group> one of '
                         f'{sorted(_SUFFIX)} ({", ".join(LABELS)})')
      labels.append(_SUFFIX[m.group(2).lower()])
    items = [{'image': p} for p in files]
    if self.builder_config.segmentation:
      folders = [f for f in ('manual1', 'mask') if not (root / f).is_dir()]
      if folders:
        raise common.LayoutError(
            f'{_DATASET}: config {self.builder_config.name!r} needs the vessel maps manual1/ and the FOV masks '
            f'mask/ next to images/ in {root}; missing {folders}. Use a classification config for images only.')
      for it in items:
        stem = it['image'].name.rsplit('.', 1)[0]
        it['mask'], it['fov_mask'] = root / 'manual1' / f'{stem}.tif', root / 'mask' / f'{stem}_mask.tif'
      common.require(root, *[str(it[k].relative_to(root)) for it in items for k in ('mask', 'fov_mask')],
                     dataset=_DATASET)
    keys = [p.name.rsplit('.', 1)[0].lower() for p in files]
    split = common.patient_split(keys, fractions=SPLIT_FRACTIONS, seed=SPLIT_SEED, labels=labels)
    out = {}
    for name, idx in split.items():
      common.check_nonempty(name, idx, dataset=_DATASET, where=images)
      out[name] = self._generate_examples(root, [dict(items[i], label=labels[i]) for i in idx])
    return out

  def _generate_examples(self, root, items):
    cfg = self.builder_config
    size = cfg.image_size
    for i, item in enumerate(items):
      extra = {}
      if cfg.segmentation:
        # Full-resolution decode so the image and the full-resolution masks share one exact crop box.
        fov = common.mask_array(item['fov_mask'])
        box = common.fov_box(Image.fromarray(fov * 255))
        pil = load_rgb(item['image'])
        extra = {'mask': common.mask_bytes(common.mask_array(item['mask']), size=size, fit='fov', box=box),
                 'fov_mask': common.mask_bytes(fov, size=size, fit='fov', box=box)}
      else:
        pil = load_rgb(item['image'], min_side=size)
        box = common.fov_box(pil)
      pil = common.square(pil, fit='fov', box=box).resize((size, size), Image.BICUBIC)
      yield i, {
          'image': common.encode(pil, fmt='jpeg'),
          'label': item['label'],
          'id': i,
          'file_name': str(item['image'].relative_to(root)),
          'patient_id': item['image'].name.rsplit('.', 1)[0],
          **extra,
      }
