"""A TFDS builder for a user's own labelled 3D volumes in NIfTI files (.nii / .nii.gz), listed in a CSV.

Like image_folder, the classes come from the user's table, so there is no fixed list of builder
configs: `NiftiVolumes.make_builder` (what `medssl_jax.data.pipeline.get_builder('nifti_volumes',
config=<name>, manual_dir=...)` calls) reads the table, makes a `NiftiVolumesConfig` named after the
user's dataset and builds `<data_dir>/nifti_volumes/<name>/1.0.0/`. Later calls load that prepared copy
with `tfds.builder_from_directory`.

Each volume is reoriented to the closest canonical (RAS+) orientation, so every record shares one axis
order, and stored as [D, H, W, 1] = (inferior->superior, posterior->anterior, left->right): axial slices
[H, W] stacked from the feet up. It is resampled to a cube of `size`³ (option "fit": "pad" keeps its
physical proportions with isotropic voxels, padded with its own minimum; "squash" stretches each axis)
and mapped to uint8 by a fixed intensity window (CT: Hounsfield units [lo, hi] -> 0..255) or, without
one, by its own percentiles (MR, whose intensities have no absolute scale). The source voxel spacing,
source shape and the stored voxels' spacing (mm, in [D, H, W] order) are features.

Split policy: a CSV `split` column is used as given (a patient in two splits is an error); otherwise a
seeded split stratified by label in which no patient is on two sides (`common.patient_split`, seed 0,
70/10/20 train/validation/test; options "fractions" and "seed"). Records of each split are ordered by
`file_name` (the path as the CSV gives it).
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import math
import os
import pathlib
import re
from typing import Any, Mapping, Sequence

import nibabel as nib
import numpy as np
import tensorflow_datasets as tfds

from tfds_builders import common

_DATASET = 'nifti_volumes'
SPLIT_ALIASES = {'train': 'train', 'validation': 'validation', 'val': 'validation', 'valid': 'validation',
                 'test': 'test'}
_SPLIT_ORDER = ('train', 'validation', 'test')
_NAME = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.-]*$')

# Options: name -> default. Set them inline in the config string ('my_ct,size=64,window=-1000:400'; lists
# as colon-separated values) or with make_builder(options={...}).
DEFAULT_OPTIONS: dict[str, Any] = {
    'csv': 'volumes.csv',        # The table, relative to the manual dir: columns path, label[, split, patient_id].
    'size': 64,                  # Edge of the stored cube: image uint8 [size, size, size, 1].
    'fit': 'pad',                # 'pad' (physical proportions, isotropic voxels) or 'squash' (each axis to size).
    'window': None,              # [lo, hi]: fixed intensity window -> 0..255 (CT in HU, e.g. [-1000, 400]).
    'percentiles': [0.5, 99.5],  # Without a window: each volume's own percentiles [lo, hi] -> 0..255 (MR).
    'classes': [],               # Optional fixed class list (order = label ids); else the sorted labels.
    'fractions': {'train': 0.7, 'validation': 0.1, 'test': 0.2},  # Seeded split, when the CSV has no split.
    'seed': 0,                   # Seed of that split.
}
_LAYOUT_HELP = (f'expected a table <manual_dir>/volumes.csv (option "csv") with columns path (a .nii or .nii.gz '
                f'file relative to the manual dir), label, and optionally split and patient_id; see '
                f'tfds_builders.{_DATASET} MANUAL_DOWNLOAD_INSTRUCTIONS')


class OptionsError(ValueError):
  """Bad nifti_volumes options (config string or options argument)."""


def _numbers(value, n: int | None, key: str, source: str) -> list[float]:
  """'a:b' (config string) or a sequence -> floats, checked for count and finiteness."""
  parts = value.split(':') if isinstance(value, str) else value
  try:
    out = [float(v) for v in parts]
  except (TypeError, ValueError):
    out = []
  if not out or (n is not None and len(out) != n) or not all(math.isfinite(v) for v in out):
    raise OptionsError(f'{_DATASET}: option {key}={value!r} in {source}; expected {n or "several"} numbers '
                       f'({":".join(["x"] * (n or 3))} in the config string)')
  return out


def parse_options(raw: Mapping[str, Any], *, source: str) -> dict[str, Any]:
  """Validates options (from `source`, named in errors) and fills in the defaults; lists stay JSON-friendly."""
  unknown = sorted(set(raw) - set(DEFAULT_OPTIONS))
  if unknown:
    raise OptionsError(f'{_DATASET}: unknown option(s) {unknown} in {source}; valid: {sorted(DEFAULT_OPTIONS)}')
  opts = {**DEFAULT_OPTIONS, **raw}

  def bad(key, expected):
    raise OptionsError(f'{_DATASET}: option {key}={opts[key]!r} in {source}; expected {expected}')

  for key in ('size', 'seed'):
    try:
      opts[key] = int(opts[key])
    except (TypeError, ValueError):
      bad(key, 'an integer')
  if opts['size'] < 2:
    bad('size', 'the edge of the stored cube, at least 2 (e.g. 64)')
  if opts['fit'] not in ('pad', 'squash'):
    bad('fit', "'pad' (keep physical proportions) or 'squash' (each axis to size)")
  if not isinstance(opts['csv'], str) or not opts['csv']:
    bad('csv', 'a file name relative to the manual dir')
  if opts['window'] in ('', 'none', 'None'):
    opts['window'] = None
  if opts['window'] is not None:
    opts['window'] = _numbers(opts['window'], 2, 'window', source)
    if opts['window'][0] >= opts['window'][1]:
      bad('window', '[lo, hi] with lo < hi (e.g. -1000:400 for CT in Hounsfield units)')
  opts['percentiles'] = _numbers(opts['percentiles'], 2, 'percentiles', source)
  if not 0 <= opts['percentiles'][0] < opts['percentiles'][1] <= 100:
    bad('percentiles', '[lo, hi] with 0 <= lo < hi <= 100 (e.g. 0.5:99.5)')
  classes = opts['classes'].split(':') if isinstance(opts['classes'], str) else list(opts['classes'])
  if not all(isinstance(c, str) and c for c in classes) or len(set(classes)) != len(classes):
    bad('classes', 'distinct non-empty names (a:b:c in the config string)')
  opts['classes'] = classes
  fr = opts['fractions']
  if isinstance(fr, str) or (isinstance(fr, Sequence) and not isinstance(fr, Mapping)):
    fr = dict(zip(_SPLIT_ORDER, _numbers(fr, 3, 'fractions', source)))
  if (not isinstance(fr, Mapping) or set(fr) - set(_SPLIT_ORDER) or
      not all(isinstance(v, (int, float)) and v >= 0 for v in fr.values()) or sum(fr.values()) <= 0):
    bad('fractions', "{'train': .7, 'validation': .1, 'test': .2} (70:10:20 in the config string): "
                     'non-negative, positive sum')
  # Kept as given (patient_split normalises them), so parsing stored options again gives the same options.
  opts['fractions'] = {s: float(fr[s]) for s in _SPLIT_ORDER if fr.get(s, 0) > 0}
  return opts


def parse_config(config: str | None) -> tuple[str, dict[str, str]]:
  """'my_ct' or 'my_ct,size=64,window=-1000:400' -> (name, inline options)."""
  if not config or not str(config).strip():
    raise OptionsError(f"{_DATASET} needs config=<your dataset's name> (e.g. 'my_ct': data.builder_config in a "
                       f'config file); it names the prepared copy <data_dir>/{_DATASET}/<name>/')
  name, *parts = [p.strip() for p in str(config).split(',')]
  if not _NAME.match(name):
    raise OptionsError(f'{_DATASET}: dataset name {name!r} must be letters, digits, _ . - (starting with a '
                       'letter or digit)')
  inline = {}
  for p in parts:
    key, sep, value = p.partition('=')
    if not sep or key.strip() not in DEFAULT_OPTIONS:
      raise OptionsError(f'{_DATASET}: config option {p!r} in {config!r}; expected key=value with key in '
                         f'{sorted(DEFAULT_OPTIONS)}')
    inline[key.strip()] = value.strip()
  return name, inline


# ---------------------------------------------------------------- the table


@dataclasses.dataclass(frozen=True)
class Volume:
  """One row of the table."""
  path: str         # As the CSV gives it (relative to the manual dir, or absolute).
  label: int
  patient_id: str
  row: str          # 'volumes.csv row 3 (line 4)', for errors.


@dataclasses.dataclass
class Table:
  """What `read_table` found: the classes and the volumes of each split (sorted by path)."""
  class_names: tuple[str, ...]
  splits: dict[str, list[Volume]]
  user_split: bool

  def fingerprint(self, opts: Mapping[str, Any]) -> str:
    """A hash of everything that decides the dataset's content but the voxels (no volume is read)."""
    h = hashlib.sha256(json.dumps([dict(opts), self.class_names], sort_keys=True).encode())
    for split, volumes in self.splits.items():
      h.update(split.encode())
      for v in volumes:
        h.update(json.dumps([v.path, v.label, v.patient_id]).encode())
    return h.hexdigest()[:16]


