"""Neural-collapse measures against straightforward numpy loops; layer-wise features of a tiny ResNet
SSLModel; t-SNE / PCA maps of separated blobs."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from medssl_jax.augment import views as views_lib
from medssl_jax.evals import representation as rep
from medssl_jax.models import MLPHead, SSLModel, resnet
from medssl_jax.objectives.swav import SwAVHead
from medssl_jax.train.step import normalize


def reference_nc(x, y, weighting):
  """Papyan et al.'s definitions with explicit D x D matrices and loops."""
  x = np.asarray(x, np.float64)
  classes = sorted(set(y.tolist()))
  c = len(classes)
  mus = {k: x[y == k].mean(0) for k in classes}
  if weighting == "balanced":
    mu_g = np.mean([mus[k] for k in classes], axis=0)
    sw = sum(np.cov(x[y == k].T, bias=True).reshape(x.shape[1], x.shape[1]) for k in classes) / c
  else:
    mu_g = x.mean(0)
    sw = sum(np.outer(h - mus[k], h - mus[k]) for h, k in zip(x, y)) / len(x)
  sb = sum(np.outer(mus[k] - mu_g, mus[k] - mu_g) for k in classes) / c
  nc1 = np.trace(sw @ np.linalg.pinv(sb, rcond=1e-10, hermitian=True)) / c
  norms = [np.linalg.norm(mus[k] - mu_g) for k in classes]
  cos = [np.dot(mus[a] - mu_g, mus[b] - mu_g) / (np.linalg.norm(mus[a] - mu_g) * np.linalg.norm(mus[b] - mu_g))
         for a, b in itertools.combinations(classes, 2)]
  correct = 0
  for h, k in zip(x, y):
    dists = [np.sum((h - mus[j]) ** 2) for j in classes]
    correct += classes[int(np.argmin(dists))] == k
  return {"nc1": nc1, "within_between_ratio": np.trace(sw) / np.trace(sb), "norm_cv": np.std(norms) / np.mean(norms),
          "cos_mean": np.mean(cos), "cos_std": np.std(cos), "cos_etf_gap": np.mean(np.abs(np.array(cos) + 1 / (c - 1))),
          "ncc_accuracy": correct / len(x), "num_classes": c}


@pytest.mark.parametrize("weighting", ["balanced", "samples"])
@pytest.mark.parametrize("n,d,c", [(90, 6, 4), (60, 3, 5), (40, 12, 2)])  # D < C included.
def test_matches_reference_on_imbalanced_data(weighting, n, d, c):
  rng = np.random.default_rng(n + d + c)
  y = rng.choice(c, size=n, p=np.arange(1, c + 1) / np.arange(1, c + 1).sum())
  x = rng.normal(size=(n, d)) + 1.5 * rng.normal(size=(c, d))[y]
  got = rep.neural_collapse(features=x.astype(np.float32), labels=y, weighting=weighting)
  want = reference_nc(x.astype(np.float32), y, weighting)
  for k, v in want.items():
    assert got[k] == pytest.approx(v, rel=1e-7, abs=1e-9), k


def test_weightings_agree_on_balanced_data():
  rng = np.random.default_rng(0)
  y = np.repeat(np.arange(3), 20)
  x = rng.normal(size=(60, 5)) + 2 * rng.normal(size=(3, 5))[y]
  a = rep.neural_collapse(features=x, labels=y, weighting="balanced")
  b = rep.neural_collapse(features=x, labels=y, weighting="samples")
  for k in a:
    assert a[k] == pytest.approx(b[k], rel=1e-10), k


def test_collapsed_clusters_vs_random_labels():
  rng = np.random.default_rng(1)
  c, d = 5, 16
  simplex = np.eye(c) - 1 / c  # Centred one-hots: an ETF in a (C-1)-dim subspace.
  basis = np.linalg.qr(rng.normal(size=(d, c)))[0]
  means = 10 * simplex @ basis.T
  y = np.repeat(np.arange(c), 40)
  tight = means[y] + 1e-3 * rng.normal(size=(len(y), d))
  r = rep.neural_collapse(features=tight, labels=y)
  assert r["nc1"] < 1e-4 and r["within_between_ratio"] < 1e-4
  assert r["norm_cv"] < 1e-3 and r["cos_std"] < 1e-3 and r["cos_etf_gap"] < 1e-3
  assert r["cos_mean"] == pytest.approx(-1 / (c - 1), abs=1e-3)
  assert r["ncc_accuracy"] == 1.0
  random_labels = rng.permutation(y)
  r = rep.neural_collapse(features=rng.normal(size=(len(y), d)), labels=random_labels)
  assert r["nc1"] > 10 and r["within_between_ratio"] > 10
  assert r["ncc_accuracy"] < 0.6


