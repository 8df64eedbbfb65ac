"""SWCL stage 3: the pure five-patch functions and the swcl_patches builder on a dummy propagation folder."""
import csv
import json

import numpy as np
from PIL import Image
import pytest

import builder_testing as bt
from medssl_jax.data import pipeline
from tfds_builders.swcl_patches import patches as P
from tfds_builders.swcl_patches import dummy_data
from tfds_builders.swcl_patches import swcl_patches_dataset_builder as spb


def _slices(image_size, patch_size):
  """Reference boxes written out by hand: (row slice, column slice) per position."""
  s, p = image_size, patch_size
  c = (s - p) // 2
  return [(slice(0, p), slice(0, p)), (slice(0, p), slice(s - p, s)), (slice(s - p, s), slice(0, p)),
          (slice(s - p, s), slice(s - p, s)), (slice(c, c + p), slice(c, c + p))]


def test_patch_boxes():
  assert P.POSITIONS == ('top_left', 'top_right', 'bottom_left', 'bottom_right', 'centre')
  assert P.patch_boxes(448, 224) == [(0, 0), (0, 224), (224, 0), (224, 224), (112, 112)]
  assert P.patch_boxes(11, 4) == [(0, 0), (0, 7), (7, 0), (7, 7), (3, 3)]  # Odd difference: centre rounds down.
  assert P.patch_boxes(5, 5) == [(0, 0)] * 5
  for bad in (0, 6):
    with pytest.raises(ValueError, match=rf'patch_size={bad} must be in \[1, image_size=5\]'):
      P.patch_boxes(5, bad)


@pytest.mark.parametrize('size, p', [(12, 6), (11, 4)])
def test_five_patches_and_flip(size, p):
  img = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
  got = P.five_patches(img, patch_size=p)
  assert got.shape == (5, p, p, 3) and got.dtype == np.uint8
  for k, (r, c) in enumerate(_slices(size, p)):
    np.testing.assert_array_equal(got[k], img[r, c])
  flipped = P.five_patches(img, patch_size=p, flip=True)
  mirror = img[:, ::-1]
  for k, (r, c) in enumerate(_slices(size, p)):
    np.testing.assert_array_equal(flipped[k], mirror[r, c])
  # Mirroring swaps left and right: the flipped top-left patch is the mirrored top-right patch.
  np.testing.assert_array_equal(flipped[0], got[1][:, ::-1])
  assert P.five_patches(img[..., 0], patch_size=p).shape == (5, p, p)
  with pytest.raises(ValueError, match=r'square .* got shape \(12, 11, 3\)'):
    P.five_patches(np.zeros((12, 11, 3)), patch_size=4)


def test_abnormality_scores():
  cam = np.zeros((8, 8))
  cam[:4, :4] = 1.0    # Top-left fully active: mean 1.
  cam[:4, 4:] = 0.5    # Top-right half: mean 0.5.
  cam[4:, 4:] = 0.25   # Bottom-right: mean 0.25; bottom-left 0.
  # Centre patch rows/cols 2-5: 4 px of 1, 4 of 0.5, 4 of 0.25, 4 of 0 -> mean 1.75 / 4.
  means = np.array([1.0, 0.5, 0.0, 0.25, 1.75 / 4])
  got = P.abnormality_scores(cam, abnormal_prob=0.8, patch_size=4)
  np.testing.assert_allclose(got, 0.8 * means / means.max(), rtol=1e-6)
  assert got.dtype == np.float32 and got[0] == pytest.approx(0.8)
  # Flip: the same image mirrored, so left and right swap; the scale of the CAM does not matter.
  got_flip = P.abnormality_scores(np.round(255 * cam).astype(np.uint8), abnormal_prob=0.8, patch_size=4, flip=True)
  np.testing.assert_allclose(got_flip, 0.8 * means[[1, 0, 3, 2, 4]] / means.max(), rtol=1e-2)
  np.testing.assert_array_equal(P.abnormality_scores(np.zeros((8, 8)), abnormal_prob=0.9, patch_size=4), 0)
  assert P.abnormality_scores(cam, abnormal_prob=0.0, patch_size=4).max() == 0
  with pytest.raises(ValueError, match=r'abnormal_prob=1.5 must be in \[0, 1\]'):
    P.abnormality_scores(cam, abnormal_prob=1.5, patch_size=4)
  with pytest.raises(ValueError, match='non-negative'):
    P.abnormality_scores(-cam, abnormal_prob=0.5, patch_size=4)


