"""MoCo v2 (queue InfoNCE, enqueue) and MoCo v3 (2t-scaled in-batch InfoNCE) against explicit loops."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medssl_jax.objectives import moco


def _unit(v):
  return v / np.sqrt(np.sum(v ** 2))


def reference_info_nce(q, k, queue, t):
  """mean_b -log( exp(q_b.k_b/t) / (exp(q_b.k_b/t) + sum_n exp(q_b.queue_n/t)) ), q, k l2-normalised."""
  terms = []
  for b in range(len(q)):
    qb, kb = _unit(q[b]), _unit(k[b])
    pos = np.exp(np.dot(qb, kb) / t)
    neg = 0.0
    for n in range(len(queue)):
      neg += np.exp(np.dot(qb, queue[n]) / t)
    terms.append(-np.log(pos / (pos + neg)))
  return np.mean(terms)


def reference_ctr(q, k, t):
  """MoCo v3's ctr: 2t * mean_i -log( exp(q_i.k_i/t) / sum_j exp(q_i.k_j/t) )."""
  terms = []
  for i in range(len(q)):
    qi = _unit(q[i])
    denom = 0.0
    for j in range(len(k)):
      denom += np.exp(np.dot(qi, _unit(k[j])) / t)
    terms.append(-np.log(np.exp(np.dot(qi, _unit(k[i])) / t) / denom))
  return 2 * t * np.mean(terms)


def _random(rng, *shape):
  return rng.normal(size=shape).astype(np.float64)


@pytest.mark.parametrize("batch,queue_size", [(2, 4), (5, 15)])
def test_moco_v2_matches_reference(batch, queue_size):
  rng = np.random.default_rng(batch)
  q1, q2, k1, k2 = (_random(rng, batch, 6) for _ in range(4))
  queue = np.stack([_unit(v) for v in _random(rng, queue_size, 6)])
  loss, metrics = moco.moco_v2_loss(queries=[jnp.asarray(q1, jnp.float32), jnp.asarray(q2, jnp.float32)],
                                    keys=[jnp.asarray(k1, jnp.float32), jnp.asarray(k2, jnp.float32)],
                                    queue=jnp.asarray(queue, jnp.float32), temperature=0.2)
  # Symmetrised: query view 1 with key view 2 and vice versa, averaged.
  expected = (reference_info_nce(q1, k2, queue, 0.2) + reference_info_nce(q2, k1, queue, 0.2)) / 2
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
  pos = np.mean([np.dot(_unit(a[b]), _unit(c[b])) for a, c in ((q1, k2), (q2, k1)) for b in range(batch)])
  np.testing.assert_allclose(float(metrics["pos_sim"]), pos, rtol=1e-5, atol=1e-6)
  assert 0.0 <= float(metrics["top1"]) <= 1.0 and -1.0 <= float(metrics["neg_sim"]) <= 1.0


def test_moco_v2_edge_cases():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(4, 8)), jnp.float32)
  far = moco.l2_normalize(-x)  # Negatives opposite to every query.
  loss, metrics = moco.moco_v2_loss(queries=[x, x], keys=[x, x], queue=far, temperature=0.2)
  # Identical q and k, the queue holds the negated queries: the positive (cos 1) wins every row.
  assert float(metrics["top1"]) == 1.0
  np.testing.assert_allclose(float(metrics["pos_sim"]), 1.0, atol=1e-6)
  expected = reference_info_nce(np.asarray(x, np.float64), np.asarray(x, np.float64), np.asarray(far, np.float64), 0.2)
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
  # A queue holding exactly the keys: K ties with the positive, loss = log(1 + 1) for each row with its
  # own copy, top1 0 (ties are misses).
  same = moco.l2_normalize(x[:1].repeat(3, axis=0))
  loss, metrics = moco.moco_v2_loss(queries=[x[:1]] * 2, keys=[x[:1]] * 2, queue=same, temperature=0.2)
  np.testing.assert_allclose(float(loss), np.log(4.0), rtol=1e-5)
  assert float(metrics["top1"]) == 0.0
  # Zero vectors (collapsed projections) give a finite loss and gradient.
  z = jnp.zeros((2, 8))
  loss, _ = moco.moco_v2_loss(queries=[z, z], keys=[z, z], queue=far, temperature=0.2)
  g = jax.grad(lambda q: moco.moco_v2_loss(queries=[q, q], keys=[x[:2], x[:2]], queue=far)[0])(x[:2])
  assert np.isfinite(float(loss)) and np.all(np.isfinite(np.asarray(g))) and np.abs(np.asarray(g)).sum() > 0
  with pytest.raises(ValueError, match="2 views"):
    moco.moco_v2_loss(queries=[x], keys=[x, x], queue=far)
  with pytest.raises(ValueError, match="same shape"):
    moco.moco_v2_loss(queries=[x, x], keys=[x[:3], x[:3]], queue=far)
  with pytest.raises(ValueError, match="queue must be"):
    moco.moco_v2_loss(queries=[x, x], keys=[x, x], queue=far[:, :3])


