"""Layer-wise ("guillotine") probes and neural collapse per layer, selected by eval.feature_layers /
eval.neural_collapse: config checks, experiment.probe per layer, results names, tables with a layer column."""
import csv
import io
import json

import ml_collections
import numpy as np
import pytest

from medssl_jax import experiment
from medssl_jax.augment import views
from medssl_jax.config import load as load_config
from medssl_jax.data import pipeline
from medssl_jax.evals import knn as knn_lib
from medssl_jax.evals import linear_probe as probe_lib
from medssl_jax.evals import representation as rep
from medssl_jax.tables import runner
from medssl_jax.protocols import probe as protocol_probe
from medssl_jax.protocols import encoders as protocol_encoders

LAYERS = ("backbone", "projector/hidden1", "projector/out")


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("tfds")
  pipeline.get_builder("synthetic_fundus", data_dir=str(d), config="tiny")
  return d


def tiny_config(tfds_dir=None):
  """demo_simclr:quick on synthetic_fundus/tiny (32 px, 64 train / 32 test), a 10-iteration probe."""
  c = load_config("demo_simclr", "quick")
  c.data.builder_config, c.data.image_size = "tiny", 32
  if tfds_dir is not None:
    c.data.data_dir = str(tfds_dir)
  c.augment.views = [views.default_view(crop_size=32, crop_scale=(0.5, 1.0), grayscale_p=0.0, blur_p=0.0)] * 2
  c.eval.max_iter, c.eval.l2_grid, c.eval.batch_size = 10, (1e-2,), 32
  c.eval.bootstrap_samples = 0  # Intervals add keys and a column, checked in tests/test_e2e.py.
  return c


# ---------------------------------------------------------------------------------------------------
# Config.

def test_default_and_valid_layers_validate():
  c = tiny_config()
  assert tuple(c.eval.feature_layers) == ("backbone",) and c.eval.neural_collapse is False
  experiment.validate(c)
  c.eval.feature_layers = ("stage1", "stage3", *LAYERS)
  c.eval.protocol = "knn"
  experiment.validate(c)
  c.objective.name = "swav"  # SwAV's head exposes only its projection.
  c.eval.feature_layers = ("backbone", "projector/out")
  experiment.validate(c)


@pytest.mark.parametrize("edit,match", [
    (lambda c: setattr(c.eval, "feature_layers", ("backbone", "projector_0")),
     r"unknown layer\(s\) \['projector_0'\] for resnet18 with the 'simclr' heads; valid layers: \['stage1', "
     r"'stage2', 'stage3', 'backbone', 'projector/hidden1', 'projector/out'\]"),
    (lambda c: c.update(load_config("fundus_mae", "quick"), eval=dict(feature_layers=("projector/out",))),
     r"unknown layer\(s\) \['projector/out'\] for vit_tiny with the 'mae' heads; valid layers: \['backbone'\]"),
    (lambda c: setattr(c.eval, "feature_layers", ("backbone", "backbone")), "lists a layer twice"),
    (lambda c: setattr(c.eval, "feature_layers", ()), "must be a non-empty tuple of layer names"),
    (lambda c: (setattr(c.eval, "protocol", "finetune"), setattr(c.eval, "feature_layers", LAYERS)),
     r"apply to the frozen-feature protocols .*finetune.*needs feature_layers=\('backbone',\)"),
    (lambda c: (setattr(c.eval, "protocol", "finetune"), setattr(c.eval, "neural_collapse", True)),
     "neural_collapse=False"),
])
def test_bad_layer_configs_fail_before_any_work(edit, match):
  c = tiny_config()
  edit(c)
  with pytest.raises(ValueError, match=match):
    experiment.validate(c)


