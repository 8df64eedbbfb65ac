"""Classification metrics as the field reports them (numpy, host side)."""
from __future__ import annotations

import numpy as np


def accuracy(labels, scores, mask=None) -> float:
  """Top-1 accuracy of argmax(scores) ([N, K]); binary scores of shape [N] are thresholded at 0.5."""
  labels = np.asarray(labels)
  scores = np.asarray(scores)
  pred = (scores >= 0.5).astype(labels.dtype) if scores.ndim == 1 else scores.argmax(axis=1)
  w = np.ones(len(labels)) if mask is None else np.asarray(mask, np.float64)
  return float(((pred == labels) * w).sum() / max(w.sum(), 1))


def binary_auroc(y_true, score) -> float:
  """ROC AUC via the Mann-Whitney U statistic with average ranks for ties.

  Returns nan when only one class is present (AUROC is undefined there).
  """
  y = np.asarray(y_true).astype(bool)
  s = np.asarray(score, np.float64)
  n_pos, n_neg = int(y.sum()), int((~y).sum())
  if n_pos == 0 or n_neg == 0:
    return float("nan")
  order = np.argsort(s, kind="mergesort")
  sorted_s = s[order]
  ranks = np.empty(len(s), np.float64)
  # Average ranks over runs of equal scores, 1-based.
  _, start_idx, counts = np.unique(sorted_s, return_index=True, return_counts=True)
  avg = start_idx + (counts + 1) / 2.0
  ranks[order] = np.repeat(avg, counts)
  return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def auroc(labels, scores) -> tuple[float, np.ndarray]:
  """AUROC as MedMNIST reports it: binary -> AUC of the positive-class score; multi-class -> mean
  one-vs-rest AUC. Returns (mean, per-class array). scores: [N, K] probabilities or logits."""
  labels = np.asarray(labels)
  scores = np.asarray(scores, np.float64)
  if scores.ndim == 1:
    a = binary_auroc(labels, scores)
    return a, np.array([a])
  k = scores.shape[1]
  if k == 2:
    a = binary_auroc(labels == 1, scores[:, 1])
    return a, np.array([a, a])
  per_class = np.array([binary_auroc(labels == c, scores[:, c]) for c in range(k)])
  return float(np.nanmean(per_class)), per_class


def quadratic_weighted_kappa(y_true, y_pred, *, num_classes: int | None = None) -> float:
  """Cohen's kappa with quadratic weights, the agreement metric for ordinal grades (e.g. DR grade 0-4).

  kappa = 1 - sum(W * O) / sum(W * E), with O the [K, K] confusion matrix (rows: y_true), E the outer
  product of the two marginal histograms divided by N, and W[i, j] = (i - j)^2. Grades are the integers
  0..K-1, with K = num_classes, or 1 + the largest grade seen when num_classes is None. Distances are
  grade differences, so a grade absent from both vectors still counts (this equals
  sklearn.metrics.cohen_kappa_score(weights='quadratic', labels=range(K)); sklearn's default
  labels=None renumbers the grades present and agrees only when every grade 0..K-1 occurs).
  y_pred: [N] predicted grades, or [N, K] scores whose argmax is the predicted grade.
  Returns nan when kappa is undefined (sum(W * E) == 0, e.g. every truth and prediction one grade).
  """
  y_true = np.asarray(y_true)
  y_pred = np.asarray(y_pred)
  if y_pred.ndim == 2:
    y_pred = y_pred.argmax(axis=1)
  if y_true.ndim != 1 or y_pred.shape != y_true.shape:
    raise ValueError(f"y_true and y_pred must be [N] grades of one length (or y_pred [N, K] scores); "
                     f"got shapes {y_true.shape} and {np.asarray(y_pred).shape}")
  for name, v in (("y_true", y_true), ("y_pred", y_pred)):
    if v.size and (np.any(v != np.round(v)) or v.min() < 0):
      raise ValueError(f"{name} must hold non-negative integer grades; got values in [{v.min()}, {v.max()}]")
  y_true, y_pred = y_true.astype(np.int64), y_pred.astype(np.int64)
  if len(y_true) == 0:
    return float("nan")
  k = int(max(y_true.max(), y_pred.max())) + 1 if num_classes is None else int(num_classes)
  if max(y_true.max(), y_pred.max()) >= k:
    raise ValueError(f"grades must lie in [0, num_classes={k}); got a maximum of {max(y_true.max(), y_pred.max())}")
  observed = np.zeros((k, k), np.float64)
  np.add.at(observed, (y_true, y_pred), 1.0)
  expected = np.outer(observed.sum(1), observed.sum(0)) / len(y_true)
  grades = np.arange(k, dtype=np.float64)
  w = (grades[:, None] - grades[None, :]) ** 2
  denom = float((w * expected).sum())
  if denom == 0.0:
    return float("nan")
  return float(1.0 - (w * observed).sum() / denom)