def test_enqueue_wraps_around():
  queue = jnp.zeros((6, 2), jnp.float32)
  keys = lambda v: jnp.asarray([[v, 0.0], [0.0, v], [v, v]], jnp.float32)
  queue, ptr = moco.enqueue(queue, jnp.int32(0), keys(1.0))
  assert int(ptr) == 3
  queue, ptr = moco.enqueue(queue, ptr, keys(2.0))
  assert int(ptr) == 0  # Full: the pointer wraps to the oldest row.
  queue, ptr = moco.enqueue(queue, ptr, keys(-1.0))  # Overwrites the first batch, keeps the second.
  s = 1 / np.sqrt(2)
  np.testing.assert_allclose(np.asarray(queue), [[-1, 0], [0, -1], [-s, -s], [1, 0], [0, 1], [s, s]], atol=1e-6)
  assert int(ptr) == 3
  # A write that straddles the end (not reachable with a queue of whole batches, but well defined).
  queue, ptr = moco.enqueue(jnp.zeros((5, 1)), jnp.int32(4), jnp.asarray([[1.0], [2.0], [3.0]]))
  np.testing.assert_allclose(np.asarray(queue)[:, 0], [1, 1, 0, 0, 1])  # Stored l2-normalised.
  assert int(ptr) == 2
  with pytest.raises(ValueError, match="do not fit"):
    moco.enqueue(jnp.zeros((2, 1)), jnp.int32(0), jnp.ones((3, 1)))
  with pytest.raises(ValueError, match="keys must be"):
    moco.enqueue(jnp.zeros((4, 2)), jnp.int32(0), jnp.ones((2, 3)))


def test_queue_state_and_size_validation():
  from medssl_jax.config import load
  c = load("fundus_moco_v2", "quick")
  outputs = {"projection": jax.ShapeDtypeStruct((2, 7), jnp.float32)}
  state = moco.MOCO_V2.init_state(c, outputs)
  assert state["queue"].shape == (c.objective.moco_v2.queue_size, 7) and int(state["queue_ptr"]) == 0
  np.testing.assert_allclose(np.linalg.norm(np.asarray(state["queue"]), axis=1), 1.0, rtol=1e-5)
  np.testing.assert_array_equal(state["queue"], moco.MOCO_V2.init_state(c, outputs)["queue"])  # Fixed seed.
  c.objective.moco_v2.queue_size = c.train.batch_size * 3 + 1
  with pytest.raises(ValueError, match=r"config.objective.moco_v2.queue_size=49 must be a positive multiple.*"
                                       r"config.train.batch_size=16"):
    moco.MOCO_V2.init_state(c, outputs)
  c.objective.moco_v2.queue_size = 0
  with pytest.raises(ValueError, match="queue_size=0"):
    moco.MOCO_V2.init_state(c, outputs)


def test_moco_v2_adapter_enqueues_view_2_keys():
  from medssl_jax.config import load
  c = load("fundus_moco_v2", "quick")
  rng = np.random.default_rng(3)
  b, d = c.train.batch_size, 4
  out = lambda: {"projection": jnp.asarray(rng.normal(size=(b, d)), jnp.float32)}
  student, teacher = [out(), out()], [out(), out()]
  queue = moco.l2_normalize(jnp.asarray(rng.normal(size=(2 * b, d)), jnp.float32))
  state = {"queue": queue, "queue_ptr": jnp.int32(b)}
  loss, metrics, updates = moco.MOCO_V2.loss(student=student, teacher=teacher, batch={}, state=state, step=0, config=c)
  np.testing.assert_allclose(np.asarray(updates["queue"][:b]), np.asarray(queue[:b]))
  np.testing.assert_allclose(np.asarray(updates["queue"][b:]), np.asarray(moco.l2_normalize(teacher[1]["projection"])),
                             rtol=1e-6)
  assert int(updates["queue_ptr"]) == 0
  assert {"top1", "pos_sim", "neg_sim"} <= set(metrics) and np.isfinite(float(loss))
  with pytest.raises(ValueError, match="queue_size"):  # A batch that does not divide the queue.
    moco.MOCO_V2.loss(student=[{"projection": s["projection"][:3]} for s in student],
                      teacher=[{"projection": t["projection"][:3]} for t in teacher], batch={}, state=state,
                      step=0, config=c)


