"""SWCL stages 1-2: the FixMatch pseudo-labeller (losses against numpy loops, a tiny run, resume, reuse) and label
propagation (CAM against the feature-map x head-weights product and Grad-CAM, the folder layout, reuse, refusals).
Tiny: synthetic_fundus 'tiny' (32 px), ResNet-18 x0.125 with the CIFAR stem, 12 steps."""
import csv
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from medssl_jax.data import pipeline
from medssl_jax.evals import attention
from medssl_jax.models.resnet import ResNet
from medssl_jax.projects.swcl import propagate as prop
from medssl_jax.projects.swcl import pseudo_labeller as pl
from medssl_jax import experiment

STEPS = 12


def np_softmax(z):
  e = np.exp(z - z.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def np_sigmoid(z):
  return 1.0 / (1.0 + np.exp(-z))


def np_bce(z, t):
  p = np_sigmoid(z)
  return -(t * np.log(p) + (1 - t) * np.log(1 - p))


def np_bilinear(m, size):
  """Half-pixel-centre bilinear resize of one map [h, w] with edge clamping."""
  h, w = m.shape
  out = np.zeros((size, size))
  for y in range(size):
    sy = min(max((y + 0.5) * h / size - 0.5, 0.0), h - 1)
    y0 = int(np.floor(sy)); y1 = min(y0 + 1, h - 1); wy = sy - y0
    for x in range(size):
      sx = min(max((x + 0.5) * w / size - 0.5, 0.0), w - 1)
      x0 = int(np.floor(sx)); x1 = min(x0 + 1, w - 1); wx = sx - x0
      out[y, x] = ((1 - wy) * (1 - wx) * m[y0, x0] + (1 - wy) * wx * m[y0, x1]
                   + wy * (1 - wx) * m[y1, x0] + wy * wx * m[y1, x1])
  return out


# ----------------------------------------------------------------------------------------------------
# Losses.

def test_supervised_loss_matches_numpy():
  rng = np.random.default_rng(0)
  z = rng.normal(size=(5, 4)) * 2
  y = np.array([0, 3, 1, 1, 2])
  ref = np.mean([-np.log(np_softmax(z[i])[y[i]]) for i in range(5)])
  np.testing.assert_allclose(pl.supervised_loss(jnp.asarray(z), jnp.asarray(y), multi_label=False), ref, rtol=1e-5)
  t = (rng.uniform(size=(5, 4)) > 0.5).astype(np.float32)
  ref = np.mean([np_bce(z[i, k], t[i, k]) for i in range(5) for k in range(4)])
  np.testing.assert_allclose(pl.supervised_loss(jnp.asarray(z), jnp.asarray(t), multi_label=True), ref, rtol=1e-5)


def test_unlabelled_loss_single_label_matches_numpy_loop():
  rng = np.random.default_rng(1)
  weak = rng.normal(size=(6, 3)) * 3
  weak[0] = [10.0, 0.0, 0.0]      # Confident (p ~ 1).
  weak[1] = [0.0, 0.0, 0.0]       # Uniform: never confident at tau > 1/3.
  strong = rng.normal(size=(6, 3))
  tau = 0.8
  total, confident = 0.0, 0
  for i in range(6):
    p = np_softmax(weak[i])
    if p.max() >= tau:
      confident += 1
      total += -np.log(np_softmax(strong[i])[np.argmax(p)])
  loss, rate = pl.unlabelled_loss(jnp.asarray(weak), jnp.asarray(strong), threshold=tau, multi_label=False)
  np.testing.assert_allclose(loss, total / 6, rtol=1e-5)  # Averaged over ALL pool images, as FixMatch.
  np.testing.assert_allclose(rate, confident / 6, rtol=1e-6)
  assert 1 <= confident < 6
  # Edge cases: tau 0 keeps every image, tau above every confidence none (loss 0).
  loss0, rate0 = pl.unlabelled_loss(jnp.asarray(weak), jnp.asarray(strong), threshold=0.0, multi_label=False)
  ref0 = np.mean([-np.log(np_softmax(strong[i])[np.argmax(weak[i])]) for i in range(6)])
  np.testing.assert_allclose([loss0, rate0], [ref0, 1.0], rtol=1e-5)
  loss1, rate1 = pl.unlabelled_loss(jnp.asarray(weak[1:2]), jnp.asarray(strong[1:2]), threshold=0.5, multi_label=False)
  assert float(loss1) == 0.0 and float(rate1) == 0.0
  # No gradient reaches the weak view (its prediction is a fixed target).
  g_weak, g_strong = jax.grad(lambda w, s: pl.unlabelled_loss(w, s, threshold=tau, multi_label=False)[0],
                              argnums=(0, 1))(jnp.asarray(weak), jnp.asarray(strong))
  assert np.all(np.asarray(g_weak) == 0) and np.abs(np.asarray(g_strong)).sum() > 0


def test_unlabelled_loss_multi_label_matches_numpy_loop():
  rng = np.random.default_rng(2)
  weak = rng.normal(size=(4, 5)) * 3
  weak[0, :3] = [5.0, -5.0, 0.0]  # Confident positive, confident negative, unsure (p = 0.5).
  strong = rng.normal(size=(4, 5))
  tau = 0.9
  total, confident = 0.0, 0
  for i in range(4):
    for k in range(5):
      p = np_sigmoid(weak[i, k])
      if p >= tau or p <= 1 - tau:
        confident += 1
        total += np_bce(strong[i, k], float(p >= tau))
  loss, rate = pl.unlabelled_loss(jnp.asarray(weak), jnp.asarray(strong), threshold=tau, multi_label=True)
  np.testing.assert_allclose(loss, total / 20, rtol=1e-5)
  np.testing.assert_allclose(rate, confident / 20, rtol=1e-6)
  assert 2 <= confident < 20


def test_views_keep_shape_and_range():
  images = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
  key = jax.random.key(0)
  weak, strong = np.asarray(pl.weak_view(key, images)), np.asarray(pl.strong_view(key, images))
  for v in (weak, strong):
    assert v.shape == (4, 16, 16, 3) and v.dtype == np.float32 and v.min() >= 0 and v.max() <= 1
  np.testing.assert_array_equal(weak, np.asarray(pl.weak_view(key, images)))  # Keyed, deterministic.
  # A weak view is a flip + shift: on a constant image it changes nothing.
  flat = np.full((2, 16, 16, 3), 128, np.uint8)
  np.testing.assert_allclose(np.asarray(pl.weak_view(key, flat)), 128 / 255, rtol=1e-6)


# ----------------------------------------------------------------------------------------------------
# Stage 1: a tiny run.

@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("tfds")
  pipeline.get_builder("synthetic_fundus", data_dir=str(d), config="tiny")
  return str(d)


def make_config(tfds_dir, **swcl):
  c = experiment.default_config()
  c.mode = "pseudo_label"
  c.model.stem, c.model.width_multiplier = "cifar", 0.125
  lab = c.swcl.labelled
  lab.builder_config, lab.data_dir = "tiny", tfds_dir
  c.swcl.pool = ({"builder": "synthetic_fundus", "builder_config": "tiny", "split": "test", "data_dir": tfds_dir},)
  c.swcl.classifier_image_size, c.swcl.image_size, c.swcl.patch_size = 32, 48, 24
  c.swcl.steps, c.swcl.batch_size, c.swcl.eval_every = STEPS, 8, STEPS // 2
  c.swcl.confidence_threshold = 0.3  # Low, so the unlabelled term is active in a 12-step run.
  for k, v in swcl.items():
    c.swcl[k] = v
  return experiment.validate(c)


@pytest.fixture(scope="module")
def stage1(tfds_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("swcl"))
  config = make_config(tfds_dir)
  backbone, variables, summary = pl.train(config, workdir)
  return config, workdir, backbone, variables, summary


def test_stage1_trains_and_writes_outputs(stage1):
  config, workdir, backbone, variables, summary = stage1
  out = os.path.join(workdir, "pseudo_labeller")
  assert summary["classes"] == ["healthy", "mild", "moderate", "severe"] and not summary["multi_label"]
  assert (summary["num_labelled"], summary["num_val"], summary["num_pool"]) == (64, 32, 32)
  assert summary["steps"] == STEPS and summary["unlabelled_batch_size"] == 8
  assert [v["step"] for v in summary["val_curve"]] == [STEPS // 2, STEPS]
  assert 0.0 <= summary["final_val_auroc"] <= 1.0 and summary["final_val_auroc"] == summary["val_curve"][-1]["auroc"]
  assert all(np.isfinite([t["sup_loss"], t["unsup_loss"]]).all() and 0 <= t["mask_rate"] <= 1
             for t in summary["train_curve"])
  assert any(t["mask_rate"] > 0 and t["unsup_loss"] > 0 for t in summary["train_curve"])
  assert sorted(os.listdir(os.path.join(out, "checkpoints")), key=int) == [str(STEPS // 2), str(STEPS)]
  with open(os.path.join(out, "summary.json")) as f:
    assert json.load(f)["final_val_auroc"] == summary["final_val_auroc"]
  assert isinstance(backbone, ResNet)
  assert variables["params"]["head"]["kernel"].shape == (backbone.num_features, 4)
  assert set(variables) == {"params", "batch_stats"}


def test_stage1_second_call_loads_without_training(stage1, monkeypatch, capsys):
  config, workdir, _, variables, summary = stage1

  def no_training(*a, **k):
    raise AssertionError("a finished stage 1 must not train again")

  monkeypatch.setattr(pl, "_steps", no_training)
  _, again, summary2 = pl.train(config, workdir)
  assert "reused" in capsys.readouterr().out and summary2 == summary
  jax.tree.map(np.testing.assert_array_equal, again, jax.device_get(variables))
  _, loaded, _ = pl.load(config, workdir)
  jax.tree.map(np.testing.assert_array_equal, loaded, jax.device_get(variables))


def test_stage1_resumes_from_last_checkpoint(stage1, tmp_path):
  config, workdir, _, _, summary = stage1
  # An interrupted run: the last checkpoint and the summary never written.
  shutil.copytree(os.path.join(workdir, "pseudo_labeller"), tmp_path / "pseudo_labeller")
  shutil.rmtree(tmp_path / "pseudo_labeller" / "checkpoints" / str(STEPS))
  os.remove(tmp_path / "pseudo_labeller" / "summary.json")
  _, _, resumed = pl.train(config, str(tmp_path))
  assert resumed["resumed_from_step"] == STEPS // 2
  assert [v["step"] for v in resumed["val_curve"]] == [STEPS // 2, STEPS]
  assert resumed["val_curve"][0] == summary["val_curve"][0]
  np.testing.assert_allclose(resumed["final_val_auroc"], summary["final_val_auroc"], atol=0.05)


def test_stage1_sigterm_checkpoints_the_step_and_resumes(stage1, tfds_dir, tmp_path, monkeypatch):
  import signal
  from medssl_jax.train import guard
  config, _, _, variables, summary = stage1
  real = pl._Stream.batch

  def batch(self, step, size):  # SIGTERM arrives while step 5 runs.
    if step == 5 and self.seed[1] == 1:
      os.kill(os.getpid(), signal.SIGTERM)
    return real(self, step, size)

  monkeypatch.setattr(pl._Stream, "batch", batch)
  with pytest.raises(guard.Interrupted) as e:
    pl.train(config, str(tmp_path))
  assert e.value.code == 128 + signal.SIGTERM and e.value.step == 5
  assert sorted(os.listdir(tmp_path / "pseudo_labeller" / "checkpoints")) == ["5"]
  monkeypatch.setattr(pl._Stream, "batch", real)
  _, resumed_vars, resumed = pl.train(config, str(tmp_path))
  assert resumed["resumed_from_step"] == 5
  jax.tree.map(np.testing.assert_array_equal, resumed_vars, jax.device_get(variables))


def test_stage1_refuses_other_settings_and_missing_run(stage1, tfds_dir, tmp_path):
  _, workdir, _, _, _ = stage1
  with pytest.raises(ValueError, match=r"other settings.*steps: saved=12 now=13"):
    pl.train(make_config(tfds_dir, steps=STEPS + 1), workdir)
  with pytest.raises(FileNotFoundError, match="mode 'pseudo_label'"):
    pl.load(make_config(tfds_dir), str(tmp_path))


# ----------------------------------------------------------------------------------------------------
# Stage 2.

def test_cam_is_feature_map_times_head_weights_and_matches_grad_cam():
  backbone = ResNet(depth=18, stem="cifar", width_multiplier=0.125)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(3, 32, 32, 3)), jnp.float32)
  variables = backbone.init(jax.random.key(1), x, train=False)
  num_features, num_classes = backbone.num_features, 4
  kernel = rng.normal(size=(num_features, num_classes)).astype(np.float32)
  bias = rng.normal(size=num_classes).astype(np.float32)
  logits, cams = prop.class_activation_maps(backbone, variables, x, kernel=kernel, bias=bias)
  feats, stages = backbone.apply(variables, x, train=False, return_stages=True)
  a = np.asarray(stages[-1], np.float64)                      # [B, h, w, K]
  b, h, w, k = a.shape
  ref = np.zeros((b, num_classes, h, w))
  for c in range(num_classes):
    for i in range(h):
      for j in range(w):
        ref[:, c, i, j] = np.maximum(0.0, a[:, i, j, :] @ kernel[:, c])
  np.testing.assert_allclose(np.asarray(cams), ref, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.asarray(logits), np.asarray(feats) @ kernel + bias, rtol=1e-4, atol=1e-5)
  # Abnormality map with all weight on class c = Grad-CAM's (normalised) map for class c; a weighted one
  # against the numpy sum + bilinear upsampling + max normalisation.
  head = {"w": jnp.asarray(kernel), "b": jnp.asarray(bias)}
  for c in (1, 3):
    onehot = np.zeros((b, num_classes), np.float32); onehot[:, c] = 1
    mine = prop.abnormality_maps(cams, onehot, np.ones(num_classes), size=32)
    theirs = attention.grad_cam(backbone, variables, x, head=head, target=c)
    np.testing.assert_allclose(np.asarray(mine), np.asarray(theirs), atol=1e-5)
  probs = np_softmax(rng.normal(size=(b, num_classes)))
  abnormal = np.array([0, 1, 1, 1], np.float32)
  mine = np.asarray(prop.abnormality_maps(cams, probs, abnormal, size=40))
  for n in range(b):
    m = np_bilinear(sum(probs[n, c] * ref[n, c] for c in (1, 2, 3)), 40)
    np.testing.assert_allclose(mine[n], m / m.max(), atol=1e-5)


def test_abnormal_probability():
  probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
  np.testing.assert_allclose(prop.abnormal_probability(probs, [True, False, False], multi_label=False), [0.3, 0.9])
  np.testing.assert_allclose(prop.abnormal_probability(probs, [True, False, False], multi_label=True), [0.2, 0.6])


@pytest.fixture(scope="module")
def stage2(stage1):
  config, workdir, *_ = stage1
  junk = os.path.join(workdir, "propagation.partial")  # Left by an "interrupted" run: redone.
  os.makedirs(junk)
  open(os.path.join(junk, "junk.png"), "w").close()
  manifest = prop.propagate(config, workdir)
  return config, workdir, manifest


def test_propagation_layout(stage2):
  config, workdir, manifest = stage2
  out = os.path.join(workdir, "propagation")
  assert not os.path.exists(out + ".partial")
  classes = ["healthy", "mild", "moderate", "severe"]
  assert manifest["classes"] == classes and manifest["normal_classes"] == ["healthy"]
  assert manifest["multi_label"] is False and manifest["image_size"] == 48 and manifest["num_images"] == 32
  assert [s["source"] for s in manifest["sources"]] == ["synthetic_fundus/tiny:test"]
  assert manifest["pseudo_labeller"]["steps"] == STEPS
  assert sum(manifest["predicted_class_counts"].values()) == 32
  with open(os.path.join(out, "manifest.json")) as f:
    assert json.load(f) == manifest
  with open(os.path.join(out, "pseudo_labels.csv")) as f:
    rows = list(csv.DictReader(f))
    header = rows and list(rows[0])
  assert header == ["key", "source", "index", "patient_id", "eye", "abnormal_prob"] + [f"prob_{c}" for c in classes]
  assert [r["key"] for r in rows] == [f"{k:06d}" for k in range(32)]
  assert [int(r["index"]) for r in rows] == list(range(32))
  assert all(r["patient_id"] == f"synthetic_fundus/tiny:test:{r['index']}" for r in rows)  # No patient_id feature.
  eyes = pipeline.read_column(pipeline.get_builder("synthetic_fundus", data_dir=config.swcl.labelled.data_dir,
                                                   config="tiny"), split="test", key="eye")
  assert [r["eye"] for r in rows] == [("left", "right")[int(e)] for e in eyes]
  probs = np.array([[float(r[f"prob_{c}"]) for c in classes] for r in rows])
  np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
  np.testing.assert_allclose([float(r["abnormal_prob"]) for r in rows], 1.0 - probs[:, 0], atol=2e-6)
  positive = 0
  for r in rows:
    img = Image.open(os.path.join(out, "images", f"{r['key']}.png"))
    cam = Image.open(os.path.join(out, "cams", f"{r['key']}.png"))
    assert (img.mode, img.size, cam.mode, cam.size) == ("RGB", (48, 48), "L", (48, 48))
    c = np.asarray(cam)
    assert c.max() in (0, 255)
    positive += c.max() == 255
  assert positive > 0
  assert len(os.listdir(os.path.join(out, "images"))) == 32 and len(os.listdir(os.path.join(out, "cams"))) == 32
  assert Image.open(os.path.join(out, "cam_overlays.png")).size[0] > 100


def test_propagation_reused_and_refuses_other_settings(stage2, tfds_dir, monkeypatch):
  config, workdir, manifest = stage2
  csv_path = os.path.join(workdir, "propagation", "pseudo_labels.csv")
  mtime = os.path.getmtime(csv_path)

  def no_recompute(*a, **k):
    raise AssertionError("a complete propagation folder must be reused")

  monkeypatch.setattr(pl, "load", no_recompute)
  assert prop.propagate(config, workdir) == manifest
  assert os.path.getmtime(csv_path) == mtime
  with pytest.raises(ValueError, match=r"other settings.*normal_classes"):
    prop.propagate(make_config(tfds_dir, normal_classes=("healthy", "mild")), workdir)
  with pytest.raises(ValueError, match=r"other settings.*image_size"):
    prop.propagate(make_config(tfds_dir, image_size=64), workdir)
  with pytest.raises(ValueError, match=r"normal_classes names \['normal'\].*healthy"):
    prop.propagate(make_config(tfds_dir, normal_classes=("normal",)), workdir)


def test_multi_label_stages_1_and_2(tfds_dir, tmp_path, monkeypatch):
  # The tiny set's classes as 0/1 vectors (one on per image): the multi-label code path end to end, 2 steps.
  real = pl._load_labelled

  def multi_hot(config, size):
    d = real(config, size)
    for split in ("train", "val"):
      d[f"{split}_labels"] = np.eye(4, dtype=np.float32)[d[f"{split}_labels"]]
    return dict(d, multi_label=True)

  monkeypatch.setattr(pl, "_load_labelled", multi_hot)
  config = make_config(tfds_dir, steps=2, eval_every=0, confidence_threshold=0.55)
  _, _, summary = pl.train(config, str(tmp_path))
  assert summary["multi_label"] and [v["step"] for v in summary["val_curve"]] == [2]
  assert 0 <= summary["final_mask_rate"] <= 1 and summary["final_val_auroc"] is not None
  manifest = prop.propagate(config, str(tmp_path))
  assert manifest["multi_label"] is True and manifest["predicted_by"].startswith("probability >=")
  with open(tmp_path / "propagation" / "pseudo_labels.csv") as f:
    rows = list(csv.DictReader(f))
  probs = np.array([[float(r[f"prob_{c}"]) for c in manifest["classes"]] for r in rows])
  assert len(rows) == 32 and np.all((probs > 0) & (probs < 1))
  np.testing.assert_allclose([float(r["abnormal_prob"]) for r in rows], probs[:, 1:].max(axis=1), atol=1e-6)
