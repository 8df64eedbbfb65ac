"""STARE builder: dummy data in the official layout (gzipped and unpacked), bad inputs."""
import gzip
import io

import numpy as np
from PIL import Image

import builder_testing as bt
from tfds_builders.stare import dummy_data


def _read(path):
  data = path.read_bytes()
  return np.asarray(Image.open(io.BytesIO(gzip.decompress(data) if path.suffix == '.gz' else data)))


def test_dummy_build_original(tmp_path):
  manual = dummy_data.write(tmp_path / 'manual')
  b = bt.build('stare', 'original', manual, tmp_path / 'tfds')
  records = bt.check_dataset(b, splits={'train': 10, 'test': 10})
  first, last = records['train'][0], records['test'][-1]
  assert first['file_name'] == b'stare-images/im0001.ppm.gz' and first['patient_id'] == b''
  assert records['train'][-1]['file_name'] == b'stare-images/im0139.ppm.gz'
  assert records['test'][0]['file_name'] == b'stare-images/im0162.ppm.gz'
  assert last['file_name'] == b'stare-images/im0324.ppm.gz'
  np.testing.assert_array_equal(first['image'], _read(manual / 'stare-images/im0001.ppm.gz'))
  np.testing.assert_array_equal(first['mask'][..., 0], _read(manual / 'labels-ah/im0001.ah.ppm.gz') > 127)
  np.testing.assert_array_equal(last['mask_2nd_observer'][..., 0], _read(manual / 'labels-vk/im0324.vk.ppm.gz') > 127)


def test_dummy_build_resized_unpacked_nested(tmp_path):
  manual = dummy_data.write(tmp_path / 'manual', gz=False, nested=True)
  b = bt.build('stare', '512', manual, tmp_path / 'tfds')
  records = bt.check_dataset(b, splits={'train': 10, 'test': 10})
  r = records['test'][0]
  assert r['file_name'] == b'stare-images/im0162.ppm'
  assert r['image'].shape == (512, 512, 3) and r['mask_2nd_observer'].shape == (512, 512, 1)


def test_bad_inputs(tmp_path):
  manual = dummy_data.write(tmp_path / 'manual')
  (manual / 'labels-vk/im0235.vk.ppm.gz').unlink()
  bt.check_fails('stare', None, manual, tmp_path / 'tfds', match=r'missing .*labels-vk/im0235.vk.ppm')
  manual = dummy_data.write(tmp_path / 'manual2')
  bt.corrupt(manual / 'stare-images/im0044.ppm.gz')
  bt.check_fails('stare', None, manual, tmp_path / 'tfds2', match=r'Could not read the image .*im0044.ppm.gz')
  manual = dummy_data.write(tmp_path / 'manual3')
  bt.corrupt(manual / 'labels-ah/im0319.ah.ppm.gz')
  bt.check_fails('stare', None, manual, tmp_path / 'tfds3', match=r'Could not read the image .*im0319.ah.ppm.gz')