def multilabel_auroc(y_true, scores) -> tuple[float, np.ndarray, list[int]]:
  """Per-class and macro AUROC for multi-label targets (e.g. CheXpert, NIH ChestX-ray14, ODIR-5K).

  y_true: [N, K] in {0, 1}; scores: [N, K]. Class c's AUROC is binary_auroc(y_true[:, c], scores[:, c]).
  Classes whose targets hold a single value (AUROC undefined) are skipped: their per-class entry is
  nan and they are listed. Returns (macro mean over the other classes, nan if none; per-class [K];
  skipped class indices).
  """
  y_true = np.asarray(y_true)
  scores = np.asarray(scores, np.float64)
  if y_true.ndim != 2 or scores.shape != y_true.shape:
    raise ValueError(f"y_true and scores must both be [N, K]; got shapes {y_true.shape} and {scores.shape}")
  if not np.all((y_true == 0) | (y_true == 1)):
    raise ValueError("multi-label y_true must contain only 0 and 1")
  per_class = np.full(y_true.shape[1], np.nan)
  skipped = []
  for c in range(y_true.shape[1]):
    if np.unique(y_true[:, c]).size < 2:
      skipped.append(c)
    else:
      per_class[c] = binary_auroc(y_true[:, c], scores[:, c])
  macro = float(np.mean(per_class[~np.isnan(per_class)])) if len(skipped) < len(per_class) else float("nan")
  return macro, per_class, skipped


def classification_metrics(labels, probs) -> dict:
  """{"accuracy", "auroc", "auroc_per_class"} of class probabilities: single-label [N] labels with [N, K]
  softmax probabilities (argmax accuracy, mean one-vs-rest AUROC), or multi-label [N, K] 0/1 labels with
  [N, K] per-class probabilities (accuracy of every label thresholded at 0.5, macro AUROC over the classes
  whose AUROC is defined)."""
  labels, probs = np.asarray(labels), np.asarray(probs)
  if labels.ndim == 2:
    per = np.array([binary_auroc(labels[:, k], probs[:, k]) for k in range(labels.shape[1])])
    auc = float(np.nanmean(per)) if np.isfinite(per).any() else float("nan")
    acc = accuracy(labels.ravel().astype(np.int32), probs.ravel())
  else:
    auc, per = auroc(labels, probs)
    acc = accuracy(labels, probs)
  return {"accuracy": acc, "auroc": float(auc), "auroc_per_class": [float(a) for a in per]}


def bootstrap_ci(metric_fn, y_true, y_score, *, num_samples: int = 1000, alpha: float = 0.05, seed: int = 0,
                 stratified: bool = False) -> dict:
  """Percentile bootstrap confidence interval of metric_fn(y_true, y_score) -> float.

  Draws num_samples resamples of the N examples with replacement (rows of y_true and y_score together;
  numpy default_rng(seed), so the result is deterministic given the seed), evaluates the metric on each,
  and returns the alpha/2 and 1 - alpha/2 percentiles (numpy 'linear' interpolation) of those values.
  stratified=True resamples within each class of y_true ([N] labels) separately, keeping the class
  counts fixed (every resample then has every class, as AUROC needs). Resamples on which the metric is
  nan (e.g. AUROC with one class) are dropped and counted.

  Returns {"point": metric on the full data, "low", "high", "alpha", "num_samples": draws,
  "num_valid": resamples with a finite metric}. For metrics returning tuples wrap them, e.g.
  `lambda y, s: auroc(y, s)[0]`.
  """
  y_true = np.asarray(y_true)
  y_score = np.asarray(y_score)
  n = len(y_true)
  if n == 0 or len(y_score) != n:
    raise ValueError(f"y_true and y_score must have the same, non-zero number of rows; got {n} and {len(y_score)}")
  if not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
    raise ValueError(f"num_samples must be a positive integer; got {num_samples!r}")
  if not 0.0 < alpha < 1.0:
    raise ValueError(f"alpha must lie in (0, 1); got {alpha!r}")
  if stratified and y_true.ndim != 1:
    raise ValueError(f"stratified=True needs [N] class labels in y_true; got shape {y_true.shape}")

  def evaluate(idx):
    value = metric_fn(y_true[idx], y_score[idx])
    if isinstance(value, (tuple, list, dict)) or np.ndim(value) != 0:
      raise ValueError(f"metric_fn must return a scalar; got a {type(value).__name__} "
                       "(wrap metrics returning tuples, e.g. lambda y, s: auroc(y, s)[0])")
    return float(value)

  point = evaluate(np.arange(n))
  rng = np.random.default_rng(seed)
  groups = [np.flatnonzero(y_true == c) for c in np.unique(y_true)] if stratified else [np.arange(n)]
  values = np.empty(num_samples)
  for i in range(num_samples):
    idx = np.concatenate([g[rng.integers(0, len(g), len(g))] for g in groups])
    values[i] = evaluate(idx)
  values = values[np.isfinite(values)]
  if len(values) == 0:
    low = high = float("nan")
  else:
    low, high = (float(v) for v in np.percentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)]))
  return {"point": point, "low": low, "high": high, "alpha": float(alpha), "num_samples": int(num_samples),
          "num_valid": int(len(values))}


