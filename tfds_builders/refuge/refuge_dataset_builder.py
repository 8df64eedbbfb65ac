"""TFDS builder for REFUGE (Orlando et al. 2020): glaucoma classification and optic disc/cup segmentation.

The official challenge split is used: 400 training images (Zeiss Visucam 500, 2124x2056), 400
validation and 400 test images (Canon CR-2, 1634x1634), each with a glaucoma label (40 glaucoma per
split) and a disc/cup mask. Mask class ids: 0 background, 1 optic disc outside the cup (the rim),
2 optic cup; the whole disc is `mask >= 1`. The official BMPs use 255 / 128 / 0 for these.
"""
from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from tfds_builders import common

_DATASET = 'refuge'
LABELS = ('non_glaucoma', 'glaucoma')
_TRAIN_CLASSES = (('Non-Glaucoma', 0), ('Glaucoma', 1))  # Training400 sub-folder -> label.
# Accepted locations, nested variants of the official zips first (find_first takes the first present).
_TRAIN_IMAGES = ('REFUGE-Training400/Training400', 'Training400', 'REFUGE-Training400')
_TRAIN_MASKS = ('Annotation-Training400/Annotation-Training400/Disc_Cup_Masks', 'Annotation-Training400/Disc_Cup_Masks')
_SPLITS = {  # split: (image folder candidates, ground-truth folder candidates, label table names)
    'validation': (('REFUGE-Validation400/REFUGE-Validation400', 'REFUGE-Validation400', 'Validation400'),
                   ('REFUGE-Validation400-GT/REFUGE-Validation400-GT', 'REFUGE-Validation400-GT'),
                   ('Fovea_locations.xlsx', 'Fovea_locations.csv', 'Glaucoma_label_and_Fovea_location.xlsx',
                    'Glaucoma_label_and_Fovea_location.csv')),
    'test': (('REFUGE-Test400/Test400', 'Test400', 'REFUGE-Test400/REFUGE-Test400', 'REFUGE-Test400'),
             ('REFUGE-Test-GT/REFUGE-Test-GT', 'REFUGE-Test-GT', 'REFUGE-Test400-GT'),
             ('Glaucoma_label_and_Fovea_location.xlsx', 'Glaucoma_label_and_Fovea_location.csv',
              'Fovea_locations.xlsx', 'Fovea_locations.csv')),
}
_NAME_COLUMN = 'ImgName'
_LABEL_COLUMNS = ('Glaucoma Label', 'Label(Glaucoma=1)')  # Validation400 / Test400 GT spellings.


@dataclasses.dataclass
class RefugeConfig(tfds.core.BuilderConfig):
  image_size: int = 512  # 0 = original size (JPEG bytes unchanged).


def read_table(path: pathlib.Path) -> list[dict]:
  """Rows of an .xlsx (first sheet, first row = header) or .csv label table as dicts of stripped strings."""
  if path.suffix.lower() == '.csv':
    return common.read_csv(path, dataset=_DATASET)
  import openpyxl  # pylint: disable=g-import-not-at-top
  try:
    wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
    rows = [r for r in wb.worksheets[0].iter_rows(values_only=True) if any(v is not None for v in r)]
    wb.close()
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f'{_DATASET}: could not read the table {path}: {e}') from e
  if not rows:
    raise ValueError(f'{_DATASET}: the table {path} is empty')
  header = ['' if v is None else str(v).strip() for v in rows[0]]
  return [{h: ('' if v is None else str(v).strip()) for h, v in zip(header, r)} for r in rows[1:]]


def _find_table(folder: pathlib.Path, names) -> pathlib.Path:
  """The first of `names` in `folder`, matched case-insensitively (spellings vary between releases)."""
  present = {p.name.lower(): p for p in folder.iterdir() if p.is_file()}
  for n in names:
    if n.lower() in present:
      return present[n.lower()]
  raise common.LayoutError(f'{_DATASET}: no label table in {folder}: expected one of {list(names)}; found '
                           f'{sorted(present)}. See MANUAL_DOWNLOAD_INSTRUCTIONS of tfds_builders.{_DATASET}.')


