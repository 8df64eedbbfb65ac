"""Out-of-distribution evaluation: label-map grouping against a straightforward numpy / sklearn reference,
spec and label-map errors, a predictor scored on a synthetic target, the probe / fine-tune predictors,
the matrix writer (md / csv / png) from synthetic records, the CXR table config, and the real NIH1000 /
HRF test splits (skipped without the shared data)."""
import json
import math
import os

import jax
import ml_collections
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medssl_jax import config as config_lib
from medssl_jax.data import pipeline
from medssl_jax.data import shared
from medssl_jax.evals import linear_probe as probe_lib
from medssl_jax.evals import ood
from medssl_jax.protocols import ood as ood_protocol
from medssl_jax.tables import ood_matrix, runner
from medssl_jax.protocols import probe as protocol_probe
from medssl_jax.protocols import encoders as protocol_encoders
from medssl_jax import experiment

FUNDUS = ("healthy", "mild", "moderate", "severe")


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("tfds")
  pipeline.get_builder("synthetic_fundus", data_dir=str(d), config="tiny")
  return d


def reference(labels, probs, *, groups, target_classes):
  """Loop implementation: per kept example, each group's summed probability / the mapped total."""
  classes = [t for t in target_classes if t in groups]
  y, s = [], []
  for label, p in zip(labels, probs):
    name = target_classes[label]
    if name not in groups:
      continue
    row = [sum(p[j] for j in groups[t]) for t in classes]
    total = sum(row)
    s.append([v / total for v in row] if total > 0 else [1 / len(row)] * len(row))
    y.append(classes.index(name))
  return np.array(y), np.array(s), classes


# ---------------------------------------------------------------------------------------------------
# Grouping maths.

def test_binary_grouping_matches_reference():
  """RetinaMNIST -> HRF: grade 0 -> healthy, grades 1-4 -> DR; glaucoma records dropped and counted."""
  rng = np.random.default_rng(0)
  src = ("0", "1", "2", "3", "4")
  tgt = ("healthy", "diabetic_retinopathy", "glaucoma")
  labels = rng.integers(0, 3, 200)
  probs = rng.dirichlet(np.ones(5), 200)
  lmap = {"healthy": ("0",), "diabetic_retinopathy": ("1", "2", "3", "4")}
  m = ood.score_grouped(labels, probs, label_map=lmap, target_classes=tgt, source_classes=src)
  y, s, classes = reference(labels, probs, groups={"healthy": [0], "diabetic_retinopathy": [1, 2, 3, 4]},
                            target_classes=tgt)
  assert m["classes"] == classes == ["healthy", "diabetic_retinopathy"]
  assert m["n"] == len(y) == int(np.sum(labels < 2)) and m["n_dropped"] == int(np.sum(labels == 2))
  assert m["dropped_per_class"] == {"glaucoma": int(np.sum(labels == 2))}
  assert m["n_per_class"] == {"healthy": int(np.sum(labels == 0)), "diabetic_retinopathy": int(np.sum(labels == 1))}
  assert m["auroc"] == pytest.approx(roc_auc_score(y, s[:, 1]), abs=1e-12)
  # Binary: the first class's score ranks the first class exactly as well (scores sum to 1).
  assert m["auroc_per_class"][0] == pytest.approx(roc_auc_score(y == 0, s[:, 0]), abs=1e-12)
  assert m["accuracy"] == pytest.approx(np.mean(s.argmax(1) == y))
  assert m["mapped_mass_mean"] == pytest.approx(1.0)  # Every source class mapped.


def test_multiclass_grouping_with_unmapped_source_class_and_zero_mass():
  """3 target groups; source class 3 mapped nowhere (its mass renormalised away); a row with all its mass
  on it scores uniformly."""
  rng = np.random.default_rng(1)
  src = ("a", "b", "c", "d", "e")
  tgt = ("x", "y", "z", "w")
  labels = rng.integers(0, 4, 150)
  probs = rng.dirichlet(np.ones(5), 150)
  probs[0] = [0, 0, 0, 1, 0]
  labels[0] = 0
  lmap = {"z": ("e",), "x": ("a",), "y": ("b", "c")}  # Key order differs from the target's class order.
  m = ood.score_grouped(labels, probs, label_map=lmap, target_classes=tgt, source_classes=src)
  y, s, classes = reference(labels, probs, groups={"x": [0], "y": [1, 2], "z": [4]}, target_classes=tgt)
  assert m["classes"] == classes == ["x", "y", "z"]
  np.testing.assert_allclose(s[0], [1 / 3] * 3)
  matrix = np.zeros((5, 3))
  matrix[0, 0] = matrix[1, 1] = matrix[2, 1] = matrix[4, 2] = 1
  scores, mass = ood.group_probabilities(probs[labels != 3], matrix)
  np.testing.assert_allclose(scores, s, atol=1e-12)
  assert mass[0] == 0 and m["mapped_mass_mean"] == pytest.approx(np.mean(1 - probs[labels != 3, 3]))
  assert m["auroc"] == pytest.approx(roc_auc_score(y, s, multi_class="ovr", average="macro"), abs=1e-12)
  per = [roc_auc_score(y == k, s[:, k]) for k in range(3)]
  np.testing.assert_allclose(m["auroc_per_class"], per, atol=1e-12)
  assert m["accuracy"] == pytest.approx(np.mean(s.argmax(1) == y))
  assert m["n_dropped"] == m["dropped_per_class"]["w"] == int(np.sum(labels == 3))
  # The identity map on the source's own classes reproduces the in-distribution metrics exactly.
  same = ood.score_grouped(labels, probs[:, :4] / probs[:, :4].sum(1, keepdims=True),
                           label_map={c: (c,) for c in tgt}, target_classes=tgt, source_classes=tgt)
  from medssl_jax.evals import metrics as metrics_lib
  assert same["auroc"] == metrics_lib.auroc(labels, probs[:, :4] / probs[:, :4].sum(1, keepdims=True))[0]
  assert same["n_dropped"] == 0 and same["n"] == 150


