"""Curricular self-supervised pretraining: a sequence of pretext stages of increasing difficulty
(de Andres Tame et al. 2023), each starting from the previous stage's final params and batch_stats.

Layout of a curriculum workdir:
  config.json              the curriculum config (a changed curriculum is refused, naming the key)
  stages/<k>_<name>/       stage k's own pretraining workdir (config.json, checkpoints/, metrics.jsonl):
                           config + the stage's overrides, train.num_steps = the stage's, curriculum.stages = ()
  checkpoints/<total>/     the final variables (last stage's params and batch_stats) in a TrainState of the
                           curriculum config itself (fresh optimizer / objective state), so modes linear_eval,
                           transfer and analyze on <workdir> load it as any pretrained encoder
  probe_results.*          mode "curriculum": the usual probe of the final encoder (and random init)

A copy rather than "the last stage's directory is the workdir": the workdir's config.json then stays the
config the user runs (base augmentation, total steps), which is what later modes are called with.
Stage k resumes its own checkpoint when it has one; a finished stage is skipped on rerun.
"""
from __future__ import annotations

import time
from typing import Mapping

import jax
import ml_collections

from medssl_jax import config as config_lib
from medssl_jax import paths
from medssl_jax.augment import views as views_lib
from medssl_jax.data import pipeline
from medssl_jax.protocols import encoders as encoders_lib
from medssl_jax.protocols import probe as probe_lib
from medssl_jax.train import checkpoint as ckpt_lib
from medssl_jax.train import pretrain as pretrain_lib
from medssl_jax.train import reporting

STAGE_KEYS = ("name", "num_steps", "overrides")
# What a stage may change: the pretext task (views, objective settings) and the optimizer's pace. The model
# and data stay fixed, so parameters carry over from stage to stage.
ALLOWED_OVERRIDES = ("augment.", "objective.", "train.base_learning_rate", "train.warmup_steps",
                     "train.weight_decay")


def curriculum_section() -> ml_collections.ConfigDict:
  """The `curriculum` section (mode "curriculum"; de Andres Tame et al. 2023): pretext stages of rising difficulty,
  each starting from the previous one's final params and batch_stats (fresh optimizer and objective state).
  `stages`: a tuple of dicts {"name": str, "num_steps": int, "overrides": {dotted key: value}}; overrides may set
  augment.*, objective.* (same parameter shapes), train.base_learning_rate, warmup_steps, weight_decay. Stage k
  runs in <workdir>/stages/<k>_<name>/; the final variables go to <workdir>/checkpoints."""
  c = ml_collections.ConfigDict()
  c.stages = ()
  return c


config_lib.register_section("curriculum", curriculum_section)


def _allowed(key: str) -> bool:
  return any(key.startswith(p) if p.endswith(".") else key == p for p in ALLOWED_OVERRIDES)


def _schema_has(key: str) -> bool:
  node = config_lib.base_config()
  for part in key.split("."):
    if not hasattr(node, "keys") or part not in node:
      return False
    node = node[part]
  return True


def check_stages(config):
  """Checks config.curriculum.stages (dict keys, names, step counts, override keys and each stage's
  config); mode "curriculum" needs at least one stage. Raises a ValueError naming what is wrong."""
  stages = config.curriculum.stages
  if isinstance(stages, (str, Mapping)) or not isinstance(stages, (tuple, list)):
    raise ValueError(f"config.curriculum.stages must be a tuple of dicts {list(STAGE_KEYS)}, got {stages!r}")
  if config.mode == "curriculum" and not stages:
    raise ValueError("config.mode='curriculum' needs config.curriculum.stages (a tuple of dicts "
                     "{'name', 'num_steps', 'overrides'})")
  names = []
  for i, s in enumerate(stages):
    where = f"config.curriculum.stages[{i}]"
    if not isinstance(s, Mapping) or sorted(set(s) - set(STAGE_KEYS)) or "name" not in s or "num_steps" not in s:
      raise ValueError(f"{where} must be a dict with keys {list(STAGE_KEYS)} ('overrides' optional), got {s!r}")
    name = s["name"]
    if not isinstance(name, str) or not name or not name.replace("_", "").replace("-", "").isalnum():
      raise ValueError(f"{where}.name={name!r} must be letters, digits, '-' or '_' (a folder name)")
    names.append(name)
    n = s["num_steps"]
    if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
      raise ValueError(f"{where}.num_steps must be a positive integer, got {n!r}")
    overrides = s.get("overrides", {})
    if not isinstance(overrides, Mapping):
      raise ValueError(f"{where}.overrides must be a dict {{dotted config key: value}}, got {overrides!r}")
    for key in overrides:
      if isinstance(key, str):
        config_lib.check_renamed(key, f"{where}.overrides")
      if not isinstance(key, str) or not _allowed(key):
        raise ValueError(f"{where}.overrides: key {key!r} may not change between stages; allowed: "
                         f"{list(ALLOWED_OVERRIDES)} (the model and data stay fixed so parameters carry over)")
      if not _schema_has(key):
        raise ValueError(f"{where}.overrides: unknown config key {key!r}")
  if len(set(names)) != len(names):
    raise ValueError(f"config.curriculum.stages: names must be distinct, got {names}")
  for i in range(len(stages)):
    try:
      config_lib.validate(stage_config(config, i))
    except ValueError as e:
      raise ValueError(f"config.curriculum.stages[{i}] ({names[i]!r}): {e}") from None


