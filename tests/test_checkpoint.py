"""orbax checkpoints: keep N, restore the latest in a fresh manager, refuse a workdir of another run."""
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from medssl_jax.train import checkpoint as ckpt_lib
from medssl_jax.train.state import TrainState


def make_state(seed):
  k = jax.random.key(seed)
  params = {"dense": {"kernel": jax.random.normal(k, (3, 4)), "bias": jnp.zeros(4)}}
  tx = optax.adamw(1e-3)
  return TrainState(step=jnp.asarray(seed, jnp.int32), params=params, batch_stats={"bn": {"mean": jnp.ones(4)}},
                    opt_state=tx.init(params))


def test_save_keep_and_restore(tmp_path):
  mgr = ckpt_lib.make_manager(str(tmp_path), keep=2)
  for step in (1, 2, 3):
    ckpt_lib.save(mgr, step, make_state(step), {"iter": step, "nested": {"pos": [step, 2]}})
  mgr.wait_until_finished()
  mgr.close()
  assert sorted(int(p) for p in os.listdir(tmp_path / "checkpoints") if p.isdigit()) == [2, 3]
  fresh = ckpt_lib.make_manager(str(tmp_path), keep=2)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), make_state(0))
  step, state, iter_state = ckpt_lib.restore_latest(fresh, abstract)
  assert step == 3 and iter_state == {"iter": 3, "nested": {"pos": [3, 2]}}
  expected = make_state(3)
  jax.tree.map(np.testing.assert_array_equal, state, expected)
  assert type(state.opt_state) is type(expected.opt_state)


def test_restore_latest_none_when_empty(tmp_path):
  mgr = ckpt_lib.make_manager(str(tmp_path))
  assert ckpt_lib.restore_latest(mgr, make_state(0)) is None


def test_config_check(tmp_path):
  c = ml_collections.ConfigDict({"mode": "pretrain", "train": {"num_steps": 10, "log_every": 1}, "seed": 0})
  ckpt_lib.save_or_check_config(c, str(tmp_path))
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved["train"]["num_steps"] == 10
  # Allowed: what happens after pretraining, and logging cadence.
  c.mode = "linear_eval"
  c.train.log_every = 5
  ckpt_lib.save_or_check_config(c, str(tmp_path))
  c.train.num_steps = 20
  c.seed = 1
  with pytest.raises(ValueError, match=r"different config.*seed: saved=0 now=1.*train.num_steps: saved=10 now=20"):
    ckpt_lib.save_or_check_config(c, str(tmp_path))
  assert json.loads((tmp_path / "config.json").read_text()) == saved  # Nothing overwritten.


def test_view_keys_added_later_do_not_lock_old_workdirs(tmp_path):
  """A config.json written before views had vflip_p / rot90_p resumes while they hold their old-behaviour
  value (0), and is refused once one is switched on."""
  from medssl_jax import config as config_lib
  from medssl_jax.augment import views as views_lib

  config = config_lib.load("demo_simclr", "quick")
  ckpt_lib.save_or_check_config(config, str(tmp_path))
  path = tmp_path / ckpt_lib.CONFIG_FILE
  saved = json.loads(path.read_text())
  assert all(k not in v for v in saved["augment"]["views"] for k in views_lib.LATER_KEYS)
  # As an older version wrote it: the full view without the later keys (the same file, here).
  ckpt_lib.save_or_check_config(config_lib.load("demo_simclr", "quick"), str(tmp_path))
  changed = config_lib.load("demo_simclr", "quick")
  changed.augment.views[0].vflip_p = 0.5
  with pytest.raises(ValueError, match="augment.views"):
    ckpt_lib.save_or_check_config(changed, str(tmp_path))
