"""Configs: every file in configs/ builds and validates; typos and unknown names fail clearly."""
import os
import pathlib
import subprocess
import sys

import pytest

from medssl_jax import config as config_lib
from medssl_jax.protocols import probe as protocol_probe
from medssl_jax import experiment

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.stem for p in (ROOT / "configs").glob("*.py") if not p.stem.startswith("_"))


load = config_lib.load


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("arg", [None, "quick"])
def test_configs_validate(name, arg):
  c = load(name, arg)
  experiment.validate(c)
  doc = (ROOT / "configs" / f"{name}.py").read_text().split('"""')[1]
  assert "Command:" in doc and "Reproduces:" in doc, f"configs/{name}.py docstring must state what it reproduces and how"


def test_unknown_variant():
  with pytest.raises(ValueError, match="'quik'.*valid variants: \\['quick'\\]"):
    load("demo_simclr", "quik")


@pytest.mark.parametrize("path,value,match", [
    ("model.encoder", "resnet19", "config.model.encoder='resnet19' is not known; valid choices: \\['resnet18', 'resnet50', 'resnet18_3d', 'resnet50_3d', 'vit_tiny'"),
    ("objective.name", "simclear", "config.objective.name='simclear' is not known; valid choices: .*'simclr'.*'supcon'"),
    ("eval.protocol", "knnn", "config.eval.protocol='knnn' is not known; valid choices: \\['linear_probe', 'knn', 'finetune', 'fewshot'\\]"),
    ("data.builder", "fundus", "config.data.builder='fundus'.*synthetic_fundus"),
    ("mode", "train", "config.mode='train'"),
    ("train.batch_size", 0, "config.train.batch_size must be a positive integer"),
    ("model.vit_input_dims", (2, 3), r"config.model.vit_input_dims=\(2, 3\) applies to ViT encoders only"),
])
def test_bad_values(path, value, match):
  c = load("demo_simclr", "quick")
  section, _, key = path.rpartition(".")
  target = c[section] if section else c
  target[key] = value
  with pytest.raises(ValueError, match=match):
    experiment.validate(c)


def test_unknown_key_lists_valid_keys():
  c = load("demo_simclr", "quick")
  with c.unlocked():
    c.train.num_step = 3
  with pytest.raises(ValueError, match=r"Unknown config key config.train.num_step \(did you mean config.train.num_steps\?\); valid keys of config.train: .*'num_steps'"):
    experiment.validate(c)
  c = load("demo_simclr", "quick")
  c.augment.views[0].crop_scal = (0.1, 1.0)
  with pytest.raises(ValueError, match=r"views\[0\].*crop_scal"):
    experiment.validate(c)


def test_main_rejects_a_typo_on_the_command_line(tmp_path):
  out = subprocess.run([sys.executable, str(ROOT / "main.py"), "--config=configs/demo_simclr.py:quick",
                        f"--workdir={tmp_path}", "--config.train.num_step=3"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
  assert out.returncode != 0
  assert "num_step" in out.stderr
  assert not any(tmp_path.iterdir())  # Nothing written for a bad command.


def test_results_names_never_collide():
  c = load("demo_simclr", "quick")
  names = set()
  for protocol in ("linear_probe", "knn", "finetune"):
    for subset, seed in (("", 0), ("10%", 0), ("10%", 1), ("k=5", 0)):
      c.eval.protocol, c.eval.train_subset, c.eval.subset_seed = protocol, subset, seed
      names.add(protocol_probe.results_name(c))
  assert len(names) == 12 and "probe_results" in names and "probe_results_finetune_10pct_seed1" in names
  c.eval.subset_file = "/runs/a/subsets/medmnist-retinamnist_train_1pct_seed2.json"
  assert protocol_probe.results_name(c) == "probe_results_finetune_medmnist-retinamnist_train_1pct_seed2"


def test_crop_size_follows_an_overridden_image_size():
  """Views whose crop size was the config's image size follow an overridden image size; a crop size chosen apart
  from it (multi-crop local views) and views overridden themselves stay."""
  c = load("configs/demo_simclr.py", "quick")
  assert {v.crop_size for v in c.augment.views} == {c.data.image_size}
  loaded = c.data.image_size
  unchanged = c.to_json_best_effort()
  assert config_lib.follow_image_size(c, loaded) == [] and c.to_json_best_effort() == unchanged
  c.data.image_size = 2 * loaded
  assert config_lib.follow_image_size(c, loaded) == [0, 1]
  assert [v.crop_size for v in c.augment.views] == [2 * loaded] * 2
  experiment.validate(c)

  d = load("configs/fundus_dino.py", "quick")
  sizes = [v.crop_size for v in d.augment.views]
  d.data.image_size = 2 * sizes[0]
  config_lib.follow_image_size(d, sizes[0])
  assert [v.crop_size for v in d.augment.views] == [2 * sizes[0]] * 2 + sizes[2:]  # Local views keep their size.

  e = load("configs/demo_simclr.py", "quick")
  e.data.image_size = 2 * loaded
  assert config_lib.follow_image_size(e, loaded, ["data.image_size", "augment.views[0].crop_size"]) == []


def test_command_line_image_size_moves_the_crop_size(tmp_path):
  code = ("import sys; from medssl_jax import cli; cli.parse_flags(sys.argv); "
          "print('CROPS', [v.crop_size for v in cli.final_config().augment.views])")
  args = ["--config=demo_simclr:quick", f"--workdir={tmp_path}"]
  for extra, crops in [(["--config.data.image_size=48"], [48, 48]),
                       (["--config.data.image_size=48", "--config.augment.views[1].crop_size=40"], [64, 40])]:
    out = subprocess.run([sys.executable, "-c", code, *args, *extra], cwd=tmp_path, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("CROPS ")[1].strip() == str(crops)


def test_only_clip_learns_its_temperature():
  """ConVIRT's paper fixes t = 0.1; CLIP learns it (its logit scale)."""
  learns = {arm: load(f"configs/cxr_{arm}.py", "cpu").objective.image_text.learn_temperature
            for arm in ("clip", "convirt", "joint")}
  assert learns == {"clip": True, "convirt": False, "joint": False}
