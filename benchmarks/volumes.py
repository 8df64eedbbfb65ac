"""Where a volume SimCLR step spends its time: 3D augmentation alone, the 3D encoder's forward + backward alone
with each of its convolution paths (XLA's native 3D convolution, and the depth-unfolded 2D one), and the whole
train step, each compiled once and timed (compile seconds shown too).

Usage:
  python benchmarks/volumes.py [--config=configs/volume_simclr.py:quick] [--steps=3] [--quick]

The batch is synthetic uint8 volumes of the config's size ([B, D, H, W, C], as the pipeline gives them); the
config's own view policies, encoder, width and batch are used.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app
from absl import flags
from ml_collections import config_flags

import bench_lib

_CONFIG = config_flags.DEFINE_config_file("config", "configs/volume_simclr.py:quick", "Volume config to measure.")
_STEPS = flags.DEFINE_integer("steps", 3, "Timed calls per part (median kept, after one warm-up call).")
_QUICK = flags.DEFINE_bool("quick", False, "Smoke preset: 1 timed call per part.")


def _timed_compile(fn, *args):
  t0 = time.perf_counter()
  compiled = fn.lower(*args).compile()
  return compiled, time.perf_counter() - t0


def main(_):
  import jax
  import jax.numpy as jnp

  from medssl_jax import config as config_lib
  from medssl_jax.augment import views as views_lib
  from medssl_jax.train import mesh as mesh_lib
  from medssl_jax.train import pretrain as pretrain_lib
  config = config_lib.validate(_CONFIG.value)
  steps, b = (1 if _QUICK.value else _STEPS.value), config.train.batch_size
  mesh = mesh_lib.make_mesh(jax.devices()[:1])
  batch = bench_lib.synthetic_batch(config, mesh)
  print(bench_lib.device_line())
  print(f"{config.model.encoder} width {config.model.width_multiplier}, stem {config.model.stem}, batch {b} volumes "
        f"{tuple(batch['image'].shape[1:])} -> {len(config.augment.views)} views; median of {steps} calls")
  rows = []

  augment = jax.jit(lambda key, images: views_lib.make_views(key, images, list(config.augment.views)))
  compiled, compile_s = _timed_compile(augment, jax.random.key(0), batch["image"])
  dt, views = bench_lib.time_steps(lambda c: (compiled(c[1], batch["image"]), jax.random.fold_in(c[1], 1)),
                                   (None, jax.random.key(0)), steps=steps)
  rows.append(("augmentation (make_views)", dt, compile_s, bench_lib.compiled_stats(compiled)[0]))
  print(rows[-1], flush=True)

  model, _, _, _ = pretrain_lib.build(config)
  x = jnp.concatenate(views[0])
  variables = model.init(jax.random.key(0), x[:2], train=False)
  for impl in ("native", "depth_unfold"):  # The 3D ResNet's two convolution paths ("auto" picks one).
    m = model.clone(backbone=model.backbone.clone(conv3d=impl))

    def loss(params, x, m=m):
      out, _ = m.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
      return sum(jnp.mean(jnp.square(v)) for v in jax.tree.leaves(out))

    compiled, compile_s = _timed_compile(jax.jit(jax.grad(loss)), variables["params"], x)
    dt, _ = bench_lib.time_steps(lambda c, compiled=compiled: compiled(variables["params"], x), None, steps=steps)
    rows.append((f"encoder + heads forward + backward, {x.shape[0]} views, conv3d={impl}", dt, compile_s,
                 bench_lib.compiled_stats(compiled)[0]))
    print(rows[-1], flush=True)

  cell = bench_lib.train_step_cell(config, steps=steps)
  rows.append((f"whole train step (conv3d={config.model.get('conv3d', 'auto')} on {jax.default_backend()})", cell["ms"] / 1e3, cell["compile_s"], cell["gflop"]))
  print("\n| part | ms / call | compile s | GFLOP / call |\n|---|---|---|---|")
  for name, dt, compile_s, gflop in rows:
    print(f"| {name} | {dt * 1e3:.0f} | {compile_s:.1f} | {bench_lib.fmt(gflop, '.1f')} |")


if __name__ == "__main__":
  app.run(main)
