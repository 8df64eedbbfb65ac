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


def test_every_mode_and_export_on_gcs(gcs, fundus_small_dir, tmp_path):
  """A 2-step pretraining in gs://bucket/runs/modes, then, in the same process, modes features, analyze and
  transfer (to a dataset in a data dir on GCS) there, an export to gs:// and a one-row table in gs://bucket/table: each output is an object on GCS
  (nothing lands in a local 'gs:' folder), the features and the export read back through paths.load_npz, the
  export holds the checkpoint's backbone, and paths.rename / relpath work on URLs."""
  workdir, out = "gs://bucket/runs/modes", "gs://bucket/exports/backbone.npz"
  script = f"""
import json, sys
sys.path.insert(0, "tests")
import ml_collections, numpy as np, run_testing
from etils import epath
from medssl_jax import experiment, export, paths
from medssl_jax.protocols import encoders
from medssl_jax.tables import runner
W, DATA = {workdir!r}, {str(fundus_small_dir)!r}
base = run_testing.quick_config(DATA, num_steps=2, checkpoint_every=2)
base.eval.compare_random_init = False
experiment.run(base, W)

def mode(name):
  c = base.copy_and_resolve_references()
  c.mode = name
  return c

c = mode("features")
c.features.splits = ("validation",)
feats = experiment.run(c, W)["validation"]
c = mode("analyze")
c.analysis.max_examples, c.analysis.embedding_method, c.analysis.num_attention_images = 16, "pca", 4
c.analysis.layers = ("backbone",)
experiment.run(c, W)
c = mode("transfer")
# A target whose data dir is on GCS: built locally, uploaded, read from the local copy.
c.transfer.targets = (dict(name="fundus", builder="synthetic_fundus", builder_config="small",
                           data_dir="gs://bucket/tfds"),)
transfer = experiment.run(c, W)["fundus"]
summary = export.export(W, {out!r})

root = epath.Path(W)
_, variables = encoders.load_pretrained(base, W)
want = export.backbone_state_dict({{k: variables[k]["backbone"] for k in ("params", "batch_stats")}})
got = paths.load_npz({out!r})
seen = dict(
    features=feats["path"], features_shape=list(paths.load_npz(feats["path"])["features"].shape),
    analysis=sorted(p.name for p in (root / "analysis" / "test").iterdir()),
    transfer=sorted(p.name for p in (root / "transfer" / "fundus").iterdir()), transfer_encoders=sorted(transfer),
    export_keys=sorted(got) == sorted(want),
    export_equal=all(np.array_equal(got[k], np.asarray(want[k])) for k in want),
    metadata=json.loads(paths.read_text({out!r} + ".json"))["encoder"], summary_out=summary["out"])
paths.write_text("gs://bucket/moves/a/x.txt", "x")
paths.write_text("gs://bucket/moves/a/sub/y.txt", "y")
paths.rename("gs://bucket/moves/a", "gs://bucket/moves/b")
paths.write_text("gs://bucket/moves/c.txt", "new")
paths.rename("gs://bucket/moves/c.txt", "gs://bucket/moves/b/x.txt")  # Replaces a file, as os.replace.
seen["moved"] = [paths.exists("gs://bucket/moves/a"), paths.read_text("gs://bucket/moves/b/x.txt"),
                 paths.read_text("gs://bucket/moves/b/sub/y.txt"), paths.exists("gs://bucket/moves/c.txt")]
seen["relpath"] = paths.relpath(W + "/pretrain/p-1", W)

# The table runner: one row (its pretraining, the probe's results moved into the row's folder, the tables).
t = ml_collections.ConfigDict(dict(name="one", base_config="configs/demo_simclr.py:quick", grid=dict(seed=(0,))))
t.overrides = ml_collections.ConfigDict(dict(data=dict(data_dir=DATA), train=dict(num_steps=2, checkpoint_every=2),
                                             eval=dict(compare_random_init=False, max_iter=10, l2_grid=(1e-2,))))
table = runner.run_table(t, workdir="gs://bucket/table")
row = table["rows"][0]
seen["table"] = dict(md=paths.exists(table["md"]), csv=paths.exists(table["csv"]), pretrain_dir=row["pretrain_dir"],
                     row=sorted(p.name for p in (epath.Path("gs://bucket/table/rows") / row["row"]).iterdir()))
print("RESULT " + json.dumps(seen))
"""
  env = dict(os.environ, **gcs, JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
             MEDSSL_DATA_CACHE=str(tmp_path / "data_cache"))
  done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=600)
  assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
  seen = json.loads(done.stdout.split("RESULT ", 1)[1])
  assert seen["features"] == f"{workdir}/features/validation.npz" and seen["features_shape"][0] == 64, seen
  for name in ("summary.json", "summary.md", "embedding_simclr_pretrained_backbone_pca.png",
               "attention_simclr_pretrained_grad_cam.png", "attention_simclr_pretrained_grad_cam.npz"):
    assert name in seen["analysis"], seen["analysis"]
  assert seen["transfer_encoders"] == ["simclr (pretrained)"], seen
  assert "Uploading synthetic_fundus/small to gs://bucket/tfds/synthetic_fundus/small/" in done.stdout
  assert {os.path.splitext(n)[1] for n in seen["transfer"]} >= {".json", ".md"}, seen["transfer"]
  assert seen["export_keys"] and seen["export_equal"] and seen["metadata"] == "resnet18", seen
  assert seen["summary_out"] == out
  assert seen["moved"] == [False, "new", "y", False], seen["moved"]
  assert seen["relpath"] == "pretrain/p-1"
  t = seen["table"]
  assert t["md"] and t["csv"] and t["pretrain_dir"].startswith("pretrain/") and not t["pretrain_dir"].startswith("/"), t
  assert {"result.json", "probe_results.json", "probe_results.md"} <= set(t["row"]), t
  assert not os.path.exists(os.path.join(ROOT, "gs:")), "a gs:// path was made absolute as a local one"


