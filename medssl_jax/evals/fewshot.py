"""Few-shot evaluation of frozen features: N-way K-shot episodes (Chen et al. 2019, "A Closer Look at Few-shot
Classification"; the episodic protocol of Vinyals et al. 2016), as in the seeds' few-shot learning with
self-supervised features.

Each episode draws `n_way` classes (0: every class), `k_shot` support examples per class from the support pool
(the labelled training split) and `n_query` query examples per class from the query pool (the test split), all
without replacement, seeded by (seed, episode). Features are L2-normalised. Classifiers:
  prototype  nearest class mean by cosine similarity (the mean of the normalised support features of a class,
             normalised again; Snell et al. 2017 with cosine distance);
  logistic   multinomial logistic regression fitted on the support set (scikit-learn, L2, C = 1).
Reported: mean episode accuracy and the half-width of its 95% interval, 1.96 x std / sqrt(episodes).
"""
from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression

CLASSIFIERS = ("prototype", "logistic")


def _unit(x):
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _predict(classifier, support, support_y, query):
  if classifier == "prototype":
    classes = np.unique(support_y)
    protos = _unit(np.stack([support[support_y == c].mean(0) for c in classes]))
    return classes[np.argmax(query @ protos.T, axis=1)]
  clf = LogisticRegression(C=1.0, max_iter=1000)
  return clf.fit(support, support_y).predict(query)


def episodes(*, support_features, support_labels, query_features, query_labels, n_way: int, k_shot: int,
             n_query: int, num_episodes: int, seed: int, classifier: str = "prototype") -> dict:
  """Mean accuracy of `num_episodes` N-way K-shot episodes.

  Returns {"accuracy", "ci95" (half-width), "std", "episodes", "n_way", "k_shot", "n_query", "classifier"}.
  Raises ValueError naming the setting when the pools cannot fill an episode.
  """
  if classifier not in CLASSIFIERS:
    raise ValueError(f"few-shot classifier {classifier!r}; valid choices: {list(CLASSIFIERS)}")
  if min(k_shot, n_query, num_episodes) < 1 or n_way < 0:
    raise ValueError(f"few-shot episodes need k_shot, n_query, num_episodes >= 1 and n_way >= 0 (0: all classes); got "
                     f"k_shot={k_shot}, n_query={n_query}, num_episodes={num_episodes}, n_way={n_way}")
  sy, qy = np.asarray(support_labels), np.asarray(query_labels)
  if sy.ndim != 1 or qy.ndim != 1:
    raise ValueError("few-shot episodes need one class label per example (single-label data)")
  sf, qf = _unit(support_features), _unit(query_features)
  classes = sorted(set(np.unique(sy)) & set(np.unique(qy)))
  eligible = [c for c in classes if (sy == c).sum() >= k_shot and (qy == c).sum() >= n_query]
  way = n_way or len(classes)
  if way < 2 or len(eligible) < way:
    raise ValueError(f"{way}-way {k_shot}-shot episodes with {n_query} queries per class need {max(way, 2)} classes "
                     f"with >= {k_shot} support and >= {n_query} query examples; {len(eligible)} of the "
                     f"{len(classes)} classes have them: lower n_way, k_shot or n_query")
  accs = []
  for ep in range(num_episodes):
    rng = np.random.default_rng([seed, ep])
    chosen = rng.choice(eligible, size=way, replace=False)
    s_idx = np.concatenate([rng.choice(np.flatnonzero(sy == c), size=k_shot, replace=False) for c in chosen])
    q_idx = np.concatenate([rng.choice(np.flatnonzero(qy == c), size=n_query, replace=False) for c in chosen])
    pred = _predict(classifier, sf[s_idx], sy[s_idx], qf[q_idx])
    accs.append(float(np.mean(pred == qy[q_idx])))
  accs = np.asarray(accs)
  std = float(accs.std(ddof=1)) if len(accs) > 1 else 0.0
  return {"accuracy": float(accs.mean()), "ci95": 1.96 * std / np.sqrt(len(accs)), "std": std,
          "episodes": int(num_episodes), "n_way": int(way), "k_shot": int(k_shot), "n_query": int(n_query),
          "classifier": classifier}