def test_degenerate_inputs():
  x = np.random.default_rng(0).normal(size=(10, 4))
  with pytest.raises(ValueError, match="at least 2 classes"):
    rep.neural_collapse(features=x, labels=np.zeros(10, int))
  with pytest.raises(ValueError, match="one label per row"):
    rep.neural_collapse(features=x, labels=np.zeros(9, int))
  with pytest.raises(ValueError, match="2-D"):
    rep.neural_collapse(features=x[0], labels=np.zeros(4, int))
  with pytest.raises(ValueError, match="weighting"):
    rep.neural_collapse(features=x, labels=np.arange(10) % 2, weighting="none")
  with pytest.raises(ValueError, match="NaN"):
    rep.neural_collapse(features=np.full((4, 2), np.nan), labels=np.arange(4) % 2)
  with pytest.raises(ValueError, match="integer"):
    rep.neural_collapse(features=x, labels=np.arange(10) % 2 + 0.5)
  # All class means equal: no between-class spread.
  r = rep.neural_collapse(features=np.tile([[1.0, -1.0], [-1.0, 1.0]], (4, 1)), labels=np.repeat([0, 1], 4))
  assert r["nc1"] == np.inf and r["within_between_ratio"] == np.inf
  # D = 1 < C = 3 and a single-sample class are fine.
  r = rep.neural_collapse(features=np.array([[0.0], [0.1], [1.0], [1.1], [3.0]]), labels=np.array([0, 0, 1, 1, 2]))
  assert np.isfinite(r["nc1"]) and r["ncc_accuracy"] == 1.0


def test_ncc_accuracy_train_test():
  rng = np.random.default_rng(2)
  tx, ty = rng.normal(size=(50, 3)), rng.integers(0, 4, 50)
  ex, ey = rng.normal(size=(30, 3)), rng.integers(0, 5, 30)  # Class 4 unseen in training: always wrong.
  mus = {k: tx[ty == k].mean(0) for k in range(4)}
  pred = [min(mus, key=lambda k: np.sum((h - mus[k]) ** 2)) for h in ex]
  got = rep.ncc_accuracy(train_features=tx, train_labels=ty, test_features=ex, test_labels=ey)
  assert got == pytest.approx(np.mean(np.array(pred) == ey))
  with pytest.raises(ValueError, match="both"):
    rep.ncc_accuracy(train_features=tx, train_labels=ty, test_features=ex)


