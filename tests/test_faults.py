"""Operations under faults: one run per workdir (a lock that a dead holder leaves to the next run), one build per
dataset among jobs that need it at once, SIGTERM outside the training loop, a device-count change on resume."""
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import run_testing
from medssl_jax import locks
from medssl_jax.train import mesh as mesh_lib
from medssl_jax.train import pretrain as pretrain_lib
from medssl_jax.train import workdir_lock

ROOT = pathlib.Path(__file__).resolve().parents[1]
HOLD = ("import sys, time; from medssl_jax import locks; locks.FileLock(sys.argv[1]).acquire(); "
        "print('held', flush=True); time.sleep(120)")


def _env(**extra):
  return dict(os.environ, JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir, **extra)


def _start(code_or_cmd, *args, **env):
  cmd = [sys.executable, "-c", code_or_cmd, *args] if isinstance(code_or_cmd, str) else code_or_cmd
  return subprocess.Popen(cmd, cwd=ROOT, env=_env(**env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)


def _wait_for(proc, prefix: str, timeout: float = 300) -> list[str]:
  lines, deadline = [], time.time() + timeout
  for line in proc.stdout:
    lines.append(line)
    if line.startswith(prefix):
      return lines
    assert time.time() < deadline, "".join(lines[-20:])
  raise AssertionError(f"no line starting with {prefix!r}:\n{''.join(lines[-30:])}")


def test_lock_names_its_holder_and_passes_on_when_the_holder_is_killed(tmp_path):
  path = str(tmp_path / "w" / ".medssl.lock")
  holder = _start(HOLD, path)
  _wait_for(holder, "held", timeout=60)
  with pytest.raises(locks.Busy, match=rf"held by pid {holder.pid} on host .* \(started .*\)"):
    locks.FileLock(path).acquire()
  holder.kill()  # SIGKILL: no cleanup ran; the kernel dropped its flock.
  holder.wait()
  lock = locks.FileLock(path).acquire()
  assert lock.previous["pid"] == holder.pid  # Taken over, and the dead holder named.
  assert json.loads(pathlib.Path(path).read_text())["pid"] == os.getpid()
  lock.release()
  assert not os.path.exists(path)  # Nothing left behind.


def test_workdir_lock_is_one_per_process_and_reentrant(tmp_path):
  with workdir_lock.hold(str(tmp_path)):
    with workdir_lock.hold(str(tmp_path)):  # A mode running another mode in the same workdir.
      assert (tmp_path / workdir_lock.LOCK_FILE).exists()
    assert (tmp_path / workdir_lock.LOCK_FILE).exists()
  assert not (tmp_path / workdir_lock.LOCK_FILE).exists()


def test_second_run_on_a_workdir_stops_with_one_line_naming_the_first(fundus_small_dir, tmp_path):
  workdir = tmp_path / "wd"
  cmd = [sys.executable, "main.py", "--config=configs/demo_simclr.py:quick", f"--workdir={workdir}",
         "--config.mode=pretrain", f"--config.data.data_dir={fundus_small_dir}", "--config.train.num_steps=6",
         "--config.train.log_every=1", "--config.train.checkpoint_every=3"]
  first = _start(cmd)
  _wait_for(first, "model:")  # Inside experiment.run: the lock is held.
  first.send_signal(signal.SIGSTOP)  # Paused while the second one starts, however slow this machine is.
  try:
    second = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
  finally:
    first.send_signal(signal.SIGCONT)
  out, _ = first.communicate(timeout=300)
  assert first.returncode == 0, out[-3000:]
  lines = [l for l in second.stderr.splitlines() if l.strip()]
  assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr[-3000:]
  assert len(lines) == 1 and f"is in use by pid {first.pid} on host" in lines[0], lines
  assert "step 1/" not in second.stdout
  steps = [json.loads(l)["step"] for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert steps == list(range(1, 7))  # One writer: no row twice.
  assert sorted(os.listdir(workdir / "checkpoints")) == ["3", "6"]  # No stray *.orbax-checkpoint-tmp.
  assert not (workdir / workdir_lock.LOCK_FILE).exists()


BUILD = ("import sys; from medssl_jax.data import pipeline; "
         "b = pipeline.get_builder('synthetic_fundus', data_dir=sys.argv[1], config='small'); "
         "print('records', len(b.as_data_source()['train']), flush=True)")


def test_concurrent_builds_of_one_dataset_build_it_once(tmp_path):
  data = str(tmp_path / "tfds")
  jobs = [_start(BUILD, data) for _ in range(2)]
  outs = [j.communicate(timeout=300)[0] for j in jobs]
  assert [j.returncode for j in jobs] == [0, 0], "\n".join(o[-2000:] for o in outs)
  assert all("records 512" in o for o in outs)
  assert sum(o.count("Building synthetic_fundus/small") for o in outs) == 1, outs
  folder = pathlib.Path(data) / "synthetic_fundus" / "small"
  assert [p.name for p in folder.iterdir()] == ["1.0.0"]  # No incomplete.* folder.
  assert not list(pathlib.Path(data).glob(".*.lock"))


def test_sigterm_during_a_dataset_build_leaves_nothing_and_says_so(tmp_path):
  data, workdir = tmp_path / "tfds", tmp_path / "wd"
  cmd = [sys.executable, "main.py", "--config=configs/demo_simclr.py:quick", f"--workdir={workdir}",
         "--config.mode=pretrain", f"--config.data.data_dir={data}", "--config.train.num_steps=2",
         "--config.train.checkpoint_every=2"]
  returncode, out = run_testing.run_until_sigterm(cmd, env=_env(), at="Building synthetic_fundus")
  assert returncode == 128 + signal.SIGTERM, out[-3000:]
  assert "Traceback" not in out, out[-3000:]
  assert (f"stopped by SIGTERM before the run finished; no checkpoint in {workdir} yet (a rerun starts training "
          "from the beginning). Rerun the same command") in out, out[-2000:]
  left = [str(p.relative_to(data)) for p in data.rglob("*")] if data.exists() else []
  left = [p for p in left if not p.startswith("downloads")]  # TFDS's own (empty) download folders may stay.
  assert not left, left  # Neither a half-built dataset, nor its empty folders, nor the build lock.
  again = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
  assert again.returncode == 0 and "step 2/2" in again.stdout, again.stdout[-2000:] + again.stderr[-2000:]


def test_resume_on_another_device_count_is_refused_unless_allowed(fundus_small_dir, tmp_path):
  assert jax.device_count() == 8
  config = run_testing.quick_config(fundus_small_dir, num_steps=4, checkpoint_every=2, keep_checkpoints=5)
  workdir = tmp_path / "wd"
  pretrain_lib.pretrain(config, str(workdir))
  shutil.rmtree(workdir / "checkpoints" / "4")  # As if stopped after step 2.
  one = mesh_lib.make_mesh(jax.devices()[:1])
  with pytest.raises(ValueError, match=r"checkpoints/2 was written on 8 devices and this run has 1: .*"
                                       r"--config.train.allow_device_change=true"):
    pretrain_lib.pretrain(config, str(workdir), mesh=one)
  config.train.allow_device_change = True
  _, state = pretrain_lib.pretrain(config, str(workdir), mesh=one)
  assert int(state.step) == 4 and all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state.params))
