"""TFDS builder for PatchCamelyon (Veeling et al. 2018): 96x96 lymph node patches, tumour or not.

Official splits, read from the official HDF5 files in chunks (the training images are 7 GB
uncompressed, never loaded whole): train 262,144 / validation ("valid") 32,768 / test 32,768.
A patch is labelled tumour when its centre 32x32 region holds at least one tumour pixel.
"""
from __future__ import annotations

import pathlib

import h5py
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from tfds_builders import common

CLASSES = ('no_tumor', 'tumor')
_SPLITS = (('train', 'train'), ('validation', 'valid'), ('test', 'test'))  # (TFDS split, file infix)
_SIZE = 96
_CHUNK = 1024  # Patches read from HDF5 at a time (~28 MB).
# Where the files may lie: flat in the manual dir (as downloaded) or in a folder named after the dataset.
_FOLDERS = ('.', 'pcam', 'PCam', 'patchcamelyon', 'PatchCamelyon')


def file_name(split: str, kind: str) -> str:
  """Official file name, e.g. camelyonpatch_level_2_split_valid_x.h5 (kind: 'x', 'y' or 'meta')."""
  return f'camelyonpatch_level_2_split_{split}_{kind}.' + ('csv' if kind == 'meta' else 'h5')


def _open(path: pathlib.Path, key: str) -> tuple[h5py.File, h5py.Dataset]:
  """Opens an HDF5 file and its dataset `key`; errors name the file and key."""
  try:
    f = h5py.File(path, 'r')
  except OSError as e:
    raise ValueError(f'pcam: could not read {path} as HDF5 ({e}); is it truncated or still gzip-compressed?') from e
  if key not in f or not isinstance(f[key], h5py.Dataset):
    keys = list(f.keys())
    f.close()
    raise ValueError(f'pcam: {path} has no dataset {key!r}; found {keys}')
  return f, f[key]


def _labels(path: pathlib.Path, n: int) -> np.ndarray:
  """The labels of a *_y.h5 file as int64 [n]; checks shape, dtype and values against the x file."""
  f, y = _open(path, 'y')
  with f:
    if y.shape[:1] != (n,) or int(np.prod(y.shape[1:], dtype=np.int64)) != 1:
      raise ValueError(f'pcam: {path} dataset \'y\' has shape {y.shape}, expected ({n}, 1, 1, 1) to match the x file')
    if not np.issubdtype(y.dtype, np.integer):
      raise ValueError(f'pcam: {path} dataset \'y\' has dtype {y.dtype}, expected uint8')
    labels = np.asarray(y[...]).reshape(n).astype(np.int64)
  bad = np.flatnonzero((labels < 0) | (labels >= len(CLASSES)))
  if len(bad):
    raise ValueError(f'pcam: {path} dataset \'y\' index {bad[0]} has label {labels[bad[0]]}; valid labels: '
                     f'0 ({CLASSES[0]}), 1 ({CLASSES[1]}) ({len(bad)} invalid)')
  return labels


