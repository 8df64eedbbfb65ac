"""Barlow Twins (Zbontar et al. 2021): make the cross-correlation matrix of the two views' embeddings
close to the identity (invariance on the diagonal, redundancy reduction off it).

    zn^A = (z^A - mean_b z^A) / sqrt(var_b z^A + eps)      (per dimension, biased variance: the
                                                            paper's non-affine BatchNorm; same for B)
    C_ij = sum_b zn^A_bi zn^B_bj / N                       (N: the GLOBAL batch)
    L    = sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2

The projector is 3 layers ((Dense -> BN -> ReLU) x 2 -> Dense). eps = 1e-5 (BatchNorm's default)
also keeps zero-variance dimensions finite: a constant dimension standardises to 0, not NaN.
"""
from __future__ import annotations

import jax.numpy as jnp

from medssl_jax.objectives.base import Objective

BN_EPS = 1e-5


def standardize(z, eps: float = BN_EPS):
  """Per-dimension (z - mean) / sqrt(biased var + eps) over the batch axis, float32."""
  z = z.astype(jnp.float32)
  mean = jnp.mean(z, axis=0)
  var = jnp.mean(jnp.square(z - mean), axis=0)
  return (z - mean) / jnp.sqrt(var + eps)


def cross_correlation(z_a, z_b, eps: float = BN_EPS):
  """C = standardize(z_a)^T standardize(z_b) / N, [D, D] float32."""
  return standardize(z_a, eps).T @ standardize(z_b, eps) / z_a.shape[0]


def barlow_twins_loss(*, projections, lambd: float = 0.0051, eps: float = BN_EPS):
  """Barlow Twins' loss sum_i (1 - C_ii)^2 + lambd * sum_{i != j} C_ij^2 for two views.

  Args:
    projections: [z_A, z_B], projector outputs [N, D] of the two views over the global batch (N >= 2).
    lambd: off-diagonal (redundancy reduction) weight, the paper's lambda.
    eps: added to the per-dimension variance before standardising.

  Returns:
    (loss, metrics): metrics "on_diagonal" = sum_i (1 - C_ii)^2, "off_diagonal" = sum_{i != j} C_ij^2
    (unweighted), "diagonal_correlation" = mean_i C_ii (1 when the views agree).
  """
  if len(projections) != 2:
    raise ValueError(f"barlow_twins_loss needs 2 views, got {len(projections)}")
  z_a, z_b = projections
  if z_a.ndim != 2 or z_a.shape != z_b.shape:
    raise ValueError(f"barlow_twins_loss: projections must be two [N, D] arrays of the same shape, got "
                     f"{tuple(z_a.shape)} and {tuple(z_b.shape)}")
  if z_a.shape[0] < 2:
    raise ValueError(f"barlow_twins_loss needs a batch of at least 2 to standardise, got N={z_a.shape[0]}")
  c = cross_correlation(z_a, z_b, eps)
  diag = jnp.diagonal(c)
  on = jnp.sum(jnp.square(1.0 - diag))
  off = jnp.sum(jnp.where(jnp.eye(c.shape[0], dtype=jnp.bool_), 0.0, jnp.square(c)))
  loss = on + lambd * off
  return loss, {"on_diagonal": on, "off_diagonal": off, "diagonal_correlation": jnp.mean(diag)}


def _loss(*, student, teacher, batch, state, step, config):
  del teacher, batch, state, step
  loss, metrics = barlow_twins_loss(projections=[s["projection"] for s in student[:2]],
                                    lambd=config.objective.barlow_twins.off_diagonal_weight)
  return loss, metrics, {}


# Default heads: MLPHead((Dense -> BN -> ReLU) x len(projector_hidden_dims) -> Dense); the fundus config
# uses two hidden layers (the paper's 3-layer projector). The output bias gets no gradient (the loss
# standardises every dimension), so it stays at its zero initialisation, like the paper's bias-free layer.
BARLOW_TWINS = Objective("barlow_twins", "Zbontar et al. 2021, Barlow Twins: Self-Supervised Learning via "
                         "Redundancy Reduction (ICML)", _loss)
