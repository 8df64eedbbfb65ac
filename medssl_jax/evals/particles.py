"""Particle-embedding evaluation: does a contrastive encoder separate microscopy particle types?

Three questions, each a pure function over frozen embeddings [N, D] and integer labels:

1. Cluster structure: `cluster_quality` (cosine silhouette; kNN purity = mean fraction of a point's k
   nearest cosine neighbours, itself excluded, that share its label) and a 2-D embedding map.
2. Few labels: `few_label_classifier` fits a logistic regression on `shots` labelled crops per class
   (seeded, nested k-per-class draws of medssl_jax/data/subsets.py) and scores the test split.
3. Novelty: does a class never seen in pretraining (config.particles.holdout_class) score higher than the
   known classes? `novelty_report` gives the AUROC of each score of NOVELTY_METHODS:
   "knn" (`novelty_scores`: 1 - mean cosine similarity to the k nearest reference embeddings),
   "local_density" (`local_density_scores`: that kNN distance relative to the neighbours' own, LOF-style:
   finds a novel cluster beside a tight known class, when a diffuse known class has larger kNN distances
   that "knn" ranks as more novel, the BCCD failure) and
   "mahalanobis" (`mahalanobis_scores`: Lee et al. 2018, class means with a shared covariance: finds a
   novel cluster offset along directions in which the known classes hardly vary).

medssl_jax/projects/particles/ ties them together for mode "particles".
"""
from __future__ import annotations

import numpy as np

from medssl_jax.data import subsets
from medssl_jax.evals import metrics as metrics_lib

PROTOCOL = {
    "features": "backbone features (ResNet: global average pool; ViT: class token), inference mode",
    "cluster_quality": "test split, all classes: silhouette (cosine, sklearn); kNN purity = mean fraction of the "
                       "k nearest cosine neighbours (self excluded) with the point's label",
    "few_label": "known classes only: `shots` training crops per class (subsets.select 'k=<shots>', seeded, nested "
                 "over shots), features standardised with the whole (capped) training split's mean/std (no labels "
                 "used), logistic regression (sklearn lbfgs, C=1), scored on the known-class test crops",
    "novelty": "AUROC of each novelty score for held-out-class test crops vs known-class test crops, the "
               "known-class training embeddings as reference",
    "novelty_knn": "1 - mean cosine similarity to the k nearest reference embeddings",
    "novelty_local_density": "d_k(q) / mean of d_k(r) over q's k nearest references r, d_k = mean cosine "
                             "distance to the k nearest references (for r: itself excluded); > 1 = sparser "
                             "than its neighbourhood (simplified LOF: no reachability distances)",
    "novelty_mahalanobis": "min over known classes of the Mahalanobis distance of the l2-normalised "
                           "embedding to the class mean, shared covariance of the labelled reference "
                           "embeddings + ridge 1e-3 * trace / D (Lee et al. 2018)",
}
NOVELTY_METHODS = ("knn", "local_density", "mahalanobis")
MAHALANOBIS_RIDGE = 1e-3  # Ridge added to the shared covariance, as a fraction of its mean eigenvalue.
_EPS = 1e-12
_CHUNK = 1024  # Rows of a similarity matrix computed at once (memory stays O(chunk x N)).


def _check_xy(features, labels, *, fn, name="features"):
  x = np.asarray(features, np.float64)
  if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
    raise ValueError(f"{fn}: {name} must be a non-empty 2-D array [N, D], got shape {x.shape}")
  if not np.all(np.isfinite(x)):
    raise ValueError(f"{fn}: {name} contain NaN or infinite values")
  if labels is None:
    return x, None
  y = np.asarray(labels)
  if y.ndim != 1 or len(y) != len(x):
    raise ValueError(f"{fn}: labels for {name} must be 1-D with one entry per row (N={len(x)}), got shape {y.shape}")
  if not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f"{fn}: labels for {name} must be integer class ids, got dtype {y.dtype}")
  return x, y.astype(np.int64)


def _unit(x):
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), _EPS)


