"""Few-shot episodes on frozen features: against an explicit per-episode loop, and their behaviour."""
import numpy as np
import pytest

from medssl_jax.config import load as load_config
from medssl_jax.data import pipeline
from medssl_jax.evals import fewshot
from medssl_jax.experiment import validate
from medssl_jax.protocols import encoders
from medssl_jax.protocols import probe
from medssl_jax.tables import runner


def _clusters(n_per_class, num_classes, dim=8, spread=0.3, seed=0):
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(num_classes, dim))
  y = np.repeat(np.arange(num_classes), n_per_class)
  return centres[y] + spread * rng.normal(size=(len(y), dim)), y


def reference_prototype_episode(sf, sy, qf, qy, chosen, s_idx, q_idx):
  """Nearest normalised class mean by cosine, by loops."""
  unit = lambda v: v / np.sqrt(sum(x * x for x in v))
  correct = 0
  protos = {c: unit(np.mean([unit(sf[i]) for i in s_idx if sy[i] == c], axis=0)) for c in chosen}
  for i in q_idx:
    q = unit(qf[i])
    best = max(chosen, key=lambda c: float(np.dot(q, protos[c])))
    correct += best == qy[i]
  return correct / len(q_idx)


def test_prototype_matches_a_loop_over_the_same_episodes():
  sf, sy = _clusters(10, 4, spread=1.5, seed=1)
  qf, qy = _clusters(6, 4, spread=1.5, seed=2)
  out = fewshot.episodes(support_features=sf, support_labels=sy, query_features=qf, query_labels=qy, n_way=3,
                         k_shot=2, n_query=4, num_episodes=5, seed=7)
  accs = []
  for ep in range(5):  # The episode draws, as the docstring states them.
    rng = np.random.default_rng([7, ep])
    chosen = rng.choice(sorted(set(sy)), size=3, replace=False)
    s_idx = np.concatenate([rng.choice(np.flatnonzero(sy == c), size=2, replace=False) for c in chosen])
    q_idx = np.concatenate([rng.choice(np.flatnonzero(qy == c), size=4, replace=False) for c in chosen])
    accs.append(reference_prototype_episode(sf, sy, qf, qy, chosen, s_idx, q_idx))
  assert out["accuracy"] == pytest.approx(np.mean(accs))
  assert out["ci95"] == pytest.approx(1.96 * np.std(accs, ddof=1) / np.sqrt(5))
  assert (out["n_way"], out["k_shot"], out["n_query"], out["episodes"]) == (3, 2, 4, 5)


@pytest.mark.parametrize("classifier", fewshot.CLASSIFIERS)
def test_separable_features_score_high_and_noise_near_chance(classifier):
  sf, sy = _clusters(20, 5, spread=0.1)
  qf, qy = _clusters(20, 5, spread=0.1, seed=0)
  kw = dict(n_way=5, k_shot=5, n_query=5, num_episodes=20, seed=0, classifier=classifier)
  assert fewshot.episodes(support_features=sf, support_labels=sy, query_features=qf, query_labels=qy,
                          **kw)["accuracy"] > 0.95
  rng = np.random.default_rng(3)
  noise = fewshot.episodes(support_features=rng.normal(size=sf.shape), support_labels=sy,
                           query_features=rng.normal(size=qf.shape), query_labels=qy, **kw)
  assert abs(noise["accuracy"] - 0.2) < 0.1  # Chance for 5 ways.


def test_refusals_name_the_setting():
  sf, sy = _clusters(3, 2)
  with pytest.raises(ValueError, match=r"2-way 5-shot episodes with 1 queries per class need 2 classes with >= 5 "
                                       "support"):
    fewshot.episodes(support_features=sf, support_labels=sy, query_features=sf, query_labels=sy, n_way=0,
                     k_shot=5, n_query=1, num_episodes=2, seed=0)
  with pytest.raises(ValueError, match="few-shot classifier 'svm'"):
    fewshot.episodes(support_features=sf, support_labels=sy, query_features=sf, query_labels=sy, n_way=2,
                     k_shot=1, n_query=1, num_episodes=2, seed=0, classifier="svm")


def test_fewshot_protocol_through_probe(tmp_path):
  """eval.protocol='fewshot' on a random encoder: one result per shots x classifier, and its Markdown table."""
  pipeline.get_builder("synthetic_fundus", data_dir=str(tmp_path), config="tiny")
  config = load_config("demo_simclr", "quick")
  config.data.builder_config, config.data.data_dir, config.data.image_size = "tiny", str(tmp_path), 32
  for view in config.augment.views:
    view.crop_size = 32
  config.model.width_multiplier = 0.0625
  config.eval.protocol = "fewshot"
  config.eval.fewshot.update(shots=(1, 2), n_query=2, episodes=4, classifiers=("prototype", "logistic"))
  validate(config)
  builder = pipeline.open_dataset(config.data)
  model, variables = encoders.random_init_variables(config)
  results = probe.probe(config, {"random init": (model, variables, True)}, builder=builder, workdir=str(tmp_path))
  assert sorted(results) == sorted(f"random init ({k}-shot {c})" for k in (1, 2) for c in ("prototype", "logistic"))
  for r in results.values():
    assert 0.0 <= r["accuracy"] <= 1.0 and r["auroc"] is None and r["fewshot"]["episodes"] == 4
  table = probe.format_table(results, config=config)
  assert table.startswith("Few-shot episodes on synthetic_fundus/tiny") and " ± " in table
  config.eval.neural_collapse = True
  with pytest.raises(ValueError, match="protocol='fewshot' scores episodes of the test split only"):
    validate(config)


def test_tables_show_no_auroc_for_fewshot_rows():
  assert runner._mean_std([None, None]) == "—"  # pylint: disable=protected-access
  assert runner._mean_std([0.5, None]) == "0.500 (n=1)"  # pylint: disable=protected-access
