"""BYOL's loss against a loop over the paper's formula, and the EMA teacher (schedule and update)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medssl_jax.objectives import byol, ema


def reference_byol(p1, p2, z1, z2):
  """L = sum over (i, j) in {(1,2), (2,1)} of mean_b || p_i/|p_i| - z_j/|z_j| ||^2, by explicit loops."""
  total = 0.0
  for p, z in ((p1, z2), (p2, z1)):
    terms = []
    for b in range(len(p)):
      pn = p[b] / np.sqrt(np.sum(p[b] ** 2))
      zn = z[b] / np.sqrt(np.sum(z[b] ** 2))
      terms.append(np.sum((pn - zn) ** 2))
    total += np.mean(terms)
  return total


@pytest.mark.parametrize("batch", [2, 7])
def test_matches_reference(batch):
  rng = np.random.default_rng(batch)
  p1, p2, z1, z2 = (rng.normal(size=(batch, 5)).astype(np.float32) for _ in range(4))
  loss, metrics = byol.byol_loss(predictions=[jnp.asarray(p1), jnp.asarray(p2)], targets=[jnp.asarray(z1), jnp.asarray(z2)])
  np.testing.assert_allclose(float(loss), reference_byol(p1, p2, z1, z2), rtol=1e-5)
  assert -1.0 <= float(metrics["cosine"]) <= 1.0


def test_edge_cases():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 3)), jnp.float32)
  loss, metrics = byol.byol_loss(predictions=[x, x], targets=[x, x])  # Identical views: perfect prediction.
  np.testing.assert_allclose(float(loss), 0.0, atol=1e-6)
  np.testing.assert_allclose(float(metrics["cosine"]), 1.0, atol=1e-6)
  loss, _ = byol.byol_loss(predictions=[x, x], targets=[-x, -x])  # Opposite: the maximum, 2 x 4.
  np.testing.assert_allclose(float(loss), 8.0, rtol=1e-6)
  # Scale-invariant in both arguments, and no gradient flows into the targets by construction of the
  # trainer (stop-gradient), but the loss itself is differentiable in the predictions.
  np.testing.assert_allclose(float(byol.byol_loss(predictions=[3 * x, x], targets=[x, 0.5 * x])[0]), 0.0, atol=1e-6)
  g = jax.grad(lambda p: byol.byol_loss(predictions=[p, x], targets=[x[::-1], x])[0])(x)
  assert np.all(np.isfinite(np.asarray(g))) and np.abs(np.asarray(g)).sum() > 0
  with pytest.raises(ValueError, match="2 views"):
    byol.byol_loss(predictions=[x], targets=[x, x])


def test_momentum_schedule_and_ema():
  m = [float(ema.momentum_schedule(k, base=0.99, final=1.0, total_steps=100)) for k in (0, 50, 100, 200)]
  np.testing.assert_allclose(m, [0.99, 0.995, 1.0, 1.0], atol=1e-7)
  teacher = {"w": jnp.ones(3), "b": {"c": jnp.zeros(2)}}
  student = {"w": jnp.zeros(3), "b": {"c": jnp.ones(2)}}
  out = ema.ema_update(teacher, student, 0.9)
  np.testing.assert_allclose(out["w"], 0.9 * np.ones(3), rtol=1e-6)
  np.testing.assert_allclose(out["b"]["c"], 0.1 * np.ones(2), rtol=1e-6)


def test_teacher_follows_the_ema_of_the_parameters():
  """In the trainer: after one step, teacher = m * initial params + (1 - m) * updated params."""
  from test_objective_zoo import _images, tiny_config
  from medssl_jax.train import mesh as mesh_lib, pretrain as pretrain_lib, step as step_lib
  config = tiny_config("byol")
  mesh = mesh_lib.make_mesh(jax.devices()[:1])
  model, objective, tx, schedule = pretrain_lib.build(config)
  state = pretrain_lib.init_train_state(config, model, tx, jax.random.key(0))
  before = jax.device_get(state.params)
  jax.tree.map(np.testing.assert_array_equal, state.objective_state["teacher"], before)
  step = step_lib.make_train_step(model, objective, tx, schedule, config, mesh)
  new, metrics = step(mesh_lib.replicate(state, mesh), mesh_lib.shard_batch(_images(16), mesh), jax.random.key(1))
  m = float(metrics["teacher_momentum"])
  assert m == pytest.approx(config.objective.momentum)
  jax.tree.map(lambda t, p0, p1: np.testing.assert_allclose(t, m * p0 + (1 - m) * p1, rtol=1e-5, atol=1e-7),
               jax.device_get(new.objective_state["teacher"]), before, jax.device_get(new.params))