def _natural_sorted(names) -> list[str]:
  """Integer names in numeric order, anything else in string order."""
  names = sorted(set(names))
  return sorted(names, key=int) if names and all(re.fullmatch(r'-?\d+', n) for n in names) else names


def _resolve(root: pathlib.Path, path: str) -> pathlib.Path:
  return pathlib.Path(path) if os.path.isabs(path) else root / path


def read_table(manual_dir, opts: Mapping[str, Any]) -> Table:
  """Reads and checks the table: files exist, labels are known, a given split keeps patients apart; makes the
  seeded patient-level split when there is no split column. Reads no volume."""
  root = pathlib.Path(manual_dir)
  table = root / opts['csv']
  if not table.is_file():
    raise common.LayoutError(f'{_DATASET}: the table {table} does not exist ({common._listing(root)}); {_LAYOUT_HELP}')
  rows = common.read_csv(table, required=['path', 'label'], dataset=_DATASET)
  if not rows:
    raise ValueError(f'{_DATASET}: {table} has no rows; list one volume per row (columns path, label)')
  columns = set(rows[0])
  where = lambda i: f'{table} row {i + 1} (line {i + 2})'  # pylint: disable=unnecessary-lambda-assignment
  first_row, missing, labels = {}, [], []
  for i, row in enumerate(rows):
    path = (row['path'] or '').replace('\\', '/').strip()
    if not path:
      raise ValueError(f'{_DATASET}: {where(i)}: empty "path"; give the volume file relative to {root}')
    if path in first_row:
      raise ValueError(f'{_DATASET}: {where(i)}: {path!r} is already listed in row {first_row[path] + 1}; list each '
                       'volume once')
    first_row[path] = i
    if not path.lower().endswith(('.nii', '.nii.gz')):
      raise ValueError(f'{_DATASET}: {where(i)}: {path!r} is not a NIfTI file (.nii or .nii.gz); convert it '
                       '(e.g. DICOM series with dcm2niix)')
    if not _resolve(root, path).is_file():
      missing.append(f'{where(i)}: {path!r} (looked for {_resolve(root, path)})')
    label = (row['label'] or '').strip()
    if not label:
      raise ValueError(f'{_DATASET}: {where(i)}: empty "label"; give every volume its class')
    if opts['classes'] and label not in opts['classes']:
      raise ValueError(f'{_DATASET}: {where(i)}: unknown label {label!r}; the "classes" option allows '
                       f'{opts["classes"]}')
    labels.append(label)
  if missing:
    more = f' ... and {len(missing) - 5} more' if len(missing) > 5 else ''
    raise common.LayoutError(f'{_DATASET}: volume(s) listed in {table} do not exist: ' + '; '.join(missing[:5]) + more)
  class_names = tuple(opts['classes'] or _natural_sorted(labels))
  if len(class_names) < 2:
    raise ValueError(f'{_DATASET}: {table} has one class ({class_names[0]!r}); a classifier needs two or more, or '
                     'list every class in the "classes" option')
  index = {c: k for k, c in enumerate(class_names)}
  volumes = [Volume((row['path'] or '').replace('\\', '/').strip(), index[label],
                    (row.get('patient_id') or '').strip(), where(i))
             for i, (row, label) in enumerate(zip(rows, labels))]
  if 'split' not in columns:
    fractions = {s: opts['fractions'][s] for s in _SPLIT_ORDER if s in opts['fractions']}
    parts = common.patient_split([v.path for v in volumes], fractions=fractions, seed=opts['seed'],
                                 patient_ids=[v.patient_id for v in volumes], labels=[v.label for v in volumes])
    for split, idx in parts.items():
      if not idx:
        raise ValueError(f'{_DATASET}: split {split!r} would be empty ({len(volumes)} volumes, fractions '
                         f'{opts["fractions"]}); add volumes, set the option "fractions" (e.g. fractions=80:0:20), '
                         f'or give a "split" column in {table}')
    return Table(class_names, {s: [volumes[i] for i in parts[s]] for s in _SPLIT_ORDER if s in parts},
                 user_split=False)
  splits = collections.defaultdict(list)
  for i, (row, v) in enumerate(zip(rows, volumes)):
    value = (row['split'] or '').strip().lower()
    if value not in SPLIT_ALIASES:
      raise ValueError(f'{_DATASET}: {where(i)}: unknown split {row["split"]!r}; valid: {sorted(SPLIT_ALIASES)}')
    splits[SPLIT_ALIASES[value]].append(v)
  sides = collections.defaultdict(set)
  for split, vs in splits.items():
    for v in vs:
      if v.patient_id:
        sides[v.patient_id].add(split)
  shared = sorted(p for p, s in sides.items() if len(s) > 1)
  if shared:
    named = ', '.join(f'{p!r} in {sorted(sides[p])}' for p in shared[:5]) + (' ...' if len(shared) > 5 else '')
    raise ValueError(f'{_DATASET}: the split column of {table} puts {len(shared)} patient(s) in more than one split: '
                     f'{named}; move each patient\'s volumes into one split, or drop the column so that a '
                     'patient-level split is made')
  return Table(class_names, {s: sorted(splits[s], key=lambda v: v.path) for s in _SPLIT_ORDER if splits.get(s)},
               user_split=True)


