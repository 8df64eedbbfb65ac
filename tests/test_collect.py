"""medssl_jax.tables.collect: mean ± std over seed workdirs, random-init rows pooled, missing results named."""
import json

import numpy as np
import pytest

from medssl_jax.tables import collect


def _workdir(root, name, results, attention=None, seed=None):
  wd = root / name
  wd.mkdir()
  (wd / "config.json").write_text(json.dumps({"seed": int(name[-1]) if seed is None else seed}))
  (wd / "probe_results.json").write_text(json.dumps(results))
  if attention:
    (wd / "analysis" / "test").mkdir(parents=True)
    enc = {k: {"attention": {"fraction_inside": {"mean": a}, "mask_area": {"mean": m}}} for k, (a, m) in attention.items()}
    (wd / "analysis" / "test" / "summary.json").write_text(json.dumps({"encoders": enc}))
  return str(wd)


def test_collect_pools_seeds_and_random_rows(tmp_path):
  a0 = _workdir(tmp_path, "a0", {"x (curriculum)": {"accuracy": 0.8, "auroc": 0.9}, "random init": {"accuracy": 0.5, "auroc": 0.6}},
                attention={"x (curriculum)": (0.3, 0.32), "random init": (0.2, 0.32)})
  a1 = _workdir(tmp_path, "a1", {"x (curriculum)": {"accuracy": 0.9, "auroc": 0.95}, "random init": {"accuracy": 0.7, "auroc": 0.8}})
  b0 = _workdir(tmp_path, "b0", {"x (curriculum)": {"accuracy": 0.6, "auroc": 0.7}, "random init": {"accuracy": 0.6, "auroc": 0.7}})
  b2 = _workdir(tmp_path, "b2", {"x (curriculum)": {"accuracy": 0.6, "auroc": 0.7}, "random init": {"accuracy": 0.6, "auroc": 0.7}})
  rows = collect.collect({"curr": [a0, a1], "single": [b0, b2]})
  # b0 has seed 0 like a0: its random encoder is a0's and is counted once.
  assert [(r["arm"], r["n"]) for r in rows] == [("curr", 2), ("single", 2), ("random init", 3)]
  np.testing.assert_allclose(rows[0]["auroc"], [0.9, 0.95])
  assert rows[0]["attention_inside"] == [0.3] and rows[2]["accuracy"] == [0.5, 0.7, 0.6]
  assert rows[2]["workdirs"] == [a0, a1, b2]
  table = collect.format_rows(rows)
  assert "| curr | x (curriculum) | 2 | 0.850 ± 0.071 | 0.925 ± 0.035 | 0.300 | 0.320 |" in table
  assert "| single | x (curriculum) | 2 | 0.600 ± 0.000 | 0.700 ± 0.000 | — | — |" in table


def test_missing_results_and_bad_arm_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="nowhere/probe_results.json does not exist: arm 'a'"):
    collect.collect({"a": [str(tmp_path / "nowhere")]})
  with pytest.raises(ValueError, match="expected 'label=workdir1,workdir2"):
    collect.parse_arm("justalabel")
  assert collect.parse_arm("a b=/x,/y") == ("a b", ["/x", "/y"])


def test_retrieval_columns_appear_when_present(tmp_path):
  wd = _workdir(tmp_path, "c0", {"clip (pretrained)": {"accuracy": 0.8, "auroc": 0.9}})
  (tmp_path / "c0" / "retrieval.json").write_text(json.dumps(
      {"clip (pretrained)": {"i2t_R@1": 0.1, "i2t_R@10": 0.5, "label_match@1": 0.6}}))
  table = collect.format_rows(collect.collect({"clip": [wd]}))
  assert "image->report R@1 |" in table and table.splitlines()[-1].endswith("| 0.100 | 0.500 | 0.600 |")
  plain = collect.format_rows(collect.collect({"x": [_workdir(tmp_path, "d0", {"x": {"accuracy": 1, "auroc": 1}})]}))
  assert "R@1" not in plain
