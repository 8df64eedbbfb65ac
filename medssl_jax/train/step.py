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
from medssl_jax.objectives import ema as ema_lib
from medssl_jax.train import mesh as mesh_lib
from medssl_jax.train.state import TrainState


def normalize(x, mean, std):
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def embedding_stats(x):
  """Collapse monitors for a [N, D] embedding: mean per-dimension std of the l2-normalised rows
  (1/sqrt(D) when spread out, 0 when collapsed) and the effective rank (exp of the spectral entropy)."""
  # A monitor, never differentiated: without the stop_gradient, value_and_grad linearises the SVD and asks LAPACK
  # for U and V too (gesdd with jobz='S'), 3-5x the cost of the singular values alone on [256, 512].
  x = jax.lax.stop_gradient(x).astype(jnp.float32)
  z = x / jnp.maximum(jnp.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  std = jnp.mean(jnp.std(z, axis=0))
  s = jnp.linalg.svd(x - x.mean(axis=0), compute_uv=False)
  p = s / jnp.maximum(s.sum(), 1e-12)
  rank = jnp.exp(-jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.maximum(p, 1e-12)), 0.0)))
  return std, rank


def encode_views(model, params, batch_stats, views, *, rngs=None):
  """Encodes each view in train mode, one forward pass per crop size.

  Views of one size go through together, so BatchNorm sees the whole multi-view batch (as in SimCLR);
  multi-crop views of other sizes get their own pass (as in SwAV / DINO). Returns (a list of output
  dicts in view order, each [B, ...], and the updated BatchNorm statistics).
  """
  groups: dict[tuple, list[int]] = {}
  for i, v in enumerate(views):
    groups.setdefault(tuple(v.shape[1:]), []).append(i)
  outputs = [None] * len(views)
  for idx in groups.values():
    x = jnp.concatenate([views[i] for i in idx], axis=0)
    out, mutated = model.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                               mutable=["batch_stats"], rngs=rngs)
    batch_stats = mutated.get("batch_stats", batch_stats)
    for j, i in enumerate(idx):
      outputs[i] = jax.tree.map(lambda a, j=j: jnp.split(a, len(idx), axis=0)[j], out)
  return outputs, batch_stats


def make_loss_fn(model, objective, config):
  """Returns loss_fn(params, batch_stats, objective_state, batch, key, step)
  -> (loss, (metrics, new_batch_stats, objective_state_updates))."""
  view_cfgs = list(config.augment.views)
  mean, std = tuple(config.data.mean), tuple(config.data.std)

  def loss_fn(params, batch_stats, objective_state, batch, key, step):
    views = [normalize(v, mean, std)
             for v in views_lib.make_views(key, batch["image"], view_cfgs, masks=batch.get("foreground"))]
    rngs = {"mask": jax.random.fold_in(key, 0x6D61736B)}  # Model randomness (MAE masking), apart from views.
    student, new_batch_stats = encode_views(model, params, batch_stats, views, rngs=rngs)
    if objective.text:  # The paired report through the text tower (no BatchNorm there).
      batch = dict(batch, **model.apply({"params": params}, batch["text_ids"], batch["text_mask"],
                                        method="encode_text"))
    teacher = None
    if objective.teacher:
      # The EMA teacher normalises with the current batch statistics (train mode), as BYOL's target
      # network does; its own running statistics are never used, so they are not kept.
      n_teacher = objective.teacher_views or config.objective.num_global_views
      teacher, _ = encode_views(model, objective_state["teacher"], batch_stats, views[:n_teacher],
                                rngs=rngs)
      teacher = jax.lax.stop_gradient(teacher)
    state = {k: v for k, v in objective_state.items() if k != "teacher"}
    loss, metrics, updates = objective.loss(student=student, teacher=teacher, batch=batch, state=state,
                                            step=step, config=config)
    # Collapse monitors over the views of the first size (the others may have a different count).
    first = [o for o, v in zip(student, views) if v.shape == views[0].shape]
    feat_std, feat_rank = embedding_stats(jnp.concatenate([o["features"] for o in first]))
    metrics = dict(metrics, feature_std=feat_std, feature_rank=feat_rank)
    if "projection" in first[0]:
      proj_std, proj_rank = embedding_stats(jnp.concatenate([o["projection"] for o in first]))
      metrics.update(projection_std=proj_std, projection_rank=proj_rank)
    return loss, (metrics, new_batch_stats, updates)

  return loss_fn


def make_train_step(model, objective, tx, schedule, config, mesh):
  """A jitted step(state, batch, base_key) -> (state, metrics), donating the old state.

  The per-step key is fold_in(base_key, step), so a resumed run draws the same augmentations. After
  the optimizer update the objective state takes the loss's updates (queue, centre) and, for
  objectives with a teacher, the EMA of the new parameters.
  """
  loss_fn = make_loss_fn(model, objective, config)
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  o = config.objective

  def step(state: TrainState, batch, base_key):
    key = jax.random.fold_in(base_key, state.step)
    (loss, (metrics, batch_stats, updates)), grads = grad_fn(state.params, state.batch_stats,
                                                             state.objective_state, batch, key, state.step)
    updates_tx, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates_tx)
    objective_state = dict(state.objective_state, **updates)
    metrics = dict(metrics, loss=loss, learning_rate=schedule(state.step), grad_norm=optax.tree.norm(grads))
    if objective.teacher:
      m = ema_lib.momentum_schedule(state.step, base=o.momentum, final=o.momentum_final,
                                    total_steps=config.train.num_steps)
      objective_state["teacher"] = ema_lib.ema_update(state.objective_state["teacher"], params, m)
      metrics["teacher_momentum"] = m
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state,
                              objective_state=objective_state)
    return new_state, metrics

  rep = mesh_lib.replicated(mesh)
  return jax.jit(step, out_shardings=(rep, rep), donate_argnums=(0,))
