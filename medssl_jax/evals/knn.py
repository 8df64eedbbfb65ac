"""Weighted k-nearest-neighbour classifier on frozen features (Wu et al. 2018; DINO, Caron et al. 2021).

Protocol (named in every report, see PROTOCOL): the features are the same frozen backbone features the
linear probe uses (`linear_probe.extract_features`: ResNet global average pool, ViT class token,
inference mode). Train and test features are L2-normalised (x / max(||x||, 1e-12)), so the dot product
is the cosine similarity. For each test example the k training examples of highest cosine similarity
vote for their label with weight exp(sim / T) ("exp", DINO's default T = 0.07, k = 20) or weight 1
("uniform"). The class scores are the summed votes divided by the summed weights (a distribution over
classes, used for AUROC); the prediction is the argmax of the scores. No parameters are fitted, so there
is no hyperparameter search and nothing is standardised.

Ties: among training examples of equal similarity at the k-th place, the lower training index wins
(`jax.lax.top_k`); among classes with equal votes, the lower class index wins (argmax). With continuous
features neither happens in practice; where the reference implementation in tests/test_knn.py differs
from this one, it is by float rounding of near-equal similarities only.

Multi-label targets (train labels [N, K] in {0, 1}): the score of class c is the weighted fraction of
the k neighbours that have c positive; a class is predicted positive when its score is >= 0.5.

Computation: the similarity matrix is never materialised whole. Test rows are processed in chunks of a
fixed size (the last chunk zero-padded, padding dropped), so one compile serves any number of test
examples; memory is O(chunk_size * num_train) for the similarities (256 x 50k float32 = 51 MB) plus the
training features. The similarity matmul runs at HIGHEST precision (no TF32/bf16 passes on GPU/TPU).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from medssl_jax.evals import metrics as metrics_lib
from medssl_jax.train import mesh as mesh_lib

PROTOCOL = ("weighted kNN: backbone features (ResNet: global average pool; ViT: class token), "
            "L2-normalised, cosine similarity, k={k} neighbours voting with weight {weighting}")

WEIGHTINGS = ("exp", "uniform")
_EPS = 1e-12


def protocol(*, k: int = 20, temperature: float = 0.07, weighting: str = "exp") -> str:
  """The PROTOCOL string with this run's hyperparameters filled in."""
  w = f"exp(sim/{temperature:g})" if weighting == "exp" else "1 (uniform)"
  return PROTOCOL.format(k=k, weighting=w)


def l2_normalize(x, *, eps: float = _EPS):
  """Rows divided by their L2 norm (clamped below at eps, so a zero row stays zero). numpy or jax."""
  xp = jnp if isinstance(x, jax.Array) else np
  return x / xp.maximum(xp.linalg.norm(x, axis=-1, keepdims=True), eps)


@functools.partial(jax.jit, static_argnames=("k", "uniform"))
def _chunk_votes(test_chunk, train_feats, train_targets, temperature, *, k, uniform):
  """Normalised votes [C, K] for one chunk of (unnormalised) test rows against normalised train rows.

  train_targets: [N, K] float one-hot (single-label) or multi-hot (multi-label) rows.
  """
  q = l2_normalize(test_chunk.astype(jnp.float32))
  sims = jnp.matmul(q, train_feats.T, precision=jax.lax.Precision.HIGHEST)  # [C, N]
  top_sims, top_idx = jax.lax.top_k(sims, k)  # [C, k], descending; ties -> lower index first.
  # The barrier keeps XLA:CPU's partial-sort TopK kernel: without it, arithmetic on top_sims makes the
  # compiler fall back to a full sort of the [C, N] similarities (about 25x slower at N = 50k).
  top_sims, top_idx = jax.lax.optimization_barrier((top_sims, top_idx))
  if uniform:
    w = jnp.ones_like(top_sims)
  else:
    # exp(sim / T) scaled by exp(-max_sim / T) per row: the normalised scores and the argmax are
    # unchanged, and exp cannot overflow (T = 0.07 gives up to e^28 between rows otherwise).
    w = jnp.exp((top_sims - top_sims[:, :1]) / temperature)
  votes = jnp.einsum("ck,ckj->cj", w, train_targets[top_idx], precision=jax.lax.Precision.HIGHEST)
  return votes / jnp.sum(w, axis=1, keepdims=True)


def _check_features(name, x):
  x = np.asarray(x)
  if x.ndim != 2 or not np.issubdtype(x.dtype, np.number):
    raise ValueError(f"{name} must be a numeric [N, D] array; got shape {x.shape} dtype {x.dtype}")
  if not np.all(np.isfinite(x)):
    raise ValueError(f"{name} contains non-finite values")
  return x.astype(np.float32)


def _targets(train_labels, num_classes, n_train):
  """[N, K] float32 vote targets and whether the task is multi-label."""
  y = np.asarray(train_labels)
  if y.shape[:1] != (n_train,):
    raise ValueError(f"train_labels must have {n_train} rows (one per training feature); got shape {y.shape}")
  if y.ndim == 2:
    if y.shape[1] != num_classes:
      raise ValueError(f"multi-label train_labels must be [N, num_classes={num_classes}]; got {y.shape}")
    if not np.all((y == 0) | (y == 1)):
      raise ValueError("multi-label train_labels must contain only 0 and 1")
    return y.astype(np.float32), True
  if y.ndim != 1:
    raise ValueError(f"train_labels must be [N] class indices or [N, K] multi-hot; got shape {y.shape}")
  if not np.issubdtype(y.dtype, np.integer):
    if not np.all(y == np.round(y)):
      raise ValueError(f"train_labels must be integer class indices; got dtype {y.dtype}")
    y = y.astype(np.int64)
  if y.size and (y.min() < 0 or y.max() >= num_classes):
    raise ValueError(f"train_labels must lie in [0, num_classes={num_classes}); got range [{y.min()}, {y.max()}]")
  return np.eye(num_classes, dtype=np.float32)[y], False


