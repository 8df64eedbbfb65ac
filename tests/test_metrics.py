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


# Quadratic-weighted kappa, multi-label AUROC, bootstrap CIs, mean ± std.

from sklearn.metrics import cohen_kappa_score, roc_auc_score  # noqa: E402


@pytest.mark.parametrize("seed", range(4))
def test_quadratic_kappa_matches_sklearn(seed):
  rng = np.random.default_rng(seed)
  y = rng.integers(0, 5, 200)
  pred = np.clip(y + rng.integers(-2, 3, 200) * (rng.random(200) < 0.5), 0, 4)
  ref = cohen_kappa_score(y, pred, weights="quadratic", labels=np.arange(5))
  assert metrics.quadratic_weighted_kappa(y, pred, num_classes=5) == pytest.approx(ref, abs=1e-12)
  # All grades present: sklearn's default labels agree, and so does inferring K.
  assert metrics.quadratic_weighted_kappa(y, pred) == pytest.approx(cohen_kappa_score(y, pred, weights="quadratic"))
  # [N, K] scores: the argmax grade is used.
  assert metrics.quadratic_weighted_kappa(y, np.eye(5)[pred]) == pytest.approx(ref, abs=1e-12)


def test_quadratic_kappa_edge_cases():
  y = np.array([0, 1, 2, 3, 4])
  assert metrics.quadratic_weighted_kappa(y, y) == 1.0
  # Grades 2 and 3 missing from both: distances are grade differences (sklearn with labels=range(K)),
  # not sklearn's default renumbering of the grades present (0, 1, 4 -> 0, 1, 2).
  y, p = np.array([0, 1, 4, 4, 0, 1]), np.array([0, 4, 4, 1, 1, 1])
  ref = cohen_kappa_score(y, p, weights="quadratic", labels=np.arange(5))
  assert metrics.quadratic_weighted_kappa(y, p, num_classes=5) == pytest.approx(ref)
  assert ref != pytest.approx(cohen_kappa_score(y, p, weights="quadratic"))
  assert np.isnan(metrics.quadratic_weighted_kappa([1, 1, 1], [1, 1, 1]))  # Undefined.
  with pytest.raises(ValueError, match="num_classes=3"):
    metrics.quadratic_weighted_kappa([0, 3], [0, 1], num_classes=3)
  with pytest.raises(ValueError, match="integer grades"):
    metrics.quadratic_weighted_kappa([0, 1.5], [0, 1])
  with pytest.raises(ValueError, match="same|one length"):
    metrics.quadratic_weighted_kappa([0, 1, 2], [0, 1])


def test_multilabel_auroc_matches_sklearn_and_skips_constant_classes():
  rng = np.random.default_rng(0)
  y = (rng.random((90, 5)) < 0.3).astype(int)
  y[:, 1] = 0  # No positives.
  y[:, 3] = 1  # No negatives.
  s = np.round(rng.random((90, 5)) + 0.3 * y, 1)  # Rounding makes ties.
  macro, per, skipped = metrics.multilabel_auroc(y, s)
  assert skipped == [1, 3]
  assert np.isnan(per[1]) and np.isnan(per[3])
  ref = [roc_auc_score(y[:, c], s[:, c]) for c in (0, 2, 4)]
  np.testing.assert_allclose(per[[0, 2, 4]], ref, atol=1e-12)
  assert macro == pytest.approx(np.mean(ref))
  assert macro == pytest.approx(roc_auc_score(y[:, [0, 2, 4]], s[:, [0, 2, 4]], average="macro"))
  macro, per, skipped = metrics.multilabel_auroc(np.zeros((4, 2)), np.ones((4, 2)))
  assert np.isnan(macro) and skipped == [0, 1]
  with pytest.raises(ValueError, match=r"\[N, K\]"):
    metrics.multilabel_auroc(y[:, 0], s[:, 0])