def _labels(path: pathlib.Path) -> dict[str, int]:
  """Image name -> 0/1 glaucoma label from a validation/test ground-truth table."""
  rows = read_table(path)
  columns = list(rows[0]) if rows else []
  label_col = next((c for c in _LABEL_COLUMNS if c in columns), None)
  if _NAME_COLUMN not in columns or label_col is None:
    raise ValueError(f'{_DATASET}: {path} needs the columns {_NAME_COLUMN!r} and one of {list(_LABEL_COLUMNS)}; '
                     f'found columns {columns}')
  out = {}
  for n, row in enumerate(rows, start=2):  # Row numbers as a spreadsheet shows them (1 = header).
    name, value = row[_NAME_COLUMN], row[label_col]
    try:
      label = int(float(value))
      if label not in (0, 1) or label != float(value):
        raise ValueError
    except ValueError:
      raise ValueError(f'{_DATASET}: {path} row {n} ({name}): {label_col}={value!r}; valid values are 0 '
                       f'(non-glaucoma) and 1 (glaucoma)') from None
    out[name] = label
  return out


def disc_cup(path: pathlib.Path) -> np.ndarray:
  """Class ids [H, W] from an official mask (255 background -> 0, 128 rim -> 1, 0 cup -> 2).

  Thresholds at 64 and 192 rather than exact values so resaved or slightly smoothed copies still map.
  """
  a = np.asarray(common.load_image(path).convert('L'))
  return np.where(a >= 192, 0, np.where(a >= 64, 1, 2)).astype(np.uint8)


