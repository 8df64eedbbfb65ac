"""image_pool builder: members built through their own builders and read back as one pool labelled by source, on
dummy data (two members) and on the shared data (the shipped config)."""
import numpy as np

import builder_testing as bt
from tfds_builders.chase_db1 import dummy_data as chase_dummy
from tfds_builders.image_pool import ImagePool, ImagePoolConfig, Member
from tfds_builders.nih_chestxray14 import dummy_data as nih_dummy


def test_dummy_build_two_members(tmp_path):
  manual = tmp_path / 'manual'
  nih_dummy.write_subset(manual / 'nih', per_class={'train': 3, 'valid': 1, 'test': 1})
  chase_dummy.write(manual / 'chase')  # 14 children, 2 eyes each: 20 train / 8 test images.
  config = ImagePoolConfig(name='test_pool', image_size=16, channels=1, members=(
      Member('nih', 'nih_chestxray14', 'subset1000_patient_split', 'nih', ('train',)),
      Member('chase', 'chase_db1', '512', 'chase', ('train', 'test'))))
  import tensorflow_datasets as tfds
  b = ImagePool(config=config, data_dir=str(tmp_path / 'tfds'), file_format='array_record')
  b.download_and_prepare(file_format='array_record', download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
  n_nih = len(tfds.data_source('nih_chestxray14/subset1000_patient_split', split='train', data_dir=str(tmp_path / 'tfds')))
  records = bt.check_dataset(b, splits={'train': n_nih + 28})
  recs = records['train']
  assert [int(r['label']) for r in recs] == [0] * n_nih + [1] * 28 and [int(r['id']) for r in recs] == list(range(n_nih + 28))
  assert all(r['image'].shape == (16, 16, 1) and r['image'].dtype == np.uint8 for r in recs)
  assert [r['source_split'].decode() for r in recs[n_nih:]].count('test') == 8
  assert sorted(int(r['source_index']) for r in recs[:n_nih]) == list(range(n_nih))


def test_missing_member_folder(tmp_path):
  manual = nih_dummy.write_subset(tmp_path / 'manual' / 'nih_cxr14_1000_64px')
  bt.check_fails('image_pool', 'shared_gray_28', tmp_path / 'manual', tmp_path / 'tfds',
                 match=r"no member folder\(s\) \['retinamnist', 'hrf', 'chase_db1', 'bccd'\]")
  del manual


def test_real_shared_pool(tmp_path):
  bt.shared_dir('hrf')  # Skips, saying why, without the shared data.
  from medssl_jax.data import shared
  b = bt.build('image_pool', 'shared_gray_28', shared.shared_data_dir(), tmp_path / 'tfds')
  # PROVENANCE.md of each member: NIH1000 train 619, RetinaMNIST train 1080, HRF 45, CHASE_DB1 28, BCCD train crops.
  labels = np.array([int(r['label']) for r in bt.check_dataset(b, splits={'train': 4576}, read_limit=8)['train']])
  from medssl_jax.data import pipeline
  counts = np.bincount(pipeline.read_column(b, split='train', key='label'))
  assert counts.tolist() == [619, 1080, 45, 28, 2804] and labels.tolist() == [0] * 8
