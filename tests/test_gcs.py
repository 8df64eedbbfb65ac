"""Workdirs on Google Cloud Storage, proved against a local GCS (tests/gcs_testing.py: gcp-storage-emulator on the
loopback interface): a quick pretrain with --workdir=gs://bucket/run, SIGTERM, resume, then a linear probe; the
resumed parameters are bit-identical to an uninterrupted local run."""
import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

pytest.importorskip("gcsfs", reason="gcsfs (gs:// paths for etils.epath) is not installed; pip install -r requirements.txt")
pytest.importorskip("gcp_storage_emulator", reason="gcp-storage-emulator is not installed; pip install -r requirements.txt")

import gcs_testing  # noqa: E402
import run_testing  # noqa: E402

from medssl_jax.train import pretrain as pretrain_lib  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 12


@pytest.fixture(scope="module")
def gcs():
  server, url = gcs_testing.start("bucket")
  env = gcs_testing.settings(url)
  before = {k: os.environ.get(k) for k in env}
  gcs_testing.apply(env)
  yield env
  for k, v in before.items():
    if v is None:
      os.environ.pop(k, None)
    else:
      os.environ[k] = v
  server.stop()


def test_pretrain_sigterm_resume_and_probe_on_gcs(gcs, fundus_small_dir, tmp_path):
  workdir = "gs://bucket/runs/quick"
  config = run_testing.quick_config(fundus_small_dir, num_steps=STEPS, checkpoint_every=4)
  cmd = [sys.executable, "main.py", "--config=configs/demo_simclr.py:quick", f"--workdir={workdir}",
         "--config.mode=pretrain", f"--config.data.data_dir={fundus_small_dir}", f"--config.train.num_steps={STEPS}",
         "--config.train.log_every=1", "--config.train.checkpoint_every=4"]
  env = dict(os.environ, **gcs, JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir)
  returncode, out = run_testing.run_until_sigterm(cmd, env=env, at=f"step 6/{STEPS}")
  assert returncode == 128 + signal.SIGTERM, out[-3000:]
  stopped = int(out.split("stopped by SIGTERM after step ")[1].split(";")[0])
  again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
  assert f"resumed from {workdir}/checkpoints/{stopped}" in again.stdout, again.stdout[-2000:]

  probe = subprocess.run(cmd + ["--config.mode=linear_eval"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
  assert probe.returncode == 0, probe.stdout[-2000:] + probe.stderr[-3000:]

  # What is on GCS, read in a fresh process (gcsfs reads its settings at import): the files of the run, and its
  # final state restored by the pretraining loop (finished: nothing left to train).
  check = f"""
import json, sys
sys.path.insert(0, "tests")
import jax, numpy as np, run_testing
from etils import epath
from medssl_jax.train import pretrain
root = epath.Path({workdir!r})
out = dict(config=(root / "config.json").exists(), checkpoints=sorted(p.name for p in (root / "checkpoints").iterdir()),
           steps=[json.loads(l)["step"] for l in (root / "metrics.jsonl").read_text().splitlines()],
           events=len(list((root / "tb").glob("events.out.tfevents.*"))), table=(root / "probe_results.md").exists(),
           probe=json.loads((root / "probe_results.json").read_text()))
c = run_testing.quick_config({str(fundus_small_dir)!r}, num_steps={STEPS}, checkpoint_every=4)
_, s = pretrain.pretrain(c, {workdir!r})
leaves = jax.tree.leaves((s.params, s.batch_stats, s.opt_state))
np.savez({str(tmp_path / "resumed.npz")!r}, step=int(s.step), **{{str(i): np.asarray(x) for i, x in enumerate(leaves)}})
print("RESULT " + json.dumps(out))
"""
  done = subprocess.run([sys.executable, "-c", check], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  seen = json.loads(done.stdout.split("RESULT ", 1)[1])
  assert seen["config"] and seen["table"] and seen["events"] >= 1, seen
  assert str(stopped) in seen["checkpoints"] and str(STEPS) in seen["checkpoints"], seen
  assert seen["steps"][-1] == STEPS and set(range(1, STEPS + 1)) <= set(seen["steps"]), seen
  assert 0.0 <= seen["probe"]["simclr (pretrained)"]["auroc"] <= 1.0
  resumed = np.load(tmp_path / "resumed.npz")
  _, reference = pretrain_lib.pretrain(config, str(tmp_path / "uninterrupted"))
  assert int(resumed["step"]) == int(reference.step) == STEPS
  leaves = jax.tree.leaves((reference.params, reference.batch_stats, reference.opt_state))
  assert len(leaves) == len(resumed.files) - 1
  for i, x in enumerate(leaves):
    np.testing.assert_array_equal(resumed[str(i)], np.asarray(x))
