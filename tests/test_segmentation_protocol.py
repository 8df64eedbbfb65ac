"""The segmentation transfer protocol (medssl_jax/evals/segmentation.py) on the synthetic 'vessels' data:
a tiny U-Net beats trivial baselines, pretrained backbone weights are really used, FOV masks, whole-image
padding, the config-driven stage with resume, and its errors. mask_mode "classes" (class-id maps): a
synthetic disc / cup problem, the multi-class metrics against sklearn, run() on REFUGE's dummy data."""

import json

import jax
import numpy as np
import pytest

from medssl_jax.data import pipeline
from medssl_jax.synthetic import fundus as sf
from medssl_jax.evals import segmentation as seg
from medssl_jax.evals import segmentation_metrics as sm
from medssl_jax.modes import segmentation as seg_mode
from medssl_jax.models import resnet
from medssl_jax import experiment

MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def vessels(data_dir):
  builder = pipeline.get_builder("synthetic_fundus", config="vessels", data_dir=data_dir)
  out = {}
  for split in ("train", "test"):
    a = pipeline.load_split_arrays(builder, split=split, extra_keys=("mask", "fov_mask"))
    out[split] = (a["image"], a["mask"][..., 0], a["fov_mask"][..., 0] > 0)
  return out


def _backbone(seed=1):
  bb = resnet("resnet18", stem="cifar", width_multiplier=0.125)
  return bb, bb.init(jax.random.key(seed), np.zeros((1, 32, 32, 3), np.float32), train=False)


def _args(vessels, **kw):
  (tr_x, tr_m, tr_f), (te_x, te_m, te_f) = vessels["train"], vessels["test"]
  bb, v = _backbone()
  args = dict(backbone=bb, backbone_variables=v, train_images=tr_x, train_masks=tr_m, train_fov=tr_f,
              test_images=te_x, test_masks=te_m, test_fov=te_f, patch_size=32, steps=50, batch_size=16,
              learning_rate=2e-2, weight_decay=1e-4, mean=MEAN, std=STD, seed=0)
  args.update(kw)
  return args


def test_random_init_unet_beats_trivial_baselines(vessels):
  _, te_m, te_f = vessels["test"]
  result = seg.finetune_segmentation(**_args(vessels), return_predictions=True)
  all_vessel_dice = sm.dice(np.ones_like(te_m), te_m, valid=te_f)  # The best constant predictor's Dice.
  assert 0.08 < all_vessel_dice < 0.2
  assert result["auroc"] > 0.75, result
  assert result["dice"] > all_vessel_dice + 0.1, (result["dice"], all_vessel_dice)
  # The reported metrics are segmentation_report's on the returned maps, over the FOV.
  probs = result["probabilities"]
  assert probs.shape == te_m.shape and probs.min() >= 0 and probs.max() <= 1
  assert result["dice"] == pytest.approx(sm.dice(probs >= 0.5, te_m, valid=te_f))
  assert result["auroc"] == pytest.approx(sm.pixel_auroc(probs, te_m, valid=te_f))
  assert result["curve"]["step"][-1] == 50 and result["curve"]["loss"][-1] < result["curve"]["loss"][0]
  assert result["steps"] == 50 and result["train_seconds"] > 0 and "U-Net" in result["protocol"]
  json.dumps({k: v for k, v in result.items() if k != "probabilities"})


def test_pretrained_backbone_is_used(vessels):
  bb, given = _backbone(seed=7)
  given_np = jax.device_get(given)
  # learning_rate 0: nothing moves, so the trained U-Net's backbone is exactly the one it started from.
  r = seg.finetune_segmentation(**_args(vessels, backbone_variables=given, steps=2, learning_rate=0.0),
                                return_variables=True)
  jax.tree.map(np.testing.assert_array_equal, r["variables"]["params"]["backbone"], given_np["params"])
  # backbone_lr_scale 0: the backbone's parameters stay put while the decoder trains.
  r0 = seg.finetune_segmentation(**_args(vessels, backbone_variables=given, steps=3, backbone_lr_scale=0.0),
                                 return_variables=True)
  jax.tree.map(np.testing.assert_array_equal, r0["variables"]["params"]["backbone"], given_np["params"])
  assert not np.array_equal(r0["variables"]["params"]["logits"]["kernel"], r["variables"]["params"]["logits"]["kernel"])
  assert "frozen" in r0["protocol"]
  # The caller's variables are not modified, and a wrong tree is refused.
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(given), given_np)
  wide = resnet("resnet18", stem="cifar", width_multiplier=0.25)
  with pytest.raises(ValueError, match=r"backbone_variables\['params'\] do not fit"):
    seg.finetune_segmentation(**_args(vessels, backbone_variables=given, backbone=wide, steps=1))