def _check_k(k, *, fn):
  if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
    raise ValueError(f"{fn}: k must be a positive integer, got {k!r}")
  return int(k)


def knn_purity(*, features, labels, k: int = 10) -> float:
  """Mean over points of the fraction of its k nearest neighbours (cosine similarity, the point itself
  excluded, ties broken by index) that share its label. k is capped at N - 1."""
  fn = "knn_purity"
  x, y = _check_xy(features, labels, fn=fn)
  k = min(_check_k(k, fn=fn), len(x) - 1)
  if k < 1:
    raise ValueError(f"{fn}: needs at least 2 points, got N={len(x)}")
  u = _unit(x)
  fractions = []
  for start in range(0, len(u), _CHUNK):
    sim = u[start:start + _CHUNK] @ u.T
    rows = np.arange(sim.shape[0])
    sim[rows, start + rows] = -np.inf  # Never one's own neighbour.
    nn = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    fractions.append((y[nn] == y[start:start + _CHUNK, None]).mean(axis=1))
  return float(np.concatenate(fractions).mean())


def cluster_quality(*, features, labels, k: int = 10) -> dict:
  """How well an embedding separates the classes: {"silhouette": sklearn silhouette score with the cosine
  metric (-1..1, nan with fewer than 2 classes or as many classes as points), "knn_purity": see `knn_purity`,
  "knn_purity_chance": its value for labels unrelated to the features (sum of squared class fractions: high
  for imbalanced data), "num_classes", "num_examples", "k" (as used, <= N - 1)}."""
  from sklearn.metrics import silhouette_score

  fn = "cluster_quality"
  x, y = _check_xy(features, labels, fn=fn)
  num_classes = len(np.unique(y))
  sil = float(silhouette_score(x, y, metric="cosine")) if 2 <= num_classes <= len(x) - 1 else float("nan")
  chance = float(np.sum((np.unique(y, return_counts=True)[1] / len(y)) ** 2))
  return {"silhouette": sil, "knn_purity": knn_purity(features=x, labels=y, k=k), "knn_purity_chance": chance,
          "num_classes": int(num_classes),
          "num_examples": int(len(x)), "k": int(min(_check_k(k, fn=fn), len(x) - 1))}


