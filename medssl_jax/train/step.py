"""The pretraining step: augment on device, encode, objective on the global batch, optax update.

Everything here is a pure function of (state, batch, key) jitted over global arrays. The batch is
sharded over the mesh's data axis; parameters are replicated. XLA inserts the collectives, so the
loss, its gradients and BatchNorm statistics are those of the global batch on any number of devices.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from medssl_jax.augment import views as views_lib
from medssl_jax.train import mesh as mesh_lib
from medssl_jax.train.state import TrainState


def normalize(x, mean, std):
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def embedding_stats(x):
  """Collapse monitors for a [N, D] embedding: mean per-dimension std of the l2-normalised rows
  (1/sqrt(D) when spread out, 0 when collapsed) and the effective rank (exp of the spectral entropy)."""
  x = x.astype(jnp.float32)
  z = x / jnp.maximum(jnp.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  std = jnp.mean(jnp.std(z, axis=0))
  s = jnp.linalg.svd(x - x.mean(axis=0), compute_uv=False)
  p = s / jnp.maximum(s.sum(), 1e-12)
  rank = jnp.exp(-jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.maximum(p, 1e-12)), 0.0)))
  return std, rank


def make_loss_fn(model, objective, config):
  """Returns loss_fn(params, batch_stats, batch, key) -> (loss, (metrics, new_batch_stats))."""
  view_cfgs = list(config.augment.views)
  num_views = len(view_cfgs)
  mean, std = tuple(config.data.mean), tuple(config.data.std)
  temperature = config.objective.temperature

  def loss_fn(params, batch_stats, batch, key):
    views = views_lib.make_views(key, batch["image"], view_cfgs)
    # One forward pass over all views so BatchNorm sees the whole 2B batch (as in SimCLR).
    x = normalize(jnp.concatenate(views, axis=0), mean, std)
    out, mutated = model.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                               mutable=["batch_stats"])
    loss, metrics = objective(projections=out["projection"], batch=batch, num_views=num_views,
                              temperature=temperature)
    feat_std, feat_rank = embedding_stats(out["features"])
    proj_std, proj_rank = embedding_stats(out["projection"])
    metrics = dict(metrics, feature_std=feat_std, feature_rank=feat_rank, projection_std=proj_std,
                   projection_rank=proj_rank)
    return loss, (metrics, mutated["batch_stats"])

  return loss_fn


def make_train_step(model, objective, tx, schedule, config, mesh):
  """A jitted step(state, batch, base_key) -> (state, metrics), donating the old state.

  The per-step key is fold_in(base_key, step), so a resumed run draws the same augmentations.
  """
  loss_fn = make_loss_fn(model, objective, config)
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def step(state: TrainState, batch, base_key):
    key = jax.random.fold_in(base_key, state.step)
    (loss, (metrics, batch_stats)), grads = grad_fn(state.params, state.batch_stats, batch, key)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics, loss=loss, learning_rate=schedule(state.step), grad_norm=optax.tree.norm(grads))
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state)
    return new_state, metrics

  rep = mesh_lib.replicated(mesh)
  return jax.jit(step, out_shardings=(rep, rep), donate_argnums=(0,))
