"""Tests for the synthetic fundus generator, its TFDS builder and the grain host pipelines."""
import json

import numpy as np
import pytest

from medssl_jax.data import pipeline
from medssl_jax.synthetic import fundus as sf

# ---------------------------------------------------------------- generator


def test_render_is_deterministic_per_seed_and_index():
  a, la, ma = sf.render_example(5, size=64, seed=3)
  b, lb, mb = sf.render_example(5, size=64, seed=3)
  assert a.tobytes() == b.tobytes() and la == lb and ma == mb
  assert sf.render_example(6, size=64, seed=3)[0].tobytes() != a.tobytes()
  assert sf.render_example(5, size=64, seed=4)[0].tobytes() != a.tobytes()


@pytest.mark.parametrize('size', [32, 64])
def test_render_dtype_shape_and_range(size):
  image, label, meta = sf.render_example(1, size=size)
  assert image.dtype == np.uint8 and image.shape == (size, size, 3)
  assert label in range(sf.NUM_CLASSES)
  assert meta['eye'] in sf.EYE_NAMES
  # Not degenerate: a black frame and a lit retina.
  assert image.min() == 0 and image.max() > 60


def test_generate_matches_render_and_is_balanced():
  images, labels = sf.generate(64, size=32, seed=1, start=8)
  assert images.shape == (64, 32, 32, 3) and images.dtype == np.uint8
  assert labels.dtype == np.int64
  np.testing.assert_array_equal(np.bincount(labels, minlength=4), [16, 16, 16, 16])
  image, label, _ = sf.render_example(8 + 5, size=32, seed=1)
  np.testing.assert_array_equal(images[5], image)
  assert labels[5] == label


def test_lesions_only_in_non_healthy_classes():
  for index in range(24):
    image, label, meta = sf.render_example(index, size=64)
    clean, _, _ = sf.render_example(index, size=64, draw_lesions=False)
    if label == 0:
      assert meta['num_lesions'] == 0 and meta['lesion_pixels'] == 0
      np.testing.assert_array_equal(image, clean)
    else:
      assert meta['num_lesions'] > 0 and meta['lesion_pixels'] > 0
      # Lesions change a few pixels only: small relative to the image, but visible.
      changed = (np.abs(image.astype(int) - clean).max(-1) > 10).sum()
      assert 0 < changed < 0.1 * 64 * 64
    assert (meta['num_exudates'] > 0) == (label == 3)
    assert (meta['num_haemorrhages'] > 0) == (label >= 2)


def test_fov_leaves_corners_black():
  for index in range(8):
    image, _, _ = sf.render_example(index, size=64)
    for corner in (image[:5, :5], image[:5, -5:], image[-5:, :5], image[-5:, -5:]):
      assert corner.max() == 0


def test_vessel_masks_leave_the_render_unchanged():
  from scipy import ndimage
  for index in range(6):
    image, label, meta = sf.render_example(index, size=64)
    image2, label2, meta2 = sf.render_example(index, size=64, return_masks=True)
    vessels, fov = meta2.pop('vessel_mask'), meta2.pop('fov_mask')
    assert image.tobytes() == image2.tobytes() and label == label2 and meta == meta2
    assert vessels.dtype == fov.dtype == np.uint8 and vessels.shape == fov.shape == (64, 64)
    assert set(np.unique(vessels)) == {0, 1} and set(np.unique(fov)) == {0, 1}
    assert not (vessels & (1 - fov)).any()  # No vessel outside the field of view.
    assert 0.02 < vessels[fov > 0].mean() < 0.2
    # The FOV is the lit disc (up to its anti-aliased rim).
    assert image[~ndimage.binary_dilation(fov > 0)].max() == 0
    assert image[ndimage.binary_erosion(fov > 0)].max(-1).min() > 20
    # Aligned with the drawing: vessel pixels are darker than their surroundings.
    green = image[..., 1].astype(float)
    ratio = green / np.maximum(ndimage.uniform_filter(green, 7), 1)
    inside = fov > 0
    assert ratio[(vessels > 0) & inside].mean() < ratio[(vessels == 0) & inside].mean() - 0.05