def accuracy_of_correct(y_true, correct):
  """Accuracy when the second argument says which predictions are right."""
  return float(np.mean(correct))


def test_bootstrap_ci_of_accuracy_has_the_binomial_width():
  # A fixed prediction vector that is right on 80% of examples: bootstrap accuracies are
  # Binomial(N, 0.8) / N, so the 95% CI is about 0.8 ± 1.96 sqrt(0.8 * 0.2 / N).
  widths = []
  for n in (100, 1600):
    correct = np.arange(n) % 5 != 0
    ci = metrics.bootstrap_ci(accuracy_of_correct, np.zeros(n), correct, num_samples=1000, seed=0)
    assert ci["point"] == 0.8 and ci["low"] < 0.8 < ci["high"]
    assert ci["num_samples"] == ci["num_valid"] == 1000
    expected = 2 * 1.96 * np.sqrt(0.8 * 0.2 / n)
    assert ci["high"] - ci["low"] == pytest.approx(expected, rel=0.15)
    widths.append(ci["high"] - ci["low"])
  assert widths[1] < widths[0] / 3  # 16x the data: about 4x narrower.
  # Deterministic given the seed; another seed resamples differently.
  a = metrics.bootstrap_ci(accuracy_of_correct, np.zeros(100), np.arange(100) % 5 != 0, num_samples=200, seed=3)
  b = metrics.bootstrap_ci(accuracy_of_correct, np.zeros(100), np.arange(100) % 5 != 0, num_samples=200, seed=3)
  c = metrics.bootstrap_ci(accuracy_of_correct, np.zeros(100), np.arange(100) % 5 != 0, num_samples=200, seed=4)
  assert a == b and (a["low"], a["high"]) != (c["low"], c["high"])


def test_bootstrap_ci_stratified_and_nan_resamples():
  # Class 0 always right, class 1 always wrong: stratified resampling keeps the class counts, so
  # accuracy is exactly 0.75 in every resample; plain resampling varies it.
  y = np.array([0] * 30 + [1] * 10)
  strat = metrics.bootstrap_ci(accuracy_of_correct, y, y == 0, num_samples=300, stratified=True)
  assert strat["low"] == strat["high"] == strat["point"] == 0.75
  plain = metrics.bootstrap_ci(accuracy_of_correct, y, y == 0, num_samples=300)
  assert plain["high"] - plain["low"] > 0.1
  # AUROC on 2 positives in 40: plain resamples without a positive are nan and dropped; stratified has none.
  rng = np.random.default_rng(0)
  y = np.zeros(40, int)
  y[:2] = 1
  s = rng.random(40) + y
  auc = lambda t, p: metrics.binary_auroc(t, p)  # noqa: E731
  plain = metrics.bootstrap_ci(auc, y, s, num_samples=300)
  strat = metrics.bootstrap_ci(auc, y, s, num_samples=300, stratified=True)
  assert 0 < plain["num_valid"] < 300 and strat["num_valid"] == 300
  assert strat["low"] <= strat["point"] <= strat["high"]
  with pytest.raises(ValueError, match="must return a scalar"):
    metrics.bootstrap_ci(metrics.auroc, y, s, num_samples=5)
  with pytest.raises(ValueError, match="alpha"):
    metrics.bootstrap_ci(auc, y, s, alpha=1.5)
  with pytest.raises(ValueError, match="stratified=True needs"):
    metrics.bootstrap_ci(auc, np.zeros((40, 2)), s, stratified=True)


def test_mean_std_and_format():
  mean, std, n = metrics.mean_std([0.75, 0.8, 0.886])
  assert mean == pytest.approx(np.mean([0.75, 0.8, 0.886])) and n == 3
  assert std == pytest.approx(np.std([0.75, 0.8, 0.886], ddof=1))
  assert metrics.format_mean_std([0.75, 0.8, 0.886]) == "0.812 ± 0.069 (n=3)"
  assert metrics.format_mean_std([0.5, 0.7], digits=1) == "0.6 ± 0.1 (n=2)"
  assert metrics.format_mean_std([0.8123]) == "0.812 (n=1)"
  assert np.isnan(metrics.mean_std([0.5])[1])
  with pytest.raises(ValueError, match="at least one"):
    metrics.mean_std([])
  with pytest.raises(ValueError, match="finite"):
    metrics.mean_std([0.5, float("nan")])


