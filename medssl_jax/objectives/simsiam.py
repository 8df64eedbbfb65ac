"""SimSiam (Chen & He 2021): a Siamese network without negatives, momentum encoder or large batches;
a predictor and a stop-gradient on the other branch prevent collapse.

    L = D(p_1, sg(z_2)) / 2 + D(p_2, sg(z_1)) / 2,     D(p, z) = - mean_b  p_b/||p_b|| . z_b/||z_b||

z_i: projection of view i (projector: 3-layer MLP, BN on every layer including the output, as in the
paper); p_i = h(z_i): prediction (2-layer bottleneck MLP). sg: stop-gradient, applied here inside the
loss to the student's own projections (SimSiam has no teacher). Range [-1, 1]; -1 is perfect.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from medssl_jax.models.heads import MLPHead
from medssl_jax.objectives.base import Objective
from medssl_jax.objectives.contrastive import l2_normalize


def negative_cosine(*, predictions, targets):
  """Per-example D(p, z) = -cos(p, z) in float32, shape [B] (no stop-gradient here)."""
  return -jnp.sum(l2_normalize(predictions) * l2_normalize(targets), axis=-1)


def output_std(z):
  """The paper's collapse monitor: std over the batch of z/||z||, averaged over dimensions.

  About 1/sqrt(D) for well-spread outputs, 0 when every output is the same vector (Chen & He, Fig. 2).
  """
  return jnp.mean(jnp.std(l2_normalize(z), axis=0))


def _check_views(name, arrays):
  if len(arrays) != 2:
    raise ValueError(f"simsiam_loss needs 2 views of {name}, got {len(arrays)}")
  for a in arrays:
    if a.ndim != 2:
      raise ValueError(f"simsiam_loss: {name} must be [B, D], got shape {a.shape}")


def simsiam_loss(*, predictions, projections):
  """SimSiam's symmetrised loss D(p_1, sg(z_2))/2 + D(p_2, sg(z_1))/2 for two views.

  Args:
    predictions: [p_1, p_2], predictor outputs [B, D] of views 1 and 2.
    projections: [z_1, z_2], projector outputs [B, D] of views 1 and 2; stop-gradient is applied here.

  Returns:
    (loss, metrics): metrics["cosine"] = mean cos(p_i, z_j) over both terms (= -loss), and
    metrics["output_std"] = the paper's collapse monitor on z (mean of the two views).
  """
  _check_views("predictions", predictions)
  _check_views("projections", projections)
  shape = predictions[0].shape
  if any(a.shape != shape for a in (*predictions, *projections)):
    raise ValueError("simsiam_loss: predictions and projections must all have the same [B, D] shape, got "
                     f"{[tuple(a.shape) for a in (*predictions, *projections)]}")
  p1, p2 = (p.astype(jnp.float32) for p in predictions)
  z1, z2 = (jax.lax.stop_gradient(z.astype(jnp.float32)) for z in projections)
  loss = (jnp.mean(negative_cosine(predictions=p1, targets=z2)) / 2
          + jnp.mean(negative_cosine(predictions=p2, targets=z1)) / 2)
  metrics = {"cosine": -loss, "output_std": (output_std(z1) + output_std(z2)) / 2}
  return loss, metrics


def _heads(config):
  m = config.model
  # Projector: (Dense -> BN -> ReLU) x 2 -> Dense -> BN (no affine), the paper's 3-layer MLP when
  # projector_hidden_dims has two entries. Predictor: Dense -> BN -> ReLU -> Dense (bottleneck).
  return {"projector": MLPHead(hidden_dims=tuple(m.projector_hidden_dims), out_dim=m.projector_dim, out_bn=True),
          "predictor": MLPHead(hidden_dims=tuple(m.predictor_hidden_dims), out_dim=m.projector_dim)}


def _loss(*, student, teacher, batch, state, step, config):
  del teacher, batch, state, step, config
  loss, metrics = simsiam_loss(predictions=[s["prediction"] for s in student[:2]],
                               projections=[s["projection"] for s in student[:2]])
  return loss, metrics, {}


SIMSIAM = Objective("simsiam", "Chen & He 2021, Exploring Simple Siamese Representation Learning (CVPR)", _loss,
                    heads=_heads)
