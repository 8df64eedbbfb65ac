"""nifti_volumes builder on NIfTI files written here: orientation, windowing, geometry features, the given and the
patient-level split, reloading a prepared copy, the pipeline, and bad tables and files named in one line."""
import collections

import nibabel as nib
import numpy as np
import pytest

from medssl_jax.data import pipeline
from tfds_builders import common
from tfds_builders.nifti_volumes import dummy_data
from tfds_builders.nifti_volumes import nifti_volumes_dataset_builder as nvb


def build(tmp_path, config, manual, data_dir="tfds"):
  return pipeline.get_builder("nifti_volumes", config=config, data_dir=str(tmp_path / data_dir),
                              manual_dir=None if manual is None else str(manual))


def test_orientation_and_ct_window(tmp_path):
  """An LAS volume is stored RAS+ as [D, H, W] = (S, A, R) axes; the HU window maps lo -> 0 and hi -> 255."""
  manual = tmp_path / "manual"
  data = np.full((8, 8, 8), -1000, np.int16)
  data[1, 2, 5] = 400  # x (flipped: left->right is 8-1-1 = 6), y = 2, z = 5.
  dummy_data.save(manual / "a.nii.gz", data, spacing=(1.0, 1.0, 1.0))
  dummy_data.save(manual / "b.nii", np.full((8, 8, 8), 1000, np.int16), spacing=(1.0, 1.0, 1.0), flip_x=False)
  dummy_data.write_table(manual / "volumes.csv", [{"path": "a.nii.gz", "label": "0", "split": "train"},
                                                  {"path": "b.nii", "label": "1", "split": "test"}])
  b = build(tmp_path, "cube,size=8,window=-1000:400", manual)
  assert pipeline.is_volume(b) and pipeline.class_names(b) == ["0", "1"]
  a = b.as_data_source(split="train")[0]
  expected = np.zeros((8, 8, 8), np.uint8)
  expected[5, 2, 6] = 255
  np.testing.assert_array_equal(a["image"][..., 0], expected)
  assert b.as_data_source(split="test")[0]["image"].min() == 255  # Above the window: clipped.


def test_given_split_geometry_and_pipeline(tmp_path):
  manual = tmp_path / "manual"
  rows = dummy_data.write(manual, split=True)  # 12 volumes of 6 patients: 8 train, 2 validation, 2 test.
  b = build(tmp_path, "my_ct,size=16,window=-1000:400", manual)
  assert {s: pipeline.num_examples(b, s) for s in ("train", "validation", "test")} == {
      "train": 8, "validation": 2, "test": 2}
  assert pipeline.class_names(b) == ["benign", "malignant"]
  r = b.as_data_source(split="validation")[0]
  assert r["file_name"] == b"scans/p004_0.nii.gz" and r["patient_id"] == b"p004" and r["label"] == 0
  # Source (x, y, z) = (12, 10, 8) voxels of (0.9, 0.9, 2.0) mm, reported along [D, H, W] = (z, y, x).
  np.testing.assert_allclose(r["spacing"], [2.0, 0.9, 0.9])
  np.testing.assert_array_equal(r["source_shape"], [8, 10, 12])
  # 'pad': the largest extent (16 mm along D) fills the cube: 1 mm voxels; H (9 mm) and W (10.8 mm) are padded.
  np.testing.assert_allclose(r["stored_spacing"], [1.0, 1.0, 1.0])
  image = r["image"][..., 0]
  assert image.shape == (16, 16, 16) and image.dtype == np.uint8
  assert image[8, 8, 8] >= 185 and image[0, 0, 0] == 0  # Body (40 HU -> 189) or lesion inside, air (-1000 HU) -> 0.

  arrays = pipeline.load_split_arrays(b, split="train", image_size=8, extra_keys=("spacing", "patient_id"))
  assert arrays["image"].shape == (8, 8, 8, 8, 1) and arrays["spacing"].shape == (8, 3)
  assert arrays["label"].tolist() == [0, 0, 1, 1, 0, 0, 1, 1]  # p000 p000 p001 p001 p002 ... in path order.
  batch = next(pipeline.make_train_iterator(b, global_batch_size=4, seed=0, process_index=0, process_count=1))
  assert batch["image"].shape == (4, 16, 16, 16, 1)
  assert [r["path"] for r in rows if r["split"] == "train"] == [
      f.decode() for f in pipeline.read_column(b, split="train", key="file_name")]


def test_pad_keeps_proportions():
  """'pad': isotropic voxels of the largest extent / size, the volume centred in its own minimum."""
  volume = np.ones((8, 10, 12), np.float32)
  volume[0, 0, 0] = 0
  cube, stored = nvb.to_cube(volume, np.asarray([2.0, 0.9, 0.9], np.float32), size=16, fit="pad")
  np.testing.assert_allclose(stored, [1.0, 1.0, 1.0])
  inside = np.zeros((16, 16, 16), bool)
  inside[:, 3:12, 2:13] = True  # D 16 mm, H 9 mm, W 10.8 -> 11 mm, centred.
  assert (cube[~inside] == 0).all() and cube[inside].mean() > 0.99
  squashed, stored = nvb.to_cube(volume, np.asarray([2.0, 0.9, 0.9], np.float32), size=4, fit="squash")
  assert squashed.shape == (4, 4, 4)
  np.testing.assert_allclose(stored, [4.0, 2.25, 2.7], rtol=1e-6)


