"""The pretraining loop: data -> sharded step -> metrics/progress -> checkpoints, resumable."""
from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import tensorflow_datasets as tfds

from medssl_jax import config as config_lib
from medssl_jax import models
from medssl_jax import objectives
from medssl_jax import paths
from medssl_jax.data import pipeline
from medssl_jax.data import subsets
from medssl_jax.text import tokenizer as tokenizer_lib
from medssl_jax.train import checkpoint as ckpt_lib
from medssl_jax.train import distributed
from medssl_jax.train import guard as guard_lib
from medssl_jax.train import mesh as mesh_lib
from medssl_jax.train import provenance as provenance_lib
from medssl_jax.train import reporting
from medssl_jax.train import state as state_lib
from medssl_jax.train import step as step_lib


def build(config):
  """Model, objective, optimizer and schedule described by a config."""
  model = objectives.build_model(config)
  objective = objectives.get_objective(config.objective.name)
  tx, schedule = state_lib.make_optimizer(config)
  return model, objective, tx, schedule


def input_shape(config):
  """The encoder's input shape: the first view's crop, [S, S, C] (images) or [S, S, S, C] (volumes)."""
  crop = config.augment.views[0].crop_size
  return (crop,) * (3 if models.takes_volumes(config) else 2) + (config.data.channels,)


def objective_batch_keys(config, objective, builder) -> tuple:
  """The dataset features (besides image/label/id) the objective's loss reads (`Objective.batch_keys`),
  checked against the builder: a ValueError naming the objective, its settings and the dataset's
  features when one is missing, raised before any training work."""
  if objective.batch_keys is None:
    return ()
  keys = tuple(objective.batch_keys(config))
  missing = [k for k in keys if k not in builder.info.features]
  if missing:
    name = pipeline.dataset_name(builder)
    setting = (f" with config.objective.swcl.scheme={tuple(config.objective.swcl.scheme)}"
               if objective.name == "swcl" else "")
    raise ValueError(f"objective {objective.name!r}{setting} needs dataset features {list(keys)}, but dataset "
                     f"{name!r} (config.data.builder) lacks {missing}; its features are "
                     f"{sorted(builder.info.features.keys())}")
  return keys


def report_tokenizer(config, builder, workdir: str):
  """The WordPiece tokenizer of an image-text run: <workdir>/tokenizer.json when it exists (a resumed run, or
  evaluation); else config.text.vocab_file (a BERT vocab.txt or a tokenizer.json) when set, or one trained on every
  config.text.key text of data.train_split, saved there first."""
  key = config.text.key
  features = builder.info.features
  if key not in features or not isinstance(features[key], tfds.features.Text):
    raise ValueError(f"objective {config.objective.name!r} reads report text from config.text.key={key!r}, which is "
                     f"not a Text feature of dataset {builder.name!r}; its features are {sorted(features.keys())}")
  path = paths.join(workdir, "tokenizer.json")
  if jax.process_count() > 1 and not paths.exists(path):
    if distributed.is_primary():  # Process 0 trains and writes it; the others read that file.
      report_tokenizer(config, builder, workdir)
    distributed.barrier("tokenizer.json written")
  if paths.exists(path):
    tok = tokenizer_lib.Tokenizer.load(path)
  else:
    if config.text.vocab_file:
      tok = tokenizer_lib.Tokenizer.load(config.text.vocab_file)
      made = f"from {config.text.vocab_file}"
    else:
      texts = [pipeline.as_text(v) for v in pipeline.read_column(builder, split=config.data.train_split, key=key)]
      tok = tokenizer_lib.train_tokenizer(texts, vocab_size=config.text.vocab_size,
                                          min_frequency=config.text.min_frequency)
      made = f"from {len(texts)} '{config.data.train_split}' {key!r} texts"
    paths.makedirs(workdir)
    paths.write_text(path, tok.to_json())  # Atomic: never a half-written tokenizer beside a checkpoint.
    print(f"tokenizer: {tok.vocab_size} WordPiece tokens {made} -> {path}", flush=True)
  if tok.vocab_size > config.text.vocab_size:
    raise ValueError(f"{path} has {tok.vocab_size} tokens but config.text.vocab_size={config.text.vocab_size} "
                     "(the text tower's embedding table); use a workdir made with this config")
  return tok


def text_input(config, builder, workdir: str):
  """(text feature, encode) for make_train_iterator(text=...) when the objective reads reports, else None."""
  if not objectives.get_objective(config.objective.name).text:
    return None
  tok = report_tokenizer(config, builder, workdir)
  encode = functools.partial(tok.encode, max_length=config.text.max_length)
  if config.text.sample_sentences:
    return config.text.key, encode, config.seed
  return config.text.key, encode