# ---------------------------------------------------------------- volumes


def _open(path: pathlib.Path, where: str):
  """The NIfTI image in its closest canonical (RAS+) orientation, header checked; no voxels are read."""
  try:
    image = nib.load(os.fspath(path))
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f'{_DATASET}: {where}: could not read {path}: {e}; expected a NIfTI-1/2 file') from e
  shape = tuple(int(s) for s in image.shape)
  if len(shape) == 4 and shape[3] == 1:
    shape = shape[:3]
  if len(shape) != 3 or min(shape) < 1:
    raise ValueError(f'{_DATASET}: {where}: {path} has shape {tuple(image.shape)}; expected one 3-D volume (split '
                     'a 4-D series into one file per volume)')
  zooms = [float(z) for z in image.header.get_zooms()[:3]]
  if not all(math.isfinite(z) and z > 0 for z in zooms):
    raise ValueError(f'{_DATASET}: {where}: {path} has voxel spacing {zooms}; fix the header (pixdim) to the '
                     'spacing in mm')
  return nib.as_closest_canonical(image)


def read_volume(path, *, where: str = '') -> tuple[np.ndarray, np.ndarray]:
  """(float32 [D, H, W], spacing float32 [3] in mm) of a NIfTI file, in RAS+ orientation with the axes reversed:
  D inferior->superior, H posterior->anterior, W left->right. Non-finite voxels take the finite minimum."""
  path = pathlib.Path(path)
  image = _open(path, where or str(path))
  data = image.get_fdata(dtype=np.float32)  # Applies the header's intensity scaling (scl_slope, scl_inter).
  data = data.reshape(data.shape[:3]).transpose(2, 1, 0)
  finite = np.isfinite(data)
  if not finite.all():
    if not finite.any():
      raise ValueError(f'{_DATASET}: {where or path}: {path} holds no finite voxel value')
    data = np.where(finite, data, data[finite].min())
  spacing = np.asarray([float(z) for z in image.header.get_zooms()[:3]][::-1], np.float32)
  return np.ascontiguousarray(data), spacing


