"""MedMNIST 3D builder: dummy npz volumes we generate, the real AdrenalMNIST3D/VesselMNIST3D files when present,
and volumes through the pipeline (load_split_arrays, the grain training iterator)."""
import re

import numpy as np
import pytest

from medssl_jax.data import pipeline
from medssl_jax.data import shared
from tfds_builders.common import file_md5
from tfds_builders.medmnist3d import medmnist3d_dataset_builder as m3d


def write_npz3d(path, *, size=28, num_labels=2, sizes=(8, 3, 4), seed=0, one_d_labels=False):
  """An npz in the official layout: images uint8 [N, size, size, size], labels uint8 [N, 1] (or [N])."""
  rng = np.random.default_rng(seed)
  arrays = {}
  for prefix, n in zip(("train", "val", "test"), sizes):
    arrays[f"{prefix}_images"] = rng.integers(0, 256, (n, size, size, size), dtype=np.uint8)
    labels = (np.arange(n) % num_labels).astype(np.uint8)
    arrays[f"{prefix}_labels"] = labels if one_d_labels else labels[:, None]
  np.savez_compressed(path, **arrays)
  return arrays


def build(tmp_path, config, manual, data_dir="tfds"):
  return pipeline.get_builder("medmnist3d", config=config, data_dir=str(tmp_path / data_dir), manual_dir=str(manual))


@pytest.fixture
def manual(tmp_path):
  folder = tmp_path / "manual"
  folder.mkdir()
  return folder


def test_binary_round_trip_and_md5_warning(tmp_path, manual, capsys):
  arrays = write_npz3d(manual / "adrenalmnist3d.npz")
  b = build(tmp_path, "adrenalmnist3d", manual)
  out = capsys.readouterr().out
  md5 = file_md5(manual / "adrenalmnist3d.npz")
  # One line: the file, its md5, both releases' md5s and what its split sizes say; the build goes on.
  assert re.search(rf"medmnist3d/adrenalmnist3d: WARNING: \S+/adrenalmnist3d.npz has md5 {md5}, not that of the "
                   r"official adrenalmnist3d.npz \(v2: bbd3c5a5576322bc4cdfea780653b1ce, v3: "
                   r"bbd3c5a5576322bc4cdfea780653b1ce\); its split sizes 8/3/4 match no release \(v2: 1188/98/298, "
                   r"v3: 1188/98/298\); building it as it is\n", out)
  assert dict(b.info.metadata) == {"release": "", "md5": md5, "file_name": "adrenalmnist3d.npz"}
  assert pipeline.is_volume(b) and pipeline.image_channels(b) == 1
  assert b.info.features["image"].shape == (28, 28, 28, 1)
  assert pipeline.class_names(b) == ["normal", "hyperplasia"]
  assert {s: pipeline.num_examples(b, s) for s in ("train", "validation", "test")} == {
      "train": 8, "validation": 3, "test": 4}
  test = pipeline.load_split_arrays(b, split="test")
  assert test["image"].shape == (4, 28, 28, 28, 1) and test["image"].dtype == np.uint8
  np.testing.assert_array_equal(test["image"][..., 0], arrays["test_images"])  # Lossless, official order.
  np.testing.assert_array_equal(test["label"], arrays["test_labels"][:, 0])
  np.testing.assert_array_equal(test["id"], np.arange(4))


def test_multiclass_round_trip(tmp_path, manual):
  arrays = write_npz3d(manual / "organmnist3d.npz", num_labels=11, sizes=(12, 3, 11))
  b = build(tmp_path, "organmnist3d", manual)
  assert pipeline.num_classes(b) == 11 and pipeline.class_names(b)[:2] == ["liver", "kidney-right"]
  record = b.as_data_source(split="test")[10]
  assert record["label"] == 10 and record["id"] == 10
  np.testing.assert_array_equal(record["image"][..., 0], arrays["test_images"][10])