def test_results_names():
  c = tiny_config()
  assert protocol_probe.results_name(c) == "probe_results"  # The default: as before layers were selectable.
  c.eval.feature_layers = LAYERS
  assert protocol_probe.results_name(c) == "probe_results_layers-backbone+projector_hidden1+projector_out"
  c.eval.neural_collapse = True
  c.eval.protocol, c.eval.train_subset = "knn", "10%"
  assert protocol_probe.results_name(c) == "probe_results_knn_10pct_seed0_layers-backbone+projector_hidden1+projector_out_nc"
  c.eval.feature_layers = ("backbone",)
  assert protocol_probe.results_name(c) == "probe_results_knn_10pct_seed0_nc"
  c.eval.feature_layers = ("projector/out",)
  assert protocol_probe.results_name(c) == "probe_results_knn_10pct_seed0_layers-projector_out_nc"


# ---------------------------------------------------------------------------------------------------
# experiment.probe per layer.

@pytest.fixture(scope="module")
def setup(tfds_dir):
  """Two encoders (random inits of seeds 0 and 1, both BN-recalibrated), the builder and the splits."""
  c = tiny_config(tfds_dir)
  builder = pipeline.open_dataset(c.data)
  model, v0 = protocol_encoders.random_init_variables(c)
  c1 = tiny_config(tfds_dir)
  c1.seed = 1
  _, v1 = protocol_encoders.random_init_variables(c1)
  encoders = {"a": (model, v1, True), "random init": (model, v0, True)}
  split = lambda s: pipeline.load_split_arrays(builder, split=s, image_size=32, fit=c.data.fit)
  train, test = split("train"), split("test")
  kw = dict(image_size=32, mean=tuple(c.data.mean), std=tuple(c.data.std), batch_size=32)
  recal = {n: probe_lib.recalibrate_batch_stats(m, v, train["image"], **kw) for n, (m, v, _) in encoders.items()}
  return dict(builder=builder, model=model, encoders=encoders, train=train, test=test, kw=kw, recal=recal)


