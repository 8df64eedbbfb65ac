"""image_folder builder: each input form on dummy data (labelled and unlabelled), reloading without the
user's folder, bad inputs and ambiguous layouts, and the real NIH1000 subset in folder form."""
import csv
import json

import numpy as np
from PIL import Image
import pytest

import builder_testing as bt
from medssl_jax.data import pipeline
from tfds_builders.image_folder import dummy_data
from tfds_builders.image_folder import image_folder_dataset_builder as ifb


def _files(records):
  return [r['file_name'].decode() for r in records]


def _write_options(manual, **opts):
  (manual / ifb.OPTIONS_FILE).write_text(json.dumps(opts))


def _rewrite_csv(path, edit):
  """Rewrites a CSV with `edit(rows, fieldnames)` (which may change both in place)."""
  with open(path, newline='') as f:
    reader = csv.DictReader(f)
    rows, fields = list(reader), list(reader.fieldnames)
  fields = edit(rows, fields) or fields
  with open(path, 'w', newline='') as f:
    w = csv.DictWriter(f, fieldnames=fields, extrasaction='ignore')
    w.writeheader()
    w.writerows(rows)


def test_split_folders(tmp_path):
  manual = dummy_data.write(tmp_path / 'manual', layout='split_folders')
  b = bt.build('image_folder', 'my_scans', manual, tmp_path / 'tfds')
  assert pipeline.class_names(b) == ['benign', 'malignant']
  records = bt.check_dataset(b, splits={'train': 7, 'validation': 3, 'test': 4},
                             label_counts={'train': [4, 3], 'validation': [2, 1], 'test': [2, 2]})
  first = records['train'][0]
  assert first['file_name'] == b'train/benign/train_benign_0.png' and first['label'] == 0
  assert first['patient_id'] == b'' and first['report'] == b''
  # An 8-bit RGB PNG is stored unchanged; the 'val' folder became the 'validation' split.
  np.testing.assert_array_equal(first['image'], np.asarray(Image.open(manual / 'train/benign/train_benign_0.png')))
  assert _files(records['validation'])[0].startswith('val/')
  assert (tmp_path / 'tfds/image_folder/my_scans/1.0.0/dataset_info.json').exists()
  # Inline options: grayscale JPEG, resized to a square.
  small = bt.build('image_folder', 'my_scans_small,channels=1,image_size=12,encoding=jpeg', manual, tmp_path / 'tfds')
  r = bt.check_dataset(small, splits={'train': 7, 'validation': 3, 'test': 4}, read_limit=2)['test'][0]
  assert r['image'].shape == (12, 12, 1) and pipeline.image_channels(small) == 1
  assert small.info.features['image'].encoding_format == 'jpeg'


def test_class_folders_seeded_split(tmp_path):
  manual = dummy_data.write(tmp_path / 'manual', layout='class_folders')
  b = bt.build('image_folder', 'cxr', manual, tmp_path / 'tfds')
  assert pipeline.class_names(b) == ['covid', 'normal', 'pneumonia']
  records = bt.check_dataset(b, splits={'train': 14, 'validation': 2, 'test': 4})
  # No file lost or duplicated (the nested one included, notes.txt ignored); each split sorted by file name.
  on_disk = sorted(p.relative_to(manual).as_posix() for p in manual.rglob('*.*') if p.suffix != '.txt')
  got = [f for recs in records.values() for f in _files(recs)]
  assert sorted(got) == on_disk and len(set(got)) == 20 and 'normal/more/normal_00.png' in got
  assert all(_files(recs) == sorted(_files(recs)) for recs in records.values())
  # Stratified: every class in train and test.
  for split in ('train', 'test'):
    assert {int(r['label']) for r in records[split]} == {0, 1, 2}
  # Deterministic: the same files give the same split; another seed gives another.
  again = bt.check_dataset(bt.build('image_folder', 'cxr', manual, tmp_path / 'tfds2'),
                           splits={'train': 14, 'validation': 2, 'test': 4})
  assert {s: _files(r) for s, r in again.items()} == {s: _files(r) for s, r in records.items()}
  _write_options(manual, seed=1)
  other = bt.build('image_folder', 'cxr_seed1', manual, tmp_path / 'tfds')
  other_test = _files(other.as_data_source(split='test')[i] for i in range(4))
  assert other_test != _files(records['test'])


