"""1 device x batch 16 and 8 simulated devices x batch 2 give the same loss, gradients and update.

The trainer jits over global arrays, so the loss (and BatchNorm statistics) are those of the global
batch wherever its rows live. This is the test that catches the classic distributed-SSL bugs:
per-device negatives, gradients off by the device count, per-device BatchNorm.
"""
import jax
import numpy as np
import pytest

from medssl_jax.config import load as load_config
from medssl_jax.train import mesh as mesh_lib
from medssl_jax.train import pretrain as pretrain_lib
from medssl_jax.train import state as state_lib
from medssl_jax.train import step as step_lib


@pytest.fixture(scope="module")
def setup():
  if jax.device_count() < 8:
    pytest.skip("needs 8 devices: run with XLA_FLAGS=--xla_force_host_platform_device_count=8 (tests/conftest.py sets it)")
  config = load_config("demo_simclr", "quick")
  assert config.train.batch_size == 16
  model, objective, tx, schedule = pretrain_lib.build(config)
  state = state_lib.init_state(model, tx, key=jax.random.key(0), image_shape=(32, 32, 3))
  rng = np.random.default_rng(0)
  batch = {"image": rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8),
           "label": rng.integers(0, 4, 16).astype(np.int32), "id": np.arange(16, dtype=np.int32)}
  return config, model, objective, tx, schedule, state, batch


def run_on(devices, setup):
  config, model, objective, tx, schedule, state, batch = setup
  mesh = mesh_lib.make_mesh(devices)
  # A host copy: the jitted step donates its input state, and on one device replicate() would hand
  # it the fixture's own buffers.
  st = mesh_lib.replicate(jax.tree.map(np.array, state), mesh)
  b = mesh_lib.shard_batch(batch, mesh)
  assert b["image"].sharding.num_devices == len(devices)
  loss_fn = step_lib.make_loss_fn(model, objective, config)
  key = jax.random.key(42)
  (loss, (metrics, bs, _)), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
      st.params, st.batch_stats, st.objective_state, b, key, st.step)
  train_step = step_lib.make_train_step(model, objective, tx, schedule, config, mesh)
  new_state, _ = train_step(st, b, key)
  return jax.device_get((loss, metrics, bs, grads, new_state.params))


def test_one_vs_eight_devices(setup):
  one = run_on(jax.devices()[:1], setup)
  eight = run_on(jax.devices()[:8], setup)
  loss1, m1, bs1, g1, p1 = one
  loss8, m8, bs8, g8, p8 = eight
  np.testing.assert_allclose(loss1, loss8, rtol=1e-5)
  for k in m1:
    np.testing.assert_allclose(m1[k], m8[k], rtol=1e-4, atol=1e-6, err_msg=k)
  # BatchNorm running statistics are those of the global batch on both.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), bs1, bs8)
  # Gradients: same values, not 8x (the shard_map pitfall) and not 1/8.
  flat1, flat8 = jax.tree.leaves(g1), jax.tree.leaves(g8)
  norm1 = np.sqrt(sum(float(np.sum(g ** 2)) for g in flat1))
  norm8 = np.sqrt(sum(float(np.sum(g ** 2)) for g in flat8))
  np.testing.assert_allclose(norm1, norm8, rtol=1e-4)
  for a, b in zip(flat1, flat8):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5 * max(1.0, float(np.abs(a).max())))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), p1, p8)
