"""Helpers shared by the benchmark scripts: the benchmark config, synthetic batches, timing, compiled stats."""
import os
import statistics
import time

import medssl_jax  # noqa: F401  Before the first JAX computation: sets the XLA:CPU flags (medssl_jax/xla_cpu.py).

TEXT_OBJECTIVES = ("clip", "convirt", "joint")  # Need paired reports: not a plain image step.


def device_line():
  """One line naming the device, the backend, jax's version and the host's CPU count."""
  import jax
  d = jax.devices()[0]
  return (f"device: {d.device_kind} x{jax.device_count()} ({jax.default_backend()}), jax {jax.__version__}, "
          f"host CPUs: {os.cpu_count()}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")


def bench_config(*, objective="simclr", encoder="resnet18", size=28, batch=128, width=1.0, compute_dtype="float32",
                 optimizer="adamw", stem=None, channels=3):
  """A validated config for one benchmark cell: 2 default SimCLR views of `size` px, `batch` records.

  The ResNet stem is "cifar" below 64 px (as the MedMNIST configs) and "imagenet" from 64 px unless `stem`
  is given; the ViT patch is 4 / 8 / 16 px at < 64 / < 224 / >= 224 px (the config's documented choices).
  """
  from medssl_jax import config as config_lib
  from medssl_jax.augment import views as views_lib
  c = config_lib.base_config()
  c.mode = "pretrain"
  c.data.image_size = size
  if channels != c.data.channels:
    c.data.channels = channels
    c.data.mean = c.data.std = (0.5,) * channels
  c.model.encoder = encoder
  c.model.width_multiplier = width if encoder.startswith("resnet") else 1.0
  c.model.stem = stem or ("cifar" if size < 64 else "imagenet")
  c.model.patch_size = 4 if size < 64 else (8 if size < 224 else 16)
  c.model.compute_dtype = compute_dtype
  c.objective.name = objective
  c.objective.moco_v2.queue_size = max(batch, (4096 // batch) * batch)  # MoCo v2: a multiple of the batch.
  c.augment.views = [views_lib.default_view(crop_size=size), views_lib.default_view(crop_size=size)]
  c.train.batch_size = batch
  c.train.optimizer = optimizer
  c.train.base_learning_rate = 1e-3
  c.train.weight_decay = 1e-6
  return config_lib.validate(c)


def synthetic_batch(config, mesh):
  """A uint8 image batch (+ label, id) of config's size, sharded over the mesh (on the device); volumes
  [B, D, H, W, C] for a 3D encoder."""
  import numpy as np

  from medssl_jax import models
  from medssl_jax.train import mesh as mesh_lib
  b, s, ch = config.train.batch_size, config.data.image_size, config.data.channels
  spatial = (s, s, s) if models.takes_volumes(config) else (s, s)
  rng = np.random.default_rng(0)
  return mesh_lib.shard_batch({"image": rng.integers(0, 256, (b, *spatial, ch), dtype=np.uint8),
                               "label": rng.integers(0, 2, b).astype(np.int32),
                               "id": np.arange(b, dtype=np.int32)}, mesh)


def compiled_stats(compiled):
  """(GFLOP per call or None, XLA memory of arguments + temporaries in MiB or None) of a compiled jit."""
  flops = mem = None
  try:
    ca = compiled.cost_analysis()
    ca = ca[0] if isinstance(ca, (list, tuple)) else ca
    flops = float(ca["flops"]) / 1e9 if ca and ca.get("flops", -1) > 0 else None
  except Exception:  # Not every backend / version reports it.
    pass
  try:
    ma = compiled.memory_analysis()
    mem = (ma.argument_size_in_bytes + ma.temp_size_in_bytes) / 2**20
  except Exception:
    pass
  return flops, mem


def device_peak_mib():
  """The device's peak bytes in use in MiB (GPU / TPU), None where the backend keeps no statistics (CPU)."""
  import jax
  stats = jax.devices()[0].memory_stats() if hasattr(jax.devices()[0], "memory_stats") else None
  return stats["peak_bytes_in_use"] / 2**20 if stats and "peak_bytes_in_use" in stats else None


def time_steps(call, carry, *, steps, max_seconds=None):
  """Seconds per call of `steps` calls of carry = call(carry) (each waited for), after one warm-up call;
  with `max_seconds`, fewer calls (at least 2) once that much time has gone into the timed ones.

  `call` must return the new carry (donated inputs are replaced). Returns (median s, carry); the best
  (minimum) time is kept in time_steps.last_min: on a shared machine other jobs only ever add time, so
  the minimum is the steadier estimate of the step's own cost.
  """
  import jax
  carry = call(carry)
  jax.block_until_ready(carry)
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    carry = call(carry)
    jax.block_until_ready(carry)
    times.append(time.perf_counter() - t0)
    if max_seconds is not None and len(times) >= 2 and sum(times) >= max_seconds:
      break
  time_steps.last_min = min(times)
  return statistics.median(times), carry


def interleaved_times(runs, *, steps):
  """{name: [seconds]} of `steps` rounds, each timing one call of every run() in turn after one warm-up
  call each, so that every side sees the same background load."""
  for run in runs.values():
    run()
  times = {name: [] for name in runs}
  for _ in range(steps):
    for name, run in runs.items():
      t0 = time.perf_counter()
      run()
      times[name].append(time.perf_counter() - t0)
  return times


def model_only_step(config):
  """(run, GFLOP/step): run() does one JAX model-only step (both views already made: encoder, projector, loss,
  backward, optimizer update; torch_compare.py's 'model' row) on fixed pre-made views and waits for it."""
  import jax
  import jax.numpy as jnp
  import optax

  from medssl_jax.train import pretrain as pretrain_lib
  from medssl_jax.train import step as step_lib
  model, objective, tx, _ = pretrain_lib.build(config)
  state = pretrain_lib.init_train_state(config, model, tx, jax.random.key(0))
  b, s = config.train.batch_size, config.data.image_size
  k1, k2 = jax.random.split(jax.random.key(2))
  views = [jax.random.normal(k1, (b, s, s, 3)), jax.random.normal(k2, (b, s, s, 3))]
  labels = jnp.arange(b)

  def step(carry, views, labels):
    params, batch_stats, opt_state = carry

    def loss_fn(params):
      outs, new_stats = step_lib.encode_views(model, params, batch_stats, views)
      loss, _, _ = objective.loss(student=outs, teacher=None, batch={"label": labels}, state={}, step=0,
                                  config=config)
      return loss, new_stats

    (_, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_stats, opt_state

  box = [(state.params, state.batch_stats, state.opt_state)]
  compiled = jax.jit(step, donate_argnums=(0,)).lower(box[0], views, labels).compile()

  def run():
    box[0] = jax.block_until_ready(compiled(box[0], views, labels))
  return run, compiled_stats(compiled)[0]


def compile_train_step(config):
  """The trainer's step (make_train_step) for `config` on one device, compiled: (compiled, state, batch, key,
  compile seconds). compiled(state, batch, key) returns (new state, metrics); the state is donated."""
  import jax

  from medssl_jax.train import mesh as mesh_lib
  from medssl_jax.train import pretrain as pretrain_lib
  from medssl_jax.train import step as step_lib
  mesh = mesh_lib.make_mesh(jax.devices()[:1])
  model, objective, tx, schedule = pretrain_lib.build(config)
  state = mesh_lib.replicate(pretrain_lib.init_train_state(config, model, tx, jax.random.key(0)), mesh)
  batch = synthetic_batch(config, mesh)
  key = jax.random.key(1)
  step = step_lib.make_train_step(model, objective, tx, schedule, config, mesh)
  t0 = time.perf_counter()
  compiled = step.lower(state, batch, key).compile()
  return compiled, state, batch, key, time.perf_counter() - t0


def train_step_cell(config, *, steps, max_seconds=None):
  """Compiles and times one config's full train step (`time_steps`). Returns a dict of the measurements."""
  compiled, state, batch, key, compile_s = compile_train_step(config)
  gflop, mem = compiled_stats(compiled)
  dt, _ = time_steps(lambda s: compiled(s, batch, key)[0], state, steps=steps, max_seconds=max_seconds)
  b = config.train.batch_size
  return {"ms": dt * 1e3, "min_ms": time_steps.last_min * 1e3, "images_s": b / dt, "gflop": gflop, "xla_mib": mem,
          "device_peak_mib": device_peak_mib(),
          "compile_s": compile_s}


def host_two_views(batch, size, rng):
  """Two random-resized crops per record on the host with PIL (scale 0.2-1, ratio 3/4-4/3): what a
  PyTorch-style loader does, for comparison with the trainer's crops on the device."""
  import numpy as np
  from PIL import Image
  views = []
  for image in batch["image"]:
    pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    h, w = image.shape[:2]
    for _ in range(2):
      area = rng.uniform(0.2, 1.0) * h * w
      ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
      cw, ch = min(w, int(round(np.sqrt(area * ratio)))), min(h, int(round(np.sqrt(area / ratio))))
      x, y = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
      views.append(np.asarray(pil.crop((x, y, x + cw, y + ch)).resize((size, size), Image.BILINEAR)))
  return views


def pipeline_rate(builder, *, split, batch, batches, image_size, workers, host_views=False):
  """Records/s of the trainer's host pipeline (medssl_jax.data.pipeline.make_train_iterator: decode, resize to
  `image_size`, batch) over `batches` batches after 2 warm-up ones, with `workers` grain worker processes.

  host_views: decode at the stored size and cut two crops of `image_size` per record on the host instead.
  """
  import numpy as np

  from medssl_jax.data import pipeline
  it = pipeline.make_train_iterator(builder, split=split, global_batch_size=batch, seed=0,
                                    image_size=None if host_views else image_size, worker_count=workers,
                                    process_index=0, process_count=1)
  rng = np.random.default_rng(0)
  try:
    for i in range(2 + batches):
      if i == 2:
        t0 = time.perf_counter()
      b = next(it)
      if host_views:
        host_two_views(b, image_size, rng)
    return batches * batch / (time.perf_counter() - t0)
  finally:
    if hasattr(it, "close"):
      it.close()


def fmt(x, spec=".0f"):
  """`x` formatted with `spec`, or "-" when it is None (a figure the backend does not report)."""
  return "-" if x is None else format(x, spec)
