"""The train state: a plain pytree of arrays (no functions), so orbax saves and restores it as is."""
from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from medssl_jax import models


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training.

  Objectives that carry state (EMA teacher, queue, centre) put it in `objective_state`, explicitly.
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  objective_state: Any = flax.struct.field(default_factory=dict)

  @property
  def variables(self):
    return {"params": self.params, "batch_stats": self.batch_stats}


def make_optimizer(config) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Optimizer and learning-rate schedule from `config.train` (warmup + cosine decay).

  The base learning rate is scaled linearly with the global batch (lr = base_lr * batch / 256), the
  convention of SimCLR/BYOL, computed here and only here.
  """
  t = config.train
  lr = t.base_learning_rate * t.batch_size / 256.0
  schedule = optax.warmup_cosine_decay_schedule(0.0, lr, max(1, t.warmup_steps), max(t.num_steps, t.warmup_steps + 1))
  # Weight decay only on kernels: decaying BatchNorm scales and biases hurts small-batch SSL.
  wd_mask = lambda params: jax.tree.map_with_path(lambda p, _: p[-1].key == "kernel", params)
  if t.optimizer == "adamw":
    tx = optax.adamw(schedule, weight_decay=t.weight_decay, mask=wd_mask)
  elif t.optimizer == "lars":
    tx = optax.lars(schedule, weight_decay=t.weight_decay, weight_decay_mask=wd_mask,
                    trust_ratio_mask=wd_mask, momentum=0.9)
  elif t.optimizer == "sgd":
    tx = optax.chain(optax.add_decayed_weights(t.weight_decay, mask=wd_mask),
                     optax.sgd(schedule, momentum=0.9, nesterov=True))
  else:
    raise ValueError(f"config.train.optimizer={t.optimizer!r} is not known; valid choices: "
                     "['adamw', 'lars', 'sgd']")
  if t.get("grad_clip_norm"):
    tx = optax.chain(optax.clip_by_global_norm(t.grad_clip_norm), tx)
  return tx, schedule


def init_state(model, tx, *, key, image_shape, objective=None, config=None) -> TrainState:
  """Initialises parameters, optimizer state and the objective's state on the host (float32).

  With an `objective` (and its `config`): an EMA teacher starts as a copy of the parameters, and
  `objective.init_state(config, outputs)` makes the rest (queue, centre) from the output shapes of
  one forward pass.
  """
  dummy = jnp.zeros((2, *image_shape), jnp.float32)
  rngs = {"params": key, "mask": jax.random.fold_in(key, 1)}
  variables = models.init_variables(model, rngs, dummy, train=False)
  params = variables["params"]
  objective_state = {}
  if objective is not None and objective.teacher:
    objective_state["teacher"] = jax.tree.map(jnp.copy, params)  # Own buffers: the step donates its input.
  if objective is not None and objective.init_state is not None:
    outputs = jax.eval_shape(lambda v: model.apply(v, dummy, train=True, mutable=["batch_stats"], rngs=rngs)[0],
                             variables)
    objective_state.update(objective.init_state(config, outputs))
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=variables.get("batch_stats", {}),
                    opt_state=tx.init(params), objective_state=objective_state)


def num_params(tree) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(tree))
