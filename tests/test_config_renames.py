"""Renamed config keys (medssl_jax.config.RENAMED): every old key fails naming its new one, wherever it is set;
the new keys keep the old defaults; workdirs and table rows written with the old keys still resume / stay cached."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

from medssl_jax import config as config_lib
from medssl_jax import experiment
from medssl_jax.projects.curriculum import modes as curriculum
from medssl_jax.tables import runner
from medssl_jax.train import checkpoint as ckpt_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]

# {old key: (new key or keys, the old key's default)}, written out here rather than read from the code.
OLD = {
    "objective.queue_size": ("objective.moco_v2.queue_size", 4096),
    "objective.barlow_lambda": ("objective.barlow_twins.off_diagonal_weight", 0.0051),
    "objective.vicreg_sim": ("objective.vicreg.sim_weight", 25.0),
    "objective.vicreg_std": ("objective.vicreg.std_weight", 25.0),
    "objective.vicreg_cov": ("objective.vicreg.cov_weight", 1.0),
    "objective.num_prototypes": (("objective.swav.num_prototypes", "objective.dino.out_dim"), 256),
    "objective.sinkhorn_iters": ("objective.swav.sinkhorn_iters", 3),
    "objective.sinkhorn_epsilon": ("objective.swav.sinkhorn_epsilon", 0.05),
    "objective.teacher_temperature": ("objective.dino.teacher_temperature", 0.04),
    "objective.teacher_temperature_start": ("objective.dino.teacher_temperature_start", 0.04),
    "objective.teacher_temperature_warmup_steps": ("objective.dino.teacher_temperature_warmup_steps", 0),
    "objective.center_momentum": ("objective.dino.center_momentum", 0.9),
    "objective.mask_ratio": ("objective.mae.mask_ratio", 0.75),
    "objective.norm_pix_loss": ("objective.mae.norm_pix_loss", True),
    "objective.swcl_scheme": ("objective.swcl.scheme", ("patient", "position", "abnormality")),
    "swcl.abnormality_threshold": ("objective.swcl.abnormality_threshold", 0.5),
    "swcl.pseudo_label_threshold": ("objective.swcl.pseudo_label_threshold", 0.5),
    "objective.image_text_temperature": ("objective.image_text.temperature", 0.1),
    "objective.learn_temperature": ("objective.image_text.learn_temperature", True),
    "objective.image_to_text_weight": ("objective.image_text.image_to_text_weight", 0.75),
    "objective.image_ssl_weight": ("objective.image_text.image_ssl_weight", 1.0),
}
SUBSECTIONS = ("moco_v2", "barlow_twins", "vicreg", "relic", "swav", "dino", "mae", "swcl", "image_text")


def _news(old):
  new = OLD[old][0]
  return (new,) if isinstance(new, str) else new


def _message(old):
  return f"config.{old} was renamed: set " + " or ".join(f"config.{k}" for k in _news(old))


def _get(node, dotted):
  for part in dotted.split("."):
    node = node[part]
  return node


def _set(node, dotted, value):
  *path, leaf = dotted.split(".")
  for part in path:
    node = node[part]
  node[leaf] = value


def test_the_renames_table_is_this_one():
  assert {k: config_lib.RENAMED[k] for k in OLD} == {k: v for k, (v, _) in OLD.items()}
  assert set(config_lib.RENAMED) == set(OLD)


@pytest.mark.parametrize("old", sorted(OLD))
def test_new_keys_keep_the_old_defaults(old):
  defaults = experiment.default_config()
  for new in _news(old):
    value = _get(defaults, new)
    assert (tuple(value) if isinstance(value, (tuple, list)) else value) == OLD[old][1], new
  *path, leaf = old.split(".")
  assert leaf not in _get(defaults, ".".join(path))


def test_shared_objective_keys_stay_flat():
  o = experiment.default_config().objective
  assert {k for k in o.keys() if k not in SUBSECTIONS} == {"name", "temperature", "momentum", "momentum_final",
                                                            "num_global_views"}
  assert "abnormality_threshold" not in experiment.default_config().swcl  # One source of truth: the objective's.


@pytest.mark.parametrize("old", sorted(OLD))
def test_an_old_key_in_a_config_names_the_new_key(old):
  c = config_lib.load("demo_simclr", "quick")
  with c.unlocked():
    _set(c, old, OLD[old][1])
  with pytest.raises(ValueError) as e:
    experiment.validate(c)
  assert str(e.value) == _message(old)


def test_renamed_overrides_on_a_command_line():
  argv = ["--config=configs/demo_simclr.py:quick", "--config.objective.vicreg_sim=1", "--config.train.num_steps=3",
          "--config.swcl.abnormality_threshold", "0.4", "--noconfig.objective.norm_pix_loss"]
  assert config_lib.renamed_in_args(argv) == [_message("objective.vicreg_sim"),
                                              _message("swcl.abnormality_threshold"),
                                              _message("objective.norm_pix_loss")]
  assert config_lib.renamed_in_args(["--table.objective.queue_size=8"], flag="table") == [
      "config.objective.queue_size was renamed: set config.objective.moco_v2.queue_size"]
  assert config_lib.renamed_in_args(["--config.objective.moco_v2.queue_size=8", "objective.queue_size"]) == []


def _run(args, tmp_path):
  out = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=180,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
  fatal = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("FATAL")]
  assert out.returncode != 0 and len(fatal) == 1, out.stderr[-3000:]
  assert "Traceback" not in out.stderr, out.stderr[-3000:]
  assert not (tmp_path / "wd").exists()  # Refused before anything was written.
  return fatal[0]


def test_main_names_the_new_key_of_an_old_override(tmp_path):
  line = _run(["main.py", "--config=configs/demo_simclr.py:quick", f"--workdir={tmp_path / 'wd'}",
               "--config.objective.vicreg_sim=1"], tmp_path)
  assert line == ("FATAL: could not apply the config override(s) ['--config.objective.vicreg_sim=1']: "
                  "config.objective.vicreg_sim was renamed: set config.objective.vicreg.sim_weight")


def test_main_names_the_new_key_of_every_old_override(tmp_path):
  line = _run(["main.py", "--config=configs/demo_simclr.py:quick", f"--workdir={tmp_path / 'wd'}",
               *(f"--config.{old}=1" for old in OLD)], tmp_path)
  assert line.startswith("FATAL: could not apply the config override(s)")
  for old in OLD:
    assert _message(old) in line


def test_main_names_the_new_key_of_an_old_key_in_a_config_file(tmp_path):
  path = tmp_path / "old_keys.py"
  path.write_text("from configs import fundus_swcl\n\n\ndef get_config(arg=None):\n"
                  "  c = fundus_swcl.get_config('quick')\n  c.swcl.abnormality_threshold = 0.4\n  return c\n")
  line = _run(["main.py", f"--config={path}", f"--workdir={tmp_path / 'wd'}"], tmp_path)
  assert line == ("FATAL: config.swcl.abnormality_threshold was renamed: set "
                  "config.objective.swcl.abnormality_threshold")


def test_table_runner_names_the_new_key_of_an_old_override(tmp_path):
  line = _run(["-m", "medssl_jax.tables.runner", "--table=configs/table_fundus_quick.py",
               f"--workdir={tmp_path / 'wd'}", "--table.objective.queue_size=32"], tmp_path)
  assert line == ("FATAL: could not apply the table override(s): config.objective.queue_size was renamed: set "
                  "config.objective.moco_v2.queue_size")


def test_an_unknown_override_key_is_named_with_its_section_and_the_closest_key(tmp_path):
  problem = config_lib.override_problem
  assert problem(["--config.eval.finetune_test_curve=1", "--config.seed=1"]) is None
  assert problem(["--config.eval.knn_kk=5"]).startswith(
      "--config.eval.knn_kk: config.eval has no key 'knn_kk' (did you mean --config.eval.knn_k?); valid keys: [")
  assert problem(["--config.seed.x=1"]) == "--config.seed.x: config.seed is a value, not a section"
  line = _run(["-m", "medssl_jax.tables.runner", "--table=configs/table_fundus_quick.py",
               f"--workdir={tmp_path / 'wd'}", "--table.overrides.eval.knn_k=5"], tmp_path)
  assert line.startswith("FATAL: could not apply the table override(s): --table.overrides.eval.knn_k: the config "
                         "has no key 'overrides'") and "--table.<key> sets that experiment key in every row" in line


@pytest.mark.parametrize("section", ["grid", "overrides"])
def test_an_old_key_in_a_table_names_the_new_key(section):
  table = runner.load_table("configs/table_fundus_quick.py")
  with table.unlocked():
    table[section] = table.get(section) or {}
    table[section]["objective"] = {"vicreg_std": (12.5,) if section == "grid" else 12.5}
  with pytest.raises(ValueError) as e:
    runner.validate_table(table)
  assert str(e.value) == (f"table.{section}: config.objective.vicreg_std was renamed: set "
                          "config.objective.vicreg.std_weight")


def test_table_hashes_count_renamed_keys_under_their_old_names():
  """A row's hash covers its non-default values under the names earlier rows were hashed with, so a finished
  table whose rows set a renamed key is still found."""
  c = experiment.default_config()
  c.objective.name = "dino"
  c.objective.dino.out_dim = 64
  c.objective.moco_v2.queue_size = 1024
  c.objective.swcl.abnormality_threshold = 0.4
  assert runner._flat_config(c, ()) == {"objective.name": "dino", "objective.num_prototypes": 64,
                                        "objective.queue_size": 1024, "swcl.abnormality_threshold": 0.4}
  c.objective.swav.num_prototypes = 32  # Both split keys set: the old name holds one (the first by name) only.
  flat = runner._flat_config(c, ())
  assert flat["objective.num_prototypes"] == 64 and flat["objective.swav.num_prototypes"] == 32


@pytest.mark.parametrize("key", ["objective.vicreg_sim", "swcl.abnormality_threshold"])
def test_an_old_key_in_a_curriculum_stage_names_the_new_key(key):
  c = experiment.default_config()
  c.mode = "curriculum"
  c.curriculum.stages = ({"name": "a", "num_steps": 2, "overrides": {key: 0.4}},)
  with pytest.raises(ValueError) as e:
    curriculum.check_stages(c)
  assert str(e.value) == f"config.curriculum.stages[0].overrides: {_message(key)}"


def _old_layout(config) -> dict:
  """config.json as the code before the renames wrote it for `config`: the old flat keys, no sub-sections."""
  d = ckpt_lib.config_dict(config)
  name = d["objective"]["name"]
  for old in OLD:
    news = _news(old)
    _set(d, old, _get(d, next((k for k in news if k.startswith(f"objective.{name}.")), news[0])))
  for sub in SUBSECTIONS:
    del d["objective"][sub]
  return d


@pytest.mark.parametrize("name,arg,key,value", [
    ("demo_simclr", "quick", "objective.vicreg.sim_weight", 2.0),
    ("fundus_dino", "quick", "objective.dino.out_dim", 128),
    ("fundus_swav", "quick", "objective.swav.num_prototypes", 64),
    ("fundus_moco_v2", "quick", "objective.moco_v2.queue_size", 64),
    ("fundus_mae", "quick", "objective.mae.mask_ratio", 0.5),
    ("fundus_swcl", None, "objective.swcl.abnormality_threshold", 0.5),
    ("cxr_joint", "quick", "objective.image_text.image_ssl_weight", 0.5),
])
def test_a_workdir_written_with_the_old_keys_resumes(tmp_path, name, arg, key, value):
  config = config_lib.load(name, arg)
  old = _old_layout(config)
  assert "queue_size" in old["objective"] and "moco_v2" not in old["objective"]
  (tmp_path / ckpt_lib.CONFIG_FILE).write_text(json.dumps(old, indent=2, sort_keys=True))
  ckpt_lib.save_or_check_config(config, str(tmp_path))  # The same run: resumes.
  changed = config_lib.load(name, arg)
  saved = _get(changed, key)
  _set(changed, key, value)
  with pytest.raises(ValueError, match=rf"different config \({key}: saved={saved!r} now={value!r}\)"):
    ckpt_lib.save_or_check_config(changed, str(tmp_path))
  assert json.loads((tmp_path / ckpt_lib.CONFIG_FILE).read_text()) == old  # Never rewritten.


def test_migrate_moves_a_split_key_to_the_saved_objective():
  saved = {"objective": {"name": "dino", "num_prototypes": 64, "vicreg_sim": 2.0},
           "swcl": {"pseudo_label_threshold": 0.3}}
  assert config_lib.migrate(saved) == {"objective": {"name": "dino", "dino": {"out_dim": 64},
                                                     "vicreg": {"sim_weight": 2.0},
                                                     "swcl": {"pseudo_label_threshold": 0.3}}, "swcl": {}}
  swav = config_lib.migrate({"objective": {"name": "swav", "num_prototypes": 32}})
  assert swav == {"objective": {"name": "swav", "swav": {"num_prototypes": 32}}}
  other = config_lib.migrate({"objective": {"name": "simclr", "num_prototypes": 32}})
  assert other == {"objective": {"name": "simclr", "swav": {"num_prototypes": 32}, "dino": {"out_dim": 32}}}
  assert saved["objective"]["num_prototypes"] == 64  # The input is left as it was.


@pytest.mark.parametrize("key", ["abnormality_threshold", "pseudo_label_threshold"])
def test_swcl_thresholds_are_checked_where_they_live(key):
  c = config_lib.load("fundus_swcl", "quick")
  c.objective.swcl[key] = 1.5
  with pytest.raises(ValueError, match=rf"config.objective.swcl.{key} must lie in \[0, 1\], got 1.5"):
    experiment.validate(c)