def stage_config(config, index: int):
  """Stage `index`'s pretraining config: config + its overrides, train.num_steps = the stage's, mode
  "pretrain", curriculum.stages = () (so its workdir is a plain pretraining workdir)."""
  stage = config.curriculum.stages[index]
  cfg = config.copy_and_resolve_references()
  with cfg.unlocked():
    for key, value in dict(stage.get("overrides", {})).items():
      *path, leaf = key.split(".")
      node = cfg
      for p in path:
        node = node[p]
      if key == "augment.views":  # Attribute access (views[0].crop_size) needs ConfigDicts.
        value = [views_lib.default_view(**dict(v)) for v in value]
      try:
        node[leaf] = value
      except (TypeError, ValueError) as e:
        raise ValueError(f"config.curriculum.stages[{index}].overrides[{key!r}]={value!r}: {e}") from None
    cfg.train.num_steps = int(stage["num_steps"])
    cfg.mode = "pretrain"
    cfg.curriculum.stages = ()
  return cfg


def stage_dir(workdir: str, index: int, name: str) -> str:
  return paths.join(workdir, "stages", f"{index}_{name}")


def _shapes(config):
  """{"params", "batch_stats"} shapes of config's model and heads (abstract: nothing is computed)."""
  model = pretrain_lib.build(config)[0]
  shape = (2, *pretrain_lib.input_shape(config))
  v = jax.eval_shape(lambda k: model.init({"params": k, "mask": k}, jax.numpy.zeros(shape), train=False),
                     jax.random.key(0))
  return jax.tree.map(lambda x: tuple(x.shape), {c: v.get(c, {}) for c in ("params", "batch_stats")})


def check_architecture(config):
  """Refuses stages whose parameter tree differs from the base config's (e.g. an objective.name with
  other heads): parameters could not carry over. Raises a ValueError naming the stage and the first leaf."""
  base = _shapes(config)
  flat = lambda t: {jax.tree_util.keystr(p): s for p, s in
                    jax.tree_util.tree_flatten_with_path(t, is_leaf=lambda x: isinstance(x, tuple))[0]}
  base_flat = flat(base)
  for i, s in enumerate(config.curriculum.stages):
    got = flat(_shapes(stage_config(config, i)))
    if got != base_flat:
      bad = sorted(k for k in set(got) | set(base_flat) if got.get(k) != base_flat.get(k))
      raise ValueError(f"config.curriculum.stages[{i}] ({s['name']!r}) changes the model architecture: "
                       f"{bad[0]} is {got.get(bad[0], 'absent')} there, {base_flat.get(bad[0], 'absent')} in the "
                       f"base config ({len(bad)} differing leaves; e.g. objective.name "
                       f"{stage_config(config, i).objective.name!r} vs {config.objective.name!r}); stages must "
                       "keep the parameter shapes")


def _latest_step(workdir: str, keep: int):
  if not paths.isdir(paths.join(workdir, "checkpoints")):
    return None
  manager = ckpt_lib.make_manager(workdir, keep=keep)
  step = manager.latest_step()
  manager.close()
  return step