def test_csv_single_label_with_patients(tmp_path):
  manual = dummy_data.write(tmp_path / 'manual', layout='csv')
  b = bt.build('image_folder', 'grades', manual, tmp_path / 'tfds')
  assert pipeline.class_names(b) == ['mild', 'none', 'severe']
  # The CSV's split column (validation and val both mean 'validation'); no patient on two sides.
  records = bt.check_dataset(b, splits={'train': 10, 'validation': 4, 'test': 4})
  r = records['test'][0]
  assert r['file_name'] == b'images/p07_0.png' and r['patient_id'] == b'P07' and r['label'] == 1  # 'none'.
  # Without the split column: a seeded patient-level split (check_dataset asserts no shared patient).
  _rewrite_csv(manual / 'labels.csv', lambda rows, fields: [f for f in fields if f != 'split'])
  seeded = bt.build('image_folder', 'grades_seeded', manual, tmp_path / 'tfds')
  records = bt.check_dataset(seeded, splits={'train': 12, 'validation': 2, 'test': 4})
  assert sum(len(r) for r in records.values()) == 18


def test_csv_multi_label_with_reports(tmp_path):
  manual = dummy_data.write(tmp_path / 'manual', layout='csv_multilabel')
  _write_options(manual, label_columns=list(dummy_data.FINDINGS), channels=1, image_size=16, fit='center_crop')
  b = bt.build('image_folder', 'findings', manual, tmp_path / 'tfds')
  assert pipeline.num_classes(b) == 3 and pipeline.class_names(b) == []
  assert b.info.metadata['class_names'] == list(dummy_data.FINDINGS)
  # Patients dealt per stratum (their most common label vector): 6/2/2 of the 10 patients.
  records = bt.check_dataset(b, splits={'train': 12, 'validation': 4, 'test': 4})
  with open(manual / 'labels.csv', newline='') as f:
    rows = {row['image']: row for row in csv.DictReader(f)}
  for recs in records.values():
    for r in recs:
      row = rows[r['file_name'].decode()]
      np.testing.assert_array_equal(r['label'], [int(row[c]) for c in dummy_data.FINDINGS])
      assert r['report'].decode() == row['report'] and r['patient_id'].decode() == row['patient_id']
      assert r['image'].shape == (16, 16, 1)


def test_reload_without_manual_dir(tmp_path):
  manual = dummy_data.write(tmp_path / 'manual', layout='split_folders')
  built = bt.build('image_folder', 'my_scans', manual, tmp_path / 'tfds')
  before = bt.check_dataset(built, splits={'train': 7, 'validation': 3, 'test': 4})
  moved = manual.rename(tmp_path / 'elsewhere')  # The user's folder is gone.
  b = pipeline.get_builder('image_folder', config='my_scans', data_dir=str(tmp_path / 'tfds'))
  assert type(b).__name__ == 'ReadOnlyBuilder' and pipeline.class_names(b) == ['benign', 'malignant']
  after = bt.check_dataset(b, splits={'train': 7, 'validation': 3, 'test': 4})
  for split, recs in before.items():
    assert _files(after[split]) == _files(recs)
    np.testing.assert_array_equal(after[split][-1]['image'], recs[-1]['image'])
  with pytest.raises(ValueError, match=r"other options .*channels"):
    pipeline.get_builder('image_folder', config='my_scans,channels=1', data_dir=str(tmp_path / 'tfds'))
  # With the folder given again, files changed since the build are an error, not stale data.
  Image.new('RGB', (8, 8)).save(moved / 'test' / 'benign' / 'new.png')
  with pytest.raises(ValueError, match=r'built from other files'):
    bt.build('image_folder', 'my_scans', moved, tmp_path / 'tfds')


