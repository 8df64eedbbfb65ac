"""mode "transfer": a pretrained encoder evaluated on other datasets' classification targets (section `transfer`),
each with config.eval's protocol. Results in <workdir>/transfer/<name>/; finished work is read back, not recomputed.
"""
from __future__ import annotations

import ml_collections

from medssl_jax import config as config_lib
from medssl_jax import paths
from medssl_jax.augment import views as views_lib
from medssl_jax.data import pipeline
from medssl_jax.protocols import encoders as encoders_lib
from medssl_jax.protocols import probe as probe_lib

# A target: a dataset reference plus these keys.
TARGET_KEYS = ("name", "train_split", "val_split", "test_split", "image_size", "fit", "ordinal")


def transfer_section() -> ml_collections.ConfigDict:
  """The `transfer` section (mode "transfer"): each of `targets` evaluated with config.eval's protocol on the
  pretrained encoder (and random init). `targets`: a tuple of dicts {name, builder, optional builder_config,
  data_dir, manual_dir, train_split, val_split, test_split, image_size, fit, ordinal}; results in
  <workdir>/transfer/<name>/."""
  c = ml_collections.ConfigDict()
  c.targets = ()
  return c


def check(config):
  """The transfer section (classification targets)."""
  targets = config.transfer.targets
  pipeline.check_refs(targets, where="config.transfer.targets", required=("name", "builder"), extra_keys=TARGET_KEYS)
  names = [t["name"] for t in targets]
  for n in names:
    if not isinstance(n, str) or not n.replace("_", "").replace("-", "").isalnum():
      raise ValueError(f"config.transfer.targets: name {n!r} must be letters, digits, '-' or '_' (a folder name)")
  if len(set(names)) != len(names):
    raise ValueError(f"config.transfer.targets: names must be distinct, got {names}")
  if config.mode == "transfer" and not targets:
    raise ValueError("config.mode='transfer' needs config.transfer.targets (a tuple of dataset dicts)")


config_lib.register_section("transfer", transfer_section)


def _target_config(config, target: dict):
  """A copy of config whose data section (and probe input size) is one transfer target's."""
  cfg = config.copy_and_resolve_references()
  defaults = config_lib.base_config().data
  with cfg.unlocked():
    # The target's own dataset: unnamed fields take the schema defaults, not the pretraining data's values.
    for k in pipeline.REF_KEYS + ("train_split", "val_split", "test_split", "fit"):
      cfg.data[k] = target.get(k, defaults[k])
    if target.get("image_size"):
      cfg.data.image_size = int(target["image_size"])
      # The probe encodes images at views[0]'s size.
      cfg.augment.views = [views_lib.default_view(**dict(v, crop_size=int(target["image_size"])))
                           for v in cfg.augment.views]
    if "ordinal" in target:
      cfg.eval.ordinal = bool(target["ordinal"])
  return cfg


def transfer(config, workdir: str, *, mesh=None) -> dict:
  """mode "transfer": each of config.transfer.targets evaluated with config.eval's protocol on the pretrained
  encoder of `workdir` (and a random one when eval.compare_random_init, the imported one when
  model.init_checkpoint is set, and any registered encoder the workdir holds, e.g. SWCL's pseudo-labeller). Results per
  target in <workdir>/transfer/<name>/; encoders already evaluated there are read back, not recomputed.
  Returns {target name: {encoder: metrics}}."""
  names = ["pretrained"] + (["random"] if config.eval.compare_random_init else [])
  if config.model.init_checkpoint:
    names.append("init_checkpoint")
  names += encoders_lib.present(workdir)  # E.g. an SWCL workdir's pseudo-labeller.
  encoders = None
  out = {}
  for target in config.transfer.targets:
    cfg = _target_config(config, target)
    tdir = paths.join(workdir, "transfer", target["name"])
    path = paths.join(tdir, probe_lib.results_name(cfg) + ".json")
    done = paths.read_json(path, missing={})
    encoders = encoders or encoders_lib.transfer_encoders(config, workdir, names)
    todo = {k: v for k, v in encoders.items() if k not in done}
    if not todo:
      out[target["name"]] = done
      print(f"transfer [{target['name']}]: results already in {path}", flush=True)
      continue
    paths.makedirs(tdir)
    builder = pipeline.open_dataset(cfg.data)
    print(f"transfer [{target['name']}]: {pipeline.dataset_name(builder)}, {cfg.eval.protocol}: {', '.join(todo)}",
          flush=True)
    results = dict(done, **probe_lib.probe(cfg, todo, builder=builder, mesh=mesh, workdir=tdir))
    table = probe_lib.format_table(results, config=cfg)
    print("\n" + table + "\n", flush=True)
    probe_lib.write_results(tdir, results, table, probe_lib.results_name(cfg), step=cfg.train.num_steps)
    out[target["name"]] = results
  return out


MODES = {"transfer": transfer}