class Refuge(tfds.core.GeneratorBasedBuilder):
  """REFUGE: 1200 fundus images with glaucoma labels and optic disc/cup masks, official 400/400/400 split."""

  name = _DATASET
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release: official train/validation/test, glaucoma label and disc/cup mask.'}
  BUILDER_CONFIGS = [
      RefugeConfig(name='512', image_size=512,
                   description='Cropped to the field of view (non-dark pixels), padded square, resized to '
                               '512x512 (image bicubic JPEG, mask nearest with the same crop).'),
      RefugeConfig(name='original', image_size=0,
                   description='Original JPEG bytes (2124x2056 train, 1634x1634 validation/test), masks as PNG.'),
  ]
  DEFAULT_CONFIG_NAME = '512'
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Register for the REFUGE challenge (https://refuge.grand-challenge.org/, data also on
  https://ieee-dataport.org/documents/refuge-retinal-fundus-glaucoma-challenge) and download
  REFUGE-Training400.zip, Annotation-Training400.zip, REFUGE-Validation400.zip,
  REFUGE-Validation400-GT.zip, REFUGE-Test400.zip and REFUGE-Test-GT.zip. Terms as the owners state
  them: research use under the challenge's data terms; cite Orlando et al., "REFUGE Challenge: A
  unified framework for evaluating automated methods for glaucoma assessment from fundus
  photographs", Medical Image Analysis 59:101570, 2020. Unzip them all into the manual dir:

    <manual_dir>/Training400/Glaucoma/g0001.jpg            g0001-g0040 (2124x2056)
    <manual_dir>/Training400/Non-Glaucoma/n0001.jpg        n0001-n0360
    <manual_dir>/Annotation-Training400/Disc_Cup_Masks/Glaucoma/g0001.bmp      (and Non-Glaucoma/n0001.bmp)
    <manual_dir>/REFUGE-Validation400/V0001.jpg            V0001-V0400 (1634x1634)
    <manual_dir>/REFUGE-Validation400-GT/Disc_Cup_Masks/V0001.bmp
    <manual_dir>/REFUGE-Validation400-GT/Fovea_locations.xlsx          columns ImgName, Glaucoma Label
    <manual_dir>/REFUGE-Test400/Test400/T0001.jpg          T0001-T0400 (or REFUGE-Test400/T0001.jpg)
    <manual_dir>/REFUGE-Test-GT/Disc_Cup_Masks/T0001.bmp   (sub-folders such as G/ and N/ are searched)
    <manual_dir>/REFUGE-Test-GT/Glaucoma_label_and_Fovea_location.xlsx  columns ImgName, Label(Glaucoma=1)

  Also accepted: the zips' doubled top folders (REFUGE-Training400/Training400/,
  Annotation-Training400/Annotation-Training400/, REFUGE-Validation400/REFUGE-Validation400/,
  REFUGE-Validation400-GT/REFUGE-Validation400-GT/, REFUGE-Test-GT/REFUGE-Test-GT/), either table name
  in either GT folder, any capitalisation of it, and .csv copies of the tables with the same columns.
  All three splits are required: a missing validation or test ground truth is an error.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    s = self.builder_config.image_size
    shape = (s or None, s or None)
    return self.dataset_info_from_configs(
        description='REFUGE retinal fundus glaucoma challenge (MICCAI 2018): glaucoma label, optic disc/cup mask.',
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=shape + (3,), encoding_format='jpeg'),
            'label': tfds.features.ClassLabel(names=LABELS),
            'mask': tfds.features.Image(shape=shape + (1,), encoding_format='png',
                                        doc='0 background, 1 optic disc rim (disc minus cup), 2 optic cup.'),
            'id': tfds.features.Scalar(dtype=np.int64, doc='Index in the split, in file-name order.'),
            'file_name': tfds.features.Text(),
            'patient_id': tfds.features.Text(doc='Empty: REFUGE gives no patient ids.'),
        }),
        supervised_keys=('image', 'label'),
        disable_shuffling=True,
        homepage='https://refuge.grand-challenge.org/',
        citation='Orlando et al., REFUGE Challenge: A unified framework for evaluating automated methods for '
                 'glaucoma assessment from fundus photographs, Medical Image Analysis 59:101570, 2020.',
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = pathlib.Path(dl_manager.manual_dir)
    out = {'train': self._train_items(root)}
    for split, (image_dirs, gt_dirs, tables) in _SPLITS.items():
      images = common.find_first(root, image_dirs, dataset=_DATASET)
      gt = common.find_first(root, gt_dirs, dataset=_DATASET)
      masks_dir = common.require(gt, 'Disc_Cup_Masks', dataset=_DATASET)[0]
      table = _find_table(gt, tables)
      labels = _labels(table)
      files = common.list_files(images, ['.jpg'], dataset=_DATASET)
      unlabelled = [p.name for p in files if p.name not in labels]
      if unlabelled:
        raise ValueError(f'{_DATASET}: {table} has no label for {unlabelled[:5]} (of {len(unlabelled)}) in {images}')
      common.require(images, *labels, dataset=_DATASET)  # Every labelled image present.
      masks = {p.stem: p for p in masks_dir.rglob('*.bmp')}
      missing = [str(masks_dir / f'{pathlib.Path(n).stem}.bmp') for n in labels if pathlib.Path(n).stem not in masks]
      if missing:
        raise common.LayoutError(f'{_DATASET}: missing disc/cup mask(s) {missing[:5]} (of {len(missing)}) under '
                                 f'{masks_dir}; expected one <image stem>.bmp per image of {images}')
      out[split] = [(images / n, masks[pathlib.Path(n).stem], labels[n]) for n in sorted(labels)]
    for split, items in out.items():
      common.check_nonempty(split, items, dataset=_DATASET, where=root)
    return {split: self._generate_examples(root, items) for split, items in out.items()}

  def _train_items(self, root: pathlib.Path):
    images = common.find_first(root, [f'{d}/Glaucoma' for d in _TRAIN_IMAGES], dataset=_DATASET).parent
    masks = common.find_first(root, _TRAIN_MASKS, dataset=_DATASET)
    items = []
    for folder, label in _TRAIN_CLASSES:
      for p in common.list_files(images / folder, ['.jpg'], dataset=_DATASET):
        items.append((p, masks / folder / f'{p.stem}.bmp', label))
    common.require(root, *[str(m.relative_to(root)) for _, m, _ in items], dataset=_DATASET)
    return sorted(items, key=lambda it: it[0].name)  # g0001-g0040, then n0001-n0360.

  def _generate_examples(self, root, items):
    size = self.builder_config.image_size
    for i, (image, mask_path, label) in enumerate(items):
      mask = disc_cup(mask_path)
      if size:
        pil = common.load_image(image, mode='RGB')
        box = common.fov_box(pil)  # One crop box for the image and its mask.
        data = common.encode(common.square(pil, fit='fov', box=box).resize((size, size), Image.BICUBIC),
                             fmt='jpeg')
        width, height = pil.size
      else:
        box = None
        data = common.image_bytes(image, mode='RGB', fmt='jpeg')  # Original bytes, checked readable.
        with Image.open(image) as probe:
          width, height = probe.size
      if (width, height) != (mask.shape[1], mask.shape[0]):
        raise ValueError(f'{_DATASET}: mask {mask_path} is {mask.shape[1]}x{mask.shape[0]}, image {image} is '
                         f'{width}x{height}; they must match')
      yield i, {
          'image': data,
          'label': label,
          'mask': common.mask_bytes(mask, size=size, fit='fov', box=box),
          'id': i,
          'file_name': str(image.relative_to(root)),
          'patient_id': '',
      }
