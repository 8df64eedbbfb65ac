"""TFDS builder for COVIDx CXR-4 (Wu et al. 2023; COVID-Net, Wang et al. 2020): COVID-19 positive/negative CXRs.

Splits: COVIDx CXR-4's official train.txt / val.txt / test.txt -> 'train' / 'validation' / 'test'.
The older COVIDx CXR-2 / CXR-3 releases ship only train.txt and test.txt; then 'validation' is 10% of
train.txt's patients (`common.patient_split(seed=0)`, stratified by the patient's class) and 'train'
the other 90%. Records keep the order of the lines of the official lists.

Each list line is `patient_id filename class data_source` (space-separated; class `positive` or
`negative`), and the image is `<split folder>/<filename>` (train/, val/, test/).
"""
from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from tfds_builders import common
from tfds_builders.chexpert.chexpert_dataset_builder import require_files

CLASSES = ('negative', 'positive')
_VAL_FRACTION = 0.1  # Only for releases without val.txt.
_SEED = 0


def read_list(path: pathlib.Path) -> list[dict]:
  """Parses a COVIDx list file; raises ValueError naming the file, line and value of a bad line."""
  out = []
  for n, line in enumerate(path.read_text(encoding='utf-8').splitlines(), start=1):
    parts = line.split()
    if not parts:
      continue
    if len(parts) < 4:
      raise ValueError(f'covidx: {path} line {n}: expected "patient_id filename class data_source", got {line!r}')
    # A file name with spaces would split into several fields: the first is the patient, the last two
    # are class and source.
    patient, cls, source = parts[0], parts[-2], parts[-1]
    if cls not in CLASSES:
      raise ValueError(f'covidx: {path} line {n}: unknown class {cls!r}; valid classes are {list(CLASSES)}')
    out.append({'patient_id': patient, 'name': ' '.join(parts[1:-2]), 'label': cls, 'source': source, 'line': n})
  return out


@dataclasses.dataclass
class CovidxConfig(tfds.core.BuilderConfig):
  image_size: int = 256  # 0 = original size (1-channel PNG; grayscale PNGs are stored unchanged).


class Covidx(tfds.core.GeneratorBasedBuilder):
  """COVIDx CXR-4 chest radiographs labelled COVID-19 positive or negative (also reads CXR-2/3)."""

  name = 'covidx'
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release: official CXR-4 splits; CXR-2/3 validation = 10% of train patients.'}
  BUILDER_CONFIGS = [
      CovidxConfig(name='256', image_size=256, description='Padded square, 256x256 grayscale PNG.'),
      CovidxConfig(name='original', image_size=0,
                   description='Original size, grayscale PNG (grayscale PNG files unchanged, others converted).'),
  ]
  DEFAULT_CONFIG_NAME = '256'
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download COVIDx CXR-4 from Kaggle (https://www.kaggle.com/datasets/andyczhao/covidx-cxr2, the
  COVID-Net project's dataset page; see https://github.com/lindawangg/COVID-Net for the history).
  COVIDx is a compilation: its images come from several public sources (e.g. RSNA Pneumonia
  Detection Challenge, BIMCV-COVID19+, RICORD, Stony Brook COVID-19, COVID-19 image data collection,
  SIRM, ...), each under its own licence and terms, which apply to the images taken from it; the
  `data_source` feature names the source of every image. Cite Wu et al., COVIDx CXR-4
  (arXiv:2311.17677) and Wang et al., COVID-Net (Scientific Reports 10:19549, 2020), and the sources.

  Unzip it so that the manual directory holds:

    <manual_dir>/train.txt   lines "patient_id filename class data_source", class positive|negative
    <manual_dir>/val.txt
    <manual_dir>/test.txt
    <manual_dir>/train/<filename>   (PNG or JPEG images named in train.txt)
    <manual_dir>/val/<filename>
    <manual_dir>/test/<filename>

  The older COVIDx CXR-2 / CXR-3 releases (train.txt, test.txt, train/, test/; no val.txt) are read
  too: their 'validation' split is 10% of the train.txt patients (seed 0).
  """

  def _info(self) -> tfds.core.DatasetInfo:
    s = self.builder_config.image_size
    return self.dataset_info_from_configs(
        description='COVIDx CXR-4: COVID-19 positive vs negative chest radiographs from several sources.',
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(s or None, s or None, 1), encoding_format='png'),
            'label': tfds.features.ClassLabel(names=list(CLASSES)),
            'id': tfds.features.Scalar(dtype=np.int64, doc='Index in the split, in the order of the list file.'),
            'file_name': tfds.features.Text(doc='<split folder>/<filename>, relative to the manual dir.'),
            'patient_id': tfds.features.Text(doc='First field of the list line.'),
            'data_source': tfds.features.Text(doc='Source collection of the image (last field of the list line).'),
        }),
        supervised_keys=('image', 'label'),
        disable_shuffling=True,
        homepage='https://github.com/lindawangg/COVID-Net',
        citation='Wu et al., COVIDx CXR-4: An Expanded Multi-Institutional Open-Source Benchmark Dataset for '
                 'Chest X-ray Image-Based Computer-Aided COVID-19 Diagnostics, arXiv:2311.17677 (2023); '
                 'Wang et al., COVID-Net, Scientific Reports 10:19549 (2020).',
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = pathlib.Path(dl_manager.manual_dir)
    train_txt, test_txt = common.require(root, 'train.txt', 'test.txt', dataset='covidx')
    lists = {'train': ('train', train_txt), 'test': ('test', test_txt)}
    if (root / 'val.txt').exists():
      lists['validation'] = ('val', root / 'val.txt')
    splits = {}
    for split, (folder, txt) in lists.items():
      splits[split] = read_list(txt)
      for r in splits[split]:
        r['file_name'] = f'{folder}/{r["name"]}'
    if 'validation' not in splits:  # CXR-2/3: hold out 10% of the train patients.
      rows = splits['train']
      idx = common.patient_split([f'{r["line"]}:{r["name"]}' for r in rows],
                                 fractions={'train': 1 - _VAL_FRACTION, 'validation': _VAL_FRACTION}, seed=_SEED,
                                 patient_ids=[r['patient_id'] for r in rows], labels=[r['label'] for r in rows])
      for split in ('train', 'validation'):
        splits[split] = [rows[i] for i in sorted(idx[split])]  # Back to list order.
    for split, rows in splits.items():
      common.check_nonempty(split, rows, dataset='covidx', where=lists.get(split, lists['train'])[1])
    require_files([root / r['file_name'] for rows in splits.values() for r in rows], dataset='covidx',
                  what='images')
    return {split: self._generate_examples(root, rows) for split, rows in splits.items()}

  def _generate_examples(self, root: pathlib.Path, rows):
    size = self.builder_config.image_size
    for i, r in enumerate(rows):
      yield i, {
          'image': common.image_bytes(root / r['file_name'], mode='L', fmt='png', size=size, fit='pad'),
          'label': r['label'],
          'id': i,
          'file_name': r['file_name'],
          'patient_id': r['patient_id'],
          'data_source': r['source'],
      }
