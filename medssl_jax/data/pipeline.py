"""Host input pipelines: TFDS array_record data sources read with grain, no TensorFlow needed.

Records are read with `builder.as_data_source` with image decoding skipped (PNG bytes), and decoded
(and optionally resized) on the host with PIL inside the grain pipeline, so decode errors can name the
split and record, and decoding runs in grain's worker processes when `worker_count > 0`.

Volume datasets (medmnist3d, nifti_volumes) store `image` as a uint8 Tensor [D, H, W, C], which the data
source decodes itself; every function here then carries volumes where it carries images: batches are
[B, D, H, W, C], and `image_size` resizes a volume to image_size³ (`common.resize_volume`).

Training iterators are grain `DatasetIterator`s whose `get_state()` / `set_state()` resume a run
exactly; the state is a small JSON-serialisable dict.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import glob
import io
import json
import os
import re
import shutil
from typing import Any, Iterator, Mapping

import grain
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from medssl_jax import locks
from medssl_jax import paths
from medssl_jax.text.tokenizer import split_sentences
from tfds_builders.common import resize_volume
from tfds_builders.registry import BUILDERS
from tfds_builders.registry import builder_class
from tfds_builders.common import square

_FILE_FORMAT = 'array_record'

Builder = tfds.core.DatasetBuilder



def dataset_name(builder) -> str:
  """'name/config' of a builder, as tables and subset files name it."""
  return builder.name + (f'/{builder.builder_config.name}' if builder.builder_config else '')

def _default_data_dir() -> str:
  return os.environ.get('TFDS_DATA_DIR') or os.path.expanduser('~/tensorflow_datasets')


def get_builder(name: str, *, data_dir: str | None = None, config: str | None = None,
                prepare: bool = True, manual_dir: str | None = None) -> Builder:
  """Returns the registered TFDS builder `name`, built in array_record format if `prepare`.

  Args:
    name: a key of `BUILDERS`.
    data_dir: TFDS data dir; defaults to $TFDS_DATA_DIR or ~/tensorflow_datasets. A URL (gs://bucket/tfds)
      holds the prepared datasets, which are read from a local copy (`data_cache_dir`): array_record reads and
      writes local files only. A dataset missing there is built locally and then uploaded.
    config: builder config name; None picks the builder's default.
    prepare: build the data set (once) if it is not in `data_dir` yet.
    manual_dir: where a manual-download builder finds the official files (default: TFDS's
      <data_dir>/downloads/manual).
  """
  data_dir = data_dir or _default_data_dir()
  if not paths.is_url(data_dir):
    return _local_builder(name, data_dir=data_dir, config=config, prepare=prepare, manual_dir=manual_dir)
  local = data_cache_dir(data_dir)
  get = functools.partial(_local_builder, name, data_dir=local, config=config, manual_dir=manual_dir)
  builder = get(prepare=False)
  if builder.is_prepared():
    return builder
  remote = paths.join(data_dir, os.path.relpath(builder.data_dir, local))
  if paths.exists(paths.join(remote, _INFO_FILE)):
    print(f'Copying {dataset_name(builder)} from {remote} to {builder.data_dir} ...', flush=True)
    # Into a folder of this process's own, then one rename: hosts sharing the cache never see half a copy.
    partial = f'{builder.data_dir}.partial{os.getpid()}'
    paths.copy_tree(remote, partial)
    try:
      os.replace(partial, builder.data_dir)
    except OSError:  # Another process put its copy there first.
      paths.rmtree(partial)
    return get(prepare=False)
  if not prepare:
    return builder
  builder = get(prepare=True)
  print(f'Uploading {dataset_name(builder)} to {remote} ...', flush=True)
  paths.copy_tree(builder.data_dir, remote, last=(_INFO_FILE,))  # Its info file last: a partial upload is no dataset.
  return builder


_INFO_FILE = 'dataset_info.json'  # TFDS writes it when a dataset is complete; it marks a prepared one.


def data_cache_dir(url: str) -> str:
  """The local folder that holds the copies of the datasets of a data dir at `url`:
  $MEDSSL_DATA_CACHE (default ~/.cache/medssl_jax/data) / <scheme>/<bucket>/<path>."""
  root = os.environ.get('MEDSSL_DATA_CACHE') or os.path.expanduser('~/.cache/medssl_jax/data')
  return os.path.join(root, str(url).replace('://', '/', 1).strip('/'))


def _local_builder(name: str, *, data_dir: str, config: str | None, prepare: bool,
                   manual_dir: str | None) -> Builder:
  cls = builder_class(name)
  if hasattr(cls, 'make_builder'):
    # User-data builders (image_folder): the config is made from the user's files, not a fixed list.
    make = functools.partial(cls.make_builder, config=config, data_dir=data_dir, manual_dir=manual_dir,
                             file_format=_FILE_FORMAT)
    if not prepare:
      return make(prepare=False)
    with _writable(name, config, data_dir), _build_lock(name, config, data_dir):
      return make(prepare=True)
  valid = [c.name for c in (cls.BUILDER_CONFIGS or [])]
  if config is not None and config not in valid:
    raise ValueError(f'Unknown config {config!r} for dataset {name!r}; valid configs: {valid}.')
  builder = cls(config=config, data_dir=data_dir, file_format=_FILE_FORMAT)
  if not prepare or builder.is_prepared():
    return builder
  with _writable(name, config, data_dir), _build_lock(name, config, data_dir):
    builder = cls(config=config, data_dir=data_dir, file_format=_FILE_FORMAT)  # Built meanwhile by another job?
    if builder.is_prepared():
      return builder
    # Half-built folders of a build that was killed (no build runs now: we hold the lock).
    for stale in glob.glob(os.path.join(os.path.dirname(builder.data_dir), 'incomplete.*')):
      shutil.rmtree(stale, ignore_errors=True)
    print(f'Building {builder.name}/{builder.builder_config.name if builder.builder_config else ""}'
          f' ({_FILE_FORMAT}) into {builder.data_dir} ...', flush=True)
    download_config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
    try:
      builder.download_and_prepare(file_format=_FILE_FORMAT, download_config=download_config)
    except BaseException as e:
      # TFDS removes its half-built folder; the empty <data_dir>/<name>/<config> folders it made go too.
      _remove_empty_parents(builder.data_dir, stop=data_dir)
      if not (isinstance(e, AssertionError) and str(e).startswith('Manual directory')):
        raise
      # TFDS's check of the manual dir: a page of instructions, no word of the config key.
      folder = str(e).split(' does not exist', 1)[0].removeprefix('Manual directory ')
      raise FileNotFoundError(
          f'{name}{"/" + config if config else ""}: the official files are not in {folder} (it does not exist or is '
          f'empty). Download them as `python -c "from {cls.__module__.rsplit(".", 1)[0]} import {cls.__name__}; '
          f'print({cls.__name__}.MANUAL_DOWNLOAD_INSTRUCTIONS)"` says, then name their folder in the config entry '
          'of this dataset, e.g. --config.data.manual_dir=<folder>') from None
  return builder


@contextlib.contextmanager
def _writable(name: str, config: str | None, data_dir: str):
  """Turns a refusal to write `data_dir` (a read-only mount, no permission) into a message naming the folder and
  the config key that chooses another."""
  try:
    yield
  except OSError as e:
    if e.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
      raise
    raise OSError(f'{name}{"/" + config if config else ""} is not built in {data_dir} and that folder '
                  f'cannot be written ({e.strerror}: {e.filename or data_dir}). Build it into a writable folder: '
                  'name it in the config entry of this dataset, e.g. --config.data.data_dir=<folder> '
                  '(or set TFDS_DATA_DIR)') from None


@contextlib.contextmanager
def _build_lock(name: str, config: str | None, data_dir: str):
  """One build of a dataset at a time in `data_dir`: jobs that need it at once (hosts, a sweep) wait for the one
  building it, then read what it built."""
  what = f'{name}/{config or "default"}'
  lock = locks.FileLock(os.path.join(data_dir, f'.{name}-{config or "default"}.build.lock'))
  lock.acquire(wait=True, on_wait=lambda holder: print(
      f'Waiting for {locks.describe(holder)}, which is building {what} into {data_dir} ...', flush=True))
  try:
    yield
  finally:
    lock.release()


def _remove_empty_parents(folder: str, *, stop: str):
  """Removes `folder` and then its parents up to (not including) `stop`, each only while empty."""
  folder, stop = os.path.abspath(folder), os.path.abspath(stop)
  while folder.startswith(stop + os.sep):
    try:
      os.rmdir(folder)
    except OSError:  # Not empty (or absent: go on to the parent).
      if os.path.isdir(folder):
        return
    folder = os.path.dirname(folder)


# A dataset reference: the keys with which any config entry names a dataset (config.data, swcl.labelled and
# swcl.pool[i], transfer.targets[i], ood.targets[i], segmentation), beside that entry's own keys (splits, label
# maps...). All of them open through `open_dataset`.
REF_KEYS = ('builder', 'builder_config', 'data_dir', 'manual_dir')


def ref_section(builder: str, builder_config: str = '') -> ml_collections.ConfigDict:
  """The reference keys of a config section, with their meaning; sections add their own keys beside them."""
  c = ml_collections.ConfigDict()
  c.builder = builder                # A name in medssl_jax.data.pipeline.BUILDERS.
  c.builder_config = builder_config  # TFDS builder config ("" = the builder's default).
  c.data_dir = ''                    # "" = the entry's default (see open_dataset), else $TFDS_DATA_DIR.
  c.manual_dir = ''                  # Official files of a manual-download builder ("" = TFDS default).
  return c


def check_ref(ref, where: str) -> None:
  """Raises a one-line ValueError naming `where` when a reference's builder is not registered."""
  if ref['builder'] not in BUILDERS:
    raise ValueError(f"{where}.builder={ref['builder']!r} is not known; valid choices: {sorted(BUILDERS)}")


def check_refs(entries, *, where: str, required=('builder',), extra_keys=()) -> None:
  """Checks a tuple of reference dicts (e.g. config.transfer.targets): keys are REF_KEYS + `extra_keys`,
  `required` ones are non-empty, builders are registered."""
  allowed = REF_KEYS + tuple(extra_keys)
  if isinstance(entries, (str, Mapping)) or not isinstance(entries, (tuple, list)):
    raise ValueError(f'{where} must be a tuple of dicts, got {entries!r}')
  for i, e in enumerate(entries):
    if not isinstance(e, Mapping):
      raise ValueError(f'{where}[{i}] must be a dict with keys {list(allowed)}, got {e!r}')
    unknown = sorted(set(e) - set(allowed))
    missing = [k for k in required if not e.get(k)]
    if unknown or missing:
      raise ValueError(f'{where}[{i}]: ' + (f'unknown key(s) {unknown}' if unknown else f'missing {missing}') +
                       f'; valid keys: {list(allowed)} (required: {list(required)})')
    check_ref(e, f'{where}[{i}]')


def ref_name(ref) -> str:
  """'builder/config' of a reference, without opening it ('builder' when it names no config)."""
  return ref['builder'] + (f"/{ref['builder_config']}" if ref.get('builder_config') else '')


def open_dataset(ref, *, default_data_dir: str = '', prepare: bool = True) -> Builder:
  """The TFDS builder a dataset reference names, built (once) if it is not prepared yet.

  Args:
    ref: a mapping or ConfigDict with `builder` and optionally `builder_config`, `data_dir`, `manual_dir`
      (empty = default). When it also has `channels` (config.data does), the images must have that many.
    default_data_dir: the data dir of a reference whose own is empty (e.g. an OOD target takes the source's
      data.data_dir); empty = $TFDS_DATA_DIR or ~/tensorflow_datasets.
    prepare: build the dataset if missing. On a multi-host job process 0 builds it and the others wait.
  """
  get = functools.partial(get_builder, ref['builder'], data_dir=ref.get('data_dir') or default_data_dir or None,
                          config=ref.get('builder_config') or None, manual_dir=ref.get('manual_dir') or None,
                          prepare=prepare)
  if jax.process_count() == 1 or not prepare:
    builder = get()
  else:
    builder = get() if jax.process_index() == 0 else None
    multihost_utils.sync_global_devices(f"dataset {ref_name(ref)} prepared")
    builder = builder or get()
  if ref.get('channels') is not None:
    check_channels(builder, ref['channels'])
  return builder


def _as_builder(builder: Builder | str) -> Builder:
  return get_builder(builder) if isinstance(builder, str) else builder


def num_classes(builder: Builder) -> int:
  """Number of classes of the builder's 'label' feature (multi-label: its length; 0 if it has none)."""
  features = builder.info.features
  if 'label' not in features:
    return 0
  label = features['label']
  return label.num_classes if isinstance(label, tfds.features.ClassLabel) else int(label.shape[-1])


def class_names(builder: Builder) -> list[str]:
  """Class names of the builder's ClassLabel 'label' feature, in label order ([] if it has none)."""
  label = builder.info.features['label'] if 'label' in builder.info.features else None
  return list(label.names) if isinstance(label, tfds.features.ClassLabel) else []


def is_multi_label(builder: Builder) -> bool:
  """True when the builder's 'label' is a multi-label Tensor [K] (0/1, -1 = uncertain), not a ClassLabel."""
  features = builder.info.features
  if 'label' not in features:
    return False
  label = features['label']
  return not isinstance(label, tfds.features.ClassLabel) and len(label.shape) == 1


def label_names(builder: Builder) -> list[str]:
  """Names of the builder's label classes, in label order: the ClassLabel names of a single-label
  builder, or for a multi-label Tensor [K] label the builder class's LABEL_NAMES (the one place the
  CheXpert / MIMIC-CXR / NIH ChestX-ray14 / synthetic_cxr builders name their columns). [] if neither.
  """
  names = class_names(builder)
  if names or not is_multi_label(builder):
    return names
  names = list(getattr(builder, 'LABEL_NAMES', ()) or ())
  k = int(builder.info.features['label'].shape[0])
  if names and len(names) != k:
    raise ValueError(f"{builder.name}.LABEL_NAMES names {len(names)} classes but its 'label' feature has {k}")
  return names


def _check_split(builder: Builder, split: str) -> None:
  """Raises ValueError unless every split named in `split` (e.g. 'train[:10%]+test') exists."""
  valid = list(builder.info.splits.keys())
  for part in str(split).split('+'):
    base = re.split(r'[\[(]', part.strip(), maxsplit=1)[0]
    if base not in valid:
      raise ValueError(f'Unknown split {split!r} for dataset {builder.name!r}; valid splits: {valid}.')


def num_examples(builder: Builder, split: str) -> int:
  """Number of examples in `split` (slicing syntax such as 'train[:50%]' allowed)."""
  _check_split(builder, split)
  return builder.info.splits[split].num_examples


FITS = ('squash', 'pad', 'center_crop')


class _Subset:
  """A data source restricted to `indices` (a label subset), in that order."""

  def __init__(self, source, indices):
    self.source = source
    self.indices = [int(i) for i in indices]
    if self.indices and not 0 <= min(self.indices) <= max(self.indices) < len(source):
      raise ValueError(f'subset indices must lie in [0, {len(source)}), got [{min(self.indices)}, {max(self.indices)}]')

  def __len__(self):
    return len(self.indices)

  def __getitem__(self, i):
    return self.source[self.indices[i]]

  def __getitems__(self, idx):
    return self.source.__getitems__([self.indices[i] for i in idx])


def _data_source(builder: Builder, split: str, indices=None):
  _check_split(builder, split)
  # Checked up front: array_record itself fails on an empty split with an obscure message.
  if builder.info.splits[split].num_examples == 0:
    raise ValueError(f'Split {split!r} of dataset {builder.name!r} is empty.')
  # Skip TFDS image decoding (image and any masks): we get PNG/JPEG bytes and decode with PIL ourselves
  # (see module docstring); masks are decoded only when asked for (load_split_arrays' extra_keys).
  skip = {k: tfds.decode.SkipDecoding() for k, f in builder.info.features.items()
          if isinstance(f, tfds.features.Image)}
  source = builder.as_data_source(split=split, decoders=skip)
  if indices is not None:
    if len(indices) == 0:
      raise ValueError(f'The label subset of split {split!r} of dataset {builder.name!r} is empty.')
    source = _Subset(source, indices)
  return source


def read_column(builder: Builder | str, *, split: str, key: str) -> list:
  """One feature of every record of `split`, in record order, without decoding images
  (e.g. 'label' or 'patient_id' to choose a label subset)."""
  builder = _as_builder(builder)
  if key not in builder.info.features:
    raise KeyError(f'Dataset {builder.name!r} has no feature {key!r}; it has {sorted(builder.info.features.keys())}')
  source = _data_source(builder, split)
  out = []
  for start in range(0, len(source), 1024):
    out.extend(r[key] for r in source.__getitems__(list(range(start, min(start + 1024, len(source))))))
  return out


def is_volume(builder: Builder) -> bool:
  """True when the builder's images are volumes [D, H, W, C] (a Tensor feature), not 2D images."""
  return len(builder.info.features['image'].shape) == 4


def image_channels(builder: Builder) -> int:
  """Channels of the builder's images (1 for X-ray/ultrasound/grayscale, 3 for colour)."""
  return int(builder.info.features['image'].shape[-1])


def check_channels(builder: Builder, channels: int) -> None:
  """Raises a ValueError when a config's `data.channels` disagrees with the builder's images."""
  have = image_channels(builder)
  if channels != have:
    name = dataset_name(builder)
    raise ValueError(f'config.data.channels={channels} but {name} has {have}-channel images; set '
                     f'config.data.channels={have} (and data.mean/std with {have} values)')


class _Decode:
  """Picklable record decoder for grain workers: PNG bytes (or a volume) -> dict(image uint8, label, id) int32,
  plus the non-image features named in `extra_keys`, numeric ones cast to `extra_dtypes` (their
  dataset dtype: a data source hands float32 scalars back as Python floats)."""

  def __init__(self, split: str, image_size: int | None, channels: int = 3, fit: str = 'squash',
               indices=None, extra_keys=(), extra_dtypes=None, num_records: int = 0, text=None, foreground=None):
    self.split = split
    self.num_records = int(num_records)
    self.image_size = image_size
    self.channels = channels
    self.fit = fit
    self.indices = None if indices is None else [int(i) for i in indices]
    self.extra_keys = tuple(extra_keys)
    self.extra_dtypes = dict(extra_dtypes or {})
    self.text = text
    self.foreground = foreground

  def __call__(self, index: int, record: dict[str, Any]) -> dict[str, np.ndarray]:
    position = index  # Unreduced: differs between epochs (the sentence draw below uses it).
    # Name the split's record in errors. grain hands later epochs' indices unreduced (epoch * n + i).
    if self.indices is not None:
      index = self.indices[index % len(self.indices)]
    elif self.num_records:
      index = index % self.num_records
    kind, name = self.foreground or (None, None)
    extra_keys = self.extra_keys + ((name,) if kind == 'feature' else ())
    out = _decode_record(record, index, self.split, self.image_size, self.channels, self.fit, extra_keys,
                         image_keys=(name,) if kind == 'feature' else ())
    if kind == 'feature':
      out['foreground'] = (out.pop(name)[..., :1] != 0).astype(np.uint8)
    elif kind == 'derived':  # `name` is the mask function itself.
      out['foreground'] = np.asarray(name(out['image']), bool)[..., None].astype(np.uint8)
    for key, dtype in self.extra_dtypes.items():
      out[key] = out[key].astype(dtype, copy=False)
    if self.text is not None:
      key, encode, sentence_seed = (*self.text, None)[:3]
      text = as_text(record[key])
      if sentence_seed is not None:  # ConVIRT's text view: one sentence, a new draw each epoch, reproducible.
        sentences = split_sentences(text)
        text = sentences[np.random.default_rng([sentence_seed, position]).integers(len(sentences))]
      out['text_ids'], out['text_mask'] = encode(text)
    return out


def as_text(value) -> str:
  """A TFDS Text feature as stored by a data source (bytes) or already decoded (str), as str."""
  return value.decode('utf-8') if isinstance(value, bytes) else str(value)


def _decode_record(record, index, split, image_size, channels=3, fit='squash', extra_keys=(), image_keys=()):
  data = record['image']
  if isinstance(data, np.ndarray) and data.ndim == 4:
    image, size = _fit_volume(data, index=index, split=split, image_size=image_size, fit=fit), None
  else:
    image, size = _decode_image(record, index, split, image_size, channels, fit)
  out = {
      'image': image,
      # A scalar, a vector for multi-label data, or -1 for data without image labels (segmentation).
      'label': np.asarray(record.get('label', -1), np.int32),
      'id': np.int32(record['id']),
  }
  for key in extra_keys:
    if key in image_keys:
      out[key] = _decode_mask(record[key], key=key, index=index, split=split, size=size, image_size=image_size,
                              fit=fit)
    else:
      out[key] = np.asarray(record[key])
  return out


def _fit_volume(volume: np.ndarray, *, index, split, image_size, fit) -> np.ndarray:
  """A volume [D, H, W, C] as uint8, resized to image_size³ when its shape differs (area resize for whole
  factors such as 64³ -> 32³, else trilinear). The volume builders store cubes, so `fit` has nothing to do; a
  non-cube volume is resized per axis, and only with fit='squash'."""
  if volume.dtype != np.uint8:
    raise ValueError(f'The volume of record {index} in split {split!r} is {volume.dtype}; volume datasets store '
                     'uint8 (rebuild the dataset with a volume builder)')
  target = None if image_size is None else (image_size,) * 3
  if target is None or volume.shape[:3] == target:
    return volume
  if fit != 'squash' and len(set(volume.shape[:3])) > 1:
    raise ValueError(f'fit={fit!r} for the {"x".join(map(str, volume.shape[:3]))} volume of record {index} in split '
                     f"{split!r}: volumes are resized per axis; use fit='squash'")
  return np.clip(np.rint(resize_volume(volume, target)), 0, 255).astype(np.uint8)


def _decode_image(record, index, split, image_size, channels, fit) -> tuple[np.ndarray, tuple[int, int]]:
  """(image uint8 [H, W, C], its size (W, H) before the fit) of a record's PNG/JPEG bytes."""
  data = record['image']
  try:
    if isinstance(data, np.ndarray):  # Already decoded (a source built with default decoders).
      pil = Image.fromarray(data)
    else:
      pil = Image.open(io.BytesIO(data))
      pil.load()
    # Keep grayscale data single-channel: a fake RGB triples the work and hides the modality.
    mode = 'L' if channels == 1 else 'RGB'
    if pil.mode != mode:
      pil = pil.convert(mode)
  except Exception as e:  # pylint: disable=broad-except
    # Name the source file where the builder stored one: the record index alone sends users hunting.
    source = f" ({as_text(record['file_name'])})" if record.get('file_name') else ''
    raise ValueError(f'Could not decode the image of record {index}{source} in split {split!r}: {e}; the prepared '
                     'dataset is damaged: delete its folder in the data dir and build it again') from e
  size = pil.size  # Before the fit: extra image features must share it to stay aligned.
  if image_size is not None and pil.size != (image_size, image_size):
    if fit != 'squash':  # Keep the aspect ratio: pad with black (e.g. fundus, X-ray) or crop the centre.
      pil = square(pil, fit=fit)
    pil = pil.resize((image_size, image_size), Image.BICUBIC)
  image = np.asarray(pil, np.uint8)
  return (image[..., None] if image.ndim == 2 else image), size


def _decode_mask(data, *, key, index, split, size, image_size, fit):
  """An image feature stored beside the image (a mask or label map) as uint8 [H, W, C], given the
  image's geometry (same squaring by `fit`, same output size) but resized with nearest neighbour, so
  it stays aligned with the image and no new values (class ids) appear."""
  try:
    if isinstance(data, np.ndarray):
      pil = Image.fromarray(data[..., 0] if data.ndim == 3 and data.shape[-1] == 1 else data)
    else:
      pil = Image.open(io.BytesIO(data))
      pil.load()
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f'Could not decode {key!r} of record {index} in split {split!r}: {e}') from e
  if pil.size != size:
    raise ValueError(f'{key!r} of record {index} in split {split!r} is {pil.size[0]}x{pil.size[1]} but its image is '
                     f'{size[0]}x{size[1]} (W x H); a mask must match its image to be resized alongside it')
  if pil.mode == '1':
    pil = pil.convert('L')  # 1-bit masks: 0/255 after this; any non-zero value is inside.
  if image_size is not None and pil.size != (image_size, image_size):
    if fit != 'squash':
      pil = square(pil, fit=fit)
    pil = pil.resize((image_size, image_size), Image.NEAREST)
  mask = np.asarray(pil)
  if mask.dtype != np.uint8:
    mask = mask.astype(np.uint8) if mask.max(initial=0) < 256 else mask
  return mask[..., None] if mask.ndim == 2 else mask