def few_label_classifier(*, train_features, train_labels, test_features, test_labels, shots=(1, 5, 10),
                         seeds=(0, 1, 2), num_classes: int, C: float = 1.0) -> dict:
  """Logistic-regression probes trained on `shots` labelled examples per class.

  For each shots value and seed, `subsets.select(train_labels, spec='k=<shots>', seed=seed)` picks the
  labelled examples (stratified; nested: for one seed the 1-shot set lies inside the 5-shot set). Features
  are standardised with the mean / std of all `train_features` (labels unused: unlabelled data is free in
  this setting), then a multinomial logistic regression (sklearn, lbfgs, inverse L2 strength `C`) is fit
  and scored on the test set. Labels must lie in [0, num_classes) and every class must appear in training.

  Returns {str(shots): {"shots", "accuracy_mean", "accuracy_std", "balanced_accuracy_mean",
  "balanced_accuracy_std" (mean per-class recall over the classes in the test set: imbalanced data such as
  BCCD's RBC majority), "auroc_mean", "auroc_std" (sample std over seeds, nan for one seed),
  "per_seed": [{"seed", "accuracy", "balanced_accuracy", "auroc", "num_labelled"}]}}.
  """
  from sklearn.linear_model import LogisticRegression

  fn = "few_label_classifier"
  xtr, ytr = _check_xy(train_features, train_labels, fn=fn, name="train_features")
  xte, yte = _check_xy(test_features, test_labels, fn=fn, name="test_features")
  if xtr.shape[1] != xte.shape[1]:
    raise ValueError(f"{fn}: train_features have {xtr.shape[1]} columns but test_features {xte.shape[1]}")
  for name, y in (("train_labels", ytr), ("test_labels", yte)):
    if y.min() < 0 or y.max() >= num_classes:
      raise ValueError(f"{fn}: {name} must lie in [0, {num_classes}) (num_classes), got range [{y.min()}, {y.max()}]")
  missing = sorted(set(range(num_classes)) - set(ytr.tolist()))
  if missing:
    raise ValueError(f"{fn}: classes {missing} have no training examples; remap labels to the classes present")
  if isinstance(shots, int) or not shots or not all(isinstance(s, int) and s > 0 for s in shots):
    raise ValueError(f"{fn}: shots must be a non-empty tuple of positive integers, got {shots!r}")
  if isinstance(seeds, int) or not seeds:
    raise ValueError(f"{fn}: seeds must be a non-empty tuple of integers, got {seeds!r}")
  counts = np.bincount(ytr, minlength=num_classes)
  if max(shots) > counts.min():
    raise ValueError(f"{fn}: {max(shots)} shots per class requested but class {int(counts.argmin())} has only "
                     f"{int(counts.min())} training examples")
  mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
  xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
  out = {}
  for k in shots:
    runs = []
    for seed in seeds:
      idx = subsets.select(ytr, spec=f"k={k}", seed=int(seed))
      clf = LogisticRegression(C=C, max_iter=1000)
      clf.fit(xtr[idx], ytr[idx])
      probs = np.zeros((len(xte), num_classes))
      probs[:, clf.classes_] = clf.predict_proba(xte)
      auc, _ = metrics_lib.auroc(yte, probs)
      pred = probs.argmax(axis=1)
      balanced = float(np.mean([np.mean(pred[yte == c] == c) for c in np.unique(yte)]))
      runs.append({"seed": int(seed), "accuracy": metrics_lib.accuracy(yte, probs), "balanced_accuracy": balanced,
                   "auroc": float(auc), "num_labelled": int(len(idx))})
    acc_m, acc_s, _ = metrics_lib.mean_std([r["accuracy"] for r in runs])
    bal_m, bal_s, _ = metrics_lib.mean_std([r["balanced_accuracy"] for r in runs])
    aucs = [r["auroc"] for r in runs]
    auc_m, auc_s = (metrics_lib.mean_std(aucs)[:2] if np.all(np.isfinite(aucs)) else (float("nan"),) * 2)
    out[str(k)] = {"shots": int(k), "accuracy_mean": acc_m, "accuracy_std": acc_s, "balanced_accuracy_mean": bal_m,
                   "balanced_accuracy_std": bal_s, "auroc_mean": auc_m,
                   "auroc_std": auc_s, "per_seed": runs}
  return out


def novelty_scores(*, reference_features, query_features, k: int = 10) -> np.ndarray:
  """Per query row: 1 - mean cosine similarity to its k nearest reference rows (k capped at the number
  of references). Higher = farther from everything seen, i.e. more novel. Returns float64 [M]."""
  fn = "novelty_scores"
  r, _ = _check_xy(reference_features, None, fn=fn, name="reference_features")
  q, _ = _check_xy(query_features, None, fn=fn, name="query_features")
  if r.shape[1] != q.shape[1]:
    raise ValueError(f"{fn}: reference_features have {r.shape[1]} columns but query_features {q.shape[1]}")
  k = min(_check_k(k, fn=fn), len(r))
  r, q = _unit(r), _unit(q)
  out = []
  for start in range(0, len(q), _CHUNK):
    sim = q[start:start + _CHUNK] @ r.T
    top = -np.partition(-sim, k - 1, axis=1)[:, :k]  # The k largest similarities (order irrelevant).
    out.append(1.0 - top.mean(axis=1))
  return np.concatenate(out)


def _knn_distances(queries, references, k, *, exclude_self=False):
  """(indices [M, k] of the k nearest references by cosine similarity, ties broken by index; their mean
  cosine distance [M]). Rows must be unit vectors; with exclude_self, queries are the references and a
  row is never its own neighbour."""
  idx, dist = [], []
  for start in range(0, len(queries), _CHUNK):
    sim = queries[start:start + _CHUNK] @ references.T
    if exclude_self:
      rows = np.arange(sim.shape[0])
      sim[rows, start + rows] = -np.inf
    nn = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    idx.append(nn)
    dist.append(1.0 - np.take_along_axis(sim, nn, axis=1).mean(axis=1))
  return np.concatenate(idx), np.concatenate(dist)


