"""mode=analyze (medssl_jax/analysis.py) and the mask arrays it reads (pipeline.load_split_arrays' extra_keys).

Masks: a CHASE_DB1-layout miniature whose images and masks are one known rectangle, through every
`data.fit`, against a direct numpy nearest-neighbour geometry. Analysis: after a 2-step pretraining on
the embedded data, the written numbers equal the library functions on the same records; on the
miniature with masks, the fraction of each saved map inside its mask equals a direct numpy sum.
"""
import json
import os

import numpy as np
import pytest
from PIL import Image

from medssl_jax.modes import analyze as analysis
from medssl_jax import config as config_lib
from medssl_jax import experiment
from medssl_jax.data import pipeline
from medssl_jax.evals import representation
from medssl_jax.protocols import encoders as protocol_encoders

W, H = 48, 30  # Non-square, so the three fits differ.
BOX = (6, 4, 30, 22)  # left, top, right, bottom of the known mask (and bright image region).


def write_chase(root):
  """A CHASE_DB1 layout (children 01 and 11, both eyes: 2 train / 2 test records) whose images are
  bright exactly where their first-observer mask is set. Right eyes get the box mirrored."""
  root.mkdir(parents=True, exist_ok=True)
  for child in (1, 11):
    for eye in "LR":
      mask = np.zeros((H, W), np.uint8)
      l, t, r, b = BOX
      mask[t:b, l:r] = 1
      if eye == "R":
        mask = mask[:, ::-1].copy()
      name = f"Image_{child:02d}{eye}"
      Image.fromarray(np.repeat(mask[..., None] * 220 + 10, 3, axis=2)).save(root / f"{name}.jpg", quality=100)
      for obs in ("1stHO", "2ndHO"):
        Image.fromarray(mask.astype(bool)).save(root / f"{name}_{obs}.png")
  return root


