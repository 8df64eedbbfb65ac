"""Image objectives on volumes [B, D, H, W, C] through the real train step: 1 vs 8 devices, and learning.

SimCLR, BYOL, DINO and VICReg run their configs/volume_<name>.py:quick configs. Barlow Twins, MoCo v2 and SimSiam
(run on demand, `MEDSSL_VOLUME_ZOO=1`: each adds two compiles, about 100 s on a busy 2-core CPU without the
compilation cache) run configs/volume_simclr.py:quick with the objective and head settings of
configs/fundus_<name>.py:quick. Each is shrunk to a ResNet-18 + 3D at 1/16 width on 12³ views (DINO's local views
8³) and a batch of 8 volumes, so the compiles of the step, shared by both tests of an objective, are most of what
they cost. MAE on volumes needs a 3D ViT (tests/test_objective_mae.py); with a 3D ResNet it is refused.
"""
import functools
import os
import pathlib

import jax
import numpy as np
import optax
import pytest

from medssl_jax.augment import views as views_lib
from medssl_jax.config import load as load_config
from medssl_jax.experiment import validate
from medssl_jax.train import mesh as mesh_lib
from medssl_jax.train import pretrain as pretrain_lib
from medssl_jax.train import step as step_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
ON_DEMAND = ("barlow_twins", "moco_v2", "simsiam")
NAMES = ("simclr", "byol", "dino", "vicreg") + (ON_DEMAND if os.environ.get("MEDSSL_VOLUME_ZOO") == "1" else ())
SIZE, LOCAL_SIZE, BATCH = 12, 8, 8
KEY = jax.random.key(7)


def tiny_config(name):
  """The objective's volume config (see the module docstring) at 1/16 width, 12³ views, batch 8, 20 steps of AdamW
  (peak learning rate 0.1 * 8 / 256)."""
  if (ROOT / "configs" / f"volume_{name}.py").is_file():
    c = load_config(f"volume_{name}", "quick")
  else:
    c = load_config("volume_simclr", "quick")
    two_d = load_config(f"fundus_{name}", "quick")
    c.objective = two_d.objective
    for k in ("projector_hidden_dims", "projector_dim", "predictor_hidden_dims"):
      c.model[k] = two_d.model[k]
  assert c.model.encoder == "resnet18_3d" and c.objective.name == name
  c.model.width_multiplier = 0.0625
  # Gentler views than the configs' (no flips, global crops of at least 60% of the volume) so that a few steps on
  # 8 volumes visibly learn; local crops keep their scale. Flips on sharded batches: tests/test_augment3d.py.
  full = max(v.crop_size for v in c.augment.views)
  c.augment.views = [views_lib.validate_view3d(dict(v.to_dict(), crop_size=SIZE, crop_scale=(0.6, 1.0), flip_p=0.0)
                                               if v.crop_size == full else
                                               dict(v.to_dict(), crop_size=LOCAL_SIZE, flip_p=0.0))
                     for v in c.augment.views]
  c.data.image_size = SIZE
  c.objective.moco_v2.queue_size = BATCH  # One batch of negatives, as fundus_moco_v2:quick.
  c.train.batch_size = BATCH
  c.train.num_steps = 20
  c.train.warmup_steps = 1  # Step 0 at learning rate 0 (gradients into the optimizer state), step 1 at the peak.
  c.train.base_learning_rate = 0.1
  return validate(c)


def volumes(seed=0):
  """A batch of 8 random-texture uint8 volumes [8, 12, 12, 12, 1] (no flat regions: ties and ReLU kinks there make
  a few gradient entries depend on the device layout)."""
  rng = np.random.default_rng(seed)
  return {"image": rng.integers(0, 256, (BATCH, SIZE, SIZE, SIZE, 1), dtype=np.uint8),
          "label": rng.integers(0, 2, BATCH).astype(np.int32), "id": np.arange(BATCH, dtype=np.int32)}


