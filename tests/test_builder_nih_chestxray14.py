"""NIH ChestX-ray14 builder: dummy full and NIH1000 layouts, bad inputs, and the real NIH1000 subset."""
import csv

import numpy as np
from PIL import Image

import builder_testing as bt
from tfds_builders.nih_chestxray14 import FINDINGS, dummy_data


def _rows(manual):
  with open(manual / 'Data_Entry_2017.csv', newline='') as f:
    return {r['Image Index']: r for r in csv.DictReader(f)}


def test_dummy_build_256(tmp_path):
  manual = dummy_data.write(tmp_path / 'manual', kaggle_layout=True)
  b = bt.build('nih_chestxray14', '256', manual, tmp_path / 'tfds')
  # 15 train_val patients x 2 images split 90/10 by patient; 5 test patients x 2.
  records = bt.check_dataset(b, splits={'train': 26, 'validation': 4, 'test': 10})
  rows = _rows(manual)
  for split, recs in records.items():
    names = [r['file_name'].decode().split('/')[-1] for r in recs]
    assert names == sorted(names)
    for r, name in zip(recs, names):
      row = rows[name]
      want = np.zeros(14, np.int64)
      for f in row['Finding Labels'].split('|'):
        if f != 'No Finding':
          want[FINDINGS.index(f)] = 1
      np.testing.assert_array_equal(r['label'], want)
      assert r['patient_id'].decode() == name[:8] and int(r['patient_id']) == int(row['Patient ID'])
      assert r['view_position'].decode() == row['View Position'] and r['patient_age'] == int(row['Patient Age'])
      assert r['image'].shape == (256, 256, 1)
  assert records['test'][0]['file_name'] == b'images_001/images/00000016_000.png'


def test_dummy_build_original_flat_layout(tmp_path):
  manual = dummy_data.write(tmp_path / 'manual', kaggle_layout=False)
  b = bt.build('nih_chestxray14', 'original', manual, tmp_path / 'tfds')
  records = bt.check_dataset(b, splits={'train': 26, 'validation': 4, 'test': 10})
  for r in records['test'][:2]:  # One 'L' file (bytes kept) and one RGBA file (converted to L).
    want = np.asarray(Image.open(manual / r['file_name'].decode()).convert('L'))
    np.testing.assert_array_equal(r['image'][..., 0], want)


def test_dummy_build_subset(tmp_path):
  manual = dummy_data.write_subset(tmp_path / 'manual')
  b = bt.build('nih_chestxray14', 'subset1000', manual, tmp_path / 'tfds')
  # The dummy subset shares patients across its folders (like the real one), so no patient check here.
  got = {s: b.info.splits[s].num_examples for s in b.info.splits.keys()}
  assert got == {'train': 12, 'validation': 4, 'test': 4}
  src = b.as_data_source(split='validation')
  r = src[0]
  assert r['id'] == 0 and r['file_name'].decode().startswith('NIH1000/valid/') and r['image'].shape == (16, 16, 1)
  want = np.asarray(Image.open(manual / r['file_name'].decode()).convert('L'))
  np.testing.assert_array_equal(r['image'][..., 0], want)
  assert r['label'] == (1 if '1_abnormal' in r['file_name'].decode() else 0)
  b2 = bt.build('nih_chestxray14', 'subset1000_patient_split', manual, tmp_path / 'tfds')
  sizes = {s: b2.info.splits[s].num_examples for s in b2.info.splits.keys()}
  assert sum(sizes.values()) == 20 and set(sizes) == {'train', 'validation', 'test'}
  records = bt.check_dataset(b2, splits=sizes)  # Also asserts that no patient is on two sides.
  assert all(r['label'] == ('1_abnormal' in r['file_name'].decode()) for rs in records.values() for r in rs)


