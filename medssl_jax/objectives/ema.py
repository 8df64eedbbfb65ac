"""EMA teachers: the momentum schedule and the update, as pure functions."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def momentum_schedule(step, *, base: float, final: float = 1.0, total_steps: int):
  """BYOL's cosine schedule: base at step 0, rising to final at total_steps.

  tau_k = final - (final - base) * (cos(pi * k / K) + 1) / 2
  """
  k = jnp.clip(jnp.asarray(step, jnp.float32) / max(1, total_steps), 0.0, 1.0)
  return final - (final - base) * (jnp.cos(jnp.pi * k) + 1.0) / 2.0


def ema_update(teacher, student, momentum):
  """teacher <- momentum * teacher + (1 - momentum) * student, leaf by leaf, in float32."""
  return jax.tree.map(lambda t, s: (momentum * t + (1.0 - momentum) * s).astype(t.dtype), teacher, student)
