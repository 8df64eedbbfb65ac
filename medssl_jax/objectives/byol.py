"""BYOL (Grill et al. 2020): an online network predicts an EMA target network's projection of the
other view.

    L = sum over (i, j) in {(1, 2), (2, 1)} of mean_b || p_i/||p_i|| - z'_j/||z'_j|| ||^2
      = sum of mean_b (2 - 2 cos(p_i, z'_j))

p_i: online prediction of view i (projector, then predictor); z'_j: target projection of view j
(EMA teacher, stop-gradient). The paper's symmetrised loss is the sum of the two terms (range [0, 8]).
"""
from __future__ import annotations

import jax.numpy as jnp

from medssl_jax.models.heads import MLPHead
from medssl_jax.objectives.base import Objective
from medssl_jax.objectives.contrastive import l2_normalize


def normalized_mse(*, predictions, targets):
  """Per-example 2 - 2 cos(p, z) = ||p/|p| - z/|z|||^2, float32, shape [B]."""
  p, z = l2_normalize(predictions), l2_normalize(targets)
  return 2.0 - 2.0 * jnp.sum(p * z, axis=-1)


def byol_loss(*, predictions, targets):
  """BYOL's symmetrised loss for two views.

  Args:
    predictions: [p_1, p_2], online predictions [B, D] of views 1 and 2.
    targets: [z'_1, z'_2], target projections [B, D] (stop-gradient) of views 1 and 2.

  Returns:
    (loss, metrics) with metrics["cosine"]: mean cos(p_i, z'_j) over both terms.
  """
  if len(predictions) != 2 or len(targets) != 2:
    raise ValueError(f"byol_loss needs 2 views, got {len(predictions)} predictions and {len(targets)} targets")
  a = normalized_mse(predictions=predictions[0], targets=targets[1])
  b = normalized_mse(predictions=predictions[1], targets=targets[0])
  loss = jnp.mean(a) + jnp.mean(b)
  return loss, {"cosine": 1.0 - (jnp.mean(a) + jnp.mean(b)) / 4.0}


def _heads(config):
  m = config.model
  return {"projector": MLPHead(hidden_dims=tuple(m.projector_hidden_dims), out_dim=m.projector_dim),
          "predictor": MLPHead(hidden_dims=tuple(m.predictor_hidden_dims), out_dim=m.projector_dim)}


def _loss(*, student, teacher, batch, state, step, config):
  del batch, state, step, config
  loss, metrics = byol_loss(predictions=[s["prediction"] for s in student[:2]],
                            targets=[t["projection"] for t in teacher[:2]])
  return loss, metrics, {}


BYOL = Objective("byol", "Grill et al. 2020, Bootstrap Your Own Latent (NeurIPS)", _loss, heads=_heads,
                 teacher=True, teacher_views=2)
