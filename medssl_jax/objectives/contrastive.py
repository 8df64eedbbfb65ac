"""Label-aware contrastive loss: SimCLR (NT-Xent) and SupCon as one pure function.

Positives are defined by an ids vector: two rows are positives when their ids are equal (and they are
different rows). With instance ids repeated across views this is SimCLR's NT-Xent; with class labels it
is SupCon (Khosla et al. 2020, the L_out form). `weighted_contrastive_loss` generalises the 0/1
positives to real weights: SWCL's semi-weak patch labels, with multi-label overlap (objectives/swcl.py).

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
  # Equal ids as 0/1 weights: the weighted form computes exactly this loss (bit for bit, tested).
  weights = (ids[:, None] == ids[None, :]).astype(jnp.float32)
  return weighted_contrastive_loss(embeddings=embeddings, positive_weights=weights, temperature=temperature,
                                   mask=mask)


def weighted_contrastive_loss(*, embeddings, positive_weights, temperature: float = 0.1, mask=None):
  """InfoNCE with real-valued positive weights (SWCL's multi-label positives).

  For anchor i with weights w_ip >= 0 (w_ii ignored) and candidate set A(i) = {a != i}:

      loss_i = -sum_p w_ip log( exp(s_ip / t) / sum_{a in A(i)} exp(s_ia / t) ) / sum_p w_ip

  averaged over anchors with sum_p w_ip > 0. With w_ip = [ids[p] == ids[i]] this is exactly
  `contrastive_loss` (same operations on the same values), which tests/test_objective_swcl.py checks.

  Args:
    embeddings: [N, D] projections of all views.
    positive_weights: [N, N] non-negative weights; row i holds anchor i's positives. Need not be
      symmetric; the diagonal and entries of masked rows/columns are ignored.
    temperature: softmax temperature t.
    mask: optional [N] bool/0-1; rows with mask 0 (padding) are neither anchors nor candidates.

  Returns:
    (loss, metrics) as `contrastive_loss`: pos_sim is the w-weighted mean cosine similarity of
    positive pairs, neg_sim the mean over candidate pairs with w = 0, top1 the fraction of anchors
    whose most similar other row has w > 0, num_anchors the anchors with a positive.
  """
  if embeddings.ndim != 2:
    raise ValueError(f"embeddings must be [N, D], got shape {embeddings.shape}")
  n = embeddings.shape[0]
  if positive_weights.shape != (n, n):
    raise ValueError(f"positive_weights must be [N, N]={(n, n)}, got shape {positive_weights.shape}")
  valid = jnp.ones((n,), jnp.bool_) if mask is None else mask.astype(jnp.bool_)
  z = l2_normalize(embeddings)
  sim = z @ z.T
  not_self = ~jnp.eye(n, dtype=jnp.bool_)
  candidates = not_self & valid[None, :] & valid[:, None]
  w = jnp.where(candidates, positive_weights.astype(jnp.float32), 0.0)
  positives = w > 0

  logits = jnp.where(candidates, sim / temperature, _NEG_INF)
  log_prob = logits - jax.nn.logsumexp(logits, axis=1, keepdims=True)
  sum_w = w.sum(axis=1)
  has_pos = sum_w > 0
  # where(), not w * log_prob alone: keeps 0 * (-1e9) out of the sum and matches contrastive_loss bit for bit.
  mean_log_prob_pos = jnp.where(positives, w * log_prob, 0.0).sum(axis=1) / jnp.where(has_pos, sum_w, 1.0)
  num_anchors = has_pos.sum()
  loss = -jnp.where(has_pos, mean_log_prob_pos, 0.0).sum() / jnp.maximum(num_anchors, 1)

  negatives = candidates & ~positives
  total_w = w.sum()
  pos_sim = jnp.where(positives, w * sim, 0.0).sum() / jnp.where(total_w > 0, total_w, 1.0)
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