def test_default_layer_is_the_backbone_probe_of_before(tfds_dir, setup):
  c = tiny_config(tfds_dir)
  s = setup
  results = protocol_probe.probe(c, s["encoders"], builder=s["builder"])
  assert list(results) == ["a", "random init"]
  for name, r in results.items():
    tr = probe_lib.extract_features(s["model"], s["recal"][name], s["train"]["image"], **s["kw"])
    te = probe_lib.extract_features(s["model"], s["recal"][name], s["test"]["image"], **s["kw"])
    want = probe_lib.linear_probe(tr, s["train"]["label"], te, s["test"]["label"], num_classes=4, l2_grid=(1e-2,),
                                  max_iter=10, seed=0)
    assert r == dict(want, layer="backbone")
  table = protocol_probe.format_table(results, config=c)
  a, b = results["a"], results["random init"]
  assert table.splitlines()[1] == f"Protocol: {probe_lib.PROTOCOL}" and table.splitlines()[2:] == [
      "", "| encoder | accuracy | AUROC (macro OvR) |", "|---|---|---|",
      f"| a | {a['accuracy']:.4f} | {a['auroc']:.4f} |", f"| random init | {b['accuracy']:.4f} | {b['auroc']:.4f} |",
      "", f"a - random init: accuracy {a['accuracy'] - b['accuracy']:+.4f}, AUROC {a['auroc'] - b['auroc']:+.4f}"]

  # Several layers, with neural collapse: one result per encoder and layer.
  c.eval.feature_layers, c.eval.neural_collapse = LAYERS, True
  layered = protocol_probe.probe(c, s["encoders"], builder=s["builder"])
  assert list(layered) == [f"{n} @ {l}" for n in ("a", "random init") for l in LAYERS]
  assert all(layered[f"{n} @ {l}"]["layer"] == l for n in ("a", "random init") for l in LAYERS)
  for name in ("a", "random init"):  # The backbone's probe is the default one (the same features, bit for bit).
    r = dict(layered[f"{name} @ backbone"])
    r.pop("neural_collapse")
    assert r == results[name]
    feats = {split: rep.layer_features(s["model"], s["recal"][name], s[split]["image"], layers=list(LAYERS), **s["kw"])
             for split in ("train", "test")}
    np.testing.assert_array_equal(feats["train"]["backbone"], probe_lib.extract_features(
        s["model"], s["recal"][name], s["train"]["image"], **s["kw"]))
    for layer in LAYERS:
      tr, te = feats["train"][layer], feats["test"][layer]
      r = layered[f"{name} @ {layer}"]
      nc = r["neural_collapse"]
      assert nc["train"] == rep.neural_collapse(features=tr, labels=s["train"]["label"])
      assert nc["test"] == rep.neural_collapse(features=te, labels=s["test"]["label"])
      assert np.isfinite(nc["train"]["nc1"]) and nc["train"]["nc1"] > 0
      # NCC on the test split with the training class means, by a plain loop.
      ytr, yte = s["train"]["label"], s["test"]["label"]
      means = {k: tr[ytr == k].astype(np.float64).mean(0) for k in np.unique(ytr)}
      pred = [min(means, key=lambda k: np.sum((x.astype(np.float64) - means[k]) ** 2)) for x in te]
      assert nc["ncc_test_accuracy"] == pytest.approx(np.mean(np.array(pred) == yte), abs=1e-12)
      if layer == "projector/out":
        want = probe_lib.linear_probe(tr, ytr, te, yte, num_classes=4, l2_grid=(1e-2,), max_iter=10, seed=0)
        assert {k: v for k, v in r.items() if k not in ("layer", "neural_collapse")} == want
  assert len({layered[f"a @ {l}"]["neural_collapse"]["train"]["nc1"] for l in LAYERS}) == 3  # Layers differ.

  table = protocol_probe.format_table(layered, config=c)
  assert "| encoder | layer | accuracy | AUROC (macro OvR) | NC1 (train) | NC1 (test) |" in table
  r = layered["random init @ projector/hidden1"]
  nc = r["neural_collapse"]
  assert (f"| random init | projector/hidden1 | {r['accuracy']:.4f} | {r['auroc']:.4f} | {nc['train']['nc1']:.4g} | "
          f"{nc['test']['nc1']:.4g} | {nc['train']['within_between_ratio']:.4g} | {nc['ncc_test_accuracy']:.4f} |") in table
  assert "Layers: backbone, projector/hidden1, projector/out" in table and rep.PROTOCOL[1:] in table
  a, b = layered["a @ projector/out"], layered["random init @ projector/out"]
  assert (f"a - random init @ projector/out: accuracy {a['accuracy'] - b['accuracy']:+.4f}, "
          f"AUROC {a['auroc'] - b['auroc']:+.4f}") in table


def test_knn_per_layer(tfds_dir, setup):
  c = tiny_config(tfds_dir)
  c.eval.protocol, c.eval.knn_k, c.eval.feature_layers = "knn", 5, ("projector/out", "stage2")
  s = setup
  results = protocol_probe.probe(c, {"a": s["encoders"]["a"]}, builder=s["builder"])
  assert list(results) == ["a @ projector/out", "a @ stage2"]
  feats = {split: rep.layer_features(s["model"], s["recal"]["a"], s[split]["image"], layers=["projector/out", "stage2"],
                                     **s["kw"]) for split in ("train", "test")}
  for layer in ("projector/out", "stage2"):
    want = knn_lib.knn_eval(train_features=feats["train"][layer], train_labels=s["train"]["label"],
                            test_features=feats["test"][layer], test_labels=s["test"]["label"], num_classes=4, k=5,
                            temperature=c.eval.knn_temperature, weighting=c.eval.knn_weighting)
    assert results[f"a @ {layer}"] == dict(want, layer=layer)


# ---------------------------------------------------------------------------------------------------
# Tables.

def _record(results, *, row="r0", seed=0):
  return dict(table="t", row=row, dataset="synthetic_fundus/tiny", objective="simclr", protocol="linear_probe",
              train_subset="", subset_seed=0, n_labelled=64, seed=seed, results=results, eval_wall_clock_s=1.0,
              pretrain_wall_clock_s=2.0, code_version="abc", versions={k: "1" for k in runner.PACKAGES},
              status="ran", axes={"seed": seed}, pretrain_dir="pretrain/p")


