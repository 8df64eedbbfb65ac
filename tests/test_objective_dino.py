"""DINO: the loss against loops over the paper's formula, teacher-temperature warm-up, the centre EMA."""
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from medssl_jax import objectives
from medssl_jax.objectives import dino
from medssl_jax.protocols import encoders

# Jitted once per shape: far fewer compiles than op-by-op dispatch.
dino_loss = jax.jit(dino.dino_loss, static_argnames=("student_temperature",))


def _softmax(x):
  e = np.exp(x - x.max())
  return e / e.sum()


def reference_dino(student, teacher, center, tau_s, tau_t):
  """mean over pairs (t, s != t) of mean_b -sum_k P_t[b,k] log P_s[b,k], by explicit loops."""
  terms = []
  for t in range(len(teacher)):
    for s in range(len(student)):
      if s == t:
        continue
      per_sample = []
      for b in range(len(student[s])):
        p_t = _softmax((teacher[t][b] - center) / tau_t)
        p_s = _softmax(student[s][b] / tau_s)
        per_sample.append(-sum(p_t[k] * np.log(p_s[k]) for k in range(len(p_t))))
      terms.append(np.mean(per_sample))
  return np.mean(terms)


def _logits(rng, views, b, k):
  return [np.clip(rng.normal(scale=0.5, size=(b, k)), -1, 1).astype(np.float32) for _ in range(views)]


@pytest.mark.parametrize("batch,views", [(2, 2), (5, 4), (3, 6)])
def test_loss_matches_reference(batch, views):
  rng = np.random.default_rng(10 * batch + views)
  k = 7
  student, teacher = _logits(rng, views, batch, k), _logits(rng, 2, batch, k)
  center = rng.normal(scale=0.1, size=k).astype(np.float32)
  loss, metrics = dino_loss(student_logits=[jnp.asarray(x) for x in student],
                            teacher_logits=[jnp.asarray(x) for x in teacher], center=jnp.asarray(center),
                            student_temperature=0.1, teacher_temperature=0.04)
  np.testing.assert_allclose(float(loss), reference_dino(student, teacher, center, 0.1, 0.04), rtol=1e-4)
  # loss = H(P_t) + KL(P_t || P_s), averaged: both parts are reported.
  np.testing.assert_allclose(float(metrics["teacher_entropy"] + metrics["kl"]), float(loss), rtol=1e-5)
  assert float(metrics["kl"]) >= -1e-5 and 0 <= float(metrics["teacher_entropy"]) <= np.log(k) + 1e-5
  assert 0 <= float(metrics["teacher_marginal_entropy"]) <= np.log(k) + 1e-5


def test_one_teacher_view_and_traced_temperature():
  rng = np.random.default_rng(1)
  student, teacher = _logits(rng, 3, 4, 5), _logits(rng, 1, 4, 5)
  center = np.zeros(5, np.float32)
  loss, _ = dino_loss(student_logits=[jnp.asarray(x) for x in student], teacher_logits=[jnp.asarray(teacher[0])],
                      center=jnp.asarray(center), student_temperature=0.2, teacher_temperature=jnp.float32(0.07))
  np.testing.assert_allclose(float(loss), reference_dino(student, teacher, center, 0.2, 0.07), rtol=1e-4)


def test_teacher_temperature_warmup():
  t = lambda step, warmup: float(dino.teacher_temperature(step, start=0.04, final=0.07, warmup_steps=warmup))
  np.testing.assert_allclose([t(0, 30), t(15, 30), t(30, 30), t(100, 30)], [0.04, 0.055, 0.07, 0.07], rtol=1e-6)
  np.testing.assert_allclose([t(0, 0), t(5, 0)], [0.07, 0.07], rtol=1e-6)  # No warm-up: constant.
  np.testing.assert_allclose(t(jnp.int32(10), 40), 0.0475, rtol=1e-6)  # A traced step, as the trainer passes.


def test_center_ema():
  rng = np.random.default_rng(2)
  center = rng.normal(size=4).astype(np.float32)
  t1, t2 = rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=(3, 4)).astype(np.float32)
  new = dino.update_center(center=jnp.asarray(center), teacher_logits=[jnp.asarray(t1), jnp.asarray(t2)], momentum=0.9)
  batch_mean = [np.mean([row[k] for row in list(t1) + list(t2)]) for k in range(4)]
  np.testing.assert_allclose(np.asarray(new), 0.9 * center + 0.1 * np.asarray(batch_mean), rtol=1e-5)
  # Repeated updates with a fixed teacher output converge to its mean.
  c = jnp.zeros(4)
  for _ in range(200):
    c = dino.update_center(center=c, teacher_logits=[jnp.asarray(t1)], momentum=0.9)
  np.testing.assert_allclose(np.asarray(c), t1.mean(axis=0), rtol=1e-4, atol=1e-6)
  with pytest.raises(ValueError, match="K=4"):
    dino.update_center(center=jnp.zeros(5), teacher_logits=[jnp.asarray(t1)], momentum=0.9)