def test_data_dir_on_gcs_is_built_once_and_copied_to_each_host(gcs, tmp_path):
  """--config.data.data_dir=gs://...: the first host builds the dataset locally and uploads it (its info file last);
  another host (another local cache) copies it down instead of building; both read the same records."""
  script = f"""
import json, os
from medssl_jax import paths
from medssl_jax.data import pipeline
out = {{}}
for host in ("a", "b"):
  os.environ["MEDSSL_DATA_CACHE"] = os.path.join({str(tmp_path)!r}, host)
  b = pipeline.get_builder("synthetic_fundus", data_dir="gs://bucket/tfds", config="tiny")
  src = b.as_data_source()["train"]
  out[host] = dict(dir=str(b.data_dir), n=len(src), first=int(src[0]["image"].sum()), last=str(src[len(src) - 1]["id"]))
out["remote"] = paths.listdir("gs://bucket/tfds/synthetic_fundus/tiny/1.0.0")
print("RESULT " + json.dumps(out, default=str))
"""
  env = dict(os.environ, **gcs)
  done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
  seen = json.loads(done.stdout.split("RESULT ", 1)[1])
  assert "Uploading synthetic_fundus/tiny to gs://bucket/tfds/synthetic_fundus/tiny/1.0.0" in done.stdout
  assert "Copying synthetic_fundus/tiny from gs://bucket/tfds/synthetic_fundus/tiny/1.0.0" in done.stdout
  assert done.stdout.count("Building synthetic_fundus/tiny") == 1
  assert seen["a"]["dir"] == str(tmp_path / "a" / "gs" / "bucket" / "tfds" / "synthetic_fundus" / "tiny" / "1.0.0")
  assert {k: v for k, v in seen["a"].items() if k != "dir"} == {k: v for k, v in seen["b"].items() if k != "dir"}
  assert seen["a"]["n"] == 64 and "dataset_info.json" in seen["remote"], seen


def test_workdir_lock_on_gcs(gcs):
  """On an object store the lock is a record with a heartbeat: a live holder's stops a second claim; a stale one
  (its holder died) is taken over; release deletes it."""
  script = """
import json, os, time
from medssl_jax import locks, paths
P = "gs://bucket/locked/.medssl.lock"
first = locks.FileLock(P).acquire()
out = {"me": os.getpid()}
try:
  locks.FileLock(P).acquire()
except locks.Busy as e:
  out["busy"] = str(e)
first.release()
out["released"] = not paths.exists(P)
paths.write_text(P, json.dumps(dict(locks.record(), pid=999999, heartbeat=time.time() - 2 * locks.STALE_S)))
taken = locks.FileLock(P).acquire()
out["previous"] = taken.previous["pid"]
out["holder"] = taken.holder()["pid"]
taken.release()
print("RESULT " + json.dumps(out))
"""
  done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=dict(os.environ, **gcs), capture_output=True,
                        text=True, timeout=120)
  assert done.returncode == 0, done.stderr[-3000:]
  seen = json.loads(done.stdout.split("RESULT ", 1)[1])
  assert f"held by pid {seen['me']} on host" in seen["busy"], seen
  assert seen["released"] and seen["previous"] == 999999 and seen["holder"] != 999999, seen
