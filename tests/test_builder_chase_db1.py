"""CHASE_DB1 builder: dummy data in the official flat layout, bad inputs, and the real files when present."""
import numpy as np
import pytest
from PIL import Image

import builder_testing as bt
from tfds_builders.chase_db1 import dummy_data


def test_dummy_build_original(tmp_path):
  manual = dummy_data.write(tmp_path / 'manual')
  b = bt.build('chase_db1', 'original', manual, tmp_path / 'tfds')
  records = bt.check_dataset(b, splits={'train': 20, 'test': 8})
  first = records['train'][0]
  assert first['file_name'] == b'Image_01L.jpg' and first['patient_id'] == b'01' and first['eye'] == 0
  assert records['test'][-1]['file_name'] == b'Image_14R.jpg' and records['test'][-1]['eye'] == 1
  # Original JPEG bytes are stored unchanged; masks equal the 1-bit PNGs.
  np.testing.assert_array_equal(first['image'], np.asarray(Image.open(manual / 'Image_01L.jpg')))
  np.testing.assert_array_equal(first['mask'][..., 0], np.asarray(Image.open(manual / 'Image_01L_1stHO.png')))
  np.testing.assert_array_equal(first['mask_2nd_observer'][..., 0],
                                np.asarray(Image.open(manual / 'Image_01L_2ndHO.png')))


@pytest.mark.parametrize('size', [512, 224])
def test_dummy_build_resized(tmp_path, size):
  manual = dummy_data.write(tmp_path / 'manual')
  b = bt.build('chase_db1', str(size), manual, tmp_path / 'tfds')
  records = bt.check_dataset(b, splits={'train': 20, 'test': 8})
  assert records['test'][0]['image'].shape == (size, size, 3) and records['test'][0]['mask'].shape == (size, size, 1)


def test_bad_inputs(tmp_path):
  manual = dummy_data.write(tmp_path / 'manual')
  (manual / 'Image_03R_2ndHO.png').unlink()
  bt.check_fails('chase_db1', None, manual, tmp_path / 'tfds', match=r'missing .*Image_03R_2ndHO.png')
  manual = dummy_data.write(tmp_path / 'manual2')
  bt.corrupt(manual / 'Image_12L.jpg')
  bt.check_fails('chase_db1', None, manual, tmp_path / 'tfds2', match=r'Could not read the image .*Image_12L.jpg')
  empty = tmp_path / 'empty'
  empty.mkdir()
  bt.check_fails('chase_db1', None, empty, tmp_path / 'tfds3', match='does not exist or is empty')


def test_real_files(tmp_path):
  root = bt.shared_dir('chase_db1')
  b = bt.build('chase_db1', 'original', root, tmp_path / 'tfds')
  records = bt.check_dataset(b, splits={'train': 20, 'test': 8})
  r = records['test'][0]
  assert r['image'].shape == (960, 999, 3) and r['file_name'] == b'Image_11L.jpg'
  # The provenance file reports 6.9% vessel pixels for the first observer over all 28 images.
  frac = np.mean([rec['mask'].mean() for recs in records.values() for rec in recs])
  assert 0.06 < frac < 0.08