def test_predictor_output_errors():
  lmap = {"normal": ("normal",), "abnormal": ("pneumonia",)}
  kw = dict(label_map=lmap, target_classes=("normal", "abnormal"), source_classes=("normal", "pneumonia"))
  with pytest.raises(ValueError, match=r"must return \[N, 2\] probabilities .*'pneumonia'.* for the 3 target images"):
    ood.score_grouped([0, 1, 0], np.ones((3, 3)) / 3, **kw)
  with pytest.raises(ValueError, match="non-negative class probabilities .*not logits"):
    ood.score_grouped([0, 1], np.array([[2.0, -1.0], [0.5, 0.5]]), **kw)
  with pytest.raises(ValueError, match="target labels must be \\[N\\] class indices"):
    ood.score_grouped(np.zeros((2, 2), int), np.ones((2, 2)) / 2, **kw)


# ---------------------------------------------------------------------------------------------------
# Target specs.

GOOD = dict(name="nih1000", builder="nih_chestxray14", builder_config="subset1000_patient_split",
            label_map={"normal": ("normal",), "abnormal": ("pneumonia",)})


@pytest.mark.parametrize("edit,match", [
    (dict(colour="red"), r"Unknown key 'colour' in config.ood.targets\[0\] \('nih1000'\); valid keys"),
    (dict(builder="nih"), r"config.ood.targets\[0\] \('nih1000'\).builder='nih' is not known; valid choices: .*'nih_chestxray14'"),
    (dict(label_map={"normal": ("normal",)}), r"maps 1 target class\(es\) \(\['normal'\]\); AUROC needs at least 2"),
    (dict(label_map={"normal": ("normal",), "abnormal": ("normal", "pneumonia")}),
     r"maps source class 'normal' to both 'normal' and 'abnormal'"),
    (dict(label_map={"normal": (), "abnormal": ("pneumonia",)}), r"label_map\['normal'\] must be a non-empty tuple"),
    (dict(label_map=("normal", "abnormal")), r"label_map must be a dict"),
    (dict(split=""), r"\('nih1000'\).split must be non-empty"),
    (dict(manual_dir=3), r"manual_dir must be a string, got 3"),
])
def test_bad_target_specs_fail_in_validate(edit, match):
  c = config_lib.load("demo_simclr", "quick")
  c.ood.targets = (dict(GOOD, **edit),)
  with pytest.raises(ValueError, match=match):
    experiment.validate(c)


def test_spec_defaults_duplicates_and_missing_keys():
  c = config_lib.load("demo_simclr", "quick")
  assert c.ood.targets == ()
  c.ood.targets = (GOOD,)
  experiment.validate(c)
  spec = ood_protocol.validate_targets(c.ood.targets)[0]
  assert spec["split"] == "test" and spec["manual_dir"] == "" and spec["label_map"]["abnormal"] == ("pneumonia",)
  assert ood_protocol.describe_target(c, GOOD) == "synthetic_fundus/small → nih_chestxray14/subset1000_patient_split (test)"
  with pytest.raises(ValueError, match=r"names must be unique .*repeated: \['nih1000'\]"):
    ood_protocol.validate_targets((GOOD, dict(GOOD, split="validation")))
  with pytest.raises(ValueError, match=r"targets\[0\] \('x'\) needs 'label_map'"):
    ood_protocol.validate_targets((dict(name="x", builder="hrf"),))
  with pytest.raises(ValueError, match="must be a tuple of dicts"):
    ood_protocol.validate_targets("nih1000")
  # A single source-class name is accepted for a one-class group; JSON round trips (lists) too.
  assert ood_protocol.normalize_target(dict(GOOD, label_map={"normal": "normal", "abnormal": ["pneumonia"]}))["label_map"] == \
      {"normal": ("normal",), "abnormal": ("pneumonia",)}


def test_label_map_names_checked_against_both_datasets():
  with pytest.raises(ValueError, match=r"target class 'sick' is not a class of the target dataset; its classes: \['normal', 'abnormal'\]"):
    ood.resolve_label_map({"sick": ("pneumonia",), "normal": ("normal",)}, target_classes=("normal", "abnormal"),
                          source_classes=("normal", "pneumonia"))
  with pytest.raises(ValueError, match=r"\['abnormal'\]: source class 'pneumonai' is not a class of the source dataset; "
                                       r"its classes: \['normal', 'pneumonia'\]"):
    ood.resolve_label_map({"normal": ("normal",), "abnormal": ("pneumonai",)}, target_classes=("normal", "abnormal"),
                          source_classes=("normal", "pneumonia"))
  with pytest.raises(ValueError, match="target dataset has no class names .*need named target classes"):
    ood.resolve_label_map(GOOD["label_map"], target_classes=(), source_classes=("normal", "pneumonia"))
  classes, to_group, matrix = ood.resolve_label_map(
      {"glaucoma": ("2",), "healthy": ("0",)}, target_classes=("healthy", "diabetic_retinopathy", "glaucoma"),
      source_classes=("0", "1", "2"))
  assert classes == ["healthy", "glaucoma"] and to_group.tolist() == [0, -1, 1]
  np.testing.assert_array_equal(matrix, [[1, 0], [0, 0], [0, 1]])