class Pcam(tfds.core.GeneratorBasedBuilder):
  """PatchCamelyon: 327,680 H&E lymph node patches (96x96) labelled for metastatic tissue at their centre."""

  name = 'pcam'
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release: official train/valid/test from the HDF5 files.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download the PatchCamelyon files from https://github.com/basveeling/pcam (Zenodo record 2546921;
  licence CC0 1.0; cite Veeling et al., Rotation Equivariant CNNs for Digital Pathology, MICCAI 2018,
  and Ehteshami Bejnordi et al., JAMA 2017 for Camelyon16), DECOMPRESS them (gunzip -k *.gz: the
  downloads are .h5.gz; this builder reads plain .h5 and stops with a message naming any file that is
  only present as .gz) and put them directly in the manual directory (or in <manual_dir>/pcam/):

    <manual_dir>/camelyonpatch_level_2_split_train_x.h5     dataset 'x': uint8 [262144, 96, 96, 3]
    <manual_dir>/camelyonpatch_level_2_split_train_y.h5     dataset 'y': uint8 [262144, 1, 1, 1], 0 or 1
    <manual_dir>/camelyonpatch_level_2_split_valid_x.h5     (32768; split 'validation')
    <manual_dir>/camelyonpatch_level_2_split_valid_y.h5
    <manual_dir>/camelyonpatch_level_2_split_test_x.h5      (32768)
    <manual_dir>/camelyonpatch_level_2_split_test_y.h5
    <manual_dir>/camelyonpatch_level_2_split_{train,valid,test}_meta.csv    optional: its 'wsi' column
                                                            (source slide) fills 'patient_id'
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description='PatchCamelyon: 96x96 patches of Camelyon16 H&E lymph node slides (10x), binary '
                    'metastasis labels, official splits.',
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(_SIZE, _SIZE, 3), encoding_format='png'),
            'label': tfds.features.ClassLabel(
                names=list(CLASSES), doc='tumor: the centre 32x32 region holds at least one tumour pixel.'),
            'id': tfds.features.Scalar(dtype=np.int64, doc='Index in the official file (= index in the split).'),
            'file_name': tfds.features.Text(doc='The *_x.h5 file, relative to the manual dir.'),
            'patient_id': tfds.features.Text(doc='Source slide ("wsi" column of the optional *_meta.csv; '
                                                 'Camelyon16 has one slide per patient), else "".'),
        }),
        supervised_keys=('image', 'label'),
        disable_shuffling=True,
        homepage='https://github.com/basveeling/pcam',
        citation='Veeling, Linmans, Winkens, Cohen, Welling. Rotation Equivariant CNNs for Digital '
                 'Pathology. MICCAI 2018. arXiv:1806.03962.',
    )

  def _root(self, manual: pathlib.Path) -> pathlib.Path:
    """The folder holding the files; a file present only as .gz is named with the fix."""
    first = file_name('train', 'x')
    for folder in _FOLDERS:
      if (manual / folder / first).exists() or (manual / folder / f'{first}.gz').exists():
        root = manual / folder
        break
    else:
      root = manual
    names = [file_name(s, k) for _, s in _SPLITS for k in ('x', 'y')]
    gz = [str(root / n) + '.gz' for n in names if not (root / n).exists() and (root / f'{n}.gz').exists()]
    if gz:
      raise common.LayoutError(f'pcam: found only gzip-compressed file(s) {gz}; decompress them in place first '
                               f'(e.g. gunzip -k {gz[0]}): the HDF5 files are read in chunks and must be plain .h5')
    common.require(root, *names, dataset='pcam')
    return root

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual = pathlib.Path(dl_manager.manual_dir)
    root = self._root(manual)
    splits = {}
    for split, infix in _SPLITS:
      x_path, y_path = root / file_name(infix, 'x'), root / file_name(infix, 'y')
      f, x = _open(x_path, 'x')
      with f:
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (_SIZE, _SIZE, 3):
          raise ValueError(f'pcam: {x_path} dataset \'x\' is {x.dtype} {x.shape}, expected uint8 (N, 96, 96, 3)')
        n = x.shape[0]
      common.check_nonempty(split, range(n), dataset='pcam', where=x_path)
      labels = _labels(y_path, n)
      wsi = [''] * n
      meta = root / file_name(infix, 'meta')
      if meta.exists():
        rows = common.read_csv(meta, required=['wsi'], dataset='pcam')
        if len(rows) != n:
          raise ValueError(f'pcam: {meta} has {len(rows)} rows, expected {n} (one per patch of {x_path.name})')
        wsi = [r['wsi'] or '' for r in rows]
      splits[split] = self._generate_examples(manual, x_path, labels, wsi)
    return splits

  def _generate_examples(self, manual: pathlib.Path, x_path: pathlib.Path, labels: np.ndarray, wsi: list[str]):
    rel = x_path.relative_to(manual).as_posix()
    f, x = _open(x_path, 'x')
    with f:
      for start in range(0, len(labels), _CHUNK):
        stop = min(start + _CHUNK, len(labels))
        try:
          block = x[start:stop]
        except (OSError, ValueError) as e:
          raise ValueError(f'pcam: could not read patches {start}-{stop - 1} of {x_path} dataset \'x\': {e}') from e
        for i, patch in zip(range(start, stop), block):
          yield i, {
              'image': common.encode(Image.fromarray(patch), fmt='png'),
              'label': int(labels[i]),
              'id': i,
              'file_name': rel,
              'patient_id': wsi[i],
          }
