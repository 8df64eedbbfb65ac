"""Metric accumulation (clu.metrics), TensorBoard + JSON-lines writers, and a progress line.

clu.metric_writers imports TensorFlow, so scalars go to TensorBoard through tensorboardX instead.
"""
from __future__ import annotations

import json
import re
import sys
import time

from clu import metrics as clu_metrics
import flax
import jax
import jax.numpy as jnp
import numpy as np

from medssl_jax import paths


def average_collection(names):
  """A clu Collection that averages each named scalar over the steps it is merged over."""
  return clu_metrics.Collection.create(**{n: clu_metrics.Average.from_output(n) for n in sorted(names)})


class MetricAccumulator:
  """Averages the step metrics between two log points with clu.metrics.Average."""

  def __init__(self):
    self._collection_cls = None
    self._value = None

  def update(self, step_metrics: dict):
    if self._collection_cls is None:
      self._collection_cls = average_collection(step_metrics)
    update = self._collection_cls.single_from_model_output(**step_metrics)
    self._value = update if self._value is None else self._value.merge(update)

  def compute_and_reset(self) -> dict:
    if self._value is None:
      return {}
    out = {k: float(v) for k, v in self._value.compute().items()}
    self._value = None
    return out

  def state_json(self) -> dict:
    """The running sums since the last log as JSON ({} when empty): saved with each checkpoint, so a resumed run
    averages its next log row over the same steps as an uninterrupted one, to the bit (float32 values survive
    JSON exactly)."""
    if self._value is None:
      return {}
    return jax.tree.map(lambda x: np.asarray(x).item(), flax.serialization.to_state_dict(self._value))

  def load_state_json(self, state: dict | None):
    """Restores `state_json()` (None or {}: nothing accumulated)."""
    if not state:
      self._collection_cls = self._value = None
      return
    self._collection_cls = average_collection([k for k in state if k != "_reduction_counter"])
    template = self._collection_cls.empty()
    arrays = jax.tree.map(lambda t, v: jnp.asarray(v, dtype=jnp.asarray(t).dtype),
                          flax.serialization.to_state_dict(template), state)
    self._value = flax.serialization.from_state_dict(template, arrays)


class ScalarWriter:
  """Writes scalars to TensorBoard event files (workdir/tb) and to workdir/metrics.jsonl.

  Only process 0 writes, so multi-host runs do not produce duplicate logs. On an object store (gs://...), which
  cannot append, metrics.jsonl is rewritten whole at each write (it holds one short line per log step).
  """

  def __init__(self, workdir: str, *, subdir: str = "tb", resume_step: int | None = None):
    """`resume_step`: the checkpoint step a resumed run continues from. Rows logged after it by the interrupted
    run are dropped (the resumed run logs them again) and TensorBoard hides its events after it (purge_step), so
    the logs read as those of an uninterrupted run."""
    self._enabled = jax.process_index() == 0
    self._tb = None
    self._jsonl = None
    if self._enabled:
      from tensorboardX import SummaryWriter  # Imported lazily: only the writing process needs it.
      paths.makedirs(workdir)
      self._tb = SummaryWriter(paths.join(workdir, subdir),
                               purge_step=None if resume_step is None else int(resume_step) + 1)
      jsonl = paths.join(workdir, "metrics.jsonl")
      if resume_step is not None and paths.exists(jsonl):
        kept = rows_up_to(paths.read_text(jsonl), resume_step)
        paths.write_text(jsonl, "".join(kept))
      if paths.is_url(jsonl):
        self._jsonl = _RewrittenFile(jsonl)
      else:
        self._jsonl = open(jsonl, "a")

  def write(self, step: int, scalars: dict, *, prefix: str = ""):
    if not self._enabled:
      return
    for k, v in scalars.items():
      self._tb.add_scalar(f"{prefix}{k}", float(v), int(step))
    record = {"step": int(step), "time": time.time(), **{f"{prefix}{k}": float(v) for k, v in scalars.items()}}
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()

  def close(self):
    if self._enabled:
      self._tb.close()
      self._jsonl.close()


def rows_up_to(text: str, step: int) -> list[str]:
  """The lines of a metrics.jsonl text whose step is <= `step` (a line cut short by a kill is dropped too)."""
  kept = []
  for line in text.splitlines(keepends=True):
    try:
      row = json.loads(line)
    except ValueError:
      continue
    if line.endswith("\n") and int(row.get("step", 0)) <= step:
      kept.append(line)
  return kept


def tag(name: str) -> str:
  """A TensorBoard tag part: runs of other characters become one "_"."""
  return re.sub(r"[^A-Za-z0-9_.\-]+", "_", str(name)).strip("_")


class _RewrittenFile:
  """An append-only text file on a store without append: the whole text is written again on each flush."""

  def __init__(self, path: str):
    self._path = paths.path(path)
    self._text = self._path.read_text() if self._path.exists() else ""
    self._dirty = False

  def write(self, text: str):
    self._text += text
    self._dirty = True

  def flush(self):
    if self._dirty:
      self._path.write_text(self._text)
      self._dirty = False

  def close(self):
    self.flush()


def write_eval_scalars(workdir: str, name: str, results: dict, *, step: int):
  """The scalar metrics of an evaluation ({encoder: {metric: value}}) as TensorBoard scalars '<encoder>/<metric>' in
  <workdir>/tb/<name>, beside the training curves (process 0 only; nested and non-finite values are left out).
  TensorBoard tags hold letters, digits and _ . - /: "simclr (pretrained)" becomes "simclr_pretrained"."""
  if jax.process_index() != 0:
    return
  from tensorboardX import SummaryWriter  # Imported lazily, as in ScalarWriter.
  writer = SummaryWriter(paths.join(workdir, "tb", name))
  for encoder, metrics in results.items():
    for k, v in (metrics.items() if isinstance(metrics, dict) else ()):
      if isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool) and np.isfinite(v):
        writer.add_scalar(f"{tag(encoder)}/{tag(k)}", float(v), int(step))
  writer.close()


def format_duration(seconds: float) -> str:
  seconds = int(max(0, seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class Progress:
  """One line per report: step/total, chosen metrics, steps/s, images/s and ETA."""

  def __init__(self, total_steps: int, *, start_step: int = 0, images_per_step: int = 0, stream=None):
    self.total = total_steps
    self.images_per_step = images_per_step
    self.stream = stream or sys.stdout
    self._t0 = time.perf_counter()
    self._last_t = self._t0
    self._last_step = start_step

  def report(self, step: int, scalars: dict, keys=("loss",)) -> str:
    now = time.perf_counter()
    dt = max(now - self._last_t, 1e-9)
    rate = (step - self._last_step) / dt
    self._last_t, self._last_step = now, step
    eta = (self.total - step) / rate if rate > 0 else float("nan")
    parts = [f"step {step}/{self.total}"]
    parts += [f"{k} {scalars[k]:.4g}" for k in keys if k in scalars]
    parts += [f"{rate:.2f} steps/s"]
    if self.images_per_step:
      parts.append(f"{rate * self.images_per_step:.0f} img/s")
    parts.append(f"ETA {format_duration(eta) if np.isfinite(eta) else '?'}")
    line = " | ".join(parts)
    if jax.process_index() == 0:
      print(line, file=self.stream, flush=True)
    return line