def _save_final(config, workdir: str, variables, step: int):
  """The final variables as a TrainState of `config` in <workdir>/checkpoints/<step>/."""
  model, _, tx, _ = pretrain_lib.build(config)
  state = pretrain_lib.init_train_state(config, model, tx, jax.random.key(config.seed))
  state = pretrain_lib.with_variables(state, variables, tx)
  manager = ckpt_lib.make_manager(workdir, keep=config.train.keep_checkpoints)
  ckpt_lib.save(manager, step, state)
  manager.wait_until_finished()
  manager.close()


def run_curriculum(config, workdir: str, *, builder=None, mesh=None):
  """Runs (or resumes) the stages of config.curriculum.stages in order, then saves the final variables
  as <workdir>'s own checkpoint. With config.mode == "curriculum", then probes the final encoder (and a
  random one when eval.compare_random_init) like mode pretrain_and_probe and returns the results
  {encoder: metrics}; otherwise returns {}."""
  check_stages(config)
  stages = config.curriculum.stages
  if not stages:
    raise ValueError("config.curriculum.stages is empty: nothing to run")
  workdir = paths.absolute(workdir)  # A URL (gs://...) stays as it is.
  check_architecture(config)
  cfgs = [stage_config(config, i) for i in range(len(stages))]
  dirs = [stage_dir(workdir, i, s["name"]) for i, s in enumerate(stages)]
  # Stage workdirs first: a changed stage is refused naming its exact key (e.g. augment.views).
  for cfg, d in zip(cfgs, dirs):
    ckpt_lib.save_or_check_config(cfg, d)
  ckpt_lib.save_or_check_config(config, workdir)
  total = sum(int(s["num_steps"]) for s in stages)
  keep = config.train.keep_checkpoints
  final = _latest_step(workdir, keep)
  if final is not None and final >= total:
    print(f"curriculum: all {len(stages)} stages done; final checkpoint {workdir}/checkpoints/{final}", flush=True)
  else:
    variables, model = None, None
    for i, (s, cfg, d) in enumerate(zip(stages, cfgs, dirs)):
      head = f"curriculum stage {i + 1}/{len(stages)} {s['name']!r} ({s['num_steps']} steps, {d})"
      done = _latest_step(d, keep)
      if done is not None and done >= cfg.train.num_steps and i + 1 < len(stages):
        next_done = _latest_step(dirs[i + 1], keep)
        if next_done is not None:  # The next stage has its own checkpoint: this one's weights are not needed.
          print(f"{head}: done, skipped", flush=True)
          continue
      if done is not None and done >= cfg.train.num_steps:
        print(f"{head}: done, loading its final variables", flush=True)
      else:
        source = "random init" if variables is None and i == 0 else f"stage {i}'s final variables"
        if done is not None:
          source = f"its checkpoint at step {done}"
        print(f"{head}: starting from {source}", flush=True)
      if variables is None and i > 0 and done is None:
        # Stage i-1 was skipped (e.g. a later stage was deleted): its variables are needed after all.
        _, prev = pretrain_lib.pretrain(cfgs[i - 1], dirs[i - 1], builder=builder, mesh=mesh)
        variables = prev.variables
      t0 = time.perf_counter()
      model, state = pretrain_lib.pretrain(cfg, d, builder=builder, mesh=mesh, init_variables=variables)
      variables = state.variables
      print(f"{head}: finished in {reporting.format_duration(time.perf_counter() - t0)}", flush=True)
    _save_final(config, workdir, variables, total)
    print(f"curriculum: {len(stages)} stages, {total} steps; final checkpoint {workdir}/checkpoints/{total}",
          flush=True)
  if config.mode != "curriculum":
    return {}
  if builder is None:
    builder = pipeline.open_dataset(config.data)
  model, variables = encoders_lib.load_pretrained(config, workdir)
  encoders = probe_lib.compare_random_init(config, {f"{config.objective.name} (curriculum)": (model, variables, False)})
  return probe_lib.probe_and_write(config, encoders, builder=builder, workdir=workdir, mesh=mesh)


def curriculum(config, workdir: str, *, mesh=None) -> dict:
  return run_curriculum(config, workdir, builder=pipeline.open_dataset(config.data), mesh=mesh)


check = check_stages
MODES = {"curriculum": curriculum}
PRETRAINING_MODES = ("curriculum",)
