"""Stopping well: SIGTERM at a random step then resume is bit-identical to an uninterrupted run; the
non-finite and collapse guards stop with the step, the metric and the cause and keep the last good checkpoint."""
import gc
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from medssl_jax.train import checkpoint as ckpt_lib
from medssl_jax.train import guard as guard_lib
from medssl_jax.train import pretrain as pretrain_lib

import run_testing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 24


def _config(data_dir, **train):
  return run_testing.quick_config(data_dir, num_steps=STEPS, **{"checkpoint_every": 8, "log_every": 5, **train})


def _overrides(config):
  return [f"--config.{k}={v}" for k, v in (("mode", config.mode), ("data.data_dir", config.data.data_dir),
                                           ("train.num_steps", STEPS), ("train.log_every", 5),
                                           ("train.checkpoint_every", 8))]


def _hashes(folder):
  import hashlib
  out = {}
  for root, _, files in os.walk(folder):
    for f in files:
      p = os.path.join(root, f)
      with open(p, "rb") as fh:
        out[os.path.relpath(p, folder)] = hashlib.sha256(fh.read()).hexdigest()
  return out


def test_sigterm_at_a_random_step_then_resume_is_bit_identical(fundus_small_dir, tmp_path):
  config = _config(fundus_small_dir)
  # Sent when step 5, 10 or 15 is logged: the run stops a step or more later, between log and checkpoint steps.
  kill_at = random.SystemRandom().choice((5, 10, 15))
  workdir = tmp_path / "preempted"
  cmd = [sys.executable, "main.py", "--config=configs/demo_simclr.py:quick", f"--workdir={workdir}",
         *_overrides(config)]
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir)
  returncode, out = run_testing.run_until_sigterm(cmd, env=env, at=f"step {kill_at}/{STEPS}")
  assert returncode == 128 + signal.SIGTERM, f"kill at {kill_at}:\n{out[-3000:]}"
  assert "SIGTERM received: finishing this step" in out and "Traceback" not in out, out[-3000:]
  stopped = int(out.split("stopped by SIGTERM after step ")[1].split(";")[0])
  assert kill_at <= stopped < STEPS, (kill_at, stopped)
  manager = ckpt_lib.make_manager(str(workdir))
  assert manager.latest_step() == stopped  # Checkpointed where it stopped, not at a checkpoint_every multiple.
  manager.close()
  assert os.path.exists(workdir / "checkpoints" / str(stopped) / "data_iters" / "process_0-of-1.json")

  again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
  assert f"resumed from {workdir}/checkpoints/{stopped}" in again.stdout
  assert f"pretraining done: {STEPS - stopped} steps" in again.stdout
  _, resumed = pretrain_lib.pretrain(config, str(workdir))  # Finished: restores the final checkpoint.
  _, reference = pretrain_lib.pretrain(config, str(tmp_path / "uninterrupted"))
  assert int(resumed.step) == int(reference.step) == STEPS
  for name in ("params", "batch_stats", "opt_state"):
    jax.tree.map(np.testing.assert_array_equal, getattr(resumed, name), getattr(reference, name))
  # The logs too: the row after the stop averages the same steps (the running sums were checkpointed).
  assert _rows(workdir) == _rows(tmp_path / "uninterrupted"), f"stopped after step {stopped}"


def _rows(workdir):
  """metrics.jsonl without its wall-clock times."""
  return [{k: v for k, v in r.items() if k != "time"} for r in _metrics(workdir)]


def test_logs_of_a_killed_run_resume_exactly(fundus_small_dir, tmp_path):
  """SIGKILL leaves rows logged after the last checkpoint (and maybe half a line): the resumed run drops them and
  logs them again, so metrics.jsonl equals the uninterrupted run's. The kill is reproduced on a copy of a finished
  run: its later checkpoints removed, a line cut short."""
  config = _config(fundus_small_dir, checkpoint_every=7, keep_checkpoints=10)
  done, killed = tmp_path / "done", tmp_path / "killed"
  _, reference = pretrain_lib.pretrain(config, str(done))
  shutil.copytree(done, killed)
  for step in (14, 21, STEPS):
    shutil.rmtree(killed / "checkpoints" / str(step))
  with open(killed / "metrics.jsonl", "a") as f:
    f.write('{"step": 25, "train/lo')
  _, resumed = pretrain_lib.pretrain(config, str(killed))
  jax.tree.map(np.testing.assert_array_equal, resumed.params, reference.params)
  rows = _rows(killed)
  assert [r["step"] for r in rows] == [5, 10, 15, 20, STEPS] and rows == _rows(done)


def test_stop_signals_flag_then_second_ctrl_c_interrupts():
  before = signal.getsignal(signal.SIGINT)
  signal.signal(signal.SIGINT, signal.default_int_handler)  # As in a terminal (CI may run us with SIGINT ignored).
  try:
    with guard_lib.StopSignals() as signals:
      assert not signals.should_stop()
      os.kill(os.getpid(), signal.SIGINT)
      assert signals.requested == signal.SIGINT and signals.should_stop()
      with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Restored on exit.
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # A process started to ignore SIGINT keeps ignoring it.
    with guard_lib.StopSignals() as signals:
      os.kill(os.getpid(), signal.SIGINT)
      assert not signals.requested and signal.getsignal(signal.SIGINT) is signal.SIG_IGN
  finally:
    signal.signal(signal.SIGINT, before)


