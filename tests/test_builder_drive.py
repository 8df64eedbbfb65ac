"""DRIVE builder: dummy data in the official layout (flat and DRIVE/-nested), bad inputs."""
import numpy as np
from PIL import Image

import builder_testing as bt
from tfds_builders.drive import dummy_data


def _gif(path):
  return (np.asarray(Image.open(path).convert('L')) > 127).astype(np.uint8)


def test_dummy_build_original(tmp_path):
  manual = dummy_data.write(tmp_path / 'manual')
  b = bt.build('drive', 'original', manual, tmp_path / 'tfds')
  records = bt.check_dataset(b, splits={'train': 3, 'test': 2})
  first, test = records['train'][0], records['test'][1]
  assert first['file_name'] == b'training/images/21_training.tif' and first['patient_id'] == b''
  assert test['file_name'] == b'test/images/02_test.tif'
  # TIFF pixels stored losslessly; masks equal the GIFs as {0, 1}.
  np.testing.assert_array_equal(first['image'], np.asarray(Image.open(manual / 'training/images/21_training.tif')))
  np.testing.assert_array_equal(first['mask'][..., 0], _gif(manual / 'training/1st_manual/21_manual1.gif'))
  np.testing.assert_array_equal(first['fov_mask'][..., 0], _gif(manual / 'training/mask/21_training_mask.gif'))
  assert not first['has_2nd_observer'] and first['mask_2nd_observer'].max() == 0
  assert test['has_2nd_observer']
  np.testing.assert_array_equal(test['mask_2nd_observer'][..., 0], _gif(manual / 'test/2nd_manual/02_manual2.gif'))


def test_dummy_build_resized_nested(tmp_path):
  manual = dummy_data.write(tmp_path / 'manual', nested=True)
  b = bt.build('drive', '512', manual, tmp_path / 'tfds')
  records = bt.check_dataset(b, splits={'train': 3, 'test': 2})
  r = records['test'][0]
  assert r['image'].shape == (512, 512, 3) and r['mask'].shape == (512, 512, 1)
  assert r['file_name'] == b'test/images/01_test.tif'
  # Cropped to the FOV box: the FOV fills the square edge to edge at the middle row and column.
  assert r['fov_mask'][256, :, 0].all() and r['fov_mask'][:, 256, 0].all()


def test_bad_inputs(tmp_path):
  manual = dummy_data.write(tmp_path / 'manual')
  (manual / 'test/2nd_manual/01_manual2.gif').unlink()
  bt.check_fails('drive', None, manual, tmp_path / 'tfds', match=r'missing .*test/2nd_manual/01_manual2.gif')
  manual = dummy_data.write(tmp_path / 'manual2')
  bt.corrupt(manual / 'training/images/22_training.tif')
  bt.check_fails('drive', None, manual, tmp_path / 'tfds2', match=r'Could not read the image .*22_training.tif')
  wrong = tmp_path / 'wrong'
  (wrong / 'Training').mkdir(parents=True)  # Not the official folder name.
  bt.check_fails('drive', None, wrong, tmp_path / 'tfds3', match=r"none of \['training', 'DRIVE/training'\]")
