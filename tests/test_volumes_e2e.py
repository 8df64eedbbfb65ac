"""Volumes end to end on generated data: the synthetic volume builder, `configs/volume_simclr.py` pretraining
then linear probe, and the kNN and fine-tuning protocols on volumes."""
import json
import textwrap

import ml_collections
import numpy as np
import pytest
from scipy import ndimage

from medssl_jax import dry_run
from medssl_jax import config as config_lib
from medssl_jax import experiment
from medssl_jax.config import load as load_config
from medssl_jax.data import masks
from medssl_jax.data import pipeline
from medssl_jax.synthetic import volumes as synthetic_volumes
from medssl_jax.protocols import encoders as protocol_encoders
from medssl_jax.protocols import probe as protocol_probe
from medssl_jax.tables import runner


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("tfds")
  pipeline.get_builder("synthetic_volumes", data_dir=str(d), config="tiny")
  return d


def _tiny(tfds_dir, **eval_overrides):
  """configs/volume_simclr.py:synthetic,quick on synthetic_volumes/tiny (16³), 4 steps of batch 8."""
  config = load_config("volume_simclr", "synthetic,quick")
  config.data.builder_config = "tiny"
  config.data.data_dir = str(tfds_dir)
  config.data.image_size = 16
  for view in config.augment.views:
    view.crop_size = 16
  config.model.width_multiplier = 0.0625
  config.train.batch_size = 8
  config.train.num_steps = 4
  config.train.log_every = 2
  config.train.checkpoint_every = 4
  config.eval.update(eval_overrides)
  return config


def _with_background(config):
  """Both views replace backgrounds (swap, noise) outside the volumes' body outline."""
  config.augment.views = [ml_collections.ConfigDict(dict(v.to_dict(), background_p=1.0, background=mode))
                          for v, mode in zip(config.augment.views, ("swap", "noise"))]
  config.augment.derived_mask = "body_outline"
  return config


def test_renders_are_deterministic_balanced_binary_shapes():
  a, label = synthetic_volumes.render_example(5, size=16, seed=3)
  b, _ = synthetic_volumes.render_example(5, size=16, seed=3)
  assert a.shape == (16, 16, 16) and a.dtype == np.uint8 and set(np.unique(a)) <= {0, 255}
  assert np.array_equal(a, b) and label == 1
  assert [synthetic_volumes.render_example(i, size=8)[1] for i in range(4)] == [0, 1, 0, 1]
  # The cavity: a cavity volume holds enclosed background; a solid one has none.
  holes = [int(ndimage.binary_fill_holes(v > 0).sum() - (v > 0).sum())
           for v, _ in (synthetic_volumes.render_example(i, size=28) for i in range(6))]
  assert all(h == 0 for h in holes[0::2]) and all(h > 0 for h in holes[1::2]), holes


def test_builder_splits_and_volume_records(tfds_dir):
  builder = pipeline.get_builder("synthetic_volumes", data_dir=str(tfds_dir), config="tiny")
  assert pipeline.is_volume(builder) and pipeline.image_channels(builder) == 1
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == {"train": 32, "validation": 16, "test": 16}
  arrays = pipeline.load_split_arrays(builder, split="test")
  images, labels = arrays["image"], arrays["label"]
  assert images.shape == (16, 16, 16, 16, 1) and list(labels[:4]) == [0, 1, 0, 1]
  first, _ = synthetic_volumes.render_example(48, size=16)  # Test records follow train and validation.
  assert np.array_equal(images[0, ..., 0], first)


def test_volume_simclr_pretrains_and_probes(tfds_dir, tmp_path):
  """The quick config end to end, its views replacing backgrounds outside the body outline (one compile for both)."""
  config = _with_background(_tiny(tfds_dir))
  results = experiment.run(config, str(tmp_path))
  r = results["simclr (pretrained)"]
  assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["auroc"] <= 1.0
  logs = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [l["step"] for l in logs] == [2, 4] and all(np.isfinite(l["train/loss"]) for l in logs)
  assert (tmp_path / "checkpoints" / "4").is_dir()
  assert "Linear probe on synthetic_volumes/tiny" in (tmp_path / "probe_results.md").read_text()


