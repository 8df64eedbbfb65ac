"""Curricular pretraining (medssl_jax/projects/curriculum/modes.py) on synthetic_fundus/tiny: stages in order, each
starting from the previous one's final variables, resumable, and a final checkpoint the other modes load."""
import os
import shutil

import jax
import numpy as np
import pytest

from medssl_jax import config as config_lib
from medssl_jax import experiment
from medssl_jax.augment import views
from medssl_jax.data import pipeline
from medssl_jax.projects.curriculum import modes as curriculum
from medssl_jax.train import pretrain as pretrain_lib
from medssl_jax.protocols import encoders as protocol_encoders


def _config(data_dir):
  c = experiment.default_config()
  c.mode = "curriculum"
  c.data.builder_config = "tiny"
  c.data.data_dir = str(data_dir)
  c.data.image_size = 32
  c.model.stem = "cifar"
  c.model.width_multiplier = 0.125
  c.model.projector_hidden_dims = (16,)
  c.model.projector_dim = 8
  v = views.default_view(crop_size=32, blur_p=0.0)
  c.augment.views = [v, v]
  c.train.batch_size = 16
  c.train.optimizer = "adamw"
  c.train.base_learning_rate = 1e-2
  c.train.warmup_steps = 1
  c.train.num_steps = 6
  c.train.log_every = 3
  c.train.checkpoint_every = 3
  c.eval.compare_random_init = False
  c.eval.max_iter = 10
  c.eval.l2_grid = (1e-2,)
  c.eval.bootstrap_samples = 0
  weak = views.default_view(crop_size=32, crop_scale=(0.6, 1.0), jitter_p=0.0, blur_p=0.0)
  # Stage 2 at learning rate 0 (AdamW: a zero update): its final params must equal its init exactly, which
  # shows that it started from stage 1's final params and not from a random init.
  c.curriculum.stages = (
      {"name": "easy", "num_steps": 3, "overrides": {"augment.views": [weak, weak]}},
      {"name": "hard", "num_steps": 3, "overrides": {"train.base_learning_rate": 0.0,
                                                     "objective.temperature": 0.2}},
  )
  return c


def _params(variables):
  return jax.tree.map(np.asarray, variables["params"])


def _assert_equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """One curriculum run; records the init_variables each stage's pretrain got."""
  data_dir = tmp_path_factory.mktemp("tfds")
  builder = pipeline.get_builder("synthetic_fundus", config="tiny", data_dir=str(data_dir))
  config = _config(data_dir)
  workdir = str(tmp_path_factory.mktemp("curriculum"))
  inits = []
  real = pretrain_lib.pretrain

  def spy(cfg, wd, **kw):
    inits.append((os.path.basename(wd), kw.get("init_variables")))
    return real(cfg, wd, **kw)

  pretrain_lib.pretrain = spy
  try:
    results = curriculum.run_curriculum(config, workdir, builder=builder)
  finally:
    pretrain_lib.pretrain = real
  return dict(config=config, workdir=workdir, builder=builder, inits=inits, results=results, spy=spy)


def test_stages_run_in_order_and_chain(run):
  config, workdir = run["config"], run["workdir"]
  assert [n for n, _ in run["inits"]] == ["0_easy", "1_hard"]
  assert run["inits"][0][1] is None  # Stage 1: random init.
  c1, c2 = curriculum.stage_config(config, 0), curriculum.stage_config(config, 1)
  assert c1.train.num_steps == 3 and c1.augment.views[0].crop_scale == (0.6, 1.0) and c1.mode == "pretrain"
  assert c2.train.base_learning_rate == 0.0 and c2.objective.temperature == 0.2 and c2.augment.views[0].jitter_p == 0.8
  d1, d2 = (curriculum.stage_dir(workdir, i, n) for i, n in ((0, "easy"), (1, "hard")))
  assert sorted(os.listdir(os.path.join(d1, "checkpoints"))) == ["3"] and os.path.exists(os.path.join(d1, "config.json"))
  # Stage 2's init is stage 1's final checkpoint, params and batch_stats.
  _, stage1 = protocol_encoders.load_pretrained(c1, d1)
  init2 = run["inits"][1][1]
  _assert_equal(_params(init2), _params(stage1))
  _assert_equal(jax.tree.map(np.asarray, init2["batch_stats"]), jax.tree.map(np.asarray, stage1["batch_stats"]))
  # ... and it really trained from there (lr 0: params unchanged), not from a random init.
  _, stage2 = protocol_encoders.load_pretrained(c2, d2)
  _assert_equal(_params(stage2), _params(stage1))
  _, rand = protocol_encoders.random_init_variables(c1)
  assert not np.array_equal(np.asarray(jax.tree.leaves(rand["params"])[0]), np.asarray(jax.tree.leaves(stage1["params"])[0]))


def test_final_checkpoint_and_probe(run):
  config, workdir = run["config"], run["workdir"]
  model, final = protocol_encoders.load_pretrained(config, workdir)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["6"]
  _, stage2 = protocol_encoders.load_pretrained(curriculum.stage_config(config, 1), curriculum.stage_dir(workdir, 1, "hard"))
  _assert_equal(_params(final), _params(stage2))
  r = run["results"]["simclr (curriculum)"]
  assert 0.0 <= r["accuracy"] <= 1.0 and os.path.exists(os.path.join(workdir, "probe_results.json"))


