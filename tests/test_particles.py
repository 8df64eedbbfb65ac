"""Particle-embedding evaluation (medssl_jax/evals/particles.py): each metric against a direct numpy reference on
synthetic clustered features, the holdout bookkeeping on BCCD, and `run` end to end on a miniature BCCD."""
import json
import os

import numpy as np
import pytest

from medssl_jax import config as config_lib
from medssl_jax.data import pipeline
from medssl_jax.evals import metrics as metrics_lib
from medssl_jax.evals import particles
from medssl_jax.projects.particles import modes as particles_modes
from medssl_jax.protocols import encoders as protocol_encoders
from medssl_jax import experiment
from tfds_builders.bccd import dummy_data


def _clusters(*, n_per_class=30, num_classes=3, dim=16, spread=0.05, seed=0):
  """Tight clusters around random unit directions (cosine-separated)."""
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(num_classes, dim))
  y = np.repeat(np.arange(num_classes), n_per_class)
  x = centres[y] + spread * rng.normal(size=(len(y), dim))
  return x, y


def _cos(a, b):
  return (a @ b.T) / np.outer(np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1))


def _ref_purity(x, y, k):
  sim = _cos(x, x)
  out = []
  for i in range(len(x)):
    others = [j for j in range(len(x)) if j != i]
    nn = sorted(others, key=lambda j: (-sim[i, j], j))[:k]
    out.append(np.mean([y[j] == y[i] for j in nn]))
  return float(np.mean(out))


def _ref_silhouette(x, y):
  d = 1.0 - _cos(x, x)
  s = []
  for i in range(len(x)):
    same = (y == y[i]) & (np.arange(len(x)) != i)
    a = d[i, same].mean()
    b = min(d[i, y == c].mean() for c in np.unique(y) if c != y[i])
    s.append((b - a) / max(a, b))
  return float(np.mean(s))


def test_cluster_quality_separated_and_random():
  x, y = _clusters()
  q = particles.cluster_quality(features=x, labels=y, k=10)
  assert q["knn_purity"] == pytest.approx(_ref_purity(x, y, 10)) and q["knn_purity"] == 1.0
  assert q["silhouette"] == pytest.approx(_ref_silhouette(x, y), abs=1e-9) and q["silhouette"] > 0.9
  assert q["num_classes"] == 3 and q["num_examples"] == 90 and q["k"] == 10
  # Random features and labels: purity near chance (sum of squared class fractions = 1/3), silhouette near 0.
  rng = np.random.default_rng(1)
  xr, yr = rng.normal(size=(300, 16)), rng.integers(0, 3, 300)
  q = particles.cluster_quality(features=xr, labels=yr, k=5)
  chance = float(np.sum((np.bincount(yr) / len(yr)) ** 2))
  assert q["knn_purity"] == pytest.approx(_ref_purity(xr, yr, 5))
  assert abs(q["knn_purity"] - chance) < 0.06 and q["knn_purity_chance"] == pytest.approx(chance)
  assert q["silhouette"] == pytest.approx(_ref_silhouette(xr, yr), abs=1e-9) and abs(q["silhouette"]) < 0.05
  # k larger than N - 1 is capped; errors name the argument.
  assert particles.cluster_quality(features=x[:4], labels=np.array([0, 0, 1, 1]), k=10)["k"] == 3
  with pytest.raises(ValueError, match="labels for features must be 1-D"):
    particles.cluster_quality(features=x, labels=y[:5])
  with pytest.raises(ValueError, match="k must be a positive integer"):
    particles.knn_purity(features=x, labels=y, k=0)


