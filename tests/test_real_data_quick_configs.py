"""The real-data project configs run their `quick` variants as shipped (PneumoniaMNIST curriculum, BCCD particles),
each through experiment.run as main.py does; skipped with the folder named where ../shared/data is absent.
(The cxr_* quick configs run in tests/test_image_text_train.py on the synthetic paired CXR data.)"""
import json

import pytest

from medssl_jax import config as config_lib
from medssl_jax import experiment
from medssl_jax.data import shared


def _need(name):
  try:
    return shared.dataset_dir(name)
  except FileNotFoundError as e:
    pytest.skip(f"real data absent: {e}")


def test_pneumonia_curricular_quick(tmp_path, monkeypatch):
  _need("pneumoniamnist")
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
  results = experiment.run(config_lib.load("pneumonia_curricular", "quick"), str(tmp_path / "run"))
  assert {"simclr (curriculum)", "random init"} <= set(results)
  assert all(0.0 <= r["auroc"] <= 1.0 for r in results.values())
  # The three stages ran, each from the previous one's weights.
  assert sorted(p.name for p in (tmp_path / "run" / "stages").iterdir()) == ["0_weak", "1_medium", "2_strong"]


def test_particles_quick(tmp_path, monkeypatch):
  _need("bccd")
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
  config = config_lib.load("particles_simclr", "quick")
  config.particles.embedding_method = "pca"  # t-SNE of ~1k points is the slow part; the path is the same.
  experiment.run(config, str(tmp_path / "run"))
  summary = json.loads((tmp_path / "run" / "particles" / "summary.json").read_text())
  for r in summary["encoders"].values():
    assert set(r["novelty_methods"]) == {"knn", "local_density", "mahalanobis"}
    assert all(0.0 <= m["auroc"] <= 1.0 for m in r["novelty_methods"].values())
