"""Dry run: a config's training and evaluation steps at full size on stand-in data, with no dataset.

  python -m medssl_jax.dry_run --config=cxr_clip                       # one experiment config
  python -m medssl_jax.dry_run --table=table_medmnist_ssl              # every distinct step of a table's rows
  python -m medssl_jax.dry_run --config=fundus_swcl --devices=8 --steps=0   # 8 accelerators: memory per device

For each step the config's run compiles (the pretraining step of its objective, the frozen-encoder feature pass
of the linear / kNN probes, the fine-tuning step), this builds the real model, objective, optimizer and augmentation
at the config's encoder, image size, views and batch, feeds random images (and labels, reports, SWCL weak labels)
of the shapes its dataset would give, and prints the parameter count, compile time, the time of a few steps and
XLA's estimate of the memory one device needs. The dataset's shapes come from its builder's feature spec: nothing
is downloaded or built.

Batches: each step runs at its config's global batch divided by --devices (the per-device batch of a real run on
that many accelerators, where parameters are replicated and the batch is split); --per_device_batch sets it
directly (e.g. 2, to run a paper-scale config on a CPU). --steps=0 compiles without running: the memory estimate
of a batch too large for this machine, at no cost but compile time. The estimate is XLA's for this machine's
backend (arguments + outputs - donated + temporaries); an accelerator's compiler lays memory out differently, so
run it there for that device's own figure.
"""
from __future__ import annotations

import json
import statistics
import tempfile
import time

from absl import app
from absl import flags
from absl import logging

import medssl_jax  # noqa: F401  pylint: disable=unused-import  First: sets the XLA:CPU flags before jax starts (medssl_jax/xla_cpu.py).
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from medssl_jax import config as config_lib  # noqa: E402
from medssl_jax import errors  # noqa: E402
from medssl_jax import experiment  # noqa: E402
from medssl_jax import models  # noqa: E402
from medssl_jax import objectives  # noqa: E402
from medssl_jax import paths  # noqa: E402
from medssl_jax.evals import finetune as finetune_lib  # noqa: E402
from medssl_jax.evals import linear_probe  # noqa: E402
from medssl_jax.tables import runner  # noqa: E402
from medssl_jax.train import dry_parts  # noqa: E402
from medssl_jax.train import mesh as mesh_lib  # noqa: E402
from medssl_jax.train import pretrain as pretrain_lib  # noqa: E402
from medssl_jax.train import state as state_lib  # noqa: E402
from medssl_jax.train import step as step_lib  # noqa: E402

# Modes whose run trains config.objective with train/pretrain.py (the others evaluate or fine-tune only).
FEATURE_PROTOCOLS = ("linear_probe", "knn", "fewshot")
GIB = 2.0 ** 30


def _image_shape(config) -> tuple:
  """One stored example's shape: [S, S, C] images, or [S, S, S, C] volumes for a 3D encoder."""
  size, channels = int(config.data.image_size), int(config.data.channels)
  return (size,) * (3 if models.takes_volumes(config) else 2) + (channels,)


def _stand_in_batch(config, info, batch: int, *, extra_keys=(), text: bool = False, seed: int = 0) -> dict:
  """Random numpy arrays of the shapes a training batch of `config`'s dataset has (pipeline.make_train_iterator)."""
  rng = np.random.default_rng(seed)
  out = {"image": rng.integers(0, 256, (batch, *_image_shape(config)), dtype=np.uint8),
         "id": np.arange(batch, dtype=np.int32)}
  out["label"] = dry_parts.stand_in_labels(info, batch, rng)
  for key in extra_keys:
    shape, dtype = info["features"][key]
    dtype = np.dtype(dtype)
    values = rng.random((batch, *shape)) if dtype.kind == "f" else rng.integers(0, 4, (batch, *shape))
    out[key] = values.astype(dtype)
  if config_lib.foreground_spec(config):  # Background augmentation's masks: half the pixels inside.
    out["foreground"] = (rng.random(out["image"].shape[:-1] + (1,)) < 0.5).astype(np.uint8)
  if text:
    t = config.text
    out["text_ids"] = rng.integers(1, t.vocab_size, (batch, t.max_length)).astype(np.int32)
    out["text_mask"] = np.ones((batch, t.max_length), bool)
  return out


