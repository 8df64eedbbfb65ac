"""Shared helpers for device tests: 1 vs 8 devices through the trainer's loss function, and compiling as runs do."""
import jax
import numpy as np

from medssl_jax import xla_cpu
from medssl_jax.train import mesh as mesh_lib
from medssl_jax.train import pretrain as pretrain_lib
from medssl_jax.train import step as step_lib


# XLA's defaults, as medssl_jax's own runs compile, for tests of bit-level properties: the suite compiles at level 0
# with XLA:CPU's older loop emitters (tests/conftest.py), whose rounding can depend on the per-device shape.
RUN_COMPILER_OPTIONS = {"xla_backend_optimization_level": 3,
                        **({"xla_cpu_use_fusion_emitters": True} if xla_cpu.known_jaxlib() else {})}


def suite_xla_flags(environ) -> str:
  """environ's XLA_FLAGS less the simulated device count: the suite's compile settings (tests/conftest.py), for a
  subprocess that sets its own device count."""
  return " ".join(f for f in environ.get("XLA_FLAGS", "").split() if "force_host_platform_device_count" not in f)


def run_compiled(fn, *args):
  """fn(*args), jitted and compiled with RUN_COMPILER_OPTIONS (inputs keep their shardings)."""
  return jax.jit(fn).lower(*args).compile(compiler_options=RUN_COMPILER_OPTIONS)(*args)


def loss_and_grads(devices, config, state, batch, key, *, with_updates=False):
  """(loss, metrics, gradients) on host of the trainer's loss_fn for `config`, with `state` replicated and
  `batch` sharded over a mesh of `devices` (the step's own key derivation is the caller's: pass
  fold_in(base_key, step)); with_updates: (loss, metrics, gradients, objective-state updates)."""
  mesh = mesh_lib.make_mesh(devices)
  model, objective, _, _ = pretrain_lib.build(config)
  st = mesh_lib.replicate(state, mesh)
  b = mesh_lib.shard_batch(batch, mesh)
  loss_fn = step_lib.make_loss_fn(model, objective, config)
  (loss, (metrics, _, updates)), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
      st.params, st.batch_stats, st.objective_state, b, key, st.step)
  return jax.device_get((loss, metrics, grads, updates) if with_updates else (loss, metrics, grads))


def assert_same(one, other):
  """`loss_and_grads` results of two device counts agree: loss, every metric, every gradient leaf and any
  objective-state updates, to float32 reduction-order noise (rtol 2e-4, atol 2e-5 of each array's scale)."""
  close = lambda a, b, what: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5 * max(1.0, float(np.abs(a).max())),
                                                        err_msg=what)
  close(one[0], other[0], "loss")
  for k in one[1]:
    close(one[1][k], other[1][k], f"metric {k}")
  # Same gradients: not 8x (the shard_map pitfall), not from per-device statistics or negatives.
  jax.tree.map(lambda a, b: close(a, b, "gradients"), one[2], other[2])
  if len(one) > 3:
    jax.tree.map(lambda a, b: close(a, b, "objective state updates (queue, centre)"), one[3], other[3])


def fixed_batch(config, rows: int = 16, seed: int = 0) -> dict:
  """A reproducible batch of random-texture images (no flat regions: the max-pool ties and ReLU kinks of
  black fundus borders make a few gradient entries depend on the device layout itself)."""
  rng = np.random.default_rng(seed)
  size, channels = config.data.image_size or 28, config.data.channels
  return {"image": rng.integers(0, 256, (rows, size, size, channels), dtype=np.uint8),
          "label": rng.integers(0, 4, rows).astype(np.int32), "id": np.arange(rows, dtype=np.int32)}


def flatten(loss, metrics, grads) -> dict:
  """`loss_and_grads` results as one flat {name: array} (to pass through an .npz); `unflatten` inverts it."""
  out = {"loss": loss, **{f"metric/{k}": v for k, v in metrics.items()}}
  out.update({"grad/" + jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_flatten_with_path(grads)[0]})
  return out


def unflatten(flat, like) -> tuple:
  """(loss, metrics, grads) from `flatten`'s dict, the gradients in the structure of `like` (a gradient tree)."""
  metrics = {k[len("metric/"):]: v for k, v in flat.items() if k.startswith("metric/")}
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(like)[0]]
  grads = jax.tree.unflatten(jax.tree.structure(like), [flat["grad/" + p] for p in paths])
  return flat["loss"], metrics, grads
