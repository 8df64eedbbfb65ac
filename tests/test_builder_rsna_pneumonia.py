"""RSNA Pneumonia builder: dummy DICOM layout (boxes, MONOCHROME1, 16-bit) and bad inputs."""
import csv

import numpy as np
import pydicom

import builder_testing as bt
from tfds_builders.rsna_pneumonia import dummy_data

_SPLITS = {'train': 24, 'validation': 3, 'test': 3}
_COUNTS = {'train': [8, 8, 8], 'validation': [1, 1, 1], 'test': [1, 1, 1]}


def _csv_boxes(manual):
  boxes = {}
  with open(manual / 'stage_2_train_labels.csv', newline='') as f:
    for r in csv.DictReader(f):
      boxes.setdefault(r['patientId'], [])
      if r['Target'] == '1':
        boxes[r['patientId']].append([float(r[k]) for k in ('x', 'y', 'width', 'height')])
  return boxes


def _all(records):
  return {r['patient_id'].decode(): r for recs in records.values() for r in recs}


def test_dummy_build_original(tmp_path):
  manual = dummy_data.write(tmp_path / 'manual')
  b = bt.build('rsna_pneumonia', 'original', manual, tmp_path / 'tfds')
  records = bt.check_dataset(b, splits=_SPLITS, label_counts=_COUNTS)
  boxes = _csv_boxes(manual)
  by_id = _all(records)
  assert sorted(by_id) == sorted(boxes)
  for pid, r in by_id.items():
    assert r['file_name'].decode() == f'stage_2_train_images/{pid}.dcm'
    assert r['target'] == (r['label'] == 2) == bool(boxes[pid])
    np.testing.assert_allclose(np.asarray(r['boxes']).reshape(-1, 4), np.asarray(boxes[pid]).reshape(-1, 4))
    assert r['image'].shape == (24, 32, 1)
  pids = sorted(boxes)
  # 8-bit MONOCHROME2 pixels are stored unchanged; MONOCHROME1 is inverted; 16-bit is scaled by its range.
  raw = {p: pydicom.dcmread(manual / f'stage_2_train_images/{p}.dcm').pixel_array for p in pids[:3]}
  np.testing.assert_array_equal(by_id[pids[2]]['image'][..., 0], raw[pids[2]])
  np.testing.assert_array_equal(by_id[pids[1]]['image'][..., 0], 255 - raw[pids[1]])
  a = raw[pids[0]].astype(float)
  want = np.round((a - a.min()) * 255 / (a.max() - a.min())).astype(np.uint8)
  np.testing.assert_array_equal(by_id[pids[0]]['image'][..., 0], want)
  assert by_id[pids[1]]['view_position'] == b'AP' and by_id[pids[1]]['patient_age'] == 21


def test_dummy_build_256_rescales_boxes(tmp_path):
  manual = dummy_data.write(tmp_path / 'manual')
  b = bt.build('rsna_pneumonia', '256', manual, tmp_path / 'tfds')
  records = bt.check_dataset(b, splits=_SPLITS, label_counts=_COUNTS)
  boxes = _csv_boxes(manual)
  for pid, r in _all(records).items():
    assert r['image'].shape == (256, 256, 1)
    # 32x24 padded to 32x32 (4 rows on top), then scaled by 256/32 = 8.
    want = (np.asarray(boxes[pid]).reshape(-1, 4) + [0, 4, 0, 0]) * 8
    np.testing.assert_allclose(np.asarray(r['boxes']).reshape(-1, 4), want)


def test_bad_inputs(tmp_path):
  manual = dummy_data.write(tmp_path / 'm1')
  (manual / 'stage_2_detailed_class_info.csv').unlink()
  bt.check_fails('rsna_pneumonia', '256', manual, tmp_path / 't1', match=r'missing .*stage_2_detailed_class_info.csv')
  manual = dummy_data.write(tmp_path / 'm2')
  pid = sorted(p.stem for p in (manual / 'stage_2_train_images').iterdir())[5]
  (manual / f'stage_2_train_images/{pid}.dcm').unlink()
  bt.check_fails('rsna_pneumonia', '256', manual, tmp_path / 't2', match=rf'missing from .*{pid}.dcm')
  manual = dummy_data.write(tmp_path / 'm3')
  text = (manual / 'stage_2_train_labels.csv').read_text().replace('Target', 'target')
  (manual / 'stage_2_train_labels.csv').write_text(text)
  bt.check_fails('rsna_pneumonia', '256', manual, tmp_path / 't3', match=r"stage_2_train_labels.csv lacks .*Target")
  manual = dummy_data.write(tmp_path / 'm4')
  lines = (manual / 'stage_2_detailed_class_info.csv').read_text().splitlines()
  lines[3] = lines[3].split(',')[0] + ',Pneumonia'
  (manual / 'stage_2_detailed_class_info.csv').write_text('\n'.join(lines) + '\n')
  bt.check_fails('rsna_pneumonia', '256', manual, tmp_path / 't4',
                 match=rf"line 4 \(patientId {lines[3].split(',')[0]}\): unknown class 'Pneumonia'")
  manual = dummy_data.write(tmp_path / 'm5')
  bt.corrupt(manual / f'stage_2_train_images/{pid}.dcm')
  bt.check_fails('rsna_pneumonia', '256', manual, tmp_path / 't5', match=rf'Could not read the image .*{pid}.dcm')