def dataset_info(config) -> dict:
  """Shapes of config.data's dataset (dry_parts.dataset_info)."""
  return dry_parts.dataset_info(config.data)


def _pretraining_config(config):
  """The config the run's pretraining stage sees: each module's `resolve` applied as for mode "pretrain"
  (SWCL's stage-3 patch dataset named from its settings)."""
  cfg = config.copy_and_resolve_references()
  with cfg.unlocked():
    cfg.mode = "pretrain"
  for module in experiment.MODULES:
    if hasattr(module, "resolve"):
      cfg = module.resolve(cfg, tempfile.gettempdir())
  return cfg


def _views(config) -> str:
  sizes = [int(v.crop_size) for v in config.augment.views]
  groups = {s: sizes.count(s) for s in dict.fromkeys(sizes)}
  return " + ".join(f"{n}x{s}px" for s, n in groups.items())


def _encoder(config) -> str:
  m = config.model
  return m.encoder if m.encoder.startswith("vit") else f"{m.encoder} x{m.width_multiplier:g}"


def parts_of(config) -> list[dry_parts.Part]:
  """The steps `config`'s run compiles, each as a Part."""
  parts = []
  info_cache = {}

  def info_of(cfg):
    ref = json.dumps(cfg.data.to_dict(), sort_keys=True, default=str)
    if ref not in info_cache:
      info_cache[ref] = dataset_info(cfg)
    return info_cache[ref]

  if config.mode in experiment.PRETRAINING_MODES:
    pcfg = _pretraining_config(config)
    describe = (f"{pcfg.objective.name} on {_encoder(pcfg)}, views {_views(pcfg)}, "
                f"data {pcfg.data.builder}:{pcfg.data.builder_config or 'default'} at {pcfg.data.image_size}px")
    parts.append(dry_parts.Part("pretrain", describe, int(pcfg.train.batch_size),
                      dry_parts.sections_key("pretrain", pcfg, "model", "objective", "augment", "text", "data.image_size",
                                    "data.channels", "train.optimizer", "train.batch_size"),
                      lambda b, cfg=pcfg: _pretrain_part(cfg, info_of(cfg), b)))
  # Modes that never run config.eval.protocol (segmentation trains its own U-Net: its Part comes from its mode).
  evaluating = config.mode not in ("pretrain", "features", "patches", "pseudo_label", "propagate", "segmentation")
  if evaluating and config.mode != "supervised" and config.eval.protocol in FEATURE_PROTOCOLS:
    parts.append(dry_parts.Part("features", f"frozen {_encoder(config)} at {config.data.image_size}px (linear / kNN probe)",
                      int(config.eval.batch_size),
                      dry_parts.sections_key("features", config, "model", "objective.name", "data.image_size", "data.channels",
                                    "eval.batch_size"),
                      lambda b, cfg=config: _features_part(cfg, None, b)))
  if config.mode == "supervised" or (evaluating and config.eval.protocol == "finetune"):
    e = config.eval
    parts.append(dry_parts.Part("finetune", f"fine-tune {_encoder(config)} + head at {config.data.image_size}px"
                      + ("" if e.finetune_augment else ", no augmentation"), int(e.finetune_batch_size),
                      dry_parts.sections_key("finetune", config, "model", "objective.name", "data.builder", "data.builder_config",
                                    "data.image_size", "data.channels", "eval.finetune_augment",
                                    "eval.finetune_backbone_lr_scale", "eval.finetune_batch_size"),
                      lambda b, cfg=config: _finetune_part(cfg, info_of(cfg), b)))
  return parts + experiment.dry_run_parts(config)  # The steps only a mode or project knows (U-Net, SWCL stage 1).


