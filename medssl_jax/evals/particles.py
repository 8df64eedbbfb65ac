"""Particle-embedding evaluation (issue 7): does a contrastive encoder separate microscopy particle types?

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
   novel cluster offset along directions in which the known classes hardly vary). For the question to be
   fair the held-out class must be left out of pretraining too: `pretrain_indices` gives the training
   records without it.

`run` ties them together for mode "particles" and writes <workdir>/particles/summary.json, summary.md and
embedding_<encoder>_<method>.png (test split; the held-out class drawn on top, outlined).
"""
from __future__ import annotations

import json
import os
import time

import jax
import numpy as np

from medssl_jax import config as config_lib
from medssl_jax.data import pipeline
from medssl_jax.data import subsets
from medssl_jax.evals import linear_probe as probe_lib
from medssl_jax.evals import metrics as metrics_lib
from medssl_jax.evals import representation

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
NOVELTY_METHODS = config_lib.NOVELTY_METHODS  # One list of names: config validation and the scores read it.
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


def holdout_label(builder, holdout_class: str) -> int | None:
  """The label id of `holdout_class` in the builder's 'label' ClassLabel (None for ""); a clear error naming
  the valid class names otherwise."""
  if not holdout_class:
    return None
  names = pipeline.class_names(builder)
  if holdout_class not in names:
    raise ValueError(f"config.particles.holdout_class={holdout_class!r} is not a class of dataset "
                     f"{builder.name!r}; valid: {names} (or '' for none)")
  return names.index(holdout_class)


def pretrain_indices(builder, split: str, holdout_class: str) -> np.ndarray | None:
  """Record indices (sorted, int64) of `split` whose label is not `holdout_class`: the records pretraining
  may see, so that the held-out class is truly unseen. None when holdout_class is "" (the whole split);
  pass the result as `indices=` of pipeline.make_train_iterator."""
  label = holdout_label(builder, holdout_class)
  if label is None:
    return None
  y = np.asarray(pipeline.read_column(builder, split=split, key="label"), np.int64)
  keep = np.flatnonzero(y != label).astype(np.int64)
  if not len(keep):
    raise ValueError(f"split {split!r} of {builder.name!r} holds only {holdout_class!r} records; nothing is left "
                     f"to pretrain on")
  return keep


def _capped_indices(n: int, cap: int, seed: int):
  if not cap or n <= cap:
    return None
  return np.sort(np.random.default_rng(seed).choice(n, size=cap, replace=False))


def _slug(name: str) -> str:
  from medssl_jax.analysis import slug  # Local: analysis imports experiment (heavier).
  return slug(name)


