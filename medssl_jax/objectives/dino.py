"""DINO (Caron et al. 2021): self-distillation with no labels, a student matches an EMA teacher's
centred and sharpened outputs over multi-crop views.

    P_t(x) = softmax((g_t(x) - c) / tau_t),   P_s(x) = softmax(g_s(x) / tau_s)
    L = 1/|pairs| sum_{t in global views} sum_{s in all views, s != t} mean_b [ - sum_k P_t(x_t)_k log P_s(x_s)_k ]

g: backbone + DINO head (3-layer GELU MLP, with BatchNorm on ResNet backbones, -> l2-normalise ->
weight-normalised linear to K with the gain fixed to 1). The teacher (EMA of the student, stop-gradient) sees only the global views. tau_t
rises linearly from `teacher_temperature_start` to `teacher_temperature` over
`teacher_temperature_warmup_steps` steps; tau_s = `temperature`. The centre c is an EMA of the
teacher's mean output, updated after the step:

    c <- m c + (1 - m) mean over the global batch and the teacher views of g_t(x).

Centring keeps one dimension from dominating, sharpening keeps the output from going uniform. The
weight-normalised last layer is normalised in the forward pass (`swav.Prototypes`), so no post-step
renormalisation is needed. Not implemented: freezing the last layer during the first epoch, and the
weight-decay schedule.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from medssl_jax.objectives.base import Objective
from medssl_jax.objectives.contrastive import l2_normalize
from medssl_jax.objectives.swav import Prototypes


class DINOHead(nn.Module):
  """DINO's head: (Dense [-> BN] -> GELU) x len(hidden_dims) -> Dense to the bottleneck -> l2-normalise
  -> weight-normalised bias-free Dense to K (gain fixed to 1).

  `use_bn` is DINO's `use_bn_in_head` option. Its default (off) is tuned for ViTs; on a ResNet trained
  from scratch the BN-free head maps every image to nearly the same output (the shared component of the
  pooled features dominates), the sharp teacher then gives every image the same target and the run
  collapses (projection std 0.13 -> 0.006 within 30 steps of the tiny zoo run), so it is on for ResNets.

  Returns {"projection": bottleneck (before normalisation), "logits": [B, K] cosines}.
  """
  hidden_dims: tuple = (2048, 2048)
  bottleneck_dim: int = 256
  num_prototypes: int = 65536
  use_bn: bool = False

  @nn.compact
  def __call__(self, x, *, train: bool):
    dense = lambda n, name: nn.Dense(n, kernel_init=nn.initializers.truncated_normal(0.02), name=name)
    for i, h in enumerate(self.hidden_dims):
      x = dense(h, f"dense{i + 1}")(x)
      if self.use_bn:
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name=f"bn{i + 1}")(x)
      x = nn.gelu(x, approximate=False)
    z = dense(self.bottleneck_dim, "bottleneck")(x)
    return {"projection": z, "logits": Prototypes(self.num_prototypes, name="last_layer")(l2_normalize(z))}


def teacher_temperature(step, *, start: float, final: float, warmup_steps: int):
  """tau_t: linear from `start` at step 0 to `final` at `warmup_steps`, then constant (final if no warm-up)."""
  if warmup_steps <= 0:
    return jnp.asarray(final, jnp.float32)
  frac = jnp.clip(jnp.asarray(step, jnp.float32) / warmup_steps, 0.0, 1.0)
  return start + (final - start) * frac


def update_center(*, center, teacher_logits, momentum: float):
  """c <- momentum * c + (1 - momentum) * mean of the teacher outputs over the batch and teacher views.

  Args:
    center: [K] current centre.
    teacher_logits: list of [B, K] teacher outputs (before centring and temperature).
  """
  if not teacher_logits:
    raise ValueError("update_center needs at least one teacher view")
  batch_center = jnp.mean(jnp.concatenate([t.astype(jnp.float32) for t in teacher_logits], axis=0), axis=0)
  if batch_center.shape != center.shape:
    raise ValueError(f"update_center: center has shape {center.shape} but the teacher outputs have "
                     f"K={batch_center.shape[0]}")
  return momentum * center.astype(jnp.float32) + (1.0 - momentum) * batch_center


def _entropy(log_p):
  return -jnp.sum(jnp.exp(log_p) * log_p, axis=-1)


def dino_loss(*, student_logits, teacher_logits, center, student_temperature: float = 0.1,
              teacher_temperature: float = 0.04):
  """DINO's cross-entropy between centred, sharpened teacher outputs and student outputs.

  L = mean over pairs (t, s), t < len(teacher_logits), s != t, of
      mean_b - sum_k softmax((teacher_logits[t] - center) / tau_t)[b, k] log_softmax(student_logits[s] / tau_s)[b, k]
  Teacher view t is the same crop as student view t (the global views come first).

  Args:
    student_logits: list of V [B, K] student outputs, global views first.
    teacher_logits: list of T [B, K] teacher outputs (stop-gradient) of the first T views (T < V).
    center: [K] centre.
    student_temperature, teacher_temperature: tau_s and tau_t (tau_t may be a traced scalar).

  Returns:
    (loss, metrics): teacher_entropy (mean H(P_t): 0 = one-hot, log K = uniform collapse),
    student_entropy, kl (mean KL(P_t || P_s) over the pairs = loss - teacher_entropy),
    teacher_marginal_entropy (H of the batch-mean P_t: low when one dimension dominates).
  """
  v_count, t_count = len(student_logits), len(teacher_logits)
  if t_count < 1 or v_count < 2 or t_count > v_count:
    raise ValueError(f"dino_loss needs 1 <= teacher views <= student views and 2+ student views, got "
                     f"{t_count} teacher and {v_count} student views")
  shape = student_logits[0].shape
  for x in list(student_logits) + list(teacher_logits):
    if x.ndim != 2 or x.shape != shape:
      raise ValueError(f"dino_loss: all logits must be [B, K] with the same B and K, got student shapes "
                       f"{[tuple(s.shape) for s in student_logits]}, teacher shapes "
                       f"{[tuple(t.shape) for t in teacher_logits]}")
  if center.shape != shape[1:]:
    raise ValueError(f"dino_loss: center must be [K]={shape[1:]}, got shape {center.shape}")
  center = jax.lax.stop_gradient(center.astype(jnp.float32))
  log_s = [jax.nn.log_softmax(s.astype(jnp.float32) / student_temperature, axis=-1) for s in student_logits]
  log_t = [jax.nn.log_softmax((jax.lax.stop_gradient(t.astype(jnp.float32)) - center) / teacher_temperature, axis=-1)
           for t in teacher_logits]
  loss, n_pairs = 0.0, 0
  for t in range(t_count):
    p_t = jnp.exp(log_t[t])
    for s in range(v_count):
      if s != t:
        loss += jnp.mean(-jnp.sum(p_t * log_s[s], axis=-1))
        n_pairs += 1
  loss = loss / n_pairs
  teacher_entropy = jnp.mean(jnp.stack([jnp.mean(_entropy(lt)) for lt in log_t]))
  mean_p = jnp.mean(jnp.concatenate([jnp.exp(lt) for lt in log_t], axis=0), axis=0)
  metrics = {"teacher_entropy": teacher_entropy,
             "student_entropy": jnp.mean(jnp.stack([jnp.mean(_entropy(ls)) for ls in log_s])),
             "kl": loss - teacher_entropy,
             "teacher_marginal_entropy": -jnp.sum(mean_p * jnp.log(jnp.maximum(mean_p, 1e-30)))}
  return loss, metrics


def _heads(config):
  m = config.model
  return {"projector": DINOHead(hidden_dims=tuple(m.projector_hidden_dims), bottleneck_dim=m.projector_dim,
                                num_prototypes=config.objective.dino.out_dim,
                                # DINO's `use_bn_in_head`: off for ViTs (its default), on for ResNets here.
                                use_bn=m.encoder.startswith("resnet"))}


def _init_state(config, outputs):
  del config
  return {"center": jnp.zeros(outputs["logits"].shape[-1:], jnp.float32)}


def _loss(*, student, teacher, batch, state, step, config):
  del batch
  o, d = config.objective, config.objective.dino
  tau_t = teacher_temperature(step, start=d.teacher_temperature_start, final=d.teacher_temperature,
                              warmup_steps=d.teacher_temperature_warmup_steps)
  teacher_logits = [t["logits"] for t in teacher]
  loss, metrics = dino_loss(student_logits=[s["logits"] for s in student], teacher_logits=teacher_logits,
                            center=state["center"], student_temperature=o.temperature, teacher_temperature=tau_t)
  center = update_center(center=state["center"], teacher_logits=teacher_logits, momentum=d.center_momentum)
  return loss, dict(metrics, teacher_temperature=tau_t), {"center": center}


DINO = Objective("dino", "Caron et al. 2021, Emerging Properties in Self-Supervised Vision Transformers (ICCV)",
                 _loss, heads=_heads, teacher=True, teacher_views=0, init_state=_init_state, multi_crop=True,
                 evaluate_teacher=True)  # The paper's k-NN and linear evaluations use the teacher.