@pytest.mark.parametrize("batch", [2, 6])
def test_moco_v3_matches_reference(batch):
  rng = np.random.default_rng(10 + batch)
  q1, q2, k1, k2 = (_random(rng, batch, 5) for _ in range(4))
  f = lambda a: jnp.asarray(a, jnp.float32)
  loss, metrics = moco.moco_v3_loss(queries=[f(q1), f(q2)], keys=[f(k1), f(k2)], temperature=0.2)
  expected = reference_ctr(q1, k2, 0.2) + reference_ctr(q2, k1, 0.2)
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
  assert 0.0 <= float(metrics["top1"]) <= 1.0
  # The paper's ViT temperature, t = 1.
  loss, _ = moco.moco_v3_loss(queries=[f(q1), f(q2)], keys=[f(k1), f(k2)], temperature=1.0)
  np.testing.assert_allclose(float(loss), reference_ctr(q1, k2, 1.0) + reference_ctr(q2, k1, 1.0), rtol=1e-5)


def test_moco_v3_diagonal_labels_and_edge_cases():
  # Batch of 2 by hand: q = (e1, e2), k = (e1, e2): logits/t diag 1/t, off 0.
  t = 0.2
  e = jnp.eye(2, dtype=jnp.float32)
  loss, metrics = moco.moco_v3_ctr(queries=e, keys=e, temperature=t)
  np.testing.assert_allclose(float(loss), 2 * t * np.log(1 + np.exp(-1 / t)), rtol=1e-5)
  assert float(metrics["top1"]) == 1.0 and float(metrics["pos_sim"]) == 1.0 and float(metrics["neg_sim"]) == 0.0
  # Swapped keys: the labels are the diagonal, so the loss is large and top1 0.
  swapped, metrics = moco.moco_v3_ctr(queries=e, keys=e[::-1], temperature=t)
  np.testing.assert_allclose(float(swapped), 2 * t * np.log(1 + np.exp(1 / t)), rtol=1e-5)
  assert float(metrics["top1"]) == 0.0
  # Identical q and k on random rows: matches the loop, symmetric sum is twice one term.
  x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 6)), jnp.float32)
  loss, metrics = moco.moco_v3_loss(queries=[x, x], keys=[x, x], temperature=t)
  np.testing.assert_allclose(float(loss), 2 * reference_ctr(np.asarray(x, np.float64), np.asarray(x, np.float64), t),
                             rtol=1e-5)
  np.testing.assert_allclose(float(metrics["pos_sim"]), 1.0, atol=1e-6)
  # All-equal rows (collapse): every logit ties, loss = 2 * 2t * log(B), finite gradients.
  ones = jnp.ones((4, 6))
  loss, metrics = moco.moco_v3_loss(queries=[ones, ones], keys=[ones, ones], temperature=t)
  np.testing.assert_allclose(float(loss), 2 * 2 * t * np.log(4), rtol=1e-5)
  assert float(metrics["top1"]) == 0.0
  g = jax.grad(lambda q: moco.moco_v3_loss(queries=[q, q], keys=[x, x])[0])(jnp.zeros((4, 6)))
  assert np.all(np.isfinite(np.asarray(g)))
  with pytest.raises(ValueError, match="2 views"):
    moco.moco_v3_loss(queries=[x, x, x], keys=[x, x])
  with pytest.raises(ValueError, match="same shape"):
    moco.moco_v3_loss(queries=[x, x], keys=[x[:, :3], x[:, :3]])


def test_moco_v3_heads():
  from medssl_jax.config import load
  heads = moco.MOCO_V3.heads(load("fundus_moco_v3"))
  assert heads["projector"].out_bn and tuple(heads["projector"].hidden_dims) == (512, 512)
  assert not heads["predictor"].out_bn and tuple(heads["predictor"].hidden_dims) == (512,)
