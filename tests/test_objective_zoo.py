"""Every registered objective through the real trainer: 1 vs 8 devices, and learning on tiny data.

Each objective runs its own `configs/fundus_<name>.py:quick` config, shrunk to 32 px views (multi-crop
local views to 16 px) so the whole zoo fits in CI time.
"""
import jax
import numpy as np
import pytest

import device_testing
from medssl_jax import objectives
from medssl_jax.config import load as load_config
from medssl_jax.experiment import validate
from medssl_jax.synthetic import fundus as sf
from medssl_jax.train import mesh as mesh_lib
from medssl_jax.train import pretrain as pretrain_lib
from medssl_jax.train import step as step_lib

# Objectives that need dataset fields beyond image/label/id have their own tests: swcl (test_objective_swcl.py) and
# the image-text ones, which read reports (test_image_text_train.py).
NAMES = [n for n in objectives.available()
         if objectives.get_objective(n).batch_keys is None and not objectives.get_objective(n).text]


def tiny_config(name, **overrides):
  c = load_config(f"fundus_{name}", "quick")
  c.objective.name = name
  for v in c.augment.views:
    v.crop_size = max(8, v.crop_size // 2)
  c.data.image_size = 32
  for k, v in overrides.items():
    section, key = k.split(".")
    c[section][key] = v
  return validate(c)


def _images(n, seed=0):
  images, labels = sf.generate(n, size=32, seed=seed)
  return {"image": images, "label": labels.astype(np.int32), "id": np.arange(n, dtype=np.int32)}


@pytest.mark.parametrize("name", NAMES)
def test_one_vs_eight_devices(name):
  if jax.device_count() < 8:
    pytest.skip("needs 8 devices (tests/conftest.py sets XLA_FLAGS for 8 CPU devices)")
  config = tiny_config(name)
  model, _, tx, _ = pretrain_lib.build(config)
  state = pretrain_lib.init_train_state(config, model, tx, jax.random.key(0))
  batch = _images(16)
  key = jax.random.key(42)
  # Loss, metrics, gradients and objective-state updates of one step (the rest of the step, optimizer and EMA, is a
  # deterministic function of these; tests/test_sharding.py runs it).
  one = device_testing.loss_and_grads(jax.devices()[:1], config, state, batch, key, with_updates=True)
  eight = device_testing.loss_and_grads(jax.devices()[:8], config, state, batch, key, with_updates=True)
  device_testing.assert_same(one, eight)


# MoCo v3's keys come from its slow EMA teacher (momentum 0.99): on these 16 images its loss stays level for about
# its first 30 steps (mean of steps 26-30 within +-0.04 of steps 1-5, either side by machine) before it falls.
NUM_STEPS = {"moco_v3": 60}


@pytest.mark.parametrize("name", NAMES)
def test_loss_decreases_with_collapse_monitors(name):
  """A few dozen steps on 16 tiny synthetic fundus images (new views each step) lower the loss;
  collapse monitors are logged."""
  steps = NUM_STEPS.get(name, 30)
  config = tiny_config(name, **{"train.num_steps": steps, "train.warmup_steps": 3})
  mesh = mesh_lib.make_mesh(jax.devices()[:1])
  model, objective, tx, schedule = pretrain_lib.build(config)
  state = mesh_lib.replicate(pretrain_lib.init_train_state(config, model, tx, jax.random.key(0)), mesh)
  step = step_lib.make_train_step(model, objective, tx, schedule, config, mesh)
  batch = mesh_lib.shard_batch(_images(16, seed=1), mesh)
  losses, metrics = [], None
  for _ in range(steps):
    state, metrics = step(state, batch, jax.random.key(7))  # The step folds its number into the key.
    losses.append(float(metrics["loss"]))
  assert np.all(np.isfinite(losses)), losses
  assert np.mean(losses[-5:]) < np.mean(losses[:5]), f"{name}: {losses}"
  assert {"feature_std", "feature_rank", "loss", "grad_norm"} <= set(metrics), sorted(metrics)
  assert float(metrics["feature_rank"]) > 1.0, f"{name}: collapsed features"


@pytest.mark.parametrize("name", [n for n in ("simclr", "byol") if n in NAMES])
def test_bf16_compute_keeps_float32_params_and_losses(name):
  """compute_dtype=bfloat16: the encoder computes in bf16, parameters, losses and updates stay float32."""
  config = tiny_config(name, **{"model.compute_dtype": "bfloat16"})
  mesh = mesh_lib.make_mesh(jax.devices()[:1])
  model, objective, tx, schedule = pretrain_lib.build(config)
  state = mesh_lib.replicate(pretrain_lib.init_train_state(config, model, tx, jax.random.key(0)), mesh)
  step = step_lib.make_train_step(model, objective, tx, schedule, config, mesh)
  state, metrics = step(state, mesh_lib.shard_batch(_images(16), mesh), jax.random.key(3))
  assert metrics["loss"].dtype == np.float32 and np.isfinite(float(metrics["loss"]))
  assert {x.dtype for x in jax.tree.leaves(state.params)} == {np.dtype("float32")}
  assert {x.dtype for x in jax.tree.leaves(state.objective_state)} <= {np.dtype("float32")}
