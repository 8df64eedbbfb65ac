"""Compile time: parameter initialisation and the train step, each compiled with XLA's optimisations (its default)
and without them (`xla_backend_optimization_level=0`), alternated, with the step time of each compile.

Usage:
  python benchmarks/compile.py [--configs=fundus_simclr:quick,volume_simclr:quick,fundus_mae:quick] [--rounds=2]
                               [--steps=5] [--quick]

Why: `models.init_variables` compiles the initialisation without the optimisations on CPU (it runs once; they
are most of its compile), and the test suite (tests/conftest.py) compiles everything without them (its models
are tiny and run a few steps). The table shows what each costs and saves, and how far the initial values move.
Every compile is a fresh one (no compilation cache).
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app
from absl import flags

import bench_lib

_CONFIGS = flags.DEFINE_list("configs", ["fundus_simclr:quick", "volume_simclr:quick", "fundus_mae:quick"],
                             "Configs (configs/<name>.py:<variant>) whose encoder and step are compiled.")
_ROUNDS = flags.DEFINE_integer("rounds", 2, "Compiles of each program at each level, alternated; the best is kept.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed train steps per compiled step (after one warm-up step).")
_QUICK = flags.DEFINE_bool("quick", False, "Smoke preset: the first config, 1 round, 1 step.")

LEVELS = {"XLA default": None, "level 0": {"xla_backend_optimization_level": 0}}


def _compile(lower, options):
  import jax
  jax.clear_caches()  # Lowered and compiled afresh: a second round would get the first one's executable.
  lowered = lower()
  t0 = time.perf_counter()
  compiled = lowered.compile(compiler_options=options)
  return compiled, time.perf_counter() - t0


def main(_):
  import jax
  import jax.numpy as jnp
  import numpy as np

  from medssl_jax import config as config_lib
  from medssl_jax.experiment import validate
  from medssl_jax.train import mesh as mesh_lib
  from medssl_jax.train import pretrain as pretrain_lib
  from medssl_jax.train import step as step_lib

  configs, rounds, steps = _CONFIGS.value, _ROUNDS.value, _STEPS.value
  if _QUICK.value:
    configs, rounds, steps = configs[:1], 1, 1
  print(bench_lib.device_line() + "\n")
  rows = []
  for spec in configs:
    name, _, variant = spec.partition(":")
    config = validate(config_lib.load(name, variant or None))
    model, objective, tx, schedule = pretrain_lib.build(config)
    shape = pretrain_lib.input_shape(config)
    rngs = {"params": jax.random.key(0), "mask": jax.random.key(1)}
    init = lambda: jax.jit(lambda r: model.init(r, jnp.zeros((2, *shape), jnp.float32), train=False)).lower(rngs)
    mesh = mesh_lib.make_mesh(jax.devices()[:1])
    state = mesh_lib.replicate(pretrain_lib.init_train_state(config, model, tx, jax.random.key(0)), mesh)
    batch = bench_lib.synthetic_batch(config, mesh)
    key = jax.random.key(1)
    step = lambda: step_lib.make_train_step(model, objective, tx, schedule, config, mesh).lower(state, batch, key)
    init_s, step_s, step_ms, values = {}, {}, {}, {}
    for _ in range(rounds):
      for level, options in LEVELS.items():
        compiled, s = _compile(init, options)
        init_s[level] = min(s, init_s.get(level, s))
        values[level] = jax.device_get(compiled(rngs))
        compiled, s = _compile(step, options)
        step_s[level] = min(s, step_s.get(level, s))
        fresh = jax.tree.map(jnp.copy, state)  # The step donates its state.
        bench_lib.time_steps(lambda st: compiled(st, batch, key)[0], fresh, steps=steps)
        best = bench_lib.time_steps.last_min * 1e3
        step_ms[level] = min(best, step_ms.get(level, best))
    a, b = (jax.tree.leaves(values[level]) for level in LEVELS)
    moved = max(float(np.max(np.abs(x - y) / np.maximum(np.abs(x), 1e-30))) for x, y in zip(a, b) if x.size)
    rows.append((spec, config.model.encoder, init_s, step_s, step_ms, moved))
    print(f"{spec}: done", flush=True)

  default, fast = LEVELS
  print(f"\n| config | encoder | init compile s ({default} / {fast}) | step compile s ({default} / {fast}) "
        f"| best step ms ({default} / {fast}) | init values: largest relative change |")
  print("|---|---|---|---|---|---|")
  for spec, encoder, init_s, step_s, step_ms, moved in rows:
    print(f"| {spec} | {encoder} | {init_s[default]:.1f} / {init_s[fast]:.1f} | {step_s[default]:.1f} / "
          f"{step_s[fast]:.1f} | {step_ms[default]:.0f} / {step_ms[fast]:.0f} | {moved:.1e} |")


if __name__ == "__main__":
  app.run(main)