def test_save_grid(tmp_path):
  grid = sf.save_grid(tmp_path / 'grid.png', size=32, per_class=2, scale=1)
  assert (tmp_path / 'grid.png').exists() and grid.shape == (4 * 34 + 2, 2 * 34 + 2, 3)


# ---------------------------------------------------------------- builder


@pytest.fixture(scope='module')
def builder(tmp_path_factory):
  return pipeline.get_builder('synthetic_fundus', config='tiny',
                              data_dir=str(tmp_path_factory.mktemp('tfds')))


def test_builder_splits_and_features(builder):
  assert builder.name == 'synthetic_fundus' and str(builder.info.version) == '1.0.0'
  assert {s: pipeline.num_examples(builder, s) for s in ('train', 'validation', 'test')} == {
      'train': 64, 'validation': 32, 'test': 32}
  features = builder.info.features
  assert set(features.keys()) == {'image', 'label', 'id', 'eye'}
  assert features['image'].shape == (32, 32, 3)
  assert pipeline.num_classes(builder) == 4
  assert pipeline.class_names(builder) == list(sf.CLASS_NAMES)
  assert features['eye'].names == ['left', 'right']


def test_builder_records_equal_generator(builder):
  ids = {}
  for split in ('train', 'validation', 'test'):
    arrays = pipeline.load_split_arrays(builder, split=split)
    ids[split] = set(arrays['id'].tolist())
    for row in (0, len(arrays['id']) - 1):
      image, label, _ = sf.render_example(int(arrays['id'][row]), size=32, seed=0)
      np.testing.assert_array_equal(arrays['image'][row], image)  # PNG is lossless.
      assert arrays['label'][row] == label
  assert not (ids['train'] & ids['validation'] or ids['train'] & ids['test']
              or ids['validation'] & ids['test'])
  assert set().union(*ids.values()) == set(range(128))


def test_vessels_config_has_masks(tmp_path):
  vessels = pipeline.get_builder('synthetic_fundus', config='vessels', data_dir=str(tmp_path))
  assert {s: pipeline.num_examples(vessels, s) for s in ('train', 'validation', 'test')} == {
      'train': 48, 'validation': 16, 'test': 16}
  features = vessels.info.features
  assert set(features.keys()) == {'image', 'label', 'id', 'eye', 'mask', 'fov_mask'}
  assert features['mask'].shape == features['fov_mask'].shape == (64, 64, 1)
  arrays = pipeline.load_split_arrays(vessels, split='test', extra_keys=('mask', 'fov_mask'))
  for row in (0, 15):
    image, label, meta = sf.render_example(int(arrays['id'][row]), size=64, return_masks=True)
    np.testing.assert_array_equal(arrays['image'][row], image)
    np.testing.assert_array_equal(arrays['mask'][row, ..., 0], meta['vessel_mask'])
    np.testing.assert_array_equal(arrays['fov_mask'][row, ..., 0], meta['fov_mask'])
    assert arrays['label'][row] == label
  assert arrays['id'].tolist() == list(range(64, 80))


def test_builder_is_reused_once_prepared(builder, capsys):
  again = pipeline.get_builder('synthetic_fundus', config='tiny', data_dir=builder.data_dir_root)
  assert 'Building' not in capsys.readouterr().out
  assert pipeline.num_examples(again, 'test') == 32


# ---------------------------------------------------------------- train iterator


def _train(builder, **kw):
  args = dict(global_batch_size=8, seed=0, process_index=0, process_count=1)
  args.update(kw)
  return pipeline.make_train_iterator(builder, **args)


def _same(a, b):
  return all(x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(a, b))


def test_train_iterator_shapes_and_dtypes(builder):
  batch = next(_train(builder))
  assert batch['image'].shape == (8, 32, 32, 3) and batch['image'].dtype == np.uint8
  assert batch['label'].dtype == np.int32 and batch['id'].dtype == np.int32
  assert batch['label'].shape == batch['id'].shape == (8,)
  batch = next(_train(builder, image_size=16))
  assert batch['image'].shape == (8, 16, 16, 3)