def init_train_state(config, model, tx, key):
  """The initial TrainState for a config, with its objective's state (teacher, queue, centre)."""
  return state_lib.init_state(model, tx, key=key, image_shape=input_shape(config),
                              objective=objectives.get_objective(config.objective.name), config=config)


def with_variables(state, variables, tx):
  """`state` restarted from `variables` ({"params", "batch_stats"}): fresh optimizer state, an EMA teacher
  (if any) as a copy of the params, the rest of the objective state as initialised. A ValueError names the
  first leaf whose path or shape differs (a different architecture)."""
  for col in ("params", "batch_stats"):
    want = jax.tree_util.tree_flatten_with_path(getattr(state, col))[0]
    got = jax.tree_util.tree_flatten_with_path(variables.get(col, {}))[0]
    want_s = {jax.tree_util.keystr(p): tuple(x.shape) for p, x in want}
    got_s = {jax.tree_util.keystr(p): tuple(jnp.shape(x)) for p, x in got}
    if want_s != got_s:
      bad = sorted(k for k in set(want_s) | set(got_s) if want_s.get(k) != got_s.get(k))
      k = bad[0]
      raise ValueError(f"init_variables do not fit this model: {col}{k} is {got_s.get(k, 'missing')} there but "
                       f"{want_s.get(k, 'absent')} in the model ({len(bad)} differing leaves); the architecture "
                       "(config.model.*, heads of config.objective.name) must stay the same")
  # Own buffers (the step donates its input), in the model's dtypes.
  params = jax.tree.map(lambda x, ref: jnp.array(x, dtype=ref.dtype), variables["params"], state.params)
  batch_stats = jax.tree.map(lambda x, ref: jnp.array(x, dtype=ref.dtype), variables.get("batch_stats", {}),
                             state.batch_stats)
  objective_state = dict(state.objective_state)
  if "teacher" in objective_state:
    objective_state["teacher"] = jax.tree.map(jnp.copy, params)
  return state.replace(params=params, batch_stats=batch_stats, opt_state=tx.init(params),
                       objective_state=objective_state)


