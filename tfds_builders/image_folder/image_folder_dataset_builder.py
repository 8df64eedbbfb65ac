"""A TFDS builder for a user's own images, labelled (class folders or a CSV) or unlabelled (a plain
folder of images or a CSV without labels, for self-supervised pretraining); any PIL-readable format.

Unlike the other builders, the classes (and so the features) come from the user's files, so there
is no fixed list of builder configs. `ImageFolder.make_builder` (what
`medssl_jax.data.pipeline.get_builder('image_folder', config=<name>, manual_dir=...)` calls) scans
the folder, makes an `ImageFolderConfig` named after the user's dataset that carries the discovered
class names and the options, and builds `<data_dir>/image_folder/<name>/1.0.0/`. Later calls load
that prepared copy with `tfds.builder_from_directory` (no user folder and no TensorFlow needed).

Unlabelled data (option "labels": "none", or auto-detected when the images sit directly in the
manual dir or in its split folders, with no sub-folders) has no `label` feature: the pipeline then
yields label -1 and `num_classes` is 0.

Split policy: split folders or a CSV `split` column are used as given (a patient found in two of
them is an error); otherwise a seeded split stratified by label in which no patient is on two
sides (`common.patient_split`, seed 0; fractions 70/10/20 train/validation/test for labelled data,
90/10 train/validation for unlabelled data, which is for pretraining and needs no test split;
options "fractions" and "seed"). Records of each split are ordered by `file_name` (the image path
relative to the manual dir).
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import pathlib
import re
from typing import Any, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds

from tfds_builders import common

_DATASET = 'image_folder'
OPTIONS_FILE = 'medssl_dataset.json'  # Optional sidecar in the manual dir with the options below.
# TFDS split name for each accepted split folder name / CSV `split` value (case-insensitive).
SPLIT_ALIASES = {'train': 'train', 'validation': 'validation', 'val': 'validation', 'valid': 'validation',
                 'test': 'test'}
_SPLIT_ORDER = ('train', 'validation', 'test')
IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.tif', '.tiff', '.webp', '.ppm', '.pgm', '.pbm',
                  '.pnm')
_IGNORED = ('__MACOSX',)  # Folders some zip tools add; never classes.
_NAME = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.-]*$')

# User-settable options: name -> default. Set them in <manual_dir>/medssl_dataset.json, or the scalar
# ones inline in the config string ('my_scans,channels=1,image_size=256').
DEFAULT_OPTIONS: dict[str, Any] = {
    'channels': 3,                # 1 (stored as grayscale 'L') or 3 ('RGB').
    'image_size': 0,              # 0 keeps the original sizes; else square `fit`, resized to size x size.
    'fit': 'pad',                 # 'pad' (black borders) or 'center_crop', when image_size > 0.
    'encoding': 'png',            # 'png' (lossless) or 'jpeg' (colour photographs, smaller).
    'csv': 'labels.csv',          # The label table, relative to the manual dir (CSV form).
    'label_columns': [],          # CSV multi-label: the 0/1 columns, in label-vector order.
    'classes': [],                # Optional fixed class list (order = label ids); else discovered.
    'fractions': None,            # Seeded split, when none is given; None = the defaults below.
    'seed': 0,                    # Seed of that split.
    'patient_pattern': '',        # Regex on the file name whose group 1 (or match) is the patient id.
    'labels': 'auto',             # 'none': unlabelled images; 'auto': labelled unless unambiguously not.
}
_INLINE = ('channels', 'image_size', 'fit', 'encoding', 'csv', 'seed', 'labels')
LABELLED_FRACTIONS = {'train': 0.7, 'validation': 0.1, 'test': 0.2}
# A pretraining pool needs no test split (evaluation uses a labelled dataset); validation tracks the SSL loss.
UNLABELLED_FRACTIONS = {'train': 0.9, 'validation': 0.1}


class OptionsError(ValueError):
  """Bad image_folder options (config string or medssl_dataset.json)."""


def _natural_sorted(names) -> list[str]:
  """Integer names ('0', '2', '10') in numeric order, anything else in string order."""
  names = sorted(set(names))
  if names and all(re.fullmatch(r'-?\d+', n) for n in names):
    return sorted(names, key=int)
  return names


def parse_options(raw: Mapping[str, Any], *, source: str) -> dict[str, Any]:
  """Validates options (from `source`, named in errors) and fills in the defaults."""
  unknown = sorted(set(raw) - set(DEFAULT_OPTIONS))
  if unknown:
    raise OptionsError(f'{_DATASET}: unknown option(s) {unknown} in {source}; valid: {sorted(DEFAULT_OPTIONS)}')
  opts = {**DEFAULT_OPTIONS, **raw}

  def bad(key, expected):
    raise OptionsError(f'{_DATASET}: option {key}={opts[key]!r} in {source}; expected {expected}')

  try:
    for key in ('channels', 'image_size', 'seed'):
      opts[key] = int(opts[key])
  except (TypeError, ValueError):
    bad(key, 'an integer')
  if opts['channels'] not in (1, 3):
    bad('channels', '1 or 3')
  if opts['image_size'] < 0:
    bad('image_size', '0 (keep sizes) or a positive size')
  if opts['fit'] not in ('pad', 'center_crop'):
    bad('fit', "'pad' or 'center_crop'")
  if opts['encoding'] not in ('png', 'jpeg'):
    bad('encoding', "'png' or 'jpeg'")
  if not isinstance(opts['csv'], str) or not opts['csv']:
    bad('csv', 'a file name relative to the manual dir')
  for key in ('label_columns', 'classes'):
    if isinstance(opts[key], str) or not all(isinstance(c, str) and c for c in opts[key]):
      bad(key, 'a list of non-empty strings')
    if len(set(opts[key])) != len(opts[key]):
      bad(key, 'no repeated names')
    opts[key] = list(opts[key])
  if opts['label_columns'] and opts['classes']:
    raise OptionsError(f'{_DATASET}: set label_columns (multi-label) or classes (single-label) in {source}, not both')
  if opts['labels'] not in ('auto', 'none'):
    bad('labels', "'auto' (labelled unless the layout is unambiguously unlabelled) or 'none' (unlabelled)")
  if opts['labels'] == 'none' and (opts['label_columns'] or opts['classes']):
    raise OptionsError(f'{_DATASET}: labels=none (unlabelled images) contradicts label_columns/classes in {source}')
  fr = opts['fractions']
  if fr is not None:
    if isinstance(fr, (list, tuple)) and len(fr) == 3:
      fr = dict(zip(_SPLIT_ORDER, fr))
    if (not isinstance(fr, Mapping) or set(fr) - set(_SPLIT_ORDER)
        or not all(isinstance(v, (int, float)) and v >= 0 for v in fr.values()) or sum(fr.values()) <= 0):
      bad('fractions', "{'train': .7, 'validation': .1, 'test': .2} (or [70, 10, 20]): non-negative, positive sum")
    opts['fractions'] = _normalised(fr)
  if opts['patient_pattern']:
    try:
      re.compile(opts['patient_pattern'])
    except re.error as e:
      bad('patient_pattern', f'a valid regular expression ({e})')
  return opts


def _normalised(fractions: Mapping[str, float]) -> dict[str, float]:
  total = float(sum(fractions.values()))
  return {s: float(fractions[s]) / total for s in _SPLIT_ORDER if fractions.get(s, 0) > 0}


def effective_options(opts: Mapping[str, Any], *, labelled: bool) -> dict[str, Any]:
  """The options with what the scan decided filled in: `labels` and the default `fractions`."""
  out = {**opts, 'labels': 'auto' if labelled else 'none'}
  if out.get('fractions') is None:
    out['fractions'] = _normalised(LABELLED_FRACTIONS if labelled else UNLABELLED_FRACTIONS)
  return out


def parse_config(config: str | None) -> tuple[str, dict[str, Any]]:
  """'my_scans' or 'my_scans,channels=1,image_size=256' -> (name, inline options)."""
  if not config or not str(config).strip():
    raise OptionsError(
        f"{_DATASET} needs config=<your dataset's name> (e.g. 'my_scans': data.builder_config in a "
        f"config file); it names the prepared copy <data_dir>/{_DATASET}/<name>/")
  name, *parts = [p.strip() for p in str(config).split(',')]
  if not _NAME.match(name):
    raise OptionsError(f'{_DATASET}: dataset name {name!r} must be letters, digits, _ . - (starting with a '
                       'letter or digit)')
  inline = {}
  for p in parts:
    key, sep, value = p.partition('=')
    if not sep or key.strip() not in _INLINE:
      raise OptionsError(f'{_DATASET}: config option {p!r} in {config!r}; expected key=value with key in '
                         f'{list(_INLINE)} (set lists in {OPTIONS_FILE})')
    inline[key.strip()] = value.strip()
  return name, inline


def read_options(manual_dir, inline: Mapping[str, Any] | None = None,
                 extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """Options of a dataset: medssl_dataset.json in the manual dir, then inline ones, then `extra`."""
  raw, sources = {}, []
  path = pathlib.Path(manual_dir) / OPTIONS_FILE if manual_dir else None
  if path is not None and path.is_file():
    try:
      loaded = json.loads(path.read_text(encoding='utf-8'))
    except (OSError, ValueError) as e:
      raise OptionsError(f'{_DATASET}: could not read {path}: {e}') from e
    if not isinstance(loaded, dict):
      raise OptionsError(f'{_DATASET}: {path} must hold a JSON object of options, e.g. {{"channels": 1}}')
    raw.update(loaded)
    sources.append(str(path))
  for what, opts in (('the config string', inline), ('the options argument', extra)):
    if opts:
      raw.update(opts)
      sources.append(what)
  return parse_options(raw, source=' + '.join(sources) or 'the defaults')


# ---------------------------------------------------------------- scanning the user's files


@dataclasses.dataclass(frozen=True)
class Example:
  """One image found in the manual dir."""
  path: str                  # Relative to the manual dir, '/'-separated.
  label: Any                 # Class index, a tuple of 0/1 for multi-label data, or None if unlabelled.
  patient_id: str = ''
  report: str = ''


@dataclasses.dataclass
class Scan:
  """What `scan` found: the layout, the classes and the examples of each split (sorted by path)."""
  layout: str
  class_names: tuple[str, ...]
  multi_label: bool
  splits: dict[str, list[Example]]
  user_split: bool
  labelled: bool = True
  options: dict[str, Any] = dataclasses.field(default_factory=dict)  # `effective_options`, set by `scan`.

  def fingerprint(self, opts: Mapping[str, Any]) -> str:
    """A hash of everything that decides the dataset's content (not the pixels: no image is read)."""
    opts = dict(opts)
    if opts.get('labels', 'auto') == 'auto':
      opts.pop('labels', None)  # Labelled builds made before the option existed keep their fingerprint.
    h = hashlib.sha256(json.dumps([opts, self.class_names, self.multi_label], sort_keys=True).encode())
    for split, examples in self.splits.items():
      h.update(split.encode())
      for e in examples:
        h.update(json.dumps([e.path, e.label, e.patient_id, e.report]).encode())
    return h.hexdigest()[:16]


