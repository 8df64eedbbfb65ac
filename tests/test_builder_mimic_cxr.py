"""MIMIC-CXR builder: dummy data in the official layout (reports in both places), bad inputs."""
import csv
import gzip

import numpy as np

import builder_testing as bt
from tfds_builders.chexpert import LABELS
from tfds_builders.mimic_cxr import dummy_data, report_sections

# Dummy: 18 studies of 12 subjects (12/3/3 train/validate/test), one PA or AP image each, plus 9 laterals.
_FRONTAL = {'train': 12, 'validation': 3, 'test': 3}
_ALL = {'train': 18, 'validation': 5, 'test': 4}


def _read(path):
  opener = gzip.open if path.name.endswith('.gz') else open
  with opener(path, 'rt', newline='') as f:
    return list(csv.reader(f))


def _rewrite(path, fn):
  """Rewrites a (gzipped) CSV through fn(header, rows) -> (header, rows)."""
  header, *rows = _read(path)
  header, rows = fn(header, rows)
  with gzip.open(path, 'wt', newline='') as f:
    csv.writer(f, lineterminator='\n').writerows([header, *rows])


def _labels(root, uncertain):
  """study_id -> expected label vector in CheXpert order, read from the dummy table independently."""
  header, *rows = _read(root / 'mimic-cxr-2.0.0-chexpert.csv.gz')
  value = {'1.0': 1, '0.0': 0, '-1.0': uncertain, '': 0}
  return {r[1]: [value[r[header.index(name)]] for name in LABELS] for r in rows}


def test_report_sections():
  text = ' FINAL REPORT\n INDICATION: cough.\n FINDINGS:\n Lungs are\n clear.\n IMPRESSION: No acute process.\n'
  assert report_sections(text) == {'findings': 'Lungs are clear.', 'impression': 'No acute process.'}
  assert report_sections(' CONCLUSION:\n  Normal.\n') == {'findings': '', 'impression': 'Normal.'}
  assert report_sections('no headings at all') == {'findings': '', 'impression': ''}


def test_dummy_build_frontal_u_ones(tmp_path):
  manual = dummy_data.write(tmp_path / 'manual')
  b = bt.build('mimic_cxr', 'frontal_u_ones_256', manual, tmp_path / 'tfds')
  records = bt.check_dataset(b, splits=_FRONTAL)
  labels = _labels(manual, 1)
  studies = sorted({r['study_id'].decode() for recs in records.values() for r in recs})
  assert len(studies) == 18 and len(labels) == 17  # The first study has no CheXpert row.
  for split, recs in records.items():
    names = [r['file_name'].decode() for r in recs]
    assert names == sorted(names)
    for r in recs:
      study = r['study_id'].decode()
      n = (int(study) - 50000000) // 7919
      np.testing.assert_array_equal(r['label'], labels.get(study, [0] * 14))
      assert r['view'] in (b'PA', b'AP') and r['image'].shape == (256, 256, 1)
      assert r['file_name'].decode() == f'files/p{r["patient_id"].decode()[:2]}/p{r["patient_id"].decode()}/s{study}/' \
          + r['file_name'].decode().rsplit('/', 1)[1]
      assert r['report'].decode() == dummy_data.report_text(n).strip()
      if n % 5 == 4:
        assert r['findings'] == r['impression'] == f'Combined section of study {n}.'.encode()
      elif n % 3 == 2:
        assert r['findings'] == b'' and r['impression'] == f'Impression of study {n}, second line.'.encode()
      else:
        assert r['findings'] == f'Findings of study {n}: nothing acute.'.encode()
  assert records['train'][0]['study_id'] == b'50000000' and not records['train'][0]['label'].any()
  assert {r['patient_id'] for r in records['test']} == {b'18000062', b'18800065'}


