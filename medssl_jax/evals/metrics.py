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
