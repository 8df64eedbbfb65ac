"""Montgomery builder: dummy data in the official layout (lung label map, readings) and bad inputs."""
import numpy as np
from PIL import Image

import builder_testing as bt
from tfds_builders.montgomery import dummy_data

_SPLITS = {'train': 14, 'validation': 2, 'test': 4}
_COUNTS = {'train': [7, 7], 'validation': [1, 1], 'test': [2, 2]}


def _want_mask(manual, name):
  left = np.asarray(Image.open(manual / 'MontgomerySet/ManualMask/leftMask' / name)) > 0
  right = np.asarray(Image.open(manual / 'MontgomerySet/ManualMask/rightMask' / name)) > 0
  return np.where(left, 1, np.where(right, 2, 0)).astype(np.uint8)


def test_dummy_build_original(tmp_path):
  manual = dummy_data.write(tmp_path / 'manual')
  b = bt.build('montgomery', 'original', manual, tmp_path / 'tfds')
  records = bt.check_dataset(b, splits=_SPLITS, label_counts=_COUNTS, mask_values={0, 1, 2})
  names = sorted(r['file_name'].decode() for recs in records.values() for r in recs)
  assert names == [f'MontgomerySet/CXR_png/MCUCXR_{k + 1:04d}_{k % 2}.png' for k in range(20)]
  for recs in records.values():
    for r in recs:
      path = manual / r['file_name'].decode()
      np.testing.assert_array_equal(r['image'][..., 0], np.asarray(Image.open(path)))  # Stored unchanged.
      np.testing.assert_array_equal(r['mask'][..., 0], _want_mask(manual, path.name))
      assert r['label'] == int(path.stem[-1]) and r['patient_id'] == b''
      assert r['report'].decode() == (manual / f'MontgomerySet/ClinicalReadings/{path.stem}.txt').read_text().strip()
  assert set(np.unique(records['train'][0]['mask']).tolist()) == {0, 1, 2}


def test_dummy_build_512(tmp_path):
  manual = dummy_data.write(tmp_path / 'manual')
  b = bt.build('montgomery', None, manual, tmp_path / 'tfds')
  assert b.builder_config.name == '512'
  records = bt.check_dataset(b, splits=_SPLITS, label_counts=_COUNTS, mask_values={0, 1, 2})
  r = records['test'][0]
  assert r['image'].shape == (512, 512, 1) and r['mask'].shape == (512, 512, 1)
  m = np.pad(_want_mask(manual, r['file_name'].decode().split('/')[-1]), ((0, 0), (3, 3)))  # 30x36 -> 36x36.
  np.testing.assert_array_equal(r['mask'][..., 0], np.asarray(Image.fromarray(m).resize((512, 512), Image.NEAREST)))


def test_bad_inputs(tmp_path):
  manual = dummy_data.write(tmp_path / 'm1')
  (manual / 'MontgomerySet/ManualMask/rightMask/MCUCXR_0004_1.png').unlink()
  bt.check_fails('montgomery', '512', manual, tmp_path / 't1', match=r'missing .*rightMask/MCUCXR_0004_1.png')
  manual = dummy_data.write(tmp_path / 'm2')
  (manual / 'MontgomerySet/ClinicalReadings/MCUCXR_0003_0.txt').unlink()
  bt.check_fails('montgomery', '512', manual, tmp_path / 't2', match=r'missing .*MCUCXR_0003_0.txt')
  manual = dummy_data.write(tmp_path / 'm3')
  Image.new('L', (30, 36)).save(manual / 'MontgomerySet/CXR_png/MCUCXR_0099_3.png')
  bt.check_fails('montgomery', '512', manual, tmp_path / 't3', match=r'unexpected image name .*MCUCXR_0099_3.png')
  manual = dummy_data.write(tmp_path / 'm4')
  bt.corrupt(manual / 'MontgomerySet/CXR_png/MCUCXR_0010_1.png')
  bt.check_fails('montgomery', '512', manual, tmp_path / 't4', match=r'Could not read the image .*MCUCXR_0010_1.png')
  manual = dummy_data.write(tmp_path / 'm5')
  bt.corrupt(manual / 'MontgomerySet/ManualMask/leftMask/MCUCXR_0010_1.png')
  bt.check_fails('montgomery', '512', manual, tmp_path / 't5',
                 match=r'Could not read the image .*leftMask/MCUCXR_0010_1.png')
  manual = dummy_data.write(tmp_path / 'm6')
  Image.new('L', (31, 36)).save(manual / 'MontgomerySet/ManualMask/leftMask/MCUCXR_0002_1.png')
  bt.check_fails('montgomery', '512', manual, tmp_path / 't6',
                 match=r'leftMask/MCUCXR_0002_1.png is 31x36, but its image')