def paired_difference_ci(metric_fn, y_true, score_a, score_b, **kw) -> dict:
  """`bootstrap_ci` of metric_fn(y, score_a) - metric_fn(y, score_b), both evaluated on each resample's same rows:
  the paired comparison of two models' predictions on one test set (narrower than comparing their separate
  intervals, since the examples both find hard or easy cancel). Keyword arguments go to `bootstrap_ci`."""
  a, b = np.asarray(score_a), np.asarray(score_b)
  if a.shape != b.shape:
    raise ValueError(f"score_a and score_b must have one shape; got {a.shape} and {b.shape}")
  return bootstrap_ci(lambda y, s: metric_fn(y, s[:, 0]) - metric_fn(y, s[:, 1]), y_true, np.stack([a, b], axis=1),
                      **kw)


def mean_std(values) -> tuple[float, float, int]:
  """(mean, sample standard deviation (ddof=1), n) of repeated results, e.g. one metric over seeds.

  The std of a single value is nan (undefined). Raises ValueError for no values or non-finite values.
  """
  v = np.asarray(values, np.float64).ravel()
  if v.size == 0:
    raise ValueError("mean_std needs at least one value; got none")
  if not np.all(np.isfinite(v)):
    raise ValueError(f"mean_std values must be finite; got {v.tolist()}")
  std = float(np.std(v, ddof=1)) if v.size > 1 else float("nan")
  return float(np.mean(v)), std, int(v.size)


def format_mean_std(values, *, digits: int = 3) -> str:
  """'0.812 ± 0.054 (n=3)': mean ± sample std with `digits` decimals; '0.812 (n=1)' for one value."""
  mean, std, n = mean_std(values)
  if n == 1:
    return f"{mean:.{digits}f} (n=1)"
  return f"{mean:.{digits}f} ± {std:.{digits}f} (n={n})"


def scalar_metrics(*, multi_label: bool) -> dict:
  """{"auroc", "accuracy"}: fn(labels, probs) -> float of single-label data or multi-label [N, K] targets, the form
  the bootstrap resamples."""
  if multi_label:
    return {"auroc": lambda y, s: multilabel_auroc(y, s)[0],
            "accuracy": lambda y, s: accuracy(y.ravel().astype(np.int32), s.ravel())}
  return {"auroc": lambda y, s: auroc(y, s)[0], "accuracy": accuracy}


def report(labels, probs, *, ordinal: bool = False, bootstrap_samples: int = 0, seed: int = 0,
           alpha: float = 0.05) -> dict:
  """What every evaluation records beside accuracy / AUROC, from the test labels and class scores.

  ordinal=True (graded labels such as DR grade 0-4) adds "kappa": quadratic-weighted kappa of the argmax
  grade. bootstrap_samples > 0 adds percentile bootstrap intervals "auroc_ci" / "accuracy_ci" (and
  "kappa_ci") as [low, high] at level 1 - alpha, resampling test examples within each class (single-label)
  or all rows together (multi-label [N, K] targets), with `seed`. Empty dict when neither is asked for.
  """
  labels = np.asarray(labels)
  probs = np.asarray(probs, np.float64)
  multi_label = labels.ndim == 2
  if ordinal and multi_label:
    raise ValueError("ordinal=True (quadratic-weighted kappa) needs single-label grades [N]; got multi-label "
                     f"targets of shape {labels.shape}")
  out = {}
  k = probs.shape[1] if probs.ndim == 2 else 2
  kappa = lambda y, s: quadratic_weighted_kappa(y, s, num_classes=k)
  if ordinal:
    out["kappa"] = kappa(labels, probs)
  if bootstrap_samples:
    fns = scalar_metrics(multi_label=multi_label)
    if ordinal:
      fns["kappa"] = kappa
    for name, fn in fns.items():
      ci = bootstrap_ci(fn, labels, probs, num_samples=bootstrap_samples, alpha=alpha, seed=seed,
                        stratified=not multi_label)
      out[f"{name}_ci"] = [ci["low"], ci["high"]]
    out["ci_level"] = 1 - alpha
    out["bootstrap_samples"] = int(bootstrap_samples)
  return out