def _table():
  t = ml_collections.ConfigDict()
  t.name, t.base_config = "t", "configs/demo_simclr.py:quick"
  t.grid = ml_collections.ConfigDict({"seed": (0, 1)})
  return t


def test_table_outputs_without_layers_are_unchanged():
  """Records written before layers were selectable (no "layer") and default ones ("backbone") give the
  same columns as before: no layer or NC column in the Markdown, CSV_COLUMNS in the CSV."""
  old = [_record({"simclr (pretrained)": dict(accuracy=0.5, auroc=0.6)}, seed=k) for k in (0, 1)]
  new = [_record({"simclr (pretrained)": dict(accuracy=0.5, auroc=0.6, layer="backbone")}, seed=k) for k in (0, 1)]
  for records in (old, new):
    lines = list(csv.reader(io.StringIO(runner.format_csv(_table(), records))))
    assert tuple(lines[0]) == runner.CSV_COLUMNS and len(lines) == 3
    md = runner.format_markdown(_table(), records)
    assert "| dataset | objective | encoder | protocol | labels | accuracy | AUROC | source |" in md
    assert ("| synthetic_fundus/tiny | simclr | simclr (pretrained) | linear_probe | 100% (n=64) | 0.500 ± 0.000 (n=2) | "
            "0.600 ± 0.000 (n=2) | ours |") in md
  assert runner.format_csv(_table(), old) == runner.format_csv(_table(), new)


def test_inflated_encoders_of_each_seed_aggregate():
  """Each seed inflates its own 2D source (pretrain/inflate_source-<hash>): the table names the encoder without the
  folder, so the seeds give one mean ± std row; each run keeps its folder in the CSV's pretrain_dir."""
  records = [dict(_record({f"inflated i3d (simclr, 2D inflate_source-{h})": dict(accuracy=a, auroc=a + 0.1),
                           "random init": dict(accuracy=0.5, auroc=0.5)}, row=f"r{k}", seed=k),
                  pretrain_dir=f"pretrain/inflate_source-{h}")
             for k, (h, a) in enumerate((("aaaa1111", 0.6), ("bbbb2222", 0.8)))]
  md = runner.format_markdown(_table(), records)
  assert ("| synthetic_fundus/tiny | simclr | inflated i3d (simclr, 2D) | linear_probe | 100% (n=64) | "
          "0.700 ± 0.141 (n=2) | 0.800 ± 0.141 (n=2) | ours |") in md
  assert "inflate_source-" not in md.split("## Every run")[0]
  lines = list(csv.DictReader(io.StringIO(runner.format_csv(_table(), records))))
  assert {(l["encoder"], l["pretrain_dir"]) for l in lines if l["encoder"] != "random init"} == {
      ("inflated i3d (simclr, 2D)", "pretrain/inflate_source-aaaa1111"),
      ("inflated i3d (simclr, 2D)", "pretrain/inflate_source-bbbb2222")}


