"""NCT-CRC-HE builder: dummy data in the official class-folder layout and bad inputs (no real files shared)."""
import numpy as np
from PIL import Image

import builder_testing as bt
from tfds_builders.nct_crc_he import dummy_data

# 10 patches per class in the dummy 100K set (the fewest for which the stratified 5% validation gets
# one of each class: the dealing gives a class's last patch to validation once its centre reaches 95%).
_SPLITS = {'train': 9 * 9, 'validation': 9, 'test': 9 * 2}
_COUNTS = {'train': [9] * 9, 'validation': [1] * 9, 'test': [2] * 9}


def test_dummy_build_224(tmp_path):
  manual = dummy_data.write(tmp_path / 'manual', size=224)
  b = bt.build('nct_crc_he', '224', manual, tmp_path / 'tfds')
  records = bt.check_dataset(b, splits=_SPLITS, label_counts=_COUNTS, read_limit=None)
  # Records follow <class>/<file name> order; file names are relative to the manual dir.
  names = [r['file_name'].decode() for r in records['train']]
  assert names == sorted(names, key=lambda n: (dummy_data.CLASSES.index(n.split('/')[1]), n))
  assert all(n.startswith('NCT-CRC-HE-100K/') for n in names)
  assert records['test'][0]['file_name'].decode().startswith('CRC-VAL-HE-7K/ADI/')
  assert records['test'][-1]['label'] == 8 and records['train'][0]['patient_id'] == b''
  # 224 px TIFF patches are stored as PNG with their pixels unchanged.
  r = records['validation'][4]
  np.testing.assert_array_equal(r['image'], np.asarray(Image.open(manual / r['file_name'].decode())))
  assert b.info.features['label'].names[7] == 'STR'


def test_dummy_build_112_and_nonorm(tmp_path):
  manual = dummy_data.write(tmp_path / 'manual', nonorm=True)
  b = bt.build('nct_crc_he', '112', manual, tmp_path / 'tfds')
  records = bt.check_dataset(b, splits=_SPLITS, label_counts=_COUNTS, read_limit=None)
  assert records['train'][0]['image'].shape == (112, 112, 3)
  b = bt.build('nct_crc_he', 'nonorm_224', manual, tmp_path / 'tfds')
  records = bt.check_dataset(b, splits=_SPLITS, read_limit=3)
  assert records['train'][0]['file_name'].decode().startswith('NCT-CRC-HE-100K-NONORM/ADI/')
  assert records['test'][0]['file_name'].decode().startswith('CRC-VAL-HE-7K/ADI/')


def test_doubled_folder_accepted(tmp_path):
  manual = dummy_data.write(tmp_path / 'inner', test_per_class=1, size=8)
  outer = tmp_path / 'outer'
  for folder in ('NCT-CRC-HE-100K', 'CRC-VAL-HE-7K'):
    (outer / folder).mkdir(parents=True)
    (manual / folder).rename(outer / folder / folder)
  b = bt.build('nct_crc_he', '112', outer, tmp_path / 'tfds')
  records = bt.check_dataset(b, splits={'train': 81, 'validation': 9, 'test': 9}, read_limit=1)
  assert records['train'][0]['file_name'].decode().startswith('NCT-CRC-HE-100K/NCT-CRC-HE-100K/ADI/')


def test_bad_inputs(tmp_path):
  small = dict(test_per_class=1, size=8)
  manual = dummy_data.write(tmp_path / 'm1', **small)
  (manual / 'NCT-CRC-HE-100K/ADI').rename(manual / 'NCT-CRC-HE-100K/FAT')
  bt.check_fails('nct_crc_he', '112', manual, tmp_path / 't1',
                 match=r"unknown class folder\(s\) \['FAT'\] in .*NCT-CRC-HE-100K; valid class folders: \['ADI'")
  manual = dummy_data.write(tmp_path / 'm2', **small)
  for p in (manual / 'CRC-VAL-HE-7K/TUM').iterdir():
    p.unlink()
  (manual / 'CRC-VAL-HE-7K/TUM').rmdir()
  bt.check_fails('nct_crc_he', '112', manual, tmp_path / 't2', match=r'missing .*CRC-VAL-HE-7K/TUM')
  manual = dummy_data.write(tmp_path / 'm3', **small)
  bad = sorted((manual / 'NCT-CRC-HE-100K/ADI').iterdir())[0]
  bt.corrupt(bad)
  bt.check_fails('nct_crc_he', '112', manual, tmp_path / 't3', match=rf'Could not read the image .*{bad.name}')
  manual = dummy_data.write(tmp_path / 'm4', **small)
  bt.check_fails('nct_crc_he', 'nonorm_224', manual, tmp_path / 't4',
                 match=r"none of \['NCT-CRC-HE-100K-NONORM/NCT-CRC-HE-100K-NONORM', 'NCT-CRC-HE-100K-NONORM'\]")
