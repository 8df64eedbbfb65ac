"""TFDS builder for RFMiD, the Retinal Fundus Multi-Disease Image Dataset (Pachade et al. 2021).

3200 fundus photographs from three cameras (4288x2848, 2144x1424 and 2048x1536 PNGs) with an overall
`Disease_Risk` (0/1) and 45 disease labels, from the RIADD challenge (ISBI 2021). Official split
1920 train / 640 validation (the "Evaluation_Set") / 640 test. Records follow the label CSV's row
order (ascending ID); RFMiD publishes no patient ids, so `patient_id` is "".
"""
from __future__ import annotations

import csv
import dataclasses
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from tfds_builders import common

_DATASET = 'rfmid'
# The 45 disease columns of the official label CSVs, in their order (after ID and Disease_Risk).
LABELS = ('DR', 'ARMD', 'MH', 'DN', 'MYA', 'BRVO', 'TSLN', 'ERM', 'LS', 'MS', 'CSR', 'ODC', 'CRVO', 'TV',
          'AH', 'ODP', 'ODE', 'ST', 'AION', 'PT', 'RT', 'RS', 'CRS', 'EDN', 'RPEC', 'MHL', 'RP', 'CWS', 'CB',
          'ODPM', 'PRH', 'MNF', 'HR', 'CRAO', 'TD', 'CME', 'PTCR', 'CF', 'VH', 'MCA', 'VS', 'BRAO', 'PLQ',
          'HPED', 'CL')
LABEL_NAMES = (
    'diabetic retinopathy', 'age-related macular degeneration', 'media haze', 'drusen', 'myopia',
    'branch retinal vein occlusion', 'tessellation', 'epiretinal membrane', 'laser scars', 'macular scar',
    'central serous retinopathy', 'optic disc cupping', 'central retinal vein occlusion', 'tortuous vessels',
    'asteroid hyalosis', 'optic disc pallor', 'optic disc edema', 'optociliary shunt',
    'anterior ischemic optic neuropathy', 'parafoveal telangiectasia', 'retinal traction', 'retinitis',
    'chorioretinitis', 'exudation', 'retinal pigment epithelium changes', 'macular hole', 'retinitis pigmentosa',
    'cotton wool spots', 'coloboma', 'optic disc pit maculopathy', 'preretinal hemorrhage',
    'myelinated nerve fibers', 'hemorrhagic retinopathy', 'central retinal artery occlusion', 'tilted disc',
    'cystoid macular edema', 'post-traumatic choroidal rupture', 'choroidal folds', 'vitreous hemorrhage',
    'macroaneurysm', 'vasculitis', 'branch retinal artery occlusion', 'plaque',
    'hemorrhagic pigment epithelial detachment', 'collateral')
COLUMNS = ('ID', 'Disease_Risk') + LABELS
# TFDS split -> (set folder, image folder, label CSV) of the official release.
SPLITS = {
    'train': ('Training_Set', 'Training', 'RFMiD_Training_Labels.csv'),
    'validation': ('Evaluation_Set', 'Validation', 'RFMiD_Validation_Labels.csv'),
    'test': ('Test_Set', 'Test', 'RFMiD_Testing_Labels.csv'),
}


@dataclasses.dataclass
class RfmidConfig(tfds.core.BuilderConfig):
  image_size: int = 512  # 0 = original PNGs; else FOV-cropped, padded square, resized, JPEG.


def _set_dir(root: pathlib.Path, set_name: str, images: str) -> pathlib.Path:
  """The folder holding one set's image folder and label CSV (official, or nested once more as on Kaggle)."""
  found = common.find_first(root, [f'{set_name}/{images}', f'{set_name}/{set_name}/{images}'], dataset=_DATASET)
  return found.parent


def _binary(value: str, path, key: str, column: str) -> int:
  if value in ('0', '1'):
    return int(value)
  raise ValueError(f'{_DATASET}: {path}, ID {key}: column {column!r} is {value!r}; valid values are 0 and 1')


def read_labels(path: pathlib.Path) -> list[tuple[str, int, tuple[int, ...]]]:
  """(ID, Disease_Risk, 45 labels) per row of an official label CSV, whose columns must be exactly COLUMNS."""
  rows = common.read_csv(path, required=COLUMNS, dataset=_DATASET)
  with open(path, newline='', encoding='utf-8-sig') as f:
    header = [c.strip() for c in next(csv.reader(f), [])]
  while header and not header[-1]:
    header.pop()  # Empty trailing columns left by spreadsheet exports carry no data.
  if tuple(header) != COLUMNS:
    raise ValueError(f'{_DATASET}: {path} has columns {header}; expected exactly {list(COLUMNS)} '
                     f'(ID, Disease_Risk and the 45 disease columns of RFMiD 1.0, in this order)')
  out = []
  for row in rows:
    key = row['ID']
    if not key:
      continue
    if not key.isdigit():
      raise ValueError(f'{_DATASET}: {path}: ID {key!r} is not a number')
    out.append((key, _binary(row['Disease_Risk'], path, key, 'Disease_Risk'),
                tuple(_binary(row[c], path, key, c) for c in LABELS)))
  if len({k for k, _, _ in out}) != len(out):
    raise ValueError(f'{_DATASET}: {path} lists an ID twice')
  return out