@pytest.mark.parametrize("protocol", ["knn", "finetune"])
def test_knn_and_finetune_protocols_on_volumes(tfds_dir, tmp_path, protocol):
  config = _tiny(tfds_dir, protocol=protocol, knn_k=5, finetune_steps=4, finetune_batch_size=8,
                 finetune_eval_every=2)
  builder = pipeline.open_dataset(config.data)
  model, variables = protocol_encoders.random_init_variables(config)
  results = protocol_probe.probe(config, {"random init": (model, variables, True)}, builder=builder,
                                 workdir=str(tmp_path))
  r = results["random init"]
  assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["auroc"] <= 1.0
  if protocol == "finetune":
    assert r["selected_step"] in (2, 4)
  else:
    assert r["k"] == 5


@pytest.fixture(scope="module")
def fundus_workdir(tmp_path_factory):
  """A 2D SimCLR workdir (2 steps of the quick demo's ResNet-18 at the 3D test's width, CIFAR stem, 32 px)."""
  d = tmp_path_factory.mktemp("tfds2d")
  pipeline.get_builder("synthetic_fundus", data_dir=str(d), config="tiny")
  config = load_config("demo_simclr", "quick")
  config.data.builder_config = "tiny"
  config.data.data_dir = str(d)
  config.data.image_size = 32
  for view in config.augment.views:
    view.crop_size = 32
  config.model.stem = "cifar"
  config.model.width_multiplier = 0.0625
  config.mode = "pretrain"
  config.train.batch_size = 8
  config.train.num_steps = 2
  config.train.checkpoint_every = 2
  workdir = tmp_path_factory.mktemp("fundus2d")
  experiment.run(config, str(workdir))
  return workdir


def test_inflate_and_probe_starts_3d_from_the_2d_encoder(tfds_dir, fundus_workdir, tmp_path):
  config = _tiny(tfds_dir)
  config.mode = "inflate_and_probe"
  config.model.inflate_from = str(fundus_workdir)
  name, (model, variables, recalibrate) = protocol_encoders.inflated(config)
  assert name == f"inflated i3d (simclr, 2D {fundus_workdir.name})" and recalibrate
  _, v2d = protocol_encoders.load_pretrained(protocol_encoders.saved_config(str(fundus_workdir)), str(fundus_workdir))
  k2d = np.asarray(v2d["params"]["backbone"]["stage1_block1"]["conv1"]["kernel"])
  k3d = np.asarray(variables["params"]["backbone"]["stage1_block1"]["conv1"]["kernel"])
  np.testing.assert_allclose(k3d, np.repeat(k2d[None] / 3, 3, axis=0), rtol=1e-6)  # I3D: repeated, divided by k.
  # The RGB stem is summed over its input channels for the 1-channel volumes.
  stem2d = np.asarray(v2d["params"]["backbone"]["stem_conv"]["kernel"])
  stem3d = np.asarray(variables["params"]["backbone"]["stem_conv"]["kernel"])
  np.testing.assert_allclose(stem3d, np.repeat(stem2d.sum(2, keepdims=True)[None] / 3, 3, axis=0), rtol=1e-5)
  results = experiment.run(config, str(tmp_path))
  assert set(results) == {name} and 0.0 <= results[name]["auroc"] <= 1.0


def test_3d_pretraining_starts_from_the_inflated_2d_encoder(tfds_dir, fundus_workdir, tmp_path):
  config = _tiny(tfds_dir)
  assert protocol_encoders.inflated_start(config, str(tmp_path)) is None  # No inflate_from: the random init.
  config.mode = "pretrain"
  config.model.inflate_from = str(fundus_workdir)
  config.train.num_steps = 1
  start = protocol_encoders.inflated_start(config, str(tmp_path / "run"))
  _, v2d = protocol_encoders.load_pretrained(protocol_encoders.saved_config(str(fundus_workdir)), str(fundus_workdir))
  k2d = np.asarray(v2d["params"]["backbone"]["stage2_block1"]["conv2"]["kernel"])
  np.testing.assert_allclose(np.asarray(start["params"]["backbone"]["stage2_block1"]["conv2"]["kernel"]),
                             np.repeat(k2d[None] / 3, 3, axis=0), rtol=1e-6)
  experiment.run(config, str(tmp_path / "run"))
  assert (tmp_path / "run" / "checkpoints" / "1").is_dir()
  config.mode = "supervised"
  config.eval.protocol = "finetune"
  with pytest.raises(ValueError, match="with mode 'supervised', which trains a random init: use mode "
                                       "'inflate_and_probe'"):
    experiment.validate(config)


