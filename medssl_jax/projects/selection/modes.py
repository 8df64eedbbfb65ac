"""Pretraining-data selection: mode "select_data" chooses, from the pool (config.data's training split), the records to
pretrain on; mode "sept" runs the whole comparison.

Both the pool and the target (config.selection.target, its split `target_split`) are embedded by one encoder: the
backbone of the pretraining workdir `encoder_workdir`, or, when empty, config.model's random-init encoder (a weak
embedding, there for smoke runs). `method` "nearest" keeps the `fraction` of the pool nearest to the target
(select.py); "random" draws the same number uniformly, the control. The choice is written as a subset file (the
label-subset format of medssl_jax/data/subsets.py, with its sha256), beside a summary:

  <workdir>/selection/<pool>_<split>_<method>_<fraction>_seed<s>.json   the indices to pretrain on
  <workdir>/selection/<same stem>.summary.json                         sizes, scores, class counts of the kept records

Then pretrain on it with `--config.data.train_subset_file=<that file>` (the file is refused if it was made for another
dataset, split or size, or edited). An existing file with other indices is never overwritten.

Mode "sept" compares, at one pretraining budget (config.train), three arms, each a workdir of its own:

  <workdir>/pool/      pretraining on the whole pool; its encoder then embeds pool and target for the selections
  <workdir>/nearest/   pretraining on the `fraction` of the pool nearest to the target
  <workdir>/random/    pretraining on a seeded random draw of the same size
  <workdir>/selection/ the two subset files and their summaries

and evaluates each arm's encoder (beside a random init, eval.compare_random_init) on the target dataset's
`target_split` / `target_test_split` with config.eval's protocol: <arm>/probe_results.{json,md}, which
medssl_jax/tables/collect.py gathers over seeds. A rerun resumes or skips the finished pretrainings, rewrites the same
subset files and evaluates again.
"""
from __future__ import annotations

import json
import time

import ml_collections
import numpy as np

from medssl_jax import config as config_lib
from medssl_jax import paths
from medssl_jax.data import pipeline
from medssl_jax.data import subsets
from medssl_jax.evals import representation
from medssl_jax.projects.selection import select as select_lib
from medssl_jax.protocols import encoders as encoders_lib
from medssl_jax.protocols import probe as probe_lib
from medssl_jax.train import pretrain as pretrain_lib

TARGET_KEYS = ("builder", "builder_config", "data_dir", "manual_dir")


def selection_section() -> ml_collections.ConfigDict:
  """The `selection` section (mode "select_data"): `target` (a dataset reference {builder, builder_config, data_dir,
  manual_dir}) and its `target_split` whose images the pool records should resemble; `encoder_workdir` (a pretraining
  workdir whose backbone embeds both; "" = config.model's random init); `method` ("nearest" or "random") and
  `fraction` of the pool kept; `max_target` (0 = every target image, else the first N)."""
  c = pipeline.ref_section("")
  c.target_split = "train"
  c.encoder_workdir = ""
  c.method = "nearest"
  c.fraction = 0.25
  c.max_target = 0
  c.target_test_split = "test"  # Mode "sept": the target split its evaluation tests on (target_split trains it).
  return c


config_lib.register_section("selection", selection_section)


def check(config):
  s = config.selection
  if config.mode not in MODES and not s.builder:
    return
  if not s.builder:
    raise ValueError(f"config.mode={config.mode!r} needs config.selection.builder: the target dataset whose images the "
                     "pool records should resemble (with builder_config / manual_dir as for config.data)")
  pipeline.check_ref(s, "config.selection")
  config_lib.check_choice(s.method, select_lib.METHODS, "config.selection.method")
  if not isinstance(s.fraction, (int, float)) or not 0 < s.fraction <= 1:
    raise ValueError(f"config.selection.fraction={s.fraction!r} must be in (0, 1]: the share of the pool kept")
  if not isinstance(s.max_target, int) or s.max_target < 0:
    raise ValueError(f"config.selection.max_target={s.max_target!r} must be an int >= 0 (0: every target image)")


def _as_channels(images: np.ndarray, channels: int) -> np.ndarray:
  """Grayscale <-> RGB so one encoder embeds both sets (luma average for RGB -> 1 channel)."""
  have = images.shape[-1]
  if have == channels:
    return images
  if have == 1:
    return np.repeat(images, channels, axis=-1)
  return np.round(images.astype(np.float32).mean(axis=-1, keepdims=True)).astype(images.dtype)


def file_stem(*, dataset: str, split: str, method: str, fraction: float, seed: int) -> str:
  return f"{subsets.safe_name(dataset)}_{subsets.safe_name(split)}_{method}_{fraction * 100:g}pct_seed{seed}"


