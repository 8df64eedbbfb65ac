"""Shared helper for the 1-vs-8-device tests of objectives that go through the trainer's loss function."""
import jax

from medssl_jax.train import mesh as mesh_lib
from medssl_jax.train import pretrain as pretrain_lib
from medssl_jax.train import step as step_lib


def loss_and_grads(devices, config, state, batch, key):
  """(loss, metrics, gradients) on host of the trainer's loss_fn for `config`, with `state` replicated and
  `batch` sharded over a mesh of `devices` (the step's own key derivation is the caller's: pass
  fold_in(base_key, step))."""
  mesh = mesh_lib.make_mesh(devices)
  model, objective, _, _ = pretrain_lib.build(config)
  st = mesh_lib.replicate(state, mesh)
  b = mesh_lib.shard_batch(batch, mesh)
  loss_fn = step_lib.make_loss_fn(model, objective, config)
  (loss, (metrics, _, _)), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
      st.params, st.batch_stats, st.objective_state, b, key, st.step)
  return jax.device_get((loss, metrics, grads))