def test_inflation_refusals_name_the_setting(tfds_dir, fundus_workdir, tmp_path):
  config = _tiny(tfds_dir)
  config.model.inflate_from = str(fundus_workdir)
  config.model.width_multiplier = 0.125
  with pytest.raises(ValueError, match=r"config.model.inflate_from=.*\(resnet18, stem 'cifar', width 0.0625\) does "
                                       r"not inflate into resnet18_3d \(stem 'cifar', width 0.125\)"):
    protocol_encoders.inflated(config)
  config.model.inflate_from = str(tmp_path)
  with pytest.raises(FileNotFoundError, match="config.json does not exist: expected a pretraining workdir"):
    protocol_encoders.inflated(config)
  config.mode = "inflate_and_probe"
  config.model.inflate_from = ""
  with pytest.raises(ValueError, match="config.mode='inflate_and_probe' needs config.model.inflate_from"):
    experiment.validate(config)
  config.model.inflate_method = "acs3"
  with pytest.raises(ValueError, match="config.model.inflate_method"):
    experiment.validate(config)
  vit = _tiny(tfds_dir)
  vit.model.encoder, vit.model.inflate_from = "vit_tiny_3d", str(fundus_workdir)
  with pytest.raises(ValueError, match="'vit_tiny_3d' is not a ResNet"):
    experiment.validate(vit)
  two_d = load_config("demo_simclr", "quick")
  two_d.model.inflate_from = str(fundus_workdir)
  with pytest.raises(ValueError, match="is 2D; use its 3D version"):
    experiment.validate(two_d)


def test_dry_run_stand_in_batch_has_the_volume_pipelines_shapes(tfds_dir):
  config = _tiny(tfds_dir)
  builder = pipeline.open_dataset(config.data)
  it = pipeline.make_train_iterator(builder, split="train", global_batch_size=4, seed=0,
                                    image_size=config.data.image_size)
  real = next(it)
  it.close()
  stand_in = dry_run._stand_in_batch(config, dry_run.dataset_info(config), 4)  # pylint: disable=protected-access
  assert {k: (v.shape, v.dtype) for k, v in stand_in.items()} == {k: (v.shape, v.dtype) for k, v in real.items()}
  assert real["image"].shape == (4, 16, 16, 16, 1)


def test_background_augmentation_on_volumes(tfds_dir):
  """Volume views that replace backgrounds: the config's checks and the batches' masks (the body outline, [B, D, H,
  W, 1], as the dry run's stand-in has them); test_volume_simclr_pretrains_and_probes trains with them."""
  config = _with_background(_tiny(tfds_dir))
  config.augment.derived_mask = ""
  with pytest.raises(ValueError, match=r"views\[0\].background_p=1.0 replaces backgrounds, which needs foreground "
                                       r"masks: set config.augment.mask_key"):
    experiment.validate(config)
  config.augment.derived_mask = "fundus_fov"
  with pytest.raises(ValueError, match="config.augment.derived_mask='fundus_fov' derives masks from 2D images, not "
                                       r"volumes; for volumes choose one of \['body_outline'\]"):
    experiment.validate(config)
  config.augment.derived_mask = "body_outline"
  experiment.validate(config)
  builder = pipeline.open_dataset(config.data)
  with pytest.raises(ValueError, match="'fundus_fov' derives masks from 2D images, but dataset .* holds volumes"):
    pipeline.make_train_iterator(builder, split="train", global_batch_size=4, seed=0,
                                 foreground=("derived", masks.Derived("fundus_fov")))
  it = pipeline.make_train_iterator(builder, split="train", global_batch_size=4, seed=0, image_size=16,
                                    foreground=config_lib.foreground_spec(config))
  real = next(it)
  it.close()
  assert real["foreground"].shape == (4, 16, 16, 16, 1)
  np.testing.assert_array_equal(real["foreground"][..., 0], masks.derive_all("body_outline", real["image"]))
  stand_in = dry_run._stand_in_batch(config, dry_run.dataset_info(config), 4)  # pylint: disable=protected-access
  assert {k: (v.shape, v.dtype) for k, v in stand_in.items()} == {k: (v.shape, v.dtype) for k, v in real.items()}


