"""ReLIC (Mitrovic et al. 2021): instance discrimination across views plus an invariance penalty that makes the
distribution of an example's similarities to the others the same under both augmentations.

With f the online projection and h the EMA target's (stop-gradient), both L2-normalised, and two views 1, 2 of a
batch of N examples, the proxy task's distribution for anchor i under the augmentation pair (a, b) is

    p_ab(j | i) = exp(f(x_i^a) . h(x_j^b) / t) / sum_m exp(f(x_i^a) . h(x_m^b) / t)

and the loss, summed over the ordered pairs (a, b) in {(1, 2), (2, 1)} and averaged over anchors, is

    L = mean_i [ -log p_12(i | i) - log p_21(i | i) ] + alpha * mean_i [ KL(p_12(.|i) || p_21(.|i)) + KL(p_21(.|i) || p_12(.|i)) ]

(the paper's eq. 3 with A = {view 1, view 2}: the first sum is SimCLR-style instance discrimination against the
target network, the second the invariance penalty, gradients through both distributions as in the paper).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from medssl_jax.objectives.base import Objective
from medssl_jax.objectives.contrastive import l2_normalize


def relic_loss(*, online, targets, temperature: float, invariance_weight: float):
  """ReLIC's loss for two views.

  Args:
    online: [f_1, f_2], online projections [N, D] of views 1 and 2.
    targets: [h_1, h_2], target projections [N, D] (stop-gradient) of views 1 and 2.
    temperature: the softmax temperature t.
    invariance_weight: the paper's alpha.

  Returns:
    (loss, metrics): contrastive (the instance-discrimination sum), invariance (the KL sum, before alpha),
    top1 (fraction of anchors, both pairs, whose most likely instance is their own).
  """
  if len(online) != 2 or len(targets) != 2:
    raise ValueError(f"relic_loss needs 2 views, got {len(online)} online and {len(targets)} target projections")
  f = [l2_normalize(x) for x in online]
  h = [l2_normalize(x) for x in targets]
  n = f[0].shape[0]
  log_p = {(a, b): jax.nn.log_softmax(f[a] @ h[b].T / temperature, axis=1) for a, b in ((0, 1), (1, 0))}
  diag = jnp.arange(n)
  contrastive = sum(-jnp.mean(lp[diag, diag]) for lp in log_p.values())
  kl = lambda lp, lq: jnp.sum(jnp.exp(lp) * (lp - lq), axis=1)  # KL(p || q) per anchor.
  invariance = jnp.mean(kl(log_p[0, 1], log_p[1, 0]) + kl(log_p[1, 0], log_p[0, 1]))
  top1 = sum(jnp.mean(jnp.argmax(lp, axis=1) == diag) for lp in log_p.values()) / 2
  loss = contrastive + invariance_weight * invariance
  return loss, {"contrastive": contrastive, "invariance": invariance, "top1": top1.astype(jnp.float32)}


def _loss(*, student, teacher, batch, state, step, config):
  del batch, state, step
  o = config.objective
  loss, metrics = relic_loss(online=[s["projection"] for s in student[:2]],
                             targets=[t["projection"] for t in teacher[:2]],
                             temperature=o.temperature, invariance_weight=o.relic.invariance_weight)
  return loss, metrics, {}


RELIC = Objective("relic", "Mitrovic et al. 2021, Representation Learning via Invariant Causal Mechanisms (ICLR)",
                  _loss, teacher=True, teacher_views=2)
