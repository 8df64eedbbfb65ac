"""VICReg's loss against a loop over the paper's formula (per-element sums for the covariance)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medssl_jax import config as config_lib
from medssl_jax.objectives import vicreg


def reference_vicreg(za, zb, lam=25.0, mu=25.0, nu=1.0, gamma=1.0, eps=1e-4):
  """lam * s + mu * [v(Z) + v(Z')] + nu * [c(Z) + c(Z')], unbiased (N - 1) statistics, by loops."""
  za, zb = za.astype(np.float64), zb.astype(np.float64)
  n, d = za.shape
  s = sum((za[b, j] - zb[b, j]) ** 2 for b in range(n) for j in range(d)) / (n * d)

  def v_and_c(z):
    means = [sum(z[b, j] for b in range(n)) / n for j in range(d)]
    cov = np.zeros((d, d))
    for i in range(d):
      for j in range(d):
        cov[i, j] = sum((z[b, i] - means[i]) * (z[b, j] - means[j]) for b in range(n)) / (n - 1)
    v = sum(max(0.0, gamma - np.sqrt(cov[j, j] + eps)) for j in range(d)) / d
    c = sum(cov[i, j] ** 2 for i in range(d) for j in range(d) if i != j) / d
    return v, c

  (va, ca), (vb, cb) = v_and_c(za), v_and_c(zb)
  return lam * s + mu * (va + vb) + nu * (ca + cb), s, va + vb, ca + cb


@pytest.mark.parametrize("batch", [2, 8])
@pytest.mark.parametrize("weights", [(25.0, 25.0, 1.0), (1.0, 2.0, 3.0)])
@pytest.mark.parametrize("scale", [0.3, 2.0])  # Below and above the variance hinge's target std of 1.
def test_matches_reference(batch, weights, scale):
  rng = np.random.default_rng(batch)
  za, zb = (rng.normal(size=(batch, 5)).astype(np.float32) * scale for _ in range(2))
  loss, metrics = vicreg.vicreg_loss(projections=[jnp.asarray(za), jnp.asarray(zb)], sim_weight=weights[0],
                                     std_weight=weights[1], cov_weight=weights[2])
  ref, s, v, c = reference_vicreg(za, zb, *weights)
  np.testing.assert_allclose(float(loss), ref, rtol=1e-5)
  np.testing.assert_allclose(float(metrics["invariance"]), s, rtol=1e-5)
  np.testing.assert_allclose(float(metrics["variance"]), v, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(float(metrics["covariance"]), c, rtol=1e-5, atol=1e-7)


def test_identical_views():
  z = np.random.default_rng(0).normal(size=(2, 4)).astype(np.float32)  # A batch of 2.
  loss, metrics = vicreg.vicreg_loss(projections=[jnp.asarray(z), jnp.asarray(z)])
  assert float(metrics["invariance"]) == 0.0
  np.testing.assert_allclose(float(loss), reference_vicreg(z, z)[0], rtol=1e-5)


def test_constant_inputs_have_no_nan():
  c = jnp.ones((4, 3), jnp.float32)
  loss, metrics = vicreg.vicreg_loss(projections=[c, c])
  # std = sqrt(0 + 1e-4) = 0.01 in every dimension: v = 0.99 per view; no covariance, no invariance.
  np.testing.assert_allclose(float(metrics["variance"]), 2 * 0.99, rtol=1e-6)
  np.testing.assert_allclose(float(loss), 25.0 * 2 * 0.99, rtol=1e-6)
  assert float(metrics["covariance"]) == 0.0
  g = jax.grad(lambda a: vicreg.vicreg_loss(projections=[a, c])[0])(c)
  assert np.all(np.isfinite(np.asarray(g)))


def test_bad_shapes_raise():
  x = jnp.ones((4, 3))
  with pytest.raises(ValueError, match="2 views"):
    vicreg.vicreg_loss(projections=[x, x, x])
  with pytest.raises(ValueError, match="same shape"):
    vicreg.vicreg_loss(projections=[x, jnp.ones((3, 3))])
  with pytest.raises(ValueError, match=r"\[N, D\]"):
    vicreg.vicreg_loss(projections=[x[0], x[0]])
  with pytest.raises(ValueError, match="at least 2"):
    vicreg.vicreg_loss(projections=[x[:1], x[:1]])


def test_adapter_uses_config_weights():
  config = config_lib.load("fundus_vicreg")
  w = config.objective.vicreg
  assert (w.sim_weight, w.std_weight, w.cov_weight) == (25.0, 25.0, 1.0)
  assert len(config_lib.load("fundus_vicreg", "quick").model.projector_hidden_dims) == 2
  w.sim_weight, w.std_weight, w.cov_weight = 2.0, 3.0, 4.0
  rng = np.random.default_rng(5)
  za, zb = (rng.normal(size=(6, 4)).astype(np.float32) for _ in range(2))
  loss, metrics, updates = vicreg.VICREG.loss(
      student=[{"projection": jnp.asarray(za)}, {"projection": jnp.asarray(zb)}], teacher=None, batch={},
      state={}, step=0, config=config)
  np.testing.assert_allclose(float(loss), reference_vicreg(za, zb, 2.0, 3.0, 4.0)[0], rtol=1e-5)
  assert updates == {} and set(metrics) == {"invariance", "variance", "covariance"}
