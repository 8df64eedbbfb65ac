"""SWCL end to end on the synthetic quick variant: every stage runs from one command, outputs land in the
workdir, a rerun resumes instead of recomputing, and the segmentation table collects the results."""
import json
import os

import pytest

from medssl_jax import config as config_lib
from medssl_jax import experiment
from medssl_jax.tables import segmentation_table


@pytest.fixture(scope="module")
def swcl_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("swcl_quick"))
  config = config_lib.load("fundus_swcl", "quick")
  out = experiment.run(config, workdir)
  return config, workdir, out


def test_every_stage_writes_its_outputs(swcl_run):
  config, workdir, out = swcl_run
  for path in ("pseudo_labeller/summary.json", "propagation/manifest.json", "propagation/pseudo_labels.csv",
               "patches/summary.json", "patches/patches_grid.png", "config.json", "segmentation/results.json",
               "segmentation/results.md"):
    assert os.path.exists(os.path.join(workdir, path)), path
  patches = out["patches"]
  assert patches["num_patches"] == 5 * patches["num_images"] == 5 * 32  # synthetic_fundus/tiny test split.
  assert os.path.isdir(os.path.join(workdir, "checkpoints", str(config.train.num_steps)))
  transfer = out["transfer"]["synthetic_grading"]
  assert set(transfer) == {"swcl (pretrained)", "random init", "pseudo-labeller (CE + FixMatch)"}
  seg = json.load(open(os.path.join(workdir, "segmentation", "results.json")))
  encoders = seg.get("encoders", seg)
  assert set(encoders) == {"swcl (pretrained)", "random init", "pseudo-labeller (CE + FixMatch)"}
  for r in encoders.values():
    assert 0.0 <= r["mean"]["dice"] <= 1.0 and 0.0 <= r["mean"]["auroc"] <= 1.0


def test_rerun_resumes_without_recomputing(swcl_run, capsys):
  config, workdir, _ = swcl_run
  stamps = {p: os.path.getmtime(os.path.join(workdir, p)) for p in
            ("pseudo_labeller/summary.json", "propagation/manifest.json", "patches/summary.json",
             "transfer/synthetic_grading/probe_results.json")}
  seg = json.load(open(os.path.join(workdir, "segmentation", "results.json")))
  experiment.run(config, workdir)
  for p, t in stamps.items():
    assert os.path.getmtime(os.path.join(workdir, p)) == t, f"{p} was rewritten on resume"
  out = capsys.readouterr().out
  assert "pretraining done" not in out and "pseudo-labeller step" not in out
  # Finished segmentation runs are reused as they were (same per-seed results, same training time).
  assert json.load(open(os.path.join(workdir, "segmentation", "results.json"))) == seg


def test_single_stage_modes_share_the_workdir(swcl_run):
  config, workdir, _ = swcl_run
  c = config_lib.load("fundus_swcl", "quick")
  c.mode = "patches"
  summary = experiment.run(c, workdir)
  assert summary["num_patches"] == 160


def test_segmentation_table_collects_rows(swcl_run, tmp_path):
  _, workdir, _ = swcl_run
  table = segmentation_table.load_table("configs/table_chase_db1_swcl.py:quick")
  # The table's only run is the quick SWCL run: point it at the finished workdir (a symlink named after it).
  os.symlink(workdir, tmp_path / "swcl")
  rows = segmentation_table.run_table(table, workdir=str(tmp_path))
  assert [r["label"] for r in rows] == [r["label"] for r in table["rows"]]
  paths = segmentation_table.write_outputs(table, rows, str(tmp_path / "out"))
  md = open(paths[0]).read()
  assert "SWCL" in md and "| 1 |" in md  # One seed in the quick variant: means only.
  assert "## Classification transfer" in md and "synthetic_grading AUROC" in md
  assert all(os.path.exists(p) for p in paths)


def test_patch_stage_needs_propagation_first(tmp_path):
  c = config_lib.load("fundus_swcl", "quick")
  c.mode = "patches"
  with pytest.raises(FileNotFoundError, match="propagation/manifest.json does not exist: run stage 2 first"):
    experiment.run(c, str(tmp_path))


@pytest.mark.parametrize("path,value,match", [
    ("swcl.pool", ({"builder": "synthetic_fundus"},), r"config.swcl.pool\[0\]: missing \['split'\]"),
    ("swcl.pool", ({"builder": "nope", "split": "test"},), r"config.swcl.pool\[0\].builder='nope' is not known"),
    ("swcl.patch_size", 100, "config.swcl.patch_size=100 is larger than config.swcl.image_size=64"),
    ("swcl.confidence_threshold", 1.5, r"config.swcl.confidence_threshold must lie in \[0, 1\]"),
    ("transfer.targets", ({"name": "a b", "builder": "hrf"},), "name 'a b' must be letters"),
    ("transfer.targets", ({"name": "x", "builder": "hrf", "split": "train"},), r"unknown key\(s\) \['split'\]"),
    ("segmentation.encoders", ("pretrained", "imagenet"), "config.segmentation.encoders\\[...\\]='imagenet'"),
    ("segmentation.encoders", ("init_checkpoint",), "model.init_checkpoint is empty"),
    ("segmentation.seeds", (), "config.segmentation.seeds must be a non-empty tuple"),
])
def test_bad_swcl_values(path, value, match):
  c = config_lib.load("fundus_swcl", "quick")
  section, _, key = path.rpartition(".")
  c[section][key] = value
  with pytest.raises(ValueError, match=match):
    experiment.validate(c)