def knn_scores(*, train_features, train_labels, test_features, num_classes: int, k: int = 20,
               temperature: float = 0.07, weighting: str = "exp", chunk_size: int = 256) -> np.ndarray:
  """Class scores [N_test, num_classes] of the weighted cosine kNN classifier (see the module docstring).

  train_features [N, D] and test_features [M, D]: raw frozen features (normalised here).
  train_labels: [N] integer class indices, or [N, num_classes] multi-hot for multi-label tasks.
  Single-label scores are the normalised votes (each row sums to 1); multi-label scores are the
  weighted fraction of neighbours positive for each class.
  """
  train_x = _check_features("train_features", train_features)
  test_x = _check_features("test_features", test_features)
  if test_x.shape[1] != train_x.shape[1]:
    raise ValueError(f"test_features have {test_x.shape[1]} dimensions but train_features have {train_x.shape[1]}")
  if not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
    raise ValueError(f"num_classes must be a positive integer; got {num_classes!r}")
  n_train = len(train_x)
  if not isinstance(k, (int, np.integer)) or k < 1:
    raise ValueError(f"k must be a positive integer; got {k!r}")
  if k > n_train:
    raise ValueError(f"k={k} is larger than the training set ({n_train} examples); choose k <= {n_train}")
  if weighting not in WEIGHTINGS:
    raise ValueError(f"weighting must be one of {WEIGHTINGS}; got {weighting!r}")
  if weighting == "exp" and not (np.isfinite(temperature) and temperature > 0):
    raise ValueError(f"temperature must be a finite positive number; got {temperature!r}")
  if not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
    raise ValueError(f"chunk_size must be a positive integer; got {chunk_size!r}")
  targets, _ = _targets(train_labels, num_classes, n_train)

  train_dev = jax.device_put(l2_normalize(train_x))
  targets_dev = jax.device_put(targets)
  temp = jnp.float32(temperature if weighting == "exp" else 1.0)
  m = len(test_x)
  chunk = int(min(chunk_size, max(m, 1)))  # Never pad a small test set up to a large chunk.
  out = mesh_lib.apply_batched(
      lambda b: _chunk_votes(b["x"], train_dev, targets_dev, temp, k=int(k), uniform=weighting == "uniform"),
      {"x": test_x}, batch_size=chunk, mesh=None)
  return np.zeros((0, num_classes), np.float32) if out is None else out


def knn_classify(*, train_features, train_labels, test_features, num_classes: int, k: int = 20,
                 temperature: float = 0.07, weighting: str = "exp", chunk_size: int = 256):
  """(predictions, scores): predictions [M] = argmax of the scores (lowest class on ties), or for
  multi-label targets [M, K] = scores >= 0.5. Arguments as in `knn_scores`."""
  scores = knn_scores(train_features=train_features, train_labels=train_labels, test_features=test_features,
                      num_classes=num_classes, k=k, temperature=temperature, weighting=weighting,
                      chunk_size=chunk_size)
  if np.asarray(train_labels).ndim == 2:
    return (scores >= 0.5).astype(np.int64), scores
  return scores.argmax(axis=1), scores


def knn_eval(*, train_features, train_labels, test_features, test_labels, num_classes: int, k: int = 20,
             temperature: float = 0.07, weighting: str = "exp", chunk_size: int = 256) -> dict:
  """Scores the kNN classifier on a test split. Returns a JSON-ready dict.

  Single-label: accuracy, AUROC (metrics.auroc: binary -> positive-class score; multi-class -> mean
  one-vs-rest) and per-class AUROC. Multi-label: macro AUROC over the classes with both values in
  test_labels (metrics.multilabel_auroc), per-class AUROC (nan where skipped), the skipped classes,
  and the exact-match accuracy of scores >= 0.5. Also k, temperature, weighting and the protocol.
  """
  pred, scores = knn_classify(train_features=train_features, train_labels=train_labels,
                              test_features=test_features, num_classes=num_classes, k=k,
                              temperature=temperature, weighting=weighting, chunk_size=chunk_size)
  test_labels = np.asarray(test_labels)
  if test_labels.shape[0] != len(scores):
    raise ValueError(f"test_labels must have {len(scores)} rows (one per test feature); got shape {test_labels.shape}")
  result = {"k": int(k), "temperature": float(temperature), "weighting": weighting,
            "protocol": protocol(k=k, temperature=temperature, weighting=weighting)}
  if pred.ndim == 2:
    if test_labels.shape != pred.shape:
      raise ValueError(f"multi-label test_labels must have shape {pred.shape}; got {test_labels.shape}")
    auc, per_class, skipped = metrics_lib.multilabel_auroc(test_labels, scores)
    result.update(accuracy=float(np.mean(np.all(pred == test_labels, axis=1))), auroc=auc,
                  auroc_per_class=per_class.tolist(), auroc_skipped_classes=skipped)
  else:
    auc, per_class = metrics_lib.auroc(test_labels, scores)
    result.update(accuracy=metrics_lib.accuracy(test_labels, scores), auroc=auc,
                  auroc_per_class=per_class.tolist())
  return result