def test_auroc_plot_has_a_panel_per_dataset_and_protocol_and_draws_shared_baselines_once(tmp_path):
  """Two datasets x two protocols: four panels. Two arms' random inits with the same values are one line; a
  supervised baseline of one arm names its recipe."""
  def rec(dataset, objective, protocol, subset, seed, results):
    return dict(_record({k: dict(accuracy=0.5, auroc=v) for k, v in results.items()}, row=f"{dataset}{objective}"
                        f"{protocol}{subset}{seed}", seed=seed), dataset=dataset, objective=objective,
                protocol=protocol, train_subset=subset)
  records = []
  for dataset in ("a", "b"):
    for seed in (0, 1):
      for subset, base in (("10%", 0.6), ("", 0.7)):
        for objective, gain in (("simclr", 0.1), ("byol", 0.05)):
          records.append(rec(dataset, objective, "linear_probe", subset, seed,
                             {f"{objective} (pretrained)": base + gain + 0.01 * seed, "random init": base}))
        records.append(rec(dataset, "simclr", "finetune", subset, seed,
                           {"simclr (pretrained)": base + 0.2, "supervised (random init)": base + 0.15}))
  lines = runner.auroc_lines(records)
  assert list(lines) == [("a", "linear_probe"), ("a", "finetune"), ("b", "linear_probe"), ("b", "finetune")]
  probe = {l["label"]: l for l in lines[("a", "linear_probe")]}
  assert list(probe) == ["simclr (pretrained)", "random init", "byol (pretrained)"]
  np.testing.assert_allclose(probe["simclr (pretrained)"]["mean"], [0.705, 0.805])
  np.testing.assert_allclose(probe["simclr (pretrained)"]["std"], [0.01 / np.sqrt(2)] * 2)
  assert probe["simclr (pretrained)"]["x"] == [10.0, 100.0] and probe["random init"]["baseline"]
  assert [l["label"] for l in lines[("b", "finetune")]] == ["simclr (pretrained)",
                                                           "supervised (random init) (simclr recipe)"]
  png = runner.plot_auroc_vs_labels(_table(), records, str(tmp_path / "t.png"))
  assert png and (tmp_path / "t.png").stat().st_size > 10_000


def test_one_label_fraction_table_plots_auroc_per_seed(tmp_path):
  """A table with one label fraction has no AUROC-vs-labels plot: it gets each run's AUROC and the mean ± std per
  encoder, one panel per dataset, with the published AUROCs of that dataset; a missing AUROC is left out."""
  records = [dict(_record({"simclr (pretrained)": dict(accuracy=0.5, auroc=a),
                           "random init": dict(accuracy=0.5, auroc=b)}, row=f"{d}{k}", seed=k), dataset=d)
             for d, values in (("a", ((0.7, 0.5), (0.8, 0.6), (0.9, None))), ("b", ((0.6, 0.55),)))
             for k, (a, b) in enumerate(values)]
  assert runner.auroc_lines(records) == {}
  panels = runner.auroc_seeds(records)
  assert list(panels) == [("a", "linear_probe"), ("b", "linear_probe")]
  simclr, random_init = panels[("a", "linear_probe")]
  assert simclr["label"] == "simclr (pretrained)" and simclr["aurocs"] == [0.7, 0.8, 0.9]
  np.testing.assert_allclose([simclr["mean"], simclr["std"]], [0.8, 0.1])
  assert random_init["aurocs"] == [0.5, 0.6] and panels[("b", "linear_probe")][1]["std"] == 0.0
  table = _table()
  table.published = ({"dataset": "a", "method": "ResNet-18", "auroc": 0.75, "source": "paper"},)
  out = runner.write_outputs(table, records, workdir=str(tmp_path))
  assert out["png"] == str(tmp_path / "t.png") and (tmp_path / "t.png").stat().st_size > 10_000
  assert "![AUROC per seed](t.png)" in (tmp_path / "t.md").read_text()
  assert runner.auroc_seeds([_record({"random init": dict(accuracy=0.5, auroc=None)})]) == {}


