"""What the dry run (medssl_jax/dry_run.py) measures, in a room below the modes and projects that contribute to it:
a `Part` is one compiled step of a run, built at a given per-device batch on stand-in data. A mode or project
module lists its own steps with `dry_run_parts(config) -> [Part]` (medssl_jax/experiment.py collects them), so the
dry run needs no knowledge of any project.
"""
from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from typing import Callable

import jax
import numpy as np

from medssl_jax.data import pipeline
from medssl_jax.train import mesh as mesh_lib


@dataclasses.dataclass
class Part:
  """One compiled step of a run: `make(per-device batch)` returns (parameter count, the lowered step,
  run(compiled, steps) -> seconds per step on stand-in data)."""
  name: str            # "pretrain", "features", "finetune", "segmentation", ...
  describe: str        # What it is, in words (objective, encoder, image size, views).
  global_batch: int    # The config's global batch for this step.
  key: str             # Identity: parts with one key compile the same program.
  make: Callable[[int], tuple]


def one_device_mesh():
  """The per-device program's mesh: parameters replicated, the batch this device's share."""
  return mesh_lib.make_mesh(jax.devices()[:1])


def timed(steps: int, call) -> list[float]:
  """Wall-clock seconds of each of `steps` calls of `call` (its outputs waited for)."""
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    jax.block_until_ready(call())
    times.append(time.perf_counter() - t0)
  return times


def sections_key(name: str, config, *keys: str) -> str:
  """`name` + the values of the dotted `keys` (sections or leaves) that decide a step's program."""
  values = {}
  for dotted in keys:
    value = config
    for part in dotted.split("."):
      value = value[part]
    values[dotted] = value.to_dict() if hasattr(value, "to_dict") else value
  return name + json.dumps(values, sort_keys=True, default=str)


def dataset_info(ref) -> dict:
  """Shapes of the dataset a ref section names (config.data, config.swcl.labelled: builder, builder_config) from its
  builder's feature spec, nothing downloaded or built: {"name", "num_classes", "multi_label", "channels",
  "features": {key: (shape, dtype)}}."""
  with tempfile.TemporaryDirectory() as tmp:  # An empty data dir: the builder is only described, never prepared.
    try:
      builder = pipeline.get_builder(ref.builder, data_dir=tmp, config=ref.builder_config or None, prepare=False)
    except (OSError, ValueError):
      cls = pipeline.builder_class(ref.builder)
      if not hasattr(cls, "stand_in"):
        raise
      # A dataset made from a run's own files (SWCL's patches): its builder's stand-in spec.
      builder = cls.stand_in(config=ref.builder_config, data_dir=tmp)
    features = {k: (tuple(getattr(v, "shape", ()) or ()), np.dtype(getattr(v, "np_dtype", np.float32)))
                for k, v in builder.info.features.items() if getattr(v, "np_dtype", None) is not None}
    try:
      num_classes = pipeline.num_classes(builder)
    except (ValueError, KeyError):  # No image labels (e.g. SWCL's patches): the probes' heads get two.
      num_classes = 2
    multi = "label" in builder.info.features and pipeline.is_multi_label(builder)
    return dict(name=pipeline.dataset_name(builder), num_classes=max(2, num_classes), multi_label=multi,
                channels=pipeline.image_channels(builder), features=features)


def stand_in_labels(info: dict, batch: int, rng) -> np.ndarray:
  """Random labels of a dataset described by `dataset_info`: class ids [batch], or 0/1 [batch, K] (multi-label)."""
  k = info["num_classes"]
  return (rng.integers(0, 2, (batch, k)).astype(np.int32) if info["multi_label"]
          else rng.integers(0, k, batch).astype(np.int32))


__all__ = ["Part", "dataset_info", "one_device_mesh", "sections_key", "stand_in_labels", "timed"]
