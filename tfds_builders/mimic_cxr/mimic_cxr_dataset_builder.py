"""TFDS builder for MIMIC-CXR-JPG 2.0.0 images with the free-text reports of MIMIC-CXR 2.0.0.

Splits: the official `mimic-cxr-2.0.0-split.csv.gz` (train / validate / test -> 'train' /
'validation' / 'test'; it is patient-disjoint). Within a split, records are sorted by file name
(files/pXX/p<subject>/s<study>/<dicom_id>.jpg).

Labels: the 14 CheXpert-labeler columns of `mimic-cxr-2.0.0-chexpert.csv.gz`, stored in CheXpert's
order (`tfds_builders.chexpert.LABELS`) under the same uncertainty policies (`u_ones`, `u_zeros`,
`u_keep`; blank -> 0). A study with no row in that table (a few reports have neither findings nor
impression) gets all zeros.

Reports: `report` is the whole text file; `findings` and `impression` are the FINDINGS and
IMPRESSION sections found by their upper-case headings ("" when absent; see `report_sections`).
"""
from __future__ import annotations

import dataclasses
import pathlib
import re

import numpy as np
import tensorflow_datasets as tfds

from tfds_builders import common
from tfds_builders.chexpert.chexpert_dataset_builder import LABELS, parse_labels, require_files

# Where the MIMIC-CXR-JPG tables and files/ folder may sit (plain unzip, or `wget -r` of PhysioNet).
_ROOTS = ('', 'mimic-cxr-jpg/2.0.0', 'mimic-cxr-jpg/2.1.0', 'physionet.org/files/mimic-cxr-jpg/2.0.0',
          'physionet.org/files/mimic-cxr-jpg/2.1.0')
# Where the unzipped mimic-cxr-reports.zip (files/pXX/p<subject>/s<study>.txt) may sit, besides <root>/files.
_REPORT_ROOTS = ('reports/files', 'mimic-cxr-reports/files', 'physionet.org/files/mimic-cxr/2.0.0/files')
_SPLITS = {'train': 'train', 'validate': 'validation', 'test': 'test'}
_FRONTAL = ('PA', 'AP')
# A section heading: an upper-case phrase at the start of a line, followed by a colon.
_HEADING = re.compile(r'^[ \t]*([A-Z][A-Z &/,()-]*[A-Z)])[ \t]*:', re.MULTILINE)


def report_sections(text: str) -> dict[str, str]:
  """FINDINGS and IMPRESSION sections of a MIMIC-CXR report, whitespace collapsed ("" if absent).

  A section runs from its heading to the next upper-case heading ("COMPARISON:", "IMPRESSION:" ...).
  A combined "FINDINGS AND IMPRESSION:" section fills whichever of the two is missing, and
  "CONCLUSION:" stands in for a missing IMPRESSION.
  """
  heads = list(_HEADING.finditer(text))
  sections: dict[str, str] = {}
  for i, m in enumerate(heads):
    end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
    sections.setdefault(' '.join(m.group(1).split()), ' '.join(text[m.end():end].split()))
  both = sections.get('FINDINGS AND IMPRESSION', '')
  return {'findings': sections.get('FINDINGS') or both,
          'impression': sections.get('IMPRESSION') or sections.get('CONCLUSION') or both}


def _table(root: pathlib.Path, stem: str) -> pathlib.Path:
  return common.find_first(root, [f'{stem}.csv.gz', f'{stem}.csv'], dataset='mimic_cxr')


@dataclasses.dataclass
class MimicCxrConfig(tfds.core.BuilderConfig):
  """Uncertainty policy x view filter x stored size; `images_only` drops the report requirement."""
  policy: str = 'u_ones'  # A key of tfds_builders.chexpert.POLICIES.
  views: str = 'frontal'  # 'frontal' (ViewPosition PA or AP) or 'all'.
  image_size: int = 256
  images_only: bool = False  # True: reports are not read; report/findings/impression are "".


