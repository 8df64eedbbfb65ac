"""MedMNIST builder: dummy npz files we generate, the real RetinaMNIST/PneumoniaMNIST files when present."""
import os

import numpy as np
import pytest

from medssl_jax.data import pipeline
from medssl_jax.data import shared


def write_npz(path, *, size=28, channels=3, num_labels=5, multi=False, sizes=(12, 4, 6), seed=0):
  rng = np.random.default_rng(seed)
  arrays = {}
  for prefix, n in zip(("train", "val", "test"), sizes):
    shape = (n, size, size, 3) if channels == 3 else (n, size, size)
    arrays[f"{prefix}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
    arrays[f"{prefix}_labels"] = (rng.integers(0, 2, (n, num_labels)) if multi else
                                  (np.arange(n) % num_labels)[:, None]).astype(np.uint8)
  np.savez_compressed(path, **arrays)
  return arrays


def build(tmp_path, config, manual):
  return pipeline.get_builder("medmnist", config=config, data_dir=str(tmp_path / "tfds"), manual_dir=str(manual))


def test_dummy_rgb_round_trip(tmp_path):
  manual = tmp_path / "manual"
  manual.mkdir()
  arrays = write_npz(manual / "retinamnist_64.npz", size=64)
  b = build(tmp_path, "retinamnist_64", manual)
  assert {s: pipeline.num_examples(b, s) for s in ("train", "validation", "test")} == {
      "train": 12, "validation": 4, "test": 6}
  assert pipeline.class_names(b) == ["0", "1", "2", "3", "4"]
  test = pipeline.load_split_arrays(b, split="test")
  np.testing.assert_array_equal(test["image"], arrays["test_images"])  # Lossless PNG, official order.
  np.testing.assert_array_equal(test["label"], arrays["test_labels"][:, 0])
  np.testing.assert_array_equal(test["id"], np.arange(6))


def test_dummy_grayscale_and_multilabel(tmp_path):
  manual = tmp_path / "manual"
  manual.mkdir()
  arrays = write_npz(manual / "chestmnist.npz", channels=1, num_labels=14, multi=True)
  b = build(tmp_path, "chestmnist", manual)
  assert b.info.features["image"].shape == (28, 28, 1)
  source = b.as_data_source(split="validation")
  np.testing.assert_array_equal(source[2]["label"], arrays["val_labels"][2])
  np.testing.assert_array_equal(source[2]["image"][..., 0], arrays["val_images"][2])


def test_bad_inputs_name_the_file_and_leave_nothing(tmp_path):
  manual = tmp_path / "manual"
  manual.mkdir()
  with pytest.raises(FileNotFoundError, match=r"medmnist/breastmnist: the official files are not in .*manual .*MedMNIST"
                     r"\.MANUAL_DOWNLOAD_INSTRUCTIONS.*--config.data.manual_dir=<folder>"):
    build(tmp_path, "breastmnist", manual)  # TFDS's own check, in one line with where to read the instructions.
  write_npz(manual / "dermamnist.npz")
  with pytest.raises(FileNotFoundError, match=r"manual/breastmnist.npz \(config 'breastmnist'\)"):
    build(tmp_path, "breastmnist", manual)
  write_npz(manual / "breastmnist.npz", channels=3, num_labels=2)  # RGB where grayscale is expected.
  with pytest.raises(ValueError, match=r"breastmnist.npz: train_images is uint8\(12, 28, 28, 3\), expected"):
    build(tmp_path, "breastmnist", manual)
  write_npz(manual / "pneumoniamnist.npz", channels=1, num_labels=5)  # Labels 0..4 for a binary task.
  with pytest.raises(ValueError, match=r"pneumoniamnist.npz: train_labels has values outside \[0, 1\]"):
    build(tmp_path, "pneumoniamnist", manual)
  with pytest.raises(ValueError, match=r"'retinamnist_32'.*retinamnist_64"):
    build(tmp_path, "retinamnist_32", manual)
  # No half-written dataset is left behind for a later run to trust, nor the empty folders of failed builds
  # (TFDS's own downloads/ and .config/ stay).
  tfds_dir = tmp_path / "tfds" / "medmnist"
  assert not list(tfds_dir.rglob("dataset_info.json")) and not list(tfds_dir.rglob("*incomplete*"))
  assert not [p.name for p in tfds_dir.iterdir() if p.name != ".config"]


def test_missing_file_lists_what_is_there(tmp_path):
  manual = tmp_path / "manual"
  manual.mkdir()
  write_npz(manual / "dermamnist.npz")
  write_npz(manual / "organamnist.npz")
  with pytest.raises(FileNotFoundError, match=r"breastmnist.npz \(config 'breastmnist'\); npz files found there: "
                                              r"\['dermamnist.npz', 'organamnist.npz'\]\. Put breastmnist.npz there"):
    build(tmp_path, "breastmnist", manual)


def test_one_dimensional_labels_of_a_resaved_copy_build(tmp_path, capsys):
  """A re-saved npz with labels [N] (not the official [N, 1]) builds the same dataset, and says so."""
  manual = tmp_path / "manual"
  manual.mkdir()
  arrays = write_npz(manual / "bloodmnist.npz", num_labels=8)
  np.savez_compressed(manual / "bloodmnist.npz",
                      **{k: v[:, 0] if k.endswith("_labels") else v for k, v in arrays.items()})
  b = build(tmp_path, "bloodmnist", manual)
  np.testing.assert_array_equal(pipeline.load_split_arrays(b, split="train")["label"], arrays["train_labels"][:, 0])
  assert "holds train_labels as [N] (the official files: [N, 1]); read as one label per image" in capsys.readouterr().out


REAL = {
    # config: (shared folder, file, official split sizes, class counts per split)
    "retinamnist": ("retinamnist", "retinamnist.npz", (1080, 120, 400),
                    ([486, 128, 206, 194, 66], [54, 12, 28, 20, 6], [174, 46, 92, 68, 20])),
    "pneumoniamnist": ("pneumoniamnist", "pneumoniamnist_reconstructed.npz", (4708, 524, 624),
                       ([1214, 3494], [135, 389], [234, 390])),
}


@pytest.mark.parametrize("config", sorted(REAL))
def test_real_files(tmp_path, config):
  folder, file, sizes, counts = REAL[config]
  try:
    src = shared.dataset_dir(folder) / file
  except FileNotFoundError as e:
    pytest.skip(f"real data absent: {e}")
  manual = tmp_path / "manual"
  manual.mkdir()
  # A link under the official name: the shared file is read in place, never copied into the repo.
  os.symlink(src, manual / f"{config}.npz")
  b = build(tmp_path, config, manual)
  for split, n, c in zip(("train", "validation", "test"), sizes, counts):
    labels = pipeline.load_split_arrays(b, split=split)["label"]
    assert len(labels) == n
    assert np.bincount(labels, minlength=len(c)).tolist() == c


def test_grayscale_through_the_pipeline_and_a_train_step(tmp_path):
  """A 1-channel dataset stays 1-channel from the npz to the encoder; a channel mismatch is named."""
  import jax
  from medssl_jax.config import load
  from medssl_jax.train import mesh as mesh_lib, pretrain as pretrain_lib, state as state_lib, step as step_lib
  manual = tmp_path / "manual"
  manual.mkdir()
  arrays = write_npz(manual / "pneumoniamnist.npz", channels=1, num_labels=2, sizes=(16, 4, 4))
  b = build(tmp_path, "pneumoniamnist", manual)
  batch = next(pipeline.make_train_iterator(b, global_batch_size=16, seed=0))
  assert batch["image"].shape == (16, 28, 28, 1) and batch["label"].shape == (16,)
  np.testing.assert_array_equal(pipeline.load_split_arrays(b, split="test")["image"][..., 0], arrays["test_images"])

  config = load("demo_simclr", "quick")
  with pytest.raises(ValueError, match=r"config.data.channels=3 but medmnist/pneumoniamnist has 1-channel"):
    pipeline.check_channels(b, config.data.channels)
  config.data.channels, config.data.mean, config.data.std = 1, (0.5,), (0.5,)
  for v in config.augment.views:
    v.crop_size = 28
  model, objective, tx, schedule = pretrain_lib.build(config)
  mesh = mesh_lib.make_mesh()
  state = mesh_lib.replicate(state_lib.init_state(model, tx, key=jax.random.key(0), image_shape=(28, 28, 1)), mesh)
  step = step_lib.make_train_step(model, objective, tx, schedule, config, mesh)
  _, metrics = step(state, mesh_lib.shard_batch(batch, mesh), jax.random.key(1))
  assert np.isfinite(float(metrics["loss"]))


def test_one_renamed_copy_is_used_and_said(tmp_path, capsys):
  """A single renamed copy (e.g. the shared pneumoniamnist_reconstructed.npz) is read with a notice;
  another size's file never is, and two candidates are ambiguous (the official name is asked for)."""
  manual = tmp_path / "manual"
  manual.mkdir()
  arrays = write_npz(manual / "breastmnist_reconstructed.npz", channels=1, num_labels=2)
  write_npz(manual / "breastmnist_64.npz", size=64, channels=1, num_labels=2)
  b = build(tmp_path, "breastmnist", manual)
  assert "using breastmnist_reconstructed.npz (not the official file name)" in capsys.readouterr().out
  np.testing.assert_array_equal(pipeline.load_split_arrays(b, split="test")["image"][..., 0], arrays["test_images"])
  write_npz(manual / "breastmnist_other.npz", channels=1, num_labels=2)
  with pytest.raises(FileNotFoundError, match=r"official MedMNIST file .*manual/breastmnist.npz"):
    pipeline.get_builder("medmnist", config="breastmnist", data_dir=str(tmp_path / "tfds2"), manual_dir=str(manual))