def test_bad_inputs(tmp_path):
  manual = dummy_data.write(tmp_path / 'm1')
  (manual / 'test_list.txt').unlink()
  bt.check_fails('nih_chestxray14', '256', manual, tmp_path / 't1', match=r'missing .*test_list.txt')
  manual = dummy_data.write(tmp_path / 'm2')
  text = (manual / 'Data_Entry_2017.csv').read_text().replace('Patient ID', 'PatientID')
  (manual / 'Data_Entry_2017.csv').write_text(text)
  bt.check_fails('nih_chestxray14', '256', manual, tmp_path / 't2', match=r"Data_Entry_2017.csv lacks .*Patient ID")
  manual = dummy_data.write(tmp_path / 'm3')
  rows = (manual / 'Data_Entry_2017.csv').read_text().splitlines()
  rows[4] = rows[4].replace(rows[4].split(',')[1], 'Pneumonitis', 1)
  (manual / 'Data_Entry_2017.csv').write_text('\n'.join(rows) + '\n')
  bt.check_fails('nih_chestxray14', '256', manual, tmp_path / 't3',
                 match=r"Data_Entry_2017.csv line 5 \(Image Index 00000002_001.png\): unknown .*'Pneumonitis'")
  manual = dummy_data.write(tmp_path / 'm4')
  (manual / 'images_002/images/00000017_001.png').unlink()
  bt.check_fails('nih_chestxray14', '256', manual, tmp_path / 't4', match=r'test_list.txt are not in .*00000017_001')
  manual = dummy_data.write(tmp_path / 'm5')
  bt.corrupt(manual / 'images_001/images/00000003_000.png')
  bt.check_fails('nih_chestxray14', '256', manual, tmp_path / 't5',
                 match=r'Could not read the image .*00000003_000.png')
  manual = dummy_data.write_subset(tmp_path / 'm6')
  (manual / 'NIH1000/test/2_other').mkdir()
  bt.check_fails('nih_chestxray14', 'subset1000', manual, tmp_path / 't6', match=r"unknown class folder.*2_other")
  manual = dummy_data.write_subset(tmp_path / 'm7')
  for p in (manual / 'NIH1000/valid/1_abnormal').iterdir():
    p.unlink()
  bt.check_fails('nih_chestxray14', 'subset1000', manual, tmp_path / 't7', match=r'valid/1_abnormal')


def test_real_subset(tmp_path):
  root = bt.shared_dir('nih_cxr14_1000_64px')
  b = bt.build('nih_chestxray14', 'subset1000', root, tmp_path / 'tfds')
  sizes = {'train': 600, 'validation': 200, 'test': 200}
  assert {s: b.info.splits[s].num_examples for s in b.info.splits.keys()} == sizes
  patients = {}
  for split, n in sizes.items():
    src = b.as_data_source(split=split)
    recs = [src[i] for i in range(n)]
    assert np.bincount([int(r['label']) for r in recs]).tolist() == [n // 2, n // 2]
    assert recs[0]['image'].shape == (64, 64, 1)
    patients[split] = {r['patient_id'] for r in recs}
  # PROVENANCE.md: 165 / 71 / 59 patients; shared train-valid 15, train-test 8, valid-test 9.
  assert [len(patients[s]) for s in sizes] == [165, 71, 59]
  assert len(patients['train'] & patients['validation']) == 15
  assert len(patients['train'] & patients['test']) == 8
  assert len(patients['validation'] & patients['test']) == 9
  b2 = bt.build('nih_chestxray14', 'subset1000_patient_split', root, tmp_path / 'tfds')
  sizes2 = {s: b2.info.splits[s].num_examples for s in b2.info.splits.keys()}
  assert sum(sizes2.values()) == 1000 and set(sizes2) == set(sizes)
  # Deterministic (seed 0), close to 60/20/20 at patient granularity.
  records = bt.check_dataset(b2, splits={'train': 619, 'validation': 182, 'test': 199},
                             label_counts={'train': [315, 304], 'validation': [94, 88], 'test': [91, 108]})
  total = np.bincount([int(r['label']) for rs in records.values() for r in rs]).tolist()
  assert total == [500, 500]
