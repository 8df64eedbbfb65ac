"""A TensorFlow-free stand-in for `tfds.testing.DatasetBuilderTestCase`, used by every builder test.

TFDS's own test case reads datasets back with `as_dataset` (TensorFlow), which this project does
not install. These helpers make the same checks through `tfds.data_source`: the builder is
registered under its name, builds from dummy data in the official layout, has the expected split
sizes, and every record decodes to what its features promise. They also check the failure paths:
a bad layout raises the expected error and leaves no half-written dataset behind.
"""
from __future__ import annotations

import pathlib

import numpy as np
import pytest

from medssl_jax.data import pipeline


def build(name: str, config: str | None, manual_dir, data_dir):
  """Builds dataset `name` (a key of pipeline.BUILDERS) from `manual_dir` into `data_dir`."""
  return pipeline.get_builder(name, config=config, data_dir=str(data_dir), manual_dir=str(manual_dir))


def _images(features):
  import tensorflow_datasets as tfds
  return {k: f for k, f in features.items() if isinstance(f, tfds.features.Image)}


def check_dataset(builder, *, splits: dict[str, int], label_counts: dict[str, list[int]] | None = None,
                  mask_values: set[int] | None = None, read_limit: int | None = None) -> dict[str, list[dict]]:
  """Asserts split sizes and that every record decodes consistently; returns the records by split.

  Args:
    builder: a prepared builder.
    splits: split name -> expected number of examples (exactly these splits must exist).
    label_counts: split name -> expected per-class counts of a ClassLabel `label` (optional).
    mask_values: allowed values of every 1-channel `mask*` image (default {0, 1}).
    read_limit: read at most this many records per split (all by default).
  """
  import tensorflow_datasets as tfds
  cls = type(builder)
  assert cls.MANUAL_DOWNLOAD_INSTRUCTIONS is None or len(cls.MANUAL_DOWNLOAD_INSTRUCTIONS.strip()) > 100, (
      'MANUAL_DOWNLOAD_INSTRUCTIONS must say where to get the data, its licence and the layout')
  assert cls.__doc__, 'builders need a docstring'
  got = {s: builder.info.splits[s].num_examples for s in builder.info.splits.keys()}
  assert got == splits, f'split sizes {got} != expected {splits}'
  features = builder.info.features
  assert 'image' in features and 'id' in features, 'every builder has image and id features'
  images = _images(features)
  allowed = mask_values if mask_values is not None else {0, 1}
  out, patients = {}, {}
  for split, n in splits.items():
    source = builder.as_data_source(split=split)
    records = [source[i] for i in range(n if read_limit is None else min(n, read_limit))]
    for i, r in enumerate(records):
      assert int(r['id']) == i, f'{split}[{i}]: id {r["id"]} should be the index in the split'
      hw = None
      for key, feat in images.items():
        a = r[key]
        assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[-1] == feat.shape[-1], (key, a.shape, feat.shape)
        if key.startswith('mask'):
          assert set(np.unique(a).tolist()) <= allowed, f'{split}[{i}] {key} values {np.unique(a)}'
        hw = hw or a.shape[:2]
        assert a.shape[:2] == hw, f'{split}[{i}]: {key} is {a.shape[:2]}, image is {hw}'
      if 'label' in features and isinstance(features['label'], tfds.features.ClassLabel):
        assert 0 <= int(r['label']) < features['label'].num_classes
    if 'patient_id' in features:
      patients[split] = {r['patient_id'] for r in records if r['patient_id']}
    if label_counts and split in label_counts:
      counts = np.bincount([int(r['label']) for r in records], minlength=len(label_counts[split])).tolist()
      assert counts == label_counts[split], f'{split}: label counts {counts} != {label_counts[split]}'
    out[split] = records
  names = list(patients)
  for a in range(len(names)):
    for b in range(a + 1, len(names)):
      shared = patients[names[a]] & patients[names[b]]
      assert not shared, f'patients in both {names[a]} and {names[b]}: {sorted(shared)[:5]}'
  return out


def check_fails(name: str, config: str | None, manual_dir, data_dir, *, error=Exception, match: str):
  """Building from a bad `manual_dir` raises `error` matching `match` and leaves nothing prepared."""
  data_dir = pathlib.Path(data_dir)
  with pytest.raises(error, match=match):
    build(name, config, manual_dir, data_dir)
  leftovers = [p for p in data_dir.rglob('*') if p.name == 'dataset_info.json' or 'incomplete' in p.name]
  assert not leftovers, f'a failed build left {leftovers}'


def corrupt(path) -> None:
  """Truncates an image file to half its bytes (a broken download)."""
  path = pathlib.Path(path)
  data = path.read_bytes()
  path.write_bytes(data[: max(1, len(data) // 2)])


def shared_dir(name: str) -> pathlib.Path:
  """The shared real dataset folder, or a pytest skip that says why it is absent."""
  from medssl_jax.data import shared
  try:
    return shared.dataset_dir(name)
  except FileNotFoundError as e:
    pytest.skip(f'real data absent: {e}')
