"""The label-aware contrastive loss against an independent loop implementation of the formula."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medssl_jax import objectives
from medssl_jax.objectives import contrastive_loss
from medssl_jax import experiment


def reference_loss(emb, ids, t, mask=None):
  """SupCon L_out written as the paper states it, one anchor and one pair at a time."""
  emb = np.asarray(emb, np.float64)
  z = emb / np.linalg.norm(emb, axis=1, keepdims=True)
  n = len(z)
  valid = np.ones(n, bool) if mask is None else np.asarray(mask, bool)
  total, anchors = 0.0, 0
  for i in range(n):
    if not valid[i]:
      continue
    others = [a for a in range(n) if a != i and valid[a]]
    pos = [p for p in others if ids[p] == ids[i]]
    if not pos:
      continue
    denom = sum(math.exp(z[i] @ z[a] / t) for a in others)
    total += -sum(math.log(math.exp(z[i] @ z[p] / t) / denom) for p in pos) / len(pos)
    anchors += 1
  return total / anchors


def nt_xent_reference(z1, z2, t):
  """SimCLR's NT-Xent (Chen et al. 2020, eq. 1) averaged over all 2N anchors."""
  z = np.concatenate([z1, z2]).astype(np.float64)
  z /= np.linalg.norm(z, axis=1, keepdims=True)
  n = len(z1)
  losses = []
  for k in range(2 * n):
    j = (k + n) % (2 * n)
    sims = np.exp(z @ z[k] / t)
    losses.append(-np.log(sims[j] / (sims.sum() - sims[k])))
  return np.mean(losses)


@pytest.mark.parametrize("n,d,num_ids,t", [(2, 3, 1, 0.1), (8, 5, 4, 0.5), (12, 16, 3, 0.07), (10, 4, 10, 1.0)])
def test_matches_reference(n, d, num_ids, t):
  rng = np.random.default_rng(n * 100 + d)
  emb = rng.normal(size=(n, d)).astype(np.float32)
  ids = rng.integers(0, num_ids, size=n)
  loss, _ = contrastive_loss(embeddings=jnp.asarray(emb), ids=jnp.asarray(ids), temperature=t)
  np.testing.assert_allclose(float(loss), reference_loss(emb, ids, t), rtol=1e-5)


def test_simclr_is_nt_xent():
  rng = np.random.default_rng(0)
  z1, z2 = rng.normal(size=(6, 8)), rng.normal(size=(6, 8))
  ids = np.tile(np.arange(6), 2)
  loss, metrics = contrastive_loss(embeddings=jnp.asarray(np.concatenate([z1, z2]), jnp.float32),
                                   ids=jnp.asarray(ids), temperature=0.2)
  np.testing.assert_allclose(float(loss), nt_xent_reference(z1, z2, 0.2), rtol=1e-5)
  assert float(metrics["num_anchors"]) == 12


def test_batch_of_two_identical_views():
  # Two rows, positives of each other: the only candidate is the positive, so the loss is exactly 0.
  emb = jnp.array([[1.0, 2.0], [1.0, 2.0]])
  loss, metrics = contrastive_loss(embeddings=emb, ids=jnp.array([0, 0]), temperature=0.1)
  assert abs(float(loss)) < 1e-6
  assert float(metrics["top1"]) == 1.0 and abs(float(metrics["pos_sim"]) - 1.0) < 1e-6


def test_identical_views_and_all_equal_labels():
  rng = np.random.default_rng(1)
  z = rng.normal(size=(5, 4)).astype(np.float32)
  emb = np.concatenate([z, z])
  ids = np.tile(np.arange(5), 2)
  loss, m = contrastive_loss(embeddings=jnp.asarray(emb), ids=jnp.asarray(ids), temperature=0.5)
  np.testing.assert_allclose(float(loss), reference_loss(emb, ids, 0.5), rtol=1e-5)
  assert float(m["top1"]) == 1.0
  # All-equal labels: every other row is a positive; the loss is the entropy-like floor log(N-1)
  # when all embeddings coincide.
  same = np.ones((6, 3), np.float32)
  loss, _ = contrastive_loss(embeddings=jnp.asarray(same), ids=jnp.zeros(6, jnp.int32), temperature=0.1)
  np.testing.assert_allclose(float(loss), math.log(5), rtol=1e-6)
  loss, _ = contrastive_loss(embeddings=jnp.asarray(emb), ids=jnp.zeros(10, jnp.int32), temperature=0.3)
  np.testing.assert_allclose(float(loss), reference_loss(emb, np.zeros(10), 0.3), rtol=1e-5)


