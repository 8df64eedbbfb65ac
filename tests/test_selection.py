"""Pretraining-data selection: the nearest-neighbour choice against a plain loop, the random control, and mode
"select_data" writing a subset file that pretraining then reads."""
import json

import numpy as np
import pytest

from medssl_jax import config as config_lib
from medssl_jax import experiment
from medssl_jax.data import pipeline
from medssl_jax.projects.selection import select


def _loop_nearest(pool, target):
  out = []
  for p in pool:
    best = -np.inf
    for t in target:
      best = max(best, float(np.dot(p, t) / (np.linalg.norm(p) * np.linalg.norm(t))))
    out.append(best)
  return np.array(out)


def test_nearest_similarity_matches_a_loop():
  rs = np.random.RandomState(0)
  pool, target = rs.randn(37, 5), rs.randn(6, 5)
  np.testing.assert_allclose(select.nearest_similarity(pool, target, chunk=8), _loop_nearest(pool, target), atol=1e-12)


def test_best_rank_matches_a_loop_and_spreads_over_the_targets():
  rs = np.random.RandomState(2)
  pool, target = rs.randn(23, 4), rs.randn(9, 4)
  want = np.full(23, 23)
  for t in target:
    sims = [np.dot(p, t) / (np.linalg.norm(p) * np.linalg.norm(t)) for p in pool]
    for rank, i in enumerate(sorted(range(23), key=lambda i: -sims[i])):
      want[i] = min(want[i], rank)
  np.testing.assert_array_equal(select.best_rank(pool, target, chunk=4), want)
  # Two target records, each with its own neighbour, and a hub close to both but nearest to neither's direction:
  # the best-rank order keeps both neighbours before any second choice.
  target = np.array([[1.0, 0.0], [0.0, 1.0]])
  pool = np.array([[1.0, 0.05], [0.05, 1.0], [1.0, 0.9], [0.9, 1.0], [-1.0, 0.0]])
  ranks, scores = select.best_rank(pool, target), select.nearest_similarity(pool, target)
  kept = select.select(method="nearest", fraction=0.4, seed=0, num_pool=5, scores=scores, ranks=ranks)
  np.testing.assert_array_equal(kept, [0, 1])


def test_nearest_keeps_the_records_like_the_target_and_random_is_the_control():
  rs = np.random.RandomState(1)
  near = rs.randn(30, 8) * 0.1 + np.eye(8)[0] * 3  # A cluster around the target's direction.
  far = rs.randn(90, 8) * 0.1 + np.eye(8)[1] * 3
  pool = np.concatenate([far[:45], near, far[45:]])
  target = rs.randn(10, 8) * 0.1 + np.eye(8)[0] * 3
  scores = select.nearest_similarity(pool, target)
  kept = select.select(method="nearest", fraction=0.25, seed=0, num_pool=120, scores=scores,
                       ranks=select.best_rank(pool, target))
  np.testing.assert_array_equal(kept, np.arange(45, 75))
  rand = select.select(method="random", fraction=0.25, seed=0, num_pool=120)
  assert len(rand) == 30 and len(set(rand)) == 30 and np.all(np.diff(rand) > 0)
  np.testing.assert_array_equal(rand, select.select(method="random", fraction=0.25, seed=0, num_pool=120))
  assert not np.array_equal(rand, select.select(method="random", fraction=0.25, seed=1, num_pool=120))
  assert 3 < np.isin(rand, kept).sum() < 15  # About a quarter of the random draw lands in the near cluster.
  # Equal scores: the seeded hash decides, the same way every time.
  ties = select.select(method="nearest", fraction=0.5, seed=3, num_pool=10, scores=np.zeros(10))
  np.testing.assert_array_equal(ties, select.select(method="nearest", fraction=0.5, seed=3, num_pool=10,
                                                    scores=np.zeros(10)))
  with pytest.raises(ValueError, match="fraction=0 must be in"):
    select.select(method="random", fraction=0, seed=0, num_pool=10)
  with pytest.raises(ValueError, match="method='knn'; choose one of"):
    select.select(method="knn", fraction=0.5, seed=0, num_pool=10)