_LAYOUT_HELP = (f'expected <manual_dir>/<split>/<class>/<image> (split = train, validation|val|valid, test), '
                f'<manual_dir>/<class>/<image>, a table <manual_dir>/labels.csv (option "csv") with an '
                f'"image" column, or for unlabelled images <manual_dir>/[<split>/]<image> (any sub-folders '
                f'with the option "labels": "none"); see tfds_builders.{_DATASET} MANUAL_DOWNLOAD_INSTRUCTIONS')
_UNLABELLED_HINT = (f'for unlabelled images set "labels": "none" (in {OPTIONS_FILE}, or ",labels=none" after the '
                    'dataset name in the config)')


def _subdirs(folder: pathlib.Path) -> list[pathlib.Path]:
  return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith('.') and p.name not in _IGNORED)


def _is_image(p: pathlib.Path) -> bool:
  return p.is_file() and not p.name.startswith('.') and p.suffix.lower() in IMAGE_SUFFIXES


def _images_under(folder: pathlib.Path) -> list[pathlib.Path]:
  """Image files anywhere below `folder` (nested folders allowed), hidden files and folders skipped."""
  out = []
  for dirpath, dirnames, filenames in os.walk(folder):
    dirnames[:] = sorted(d for d in dirnames if not d.startswith('.') and d not in _IGNORED)
    out.extend(pathlib.Path(dirpath) / f for f in filenames if _is_image(pathlib.Path(dirpath) / f))
  return sorted(out)


