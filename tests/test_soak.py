"""Kill-anywhere soak (on demand): `MEDSSL_SOAK=<kills> python -m pytest -q tests/test_soak.py`.

Quick pretrainings are killed again and again, each kill with SIGKILL or SIGTERM at a random moment: while the
dataset is being built, while a checkpoint is being written (a `*.orbax-checkpoint-tmp*` folder exists), at a random
step or after a random delay. Each run is restarted with the same command until it finishes, and then must equal an
uninterrupted run bit for bit: parameters, BatchNorm statistics, optimizer state, the final data-iterator
position, metrics.jsonl (less its wall-clock times) and the linear-probe results. New episodes (fresh workdir and
data dir) start until `MEDSSL_SOAK` kills were made. It prints one summary line per episode and a total, the figures
docs/clusters.md quotes. Without MEDSSL_SOAK it is skipped (it takes minutes).
"""
import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

from medssl_jax.config import load as load_config
from medssl_jax.train import pretrain as pretrain_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
KILLS = int(os.environ.get("MEDSSL_SOAK", "0") or 0)
STEPS, CHECKPOINT_EVERY, LOG_EVERY = 30, 4, 3
MOMENTS = ("build", "save", "step", "delay")

pytestmark = pytest.mark.skipif(not KILLS, reason="the soak runs on demand: MEDSSL_SOAK=<number of kills>")


def _args(workdir, data_dir, mode="pretrain"):
  return [sys.executable, "main.py", "--config=configs/demo_simclr.py:quick", f"--workdir={workdir}",
          f"--config.mode={mode}", f"--config.data.data_dir={data_dir}", f"--config.train.num_steps={STEPS}",
          f"--config.train.log_every={LOG_EVERY}", f"--config.train.checkpoint_every={CHECKPOINT_EVERY}",
          "--config.train.keep_checkpoints=2", "--config.eval.compare_random_init=false"]


def _env():
  return dict(os.environ, JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir)


def _run_and_kill(cmd, workdir, moment: str, sig: int, rng: random.Random) -> tuple[int, bool, str]:
  """Runs `cmd` and kills it with `sig` at `moment`; returns (exit status, whether the kill was sent, output)."""
  proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  sent = threading.Event()

  def kill():
    if not sent.is_set() and proc.poll() is None:
      sent.set()
      proc.send_signal(sig)

  watcher = None
  if moment == "save":  # Inside orbax's save: its temporary folder exists.
    def watch():
      ckpt = workdir / "checkpoints"
      while proc.poll() is None and not sent.is_set():
        if ckpt.is_dir() and any("orbax-checkpoint-tmp" in p.name for p in ckpt.iterdir()):
          kill()
        time.sleep(0.002)
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
  elif moment == "delay":
    threading.Timer(rng.uniform(2.0, 25.0), kill).start()
  ckpt = workdir / "checkpoints"
  last = max([int(p.name) for p in ckpt.iterdir() if p.name.isdigit()], default=0) if ckpt.is_dir() else 0
  at_step = rng.randint(last + 1, STEPS - 1) if last + 1 < STEPS else STEPS
  lines = []
  for line in proc.stdout:
    lines.append(line)
    if moment == "build" and line.startswith("Building synthetic_fundus"):
      time.sleep(rng.uniform(0.0, 0.5))
      kill()
    elif moment == "step" and line.startswith(f"step {at_step}/"):
      kill()
  proc.wait(timeout=300)
  sent.set()  # Stops the watcher and a pending timer's kill.
  return proc.returncode, proc.returncode in (-signal.SIGKILL, 128 + signal.SIGTERM, 128 + signal.SIGINT), \
      "".join(lines)


def _final(workdir, data_dir):
  """Everything that must match: final state, data position, logs, probe results."""
  config = load_config("demo_simclr", "quick")
  config.mode, config.data.data_dir = "pretrain", str(data_dir)
  config.train.num_steps, config.train.log_every, config.train.checkpoint_every = STEPS, LOG_EVERY, CHECKPOINT_EVERY
  config.train.keep_checkpoints, config.eval.compare_random_init = 2, False
  _, state = pretrain_lib.pretrain(config, str(workdir))
  rows = [{k: v for k, v in json.loads(l).items() if k != "time"}
          for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  iters = (workdir / "checkpoints" / str(STEPS) / "data_iters" / "process_0-of-1.json").read_text()
  probe = json.loads((workdir / "probe_results.json").read_text())
  return state, rows, iters, probe


def test_kill_anywhere_then_resume_is_bit_identical(tmp_path):
  rng = random.Random(int(os.environ.get("MEDSSL_SOAK_SEED", "0")))
  reference_dir = tmp_path / "reference"
  data = tmp_path / "tfds_reference"
  for mode in ("pretrain", "linear_eval"):
    done = subprocess.run(_args(reference_dir, data, mode), cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
  ref_state, ref_rows, ref_iters, ref_probe = _final(reference_dir, data)

  kills, by_moment, episode = 0, {m: 0 for m in MOMENTS}, 0
  while kills < KILLS:
    episode += 1
    workdir, data = tmp_path / f"episode{episode}", tmp_path / f"tfds{episode}"  # A fresh data dir: builds too.
    runs, episode_kills = 0, []
    while True:
      runs += 1
      assert runs < 40, f"episode {episode} does not finish"
      built = (data / "synthetic_fundus" / "small" / "1.0.0" / "dataset_info.json").exists()
      moment = rng.choice([m for m in MOMENTS if not (m == "build" and built)]) if kills < KILLS else "none"
      sig = rng.choice((signal.SIGKILL, signal.SIGTERM))
      code, killed, out = _run_and_kill(_args(workdir, data), workdir, moment, sig, rng)
      assert "Traceback" not in out, out[-4000:]
      if killed:
        kills += 1
        by_moment[moment] += 1
        episode_kills.append(f"{moment}/{signal.Signals(sig).name}")
        continue
      assert code == 0, out[-4000:]
      break
    probe = subprocess.run(_args(workdir, data, "linear_eval"), cwd=ROOT, env=_env(), capture_output=True,
                           text=True, timeout=600)
    assert probe.returncode == 0, probe.stdout[-2000:] + probe.stderr[-2000:]
    state, rows, iters, probe_results = _final(workdir, data)
    for name in ("params", "batch_stats", "opt_state"):
      jax.tree.map(np.testing.assert_array_equal, getattr(state, name), getattr(ref_state, name))
    assert rows == ref_rows and iters == ref_iters and probe_results == ref_probe, f"episode {episode}"
    assert not list(workdir.rglob("*orbax-checkpoint-tmp*")) and not list(data.rglob("incomplete.*"))
    print(f"episode {episode}: {len(episode_kills)} kills ({', '.join(episode_kills) or 'none'}) in {runs} runs: "
          "identical", flush=True)
  print(f"soak: {kills} kills in {episode} episodes (build {by_moment['build']}, save {by_moment['save']}, step "
        f"{by_moment['step']}, delay {by_moment['delay']}): every episode bit-identical to the uninterrupted run",
        flush=True)