def test_train_iterator_shards_are_disjoint_and_cover(builder):
  shards = []
  for p in range(2):
    it = _train(builder, global_batch_size=16, num_epochs=1, process_index=p, process_count=2)
    batches = list(it)
    assert len(batches) == 4 and all(b['image'].shape[0] == 8 for b in batches)
    shards.append(np.concatenate([b['id'] for b in batches]).tolist())
  assert not set(shards[0]) & set(shards[1])
  assert sorted(shards[0] + shards[1]) == list(range(64))


def test_global_batches_do_not_depend_on_process_count(builder):
  # 1, 2 and 4 processes: each global batch (the processes' slices side by side) is the same records in the
  # same order, over an epoch boundary, so a multi-host run trains on exactly the batches of a one-host run.
  steps = 6  # 64 records / 16 = 4 batches per epoch: steps 5-6 are the second, reshuffled epoch.
  def global_ids(count):
    its = [_train(builder, global_batch_size=16, seed=3, process_index=p, process_count=count) for p in range(count)]
    return [np.concatenate([next(it)['id'] for it in its]).tolist() for _ in range(steps)]
  one = global_ids(1)
  assert global_ids(2) == one and global_ids(4) == one
  assert sorted(sum(one[:4], [])) == list(range(64)) and one[4] != one[0]


def test_train_iterator_is_deterministic_per_seed(builder):
  take = lambda it: [next(it) for _ in range(3)]
  assert _same(take(_train(builder, seed=7)), take(_train(builder, seed=7)))
  ids = lambda seed: np.concatenate([b['id'] for b in take(_train(builder, seed=seed))])
  assert not np.array_equal(ids(7), ids(8))


def test_train_iterator_epochs_reshuffle(builder):
  it = _train(builder, num_epochs=2)
  ids = np.concatenate([b['id'] for b in it])
  assert sorted(ids[:64]) == sorted(ids[64:]) == list(range(64))
  assert not np.array_equal(ids[:64], ids[64:])


@pytest.mark.parametrize('json_round_trip', [False, True])
def test_train_iterator_state_restore(builder, json_round_trip):
  it = _train(builder, seed=3)
  for _ in range(3):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(2)]
  if json_round_trip:
    state = pipeline.iterator_state_from_json(json.dumps(pipeline.iterator_state_to_json(state)))
    assert json.loads(json.dumps(it.get_state())) == it.get_state()  # Plain JSON works as well.
  fresh = _train(builder, seed=3)
  fresh.set_state(state)
  assert _same([next(fresh) for _ in range(2)], expected)


def test_train_iterator_with_workers_matches_and_restores(builder):
  ref_it = _train(builder, seed=5)
  reference = [next(ref_it) for _ in range(4)]
  it = _train(builder, seed=5, worker_count=2)
  try:
    got = [next(it) for _ in range(2)]
    state = pipeline.iterator_state_from_json(json.dumps(pipeline.iterator_state_to_json(it.get_state())))
  finally:
    it.close()
  assert _same(got, reference[:2])
  it = _train(builder, seed=5, worker_count=2)
  try:
    it.set_state(state)
    assert _same([next(it) for _ in range(2)], reference[2:])
  finally:
    it.close()


def test_state_json_helpers_restore_int_keys_and_bytes():
  state = {'next_index': 3, 'future_states': {2: {'next_index': 0}}, 'blob': b'\x00\xff', 'l': [1]}
  text = json.dumps(pipeline.iterator_state_to_json(state))
  assert pipeline.iterator_state_from_json(text) == state


def test_batch_size_must_divide_process_count(builder):
  with pytest.raises(ValueError, match='global_batch_size=9.*process_count=2'):
    _train(builder, global_batch_size=9, process_count=2)


# ---------------------------------------------------------------- eval


def test_eval_iterator_pads_masks_and_covers_split(builder):
  batches = list(pipeline.iterate_eval(builder, split='validation', batch_size=12))
  assert len(batches) == 3
  for b in batches:
    assert b['image'].shape == (12, 32, 32, 3) and b['image'].dtype == np.uint8
    assert b['label'].dtype == np.int32 and b['id'].dtype == np.int32 and b['mask'].dtype == bool
  last = batches[-1]
  np.testing.assert_array_equal(last['mask'], [True] * 8 + [False] * 4)
  assert not last['image'][8:].any() and not last['label'][8:].any()
  ids = np.concatenate([b['id'][b['mask']] for b in batches])
  assert sorted(ids.tolist()) == list(range(64, 96))
  assert list(ids) == sorted(ids)  # Record order.