def _pretrain_part(config, info, batch: int):
  """(parameter count, lowered train step, run(compiled, steps) -> step seconds) of the pretraining step."""
  mesh = dry_parts.one_device_mesh()
  model, objective, tx, schedule = pretrain_lib.build(config)
  extra = tuple(objective.batch_keys(config)) if objective.batch_keys else ()
  missing = [k for k in extra if k not in info["features"]]
  if missing:
    raise ValueError(f"objective {objective.name!r} reads dataset features {missing}, which dataset {info['name']!r} "
                     f"(config.data.builder) does not have; its features are {sorted(info['features'])}")
  init = lambda: pretrain_lib.init_train_state(config, model, tx, jax.random.key(config.seed))
  state_shape = jax.eval_shape(init)
  stand_in = _stand_in_batch(config, info, batch, extra_keys=extra, text=objective.text)
  rep, shard = mesh_lib.replicated(mesh), mesh_lib.data_sharding(mesh)
  abstract_state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep), state_shape)
  abstract_batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=shard) for k, v in stand_in.items()}
  key = jax.random.key(1)
  lowered = step_lib.make_train_step(model, objective, tx, schedule, config, mesh).lower(abstract_state,
                                                                                         abstract_batch, key)

  def run(compiled, steps: int) -> list[float]:
    holder = {"state": mesh_lib.replicate(init(), mesh)}
    data = mesh_lib.shard_batch(stand_in, mesh)

    def call():
      holder["state"], metrics = compiled(holder["state"], data, key)  # The step donates its state.
      return holder["state"], metrics

    return dry_parts.timed(steps, call)

  return state_lib.num_params(state_shape.params), lowered, run


def _features_part(config, info, batch: int):
  """The same for the probes' frozen-encoder feature pass (evals/linear_probe.embed_fn)."""
  del info
  model = objectives.build_model(config)
  size, shape = int(config.data.image_size), _image_shape(config)
  embed = linear_probe.embed_fn(model, image_size=size, mean=tuple(config.data.mean), std=tuple(config.data.std))
  init = lambda: models.init_variables(model, jax.random.key(0), jnp.zeros((2, *shape)), train=False)
  variables_shape = jax.eval_shape(init)
  images = np.random.default_rng(0).integers(0, 256, (batch, *shape), dtype=np.uint8)
  lowered = embed.lower(variables_shape, jax.ShapeDtypeStruct(images.shape, jnp.uint8))

  def run(compiled, steps: int) -> list[float]:
    variables, x = init(), jnp.asarray(images)
    return dry_parts.timed(steps, lambda: compiled(variables, x))

  return state_lib.num_params(variables_shape["params"]), lowered, run


def _finetune_part(config, info, batch: int):
  """The same for the fine-tuning step (evals/finetune.jitted_steps) of config.eval's settings."""
  e = config.eval
  model = objectives.build_model(config)
  size, shape = int(config.data.image_size), _image_shape(config)
  init_vars = lambda: models.init_variables(model, jax.random.key(0), jnp.zeros((2, *shape)), train=False)
  variables_shape = jax.eval_shape(init_vars)
  bb_shape = variables_shape["params"]["backbone"]
  bs_shape = variables_shape.get("batch_stats", {}).get("backbone", {})
  frozen = float(e.finetune_backbone_lr_scale) == 0
  head_init, train_step, _ = finetune_lib.jitted_steps(
      model.backbone, info["num_classes"], info["multi_label"], size, tuple(config.data.mean), tuple(config.data.std),
      bool(e.finetune_augment), frozen, bool(jax.tree.leaves(bs_shape)))
  stand_in = _stand_in_batch(config, info, batch)
  images, labels = stand_in["image"], stand_in["label"]
  head_args = lambda key, bb, bs: (key, bb, bs, jnp.asarray(images[:1]))
  params_shape, opt_shape = jax.eval_shape(head_init, *head_args(jax.random.key(0), bb_shape, bs_shape))
  scalars = (np.float32(e.finetune_learning_rate), np.float32(e.finetune_weight_decay),
             np.float32(e.finetune_backbone_lr_scale))
  abstract = lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype)
  lowered = train_step.lower(params_shape, bb_shape, bs_shape, opt_shape, abstract(images), abstract(labels),
                             jax.random.key(1), *scalars)

  def run(compiled, steps: int) -> list[float]:
    variables = init_vars()
    bb, bs = variables["params"]["backbone"], variables.get("batch_stats", {}).get("backbone", {})
    params, opt_state = head_init(*head_args(jax.random.key(0), bb, bs))
    x, y = jnp.asarray(images), jnp.asarray(labels)
    holder = {"s": (params, bs, opt_state)}

    def call():
      p, s, o = holder["s"]
      p, s, o, loss = compiled(p, bb, s, o, x, y, jax.random.key(1), *scalars)
      holder["s"] = (p, s, o)
      return loss

    return dry_parts.timed(steps, call)

  return state_lib.num_params(params_shape), lowered, run


