"""HRF builder: dummy data in the official layout, bad inputs, and the 45 real images (no vessel maps)."""
import numpy as np
import pytest

import builder_testing as bt
from tfds_builders.hrf import dummy_data


@pytest.mark.parametrize('size', [512, 224])
def test_dummy_build_classification(tmp_path, size):
  manual = dummy_data.write(tmp_path / 'manual', masks=False, nested=True)
  b = bt.build('hrf', f'classification_{size}', manual, tmp_path / 'tfds')
  records = bt.check_dataset(b, splits={'train': 9, 'validation': 3, 'test': 3},
                             label_counts={'train': [3, 3, 3], 'validation': [1, 1, 1], 'test': [1, 1, 1]})
  assert 'mask' not in b.info.features
  for recs in records.values():
    for r in recs:
      name = r['file_name'].decode()
      assert name.startswith('images/') and r['patient_id'].decode() == name[7:].rsplit('.', 1)[0]
      assert r['label'] == {'h': 0, 'dr': 1, 'g': 2}[name.rsplit('.', 1)[0].split('_')[1]]
      assert r['image'].shape == (size, size, 3)
    assert [r['file_name'] for r in recs] == sorted(r['file_name'] for r in recs)
  assert any(r['file_name'].endswith(b'.JPG') for recs in records.values() for r in recs)


def test_dummy_build_segmentation(tmp_path):
  manual = dummy_data.write(tmp_path / 'manual')
  b = bt.build('hrf', 'segmentation_1024', manual, tmp_path / 'tfds')
  records = bt.check_dataset(b, splits={'train': 9, 'validation': 3, 'test': 3})
  r = records['train'][0]
  assert r['image'].shape == (1024, 1024, 3) and r['mask'].shape == (1024, 1024, 1)
  # Cropped to the FOV mask's box: the FOV spans the square at the middle row and column.
  assert r['fov_mask'][512, :, 0].all() and r['fov_mask'][:, 512, 0].all()
  # Image and masks share one crop: the dummy vessels lie inside the FOV, and still do after it.
  assert r['mask'].any() and not (r['mask'] & (1 - r['fov_mask'])).any()


def test_bad_inputs(tmp_path):
  manual = dummy_data.write(tmp_path / 'manual', masks=False)
  bt.check_fails('hrf', 'segmentation_1024', manual, tmp_path / 'tfds', match=r"missing \['manual1', 'mask'\]")
  manual = dummy_data.write(tmp_path / 'manual2')
  (manual / 'mask/03_g_mask.tif').unlink()
  bt.check_fails('hrf', 'segmentation_1024', manual, tmp_path / 'tfds2', match=r'missing .*mask/03_g_mask.tif')
  manual = dummy_data.write(tmp_path / 'manual3', masks=False)
  bt.corrupt(manual / 'images/02_dr.JPG')
  bt.check_fails('hrf', None, manual, tmp_path / 'tfds3', match=r'Could not read the image .*02_dr.JPG')
  manual = dummy_data.write(tmp_path / 'manual4', masks=False)
  (manual / 'images/01_h.jpg').rename(manual / 'images/01_x.jpg')
  bt.check_fails('hrf', None, manual, tmp_path / 'tfds4', error=ValueError, match=r"01_x.jpg.*\['dr', 'g', 'h'\]")


def test_real_files(tmp_path):
  root = bt.shared_dir('hrf')
  b = bt.build('hrf', 'classification_512', root, tmp_path / 'tfds')
  # PROVENANCE.md: 45 images, 15 per group; the seed-0 split is 9/3/3 per group.
  records = bt.check_dataset(b, splits={'train': 27, 'validation': 9, 'test': 9},
                             label_counts={'train': [9, 9, 9], 'validation': [3, 3, 3], 'test': [3, 3, 3]})
  all_records = [r for recs in records.values() for r in recs]
  assert np.bincount([int(r['label']) for r in all_records]).tolist() == [15, 15, 15]
  assert len({r['file_name'] for r in all_records}) == 45
  assert all(r['image'].shape == (512, 512, 3) for r in all_records)
  # This copy has no manual1/ or mask/: the segmentation config says so.
  bt.check_fails('hrf', 'segmentation_1024', root, tmp_path / 'tfds_seg',
                 match=r"segmentation_1024.*missing \['manual1', 'mask'\]")