def local_density_scores(*, reference_features, query_features, k: int = 10) -> np.ndarray:
  """Per query row q: d_k(q) / mean over q's k nearest references r of d_k(r) (a simplified LOF).

  d_k(x) is the mean cosine distance (1 - cosine similarity) from x to its k nearest reference rows; for a
  reference row r those exclude r itself. So a query in a region as dense as its neighbours scores about 1
  and one sparser than its neighbourhood (a novel cluster beside a tight known class, farther from it than
  that class's members are from each other) scores > 1. Unlike Breunig et al.'s LOF there are no
  reachability distances and d_k is the mean rather than the k-th distance. k is capped at the number of
  references - 1; neighbour ties are broken by reference index; the denominator is floored at 1e-12
  (duplicate references). Float64 [M].
  """
  fn = "local_density_scores"
  r, _ = _check_xy(reference_features, None, fn=fn, name="reference_features")
  q, _ = _check_xy(query_features, None, fn=fn, name="query_features")
  if r.shape[1] != q.shape[1]:
    raise ValueError(f"{fn}: reference_features have {r.shape[1]} columns but query_features {q.shape[1]}")
  if len(r) < 2:
    raise ValueError(f"{fn}: needs at least 2 reference rows (a reference's neighbours exclude itself), got {len(r)}")
  k = min(_check_k(k, fn=fn), len(r) - 1)
  r, q = _unit(r), _unit(q)
  _, ref_dist = _knn_distances(r, r, k, exclude_self=True)
  nn, query_dist = _knn_distances(q, r, k)
  return query_dist / np.maximum(ref_dist[nn].mean(axis=1), _EPS)


def mahalanobis_scores(*, reference_features, reference_labels, query_features,
                       ridge: float = MAHALANOBIS_RIDGE) -> np.ndarray:
  """Per query row: min over the reference classes c of sqrt((q - mu_c)^T S^-1 (q - mu_c)) (Lee et al. 2018).

  All rows are l2-normalised first. mu_c is the mean of class c's reference rows; S is the shared (tied)
  within-class covariance, sum over references of (r - mu_{y_r})(r - mu_{y_r})^T / N, plus
  ridge * trace(S) / D on the diagonal (D = feature dimension) so that it is invertible when N <= D or the
  embedding is degenerate. Higher = farther from every known class. Float64 [M].
  """
  fn = "mahalanobis_scores"
  r, y = _check_xy(reference_features, reference_labels, fn=fn, name="reference_features")
  if y is None:
    raise ValueError(f"{fn}: reference_labels are required (one integer class id per reference row)")
  q, _ = _check_xy(query_features, None, fn=fn, name="query_features")
  if r.shape[1] != q.shape[1]:
    raise ValueError(f"{fn}: reference_features have {r.shape[1]} columns but query_features {q.shape[1]}")
  if not (isinstance(ridge, (int, float)) and not isinstance(ridge, bool) and ridge > 0):
    raise ValueError(f"{fn}: ridge must be a number > 0 (fraction of the mean covariance eigenvalue), got {ridge!r}")
  r, q = _unit(r), _unit(q)
  classes, inverse = np.unique(y, return_inverse=True)
  means = np.stack([r[inverse == i].mean(axis=0) for i in range(len(classes))])
  centred = r - means[inverse]
  cov = centred.T @ centred / len(r)
  scale = np.trace(cov) / cov.shape[0]
  if not scale > 0:
    raise ValueError(f"{fn}: every reference row equals its class mean (zero within-class covariance); the "
                     "Mahalanobis distance is undefined")
  cov[np.diag_indices_from(cov)] += ridge * scale
  chol = np.linalg.cholesky(cov)
  best = np.full(len(q), np.inf)
  for mu in means:
    # ||L^-1 (q - mu)||^2 = (q - mu)^T S^-1 (q - mu) for S = L L^T.
    z = np.linalg.solve(chol, (q - mu).T)
    best = np.minimum(best, np.sqrt(np.sum(z * z, axis=0)))
  return best


