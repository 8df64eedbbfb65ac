"""TFDS builder of the SWCL five-patch dataset (stage 3 of medssl_jax/swcl), read from a propagation folder.

Stage 2 (mode "propagate") writes a propagation folder: the pool's images squared to one size, each
image's abnormality activation map (CAM) and its pseudo-labels. This builder cuts every image into
five patches (`tfds_builders/swcl_patches/patches.py`: four corners and the centre; right eyes mirrored first when
the config says so) and stores one record per patch with the semi-weak labels SWCL pairs patches by:
patient, position, abnormality score and pseudo-label.

Like image_folder, the config is made at run time: `SwclPatches.make_builder(config="p224_flip",
manual_dir=<propagation folder>, ...)` (what `pipeline.get_builder('swcl_patches', ...)` calls) reads
the folder, and builds `<data_dir>/swcl_patches/p224_flip/1.0.0/`. Later calls load that copy with
`tfds.builder_from_directory`. The source fingerprint (`SwclPatches.source_fingerprint`: sha256 of
manifest.json and pseudo_labels.csv) is stored in the dataset's metadata; when the propagation folder
is given again and has changed since the build, `make_builder` refuses with an error saying which
folder to delete, so stale patches are never used silently.

Record order: images in pseudo_labels.csv row order, the five positions of each in POSITIONS order;
`id` = 5 * row + position.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import pathlib
import re
from typing import Any, Sequence

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from tfds_builders.swcl_patches.patches import POSITIONS, abnormality_scores, five_patches
from tfds_builders import common

_DATASET = 'swcl_patches'
MANIFEST = 'manifest.json'
TABLE = 'pseudo_labels.csv'
EYES = ('left', 'right', 'unknown')
_CONFIG = re.compile(r'^p(\d+)(?:_(flip|noflip))?$')
_CONFIG_HELP = ("config='p<patch_size>[_flip|_noflip]', e.g. 'p224_flip' (right eyes mirrored; the default) or "
                "'p128_noflip' (data.builder_config; the SWCL runner derives it from swcl.patch_size and "
                "swcl.flip_right_eyes)")


class StaleBuildError(ValueError):
  """The prepared patch dataset was built from another propagation folder than the one given now."""


def parse_config(config: str | None) -> tuple[str, int, bool]:
  """'p224_flip' -> (canonical name, patch size, flip); 'p224' means 'p224_flip'."""
  m = _CONFIG.match(str(config or '').strip())
  if not m or int(m.group(1)) < 1:
    raise ValueError(f'{_DATASET}: bad config {config!r}; expected {_CONFIG_HELP}')
  patch_size, flip = int(m.group(1)), m.group(2) != 'noflip'
  return f'p{patch_size}_{"flip" if flip else "noflip"}', patch_size, flip


@dataclasses.dataclass(frozen=True)
class Row:
  """One image of the propagation folder (a row of pseudo_labels.csv)."""
  key: str
  patient_id: str  # Never empty: an image without a patient id is its own patient ('image:<key>').
  eye: str
  abnormal_prob: float
  probs: tuple[float, ...]


@dataclasses.dataclass
class Source:
  """What `read_source` found in a propagation folder (every file checked, no pixel read)."""
  classes: tuple[str, ...]
  normal_classes: tuple[str, ...]
  multi_label: bool
  image_size: int
  rows: list[Row]
  fingerprint: str


def source_fingerprint(manual_dir) -> str:
  """sha256 (16 hex digits) of the propagation folder's manifest.json and pseudo_labels.csv bytes."""
  manifest, table = common.require(manual_dir, MANIFEST, TABLE, dataset=_DATASET)
  h = hashlib.sha256()
  for path in (manifest, table):
    h.update(path.name.encode() + b'\0' + path.read_bytes() + b'\0')
  return h.hexdigest()[:16]


def _read_manifest(path: pathlib.Path) -> dict[str, Any]:
  try:
    m = json.loads(path.read_text(encoding='utf-8'))
  except (OSError, ValueError) as e:
    raise ValueError(f'{_DATASET}: could not read {path}: {e}') from e
  if not isinstance(m, dict):
    raise ValueError(f'{_DATASET}: {path} must hold a JSON object, got {type(m).__name__}')
  missing = [k for k in ('classes', 'normal_classes', 'multi_label', 'image_size', 'num_images') if k not in m]
  if missing:
    raise ValueError(f'{_DATASET}: {path} lacks key(s) {missing}; found {sorted(m)}')

  def bad(key, expected):
    raise ValueError(f'{_DATASET}: {path}: {key}={m[key]!r}; expected {expected}')

  for key in ('classes', 'normal_classes'):
    if isinstance(m[key], str) or not isinstance(m[key], list) or not all(isinstance(c, str) and c for c in m[key]):
      bad(key, 'a list of non-empty class names')
    if len(set(m[key])) != len(m[key]):
      bad(key, 'no repeated names')
  if not m['classes']:
    bad('classes', 'at least one class')
  if set(m['normal_classes']) - set(m['classes']):
    bad('normal_classes', f'names among classes {m["classes"]}')
  if not isinstance(m['multi_label'], bool):
    bad('multi_label', 'true or false')
  for key in ('image_size', 'num_images'):
    if isinstance(m[key], bool) or not isinstance(m[key], int) or m[key] < 1:
      bad(key, 'a positive integer')
  return m