def _patient_of(name: str, pattern: str) -> str:
  if not pattern:
    return ''
  m = re.search(pattern, name)
  if not m:
    raise ValueError(f'{_DATASET}: patient_pattern {pattern!r} does not match the file {name!r}')
  return m.group(1) if m.groups() else m.group(0)


def _class_list(found: Sequence[str], opts, *, where: str) -> tuple[str, ...]:
  """The discovered classes, or the fixed `classes` option (then every found class must be in it)."""
  if not opts['classes']:
    return tuple(_natural_sorted(found))
  unknown = sorted(set(found) - set(opts['classes']))
  if unknown:
    raise ValueError(f'{_DATASET}: unknown class(es) {unknown} in {where}; the "classes" option allows '
                     f'{opts["classes"]}')
  return tuple(opts['classes'])


def _top_folders(root: pathlib.Path) -> dict[str, pathlib.Path]:
  """Split name -> its folder when the manual dir holds split folders, else {'': root}."""
  subdirs = _subdirs(root)
  split_dirs = {d: SPLIT_ALIASES[d.name.lower()] for d in subdirs if d.name.lower() in SPLIT_ALIASES}
  if not split_dirs:
    return {'': root}
  others = [d.name for d in subdirs if d not in split_dirs]
  if others:
    raise common.LayoutError(f'{_DATASET}: {root} mixes split folders {sorted(d.name for d in split_dirs)} with '
                             f'other folders {others}; put everything into the split folders, or use no split '
                             'folders (rename them) so that a seeded split is made')
  stray = sorted(p.name for p in root.iterdir() if _is_image(p))
  if stray:
    raise common.LayoutError(f'{_DATASET}: images directly in the manual dir {root} ({stray[:5]}) beside the split '
                             f'folders {sorted(d.name for d in split_dirs)}; move each into a split folder')
  seen = collections.defaultdict(list)
  for d, split in split_dirs.items():
    seen[split].append(d.name)
  twice = {s: n for s, n in seen.items() if len(n) > 1}
  if twice:
    raise common.LayoutError(f'{_DATASET}: several folders in {root} name the same split: {twice}')
  return {split: d for d, split in split_dirs.items()}