def memory_bytes(compiled) -> dict:
  """XLA's memory estimate of a compiled program on one device: {"arguments", "outputs", "aliased", "temporaries",
  "total"} in bytes (total = arguments + outputs - aliased + temporaries); {} where the backend gives none."""
  try:
    m = compiled.memory_analysis()
  except (NotImplementedError, RuntimeError):  # pragma: no cover - backend without an estimate
    m = None
  if m is None:
    return {}
  out = dict(arguments=int(m.argument_size_in_bytes), outputs=int(m.output_size_in_bytes),
             aliased=int(m.alias_size_in_bytes), temporaries=int(m.temp_size_in_bytes))
  out["total"] = out["arguments"] + out["outputs"] - out["aliased"] + out["temporaries"]
  return out


def measure(part: dry_parts.Part, *, devices: int, per_device_batch: int = 0, steps: int = 3) -> dict:
  """Compiles `part` at its per-device batch (the global batch / `devices`, or `per_device_batch`), runs `steps`
  steps on stand-in data, and returns what it measured."""
  if per_device_batch:
    batch = int(per_device_batch)
  else:
    if part.global_batch % devices:
      raise ValueError(f"{part.name}: global batch {part.global_batch} is not divisible by --devices={devices}")
    batch = part.global_batch // devices
  t0 = time.perf_counter()
  params, lowered, run = part.make(batch)
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t0
  times = run(compiled, steps) if steps else []
  for t in times:
    if not np.isfinite(t):  # pragma: no cover
      raise RuntimeError(f"{part.name}: a step took {t} s")
  return dict(part=part.name, what=part.describe, global_batch=part.global_batch, devices=devices,
              per_device_batch=batch, params=int(params), compile_s=round(compile_s, 2), steps=len(times),
              # The first step may allocate and warm caches: the steady step time is the median of the rest.
              step_s=round(statistics.median(times[1:] or times), 4) if times else None,
              memory=memory_bytes(compiled), backend=jax.default_backend())


def _size(n: int) -> str:
  return f"{n / GIB:.2f} GiB" if n >= GIB / 4 else f"{n / 2 ** 20:.1f} MiB"


def _line(r: dict) -> str:
  mem = r["memory"]
  mem_s = (f"{_size(mem['total'])} per device (arguments {_size(mem['arguments'])}, temporaries "
           f"{_size(mem['temporaries'])})" if mem else "no memory estimate on this backend")
  step = f"{r['step_s']:.3f} s/step ({r['steps']} steps)" if r["step_s"] is not None else "not run (--steps=0)"
  batch = (f"global {r['global_batch']} over {r['devices']} device(s)" if r["per_device_batch"] * r["devices"] ==
           r["global_batch"] else f"set by --per_device_batch; the config's global batch is {r['global_batch']}")
  return (f"{r['part']:9s} {r['what']}: per-device batch {r['per_device_batch']} ({batch}) | "
          f"{r['params'] / 1e6:.2f}M parameters | compile {r['compile_s']:.1f} s | "
          f"{step} | {mem_s}")


def dry_run(configs: dict, *, devices: int = 1, per_device_batch: int = 0, steps: int = 3) -> list[dict]:
  """Measures every distinct step of `configs` ({label: config}); prints one line per step as it goes."""
  seen, results, repeats = set(), [], 0
  for label, config in configs.items():
    experiment.validate(config)
    for part in parts_of(config):
      if part.key in seen:  # Rows differing in seeds or label fractions compile the same program.
        repeats += 1
        continue
      seen.add(part.key)
      r = dict(measure(part, devices=devices, per_device_batch=per_device_batch, steps=steps), config=label)
      results.append(r)
      print(f"{label}: {_line(r)}", flush=True)
  if repeats:
    print(f"{len(configs)} configs, {len(results)} distinct steps ({repeats} more are the same programs)", flush=True)
  return results