def test_identify_names_the_release(tmp_path, monkeypatch, capsys):
  """A file with an official MD5 is named as that release; without one, its split sizes say which release they
  are (VesselMNIST3D: validation 192 in v2, 191 in v3)."""
  path = tmp_path / "vesselmnist3d.npz"
  path.write_bytes(b"not the official bytes")
  md5 = file_md5(path)
  assert m3d.identify(path, what="w", file_name="vesselmnist3d.npz", sizes=(1335, 191, 382)) == ("", md5)
  assert ("its split sizes 1335/191/382 are those of v3; building it as it is" in capsys.readouterr().out)
  monkeypatch.setitem(m3d.MD5, "vesselmnist3d.npz", {"v2": md5, "v3": "b41fd4f7e7e2feedddb201585ecafa1b"})
  assert m3d.identify(path, what="w", file_name="vesselmnist3d.npz", sizes=(1335, 192, 382)) == ("v2", md5)
  assert capsys.readouterr().out == f"w: vesselmnist3d.npz is the official MedMNIST v2 vesselmnist3d.npz (md5 {md5})\n"


def test_missing_file_lists_what_is_there(tmp_path, manual):
  write_npz3d(manual / "adrenalmnist3d.npz", sizes=(2, 1, 1))
  write_npz3d(manual / "vesselmnist3d_64.npz", size=64, sizes=(2, 1, 1))  # Another size's file is never taken.
  with pytest.raises(FileNotFoundError, match=r"vesselmnist3d.npz \(config 'vesselmnist3d'\); npz files found there: "
                                              r"\['adrenalmnist3d.npz', 'vesselmnist3d_64.npz'\]\. Put vesselmnist3d.npz "
                                              r"there .*MANUAL_DOWNLOAD_INSTRUCTIONS of tfds_builders.medmnist3d"):
    build(tmp_path, "vesselmnist3d", manual)
  arrays = write_npz3d(manual / "fracturemnist3d.npz", num_labels=3, sizes=(2, 1, 1))
  arrays["test_images"] = np.zeros((1, 28, 28), np.uint8)  # A 2D image where a volume is expected.
  np.savez_compressed(manual / "fracturemnist3d.npz", **arrays)
  with pytest.raises(ValueError, match=r"fracturemnist3d.npz: test_images is uint8\(1, 28, 28\), expected uint8 "
                                       r"\[N, \(28, 28, 28\)\]"):
    build(tmp_path, "fracturemnist3d", manual)


def test_renamed_copy_with_one_dimensional_labels(tmp_path, manual, capsys):
  """The 2D builder's rules: one renamed copy is used, labels saved as [N] are read as one per volume; both said."""
  arrays = write_npz3d(manual / "nodulemnist3d_resaved.npz", one_d_labels=True)
  b = build(tmp_path, "nodulemnist3d", manual)
  out = capsys.readouterr().out
  assert "medmnist3d/nodulemnist3d: nodulemnist3d.npz not found in" in out and "using nodulemnist3d_resaved.npz" in out
  assert "holds train_labels as [N] (the official files: [N, 1]); read as one label per image" in out
  assert b.info.metadata["file_name"] == "nodulemnist3d_resaved.npz"
  np.testing.assert_array_equal(pipeline.read_column(b, split="train", key="label"), arrays["train_labels"])


