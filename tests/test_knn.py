"""Weighted cosine kNN against a straightforward numpy loop (one test example at a time)."""
import numpy as np
import pytest

from medssl_jax.evals import knn


def reference_scores(train_x, train_y, test_x, *, num_classes, k, temperature, weighting):
  """Per test row: cosine similarities, stable sort (lower index first on ties), weighted votes."""
  train_n = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
  out = np.zeros((len(test_x), num_classes))
  for i, q in enumerate(test_x):
    sims = train_n @ (q / np.linalg.norm(q))
    nearest = np.argsort(-sims, kind="stable")[:k]
    for j in nearest:
      w = np.exp(sims[j] / temperature) if weighting == "exp" else 1.0
      if train_y.ndim == 2:
        out[i] += w * train_y[j]
      else:
        out[i, train_y[j]] += w
    total = sum(np.exp(sims[j] / temperature) if weighting == "exp" else 1.0 for j in nearest)
    out[i] /= total
  return out


def clustered(rng, n, *, num_classes=4, dim=16, spread=1.0):
  centres = rng.normal(size=(num_classes, dim)) * 2
  y = rng.integers(0, num_classes, n)
  return centres[y] + spread * rng.normal(size=(n, dim)), y


@pytest.mark.parametrize("weighting,k,temperature", [("exp", 20, 0.07), ("exp", 5, 0.5), ("uniform", 7, 0.07)])
def test_matches_numpy_loop(weighting, k, temperature):
  rng = np.random.default_rng(0)
  train_x, train_y = clustered(rng, 120)
  test_x, _ = clustered(rng, 37)
  # chunk_size=16 leaves a padded last chunk (37 = 2 * 16 + 5).
  pred, scores = knn.knn_classify(train_features=train_x, train_labels=train_y, test_features=test_x,
                                  num_classes=4, k=k, temperature=temperature, weighting=weighting, chunk_size=16)
  ref = reference_scores(train_x, train_y, test_x, num_classes=4, k=k, temperature=temperature, weighting=weighting)
  np.testing.assert_allclose(scores, ref, atol=1e-5)
  np.testing.assert_array_equal(pred, ref.argmax(1))
  np.testing.assert_allclose(scores.sum(1), 1.0, atol=1e-5)


def test_k1_is_nearest_neighbour_and_chunking_is_invisible():
  rng = np.random.default_rng(1)
  train_x, train_y = clustered(rng, 50, num_classes=3)
  test_x = rng.normal(size=(23, 16))
  cos = (test_x / np.linalg.norm(test_x, axis=1, keepdims=True)) @ (
      train_x / np.linalg.norm(train_x, axis=1, keepdims=True)).T
  kw = dict(train_features=train_x, train_labels=train_y, test_features=test_x, num_classes=3, k=1)
  pred, scores = knn.knn_classify(**kw, chunk_size=8)
  np.testing.assert_array_equal(pred, train_y[cos.argmax(1)])
  np.testing.assert_array_equal(scores, np.eye(3)[train_y[cos.argmax(1)]])
  # Same answer whatever the chunk size (one chunk, padded chunks, chunk larger than the test set).
  for chunk_size in (1, 23, 64):
    np.testing.assert_allclose(knn.knn_scores(**kw, chunk_size=chunk_size), scores)


def test_documented_tie_breaking():
  # Three identical training rows at similarity exactly 1: k=2 takes the two lowest indices (0 and 1),
  # whose classes (2 and 1) then tie in the uniform vote: the lower class index (1) wins.
  train_x = np.array([[1.0, 0], [1, 0], [1, 0], [0, 1]])
  train_y = np.array([2, 1, 0, 0])
  pred, scores = knn.knn_classify(train_features=train_x, train_labels=train_y, test_features=[[3.0, 0]],
                                  num_classes=3, k=2, weighting="uniform")
  np.testing.assert_array_equal(scores, [[0, 0.5, 0.5]])
  assert pred.tolist() == [1]
  # With exp weights a closer neighbour outvotes two farther ones.
  train_x = np.array([[1.0, 0], [0.6, 0.8], [0.6, -0.8]])
  pred, scores = knn.knn_classify(train_features=train_x, train_labels=[0, 1, 1], test_features=[[1.0, 0.1]],
                                  num_classes=2, k=3, temperature=0.07)
  assert pred.tolist() == [0]
  w = np.exp(np.array([1.0, 0.6 * 1 + 0.8 * 0.1, 0.6 - 0.08]) / np.linalg.norm([1, 0.1]) / 0.07)
  np.testing.assert_allclose(scores[0], [w[0] / w.sum(), w[1:].sum() / w.sum()], rtol=1e-5)
  # Uniform weights: two votes beat one.
  pred, _ = knn.knn_classify(train_features=train_x, train_labels=[0, 1, 1], test_features=[[1.0, 0.1]],
                             num_classes=2, k=3, weighting="uniform")
  assert pred.tolist() == [1]


