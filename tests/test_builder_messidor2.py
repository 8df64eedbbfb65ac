"""Messidor-2 builder: dummy data in the ADCIS + Kaggle layout, with and without the pairing file, bad inputs."""
import csv

import numpy as np
from PIL import Image

import builder_testing as bt
from tfds_builders.messidor2 import dummy_data

_SPLITS = {'train': 70, 'validation': 10, 'test': 20}  # 50 gradable exams: 35/5/10 exams of 2 eyes.


def _rows(manual):
  with open(manual / 'messidor_data.csv', newline='') as f:
    return {r['image_id'].lower(): r for r in csv.DictReader(f)}


def test_dummy_build_original_with_pairs(tmp_path):
  manual = dummy_data.write(tmp_path / 'manual')
  b = bt.build('messidor2', 'original', manual, tmp_path / 'tfds')
  records = bt.check_dataset(b, splits=_SPLITS, label_counts={'train': [12, 14, 14, 13, 17],
                                                              'validation': [1, 3, 2, 2, 2],
                                                              'test': [4, 3, 4, 5, 4]})
  rows = _rows(manual)
  pairs = [l.split(';') for l in (manual / 'messidor-2.csv').read_text().splitlines()[1:]]
  exam_of = {name: f'{i + 1:03d}' for i, pair in enumerate(pairs) for name in pair}
  seen = []
  for recs in records.values():
    assert [r['file_name'] for r in recs] == sorted(r['file_name'] for r in recs)  # Image-name order.
    for r in recs:
      name = r['file_name'].decode()[len('IMAGES/'):]
      row = rows[name.lower()]
      assert (r['label'], r['dme']) == (int(row['adjudicated_dr_grade']), int(row['adjudicated_dme']))
      assert r['patient_id'].decode() == exam_of[name]
      seen.append(name)
  assert len(seen) == 100 and not {'IM009990.JPG', 'IM009991.JPG'} & set(seen)  # Ungradable exam dropped.
  # Both eyes of every exam are in the build; the harness checked no exam straddles two splits.
  assert sorted(seen) == sorted(n for p in pairs[:-1] for n in p)
  # Originals are stored unchanged: the PNG and the (mixed-case) JPEG files decode to the same pixels.
  by_name = {r['file_name'].decode(): r for recs in records.values() for r in recs}
  for name in ('IMAGES/20050001_10002_0100_PP.png', 'IMAGES/IM000004.JPG'):
    np.testing.assert_array_equal(by_name[name]['image'], np.asarray(Image.open(manual / name)))


def test_dummy_build_resized_without_pairs(tmp_path):
  manual = dummy_data.write(tmp_path / 'manual', pairing=False)
  b = bt.build('messidor2', '512', manual, tmp_path / 'tfds')
  records = bt.check_dataset(b, splits=_SPLITS, label_counts={'train': [12, 14, 14, 14, 16],
                                                              'validation': [2, 2, 2, 2, 2],
                                                              'test': [3, 4, 4, 4, 5]})
  assert all(r['patient_id'] == b'' for recs in records.values() for r in recs)
  assert records['test'][0]['image'].shape == (512, 512, 3)


def test_bad_inputs(tmp_path):
  manual = dummy_data.write(tmp_path / 'm1')
  (manual / 'IMAGES/IM000008.JPG').unlink()
  bt.check_fails('messidor2', 'original', manual, tmp_path / 't1', match=r"missing from .*IMAGES.*'IM000008\.jpg'")
  manual = dummy_data.write(tmp_path / 'm2')
  text = (manual / 'messidor_data.csv').read_text().replace('adjudicated_dme', 'dme')
  (manual / 'messidor_data.csv').write_text(text)
  bt.check_fails('messidor2', 'original', manual, tmp_path / 't2', match=r"messidor_data\.csv lacks column.*adjudicated_dme")
  manual = dummy_data.write(tmp_path / 'm3')
  bt.corrupt(manual / 'IMAGES/20050003_10006_0100_PP.png')
  bt.check_fails('messidor2', '512', manual, tmp_path / 't3', match=r'Could not read the image .*20050003_10006_0100_PP\.png')
  manual = dummy_data.write(tmp_path / 'm4')
  lines = (manual / 'messidor_data.csv').read_text().splitlines()
  name = lines[5].split(',')[0]
  lines[5] = f'{name},7,0,1'
  (manual / 'messidor_data.csv').write_text('\n'.join(lines) + '\n')
  bt.check_fails('messidor2', 'original', manual, tmp_path / 't4',
                 match=rf"messidor_data\.csv: image '{name}' has adjudicated_dr_grade '7'; valid values are \[0, 1, 2, 3, 4\]")
  manual = dummy_data.write(tmp_path / 'm5')
  with open(manual / 'messidor-2.csv', 'a') as f:
    f.write('IM000004.JPG;IM009999.JPG\n')
  bt.check_fails('messidor2', 'original', manual, tmp_path / 't5', match=r"messidor-2\.csv: image 'IM000004\.JPG' is listed in two")
  manual = dummy_data.write(tmp_path / 'm6')
  (manual / 'messidor_data.csv').unlink()
  bt.check_fails('messidor2', 'original', manual, tmp_path / 't6', match=r"none of \['messidor_data\.csv'")