# ---------------------------------------------------------------------------------------------------
# Loading a target and scoring a predictor on it (synthetic data).

def _fundus_config(tfds_dir, **target):
  c = config_lib.load("demo_simclr", "quick")
  c.data.data_dir = str(tfds_dir)
  c.data.builder_config = "tiny"
  c.data.image_size = 24  # The source's size, not the target's 32 px: images come at what the model saw.
  c.ood.targets = (dict(dict(name="fundus_test", builder="synthetic_fundus", builder_config="tiny",
                             label_map={"healthy": ("healthy",), "severe": ("moderate", "severe")}), **target),)
  return experiment.validate(c)


def _brightness_predictor(seen):
  def predict(images):
    seen.append(images.shape)
    m = images.reshape(len(images), -1).mean(1) / 255.0
    logits = np.stack([m * k for k in range(4)], 1) * 8.0
    p = np.exp(logits - logits.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True)
  return predict


def test_evaluate_targets_with_a_predictor(tfds_dir):
  config = _fundus_config(tfds_dir)
  seen = []
  out = ood_protocol.evaluate_targets(config, predict=_brightness_predictor(seen), source_classes=FUNDUS)
  assert list(out) == ["fundus_test"] and seen == [(32, 24, 24, 3)]
  m = out["fundus_test"]
  test = pipeline.load_split_arrays(pipeline.get_builder("synthetic_fundus", data_dir=str(tfds_dir), config="tiny"),
                                    split="test", image_size=24)
  labels = test["label"]
  counts = np.bincount(labels, minlength=4)
  assert m["n"] == counts[0] + counts[3] and m["n_dropped"] == counts[1] + counts[2] == 32 - m["n"]
  assert m["dropped_per_class"] == {"mild": int(counts[1]), "moderate": int(counts[2])}
  y, s, _ = reference(labels, _brightness_predictor([])(test["image"]), groups={"healthy": [0], "severe": [2, 3]},
                      target_classes=FUNDUS)
  assert m["auroc"] == pytest.approx(roc_auc_score(y, s[:, 1]), abs=1e-12)
  assert m["target"] == "synthetic_fundus/tiny → synthetic_fundus/tiny (test)"
  assert m["dataset"] == "synthetic_fundus/tiny" and m["split"] == "test" and "renormalised" in m["protocol"]
  json.dumps(out)  # Results rows are JSON.
  # Loaded once, scored for several encoders; the lines for probe_results.md.
  loaded = ood_protocol.load_targets(config)
  again = ood_protocol.evaluate_targets(config, predict=_brightness_predictor([]), source_classes=FUNDUS, loaded=loaded)
  assert again["fundus_test"]["auroc"] == m["auroc"]
  text = ood.format_ood({"random init": {"auroc": 0.5, "ood": again}, "other": {"auroc": 0.6}})
  assert "| random init | fundus_test: synthetic_fundus/tiny → synthetic_fundus/tiny (test) | healthy ← healthy; " \
         "severe ← moderate+severe |" in text and f"| {m['n']} | {m['n_dropped']} (mild: " in text
  assert ood.format_ood({"x": {"auroc": 0.5}}) == ""


def test_run_time_errors_name_the_target(tfds_dir):
  config = _fundus_config(tfds_dir, label_map={"healthy": ("healthy",), "sick": ("severe",)})
  with pytest.raises(ValueError, match=r"targets\[0\] \('fundus_test'\).label_map: target class 'sick' is not a class "
                                       r"of synthetic_fundus/tiny; its classes: \['healthy', 'mild', 'moderate', 'severe'\]"):
    ood_protocol.load_targets(config)
  config = _fundus_config(tfds_dir)
  called = []
  with pytest.raises(ValueError, match=r"\('fundus_test'\).label_map\['severe'\]: source class 'moderate' is not a class "
                                       r"of the source dataset; its classes: \['healthy', 'mild', 'severe'\]"):
    ood_protocol.evaluate_targets(config, predict=called.append, source_classes=("healthy", "mild", "severe"))
  assert not called  # Checked before any prediction.
  config.data.channels, config.data.mean, config.data.std = 1, (0.5,), (0.5,)
  with pytest.raises(ValueError, match=r"synthetic_fundus/tiny has 3-channel images but the source classifier "
                                       r"\(synthetic_fundus/tiny\) takes config.data.channels=1"):
    ood_protocol.load_targets(config)
  config = _fundus_config(tfds_dir, split="tset")
  with pytest.raises(ValueError, match=r"targets\[0\] \('fundus_test'\): Unknown split 'tset'"):
    ood_protocol.load_targets(config)


# ---------------------------------------------------------------------------------------------------
# Predictors of the source protocols: same numbers, and the predictor reproduces the test scores.