def test_bad_folders(tmp_path):
  manual = dummy_data.write(tmp_path / 'm1', layout='split_folders')
  with pytest.raises(ValueError, match=r'needs config=<your dataset'):
    bt.build('image_folder', None, manual, tmp_path / 'tfds')
  with pytest.raises(FileNotFoundError, match=r'not prepared .* no manual_dir was given'):
    pipeline.get_builder('image_folder', config='x', data_dir=str(tmp_path / 'tfds'))
  bt.check_fails('image_folder', 'x', tmp_path / 'nowhere', tmp_path / 'tfds', match=r'nowhere does not exist')
  (manual / 'test' / 'empty_class').mkdir()
  bt.check_fails('image_folder', 'x', manual, tmp_path / 'tfds', match=r'empty class folder .*test/empty_class')
  nothing = tmp_path / 'm2'
  nothing.mkdir()
  (nothing / 'readme.txt').write_text('hello')
  bt.check_fails('image_folder', 'x', nothing, tmp_path / 'tfds', match=r'no images found in .*m2')
  manual = dummy_data.write(tmp_path / 'm3', layout='class_folders')
  bt.corrupt(manual / 'covid' / 'covid_01.jpg')
  bt.check_fails('image_folder', 'x', manual, tmp_path / 'tfds',
                 match=r'Could not read the image .*covid/covid_01.jpg')


@pytest.mark.parametrize('case, match', [
    ('no_label_column', r"labels.csv lacks column\(s\) \['label'\]"),
    ('missing_image', r"row 3 \(line 4\): 'images/p01_0.png'"),
    ('unknown_split', r"row 1 \(line 2\): unknown split 'dev'"),
    ('patient_in_two_splits', r"1 patient\(s\) in more than one split: 'P00' in \['test', 'train'\]"),
    ('unknown_label', r"row 2 \(line 3\): unknown label 'none'"),
    ('missing_label_column', r"lacks column\(s\) \['atelectasis'\]"),
])
def test_bad_csv(tmp_path, case, match):
  manual = dummy_data.write(tmp_path / 'manual', layout='csv')
  table = manual / 'labels.csv'
  if case == 'no_label_column':
    _rewrite_csv(table, lambda rows, fields: [f for f in fields if f != 'label'])
  elif case == 'missing_image':
    (manual / 'images' / 'p01_0.png').unlink()
  elif case == 'unknown_split':
    _rewrite_csv(table, lambda rows, fields: rows[0].update(split='dev'))
  elif case == 'patient_in_two_splits':
    _rewrite_csv(table, lambda rows, fields: rows[1].update(split='test'))
  elif case == 'unknown_label':
    _write_options(manual, classes=['mild', 'severe'])
  elif case == 'missing_label_column':
    _write_options(manual, label_columns=['atelectasis'])
  bt.check_fails('image_folder', 'x', manual, tmp_path / 'tfds', match=match)


def test_bad_options(tmp_path):
  manual = dummy_data.write(tmp_path / 'manual', layout='csv_multilabel')
  _write_options(manual, label_columns=list(dummy_data.FINDINGS))
  _rewrite_csv(manual / 'labels.csv', lambda rows, fields: rows[4].update(nodule='2'))
  bt.check_fails('image_folder', 'x', manual, tmp_path / 'tfds', match=r"row 5 \(line 6\): column 'nodule' is '2'")
  _write_options(manual, colour=True)
  bt.check_fails('image_folder', 'x', manual, tmp_path / 'tfds', match=r"unknown option\(s\) \['colour'\]")
  (manual / ifb.OPTIONS_FILE).unlink()
  bt.check_fails('image_folder', 'x,channels=2', manual, tmp_path / 'tfds', match=r'channels=2 .* expected 1 or 3')
  tiny = dummy_data.write(tmp_path / 'tiny', layout='class_folders')
  _write_options(tiny, fractions={'train': 0.98, 'test': 0.02})
  bt.check_fails('image_folder', 'x', tiny, tmp_path / 'tfds', match=r"split 'test' would be empty")