def _highlight_plot(coords, y, names, holdout, *, path, title):
  """The embedding map again, the held-out class drawn last with larger outlined markers."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  import matplotlib

  fig = Figure(figsize=(7, 6), dpi=120)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  cmap = matplotlib.colormaps["tab10"]
  size = float(np.clip(2000.0 / max(len(y), 1), 2.0, 30.0))
  classes = [c for c in np.unique(y) if c != holdout] + ([holdout] if holdout in y else [])
  for i, c in enumerate(classes):
    sel = y == c
    if c == holdout:
      ax.scatter(coords[sel, 0], coords[sel, 1], s=max(4 * size, 30.0), color="crimson", marker="*", alpha=0.95,
                 linewidths=0.3, edgecolors="black", label=f"{names[c]} ({int(sel.sum())}, held out of pretraining)")
    else:
      ax.scatter(coords[sel, 0], coords[sel, 1], s=size, color=cmap(i % 10), alpha=0.6, linewidths=0,
                 label=f"{names[c]} ({int(sel.sum())})")
  ax.set_title(title)
  ax.set_xticks([])
  ax.set_yticks([])
  ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
  fig.tight_layout()
  fig.savefig(path, format="png")


def run(config, workdir: str, *, encoders, builder, mesh=None) -> dict:
  """mode "particles": the three questions of the module docstring for each encoder.

  encoders: {name: (model, variables)} or experiment's {name: (model, variables, recalibrate)}; with
  recalibrate True (a random init) BatchNorm statistics are re-estimated on the known-class training images
  first. data.train_split and data.test_split are loaded (each capped at particles.max_examples records, a
  seeded subset in split order), encoded at views[0]'s crop size, and scored. With a held-out class, each
  encoder's result has "novelty_methods" ({method: `novelty_report` entry} for particles.novelty_methods) and,
  when "knn" is among them, "novelty" (the "knn" entry, as in summaries before novelty_methods existed).
  Writes <workdir>/particles/summary.json, summary.md and one embedding map PNG per encoder (process 0
  only); returns the summary dict.
  """
  t0 = time.perf_counter()
  p, d, e = config.particles, config.data, config.eval
  workdir = os.path.abspath(workdir)
  from medssl_jax import experiment  # Local: experiment is the caller (mode "particles").
  dataset = experiment.dataset_name(builder)
  names = pipeline.class_names(builder)
  if not names:
    raise ValueError(f"particles: dataset {dataset!r} has no ClassLabel 'label' feature (particle types)")
  holdout = holdout_label(builder, p.holdout_class)
  methods = tuple(p.novelty_methods)
  size = config.augment.views[0].crop_size
  prep = dict(image_size=size, mean=tuple(d.mean), std=tuple(d.std))

  data = {}
  for role, split in (("train", d.train_split), ("test", d.test_split)):
    n = pipeline.num_examples(builder, split)
    idx = _capped_indices(n, p.max_examples, config.seed)
    arrays = pipeline.load_split_arrays(builder, split=split, image_size=d.image_size, fit=d.fit, indices=idx)
    y = np.asarray(arrays["label"])
    if y.ndim != 1:
      raise ValueError(f"particles: split {split!r} of {dataset!r} has multi-label labels {y.shape}; one particle "
                       "type per crop is needed")
    data[role] = {"split": split, "num_records": int(n), "image": arrays["image"], "label": y.astype(np.int64),
                  "indices": None if idx is None else idx.tolist()}
  train_y, test_y = data["train"]["label"], data["test"]["label"]
  known = [c for c in range(len(names)) if c != holdout]
  remap = np.full(len(names), -1, np.int64)
  remap[known] = np.arange(len(known))
  train_known = train_y != holdout if holdout is not None else np.ones(len(train_y), bool)
  test_known = test_y != holdout if holdout is not None else np.ones(len(test_y), bool)
  if holdout is not None and not np.any(~test_known):
    raise ValueError(f"particles: the test split {d.test_split!r} (as capped) has no {p.holdout_class!r} records; "
                     "the novelty AUROC needs some (raise particles.max_examples)")

  out_dir = os.path.join(workdir, "particles")
  write = jax.process_index() == 0
  if write:
    os.makedirs(out_dir, exist_ok=True)
  counts = lambda y: {names[c]: int(np.sum(y == c)) for c in range(len(names))}
  summary = {
      "dataset": dataset, "classes": names, "holdout_class": p.holdout_class, "input_size": int(size),
      "splits": {role: {"split": v["split"], "num_records": v["num_records"], "num_examples": int(len(v["label"])),
                        "class_counts": counts(v["label"]), "record_indices": v["indices"]}
                 for role, v in data.items()},
      "shots": list(p.shots), "shot_seeds": list(p.shot_seeds), "knn_k": int(p.knn_k),
      "novelty_methods": list(methods),
      "embedding_method": p.embedding_method, "protocol": PROTOCOL, "output_dir": out_dir, "encoders": {},
  }
  for enc_name, entry in encoders.items():
    model, variables = entry[0], entry[1]
    recalibrate = bool(entry[2]) if len(entry) > 2 else False
    t1 = time.perf_counter()
    if recalibrate:
      variables = probe_lib.recalibrate_batch_stats(model, variables, data["train"]["image"][train_known],
                                                    batch_size=e.batch_size, **prep)
    feats = {role: probe_lib.extract_features(model, variables, v["image"], batch_size=e.batch_size, mesh=mesh,
                                              **prep).astype(np.float64) for role, v in data.items()}
    result = {"cluster_quality": cluster_quality(features=feats["test"], labels=test_y, k=p.knn_k)}
    result["few_label"] = few_label_classifier(
        train_features=feats["train"][train_known], train_labels=remap[train_y[train_known]],
        test_features=feats["test"][test_known], test_labels=remap[test_y[test_known]], shots=tuple(p.shots),
        seeds=tuple(p.shot_seeds), num_classes=len(known))
    if holdout is not None and methods:
      report = novelty_report(reference_features=feats["train"][train_known],
                              reference_labels=remap[train_y[train_known]], query_features=feats["test"],
                              query_is_novel=~test_known, k=p.knn_k, methods=methods)
      result["novelty_methods"] = report
      if "knn" in report:
        result["novelty"] = report["knn"]  # The key (and numbers) of summaries before novelty_methods.
    if p.embedding_method != "none" and write:
      path = os.path.join(out_dir, f"embedding_{_slug(enc_name)}_{p.embedding_method}.png")
      title = f"{enc_name}: {dataset} '{d.test_split}' ({p.embedding_method}, N={len(test_y)})"
      coords = representation.embedding_map(features=feats["test"], labels=test_y, path=path,
                                            method=p.embedding_method, class_names=names, seed=config.seed,
                                            title=title)
      if holdout is not None:
        _highlight_plot(coords, test_y, names, holdout, path=path, title=title)
      result["embedding_map"] = path
    result["wall_clock_s"] = round(time.perf_counter() - t1, 1)
    q = result["cluster_quality"]
    print(f"particles [{enc_name}]: silhouette {q['silhouette']:.3f}, kNN purity {q['knn_purity']:.3f}"
          + "".join(f", novelty AUROC {m} {v['auroc']:.3f}" for m, v in result.get("novelty_methods", {}).items())
          + f" ({result['wall_clock_s']:.0f}s)", flush=True)
    summary["encoders"][enc_name] = result
  summary["wall_clock_s"] = round(time.perf_counter() - t0, 1)
  table = format_summary(summary)
  print("\n" + table + "\n", flush=True)
  if write:
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
      json.dump(summary, f, indent=2)
    with open(os.path.join(out_dir, "summary.md"), "w") as f:
      f.write(table + "\n")
  return summary


def _f(v, digits=3):
  return "n/a" if v is None or not np.isfinite(v) else f"{v:.{digits}f}"


def _pm(mean, std):
  return _f(mean) if not np.isfinite(std) else f"{_f(mean)} ± {_f(std)}"


def _novelty_results(result: dict) -> dict:
  """{method: entry} of one encoder's result; summaries before novelty_methods had only "novelty" (knn)."""
  if "novelty_methods" in result:
    return result["novelty_methods"]
  return {"knn": result["novelty"]} if "novelty" in result else {}