def smooth_volumes(seed=0):
  """8 uint8 volumes [8, 12, 12, 12, 1], each a different smooth pattern (a random 4³ field resized trilinearly)
  with a little noise: crops of one volume share its pattern, so an objective has something to learn."""
  rng = np.random.default_rng(seed)
  coarse = rng.normal(size=(BATCH, 4, 4, 4, 1)).astype(np.float32)
  fine = np.asarray(jax.image.resize(coarse, (BATCH, SIZE, SIZE, SIZE, 1), "trilinear"))
  fine = (fine - fine.min()) / (fine.max() - fine.min()) + rng.normal(scale=0.02, size=fine.shape)
  return dict(volumes(seed), image=np.clip(np.round(255 * fine), 0, 255).astype(np.uint8))


@functools.lru_cache(maxsize=None)
def _setup(name):
  """(config, (model, objective, tx, schedule), initial TrainState on host)."""
  config = tiny_config(name)
  built = pretrain_lib.build(config)
  model, _, tx, _ = built
  return config, built, jax.device_get(pretrain_lib.init_train_state(config, model, tx, jax.random.key(0)))


@functools.lru_cache(maxsize=None)
def _train_step(name, num_devices):
  """(mesh, the trainer's jitted step) on the first `num_devices` devices; one compile per (objective, count)."""
  config, (model, objective, tx, schedule), _ = _setup(name)
  mesh = mesh_lib.make_mesh(jax.devices()[:num_devices])
  return mesh, step_lib.make_train_step(model, objective, tx, schedule, config, mesh)


def train(name, num_devices, steps, batch):
  """[(state, metrics) on host after each step] of `steps` train steps on the same batch (new views each step)."""
  mesh, step = _train_step(name, num_devices)
  state = mesh_lib.replicate(jax.tree.map(np.array, _setup(name)[2]), mesh)  # Own buffers: the step donates them.
  b = mesh_lib.shard_batch(batch, mesh)
  assert b["image"].sharding.num_devices == num_devices
  out = []
  for _ in range(steps):
    state, metrics = step(state, b, KEY)  # The step folds its number into the key.
    out.append(jax.device_get((state, metrics)))
  return out


def _close(a, b, what):
  a, b = np.asarray(a), np.asarray(b)
  np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5 * max(1.0, float(np.abs(a).max(initial=0.0))), err_msg=what)


@pytest.mark.parametrize("name", NAMES)
def test_one_vs_eight_devices(name):
  """Two train steps on 8 volumes, on 1 device and on 8 devices (one volume each), give the same losses and
  metrics, BatchNorm statistics, objective state (EMA teacher, DINO centre, MoCo queue) and optimizer state (after
  step 0, at learning rate 0, its moments are that step's gradients), and step 1's update the same parameters."""
  if jax.device_count() < 8:
    pytest.skip("needs 8 devices (tests/conftest.py sets XLA_FLAGS for 8 CPU devices)")
  batch = volumes()
  one, eight = train(name, 1, 2, batch), train(name, 8, 2, batch)
  for i, ((s1, m1), (s8, m8)) in enumerate(zip(one, eight)):
    assert np.isfinite(float(m1["loss"])), (name, i, m1)
    assert set(m1) == set(m8)
    for k in m1:
      _close(m1[k], m8[k], f"{name} step {i}: metric {k}")
    jax.tree.map(lambda a, b: _close(a, b, f"{name} step {i}: BatchNorm statistics"), s1.batch_stats, s8.batch_stats)
    jax.tree.map(lambda a, b: _close(a, b, f"{name} step {i}: optimizer state"), s1.opt_state, s8.opt_state)
    # After step 1 the teacher holds a little of the update: compared with the parameters below.
    rest1, rest8 = ({k: v for k, v in s.objective_state.items() if i == 0 or k != "teacher"} for s in (s1, s8))
    jax.tree.map(lambda a, b: _close(a, b, f"{name} step {i}: objective state"), rest1, rest8)
  assert float(one[0][1]["learning_rate"]) == 0 < float(one[1][1]["learning_rate"])
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b, f"{name}: step 0 (learning rate 0) moved params"),
               one[0][0].params, _setup(name)[2].params)
  _check_updated_params(name, one[1][0], eight[1][0], initial=_setup(name)[2].params)


