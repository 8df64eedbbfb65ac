"""Out-of-distribution targets of a run (section `ood`): config.ood.targets loaded at the source's image size and
scored by a source classifier with the label maps of medssl_jax/evals/ood.py.

`targets`: a tuple of dicts: name, builder, label_map {target class: (source classes,)}, optional builder_config,
data_dir, manual_dir, split ("test"). Empty: no OOD evaluation.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Sequence

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
  validate_targets(config.ood.targets)


config_lib.register_section("ood", ood_section)


TARGET_KEYS = ("name",) + pipeline.REF_KEYS + ("split", "label_map")
REQUIRED_KEYS = ("name", "builder", "label_map")
_DEFAULTS = dict(builder_config="", data_dir="", manual_dir="", split="test")


def where_of(i, target) -> str:
  name = target.get("name") if isinstance(target, Mapping) else None
  return f"config.ood.targets[{i}]" + (f" ({name!r})" if isinstance(name, str) and name else "")


def _class_tuple(value, where: str) -> tuple[str, ...]:
  """The source classes of one label-map entry: a non-empty tuple/list of names (a single name allowed)."""
  if isinstance(value, str):
    value = (value,)
  if not isinstance(value, (tuple, list)) or not value:
    raise ValueError(f"{where} must be a non-empty tuple of source class names, got {value!r}")
  for v in value:
    if not isinstance(v, str) or not v:
      raise ValueError(f"{where} must hold class names (non-empty strings), got {v!r} in {tuple(value)!r}")
  return tuple(value)


def normalize_target(target, *, index: int = 0) -> dict:
  """One target spec checked (keys, types, builder name, label-map shape) and completed with defaults.

  Returns a plain dict with every key of TARGET_KEYS; label_map becomes {target class: tuple of source
  classes}. Raises ValueError naming the target and the key. Class names are checked against the
  datasets at run time (`ood_lib.resolve_label_map`).
  """
  if not isinstance(target, Mapping):
    raise ValueError(f"config.ood.targets[{index}] must be a dict with keys {list(TARGET_KEYS)}, got {target!r}")
  where = where_of(index, target)
  for key in target.keys():
    if key not in TARGET_KEYS:
      raise ValueError(f"Unknown key {key!r} in {where}; valid keys: {list(TARGET_KEYS)}")
  for key in REQUIRED_KEYS:
    if key not in target:
      raise ValueError(f"{where} needs {key!r} (a target names itself, its builder and a label_map)")
  spec = dict(_DEFAULTS, **{k: target[k] for k in target.keys()})
  for key in ("name", "builder", "builder_config", "data_dir", "manual_dir", "split"):
    if not isinstance(spec[key], str):
      raise ValueError(f"{where}.{key} must be a string, got {spec[key]!r}")
  for key in ("name", "builder", "split"):
    if not spec[key]:
      raise ValueError(f"{where}.{key} must be non-empty")
  pipeline.check_ref(spec, where)
  label_map = spec["label_map"]
  if not isinstance(label_map, Mapping):
    raise ValueError(f"{where}.label_map must be a dict {{target class: (source classes, ...)}}, got {label_map!r}")
  if len(label_map) < 2:
    raise ValueError(f"{where}.label_map maps {len(label_map)} target class(es) ({list(label_map)}); AUROC needs "
                     "at least 2, e.g. {'normal': ('normal',), 'abnormal': ('pneumonia',)}")
  grouped, seen = {}, {}
  for t, sources in label_map.items():
    if not isinstance(t, str) or not t:
      raise ValueError(f"{where}.label_map keys must be target class names (strings), got {t!r}")
    grouped[t] = _class_tuple(sources, f"{where}.label_map[{t!r}]")
    for s in grouped[t]:
      if s in seen:  # Its probability would count twice.
        raise ValueError(f"{where}.label_map maps source class {s!r} to both {seen[s]!r} and {t!r}; "
                         "each source class may feed one target class only")
      seen[s] = t
  spec["label_map"] = grouped
  return spec


def validate_targets(targets) -> list[dict]:
  """Checks config.ood.targets (a tuple of dicts; see normalize_target) and that names are unique.

  Returns the normalised specs (a list of dicts).
  """
  if targets is None:
    return []
  if isinstance(targets, (str, bytes)) or not isinstance(targets, (tuple, list)):
    raise ValueError(f"config.ood.targets must be a tuple of dicts (one per target dataset), got {targets!r}")
  specs = [normalize_target(t, index=i) for i, t in enumerate(targets)]
  names = [s["name"] for s in specs]
  dup = sorted({n for n in names if names.count(n) > 1})
  if dup:
    raise ValueError(f"config.ood.targets names must be unique (they key the results); repeated: {dup}")
  return specs


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


def describe_target(config, target) -> str:
  """'medmnist/pneumoniamnist → nih_chestxray14/subset1000_patient_split (test)': source → target (split)."""
  spec = normalize_target(target)  # Idempotent: fills the default split of a raw config entry.
  dataset = pipeline.ref_name(spec)
  return f"{pipeline.ref_name(config.data)} → {dataset} ({spec['split']})"


def load_targets(config) -> list[LoadedTarget]:
  """Loads every config.ood.targets split at the source's data.image_size / data.fit.

  The builders are prepared if needed (data_dir "" = the source's data.data_dir; manual_dir "" = the
  builder's default). Raises ValueError when a target's image channels differ from data.channels, its
  split is unknown, or it has no class names (ClassLabel names, or a multi-label builder's LABEL_NAMES).
  """
  d = config.data
  loaded = []
  for i, spec in enumerate(validate_targets(config.ood.targets)):
    where = where_of(i, spec)
    builder = pipeline.open_dataset(spec, default_data_dir=d.data_dir)
    dataset = spec["builder"] + (f"/{builder.builder_config.name}" if builder.builder_config else "")
    channels = pipeline.image_channels(builder)
    if channels != d.channels:
      raise ValueError(f"{where}: {dataset} has {channels}-channel images but the source classifier "
                       f"({pipeline.ref_name(config.data)}) takes config.data.channels={d.channels}; OOD targets must "
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
    where = where_of(i, t.spec)
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
              source_classes=source_classes, where=f"{where_of(i, t.spec)}")
    out[t.spec["name"]] = dict(m, target=describe_target(config, t.spec), dataset=t.dataset,
                               split=t.spec["split"], protocol=ood_lib.PROTOCOL_MULTI_LABEL if t.multi_label else ood_lib.PROTOCOL)
  return out
