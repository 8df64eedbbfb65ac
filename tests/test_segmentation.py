"""Segmentation metrics against sklearn on flattened pixels; the ResNet U-Net's shapes, backbone parameter
tree, and a short overfit on synthetic disc masks."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from medssl_jax.evals import segmentation_metrics as sm
from medssl_jax.models import resnet
from medssl_jax.models.unet import UNet, resnet_feature_maps


def _data(seed=0, n=3, h=12, w=10):
  rng = np.random.default_rng(seed)
  true = rng.random((n, h, w)) < 0.3
  scores = np.clip(0.35 * true + rng.random((n, h, w)) * 0.7, 0, 1).round(2)  # Rounded: ties occur.
  valid = rng.random((n, h, w)) < 0.8
  return scores, true.astype(np.uint8), valid


@pytest.mark.parametrize("use_valid", [False, True])
def test_metrics_match_sklearn(use_valid):
  scores, true, valid = _data()
  v = valid if use_valid else None
  sel = valid if use_valid else np.ones_like(valid)
  pred = scores >= 0.5
  t, p, s = true[sel], pred[sel], scores[sel]
  assert sm.dice(pred, true, valid=v) == pytest.approx(f1_score(t, p))
  assert sm.pixel_auroc(scores, true, valid=v) == pytest.approx(roc_auc_score(t, s))
  assert sm.pixel_accuracy(pred, true, valid=v) == pytest.approx(np.mean(t == p))
  r = sm.segmentation_report(scores, true, valid=v)
  tp, fn, tn, fp = np.sum(p & (t == 1)), np.sum(~p & (t == 1)), np.sum(~p & (t == 0)), np.sum(p & (t == 0))
  assert r["dice"] == pytest.approx(f1_score(t, p))
  assert r["auroc"] == pytest.approx(roc_auc_score(t, s))
  assert r["accuracy"] == pytest.approx(np.mean(t == p))
  assert r["sensitivity"] == pytest.approx(tp / (tp + fn))
  assert r["specificity"] == pytest.approx(tn / (tn + fp))
  per = [f1_score(true[i][sel[i]], pred[i][sel[i]]) for i in range(len(true))]
  assert r["dice_per_image_mean"] == pytest.approx(np.mean(per))
  assert r["n_images"] == 3


def test_report_shared_fov_and_threshold():
  scores, true, valid = _data(seed=1)
  fov = valid[0]
  r = sm.segmentation_report(scores, true, valid=fov, threshold=0.3)
  full = np.broadcast_to(fov, true.shape)
  assert r["dice"] == pytest.approx(f1_score(true[full], scores[full] >= 0.3))
  assert r["auroc"] == pytest.approx(roc_auc_score(true[full], scores[full]))


def test_dice_edge_cases():
  z = np.zeros((4, 4), np.uint8)
  assert np.isnan(sm.dice(z, z))
  assert sm.dice(z, np.eye(4)) == 0.0
  assert sm.dice(np.eye(4, dtype=bool), np.eye(4)) == 1.0
  assert np.isnan(sm.pixel_auroc(np.random.rand(4, 4), z))
  # Everything outside the FOV is ignored.
  assert sm.dice(np.ones((4, 4)), np.eye(4), valid=np.eye(4)) == 1.0


def test_metric_errors():
  with pytest.raises(ValueError, match=r"pred_mask shape \(4, 4\) does not match true_mask shape \(4, 5\)"):
    sm.dice(np.zeros((4, 4)), np.zeros((4, 5)))
  with pytest.raises(ValueError, match=r"true_mask must be binary.*0\.5"):
    sm.dice(np.zeros((4, 4)), np.full((4, 4), 0.5))
  with pytest.raises(ValueError, match=r"pred_mask must be binary"):
    sm.pixel_accuracy(np.full((4, 4), 2), np.zeros((4, 4)))
  with pytest.raises(ValueError, match=r"valid shape \(3, 3\)"):
    sm.pixel_auroc(np.zeros((4, 4)), np.zeros((4, 4)), valid=np.ones((3, 3)))
  with pytest.raises(ValueError, match=r"must both be \[N, H, W\]"):
    sm.segmentation_report(np.zeros((4, 4)), np.zeros((4, 4)))
  with pytest.raises(ValueError, match=r"scores \(2, 4, 4\) and true_masks \(2, 4, 5\)"):
    sm.segmentation_report(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))
  with pytest.raises(ValueError, match=r"probabilities in \[0, 1\]"):
    sm.segmentation_report(np.full((2, 4, 4), 3.0), np.zeros((2, 4, 4)))
  with pytest.raises(ValueError, match=r"valid shape \(4, 4, 4\)"):
    sm.segmentation_report(np.zeros((2, 4, 4)), np.zeros((2, 4, 4)), valid=np.ones((4, 4, 4)))


@pytest.mark.parametrize("stem", ["cifar", "imagenet"])
@pytest.mark.parametrize("size", [32, 64])
def test_unet_shapes_and_backbone_tree(stem, size):
  backbone = resnet("resnet18", stem=stem, width_multiplier=0.125)
  model = UNet(backbone=backbone, num_classes=2)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, size, size, 3)), jnp.float32)
  variables = model.init(jax.random.PRNGKey(0), x, train=False)
  plain = backbone.init(jax.random.PRNGKey(1), x, train=False)
  for col in ("params", "batch_stats"):
    assert (jax.tree.map(jnp.shape, variables[col]["backbone"])
            == jax.tree.map(jnp.shape, plain[col]))
  # Pretrained backbone weights drop in and give the backbone's own stage maps.
  variables = {c: {**variables[c], "backbone": plain[c]} for c in variables}
  logits = model.apply(variables, x, train=False)
  assert logits.shape == (2, size, size, 2) and logits.dtype == jnp.float32
  _, stages = backbone.apply(plain, x, train=False, return_stages=True)
  maps = model.apply(variables, x, method=lambda m, x: resnet_feature_maps(m.backbone, x, train=False))
  assert len(maps) == 5
  for a, b in zip(maps[1:], stages):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
  stem_size = size if stem == "cifar" else size // 2
  assert maps[0].shape == (2, stem_size, stem_size, 8) and float(maps[0].min()) >= 0.0


def test_unet_decoder_widths():
  backbone = resnet("resnet18", stem="imagenet", width_multiplier=0.125)
  x = jnp.zeros((1, 32, 32, 3))
  v = UNet(backbone=backbone, decoder_widths=(16, 8, 8, 4, 2)).init(jax.random.PRNGKey(0), x, train=False)
  assert v["params"]["up1_conv1"]["kernel"].shape[-1] == 16
  assert v["params"]["up_full_conv2"]["kernel"].shape[-1] == 2
  with pytest.raises(ValueError, match=r"decoder_widths=\(4, 4\) needs 4 \(or 5\)"):
    UNet(backbone=backbone, decoder_widths=(4, 4)).init(jax.random.PRNGKey(0), x, train=False)


def _discs(n=4, size=32, seed=0):
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:size, :size]
  masks, images = [], []
  for _ in range(n):
    cy, cx = rng.uniform(10, size - 10, 2)
    r = rng.uniform(5, 9)
    m = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.float32)
    img = 0.8 * m[..., None] * np.array([1.0, 0.6, 0.3]) + 0.15 * rng.normal(size=(size, size, 3))
    masks.append(m)
    images.append(img)
  return np.stack(images).astype(np.float32), np.stack(masks)


def test_unet_overfits_discs():
  images, masks = _discs()
  model = UNet(backbone=resnet("resnet18", stem="cifar", width_multiplier=0.125, bn_momentum=0.5))
  variables = model.init(jax.random.PRNGKey(0), images, train=False)
  params, stats = variables["params"], variables["batch_stats"]
  tx = optax.adam(1e-2)
  opt = tx.init(params)

  @jax.jit
  def step(params, stats, opt):
    def loss_fn(p):
      logits, new = model.apply({"params": p, "batch_stats": stats}, images, train=True, mutable=["batch_stats"])
      return optax.sigmoid_binary_cross_entropy(logits[..., 0], masks).mean(), new["batch_stats"]
    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), stats, opt, loss

  for _ in range(30):
    params, stats, opt, loss = step(params, stats, opt)
  logits = model.apply({"params": params, "batch_stats": stats}, images, train=False)
  probs = np.asarray(jax.nn.sigmoid(logits[..., 0]))
  report = sm.segmentation_report(probs, masks.astype(np.uint8))
  assert report["dice"] > 0.8, (report, float(loss))
