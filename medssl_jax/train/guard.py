"""Stopping a run well: on SIGTERM / SIGINT (preemption, Ctrl-C), on a non-finite metric, on collapse.

- `StopSignals`: while active, SIGTERM and SIGINT only set a flag; the loop finishes its step, writes a
  checkpoint with the data iterator state and raises `Interrupted` (exit status 128 + signal, no traceback).
  A second Ctrl-C interrupts at once. On many processes they agree to stop at the same step
  (distributed.any_process), so their checkpoints match.
- `Guard`: keeps the metrics of the steps since the last check on device (no per-step host sync) and, at
  each log or checkpoint step, finds the first step with a non-finite metric or the first step of a
  collapse that lasted `patience` steps, and raises `Diverged` naming the step, the metric, its value and
  the last good checkpoint. While any step since the last check is non-finite or below the collapse
  threshold, `ok_to_save` is False, so no bad state replaces a good checkpoint.
"""
from __future__ import annotations

import math
import os
import signal
import sys
import threading

import jax
import numpy as np

from medssl_jax.train import distributed


PRETRAINING_CHECKPOINT = "the state and the data iterator position"  # What a stopped pretraining's checkpoint holds.


class Interrupted(SystemExit):
  """Raised after the checkpoint of an interrupted run is written; its code is 128 + the signal number.

  `step`: the last step run; `saved`: the step of the checkpoint to resume from (None: none yet; it is `step`
  unless the collapse guard skipped that save)."""

  def __init__(self, signum: int, step: int, directory: str, *, saved: int | None,
               holds: str = PRETRAINING_CHECKPOINT):
    self.signum, self.step, self.directory, self.saved, self.holds = signum, step, directory, saved, holds
    super().__init__(128 + signum)

  def __str__(self):
    name = signal.Signals(self.signum).name
    if self.saved is None:
      return f"stopped by {name} after step {self.step}; no checkpoint in {self.directory} yet: rerunning starts over"
    return (f"stopped by {name} after step {self.step}; checkpoint {self.directory}/{self.saved} holds {self.holds}; "
            "rerun the same command to resume exactly where it stopped")


class Stopped(SystemExit):
  """SIGTERM / SIGINT outside the training loop (setup, a dataset build, an evaluation): raised at once in the main
  thread by `stop_anywhere`, so `finally` blocks run (a half-built dataset is removed, locks are released); its
  code is 128 + the signal number."""

  def __init__(self, signum: int):
    self.signum = signum
    super().__init__(128 + signum)

  def __str__(self):
    return f"stopped by {signal.Signals(self.signum).name}"


class Diverged(FloatingPointError):
  """Training stopped because a metric became non-finite or the representation collapsed."""