def pretrain(config, workdir: str, *, builder=None, mesh=None, indices=None, init_variables=None):
  """Runs (or resumes) pretraining in `workdir`; returns (model, final TrainState on host).

  A finished run is not repeated: rerunning the command restores the last checkpoint and returns.
  `indices`: optional record indices of data.train_split to pretrain on (e.g. without a held-out class).
  `init_variables`: optional {"params", "batch_stats"} to start from instead of the random init (a
  curriculum stage continuing the previous one), with a fresh optimizer and objective state (an EMA
  teacher starts as a copy of them). Used only when `workdir` has no checkpoint yet.
  """
  mesh = mesh or mesh_lib.make_mesh()
  t = config.train
  n_dev = mesh.devices.size
  if t.batch_size % n_dev:
    raise ValueError(f"config.train.batch_size={t.batch_size} must be divisible by the {n_dev} devices")
  ckpt_lib.save_or_check_config(config, workdir)
  builder = builder or pipeline.open_dataset(config.data)
  pipeline.check_channels(builder, config.data.channels)
  if indices is None and config.data.train_subset_file:
    indices = subsets.read(config.data.train_subset_file, dataset=pipeline.dataset_name(builder),
                           split=config.data.train_split,
                           num_records=pipeline.num_examples(builder, config.data.train_split))["indices"]
    print(f"pretraining on {len(indices)} records of {config.data.train_split!r} listed in "
          f"{config.data.train_subset_file}", flush=True)
  model, objective, tx, schedule = build(config)
  extra_keys = objective_batch_keys(config, objective, builder)
  text = text_input(config, builder, workdir)
  key = jax.random.key(config.seed)
  init_key, aug_key = jax.random.split(key)
  state = init_train_state(config, model, tx, init_key)
  if init_variables is not None:
    state = with_variables(state, init_variables, tx)
  parts = ", ".join(f"{state_lib.num_params(v):,} {k}" for k, v in state.params.items())
  m = config.model
  arch = (f"patch {m.patch_size}" if m.encoder.startswith("vit") else f"{m.stem} stem, width x{m.width_multiplier}")
  print(f"model: {m.encoder} ({arch}), "
        f"{config.objective.name}: {parts} parameters; {n_dev} device(s), global batch {t.batch_size}", flush=True)
  state = mesh_lib.replicate(state, mesh)

  manager = ckpt_lib.make_manager(workdir, keep=t.keep_checkpoints)
  it = pipeline.make_train_iterator(builder, split=config.data.train_split, global_batch_size=t.batch_size,
                                    seed=config.seed, image_size=config.data.image_size, fit=config.data.fit,
                                    worker_count=config.data.worker_count, indices=indices, extra_keys=extra_keys, text=text,
                                    foreground=config_lib.foreground_spec(config))
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
  # A finished run needs no data position (and may be read by any number of processes).
  latest = manager.latest_step()
  finished = (latest or 0) >= t.num_steps
  if not finished and latest is not None:
    check_device_count(workdir, latest, n_dev, allow=t.allow_device_change)
  restored = ckpt_lib.restore_latest(manager, abstract, data_iter=not finished)
  start = 0
  acc = reporting.MetricAccumulator()
  if restored is not None:
    start, state, iter_state = restored
    if iter_state is not None:
      it.set_state(pipeline.iterator_state_from_json(iter_state))
    # The metric sums since the last log: the next row averages the same steps as without the interruption.
    acc.load_state_json(ckpt_lib.read_json_item(workdir, start, "metrics"))
    print(f"resumed from {manager.directory}/{start}", flush=True)
  if start >= t.num_steps:
    manager.close()
    return model, jax.device_get(state)

  provenance = provenance_lib.record(config, builder, indices=indices)
  train_step = step_lib.make_train_step(model, objective, tx, schedule, config, mesh)
  writer = reporting.ScalarWriter(workdir, resume_step=start)  # Drops rows logged after the checkpoint.
  progress = reporting.Progress(t.num_steps, start_step=start, images_per_step=t.batch_size)
  guard = guard_lib.Guard(threshold=t.collapse_threshold, patience=t.collapse_patience, start_step=t.warmup_steps,
                          spread_dim=projection_dim(model, state, config))
  last_saved = start if restored is not None else None
  describe_last = lambda: (f"the last good checkpoint is {manager.directory}/{last_saved}" if last_saved is not None
                           else f"no checkpoint was written yet in {manager.directory}")
  t_start = time.perf_counter()
  step = start
  try:
    with guard_lib.StopSignals() as signals:
      while step < t.num_steps:
        batch = mesh_lib.shard_batch(next(it), mesh)
        state, metrics = train_step(state, batch, aug_key)
        step += 1
        acc.update(metrics)
        guard.add(step, metrics)
        stop = signals.should_stop()
        log_now = step % t.log_every == 0 or step == t.num_steps
        save_now = step % t.checkpoint_every == 0 or step == t.num_steps or stop
        if log_now or save_now:
          guard.check(last_checkpoint=describe_last())
        if log_now:
          scalars = acc.compute_and_reset()
          writer.write(step, scalars, prefix="train/")
          progress.report(step, scalars, keys=("loss", "top1", "projection_std", "learning_rate"))
        if save_now:
          if guard.ok_to_save or step == t.num_steps:
            ckpt_lib.save(manager, step, state, pipeline.iterator_state_to_json(it.get_state()), provenance,
                          metrics=acc.state_json())
            last_saved = step
          else:
            print(f"step {step}: checkpoint skipped, the projection spread is below "
                  f"config.train.collapse_threshold={t.collapse_threshold} (keeping {describe_last()})", flush=True)
        if stop:
          manager.wait_until_finished()
          signals.interrupt(step, str(manager.directory), saved=last_saved)
  finally:
    if hasattr(it, "close"):  # Stops grain worker processes and frees their shared memory.
      it.close()
    manager.wait_until_finished()
    manager.close()
    writer.close()
  print(f"pretraining done: {step - start} steps in {reporting.format_duration(time.perf_counter() - t_start)}",
        flush=True)
  return model, jax.device_get(state)


def check_device_count(workdir: str, step: int, n_dev: int, *, allow: bool):
  """Refuses to resume a checkpoint written on another number of devices unless `allow`
  (config.train.allow_device_change): the run would go on, but not as the uninterrupted one would."""
  saved = ((ckpt_lib.read_json_item(workdir, step, "provenance") or {}).get("devices") or {}).get("count")
  if saved is None or saved == n_dev:
    return
  if not allow:
    raise ValueError(
        f"checkpoint {paths.join(workdir, 'checkpoints', str(step))} was written on {saved} devices and this run "
        f"has {n_dev}: it would resume with the same global batches, but every sum over the batch (gradients, "
        "BatchNorm statistics, the loss's normalisers) would be split and added in another order, so from here on "
        f"it would not match the uninterrupted run bit for bit. Resume on {saved} devices, or set "
        "--config.train.allow_device_change=true to continue anyway")
  print(f"resuming a run checkpointed on {saved} devices on {n_dev} (config.train.allow_device_change)", flush=True)


def projection_dim(model, state, config) -> int | None:
  """Width of the model's "projection" output (None without one), for the collapse guard."""
  dummy = jax.ShapeDtypeStruct((2, *input_shape(config)), jnp.float32)
  out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), {"params": state.params,
                                                                      "batch_stats": state.batch_stats}, dummy)
  return int(out["projection"].shape[-1]) if isinstance(out, dict) and "projection" in out else None