def _float(value: str, *, where: str, column: str) -> float:
  try:
    x = float(value)
  except (TypeError, ValueError):
    x = math.nan
  if not math.isfinite(x) or not 0.0 <= x <= 1.0:
    raise ValueError(f'{_DATASET}: {where}: column {column!r} is {value!r}; expected a probability in [0, 1]')
  return x


def read_source(manual_dir) -> Source:
  """Reads and checks a propagation folder: manifest, table, and that every image and CAM exists with
  the manifest's size (PNG headers only). Errors name the file, row and what was expected."""
  root = pathlib.Path(manual_dir)
  if not root.is_dir():
    raise common.LayoutError(f'{_DATASET}: the propagation folder {root} does not exist; it is written by SWCL '
                             "stage 2 (mode 'propagate') as <workdir>/propagation")
  fingerprint = source_fingerprint(root)  # Also checks that both files exist.
  m = _read_manifest(root / MANIFEST)
  classes = tuple(m['classes'])
  prob_columns = [f'prob_{c}' for c in classes]
  table = root / TABLE
  rows = common.read_csv(table, required=['key', 'patient_id', 'eye', 'abnormal_prob'] + prob_columns,
                         dataset=_DATASET)
  if len(rows) != m['num_images']:
    raise ValueError(f'{_DATASET}: {table} has {len(rows)} rows but {root / MANIFEST} says num_images='
                     f'{m["num_images"]}; the folder is incomplete or mixed from two runs: rerun stage 2')
  out, seen, missing, wrong_size = [], {}, [], []
  size = m['image_size']
  for i, row in enumerate(rows):
    where = f'{table} row {i + 1} (line {i + 2})'
    key = row['key'] or ''
    if not key or '/' in key or '\\' in key:
      raise ValueError(f'{_DATASET}: {where}: key {key!r}; expected a non-empty file stem (no slashes)')
    if key in seen:
      raise ValueError(f'{_DATASET}: {where}: key {key!r} already in row {seen[key] + 1}')
    seen[key] = i
    eye = (row['eye'] or '').lower()
    if eye not in EYES:
      raise ValueError(f'{_DATASET}: {where}: eye {row["eye"]!r}; expected one of {list(EYES)}')
    probs = tuple(_float(row[c], where=where, column=c) for c in prob_columns)
    prob = _float(row['abnormal_prob'], where=where, column='abnormal_prob')
    out.append(Row(key, row['patient_id'] or f'image:{key}', eye, prob, probs))
    for folder in ('images', 'cams'):
      path = root / folder / f'{key}.png'
      if not path.is_file():
        missing.append(str(path))
        continue
      try:
        with Image.open(path) as im:
          got = im.size
      except Exception as e:  # pylint: disable=broad-except
        raise ValueError(f'Could not read the image {path}: {e} (expected a PNG)') from e
      if got != (size, size):
        wrong_size.append(f'{path} is {got[0]}x{got[1]}')
  if missing:
    more = f' ... and {len(missing) - 5} more' if len(missing) > 5 else ''
    raise common.LayoutError(f'{_DATASET}: missing {missing[:5]}{more}, listed in {table}')
  if wrong_size:
    more = f' ... and {len(wrong_size) - 5} more' if len(wrong_size) > 5 else ''
    raise ValueError(f'{_DATASET}: {"; ".join(wrong_size[:5])}{more}; {root / MANIFEST} says image_size={size} '
                     f'(expected {size}x{size})')
  return Source(classes, tuple(m['normal_classes']), m['multi_label'], size, out, fingerprint)


@dataclasses.dataclass
class SwclPatchesConfig(tfds.core.BuilderConfig):
  """A patch size and eye mirroring, with what the propagation folder says (classes, image size)."""
  patch_size: int = 224
  flip: bool = True
  class_names: tuple[str, ...] = ()
  normal_classes: tuple[str, ...] = ()
  multi_label: bool = False
  image_size: int = 448
  fingerprint: str = ''  # source_fingerprint of the propagation folder the config was made from.