def test_fov_auto_matches_true_fov():
  ious = []
  for index in range(6):
    image, _, meta = sf.render_example(index, size=64, return_masks=True)
    auto = seg.fov_masks(image[None], fov="auto")[0]
    true = meta["fov_mask"] > 0
    ious.append((auto & true).sum() / (auto | true).sum())
  assert min(ious) > 0.95, ious
  # A disc with a dark (vessel-like) hole and speckle outside: holes are filled, speckle dropped.
  yy, xx = np.mgrid[:40, :40]
  disc = (yy - 20) ** 2 + (xx - 20) ** 2 <= 15 ** 2
  img = np.where(disc[..., None], 120, 0).astype(np.uint8).repeat(3, -1)
  img[18:21, 10:30] = 5
  img[1, 1] = img[38, 2] = 200
  np.testing.assert_array_equal(seg.fov_masks(img[None], fov="auto")[0], disc)
  assert seg.fov_masks(img[None], fov="none").all()
  np.testing.assert_array_equal(seg.fov_masks(img[None], fov="fov_mask", masks=disc[None, ..., None] * 255)[0], disc)
  np.testing.assert_array_equal(seg.fov_masks(img[None], fov=disc[None])[0], disc)


def test_whole_image_padding_and_odd_sizes(vessels):
  assert seg._pad_to_multiple(np.zeros((1, 45, 37, 3)), 32).shape == (1, 64, 64, 3)
  x = np.arange(2 * 5 * 3 * 1).reshape(2, 5, 3, 1)
  p = seg._pad_to_multiple(x, 4)
  assert p.shape == (2, 8, 4, 1)  # Pads of 3 rows and 1 column: reflect fits (each < the size).
  np.testing.assert_array_equal(p[:, :5, :3], x)
  np.testing.assert_array_equal(p[:, 5:, :3], x[:, [3, 2, 1]])  # Reflected about the last row.
  np.testing.assert_array_equal(seg._pad_to_multiple(np.ones((1, 3, 3, 1)), 8)[0, 3:, :, 0], 0)  # Too small.
  (te_x, te_m, te_f) = vessels["test"]
  odd = (te_x[:5, 3:48, 5:42], te_m[:5, 3:48, 5:42], te_f[:5, 3:48, 5:42])  # 45 x 37, 5 images.
  r = seg.finetune_segmentation(**_args(vessels, test_images=odd[0], test_masks=odd[1], test_fov=odd[2],
                                        steps=2), return_predictions=True, return_variables=True)
  assert r["probabilities"].shape == (5, 45, 37) and r["n_images"] == 5
  # Batched and one-by-one inference agree (inference-mode BatchNorm keeps images independent).
  predict = seg.predict_fn(seg.UNet(backbone=_backbone()[0], num_classes=1), MEAN, STD)
  v = r["variables"]
  one = seg.predict_images(predict, v["params"], v["batch_stats"], odd[0], batch=1)
  np.testing.assert_allclose(one, r["probabilities"], atol=1e-5)


def _config(data_dir, **kw):
  c = experiment.default_config()
  s = c.segmentation
  s.builder, s.builder_config, s.data_dir = "synthetic_fundus", "vessels", data_dir
  s.fov, s.patch_size, s.steps, s.batch_size, s.learning_rate = "fov_mask", 32, 4, 16, 1e-2  # Shares test 1's compile.
  s.seeds = (0, 1)
  for k, v in kw.items():
    setattr(s, k, v)
  return c