def _adam_mu(opt_state):
  """The Adam first moment (a params-shaped tree) inside an optax state."""
  is_adam = lambda x: isinstance(x, optax.ScaleByAdamState)
  (adam,) = [s for s in jax.tree.leaves(opt_state, is_leaf=is_adam) if is_adam(s)]
  return adam.mu


def _check_updated_params(name, s1, s8, *, initial, noise=1e-6):
  """The parameters (and an EMA teacher) after an AdamW update agree on 1 and 8 devices wherever the gradient is
  more than float noise, and the update moved them.

  Adam divides each gradient entry by its own magnitude, so an entry whose gradient is zero in exact arithmetic
  (a bias that a following BatchNorm or a shift-invariant loss cancels: BYOL's projector output bias under the
  predictor's BatchNorm, the hidden biases of DINO's head, VICReg's and Barlow Twins' expander output bias) steps
  by about the learning rate in the direction of its rounding noise, which differs between device layouts.
  Entries whose first moment is below `noise` times the largest one on both meshes are those (and exact zeros,
  e.g. kernels of units a ReLU never passes); they must be few, and their moments were compared with the rest of
  the optimizer state."""
  mu1, mu8 = _adam_mu(s1.opt_state), _adam_mu(s8.opt_state)
  scale = max(float(np.abs(m).max()) for m in jax.tree.leaves(mu1))
  signal = jax.tree.map(lambda a, b: (np.abs(a) > noise * scale) | (np.abs(b) > noise * scale), mu1, mu8)
  masked, total = sum(int(np.sum(~m)) for m in jax.tree.leaves(signal)), sum(m.size for m in jax.tree.leaves(signal))
  assert masked <= 0.01 * total, f"{name}: {masked} of {total} gradient entries are float noise"
  pairs = [("params", s1.params, s8.params)]
  if "teacher" in s1.objective_state:  # The EMA teacher took (1 - momentum) of the update.
    pairs.append(("teacher", s1.objective_state["teacher"], s8.objective_state["teacher"]))
  for what, tree1, tree8 in pairs:
    for (path, a), b, m in zip(jax.tree_util.tree_flatten_with_path(tree1)[0], jax.tree.leaves(tree8),
                               jax.tree.leaves(signal)):
      _close(np.where(m, a, 0), np.where(m, b, 0), f"{name} step 1: {what}{jax.tree_util.keystr(path)}")
  moved = max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(initial)))
  assert moved > 0, f"{name}: step 1 left the parameters unchanged"


LEARNING_STEPS = 20


@pytest.mark.parametrize("name", ["simclr", "byol"])
def test_loss_falls_on_a_fixed_batch(name):
  """20 steps on the same 8 volumes (new views each step) lower the loss (mean of the last 5 below the first 5);
  collapse monitors are logged."""
  metrics = [m for _, m in train(name, 1, LEARNING_STEPS, smooth_volumes(seed=1))]
  losses = [float(m["loss"]) for m in metrics]
  assert np.all(np.isfinite(losses)), losses
  assert np.mean(losses[-5:]) < np.mean(losses[:5]), f"{name}: {losses}"
  assert {"feature_std", "feature_rank", "grad_norm"} <= set(metrics[-1]), sorted(metrics[-1])
  assert float(metrics[-1]["feature_rank"]) > 1.0, f"{name}: collapsed features"


def test_mae_with_a_3d_resnet_is_refused():
  c = load_config("volume_simclr", "quick")
  c.objective.name = "mae"
  with pytest.raises(ValueError, match="MAE needs a ViT encoder .*config.model.encoder='resnet18_3d'"):
    pretrain_lib.build(validate(c))