def reference_geometry(mask, fit, size):
  """The fit (pad / center_crop / squash) then a nearest resize (PIL's pixel-centre rule), in numpy."""
  h, w = mask.shape
  if fit == "pad":
    s = max(h, w)
    out = np.zeros((s, s), mask.dtype)
    out[(s - h) // 2:(s - h) // 2 + h, (s - w) // 2:(s - w) // 2 + w] = mask
    mask = out
  elif fit == "center_crop":
    s = min(h, w)
    mask = mask[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
  h, w = mask.shape
  rows = np.floor((np.arange(size) + 0.5) * h / size).astype(int)
  cols = np.floor((np.arange(size) + 0.5) * w / size).astype(int)
  return mask[rows][:, cols]


@pytest.fixture(scope="module")
def chase(tmp_path_factory):
  root = tmp_path_factory.mktemp("chase")
  manual = write_chase(root / "manual")
  builder = pipeline.get_builder("chase_db1", config="original", data_dir=str(root / "tfds"), manual_dir=str(manual))
  return builder, root


@pytest.mark.parametrize("fit", pipeline.FITS)
def test_masks_align_with_images(chase, fit):
  builder, _ = chase
  size = 16  # (i + 0.5) * {48, 30} / 16 is never a whole number: no ties in the nearest-pixel rule.
  arrays = pipeline.load_split_arrays(builder, split="train", image_size=size, fit=fit, extra_keys=("mask", "eye"))
  assert set(arrays) == {"image", "label", "id", "mask", "eye"}
  assert arrays["mask"].shape == (2, size, size, 1) and arrays["mask"].dtype == np.uint8
  assert arrays["eye"].tolist() == [0, 1]
  for i, eye in enumerate("LR"):
    mask = np.zeros((H, W), np.uint8)
    mask[BOX[1]:BOX[3], BOX[0]:BOX[2]] = 1
    mask = mask if eye == "L" else mask[:, ::-1]
    want = reference_geometry(mask, fit, size)
    got = arrays["mask"][i, ..., 0]
    np.testing.assert_array_equal(got, want)  # Nearest: values kept (0/1), exact geometry.
    # The image went through the same fit (bicubic): bright where the mask is, dark elsewhere, away from
    # the rectangle's edge.
    bright = arrays["image"][i, ..., 0] > 115
    core = want.astype(bool)
    edge = np.zeros_like(core)
    for dy in (-1, 0, 1):
      for dx in (-1, 0, 1):
        edge |= np.roll(core, (dy, dx), axis=(0, 1)) != core
    assert core.sum() > 10 and np.array_equal(bright[~edge], core[~edge]), fit
  # Without extra keys, the arrays are what they always were.
  plain = pipeline.load_split_arrays(builder, split="train", image_size=size, fit=fit)
  assert set(plain) == {"image", "label", "id"}
  np.testing.assert_array_equal(plain["image"], arrays["image"])
  # Original size (no resize): the stored mask itself.
  full = pipeline.load_split_arrays(builder, split="test", extra_keys=("mask",), indices=[1])
  assert full["mask"].shape == (1, H, W, 1) and full["mask"][0, ..., 0].sum() == (BOX[2] - BOX[0]) * (BOX[3] - BOX[1])


def test_bad_mask_key_names_the_features(chase):
  builder, _ = chase
  with pytest.raises(KeyError, match=r"no feature 'vessels'.*mask_2nd_observer.*image features besides the image, "
                                     r"e.g. masks: \['mask', 'mask_2nd_observer'\]"):
    pipeline.load_split_arrays(builder, split="train", extra_keys=("vessels",))
  with pytest.raises(KeyError, match=r"always returned"):
    pipeline.load_split_arrays(builder, split="train", extra_keys=("label",))


def test_config_checks():
  c = config_lib.load("demo_simclr", "quick")
  c.mode = "analyze"
  experiment.validate(c)
  for key, value, match in [("attention", "gradcam", r"config.analysis.attention='gradcam'.*'grad_cam'"),
                            ("embedding_method", "umap", r"embedding_method='umap'.*'tsne', 'pca', 'none'"),
                            ("attention", "rollout", r"'rollout' needs a ViT"),
                            ("layers", ("stage9",), r"unknown layer\(s\) \['stage9'\].*'projector/out'"),
                            ("max_examples", -1, r"max_examples must be an integer >= 0")]:
    bad = config_lib.load("demo_simclr", "quick")
    bad.mode = "analyze"
    bad.analysis[key] = value
    with pytest.raises(ValueError, match=match):
      experiment.validate(bad)
  bad = config_lib.load("demo_simclr", "quick")
  bad.analysis.mask_key, bad.analysis.attention = "mask", "none"
  with pytest.raises(ValueError, match="computes no maps"):
    experiment.validate(bad)
  for variant in ("hrf", "hrf_vessels", "chase_db1", "quick"):
    experiment.validate(config_lib.load("fundus_analysis", variant))
  assert analysis.slug("simclr (pretrained)") == "simclr_pretrained"
  assert analysis.slug("projector/hidden1") == "projector-hidden1" and analysis.slug("train[:10%]") == "train_10pct"


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
  """2 SimCLR steps of demo_simclr:quick on synthetic_fundus/small: (config, workdir)."""
  tfds_dir = tmp_path_factory.mktemp("tfds")
  config = config_lib.load("demo_simclr", "quick")
  config.data.data_dir = str(tfds_dir)
  config.train.num_steps = 2
  config.mode = "pretrain"
  workdir = str(tmp_path_factory.mktemp("work"))
  experiment.run(config, workdir)
  return config, workdir


def test_analyze_writes_the_library_numbers(pretrained):
  config, workdir = pretrained
  c = config.copy_and_resolve_references()
  c.mode = "analyze"
  c.analysis.max_examples = 40
  c.analysis.embedding_method = "pca"
  c.analysis.num_attention_images = 4
  c.analysis.layers = ("stage2", "backbone", "projector/out")
  summary = experiment.run(c, workdir)
  out = os.path.join(workdir, "analysis", "test")
  saved = json.loads(open(os.path.join(out, "summary.json")).read())
  assert saved["num_examples"] == 40 and saved["num_records"] == 256 and saved["attention_method"] == "grad_cam"
  assert set(saved["encoders"]) == {"simclr (pretrained)", "random init"}
  idx = np.asarray(saved["record_indices"])
  assert len(idx) == 40 and np.all(np.diff(idx) > 0) and idx.max() < 256  # A subset, in split order.
  # Neural collapse of the saved layers equals the library on the same records and pretrained weights.
  arrays = pipeline.load_split_arrays(pipeline.open_dataset(c.data), split="test", image_size=64, indices=idx)
  model, variables = protocol_encoders.load_pretrained(c, workdir)
  feats = representation.layer_features(model, variables, arrays["image"], image_size=64, mean=(0.5,) * 3,
                                        std=(0.5,) * 3, layers=list(c.analysis.layers))
  for layer in c.analysis.layers:
    want = representation.neural_collapse(features=feats[layer], labels=arrays["label"])
    got = saved["encoders"]["simclr (pretrained)"]["neural_collapse"][layer]
    for k, v in want.items():
      assert got[k] == pytest.approx(v, rel=1e-5, abs=1e-9), (layer, k)
    assert got["dim"] == feats[layer].shape[1]
  assert summary["encoders"]["random init"]["neural_collapse"]["backbone"]["num_classes"] == 4
  # PNGs: one embedding map per encoder and layer, one overlay grid per encoder; not blank.
  names = sorted(os.listdir(out))
  for tag in ("simclr_pretrained", "random_init"):
    for layer in ("stage2", "backbone", "projector-out"):
      assert f"embedding_{tag}_{layer}_pca.png" in names
    assert f"attention_{tag}_grad_cam.png" in names and f"attention_{tag}_grad_cam.npz" in names
  for name in [n for n in names if n.endswith(".png")]:
    img = np.asarray(Image.open(os.path.join(out, name)).convert("RGB"), np.float32)
    assert min(img.shape[:2]) > 200 and img.std() > 10, name
  maps = np.load(os.path.join(out, "attention_simclr_pretrained_grad_cam.npz"))
  assert maps["maps"].shape == (40, 64, 64) and maps["ids"].tolist() == saved["record_ids"] == arrays["id"].tolist()
  assert 0 <= maps["maps"].min() and maps["maps"].max() == 1  # Divided by each map's maximum.
  md = open(os.path.join(out, "summary.md")).read()
  assert "| simclr (pretrained) | projector/out | 32 |" in md and "| random init |" in md


def test_analyze_fraction_inside_masks(pretrained, chase):
  """The same checkpoint analysed on the miniature with masks (same architecture, other data)."""
  config, workdir = pretrained
  _, root = chase
  c = config.copy_and_resolve_references()
  c.mode = "analyze"
  c.data.builder, c.data.builder_config, c.data.fit = "chase_db1", "original", "pad"
  c.data.data_dir, c.data.manual_dir, c.data.val_split = str(root / "tfds"), str(root / "manual"), ""
  c.eval.compare_random_init = False
  c.analysis.update(label_key="eye", mask_key="mask", attention="label_free", embedding_method="none",
                    layers=("backbone",), num_attention_images=4)
  summary = experiment.run(c, workdir)
  out = os.path.join(workdir, "analysis", "test")
  r = summary["encoders"]["simclr (pretrained)"]["attention"]
  assert r["method"] == "grad_feature_norm" and os.path.exists(r["overlay"])
  saved = np.load(os.path.join(out, "attention_simclr_pretrained_grad_feature_norm.npz"))
  arrays = pipeline.load_split_arrays(pipeline.open_dataset(c.data), split="test", image_size=64, fit="pad",
                                      extra_keys=("mask", "eye"))
  maps = saved["maps"].astype(np.float64)
  inside = (arrays["mask"][..., 0] > 0)
  want = (maps * inside).sum(axis=(1, 2)) / maps.sum(axis=(1, 2))
  np.testing.assert_allclose(saved["fraction_inside"], want, rtol=2e-3)  # Maps saved as float16.
  np.testing.assert_allclose(saved["mask_area"], inside.mean(axis=(1, 2)), rtol=1e-12)
  fi = r["fraction_inside"]
  assert fi["n"] == 2 and fi["mean"] == pytest.approx(np.mean(saved["fraction_inside"]))
  assert fi["std"] == pytest.approx(np.std(saved["fraction_inside"], ddof=1))
  assert set(fi["per_class"]) == {"left", "right"}
  for c_id, name in enumerate(("left", "right")):
    assert fi["per_class"][name]["mean"] == pytest.approx(saved["fraction_inside"][arrays["eye"] == c_id].mean())
  md = open(os.path.join(out, "summary.md")).read()
  assert "Fraction of each map inside 'mask'" in md and "left:" in md
  # A mask key the data lacks fails before any work, naming the features there are.
  c.analysis.mask_key = "fov_mask"
  with pytest.raises(KeyError, match=r"no feature 'fov_mask'.*\['mask', 'mask_2nd_observer'\]"):
    experiment.run(c, workdir)


def test_real_chase_db1(tmp_path, pretrained):
  """The real CHASE_DB1 vessel maps (skipped where the shared data is absent): 8 test images at 64 px."""
  from medssl_jax.data import shared
  try:
    manual = shared.dataset_dir("chase_db1")
  except FileNotFoundError as e:
    pytest.skip(f"real data absent: {e}")
  config, workdir = pretrained
  c = config_lib.load("fundus_analysis", "chase_db1")
  # The tiny pretrained model of the fixture, on 64 px inputs; the real data and masks of the variant.
  for k in ("model", "augment"):
    c[k] = config[k]
  c.data.image_size, c.data.data_dir, c.data.manual_dir = 64, str(tmp_path / "tfds"), str(manual)
  c.eval.compare_random_init = False
  c.analysis.update(embedding_method="tsne", layers=("backbone",), num_attention_images=4)
  summary = experiment.run(c, workdir)
  r = summary["encoders"]["simclr (pretrained)"]
  assert summary["num_examples"] == 8 and summary["classes"] == {"left": 4, "right": 4}
  area = r["attention"]["mask_area"]["mean"]
  assert 0.03 < area < 0.12  # About 7% vessel pixels (PROVENANCE.md), at 64 px after padding.
  assert 0 <= r["attention"]["fraction_inside"]["mean"] <= 1 and "probe_accuracy" in r["attention"]
  assert os.path.getsize(r["embedding_maps"]["backbone"]) > 5000
