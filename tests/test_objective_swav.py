"""SwAV: Sinkhorn-Knopp and the swapped-prediction loss against loops over the paper's algorithm."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medssl_jax.objectives import swav

# Jitted once per shape: far fewer compiles than op-by-op dispatch.
swav_loss = jax.jit(swav.swav_loss, static_argnames=("num_global_views", "temperature", "epsilon", "sinkhorn_iters"))
sinkhorn = jax.jit(swav.sinkhorn, static_argnames=("epsilon", "iters"))


def reference_sinkhorn(scores, epsilon, iters):
  """Algorithm 1 of the SwAV paper (its `sinkhorn`), element by element in float64."""
  b, k = scores.shape
  q = np.zeros((k, b))
  for i in range(k):
    for j in range(b):
      q[i, j] = np.exp(scores[j, i] / epsilon)
  q /= q.sum()
  for _ in range(iters):
    for i in range(k):  # Prototypes: mass 1/K each.
      q[i, :] = q[i, :] / q[i, :].sum() / k
    for j in range(b):  # Samples: mass 1/B each.
      q[:, j] = q[:, j] / q[:, j].sum() / b
  return (q * b).T


def reference_swav(scores, num_global, temperature, epsilon, iters):
  """1/|G| sum_i 1/(V-1) sum_{v != i} mean_b -sum_k q_i[b,k] log softmax(s_v[b]/T)_k, by loops."""
  v_count = len(scores)
  total = 0.0
  for i in range(num_global):
    q = reference_sinkhorn(scores[i], epsilon, iters)
    sub = 0.0
    for v in range(v_count):
      if v == i:
        continue
      per_sample = []
      for b in range(len(q)):
        x = scores[v][b] / temperature
        log_p = x - np.log(np.sum(np.exp(x - x.max()))) - x.max()
        per_sample.append(-sum(q[b, k] * log_p[k] for k in range(len(x))))
      sub += np.mean(per_sample)
    total += sub / (v_count - 1)
  return total / num_global


def _scores(rng, views, b, k, d=6):
  """Cosine scores of random unit projections with random unit prototypes, as the head makes them."""
  c = rng.normal(size=(d, k))
  c /= np.linalg.norm(c, axis=0, keepdims=True)
  out = []
  for _ in range(views):
    z = rng.normal(size=(b, d))
    out.append((z / np.linalg.norm(z, axis=1, keepdims=True)) @ c)
  return [s.astype(np.float32) for s in out]


@pytest.mark.parametrize("b,k,iters", [(2, 3, 3), (8, 5, 3), (6, 10, 1)])
def test_sinkhorn_matches_reference(b, k, iters):
  s = _scores(np.random.default_rng(b), 1, b, k)[0]
  q = np.asarray(sinkhorn(jnp.asarray(s), epsilon=0.05, iters=iters))
  np.testing.assert_allclose(q, reference_sinkhorn(s.astype(np.float64), 0.05, iters), rtol=1e-4, atol=1e-6)


def test_sinkhorn_marginals():
  b, k = 16, 8
  s = jnp.asarray(_scores(np.random.default_rng(0), 1, b, k)[0])
  for iters in (1, 3):
    q = np.asarray(sinkhorn(s, epsilon=0.05, iters=iters))
    np.testing.assert_allclose(q.sum(axis=1), np.ones(b), rtol=1e-5)  # Each sample: a distribution.
    assert np.all(q >= 0)
  q = np.asarray(sinkhorn(s, epsilon=0.05, iters=200))
  np.testing.assert_allclose(q.sum(axis=0), np.full(k, b / k), rtol=1e-3)  # Equipartition in the limit.
  # Small epsilon and large scores: exp(scores / epsilon) would overflow float32 without the max shift.
  q = np.asarray(sinkhorn(s * 10, epsilon=0.01, iters=3))
  assert np.all(np.isfinite(q))
  np.testing.assert_allclose(q.sum(axis=1), np.ones(b), rtol=1e-5)
  # All samples alike: the codes are spread uniformly over the prototypes.
  q = np.asarray(sinkhorn(jnp.tile(s[:1], (b, 1)), epsilon=0.05, iters=3))
  np.testing.assert_allclose(q, np.full((b, k), 1.0 / k), rtol=1e-5)
  with pytest.raises(ValueError, match=r"\[B, K\]"):
    swav.sinkhorn(s[0], epsilon=0.05, iters=3)


@pytest.mark.parametrize("batch,views", [(2, 2), (7, 4), (5, 6)])
def test_loss_matches_reference(batch, views):
  scores = _scores(np.random.default_rng(10 * batch + views), views, batch, 5)
  loss, metrics = swav_loss(scores=[jnp.asarray(s) for s in scores], num_global_views=2, temperature=0.1,
                                 epsilon=0.05, sinkhorn_iters=3)
  ref = reference_swav([s.astype(np.float64) for s in scores], 2, 0.1, 0.05, 3)
  np.testing.assert_allclose(float(loss), ref, rtol=1e-4)
  assert 0.0 <= float(metrics["code_entropy"]) <= np.log(5) + 1e-5
  assert 0.0 < float(metrics["prototype_usage"]) <= 1.0 and 0.0 <= float(metrics["swap_top1"]) <= 1.0


def test_one_global_view():
  scores = _scores(np.random.default_rng(3), 3, 4, 6)
  loss, _ = swav_loss(scores=[jnp.asarray(s) for s in scores], num_global_views=1, temperature=0.2,
                           epsilon=0.1, sinkhorn_iters=2)
  np.testing.assert_allclose(float(loss), reference_swav(scores, 1, 0.2, 0.1, 2), rtol=1e-4)


def test_codes_are_stop_gradient():
  """The gradient flows only through the predictions: equal to the loss with the codes as constants."""
  scores = [jnp.asarray(s) for s in _scores(np.random.default_rng(4), 4, 6, 5)]
  codes = [sinkhorn(s, epsilon=0.05, iters=3) for s in scores[:2]]

  def fixed(ss):
    total = 0.0
    for i, q in enumerate(codes):
      for v in range(4):
        if v != i:
          total += jnp.mean(-jnp.sum(q * jax.nn.log_softmax(ss[v] / 0.1), axis=-1))
    return total / 6

  g = jax.grad(lambda ss: swav_loss(scores=ss, temperature=0.1)[0])(scores)
  g_ref = jax.grad(fixed)(scores)
  for a, b in zip(g, g_ref):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
  assert all(np.isfinite(np.asarray(a)).all() for a in g) and float(jnp.abs(g[0]).sum()) > 0


def test_edge_cases():
  k = 4
  # All scores equal: uniform codes and predictions, loss = log K, no NaN.
  same = [jnp.zeros((2, k))] * 3
  loss, metrics = swav_loss(scores=same)
  np.testing.assert_allclose(float(loss), np.log(k), rtol=1e-6)
  np.testing.assert_allclose(float(metrics["code_entropy"]), np.log(k), rtol=1e-6)
  # Identical views: finite, and equal to the reference.
  s = _scores(np.random.default_rng(5), 1, 2, k)[0]
  loss, _ = swav_loss(scores=[jnp.asarray(s)] * 4)
  np.testing.assert_allclose(float(loss), reference_swav([s] * 4, 2, 0.1, 0.05, 3), rtol=1e-4)
  x = jnp.zeros((3, k))
  with pytest.raises(ValueError, match="at least 2 views"):
    swav.swav_loss(scores=[x])
  with pytest.raises(ValueError, match="num_global_views=3"):
    swav.swav_loss(scores=[x, x], num_global_views=3)
  with pytest.raises(ValueError, match="same B and K"):
    swav.swav_loss(scores=[x, jnp.zeros((3, k + 1))])


def test_head_normalises_projection_and_prototypes():
  head = swav.SwAVHead(hidden_dims=(16,), out_dim=8, num_prototypes=5)
  x = jnp.asarray(np.random.default_rng(6).normal(size=(4, 12)), jnp.float32)
  variables = head.init(jax.random.key(0), x, train=False)
  out, _ = head.apply(variables, x, train=True, mutable=["batch_stats"])
  assert out["logits"].shape == (4, 5) and out["projection"].shape == (4, 8)
  np.testing.assert_allclose(np.linalg.norm(out["projection"], axis=1), 1.0, rtol=1e-5)
  assert np.all(np.abs(np.asarray(out["logits"])) <= 1.0 + 1e-5)  # Cosines with unit prototypes.
  # Rescaling the prototype kernel changes nothing: the forward pass normalises it (no post-step hook).
  scaled = jax.tree_util.tree_map_with_path(
      lambda p, v: v * 7.0 if "prototypes" in jax.tree_util.keystr(p) else v, variables)
  out2, _ = head.apply(scaled, x, train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(np.asarray(out2["logits"]), np.asarray(out["logits"]), rtol=1e-5, atol=1e-6)