def test_adapter_returns_the_centre_update_and_init_state():
  """`_loss` (what the trainer calls) uses the state's centre and the step's temperature, and returns
  the EMA centre; `init_state` makes a zero centre of size K."""
  dino_keys = dict(teacher_temperature_start=0.04, teacher_temperature=0.07, teacher_temperature_warmup_steps=10,
                   center_momentum=0.8)
  c = ml_collections.ConfigDict(dict(objective=dict(temperature=0.1, dino=dino_keys)))
  state = dino.DINO.init_state(c, {"logits": jax.ShapeDtypeStruct((2, 6), jnp.float32)})
  np.testing.assert_array_equal(np.asarray(state["center"]), np.zeros(6))
  rng = np.random.default_rng(3)
  student, teacher = _logits(rng, 4, 3, 6), _logits(rng, 2, 3, 6)
  state = {"center": jnp.asarray(rng.normal(size=6), jnp.float32)}
  loss, metrics, updates = dino.DINO.loss(student=[{"logits": jnp.asarray(x)} for x in student],
                                          teacher=[{"logits": jnp.asarray(x)} for x in teacher],
                                          batch=None, state=state, step=jnp.int32(5), config=c)
  np.testing.assert_allclose(float(metrics["teacher_temperature"]), 0.055, rtol=1e-6)
  np.testing.assert_allclose(float(loss), reference_dino(student, teacher, np.asarray(state["center"]), 0.1, 0.055),
                             rtol=1e-4)
  expected = 0.8 * np.asarray(state["center"]) + 0.2 * np.concatenate(teacher).mean(axis=0)
  np.testing.assert_allclose(np.asarray(updates["center"]), expected, rtol=1e-5)


def test_edge_cases_and_gradients():
  k = 5
  x = jnp.asarray(_logits(np.random.default_rng(4), 1, 2, k)[0])  # A batch of 2.
  # Identical views, student = teacher at the same temperature, no centre: KL = 0, loss = H(P_t).
  loss, metrics = dino_loss(student_logits=[x] * 3, teacher_logits=[x] * 2, center=jnp.zeros(k),
                            student_temperature=0.1, teacher_temperature=0.1)
  np.testing.assert_allclose(float(metrics["kl"]), 0.0, atol=1e-5)
  np.testing.assert_allclose(float(loss), float(metrics["teacher_entropy"]), rtol=1e-5)
  # All outputs equal (uniform collapse): loss = teacher entropy = log K, no NaN.
  z = jnp.zeros((2, k))
  loss, metrics = dino_loss(student_logits=[z, z], teacher_logits=[z, z], center=jnp.zeros(k))
  np.testing.assert_allclose([float(loss), float(metrics["teacher_entropy"])], [np.log(k)] * 2, rtol=1e-6)
  # Gradients flow into the student only; the teacher and the centre are stop-gradient.
  g_s, g_t, g_c = jax.grad(lambda s, t, c: dino.dino_loss(student_logits=[s, s[::-1]], teacher_logits=[t, t], center=c)[0],
                           argnums=(0, 1, 2))(x, x * 0.5, jnp.ones(k) * 0.1)
  assert np.all(np.isfinite(np.asarray(g_s))) and float(jnp.abs(g_s).sum()) > 0
  assert float(jnp.abs(g_t).sum()) == 0.0 and float(jnp.abs(g_c).sum()) == 0.0
  with pytest.raises(ValueError, match="2\\+ student views"):
    dino.dino_loss(student_logits=[x], teacher_logits=[x], center=jnp.zeros(k))
  with pytest.raises(ValueError, match="3 teacher and 2 student"):
    dino.dino_loss(student_logits=[x, x], teacher_logits=[x, x, x], center=jnp.zeros(k))
  with pytest.raises(ValueError, match="same B and K"):
    dino.dino_loss(student_logits=[x, jnp.zeros((2, k + 1))], teacher_logits=[x], center=jnp.zeros(k))
  with pytest.raises(ValueError, match="center must be"):
    dino.dino_loss(student_logits=[x, x], teacher_logits=[x], center=jnp.zeros(k + 1))


@pytest.mark.parametrize("use_bn", [False, True])
def test_head(use_bn):
  head = dino.DINOHead(hidden_dims=(16, 16), bottleneck_dim=8, num_prototypes=5, use_bn=use_bn)
  x = jnp.asarray(np.random.default_rng(6).normal(size=(4, 12)), jnp.float32)
  variables = head.init(jax.random.key(0), x, train=False)
  assert [k for k in variables["params"] if k.startswith("dense")] == ["dense1", "dense2"]  # + bottleneck: 3 layers.
  out, _ = head.apply(variables, x, train=True, mutable=["batch_stats"])
  assert out["projection"].shape == (4, 8) and out["logits"].shape == (4, 5)
  assert np.all(np.abs(np.asarray(out["logits"])) <= 1.0 + 1e-5)  # Unit bottleneck . unit weight columns (g = 1).
  scaled = jax.tree_util.tree_map_with_path(
      lambda p, v: v * 3.0 if "last_layer" in jax.tree_util.keystr(p) else v, variables)
  out2, _ = head.apply(scaled, x, train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(np.asarray(out2["logits"]), np.asarray(out["logits"]), rtol=1e-5, atol=1e-6)


def test_dino_is_evaluated_on_its_teacher():
  """DINO's paper evaluates the EMA teacher; BYOL's evaluates the online network (the student)."""
  state = SimpleNamespace(params={"w": 1}, batch_stats={"b": 2}, objective_state={"teacher": {"w": 3}, "center": 0},
                          variables={"params": {"w": 1}, "batch_stats": {"b": 2}})
  assert encoders.evaluated_variables(objectives.get_objective("dino"), state) == {"params": {"w": 3},
                                                                                   "batch_stats": {"b": 2}}
  assert encoders.evaluated_variables(objectives.get_objective("byol"), state)["params"] == {"w": 1}