def test_a_stop_dropped_inside_a_gc_callback_is_sent_again():
  # JAX runs Python in a garbage-collector callback; an exception raised there is printed and dropped.
  fired = []

  def callback(phase, info):
    if phase == "start" and not fired:
      fired.append(phase)
      signal.raise_signal(signal.SIGTERM)  # Its handler runs here, inside the callback.

  hook = sys.unraisablehook
  gc.callbacks.append(callback)
  try:
    with pytest.raises(guard_lib.Stopped) as stopped:
      with guard_lib.stop_anywhere():
        gc.collect()
        time.sleep(10)  # Cut short by the signal sent again.
  finally:
    gc.callbacks.remove(callback)
  assert fired and stopped.value.code == 128 + signal.SIGTERM
  assert sys.unraisablehook is hook  # Restored on exit.


def test_non_finite_loss_stops_with_step_and_keeps_last_good_checkpoint(fundus_small_dir, tmp_path):
  # SGD whose warmup ramps the learning rate by ~3e6 per step: finite for a few steps (BatchNorm absorbs the
  # growing weights), then non-finite; checkpoints every 2 steps, checks at logs every 5 steps and before saves.
  config = _config(fundus_small_dir, optimizer="sgd", base_learning_rate=1e10, warmup_steps=200, checkpoint_every=2,
                   log_every=5, collapse_threshold=0.0)
  workdir = tmp_path / "nan"
  with pytest.raises(guard_lib.Diverged) as e:
    pretrain_lib.pretrain(config, str(workdir))
  msg = str(e.value)
  bad_step = int(msg.split(" at step ")[1].split(" ")[0])
  manager = ckpt_lib.make_manager(str(workdir))
  kept = manager.all_steps()
  manager.close()
  assert kept and max(kept) < bad_step, (kept, msg)
  assert f"the last good checkpoint is {workdir}/checkpoints/{max(kept)}" in msg
  assert "became nan" in msg or "became inf" in msg, msg
  assert "base_learning_rate" in msg and "grad_clip_norm" in msg
  # The kept checkpoint is finite, and the step before the reported one was finite too (it is the first).
  abstract = jax.eval_shape(lambda: pretrain_lib.init_train_state(config, *pretrain_lib.build(config)[::2],
                                                                  jax.random.key(0)))
  manager = ckpt_lib.make_manager(str(workdir))
  _, state, _ = ckpt_lib.restore_latest(manager, abstract)
  manager.close()
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state.params))
  rows = [r for r in _metrics(workdir) if r["step"] < bad_step]
  assert all(np.isfinite(r["train/loss"]) for r in rows)


def _metrics(workdir):
  import json
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(l) for l in f]


def test_collapse_guard_counts_steps_after_warmup_and_blocks_saving():
  g = guard_lib.Guard(threshold=0.05, patience=3, start_step=2, spread_dim=16)
  low, high = 0.01 / 4, 0.5 / 4  # projection_std values; x sqrt(16) = 0.01 and 0.5.
  for step, v in enumerate([low, low, high, low, low], start=1):  # Steps 1-2 are warmup: not judged.
    g.add(step, {"loss": np.float32(1.0), "projection_std": np.float32(v)})
  g.check(last_checkpoint="ckpt 0")  # A streak of 2 (steps 4-5) < patience 3.
  assert not g.ok_to_save
  g.add(6, {"loss": np.float32(1.0), "projection_std": np.float32(high)})
  g.check(last_checkpoint="ckpt 0")
  assert g.ok_to_save  # Recovered: the streak is over.
  for step in (7, 8, 9):
    g.add(step, {"loss": np.float32(1.0), "projection_std": np.float32(low)})
  with pytest.raises(guard_lib.Diverged, match=r"representation collapse: projection_std x sqrt\(16\) = 0.01 .*"
                                               r"collapse_threshold=0.05 for 3 steps since step 7 \(now step 9\).*"
                                               r"ckpt 0"):
    g.check(last_checkpoint="ckpt 0")


def test_collapse_guard_stops_a_collapsing_run(fundus_small_dir, tmp_path):
  # Any real run's spread sits far below a threshold of 0.99, so the guard stops it `patience` steps after
  # warmup (step 2, which is checkpointed) without writing the checkpoint of step 4, inside the streak.
  config = _config(fundus_small_dir, collapse_threshold=0.99, collapse_patience=3, warmup_steps=2, checkpoint_every=2)
  workdir = tmp_path / "collapse"
  with pytest.raises(guard_lib.Diverged, match=r"representation collapse: .* for 3 steps since step 3 \(now step 5\)"
                                               r".*the last good checkpoint is .*/checkpoints/2\b"):
    pretrain_lib.pretrain(config, str(workdir))
  manager = ckpt_lib.make_manager(str(workdir))
  assert manager.all_steps() == [2]
  manager.close()


def test_interrupted_says_where_to_resume_from():
  e = guard_lib.Interrupted(signal.SIGTERM, 9, "/w/checkpoints", saved=8)  # Step 9's save skipped (collapse guard).
  assert e.code == 143 and str(e).startswith("stopped by SIGTERM after step 9; checkpoint /w/checkpoints/8 holds")
  e = guard_lib.Interrupted(signal.SIGINT, 3, "/w/checkpoints", saved=None)
  assert e.code == 130 and "no checkpoint in /w/checkpoints yet: rerunning starts over" in str(e)