def _folder_kind(top: pathlib.Path, root: pathlib.Path) -> str:
  """'images' (unlabelled) or 'classes' for a split folder or the manual dir under labels=auto."""
  images = sorted(p.name for p in top.iterdir() if _is_image(p))
  subdirs = [d.name for d in _subdirs(top)]
  if images and subdirs:
    raise common.LayoutError(
        f'{_DATASET}: {top} holds both images ({images[:5]}) and sub-folders ({subdirs[:5]}), so it is unclear '
        f'whether the sub-folders are classes; expected class folders only ({top}/<class>/<image>) or images only '
        f'(unlabelled), or {_UNLABELLED_HINT} to use every image below {top}')
  if images:
    return 'images'
  if subdirs:
    return 'classes'
  if top == root:
    raise common.LayoutError(f'{_DATASET}: no images found in {root} ({common._listing(root)}); {_LAYOUT_HELP}')
  raise common.LayoutError(f'{_DATASET}: no class folders or images in the split folder {top} '
                           f'({common._listing(top)}); expected {top}/<class>/<image> or, unlabelled, {top}/<image>')


def _scan_folders(root: pathlib.Path, opts) -> Scan:
  tops = _top_folders(root)
  split_layout = '' not in tops
  labelled = opts['labels'] != 'none'
  if labelled:
    kinds = {split: _folder_kind(top, root) for split, top in tops.items()}
    if len(set(kinds.values())) > 1:
      by_kind = {k: sorted(tops[s].name for s in kinds if kinds[s] == k) for k in ('images', 'classes')}
      raise common.LayoutError(
          f'{_DATASET}: in {root} the split folders {by_kind["images"]} hold images directly (unlabelled) but '
          f'{by_kind["classes"]} hold class folders; expected <split>/<class>/<image> in every split folder, or '
          f'{_UNLABELLED_HINT}')
    labelled = 'classes' in kinds.values()  # Images with no sub-folders beside them: unambiguously unlabelled.
  pattern = opts['patient_pattern']
  if not labelled:
    examples = {}
    for split, top in tops.items():
      images = _images_under(top)
      if not images:
        raise common.LayoutError(f'{_DATASET}: no image files ({"/".join(IMAGE_SUFFIXES)}) in '
                                 f'{"the split folder " if split else ""}{top} ({common._listing(top)}); '
                                 f'{_LAYOUT_HELP}')
      examples[split] = [Example(p.relative_to(root).as_posix(), None, _patient_of(p.name, pattern)) for p in images]
    return Scan('unlabelled split folders' if split_layout else 'an unlabelled image folder', (), False,
                _ordered(examples) if split_layout else examples, user_split=split_layout, labelled=False)
  files: dict[str, list[tuple[pathlib.Path, str]]] = {}
  for split, top in tops.items():
    files[split] = []
    for d in _subdirs(top):
      images = _images_under(d)
      if not images:
        raise common.LayoutError(f'{_DATASET}: empty class folder {d}: no image files ({"/".join(IMAGE_SUFFIXES)}) '
                                 f'in it ({common._listing(d)})')
      files[split].extend((p, d.name) for p in images)
  found = {c for f in files.values() for _, c in f}
  if len(found) == 1 and not opts['classes']:
    # One class teaches a classifier nothing; far more likely a plain folder of unlabelled images.
    raise common.LayoutError(
        f'{_DATASET}: only one class folder ({found.pop()!r}) in {root}; expected two or more class folders '
        f'<class>/<image>, or the "classes" option listing all classes, or {_UNLABELLED_HINT}')
  class_names = _class_list(found, opts, where=str(root))
  index = {c: i for i, c in enumerate(class_names)}
  examples = {split: [Example(p.relative_to(root).as_posix(), index[c], _patient_of(p.name, pattern))
                      for p, c in f] for split, f in files.items()}
  if split_layout:
    return Scan('split folders', class_names, False, _ordered(examples), user_split=True)
  return Scan('class folders', class_names, False, examples, user_split=False)


