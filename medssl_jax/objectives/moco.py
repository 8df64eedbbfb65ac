"""MoCo v2 (a queue of negatives) and MoCo v3 (in-batch negatives, predictor), on the global batch.

MoCo v2 (He et al. 2020, CVPR; Chen, Fan, Girshick & He 2020, "Improved Baselines with Momentum
Contrastive Learning"): a query q from the online (student) encoder, its positive key k+ from the EMA
key encoder (the teacher) on another view, and K negative keys from a queue of past keys:

    L(q, k+) = -log( exp(q.k+ / t) / (exp(q.k+ / t) + sum_{k- in queue} exp(q.k- / t)) )

q and k l2-normalised, t = 0.2. The original is asymmetric (query view 1, key view 2); here it is
symmetrised over the two views, L = (mean_b L(q1, k2+) + mean_b L(q2, k1+)) / 2 (both views give
gradients; the average keeps the value on the scale of the original's single term). After the step the
keys of view 2 of the GLOBAL batch (the original's key view: one key per image, as in the paper) are
enqueued and the oldest B dequeued (`enqueue`).

BatchNorm: the key encoder runs train-mode BatchNorm on the current batch, and there is no shuffle-BN. MoCo
shuffles the keys across GPUs because each GPU's statistics come from its own few images, so a query and its key,
normalised by the same small sub-batch, could find each other through those statistics. Here one jit computes
every BatchNorm statistic over the whole global batch (train/step.py), for queries and keys alike, so that
sub-batch signal does not exist; what remains is the global batch's own statistics, which every key shares.

MoCo v3 (Chen, Xie & He 2021, "An Empirical Study of Training Self-Supervised Vision Transformers",
ICCV): no queue; the student has a projector and a predictor, the EMA teacher a projector; the
negatives are the other keys of the global batch:

    ctr(q, k) = 2t * mean_i CE(q_i . k^T / t, label i) = -2t * mean_i log softmax_j(q_i . k_j / t)[i]
    L = ctr(q1, k2) + ctr(q2, k1)

q = predictor(projector(view)), k = teacher projector(other view), both l2-normalised; t = 0.2 (the
paper's ResNet-50 setting; its ViTs use t = 1.0). The 2t factor is the paper's (its pseudo-code's
`ctr`): it makes training less sensitive to the value of t.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from medssl_jax.models.heads import MLPHead
from medssl_jax.objectives.base import Objective
from medssl_jax.objectives.contrastive import l2_normalize

QUEUE_SEED = 0  # The random initial queue is the same for every run (and every device count).


def _check_pair(name, q, k):
  if q.ndim != 2 or k.ndim != 2 or q.shape != k.shape:
    raise ValueError(f"{name}: queries and keys must both be [B, D] with the same shape, got "
                     f"{tuple(q.shape)} and {tuple(k.shape)}")


def info_nce_queue(*, queries, keys, queue, temperature: float = 0.2):
  """MoCo's InfoNCE of each query against its positive key and a queue of negatives.

      loss_b = -log( exp(q_b.k_b / t) / (exp(q_b.k_b / t) + sum_{n<K} exp(q_b.queue_n / t)) )

  Args:
    queries: [B, D] query projections (student); l2-normalised here.
    keys: [B, D] positive keys (teacher, stop-gradient); l2-normalised here.
    queue: [K, D] negative keys (already l2-normalised, as `enqueue` stores them).
    temperature: t.

  Returns:
    (loss, metrics): the mean of loss_b; top1 (fraction of queries whose positive has the largest
    logit), pos_sim (mean q.k+), neg_sim (mean q.k- over the queue).
  """
  _check_pair("info_nce_queue", queries, keys)
  if queue.ndim != 2 or queue.shape[1] != queries.shape[1]:
    raise ValueError(f"info_nce_queue: queue must be [K, D={queries.shape[1]}], got {tuple(queue.shape)}")
  q, k = l2_normalize(queries), l2_normalize(keys)
  pos = jnp.sum(q * k, axis=-1)                 # [B]
  neg = q @ queue.astype(jnp.float32).T         # [B, K]
  logits = jnp.concatenate([pos[:, None], neg], axis=1) / temperature  # The positive is column 0.
  loss = -jnp.mean(jax.nn.log_softmax(logits, axis=1)[:, 0])
  # Ties count as misses, so identical negatives do not make top1 look perfect.
  top1 = jnp.mean((pos[:, None] > neg).all(axis=1).astype(jnp.float32))
  return loss, {"top1": top1, "pos_sim": jnp.mean(pos), "neg_sim": jnp.mean(neg)}


def moco_v2_loss(*, queries, keys, queue, temperature: float = 0.2):
  """MoCo v2's InfoNCE, symmetrised over two views: (L(q1, k2) + L(q2, k1)) / 2.

  Args:
    queries: [q_1, q_2], student projections [B, D] of views 1 and 2.
    keys: [k_1, k_2], teacher projections [B, D] (stop-gradient) of views 1 and 2.
    queue: [K, D] l2-normalised negative keys.
    temperature: t (0.2 in MoCo v2).

  Returns:
    (loss, metrics), the metrics of `info_nce_queue` averaged over the two terms.
  """
  if len(queries) != 2 or len(keys) != 2:
    raise ValueError(f"moco_v2_loss needs 2 views, got {len(queries)} queries and {len(keys)} keys")
  a = info_nce_queue(queries=queries[0], keys=keys[1], queue=queue, temperature=temperature)
  b = info_nce_queue(queries=queries[1], keys=keys[0], queue=queue, temperature=temperature)
  return jax.tree.map(lambda x, y: (x + y) / 2.0, a, b)


def enqueue(queue, ptr, keys):
  """Writes `keys` into the ring buffer `queue` at `ptr` (overwriting the oldest), wrapping around.

      queue[(ptr + i) mod K] = keys[i] for i < B;   ptr <- (ptr + B) mod K

  Args:
    queue: [K, D] keys, oldest at `ptr`.
    ptr: int32 scalar, the next row to overwrite.
    keys: [B, D] new keys (B <= K), stored l2-normalised in the queue's dtype.

  Returns:
    (queue, ptr) updated.
  """
  if keys.ndim != 2 or queue.ndim != 2 or keys.shape[1] != queue.shape[1]:
    raise ValueError(f"enqueue: keys must be [B, D={queue.shape[-1]}] for a [K, D] queue, got keys "
                     f"{tuple(keys.shape)} and queue {tuple(queue.shape)}")
  k, b = queue.shape[0], keys.shape[0]
  if b > k:
    raise ValueError(f"enqueue: {b} keys do not fit in a queue of {k}")
  idx = (ptr + jnp.arange(b)) % k
  queue = queue.at[idx].set(l2_normalize(keys).astype(queue.dtype))
  return queue, ((ptr + b) % k).astype(jnp.int32)


def moco_v3_ctr(*, queries, keys, temperature: float = 0.2):
  """MoCo v3's `ctr(q, k)`: 2t * cross-entropy of q_i . k^T / t against label i, over the batch.

  Args:
    queries: [B, D] student predictions; keys: [B, D] teacher projections (stop-gradient). Both are
      l2-normalised here; row i of keys is the positive of row i of queries, the others negatives.
    temperature: t.

  Returns:
    (loss, metrics) with top1 (the diagonal is the row's maximum), pos_sim and neg_sim.
  """
  _check_pair("moco_v3_ctr", queries, keys)
  n = queries.shape[0]
  q, k = l2_normalize(queries), l2_normalize(keys)
  sim = q @ k.T                                 # [B, B]; labels are the diagonal.
  log_prob = jax.nn.log_softmax(sim / temperature, axis=1)
  loss = -2.0 * temperature * jnp.mean(jnp.diagonal(log_prob))
  eye = jnp.eye(n, dtype=jnp.bool_)
  diag = jnp.diagonal(sim)
  top1 = jnp.mean(jnp.all(eye | (diag[:, None] > sim), axis=1).astype(jnp.float32))
  neg_sim = jnp.where(eye, 0.0, sim).sum() / max(1, n * (n - 1))
  return loss, {"top1": top1, "pos_sim": jnp.mean(diag), "neg_sim": neg_sim}


def moco_v3_loss(*, queries, keys, temperature: float = 0.2):
  """MoCo v3's symmetrised loss: ctr(q1, k2) + ctr(q2, k1).

  Args:
    queries: [q_1, q_2], student predictions [B, D] of views 1 and 2.
    keys: [k_1, k_2], teacher projections [B, D] (stop-gradient) of views 1 and 2.
    temperature: t (0.2 for ResNets in the paper, 1.0 for ViTs).

  Returns:
    (loss, metrics), the metrics of `moco_v3_ctr` averaged over the two terms.
  """
  if len(queries) != 2 or len(keys) != 2:
    raise ValueError(f"moco_v3_loss needs 2 views, got {len(queries)} queries and {len(keys)} keys")
  la, ma = moco_v3_ctr(queries=queries[0], keys=keys[1], temperature=temperature)
  lb, mb = moco_v3_ctr(queries=queries[1], keys=keys[0], temperature=temperature)
  return la + lb, jax.tree.map(lambda x, y: (x + y) / 2.0, ma, mb)


# ---------------------------------------------------------------------------------------------------
# MoCo v2: objective adapter and state. The heads are the codebase's default projector (models.
# default_heads: Linear-BN-ReLU-Linear, config.model.projector_hidden_dims with one width = 2 layers).
# The paper's head is Linear-ReLU-Linear without BN; the BN keeps the zoo's projectors alike and, on the
# tiny test runs, learnt clearly faster than the BN-free head (which stayed near chance for 30 steps).


def check_queue_size(queue_size: int, batch_size: int):
  """MoCo's queue takes whole global batches: queue_size must be a positive multiple of batch_size."""
  if queue_size <= 0 or queue_size % batch_size:
    raise ValueError(f"config.objective.moco_v2.queue_size={queue_size} must be a positive multiple of the global "
                     f"batch size config.train.batch_size={batch_size} (the queue takes whole batches of keys)")


def _v2_init_state(config, outputs):
  """The queue: [K, D] random l2-normalised keys (fixed seed) and its pointer."""
  k = config.objective.moco_v2.queue_size
  check_queue_size(k, config.train.batch_size)
  dim = outputs["projection"].shape[-1]
  queue = l2_normalize(jax.random.normal(jax.random.key(QUEUE_SEED), (k, dim), jnp.float32))
  return {"queue": queue, "queue_ptr": jnp.zeros((), jnp.int32)}


def _v2_loss(*, student, teacher, batch, state, step, config):
  del batch, step
  queue = state["queue"]
  b = student[0]["projection"].shape[0]
  if queue.shape[0] % b:  # Static shapes: caught while tracing, with the same message as init_state.
    check_queue_size(queue.shape[0], b)
  keys = [t["projection"].astype(jnp.float32) for t in teacher[:2]]
  loss, metrics = moco_v2_loss(queries=[s["projection"] for s in student[:2]], keys=keys, queue=queue,
                               temperature=config.objective.temperature)
  # The queue is updated with the keys of view 2, the key view of the original (asymmetric) MoCo.
  queue, ptr = enqueue(queue, state["queue_ptr"], jax.lax.stop_gradient(keys[1]))
  return loss, metrics, {"queue": queue, "queue_ptr": ptr}


MOCO_V2 = Objective("moco_v2", "He et al. 2020, Momentum Contrast for Unsupervised Visual Representation "
                    "Learning (CVPR); Chen et al. 2020, Improved Baselines with Momentum Contrastive Learning "
                    "(arXiv:2003.04297)", _v2_loss, heads=None, teacher=True, teacher_views=2,
                    init_state=_v2_init_state)


# ---------------------------------------------------------------------------------------------------
# MoCo v3: objective adapter and heads.


def _v3_heads(config):
  """MoCo v3's heads: projector Linear-BN-ReLU x (n-1) -> Linear -> BN (no affine); predictor
  Linear-BN-ReLU -> Linear (the paper's 3-layer projector and 2-layer predictor for ResNets)."""
  m = config.model
  return {"projector": MLPHead(hidden_dims=tuple(m.projector_hidden_dims), out_dim=m.projector_dim, out_bn=True),
          "predictor": MLPHead(hidden_dims=tuple(m.predictor_hidden_dims), out_dim=m.projector_dim)}


def _v3_loss(*, student, teacher, batch, state, step, config):
  del batch, state, step
  loss, metrics = moco_v3_loss(queries=[s["prediction"] for s in student[:2]],
                               keys=[t["projection"] for t in teacher[:2]],
                               temperature=config.objective.temperature)
  return loss, metrics, {}


MOCO_V3 = Objective("moco_v3", "Chen, Xie & He 2021, An Empirical Study of Training Self-Supervised Vision "
                    "Transformers (ICCV)", _v3_loss, heads=_v3_heads, teacher=True, teacher_views=2)
