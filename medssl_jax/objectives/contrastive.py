"""Label-aware contrastive loss: SimCLR (NT-Xent) and SupCon as one pure function.

Positives are defined by an ids vector: two rows are positives when their ids are equal (and they are
different rows). With instance ids repeated across views this is SimCLR's NT-Xent; with class labels it
is SupCon (Khosla et al. 2020, the L_out form); with semi-weak patch labels it is SWCL.

The loss is written on the *global* batch. Under jit with a data-sharded batch XLA gathers what the
similarity matrix needs, so there is no hand-written all_gather (and none of its offset bugs).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

_NEG_INF = -1e9


def l2_normalize(x, axis=-1, eps=1e-12):
  """x / max(||x||, eps), computed in float32."""
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=axis, keepdims=True), eps * eps))


def contrastive_loss(*, embeddings, ids, temperature: float = 0.1, mask=None):
  """Multi-positive InfoNCE over all rows of `embeddings`.

  For anchor i with positive set P(i) = {p != i : ids[p] == ids[i]} and candidate set A(i) = {a != i}:

      loss_i = -1/|P(i)| * sum_{p in P(i)} log( exp(s_ip / t) / sum_{a in A(i)} exp(s_ia / t) )

  where s is cosine similarity. The loss is the mean of loss_i over anchors that have at least one
  positive (anchors without positives carry no signal and are excluded rather than counted as zero).

  Args:
    embeddings: [N, D] projections of all views (e.g. views stacked along the batch: N = 2B).
    ids: [N] integer ids; equal ids are positives (instance index for SimCLR, class label for SupCon).
    temperature: softmax temperature t.
    mask: optional [N] bool/0-1 weights; rows with mask 0 (padding) are neither anchors nor candidates.

  Returns:
    (loss, metrics): scalar float32 loss and a dict of float32 scalars:
      pos_sim / neg_sim: mean cosine similarity of positive / negative pairs,
      top1: fraction of anchors whose most similar other row is a positive,
      num_anchors: anchors that had a positive.
  """
  if embeddings.ndim != 2:
    raise ValueError(f"embeddings must be [N, D], got shape {embeddings.shape}")
  if ids.shape != embeddings.shape[:1]:
    raise ValueError(f"ids must be [N]={embeddings.shape[:1]}, got shape {ids.shape}")
  n = embeddings.shape[0]
  valid = jnp.ones((n,), jnp.bool_) if mask is None else mask.astype(jnp.bool_)
  z = l2_normalize(embeddings)
  sim = z @ z.T  # [N, N] cosine similarities, float32.
  not_self = ~jnp.eye(n, dtype=jnp.bool_)
  candidates = not_self & valid[None, :] & valid[:, None]
  positives = candidates & (ids[:, None] == ids[None, :])

  logits = jnp.where(candidates, sim / temperature, _NEG_INF)
  log_prob = logits - jax.nn.logsumexp(logits, axis=1, keepdims=True)
  num_pos = positives.sum(axis=1)
  has_pos = num_pos > 0
  mean_log_prob_pos = jnp.where(positives, log_prob, 0.0).sum(axis=1) / jnp.maximum(num_pos, 1)
  num_anchors = has_pos.sum()
  loss = -jnp.where(has_pos, mean_log_prob_pos, 0.0).sum() / jnp.maximum(num_anchors, 1)

  negatives = candidates & ~positives
  pos_sim = jnp.where(positives, sim, 0.0).sum() / jnp.maximum(positives.sum(), 1)
  neg_sim = jnp.where(negatives, sim, 0.0).sum() / jnp.maximum(negatives.sum(), 1)
  nearest = jnp.argmax(jnp.where(candidates, sim, _NEG_INF), axis=1)
  hit = jnp.take_along_axis(positives, nearest[:, None], axis=1)[:, 0]
  top1 = jnp.where(has_pos, hit, False).sum() / jnp.maximum(num_anchors, 1)
  metrics = {"pos_sim": pos_sim, "neg_sim": neg_sim, "top1": top1.astype(jnp.float32),
             "num_anchors": num_anchors.astype(jnp.float32)}
  return loss, metrics


def multiview_ids(instance_ids, num_views: int):
  """Repeats per-example ids for views stacked as [view0 batch; view1 batch; ...]."""
  return jnp.tile(instance_ids, num_views)