def check_extra_keys(builder: Builder, extra_keys) -> tuple[tuple[str, ...], frozenset]:
  """(extra keys as a tuple, the set of those that are image features) for `load_split_arrays`.

  Raises a KeyError naming a key the dataset lacks (or one always returned) and listing its features.
  """
  extra_keys = tuple(extra_keys)
  features = builder.info.features
  reserved = [k for k in extra_keys if k in ('image', 'label', 'id')]
  missing = [k for k in extra_keys if k not in features]
  if reserved or missing or len(set(extra_keys)) != len(extra_keys):
    name = dataset_name(builder)
    images = sorted(k for k, f in features.items() if isinstance(f, tfds.features.Image) and k != 'image')
    what = (f'has no feature {missing[0]!r}' if missing and not reserved else
            f'extra_keys {list(extra_keys)} must be distinct and not {reserved or "repeated"} (always returned)')
    raise KeyError(f'Dataset {name!r} {what}; its features are {sorted(features.keys())} '
                   f'(image features besides the image, e.g. masks: {images or "none"})')
  return extra_keys, frozenset(k for k in extra_keys if isinstance(features[k], tfds.features.Image))


def check_foreground(builder: Builder, foreground) -> None:
  """Checks a `make_train_iterator(foreground=...)` spec against the builder: a ValueError naming what to set."""
  kind, name = foreground
  if kind == 'derived':
    if is_volume(builder) and not getattr(name, 'volumes', False):
      raise ValueError(f'config.augment.derived_mask={getattr(name, "name", name)!r} derives masks from 2D images, '
                       f'but dataset {dataset_name(builder)!r} holds volumes; choose one defined on volumes too '
                       f'(medssl_jax/data/masks.py VOLUME_NAMES, e.g. "body_outline")')
    return
  if kind != 'feature':
    raise ValueError(f"foreground={foreground!r}: expected ('feature', key) or ('derived', name)")
  features = builder.info.features
  if name not in features or not isinstance(features[name], tfds.features.Image) or name == 'image':
    masks_found = sorted(k for k, f in features.items() if isinstance(f, tfds.features.Image) and k != 'image')
    raise ValueError(f'config.augment.mask_key={name!r} is not a mask feature of dataset {dataset_name(builder)!r}; '
                     f'its image features besides the image are {masks_found or "none"} (or set '
                     f'config.augment.derived_mask, e.g. "fundus_fov")')