def to_cube(volume: np.ndarray, spacing: np.ndarray, *, size: int, fit: str) -> tuple[np.ndarray, np.ndarray]:
  """(float32 [size, size, size], the stored voxels' spacing [3] in mm) of a volume with `spacing`.

  'squash' resizes each axis to `size`. 'pad' keeps the physical proportions: isotropic voxels of
  (largest extent / size) mm, the volume centred and padded with its own minimum (air or background).
  """
  shape = np.asarray(volume.shape, np.float64)
  if fit == 'squash':
    return common.resize_volume(volume, (size,) * 3), (spacing * shape / size).astype(np.float32)
  extent = shape * spacing
  voxel = float(extent.max()) / size
  inner = tuple(int(min(size, max(1, round(e / voxel)))) for e in extent)
  resized = common.resize_volume(volume, inner)
  cube = np.full((size,) * 3, volume.min(), np.float32)
  start = [(size - n) // 2 for n in inner]
  cube[tuple(slice(s, s + n) for s, n in zip(start, inner))] = resized
  return cube, np.full(3, voxel, np.float32)


def to_uint8(volume: np.ndarray, lo: float, hi: float) -> np.ndarray:
  """[lo, hi] -> 0..255 (clipped outside); a constant volume (hi <= lo) becomes 0."""
  if hi <= lo:
    return np.zeros(volume.shape, np.uint8)
  return np.clip(np.rint((volume - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)


def intensity_range(volume: np.ndarray, opts: Mapping[str, Any]) -> tuple[float, float]:
  """The fixed `window`, else the volume's own `percentiles`."""
  if opts['window'] is not None:
    return float(opts['window'][0]), float(opts['window'][1])
  lo, hi = np.percentile(volume, opts['percentiles'])
  return float(lo), float(hi)


# ---------------------------------------------------------------- the builder


@dataclasses.dataclass
class NiftiVolumesConfig(tfds.core.BuilderConfig):
  """A user's volume dataset: its name, the classes of its table, and the options (see DEFAULT_OPTIONS)."""
  class_names: tuple[str, ...] = ()
  size: int = 64
  # All options, as stored in metadata.json; out of repr as TFDS logs the whole config.
  options_json: str = dataclasses.field(default='{}', repr=False)
  fingerprint: str = ''  # Table.fingerprint of the table the config was made from.

  @property
  def options(self) -> dict[str, Any]:
    return json.loads(self.options_json)


class NiftiVolumes(tfds.core.GeneratorBasedBuilder):
  """Your own labelled NIfTI volumes, listed in a CSV, as a TFDS dataset; see the module docstring."""

  name = _DATASET
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release: NIfTI volumes listed in a CSV, reoriented to RAS+, resampled to a '
                            'cube, windowed or percentile-scaled to uint8; spacing kept; patient-level split.'}
  BUILDER_CONFIGS = []  # Made from the user's table by `make_builder`.
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Your own data: nothing is downloaded, and the licence and terms are those of your data. Point
  manual_dir at a folder holding a table volumes.csv (option "csv") with the columns
    path        a NIfTI file (.nii or .nii.gz), relative to manual_dir (or absolute): one 3-D volume
    label       its class name
    split       optional: train, validation|val|valid or test (else a seeded split is made)
    patient_id  optional: keeps a patient's volumes in one split
  e.g.
    path,label,patient_id
    scans/p001_ct.nii.gz,benign,p001

  Options, inline in the config ('my_ct,size=64,window=-1000:400') or make_builder(options={...}):
    size         edge of the stored cube (default 64): image uint8 [size, size, size, 1]
    fit          'pad' (default: physical proportions kept, isotropic voxels, padded with the volume's
                 minimum) or 'squash' (each axis resized to size)
    window       lo:hi intensity window mapped to 0..255, e.g. CT in Hounsfield units -1000:400 (lung
                 and soft tissue), -160:240 (abdomen); default none: each volume's own percentiles
    percentiles  lo:hi (default 0.5:99.5), used without a window (MR)
    classes      a:b:c fixes the class list and its order (default: the sorted labels)
    fractions    train:validation:test of the seeded split (default 70:10:20); seed (default 0)
    csv          the table's name (default volumes.csv)
  Volumes are reoriented to RAS+ and stored as [D, H, W, 1] = (inferior->superior, posterior->anterior,
  left->right); features spacing, source_shape and stored_spacing keep the geometry (mm, [D, H, W]).
  Classes are the sorted label values (numeric order when all are integers). Without a split column,
  `common.patient_split` makes a label-stratified split in which no patient is on two sides.
  """

  def __init__(self, *, config: NiftiVolumesConfig | None = None, **kwargs):
    if not isinstance(config, NiftiVolumesConfig):
      raise ValueError(f'{_DATASET}: the config is made from your table; use NiftiVolumes.make_builder(config=<name>, '
                       f"...) or medssl_jax.data.pipeline.get_builder('{_DATASET}', config=<name>, manual_dir=...)")
    super().__init__(config=config, **kwargs)

  @classmethod
  def config_from_table(cls, name: str, table: Table, opts: Mapping[str, Any]) -> NiftiVolumesConfig:
    sizes = ', '.join(f'{s} {len(v)}' for s, v in table.splits.items())
    intensity = f'window {opts["window"]}' if opts['window'] is not None else f'percentiles {opts["percentiles"]}'
    return NiftiVolumesConfig(
        name=name, class_names=table.class_names, size=opts['size'],
        options_json=json.dumps(dict(opts), sort_keys=True), fingerprint=table.fingerprint(opts),
        description=f'User NIfTI volumes: {len(table.class_names)} classes; {opts["size"]}³ ({opts["fit"]}), '
                    f'{intensity}; {"given" if table.user_split else "seeded patient-level"} split ({sizes}).')

  @classmethod
  def make_builder(cls, *, config: str | None, data_dir, manual_dir=None, prepare: bool = True,
                   file_format: str = 'array_record', options: Mapping[str, Any] | None = None):
    """The builder of the user's dataset `config` (its name, optionally ',key=value' options).

    A copy already prepared in `<data_dir>/nifti_volumes/<name>/<version>/` is loaded (no manual dir
    needed); options named now must equal those it was built with, and when `manual_dir` is given its
    table must still give the same dataset, so stale data is never used silently.
    """
    name, inline = parse_config(config)
    requested = {**inline, **(options or {})}
    source = ' + '.join(w for w, o in (('the config string', inline), ('the options argument', options)) if o)
    opts = parse_options(requested, source=source or 'the defaults')
    prepared = pathlib.Path(data_dir) / cls.name / name / str(cls.VERSION)
    have_files = manual_dir is not None and pathlib.Path(manual_dir).is_dir()
    if (prepared / 'dataset_info.json').exists():
      builder = tfds.builder_from_directory(os.fspath(prepared))
      metadata = builder.info.metadata or {}
      stored = dict(metadata.get('options') or {})
      differ = {k: (stored.get(k), opts[k]) for k in requested if stored.get(k) != opts[k]}
      if differ:
        raise ValueError(f'{_DATASET}/{name} in {prepared} was built with other options (stored, requested): '
                         f'{differ}; delete that folder to rebuild, or use another name')
      if have_files and table_fingerprint(manual_dir, stored) != metadata.get('fingerprint'):
        raise ValueError(f'{_DATASET}/{name} in {prepared} was built from another table than the one now in '
                         f'{manual_dir}; delete {prepared} to rebuild, or use another dataset name')
      return builder
    if not have_files:
      what = 'no manual_dir was given' if manual_dir is None else f'the manual dir {manual_dir} does not exist'
      raise common.LayoutError(f'{_DATASET}/{name} is not prepared in {data_dir} and {what}: set manual_dir '
                               f'(data.manual_dir) to the folder with your table; {_LAYOUT_HELP}')
    builder = cls(config=cls.config_from_table(name, read_table(manual_dir, opts), opts),
                  data_dir=os.fspath(data_dir), file_format=file_format)
    if prepare and not builder.is_prepared():
      print(f'Building {cls.name}/{name} ({file_format}) into {builder.data_dir} ...', flush=True)
      builder.download_and_prepare(file_format=file_format,
                                   download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir)))
    return builder

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config
    s = c.size
    return self.dataset_info_from_configs(
        description='A user\'s own NIfTI volumes, built by the generic nifti_volumes builder. ' + (c.description or ''),
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(shape=(s, s, s, 1), dtype=np.uint8, encoding=tfds.features.Encoding.ZLIB,
                                          doc='Volume [D, H, W, 1]: inferior->superior, posterior->anterior, '
                                              'left->right.'),
            'label': tfds.features.ClassLabel(names=list(c.class_names)),
            'id': tfds.features.Scalar(dtype=np.int64, doc='Index in the split, in file_name order.'),
            'file_name': tfds.features.Text(doc='The volume\'s path as the table gives it.'),
            'patient_id': tfds.features.Text(doc='From the table; "" if unknown.'),
            'spacing': tfds.features.Tensor(shape=(3,), dtype=np.float32,
                                            doc='Source voxel spacing in mm along [D, H, W].'),
            'source_shape': tfds.features.Tensor(shape=(3,), dtype=np.int64, doc='Source shape [D, H, W].'),
            'stored_spacing': tfds.features.Tensor(shape=(3,), dtype=np.float32,
                                                   doc='Spacing of the stored voxels in mm along [D, H, W].'),
        }),
        supervised_keys=('image', 'label'),
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(options=c.options, fingerprint=c.fingerprint,
                                        class_names=list(c.class_names)),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = pathlib.Path(dl_manager.manual_dir)
    c = self.builder_config
    table = read_table(root, c.options)
    if table.fingerprint(c.options) != c.fingerprint:
      raise ValueError(f'{_DATASET}/{c.name}: the table in {root} changed since the config was made; make it again')
    for volumes in table.splits.values():  # Every header is checked before anything is written.
      for v in volumes:
        _open(_resolve(root, v.path), v.row)
    return {split: self._generate_examples(root, volumes) for split, volumes in table.splits.items()}

  def _generate_examples(self, root: pathlib.Path, volumes: Sequence[Volume]):
    c = self.builder_config
    opts = c.options
    for i, v in enumerate(volumes):
      volume, spacing = read_volume(_resolve(root, v.path), where=v.row)
      lo, hi = intensity_range(volume, opts)
      cube, stored_spacing = to_cube(volume, spacing, size=c.size, fit=opts['fit'])
      yield i, {
          'image': to_uint8(cube, lo, hi)[..., None],
          'label': v.label,
          'id': i,
          'file_name': v.path,
          'patient_id': v.patient_id,
          'spacing': spacing,
          'source_shape': np.asarray(volume.shape, np.int64),
          'stored_spacing': stored_spacing,
      }


def table_fingerprint(manual_dir, opts: Mapping[str, Any]) -> str:
  """The fingerprint of the dataset the table in `manual_dir` gives with `opts` (to compare with a prepared copy)."""
  opts = parse_options(opts, source='the stored options')
  return read_table(manual_dir, opts).fingerprint(opts)