def test_patient_split_and_percentiles(tmp_path):
  """Without a split column: seeded, label-stratified, no patient in two splits; MR-style percentile scaling."""
  manual = tmp_path / "manual"
  dummy_data.write(manual, patients=10, per_patient=2, shape=(6, 6, 6), spacing=(1.0, 1.0, 1.0))
  b = build(tmp_path, "mr,size=6,fit=squash,fractions=60:20:20", manual)
  sides = collections.defaultdict(set)
  for split in ("train", "validation", "test"):
    for p in pipeline.read_column(b, split=split, key="patient_id"):
      sides[p].add(split)
  assert len(sides) == 10 and all(len(s) == 1 for s in sides.values())
  assert sum(pipeline.num_examples(b, s) for s in ("train", "validation", "test")) == 20
  assert pipeline.num_examples(b, "train") == 12
  image = b.as_data_source(split="train")[0]["image"]
  assert image.min() == 0 and image.max() == 255  # Each volume's 0.5 / 99.5 percentiles.
  assert b.info.metadata["options"]["window"] is None


def test_prepared_copy_is_reused_and_checked(tmp_path):
  manual = tmp_path / "manual"
  rows = dummy_data.write(manual, patients=4, per_patient=1, shape=(6, 6, 6), split=True)
  build(tmp_path, "ct,size=6", manual)
  again = build(tmp_path, "ct", None)  # No table needed once prepared.
  assert build(tmp_path, "ct,size=6", manual).info.metadata["fingerprint"] == again.info.metadata["fingerprint"]
  assert pipeline.num_examples(again, "train") == 4 and pipeline.is_volume(again)
  with pytest.raises(ValueError, match=r"nifti_volumes/ct in .* was built with other options \(stored, requested\): "
                                       r"\{'size': \(6, 8\)\}; delete that folder to rebuild"):
    build(tmp_path, "ct,size=8", None)
  dummy_data.write_table(manual / "volumes.csv", rows[:-1])
  with pytest.raises(ValueError, match=r"was built from another table than the one now in .*manual"):
    build(tmp_path, "ct", manual)


def _one_volume_table(manual, rows, **kw):
  dummy_data.save(manual / "v.nii.gz", dummy_data.volume((6, 6, 6)), **kw)
  dummy_data.write_table(manual / "volumes.csv", rows)


def test_bad_tables_and_files_are_named(tmp_path):
  manual = tmp_path / "manual"
  manual.mkdir()
  with pytest.raises(common.LayoutError, match=r"the table .*manual/volumes.csv does not exist \(found in .*manual: "
                                               r"nothing\); expected a table"):
    build(tmp_path, "x", manual)
  good = {"path": "v.nii.gz", "label": "a"}
  cases = [  # (table rows, config, message)
      ([good, {"path": "w.nii.gz", "label": "b"}], "x",
       r"volume\(s\) listed in .*volumes.csv do not exist: .*volumes.csv row 2 \(line 3\): 'w.nii.gz' \(looked for "),
      ([good, {"path": "v.dcm", "label": "b"}], "x", r"row 2 \(line 3\): 'v.dcm' is not a NIfTI file"),
      ([good, {"path": "v.nii.gz", "label": "b"}], "x", r"row 2 \(line 3\): 'v.nii.gz' is already listed in row 1"),
      ([{**good, "label": ""}], "x", r"row 1 \(line 2\): empty \"label\"; give every volume its class"),
      ([good], "x", r"has one class \('a'\); a classifier needs two or more"),
      ([{**good, "split": "dev"}], "x,classes=a:b", r"row 1 \(line 2\): unknown split 'dev'; valid: \["),
  ]
  for rows, config, message in cases:
    _one_volume_table(manual, rows)
    with pytest.raises((ValueError, common.LayoutError), match=message):
      build(tmp_path, config, manual)
  dummy_data.save(manual / "w.nii.gz", dummy_data.volume((6, 6, 6)))
  dummy_data.write_table(manual / "volumes.csv", [{**good, "patient_id": "p1", "split": "train"},
                                                  {"path": "w.nii.gz", "label": "b", "patient_id": "p1",
                                                   "split": "test"}])
  with pytest.raises(ValueError, match=r"puts 1 patient\(s\) in more than one split: 'p1' in \['test', 'train'\]"):
    build(tmp_path, "x", manual)
  with pytest.raises(ValueError, match=r"unknown label 'b'; the \"classes\" option allows \['a', 'c'\]"):
    build(tmp_path, "x,classes=a:c", manual)
  # Files that are not 3-D volumes, named with their row, before anything is written.
  nib.save(nib.Nifti1Image(np.zeros((6, 6), np.float32), np.eye(4)), str(manual / "w.nii.gz"))
  dummy_data.write_table(manual / "volumes.csv", [{**good, "split": "train"},
                                                  {"path": "w.nii.gz", "label": "b", "split": "test"}])
  with pytest.raises(ValueError, match=r"row 2 \(line 3\): .*w.nii.gz has shape \(6, 6\); expected one 3-D volume"):
    build(tmp_path, "x", manual)
  (manual / "w.nii.gz").write_bytes(b"not a nifti file")
  with pytest.raises(ValueError, match=r"row 2 \(line 3\): could not read .*w.nii.gz: .*expected a NIfTI-1/2 file"):
    build(tmp_path, "x", manual)
  assert not list((tmp_path / "tfds").rglob("dataset_info.json"))
  for config, message in [("x,window=5:1", r"option window=\[5.0, 1.0\] in the config string; expected \[lo, hi\] "
                                           r"with lo < hi"),
                          ("x,gamma=2", r"config option 'gamma=2' in 'x,gamma=2'; expected key=value with key in"),
                          ("x,percentiles=1", r"option percentiles='1' in the config string; expected 2 numbers"),
                          ("x y", r"dataset name 'x y' must be letters")]:
    with pytest.raises(nvb.OptionsError, match=message):
      build(tmp_path, config, manual)
