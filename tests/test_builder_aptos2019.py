"""APTOS 2019 builder: dummy data in the official Kaggle layout, the seeded split, bad inputs."""
import csv

import numpy as np
from PIL import Image

import builder_testing as bt
from tfds_builders.aptos2019 import dummy_data

_SPLITS = {'train': 42, 'validation': 6, 'test': 12}
_COUNTS = {'train': [14, 7, 7, 7, 7], 'validation': [2, 1, 1, 1, 1], 'test': [4, 2, 2, 2, 2]}


def _labels(manual):
  with open(manual / 'train.csv', newline='') as f:
    return {r['id_code']: int(r['diagnosis']) for r in csv.DictReader(f)}


def test_dummy_build_original(tmp_path):
  manual = dummy_data.write(tmp_path / 'manual')
  b = bt.build('aptos2019', 'original', manual, tmp_path / 'tfds')
  records = bt.check_dataset(b, splits=_SPLITS, label_counts=_COUNTS)
  labels = _labels(manual)
  names = [r['file_name'].decode() for recs in records.values() for r in recs]
  assert sorted(names) == sorted(f'train_images/{k}.png' for k in labels)  # Every image exactly once.
  for recs in records.values():
    files = [r['file_name'] for r in recs]
    assert files == sorted(files)  # id_code order within a split.
    for r in recs:
      assert r['label'] == labels[r['file_name'].decode()[len('train_images/'):-4]] and r['patient_id'] == b''
  first = records['validation'][0]
  # Original PNGs are stored unchanged (lossless: same pixels).
  np.testing.assert_array_equal(first['image'], np.asarray(Image.open(manual / first['file_name'].decode())))


def test_dummy_build_resized_same_split(tmp_path):
  manual = dummy_data.write(tmp_path / 'manual')
  b = bt.build('aptos2019', '512', manual, tmp_path / 'tfds')
  records = bt.check_dataset(b, splits=_SPLITS, label_counts=_COUNTS, read_limit=None)
  assert records['test'][0]['image'].shape == (512, 512, 3)
  # The split depends only on ids, labels and the seed: a second build from rows in another order agrees.
  other = tmp_path / 'manual2'
  dummy_data.write(other)
  with open(other / 'train.csv', newline='') as f:
    rows = list(csv.reader(f))
  with open(other / 'train.csv', 'w', newline='') as f:
    csv.writer(f).writerows(rows[:1] + rows[:0:-1])
  b2 = bt.build('aptos2019', '512', other, tmp_path / 'tfds2')
  src = b2.as_data_source(split='test')
  assert [src[i]['file_name'] for i in range(len(src))] == [r['file_name'] for r in records['test']]


def test_bad_inputs(tmp_path):
  manual = dummy_data.write(tmp_path / 'm1')
  victim = sorted((manual / 'train_images').iterdir())[5]
  victim.unlink()
  bt.check_fails('aptos2019', 'original', manual, tmp_path / 't1', match=rf'missing from .*train_images.*{victim.name}')
  manual = dummy_data.write(tmp_path / 'm2')
  (manual / 'train.csv').write_text('id_code,grade\nabc,0\n')
  bt.check_fails('aptos2019', 'original', manual, tmp_path / 't2', match=r"train\.csv lacks column.*diagnosis")
  manual = dummy_data.write(tmp_path / 'm3')
  victim = sorted((manual / 'train_images').iterdir())[7]
  bt.corrupt(victim)
  bt.check_fails('aptos2019', '512', manual, tmp_path / 't3', match=rf'Could not read the image .*{victim.name}')
  manual = dummy_data.write(tmp_path / 'm4')
  text = (manual / 'train.csv').read_text().splitlines()
  code = text[3].split(',')[0]
  text[3] = f'{code},5'
  (manual / 'train.csv').write_text('\n'.join(text) + '\n')
  bt.check_fails('aptos2019', 'original', manual, tmp_path / 't4', match=rf"train\.csv: id_code '{code}' has diagnosis '5'")
  manual = dummy_data.write(tmp_path / 'm5')
  (manual / 'train.csv').unlink()
  bt.check_fails('aptos2019', 'original', manual, tmp_path / 't5', match=r"none of \['train\.csv'.* found in the manual dir")