def make_train_iterator(builder: Builder | str, *, split: str = 'train', global_batch_size: int,
                        seed: int, image_size: int | None = None, num_epochs: int | None = None,
                        worker_count: int = 0, process_index: int | None = None,
                        process_count: int | None = None, read_threads: int = 2,
                        prefetch_batches: int = 4, fit: str = 'squash',
                        indices=None, extra_keys=(), text=None, foreground=None) -> grain.DatasetIterator:
  """Returns a shuffled, repeated, batched training iterator over this process's shard of `split`.

  Every process shuffles all records alike and yields its rows of each global batch
  (`global_batch_size // process_count` of them, the process's slice), so the global batches are the
  same for any number of processes. Each batch is a dict: image uint8 [B, H, W, C] (C = the builder's channels;
  volumes: [B, D, H, W, C]),
  label int32 [B] ([B, K] for multi-label data), id int32 [B].
  Each epoch is reshuffled (deterministically from `seed`); batches may span epoch boundaries.

  Args:
    builder: a prepared TFDS builder (or a `BUILDERS` name).
    split: TFDS split, slicing syntax allowed.
    global_batch_size: batch size summed over all processes.
    seed: shuffle seed (0 <= seed < 2**32).
    image_size: if set, resize images on the host to image_size x image_size (volumes to image_size³).
    num_epochs: None repeats forever.
    worker_count: > 0 decodes in that many grain worker processes (`mp_prefetch`).
    process_index, process_count: shard of this process; default to jax's.
    read_threads: grain read threads per process.
    prefetch_batches: batches buffered ahead per process.
    fit: how a non-square image becomes square before resizing: 'squash' (plain resize), 'pad'
      (black borders, keeps everything) or 'center_crop'.
    indices: optional record indices of `split` to use (a label subset, see data/subsets.py).
    extra_keys: further (non-image) features returned in each batch as stacked numpy arrays [B, ...]
      in the dataset's dtype, aligned with 'id' (e.g. SWCL's 'patient', 'position', 'pseudo_label').
    text: optional (text feature, encode) with encode(str) -> (ids int [L], mask bool [L]) (e.g. a
      tokenizer's encode at a fixed max_length): each batch also carries 'text_ids' [B, L] and
      'text_mask' [B, L] of that feature (image-text objectives). encode must be picklable for workers.
      (text feature, encode, seed) encodes one sentence of the text instead (text.split_sentences), drawn
      from the seed and the example's position in the stream: a different sentence each epoch,
      the same ones on a rerun or resume.
    foreground: optional ('feature', key) or ('derived', fn): each batch also carries 'foreground', uint8
      [B, H, W, 1] with 1 inside, from the dataset's mask feature `key` (resized with the image, non-zero is
      inside) or from fn(decoded image uint8 [H, W, C]) -> bool [H, W] (picklable for grain workers, e.g.
      medssl_jax.data.masks.Derived), for background augmentation; with volumes [B, D, H, W, 1], from a
      derived mask defined on volumes (fn.volumes, e.g. masks.Derived("body_outline")).

  Returns:
    A grain `DatasetIterator`; `get_state()` / `set_state()` checkpoint and restore it exactly.
  """
  builder = _as_builder(builder)
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} not in [0, process_count={process_count}).')
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise ValueError(f'global_batch_size={global_batch_size} must be a positive multiple of '
                     f'process_count={process_count}.')
  batch_size = global_batch_size // process_count
  if not 0 <= seed < 2**32:
    raise ValueError(f'seed must be in [0, 2**32), got {seed}.')

  if fit not in FITS:
    raise ValueError(f'fit={fit!r}; valid choices: {list(FITS)}')
  extra_keys, image_keys = check_extra_keys(builder, extra_keys)
  if image_keys:
    raise ValueError(f'make_train_iterator: extra_keys {sorted(image_keys)} are image features (masks), which '
                     f'training batches carry only as their foreground mask (foreground=...); use '
                     f'load_split_arrays(extra_keys=...) for them')
  dtypes = {k: np.dtype(builder.info.features[k].np_dtype) for k in extra_keys}
  dtypes = {k: d for k, d in dtypes.items() if d.kind in 'biuf'}  # Numeric; text stays as stored.
  if foreground is not None:
    check_foreground(builder, foreground)
  if text is not None:
    if text[0] not in builder.info.features or not isinstance(builder.info.features[text[0]], tfds.features.Text):
      raise ValueError(f'make_train_iterator: text feature {text[0]!r} is not a Text feature of dataset '
                       f'{builder.name!r}; its features are {sorted(builder.info.features.keys())}')
  source = _data_source(builder, split, indices)
  # Decode keyed by the record's index in the split, before sharding, so errors can name it.
  ds = grain.MapDataset.source(source).map_with_index(
      _Decode(split, image_size, image_channels(builder), fit, indices, extra_keys, dtypes, num_records=len(source),
              text=text, foreground=foreground))
  ds = ds.shuffle(seed=seed).repeat(num_epochs)
  if num_epochs is not None and len(ds) < global_batch_size:
    raise ValueError(f'{len(ds)} records of split {split!r} over {num_epochs} epochs do not fill one global '
                     f'batch of {global_batch_size}.')
  ds = ds.batch(batch_size, drop_remainder=True)
  if process_count > 1:
    # One global shuffle on every process; process i takes rows [i*b, (i+1)*b) of each global batch (local
    # batches i, i+P, ...), so the global batches, and hence the losses, do not depend on the process count.
    ds = ds[:len(ds) // process_count * process_count][process_index::process_count]
  # Modest buffers: each element is a whole batch, and grain's default (500) would hold GBs.
  it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads,
                                               prefetch_buffer_size=prefetch_batches))
  if worker_count > 0:
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
  return iter(it_ds)