def select_data(config, workdir: str, *, mesh=None) -> dict:
  s, d = config.selection, config.data
  t0 = time.perf_counter()
  pool_builder = pipeline.open_dataset(d)
  target_builder = pipeline.open_dataset(s, default_data_dir=d.data_dir)
  pool_name = pipeline.dataset_name(pool_builder)
  pool = pipeline.load_split_arrays(pool_builder, split=d.train_split, image_size=d.image_size, fit=d.fit)
  target = pipeline.load_split_arrays(target_builder, split=s.target_split, image_size=d.image_size, fit=d.fit)
  target_images = target["image"][:s.max_target or None]
  if s.encoder_workdir:
    enc_config = encoders_lib.saved_config(s.encoder_workdir)
    model, variables = encoders_lib.load_pretrained(enc_config, s.encoder_workdir)
    encoder = f"the backbone pretrained in {s.encoder_workdir}"
  else:
    enc_config = config
    model, variables = encoders_lib.random_init_variables(config)
    encoder = "a random-init backbone (config.model, seed config.seed)"
  channels = int(enc_config.data.channels)
  embed = lambda images: representation.layer_features(
      model, variables, _as_channels(images, channels), image_size=enc_config.augment.views[0].crop_size,
      mean=tuple(enc_config.data.mean), std=tuple(enc_config.data.std), layers=["backbone"],
      batch_size=config.eval.batch_size, mesh=mesh)["backbone"]
  print(f"selection: embedding {len(pool['image'])} pool records of {pool_name} '{d.train_split}' and "
        f"{len(target_images)} target records of {pipeline.dataset_name(target_builder)} '{s.target_split}' with "
        f"{encoder}", flush=True)
  n = len(pool["image"])
  pool_features, target_features = embed(pool["image"]), embed(target_images)
  scores = select_lib.nearest_similarity(pool_features, target_features)
  ranks = select_lib.best_rank(pool_features, target_features) if s.method == "nearest" else None
  indices = select_lib.select(method=s.method, fraction=s.fraction, seed=config.seed, num_pool=n, scores=scores,
                              ranks=ranks)
  stem = file_stem(dataset=pool_name, split=d.train_split, method=s.method, fraction=s.fraction, seed=config.seed)
  out_dir = paths.join(workdir, "selection")
  path = paths.join(out_dir, stem + ".json")
  labels = pool["label"] if np.ndim(pool["label"]) == 1 else None
  record = subsets.write(path, indices=indices, spec=f"{s.method} {s.fraction:g}", seed=config.seed,
                         dataset=pool_name, split=d.train_split, num_records=n, labels=labels)
  kept = np.zeros(n, bool)
  kept[indices] = True
  names = pipeline.class_names(pool_builder) if labels is not None else []
  by_class = {names[int(k)] if int(k) < len(names) else k: v for k, v in (record.get("class_counts") or {}).items()}
  summary = dict(pool=pool_name, split=d.train_split, target=pipeline.dataset_name(target_builder),
                 target_split=s.target_split, num_target=int(len(target_images)), encoder=encoder, method=s.method,
                 fraction=float(s.fraction), seed=int(config.seed), num_pool=n, num_selected=int(kept.sum()),
                 sha256=record["sha256"], subset_file=path, selected_by_class=by_class,
                 similarity_to_target=dict(selected_mean=float(scores[kept].mean()),
                                           rest_mean=float(scores[~kept].mean()) if (~kept).any() else None,
                                           pool_mean=float(scores.mean())),
                 wall_clock_s=round(time.perf_counter() - t0, 1))
  paths.write_text(paths.join(out_dir, stem + ".summary.json"), json.dumps(summary, indent=1))
  sim = summary["similarity_to_target"]
  print(f"selection: kept {summary['num_selected']} of {n} ({s.method}); similarity to the target: kept "
        f"{sim['selected_mean']:.3f}, pool {sim['pool_mean']:.3f}; by class {by_class}; wrote {path} (sha256 {record['sha256'][:12]}). "
        f"Pretrain on it with --config.data.train_subset_file={path}", flush=True)
  return summary


ARMS = ("pool", "nearest", "random")


def _with(config, **dotted):
  c = config.copy_and_resolve_references()
  with c.unlocked():
    for key, value in dotted.items():
      section, leaf = key.split("__")
      c[section][leaf] = value
  return c


def target_config(config):
  """config with the selection target as its data (same image size, channels and normalisation): what "sept"
  evaluates each arm on."""
  s = config.selection
  return _with(config, data__builder=s.builder, data__builder_config=s.builder_config, data__data_dir=s.data_dir,
               data__manual_dir=s.manual_dir, data__train_split=s.target_split, data__test_split=s.target_test_split,
               data__train_subset_file="")


def sept(config, workdir: str, *, mesh=None) -> dict:
  pool_builder = pipeline.open_dataset(config.data)
  objective = config.objective.name
  trained = {}
  pool_dir = paths.join(workdir, "pool")
  trained["pool"] = pretrain_lib.pretrain(config, pool_dir, builder=pool_builder, mesh=mesh)
  summaries = {}
  for method in ("nearest", "random"):
    summaries[method] = select_data(_with(config, selection__method=method, selection__encoder_workdir=pool_dir),
                                    workdir, mesh=mesh)
    trained[method] = pretrain_lib.pretrain(_with(config, data__train_subset_file=summaries[method]["subset_file"]),
                                            paths.join(workdir, method), builder=pool_builder, mesh=mesh)
  tconfig = target_config(config)
  target_builder = pipeline.open_dataset(tconfig.data)
  results = {}
  for arm in ARMS:
    model, state = trained[arm]
    encoders = probe_lib.compare_random_init(tconfig, {f"{objective} ({arm})": (model, state.variables, False)})
    results[arm] = probe_lib.probe_and_write(tconfig, encoders, builder=target_builder,
                                             workdir=paths.join(workdir, arm), mesh=mesh)
  arms = " ".join(f'--arm="{arm}={paths.join(workdir, arm)}"' for arm in ARMS)
  print(f"sept: the three arms are evaluated; over seeds: python -m medssl_jax.tables.collect {arms} (one workdir per "
        "seed after each '=', comma-separated)", flush=True)
  return dict(results=results, selections=summaries)


MODES = {"select_data": select_data, "sept": sept}
PRETRAINING_MODES = ("sept",)  # Its arms pretrain (the dry run steps the objective's pretraining for it).