def _ordered(splits: Mapping[str, list[Example]]) -> dict[str, list[Example]]:
  return {s: sorted(splits[s], key=lambda e: e.path) for s in _SPLIT_ORDER if splits.get(s)}


def _seeded_split(examples: list[Example], opts, *, labelled: bool) -> dict[str, list[Example]]:
  # Fixed split order: options read back from JSON come with sorted keys, and the deal depends on the order.
  fractions = {s: opts['fractions'][s] for s in _SPLIT_ORDER if s in opts['fractions']}
  parts = common.patient_split([e.path for e in examples], fractions=fractions, seed=opts['seed'],
                               patient_ids=[e.patient_id for e in examples],
                               labels=[e.label for e in examples] if labelled else None)
  for split, idx in parts.items():
    if not idx:
      raise ValueError(f'{_DATASET}: split {split!r} would be empty ({len(examples)} images, fractions '
                       f'{opts["fractions"]}); add images, or set "fractions" (e.g. {{"train": 0.8, "test": 0.2}}) '
                       f'in {OPTIONS_FILE}, or give the split yourself')
  return {s: [examples[i] for i in parts[s]] for s in _SPLIT_ORDER if s in parts}


def _scan_csv(root: pathlib.Path, table: pathlib.Path, opts) -> Scan:
  labelled = opts['labels'] != 'none'
  label_columns = opts['label_columns']
  rows = common.read_csv(table, required=['image'] + label_columns, dataset=_DATASET)
  if not rows:
    raise ValueError(f'{_DATASET}: no images found: {table} has no rows')
  columns = set(rows[0])
  if labelled and not label_columns and 'label' not in columns:
    # Not taken as unlabelled: a class column under another name would silently lose the labels.
    raise ValueError(f"{_DATASET}: {table} lacks column(s) ['label']; found columns {list(rows[0])}; name the class "
                     f'column "label", list 0/1 columns in "label_columns", or {_UNLABELLED_HINT}')
  where = lambda i: f'{table} row {i + 1} (line {i + 2})'  # pylint: disable=unnecessary-lambda-assignment
  paths, missing, first_row = [], [], {}
  for i, row in enumerate(rows):
    rel = (row['image'] or '').replace('\\', '/').strip()
    if not rel:
      raise ValueError(f'{_DATASET}: {where(i)}: empty "image" value')
    rel = pathlib.PurePosixPath(rel).as_posix()
    if rel in first_row:
      raise ValueError(f'{_DATASET}: {where(i)}: image {rel!r} already listed in row {first_row[rel] + 1}')
    first_row[rel] = i
    if not (root / rel).is_file():
      missing.append(f'{where(i)}: {rel!r} (looked for {root / rel})')
    paths.append(rel)
  if missing:
    more = f' ... and {len(missing) - 5} more' if len(missing) > 5 else ''
    raise common.LayoutError(f'{_DATASET}: image(s) listed in {table} do not exist: ' + '; '.join(missing[:5]) + more)
  if not labelled:  # A "label" column, if any, is ignored.
    labels, class_names = [None] * len(rows), ()
  elif label_columns:
    labels = []
    for i, row in enumerate(rows):
      vec = []
      for c in label_columns:
        v = (row[c] or '').strip()
        if v not in ('0', '1', '0.0', '1.0'):
          raise ValueError(f'{_DATASET}: {where(i)}: column {c!r} is {v!r}; multi-label columns must be 0 or 1')
        vec.append(int(float(v)))
      labels.append(tuple(vec))
    class_names = tuple(label_columns)
  else:
    values = [(row['label'] or '').strip() for row in rows]
    for i, v in enumerate(values):
      if not v:
        raise ValueError(f'{_DATASET}: {where(i)}: empty "label" value')
      if opts['classes'] and v not in opts['classes']:
        raise ValueError(f'{_DATASET}: {where(i)}: unknown label {v!r}; the "classes" option allows '
                         f'{opts["classes"]}')
    class_names = _class_list(values, opts, where=str(table))
    index = {c: k for k, c in enumerate(class_names)}
    labels = [index[v] for v in values]
  patients = [row.get('patient_id') or '' for row in rows] if 'patient_id' in columns else [
      _patient_of(pathlib.PurePosixPath(p).name, opts['patient_pattern']) for p in paths]
  reports = [row.get('report') or '' for row in rows]
  examples = [Example(p, l, pid, r) for p, l, pid, r in zip(paths, labels, patients, reports)]
  layout = 'csv' if labelled else 'an unlabelled csv'
  multi_label = labelled and bool(label_columns)
  if 'split' not in columns:
    return Scan(layout, class_names, multi_label, {'': examples}, user_split=False, labelled=labelled)
  splits = collections.defaultdict(list)
  for i, (row, e) in enumerate(zip(rows, examples)):
    value = (row['split'] or '').strip().lower()
    if value not in SPLIT_ALIASES:
      raise ValueError(f'{_DATASET}: {where(i)}: unknown split {row["split"]!r}; valid: {sorted(SPLIT_ALIASES)}')
    splits[SPLIT_ALIASES[value]].append(e)
  return Scan(layout, class_names, multi_label, _ordered(splits), user_split=True, labelled=labelled)