def test_parse_config():
  assert spb.parse_config('p224_flip') == ('p224_flip', 224, True)
  assert spb.parse_config('p16') == ('p16_flip', 16, True)
  assert spb.parse_config('p128_noflip') == ('p128_noflip', 128, False)
  for bad in (None, '', '224', 'p224_mirror', 'p0', 'p-3'):
    with pytest.raises(ValueError, match=r"bad config .* expected config='p<patch_size>"):
      spb.parse_config(bad)


def _csv_rows(root):
  with open(root / 'pseudo_labels.csv', newline='') as f:
    return list(csv.DictReader(f))


def test_build_from_dummy(tmp_path):
  manual = dummy_data.write_dummy(tmp_path / 'propagation', num_images=7, image_size=24)
  b = bt.build('swcl_patches', 'p16_flip', manual, tmp_path / 'tfds')
  records = bt.check_dataset(b, splits={'train': 35})['train']
  assert b.info.metadata['fingerprint'] == spb.source_fingerprint(manual) and b.info.metadata['patch_size'] == 16
  assert pipeline.class_names(b) == ['healthy', 'dr']
  rows = _csv_rows(manual)
  patient_ids = sorted({r['patient_id'] for r in rows})
  for n, r in enumerate(records):
    i, k = divmod(n, 5)
    row = rows[i]
    assert int(r['position']) == k and r['image_key'].decode() == row['key']
    assert r['image'].shape == (16, 16, 3)
    eye = row['eye']
    assert spb.EYES[int(r['eye'])] == eye and bool(r['flipped']) == (eye == 'right')
    # The patch is the source image (mirrored for right eyes) sliced by hand.
    src = np.asarray(Image.open(manual / 'images' / f'{row["key"]}.png'))
    if eye == 'right':
      src = src[:, ::-1]
    rs, cs = _slices(24, 16)[k]
    np.testing.assert_array_equal(r['image'], src[rs, cs])
    probs = np.array([float(row['prob_healthy']), float(row['prob_dr'])], np.float32)
    np.testing.assert_allclose(r['pseudo_label'], probs)
    assert int(r['label']) == int(np.argmax(probs))
    assert r['patient_id'].decode() == row['patient_id'] and int(r['patient']) == patient_ids.index(row['patient_id'])
    cam = np.asarray(Image.open(manual / 'cams' / f'{row["key"]}.png'))
    want = P.abnormality_scores(cam, abnormal_prob=float(row['abnormal_prob']), patch_size=16, flip=eye == 'right')
    assert float(r['abnormality']) == pytest.approx(float(want[k]), abs=1e-6)
  # Both eyes of a patient share the patient index; the odd last image is alone and unflipped.
  patients = [int(r['patient']) for r in records[::5]]
  assert patients[0] == patients[1] != patients[2] == patients[3] and len(set(patients)) == 4
  assert spb.EYES[int(records[-1]['eye'])] == 'unknown' and not records[-1]['flipped']
  scores = np.array([float(r['abnormality']) for r in records]).reshape(7, 5)
  np.testing.assert_allclose(scores.max(1), [float(row['abnormal_prob']) for row in rows], rtol=1e-5)
  # The training pipeline reads patches of p x p.
  batch = next(pipeline.make_train_iterator(b, global_batch_size=4, seed=0, process_index=0, process_count=1))
  assert batch['image'].shape == (4, 16, 16, 3) and set(batch['label'].tolist()) <= {0, 1}
  # Reloading: without the folder, and with it unchanged; a changed folder is refused, naming what to delete.
  again = pipeline.get_builder('swcl_patches', config='p16_flip', data_dir=str(tmp_path / 'tfds'))
  assert type(again).__name__ == 'ReadOnlyBuilder' and again.info.splits['train'].num_examples == 35
  assert type(bt.build('swcl_patches', 'p16', manual, tmp_path / 'tfds')).__name__ == 'ReadOnlyBuilder'
  rows[0]['abnormal_prob'] = '0.5'
  with open(manual / 'pseudo_labels.csv', 'w', newline='') as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
  with pytest.raises(spb.StaleBuildError, match=r'built from another propagation folder .* Delete .*p16_flip'):
    bt.build('swcl_patches', 'p16_flip', manual, tmp_path / 'tfds')
  # noflip: a right eye's top-left patch is the unmirrored image's corner.
  nf = bt.build('swcl_patches', 'p16_noflip', manual, tmp_path / 'tfds')
  r = nf.as_data_source(split='train')[5]
  src = np.asarray(Image.open(manual / 'images' / '000001.png'))
  assert not r['flipped'] and spb.EYES[int(r['eye'])] == 'right'
  np.testing.assert_array_equal(r['image'], src[:16, :16])


