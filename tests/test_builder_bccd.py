"""BCCD builder: dummy data in the official VOC layout, bad inputs, and the real files when present."""
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

import builder_testing as bt
from tfds_builders.bccd import dummy_data

# Dummy crops per split (RBC, WBC, Platelets): one zero-area RBC box skipped, one WBC box clipped.
_DUMMY = {'train': [4, 4, 1], 'validation': [2, 2, 1], 'test': [2, 2, 1]}


def test_dummy_build_crops(tmp_path):
  manual = dummy_data.write(tmp_path / 'manual')
  b = bt.build('bccd', '64', manual, tmp_path / 'tfds')
  records = bt.check_dataset(b, splits={s: sum(c) for s, c in _DUMMY.items()}, label_counts=_DUMMY)
  first = records['train'][0]
  assert first['image'].shape == (64, 64, 3) and first['label'] == 0 and first['patient_id'] == b''
  assert first['file_name'] == b'BCCD/JPEGImages/BloodImage_00000.jpg' and first['source_image'] == b'BloodImage_00000'
  assert first['box'].tolist() == [2, 3, 12, 13]
  # The crop is the box made square (side 10 * 1.2 = 12) around its centre, resized to 64 px.
  source = Image.open(manual / 'BCCD/JPEGImages/BloodImage_00000.jpg').convert('RGB')
  want = np.asarray(source.crop((1, 2, 13, 14)).resize((64, 64), Image.BICUBIC))
  np.testing.assert_array_equal(first['image'], want)
  # Image 1: its zero-area RBC box is skipped; image 4: the WBC box past the border is clipped and padded black.
  assert [r['source_image'] for r in records['train']].count(b'BloodImage_00001') == 2
  last = records['train'][-1]
  assert last['source_image'] == b'BloodImage_00004' and last['label'] == 1
  assert last['box'].tolist() == [38, 28, 48, 36]
  assert last['image'][-5:, -5:].max() == 0  # Beyond the photograph's corner: black.
  assert records['test'][-1]['source_image'] == b'BloodImage_00010'


def test_dummy_build_128_and_full_images(tmp_path):
  manual = dummy_data.write(tmp_path / 'manual')
  b = bt.build('bccd', '128', manual, tmp_path / 'tfds')
  records = bt.check_dataset(b, splits={s: sum(c) for s, c in _DUMMY.items()}, read_limit=2)
  assert records['validation'][0]['image'].shape == (128, 128, 3)
  b = bt.build('bccd', 'full_images', manual, tmp_path / 'tfds')
  records = bt.check_dataset(b, splits={'train': 4, 'validation': 2, 'test': 2})
  r = records['train'][1]
  assert r['source_image'] == b'BloodImage_00001'
  # data_source decodes a Sequence to a list per field.
  assert np.asarray(r['objects']['label']).tolist() == [0, 1]
  assert np.asarray(r['objects']['box']).tolist() == [[2, 3, 12, 13], [20, 10, 36, 26]]
  assert np.asarray(records['train'][3]['objects']['box'])[-1].tolist() == [38, 28, 48, 36]
  # JPEG bytes are stored unchanged.
  path = manual / 'BCCD/JPEGImages/BloodImage_00001.jpg'
  np.testing.assert_array_equal(r['image'], np.asarray(Image.open(path)))


def test_bad_inputs(tmp_path):
  manual = dummy_data.write(tmp_path / 'm1')
  (manual / 'BCCD/Annotations/BloodImage_00007.xml').unlink()
  bt.check_fails('bccd', None, manual, tmp_path / 't1', match=r'missing .*Annotations/BloodImage_00007.xml')
  manual = dummy_data.write(tmp_path / 'm2')
  (manual / 'BCCD/ImageSets/Main/val.txt').unlink()
  bt.check_fails('bccd', None, manual, tmp_path / 't2', match=r'missing .*ImageSets/Main/val.txt')
  manual = dummy_data.write(tmp_path / 'm3')
  bt.corrupt(manual / 'BCCD/JPEGImages/BloodImage_00008.jpg')
  bt.check_fails('bccd', None, manual, tmp_path / 't3', match=r'Could not read the image .*BloodImage_00008.jpg')
  manual = dummy_data.write(tmp_path / 'm4')
  xml = manual / 'BCCD/Annotations/BloodImage_00002.xml'
  xml.write_text(xml.read_text().replace('<name>Platelets</name>', '<name>Neutrophil</name>'))
  bt.check_fails('bccd', None, manual, tmp_path / 't4',
                 match=r'BloodImage_00002.xml, object 2: unknown class .Neutrophil.; valid classes')
  stray = tmp_path / 'stray'
  stray.mkdir()
  (stray / 'readme.txt').write_text('not BCCD')
  bt.check_fails('bccd', None, stray, tmp_path / 't5', match=r'none of .*ImageSets/Main.* found in the manual dir')


def test_real_files(tmp_path):
  root = bt.shared_dir('bccd')
  b = bt.build('bccd', 'full_images', root, tmp_path / 'tfds')
  records = bt.check_dataset(b, splits={'train': 205, 'validation': 87, 'test': 72}, read_limit=3)
  assert records['train'][0]['image'].shape == (480, 640, 3)
  # PROVENANCE.md: RBC 4155, WBC 372, Platelets 361 boxes (4888). Two RBC boxes have zero area
  # (BloodImage_00338 and BloodImage_00343, xmin == xmax) and are skipped: 4886 crops.
  b = bt.build('bccd', '64', root, tmp_path / 'tfds')
  counts = {'train': [2381, 214, 209], 'validation': [967, 87, 83], 'test': [805, 71, 69]}
  bt.check_dataset(b, splits={s: sum(c) for s, c in counts.items()}, read_limit=20)
  for split, want in counts.items():  # Labels only: skipping image decoding keeps this fast.
    source = b.as_data_source(split=split, decoders={'image': tfds.decode.SkipDecoding()})
    labels = [int(r['label']) for r in source.__getitems__(list(range(sum(want))))]
    assert np.bincount(labels, minlength=3).tolist() == want, split
  assert np.sum(list(counts.values()), axis=0).tolist() == [4153, 372, 361]
