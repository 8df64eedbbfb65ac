"""ODIR-5K builder: dummy data in the official layout (xlsx, Kaggle nesting, CSV export), and bad inputs."""
import numpy as np
from PIL import Image

import builder_testing as bt
from tfds_builders.odir5k import dummy_data


def _by_patient(records):
  return {r['patient_id'].decode(): r for recs in records.values() for r in recs}


def test_dummy_build_original(tmp_path):
  manual = dummy_data.write(tmp_path / 'manual')
  b = bt.build('odir5k', 'original', manual, tmp_path / 'tfds')
  # 40 patients, 4 label patterns of 10: 7/1/2 patients of each, two eyes each.
  records = bt.check_dataset(b, splits={'train': 56, 'validation': 8, 'test': 16})
  rows = {str(r[0]): r for r in dummy_data.rows()[1:]}
  for split, recs in records.items():
    pids = [int(r['patient_id']) for r in recs]
    assert pids == sorted(pids) and [int(r['eye']) for r in recs] == [0, 1] * (len(recs) // 2), split
    for r in recs:
      row = rows[r['patient_id'].decode()]
      eye = int(r['eye'])
      assert r['label'].tolist() == row[7:] and r['label'].shape == (8,)
      assert r['file_name'].decode() == f'ODIR-5K/Training Images/{row[3 + eye]}'
      assert r['keywords'].decode() == row[5 + eye]
      assert int(r['patient_age']) == row[1] and int(r['patient_sex']) == (row[2] == 'Male')
    # Stratified: each label pattern gets its share in every split.
    counts = np.sum([r['label'] for r in recs], 0)
    assert counts[:4].tolist() == [len(recs) // 4] * 4, (split, counts)
  # Original JPEG bytes are stored unchanged.
  r = records['train'][0]
  np.testing.assert_array_equal(r['image'], np.asarray(Image.open(manual / r['file_name'].decode())))


def test_dummy_build_kaggle_csv_resized(tmp_path):
  manual = dummy_data.write(tmp_path / 'manual', nesting='ODIR-5K/ODIR-5K', table='csv')
  b = bt.build('odir5k', '512', manual, tmp_path / 'tfds')
  records = bt.check_dataset(b, splits={'train': 56, 'validation': 8, 'test': 16}, read_limit=4)
  assert records['test'][0]['image'].shape == (512, 512, 3)
  assert records['test'][0]['file_name'].startswith(b'ODIR-5K/ODIR-5K/Training Images/')
  # The split depends only on IDs, labels and seed: the same as from the xlsx layout.
  other = bt.build('odir5k', '512', dummy_data.write(tmp_path / 'm2'), tmp_path / 'tfds2')
  for split in ('train', 'validation', 'test'):
    a, c = b.as_data_source(split=split), other.as_data_source(split=split)
    assert [a[i]['patient_id'] for i in range(len(a))] == [c[i]['patient_id'] for i in range(len(c))]


def test_bad_inputs(tmp_path):
  manual = dummy_data.write(tmp_path / 'm1')
  (manual / 'ODIR-5K/Training Images/17_right.jpg').unlink()
  bt.check_fails('odir5k', '512', manual, tmp_path / 't1', match=r'missing .*Training Images/17_right.jpg')

  manual = dummy_data.write(tmp_path / 'm2', table='csv')
  path = manual / 'ODIR-5K/data.csv'
  path.write_text(path.read_text().replace(',M,O', ',Myopia,O'))
  bt.check_fails('odir5k', '512', manual, tmp_path / 't2', match=r"data.csv lacks column\(s\) \['M'\]")

  manual = dummy_data.write(tmp_path / 'm3', table='csv')
  path = manual / 'ODIR-5K/data.csv'
  lines = path.read_text().splitlines()
  lines[6] = lines[6][:-1] + '2'  # Patient 5's O column.
  path.write_text('\n'.join(lines) + '\n')
  bt.check_fails('odir5k', '512', manual, tmp_path / 't3',
                 match=r"data.csv, patient ID 5: column 'O' is '2'; valid values are 0 and 1")

  manual = dummy_data.write(tmp_path / 'm4')
  bt.corrupt(manual / 'ODIR-5K/Training Images/3_left.jpg')
  bt.check_fails('odir5k', 'original', manual, tmp_path / 't4', match=r'Could not read the image .*3_left.jpg')

  wrong = tmp_path / 'wrong'
  (wrong / 'ODIR-5K/Training Images').mkdir(parents=True)
  bt.check_fails('odir5k', '512', wrong, tmp_path / 't5', match=r"none of .*ODIR-5K/data.xlsx")