def test_rerun_skips_finished_stages(run, capsys):
  config, workdir, builder = run["config"], run["workdir"], run["builder"]
  capsys.readouterr()
  curriculum.run_curriculum(config.copy_and_resolve_references(), workdir, builder=builder)
  out = capsys.readouterr().out
  assert "all 2 stages done" in out and "step 1/" not in out
  # Without the final checkpoint and stage 2, stage 1 is loaded (not retrained) and stage 2 reruns from it.
  _, before = protocol_encoders.load_pretrained(config, workdir)
  shutil.rmtree(os.path.join(workdir, "checkpoints"))
  shutil.rmtree(os.path.join(curriculum.stage_dir(workdir, 1, "hard"), "checkpoints"))
  cfg = config.copy_and_resolve_references()
  cfg.mode = "pretrain"  # Stages only, no probe.
  assert curriculum.run_curriculum(cfg, workdir, builder=builder) == {}
  out = capsys.readouterr().out
  assert "'easy' (3 steps" in out and "done, loading" in out and "step 3/3" in out
  assert out.count("step 3/3") == 1  # Only stage 2 trained.
  _, after = protocol_encoders.load_pretrained(config, workdir)
  _assert_equal(_params(after), _params(before))


def test_changed_curriculum_is_refused(run):
  config = run["config"].copy_and_resolve_references()
  stages = list(config.curriculum.stages)
  stages[0] = dict(stages[0], overrides={"objective.temperature": 0.5})
  config.curriculum.stages = tuple(stages)
  with pytest.raises(ValueError, match=r"different config.*objective.temperature"):
    curriculum.run_curriculum(config, run["workdir"], builder=run["builder"])


@pytest.mark.parametrize("key,value,match", [
    ("model.width_multiplier", 0.25, r"'model.width_multiplier' may not change between stages; allowed: .*augment"),
    ("data.image_size", 28, r"'data.image_size' may not change"),
    ("train.num_steps", 5, r"'train.num_steps' may not change"),
    ("objective.temprature", 0.5, r"unknown config key 'objective.temprature'"),
    ("objective.name", "nope", r"stages\[0\] \('a'\).*objective.name='nope' is not known"),
])
def test_bad_overrides(tmp_path, key, value, match):
  c = _config(tmp_path)
  c.curriculum.stages = ({"name": "a", "num_steps": 2, "overrides": {key: value}},)
  with pytest.raises(ValueError, match=match):
    experiment.validate(c)


def test_bad_stages(tmp_path):
  c = _config(tmp_path)
  c.curriculum.stages = ()
  with pytest.raises(ValueError, match=r"mode='curriculum' needs config.curriculum.stages"):
    experiment.validate(c)
  c.curriculum.stages = ({"name": "a", "num_steps": 0},)
  with pytest.raises(ValueError, match=r"stages\[0\].num_steps must be a positive integer"):
    experiment.validate(c)
  c.curriculum.stages = ({"name": "a", "num_steps": 1}, {"name": "a", "num_steps": 1})
  with pytest.raises(ValueError, match=r"names must be distinct"):
    experiment.validate(c)


def test_architecture_change_is_refused(tmp_path):
  c = _config(tmp_path)
  c.curriculum.stages = ({"name": "a", "num_steps": 2, "overrides": {"objective.name": "byol"}},)
  experiment.validate(c)  # Valid on its own: BYOL exists; its predictor head is what cannot carry over.
  with pytest.raises(ValueError, match=r"stages\[0\] \('a'\) changes the model architecture.*predictor"):
    curriculum.run_curriculum(c, str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w")  # Refused before any work.


def test_with_variables_checks_shapes(tmp_path):
  c = _config(tmp_path)
  model, _, tx, _ = pretrain_lib.build(c)
  state = pretrain_lib.init_train_state(c, model, tx, jax.random.key(0))
  bad = jax.tree.map(lambda x: x, state.variables)
  bad["params"] = dict(bad["params"], projector=jax.tree.map(lambda x: np.zeros((*x.shape[:-1], 3)),
                                                             bad["params"]["projector"]))
  with pytest.raises(ValueError, match=r"init_variables do not fit this model: params\['projector'\]"):
    pretrain_lib.with_variables(state, bad, tx)


def test_pneumonia_config_validates():
  for arg in (None, "cpu", "quick"):
    c = experiment.validate(config_lib.load("pneumonia_curricular", arg))
    stages = c.curriculum.stages
    assert [s["name"] for s in stages] == ["weak", "medium", "strong"]
    scales = [curriculum.stage_config(c, i).augment.views[0].crop_scale[0] for i in range(3)]
    assert scales == sorted(scales, reverse=True) and scales[0] == 0.6 and scales[-1] == 0.2
    blur = [curriculum.stage_config(c, i).augment.views[0].blur_p for i in range(3)]
    assert blur[0] == 0.0 and blur[-1] > 0.0
  full = config_lib.load("pneumonia_curricular")
  baseline = config_lib.load("medmnist_simclr", "pneumoniamnist")
  assert sum(s["num_steps"] for s in full.curriculum.stages) == baseline.train.num_steps
