"""TFDS builder for BCCD (Shenggan/BCCD_Dataset): blood smear images with RBC/WBC/platelet boxes.

The default configs turn every annotated box into one labelled CELL CROP (a small classification
dataset); `full_images` keeps one record per photograph with its boxes. Splits are the official
VOC ImageSets/Main lists (train 205 / val 87 / test 72 images), so all crops of one photograph
stay in one split.

Known annotation quirks, handled the same way in every config: boxes are clipped to the image,
and boxes with zero area after clipping are skipped and counted in a logged warning (the 2019
snapshot has two such RBC boxes, BloodImage_00338 and BloodImage_00343, so the crop configs hold
RBC 4153 / WBC 372 / Platelets 361 = 4886 of the 4888 boxes).
"""
from __future__ import annotations

import collections
import dataclasses
import io
import logging
import pathlib
import xml.etree.ElementTree as ET

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from tfds_builders import common

CLASSES = ('RBC', 'WBC', 'Platelets')
_SPLITS = (('train', 'train'), ('validation', 'val'), ('test', 'test'))  # (TFDS split, ImageSets list)
# Where the BCCD folder (Annotations/, JPEGImages/, ImageSets/) may sit: the repo's own layout, a
# clone or GitHub zip of the whole repository, or the BCCD folder itself as the manual dir.
_ROOTS = ('BCCD', 'BCCD_Dataset/BCCD', 'BCCD_Dataset-master/BCCD', '.')
_DOC_BOX = 'Box (xmin, ymin, xmax, ymax) in source-image pixels, clipped to the image.'

log = logging.getLogger(__name__)


@dataclasses.dataclass
class BccdConfig(tfds.core.BuilderConfig):
  crop_size: int = 64  # Side of the stored cell crops; 0 = whole images (full_images).
  margin: float = 0.1  # Context added on each side of a crop, as a fraction of the box's longer side.


def parse_annotation(path: pathlib.Path) -> list[tuple[int, tuple[float, float, float, float]]]:
  """(class id, (xmin, ymin, xmax, ymax)) for each object of a VOC XML file, in file order.

  Raises:
    ValueError naming the file (and object) for unreadable XML, unknown class names or missing coordinates.
  """
  try:
    root = ET.parse(path).getroot()
  except (ET.ParseError, OSError) as e:
    raise ValueError(f'bccd: could not parse the annotation {path}: {e}') from e
  out = []
  for k, obj in enumerate(root.iter('object')):
    name = (obj.findtext('name') or '').strip()
    if name not in CLASSES:
      raise ValueError(f'bccd: {path}, object {k}: unknown class {name!r}; valid classes: {list(CLASSES)}')
    try:
      box = tuple(float(obj.findtext(f'bndbox/{t}')) for t in ('xmin', 'ymin', 'xmax', 'ymax'))
    except (TypeError, ValueError) as e:
      raise ValueError(f'bccd: {path}, object {k} ({name}): bndbox needs numeric xmin, ymin, xmax, ymax') from e
    out.append((CLASSES.index(name), box))
  return out


def clip_box(box, width: int, height: int) -> tuple[int, int, int, int] | None:
  """The box rounded to whole pixels and clipped to the image; None if nothing is left."""
  xmin, ymin, xmax, ymax = (int(round(v)) for v in box)
  xmin, xmax = sorted((min(max(xmin, 0), width), min(max(xmax, 0), width)))
  ymin, ymax = sorted((min(max(ymin, 0), height), min(max(ymax, 0), height)))
  return (xmin, ymin, xmax, ymax) if xmax > xmin and ymax > ymin else None


def crop_cell(pil: Image.Image, box, *, size: int, margin: float) -> Image.Image:
  """A square crop centred on `box`, `margin` of its longer side added on each side, resized to size.

  Parts of the square outside the photograph come out black (PIL pads crops beyond the border).
  """
  xmin, ymin, xmax, ymax = box
  side = max(1, int(round(max(xmax - xmin, ymax - ymin) * (1 + 2 * margin))))
  left = int(round((xmin + xmax - side) / 2))
  top = int(round((ymin + ymax - side) / 2))
  return pil.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)


def png_fast(pil: Image.Image) -> bytes:
  """PNG bytes at zlib level 1: 4x faster than the default on small crops for ~15% more bytes, which
  matters when thousands of crops are encoded."""
  buf = io.BytesIO()
  pil.save(buf, format='PNG', compress_level=1)
  return buf.getvalue()


