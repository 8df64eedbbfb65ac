"""Lung-field masks from chest X-ray intensities (medssl_jax/data/lung_mask.py) and mode analyze's
attention-in-lung measure (config.analysis.derived_mask = "lung_intensity").

Dice is computed here directly in numpy against ellipses drawn here (constructed images) or the lung
ellipses synthetic_cxr.render_example reports (its heart and mediastinum cover part of them, which caps
the Dice below 1). Real PneumoniaMNIST checks skip when the shared data is absent.
"""
import json
import os

import numpy as np
import pytest

from medssl_jax import config as config_lib
from medssl_jax import experiment
from medssl_jax.data import pipeline
from medssl_jax.synthetic import cxr as synthetic_cxr
from medssl_jax.data import lung_mask


def ellipse(size, cx, cy, rx, ry):
  yy, xx = np.mgrid[0:size, 0:size] + 0.5
  return ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1


def dice(a, b):
  a, b = np.asarray(a, bool), np.asarray(b, bool)
  return np.array([2 * np.sum(x & y) / (np.sum(x) + np.sum(y)) for x, y in zip(a, b)])


def constructed(size, n=4):
  """Two dark ellipses (0.2) inside a bright body (0.7) on black air, noise-free, shifted per image."""
  images, truth = [], []
  for i in range(n):
    dx = (i - n / 2) * size / 80
    body = ellipse(size, size / 2 + dx, size * 0.6, size * 0.45, size * 0.6)
    lungs = (ellipse(size, size * 0.31 + dx, size * 0.45, size * 0.13, size * 0.27)
             | ellipse(size, size * 0.69 + dx, size * 0.45, size * 0.13, size * 0.27))
    images.append(np.where(lungs, 0.2, np.where(body, 0.7, 0.03)))
    truth.append(lungs)
  return np.stack(images)[..., None], np.stack(truth)


@pytest.mark.parametrize("size", [28, 64])
def test_constructed_lungs_near_perfect(size):
  images, truth = constructed(size)
  masks = lung_mask.lung_masks(images)
  assert masks.shape == truth.shape and masks.dtype == bool
  d = dice(masks, truth)
  assert d.min() >= 0.93, d  # Only the smoothing at the ellipses' edges differs.
  assert lung_mask.num_components(masks).tolist() == [2] * len(images)
  np.testing.assert_allclose(lung_mask.dice(masks, truth), d)
  # uint8 and [N, H, W] inputs give the same masks; the result is deterministic.
  as_uint8 = np.round(images * 255).astype(np.uint8)
  np.testing.assert_array_equal(lung_mask.lung_masks(as_uint8[..., 0]), lung_mask.lung_masks(as_uint8))
  assert dice(lung_mask.lung_masks(as_uint8), masks).min() > 0.97


def test_no_lungs_gives_empty_masks():
  flat = np.full((2, 28, 28), 0.6)
  assert not lung_mask.lung_masks(flat).any()


@pytest.mark.parametrize("size, mean_min, each_min", [(64, 0.87, 0.75), (28, 0.83, 0.65)])
def test_synthetic_cxr_dice(size, mean_min, each_min):
  """32 synthetic chest X-rays: measured mean Dice 0.911 (min 0.798) at 64 px, 0.868 (min 0.712) at 28 px."""
  images, truth = [], []
  for i in range(32):
    image, _, _, meta = synthetic_cxr.render_example(i, size=size)
    images.append(image)
    truth.append(np.logical_or.reduce([ellipse(size, *box) for box in meta["lungs"].values()]))
  masks = lung_mask.lung_masks(np.stack(images))
  d = dice(masks, np.stack(truth))
  assert d.mean() >= mean_min and d.min() >= each_min, (d.mean(), d.min())
  assert np.all(lung_mask.num_components(masks) <= 2)
  np.testing.assert_allclose(lung_mask.synthetic_dice(size=size, count=32), d)  # The command's number.


def test_bad_inputs():
  with pytest.raises(ValueError, match=r"grayscale.*\(3 channels\)"):
    lung_mask.lung_masks(np.zeros((2, 28, 28, 3), np.uint8))
  with pytest.raises(ValueError, match=r"\[N, H, W, 1\] or \[N, H, W\].*shape \(28, 28\)"):
    lung_mask.lung_masks(np.zeros((28, 28), np.uint8))
  with pytest.raises(ValueError, match=r"H, W >= 8.*\(1, 4, 4\)"):
    lung_mask.lung_masks(np.zeros((1, 4, 4), np.uint8))
  with pytest.raises(ValueError, match=r"uint8 \(0-255\) or float in \[0, 1\]; got dtype int32"):
    lung_mask.lung_masks(np.zeros((1, 28, 28), np.int32))
  with pytest.raises(ValueError, match=r"float images must be finite and in \[0, 1\]; got range \[0, 255\]"):
    lung_mask.lung_masks(np.full((1, 28, 28), 255.0) * (np.arange(28) > 0))
  with pytest.raises(ValueError, match=r"min_area .*\[0, 0.5\); got 0.7"):
    lung_mask.lung_masks(np.zeros((1, 28, 28), np.uint8), min_area=0.7)


