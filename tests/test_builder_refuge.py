"""REFUGE builder: dummy data in the official layout (plain, nested, csv tables), bad inputs."""
import shutil

import numpy as np
from PIL import Image

import builder_testing as bt
from tfds_builders.refuge import dummy_data


def test_dummy_build_original(tmp_path):
  manual = dummy_data.write(tmp_path / 'manual')
  b = bt.build('refuge', 'original', manual, tmp_path / 'tfds')
  records = bt.check_dataset(b, splits={'train': 5, 'validation': 6, 'test': 4}, mask_values={0, 1, 2},
                             label_counts={'train': [3, 2], 'validation': [4, 2], 'test': [3, 1]})
  train = records['train']
  assert [r['file_name'] for r in train] == [b'Training400/Glaucoma/g0001.jpg', b'Training400/Glaucoma/g0002.jpg',
                                             b'Training400/Non-Glaucoma/n0001.jpg',
                                             b'Training400/Non-Glaucoma/n0002.jpg',
                                             b'Training400/Non-Glaucoma/n0003.jpg']
  assert [int(r['label']) for r in train] == [1, 1, 0, 0, 0]
  # Original JPEG stored unchanged; mask 255/128/0 -> 0/1/2.
  np.testing.assert_array_equal(train[0]['image'], np.asarray(Image.open(manual / 'Training400/Glaucoma/g0001.jpg')))
  official = np.asarray(Image.open(manual / 'Annotation-Training400/Disc_Cup_Masks/Glaucoma/g0001.bmp'))
  np.testing.assert_array_equal(train[0]['mask'][..., 0], np.select([official == 255, official == 128], [0, 1], 2))
  for split in ('validation', 'test'):
    want = dummy_data.labels(manual, split)
    got = {r['file_name'].decode().rsplit('/', 1)[1]: int(r['label']) for r in records[split]}
    assert got == want
  assert records['test'][0]['file_name'] == b'REFUGE-Test400/Test400/T0001.jpg'
  assert records['validation'][0]['file_name'] == b'REFUGE-Validation400/V0001.jpg'
  assert set(np.unique(records['test'][2]['mask']).tolist()) == {0, 1, 2}


def test_dummy_build_resized_nested_csv(tmp_path):
  manual = dummy_data.write(tmp_path / 'manual', nested=True, csv_tables=True)
  b = bt.build('refuge', '512', manual, tmp_path / 'tfds')
  records = bt.check_dataset(b, splits={'train': 5, 'validation': 6, 'test': 4}, mask_values={0, 1, 2},
                             label_counts={'train': [3, 2], 'validation': [4, 2], 'test': [3, 1]})
  r = records['validation'][1]
  assert r['file_name'] == b'REFUGE-Validation400/REFUGE-Validation400/V0002.jpg'
  assert r['image'].shape == (512, 512, 3) and r['mask'].shape == (512, 512, 1)
  assert set(np.unique(r['mask']).tolist()) == {0, 1, 2}  # Cup and rim survive the crop and resize.
  got = {x['file_name'].decode().rsplit('/', 1)[1]: int(x['label']) for x in records['validation']}
  assert got == dummy_data.labels(manual, 'validation', csv_tables=True)


def test_bad_inputs(tmp_path):
  manual = dummy_data.write(tmp_path / 'm1')
  for p in (manual / 'REFUGE-Test-GT').rglob('*'):
    if p.is_file():
      p.unlink()
  bt.check_fails('refuge', None, manual, tmp_path / 't1', match=r'no label table in .*REFUGE-Test-GT')
  manual = dummy_data.write(tmp_path / 'm1b')
  shutil.rmtree(manual / 'REFUGE-Validation400-GT')
  bt.check_fails('refuge', None, manual, tmp_path / 't1b', match=r'none of .*REFUGE-Validation400-GT')
  manual = dummy_data.write(tmp_path / 'm2')
  (manual / 'Annotation-Training400/Disc_Cup_Masks/Non-Glaucoma/n0002.bmp').unlink()
  bt.check_fails('refuge', None, manual, tmp_path / 't2', match=r'missing .*Non-Glaucoma/n0002.bmp')
  manual = dummy_data.write(tmp_path / 'm3', csv_tables=True)
  table = manual / 'REFUGE-Validation400-GT/Fovea_locations.csv'
  table.write_text(table.read_text().replace('Glaucoma Label', 'Glaucoma'))
  bt.check_fails('refuge', None, manual, tmp_path / 't3', error=ValueError,
                 match=r"Fovea_locations.csv needs the columns 'ImgName' and one of")
  manual = dummy_data.write(tmp_path / 'm4', csv_tables=True)
  table = manual / 'REFUGE-Test-GT/Glaucoma_label_and_Fovea_location.csv'
  lines = table.read_text().splitlines()
  cells = lines[3].split(',')
  cells[2] = '2'
  lines[3] = ','.join(cells)
  table.write_text('\n'.join(lines) + '\n')
  bt.check_fails('refuge', None, manual, tmp_path / 't4', error=ValueError,
                 match=r'Glaucoma_label_and_Fovea_location.csv row 4 \(T0003.jpg\).*valid values are 0')
  manual = dummy_data.write(tmp_path / 'm5')
  bt.corrupt(manual / 'REFUGE-Validation400/V0005.jpg')
  bt.check_fails('refuge', None, manual, tmp_path / 't5', match=r'Could not read the image .*V0005.jpg')
  manual = dummy_data.write(tmp_path / 'm6')
  (manual / 'REFUGE-Test-GT/Disc_Cup_Masks/N').rename(manual / 'REFUGE-Test-GT/elsewhere')
  bt.check_fails('refuge', None, manual, tmp_path / 't6', match=r'missing disc/cup mask\(s\) .*T000\d.bmp')