def _unlabelled(b, splits):
  """Checks an unlabelled build: no label feature, `splits` sizes; returns the records."""
  assert 'label' not in b.info.features and b.info.supervised_keys is None
  assert pipeline.num_classes(b) == 0 and pipeline.class_names(b) == []
  assert b.info.metadata['labelled'] is False and b.info.metadata['options']['labels'] == 'none'
  return bt.check_dataset(b, splits=splits)


def test_unlabelled_flat_folder(tmp_path):
  manual = dummy_data.write(tmp_path / 'manual', layout='unlabelled')
  # Only images at the top level: unlabelled without any option; seeded 90/10 train/validation.
  b = bt.build('image_folder', 'pool', manual, tmp_path / 'tfds')
  records = _unlabelled(b, {'train': 18, 'validation': 2})
  got = sorted(f for recs in records.values() for f in _files(recs))
  assert got == sorted(p.name for p in manual.iterdir() if p.suffix != '.txt')
  batch = next(pipeline.make_train_iterator(b, global_batch_size=4, seed=0, process_index=0, process_count=1))
  assert batch['label'].tolist() == [-1] * 4 and batch['image'].shape == (4, 16, 20, 3)
  # Reloaded with the unchanged folder (the auto-detected labels=none matches) and without it; with it, a
  # new image is a stale build, not silently ignored.
  assert type(bt.build('image_folder', 'pool', manual, tmp_path / 'tfds')).__name__ == 'ReadOnlyBuilder'
  moved = manual.rename(tmp_path / 'elsewhere')
  again = pipeline.get_builder('image_folder', config='pool', data_dir=str(tmp_path / 'tfds'))
  assert type(again).__name__ == 'ReadOnlyBuilder' and pipeline.num_classes(again) == 0
  Image.new('RGB', (8, 8)).save(moved / 'new.png')
  with pytest.raises(ValueError, match=r'built from other files'):
    bt.build('image_folder', 'pool', moved, tmp_path / 'tfds')


def test_unlabelled_nested_and_split_folders(tmp_path):
  manual = dummy_data.write(tmp_path / 'nested', layout='unlabelled_nested')
  _write_options(manual, labels='none', patient_pattern=r'^pat(\d+)_')
  # Every image below manual_dir, whatever the sub-folders; a patient's 2 images stay together.
  b = bt.build('image_folder', 'nested', manual, tmp_path / 'tfds')
  records = _unlabelled(b, {'train': 18, 'validation': 2})
  got = [f for recs in records.values() for f in _files(recs)]
  assert sorted(got) == sorted(p.relative_to(manual).as_posix() for p in manual.rglob('pat*'))
  assert 'site_a/2019/pat01_0.bmp' in got and 'pat00_0.png' in got
  # Split folders holding only images: unlabelled, split as given ('val' -> 'validation').
  split = dummy_data.write(tmp_path / 'split', layout='unlabelled_split_folders')
  _unlabelled(bt.build('image_folder', 'split', split, tmp_path / 'tfds'), {'train': 6, 'validation': 2})
  # labels=none on labelled folders: class folders are plain folders, given splits kept.
  labelled = dummy_data.write(tmp_path / 'labelled', layout='split_folders')
  b = bt.build('image_folder', 'no_labels,labels=none', labelled, tmp_path / 'tfds')
  _unlabelled(b, {'train': 7, 'validation': 3, 'test': 4})


def test_unlabelled_csv(tmp_path):
  manual = dummy_data.write(tmp_path / 'manual', layout='unlabelled_csv')
  # A table with no label column is only taken as unlabelled when asked: it may be a misnamed label column.
  bt.check_fails('image_folder', 'pool,csv=pool.csv', manual, tmp_path / 'tfds',
                 match=r"pool.csv lacks column\(s\) \['label'\].*\"labels\": \"none\"")
  b = bt.build('image_folder', 'pool,labels=none,csv=pool.csv', manual, tmp_path / 'tfds')
  records = _unlabelled(b, {'train': 18, 'validation': 2})  # Asserts no patient on two sides.
  assert records['validation'][0]['patient_id'].decode() == records['validation'][1]['patient_id'].decode()