def test_table_layer_and_nc_columns():
  def res(acc, nc1):
    out = {}
    for enc in ("simclr (pretrained)", "random init"):
      for layer in ("backbone", "projector/out"):
        out[f"{enc} @ {layer}"] = dict(accuracy=acc, auroc=acc + 0.1, layer=layer, neural_collapse=dict(
            train=dict(nc1=nc1), test=dict(nc1=2 * nc1), ncc_test_accuracy=0.25))
    return out

  records = [_record(res(0.4, 1.0), seed=0), _record(res(0.6, 3.0), row="r1", seed=1)]
  md = runner.format_markdown(_table(), records)
  assert ("| dataset | objective | encoder | layer | protocol | labels | accuracy | AUROC | NC1 (train) | NC1 (test) "
          "| source |") in md
  # Mean ± std over the two seeds per encoder and layer; the layer is its own column, not in the encoder name.
  assert ("| synthetic_fundus/tiny | simclr | random init | projector/out | linear_probe | 100% (n=64) | "
          "0.500 ± 0.141 (n=2) | 0.600 ± 0.141 (n=2) | 2 ± 1.4 (n=2) | 4 ± 2.8 (n=2) | ours |") in md
  assert " @ " not in md
  assert "| simclr (pretrained) | backbone | linear_probe | 100% (n=64) | 0 | 0.4000 | 0.5000 | 1 | 2 |" in md
  lines = list(csv.DictReader(io.StringIO(runner.format_csv(_table(), records))))
  cols = list(lines[0])
  assert cols[cols.index("encoder") + 1] == "layer" and cols[cols.index("auroc_ci_high") + 1:cols.index("auroc_ci_high") + 4] == [
      "nc1_train", "nc1_test", "ncc_test_accuracy"]
  assert len(lines) == 8 and {(l["encoder"], l["layer"]) for l in lines} == {
      (e, l) for e in ("simclr (pretrained)", "random init") for l in ("backbone", "projector/out")}
  assert {(l["seed"], l["nc1_train"], l["nc1_test"]) for l in lines} == {("0", "1.0", "2.0"), ("1", "3.0", "6.0")}


def test_guillotine_table_config_builds_rows():
  table = runner.load_table("configs/table_guillotine_quick.py")
  rows = runner.build_rows(table)
  assert len(rows) == 4 and len({r["pretrain_slug"] for r in rows}) == 2  # The protocols of a seed share one.
  assert {(r["config"].eval.protocol, r["config"].seed) for r in rows} == {
      (p, k) for p in ("linear_probe", "knn") for k in (0, 1)}
  assert all(tuple(r["config"].eval.feature_layers) == LAYERS and r["config"].eval.neural_collapse for r in rows)
  config = load_config("table_guillotine_quick")
  assert tuple(config.eval.feature_layers) == LAYERS and config.eval.neural_collapse


def test_guillotine_table_tiny_run(tfds_dir, tmp_path):
  """The table config, one seed, on synthetic_fundus/tiny with 4 pretraining steps."""
  table = runner.load_table("configs/table_guillotine_quick.py")
  table.grid.seed = (0,)
  out = runner.run_table(table, workdir=str(tmp_path), overrides={
      "data.data_dir": str(tfds_dir), "data.builder_config": "tiny", "data.image_size": 32,
      "augment.views": [views.default_view(crop_size=32, crop_scale=(0.5, 1.0), grayscale_p=0.0, blur_p=0.0)] * 2,
      "train.num_steps": 4, "train.checkpoint_every": 4, "train.log_every": 2,
      "eval.max_iter": 10, "eval.l2_grid": (1e-2,), "eval.batch_size": 32, "eval.knn_k": 5})
  assert [r["status"] for r in out["rows"]] == ["ran", "ran"]
  tag = "layers-backbone+projector_hidden1+projector_out_nc"
  names = {f"probe_results_{tag}.json", f"probe_results_knn_{tag}.json"}
  assert {p.name for p in (tmp_path / "rows").glob("*/probe_results*.json")} == names
  for r in out["rows"]:
    assert set(r["results"]) == {f"{e} @ {l}" for e in ("simclr (pretrained)", "random init") for l in LAYERS}
    assert all(np.isfinite(m["neural_collapse"]["test"]["nc1"]) for m in r["results"].values())
  lines = list(csv.DictReader(open(out["csv"])))
  assert len(lines) == 12 and {l["layer"] for l in lines} == set(LAYERS)
  assert {l["protocol"] for l in lines} == {"linear_probe", "knn"} and all(float(l["nc1_train"]) > 0 for l in lines)
  md = open(out["md"]).read()
  assert "| encoder | layer | protocol |" in md and "| simclr (pretrained) | projector/hidden1 | knn |" in md
  json.dumps(out["rows"][0]["results"])  # Plain JSON (floats, no arrays).
