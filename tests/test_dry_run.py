"""The dry run (medssl_jax/dry_run.py): every paper-scale config's steps compile and run at their real encoder, image
size and views on stand-in data, at a per-device batch of 2 (the real batches' memory is in docs/dry_run.md); that
check is a long one (MEDSSL_SLOW_TESTS=1), the default suite lists the steps without compiling them."""
import math
import subprocess
import sys

import pytest

from medssl_jax import config as config_lib
from medssl_jax import dry_run
from medssl_jax import experiment
from medssl_jax.data import pipeline

# The configs whose real run needs an accelerator: full-width encoders at their papers' image sizes and batches,
# and the tables built on them (their default variants).
PAPER_SCALE = ("cxr_clip", "cxr_convirt", "cxr_joint", "cxr_simclr", "fundus_swcl", "medmnist_byol", "medmnist_relic",
               "medmnist_simclr", "pool_selection",
               "medmnist_supervised", "volume_supervised")
PAPER_SCALE_TABLES = ("table_medmnist_ssl", "table_medmnist_supervised", "table_ood_cxr", "table_chase_db1_swcl")


def test_paper_scale_list_is_complete():
  """A new shipped config with a full-width ResNet must join PAPER_SCALE (and so this file's dry run)."""
  full = [n for n in config_lib.shipped_configs() if not n.startswith(("table_", "_"))
          and config_lib.load(n).model.encoder.startswith("resnet") and config_lib.load(n).model.width_multiplier >= 1]
  assert sorted(full) == sorted(PAPER_SCALE)


def test_stand_in_batch_has_the_pipelines_shapes(fundus_small_dir):
  config = config_lib.load("demo_simclr:quick")
  builder = pipeline.get_builder("synthetic_fundus", data_dir=str(fundus_small_dir), config="small")
  it = pipeline.make_train_iterator(builder, split="train", global_batch_size=4, seed=0,
                                    image_size=config.data.image_size)
  real = next(it)
  it.close()
  info = dry_run.dataset_info(config)
  assert (info["num_classes"], info["multi_label"]) == (pipeline.num_classes(builder), False)
  stand_in = dry_run._stand_in_batch(config, info, 4)  # pylint: disable=protected-access
  assert {k: (v.shape, v.dtype) for k, v in stand_in.items()} == {k: (v.shape, v.dtype) for k, v in real.items()}


@pytest.fixture(scope="module")
def paper_scale_results():
  configs = {name: config_lib.load(name) for name in PAPER_SCALE}
  for table in PAPER_SCALE_TABLES:
    configs.update(dry_run.table_configs(table))
  return configs, dry_run.dry_run(configs, per_device_batch=2, steps=1)


def test_every_paper_scale_config_lists_its_steps():
  """Without compiling (the default suite's check; the compile-and-step check below is a long one): each config and
  table row loads and names its steps, pretraining configs a pretraining step among them."""
  configs = {name: config_lib.load(name) for name in PAPER_SCALE}
  for table in PAPER_SCALE_TABLES:
    configs.update(dry_run.table_configs(table))
  for label, config in configs.items():
    parts = dry_run.parts_of(config)
    assert parts and len({p.key for p in parts}) == len(parts), label
    assert ("pretrain" in [p.name for p in parts]) == (config.mode in experiment.PRETRAINING_MODES), label


@pytest.mark.slow
def test_every_paper_scale_config_compiles_and_steps(paper_scale_results):
  configs, results = paper_scale_results
  by = {(r["config"], r["part"]): r for r in results}
  # Each config's steps were measured (under its own name or, when the program is the same, another's).
  for label, config in configs.items():
    for part in dry_run.parts_of(config):
      assert any(r["part"] == part.name for r in results), (label, part.name)
  for r in results:
    assert r["per_device_batch"] == 2 and r["steps"] == 1
    assert math.isfinite(r["step_s"]) and r["step_s"] > 0 and r["compile_s"] > 0
    mem = r["memory"]
    assert mem["total"] == mem["arguments"] + mem["outputs"] - mem["aliased"] + mem["temporaries"] > 0
  # The real encoders: ResNet-50 (23.5M backbone parameters) for the CXR arms, ResNet-18 (11.2M) elsewhere.
  clip = by[("cxr_clip", "pretrain")]
  assert 23.5e6 < clip["params"] < 40e6 and "224px" in clip["what"]
  assert 11.1e6 < by[("fundus_swcl", "pretrain")]["params"] < 12e6
  assert {("cxr_joint", "pretrain"), ("fundus_swcl", "features"), ("medmnist_supervised", "finetune"),
          ("fundus_swcl", "pseudo-labeller"), ("fundus_swcl", "segmentation")} <= set(by)
  # The steps a project adds: SWCL's stage-1 classifier (backbone + head) and the U-Net on the backbone.
  assert by[("fundus_swcl", "pseudo-labeller")]["params"] > 11.1e6
  assert by[("fundus_swcl", "segmentation")]["params"] > by[("fundus_swcl", "pseudo-labeller")]["params"]
  assert "3x224px" in by[("cxr_joint", "pretrain")]["what"]
  # Pretraining carries the optimizer state: its arguments exceed the frozen feature pass's parameters alone.
  assert clip["memory"]["arguments"] > 2 * by[("cxr_clip", "features")]["memory"]["arguments"]


def test_a_segmentation_run_compiles_its_u_net_and_no_probe():
  config = config_lib.load("fundus_swcl")
  config.mode = "segmentation"
  assert [p.name for p in dry_run.parts_of(config)] == ["segmentation"]


def test_memory_per_device_follows_the_device_count():
  """--devices splits the global batch: 64 devices give the per-device batch 2, 16 give 8, which needs more memory."""
  (part,) = dry_run.parts_of(config_lib.load("medmnist_supervised"))
  small, large = (dry_run.measure(part, devices=d, steps=0) for d in (64, 16))
  assert (small["per_device_batch"], large["per_device_batch"]) == (2, 8)
  assert small["step_s"] is None and large["memory"]["temporaries"] > small["memory"]["temporaries"]
  assert large["memory"]["arguments"] - small["memory"]["arguments"] == (8 - 2) * 28 * 28 * 3 + (8 - 2) * 4
  with pytest.raises(ValueError, match="not divisible by --devices=3"):
    dry_run.measure(part, devices=3, steps=0)


def test_command_line_errors_are_one_line():
  out = subprocess.run([sys.executable, "-m", "medssl_jax.dry_run"], capture_output=True, text=True, check=False)
  assert out.returncode == 2 and out.stderr.strip().splitlines() == [
      "FATAL: give one of --config=<experiment config> or --table=<table config>"]