@pytest.mark.parametrize('case, match', [
    ('images_and_folders', r'nested holds both images .* and sub-folders .*"labels": "none"'),
    ('one_class_folder', r"only one class folder \('images'\) in .*one_class_folder.*\"labels\": \"none\""),
    ('split_kinds_differ', r"split folders \['train'\] hold images directly .* \['val'\] hold class folders"),
    ('split_images_and_folders', r'split/train holds both images .* and sub-folders'),
    ('images_beside_splits', r'images directly in the manual dir .* beside the split folders'),
    ('bad_labels_option', r"labels='yes' .* 'auto' .* or 'none'"),
    ('labels_none_with_classes', r'labels=none .* contradicts'),
])
def test_ambiguous_layouts(tmp_path, case, match):
  config = 'x'
  if case == 'images_and_folders':
    manual = dummy_data.write(tmp_path / 'nested', layout='unlabelled_nested')
  elif case == 'one_class_folder':
    manual = tmp_path / case
    dummy_data.write(manual / 'images', layout='unlabelled')
  else:
    manual = dummy_data.write(tmp_path / 'split', layout='unlabelled_split_folders')
    if case == 'split_kinds_differ':
      for p in sorted((manual / 'val').iterdir()):
        (manual / 'val' / 'cls').mkdir(exist_ok=True)
        p.rename(manual / 'val' / 'cls' / p.name)
    elif case == 'split_images_and_folders':
      (manual / 'train' / 'more').mkdir()
      Image.new('RGB', (8, 8)).save(manual / 'train' / 'more' / 'x.png')
    elif case == 'images_beside_splits':
      Image.new('RGB', (8, 8)).save(manual / 'stray.png')
    elif case == 'bad_labels_option':
      config = 'x,labels=yes'
    elif case == 'labels_none_with_classes':
      _write_options(manual, labels='none', classes=['a', 'b'])
  bt.check_fails('image_folder', config, manual, tmp_path / 'tfds', match=match)

def test_real_nih1000_folders(tmp_path):
  root = bt.shared_dir('nih_cxr14_1000_64px') / 'NIH1000'
  b = bt.build('image_folder', 'nih1000', root, tmp_path / 'tfds')
  assert pipeline.class_names(b) == ['0_normal', '1_abnormal']
  # PROVENANCE.md: train 300/300, valid 100/100, test 100/100, all 64x64.
  records = bt.check_dataset(b, splits={'train': 600, 'validation': 200, 'test': 200},
                             label_counts={'train': [300, 300], 'validation': [100, 100], 'test': [100, 100]})
  assert records['test'][0]['image'].shape == (64, 64, 3)
  # Its split is by image: with patient ids from the file names, the builder names the shared patients.
  shared = r"30 patient\(s\) in more than one split: '00000116' in \['train', 'validation'\]"
  with pytest.raises(ValueError, match=shared):
    ifb.ImageFolder.make_builder(config='nih1000_patients', data_dir=tmp_path / 'tfds2', manual_dir=root,
                                 options={'patient_pattern': r'^(\d{8})_'})


def test_config_and_options_parsing():
  assert ifb.parse_config('my_scans') == ('my_scans', {})
  assert ifb.parse_config('my_scans, channels=1,image_size=256') == ('my_scans', {'channels': '1', 'image_size': '256'})
  for bad, match in (('', 'needs config'), ('a/b', 'dataset name'), ('a,label_columns=x', 'expected key=value')):
    with pytest.raises(ValueError, match=match):
      ifb.parse_config(bad)
  opts = ifb.parse_options({'fractions': [80, 0, 20], 'channels': '1'}, source='test')
  assert opts['fractions'] == {'train': 0.8, 'test': 0.2} and opts['channels'] == 1
  with pytest.raises(ValueError, match='not both'):
    ifb.parse_options({'label_columns': ['a'], 'classes': ['b']}, source='test')
