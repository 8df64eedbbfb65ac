"""CheXpert builder: dummy data in the official layout (small and full-size folder names), bad inputs."""
import csv

import numpy as np
import tensorflow_datasets as tfds

import builder_testing as bt
from tfds_builders.chexpert import LABELS, dummy_data

_FOLDER = 'CheXpert-v1.0-small'
# Dummy train.csv: 60 frontal + 20 lateral images of 40 patients; valid.csv: 5 frontal + 2 lateral.
# The seeded 95/5 patient split puts patient00031 (2 frontal studies, 1 lateral) in validation.
_FRONTAL = {'train': 58, 'validation': 2, 'test': 5}
_ALL = {'train': 77, 'validation': 3, 'test': 7}


def _csv_rows(path):
  with open(path, newline='') as f:
    return {r['Path']: r for r in csv.DictReader(f)}


def _expected(row, uncertain):
  return [{'1.0': 1, '0.0': 0, '-1.0': uncertain, '': 0}[row[name]] for name in LABELS]


def _rewrite(path, fn):
  """Rewrites a CSV through fn(header, rows) -> (header, rows)."""
  with open(path, newline='') as f:
    header, *rows = list(csv.reader(f))
  header, rows = fn(header, rows)
  with open(path, 'w', newline='') as f:
    csv.writer(f).writerows([header, *rows])


def test_dummy_build_frontal_policies(tmp_path):
  manual = dummy_data.write(tmp_path / 'manual')
  train_csv = _csv_rows(manual / _FOLDER / 'train.csv')
  valid_csv = _csv_rows(manual / _FOLDER / 'valid.csv')
  for config, uncertain in (('frontal_u_ones_320', 1), ('frontal_u_zeros_320', 0)):
    b = bt.build('chexpert', config, manual, tmp_path / 'tfds')
    records = bt.check_dataset(b, splits=_FRONTAL)
    assert {r['patient_id'] for r in records['validation']} == {b'patient00031'}
    for split, table in (('train', train_csv), ('validation', train_csv), ('test', valid_csv)):
      names = [r['file_name'].decode() for r in records[split]]
      assert names == sorted(names) and all(n.startswith(f'{_FOLDER}/') for n in names)
      for r in records[split]:
        row = table[r['file_name'].decode()]
        np.testing.assert_array_equal(r['label'], _expected(row, uncertain))
        assert r['view'] == 0 and r['image'].shape == (320, 320, 1)
        assert r['sex'].decode() == row['Sex'] and r['age'] == int(row['Age']) and r['ap_pa'].decode() == row['AP/PA']
        assert r['patient_id'].decode() == row['Path'].split('/')[2]
    assert sum(int((r['label'] == 1).sum()) for r in records['train']) > 0


def test_dummy_build_all_views_keep_uncertain(tmp_path):
  manual = dummy_data.write(tmp_path / 'manual')
  b = bt.build('chexpert', 'all_u_keep_320', manual, tmp_path / 'tfds')
  records = bt.check_dataset(b, splits=_ALL)
  table = _csv_rows(manual / _FOLDER / 'train.csv')
  for r in records['train'] + records['validation']:
    np.testing.assert_array_equal(r['label'], _expected(table[r['file_name'].decode()], -1))
  assert any((r['label'] == -1).any() for r in records['train'])
  # Same patient split as the frontal configs: the split is made before the view filter.
  assert {r['patient_id'] for r in records['validation']} == {b'patient00031'}
  laterals = [r for recs in records.values() for r in recs if r['view'] == 1]
  assert len(laterals) == 22 and all(r['ap_pa'] == b'' for r in laterals)


def test_full_size_folder_original_bytes(tmp_path):
  # The full-size release folder, and a manual dir that is the release folder itself.
  manual = dummy_data.write(tmp_path / 'manual', folder='CheXpert-v1.0') / 'CheXpert-v1.0'
  b = bt.build('chexpert', 'frontal_u_ones_original', manual, tmp_path / 'tfds')
  records = bt.check_dataset(b, splits=_FRONTAL)
  assert records['test'][0]['file_name'] == b'valid/patient64541/study1/view1_frontal.jpg'
  assert records['test'][0]['image'].shape == (24, 20, 1)
  raw = b.as_data_source(split='test', decoders={'image': tfds.decode.SkipDecoding()})
  for i, r in enumerate(records['test']):
    assert raw[i]['image'] == (manual / r['file_name'].decode()).read_bytes()  # Original JPEG, unchanged.


def test_bad_inputs(tmp_path):
  def fresh(name):
    return dummy_data.write(tmp_path / name) / _FOLDER

  base = fresh('m1')
  (base / 'valid.csv').unlink()
  bt.check_fails('chexpert', None, base.parent, tmp_path / 't1', match=r'missing .*valid\.csv')
  other = tmp_path / 'other'
  other.mkdir()
  (other / 'readme.txt').write_text('not CheXpert')
  bt.check_fails('chexpert', None, other, tmp_path / 't2', match=r'none of .*CheXpert-v1.0-small/train.csv')

  base = fresh('m3')
  _rewrite(base / 'train.csv', lambda h, rows: (h[:4] + h[5:], [r[:4] + r[5:] for r in rows]))
  bt.check_fails('chexpert', None, base.parent, tmp_path / 't3', match=r"train\.csv lacks column\(s\) \['AP/PA'\]")

  base = fresh('m4')
  col = dummy_data.HEADER.index('Edema')
  _rewrite(base / 'train.csv', lambda h, rows: (h, [r[:col] + ['2.0'] + r[col + 1:] if i == 6 else r
                                                     for i, r in enumerate(rows)]))
  bt.check_fails('chexpert', None, base.parent, tmp_path / 't4',
                 match=r"train\.csv row 8 \(Path=.*\): column 'Edema' has value '2\.0'; valid values")

  base = fresh('m5')
  (base / 'train/patient00007/study1/view1_frontal.jpg').unlink()
  bt.check_fails('chexpert', None, base.parent, tmp_path / 't5',
                 match=r'1 of 65 images .* missing.*patient00007/study1/view1_frontal\.jpg')

  base = fresh('m6')
  bt.corrupt(base / 'valid/patient64543/study1/view1_frontal.jpg')
  bt.check_fails('chexpert', None, base.parent, tmp_path / 't6',
                 match=r'Could not read the image .*patient64543/study1/view1_frontal\.jpg')