def _edit_csv(path, edit):
  with open(path, newline='') as f:
    reader = csv.DictReader(f)
    rows, fields = list(reader), list(reader.fieldnames)
  fields = edit(rows, fields) or fields
  with open(path, 'w', newline='') as f:
    w = csv.DictWriter(f, fieldnames=fields, extrasaction='ignore')
    w.writeheader()
    w.writerows(rows)


@pytest.mark.parametrize('case, config, match', [
    ('missing_column', 'p8', r"pseudo_labels.csv lacks column\(s\) \['prob_dr'\]"),
    ('bad_eye', 'p8', r"row 2 \(line 3\): eye 'both'; expected one of \['left', 'right', 'unknown'\]"),
    ('bad_prob', 'p8', r"row 1 \(line 2\): column 'abnormal_prob' is '1.2'; expected a probability"),
    ('image_size', 'p8', r'000002.png is 20x20; .*manifest.json says image_size=16'),
    ('missing_cam', 'p8', r"missing \['.*cams/000003.png'\]"),
    ('missing_manifest', 'p8', r'missing .*manifest.json'),
    ('num_images', 'p8', r'has 4 rows but .* num_images=5'),
    ('unknown_normal_class', 'p8', r"normal_classes=\['normal'\]; expected names among classes"),
    ('patch_too_big', 'p32_flip', r"'p32_flip' asks for 32 px patches but the images .* are 16 px"),
    ('bad_config', 'x224', r"bad config 'x224'"),
    ('no_folder', 'p8', r'propagation folder .*nowhere does not exist'),
])
def test_bad_inputs(tmp_path, case, config, match):
  manual = dummy_data.write_dummy(tmp_path / 'propagation', num_images=4, image_size=16)
  table = manual / 'pseudo_labels.csv'
  if case == 'missing_column':
    _edit_csv(table, lambda rows, fields: [f for f in fields if f != 'prob_dr'])
  elif case == 'bad_eye':
    _edit_csv(table, lambda rows, fields: rows[1].update(eye='both'))
  elif case == 'bad_prob':
    _edit_csv(table, lambda rows, fields: rows[0].update(abnormal_prob='1.2'))
  elif case == 'image_size':
    Image.new('RGB', (20, 20)).save(manual / 'images' / '000002.png')
  elif case == 'missing_cam':
    (manual / 'cams' / '000003.png').unlink()
  elif case == 'missing_manifest':
    (manual / 'manifest.json').unlink()
  elif case in ('num_images', 'unknown_normal_class'):
    m = json.loads((manual / 'manifest.json').read_text())
    m.update(num_images=5) if case == 'num_images' else m.update(normal_classes=['normal'])
    (manual / 'manifest.json').write_text(json.dumps(m))
  elif case == 'no_folder':
    manual = tmp_path / 'nowhere'
  bt.check_fails('swcl_patches', config, manual, tmp_path / 'tfds', match=match)


def test_not_prepared_without_folder(tmp_path):
  with pytest.raises(FileNotFoundError, match=r'not prepared .* no manual_dir was given'):
    pipeline.get_builder('swcl_patches', config='p8', data_dir=str(tmp_path / 'tfds'))