class Bccd(tfds.core.GeneratorBasedBuilder):
  """BCCD: 364 blood smear photographs (640x480) with RBC, WBC and platelet boxes; cell crops or images."""

  name = 'bccd'
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release: cell crops (64/128 px) and full images, official ImageSets splits.'}
  BUILDER_CONFIGS = [
      BccdConfig(name='64', crop_size=64,
                 description='One PNG crop per box: the box made square around its centre, 10% context on '
                             'each side, black beyond the image border, resized to 64x64 (bicubic).'),
      BccdConfig(name='128', crop_size=128, description='As `64`, resized to 128x128.'),
      BccdConfig(name='full_images', crop_size=0,
                 description='One record per photograph (JPEG bytes unchanged) with all its boxes.'),
  ]
  DEFAULT_CONFIG_NAME = '64'
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download the BCCD dataset from https://github.com/Shenggan/BCCD_Dataset (git clone, or "Download
  ZIP"; MIT licence, "Copyright (c) 2017 shenggan": keep its LICENSE file with the data). The images and
  annotations originally come from https://github.com/cosmicad/dataset. Put its BCCD folder, unchanged,
  in the manual directory:

    <manual_dir>/BCCD/Annotations/BloodImage_00000.xml      Pascal VOC boxes (RBC, WBC, Platelets)
    <manual_dir>/BCCD/JPEGImages/BloodImage_00000.jpg       640x480 RGB photographs (numbering has gaps)
    <manual_dir>/BCCD/ImageSets/Main/train.txt              image ids, one per line (205)
    <manual_dir>/BCCD/ImageSets/Main/val.txt                (87) -> split 'validation'
    <manual_dir>/BCCD/ImageSets/Main/test.txt               (72)

  The whole repository as cloned or unzipped (<manual_dir>/BCCD_Dataset/BCCD/... or
  <manual_dir>/BCCD_Dataset-master/BCCD/...) and the BCCD folder itself as the manual dir are accepted
  too. Boxes are clipped to the image; boxes with no area left are skipped (with a logged warning).
  """

  def _info(self) -> tfds.core.DatasetInfo:
    s = self.builder_config.crop_size
    common_features = {
        'id': tfds.features.Scalar(dtype=np.int64, doc='Index in the split: images in id order, boxes in '
                                                      'XML order within an image.'),
        'file_name': tfds.features.Text(doc='Source photograph, relative to the manual dir.'),
        'patient_id': tfds.features.Text(doc='Always "": BCCD gives no patient ids.'),
        'source_image': tfds.features.Text(doc='Image id, e.g. "BloodImage_00000".'),
    }
    label = tfds.features.ClassLabel(names=list(CLASSES), doc='RBC: red blood cell, WBC: white blood cell, '
                                                               'Platelets: platelet.')
    if s:
      features = {
          'image': tfds.features.Image(shape=(s, s, 3), encoding_format='png'),
          'label': label,
          'box': tfds.features.Tensor(shape=(4,), dtype=np.int64, doc=_DOC_BOX),
          **common_features,
      }
      supervised = ('image', 'label')
    else:
      features = {
          'image': tfds.features.Image(shape=(None, None, 3), encoding_format='jpeg'),
          'objects': tfds.features.Sequence({
              'label': label,
              'box': tfds.features.Tensor(shape=(4,), dtype=np.int64, doc=_DOC_BOX),
          }),
          **common_features,
      }
      supervised = None
    return self.dataset_info_from_configs(
        description='BCCD blood cell detection dataset (Shenggan/BCCD_Dataset), '
                    + (f'cell crops at {s} px.' if s else 'whole photographs with boxes.'),
        features=tfds.features.FeaturesDict(features),
        supervised_keys=supervised,
        disable_shuffling=True,
        homepage='https://github.com/Shenggan/BCCD_Dataset',
        citation='BCCD Dataset, https://github.com/Shenggan/BCCD_Dataset (MIT licence), 2017.',
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual = pathlib.Path(dl_manager.manual_dir)
    root = common.find_first(manual, [f'{r}/ImageSets/Main' for r in _ROOTS], dataset='bccd').parents[1]
    lists = common.require(root, *[f'ImageSets/Main/{name}.txt' for _, name in _SPLITS], dataset='bccd')
    splits = {}
    for (split, _), path in zip(_SPLITS, lists):
      ids = sorted({line.strip() for line in path.read_text().splitlines() if line.strip()})
      common.check_nonempty(split, ids, dataset='bccd', where=path)
      # Every listed image and its annotation must exist before anything is written.
      common.require(root, *[f'{d}/{i}.{ext}' for i in ids for d, ext in (('Annotations', 'xml'),
                                                                           ('JPEGImages', 'jpg'))], dataset='bccd')
      splits[split] = [(i, parse_annotation(root / 'Annotations' / f'{i}.xml')) for i in ids]
    return {split: self._generate_examples(manual, root, items) for split, items in splits.items()}

  def _generate_examples(self, manual: pathlib.Path, root: pathlib.Path, items):
    c = self.builder_config
    skipped = collections.Counter()
    k = 0
    for image_id, objects in items:
      path = root / 'JPEGImages' / f'{image_id}.jpg'
      pil = common.load_image(path, mode='RGB')  # Full decode: a broken file fails here, named.
      boxes = []
      for label, box in objects:
        clipped = clip_box(box, pil.width, pil.height)
        if clipped is None:
          skipped[CLASSES[label]] += 1
        else:
          boxes.append((label, clipped))
      base = {'file_name': path.relative_to(manual).as_posix(), 'patient_id': '', 'source_image': image_id}
      if not c.crop_size:
        yield k, {'image': path.read_bytes(), 'id': k, **base,
                  'objects': {'label': [b[0] for b in boxes],
                              'box': np.asarray([b[1] for b in boxes], np.int64).reshape(-1, 4)}}
        k += 1
        continue
      for label, box in boxes:
        crop = crop_cell(pil, box, size=c.crop_size, margin=c.margin)
        yield k, {'image': png_fast(crop), 'label': label, 'box': np.asarray(box, np.int64),
                  'id': k, **base}
        k += 1
    if skipped:
      log.warning('bccd: skipped %d box(es) with zero area after clipping to the image: %s',
                  sum(skipped.values()), dict(skipped))