def _pneumoniamnist_dir():
  from medssl_jax.data import shared
  try:
    return shared.dataset_dir("pneumoniamnist")
  except FileNotFoundError as e:
    pytest.skip(f"real PneumoniaMNIST absent: {e}")


def test_real_pneumoniamnist_masks_and_overlay_command(tmp_path, capsys):
  """The test split's 624 images: measured mean area 0.323 ± 0.075, 99.7% of images with an area in
  [0.1, 0.6], 614 with two components and 10 with one; normal 0.317, pneumonia 0.326."""
  manual = _pneumoniamnist_dir()
  builder = pipeline.get_builder("medmnist", config="pneumoniamnist", data_dir=str(tmp_path / "tfds"),
                                 manual_dir=str(manual))
  images = pipeline.load_split_arrays(builder, split="test")["image"]
  masks = lung_mask.lung_masks(images)
  area = masks.mean(axis=(1, 2))
  comps = lung_mask.num_components(masks)
  assert len(images) == 624 and 0.25 < area.mean() < 0.4
  assert np.mean((area >= 0.1) & (area <= 0.6)) >= 0.97
  assert np.all(comps <= 2) and np.mean(comps == 2) >= 0.9
  out = tmp_path / "lungs.png"
  lung_mask.main([f"--out={out}", "--count=16", f"--data_dir={tmp_path / 'tfds'}"])
  assert os.path.getsize(out) > 5000 and "16 'test' images: mask area" in capsys.readouterr().out


def test_analyze_attention_in_lungs(tmp_path):
  """Mode analyze end to end with derived_mask="lung_intensity" on a PneumoniaMNIST-layout miniature whose
  images are synthetic chest X-rays (28 px; classes alternate), after 2 SimCLR steps."""
  manual = tmp_path / "manual"
  manual.mkdir()
  arrays = {}
  for prefix, start, n in (("train", 0, 32), ("val", 100, 4), ("test", 200, 12)):
    images, _, _ = synthetic_cxr.generate(n, size=28, start=start)
    arrays[f"{prefix}_images"] = images[..., 0]
    arrays[f"{prefix}_labels"] = (np.arange(n) % 2)[:, None].astype(np.uint8)
  np.savez_compressed(manual / "pneumoniamnist.npz", **arrays)
  c = config_lib.load("medmnist_simclr", "pneumoniamnist,quick")
  c.data.data_dir, c.data.manual_dir = str(tmp_path / "tfds"), str(manual)
  c.train.num_steps, c.mode = 2, "pretrain"
  c.eval.compare_random_init = False
  workdir = str(tmp_path / "work")
  experiment.run(c, workdir)
  c.mode = "analyze"
  c.analysis.update(derived_mask="lung_intensity", embedding_method="none", layers=("backbone",),
                    num_attention_images=4)
  experiment.validate(c)
  summary = experiment.run(c, workdir)
  at = summary["encoders"]["simclr (pretrained)"]["attention"]
  assert at["method"] == "grad_cam" and at["mask_name"] == lung_mask.NAME
  fi, area = at["fraction_inside"], at["mask_area"]
  assert fi["n"] + fi["nan_count"] == 12 and 0 <= fi["mean"] <= 1 and set(fi["per_class"]) == {"normal", "pneumonia"}
  # The mask areas are those of lung_masks on the same images (maps and images are both 28 px).
  want = lung_mask.lung_masks(arrays["test_images"]).mean(axis=(1, 2))
  out = os.path.join(workdir, "analysis", "test")
  saved = np.load(os.path.join(out, "attention_simclr_pretrained_grad_cam.npz"))
  np.testing.assert_allclose(saved["mask_area"], want, rtol=1e-12)
  assert area["mean"] == pytest.approx(want.mean()) and 0.15 < area["mean"] < 0.5
  finite = saved["fraction_inside"][np.isfinite(saved["fraction_inside"])]
  assert np.all((finite >= 0) & (finite <= 1))
  assert json.loads(open(os.path.join(out, "summary.json")).read())["derived_mask"] == "lung_intensity"
  md = open(os.path.join(out, "summary.md")).read()
  assert f"Fraction of each map inside {lung_mask.NAME}" in md and "normal:" in md
