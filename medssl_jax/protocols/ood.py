"""Out-of-distribution targets of a run (section `ood`): config.ood.targets loaded at the source's image size and
scored by a source classifier with the label maps of medssl_jax/evals/ood.py.

`targets`: a tuple of dicts: name, builder, label_map {target class: (source classes,)}, optional builder_config,
data_dir, manual_dir, split ("test"). Empty: no OOD evaluation.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import ml_collections
import numpy as np

from medssl_jax import config as config_lib
from medssl_jax.data import pipeline
from medssl_jax.evals import ood as ood_lib


def ood_section() -> ml_collections.ConfigDict:
  """The `ood` section: config.ood.targets (module docstring)."""
  c = ml_collections.ConfigDict()
  c.targets = ()
  return c


def check(config):
  """Target keys, builder names and label-map shape (class names are checked against the datasets at run time,
  by `evaluate_targets`)."""
  ood_lib.validate_targets(config.ood.targets, builders=pipeline.BUILDERS)


config_lib.register_section("ood", ood_section)


@dataclasses.dataclass
class LoadedTarget:
  """One target's spec, its dataset name ('builder/config'), class names and the loaded split (labels [N]
  class indices, or [N, K] 0/1/-1 when multi_label)."""
  spec: dict
  dataset: str
  classes: list
  images: np.ndarray
  labels: np.ndarray
  multi_label: bool = False


def _source_name(config) -> str:
  d = config.data
  return d.builder + (f"/{d.builder_config}" if d.builder_config else "")


def describe_target(config, target) -> str:
  """'medmnist/pneumoniamnist → nih_chestxray14/subset1000_patient_split (test)': source → target (split)."""
  spec = ood_lib.normalize_target(target)  # Idempotent: fills the default split of a raw config entry.
  dataset = spec["builder"] + (f"/{spec['builder_config']}" if spec["builder_config"] else "")
  return f"{_source_name(config)} → {dataset} ({spec['split']})"


def load_targets(config) -> list[LoadedTarget]:
  """Loads every config.ood.targets split at the source's data.image_size / data.fit.

  The builders are prepared if needed (data_dir "" = the source's data.data_dir; manual_dir "" = the
  builder's default). Raises ValueError when a target's image channels differ from data.channels, its
  split is unknown, or it has no class names (ClassLabel names, or a multi-label builder's LABEL_NAMES).
  """
  d = config.data
  loaded = []
  for i, spec in enumerate(ood_lib.validate_targets(config.ood.targets, builders=pipeline.BUILDERS)):
    where = ood_lib.where_of(i, spec)
    builder = pipeline.get_builder(spec["builder"], data_dir=spec["data_dir"] or d.data_dir or None,
                                   config=spec["builder_config"] or None, manual_dir=spec["manual_dir"] or None)
    dataset = spec["builder"] + (f"/{builder.builder_config.name}" if builder.builder_config else "")
    channels = pipeline.image_channels(builder)
    if channels != d.channels:
      raise ValueError(f"{where}: {dataset} has {channels}-channel images but the source classifier "
                       f"({_source_name(config)}) takes config.data.channels={d.channels}; OOD targets must "
                       "share the source's channels (choose a target of the same modality)")
    classes = pipeline.label_names(builder)
    if not classes:
      raise ValueError(f"{where}: {dataset} has no class names (label feature "
                       f"{builder.info.features.get('label', None)!r}); OOD label maps need a ClassLabel target "
                       "or a multi-label builder with LABEL_NAMES")
    # Class names are checked before any image is decoded; source names are checked in evaluate_targets.
    for t in spec["label_map"]:
      if t not in classes:
        raise ValueError(f"{where}.label_map: target class {t!r} is not a class of {dataset}; its classes: {classes}")
    try:
      pipeline.num_examples(builder, spec["split"])
    except ValueError as e:
      raise ValueError(f"{where}: {e}") from None
    arrays = pipeline.load_split_arrays(builder, split=spec["split"], image_size=d.image_size, fit=d.fit)
    loaded.append(LoadedTarget(spec=spec, dataset=dataset, classes=classes, images=arrays["image"],
                               labels=np.asarray(arrays["label"]), multi_label=pipeline.is_multi_label(builder)))
  return loaded


def check_label_maps(loaded: Sequence[LoadedTarget], *, source_classes: Sequence[str],
                     source_multi_label: bool = False) -> None:
  """Checks every loaded target against the source before any training or prediction: both single-label
  or both multi-label (mixing is not supported), and every label-map name a class of its dataset."""
  for i, t in enumerate(loaded):
    where = ood_lib.where_of(i, t.spec)
    if t.multi_label != bool(source_multi_label):
      kind = lambda multi: "multi-label ([N, K] 0/1 labels, sigmoid scores)" if multi else \
          "single-label (one class per image, softmax scores)"
      raise ValueError(f"{where}: the source classifier is {kind(source_multi_label)} but {t.dataset} is "
                       f"{kind(t.multi_label)}; mixing single-label and multi-label datasets in OOD evaluation "
                       "is not supported (choose a target of the same kind)")
    ood_lib.resolve_label_map(t.spec["label_map"], target_classes=t.classes, source_classes=source_classes,
                      where=f"{where}.label_map")


def evaluate_targets(config, *, predict: Callable[[np.ndarray], np.ndarray], source_classes: Sequence[str],
                     loaded: Sequence[LoadedTarget] | None = None, source_multi_label: bool = False) -> dict:
  """Scores a source classifier on every config.ood.targets split; returns {target name: metrics}.

  Args:
    config: the source run's config (data.image_size / fit / channels / data_dir; ood.targets).
    predict: uint8 images [N, H, W, C] -> class probabilities [N, len(source_classes)] of the source
      classifier (e.g. softmax of a linear probe on the encoder's features).
    source_classes: the source dataset's class names, in label order (pipeline.label_names(builder)).
    loaded: `load_targets(config)` when several encoders are scored on the same targets (loads once).
    source_multi_label: the source has [N, K] multi-label labels and predict returns per-class sigmoid
      probabilities [N, K]; its targets must be multi-label too (`ood_lib.score_multilabel`).

  Metrics per target: see `ood_lib.score_grouped` (`ood_lib.score_multilabel` when multi-label), plus "target"
  (describe_target), "dataset", "split" and "protocol". Every label map is checked against both
  datasets' class names (and kinds, `check_label_maps`) before any prediction.
  """
  loaded = load_targets(config) if loaded is None else loaded
  source_classes = list(source_classes)
  # All maps first: a typo fails before any (slow) prediction.
  check_label_maps(loaded, source_classes=source_classes, source_multi_label=source_multi_label)
  out = {}
  for i, t in enumerate(loaded):
    probs = np.asarray(predict(t.images))
    score = ood_lib.score_multilabel if t.multi_label else ood_lib.score_grouped
    m = score(t.labels, probs, label_map=t.spec["label_map"], target_classes=t.classes,
              source_classes=source_classes, where=f"{ood_lib.where_of(i, t.spec)}")
    out[t.spec["name"]] = dict(m, target=describe_target(config, t.spec), dataset=t.dataset,
                               split=t.spec["split"], protocol=ood_lib.PROTOCOL_MULTI_LABEL if t.multi_label else ood_lib.PROTOCOL)
  return out