class Rfmid(tfds.core.GeneratorBasedBuilder):
  """RFMiD: 3200 fundus photographs, disease risk and 45 multi-label conditions, official 1920/640/640 split."""

  name = _DATASET
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release: official split 1920 / 640 / 640.'}
  BUILDER_CONFIGS = [
      RfmidConfig(name='512', image_size=512,
                  description='Cropped to the field of view, padded square, resized to 512x512 (JPEG).'),
      RfmidConfig(name='original', image_size=0,
                  description='Original PNGs (bytes unchanged; 4288x2848, 2144x1424 or 2048x1536).'),
  ]
  DEFAULT_CONFIG_NAME = '512'
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download RFMiD from IEEE DataPort,
  https://ieee-dataport.org/open-access/retinal-fundus-multi-disease-image-dataset-rfmid (licence CC BY 4.0
  as stated there; cite Pachade et al., "Retinal Fundus Multi-Disease Image Dataset (RFMiD): A Dataset for
  Multi-Disease Detection Research", Data 6(2):14, 2021), and unzip the three sets into the manual dir:

    <manual_dir>/Training_Set/Training/1.png ... 1920.png
    <manual_dir>/Training_Set/RFMiD_Training_Labels.csv
    <manual_dir>/Evaluation_Set/Validation/1.png ... 640.png
    <manual_dir>/Evaluation_Set/RFMiD_Validation_Labels.csv
    <manual_dir>/Test_Set/Test/1.png ... 640.png
    <manual_dir>/Test_Set/RFMiD_Testing_Labels.csv

  Each CSV has exactly the columns ID, Disease_Risk, DR, ARMD, MH, DN, MYA, BRVO, TSLN, ERM, LS, MS, CSR,
  ODC, CRVO, TV, AH, ODP, ODE, ST, AION, PT, RT, RS, CRS, EDN, RPEC, MHL, RP, CWS, CB, ODPM, PRH, MNF, HR,
  CRAO, TD, CME, PTCR, CF, VH, MCA, VS, BRAO, PLQ, HPED, CL (values 0/1); image <ID>.png. Also accepted:
  each set nested once more in a folder of its own name, as in the Kaggle mirror
  (<manual_dir>/Training_Set/Training_Set/Training/ and .../Training_Set/Training_Set/RFMiD_Training_Labels.csv).
  Splits are the official ones (Evaluation_Set = validation); records are in CSV (ID) order.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    s = self.builder_config.image_size
    shape = (s or None, s or None)
    return self.dataset_info_from_configs(
        description='RFMiD: Retinal Fundus Multi-Disease Image Dataset (RIADD, ISBI 2021).',
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=shape + (3,), encoding_format='jpeg' if s else 'png'),
            'label': tfds.features.Tensor(
                shape=(len(LABELS),), dtype=np.int64,
                doc='0/1 per condition: ' + ', '.join(f'{k} ({v})' for k, v in zip(LABELS, LABEL_NAMES))),
            'disease_risk': tfds.features.ClassLabel(names=['normal', 'abnormal'],
                                                     doc='Disease_Risk: 1 if any condition is present.'),
            'id': tfds.features.Scalar(dtype=np.int64, doc='Index in the split, in label-CSV (ID) order.'),
            'file_name': tfds.features.Text(doc='Path relative to the manual dir.'),
            'patient_id': tfds.features.Text(doc='Always "": RFMiD publishes no patient ids.'),
        }),
        supervised_keys=('image', 'label'),
        disable_shuffling=True,
        homepage='https://ieee-dataport.org/open-access/retinal-fundus-multi-disease-image-dataset-rfmid',
        citation='Pachade et al., Retinal Fundus Multi-Disease Image Dataset (RFMiD): A Dataset for '
                 'Multi-Disease Detection Research, Data 6(2):14, 2021.',
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = pathlib.Path(dl_manager.manual_dir)
    items = {}
    # Every table and image is checked before any split is written.
    for split, (set_name, images, csv_name) in SPLITS.items():
      base = _set_dir(root, set_name, images)
      (csv_path,) = common.require(base, csv_name, dataset=_DATASET)
      rows = read_labels(csv_path)
      common.check_nonempty(split, rows, dataset=_DATASET, where=csv_path)
      common.require(base / images, *[f'{key}.png' for key, _, _ in rows], dataset=_DATASET)
      items[split] = [(base / images / f'{key}.png', risk, label) for key, risk, label in rows]
    return {split: self._generate_examples(root, rows) for split, rows in items.items()}

  def _generate_examples(self, root: pathlib.Path, rows):
    size = self.builder_config.image_size
    for i, (path, risk, label) in enumerate(rows):
      yield i, {
          'image': common.image_bytes(path, mode='RGB', fmt='jpeg' if size else 'png', size=size, fit='fov'),
          'label': np.asarray(label, np.int64),
          'disease_risk': risk,
          'id': i,
          'file_name': path.relative_to(root).as_posix(),
          'patient_id': '',
      }
