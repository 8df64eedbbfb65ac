"""IDRiD builder: dummy data in the official layout (grading and segmentation), and bad inputs."""
import numpy as np
from PIL import Image

import builder_testing as bt
from tfds_builders.idrid import LESIONS, dummy_data

_TRAIN = 'B. Disease Grading/1. Original Images/a. Training Set'
_SEG_GT = 'A. Segmentation/2. All Segmentation Groundtruths'


def test_dummy_grading_original(tmp_path):
  manual = dummy_data.write(tmp_path / 'manual', parts=('grading',))
  b = bt.build('idrid', 'grading_original', manual, tmp_path / 'tfds')
  want = {s: np.bincount([g for _, g, _ in dummy_data.grading_labels(s)], minlength=5).tolist()
          for s in ('train', 'test')}
  records = bt.check_dataset(b, splits={'train': 7, 'test': 4}, label_counts=want)
  for split, folder in (('train', 'a. Training Set'), ('test', 'b. Testing Set')):
    for r, (name, grade, dme) in zip(records[split], dummy_data.grading_labels(split)):
      assert r['file_name'].decode() == f'B. Disease Grading/1. Original Images/{folder}/{name}.jpg'
      assert (int(r['label']), int(r['dme_risk']), r['patient_id']) == (grade, dme, b'')
  # Original JPEG bytes are stored unchanged.
  first = records['train'][0]
  np.testing.assert_array_equal(first['image'], np.asarray(Image.open(manual / _TRAIN / 'IDRiD_001.jpg')))


def test_dummy_grading_resized_nested(tmp_path):
  manual = dummy_data.write(tmp_path / 'manual', parts=('grading',), prefix='IDRiD')
  b = bt.build('idrid', 'grading_512', manual, tmp_path / 'tfds')
  records = bt.check_dataset(b, splits={'train': 7, 'test': 4})
  assert records['test'][0]['image'].shape == (512, 512, 3)
  assert records['test'][0]['file_name'].startswith(b'IDRiD/B. Disease Grading/')


def test_dummy_segmentation(tmp_path):
  manual = dummy_data.write(tmp_path / 'manual', parts=('segmentation',))
  b = bt.build('idrid', 'segmentation_original', manual, tmp_path / 'tfds')
  records = bt.check_dataset(b, splits={'train': 3, 'test': 2})
  assert [r['file_name'].decode().rsplit('/', 1)[1] for r in records['test']] == ['IDRiD_04.jpg', 'IDRiD_05.jpg']
  for split, folder in (('train', 'a. Training Set'), ('test', 'b. Testing Set')):
    for i, r in enumerate(records[split]):
      stem = r['file_name'].decode().rsplit('/', 1)[1][:-4]
      for key, lesion_folder, abbr in LESIONS:
        missing = key in dummy_data.MISSING.get((split, i), ())
        assert bool(r[f'has_{key}']) == (not missing)
        mask = r[f'mask_{key}'][..., 0]
        if missing:
          assert not mask.any()
        else:  # Red-channel lesions become 1.
          red = np.asarray(Image.open(manual / _SEG_GT / folder / lesion_folder / f'{stem}_{abbr}.tif'))[..., 0]
          np.testing.assert_array_equal(mask, (red > 0).astype(np.uint8))
  b = bt.build('idrid', 'segmentation_512', manual, tmp_path / 'tfds512')
  records = bt.check_dataset(b, splits={'train': 3, 'test': 2})
  r = records['train'][0]
  assert r['image'].shape == (512, 512, 3) and r['mask_optic_disc'].shape == (512, 512, 1)
  assert r['mask_optic_disc'].any()


def test_bad_inputs(tmp_path):
  manual = dummy_data.write(tmp_path / 'm1', parts=('grading',))
  (manual / _TRAIN / 'IDRiD_004.jpg').unlink()
  bt.check_fails('idrid', 'grading_512', manual, tmp_path / 't1', match=r'missing .*a. Training Set/IDRiD_004.jpg')

  manual = dummy_data.write(tmp_path / 'm2', parts=('grading',))
  csv_path = manual / 'B. Disease Grading/2. Groundtruths/b. IDRiD_Disease Grading_Testing Labels.csv'
  csv_path.write_text(csv_path.read_text().replace('Retinopathy grade', 'DR grade'))
  bt.check_fails('idrid', 'grading_512', manual, tmp_path / 't2', match=r'Testing Labels.csv lacks .*Retinopathy grade')

  manual = dummy_data.write(tmp_path / 'm3', parts=('grading',))
  csv_path = manual / 'B. Disease Grading/2. Groundtruths/a. IDRiD_Disease Grading_Training Labels.csv'
  lines = csv_path.read_text().splitlines()
  lines[3] = 'IDRiD_003,7,0,,'
  csv_path.write_text('\n'.join(lines) + '\n')
  bt.check_fails('idrid', 'grading_512', manual, tmp_path / 't3',
                 match=r"Training Labels.csv, image 'IDRiD_003': 'Retinopathy grade' is '7'; valid values are \[0, 1, 2, 3, 4\]")

  manual = dummy_data.write(tmp_path / 'm4', parts=('grading',))
  bt.corrupt(manual / _TRAIN / 'IDRiD_002.jpg')
  bt.check_fails('idrid', 'grading_original', manual, tmp_path / 't4',
                 match=r'Could not read the image .*IDRiD_002.jpg')

  manual = dummy_data.write(tmp_path / 'm5', parts=('segmentation',))
  bt.corrupt(manual / _SEG_GT / 'b. Testing Set/5. Optic Disc/IDRiD_05_OD.tif')
  bt.check_fails('idrid', 'segmentation_512', manual, tmp_path / 't5', match=r'Could not read the image .*IDRiD_05_OD.tif')

  manual = dummy_data.write(tmp_path / 'm6', parts=('segmentation',))
  (manual / _SEG_GT / 'a. Training Set/3. Hard Exudates').rename(manual / 'elsewhere')
  bt.check_fails('idrid', 'segmentation_512', manual, tmp_path / 't6', match=r'missing .*a. Training Set/3. Hard Exudates')

  manual = dummy_data.write(tmp_path / 'm7', parts=('segmentation',))
  Image.new('RGB', (10, 10)).save(manual / _SEG_GT / 'a. Training Set/1. Microaneurysms/IDRiD_02_MA.tif')
  bt.check_fails('idrid', 'segmentation_original', manual, tmp_path / 't7', match=r'mask .*IDRiD_02_MA.tif is 10x10')

  # Only the grading part present: the segmentation configs name what they looked for.
  manual = dummy_data.write(tmp_path / 'm8', parts=('grading',))
  bt.check_fails('idrid', 'segmentation_512', manual, tmp_path / 't8', match=r'A. Segmentation/1. Original Images')
