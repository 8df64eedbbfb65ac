"""The selection itself, on feature arrays: which pool records to pretrain on.

- `nearest`: each pool record's score is its cosine similarity to its nearest target record; the top `fraction` of
  the pool by score is kept (ties broken by a seeded hash of the index, so the choice is reproducible). This is the
  retrieval of SEPT (Lin et al. 2022, "SEPT: Towards scalable and efficient visual pre-training"), which keeps the
  pool images nearest to the target task's images, in the per-pool-record form (a record is kept for being close to
  some target record, not for being one of a target record's k nearest).
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


def subset_size(num_pool: int, fraction: float) -> int:
  if not 0 < fraction <= 1:
    raise ValueError(f"selection fraction={fraction!r} must be in (0, 1]")
  return max(1, int(round(fraction * num_pool)))


def _tiebreak(n: int, seed: int) -> np.ndarray:
  return np.array([int.from_bytes(hashlib.sha256(f"{seed}:{i}".encode()).digest()[:8], "big") for i in range(n)],
                  dtype=np.uint64)


def select(*, method: str, fraction: float, seed: int, num_pool: int, scores=None) -> np.ndarray:
  """The kept pool indices, sorted: the top `fraction` by `scores` ("nearest") or a seeded uniform draw of the same
  size ("random")."""
  if method not in METHODS:
    raise ValueError(f"selection method={method!r}; choose one of {list(METHODS)}")
  k = subset_size(num_pool, fraction)
  order_key = _tiebreak(num_pool, seed)
  if method == "random":
    return np.sort(np.argsort(order_key, kind="stable")[:k])
  scores = np.asarray(scores, np.float64)
  if scores.shape != (num_pool,):
    raise ValueError(f"scores must be one per pool record ({num_pool}), got shape {scores.shape}")
  order = np.lexsort((order_key, -scores))  # Highest score first; equal scores by the seeded hash.
  return np.sort(order[:k])