class MimicCxr(tfds.core.GeneratorBasedBuilder):
  """MIMIC-CXR-JPG chest radiographs with CheXpert labels and the free-text radiology reports."""

  name = 'mimic_cxr'
  LABEL_NAMES = LABELS  # Names of the multi-label 'label' columns (pipeline.label_names).
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release: official split, 14 CheXpert labels, report + findings/impression.'}
  BUILDER_CONFIGS = [
      MimicCxrConfig(name='frontal_u_ones_256', policy='u_ones', views='frontal', image_size=256,
                     description='PA/AP views; uncertain -> 1; padded square 256x256 grayscale PNG; reports.'),
      MimicCxrConfig(name='all_u_keep_256', policy='u_keep', views='all', image_size=256,
                     description='All views; uncertain kept as -1; 256x256 grayscale PNG; reports.'),
      MimicCxrConfig(name='frontal_u_ones_256_images_only', policy='u_ones', views='frontal', image_size=256,
                     images_only=True,
                     description='As frontal_u_ones_256 without the reports (text features are "").'),
  ]
  DEFAULT_CONFIG_NAME = 'frontal_u_ones_256'
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  MIMIC-CXR is a credentialed-access PhysioNet dataset: complete CITI training, sign the PhysioNet
  Credentialed Health Data Use Agreement 1.5.0 and accept the PhysioNet Credentialed Health Data
  License 1.5.0 (no re-identification, no sharing). Then download:

  * MIMIC-CXR-JPG 2.0.0 (https://physionet.org/content/mimic-cxr-jpg/2.0.0/; 2.1.0 has the same files):
    files/ and mimic-cxr-2.0.0-{split,chexpert,metadata}.csv.gz.
  * mimic-cxr-reports.zip from MIMIC-CXR 2.0.0 (https://physionet.org/content/mimic-cxr/2.0.0/).

  Cite Johnson et al., MIMIC-CXR-JPG (arXiv:1901.07042) and MIMIC-CXR (Sci. Data 6:317, 2019), and
  PhysioNet (Goldberger et al. 2000). Expected layout:

    <manual_dir>/mimic-cxr-2.0.0-split.csv.gz      dicom_id,study_id,subject_id,split (train/validate/test)
    <manual_dir>/mimic-cxr-2.0.0-chexpert.csv.gz   subject_id,study_id + the 14 CheXpert columns
    <manual_dir>/mimic-cxr-2.0.0-metadata.csv.gz   dicom_id,...,ViewPosition,...
    <manual_dir>/files/p10/p10000032/s50414267/02aa804e-bde0afdd-112c0b34-7bc16630-4e384014.jpg
    <manual_dir>/files/p10/p10000032/s50414267.txt  (mimic-cxr-reports.zip unzipped into <manual_dir>)

  Also accepted: the tables gunzipped (.csv); everything under mimic-cxr-jpg/2.0.0/ or
  physionet.org/files/mimic-cxr-jpg/2.0.0/ (as `wget -r` leaves it); the reports under
  <manual_dir>/reports/files/, <manual_dir>/mimic-cxr-reports/files/ or
  physionet.org/files/mimic-cxr/2.0.0/files/. A missing report is an error naming the study and the
  paths looked at, except in the *_images_only config.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config
    s = c.image_size
    return self.dataset_info_from_configs(
        description=f'MIMIC-CXR-JPG 2.0.0 ({c.views} views, uncertainty policy {c.policy}) with reports.',
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(s, s, 1), encoding_format='png'),
            'label': tfds.features.Tensor(shape=(len(LABELS),), dtype=np.int64,
                                          doc='1/0 (and -1 = uncertain under u_keep) for: ' + ', '.join(LABELS)),
            'id': tfds.features.Scalar(dtype=np.int64, doc='Index in the split, records sorted by file name.'),
            'file_name': tfds.features.Text(doc='files/pXX/p<subject>/s<study>/<dicom_id>.jpg'),
            'patient_id': tfds.features.Text(doc='subject_id, e.g. "10000032".'),
            'study_id': tfds.features.Text(doc='study_id, e.g. "50414267".'),
            'view': tfds.features.Text(doc='ViewPosition from the metadata table (PA, AP, LATERAL, LL, ... or "").'),
            'report': tfds.features.Text(doc='Full free-text report of the study.'),
            'findings': tfds.features.Text(doc='FINDINGS section, "" if absent.'),
            'impression': tfds.features.Text(doc='IMPRESSION section, "" if absent.'),
        }),
        supervised_keys=('image', 'label'),
        disable_shuffling=True,
        homepage='https://physionet.org/content/mimic-cxr-jpg/2.0.0/',
        citation='Johnson et al., MIMIC-CXR, a de-identified publicly available database of chest radiographs '
                 'with free-text reports, Scientific Data 6:317 (2019); Johnson et al., MIMIC-CXR-JPG, '
                 'arXiv:1901.07042 (2019).',
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    c = self.builder_config
    manual = pathlib.Path(dl_manager.manual_dir)
    split_csv = common.find_first(manual, [f'{r}/mimic-cxr-2.0.0-split.csv{z}'.lstrip('/') for r in _ROOTS
                                           for z in ('.gz', '')], dataset='mimic_cxr')
    root = split_csv.parent
    prefix = root.relative_to(manual).as_posix()  # '.' unless the release is nested in the manual dir.
    chexpert_csv, metadata_csv = _table(root, 'mimic-cxr-2.0.0-chexpert'), _table(root, 'mimic-cxr-2.0.0-metadata')
    common.require(root, 'files', dataset='mimic_cxr')

    labels = {}
    for i, row in enumerate(common.read_csv(chexpert_csv, required=('subject_id', 'study_id') + LABELS,
                                            dataset='mimic_cxr')):
      labels[row['study_id']] = parse_labels(row, policy=c.policy, where=f'{chexpert_csv} row {i + 2} '
                                             f'(study_id={row["study_id"]})')
    views = {row['dicom_id']: row['ViewPosition'] for row in
             common.read_csv(metadata_csv, required=('dicom_id', 'ViewPosition'), dataset='mimic_cxr')}

    splits = {s: [] for s in _SPLITS.values()}
    for i, row in enumerate(common.read_csv(split_csv, required=('dicom_id', 'study_id', 'subject_id', 'split'),
                                            dataset='mimic_cxr')):
      where = f'{split_csv} row {i + 2} (dicom_id={row["dicom_id"]})'
      if row['split'] not in _SPLITS:
        raise ValueError(f'{where}: split {row["split"]!r}; valid values are {list(_SPLITS)}')
      if row['dicom_id'] not in views:
        raise ValueError(f'{where}: dicom_id not in {metadata_csv}')
      view = views[row['dicom_id']]
      if c.views == 'frontal' and view not in _FRONTAL:
        continue
      subject, study = row['subject_id'], row['study_id']
      rel = f'files/p{subject[:2]}/p{subject}/s{study}'
      image = f'{rel}/{row["dicom_id"]}.jpg'
      splits[_SPLITS[row['split']]].append({
          'path': root / image, 'file_name': image if prefix == '.' else f'{prefix}/{image}',
          'report_rel': f'{rel}.txt', 'patient_id': subject, 'study_id': study, 'view': view,
          'label': labels.get(study, [0] * len(LABELS))})  # No labeler row: nothing mentioned.
    for split, records in splits.items():
      common.check_nonempty(split, records, dataset='mimic_cxr', where=split_csv)
      records.sort(key=lambda r: r['file_name'])
    everything = [r for records in splits.values() for r in records]
    require_files([r['path'] for r in everything], dataset='mimic_cxr', what='images')
    if not c.images_only:
      self._find_reports(everything, root, manual)
    return {split: self._generate_examples(records) for split, records in splits.items()}

  def _find_reports(self, records, root: pathlib.Path, manual: pathlib.Path) -> None:
    """Sets r['report_path'] for every record; raises naming the first study whose report is missing."""
    bases = [root] + [manual / r.removesuffix('/files') for r in _REPORT_ROOTS]
    found: dict[str, pathlib.Path | None] = {}
    for r in records:
      if r['report_rel'] not in found:
        found[r['report_rel']] = next((b / r['report_rel'] for b in bases if (b / r['report_rel']).is_file()), None)
      r['report_path'] = found[r['report_rel']]
    missing = sorted({r['report_rel']: r for r in records if r['report_path'] is None}.values(),
                     key=lambda r: r['report_rel'])
    if missing:
      r = missing[0]
      raise common.LayoutError(
          f'mimic_cxr: no report for study s{r["study_id"]} (subject {r["patient_id"]}): looked for '
          f'{[str(b / r["report_rel"]) for b in bases]}; {len(missing)} of {len(found)} studies lack a report. '
          f'Unzip mimic-cxr-reports.zip (MIMIC-CXR 2.0.0) into the manual dir, or use the config '
          f'frontal_u_ones_256_images_only.')

  def _generate_examples(self, records):
    size = self.builder_config.image_size
    for i, r in enumerate(records):
      report = ''
      if r.get('report_path') is not None:
        try:
          report = r['report_path'].read_text(encoding='utf-8').strip()
        except (OSError, UnicodeDecodeError) as e:
          raise ValueError(f'mimic_cxr: could not read the report {r["report_path"]}: {e}') from e
      sections = report_sections(report)
      yield i, {
          'image': common.image_bytes(r['path'], mode='L', fmt='png', size=size, fit='pad'),
          'label': np.asarray(r['label'], np.int64),
          'id': i,
          'file_name': r['file_name'],
          'patient_id': r['patient_id'],
          'study_id': r['study_id'],
          'view': r['view'],
          'report': report,
          'findings': sections['findings'],
          'impression': sections['impression'],
      }