def test_small_temperature_does_not_overflow():
  rng = np.random.default_rng(2)
  train_x, train_y = clustered(rng, 40, num_classes=2)
  test_x, _ = clustered(rng, 5, num_classes=2)
  scores = knn.knn_scores(train_features=train_x, train_labels=train_y, test_features=test_x, num_classes=2,
                          k=10, temperature=0.005)
  assert np.all(np.isfinite(scores))
  # float64 holds exp(1 / 0.005) = e^200; float32 would overflow without the per-row shift.
  ref = reference_scores(train_x, train_y, test_x, num_classes=2, k=10, temperature=0.005, weighting="exp")
  np.testing.assert_allclose(scores, ref, atol=1e-4)


def test_multilabel_matches_numpy_loop():
  rng = np.random.default_rng(3)
  train_x = rng.normal(size=(60, 8))
  train_y = (rng.random((60, 5)) < 0.3).astype(int)
  test_x = rng.normal(size=(11, 8))
  pred, scores = knn.knn_classify(train_features=train_x, train_labels=train_y, test_features=test_x,
                                  num_classes=5, k=9, chunk_size=4)
  ref = reference_scores(train_x, train_y, test_x, num_classes=5, k=9, temperature=0.07, weighting="exp")
  np.testing.assert_allclose(scores, ref, atol=1e-5)
  np.testing.assert_array_equal(pred, (ref >= 0.5).astype(int))


def test_knn_eval_separable_data():
  rng = np.random.default_rng(4)
  train_x, train_y = clustered(rng, 200, num_classes=3, spread=0.2)
  test_x, test_y = clustered(np.random.default_rng(4), 200, num_classes=3, spread=0.2)  # Same centres.
  r = knn.knn_eval(train_features=train_x, train_labels=train_y, test_features=test_x[:50],
                   test_labels=test_y[:50], num_classes=3)
  assert r["accuracy"] == 1.0 and r["auroc"] == 1.0 and len(r["auroc_per_class"]) == 3
  assert r["k"] == 20 and "k=20" in r["protocol"] and "exp(sim/0.07)" in r["protocol"]
  # Multi-label: a class absent from the test targets is skipped and reported.
  ml_train = np.stack([train_y == 0, train_y == 1, np.zeros_like(train_y)], 1).astype(int)
  ml_test = np.stack([test_y == 0, test_y == 1, np.zeros_like(test_y)], 1).astype(int)[:50]
  r = knn.knn_eval(train_features=train_x, train_labels=ml_train, test_features=test_x[:50],
                   test_labels=ml_test, num_classes=3)
  assert r["auroc"] == 1.0 and r["auroc_skipped_classes"] == [2] and np.isnan(r["auroc_per_class"][2])
  assert r["accuracy"] == 1.0


def test_errors():
  x, y = np.ones((5, 3)), np.array([0, 1, 0, 1, 0])
  kw = dict(train_features=x, train_labels=y, test_features=x, num_classes=2)
  with pytest.raises(ValueError, match=r"k=6 is larger than the training set \(5 examples\)"):
    knn.knn_scores(**kw, k=6)
  with pytest.raises(ValueError, match="k must be a positive integer"):
    knn.knn_scores(**kw, k=0)
  with pytest.raises(ValueError, match="weighting must be one of"):
    knn.knn_scores(**kw, k=2, weighting="linear")
  with pytest.raises(ValueError, match="temperature must be"):
    knn.knn_scores(**kw, k=2, temperature=0.0)
  with pytest.raises(ValueError, match=r"train_labels must lie in \[0, num_classes=2\)"):
    knn.knn_scores(**{**kw, "train_labels": np.array([0, 1, 2, 0, 0])}, k=2)
  with pytest.raises(ValueError, match="test_features have 4 dimensions"):
    knn.knn_scores(**{**kw, "test_features": np.ones((2, 4))}, k=2)
  with pytest.raises(ValueError, match="train_labels must have 5 rows"):
    knn.knn_scores(**{**kw, "train_labels": y[:4]}, k=2)
  with pytest.raises(ValueError, match="non-finite"):
    knn.knn_scores(**{**kw, "test_features": np.full((2, 3), np.nan)}, k=2)
