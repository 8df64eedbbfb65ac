"""ReLIC's loss against explicit loops over the paper's formula (float64), and its gradients' behaviour."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medssl_jax.objectives import relic


def reference_relic(f1, f2, h1, h2, t, alpha):
  """-sum_(a,b) mean_i log p_ab(i|i) + alpha * mean_i [KL(p_12 || p_21) + KL(p_21 || p_12)], by loops."""
  def unit(x):
    return [v / np.sqrt(sum(c * c for c in v)) for v in x.astype(np.float64)]
  f, h = (unit(f1), unit(f2)), (unit(h1), unit(h2))
  n = len(f1)

  def p(a, b, i):
    s = [np.exp(np.dot(f[a][i], h[b][j]) / t) for j in range(n)]
    return [v / sum(s) for v in s]

  contrastive = sum(-sum(np.log(p(a, b, i)[i]) for i in range(n)) / n for a, b in ((0, 1), (1, 0)))
  kl = lambda q, r: sum(q[j] * np.log(q[j] / r[j]) for j in range(n))
  invariance = sum(kl(p(0, 1, i), p(1, 0, i)) + kl(p(1, 0, i), p(0, 1, i)) for i in range(n)) / n
  return contrastive + alpha * invariance, contrastive, invariance


@pytest.mark.parametrize("n,t,alpha", [(2, 0.1, 1.0), (6, 0.2, 0.5), (5, 1.0, 3.0)])
def test_matches_reference(n, t, alpha):
  rng = np.random.default_rng(n)
  f1, f2, h1, h2 = (rng.normal(size=(n, 4)).astype(np.float32) for _ in range(4))
  loss, m = relic.relic_loss(online=[jnp.asarray(f1), jnp.asarray(f2)], targets=[jnp.asarray(h1), jnp.asarray(h2)],
                             temperature=t, invariance_weight=alpha)
  ref, contrastive, invariance = reference_relic(f1, f2, h1, h2, t, alpha)
  np.testing.assert_allclose(float(loss), ref, rtol=2e-5)
  np.testing.assert_allclose(float(m["contrastive"]), contrastive, rtol=2e-5)
  np.testing.assert_allclose(float(m["invariance"]), invariance, rtol=1e-4, atol=1e-6)


def test_invariance_is_zero_when_both_orders_agree_and_alpha_zero_is_the_contrastive_loss():
  rng = np.random.default_rng(0)
  z = jnp.asarray(rng.normal(size=(5, 3)).astype(np.float32))
  # Same online and target projections for both views: p_12 = p_21, no KL.
  _, m = relic.relic_loss(online=[z, z], targets=[z, z], temperature=0.2, invariance_weight=1.0)
  assert abs(float(m["invariance"])) < 1e-6 and float(m["top1"]) == 1.0
  a, b = (jnp.asarray(rng.normal(size=(5, 3)).astype(np.float32)) for _ in range(2))
  loss, m = relic.relic_loss(online=[a, b], targets=[b, a], temperature=0.2, invariance_weight=0.0)
  assert float(loss) == pytest.approx(float(m["contrastive"])) and float(m["invariance"]) > 0


def test_penalty_gradient_pulls_the_two_orders_together():
  """A step down the invariance term alone lowers the KL between the two orders' distributions."""
  rng = np.random.default_rng(1)
  f1, f2, h1, h2 = (jnp.asarray(rng.normal(size=(8, 4)).astype(np.float32)) for _ in range(4))
  kl = lambda f1: relic.relic_loss(online=[f1, f2], targets=[h1, h2], temperature=0.2,
                                   invariance_weight=1.0)[1]["invariance"]
  g = jax.grad(kl)(f1)
  assert float(kl(f1 - 0.05 * g)) < float(kl(f1))