def test_load_split_arrays(builder):
  arrays = pipeline.load_split_arrays(builder, split='test', image_size=16)
  assert arrays['image'].shape == (32, 16, 16, 3) and arrays['label'].shape == (32,)
  np.testing.assert_array_equal(np.bincount(arrays['label'], minlength=4), [8, 8, 8, 8])


# ---------------------------------------------------------------- errors


def test_unknown_dataset_lists_choices():
  with pytest.raises(ValueError, match=r"'nope'.*synthetic_fundus"):
    pipeline.get_builder('nope')


def test_unknown_config_lists_choices(tmp_path):
  with pytest.raises(ValueError, match=r"'huge'.*64px.*tiny"):
    pipeline.get_builder('synthetic_fundus', config='huge', data_dir=str(tmp_path))


@pytest.mark.parametrize('fn', ['train', 'eval', 'count'])
def test_unknown_split_lists_choices(builder, fn):
  with pytest.raises(ValueError, match=r"'trian'.*train.*validation.*test"):
    if fn == 'train':
      _train(builder, split='trian')
    elif fn == 'eval':
      next(pipeline.iterate_eval(builder, split='trian', batch_size=4))
    else:
      pipeline.num_examples(builder, 'trian')


def test_empty_split_raises(builder):
  with pytest.raises(ValueError, match='empty'):
    _train(builder, split='train[:0]')


def test_undecodable_image_names_split_and_record():
  with pytest.raises(ValueError, match=r"record 7 in split 'test'"):
    pipeline._decode_record({'image': b'not a png', 'label': 0, 'id': 0}, 7, 'test', None)


# ---------------------------------------------------------------- label subsets, fit, columns


def test_train_iterator_on_a_subset_covers_exactly_it(builder):
  indices = [1, 4, 9, 16, 25, 36, 49, 63]
  it = _train(builder, global_batch_size=4, num_epochs=1, indices=indices)
  ids = np.concatenate([b['id'] for b in it])
  assert sorted(ids.tolist()) == indices  # The record ids of the split, not positions in the subset.
  # Several epochs: grain passes later epochs' positions unreduced; each epoch still covers exactly the subset.
  it = _train(builder, global_batch_size=4, num_epochs=3, indices=indices)
  ids = np.concatenate([b['id'] for b in it])
  assert len(ids) == 24 and sorted(ids.tolist()) == sorted(indices * 3)


def test_eval_on_a_subset_and_read_column(builder):
  labels = pipeline.read_column(builder, split='train', key='label')
  assert len(labels) == 64 and np.bincount(labels).tolist() == [16] * 4
  arrays = pipeline.load_split_arrays(builder, split='train', indices=[3, 5, 7])
  assert arrays['id'].tolist() == [3, 5, 7] and arrays['label'].tolist() == [labels[3], labels[5], labels[7]]
  with pytest.raises(KeyError, match="no feature 'patient'"):
    pipeline.read_column(builder, split='train', key='patient')
  with pytest.raises(ValueError, match=r'subset indices must lie in \[0, 64\)'):
    pipeline.load_split_arrays(builder, split='train', indices=[0, 64])


@pytest.mark.parametrize('fit', ['squash', 'pad', 'center_crop'])
def test_decode_fit_keeps_aspect(fit):
  import io
  from PIL import Image
  wide = np.full((20, 40, 3), 200, np.uint8)  # A bright 2:1 image.
  buf = io.BytesIO()
  Image.fromarray(wide).save(buf, format='PNG')
  image = pipeline._decode_record({'image': buf.getvalue(), 'id': 0}, 0, 'train', 16, 3, fit)['image']
  assert image.shape == (16, 16, 3)
  corner = int(image[0, 0].max())
  assert (corner == 0) if fit == 'pad' else (corner >= 190)  # Pad adds black bands above and below.
  assert pipeline._decode_record({'image': buf.getvalue(), 'id': 0}, 0, 'train', 16, 3, fit)['label'] == -1


def test_unknown_fit_is_named(builder):
  with pytest.raises(ValueError, match=r"fit='stretch'; valid choices"):
    _train(builder, fit='stretch')