def test_linear_probe_predictor_reproduces_its_test_scores():
  rng = np.random.default_rng(0)
  centres = rng.normal(size=(3, 8)) * 2
  ytr, yte = rng.integers(0, 3, 60), rng.integers(0, 3, 30)
  xtr, xte = centres[ytr] + rng.normal(size=(60, 8)) + 5, centres[yte] + rng.normal(size=(30, 8)) + 5
  kw = dict(num_classes=3, l2_grid=(1e-2, 1e-1), max_iter=20)
  plain = probe_lib.linear_probe(xtr, ytr, xte, yte, **kw)
  result, predictor = probe_lib.linear_probe(xtr, ytr, xte, yte, return_predictor=True, **kw)
  assert result == plain
  probs = predictor(xte)
  assert probs.shape == (30, 3) and np.allclose(probs.sum(1), 1, atol=1e-5)
  assert np.mean(probs.argmax(1) == yte) == pytest.approx(plain["accuracy"])
  assert roc_auc_score(yte, probs, multi_class="ovr") == pytest.approx(plain["auroc"], abs=1e-6)
  with pytest.raises(ValueError, match=r"features must be \[M, 8\]"):
    predictor(xte[:, :4])


def test_finetune_predictor_reproduces_its_test_scores():
  import test_finetune as tf_test
  from medssl_jax.evals import finetune as ft
  kw = dict(steps=2, batch_size=16, backbone_lr_scale=0.0)
  plain = tf_test.run(**kw)
  result, predictor = tf_test.run(return_predictor=True, **kw)
  for key in ("accuracy", "auroc", "loss", "selected_step"):
    assert result[key] == plain[key]
  xte, yte = tf_test.squares(48, 1)
  probs = predictor(xte)
  assert probs.shape == (48, 4)
  assert ft._metrics(yte, probs, False)["auroc"] == pytest.approx(plain["auroc"], abs=1e-6)
  assert np.mean(probs.argmax(1) == yte) == pytest.approx(plain["accuracy"])
  with pytest.raises(ValueError, match=r"images must be uint8 \[M, H, W, 3\]"):
    predictor(xte[..., :1])
  jax.clear_caches()


# ---------------------------------------------------------------------------------------------------
# The matrix writer.

def _record(dataset, seed, auroc, ood_aurocs, *, encoder="supervised (random init)", other=None):
  results = {encoder: {"accuracy": 0.8, "auroc": auroc}}
  if ood_aurocs is not None:
    results[encoder]["ood"] = {
        name: dict(auroc=a, accuracy=0.6, n=199, n_dropped=0, label_map={"normal": ["normal"], "x": ["y"]},
                   dataset=name, split="test", target=f"{dataset} → {name} (test)")
        for name, a in ood_aurocs.items()}
  if other:
    results.update(other)
  return dict(table="ood_t", row=f"{dataset.split('/')[-1]}-s{seed}", base_config="b", axes={"seed": seed},
              config={"data": {"test_split": "test"}}, dataset=dataset, objective="none (supervised)",
              protocol="finetune", train_subset="", subset_seed=0, n_labelled=100, seed=seed, results=results,
              eval_wall_clock_s=1.0, pretrain_wall_clock_s=0.0, pretrain_dir="p", code_version="abc",
              versions={"jax": "0", "flax": "0", "optax": "0", "numpy": "0"}, status="ran")