def iterator_state_to_json(state: Any) -> Any:
  """Returns a JSON-serialisable copy of a grain iterator state.

  grain states are already plain dicts of ints/lists in this pipeline (grain's own orbax handler
  `grain.checkpoint.CheckpointSave` just `json.dumps` them), but some nested dicts (interleave
  `future_states` under `mp_prefetch`) use int keys, which JSON would turn into strings; bytes and
  numpy scalars are converted too, for robustness.
  """
  if isinstance(state, bytes):
    return {'__bytes__': state.decode('latin-1')}
  if isinstance(state, dict):
    return {str(k): iterator_state_to_json(v) for k, v in state.items()}
  if isinstance(state, (list, tuple)):
    return [iterator_state_to_json(v) for v in state]
  if isinstance(state, np.generic):
    return state.item()
  return state


def iterator_state_from_json(obj: Any) -> Any:
  """Inverse of `iterator_state_to_json`; also accepts the JSON text itself."""
  if isinstance(obj, (str, bytes)):
    obj = json.loads(obj)
  return _state_from_json(obj)


def _state_from_json(obj: Any) -> Any:
  if isinstance(obj, dict):
    if set(obj) == {'__bytes__'}:
      return obj['__bytes__'].encode('latin-1')
    # grain state keys are identifiers, so all-digit keys were int keys before JSON.
    return {(int(k) if k.isdigit() else k): _state_from_json(v) for k, v in obj.items()}
  if isinstance(obj, list):
    return [_state_from_json(v) for v in obj]
  return obj