def test_few_label_classifier():
  x, y = _clusters(n_per_class=40, spread=0.3, seed=2)
  tx, ty = _clusters(n_per_class=20, spread=0.3, seed=2)  # Same centres (same seed), fresh noise below.
  tx = tx + 0.05 * np.random.default_rng(3).normal(size=tx.shape)
  r = particles.few_label_classifier(train_features=x, train_labels=y, test_features=tx, test_labels=ty,
                                     shots=(1, 5), seeds=(0, 1, 2), num_classes=3)
  assert list(r) == ["1", "5"]
  for k, m in r.items():
    assert [s["num_labelled"] for s in m["per_seed"]] == [3 * int(k)] * 3
    assert m["accuracy_mean"] > 0.97 and m["auroc_mean"] > 0.99
    accs = [s["accuracy"] for s in m["per_seed"]]
    assert m["accuracy_mean"] == pytest.approx(np.mean(accs))
    assert m["accuracy_std"] == pytest.approx(np.std(accs, ddof=1))
    s0 = m["per_seed"][0]
    assert s0["balanced_accuracy"] > 0.97 and m["balanced_accuracy_mean"] == pytest.approx(
        np.mean([s["balanced_accuracy"] for s in m["per_seed"]]))
  # Label-free features: chance level.
  rng = np.random.default_rng(4)
  r = particles.few_label_classifier(train_features=rng.normal(size=(120, 8)), train_labels=y,
                                     test_features=rng.normal(size=(600, 8)), test_labels=rng.integers(0, 3, 600),
                                     shots=(10,), seeds=(0, 1, 2), num_classes=3)
  assert abs(r["10"]["accuracy_mean"] - 1 / 3) < 0.1 and abs(r["10"]["auroc_mean"] - 0.5) < 0.08
  with pytest.raises(ValueError, match="50 shots per class requested but class 0 has only 40"):
    particles.few_label_classifier(train_features=x, train_labels=y, test_features=tx, test_labels=ty,
                                   shots=(50,), num_classes=3)
  with pytest.raises(ValueError, match=r"classes \[3\] have no training examples"):
    particles.few_label_classifier(train_features=x, train_labels=y, test_features=tx, test_labels=ty, num_classes=4)


def test_novelty_scores_and_auroc():
  x, y = _clusters(n_per_class=30, num_classes=3, spread=0.05, seed=5)
  ref = x[y < 2]  # Classes 0 and 1 known; class 2 is the far, held-out cluster.
  q, qy = _clusters(n_per_class=10, num_classes=3, spread=0.05, seed=5)
  scores = particles.novelty_scores(reference_features=ref, query_features=q, k=7)
  want = 1.0 - np.sort(_cos(q, ref), axis=1)[:, -7:].mean(axis=1)
  np.testing.assert_allclose(scores, want, atol=1e-12)
  r = particles.novelty_auroc(reference_features=ref, query_features=q, query_is_novel=qy == 2, k=7)
  assert r["auroc"] == 1.0 and r["num_novel"] == 10 and r["num_known"] == 20
  assert r["mean_score_novel"] > r["mean_score_known"]
  # The "novel" class mixed in with the known ones (same distribution): chance.
  rng = np.random.default_rng(6)
  ref, q = rng.normal(size=(400, 8)), rng.normal(size=(600, 8))
  r = particles.novelty_auroc(reference_features=ref, query_features=q, query_is_novel=rng.random(600) < 0.3, k=10)
  assert abs(r["auroc"] - 0.5) < 0.07
  with pytest.raises(ValueError, match="needs both novel and known queries"):
    particles.novelty_auroc(reference_features=ref, query_features=q, query_is_novel=np.zeros(600, bool))
  with pytest.raises(ValueError, match="8 columns but query_features 3"):
    particles.novelty_scores(reference_features=ref, query_features=q[:, :3])


def _ref_local_density(ref, q, k):
  """Double loop: d_k = mean cosine distance to the k nearest references (self excluded), ties by index."""
  d_rr, d_qr = 1.0 - _cos(ref, ref), 1.0 - _cos(q, ref)
  def nearest(dists, skip=None):
    return sorted((j for j in range(len(ref)) if j != skip), key=lambda j: (dists[j], j))[:k]
  d_ref = [np.mean([d_rr[i, j] for j in nearest(d_rr[i], skip=i)]) for i in range(len(ref))]
  out = []
  for i in range(len(q)):
    nn = nearest(d_qr[i])
    out.append(np.mean([d_qr[i, j] for j in nn]) / np.mean([d_ref[j] for j in nn]))
  return np.array(out)


def _ref_mahalanobis(ref, ref_y, q, ridge):
  from scipy.spatial.distance import mahalanobis
  unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  ref, q = unit(ref), unit(q)
  means = {c: ref[ref_y == c].mean(axis=0) for c in np.unique(ref_y)}
  cov = sum(np.outer(x - means[c], x - means[c]) for x, c in zip(ref, ref_y)) / len(ref)
  cov = cov + ridge * np.trace(cov) / cov.shape[0] * np.eye(cov.shape[0])
  inv = np.linalg.inv(cov)
  return np.array([min(mahalanobis(x, mu, inv) for mu in means.values()) for x in q])


