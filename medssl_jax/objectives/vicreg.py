"""VICReg (Bardes et al. 2022): Variance-Invariance-Covariance Regularization.

    L = lambda * s(Z, Z') + mu * [v(Z) + v(Z')] + nu * [c(Z) + c(Z')]

    s(Z, Z') = mean over b and j of (z_bj - z'_bj)^2                 (invariance: mean squared error,
                                                                      F.mse_loss in the paper's code)
    v(Z)     = 1/d sum_j max(0, gamma - sqrt(Var(z_j) + eps))        (variance hinge, gamma 1, eps 1e-4)
    c(Z)     = 1/d sum_{i != j} Cov(Z)_ij^2                          (covariance: decorrelation)

Var and Cov are over the GLOBAL batch with the unbiased 1/(N-1) normalisation, as in the paper's code;
lambda, mu, nu = config.objective.vicreg.sim_weight / std_weight / cov_weight (paper: 25, 25, 1). Note: this is
the paper's equation (6); the official code averages the two variance terms (mu/2 * [v(Z) + v(Z')]), so
setting std_weight = 12.5 reproduces the code exactly.
"""
from __future__ import annotations

import jax.numpy as jnp

from medssl_jax.objectives.base import Objective

GAMMA = 1.0
EPS = 1e-4


def invariance(z_a, z_b):
  """s(Z, Z'): mean squared error over all entries, float32."""
  return jnp.mean(jnp.square(z_a.astype(jnp.float32) - z_b.astype(jnp.float32)))


def variance(z, gamma: float = GAMMA, eps: float = EPS):
  """v(Z) = mean_j max(0, gamma - sqrt(Var(z_j) + eps)), unbiased variance over the batch."""
  z = z.astype(jnp.float32)
  std = jnp.sqrt(jnp.var(z, axis=0, ddof=1) + eps)
  return jnp.mean(jnp.maximum(0.0, gamma - std))


def covariance(z):
  """c(Z) = sum_{i != j} Cov(Z)_ij^2 / d, unbiased covariance over the batch."""
  z = z.astype(jnp.float32)
  n, d = z.shape
  zc = z - jnp.mean(z, axis=0)
  cov = zc.T @ zc / (n - 1)
  return jnp.sum(jnp.where(jnp.eye(d, dtype=jnp.bool_), 0.0, jnp.square(cov))) / d


def vicreg_loss(*, projections, sim_weight: float = 25.0, std_weight: float = 25.0, cov_weight: float = 1.0,
                gamma: float = GAMMA, eps: float = EPS):
  """VICReg's loss lambda * s + mu * [v(Z) + v(Z')] + nu * [c(Z) + c(Z')] for two views.

  Args:
    projections: [Z, Z'], expander outputs [N, D] of the two views over the global batch (N >= 2).
    sim_weight, std_weight, cov_weight: lambda, mu, nu.
    gamma, eps: the variance hinge's target std and the epsilon inside its square root.

  Returns:
    (loss, metrics): the unweighted terms, metrics "invariance" = s(Z, Z'), "variance" = v(Z) + v(Z'),
    "covariance" = c(Z) + c(Z').
  """
  if len(projections) != 2:
    raise ValueError(f"vicreg_loss needs 2 views, got {len(projections)}")
  z_a, z_b = projections
  if z_a.ndim != 2 or z_a.shape != z_b.shape:
    raise ValueError(f"vicreg_loss: projections must be two [N, D] arrays of the same shape, got "
                     f"{tuple(z_a.shape)} and {tuple(z_b.shape)}")
  if z_a.shape[0] < 2:
    raise ValueError(f"vicreg_loss needs a batch of at least 2 (unbiased variance), got N={z_a.shape[0]}")
  s = invariance(z_a, z_b)
  v = variance(z_a, gamma, eps) + variance(z_b, gamma, eps)
  c = covariance(z_a) + covariance(z_b)
  loss = sim_weight * s + std_weight * v + cov_weight * c
  return loss, {"invariance": s, "variance": v, "covariance": c}


def _loss(*, student, teacher, batch, state, step, config):
  del teacher, batch, state, step
  o = config.objective.vicreg
  loss, metrics = vicreg_loss(projections=[s["projection"] for s in student[:2]], sim_weight=o.sim_weight,
                              std_weight=o.std_weight, cov_weight=o.cov_weight)
  return loss, metrics, {}


# Default heads: the expander is MLPHead((Dense -> BN -> ReLU) x len(projector_hidden_dims) -> Dense);
# the fundus config uses two hidden layers (the paper's 3-layer expander).
VICREG = Objective("vicreg", "Bardes et al. 2022, VICReg: Variance-Invariance-Covariance Regularization for "
                   "Self-Supervised Learning (ICLR)", _loss)