def _decoded_rows(builder: Builder, *, split: str, chunk_size: int, image_size: int | None, fit: str, indices,
                  extra_keys=()) -> Iterator[list[dict[str, np.ndarray]]]:
  """The split's records (or `indices`), in order, decoded, in lists of at most `chunk_size` rows."""
  if fit not in FITS:
    raise ValueError(f'fit={fit!r}; valid choices: {list(FITS)}')
  extra_keys, image_keys = check_extra_keys(builder, extra_keys)
  source = _data_source(builder, split, indices)
  channels = image_channels(builder)
  n = len(source)
  names = list(range(n)) if indices is None else [int(i) for i in indices]
  for start in range(0, n, chunk_size):
    records = source.__getitems__(list(range(start, min(start + chunk_size, n))))
    yield [_decode_record(r, names[start + i], split, image_size, channels, fit, extra_keys, image_keys)
           for i, r in enumerate(records)]


def iterate_eval(builder: Builder | str, *, split: str, batch_size: int, image_size: int | None = None,
                 fit: str = 'squash', indices=None) -> Iterator[dict[str, np.ndarray]]:
  """Yields the whole split (or its records `indices`) once, in order, in fixed-size batches.

  Each batch is dict(image uint8 [batch_size, H, W, C] (volumes [batch_size, D, H, W, C]), label int32, id int32,
  mask bool); the last batch is zero-padded to `batch_size` and `mask` is False on padded rows.
  """
  builder = _as_builder(builder)
  if batch_size <= 0:
    raise ValueError(f'batch_size must be positive, got {batch_size}.')
  for rows in _decoded_rows(builder, split=split, chunk_size=batch_size, image_size=image_size, fit=fit,
                            indices=indices):
    batch = {k: np.stack([row[k] for row in rows]) for k in ('image', 'label', 'id')}
    pad = batch_size - len(rows)
    if pad:
      batch = {k: np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)]) for k, v in batch.items()}
    batch['mask'] = np.arange(batch_size) < len(rows)
    yield batch


