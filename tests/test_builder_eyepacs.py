"""EyePACS builder: dummy data in the official Kaggle layout (and its nested variant), bad inputs."""
import csv

import numpy as np
from PIL import Image

import builder_testing as bt
from tfds_builders.eyepacs import dummy_data

_SPLITS = {'train': 8, 'validation': 4, 'test': 6}


def test_dummy_build_original(tmp_path):
  manual = dummy_data.write(tmp_path / 'manual')
  b = bt.build('eyepacs', 'original', manual, tmp_path / 'tfds')
  records = bt.check_dataset(b, splits=_SPLITS, label_counts={'train': [3, 1, 2, 1, 1],
                                                              'validation': [1, 1, 0, 0, 2],
                                                              'test': [3, 1, 1, 1, 0]})
  first = records['train'][0]
  assert first['file_name'] == b'train/1_left.jpeg' and first['patient_id'] == b'1' and first['eye'] == 0
  # Label-file row order: patient 10 comes after 3 (numeric order, as in trainLabels.csv).
  assert [r['patient_id'] for r in records['train']][4:6] == [b'10', b'10']
  r = records['validation'][-1]
  assert r['file_name'] == b'test/5_right.jpeg' and r['label'] == 4 and r['eye'] == 1
  assert [r['file_name'] for r in records['test'][:2]] == [b'test/4_left.jpeg', b'test/4_right.jpeg']
  # Original JPEG bytes are stored unchanged.
  np.testing.assert_array_equal(first['image'], np.asarray(Image.open(manual / 'train/1_left.jpeg')))


def test_dummy_build_resized_nested(tmp_path):
  manual = dummy_data.write(tmp_path / 'manual', nested=True)
  b = bt.build('eyepacs', '512', manual, tmp_path / 'tfds')
  records = bt.check_dataset(b, splits=_SPLITS)
  r = records['test'][0]
  assert r['image'].shape == (512, 512, 3) and r['file_name'] == b'test/test/4_left.jpeg'
  # FOV crop: the 40x30 image's disc is cropped before padding, so the top centre is retina, not the
  # black band (64 rows at 512 px) that padding the whole 40x30 frame would give.
  assert r['image'][:32, 240:272].mean() > 40


def test_bad_inputs(tmp_path):
  manual = dummy_data.write(tmp_path / 'm1')
  (manual / 'test/6_right.jpeg').unlink()
  bt.check_fails('eyepacs', 'original', manual, tmp_path / 't1', match=r'missing from .*test.*6_right\.jpeg')
  manual = dummy_data.write(tmp_path / 'm2')
  (manual / 'retinopathy_solution.csv').unlink()
  bt.check_fails('eyepacs', 'original', manual, tmp_path / 't2', match=r'retinopathy_solution\.csv')
  manual = dummy_data.write(tmp_path / 'm3')
  bt.corrupt(manual / 'train/10_right.jpeg')
  bt.check_fails('eyepacs', 'original', manual, tmp_path / 't3', match=r'Could not read the image .*10_right\.jpeg')
  manual = dummy_data.write(tmp_path / 'm4')
  _rewrite(manual / 'trainLabels.csv', lambda row: row if row[0] != '3_right' else ['3_right', '7'])
  bt.check_fails('eyepacs', 'original', manual, tmp_path / 't4', match=r"trainLabels\.csv.*'3_right'.*'7'.*0, 1, 2, 3, 4")
  manual = dummy_data.write(tmp_path / 'm5')
  _rewrite(manual / 'retinopathy_solution.csv', lambda row: row[:2] + ['Usage2'] if row[0] == 'image' else row)
  bt.check_fails('eyepacs', 'original', manual, tmp_path / 't5', match=r"retinopathy_solution\.csv lacks column.*Usage")
  manual = dummy_data.write(tmp_path / 'm6')
  _rewrite(manual / 'retinopathy_solution.csv', lambda row: row[:2] + ['Hidden'] if row[0] == '2_left' else row)
  bt.check_fails('eyepacs', 'original', manual, tmp_path / 't6', match=r"'2_left' has Usage 'Hidden'")


def _rewrite(path, fn):
  with open(path, newline='') as f:
    rows = [fn(r) for r in csv.reader(f)]
  with open(path, 'w', newline='') as f:
    csv.writer(f).writerows(rows)