def novelty_report(*, reference_features, query_features, query_is_novel, reference_labels=None, k: int = 10,
                   methods=NOVELTY_METHODS, ridge: float = MAHALANOBIS_RIDGE) -> dict:
  """The AUROC of each novelty score in `methods` (names of NOVELTY_METHODS) for separating novel queries
  (query_is_novel True: e.g. the held-out class) from known ones (0.5 = chance, 1 = every novel query
  scores above every known one; < 0.5 = novel queries look MORE familiar than known ones).

  reference_features: the known-class embeddings the scores compare with (e.g. known training crops);
  reference_labels: their integer classes (needed by "mahalanobis" only). k: neighbours of "knn" and
  "local_density"; ridge: see `mahalanobis_scores`.

  Returns {method: {"auroc", "mean_score_novel", "mean_score_known", "num_novel", "num_known"} plus "k" (as
  used) for "knn" and "local_density", "ridge" and "num_classes" for "mahalanobis"}, in `methods` order.
  """
  fn = "novelty_report"
  if isinstance(methods, str) or not isinstance(methods, (tuple, list)) or len(set(methods)) != len(methods) \
      or any(m not in NOVELTY_METHODS for m in methods):
    raise ValueError(f"{fn}: methods must be a tuple of distinct names from {list(NOVELTY_METHODS)}, got {methods!r}")
  if "mahalanobis" in methods and reference_labels is None:
    raise ValueError(f"{fn}: method 'mahalanobis' needs reference_labels (integer class ids of the references)")
  num_queries = len(_check_xy(query_features, None, fn=fn, name="query_features")[0])
  num_refs = len(_check_xy(reference_features, None, fn=fn, name="reference_features")[0])
  novel = np.asarray(query_is_novel)
  if novel.dtype != bool or novel.shape != (num_queries,):
    raise ValueError(f"{fn}: query_is_novel must be a boolean array with one entry per query row ({num_queries}), "
                     f"got dtype {novel.dtype} and shape {novel.shape}")
  if novel.all() or not novel.any():
    raise ValueError(f"{fn}: needs both novel and known queries, got {int(novel.sum())} novel of {len(novel)}")
  out = {}
  for method in methods:
    extra = {}
    if method == "knn":
      scores = novelty_scores(reference_features=reference_features, query_features=query_features, k=k)
      extra["k"] = int(min(k, num_refs))
    elif method == "local_density":
      scores = local_density_scores(reference_features=reference_features, query_features=query_features, k=k)
      extra["k"] = int(min(k, num_refs - 1))
    else:
      scores = mahalanobis_scores(reference_features=reference_features, reference_labels=reference_labels,
                                  query_features=query_features, ridge=ridge)
      extra.update(ridge=float(ridge), num_classes=int(len(np.unique(np.asarray(reference_labels)))))
    out[method] = {"auroc": metrics_lib.binary_auroc(novel, scores), "mean_score_novel": float(scores[novel].mean()),
                   "mean_score_known": float(scores[~novel].mean()), "num_novel": int(novel.sum()),
                   "num_known": int((~novel).sum()), **extra}
  return out


def novelty_auroc(*, reference_features, query_features, query_is_novel, k: int = 10) -> dict:
  """AUROC of `novelty_scores` ("knn") for separating novel queries from known ones: `novelty_report`'s
  "knn" entry, {"auroc", "mean_score_novel", "mean_score_known", "num_novel", "num_known", "k"}."""
  return novelty_report(reference_features=reference_features, query_features=query_features,
                        query_is_novel=np.asarray(query_is_novel, bool), k=k, methods=("knn",))["knn"]