def load_split_arrays(builder: Builder | str, *, split: str, image_size: int | None = None,
                      fit: str = 'squash', indices=None, extra_keys=()) -> dict[str, np.ndarray]:
  """Returns the split (or its records `indices`, in that order) as numpy arrays
  dict(image uint8 [N,H,W,C], label int32 [N] (or [N, K]), id int32 [N]), plus one array per feature
  named in `extra_keys`. Volumes come as uint8 [N, D, H, W, C], resized to image_size³ when `image_size` is set.

  Extra image features (masks and label maps such as HRF's 'mask' / 'fov_mask' or CHASE_DB1's 'mask')
  come as uint8 [N, H, W, C] with the image's geometry: squared by the same `fit` and resized to the same
  `image_size`, but with nearest neighbour, so they stay aligned with the image and keep their values.
  Other features come as stored (e.g. 'eye' int64 [N], 'patient_id' bytes [N]). A key the dataset lacks
  raises a KeyError listing its features.
  """
  builder = _as_builder(builder)
  keys = ('image', 'label', 'id') + tuple(extra_keys)
  parts = {k: [] for k in keys}
  for rows in _decoded_rows(builder, split=split, chunk_size=256, image_size=image_size, fit=fit, indices=indices,
                            extra_keys=extra_keys):
    for k in keys:
      parts[k].append(np.stack([row[k] for row in rows]))
  return {k: np.concatenate(v) for k, v in parts.items()}