class SwclPatches(tfds.core.GeneratorBasedBuilder):
  """SWCL pretraining patches: five per pool image, with patient, position, abnormality and pseudo-labels."""

  name = _DATASET
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release: five patches (corners + centre) per propagated image.'}
  BUILDER_CONFIGS = []  # Made by `make_builder` from the config string and the propagation folder.
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
  Nothing is downloaded: manual_dir is the propagation folder written by SWCL stage 2 (mode
  'propagate', <workdir>/propagation); the licence is that of the pool images it came from. Layout:
    {MANIFEST}      {{"classes": [...], "normal_classes": [...], "multi_label": bool,
                       "image_size": S, "num_images": N, ...other keys ignored}}
    images/<key>.png   RGB, S x S (already squared)
    cams/<key>.png     8-bit grayscale abnormality activation map, S x S
    {TABLE}  key,source,index,patient_id,eye,abnormal_prob,prob_<class>... (N rows;
                       eye is left, right or unknown; probabilities in [0, 1])
  Config: 'p<patch_size>[_flip|_noflip]' (patch_size <= S; _flip, the default, mirrors right eyes).
  """

  def __init__(self, *, config: SwclPatchesConfig | None = None, **kwargs):
    if not isinstance(config, SwclPatchesConfig):
      raise ValueError(f"{_DATASET}: the config is made from the propagation folder; use "
                       f"SwclPatches.make_builder(config='p224_flip', ...) or medssl_jax.data.pipeline.get_builder("
                       f"'{_DATASET}', config='p224_flip', manual_dir=<workdir>/propagation)")
    super().__init__(config=config, **kwargs)

  @staticmethod
  def source_fingerprint(manual_dir) -> str:
    """sha256 (16 hex digits) of manual_dir's manifest.json and pseudo_labels.csv: what a build is checked against."""
    return source_fingerprint(manual_dir)

  @classmethod
  def make_builder(cls, *, config: str | None, data_dir, manual_dir=None, prepare: bool = True,
                   file_format: str = 'array_record'):
    """The patch dataset `config` ('p224_flip') of the propagation folder `manual_dir`.

    A copy prepared in `<data_dir>/swcl_patches/<config>/<version>/` is loaded (no manual dir needed;
    a manual dir that no longer exists is not checked). When `manual_dir` exists, its fingerprint must
    match the copy's, else StaleBuildError (delete the copy to rebuild). Otherwise the folder is read and
    checked, and, if `prepare`, the dataset is built.
    """
    name, patch_size, flip = parse_config(config)
    prepared = pathlib.Path(data_dir) / cls.name / name / str(cls.VERSION)
    if (prepared / 'dataset_info.json').exists():
      builder = tfds.builder_from_directory(os.fspath(prepared))
      if manual_dir is not None and pathlib.Path(manual_dir).is_dir():
        stored = (builder.info.metadata or {}).get('fingerprint')
        now = cls.source_fingerprint(manual_dir)
        if now != stored:
          raise StaleBuildError(
              f'{_DATASET}/{name} in {prepared} was built from another propagation folder (fingerprint {stored}) '
              f'than the one now in {manual_dir} ({now}): stage 2 was rerun or changed. Delete {prepared.parent} '
              f'(or all of {pathlib.Path(data_dir) / cls.name}) to rebuild the patches')
      return builder
    if manual_dir is None:
      raise common.LayoutError(f'{_DATASET}/{name} is not prepared in {data_dir} and no manual_dir was given: set '
                               'manual_dir (data.manual_dir) to the propagation folder of SWCL stage 2')
    source = read_source(manual_dir)
    if patch_size > source.image_size:
      raise ValueError(f'{_DATASET}: config {name!r} asks for {patch_size} px patches but the images in {manual_dir} '
                       f'are {source.image_size} px ({MANIFEST} image_size); set swcl.patch_size <= swcl.image_size')
    builder_config = SwclPatchesConfig(
        name=name, patch_size=patch_size, flip=flip, class_names=source.classes,
        normal_classes=source.normal_classes, multi_label=source.multi_label, image_size=source.image_size,
        fingerprint=source.fingerprint,
        description=f'{len(source.rows)} images of {source.image_size} px -> {5 * len(source.rows)} patches of '
                    f'{patch_size} px ({"right eyes mirrored" if flip else "no mirroring"}); source fingerprint '
                    f'{source.fingerprint}.')
    builder = cls(config=builder_config, data_dir=os.fspath(data_dir), file_format=file_format)
    if prepare and not builder.is_prepared():
      print(f'Building {cls.name}/{name} ({file_format}) into {builder.data_dir} ...', flush=True)
      builder.download_and_prepare(file_format=file_format,
                                   download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir)))
    return builder

  @classmethod
  def stand_in(cls, *, config: str, data_dir, num_classes: int = 8):
    """An unprepared builder of `config` whose feature spec has the shapes a real one would, with `num_classes`
    placeholder classes (the pseudo-labeller's; ODIR-5K has 8): for dry runs, which need shapes, not data."""
    name, patch_size, flip = parse_config(config)
    names = tuple(f'class_{i}' for i in range(num_classes))
    return cls(config=SwclPatchesConfig(name=name, patch_size=patch_size, flip=flip, class_names=names,
                                        normal_classes=names[:1]),
               data_dir=os.fspath(data_dir))

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config
    p = c.patch_size
    features = tfds.features.FeaturesDict({
        'image': tfds.features.Image(shape=(p, p, 3), encoding_format='png'),
        'id': tfds.features.Scalar(dtype=np.int64, doc='Record index: 5 * image row + position.'),
        'patient': tfds.features.Scalar(dtype=np.int64, doc='Index of patient_id among the sorted distinct ids.'),
        'patient_id': tfds.features.Text(doc="From pseudo_labels.csv; 'image:<key>' when that is empty."),
        'position': tfds.features.ClassLabel(names=list(POSITIONS)),
        'abnormality': tfds.features.Scalar(dtype=np.float32, doc='tfds_builders.swcl_patches.patches.abnormality_scores.'),
        'pseudo_label': tfds.features.Tensor(shape=(len(c.class_names),), dtype=np.float32,
                                             doc=f'Pseudo-labeller probabilities: {", ".join(c.class_names)}.'),
        'label': tfds.features.ClassLabel(names=list(c.class_names)),
        'eye': tfds.features.ClassLabel(names=list(EYES)),
        'flipped': tfds.features.Scalar(dtype=np.bool_, doc='The image was mirrored before cutting (right eye).'),
        'image_key': tfds.features.Text(doc='The image key in the propagation folder.'),
    })
    return self.dataset_info_from_configs(
        description='SWCL pretraining patches (Yap & Ng 2021) cut from the pseudo-labelled pool. '
                    + (c.description or ''),
        features=features,
        supervised_keys=('image', 'label'),
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(
            fingerprint=c.fingerprint, patch_size=c.patch_size, flip=c.flip, image_size=c.image_size,
            classes=list(c.class_names), normal_classes=list(c.normal_classes), multi_label=c.multi_label,
            positions=list(POSITIONS)),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = pathlib.Path(dl_manager.manual_dir)
    c = self.builder_config
    source = read_source(root)
    if source.fingerprint != c.fingerprint:
      raise StaleBuildError(f'{_DATASET}/{c.name}: {root} changed since the config was made; make it again')
    return {'train': self._generate_examples(root, source.rows)}

  def _generate_examples(self, root: pathlib.Path, rows: Sequence[Row]):
    c = self.builder_config
    patient_index = {p: i for i, p in enumerate(sorted({r.patient_id for r in rows}))}
    for i, r in enumerate(rows):
      flip = c.flip and r.eye == 'right'
      image = np.asarray(common.load_image(root / 'images' / f'{r.key}.png', mode='RGB'))
      cam = np.asarray(common.load_image(root / 'cams' / f'{r.key}.png', mode='L'))
      for what, a in (('image', image), ('cam', cam)):
        if a.shape[:2] != (c.image_size, c.image_size):  # Re-checked: the headers were read before.
          raise ValueError(f'{_DATASET}: the {what} of {r.key!r} is {a.shape[1]}x{a.shape[0]}; expected '
                           f'{c.image_size}x{c.image_size}')
      patches = five_patches(image, patch_size=c.patch_size, flip=flip)
      scores = abnormality_scores(cam, abnormal_prob=r.abnormal_prob, patch_size=c.patch_size, flip=flip)
      label = int(np.argmax(r.probs))
      for k in range(len(POSITIONS)):
        index = len(POSITIONS) * i + k
        yield index, {
            'image': common.encode(Image.fromarray(np.ascontiguousarray(patches[k]), 'RGB')),
            'id': index,
            'patient': patient_index[r.patient_id],
            'patient_id': r.patient_id,
            'position': k,
            'abnormality': np.float32(scores[k]),
            'pseudo_label': np.asarray(r.probs, np.float32),
            'label': label,
            'eye': r.eye,
            'flipped': flip,
            'image_key': r.key,
        }
