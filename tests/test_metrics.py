"""AUROC and accuracy against straightforward pair-counting definitions."""
import numpy as np
import pytest

from medssl_jax.evals import metrics


def pairwise_auc(y, s):
  """P(score_pos > score_neg) + 0.5 P(tie), by enumerating every positive/negative pair."""
  pos, neg = s[y == 1], s[y == 0]
  wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
  return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(4))
def test_binary_auroc_with_ties(seed):
  rng = np.random.default_rng(seed)
  y = rng.integers(0, 2, 60)
  s = np.round(rng.normal(size=60) + y, 1)  # Rounding makes ties.
  assert metrics.binary_auroc(y, s) == pytest.approx(pairwise_auc(y, s), abs=1e-12)


def test_auroc_edge_cases_and_multiclass():
  assert metrics.binary_auroc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
  assert metrics.binary_auroc([0, 0, 1, 1], [0.4, 0.3, 0.2, 0.1]) == 0.0
  assert metrics.binary_auroc([0, 1], [0.5, 0.5]) == 0.5
  assert np.isnan(metrics.binary_auroc([1, 1], [0.1, 0.2]))
  rng = np.random.default_rng(0)
  y = rng.integers(0, 4, 80)
  s = rng.random((80, 4))
  mean, per = metrics.auroc(y, s)
  ref = [pairwise_auc((y == c).astype(int), s[:, c]) for c in range(4)]
  np.testing.assert_allclose(per, ref)
  assert mean == pytest.approx(np.mean(ref))
  # Two columns: binary AUROC of the positive-class column.
  s2 = rng.random((80, 2))
  y2 = rng.integers(0, 2, 80)
  assert metrics.auroc(y2, s2)[0] == pytest.approx(pairwise_auc(y2, s2[:, 1]))


def test_accuracy():
  assert metrics.accuracy([0, 1, 2], np.eye(3)) == 1.0
  assert metrics.accuracy([0, 1, 2], np.eye(3)[[1, 1, 2]]) == pytest.approx(2 / 3)
  assert metrics.accuracy([0, 1, 2, 0], np.eye(3)[[0, 1, 0, 1]], mask=[1, 1, 0, 0]) == 1.0
  assert metrics.accuracy([1, 0], np.array([0.7, 0.2])) == 1.0