def test_run_writes_results_and_resumes(data_dir, vessels, tmp_path, monkeypatch):
  del vessels  # Builds the data set once for the module.
  bb, v = _backbone()
  encoders = {"random init": (bb, v)}
  res = seg_mode.run(_config(data_dir), tmp_path, encoders=encoders)
  out = tmp_path / "segmentation"
  saved = json.loads((out / "results.json").read_text())
  enc = saved["encoders"]["random init"]
  assert sorted(enc["seeds"]) == ["0", "1"] and enc["n"] == 2
  for metric in ("dice", "auroc", "accuracy", "sensitivity", "specificity"):
    values = [enc["seeds"][s][metric] for s in ("0", "1")]
    assert enc["mean"][metric] == pytest.approx(np.mean(values))
    assert enc["std"][metric] == pytest.approx(np.std(values, ddof=1))
  assert saved["fov"] == "fov_mask" and saved["num_test"] == 16
  md = (out / "results.md").read_text()
  assert "| encoder | Dice | AUROC | accuracy | sensitivity | specificity |" in md
  assert "| random init | " in md and "Protocol: " in md and "fov_mask" in md
  assert (out / "overlays_random_init.png").stat().st_size > 1000
  assert res["encoders"]["random init"]["mean"] == enc["mean"]

  def boom(**_):
    raise AssertionError("a finished result was recomputed")

  monkeypatch.setattr(seg, "finetune_segmentation", boom)
  # results.json written before config.segmentation.mask_mode existed: its settings lack the key. Binary
  # runs leave it out of settings (it holds its default), so such results are reused.
  before = _config(data_dir).segmentation.to_dict()
  del before["mask_mode"], before["encoders"], before["seeds"]
  c = experiment.default_config()
  before.update(fit=c.data.fit, mean=list(c.data.mean), std=list(c.data.std))
  old_file = json.loads((out / "results.json").read_text())
  for r in old_file["encoders"]["random init"]["seeds"].values():
    assert "mask_mode" not in r["settings"] and "mask_mode" not in r and "mask_mode" not in old_file
    r["settings"] = json.loads(json.dumps(before))
  (out / "results.json").write_text(json.dumps(old_file))
  again = seg_mode.run(_config(data_dir), tmp_path, encoders=encoders)
  assert again["encoders"]["random init"]["seeds"]["1"]["dice"] == enc["seeds"]["1"]["dice"]
  # Other settings are not reused.
  with pytest.raises(AssertionError, match="recomputed"):
    seg_mode.run(_config(data_dir, steps=5), tmp_path, encoders=encoders)


def test_errors(data_dir, vessels, tmp_path):
  (tr_x, tr_m, tr_f) = vessels["train"]
  with pytest.raises(ValueError, match=r"train_masks shape \(48, 64, 60\) does not match train_images"):
    seg.finetune_segmentation(**_args(vessels, train_masks=tr_m[:, :, :60]))
  empty = tr_f.copy()
  empty[3] = False
  with pytest.raises(ValueError, match=r"train_fov is empty .* image\(s\) \[3\]"):
    seg.finetune_segmentation(**_args(vessels, train_fov=empty))
  with pytest.raises(ValueError, match=r"fov mask 'fov_mask' is empty .* \[3\]"):
    seg.fov_masks(tr_x, fov="fov_mask", masks=empty)
  with pytest.raises(ValueError, match=r"fov='bogus' is not known; valid choices: \['auto', 'none'\]"):
    seg.fov_masks(tr_x, fov="bogus")
  with pytest.raises(ValueError, match=r"must be binary"):
    seg.finetune_segmentation(**_args(vessels, train_masks=tr_m * 255))
  with pytest.raises(ValueError, match=r"patch_size=48 must be a positive multiple of 32"):
    seg.finetune_segmentation(**_args(vessels, patch_size=48))
  with pytest.raises(ValueError, match=r"config.segmentation.fov='bogus' is not known .*'auto', 'none', "
                     r"'fov_mask', 'mask'"):
    seg_mode.run(_config(data_dir, fov="bogus"), tmp_path, encoders={})
  with pytest.raises(ValueError, match=r"mask_key='vessels' is not an image feature .* \['fov_mask', 'mask'\]"):
    seg_mode.run(_config(data_dir, mask_key="vessels"), tmp_path, encoders={})


def test_fov_auto_on_real_chase_db1(tmp_path):
  import builder_testing as bt
  root = bt.shared_dir("chase_db1")
  builder = pipeline.get_builder("chase_db1", config="original", data_dir=str(tmp_path), manual_dir=str(root))
  a = pipeline.load_split_arrays(builder, split="test", extra_keys=("mask",))
  fov = seg.fov_masks(a["image"], fov="auto")
  vessels = a["mask"][..., 0] > 0
  assert fov.shape == (8, 960, 999)
  for f, v in zip(fov, vessels):
    assert 0.6 < f.mean() < 0.8  # The circular FOV inside the 999x960 frame.
    assert f[v].mean() > 0.995  # Annotated vessels lie inside it.
    rows = np.flatnonzero(f.any(1))
    assert f[rows[0]:rows[-1] + 1].any(1).all()  # One solid region, no stray rows.


# ----------------------------------------------------------------------------------------------------
# mask_mode "classes".