def test_dummy_build_all_views_separate_reports_plain_csv(tmp_path):
  manual = dummy_data.write(tmp_path / 'manual', reports='separate', gz=False)
  b = bt.build('mimic_cxr', 'all_u_keep_256', manual, tmp_path / 'tfds')
  records = bt.check_dataset(b, splits=_ALL)
  header, *rows = _read(manual / 'mimic-cxr-2.0.0-chexpert.csv')
  value = {'1.0': 1, '0.0': 0, '-1.0': -1, '': 0}
  labels = {r[1]: [value[r[header.index(name)]] for name in LABELS] for r in rows}
  everything = [r for recs in records.values() for r in recs]
  for r in everything:
    np.testing.assert_array_equal(r['label'], labels.get(r['study_id'].decode(), [0] * 14))
    assert r['report'].startswith(b'FINAL REPORT')
  assert any((r['label'] == -1).any() for r in everything)
  assert sum(r['view'] == b'LATERAL' for r in everything) == 9


def test_images_only_nested_physionet_layout(tmp_path):
  nested = 'physionet.org/files/mimic-cxr-jpg/2.0.0'
  dummy_data.write(tmp_path / 'manual' / nested, reports='none')
  b = bt.build('mimic_cxr', 'frontal_u_ones_256_images_only', tmp_path / 'manual', tmp_path / 'tfds')
  records = bt.check_dataset(b, splits=_FRONTAL)
  r = records['validation'][0]
  assert r['file_name'].startswith(f'{nested}/files/p16/'.encode()) and r['report'] == r['findings'] == b''


def test_bad_inputs(tmp_path):
  def fresh(name, **kw):
    return dummy_data.write(tmp_path / name, **kw)

  manual = fresh('m1', reports='none')
  bt.check_fails('mimic_cxr', None, manual, tmp_path / 't1',
                 match=r'no report for study s50000000 \(subject 10000032\): looked for .*p10000032/s50000000\.txt.*'
                       r'18 of 18 studies lack a report')
  manual = fresh('m2')
  (manual / 'files/p14/p14000047/s50055433.txt').unlink()
  bt.check_fails('mimic_cxr', None, manual, tmp_path / 't2', match=r'no report for study s50055433 .*1 of 18')

  manual = fresh('m3')
  (manual / 'mimic-cxr-2.0.0-chexpert.csv.gz').unlink()
  bt.check_fails('mimic_cxr', None, manual, tmp_path / 't3', match=r'none of .*mimic-cxr-2.0.0-chexpert\.csv\.gz')
  manual = fresh('m4')
  _rewrite(manual / 'mimic-cxr-2.0.0-metadata.csv.gz', lambda h, rows: (h[:4] + h[5:], [r[:4] + r[5:] for r in rows]))
  bt.check_fails('mimic_cxr', None, manual, tmp_path / 't4',
                 match=r"metadata\.csv\.gz lacks column\(s\) \['ViewPosition'\]")

  manual = fresh('m5')
  col = dummy_data.CHEXPERT_COLUMNS.index('Pneumonia')
  _rewrite(manual / 'mimic-cxr-2.0.0-chexpert.csv.gz',
           lambda h, rows: (h, [r[:col] + ['yes'] + r[col + 1:] if i == 2 else r for i, r in enumerate(rows)]))
  bt.check_fails('mimic_cxr', None, manual, tmp_path / 't5',
                 match=r"chexpert\.csv\.gz row 4 \(study_id=50023757\): column 'Pneumonia' has value 'yes'; valid")
  manual = fresh('m6')
  _rewrite(manual / 'mimic-cxr-2.0.0-split.csv.gz',
           lambda h, rows: (h, [r[:3] + ['val'] if i == 5 else r for i, r in enumerate(rows)]))
  bt.check_fails('mimic_cxr', None, manual, tmp_path / 't6', match=r"split\.csv\.gz row 7 .*: split 'val'; valid")

  manual = fresh('m7')
  image = sorted((manual / 'files/p13').rglob('*.jpg'))[0]
  bt.corrupt(image)
  bt.check_fails('mimic_cxr', 'all_u_keep_256', manual, tmp_path / 't7',
                 match=f'Could not read the image .*{image.name}')
  manual = fresh('m8')
  image = sorted((manual / 'files/p12').rglob('*.jpg'))[0]
  image.unlink()
  bt.check_fails('mimic_cxr', 'all_u_keep_256', manual, tmp_path / 't8', match=f'1 of 27 images .*{image.name}')