def test_anchors_without_positives_are_excluded_and_mask_drops_rows():
  rng = np.random.default_rng(2)
  emb = rng.normal(size=(7, 4)).astype(np.float32)
  ids = np.array([0, 0, 1, 1, 2, 3, 4])  # Rows 4..6 have no positive.
  loss, m = contrastive_loss(embeddings=jnp.asarray(emb), ids=jnp.asarray(ids), temperature=0.2)
  np.testing.assert_allclose(float(loss), reference_loss(emb, ids, 0.2), rtol=1e-5)
  assert float(m["num_anchors"]) == 4
  mask = np.array([1, 1, 1, 1, 1, 0, 0])
  loss_m, _ = contrastive_loss(embeddings=jnp.asarray(emb), ids=jnp.asarray(ids), temperature=0.2,
                               mask=jnp.asarray(mask))
  np.testing.assert_allclose(float(loss_m), reference_loss(emb[:5], ids[:5], 0.2), rtol=1e-5)


def test_symmetric_in_row_order_and_scale_invariant():
  rng = np.random.default_rng(3)
  emb = rng.normal(size=(8, 6)).astype(np.float32)
  ids = np.array([0, 1, 2, 3, 0, 1, 2, 3])
  perm = rng.permutation(8)
  a, _ = contrastive_loss(embeddings=jnp.asarray(emb), ids=jnp.asarray(ids), temperature=0.1)
  b, _ = contrastive_loss(embeddings=jnp.asarray(emb[perm] * 3.0), ids=jnp.asarray(ids[perm]), temperature=0.1)
  np.testing.assert_allclose(float(a), float(b), rtol=1e-5)


def test_gradient_matches_finite_differences():
  rng = np.random.default_rng(4)
  emb = rng.normal(size=(6, 3))
  ids = np.array([0, 1, 2, 0, 1, 2])
  with jax.enable_x64(True):
    f = lambda e: contrastive_loss(embeddings=e, ids=jnp.asarray(ids), temperature=0.5)[0]
    g = np.asarray(jax.grad(f)(jnp.asarray(emb, jnp.float64)))
  eps = 1e-6
  num = np.zeros_like(emb)
  for idx in np.ndindex(*emb.shape):
    e1, e2 = emb.copy(), emb.copy()
    e1[idx] += eps
    e2[idx] -= eps
    num[idx] = (reference_loss(e1, ids, 0.5) - reference_loss(e2, ids, 0.5)) / (2 * eps)
  np.testing.assert_allclose(g, num, rtol=1e-4, atol=1e-7)


def test_bad_shapes_and_names():
  with pytest.raises(ValueError, match="embeddings must be"):
    contrastive_loss(embeddings=jnp.zeros((4,)), ids=jnp.zeros(4), temperature=0.1)
  with pytest.raises(ValueError, match="ids must be"):
    contrastive_loss(embeddings=jnp.zeros((4, 2)), ids=jnp.zeros(3), temperature=0.1)
  with pytest.raises(ValueError, match="'simclrr'.*simclr"):
    objectives.get_objective("simclrr")


def test_objective_positives():
  # SimCLR: positives are the same row across views; SupCon: the same label.
  config = experiment.default_config()
  config.objective.temperature = 0.1
  batch = {"label": jnp.array([0, 0, 1, 1]), "id": jnp.array([7, 7, 8, 9])}
  rng = np.random.default_rng(5)
  proj = jnp.asarray(rng.normal(size=(8, 4)), jnp.float32)
  student = [{"projection": proj[:4]}, {"projection": proj[4:]}]
  kw = dict(student=student, teacher=None, batch=batch, state={}, step=0, config=config)
  simclr, _, updates = objectives.get_objective("simclr").loss(**kw)
  assert updates == {}
  ref = reference_loss(np.asarray(proj), np.tile(np.arange(4), 2), 0.1)
  np.testing.assert_allclose(float(simclr), ref, rtol=1e-5)
  supcon, _, _ = objectives.get_objective("supcon").loss(**kw)
  np.testing.assert_allclose(float(supcon), reference_loss(np.asarray(proj), np.tile([0, 0, 1, 1], 2), 0.1), rtol=1e-5)
