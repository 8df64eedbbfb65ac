"""Shenzhen builder: dummy data in the official layout (with and without lung masks) and bad inputs."""
import numpy as np
from PIL import Image

import builder_testing as bt
from tfds_builders.shenzhen import dummy_data


def test_dummy_build_512(tmp_path):
  manual = dummy_data.write(tmp_path / 'manual', masks=False)
  b = bt.build('shenzhen', '512', manual, tmp_path / 'tfds')
  # 20 images, 10 per class, 70/10/20 stratified.
  records = bt.check_dataset(b, splits={'train': 14, 'validation': 2, 'test': 4},
                             label_counts={'train': [7, 7], 'validation': [1, 1], 'test': [2, 2]})
  names = [r['file_name'].decode() for recs in records.values() for r in recs]
  assert sorted(names) == [f'ChinaSet_AllFiles/CXR_png/CHNCXR_{k + 1:04d}_{k % 2}.png' for k in range(20)]
  for recs in records.values():
    for r in recs:
      name = r['file_name'].decode()
      assert r['label'] == int(name[-5]) and r['image'].shape == (512, 512, 1) and r['patient_id'] == b''
      stem = name.split('/')[-1][:-4]
      assert r['report'].decode() == (manual / f'ChinaSet_AllFiles/ClinicalReadings/{stem}.txt').read_text().strip()
  # 40x36 padded to 40x40 (2 black rows top and bottom), then resized: the border rows stay black.
  assert records['train'][0]['image'][:8].max() == 0 and records['train'][0]['image'][40:-40].std() > 10


def test_dummy_build_with_lung_masks(tmp_path):
  manual = dummy_data.write(tmp_path / 'manual')
  b = bt.build('shenzhen', 'with_lung_masks_512', manual, tmp_path / 'tfds')
  plain = bt.build('shenzhen', '512', manual, tmp_path / 'tfds')
  masked = {f'CHNCXR_{k + 1:04d}_{k % 2}.png' for k in range(20) if k % 3}
  want = {}
  for s in ('train', 'validation', 'test'):
    src = plain.as_data_source(split=s)
    want[s] = sum(src[i]['file_name'].decode().split('/')[-1] in masked for i in range(len(src)))
  records = bt.check_dataset(b, splits=want)  # Same split assignment as 512, images with a mask only.
  r = records['test'][0]
  stem = r['file_name'].decode().split('/')[-1][:-4]
  m = (np.asarray(Image.open(manual / 'mask' / f'{stem}_mask.png')) > 0).astype(np.uint8)
  m = np.pad(m, ((2, 2), (0, 0)))  # The same square padding as the image.
  want_mask = np.asarray(Image.fromarray(m).resize((512, 512), Image.NEAREST))
  np.testing.assert_array_equal(r['mask'][..., 0], want_mask)


def test_bad_inputs(tmp_path):
  manual = dummy_data.write(tmp_path / 'm1')
  (manual / 'ChinaSet_AllFiles/ClinicalReadings/CHNCXR_0005_0.txt').unlink()
  bt.check_fails('shenzhen', '512', manual, tmp_path / 't1', match=r'missing .*CHNCXR_0005_0.txt')
  manual = dummy_data.write(tmp_path / 'm2', masks=False)
  bt.check_fails('shenzhen', 'with_lung_masks_512', manual, tmp_path / 't2',
                 match=r"needs the Stirenko et al. lung masks.*mask/CHNCXR_0001_0_mask.png")
  manual = dummy_data.write(tmp_path / 'm3')
  Image.new('L', (40, 36)).save(manual / 'ChinaSet_AllFiles/CXR_png/CHNCXR_0021_2.png')
  bt.check_fails('shenzhen', '512', manual, tmp_path / 't3', match=r"unexpected image name .*CHNCXR_0021_2.png")
  manual = dummy_data.write(tmp_path / 'm4')
  bt.corrupt(manual / 'ChinaSet_AllFiles/CXR_png/CHNCXR_0007_0.png')
  bt.check_fails('shenzhen', '512', manual, tmp_path / 't4', match=r'Could not read the image .*CHNCXR_0007_0.png')
  manual = dummy_data.write(tmp_path / 'm5')
  bt.corrupt(manual / 'mask/CHNCXR_0002_1_mask.png')
  bt.check_fails('shenzhen', 'with_lung_masks_512', manual, tmp_path / 't5',
                 match=r'Could not read the image .*CHNCXR_0002_1_mask.png')
  wrong = tmp_path / 'wrong'
  (wrong / 'ChinaSet_AllFiles/images').mkdir(parents=True)
  bt.check_fails('shenzhen', '512', wrong, tmp_path / 't6', match=r"none of .*ChinaSet_AllFiles/CXR_png")
