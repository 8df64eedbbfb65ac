"""SimSiam's loss against a loop over the paper's formula; stop-gradient, collapse monitor, heads."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medssl_jax import config as config_lib
from medssl_jax.objectives import simsiam


def _cos(a, b):
  return np.sum(a * b) / (np.sqrt(np.sum(a * a)) * np.sqrt(np.sum(b * b)))


def reference_simsiam(p1, p2, z1, z2):
  """L = D(p1, z2)/2 + D(p2, z1)/2, D(p, z) = -mean_b cos(p_b, z_b), by explicit loops."""
  total = 0.0
  for p, z in ((p1, z2), (p2, z1)):
    total += -np.mean([_cos(p[b], z[b]) for b in range(len(p))]) / 2
  return total


def reference_output_std(z):
  """Per dimension: std over the batch of z_b / ||z_b||; then the mean over dimensions."""
  n, d = z.shape
  zn = np.stack([z[b] / np.sqrt(np.sum(z[b] ** 2)) for b in range(n)])
  stds = []
  for j in range(d):
    m = sum(zn[b, j] for b in range(n)) / n
    stds.append(np.sqrt(sum((zn[b, j] - m) ** 2 for b in range(n)) / n))
  return np.mean(stds)


@pytest.mark.parametrize("batch", [2, 7])
def test_matches_reference(batch):
  rng = np.random.default_rng(batch)
  p1, p2, z1, z2 = (rng.normal(size=(batch, 6)).astype(np.float32) for _ in range(4))
  loss, metrics = simsiam.simsiam_loss(predictions=[jnp.asarray(p1), jnp.asarray(p2)],
                                       projections=[jnp.asarray(z1), jnp.asarray(z2)])
  np.testing.assert_allclose(float(loss), reference_simsiam(p1, p2, z1, z2), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(float(metrics["cosine"]), -reference_simsiam(p1, p2, z1, z2), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(float(metrics["output_std"]),
                             (reference_output_std(z1) + reference_output_std(z2)) / 2, rtol=1e-5)
  assert -1.0 <= float(loss) <= 1.0


def test_stop_gradient_is_inside_the_loss():
  rng = np.random.default_rng(0)
  p1, p2, z1, z2 = (jnp.asarray(rng.normal(size=(4, 3)), jnp.float32) for _ in range(4))
  f = lambda p1, p2, z1, z2: simsiam.simsiam_loss(predictions=[p1, p2], projections=[z1, z2])[0]
  gp1, gp2, gz1, gz2 = jax.grad(f, argnums=(0, 1, 2, 3))(p1, p2, z1, z2)
  assert np.abs(np.asarray(gp1)).sum() > 0 and np.abs(np.asarray(gp2)).sum() > 0
  np.testing.assert_array_equal(np.asarray(gz1), 0.0)  # sg(z): no gradient into the projections' branch.
  np.testing.assert_array_equal(np.asarray(gz2), 0.0)


def test_edge_cases():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 5)), jnp.float32)  # A batch of 2.
  loss, metrics = simsiam.simsiam_loss(predictions=[x, x], projections=[x, x])  # Perfect prediction.
  np.testing.assert_allclose(float(loss), -1.0, atol=1e-6)
  loss, _ = simsiam.simsiam_loss(predictions=[x, x], projections=[-x, -x])  # The maximum.
  np.testing.assert_allclose(float(loss), 1.0, atol=1e-6)
  # Scale-invariant.
  np.testing.assert_allclose(float(simsiam.simsiam_loss(predictions=[3 * x, x], projections=[x, 0.5 * x])[0]),
                             -1.0, atol=1e-6)
  # Collapsed (all outputs equal) and all-constant inputs: std 0, no NaN; zero vectors too.
  c = jnp.ones((4, 5), jnp.float32)
  loss, metrics = simsiam.simsiam_loss(predictions=[c, c], projections=[c, c])
  assert float(metrics["output_std"]) == pytest.approx(0.0, abs=1e-7)
  z = jnp.zeros((4, 5), jnp.float32)
  loss, metrics = simsiam.simsiam_loss(predictions=[z, z], projections=[z, z])
  assert all(np.isfinite(float(v)) for v in (loss, *metrics.values()))
  g = jax.grad(lambda p: simsiam.simsiam_loss(predictions=[p, p], projections=[c, c])[0])(c)
  assert np.all(np.isfinite(np.asarray(g)))


def test_bad_shapes_raise():
  x = jnp.ones((4, 3))
  with pytest.raises(ValueError, match="2 views"):
    simsiam.simsiam_loss(predictions=[x], projections=[x, x])
  with pytest.raises(ValueError, match=r"\[B, D\]"):
    simsiam.simsiam_loss(predictions=[x[None], x[None]], projections=[x, x])
  with pytest.raises(ValueError, match="same"):
    simsiam.simsiam_loss(predictions=[x, x], projections=[x, jnp.ones((4, 2))])


def test_heads_and_adapter():
  config = config_lib.load("fundus_simsiam")
  assert len(config.model.projector_hidden_dims) == 2  # The paper's 3-layer projector.
  assert len(config_lib.load("fundus_simsiam", "quick").model.projector_hidden_dims) == 2
  heads = simsiam.SIMSIAM.heads(config)
  assert heads["projector"].out_bn and not heads["predictor"].out_bn
  assert config.model.predictor_hidden_dims[0] < config.model.projector_dim  # Bottleneck.
  assert simsiam.SIMSIAM.teacher is False
  rng = np.random.default_rng(3)
  views = [{"projection": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32),
            "prediction": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)} for _ in range(2)]
  loss, metrics, updates = simsiam.SIMSIAM.loss(student=views, teacher=None, batch={}, state={}, step=0,
                                                config=config)
  ref = reference_simsiam(*(np.asarray(v[k]) for k in ("prediction", "projection") for v in views))
  np.testing.assert_allclose(float(loss), ref, rtol=1e-5)
  assert updates == {} and {"cosine", "output_std"} <= set(metrics)
