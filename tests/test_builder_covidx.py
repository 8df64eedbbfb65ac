"""COVIDx builder: dummy CXR-4 (official val) and CXR-2/3 (seeded validation) layouts, bad inputs."""
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

import builder_testing as bt
from tfds_builders.covidx import dummy_data

# Dummy CXR-4: train 20 patients / 30 images (10 positive), val 4 / 6 (2), test 5 / 7 (3).
_CXR4 = {'train': 30, 'validation': 6, 'test': 7}
_CXR4_COUNTS = {'train': [20, 10], 'validation': [4, 2], 'test': [4, 3]}


def _lines(path):
  return [line.split(' ') for line in path.read_text().splitlines()]


def test_dummy_build_cxr4_256(tmp_path):
  manual = dummy_data.write(tmp_path / 'manual')
  b = bt.build('covidx', '256', manual, tmp_path / 'tfds')
  records = bt.check_dataset(b, splits=_CXR4, label_counts=_CXR4_COUNTS)
  for split, folder in (('train', 'train'), ('validation', 'val'), ('test', 'test')):
    lines = _lines(manual / f'{folder}.txt')
    assert len(lines) == len(records[split])
    for r, parts in zip(records[split], lines):  # Official list order.
      patient, cls, source = parts[0], parts[-2], parts[-1]
      assert r['file_name'].decode() == f'{folder}/' + ' '.join(parts[1:-2])
      assert r['patient_id'].decode() == patient and r['data_source'].decode() == source
      assert r['label'] == ('negative', 'positive').index(cls) and r['image'].shape == (256, 256, 1)
  assert records['train'][0]['file_name'] == b'train/case (1).png'


def test_dummy_build_original_keeps_grayscale_png(tmp_path):
  manual = dummy_data.write(tmp_path / 'manual')
  b = bt.build('covidx', 'original', manual, tmp_path / 'tfds')
  records = bt.check_dataset(b, splits=_CXR4, label_counts=_CXR4_COUNTS)
  raw = b.as_data_source(split='test', decoders={'image': tfds.decode.SkipDecoding()})
  kinds = set()
  for i, r in enumerate(records['test']):
    path = manual / r['file_name'].decode()
    with Image.open(path) as im:
      mode, fmt, pixels = im.mode, im.format, np.asarray(im.convert('L'))
    np.testing.assert_array_equal(r['image'][..., 0], pixels)  # RGB -> L; JPEG decoded losslessly to PNG.
    assert (raw[i]['image'] == path.read_bytes()) == (mode == 'L' and fmt == 'PNG')
    kinds.add((mode, fmt))
  assert kinds == {('L', 'PNG'), ('RGB', 'PNG'), ('L', 'JPEG')}


def test_dummy_build_cxr2_seeded_validation(tmp_path):
  manual = dummy_data.write(tmp_path / 'manual', release='cxr2')
  b = bt.build('covidx', '256', manual, tmp_path / 'tfds')
  # 10% of train.txt's patients (stratified by class, seed 0): patients 1006 and 1007 (3 images).
  records = bt.check_dataset(b, splits={'train': 27, 'validation': 3, 'test': 7},
                             label_counts={'train': [18, 9], 'validation': [2, 1], 'test': [4, 3]})
  assert {r['patient_id'] for r in records['validation']} == {b'1006', b'1007'}
  order = [r['file_name'].decode().split('/', 1)[1] for r in records['train']]
  listed = [' '.join(p[1:-2]) for p in _lines(manual / 'train.txt')]
  assert order == [n for n in listed if n in set(order)]  # Still in list order.


def test_bad_inputs(tmp_path):
  manual = dummy_data.write(tmp_path / 'm1')
  (manual / 'test.txt').unlink()
  bt.check_fails('covidx', None, manual, tmp_path / 't1', match=r'missing .*test\.txt')

  manual = dummy_data.write(tmp_path / 'm2')
  lines = (manual / 'val.txt').read_text().splitlines()
  lines[2] = lines[2].replace(' negative ', ' COVID-19 ').replace(' positive ', ' COVID-19 ')
  (manual / 'val.txt').write_text('\n'.join(lines) + '\n')
  bt.check_fails('covidx', None, manual, tmp_path / 't2',
                 match=r"val\.txt line 3: unknown class 'COVID-19'; valid classes are \['negative', 'positive'\]")

  manual = dummy_data.write(tmp_path / 'm3')
  (manual / 'train.txt').write_text((manual / 'train.txt').read_text() + '1099 only-two-fields\n')
  bt.check_fails('covidx', None, manual, tmp_path / 't3', match=r'train\.txt line 31: expected "patient_id filename')

  manual = dummy_data.write(tmp_path / 'm4')
  (manual / 'test/cohen-0024-0.png').unlink()
  bt.check_fails('covidx', None, manual, tmp_path / 't4', match=r'1 of 43 images .*test/cohen-0024-0\.png')

  manual = dummy_data.write(tmp_path / 'm5')
  bt.corrupt(manual / 'val/rsna-0020-0.png')
  bt.check_fails('covidx', 'original', manual, tmp_path / 't5',
                 match=r'Could not read the image .*val/rsna-0020-0\.png')