def numpy_variables(model, *, size, seed=0):
  """Random variables drawn with numpy in the shapes of model.init: an RNG init of even a tiny ResNet
  takes 10-20 s to compile on loaded CPUs. Kernels ~ N(0, 1/fan_in); BatchNorm scales near 1, non-trivial
  running statistics (so inference mode differs from batch statistics)."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((2, size, size, 3)), train=False))

  def draw(path, s):
    name = jax.tree_util.keystr(path)
    if "kernel" in name:
      return rng.normal(size=s.shape) / np.sqrt(np.prod(s.shape[:-1]))
    if "scale" in name:
      return 1 + 0.1 * rng.normal(size=s.shape)
    if "var" in name:
      return rng.uniform(0.5, 1.5, size=s.shape)
    return 0.1 * rng.normal(size=s.shape)  # Biases, BatchNorm offsets and running means.

  return jax.tree_util.tree_map_with_path(lambda p, s: jnp.asarray(draw(p, s), s.dtype), shapes)


def test_layer_features_tiny_resnet():
  model = SSLModel(backbone=resnet("resnet18", stem="cifar", width_multiplier=0.125),
                   projector=MLPHead(hidden_dims=(32,), out_dim=16))
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (11, 32, 32, 3), dtype=np.uint8)  # Not a multiple of the batch: padding.
  variables = numpy_variables(model, size=32)
  mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
  assert rep.available_layers(model) == ["stage1", "stage2", "stage3", "backbone", "projector/hidden1", "projector/out"]
  feats = rep.layer_features(model, variables, images, image_size=32, mean=mean, std=std, batch_size=8)
  shapes = {k: v.shape for k, v in feats.items()}
  assert shapes == {"stage1": (11, 8), "stage2": (11, 16), "stage3": (11, 32), "backbone": (11, 64),
                    "projector/hidden1": (11, 32), "projector/out": (11, 16)}

  @jax.jit
  def reference(variables, x):
    x = normalize(views_lib.eval_view(x, size=32), mean, std)
    return model.apply(variables, x, method=model.embed), model.apply(variables, x, train=False)["projection"]

  embed, projection = reference(variables, jnp.asarray(images))
  np.testing.assert_allclose(feats["backbone"], embed, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(feats["projector/out"], projection, rtol=1e-4, atol=1e-4)
  out = variables["params"]["projector"]["out"]
  np.testing.assert_allclose(feats["projector/out"], feats["projector/hidden1"] @ out["kernel"] + out["bias"],
                             rtol=1e-4, atol=1e-4)
  assert (feats["projector/hidden1"] >= 0).all() and (feats["stage1"] >= 0).all()  # After ReLU.

  # A subset in a chosen order (same compile: the layers come from one forward pass).
  sub = rep.layer_features(model, variables, images, image_size=32, mean=mean, std=std, batch_size=8,
                           layers=["stage4", "stage2"])
  assert list(sub) == ["stage4", "stage2"]
  np.testing.assert_array_equal(sub["stage4"], feats["backbone"])
  np.testing.assert_array_equal(sub["stage2"], feats["stage2"])
  with pytest.raises(ValueError, match="stage9"):
    rep.layer_features(model, variables, images, image_size=32, mean=mean, std=std, layers=["stage9"])


def test_layer_features_other_projector():
  """A projector without return_layers (SwAV's head) exposes its "projection" as projector/out."""
  model = SSLModel(backbone=resnet("resnet18", stem="cifar", width_multiplier=0.125),
                   projector=SwAVHead(hidden_dims=(16,), out_dim=8, num_prototypes=10))
  assert rep.available_layers(model) == ["stage1", "stage2", "stage3", "backbone", "projector/out"]
  variables = numpy_variables(model, size=16)
  images = np.random.default_rng(1).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
  feats = rep.layer_features(model, variables, images, image_size=16, mean=(0.5,) * 3, std=(0.25,) * 3,
                             layers=["backbone", "projector/out"])
  x = (jnp.asarray(images, jnp.float32) / 255 - 0.5) / 0.25
  want = jax.jit(lambda v, x: model.apply(v, x, train=False)["projection"])(variables, x)
  np.testing.assert_allclose(feats["projector/out"], want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(feats["projector/out"], axis=1), 1.0, rtol=1e-5)


def knn_purity(coords, y, k=5):
  d = ((coords[:, None] - coords[None]) ** 2).sum(-1)
  np.fill_diagonal(d, np.inf)
  nn = np.argsort(d, axis=1)[:, :k]
  return float(np.mean(y[nn] == y[:, None]))


def blobs(seed=0, n_per=40, c=3, d=20):
  rng = np.random.default_rng(seed)
  y = np.repeat(np.arange(c), n_per)
  return rng.normal(size=(len(y), d)) + 8 * rng.normal(size=(c, d))[y], y


@pytest.mark.parametrize("method", ["tsne", "pca"])
def test_embedding_map(tmp_path, method):
  x, y = blobs()
  path = tmp_path / "maps" / f"{method}.png"
  coords = rep.embedding_map(features=x, labels=y, path=str(path), method=method,
                             class_names=["normal", "mild", "severe"], seed=3, title="test")
  assert coords.shape == (len(y), 2) and np.isfinite(coords).all()
  assert knn_purity(coords, y) > 0.9
  with Image.open(path) as im:
    im.verify()
  with Image.open(path) as im:
    assert im.format == "PNG" and 300 <= im.size[0] <= 3000 and 300 <= im.size[1] <= 3000
  again = rep.embedding_map(features=x, labels=y, path=str(tmp_path / "again.png"), method=method, seed=3,
                            class_names={0: "a", 1: "b", 2: "c"})
  np.testing.assert_array_equal(coords, again)


def test_embedding_map_errors(tmp_path):
  x, y = blobs(n_per=4)
  with pytest.raises(ValueError, match="method"):
    rep.embedding_map(features=x, labels=y, path=str(tmp_path / "a.png"), method="umap")
  with pytest.raises(ValueError, match="class_names"):
    rep.embedding_map(features=x, labels=y, path=str(tmp_path / "a.png"), method="pca", class_names=["a", "b"])
  with pytest.raises(ValueError, match="at least 4"):
    rep.embedding_map(features=x[:3], labels=y[:3], path=str(tmp_path / "a.png"))


def test_nc1_ignores_rounding_directions_of_a_shared_offset():
  """Features with a large shared offset: S_B has rank C - 1, and the rounding noise of the offset must
  not count as a C-th direction (it once made NC1 ~1e28). NC1 equals the float64 reference computed on
  offset-free features (NC1 does not depend on a shared offset)."""
  from medssl_jax.evals import representation
  worst = 0.0
  for seed in range(40):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(4), 12)
    base = 0.05 * rng.normal(size=(48, 8)) + 0.01 * rng.normal(size=(4, 8))[y]
    shifted = representation.neural_collapse(features=(base + 0.3).astype(np.float32), labels=y)["nc1"]
    plain = representation.neural_collapse(features=base.astype(np.float32), labels=y)["nc1"]
    worst = max(worst, abs(shifted - plain) / plain)
  assert worst < 1e-3, worst