def _config(tmp_path):
  c = config_lib.load("demo_simclr", "quick")
  c.data.builder_config, c.data.data_dir, c.data.image_size = "tiny", str(tmp_path / "tfds"), 32
  for view in c.augment.views:
    view.crop_size = 32
  c.model.width_multiplier = 0.0625
  c.mode = "select_data"
  c.selection.builder, c.selection.builder_config = "synthetic_fundus", "tiny"
  c.selection.target_split, c.selection.fraction = "validation", 0.25
  return c


def test_select_data_writes_a_subset_that_pretraining_reads(tmp_path, capsys):
  c = _config(tmp_path)
  summary = experiment.run(c, str(tmp_path / "sel"))
  assert summary["num_pool"] == 64 and summary["num_selected"] == 16 and summary["num_target"] == 32
  sim = summary["similarity_to_target"]
  assert sim["selected_mean"] >= sim["pool_mean"] >= sim["rest_mean"]
  record = json.loads(open(summary["subset_file"]).read())
  assert record["num_selected"] == 16 and record["dataset"] == "synthetic_fundus/tiny" and record["split"] == "train"
  assert experiment.run(c, str(tmp_path / "sel"))["sha256"] == summary["sha256"]  # A rerun: the same file.
  c.selection.method = "random"
  other = experiment.run(c, str(tmp_path / "sel"))
  assert other["subset_file"] != summary["subset_file"] and other["num_selected"] == 16

  from medssl_jax.train import pretrain as pretrain_lib
  p = config_lib.load("demo_simclr", "quick")
  p.data.builder_config, p.data.data_dir, p.data.image_size = "tiny", str(tmp_path / "tfds"), 32
  for view in p.augment.views:
    view.crop_size = 32
  p.model.width_multiplier, p.train.num_steps, p.train.batch_size = 0.0625, 2, 8
  p.data.train_subset_file = summary["subset_file"]
  experiment.validate(p)
  capsys.readouterr()
  pretrain_lib.pretrain(p, str(tmp_path / "pre"))
  assert f"pretraining on 16 records of 'train' listed in {summary['subset_file']}" in capsys.readouterr().out
  p.data.builder_config = "vessels"
  with pytest.raises(ValueError, match="was made for dataset='synthetic_fundus/tiny', not 'synthetic_fundus/vessels'"):
    pretrain_lib.pretrain(p, str(tmp_path / "pre2"), builder=pipeline.get_builder(
        "synthetic_fundus", data_dir=str(tmp_path / "tfds"), config="vessels"))


def test_select_data_refusals(tmp_path):
  c = _config(tmp_path)
  c.selection.builder = ""
  with pytest.raises(ValueError, match="config.mode='select_data' needs config.selection.builder"):
    experiment.validate(c)
  c.selection.builder, c.selection.fraction = "synthetic_fundus", 1.5
  with pytest.raises(ValueError, match=r"config.selection.fraction=1.5 must be in \(0, 1\]"):
    experiment.validate(c)


def test_sept_runs_three_arms_and_evaluates_them_on_the_target(tmp_path):
  """Mode "sept" on the tiny synthetic fundus set as both pool (train) and target (validation -> test): three
  pretrainings, two subset files, three probe results that tables.collect reads."""
  from medssl_jax.tables import collect
  c = _config(tmp_path)
  c.mode = "sept"
  c.train.num_steps, c.train.batch_size, c.train.log_every = 2, 8, 1
  c.selection.target_split, c.selection.target_test_split = "validation", "test"
  out = experiment.run(c, str(tmp_path / "sept"))
  assert sorted(out["results"]) == ["nearest", "pool", "random"]
  assert out["selections"]["nearest"]["num_selected"] == out["selections"]["random"]["num_selected"] == 16
  rows = collect.collect({arm: [str(tmp_path / "sept" / arm)] for arm in ("pool", "nearest", "random")})
  assert [r["encoder"] for r in rows] == ["simclr (pool)", "simclr (nearest)", "simclr (random)", "random init"]
  assert all(0 <= r["auroc"][0] <= 1 for r in rows)
