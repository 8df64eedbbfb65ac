"""Runs a table config: a grid of experiment rows, cached per row, into Markdown / CSV / PNG tables.

Command: python -m medssl_jax.tables.runner --table=configs/table_fundus_quick.py --workdir=/tmp/t
         (`--table.<experiment key>=value`, e.g. `--table.train.num_steps=100`, overrides every row;
         `--grid=seed=0` runs one seed; `--only=vesselmnist3d` the rows of the base configs naming it;
         `--report_only` runs nothing and writes the tables from the finished rows, e.g. after copying
         rows/<row> folders in from several machines.)

A table config file defines `get_table(arg=None)` returning a ConfigDict with (checked by `validate_table`):
  name         file names of the outputs: <workdir>/<name>.md, .csv, .png ([A-Za-z0-9._-]).
  base_config  'path[:variant]' of an experiment config, e.g. 'configs/fundus_simclr.py:quick'; a tuple of
               them is an axis of its own (one recipe per objective, each with its own settings).
  grid         the axes: nested like the experiment config, each leaf a non-empty tuple of values, e.g.
               grid.objective.name = ('simclr', 'byol'); grid.eval.train_subset = ('10%', ''); grid.seed = (0, 1).
               Every combination is a row: base config + those overrides, validated by medssl_jax.config.
  overrides    (optional) values set in every row, nested the same way (e.g. overrides.train.num_steps = 4).
  published_from (optional) a registry of medssl_jax/tables/published.py whose rows for the datasets the rows
               open are added to `published` (and "{dataset}" in name / description becomes those datasets).
  published    (optional) tuple of dicts shown beside ours, marked published: dataset, method, source,
               accuracy and/or auroc (fractions), optional protocol, labels, note.
  description  (optional) one line under the title.
  subset_seed_from_seed  (optional, default False) each row's eval.subset_seed is its seed, so seeds vary
               the labelled subset too (the usual low-label protocol); eval.subset_seed may not be an axis then.
It also defines `get_config(arg=None)` returning the (first) base experiment config, so that every file in
configs/ stays a runnable, validated experiment config (main.py runs the base row; tests/test_config.py).

Workdir layout (everything is keyed by hashes of the resolved configs, so reruns find their work):
  pretrain/<slug>-<hash>/  one experiment workdir per distinct pretraining (the config minus keys that
                           do not change the weights: eval.*, mode, logging/checkpoint cadence, data
                           paths; checkpoint.RESUMABLE_KEYS). Rows that differ only in eval keys share
                           it; an interrupted pretraining resumes from its checkpoints.
  rows/<slug>-<hash>/      one row: result.json (metrics, config, timings, code and package versions)
                           and the experiment's own results table (<experiment.results_name>.{json,md}). A row whose result.json exists is reported as cached.
  finetune_cache/<hash>.json  the supervised-from-scratch baseline's results by fine-tuning settings and starting
                           weights (protocols/probe.py: finetune_cache_path): the arms of a table (SimCLR, BYOL, an
                           inflated encoder) train their shared baseline once.
  <name>.md / .csv / .png  the tables and the AUROC plot (vs labelled fraction, or per seed), rewritten on every run.
"""
from __future__ import annotations

import datetime
import hashlib
import itertools
import json
import math
import os
import re
import statistics
import time
from typing import Any, Mapping

from absl import app
from absl import flags
from absl import logging
import jax
import ml_collections
from ml_collections import config_flags

from medssl_jax import config as config_lib
from medssl_jax import errors
from medssl_jax import experiment
from medssl_jax import paths
from medssl_jax.augment import views as views_lib
from medssl_jax.data import pipeline
from medssl_jax.data import subsets
from medssl_jax.evals import metrics as metrics_lib
from medssl_jax.evals import results as results_lib
from medssl_jax.protocols import encoders as encoders_lib
from medssl_jax.protocols import probe
from medssl_jax.tables import records as records_lib
from medssl_jax.tables import ood_matrix
from medssl_jax.tables import published as published_lib
from medssl_jax.train import checkpoint as ckpt_lib
from medssl_jax.train import guard
from medssl_jax.train import provenance
from medssl_jax.train import reporting
from medssl_jax.train import workdir_lock

TABLE_KEYS = ("name", "base_config", "grid", "overrides", "published", "description", "subset_seed_from_seed",
              "published_from")
PUBLISHED_KEYS = ("dataset", "method", "source", "accuracy", "auroc", "protocol", "labels", "note")
# Keys the runner sets itself (mode), or that say where data lives or how often to log: they never
# change a result, so they stay out of the row and pretraining hashes.
RUNNER_KEYS = ("mode",)
NON_RESULT_KEYS = ("mode", "train.log_every", "train.checkpoint_every", "train.keep_checkpoints", "train.allow_device_change",
                   "data.worker_count", "data.data_dir", "data.manual_dir", "eval.finetune_cache_dir")
FINETUNE_CACHE = "finetune_cache"  # <workdir>/finetune_cache: fine-tunings the rows share (protocols/probe.py).
SEED_AXES = records_lib.SEED_AXES
PACKAGES = ("jax", "flax", "optax", "numpy")
RESULT_FILE = "result.json"
CSV_COLUMNS = ("source", "table", "row", "dataset", "objective", "encoder", "protocol", "label_subset",
               "subset_seed", "n_labelled", "seed", "accuracy", "auroc", "auroc_ci_low", "auroc_ci_high", "eval_wall_clock_s",
               "pretrain_wall_clock_s", "code_version", *PACKAGES, "status", "overrides", "row_dir",
               "pretrain_dir")


# ---------------------------------------------------------------------------------------------------
# Table config: loading and validation.

def load_table(spec: str) -> ml_collections.ConfigDict:
  """`get_table(arg)` of a table config 'path-or-name[:arg]' (a path, or the name of a shipped config)."""
  module, arg = config_lib.load_module(spec)
  if not hasattr(module, "get_table"):
    raise ValueError(f"{module.__file__} has no get_table(); a table config defines get_table(arg=None) returning the "
                     "table (see medssl_jax/tables/runner.py) and get_config(arg=None) returning its base config")
  return module.get_table(arg or None)


def set_axes(table, specs) -> ml_collections.ConfigDict:
  """`table` with grid axes set from the command line: each spec 'key=v1,v2,...' (`--grid`, repeatable) replaces
  the axis `key` (a dotted experiment key), or adds it. Values read as JSON where they parse (0, 1e-3, true), else
  as text; an empty value is "" (e.g. `--grid=eval.train_subset=10%,` runs 10% and all labels)."""
  for spec in specs:
    key, sep, values = str(spec).partition("=")
    if not sep or not key:
      raise ValueError(f"--grid={spec!r}: expected <key>=<value>[,<value>...], e.g. --grid=seed=0,1,2")
    parsed = tuple(_parse_value(v) for v in values.split(","))
    section = table.grid
    *parents, leaf = key.split(".")
    for name in parents:
      if name not in section:
        section[name] = ml_collections.ConfigDict()
      section = section[name]
    section[leaf] = parsed
  return table


def base_configs(table) -> tuple[str, ...]:
  """The table's base configs, one or a tuple of them, as a tuple."""
  return (table.base_config,) if isinstance(table.base_config, str) else tuple(table.base_config)


def _train_subset(config) -> str:
  """A row's label subset as records name it: the spec, "file" for a subset file, "" for all labels."""
  return config.eval.train_subset or ("file" if config.eval.subset_file else "")