def table_configs(spec: str, grid=()) -> dict:
  """{row label: config} of a table config's rows, epoch schedules unresolved (no dataset is opened); for a
  segmentation table (tables/segmentation_table.py: a dict of "runs"), {run name: its config}."""
  module, arg = config_lib.load_module(spec)
  table = module.get_table(arg or None) if hasattr(module, "get_table") else None
  if isinstance(table, dict) and "runs" in table:
    return {f"{table['name']}[{name}]": config_lib.load(run) for name, run in table["runs"].items()}
  table = runner.set_axes(runner.load_table(spec), list(grid))
  return {f"{table.name}[{r['slug'].rsplit('-', 1)[0] or 'row'}]": r["config"]
          for r in runner.build_rows(table, open_data=False)}


def format_markdown(results: list[dict]) -> str:
  """A Markdown table of `dry_run` results, one row per distinct step."""
  lines = ["| config | step | what | per-device batch (global / devices) | parameters | XLA memory estimate per device "
           "| compile s | step s |", "|---|---|---|---|---|---|---|---|"]
  for r in results:
    mem = _size(r["memory"]["total"]) if r["memory"] else "—"
    step = f"{r['step_s']:.3f}" if r["step_s"] is not None else "not run"
    lines.append(f"| `{r['config']}` | {r['part']} | {r['what']} | {r['per_device_batch']} ({r['global_batch']} / "
                 f"{r['devices']}) | {r['params'] / 1e6:.1f}M | {mem} | {r['compile_s']:.1f} | {step} |")
  return "\n".join(lines) + "\n"


def _define_flags():
  # Defined only when this module is the command: importing it (tests, other tools) adds no --config flag beside
  # the medssl command's.
  flags.DEFINE_string("config", None, "An experiment config: a path or a shipped config's name[:variant].")
  flags.DEFINE_string("table", None, "A table config (configs/table_*.py[:variant]): every distinct step of its rows.")
  flags.DEFINE_integer("devices", 1, "The accelerators a real run spreads each global batch over: steps compile at "
                       "global batch / devices, the per-device batch.")
  flags.DEFINE_integer("per_device_batch", 0, "Per-device batch of every step (0: global / --devices), e.g. 2 to try "
                       "a paper-scale config on a CPU.")
  flags.DEFINE_integer("steps", 3, "Steps run per compiled step; 0 compiles only (memory estimate and compile time).")
  flags.DEFINE_string("out", None, "Also write the measurements here: a Markdown table (*.md) or JSON.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  f = flags.FLAGS
  if bool(f.config) == bool(f.table):
    errors.fatal("give one of --config=<experiment config> or --table=<table config>")
  if f.devices < 1 or f.per_device_batch < 0 or f.steps < 0:
    errors.fatal(f"--devices={f.devices} must be >= 1, --per_device_batch={f.per_device_batch} and "
                 f"--steps={f.steps} >= 0")
  try:
    if f.config:
      configs = {f.config: config_lib.load(f.config)}
    else:
      configs = table_configs(f.table)
    print(f"dry run on {jax.default_backend()} ({jax.devices()[0].device_kind}): stand-in data, nothing downloaded",
          flush=True)
    results = dry_run(configs, devices=f.devices, per_device_batch=f.per_device_batch, steps=f.steps)
  except errors.USER_ERRORS as e:
    errors.report(e, verbose=flags.FLAGS["verbosity"].present)
  if f.out:
    paths.write_text(f.out, format_markdown(results) if f.out.endswith(".md") else json.dumps(results, indent=1) + "\n")
    print(f"wrote {f.out}", flush=True)


def run():
  """The `medssl-dry-run` console script (the same as `python -m medssl_jax.dry_run`)."""
  _define_flags()
  app.run(main)


if __name__ == "__main__":
  run()