def test_local_density_and_mahalanobis_match_direct_implementations():
  rng = np.random.default_rng(7)
  ref, q = rng.normal(size=(40, 6)) + 0.5, rng.normal(size=(15, 6)) + 0.5
  ref_y = rng.integers(0, 3, 40)
  for k in (1, 4, 100):  # 100 is capped at 39 references - 1.
    np.testing.assert_allclose(particles.local_density_scores(reference_features=ref, query_features=q, k=k),
                               _ref_local_density(ref, q, min(k, 39)), rtol=1e-10)
  for ridge in (1e-3, 0.5):
    np.testing.assert_allclose(
        particles.mahalanobis_scores(reference_features=ref, reference_labels=ref_y, query_features=q, ridge=ridge),
        _ref_mahalanobis(ref, ref_y, q, ridge), rtol=1e-9)
  # More dimensions than references: the ridge keeps the covariance invertible.
  wide, wide_q = rng.normal(size=(10, 32)), rng.normal(size=(5, 32))
  np.testing.assert_allclose(
      particles.mahalanobis_scores(reference_features=wide, reference_labels=np.arange(10) % 2, query_features=wide_q),
      _ref_mahalanobis(wide, np.arange(10) % 2, wide_q, 1e-3), rtol=1e-7)
  # Scale-free: features are l2-normalised, so scaling a row changes no score.
  np.testing.assert_allclose(particles.local_density_scores(reference_features=3 * ref, query_features=q * 0.1, k=4),
                             particles.local_density_scores(reference_features=ref, query_features=q, k=4), rtol=1e-12)


def _bccd_failure_mode(seed=0, dim=16):
  """Known class A: large and diffuse (RBC); known class B: small and tight (platelets); the novel class C:
  a tighter cluster right beside B (WBC), offset along a direction in which no known class varies."""
  rng = np.random.default_rng(seed)
  def blob(n, centre, sd):
    x = np.tile(centre, (n, 1))
    x[:, 2:6] += sd * rng.normal(size=(n, 4))  # Known variation lives in a 4-D subspace...
    return x + 0.01 * rng.normal(size=(n, dim))  # ...with a little everywhere.
  a, b = 10 * np.eye(dim)[0], 10 * np.eye(dim)[1]
  c = b + 0.8 * np.eye(dim)[8]
  ref = np.concatenate([blob(200, a, 1.5), blob(40, b, 0.2)])
  query = np.concatenate([blob(100, a, 1.5), blob(20, b, 0.2), blob(20, c, 0.05)])
  return ref, np.repeat([0, 1], [200, 40]), query, np.repeat([False, True], [120, 20])


def test_novelty_report_bccd_failure_mode():
  ref, ref_y, q, novel = _bccd_failure_mode()
  r = particles.novelty_report(reference_features=ref, reference_labels=ref_y, query_features=q,
                               query_is_novel=novel, k=5)
  assert list(r) == ["knn", "local_density", "mahalanobis"]
  # knn: the novel crops sit closer to known ones than the diffuse known class's crops sit to each other.
  assert r["knn"]["auroc"] < 0.3 and r["knn"]["mean_score_novel"] < r["knn"]["mean_score_known"]
  assert r["local_density"]["auroc"] == 1.0 and r["local_density"]["mean_score_novel"] > 3.0
  assert 0.8 < r["local_density"]["mean_score_known"] < 1.3  # Known crops: as dense as their neighbourhood.
  assert r["mahalanobis"]["auroc"] == 1.0
  assert r["knn"]["k"] == 5 and r["local_density"]["k"] == 5
  assert r["mahalanobis"]["ridge"] == 1e-3 and r["mahalanobis"]["num_classes"] == 2
  assert all(v["num_novel"] == 20 and v["num_known"] == 120 for v in r.values())
  # Each AUROC is that of its score; "knn" is novelty_auroc's numbers exactly.
  ld = particles.local_density_scores(reference_features=ref, query_features=q, k=5)
  assert r["local_density"]["auroc"] == metrics_lib.binary_auroc(novel, ld)
  assert r["local_density"]["mean_score_novel"] == pytest.approx(ld[novel].mean())
  assert r["knn"] == particles.novelty_auroc(reference_features=ref, query_features=q, query_is_novel=novel, k=5)
  only = particles.novelty_report(reference_features=ref, query_features=q, query_is_novel=novel, k=5,
                                  methods=("local_density", "knn"))
  assert list(only) == ["local_density", "knn"] and only["knn"] == r["knn"]