def _check_patients(result: Scan, where) -> None:
  """A user-given split must not put one patient on two sides (the scores would be optimistic)."""
  sides = collections.defaultdict(set)
  for split, examples in result.splits.items():
    for e in examples:
      if e.patient_id:
        sides[e.patient_id].add(split)
  shared = sorted(p for p, s in sides.items() if len(s) > 1)
  if shared:
    named = ', '.join(f'{p!r} in {sorted(sides[p])}' for p in shared[:5]) + (' ...' if len(shared) > 5 else '')
    raise ValueError(f'{_DATASET}: the split given in {where} puts {len(shared)} patient(s) in more than one '
                     f'split: {named}; move each patient\'s images into one split, or give no split (no split '
                     'folders / no "split" column) so that a patient-level split is made')


def scan(manual_dir, opts: Mapping[str, Any]) -> Scan:
  """Finds the images, classes and splits in the user's folder, checking everything but the pixels."""
  opts = {**DEFAULT_OPTIONS, **opts}
  root = pathlib.Path(manual_dir)
  if not root.is_dir():
    raise common.LayoutError(f'{_DATASET}: the manual dir {root} does not exist; {_LAYOUT_HELP}')
  table = root / opts['csv']
  if table.is_file():
    result, where = _scan_csv(root, table, opts), table
  elif opts['csv'] != DEFAULT_OPTIONS['csv'] or opts['label_columns']:
    raise common.LayoutError(f'{_DATASET}: the label table {table} (option "csv") does not exist '
                             f'({common._listing(root)})')
  else:
    result, where = _scan_folders(root, opts), root
  result.options = effective_options(opts, labelled=result.labelled)
  if result.user_split:
    _check_patients(result, where)
  else:
    result.splits = _seeded_split(result.splits[''], result.options, labelled=result.labelled)
  return result


# ---------------------------------------------------------------- the builder


@dataclasses.dataclass
class ImageFolderConfig(tfds.core.BuilderConfig):
  """A user's dataset: its name, the classes found in its files, and the options (see DEFAULT_OPTIONS)."""
  class_names: tuple[str, ...] = ()
  multi_label: bool = False
  labelled: bool = True  # False: no `label` feature (self-supervised pretraining pools).
  channels: int = 3
  image_size: int = 0
  fit: str = 'pad'
  encoding: str = 'png'
  # All options, as stored in metadata.json; out of repr as TFDS logs the whole config.
  options_json: str = dataclasses.field(default='{}', repr=False)
  fingerprint: str = ''  # Scan.fingerprint of the files the config was made from.

  @property
  def options(self) -> dict[str, Any]:
    return json.loads(self.options_json)


