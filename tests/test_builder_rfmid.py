"""RFMiD builder: dummy data in the official layout (and the Kaggle nesting), and bad inputs."""
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

import builder_testing as bt
from tfds_builders.rfmid import LABELS, dummy_data

_SPLITS = {'train': 6, 'validation': 3, 'test': 4}


def test_dummy_build_original(tmp_path):
  manual = dummy_data.write(tmp_path / 'manual')
  b = bt.build('rfmid', 'original', manual, tmp_path / 'tfds')
  assert len(LABELS) == 45 and b.info.features['label'].shape == (45,)
  records = bt.check_dataset(b, splits=_SPLITS)
  folders = {'train': 'Training_Set/Training', 'validation': 'Evaluation_Set/Validation', 'test': 'Test_Set/Test'}
  for split, recs in records.items():
    for r, (key, risk, label) in zip(recs, dummy_data.labels(split)):
      assert r['file_name'].decode() == f'{folders[split]}/{key}.png'
      assert r['label'].tolist() == label and int(r['disease_risk']) == risk and r['patient_id'] == b''
  # Original PNG bytes are stored unchanged.
  raw = b.as_data_source(split='validation', decoders={'image': tfds.decode.SkipDecoding()})[1]
  assert raw['image'] == (manual / 'Evaluation_Set/Validation/2.png').read_bytes()
  np.testing.assert_array_equal(records['test'][0]['image'], np.asarray(Image.open(manual / 'Test_Set/Test/1.png')))


def test_dummy_build_resized_kaggle(tmp_path):
  manual = dummy_data.write(tmp_path / 'manual', kaggle=True)
  b = bt.build('rfmid', '512', manual, tmp_path / 'tfds')
  records = bt.check_dataset(b, splits=_SPLITS)
  assert records['train'][0]['image'].shape == (512, 512, 3)
  assert records['train'][0]['file_name'] == b'Training_Set/Training_Set/Training/1.png'


def test_bad_inputs(tmp_path):
  manual = dummy_data.write(tmp_path / 'm1')
  (manual / 'Test_Set/Test/3.png').unlink()
  bt.check_fails('rfmid', '512', manual, tmp_path / 't1', match=r'missing .*Test_Set/Test/3.png')

  manual = dummy_data.write(tmp_path / 'm2')
  path = manual / 'Evaluation_Set/RFMiD_Validation_Labels.csv'
  path.write_text(path.read_text().replace(',ODPM,', ',ODP2,'))
  bt.check_fails('rfmid', '512', manual, tmp_path / 't2', match=r"RFMiD_Validation_Labels.csv lacks column\(s\) \['ODPM'\]")

  manual = dummy_data.write(tmp_path / 'm3')
  path = manual / 'Training_Set/RFMiD_Training_Labels.csv'
  lines = path.read_text().splitlines()
  lines[0] += ',NEW'
  lines[1:] = [line + ',0' for line in lines[1:]]
  path.write_text('\n'.join(lines) + '\n')
  bt.check_fails('rfmid', '512', manual, tmp_path / 't3', match=r"RFMiD_Training_Labels.csv has columns .*expected exactly")

  manual = dummy_data.write(tmp_path / 'm4')
  path = manual / 'Training_Set/RFMiD_Training_Labels.csv'
  lines = path.read_text().splitlines()
  lines[2] = lines[2][:-1] + '3'  # ID 2's CL column.
  path.write_text('\n'.join(lines) + '\n')
  bt.check_fails('rfmid', '512', manual, tmp_path / 't4',
                 match=r"RFMiD_Training_Labels.csv, ID 2: column 'CL' is '3'; valid values are 0 and 1")

  manual = dummy_data.write(tmp_path / 'm5')
  bt.corrupt(manual / 'Training_Set/Training/5.png')
  bt.check_fails('rfmid', 'original', manual, tmp_path / 't5', match=r'Could not read the image .*Training/5.png')

  manual = dummy_data.write(tmp_path / 'm6')
  (manual / 'Evaluation_Set').rename(manual / 'Validation_Set')
  bt.check_fails('rfmid', '512', manual, tmp_path / 't6', match=r"none of \['Evaluation_Set/Validation'")
