"""Barlow Twins' loss against a loop over the paper's formula (per-element sums for C)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medssl_jax import config as config_lib
from medssl_jax.objectives import barlow_twins as bt


def reference_barlow_twins(za, zb, lambd, eps=1e-5):
  """Standardise each dimension over the batch (biased var + eps, the paper's non-affine BN), then
  C_ij = sum_b za_bi zb_bj / N and L = sum_i (1 - C_ii)^2 + lambd * sum_{i != j} C_ij^2, by loops."""
  n, d = za.shape

  def standardise(z):
    out = np.zeros((n, d), np.float64)
    for j in range(d):
      m = sum(z[b, j] for b in range(n)) / n
      var = sum((z[b, j] - m) ** 2 for b in range(n)) / n
      for b in range(n):
        out[b, j] = (z[b, j] - m) / np.sqrt(var + eps)
    return out

  a, b_ = standardise(za.astype(np.float64)), standardise(zb.astype(np.float64))
  c = np.zeros((d, d))
  for i in range(d):
    for j in range(d):
      c[i, j] = sum(a[b, i] * b_[b, j] for b in range(n)) / n
  on = sum((1 - c[i, i]) ** 2 for i in range(d))
  off = sum(c[i, j] ** 2 for i in range(d) for j in range(d) if i != j)
  return on + lambd * off, on, off


@pytest.mark.parametrize("batch", [2, 9])
@pytest.mark.parametrize("lambd", [0.0051, 0.3])
def test_matches_reference(batch, lambd):
  rng = np.random.default_rng(batch)
  za, zb = (rng.normal(size=(batch, 5)).astype(np.float32) * 3 + 1 for _ in range(2))
  loss, metrics = bt.barlow_twins_loss(projections=[jnp.asarray(za), jnp.asarray(zb)], lambd=lambd)
  ref, on, off = reference_barlow_twins(za, zb, lambd)
  np.testing.assert_allclose(float(loss), ref, rtol=1e-5)
  np.testing.assert_allclose(float(metrics["on_diagonal"]), on, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(float(metrics["off_diagonal"]), off, rtol=1e-5, atol=1e-6)


def test_identical_views_and_the_optimum():
  rng = np.random.default_rng(0)
  z = rng.normal(size=(6, 4)).astype(np.float32)
  loss, metrics = bt.barlow_twins_loss(projections=[jnp.asarray(z), jnp.asarray(z)], lambd=0.0051)
  ref, on, _ = reference_barlow_twins(z, z, 0.0051)
  np.testing.assert_allclose(float(loss), ref, rtol=1e-5)
  assert on < 1e-8  # C_ii = var / (var + eps): the invariance term vanishes up to eps.
  np.testing.assert_allclose(float(metrics["diagonal_correlation"]), 1.0, atol=1e-4)
  # Identical views whose dimensions are decorrelated over the batch: C = I (up to eps), loss ~ 0.
  h = np.array([[1, 1], [1, -1], [-1, 1], [-1, -1]], np.float32)
  loss, _ = bt.barlow_twins_loss(projections=[jnp.asarray(h), jnp.asarray(2 * h + 5)], lambd=0.5)
  np.testing.assert_allclose(float(loss), 0.0, atol=1e-8)


def test_constant_inputs_have_no_nan():
  c = jnp.ones((4, 3), jnp.float32)
  loss, metrics = bt.barlow_twins_loss(projections=[c, 7 * c], lambd=0.0051)
  np.testing.assert_allclose(float(loss), 3.0, rtol=1e-6)  # Standardised to 0: C = 0, loss = D.
  assert all(np.isfinite(float(v)) for v in metrics.values())
  g = jax.grad(lambda a: bt.barlow_twins_loss(projections=[a, c], lambd=0.0051)[0])(c)
  assert np.all(np.isfinite(np.asarray(g)))


def test_bad_shapes_raise():
  x = jnp.ones((4, 3))
  with pytest.raises(ValueError, match="2 views"):
    bt.barlow_twins_loss(projections=[x])
  with pytest.raises(ValueError, match="same shape"):
    bt.barlow_twins_loss(projections=[x, jnp.ones((4, 2))])
  with pytest.raises(ValueError, match=r"\[N, D\]"):
    bt.barlow_twins_loss(projections=[x[None], x[None]])
  with pytest.raises(ValueError, match="at least 2"):
    bt.barlow_twins_loss(projections=[x[:1], x[:1]])


def test_adapter_uses_config_lambda():
  config = config_lib.load("fundus_barlow_twins")
  assert len(config.model.projector_hidden_dims) == 2  # The paper's 3-layer projector.
  assert len(config_lib.load("fundus_barlow_twins", "quick").model.projector_hidden_dims) == 2
  config.objective.barlow_twins.off_diagonal_weight = 0.2
  rng = np.random.default_rng(5)
  za, zb = (rng.normal(size=(5, 4)).astype(np.float32) for _ in range(2))
  loss, metrics, updates = bt.BARLOW_TWINS.loss(
      student=[{"projection": jnp.asarray(za)}, {"projection": jnp.asarray(zb)}], teacher=None, batch={},
      state={}, step=0, config=config)
  np.testing.assert_allclose(float(loss), reference_barlow_twins(za, zb, 0.2)[0], rtol=1e-5)
  assert updates == {}