def test_novelty_errors_name_the_argument():
  ref, ref_y, q, novel = _bccd_failure_mode()
  kw = dict(reference_features=ref, query_features=q, query_is_novel=novel)
  with pytest.raises(ValueError, match=r"methods must be a tuple of distinct names from \['knn', 'local_density', "
                                       r"'mahalanobis'\], got \('lof',\)"):
    particles.novelty_report(**kw, reference_labels=ref_y, methods=("lof",))
  with pytest.raises(ValueError, match="methods must be a tuple"):
    particles.novelty_report(**kw, reference_labels=ref_y, methods="knn")
  with pytest.raises(ValueError, match="'mahalanobis' needs reference_labels"):
    particles.novelty_report(**kw)
  with pytest.raises(ValueError, match=r"query_is_novel must be a boolean array with one entry per query row \(140\)"):
    particles.novelty_report(reference_features=ref, query_features=q, query_is_novel=novel[:5], methods=("knn",))
  with pytest.raises(ValueError, match="query_is_novel must be a boolean array"):
    particles.novelty_report(reference_features=ref, query_features=q, query_is_novel=novel.astype(int),
                             methods=("knn",))
  with pytest.raises(ValueError, match="labels for reference_features must be 1-D with one entry per row"):
    particles.mahalanobis_scores(reference_features=ref, reference_labels=ref_y[:10], query_features=q)
  with pytest.raises(ValueError, match="ridge must be a number > 0"):
    particles.mahalanobis_scores(reference_features=ref, reference_labels=ref_y, query_features=q, ridge=0.0)
  with pytest.raises(ValueError, match="zero within-class covariance"):
    particles.mahalanobis_scores(reference_features=np.eye(3)[[0, 0, 1]], reference_labels=np.array([0, 0, 1]),
                                 query_features=q[:, :3])
  with pytest.raises(ValueError, match="needs at least 2 reference rows"):
    particles.local_density_scores(reference_features=ref[:1], query_features=q)
  with pytest.raises(ValueError, match="16 columns but query_features 3"):
    particles.local_density_scores(reference_features=ref, query_features=q[:, :3])
  with pytest.raises(ValueError, match="k must be a positive integer"):
    particles.local_density_scores(reference_features=ref, query_features=q, k=0)


def test_format_summary_reads_summaries_without_novelty_methods():
  knn = {"auroc": 0.164, "mean_score_novel": 0.032, "mean_score_known": 0.055, "num_novel": 71, "num_known": 874,
         "k": 10}
  split = {"split": "test", "num_records": 9, "num_examples": 9, "class_counts": {"RBC": 5, "WBC": 4}}
  s = {"dataset": "bccd/64", "classes": ["RBC", "WBC"], "holdout_class": "WBC", "input_size": 64,
       "splits": {"train": split, "test": split}, "shot_seeds": [0], "knn_k": 10, "protocol": {},
       "encoders": {"old": {"cluster_quality": {"silhouette": 0.1, "knn_purity": 0.9, "knn_purity_chance": 0.5},
                            "few_label": {}, "novelty": knn},
                    "new": {"cluster_quality": {"silhouette": 0.2, "knn_purity": 0.9, "knn_purity_chance": 0.5},
                            "few_label": {}, "novelty": knn,
                            "novelty_methods": {"knn": knn, "mahalanobis": dict(knn, auroc=0.9)}}}}
  md = particles_modes.format_summary(s)
  assert "| novelty AUROC knn (WBC) | knn score WBC / known | novelty AUROC mahalanobis (WBC) |" in md
  assert "| old | 0.100 | 0.900 | 0.500 | 0.164 | 0.032 / 0.055 | n/a |" in md
  assert "| new | 0.200 | 0.900 | 0.500 | 0.164 | 0.032 / 0.055 | 0.900 |" in md


def test_pretrain_indices_real_bccd(tmp_path):
  from medssl_jax.data import shared
  try:
    manual = shared.dataset_dir("bccd")
  except FileNotFoundError as e:
    pytest.skip(f"real data absent: {e}")
  b = pipeline.get_builder("bccd", config="64", data_dir=str(tmp_path / "tfds"), manual_dir=str(manual))
  idx = particles_modes.pretrain_indices(b, "train", "WBC")
  labels = np.asarray(pipeline.read_column(b, split="train", key="label"))
  # Train crops RBC 2381 / WBC 214 / Platelets 209 (tests/test_builder_bccd.py): 2590 left, no WBC, in order.
  assert len(idx) == 2590 and np.all(np.diff(idx) > 0)
  assert np.bincount(labels[idx], minlength=3).tolist() == [2381, 0, 209]
  assert particles_modes.pretrain_indices(b, "train", "") is None
  with pytest.raises(ValueError, match=r"holdout_class='Neutrophil' is not a class .*\['RBC', 'WBC', 'Platelets'\]"):
    particles_modes.pretrain_indices(b, "train", "Neutrophil")