def _source_config_file(tmp_path, tfds_dir):
  """A 2D config file (the quick demo's SimCLR on synthetic_fundus/tiny, CIFAR stem, 32 px) to name as a source."""
  pipeline.get_builder("synthetic_fundus", data_dir=str(tfds_dir), config="tiny")
  path = tmp_path / "source_2d.py"
  path.write_text(textwrap.dedent("""
      from medssl_jax.config import load
      def get_config(arg=None):
        c = load("demo_simclr", "quick")
        c.data.builder_config = "tiny"
        c.data.image_size = 32
        for view in c.augment.views:
          view.crop_size = 32
        c.model.stem = "cifar"
        c.train.checkpoint_every = 1000
        return c
      """))
  return str(path)


def test_inflation_source_named_by_a_config_is_pretrained_first(tfds_dir, tmp_path):
  """main.py's path: model.inflate_from names a 2D config; its pretraining runs in <workdir>/inflate_source with
  the 3D config's seed, width, steps and batch, then the inflated encoder is probed."""
  config = _tiny(tfds_dir)
  config.mode = "inflate_and_probe"
  config.seed = 3
  config.model.inflate_from = _source_config_file(tmp_path, tfds_dir)
  source = protocol_encoders.inflate_source(config)
  assert (source.mode, source.seed, source.model.width_multiplier, source.train.num_steps, source.train.batch_size,
          source.data.data_dir, source.data.builder) == ("pretrain", 3, 0.0625, 4, 8, str(tfds_dir), "synthetic_fundus")
  results = experiment.run(config, str(tmp_path / "run"))
  saved = json.loads((tmp_path / "run" / "inflate_source" / "config.json").read_text())
  assert (saved["seed"], saved["model"]["width_multiplier"]) == (3, 0.0625)
  assert (tmp_path / "run" / "inflate_source" / "checkpoints" / "4").is_dir()
  (name,) = results
  assert name == "inflated i3d (simclr, 2D inflate_source)" and 0.0 <= results[name]["auroc"] <= 1.0
  config.model.inflate_from = "configs/volume_simclr.py:synthetic"
  with pytest.raises(ValueError, match=r"inflate_from='configs/volume_simclr.py:synthetic' pretrains resnet18_3d; "
                                       "inflation takes a 2D ResNet"):
    protocol_encoders.inflate_source(config)


def test_table_rows_share_the_inflation_source_pretraining(tfds_dir, tmp_path, capsys):
  """In a table, rows naming the same source config share one 2D pretraining (pretrain/inflate_source-<hash>), the
  rows' identity covers it, and the objective column says what was inflated."""
  t = ml_collections.ConfigDict()
  t.name = "inflated"
  t.base_config = "configs/volume_inflated.py:synthetic,quick"
  t.grid = ml_collections.ConfigDict({"eval": {"protocol": ("linear_probe", "knn")}})
  t.overrides = ml_collections.ConfigDict()
  t.overrides.data = dict(builder_config="tiny", data_dir=str(tfds_dir), image_size=16)
  t.overrides.model = dict(width_multiplier=0.0625, inflate_from=_source_config_file(tmp_path, tfds_dir))
  t.overrides.train = dict(batch_size=8, num_steps=4, checkpoint_every=4)
  t.overrides.eval = dict(knn_k=5, max_iter=20)
  out = runner.run_table(t, workdir=str(tmp_path / "t"))
  log = capsys.readouterr().out
  (source_dir,) = (tmp_path / "t" / "pretrain").iterdir()
  assert source_dir.name.startswith("inflate_source-") and (source_dir / "checkpoints" / "4").is_dir()
  assert log.count(f"2D pretraining inflated to 3D: pretrain/{source_dir.name}") == 2 and log.count("step 4/4") == 1
  assert [r["objective"] for r in out["rows"]] == ["inflated i3d (2D simclr)"] * 2
  assert all(r["pretrain_dir"] == f"pretrain/{source_dir.name}" and r["pretrain_wall_clock_s"] > 0 for r in out["rows"])
  # Another seed is another source pretraining, so other rows.
  other = runner.build_rows(runner.set_axes(t, ["seed=1"]))
  assert {r["source"]["slug"] for r in other} != {source_dir.name}
  assert not {r["slug"] for r in other} & {r["row"] for r in out["rows"]}
