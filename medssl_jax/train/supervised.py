"""One training loop for the supervised trainings on a backbone: fine-tuning with a new head (evals/finetune.py),
U-Net segmentation (evals/segmentation.py) and SWCL's pseudo-labeller (projects/swcl/pseudo_labeller.py).

Each caller supplies its jitted step (batches, loss and optimizer update inside), its validation metrics and,
where it resumes, its checkpointing; `fit` owns the step count, validation cadence and checkpoint selection,
training curves, progress lines and a clean stop on SIGTERM / Ctrl-C. The learning-rate schedule
(`learning_rate_at`) and the weight-decay mask (`decay_mask`) are shared too.
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable

import jax
import numpy as np

SCHEDULES = ("cosine", "multistep")


def learning_rate_at(step: int, *, learning_rate: float, steps: int, warmup_steps: int = 0,
                     schedule: str = "cosine", milestones=(0.5, 0.75), gamma: float = 0.1) -> float:
  """The learning rate of update `step` (1-based): linear warm-up from 0 over `warmup_steps` updates, then
  either cosine decay to 0 at update `steps + 1` (optax's warmup_cosine_decay_schedule /
  cosine_decay_schedule evaluated at count = step - 1), or "multistep": multiplied by `gamma` at each
  milestone (fractions of `steps`; MedMNIST's recipe: x0.1 at 50% and 75% of training)."""
  t = step - 1
  if t < warmup_steps:
    return learning_rate * t / warmup_steps
  if schedule == "multistep":
    return learning_rate * gamma ** sum(t >= round(m * steps) for m in milestones)
  if schedule != "cosine":
    raise ValueError(f"schedule={schedule!r}; valid choices: {list(SCHEDULES)}")
  frac = min(t - warmup_steps, steps - warmup_steps) / (steps - warmup_steps)
  return learning_rate * 0.5 * (1.0 + math.cos(math.pi * frac))


def decay_mask(params):
  """True for kernels (conv / dense / attention weights): the leaves weight decay applies to (not biases, norm
  parameters, position embeddings or class tokens)."""
  return jax.tree_util.tree_map_with_path(lambda path, _: getattr(path[-1], "key", None) == "kernel", params)


def apply_with_batch_stats(module, params, batch_stats, x, *, train: bool, has_bn: bool):
  """(module output, batch_stats): BatchNorm statistics of the batch in train mode (the updated running statistics
  come back), the running ones otherwise; modules without BatchNorm (has_bn False) pass batch_stats through."""
  variables = {"params": params, **({"batch_stats": batch_stats} if has_bn else {})}
  if train and has_bn:
    out, mutated = module.apply(variables, x, train=True, mutable=["batch_stats"])
    return out, mutated["batch_stats"]
  return module.apply(variables, x, train=train), batch_stats


@dataclasses.dataclass
class Fit:
  """What `fit` returns."""
  state: Any                     # After the last step run.
  best_step: int | None          # The selected validation step (None: no validation ran).
  best_state: Any                # The state at best_step (None: no validation ran).
  best_metrics: dict | None      # Its validation metrics.
  train_curve: list[dict]        # {"step", each step metric's mean since the previous entry}.
  val_curve: list[dict]          # {"step", validation metrics} at every validation.
  seconds: float                 # Wall-clock of the steps run (and their validations).


def _means(pending: list[dict]) -> dict:
  return {k: float(np.mean([float(m[k]) for m in pending])) for k in pending[0]}


def fit(*, name: str, steps: int, state, step_fn: Callable, start: int = 0, evaluate: Callable | None = None,
        eval_every: int = 0, rank: Callable[[dict], Any] | None = None, record_every: int | None = None,
        print_every: int | None = None, quiet: bool = False, save: Callable | None = None, signals=None,
        checkpoint_dir: str = "", best: tuple | None = None) -> Fit:
  """Runs steps start+1 .. `steps` of a supervised training.

  Args:
    name: the progress lines' prefix, e.g. "finetune [random init]".
    state: the training state, passed through `step_fn(state, step) -> (state, metrics)` (metrics: scalars,
      "loss" first; kept on device until a curve entry or a progress line needs them).
    evaluate: `evaluate(state, step) -> metrics` of the validation data, every `eval_every` steps (0: never) and
      at the last step; with `rank`, the state of the highest `rank(metrics)` is kept (ties: the earlier step).
    record_every: a train_curve entry every this many steps (1: every step); None: at each progress point.
    print_every: a progress line every this many steps (default a tenth of the run), at each validation and at
      the last step; `quiet` prints none.
    save: `save(step, state, train_curve, val_curve, best)` after each validation, and when a stop signal arrives
      (`signals`: a train.guard.StopSignals), after which `signals.interrupt` ends the run naming the saved step
      and `checkpoint_dir`; `best` is the selected (step, state, metrics) so far, or None.
    best: (step, state, metrics) selected by an earlier part of this run (a resumed run), kept unless a later
      validation ranks higher.
  """
  print_every = print_every or max(1, steps // 10)
  best = None if best is None or rank is None else (rank(best[2]), *best)
  train_curve, val_curve, pending, printed = [], [], [], []
  snapshot = lambda: None if best is None else best[1:]
  t0 = time.perf_counter()
  for step in range(start + 1, steps + 1):
    state, metrics = step_fn(state, step)
    pending.append(metrics)
    printed.append(metrics)
    is_eval = evaluate is not None and (step == steps or (eval_every and step % eval_every == 0))
    is_print = step == steps or step % print_every == 0 or is_eval
    if (is_print if record_every is None else (step % record_every == 0 or step == steps)):
      train_curve.append({"step": step, **_means(pending)})
      pending = []
    entry = None
    if is_eval:
      entry = {"step": step, **evaluate(state, step)}
      val_curve.append(entry)
      if rank is not None and (best is None or rank(entry) > best[0]):
        best = (rank(entry), step, state, entry)
      if save is not None:
        save(step, state, train_curve, val_curve, snapshot())
    if is_print and not quiet:
      means = _means(printed)
      printed = []
      line = f"{name} step {step}/{steps} | train loss {means.pop('loss'):.4f}"
      line += "".join(f" | {k.replace('_', ' ')} {v:.4f}" for k, v in means.items())
      if entry is not None and "auroc" in entry:
        auc = entry["auroc"]
        line += f" | val AUROC {'nan' if auc is None or not np.isfinite(auc) else f'{auc:.4f}'}"
        if best is not None and best[1] != step:
          line += f" (best {best[3]['auroc']:.4f} at step {best[1]})"
      rate = (step - start) / (time.perf_counter() - t0)
      print(f"{line} | {rate:.2f} steps/s | ETA {(steps - step) / rate:.0f}s", flush=True)
    if signals is not None and signals.should_stop() and step < steps:  # (The last step finishes normally.)
      if save is not None:
        save(step, state, train_curve, val_curve, snapshot())
      # Batches follow from the seed and the step number: no iterator position to keep.
      signals.interrupt(step, checkpoint_dir, saved=step, holds="the state, the curves and the selection so far")
  jax.block_until_ready(state)
  _, best_step, best_state, best_metrics = best if best is not None else (None, None, None, None)
  return Fit(state=state, best_step=best_step, best_state=best_state, best_metrics=best_metrics,
             train_curve=train_curve, val_curve=val_curve, seconds=time.perf_counter() - t0)