def _tiny_config(tfds_dir, manual):
  from medssl_jax.augment import views
  c = config_lib.load("particles_simclr", "quick")
  c.data.data_dir = str(tfds_dir)
  c.data.manual_dir = str(manual)
  c.data.image_size = 32
  c.augment.views = [views.default_view(**dict(v, crop_size=32)) for v in c.augment.views]
  c.eval.batch_size = 16
  c.particles.holdout_class = "Platelets"
  c.particles.shots = (1, 2)
  c.particles.shot_seeds = (0, 1)
  return c


def test_config_section(tmp_path, monkeypatch):
  assert "particles" in experiment.MODES
  for arg in (None, "cpu", "quick"):
    c = experiment.validate(config_lib.load("particles_simclr", arg))
    assert c.mode == "particles" and c.data.builder == "bccd" and c.particles.holdout_class == "WBC"
  c = config_lib.load("particles_simclr", "quick")
  assert c.train.num_steps == 20 and c.model.width_multiplier == 0.125
  assert experiment.default_config().particles.to_dict() == {
      "holdout_class": "", "shots": (1, 5, 10), "shot_seeds": (0, 1, 2), "knn_k": 10, "max_examples": 2000,
      "embedding_method": "tsne", "novelty_methods": ("knn", "local_density", "mahalanobis")}
  assert particles.NOVELTY_METHODS == experiment.default_config().particles.novelty_methods
  for key, value, match in (("shots", (), "particles.shots must be a non-empty tuple"),
                            ("shots", (0, 5), "particles.shots must be"), ("knn_k", 0, "particles.knn_k"),
                            ("max_examples", -1, "particles.max_examples"),
                            ("embedding_method", "umap", "particles.embedding_method='umap' is not known")):
    bad = config_lib.load("particles_simclr", "quick")
    bad.particles[key] = value
    with pytest.raises(ValueError, match=match):
      experiment.validate(bad)


def test_run_tiny_random_encoder(tmp_path):
  manual = dummy_data.write(tmp_path / "manual")
  c = _tiny_config(tmp_path / "tfds", manual)
  b = pipeline.open_dataset(c.data)
  # Miniature BCCD: train RBC 4 / WBC 4 / Platelets 1, test 2 / 2 / 1 crops.
  assert particles_modes.pretrain_indices(b, "train", "Platelets").tolist() == [0, 1, 2, 3, 4, 6, 7, 8]  # Record 5: Platelets.
  model, variables = protocol_encoders.random_init_variables(c)
  workdir = tmp_path / "work"
  s = particles_modes.run(c, str(workdir), encoders={"random init": (model, variables, True)}, builder=b)
  out = workdir / "particles"
  with open(out / "summary.json") as f:
    on_disk = json.load(f)
  assert on_disk["encoders"].keys() == s["encoders"].keys() == {"random init"}
  r = s["encoders"]["random init"]
  assert s["splits"]["test"]["class_counts"] == {"RBC": 2, "WBC": 2, "Platelets": 1}
  assert r["cluster_quality"]["num_examples"] == 5 and r["cluster_quality"]["k"] == 4
  assert list(r["few_label"]) == ["1", "2"] and r["few_label"]["2"]["per_seed"][0]["num_labelled"] == 4
  assert r["novelty"]["num_novel"] == 1 and r["novelty"]["num_known"] == 4 and 0 <= r["novelty"]["auroc"] <= 1
  assert list(r["novelty_methods"]) == ["knn", "local_density", "mahalanobis"] == s["novelty_methods"]
  assert r["novelty"] == r["novelty_methods"]["knn"] and r["novelty_methods"]["mahalanobis"]["num_classes"] == 2
  # 8 known training crops (RBC, WBC) as references, knn_k 10: capped at 8 (knn) and 8 - 1 (local_density).
  assert [on_disk["encoders"]["random init"]["novelty_methods"][m]["k"] for m in ("knn", "local_density")] == [8, 7]
  png = r["embedding_map"]
  assert os.path.dirname(png) == str(out) and open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
  md = (out / "summary.md").read_text()
  assert "| random init |" in md and "labelled per class" in md
  assert ("novelty AUROC knn (Platelets) | knn score Platelets / known | novelty AUROC local_density (Platelets) | "
          "novelty AUROC mahalanobis (Platelets) |") in md
