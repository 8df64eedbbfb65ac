"""Each checkpoint carries its config, code version, package versions and a dataset fingerprint."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from medssl_jax.data import pipeline
from medssl_jax.train import checkpoint as ckpt_lib
from medssl_jax.train import pretrain as pretrain_lib
from medssl_jax.train import provenance

import run_testing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run(tmp_path_factory, fundus_small_dir):
  builder = pipeline.get_builder("synthetic_fundus", data_dir=str(fundus_small_dir), config="small")
  config = run_testing.quick_config(fundus_small_dir, num_steps=2, checkpoint_every=1)
  workdir = tmp_path_factory.mktemp("run")
  pretrain_lib.pretrain(config, str(workdir), builder=builder)
  return config, builder, workdir


def test_every_checkpoint_carries_config_code_packages_and_data(run):
  config, builder, workdir = run
  for step in (1, 2):
    rec = ckpt_lib.read_provenance(str(workdir), step=step)
    assert rec["step"] == step
    with open(workdir / "config.json") as f:
      assert rec["config"] == json.load(f)
    assert rec["code"]["version"] and len(rec["code"]["git_commit"] or "x" * 40) == 40
    assert rec["packages"]["jax"] == jax.__version__ and rec["packages"]["numpy"] == np.__version__
    data = rec["dataset"]
    assert (data["name"], data["config"], data["split"], data["num_examples"]) == ("synthetic_fundus", "small",
                                                                                    "train", 512)
    assert data == provenance.dataset_fingerprint(builder, "train")  # Recomputed: the same data, the same hash.
    assert rec["devices"]["count"] == jax.device_count() and rec["devices"]["processes"] == 1
  with pytest.raises(FileNotFoundError, match=r"no checkpoint for step 7 .* there are \[1, 2\]"):
    ckpt_lib.read_provenance(str(workdir), step=7)


def test_fingerprint_changes_with_the_data_and_the_subset(run):
  _, builder, _ = run
  base = provenance.dataset_fingerprint(builder, "train")
  assert provenance.dataset_fingerprint(builder, "test")["sha256"] != base["sha256"]
  assert provenance.dataset_fingerprint(builder, "train", indices=range(100))["sha256"] != base["sha256"]

  # A record's bytes changed (the same count and sizes): another hash.
  class Edited:
    def __init__(self, source):
      self.source = source

    def __len__(self):
      return len(self.source)

    def __getitem__(self, i):
      r = dict(self.source[i])
      if i == 0:
        r["label"] = (int(r["label"]) + 1) % 4
      return r

  real = pipeline._data_source
  try:
    pipeline._data_source = lambda b, s, indices=None: Edited(real(b, s, indices))
    assert provenance.dataset_fingerprint(builder, "train")["sha256"] != base["sha256"]
  finally:
    pipeline._data_source = real


def test_provenance_command_prints_the_record(run):
  _, _, workdir = run
  out = subprocess.run([sys.executable, "-m", "medssl_jax.train.provenance", f"--workdir={workdir}"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  rec = json.loads(out.stdout)
  assert rec["step"] == 2 and "config" not in rec and rec["dataset"]["name"] == "synthetic_fundus"