def format_summary(summary: dict) -> str:
  """The summary as Markdown: cluster quality and the novelty AUROC of each method per encoder (for "knn"
  also the mean scores of the held-out and known crops), then few-label accuracy / AUROC."""
  s = summary
  tr, te = s["splits"]["train"], s["splits"]["test"]
  split_line = lambda v: (f"'{v['split']}' {v['num_examples']} of {v['num_records']} ("
                          + ", ".join(f"{k} {n}" for k, n in v["class_counts"].items()) + ")")
  hold = s["holdout_class"]
  methods = []
  for r in s["encoders"].values():
    methods += [m for m in _novelty_results(r) if m not in methods]
  header, rule = "", ""
  for m in methods:
    header += f" novelty AUROC {m} ({hold}) |" + (f" knn score {hold} / known |" if m == "knn" else "")
    rule += "---|" * (2 if m == "knn" else 1)
  lines = [f"# Particle embeddings: {s['dataset']}", "",
           f"Train {split_line(tr)}; test {split_line(te)}; encoder input {s['input_size']} px.",
           f"Held-out class (not pretrained on, not in the few-label classes): {hold!r}." if hold else
           "No held-out class (novelty not measured).",
           *[f"- {k}: {v}" for k, v in s["protocol"].items()], "",
           f"| encoder | silhouette (cosine) | kNN purity (k={s['knn_k']}) | kNN purity at chance |" + header,
           "|---|---|---|---|" + rule]
  for enc, r in s["encoders"].items():
    q = r["cluster_quality"]
    row = f"| {enc} | {_f(q['silhouette'])} | {_f(q['knn_purity'])} | {_f(q['knn_purity_chance'])} |"
    results = _novelty_results(r)
    for m in methods:
      nv = results.get(m)
      row += f" {_f(nv['auroc'] if nv else None)} |"
      if m == "knn":
        row += f" {_f(nv['mean_score_novel'])} / {_f(nv['mean_score_known'])} |" if nv else " n/a |"
    lines.append(row)
  lines += ["", f"Few-label logistic regression (mean ± std over seeds {s['shot_seeds']}):", "",
            "| encoder | labelled per class | accuracy | balanced accuracy | AUROC (macro OvR) |",
            "|---|---|---|---|---|"]
  for enc, r in s["encoders"].items():
    for k, m in r["few_label"].items():
      lines.append(f"| {enc} | {k} | {_pm(m['accuracy_mean'], m['accuracy_std'])} | "
                   f"{_pm(m['balanced_accuracy_mean'], m['balanced_accuracy_std'])} | "
                   f"{_pm(m['auroc_mean'], m['auroc_std'])} |")
  maps = [f"- {enc}: {os.path.basename(r['embedding_map'])}" for enc, r in s["encoders"].items() if "embedding_map" in r]
  if maps:
    lines += ["", "Embedding maps (test split):", *maps]
  return "\n".join(lines)