def test_volumes_through_the_pipeline(tmp_path, manual):
  """A 64³ dataset read at 32³: load_split_arrays and iterate_eval resize by block means; the grain iterator yields
  [B, D, H, W, C] batches with the 2D pipeline's sharding, resumable state and label subsets."""
  arrays = write_npz3d(manual / "synapsemnist3d_64.npz", size=64, sizes=(8, 2, 2))
  b = build(tmp_path, "synapsemnist3d_64", manual)
  val = pipeline.load_split_arrays(b, split="validation", image_size=32)
  assert val["image"].shape == (2, 32, 32, 32, 1) and val["image"].dtype == np.uint8
  area = arrays["val_images"].astype(np.float64).reshape(2, 32, 2, 32, 2, 32, 2).mean(axis=(2, 4, 6))
  np.testing.assert_array_equal(val["image"][..., 0], np.clip(np.rint(area), 0, 255).astype(np.uint8))
  np.testing.assert_array_equal(pipeline.load_split_arrays(b, split="test")["image"][..., 0], arrays["test_images"])
  (batch,) = pipeline.iterate_eval(b, split="test", batch_size=3, image_size=28)
  assert batch["image"].shape == (3, 28, 28, 28, 1) and batch["mask"].tolist() == [True, True, False]

  it = pipeline.make_train_iterator(b, global_batch_size=4, seed=0, image_size=32, process_index=0, process_count=1)
  first = next(it)
  assert first["image"].shape == (4, 32, 32, 32, 1) and first["image"].dtype == np.uint8
  assert first["label"].shape == (4,) and first["id"].shape == (4,)
  train = pipeline.load_split_arrays(b, split="train", image_size=32)
  np.testing.assert_array_equal(first["image"], train["image"][first["id"]])
  state = it.get_state()
  second = next(it)
  resumed = pipeline.make_train_iterator(b, global_batch_size=4, seed=0, image_size=32, process_index=0,
                                         process_count=1)
  resumed.set_state(pipeline.iterator_state_from_json(pipeline.iterator_state_to_json(state)))
  np.testing.assert_array_equal(next(resumed)["image"], second["image"])
  # Two processes each take half of every global batch.
  halves = [next(pipeline.make_train_iterator(b, global_batch_size=4, seed=0, image_size=32, process_index=p,
                                              process_count=2)) for p in (0, 1)]
  assert [h["image"].shape for h in halves] == [(2, 32, 32, 32, 1)] * 2
  np.testing.assert_array_equal(np.concatenate([h["id"] for h in halves]), first["id"])
  # A low-label subset: only its records appear.
  subset = next(pipeline.make_train_iterator(b, global_batch_size=4, seed=0, indices=[1, 6], process_index=0,
                                             process_count=1))
  assert subset["image"].shape == (4, 64, 64, 64, 1) and set(subset["id"].tolist()) == {1, 6}
  with pytest.raises(ValueError, match=r"volume of record 0 in split 'test' is float32; volume datasets store uint8"):
    pipeline._fit_volume(np.zeros((4, 4, 4, 1), np.float32), index=0, split="test", image_size=2, fit="squash")


# config: (shared folder, release named by the build, (train, val, test), label counts {0, 1} per split, val pixel
# mean), as measured in the folder's PROVENANCE.md.
REAL = {
    "adrenalmnist3d": ("adrenalmnist3d", "v2+v3", (1188, 98, 298), ([929, 259], [76, 22], [229, 69]), 4.1477),
    "adrenalmnist3d_64": ("adrenalmnist3d", "v3", (1188, 98, 298), ([929, 259], [76, 22], [229, 69]), 4.4132),
    "vesselmnist3d": ("vesselmnist3d", "v3", (1335, 191, 382), ([1185, 150], [169, 22], [339, 43]), 5.0564),
    "vesselmnist3d_64": ("vesselmnist3d", "v3", (1335, 191, 382), ([1185, 150], [169, 22], [339, 43]), 5.6875),
}


@pytest.mark.parametrize("config", sorted(REAL))
def test_real_files(tmp_path, config):
  folder, release, sizes, counts, val_mean = REAL[config]
  try:
    manual = shared.dataset_dir(folder)  # Read in place: the official file names, never copied into the repo.
  except FileNotFoundError as e:
    pytest.skip(f"real data absent: {e}")
  b = build(tmp_path, config, manual)
  assert b.info.metadata["release"] == release
  for split, n, c in zip(("train", "validation", "test"), sizes, counts):
    assert pipeline.num_examples(b, split) == n
    assert np.bincount(pipeline.read_column(b, split=split, key="label"), minlength=2).tolist() == c
  edge = 64 if config.endswith("_64") else 28
  val = pipeline.load_split_arrays(b, split="validation")
  assert val["image"].shape == (sizes[1], edge, edge, edge, 1)
  assert set(np.unique(val["image"]).tolist()) == {0, 255}  # Binary shape masks.
  assert round(float(val["image"].mean()), 4) == val_mean