def test_report_adds_kappa_and_bootstrap_intervals():
  from sklearn.metrics import cohen_kappa_score
  from medssl_jax.evals import metrics
  rng = np.random.default_rng(0)
  y = np.repeat(np.arange(5), 40)
  probs = rng.dirichlet(np.ones(5), size=len(y))
  probs[np.arange(len(y)), y] += rng.uniform(0, 1.0, len(y))  # Informative but imperfect scores.
  probs /= probs.sum(1, keepdims=True)
  assert metrics.report(y, probs) == {}
  r = metrics.report(y, probs, ordinal=True, bootstrap_samples=200, seed=3)
  assert r["kappa"] == pytest.approx(cohen_kappa_score(y, probs.argmax(1), weights="quadratic"))
  auc, acc = metrics.auroc(y, probs)[0], metrics.accuracy(y, probs)
  for name, point in (("auroc", auc), ("accuracy", acc), ("kappa", r["kappa"])):
    low, high = r[f"{name}_ci"]
    assert low < point < high and high - low < 0.35, (name, low, point, high)
  # Same as bootstrap_ci called directly (stratified), so the interval is reproducible from the seed.
  direct = metrics.bootstrap_ci(lambda a, b: metrics.auroc(a, b)[0], y, probs, num_samples=200, seed=3,
                                stratified=True)
  assert r["auroc_ci"] == [direct["low"], direct["high"]] and r["ci_level"] == 0.95
  multi = metrics.report(rng.integers(0, 2, (50, 3)), rng.uniform(size=(50, 3)), bootstrap_samples=20)
  assert set(multi) == {"auroc_ci", "accuracy_ci", "ci_level", "bootstrap_samples"}
  with pytest.raises(ValueError, match="ordinal=True.*single-label"):
    metrics.report(np.zeros((4, 3), int), np.zeros((4, 3)), ordinal=True)


def test_paired_difference_ci_against_a_plain_loop():
  """The paired interval resamples rows once for both models: checked against a plain loop over the same draws,
  and narrower than the unpaired spread when both models err on the same examples."""
  rng = np.random.default_rng(0)
  n = 200
  y = rng.integers(0, 3, n)
  probs_b = rng.dirichlet(np.ones(3), n)
  probs_a = probs_b.copy()
  flip = rng.random(n) < 0.3  # Model a fixes 30% of the examples, b's predictions elsewhere.
  probs_a[flip] = np.eye(3)[y[flip]] * 0.9 + 0.1 / 3
  acc = lambda t, p: float(np.mean(np.argmax(p, axis=1) == t))  # noqa: E731
  ci = metrics.paired_difference_ci(acc, y, probs_a, probs_b, num_samples=400, seed=5)
  draws = np.random.default_rng(5)
  diffs = []
  for _ in range(400):
    idx = draws.integers(0, n, n)
    diffs.append(acc(y[idx], probs_a[idx]) - acc(y[idx], probs_b[idx]))
  assert ci["point"] == pytest.approx(acc(y, probs_a) - acc(y, probs_b))
  assert (ci["low"], ci["high"]) == pytest.approx(tuple(np.percentile(diffs, [2.5, 97.5])))
  assert ci["low"] > 0
  same = metrics.paired_difference_ci(acc, y, probs_b, probs_b, num_samples=100)
  assert same["low"] == same["high"] == 0.0
  with pytest.raises(ValueError, match="one shape"):
    metrics.paired_difference_ci(acc, y, probs_a, probs_b[:, :2])