def keep_bases(table, texts) -> ml_collections.ConfigDict:
  """`table` with only the base configs that contain one of `texts` (`--only`, repeatable), e.g. 'vesselmnist3d' or
  'volume_byol': one dataset or arm of a table on a machine of its own. Rows keep their identity (hashes)."""
  if not texts:
    return table
  bases = base_configs(table)
  kept = tuple(b for b in bases if any(t in b for t in texts))
  if not kept:
    raise ValueError(f"--only={','.join(texts)} matches none of the table's base configs ({', '.join(bases)}): "
                     "give part of one of them, e.g. a dataset or an objective")
  with table.unlocked():
    table.base_config = kept
  return table


def _parse_value(text: str):
  try:
    return json.loads(text)
  except ValueError:
    return text


def base_config(table) -> ml_collections.ConfigDict:
  """The (first) base experiment config of a table: what a table config's `get_config` returns."""
  return config_lib.table_base_config(table)


def _load_config(spec: str) -> ml_collections.ConfigDict:
  return config_lib.load(spec)


def _is_section(value) -> bool:
  return isinstance(value, (ml_collections.ConfigDict, Mapping))


def _leaves(section, prefix="") -> dict[str, Any]:
  """{dotted key: value} of a nested ConfigDict / dict (tables write axes nested, like the config)."""
  out = {}
  for key in section.keys():
    value = section[key]
    if _is_section(value):
      out.update(_leaves(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def _check_key(config, dotted: str, where: str):
  """Raises a ValueError naming `dotted` (and the valid keys) unless it is a value key of `config`."""
  config_lib.check_renamed(dotted, where)
  section, path = config, ""
  parts = dotted.split(".")
  for i, part in enumerate(parts):
    if not _is_section(section) or part not in section:
      valid = sorted(section.keys()) if _is_section(section) else []
      raise ValueError(f"{where}: unknown config key {dotted!r} ({part!r} is not in "
                       f"{path.rstrip('.') or 'config'}; valid keys there: {valid})")
    section, path = section[part], f"{path}{part}."
    if i < len(parts) - 1 and not _is_section(section):
      raise ValueError(f"{where}: unknown config key {dotted!r} ({path.rstrip('.')} is a value, not a section)")
  if _is_section(section):
    raise ValueError(f"{where}: {dotted!r} is a config section; name a key inside it: {sorted(section.keys())}")
  if dotted in RUNNER_KEYS:
    raise ValueError(f"{where}: {dotted!r} is set by the table runner (pretrain, then linear_eval per row)")


def validate_table(table) -> ml_collections.ConfigDict:
  """Checks a table config's keys, grid and published rows; raises a ValueError naming what is wrong."""
  for key in table.keys():
    if key not in TABLE_KEYS:
      raise ValueError(f"Unknown table key {key!r}; valid keys: {list(TABLE_KEYS)}")
  for key in ("name", "base_config", "grid"):
    if key not in table:
      raise ValueError(f"table.{key} is required (table keys: {list(TABLE_KEYS)})")
  if not isinstance(table.name, str) or not re.fullmatch(r"[A-Za-z0-9._-]+", table.name.replace("{dataset}", "d")):
    raise ValueError(f"table.name={table.name!r} must be a non-empty file name of letters, digits, '.', '_', '-' "
                     "(and {dataset}, the datasets its rows open)")
  bases = table.base_config
  bases = (bases,) if isinstance(bases, str) else bases
  if not isinstance(bases, (tuple, list)) or not bases or not all(isinstance(b, str) for b in bases):
    raise ValueError(f"table.base_config must be 'path[:variant]' or a non-empty tuple of them, got {bases!r}")
  base = _load_config(bases[0])
  if not _is_section(table.grid) or not _leaves(table.grid):
    raise ValueError("table.grid is empty; give at least one axis, e.g. grid.seed = (0, 1)")
  for key, values in _leaves(table.grid).items():
    _check_key(base, key, "table.grid")
    if not isinstance(values, (tuple, list)) or not values:
      raise ValueError(f"table.grid.{key} must be a non-empty tuple of values (one per row), got {values!r}")
    seen = [json.dumps(_jsonable(v), sort_keys=True) for v in values]
    if len(set(seen)) != len(seen):
      raise ValueError(f"table.grid.{key} lists a value twice: {list(values)!r}")
  if "overrides" in table:
    for key in _leaves(table.overrides):
      _check_key(base, key, "table.overrides")
  if table.get("subset_seed_from_seed", False):
    if not isinstance(table.subset_seed_from_seed, bool):
      raise ValueError(f"table.subset_seed_from_seed must be True or False, got {table.subset_seed_from_seed!r}")
    if "eval.subset_seed" in _leaves(table.grid):
      raise ValueError("table.subset_seed_from_seed=True sets eval.subset_seed from each row's seed; remove the "
                       "grid axis eval.subset_seed (or set subset_seed_from_seed=False)")
  if table.get("published_from", None):
    published_lib.rows(table.published_from, ())  # A ValueError naming the valid registries.
  for i, row in enumerate(table.get("published", None) or ()):
    if not _is_section(row):
      raise ValueError(f"table.published[{i}] must be a dict, got {row!r}")
    for key in row.keys():
      if key not in PUBLISHED_KEYS:
        raise ValueError(f"Unknown key {key!r} in table.published[{i}]; valid keys: {list(PUBLISHED_KEYS)}")
    for key in ("dataset", "method", "source"):
      if not row.get(key):
        raise ValueError(f"table.published[{i}] needs {key!r} (a published row names its dataset, method, source)")
    if row.get("accuracy") is None and row.get("auroc") is None:
      raise ValueError(f"table.published[{i}] ({row['method']}) needs accuracy and/or auroc")
    for key in ("accuracy", "auroc"):
      v = row.get(key)
      if v is not None and not (isinstance(v, (int, float)) and 0 <= v <= 1):
        raise ValueError(f"table.published[{i}].{key}={v!r} must be a fraction in [0, 1] (e.g. 0.765, not 76.5)")
  return table


# ---------------------------------------------------------------------------------------------------
# Rows: grid -> resolved configs -> deterministic workdirs.

def _jsonable(value):
  if _is_section(value):
    return {k: _jsonable(value[k]) for k in value.keys()}
  if isinstance(value, (tuple, list)):
    return [_jsonable(v) for v in value]
  return value


def _set(config, dotted: str, value, where: str):
  *sections, key = dotted.split(".")
  target = config
  for s in sections:
    target = target[s]
  try:
    target[key] = value
  except (TypeError, ValueError) as e:  # ConfigDict is type-safe: name the key and the value.
    raise ValueError(f"{where}: cannot set {dotted}={value!r}: {e}") from None


def _digest(flat: Mapping[str, Any]) -> str:
  return hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()[:8]


def _flatten(d, prefix="") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


_DEFAULTS = None


def _flat_config(config, exclude) -> dict:
  """The config's values that a hash covers: every key but `exclude`, and but keys at their schema default
  (medssl_jax.config.base_config()), so adding a key whose default keeps the old behaviour leaves the
  hashes, and so the cached rows and pretrainings of earlier runs, valid; renamed keys count under their old
  names (config_lib.old_names) for the same reason."""
  global _DEFAULTS
  if _DEFAULTS is None:
    _DEFAULTS = _flatten(views_lib.strip_later_defaults(json.loads(experiment.default_config().to_json_best_effort())))
  flat = _flatten(views_lib.strip_later_defaults(json.loads(config.to_json_best_effort())))
  missing = object()
  kept = {k: v for k, v in flat.items() if not any(k == e or k.startswith(e + ".") for e in exclude)
          and _DEFAULTS.get(k, missing) != v}
  return config_lib.old_names(kept)


def _slug_part(key: str, value) -> str:
  if key == "base_config":
    path, _, arg = str(value).partition(":")
    text = os.path.basename(path)[:-3] + (f".{arg}" if arg and arg != "quick" else "")
  else:
    v = "all" if value == "" and key.endswith("train_subset") else ("none" if value == "" else value)
    text = f"{key.rsplit('.', 1)[-1]}={v}"
  return re.sub(r"[^A-Za-z0-9._=+-]", "-", text.replace("%", "pct"))


def _slug(axes: Mapping[str, Any], digest: str, base: str) -> str:
  """'fundus_byol,train_subset=10pct,seed=0-<hash>': the row's varying axis values, then the hash. With none (one
  base config and one seed: `--only=<dataset> --grid=seed=<s>`), the base config's name."""
  text = ",".join(_slug_part(k, v) for k, v in axes.items())[:80] or _slug_part("base_config", base)
  return f"{text}-{digest}"


def _pretrain_relevant(key: str) -> bool:
  exclude = ckpt_lib.RESUMABLE_KEYS + NON_RESULT_KEYS
  return key == "base_config" or not any(key == e or key.startswith(e + ".") for e in exclude)


def build_rows(table, *, overrides: Mapping[str, Any] | None = None, open_data: bool = True) -> list[dict]:
  """Every row of a validated table: its axis values, resolved (validated) config and workdirs.

  `open_data` False leaves epoch schedules unresolved (no dataset is opened; the dry run needs shapes only).

  Each row is a dict: axes ({dotted key: value}, 'base_config' first when it is an axis), config,
  slug (rows/<slug>), pretrain_slug (pretrain/<pretrain_slug>), base_config, source (None, or for an inflation
  row whose model.inflate_from names a config, {config, slug}: its 2D pretraining, in pretrain/<slug>, shared by
  every row with the same source).
  """
  validate_table(table)
  bases = base_configs(table)
  constant = dict(_leaves(table.overrides)) if "overrides" in table else {}
  constant.update(overrides or {})
  grid = _leaves(table.grid)
  # Seeds last, so the rows of one aggregated group are adjacent; base configs first.
  keys = sorted(grid, key=lambda k: (k in SEED_AXES, SEED_AXES.index(k) if k in SEED_AXES else 0))
  axes_keys = (["base_config"] if len(bases) > 1 else []) + keys
  axes_values = ([bases] if len(bases) > 1 else []) + [tuple(grid[k]) for k in keys]
  rows = []
  num_train = {}  # Training-split size per data section: each dataset opened once, not once per row.
  for combo in itertools.product(*axes_values):
    axes = dict(zip(axes_keys, combo))
    base = axes.get("base_config", bases[0])
    config = _load_config(base)
    loaded_image_size = config.data.image_size
    where = f"table row {json.dumps(_jsonable(axes), default=str)}"
    settings = dict(constant, **{k: v for k, v in axes.items() if k != "base_config"})
    for key, value in settings.items():
      _check_key(config, key, where)
      _set(config, key, value, where)
    config_lib.follow_image_size(config, loaded_image_size, list(settings))
    if open_data and (config.eval.finetune_epochs or config.eval.finetune_eval_every_epoch):
      # Epochs of the dataset this row opens, as steps: the row's identity is what it will compute.
      ref = config.data.to_json_best_effort()
      if ref not in num_train:
        num_train[ref] = pipeline.num_examples(pipeline.open_dataset(config.data), config.data.train_split)
      probe.resolve_epochs(config, num_train[ref])
    if table.get("subset_seed_from_seed", False):
      config.eval.subset_seed = config.seed
    try:
      experiment.validate(config)
    except ValueError as e:
      raise ValueError(f"{where}: {e}") from None
    # Single-valued axes are the same in every row: the hash covers them, the readable part need not.
    varying = {k: v for k, v in axes.items() if k == "base_config" or len(grid[k]) > 1}
    pre_axes = {k: v for k, v in varying.items() if _pretrain_relevant(k)}
    row_flat = _flat_config(config, NON_RESULT_KEYS)
    source = encoders_lib.inflate_source(config) if config.mode == "inflate_and_probe" else None
    if source is not None:  # The row is also what its 2D source pretraining computes.
      source_digest = _digest(_flat_config(source, ckpt_lib.RESUMABLE_KEYS + NON_RESULT_KEYS))
      row_flat["inflate_source"] = source_digest
      source = dict(config=source, slug=f"inflate_source-{source_digest}")
    rows.append(dict(
        axes=axes, config=config, base_config=base, source=source,
        slug=_slug(varying, _digest(row_flat), base),
        pretrain_slug=_slug(pre_axes, _digest(_flat_config(config, ckpt_lib.RESUMABLE_KEYS + NON_RESULT_KEYS)), base)))
  return rows


# ---------------------------------------------------------------------------------------------------
# Provenance.

def code_version() -> str:
  """Short commit of this code, '-dirty' when tracked files have changes; 'unknown' outside git
  (train/provenance.py, which checkpoints record in full)."""
  code = provenance.code_version()
  if not code["git_commit"]:
    return "unknown"
  return code["git_commit"][:7] + ("-dirty" if code["git_dirty"] else "")


def device_description() -> str:
  """What the row ran on, e.g. '1 x NVIDIA H200' or '1 x cpu' (wall-clocks mean little without it)."""
  return f"{jax.device_count()} x {jax.devices()[0].device_kind}"


def package_versions() -> dict[str, str]:
  versions = provenance.package_versions()
  return {name: versions.get(name) or "unknown" for name in PACKAGES}


# ---------------------------------------------------------------------------------------------------
# Running.

def _write_json(path: str, data):
  # Atomic: a row interrupted while writing leaves no result behind, so it reruns.
  results_lib.write_json(path, data, default=str)


def _pretrain(row, pdir: str) -> float:
  """Pretrains (or resumes) the row's encoder in `pdir` unless its last checkpoint exists.

  Returns the pretraining wall-clock so far, summed over every invocation that worked on it.
  """
  timing_path = paths.join(pdir, "table_pretrain.json")
  timing = paths.read_json(timing_path, missing={"wall_clock_s": 0.0})
  if not paths.isdir(paths.join(pdir, "checkpoints", str(row["config"].train.num_steps))):
    config = row["config"].copy_and_resolve_references()
    config.mode = "pretrain"
    t0 = time.perf_counter()
    try:
      experiment.run(config, pdir)
    finally:  # Count the time of an interrupted run too: the resumed run starts from its checkpoint.
      timing["wall_clock_s"] += time.perf_counter() - t0
      if paths.isdir(pdir):
        _write_json(timing_path, timing)
  return timing["wall_clock_s"]


def _num_labelled(config, results) -> int | None:
  subset = next((r["label_subset"] for r in results.values() if "label_subset" in r), None)
  if subset is not None:
    return int(subset["num_selected"])
  n = pipeline.num_examples(pipeline.open_dataset(config.data), config.data.train_split)
  return min(n, config.eval.max_train_examples) if config.eval.max_train_examples else n


# Modes whose rows start from an encoder of their own (no pretraining to share): what the progress line says.
OWN_ENCODER_MODES = {"supervised": "trained from scratch with labels",
                     "inflate_and_probe": "a 2D pretrained encoder inflated to 3D"}


def _objective_label(config, source=None) -> str:
  if config.mode == "supervised":
    return "none (supervised)"
  if config.mode == "inflate_and_probe":
    return f"inflated {config.model.inflate_method} (2D{' ' + source.objective.name if source else ''})"
  return config.objective.name


def _run_row(row, *, table_name: str, rdir: str, pdir: str, workdir: str, source_dir: str | None = None) -> dict:
  config = row["config"].copy_and_resolve_references()
  if not config.eval.finetune_cache_dir:  # Each recipe's from-scratch baseline is trained once for all its arms.
    config.eval.finetune_cache_dir = paths.join(workdir, FINETUNE_CACHE)
  if row["source"] is not None:
    # An inflation row whose source is a config: its 2D pretraining (shared by the rows naming it) runs first.
    pretrain_s, pdir = _pretrain(row["source"], source_dir), rdir
    config.model.inflate_from = source_dir
    paths.makedirs(rdir)
  elif row["config"].mode in OWN_ENCODER_MODES:
    # Trained from scratch with labels (e.g. configs/medmnist_supervised.py), or a 2D encoder inflated: no
    # pretraining to share; the row's own folder is its workdir.
    pretrain_s, pdir = 0.0, rdir
    paths.makedirs(rdir)
  else:
    pretrain_s = _pretrain(row, pdir)
    config.mode = "linear_eval"  # Evaluates (probe / kNN / fine-tune per eval.protocol) the shared encoder.
  t0 = time.perf_counter()
  results = experiment.run(config, pdir)
  eval_s = time.perf_counter() - t0
  paths.makedirs(rdir)
  # experiment.run names its results file by protocol and label subset only; rows sharing this
  # pretraining may differ in other eval keys (knn_k, l2_grid, finetune_steps), so each row keeps its own.
  name = probe.results_name(config)
  for ext in ("json", "md"):
    src = paths.join(pdir, f"{name}.{ext}")
    if paths.exists(src):
      paths.rename(src, paths.join(rdir, f"{name}.{ext}"))
  d = config.data
  record = dict(
      table=table_name, row=row["slug"], base_config=row["base_config"],
      axes=_jsonable(row["axes"]), config=json.loads(config.to_json_best_effort()),
      dataset=d.builder + (f"/{d.builder_config}" if d.builder_config else ""),
      objective=_objective_label(config, row["source"] and row["source"]["config"]),
      protocol=config.eval.protocol,
      train_subset=_train_subset(config),
      subset_seed=config.eval.subset_seed, n_labelled=_num_labelled(config, results), seed=config.seed,
      results=results, eval_wall_clock_s=round(eval_s, 2), pretrain_wall_clock_s=round(pretrain_s, 2),
      pretrain_dir=paths.relpath(source_dir if row["source"] else pdir, workdir), code_version=code_version(),
      versions=package_versions(), device=device_description(),
      finished=datetime.datetime.now().isoformat(timespec="seconds"))
  _write_json(paths.join(rdir, RESULT_FILE), record)
  return record


def follow_datasets(table, rows) -> ml_collections.ConfigDict:
  """The table as the datasets its rows open, so an override that points it at another dataset is named and
  compared as that dataset: "{dataset}" in its name becomes their short names (medmnist/dermamnist -> derma) and in
  its description their full names; published rows of another config of a builder the rows use are left out
  (they would sit beside another dataset's numbers); `published_from` adds that registry's rows for the datasets
  run (medssl_jax/tables/published.py)."""
  datasets = sorted({pipeline.ref_name(r["config"].data) for r in rows})
  table = table.copy_and_resolve_references()
  short = "+".join(d.rsplit("/", 1)[-1].removesuffix("mnist") for d in datasets)
  table.name = table.name.replace("{dataset}", short)
  if table.get("description", None):
    table.description = table.description.replace("{dataset}", ", ".join(datasets))
  builders = {d.split("/")[0] for d in datasets}
  published = [dict(p) for p in table.get("published", None) or ()]
  kept = [p for p in published if p["dataset"] in datasets or p["dataset"].split("/")[0] not in builders]
  if table.get("published_from", None):
    found, missing = published_lib.rows(table.published_from, datasets)
    kept = [p for p in found if not any(q["dataset"] == p["dataset"] and q["method"] == p["method"] for q in kept)] + kept
    if missing:
      print(f"table {table.name}: no published row on file for {missing} (medssl_jax/tables/published.py)", flush=True)
  with table.unlocked():
    table.published = tuple(kept)
  return table


def _folders(workdir: str, kind: str):
  """slug -> <workdir>/<kind>/<slug>, or the folder there that already holds the slug's hash under another readable
  name: the hash is the identity (what the run computes); the readable part follows the grid's shape, which a
  widened or narrowed grid changes (seed=(0,) to (0, 1, 2) adds "seed=0"), and finished work must be found anyway.
  The folder is listed once."""
  root = paths.join(workdir, kind)
  existing = {name.rsplit("-", 1)[-1]: name for name in (paths.listdir(root) if paths.isdir(root) else [])}
  return lambda slug: paths.join(root, existing.get(slug.rsplit("-", 1)[-1], slug))


def run_table(table, *, workdir: str, overrides: Mapping[str, Any] | None = None, report_only: bool = False) -> dict:
  """Runs every row of `table` not yet in `workdir` and writes <workdir>/<name>.{md,csv,png}.

  Args:
    table: a table ConfigDict (see the module docstring), e.g. `load_table('configs/table_fundus_quick.py')`.
    workdir: where pretraining runs, per-row results and the tables live; rerunning resumes.
    overrides: {dotted experiment key: value} applied to every row (after table.overrides), e.g. from
      `--table.train.num_steps=100`; part of each row's hash like any other config value.
    report_only: run nothing: write the tables from the finished rows (e.g. rows copied in from several
      machines, one seed each) and list the rows still missing, in the Markdown and in "missing". It takes no
      workdir lock, so it reports while another runner is still working in `workdir`.
  Returns:
    {"rows": [result records, in row order, each with a 'status' of 'cached' or 'ran'],
     "missing": [slugs of rows not run (report_only)], "md": path, "csv": path, "png": path or None}.
  """
  rows = build_rows(table, overrides=overrides)  # Every row is validated before anything runs.
  table = follow_datasets(table, rows)
  workdir = paths.absolute(workdir)  # A URL (gs://...) stays as it is.
  if report_only:  # Reads finished rows and writes the outputs atomically: safe beside a runner working there.
    return _run_rows(table, rows, workdir, report_only=True)
  with workdir_lock.hold(workdir, what="table workdir"):  # Two runners would train the same rows twice.
    return _run_rows(table, rows, workdir)


def time_left(todo, finished) -> tuple[float, int]:
  """About how many seconds the rows `todo` will take, judged by `finished` result records of any seed: each row
  its recipe's median eval wall-clock (same table, base config, protocol and label subset), each pretraining not
  done yet its recipe's median pretraining wall-clock less the time it has had.

  `todo`: dicts of table, base_config, protocol, train_subset, pretrain (the pretraining folder, None for a row
  without one) and pretrained_s (its wall-clock so far; None once done). Returns (seconds, rows left out: no
  finished row of their recipe to judge by)."""
  evals, pretrains = {}, {}
  for r in finished:
    recipe = (r.get("table"), r.get("base_config"))
    evals.setdefault((*recipe, r.get("protocol"), r.get("train_subset")), []).append(r.get("eval_wall_clock_s", 0.0))
    if r.get("pretrain_wall_clock_s"):
      pretrains.setdefault(recipe, []).append(r["pretrain_wall_clock_s"])
  seconds, unknown, counted = 0.0, 0, set()
  for t in todo:
    recipe = (t["table"], t["base_config"])
    e = evals.get((*recipe, t["protocol"], t["train_subset"]))
    if not e:
      unknown += 1
      continue
    seconds += statistics.median(e)
    if t["pretrain"] and t["pretrained_s"] is not None and t["pretrain"] not in counted:
      counted.add(t["pretrain"])
      seconds += max(0.0, statistics.median(pretrains.get(recipe, [0.0])) - t["pretrained_s"])
  return seconds, unknown


def _todo(row, pdir: str, sdir: str | None, table_name: str) -> dict:
  """What `time_left` needs of a row not run yet."""
  pretrain = sdir or (None if row["config"].mode in OWN_ENCODER_MODES else pdir)
  done = pretrain is None or paths.isdir(paths.join(pretrain, "checkpoints", str(
      (row["source"]["config"] if row["source"] else row["config"]).train.num_steps)))
  return dict(table=table_name, base_config=row["base_config"], protocol=row["config"].eval.protocol,
              train_subset=_train_subset(row["config"]), pretrain=pretrain,
              pretrained_s=None if done else paths.read_json(paths.join(pretrain, "table_pretrain.json"),
                                                             missing={"wall_clock_s": 0.0})["wall_clock_s"])


def _left_text(todo, finished) -> str:
  if not todo:
    return ""
  seconds, unknown = time_left(todo, finished)
  if unknown == len(todo):
    return ""
  return (f"about {reporting.format_duration(seconds)} left" + (f" (+ {unknown} row(s) of recipes not run before)"
                                                                   if unknown else ""))


def _run_rows(table, rows, workdir: str, *, report_only: bool = False) -> dict:
  paths.makedirs(workdir)
  n_pretrain = len({r["pretrain_slug"] for r in rows if r["config"].mode not in OWN_ENCODER_MODES}
                   | {r["source"]["slug"] for r in rows if r["source"]})
  row_dir, pretrain_dir = _folders(workdir, "rows"), _folders(workdir, "pretrain")
  left = {r["slug"] for r in rows if not paths.exists(paths.join(row_dir(r["slug"]), RESULT_FILE))}
  # Every finished row in the workdir (other seeds too) tells how long the rows left will take.
  root = paths.join(workdir, "rows")
  finished = [] if report_only or not left or not paths.isdir(root) else [
      rec for name in paths.listdir(root) for rec in [paths.read_json(paths.join(root, name, RESULT_FILE))] if rec]
  sources = lambda r: pretrain_dir(r["source"]["slug"]) if r["source"] else None
  todo = lambda: [_todo(r, pretrain_dir(r["pretrain_slug"]), sources(r), table.name) for r in rows
                  if r["slug"] in left]
  estimate = "" if report_only else _left_text(todo(), finished)
  print(f"table {table.name}: {len(rows)} rows, {n_pretrain} pretraining run(s), workdir {workdir}"
        + (f"; {len(left)} to run, {estimate}" if estimate else ""), flush=True)
  records, missing, t_table = [], [], time.perf_counter()
  for i, row in enumerate(rows, 1):
    rdir = row_dir(row["slug"])
    pdir = pretrain_dir(row["pretrain_slug"])
    path = paths.join(rdir, RESULT_FILE)
    if paths.exists(path):
      record = dict(paths.read_json(path), status="cached")
      if record.get("config", {}).get("mode") == "supervised":  # Older records of supervised rows lack the name.
        record["objective"] = "none (supervised)"
      print(f"[{i}/{len(rows)}] cached   {os.path.basename(rdir)} (finished {record.get('finished', '?')})",
            flush=True)
    elif report_only:
      print(f"[{i}/{len(rows)}] missing  {os.path.basename(rdir)} (not run: --report_only)", flush=True)
      missing.append(os.path.basename(rdir))
      continue
    else:
      sdir = sources(row)
      where = (f"2D pretraining inflated to 3D: {paths.relpath(sdir, workdir)}" if sdir else
               OWN_ENCODER_MODES.get(row["config"].mode) or f"pretraining: {paths.relpath(pdir, workdir)}")
      print(f"[{i}/{len(rows)}] running  {os.path.basename(rdir)} ({where})", flush=True)
      t0 = time.perf_counter()
      record = dict(_run_row(row, table_name=table.name, rdir=rdir, pdir=pdir, workdir=workdir, source_dir=sdir),
                    status="ran")
      left.discard(row["slug"])
      finished.append(record)
      estimate = _left_text(todo(), finished)
      print(f"[{i}/{len(rows)}] done     {os.path.basename(rdir)} in {time.perf_counter() - t0:.1f}s"
            + (f"; {estimate}" if estimate else ""), flush=True)
    records.append(record)
  if not records:
    raise ValueError(f"{workdir}: no finished rows of table {table.name} to report; run the table without "
                     "--report_only first (or copy finished rows/<row> folders in)")
  out = write_outputs(table, records, workdir=workdir, missing=missing)
  ran = sum(r["status"] == "ran" for r in records)
  print(f"table {table.name}: {ran} row(s) run, {len(records) - ran} cached"
        + (f", {len(missing)} missing" if missing else "") + ", "
        f"{time.perf_counter() - t_table:.1f}s; wrote {out['md']}, {out['csv']}"
        f"{', ' + out['png'] if out['png'] else ''}", flush=True)
  return dict(rows=records, missing=missing, **out)


# ---------------------------------------------------------------------------------------------------
# Outputs.

def _entries(records) -> list[dict]:
  """One flat entry per (row, encoder, layer): the CSV rows (ours). A result probed at a layer
  (eval.feature_layers; key 'encoder @ layer') gives its layer its own field; results without one
  (the default backbone-only probe, or fine-tuning) are the backbone's."""
  out = []
  for r in records:
    for key, m in r["results"].items():
      layer = m.get("layer", "backbone")
      encoder = _without_source_folder(key[:-len(f" @ {layer}")] if key.endswith(f" @ {layer}") else key,
                                       r["pretrain_dir"])
      nc = m.get("neural_collapse") or {}
      att = m.get("attention") or {}
      out.append(dict(
          source="ours", table=r["table"], row=r["row"], dataset=r["dataset"], objective=r["objective"],
          encoder=encoder, layer=layer, protocol=r["protocol"], label_subset=records_lib.label_name(r["train_subset"]),
          subset_seed=r["subset_seed"], n_labelled=r["n_labelled"], seed=r["seed"],
          accuracy=m.get("accuracy"), auroc=m.get("auroc"), kappa=m.get("kappa"),
          auroc_ci_low=(m.get("auroc_ci") or (None, None))[0], auroc_ci_high=(m.get("auroc_ci") or (None, None))[1],
          attention_inside=att.get("fraction_inside"), mask_area=att.get("mask_area"),
          nc1_train=nc.get("train", {}).get("nc1"),
          nc1_test=nc.get("test", {}).get("nc1"), ncc_test_accuracy=nc.get("ncc_test_accuracy"),
          eval_wall_clock_s=r["eval_wall_clock_s"],
          pretrain_wall_clock_s=r["pretrain_wall_clock_s"], code_version=r["code_version"], **r["versions"],
          status=r["status"], overrides=json.dumps(r["axes"], default=str), row_dir=f"rows/{r['row']}",
          pretrain_dir=r["pretrain_dir"], axes=r["axes"]))
  return out


def _without_source_folder(encoder: str, pretrain_dir: str | None) -> str:
  """An inflated encoder's name less its 2D source's folder: "inflated i3d (simclr, 2D inflate_source-<hash>)" ->
  "inflated i3d (simclr, 2D)". Each seed pretrains its own source, so with the folder in it the name differs between
  seeds and a row's seeds would not aggregate; the folder stays in the CSV's pretrain_dir."""
  suffix = f", 2D {os.path.basename(pretrain_dir or '')})"
  return encoder[:-len(suffix)] + ", 2D)" if pretrain_dir and encoder.endswith(suffix) else encoder


def _optional_columns(entries) -> tuple[bool, bool]:
  """(layer column?, neural-collapse columns?): only tables that probed other layers than the backbone,
  or measured neural collapse, get them, so every other table's output stays as it was."""
  return (any(e["layer"] != "backbone" for e in entries),
          any(e["nc1_train"] is not None or e["nc1_test"] is not None for e in entries))


def _show_attention(entries) -> bool:
  """Attention-in-mask columns only for tables that measured it (eval.attention_mask)."""
  return any(e["attention_inside"] is not None for e in entries)


def _attention_cell(fractions, areas) -> str:
  """Mean ± std over seeds of the attention inside the mask, with the mask's area (a uniform map's fraction)."""
  cell = _mean_std(fractions)
  finite = [a for a in areas if a is not None and math.isfinite(a)]
  return f"{cell} (area {sum(finite) / len(finite):.2f})" if finite else cell


def _show_kappa(entries) -> bool:
  """Kappa column only for graded labels (eval.ordinal); other tables have none."""
  return any(e["kappa"] is not None for e in entries)


def _csv_columns(entries) -> list[str]:
  layers, nc = _optional_columns(entries)
  cols = list(CSV_COLUMNS)
  if layers:
    cols.insert(cols.index("encoder") + 1, "layer")
  i = cols.index("auroc_ci_high") + 1
  if nc:
    cols[i:i] = ["nc1_train", "nc1_test", "ncc_test_accuracy"]
  if _show_kappa(entries):
    cols[i:i] = ["kappa"]
  if _show_attention(entries):
    cols[i:i] = ["attention_inside", "mask_area"]
  return cols


def _mean_std(values) -> str:
  if all(v is None for v in values):  # A metric the protocol does not give (few-shot episodes: no AUROC).
    return "—"
  finite = [v for v in values if v is not None and math.isfinite(v)]
  return metrics_lib.format_mean_std(finite) if finite else "nan"


def _mean_std_g(values) -> str:
  """Mean ± std over seeds in significant figures: NC1 spans orders of magnitude across layers."""
  finite = [v for v in values if v is not None and math.isfinite(v)]
  if not finite:
    return "nan"
  mean, std, n = metrics_lib.mean_std(finite)
  return f"{mean:.4g} (n=1)" if n == 1 else f"{mean:.4g} ± {std:.2g} (n={n})"


def _fmt(v, digits=4) -> str:
  return "—" if v is None else f"{v:.{digits}f}"


def _fmt_g(v) -> str:
  return "—" if v is None else f"{v:.4g}"  # NC1 spans orders of magnitude.


def _aggregate(entries, extra) -> list[dict]:
  """Entries grouped over seeds (seed, eval.subset_seed), in first-seen order."""
  groups: dict[tuple, dict] = {}
  for e in entries:
    key = (e["dataset"], e["objective"], e["encoder"], e["layer"], e["protocol"], e["label_subset"],
           *(json.dumps(e["axes"].get(k), default=str) for k in extra))
    g = groups.setdefault(key, dict(e, accuracies=[], aurocs=[], kappas=[], nc1_trains=[], nc1_tests=[],
                                    attentions=[], mask_areas=[], n_labelled_set=set()))
    g["attentions"].append(e["attention_inside"])
    g["mask_areas"].append(e["mask_area"])
    g["accuracies"].append(e["accuracy"])
    g["kappas"].append(e["kappa"])
    g["aurocs"].append(e["auroc"])
    g["nc1_trains"].append(e["nc1_train"])
    g["nc1_tests"].append(e["nc1_test"])
    g["n_labelled_set"].add(e["n_labelled"])
  return list(groups.values())


def format_markdown(table, records, *, png: str | None = None, missing=()) -> str:
  """The table's Markdown: aggregated (mean ± std over seeds, published rows beside), then every run."""
  entries = _entries(records)
  extra = records_lib.extra_axes(records)
  show_layer, show_nc = _optional_columns(entries)
  layer_head = ["layer"] if show_layer else []
  nc_head = ["NC1 (train)", "NC1 (test)"] if show_nc else []
  show_kappa = _show_kappa(entries)
  kappa_head = ["kappa (quadratic)"] if show_kappa else []
  show_att = _show_attention(entries)
  att_head = ["attention in mask"] if show_att else []
  show_ci = any(e["auroc_ci_low"] is not None for e in entries)
  versions = sorted({json.dumps(r["versions"], sort_keys=True) for r in records})
  codes = sorted({r["code_version"] for r in records})
  devices = sorted({r.get("device", "not recorded") for r in records})
  lines = [f"# {table.name}", ""]
  if table.get("description", None):
    lines += [table.description, ""]
  bases = base_configs(table)
  lines += [f"Base config: {', '.join(f'`{b}`' for b in bases)}; grid: "
            + "; ".join(f"`{k}` in {list(v)}" for k, v in _leaves(table.grid).items()),
            f"Code version: {', '.join(codes)}; packages: "
            + " | ".join(", ".join(f"{k} {v}" for k, v in json.loads(s).items()) for s in versions)
            + f"; ran on: {', '.join(devices)}",
            f"Written {datetime.datetime.now().isoformat(timespec='seconds')}; "
            "accuracy and AUROC (macro one-vs-rest) on each dataset's test split.", ""]

  if missing:
    lines += [f"Not run yet ({len(missing)} of {len(missing) + len(records)} rows; the same command without "
              f"--report_only runs them): {', '.join(f'`{m}`' for m in missing)}", ""]
  lines += ["## Mean ± std over seeds", ""]
  head = ["dataset", "objective", "encoder", *layer_head, "protocol", "labels", *extra, "accuracy", "AUROC",
          *kappa_head, *att_head, *nc_head, "source"]
  body = []
  for g in _aggregate(entries, extra):
    n = ", ".join(str(v) for v in sorted(g["n_labelled_set"], key=str))
    cells = [g["dataset"], g["objective"], g["encoder"], *([g["layer"]] if show_layer else []), g["protocol"],
             f"{g['label_subset']} (n={n})", *(records_lib.axis_text(k, g["axes"].get(k)) for k in extra),
             _mean_std(g["accuracies"]), _mean_std(g["aurocs"]), *([_mean_std(g["kappas"])] if show_kappa else []),
             *([_attention_cell(g["attentions"], g["mask_areas"])] if show_att else []),
             *([_mean_std_g(g["nc1_trains"]), _mean_std_g(g["nc1_tests"])] if show_nc else []), "ours"]
    body.append(cells)
  for p in table.get("published", None) or ():
    cells = [p["dataset"], p["method"], "—", *("—" for _ in layer_head), p.get("protocol", "") or "—",
             p.get("labels", "") or "—", *("—" for _ in extra), _fmt(p.get("accuracy"), 3), _fmt(p.get("auroc"), 3),
             *("—" for _ in kappa_head), *("—" for _ in att_head), *("—" for _ in nc_head), f"published: {p['source']}" + (f" ({p['note']})" if p.get("note") else "")]
    body.append(cells)
  lines += results_lib.markdown_table(head, body)
  if png:
    alt = "mean AUROC vs labelled fraction" if auroc_lines(records) else "AUROC per seed"
    lines += ["", f"![{alt}]({os.path.basename(png)})"]

  lines += ["", "## Every run", ""]
  reused = sum("reused_from" in m for r in records for m in r["results"].values())
  if reused:
    lines += [f"{reused} fine-tuning result(s) were read from an identical earlier fine-tuning (same settings, same "
              "starting weights; `reused_from` in the row's result.json); their rows' eval s leaves them out.", ""]
  head = ["dataset", "objective", "encoder", *layer_head, "protocol", "labels (spec, subset seed, n)", *extra, "seed",
          "accuracy", "AUROC", *(["AUROC 95% CI"] if show_ci else []), *kappa_head, *att_head, *nc_head, "eval s", "pretrain s", "code", "jax / flax / optax / numpy", "row"]
  body = []
  for e in entries:
    labels = (f"{e['label_subset']} (n={e['n_labelled']})" if e["label_subset"] == "100%"
              else f"{e['label_subset']} (seed {e['subset_seed']}, n={e['n_labelled']})")
    cells = [e["dataset"], e["objective"], e["encoder"], *([e["layer"]] if show_layer else []), e["protocol"], labels,
             *(records_lib.axis_text(k, e["axes"].get(k)) for k in extra), str(e["seed"]), _fmt(e["accuracy"]), _fmt(e["auroc"]),
             *([f"{_fmt(e['auroc_ci_low'])}-{_fmt(e['auroc_ci_high'])}"] if show_ci else []),
             *([_fmt(e["kappa"])] if show_kappa else []),
             *([f"{_fmt(e['attention_inside'], 3)} (area {_fmt(e['mask_area'], 2)})"] if show_att else []),
             *([_fmt_g(e["nc1_train"]), _fmt_g(e["nc1_test"])] if show_nc else []),
             f"{e['eval_wall_clock_s']:.1f}", f"{e['pretrain_wall_clock_s']:.1f}", e["code_version"],
             " / ".join(str(e[k]) for k in PACKAGES), f"`{e['row']}` ({e['status']})"]
    body.append(cells)
  lines += results_lib.markdown_table(head, body)
  return "\n".join(lines) + "\n"


def format_csv(table, records) -> str:
  """One CSV line per (row, encoder, layer), then the published rows (source 'published: ...')."""
  entries = _entries(records)
  published = [dict(source=f"published: {p['source']}", table=table.name, dataset=p["dataset"], objective=p["method"],
                    protocol=p.get("protocol", ""), label_subset=p.get("labels", ""), accuracy=p.get("accuracy"),
                    auroc=p.get("auroc")) for p in table.get("published", None) or ()]
  # CSV_COLUMNS, plus 'layer' / neural-collapse columns when the table has them (_csv_columns).
  return results_lib.csv_text(_csv_columns(entries), entries + published)


def _fraction(spec: str) -> float | None:
  kind, value = subsets.parse_spec(spec)
  return value if kind in ("all", "fraction") else None  # k-per-class subsets have no fraction.


def auroc_lines(records) -> dict[tuple, list[dict]]:
  """What `plot_auroc_vs_labels` draws: {(dataset, protocol): [{"label", "x" (labelled %), "mean", "std", "baseline"}]}
  of mean AUROC (± std over seeds) per label fraction, one line per encoder (and layer / extra axis). Baselines
  that several arms share with the same values (each recipe's random init, supervised from scratch) are one line;
  a baseline of one arm says whose recipe it follows. {} unless the rows cover at least two label fractions."""
  entries = [e for e in _entries(records) if _fraction(e["label_subset"]) is not None]
  if len({_fraction(e["label_subset"]) for e in entries}) < 2:
    return {}
  extra = records_lib.extra_axes(records)
  show_layer = _optional_columns(entries)[0]
  points: dict[tuple, dict[tuple, dict[float, list]]] = {}
  for e in entries:
    if e["auroc"] is None or not math.isfinite(e["auroc"]):
      continue
    recipe = None if e["encoder"].startswith(e["objective"]) else e["objective"]
    encoder = e["encoder"] + (f" @ {e['layer']}" if show_layer else "")
    rest = " / ".join(f"{k}={records_lib.axis_text(k, e['axes'].get(k))}" for k in extra)
    line = points.setdefault((e["dataset"], e["protocol"]), {}).setdefault((encoder, rest, recipe), {})
    line.setdefault(_fraction(e["label_subset"]), []).append(e["auroc"])
  out = {}
  for panel, lines in points.items():
    merged: dict[tuple, list] = {}  # The same points: one line, whichever recipes gave it.
    for (encoder, rest, recipe), by_x in lines.items():
      merged.setdefault((encoder, rest, tuple((x, tuple(v)) for x, v in sorted(by_x.items()))), []).append(recipe)
    out[panel] = []
    for (encoder, rest, by_x), recipes in merged.items():
      label = (f"{encoder} ({recipes[0]} recipe)" if len(recipes) == 1 and recipes[0] and _is_baseline(encoder)
               else encoder)
      stats = [metrics_lib.mean_std(v) for _, v in by_x]  # (mean, std, n) per label fraction.
      out[panel].append(dict(label=" / ".join([label, *([rest] if rest else [])]), x=[100 * x for x, _ in by_x],
                             mean=[m for m, _, _ in stats], std=[s if n > 1 else 0.0 for _, s, n in stats],
                             baseline=_is_baseline(encoder)))
  return out


def plot_auroc_vs_labels(table, records, path: str) -> str | None:
  """PNG of `auroc_lines`: one panel per dataset and protocol (a single panel where the table has one of each, its
  lines then naming the protocol); None (no file) unless the rows cover at least two label fractions."""
  panels = auroc_lines(records)
  if not panels:
    return None
  # A pyplot-free Figure: no backend switch, so a notebook that calls this keeps its inline plots.
  from matplotlib.figure import Figure
  import numpy as np
  rows, cols = len({d for d, _ in panels}), len({p for _, p in panels})
  fig = Figure(figsize=(6.4 if cols == 1 else 5.2 * cols, 4.4 if rows == 1 else 3.9 * rows))
  axes = np.asarray(fig.subplots(rows, cols, squeeze=False))
  ticks = sorted({x for lines in panels.values() for line in lines for x in line["x"]})
  colours: dict[str, str] = {}  # One colour per line label across the panels.
  for ax, ((dataset, protocol), lines) in zip(axes.ravel(), panels.items()):
    for line in lines:
      label = line["label"] if len(panels) > 1 else f"{line['label']} / {protocol}"
      ax.errorbar(line["x"], line["mean"], yerr=line["std"], marker="o", capsize=3, label=label,
                  color=colours.setdefault(line["label"], f"C{len(colours) % 10}"),
                  linestyle="--" if line["baseline"] else "-")  # Baselines dashed: they often coincide.
    ax.set_xscale("log")
    ax.set_xticks(ticks, [f"{t:g}%" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("labelled training records")
    ax.set_ylabel("AUROC (mean ± std over seeds)")
    ax.set_title(table.name if len(panels) == 1 else f"{dataset}: {protocol}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  for ax in axes.ravel()[len(panels):]:
    ax.set_visible(False)
  if len(panels) > 1:
    fig.suptitle(table.name)
  fig.tight_layout()
  paths.save_figure(fig, path, dpi=120)
  return path


def auroc_seeds(records) -> dict[tuple, list[dict]]:
  """What `plot_auroc_per_seed` draws where `auroc_lines` has nothing (one label fraction, or k per class only):
  {(dataset, protocol): [{"label", "aurocs" (one per run), "mean", "std" (0 for one run)}]}, one entry per encoder
  (and layer / extra axis / label subset where the table has several); {} when no run has an AUROC."""
  entries = [e for e in _entries(records) if e["auroc"] is not None and math.isfinite(e["auroc"])]
  extra = records_lib.extra_axes(records)
  show_layer = _optional_columns(entries)[0]
  show_labels = len({e["label_subset"] for e in entries}) > 1
  points: dict[tuple, dict[str, list]] = {}
  for e in entries:
    parts = [e["encoder"] + (f" @ {e['layer']}" if show_layer else ""),
             *(f"{k}={records_lib.axis_text(k, e['axes'].get(k))}" for k in extra),
             *([f"{e['label_subset']} labels"] if show_labels else [])]
    points.setdefault((e["dataset"], e["protocol"]), {}).setdefault(" / ".join(parts), []).append(e["auroc"])
  out = {}
  for panel, lines in points.items():
    out[panel] = []
    for label, aurocs in lines.items():
      mean, std, n = metrics_lib.mean_std(aurocs)
      out[panel].append(dict(label=label, aurocs=aurocs, mean=mean, std=std if n > 1 else 0.0))
  return out


def plot_auroc_per_seed(table, records, path: str) -> str | None:
  """PNG of `auroc_seeds`: one panel per dataset and protocol, one row per encoder with each run's AUROC (dots) and
  the mean ± std over them; the table's published AUROCs for the panel's dataset as red stars. None (no file) when
  `auroc_seeds` is empty."""
  panels = auroc_seeds(records)
  if not panels:
    return None
  from matplotlib.figure import Figure  # pyplot-free, as plot_auroc_vs_labels.
  import numpy as np
  published = [p for p in table.get("published", None) or () if p.get("auroc") is not None]
  heights = []
  for (dataset, _), lines in panels.items():
    heights.append(len(lines) + sum(p["dataset"] == dataset for p in published))
  fig = Figure(figsize=(7.2, sum(0.9 + 0.32 * h for h in heights) + 0.4))
  axes = np.asarray(fig.subplots(len(panels), 1, squeeze=False, height_ratios=[1 + 0.35 * h for h in heights]))
  for ax, ((dataset, protocol), lines) in zip(axes.ravel(), panels.items()):
    refs = [p for p in published if p["dataset"] == dataset]
    labels = [line["label"] for line in lines] + [f"{p['method']} (published)" for p in refs]
    y = np.arange(len(labels))[::-1]
    for yi, line in zip(y, lines):
      ax.scatter(line["aurocs"], [yi] * len(line["aurocs"]), s=18, color="0.55", zorder=2, label="one run")
      ax.errorbar([line["mean"]], [yi], xerr=[line["std"]], fmt="o", color="C0", capsize=4, markersize=7, zorder=3,
                  label="mean ± std over runs")
    for yi, p in zip(y[len(lines):], refs):
      ax.scatter([p["auroc"]], [yi], marker="*", s=90, color="tab:red", zorder=3, label="published")
    values = [v for line in lines for v in line["aurocs"]] + [p["auroc"] for p in refs]
    ax.set_xlim(max(0.0, min(values) - 0.05), min(1.0, max(values) + 0.05))
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_ylim(-0.7, len(labels) - 0.3)
    ax.set_xlabel("test AUROC")
    ax.set_title(f"{dataset}: {protocol}", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
  handles = {}  # One legend, beside the panels, for the kinds of marker any panel drew.
  for ax in axes.ravel():
    handles.update({label: h for h, label in zip(*ax.get_legend_handles_labels())})
  axes.ravel()[0].legend(handles.values(), handles.keys(), fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
  fig.suptitle(table.name, fontsize=10)
  fig.tight_layout()
  paths.save_figure(fig, path, dpi=120)
  return path


def _is_baseline(encoder: str) -> bool:
  """Whether an encoder is a baseline every arm has (a random init, supervised from scratch)."""
  return "random init" in encoder


def write_outputs(table, records, *, workdir: str, missing=()) -> dict:
  """Writes <workdir>/<name>.md, .csv and .png (AUROC vs label fraction, or per seed where the table has one label
  fraction); returns their paths (png None when no run has an AUROC)."""
  base = paths.join(workdir, table.name)
  png = plot_auroc_vs_labels(table, records, base + ".png") or plot_auroc_per_seed(table, records, base + ".png")
  files = results_lib.write_table(base, markdown=format_markdown(table, records, png=png, missing=missing),
                                  csv=format_csv(table, records))
  return dict(files, png=png, ood=ood_matrix.write_ood_outputs(table, records, workdir=workdir))


# ---------------------------------------------------------------------------------------------------
# Command line.

def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # As the medssl command: orbax / TFDS INFO lines drown the progress.
  if not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser("~/.cache/medssl_jax/xla"))
  flag = flags.FLAGS["table"]
  try:
    table = keep_bases(set_axes(load_table(config_flags.get_config_filename(flag)), flags.FLAGS.grid),
                       flags.FLAGS.only)
    # --table loads get_config (the base experiment), so --table.<key>=v is checked against the
    # experiment schema by config_flags; the runner applies those values to every row.
    with guard.stop_anywhere():  # SIGTERM / Ctrl-C between rows or inside one: finished rows stay cached.
      run_table(table, workdir=flags.FLAGS.workdir, overrides=dict(config_flags.get_override_values(flag)),
                report_only=flags.FLAGS.report_only)
  except guard.Stopped as e:
    print(f"{e}: every finished row is kept in {flags.FLAGS.workdir}/rows (a stopped pretraining resumes from its "
          "last checkpoint, a stopped evaluation runs again); rerun the same command to continue", flush=True)
    raise
  except errors.USER_ERRORS as e:  # A bad table, row or dataset: the message names it and what to do.
    errors.report(e, verbose=flags.FLAGS["verbosity"].present)


def _define_flags():
  # Defined only when this module is the command, so importing the runner adds no --workdir flag beside the
  # medssl command's.
  config_flags.DEFINE_config_file("table", None, "Table config file (configs/table_*.py[:variant]); "
                                  "--table.<experiment key>=value overrides every row.", lock_config=True)
  flags.DEFINE_string("workdir", None, "Directory for pretraining runs, per-row results and the tables.")
  flags.DEFINE_multi_string("grid", [], "An axis of the grid, replaced or added: <key>=<v1>,<v2>,... (e.g. "
                            "--grid=seed=0 to run one seed, --grid=eval.train_subset=1%,10%,); repeatable. Rows keep "
                            "their identity, so finished rows stay cached when the grid narrows or widens.")
  flags.DEFINE_multi_string("only", [], "Run (or report) only the rows whose base config contains this text, e.g. "
                            "--only=vesselmnist3d or --only=volume_byol; repeatable (any of them).")
  flags.DEFINE_bool("report_only", False, "Run nothing: write the tables from the rows already finished in --workdir "
                    "(e.g. copied in from several machines) and list the missing ones; takes no lock, so it "
                    "also reports while another runner works in --workdir.")
  flags.mark_flags_as_required(["table", "workdir"])


def _parse_flags(argv):
  """absl's flag parsing, with a bad table name or `--table.a.b=v` override reported in one line."""
  try:
    argv = config_lib.resolve_config_flag(argv, flag="table")
  except (FileNotFoundError, ValueError) as e:
    errors.fatal(str(e))
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    renamed = config_lib.renamed_in_args(argv[1:], flag="table")
    problem = config_lib.override_problem(argv[1:], flag="table")
    if problem:  # --table.<key> sets an experiment key in every row; the table's own keys live in its file.
      problem += ("; --table.<key> sets that experiment key in every row (a table's own keys are set in its file, "
                  "its grid by --grid)")
    errors.fatal(f"could not apply the table override(s): {'; '.join(renamed) or problem or e}")


def run():
  """The `medssl-table` console script (the same as `python -m medssl_jax.tables.runner`)."""
  _define_flags()
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