class ImageFolder(tfds.core.GeneratorBasedBuilder):
  """Your own images (class folders, a CSV, or unlabelled) as a TFDS dataset; see the module docstring."""

  name = _DATASET
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release: class folders (with or without split folders) or a CSV; '
                            'single- or multi-label, or unlabelled (no label feature); patient-level seeded '
                            'split when none is given.'}
  BUILDER_CONFIGS = []  # Made from the user's files by `make_builder`.
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
  Your own data: nothing is downloaded, and the licence and terms are those of your data. Point
  manual_dir at a folder in one of these layouts (any PIL-readable images: PNG incl. 16-bit, JPEG,
  BMP, TIFF, GIF, WebP, PPM/PGM; hidden files and non-image files are ignored):

    (a) folders, split given:  <manual_dir>/<split>/<class>/<image>
        split folder names: train, validation|val|valid, test (any subset); classes = folder names
        folders, no split:     <manual_dir>/<class>/<image>   (a seeded split is made)
        Images may sit in sub-folders of a class folder.
    (b) a table <manual_dir>/labels.csv (option "csv") with columns
        image       path of the image relative to manual_dir
        label       the class name (single-label), OR the 0/1 columns named by option
                    "label_columns" (multi-label)
        patient_id  optional: keeps a patient's images in one split
        report      optional: free text stored in the `report` feature
        split       optional: train, validation|val|valid or test (else a seeded split is made)
        When the table exists, the folders are not scanned for classes.
    (c) unlabelled images, for self-supervised pretraining (no `label` feature; the pipeline
        yields label -1 and num_classes is 0):
        <manual_dir>/<image>  or  <manual_dir>/<split>/<image>
            recognised as unlabelled without options when a folder holds images and no
            sub-folders;
        with the option "labels": "none" ({OPTIONS_FILE}, or inline 'my_pool,labels=none'):
        <manual_dir>/**/<image>  or  <manual_dir>/<split>/**/<image>
            every image below the folder, in any sub-folders (class folders are then just
            folders); or a table (b) with an "image" column and no label (a "label" column is
            ignored). A folder holding both images and sub-folders, a single class folder, or a
            table without a "label" column is an error unless "labels" is "none".

  Classes are the sorted folder names / label values (numeric order when all are integers) unless
  the option "classes" fixes the list. Without a given split, `common.patient_split` makes a
  label-stratified split in which no patient is on two sides, seed 0: fractions 70/10/20
  (train/validation/test) for labelled data, 90/10 (train/validation) for unlabelled data;
  options "fractions" and "seed".

  Options go in <manual_dir>/{OPTIONS_FILE}, e.g.
    {{"channels": 1, "image_size": 256, "fit": "pad", "label_columns": ["effusion", "nodule"],
      "fractions": {{"train": 0.8, "test": 0.2}}, "seed": 0, "patient_pattern": "^(\\\\d+)_"}}
  or, the scalar ones, inline in the config: 'my_scans,channels=1,image_size=256'.
  labels 'auto' (default: labelled unless the layout is unambiguously unlabelled) | 'none';
  channels 1|3 (default 3); image_size 0 = original sizes (default), else made square by fit
  ('pad' | 'center_crop') and resized; encoding 'png' (default) | 'jpeg'.
  """

  def __init__(self, *, config: ImageFolderConfig | None = None, **kwargs):
    if not isinstance(config, ImageFolderConfig):
      raise ValueError(f'{_DATASET}: the config is made from your files; use ImageFolder.make_builder(config=<name>, '
                       f"...) or medssl_jax.data.pipeline.get_builder('{_DATASET}', config=<name>, manual_dir=...)")
    super().__init__(config=config, **kwargs)

  @classmethod
  def config_from_scan(cls, name: str, result: Scan) -> ImageFolderConfig:
    """The BuilderConfig of a scanned folder (options: the scan's effective ones)."""
    opts = result.options
    sizes = ', '.join(f'{s} {len(e)}' for s, e in result.splits.items())
    labels = (f'{len(result.class_names)} {"labels" if result.multi_label else "classes"}' if result.labelled
              else 'no labels')
    return ImageFolderConfig(
        name=name, class_names=result.class_names, multi_label=result.multi_label, labelled=result.labelled,
        channels=opts['channels'], image_size=opts['image_size'], fit=opts['fit'], encoding=opts['encoding'],
        options_json=json.dumps(dict(opts), sort_keys=True), fingerprint=result.fingerprint(opts),
        description=f'User data from {result.layout}: {labels}; '
                    f'{"given" if result.user_split else "seeded patient-level"} split ({sizes}).')

  @classmethod
  def make_builder(cls, *, config: str | None, data_dir, manual_dir=None, prepare: bool = True,
                   file_format: str = 'array_record', options: Mapping[str, Any] | None = None):
    """The builder of the user's dataset `config` (its name, optionally ',key=value' options).

    A copy already prepared in `<data_dir>/image_folder/<name>/<version>/` is loaded with
    `tfds.builder_from_directory` (no manual dir needed). If `manual_dir` is given too, its files
    (and the options) must still match the prepared copy, so stale data is never used silently.
    Otherwise `manual_dir` is scanned and, if `prepare`, the dataset is built.
    """
    name, inline = parse_config(config)
    prepared = pathlib.Path(data_dir) / cls.name / name / str(cls.VERSION)
    if (prepared / 'dataset_info.json').exists():
      builder = tfds.builder_from_directory(os.fspath(prepared))
      stored = dict((builder.info.metadata or {}).get('options') or {})
      have_files = manual_dir is not None and pathlib.Path(manual_dir).is_dir()
      opts = read_options(manual_dir if have_files else None, inline, options)
      requested = {k: opts[k] for k in {**inline, **(options or {})}}
      differ = {k: (stored.get(k), v) for k, v in requested.items() if stored.get(k) != v}
      if not have_files and differ:
        raise ValueError(f'{_DATASET}/{name} in {prepared} was built with other options '
                         f'(stored, requested): {differ}; delete that folder to rebuild, or use another name')
      if have_files and cls.config_from_scan(name, scan(manual_dir, opts)).fingerprint != (
          (builder.info.metadata or {}).get('fingerprint')):
        raise ValueError(f'{_DATASET}/{name} in {prepared} was built from other files or options than those '
                         f'now in {manual_dir}; delete {prepared} to rebuild, or use another dataset name')
      return builder
    if manual_dir is None or not pathlib.Path(manual_dir).is_dir():
      what = 'no manual_dir was given' if manual_dir is None else f'the manual dir {manual_dir} does not exist'
      raise common.LayoutError(f'{_DATASET}/{name} is not prepared in {data_dir} and {what}: set manual_dir '
                               f'(data.manual_dir) to the folder with your images; {_LAYOUT_HELP}')
    opts = read_options(manual_dir, inline, options)
    builder_config = cls.config_from_scan(name, scan(manual_dir, opts))
    builder = cls(config=builder_config, data_dir=os.fspath(data_dir), file_format=file_format)
    if prepare and not builder.is_prepared():
      print(f'Building {cls.name}/{name} ({file_format}) into {builder.data_dir} ...', flush=True)
      builder.download_and_prepare(file_format=file_format,
                                   download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir)))
    return builder

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config
    shape = (c.image_size or None, c.image_size or None, c.channels)
    features = {'image': tfds.features.Image(shape=shape, encoding_format=c.encoding)}
    # Unlabelled: no `label` feature at all (the pipeline yields -1); a placeholder class would pass for a real one.
    if c.labelled and c.multi_label:
      features['label'] = tfds.features.Tensor(shape=(len(c.class_names),), dtype=np.int64,
                                               doc=f'Multi-label 0/1 vector: {", ".join(c.class_names)}.')
    elif c.labelled:
      features['label'] = tfds.features.ClassLabel(names=list(c.class_names))
    features.update({
        'id': tfds.features.Scalar(dtype=np.int64, doc='Index in the split, in file_name order.'),
        'file_name': tfds.features.Text(doc='Image path relative to the manual dir.'),
        'patient_id': tfds.features.Text(doc='From the CSV or patient_pattern; "" if unknown.'),
        'report': tfds.features.Text(doc='The CSV "report" text; "" if none.'),
    })
    return self.dataset_info_from_configs(
        description='A user\'s own images, built by the generic image_folder builder. ' + (c.description or ''),
        features=tfds.features.FeaturesDict(features),
        supervised_keys=('image', 'label') if c.labelled else None,
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(options=c.options, fingerprint=c.fingerprint, labelled=c.labelled,
                                        class_names=list(c.class_names), multi_label=c.multi_label),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = pathlib.Path(dl_manager.manual_dir)
    c = self.builder_config
    result = scan(root, c.options)
    if result.fingerprint(result.options) != c.fingerprint:
      raise ValueError(f'{_DATASET}/{c.name}: the files in {root} changed since the config was made; make it again')
    return {split: self._generate_examples(root, examples) for split, examples in result.splits.items()}

  def _generate_examples(self, root: pathlib.Path, examples: Sequence[Example]):
    c = self.builder_config
    mode = 'L' if c.channels == 1 else 'RGB'
    for i, e in enumerate(examples):
      record = {
          'image': common.image_bytes(root / e.path, mode=mode, fmt=c.encoding, size=c.image_size, fit=c.fit),
          'id': i,
          'file_name': e.path,
          'patient_id': e.patient_id,
          'report': e.report,
      }
      if c.labelled:
        record['label'] = np.asarray(e.label, np.int64) if c.multi_label else e.label
      yield i, record
