"""The selection itself, on feature arrays: which pool records to pretrain on.

- `nearest`: the retrieval of SEPT (Lin et al. 2022, "SEPT: Towards scalable and efficient visual pre-training"):
  every target record retrieves its k nearest pool records (cosine similarity), with k grown until the union holds
  the `fraction` of the pool. Equivalently, pool records are kept in order of their best rank in any target record's
  neighbour list, then by their similarity to their nearest target record, then by a seeded hash of the index (so
  the choice is reproducible). Ranking per target keeps one "hub" pool record, close to everything, from standing in
  for many: it takes one place, and each target record still brings its own neighbours.
- `random`: the same number of records, drawn uniformly (seeded): the control of the comparison.
"""
from __future__ import annotations

import hashlib

import numpy as np

METHODS = ("nearest", "random")


def _unit(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def nearest_similarity(pool_features, target_features, *, chunk: int = 4096) -> np.ndarray:
  """Cosine similarity of each pool row to its nearest target row: float64 [N_pool] (in chunks of pool rows)."""
  pool, target = _unit(pool_features), _unit(target_features)
  if pool.ndim != 2 or target.ndim != 2 or pool.shape[1] != target.shape[1] or not len(target):
    raise ValueError(f"features must be [N, d] with the same d and at least one target row; got pool {pool.shape}, "
                     f"target {target.shape}")
  return np.concatenate([(pool[i:i + chunk] @ target.T).max(axis=1) for i in range(0, len(pool), chunk)]
                        or [np.zeros(0)])


def best_rank(pool_features, target_features, *, chunk: int = 256) -> np.ndarray:
  """For each pool row, its best (lowest, 0-based) rank in any target row's list of pool rows ordered by cosine
  similarity: int64 [N_pool] (targets in chunks)."""
  pool, target = _unit(pool_features), _unit(target_features)
  n = len(pool)
  best = np.full(n, n, np.int64)
  for i in range(0, len(target), chunk):
    order = np.argsort(-(target[i:i + chunk] @ pool.T), axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(n)[None, :].repeat(len(order), axis=0), axis=1)
    best = np.minimum(best, ranks.min(axis=0))
  return best


def subset_size(num_pool: int, fraction: float) -> int:
  if not 0 < fraction <= 1:
    raise ValueError(f"selection fraction={fraction!r} must be in (0, 1]")
  return max(1, int(round(fraction * num_pool)))


def _tiebreak(n: int, seed: int) -> np.ndarray:
  return np.array([int.from_bytes(hashlib.sha256(f"{seed}:{i}".encode()).digest()[:8], "big") for i in range(n)],
                  dtype=np.uint64)


def select(*, method: str, fraction: float, seed: int, num_pool: int, scores=None, ranks=None) -> np.ndarray:
  """The kept pool indices, sorted: the `fraction` first by best rank `ranks` (when given), then by similarity
  `scores` ("nearest"), or a seeded uniform draw of the same size ("random")."""
  if method not in METHODS:
    raise ValueError(f"selection method={method!r}; choose one of {list(METHODS)}")
  k = subset_size(num_pool, fraction)
  order_key = _tiebreak(num_pool, seed)
  if method == "random":
    return np.sort(np.argsort(order_key, kind="stable")[:k])
  scores = np.asarray(scores, np.float64)
  if scores.shape != (num_pool,):
    raise ValueError(f"scores must be one per pool record ({num_pool}), got shape {scores.shape}")
  ranks = np.zeros(num_pool, np.int64) if ranks is None else np.asarray(ranks, np.int64)
  order = np.lexsort((order_key, -scores, ranks))  # Best rank first, then the highest score, then the seeded hash.
  return np.sort(order[:k])
