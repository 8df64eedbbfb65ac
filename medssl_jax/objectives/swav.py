"""SwAV (Caron et al. 2020): swapped prediction of online cluster assignments over multi-crop views.

Each view v gives prototype scores s_v = C^T z_v (z_v: l2-normalised projection, C: K l2-normalised
prototype vectors). The codes of the global views come from Sinkhorn-Knopp on the global batch,

    Q_i = diag(u) exp(s_i / epsilon) diag(w),   rows of Q_i sum to 1, prototypes get B/K mass each,

and every view predicts the codes of every global view but itself:

    L = 1/|G| sum_{i in G} 1/(V - 1) sum_{v != i} mean_b [ - sum_k q_i[b, k] log softmax(s_v[b] / T)_k ]

with G the global views, V all views, T the temperature (0.1 in the paper). The codes are computed in
float32 under stop-gradient. Departures from the paper: the prototypes are normalised in the forward
pass (`Prototypes`) instead of after each optimizer step, so no post-step renormalisation is needed;
the optional queue of past projections (for small batches) and the first-epoch prototype freeze are
not implemented.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from medssl_jax.models.heads import MLPHead
from medssl_jax.objectives.base import Objective
from medssl_jax.objectives.contrastive import l2_normalize


class Prototypes(nn.Module):
  """A bias-free linear layer whose weight columns (one per output unit) are l2-normalised in the
  forward pass: scores are cosines with K unit prototypes.

  This is SwAV's prototype layer (normalised after every step in the paper) and DINO's weight-normalised
  last layer with the gain fixed to 1 ("norm_last_layer"); normalising inside the forward pass keeps
  the constraint without any post-step hook.
  """
  num_prototypes: int

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.num_prototypes), jnp.float32)
    return x.astype(jnp.float32) @ l2_normalize(kernel, axis=0)


class SwAVHead(nn.Module):
  """MLP projector -> l2-normalise -> prototypes; returns {"projection": z/|z|, "logits": scores}."""
  hidden_dims: tuple = (2048,)
  out_dim: int = 128
  num_prototypes: int = 3000

  @nn.compact
  def __call__(self, x, *, train: bool):
    z = l2_normalize(MLPHead(hidden_dims=self.hidden_dims, out_dim=self.out_dim, name="mlp")(x, train=train))
    return {"projection": z, "logits": Prototypes(self.num_prototypes, name="prototypes")(z)}


def sinkhorn(scores, *, epsilon: float, iters: int):
  """Sinkhorn-Knopp codes for a [B, K] score matrix (SwAV's `distributed_sinkhorn`, on the global batch).

  Q = exp(scores / epsilon)^T, normalised to sum 1; then `iters` times: rows (prototypes) rescaled to
  sum 1/K, columns (samples) rescaled to sum 1/B; finally Q *= B. The result [B, K] has each sample's
  codes summing to 1 and each prototype's mass ~ B/K (exactly so in the limit of many iterations).
  Computed in float32 under stop-gradient, in the log domain (the same iterates, without overflow).
  """
  if scores.ndim != 2:
    raise ValueError(f"sinkhorn: scores must be [B, K], got shape {scores.shape}")
  # The same iterations in the log domain: exp(scores / epsilon) over- or underflows float32 for small
  # epsilons (a prototype with all-zero mass would then divide 0 by 0).
  log_q = (jax.lax.stop_gradient(scores.astype(jnp.float32)) / epsilon).T  # [K, B]
  k, b = log_q.shape
  log_q = log_q - jax.nn.logsumexp(log_q)

  def body(_, log_q):
    log_q = log_q - jax.nn.logsumexp(log_q, axis=1, keepdims=True) - jnp.log(k)  # Each prototype: mass 1/K.
    return log_q - jax.nn.logsumexp(log_q, axis=0, keepdims=True) - jnp.log(b)  # Each sample: mass 1/B.

  log_q = jax.lax.fori_loop(0, iters, body, log_q)
  return jax.lax.stop_gradient(jnp.exp(log_q + jnp.log(b)).T)


def _entropy(p, axis=-1):
  return -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.maximum(p, 1e-30)), 0.0), axis=axis)


def swav_loss(*, scores, num_global_views: int = 2, temperature: float = 0.1, epsilon: float = 0.05,
              sinkhorn_iters: int = 3):
  """SwAV's swapped-prediction loss over multi-crop views.

  L = 1/|G| sum_{i in G} 1/(V-1) sum_{v != i} mean_b CE(q_i[b], softmax(s_v[b] / temperature)),
  q_i = sinkhorn(s_i) (stop-gradient), G = the first `num_global_views` views.

  Args:
    scores: list of V [B, K] prototype scores, global views first.
    num_global_views: how many leading views get codes (2 in the paper).
    temperature: softmax temperature of the predictions.
    epsilon, sinkhorn_iters: Sinkhorn-Knopp regularisation and iterations (0.05 and 3 in the paper).

  Returns:
    (loss, metrics): metrics["code_entropy"] mean entropy of the codes (log K: uniform, 0: hard),
    metrics["prototype_usage"] fraction of prototypes that are the argmax of at least one code,
    metrics["swap_top1"] fraction of predictions whose argmax is the argmax of the target code.
  """
  v_count = len(scores)
  if v_count < 2:
    raise ValueError(f"swav_loss needs at least 2 views, got {v_count}")
  if not 1 <= num_global_views <= v_count:
    raise ValueError(f"swav_loss: num_global_views={num_global_views} must be in [1, {v_count}] (the views given)")
  shape = scores[0].shape
  for s in scores:
    if s.ndim != 2 or s.shape != shape:
      raise ValueError(f"swav_loss: every view's scores must be [B, K] with the same B and K, got shapes "
                       f"{[tuple(x.shape) for x in scores]}")
  log_p = [jax.nn.log_softmax(s.astype(jnp.float32) / temperature, axis=-1) for s in scores]
  codes = [sinkhorn(scores[i], epsilon=epsilon, iters=sinkhorn_iters) for i in range(num_global_views)]
  loss, top1 = 0.0, 0.0
  for i, q in enumerate(codes):
    target = jnp.argmax(q, axis=-1)
    for v in range(v_count):
      if v != i:
        loss += jnp.mean(-jnp.sum(q * log_p[v], axis=-1))
        top1 += jnp.mean((jnp.argmax(log_p[v], axis=-1) == target).astype(jnp.float32))
  n_pairs = num_global_views * (v_count - 1)
  q_all = jnp.concatenate(codes, axis=0)
  used = jnp.zeros((shape[1],), jnp.float32).at[jnp.argmax(q_all, axis=-1)].set(1.0)
  metrics = {"code_entropy": jnp.mean(_entropy(q_all)), "prototype_usage": jnp.mean(used),
             "swap_top1": top1 / n_pairs}
  return loss / n_pairs, metrics


def _heads(config):
  m = config.model
  return {"projector": SwAVHead(hidden_dims=tuple(m.projector_hidden_dims), out_dim=m.projector_dim,
                                num_prototypes=config.objective.swav.num_prototypes)}


def _loss(*, student, teacher, batch, state, step, config):
  del teacher, batch, state, step
  o = config.objective
  loss, metrics = swav_loss(scores=[s["logits"] for s in student], num_global_views=o.num_global_views,
                            temperature=o.temperature, epsilon=o.swav.sinkhorn_epsilon,
                            sinkhorn_iters=o.swav.sinkhorn_iters)
  return loss, metrics, {}


SWAV = Objective("swav", "Caron et al. 2020, Unsupervised Learning of Visual Features by Contrasting Cluster "
                 "Assignments (NeurIPS)", _loss, heads=_heads, multi_crop=True)