def _discs(n, *, size=40, seed=0):
  """Noisy grey images with a disc (class 1) holding a brighter inner cup (class 2) at random places."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:size, :size]
  images = np.empty((n, size, size, 3), np.uint8)
  masks = np.empty((n, size, size), np.uint8)
  for i in range(n):
    cy, cx = rng.uniform(11, size - 11, 2)
    r = rng.uniform(7, 10)
    d = np.hypot(yy - cy, xx - cx)
    masks[i] = (d <= r).astype(np.uint8) + (d <= 0.5 * r)
    img = np.array([70.0, 150.0, 230.0])[masks[i]] + rng.normal(0, 20, (size, size))
    images[i] = np.clip(img, 0, 255).astype(np.uint8)[..., None]
  return images, masks


def _class_args(**kw):
  tr_x, tr_m = _discs(24, seed=0)
  te_x, te_m = _discs(6, seed=1)
  bb, v = _backbone()
  args = dict(backbone=bb, backbone_variables=v, train_images=tr_x, train_masks=tr_m, test_images=te_x,
              test_masks=te_m, patch_size=32, steps=40, batch_size=8, learning_rate=2e-2, weight_decay=1e-4,
              mean=MEAN, std=STD, seed=0, mask_mode="classes")
  args.update(kw)
  return args


def test_classes_unet_learns_disc_and_cup():
  args = _class_args()
  te_m = args["test_masks"]
  r = seg.finetune_segmentation(**args, return_predictions=True)
  probs = r["probabilities"]
  assert probs.shape == (*te_m.shape, 3) and r["num_classes"] == 3 and r["mask_mode"] == "classes"
  np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
  # Chance: a predictor drawing classes at their frequencies has an expected Dice of the class fraction.
  frac = np.asarray(r["class_fraction_in_fov"])
  np.testing.assert_allclose(frac, np.bincount(te_m.ravel(), minlength=3) / te_m.size)
  assert frac[1:].max() < 0.2
  assert r["dice"] > 0.8, r
  assert min(r["dice_class_1"], r["dice_class_2"]) > 0.7, r
  assert r["dice_ge_1"] > 0.9 and r["auroc"] > 0.95, r
  # The reported numbers are multiclass_segmentation_report's on the returned maps.
  assert r["dice"] == pytest.approx(sm.multiclass_segmentation_report(probs, te_m)["dice"])
  assert r["curve"]["loss"][-1] < r["curve"]["loss"][0] and "3 classes" in r["protocol"]
  assert "threshold" not in r and "vessel_fraction_in_fov" not in r
  json.dumps({k: v for k, v in r.items() if k != "probabilities"})


def test_multiclass_metrics_match_sklearn():
  from sklearn.metrics import f1_score, jaccard_score, roc_auc_score
  rng = np.random.default_rng(3)
  n, h, w, k = 3, 9, 11, 4
  true = rng.integers(0, k, (n, h, w))
  logits = rng.normal(size=(n, h, w, k)) + 1.5 * np.eye(k)[true]
  probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  valid = rng.random((n, h, w)) < 0.8
  for v in (None, valid, valid[0]):
    sel = np.ones((n, h, w), bool) if v is None else np.broadcast_to(v, (n, h, w))
    t, p, pr = true[sel], probs.argmax(-1)[sel], probs[sel]
    r = sm.multiclass_segmentation_report(probs, true, valid=v)
    fg = [1, 2, 3]
    dice = f1_score(t, p, labels=fg, average=None)
    iou = jaccard_score(t, p, labels=fg, average=None)
    auc = [roc_auc_score(t == c, pr[:, c]) for c in fg]
    for i, c in enumerate(fg):
      assert r[f"dice_class_{c}"] == pytest.approx(dice[i])
      assert r[f"iou_class_{c}"] == pytest.approx(iou[i])
      assert r[f"auroc_class_{c}"] == pytest.approx(auc[i])
      assert r[f"dice_ge_{c}"] == pytest.approx(f1_score(t >= c, p >= c))
    assert r["dice"] == pytest.approx(np.mean(dice)) and r["iou"] == pytest.approx(np.mean(iou))
    assert r["auroc"] == pytest.approx(np.mean(auc)) and r["accuracy"] == pytest.approx(np.mean(t == p))
    per = [np.mean(f1_score(true[i][sel[i]], probs[i].argmax(-1)[sel[i]], labels=fg, average=None))
           for i in range(n)]
    assert r["dice_per_image_mean"] == pytest.approx(np.mean(per))
    assert sorted(k_ for k_ in r if k_ not in ("dice_per_image_mean", "num_classes", "n_images")) == \
        sorted(sm.class_metric_names(k))
  # A class absent from truth and prediction: its Dice / IoU / AUROC are nan and left out of the means.
  t2 = np.where(true == 3, 0, true)
  p2 = probs.copy()
  p2[..., 3] = 0
  r = sm.multiclass_segmentation_report(p2, t2)
  assert np.isnan(r["dice_class_3"]) and np.isnan(r["auroc_class_3"])
  assert r["dice"] == pytest.approx(np.mean([r["dice_class_1"], r["dice_class_2"]]))
  # Soft Dice loss over the foreground classes, against its formula.
  y = np.eye(k)[true]
  want = np.mean([1 - (2 * (probs[..., c] * y[..., c]).sum() + 1) / (probs[..., c].sum() + y[..., c].sum() + 1)
                  for c in fg])
  assert float(seg.multiclass_soft_dice_loss(probs, y)) == pytest.approx(want, rel=1e-5)
  with pytest.raises(ValueError, match=r"true_labels has class id\(s\) \[4\] outside \[0, 3\]"):
    sm.multiclass_segmentation_report(probs, np.where(true == 3, 4, true))


def test_classes_run_on_refuge_dummy(tmp_path):
  from tfds_builders.refuge import dummy_data
  manual = dummy_data.write(tmp_path / "manual")
  c = experiment.default_config()
  s = c.segmentation
  s.builder, s.builder_config, s.data_dir, s.manual_dir = "refuge", "original", str(tmp_path / "tfds"), str(manual)
  s.mask_mode, s.fov, s.patch_size, s.steps, s.batch_size, s.learning_rate = "classes", "auto", 32, 3, 8, 1e-2
  s.seeds = (0,)
  experiment.validate(c)
  bb, v = _backbone()
  res = seg_mode.run(c, tmp_path, encoders={"random init": (bb, v)})
  out = tmp_path / "segmentation"
  saved = json.loads((out / "results.json").read_text())
  assert saved["dataset"] == "refuge/original" and saved["mask_mode"] == "classes" and saved["num_classes"] == 3
  assert saved["num_train"] == 5 and saved["num_test"] == 4 and saved["test_image_shape"] == "36x40"
  enc = saved["encoders"]["random init"]
  run0 = enc["seeds"]["0"]
  assert run0["settings"]["mask_mode"] == "classes" and run0["num_classes"] == 3
  for key in sm.class_metric_names(3):
    assert key in enc["mean"] and (np.isnan(run0[key]) or enc["mean"][key] == pytest.approx(run0[key]))
  assert 0 <= run0["accuracy"] <= 1 and res["encoders"]["random init"]["n"] == 1
  md = (out / "results.md").read_text()
  assert "| encoder | mean Dice | mean IoU | mean AUROC | accuracy | Dice 1 | Dice 2 |" in md
  assert "Dice >= 1 | Dice >= 2 |" in md and "class ids 0..2" in md and "| random init | " in md
  assert (out / "overlays_random_init.png").stat().st_size > 1000


def test_classes_errors(data_dir, tmp_path):
  args = _class_args(steps=1)
  te_m = args["test_masks"].copy()
  te_m[0, :2, :2] = 3
  with pytest.raises(ValueError, match=r"test_masks has class id\(s\) \[3\] >= num_classes=3 \(inferred"):
    seg.finetune_segmentation(**dict(args, test_masks=te_m))
  with pytest.raises(ValueError, match=r"train_masks hold only class 0"):
    seg.finetune_segmentation(**dict(args, train_masks=np.zeros_like(args["train_masks"])))
  with pytest.raises(ValueError, match=r"must hold integer class ids"):
    seg.finetune_segmentation(**dict(args, train_masks=args["train_masks"] + 0.5))
  with pytest.raises(ValueError, match=r"mask_mode='multi' is not known; valid choices: \['binary', 'classes'\]"):
    seg.finetune_segmentation(**dict(args, mask_mode="multi"))
  with pytest.raises(ValueError, match=r"num_classes=3 is for mask_mode='classes'"):
    seg.finetune_segmentation(**dict(args, mask_mode="binary", num_classes=3, train_masks=args["train_masks"] > 0,
                                     test_masks=args["test_masks"] > 0))
  with pytest.raises(ValueError, match=r"must be binary .* or mask_mode='classes' for class-id maps"):
    seg.finetune_segmentation(**dict(args, mask_mode="binary"))
  c = _config(data_dir, mask_mode="multi")
  with pytest.raises(ValueError, match=r"config.segmentation.mask_mode='multi' is not known; valid choices: "
                     r"'binary' .* or 'classes'"):
    experiment.validate(c)
  with pytest.raises(ValueError, match=r"config.segmentation.mask_mode='multi' is not known"):
    seg_mode.run(c, tmp_path, encoders={})
