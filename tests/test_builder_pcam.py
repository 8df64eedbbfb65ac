"""PatchCamelyon builder: dummy HDF5 files in the official layout and bad inputs (no real files shared)."""
import h5py
import numpy as np

import builder_testing as bt
from tfds_builders.pcam import dummy_data

_SPLITS = {'train': 12, 'validation': 6, 'test': 6}
_COUNTS = {'train': [6, 6], 'validation': [3, 3], 'test': [3, 3]}


def test_dummy_build(tmp_path):
  manual = dummy_data.write(tmp_path / 'manual')
  b = bt.build('pcam', None, manual, tmp_path / 'tfds')
  records = bt.check_dataset(b, splits=_SPLITS, label_counts=_COUNTS)
  assert b.info.features['label'].names == ['no_tumor', 'tumor']
  # Patches are stored losslessly, in official order, with the official labels and slide names.
  with h5py.File(manual / 'camelyonpatch_level_2_split_valid_x.h5') as f:
    x = f['x'][...]
  for i, r in enumerate(records['validation']):
    np.testing.assert_array_equal(r['image'], x[i])
    assert r['label'] == dummy_data.labels('valid')[i]
    assert r['file_name'] == b'camelyonpatch_level_2_split_valid_x.h5'
    assert r['patient_id'] == f'valid_slide_{i % 2:03d}'.encode()


def test_without_meta_in_subfolder(tmp_path):
  manual = tmp_path / 'manual'
  dummy_data.write(manual / 'pcam', meta=False)
  b = bt.build('pcam', None, manual, tmp_path / 'tfds')
  records = bt.check_dataset(b, splits=_SPLITS, read_limit=2)
  assert records['test'][1]['patient_id'] == b'' and records['test'][1]['label'] == 1
  assert records['test'][1]['file_name'] == b'pcam/camelyonpatch_level_2_split_test_x.h5'


def test_bad_inputs(tmp_path):
  manual = dummy_data.write(tmp_path / 'm1', gz=('camelyonpatch_level_2_split_test_y.h5',))
  bt.check_fails('pcam', None, manual, tmp_path / 't1',
                 match=r'only gzip-compressed .*camelyonpatch_level_2_split_test_y.h5.gz.* gunzip -k')
  manual = dummy_data.write(tmp_path / 'm2')
  (manual / 'camelyonpatch_level_2_split_valid_x.h5').unlink()
  bt.check_fails('pcam', None, manual, tmp_path / 't2', match=r'missing .*camelyonpatch_level_2_split_valid_x.h5')
  manual = dummy_data.write(tmp_path / 'm3')
  with h5py.File(manual / 'camelyonpatch_level_2_split_train_y.h5', 'r+') as f:
    f['y'][5] = 2
  bt.check_fails('pcam', None, manual, tmp_path / 't3',
                 match=r"split_train_y.h5 dataset 'y' index 5 has label 2; valid labels")
  manual = dummy_data.write(tmp_path / 'm4')
  with h5py.File(manual / 'camelyonpatch_level_2_split_test_x.h5', 'r+') as f:
    f['images'] = f['x'][...]
    del f['x']
  bt.check_fails('pcam', None, manual, tmp_path / 't4',
                 match=r"split_test_x.h5 has no dataset 'x'; found \['images'\]")
  manual = dummy_data.write(tmp_path / 'm5')
  with h5py.File(manual / 'camelyonpatch_level_2_split_valid_y.h5', 'w') as f:
    f['y'] = np.zeros((5, 1, 1, 1), np.uint8)
  bt.check_fails('pcam', None, manual, tmp_path / 't5',
                 match=r"split_valid_y.h5 dataset 'y' has shape \(5, 1, 1, 1\), expected \(6, 1, 1, 1\)")
  manual = dummy_data.write(tmp_path / 'm6')
  meta = manual / 'camelyonpatch_level_2_split_train_meta.csv'
  meta.write_text(meta.read_text().replace(',wsi', ',slide'))
  bt.check_fails('pcam', None, manual, tmp_path / 't6', match=r"split_train_meta.csv lacks column\(s\) \['wsi'\]")
  manual = dummy_data.write(tmp_path / 'm7')
  bt.corrupt(manual / 'camelyonpatch_level_2_split_train_x.h5')
  bt.check_fails('pcam', None, manual, tmp_path / 't7', match=r'(could not read .*split_train_x.h5)')
