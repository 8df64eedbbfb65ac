"""Writes a miniature MIMIC-CXR-JPG 2.0.0 + reports in the official layout (synthetic content) for tests.

12 subjects: 0-7 train, 8-9 validate, 10-11 test. Subject k has 1 + (k % 2) studies; each study has a
PA (even k) or AP (odd k) image, and a LATERAL one when the study number is even. Reports vary in
their sections: FINDINGS + IMPRESSION, IMPRESSION only (every 3rd study), or a combined
"FINDINGS AND IMPRESSION" (every 5th). The first study has no row in the CheXpert table.
"""
from __future__ import annotations

import csv
import gzip
import io
import pathlib

import numpy as np
from PIL import Image

# Column order of the official mimic-cxr-2.0.0-chexpert.csv.gz (alphabetical, unlike CheXpert's CSV).
CHEXPERT_COLUMNS = ['subject_id', 'study_id', 'Atelectasis', 'Cardiomegaly', 'Consolidation', 'Edema',
                    'Enlarged Cardiomediastinum', 'Fracture', 'Lung Lesion', 'Lung Opacity', 'No Finding',
                    'Pleural Effusion', 'Pleural Other', 'Pneumonia', 'Pneumothorax', 'Support Devices']
METADATA_COLUMNS = ['dicom_id', 'subject_id', 'study_id', 'PerformedProcedureStepDescription', 'ViewPosition',
                    'Rows', 'Columns', 'StudyDate', 'StudyTime', 'ProcedureCodeSequence_CodeMeaning',
                    'ViewCodeSequence_CodeMeaning', 'PatientOrientationCodeSequence_CodeMeaning']


def report_text(n: int) -> str:
  """The synthetic report of the n-th study (0-based)."""
  head = ('                                 FINAL REPORT\n EXAMINATION:  CHEST (PA AND LAT)\n \n'
          f' INDICATION:  ___ with synthetic complaint {n}.\n \n COMPARISON:  None.\n \n')
  if n % 5 == 4:
    return head + f' FINDINGS AND IMPRESSION:\n \n Combined section of study {n}.\n'
  if n % 3 == 2:
    return head + f' IMPRESSION: \n \n Impression of study {n},\n second line.\n'
  return (head + f' FINDINGS: \n \n Findings of study {n}: nothing\n acute.\n \n'
          f' IMPRESSION: \n \n Impression of study {n}.\n')


def _write_gz(path: pathlib.Path, header, rows, gz: bool = True):
  buf = io.StringIO()
  csv.writer(buf, lineterminator='\n').writerows([header, *rows])
  if gz:
    with gzip.open(path, 'wt', newline='') as f:
      f.write(buf.getvalue())
  else:
    path.with_name(path.name.removesuffix('.gz')).write_text(buf.getvalue())


def write(root, *, reports: str = 'same', gz: bool = True, size: tuple[int, int] = (24, 30),
          seed: int = 0) -> pathlib.Path:
  """Writes the tables, files/ and reports under `root` and returns `root`.

  Args:
    reports: 'same' (report .txt files inside files/, as after unzipping into the manual dir),
      'separate' (under reports/files/), or 'none'.
    gz: write the tables gzipped (official) or as plain .csv.
  """
  root = pathlib.Path(root)
  rng = np.random.default_rng(seed)
  w, h = size
  split_rows, chexpert_rows, metadata_rows = [], [], []
  n = 0
  for k in range(12):
    subject = str(10000032 + k * 800003)  # p10 ... p18, as in the official p10-p19.
    split = 'train' if k < 8 else 'validate' if k < 10 else 'test'
    for s in range(1 + k % 2):
      study = str(50000000 + n * 7919)
      views = [('PA', 'postero-anterior') if k % 2 == 0 else ('AP', 'antero-posterior')]
      if n % 2 == 0:
        views.append(('LATERAL', 'lateral'))
      folder = root / 'files' / f'p{subject[:2]}' / f'p{subject}' / f's{study}'
      folder.mkdir(parents=True, exist_ok=True)
      for view, meaning in views:
        dicom = '-'.join(''.join(rng.choice(list('0123456789abcdef'), 8)) for _ in range(5))
        Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), 'L').save(folder / f'{dicom}.jpg', quality=95)
        split_rows.append([dicom, study, subject, split])
        metadata_rows.append([dicom, subject, study, 'CHEST (PA AND LAT)', view, h, w, '21800506', '213014.531',
                              'CHEST (PA AND LAT)', meaning, 'Erect'])
      if n:
        values = ['1.0', '0.0', '-1.0', '']
        chexpert_rows.append([subject, study] + [values[j] for j in rng.integers(0, 4, 14)])
      if reports != 'none':
        txt = (root / 'reports' if reports == 'separate' else root) / 'files' / f'p{subject[:2]}' / f'p{subject}'
        txt.mkdir(parents=True, exist_ok=True)
        (txt / f's{study}.txt').write_text(report_text(n))
      n += 1
  _write_gz(root / 'mimic-cxr-2.0.0-split.csv.gz', ['dicom_id', 'study_id', 'subject_id', 'split'], split_rows, gz)
  _write_gz(root / 'mimic-cxr-2.0.0-chexpert.csv.gz', CHEXPERT_COLUMNS, chexpert_rows, gz)
  _write_gz(root / 'mimic-cxr-2.0.0-metadata.csv.gz', METADATA_COLUMNS, metadata_rows, gz)
  return root