def test_matrix_writer_from_synthetic_records(tmp_path):
  pm, nih = "medmnist/pneumoniamnist", "nih_chestxray14/subset1000_patient_split"
  records = [_record(pm, 0, 0.95, {nih: 0.61}), _record(pm, 1, 0.97, {nih: 0.65}),
             _record(nih, 0, 0.70, {pm: 0.80}), _record(nih, 1, 0.74, {pm: 0.90}),
             _record(nih, 2, 0.72, {pm: 0.85})]
  table = ml_collections.ConfigDict(dict(name="ood_t", description="synthetic"))
  mat = ood_matrix.build_matrix(ood_matrix.ood_entries(records))
  assert mat["columns"] == [pm, nih]
  rows = mat["rows"]
  assert rows == [f"{pm} · supervised (random init) · finetune", f"{nih} · supervised (random init) · finetune"]
  assert mat["cells"][(rows[0], pm)]["in_distribution"] and not mat["cells"][(rows[0], nih)]["in_distribution"]
  out = ood_matrix.write_ood_outputs(table, records, workdir=str(tmp_path))
  assert out == {k: str(tmp_path / f"ood_t_ood.{k}") for k in ("md", "csv", "png")}
  md = (tmp_path / "ood_t_ood.md").read_text()
  ms = lambda v: f"{np.mean(v):.3f} ± {np.std(v, ddof=1):.3f} (n={len(v)})"
  assert f"| {rows[0]} | **{ms([0.95, 0.97])}** | {ms([0.61, 0.65])} |" in md
  assert f"| {rows[1]} | {ms([0.80, 0.90, 0.85])} | **{ms([0.70, 0.74, 0.72])}** |" in md
  assert "![AUROC matrix](ood_t_ood.png)" in md and f"| {pm} | {nih} | normal ← normal; x ← y | 199 | 0 |" in md
  with open(out["png"], "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n" and os.path.getsize(out["png"]) > 5000
  lines = (tmp_path / "ood_t_ood.csv").read_text().splitlines()
  assert len(lines) == 1 + 10 and lines[0].startswith("table,row,seed,source")
  # No OOD results anywhere: nothing written.
  assert ood_matrix.write_ood_outputs(table, [_record(pm, 0, 0.9, None)], workdir=str(tmp_path / "none")) is None
  # A missing cell (a row without a target) and a nan AUROC (one class in a split) stay readable.
  recs = [_record(pm, 0, 0.9, {nih: float("nan")}), _record("hrf/classification_512", 0, 0.7, {})]
  md = ood_matrix.format_markdown(table, recs)
  assert "| nan |" in md and "| — |" in md
  assert ood_matrix.plot_heatmap(table, recs, str(tmp_path / "h.png"))


def test_runner_write_outputs_hook(tmp_path):
  """runner.write_outputs writes the OOD matrix beside the table when rows carry OOD results."""
  pm, nih = "medmnist/pneumoniamnist", "nih_chestxray14/subset1000_patient_split"
  table = ml_collections.ConfigDict(dict(name="hook", base_config="configs/table_ood_cxr.py:quick",
                                         grid={"seed": (0, 1)}))
  out = runner.write_outputs(table, [_record(pm, 0, 0.9, {nih: 0.6}), _record(pm, 1, 0.92, {nih: 0.62})],
                             workdir=str(tmp_path))
  assert out["ood"]["md"] == str(tmp_path / "hook_ood.md") and os.path.exists(out["ood"]["png"])
  table.name = "plain"
  assert runner.write_outputs(table, [_record(pm, 0, 0.9, None)], workdir=str(tmp_path))["ood"] is None
  assert not (tmp_path / "plain_ood.md").exists()


# ---------------------------------------------------------------------------------------------------
# The CXR table config.

def test_cxr_table_rows_point_at_each_other(tmp_path, monkeypatch):
  from tfds_builders.medmnist import DATASETS
  try:  # Rows resolve their epochs from the datasets they open: both sources' shared files.
    shared.dataset_dir("pneumoniamnist"), shared.dataset_dir("nih_cxr14_1000_64px")
  except FileNotFoundError as e:
    pytest.skip(f"real data absent: {e}")
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
  table = runner.load_table("configs/table_ood_cxr.py:quick")
  rows = runner.build_rows(table)
  assert len(rows) == 6 and {r["config"].seed for r in rows} == {0, 1, 2}
  by_source = {r["config"].data.builder: r["config"] for r in rows}
  pm, nih = by_source["medmnist"], by_source["nih_chestxray14"]
  assert pm.data.image_size == nih.data.image_size == 28 and pm.data.channels == nih.data.channels == 1
  # 2 epochs at the quick batch of 32: ceil(4708 / 32) = 148 and ceil(619 / 32) = 20 steps an epoch.
  assert pm.mode == nih.mode == "supervised" and pm.eval.finetune_steps == 296 and nih.eval.finetune_steps == 40
  (to_nih,), (to_pm,) = pm.ood.targets, nih.ood.targets
  assert (to_nih["builder"], to_nih["builder_config"]) == (nih.data.builder, nih.data.builder_config)
  assert (to_pm["builder"], to_pm["builder_config"]) == (pm.data.builder, pm.data.builder_config)
  nih_classes = pipeline.class_names(pipeline.get_builder("nih_chestxray14", config="subset1000_patient_split",
                                                          data_dir=str(tmp_path), prepare=False))
  pm_classes = list(DATASETS["pneumoniamnist"][2])
  assert ood.resolve_label_map(to_nih["label_map"], target_classes=nih_classes, source_classes=pm_classes)[0] == \
      ["normal", "abnormal"]
  assert ood.resolve_label_map(to_pm["label_map"], target_classes=pm_classes, source_classes=nih_classes)[0] == \
      ["normal", "pneumonia"]
  full = runner.build_rows(runner.load_table("configs/table_ood_cxr.py"))
  assert {r["config"].eval.finetune_steps for r in full} == {3700, 500}
  assert {r["config"].model.width_multiplier for r in runner.build_rows(runner.load_table("configs/table_ood_cxr.py:cpu"))} == {0.25}
  with pytest.raises(ValueError, match="valid variants: .*'<source>,quick'\\] with <source> in"):
    config_lib.load("table_ood_cxr", "nih")


# ---------------------------------------------------------------------------------------------------
# Real data (skipped without the shared folders).

def _shared(name):
  from medssl_jax.data import shared
  try:
    return shared.dataset_dir(name)
  except FileNotFoundError as e:
    pytest.skip(f"real data absent: {e}")


def test_real_nih1000_test_split_as_a_target(tmp_path):
  """PneumoniaMNIST source -> the real NIH1000 test split: 199 records (91 normal, 108 abnormal), none dropped,
  images at the source's 28 px grayscale; a brightness predictor scored against sklearn."""
  _shared("nih_cxr14_1000_64px")
  config = config_lib.load("table_ood_cxr", "pneumoniamnist,quick")
  config.data.data_dir = str(tmp_path / "tfds")
  seen = []

  def predict(images):
    seen.append(images.shape)
    p = images.reshape(len(images), -1).mean(1) / 255.0
    return np.stack([1 - p, p], 1)

  m = ood_protocol.evaluate_targets(config, predict=predict, source_classes=("normal", "pneumonia"))["nih1000"]
  assert seen == [(199, 28, 28, 1)]
  assert (m["n"], m["n_dropped"], m["n_per_class"]) == (199, 0, {"normal": 91, "abnormal": 108})
  assert m["target"] == "medmnist/pneumoniamnist → nih_chestxray14/subset1000_patient_split (test)"
  (target,) = ood_protocol.load_targets(config)
  brightness = target.images.reshape(199, -1).mean(1)
  assert m["auroc"] == pytest.approx(roc_auc_score(target.labels, brightness), abs=1e-9)
  assert 0.0 <= m["auroc"] <= 1.0 and math.isfinite(m["accuracy"])


def test_real_hrf_test_split_drops_glaucoma(tmp_path):
  """RetinaMNIST grades -> the real HRF test split (3 healthy / 3 DR / 3 glaucoma): glaucoma dropped."""
  hrf_dir = _shared("hrf")
  config = config_lib.load("medmnist_supervised", "retinamnist,quick")
  config.data.data_dir = str(tmp_path / "tfds")
  config.ood.targets = (dict(name="hrf", builder="hrf", builder_config="classification_512", manual_dir=str(hrf_dir),
                             label_map={"healthy": ("0",), "diabetic_retinopathy": ("1", "2", "3", "4")}),)
  experiment.validate(config)
  probs = np.full((9, 5), 0.2)
  m = ood_protocol.evaluate_targets(config, predict=lambda im: probs[:len(im)], source_classes=("0", "1", "2", "3", "4"))["hrf"]
  assert (m["n"], m["n_dropped"], m["dropped_per_class"]) == (6, 3, {"glaucoma": 3})
  assert m["n_per_class"] == {"healthy": 3, "diabetic_retinopathy": 3}
  assert m["auroc"] == 0.5 and m["mapped_mass_mean"] == pytest.approx(1.0)  # Constant scores: chance.


@pytest.mark.parametrize("protocol", ["linear_probe", "knn", "finetune"])
def test_experiment_scores_ood_targets_kappa_and_intervals(tfds_dir, protocol):
  """Wired through experiment.probe: an identity label map onto the source's own test split reproduces
  the in-distribution AUROC and accuracy exactly (the same classifier, the same images), for every
  protocol; eval.ordinal adds kappa and eval.bootstrap_samples an interval around the AUROC."""
  c = _fundus_config(tfds_dir, name="self", label_map={k: (k,) for k in FUNDUS})
  c.data.image_size = 32
  for v in c.augment.views:
    v.crop_size = 32
  c.eval.protocol, c.eval.ordinal, c.eval.bootstrap_samples = protocol, True, 50
  c.eval.max_iter, c.eval.l2_grid, c.eval.knn_k = 10, (1e-2,), 5
  c.eval.finetune_steps, c.eval.finetune_batch_size, c.eval.finetune_eval_every = 2, 16, 2
  builder = pipeline.open_dataset(c.data)
  model, variables = protocol_encoders.random_init_variables(c)
  results = protocol_probe.probe(c, {"enc": (model, variables, True)}, builder=builder)
  r = results["enc"]
  o = r["ood"]["self"]
  assert o["n"] == 32 and o["n_dropped"] == 0
  assert o["auroc"] == pytest.approx(r["auroc"], abs=1e-6) and o["accuracy"] == pytest.approx(r["accuracy"])
  assert -1.0 <= r["kappa"] <= 1.0 and r["auroc_ci"][0] <= r["auroc"] <= r["auroc_ci"][1]
  table = protocol_probe.format_table(results, config=c)
  assert "AUROC 95% CI" in table and "kappa (quadratic)" in table and "Out-of-distribution targets" in table


# ---------------------------------------------------------------------------------------------------
# Multi-label sources and targets (CheXpert / MIMIC-CXR / NIH ChestX-ray14 / synthetic_cxr).

def test_multilabel_scores_match_reference():
  """Target score = max of the mapped source probabilities; AUROC per class over certain (not -1) records
  against sklearn; a one-valued class skipped; unmapped target classes ignored; no row dropped."""
  rng = np.random.default_rng(3)
  src = ("a", "b", "c", "d")
  tgt = ("x", "y", "z", "w", "v")
  n = 120
  labels = rng.integers(0, 2, (n, 5))
  labels[rng.uniform(size=(n, 5)) < 0.2] = -1  # Uncertain entries.
  labels[:, 2] = np.where(labels[:, 2] == -1, -1, 0)  # 'z': no positive among its certain records.
  probs = rng.uniform(size=(n, 4))
  lmap = {"y": ("b", "d"), "x": ("a",), "z": ("c",)}
  m = ood.score_multilabel(labels, probs, label_map=lmap, target_classes=tgt, source_classes=src)
  assert m["classes"] == ["x", "y", "z"] and m["unmapped_classes"] == ["w", "v"]
  assert m["n"] == n and m["n_dropped"] == 0 and m["multi_label"] and m["skipped_classes"] == ["z"]
  ref_scores = {"x": probs[:, 0], "y": np.maximum(probs[:, 1], probs[:, 3]), "z": probs[:, 2]}
  per = []
  for j, c in enumerate(tgt[:2]):
    keep = labels[:, j] != -1
    per.append(roc_auc_score(labels[keep, j], ref_scores[c][keep]))
  np.testing.assert_allclose(m["auroc_per_class"][:2], per, atol=1e-12)
  assert math.isnan(m["auroc_per_class"][2]) and m["auroc"] == pytest.approx(np.mean(per), abs=1e-12)
  assert m["n_per_class"] == {c: int(np.sum(labels[:, j] == 1)) for j, c in enumerate(tgt[:3])}
  assert m["n_uncertain_per_class"] == {c: int(np.sum(labels[:, j] == -1)) for j, c in enumerate(tgt[:3])}
  hits = [(ref_scores[c][i] >= 0.5) == (labels[i, j] == 1) for j, c in enumerate(tgt[:3]) for i in range(n)
          if labels[i, j] != -1]
  assert m["accuracy"] == pytest.approx(np.mean(hits))
  json.dumps(m)
  # No class with both values: macro AUROC nan, every class listed as skipped.
  none = ood.score_multilabel(np.zeros((4, 5), int), probs[:4], label_map=lmap, target_classes=tgt,
                              source_classes=src)
  assert math.isnan(none["auroc"]) and none["skipped_classes"] == ["x", "y", "z"]


def test_multilabel_errors():
  src, tgt = ("a", "b"), ("x", "y", "z")
  kw = dict(label_map={"x": ("a",), "y": ("b",)}, target_classes=tgt, source_classes=src)
  labels = np.zeros((3, 3), int)
  with pytest.raises(ValueError, match=r"per-class probabilities in \[0, 1\] .*not logits"):
    ood.score_multilabel(labels, np.full((3, 2), 2.0), **kw)
  with pytest.raises(ValueError, match=r"must return \[N, 2\] per-class probabilities .*'b'.* for the 3 target images"):
    ood.score_multilabel(labels, np.full((3, 3), 0.5), **kw)
  with pytest.raises(ValueError, match=r"target labels must be \[N, 3\] .*got shape \(3,\)"):
    ood.score_multilabel(np.zeros(3, int), np.full((3, 2), 0.5), **kw)
  with pytest.raises(ValueError, match=r"must be 0, 1 or -1 \(uncertain\), got \[2\]"):
    ood.score_multilabel(labels + 2 * np.eye(3, dtype=int), np.full((3, 2), 0.5), **kw)
  with pytest.raises(ValueError, match=r"target class 'Effusion' is not a class of the target dataset; its classes: "
                                       r"\['x', 'y', 'z'\]"):
    ood.score_multilabel(labels, np.full((3, 2), 0.5), **dict(kw, label_map={"Effusion": ("a",), "x": ("b",)}))
  with pytest.raises(ValueError, match=r"\['x'\]: source class 'q' is not a class of the source dataset; its classes: "
                                       r"\['a', 'b'\]"):
    ood.score_multilabel(labels, np.full((3, 2), 0.5), **dict(kw, label_map={"x": ("q",), "y": ("b",)}))


def _loaded(multi_label, classes=("x", "y")):
  spec = ood_protocol.normalize_target(dict(name="t", builder="chexpert", label_map={c: (c,) for c in classes}))
  labels = np.zeros((2, len(classes)), int) if multi_label else np.zeros(2, int)
  return ood_protocol.LoadedTarget(spec=spec, dataset="d/c", classes=list(classes), images=np.zeros((2, 8, 8, 1), np.uint8),
                          labels=labels, multi_label=multi_label)


def test_mixing_single_and_multi_label_is_an_error():
  with pytest.raises(ValueError, match=r"targets\[0\] \('t'\): the source classifier is multi-label .* but d/c is "
                                       r"single-label .*mixing single-label and multi-label datasets .*not supported"):
    ood_protocol.check_label_maps([_loaded(False)], source_classes=("x", "y"), source_multi_label=True)
  with pytest.raises(ValueError, match=r"source classifier is single-label .* but d/c is multi-label .*not supported"):
    ood_protocol.check_label_maps([_loaded(True)], source_classes=("x", "y"))
  config = config_lib.load("demo_simclr", "quick")
  called = []
  with pytest.raises(ValueError, match="not supported"):
    ood_protocol.evaluate_targets(config, predict=called.append, source_classes=("x", "y"), loaded=[_loaded(True)])
  assert not called
  # Same kind: the multi-label scorer is used and the protocol says so.
  out = ood_protocol.evaluate_targets(config, predict=lambda im: np.full((len(im), 2), 0.5), source_classes=("x", "y"),
                             loaded=[_loaded(True)], source_multi_label=True)["t"]
  assert out["protocol"] == ood.PROTOCOL_MULTI_LABEL and out["n"] == 2 and out["skipped_classes"] == ["x", "y"]


def _names(name, config):
  b = pipeline.get_builder(name, config=config, data_dir="/nonexistent-medssl-ood", prepare=False)
  return pipeline.label_names(b), pipeline.is_multi_label(b)


def test_label_names_and_cxr_label_map_on_the_real_builders():
  from medssl_jax.synthetic import cxr as synthetic_cxr
  from tfds_builders.chexpert import LABELS
  from tfds_builders.nih_chestxray14 import FINDINGS
  chexpert, mimic = _names("chexpert", "all_u_keep_320"), _names("mimic_cxr", None)
  nih, synth = _names("nih_chestxray14", "256"), _names("synthetic_cxr", "tiny")
  assert chexpert == mimic == (list(LABELS), True) and nih == (list(FINDINGS), True)
  assert synth == (list(synthetic_cxr.FINDINGS), True)
  assert _names("nih_chestxray14", "subset1000") == (["normal", "abnormal"], False)  # ClassLabel wins.
  assert pipeline.class_names(pipeline.get_builder("chexpert", data_dir="/nonexistent-medssl-ood", prepare=False)) == []
  to_nih = ood.cxr_label_map(chexpert[0], nih[0])
  assert to_nih == {"Atelectasis": ("Atelectasis",), "Cardiomegaly": ("Cardiomegaly",),
                    "Effusion": ("Pleural Effusion",), "Pneumonia": ("Pneumonia",), "Pneumothorax": ("Pneumothorax",),
                    "Consolidation": ("Consolidation",), "Edema": ("Edema",)}
  assert list(to_nih) == [f for f in FINDINGS if f in to_nih]  # Target order.
  to_chexpert = ood.cxr_label_map(nih[0], chexpert[0])
  assert to_chexpert["Pleural Effusion"] == ("Effusion",) and len(to_chexpert) == 7
  assert ood.cxr_label_map(mimic[0], chexpert[0]) == {c: (c,) for c in LABELS}  # Identity: the same 14.
  assert ood.cxr_label_map(synth[0], nih[0]) == {"Cardiomegaly": ("cardiomegaly",), "Effusion": ("effusion",),
                                                 "Consolidation": ("consolidation",)}
  for src, tgt in ((chexpert, nih), (nih, chexpert), (synth, chexpert)):  # Every map passes both checks.
    lmap = ood.cxr_label_map(src[0], tgt[0])
    ood_protocol.normalize_target(dict(name="t", builder="chexpert", label_map=lmap))
    ood.resolve_label_map(lmap, target_classes=tgt[0], source_classes=src[0])
  with pytest.raises(ValueError, match=r"share 1 finding\(s\) \(\['Edema'\]\); an OOD label map needs 2"):
    ood.cxr_label_map(("Edema", "Fracture"), nih[0])


def test_experiment_multilabel_source_to_multilabel_targets(tfds_dir, tmp_path_factory):
  """synthetic_cxr/tiny source, linear probe: its own test split under the identity map reproduces the
  in-distribution macro AUROC; a dummy CheXpert validation split (u_keep: uncertain -1 labels) target through cxr_label_map
  scores its 3 shared findings on every record; a single-label target fails before any training."""
  from medssl_jax.synthetic import cxr as synthetic_cxr
  from tfds_builders.chexpert import LABELS
  from tfds_builders.chexpert import dummy_data as chexpert_dummy
  root = tmp_path_factory.mktemp("cxr")
  manual = chexpert_dummy.write(root / "manual")
  c = config_lib.load("demo_simclr", "quick")
  c.data.builder, c.data.builder_config, c.data.data_dir = "synthetic_cxr", "tiny", str(root / "tfds")
  c.data.image_size, c.data.channels, c.data.mean, c.data.std = 32, 1, (0.5,), (0.5,)
  c.data.val_split = ""
  for v in c.augment.views:
    v.crop_size = 32
  c.eval.protocol, c.eval.max_iter, c.eval.l2_grid = "linear_probe", 10, (1e-2,)
  to_chexpert = ood.cxr_label_map(synthetic_cxr.FINDINGS, LABELS)
  c.ood.targets = (dict(name="self", builder="synthetic_cxr", builder_config="tiny",
                        label_map={f: (f,) for f in synthetic_cxr.FINDINGS}),
                   dict(name="chexpert", builder="chexpert", builder_config="all_u_keep_320", manual_dir=str(manual),
                        split="validation", label_map=to_chexpert))  # Its uncertain labels: train.csv's.
  experiment.validate(c)
  builder = pipeline.open_dataset(c.data)
  model, variables = protocol_encoders.random_init_variables(c)
  results = protocol_probe.probe(c, {"enc": (model, variables, True)}, builder=builder)
  r = results["enc"]
  own, cx = r["ood"]["self"], r["ood"]["chexpert"]
  assert own["n"] == 32 and own["auroc"] == pytest.approx(r["auroc"], abs=1e-6)
  (target,) = [t for t in ood_protocol.load_targets(c) if t.spec["name"] == "chexpert"]
  assert target.multi_label and target.images.shape[1:] == (32, 32, 1) and (target.labels == -1).any()
  assert cx["classes"] == ["Cardiomegaly", "Consolidation", "Pleural Effusion"] and cx["n"] == len(target.labels)
  cols = [LABELS.index(k) for k in cx["classes"]]
  assert cx["n_uncertain_per_class"] == {k: int(np.sum(target.labels[:, j] == -1)) for k, j in zip(cx["classes"], cols)}
  assert len(cx["unmapped_classes"]) == 11 and cx["protocol"] == ood.PROTOCOL_MULTI_LABEL
  assert "classes ignored: No Finding" in protocol_probe.format_table(results, config=c)
  json.dumps(r["ood"])
  c.ood.targets = (dict(name="fundus", builder="synthetic_fundus", builder_config="tiny", data_dir=str(tfds_dir),
                        label_map={"healthy": ("effusion",), "severe": ("cardiomegaly",)}),)
  c.data.channels, c.data.mean, c.data.std = 3, (0.5,) * 3, (0.5,) * 3  # Past the channel check, to the kind check.
  with pytest.raises(ValueError, match="source classifier is multi-label .*not supported"):
    protocol_probe.probe(c, {"enc": (model, variables, True)}, builder=builder)