class _SignalHandlers:
  """Context manager installing `self._handle` for SIGTERM and SIGINT, restoring the previous handlers on exit.

  Only the main thread can install handlers; elsewhere (e.g. a notebook worker thread) it does nothing, and a
  signal the process was started to ignore (SIGINT under nohup or `&`) stays ignored.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  RESEND_AFTER_S = 0.05

  def __init__(self):
    self._previous = {}
    self._previous_hook = None

  def _handle(self, signum, frame):
    raise NotImplementedError

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for s in self.SIGNALS:
        if signal.getsignal(s) is not signal.SIG_IGN:  # Started to ignore it (nohup, `&`): keep ignoring it.
          self._previous[s] = signal.signal(s, self._handle)
      self._previous_hook, sys.unraisablehook = sys.unraisablehook, self._unraisable
    return self

  def __exit__(self, *exc):
    for s, h in self._previous.items():
      signal.signal(s, h)
    self._previous = {}
    if self._previous_hook is not None:
      sys.unraisablehook, self._previous_hook = self._previous_hook, None
    return False

  def _unraisable(self, unraisable):
    # A handler that raises can run inside a garbage-collector callback or a __del__ (JAX registers one), where
    # Python prints the exception and drops it: the stop would be lost. Send the signal again a moment later, when
    # the main thread is back in ordinary code.
    signum = getattr(unraisable.exc_value, "signum", None)
    if signum is None and isinstance(unraisable.exc_value, KeyboardInterrupt):
      signum = signal.SIGINT
    if signum is None:
      (self._previous_hook or sys.__unraisablehook__)(unraisable)
      return
    timer = threading.Timer(self.RESEND_AFTER_S, os.kill, (os.getpid(), signum))
    timer.daemon = True
    timer.start()


class stop_anywhere(_SignalHandlers):  # pylint: disable=invalid-name
  """Context manager: SIGTERM and SIGINT raise `Stopped` wherever the main thread is (the training loop's
  StopSignals takes them over while it runs, to finish the step and checkpoint first)."""

  def _handle(self, signum, frame):
    raise Stopped(signum)


class StopSignals(_SignalHandlers):
  """Context manager: SIGTERM / SIGINT set `requested` (the signal number) instead of killing the process."""

  def __init__(self):
    super().__init__()
    self.requested = 0

  def _handle(self, signum, frame):
    if self.requested and signum == signal.SIGINT:
      raise KeyboardInterrupt  # Second Ctrl-C: the user does not want to wait for the step.
    self.requested = signum
    print(f"\n{signal.Signals(signum).name} received: finishing this step, then writing a checkpoint "
          "(Ctrl-C again to stop at once)", flush=True)

  def interrupt(self, step: int, directory: str, *, saved: int | None, holds: str = PRETRAINING_CHECKPOINT):
    """Prints where the run stopped and what to resume from (`holds`: what the checkpoint holds), then raises
    Interrupted (call after saving)."""
    stopped = Interrupted(self.requested, step, directory, saved=saved, holds=holds)
    print(stopped, flush=True)
    raise stopped

  def should_stop(self) -> bool:
    """Whether to stop after this step; every process must call it at every step (collective on many)."""
    stop = distributed.any_process(self.requested != 0)
    if stop and not self.requested:
      self.requested = signal.SIGTERM  # Another process was told; this one stops with it.
    return stop


class Guard:
  """Non-finite and collapse checks over the per-step metrics (see the module docstring).

  `spread_key`/`spread_dim` : the collapse monitor is metrics[spread_key] * sqrt(dim) (train/step.py's
  projection_std is 1/sqrt(dim) for spread-out l2-normalised embeddings, 0 when collapsed). `start_step`:
  collapse is not judged before it (warmup).
  """

  def __init__(self, *, threshold: float, patience: int, start_step: int = 0, spread_key: str = "projection_std",
               spread_dim: int | None = None):
    self.threshold, self.patience, self.start_step = threshold, patience, start_step
    self.spread_key, self.spread_dim = spread_key, spread_dim
    self._pending: list[tuple[int, dict]] = []
    self._streak_start: int | None = None  # First step of the current run of low-spread steps.

  def add(self, step: int, metrics: dict):
    """Keeps this step's metrics (device arrays) for the next check."""
    self._pending.append((step, metrics))

  def spread(self, metrics: dict) -> float | None:
    if not self.threshold or self.spread_key not in metrics or not self.spread_dim:
      return None
    return float(metrics[self.spread_key]) * math.sqrt(self.spread_dim)

  def check(self, *, last_checkpoint: str):
    """Fetches the pending metrics and raises Diverged at the first non-finite value or completed collapse.

    `last_checkpoint`: words naming the last good checkpoint, for the message.
    """
    pending, self._pending = jax.device_get(self._pending), []
    for step, metrics in pending:
      bad = {k: float(v) for k, v in metrics.items() if not np.all(np.isfinite(v))}
      if bad:
        name = "loss" if "loss" in bad else sorted(bad)[0]
        context = ", ".join(f"{k}={float(metrics[k]):.4g}" for k in ("loss", "grad_norm", "learning_rate")
                            if k in metrics and k != name)
        raise Diverged(f"{name} became {bad[name]} at step {step} ({context}; all non-finite: {sorted(bad)}). "
                       f"Nothing after step {step - 1} was saved; {last_checkpoint}. The run is deterministic, "
                       "so rerunning it diverges again: start a new --workdir with a lower "
                       "config.train.base_learning_rate, a config.train.grad_clip_norm or longer warmup_steps.")
      s = self.spread(metrics)
      if s is None or step <= self.start_step:
        continue
      if s < self.threshold:
        self._streak_start = step if self._streak_start is None else self._streak_start
        if step - self._streak_start + 1 >= self.patience:
          raise Diverged(f"representation collapse: {self.spread_key} x sqrt({self.spread_dim}) = {s:.3g} "
                         f"(1 = spread out, 0 = one point), below config.train.collapse_threshold="
                         f"{self.threshold} for {self.patience} steps since step {self._streak_start} (now step "
                         f"{step}). No checkpoint was written during the collapse; {last_checkpoint}. Common "
                         "causes: too high a learning rate, a missing predictor / stop-gradient, too little "
                         "augmentation; set collapse_threshold=0 to train on regardless.")
      else:
        self._streak_start = None

  @property
  def ok_to_save(self) -> bool:
    """False while the last checked step is in a low-spread streak (call after `check`)."""
    return self._streak_start is None
