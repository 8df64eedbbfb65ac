"""Table runner: a tiny grid runs into md/csv/png, reruns from cache, resumes, shares pretraining."""
import csv
import json
import os
import pathlib
import re
import subprocess
import sys

import jax
import ml_collections
import pytest

from medssl_jax import locks
from medssl_jax.augment import views
from medssl_jax.data import pipeline
from medssl_jax.tables import published
from medssl_jax.tables import runner
from medssl_jax.tables import selection
from medssl_jax.train import workdir_lock
from tfds_builders.medmnist import medmnist_dataset_builder as medmnist_builder
from tfds_builders.medmnist3d import medmnist3d_dataset_builder as medmnist3d_builder

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("tfds")
  pipeline.get_builder("synthetic_fundus", data_dir=str(d), config="tiny")
  return d


def tiny_table(tfds_dir):
  """2 label subsets x 2 seeds on synthetic_fundus/tiny: 4 rows, 2 pretrainings of 4 steps."""
  t = ml_collections.ConfigDict()
  t.name = "tiny"
  t.base_config = "configs/demo_simclr.py:quick"
  t.grid = ml_collections.ConfigDict({"eval": {"train_subset": ("50%", "")}, "seed": (0, 1)})
  o = t.overrides = ml_collections.ConfigDict()
  o.data = dict(data_dir=str(tfds_dir), builder_config="tiny", image_size=32)
  o.augment = dict(views=[views.default_view(crop_size=32, crop_scale=(0.5, 1.0), grayscale_p=0.0, blur_p=0.0)] * 2)
  o.train = dict(num_steps=4, checkpoint_every=2, log_every=2)
  o.eval = dict(max_iter=10, l2_grid=(1e-2,), batch_size=32)
  t.published = (dict(dataset="RetinaMNIST", method="ResNet-18 (28)", accuracy=0.524, auroc=0.717,
                      source="Yang et al. 2023"),)
  return t


class _Interrupt(Exception):
  pass


def _rows_dir(workdir):
  return sorted((workdir / "rows").iterdir())


def test_table_runs_resumes_caches_and_reruns_one_row(tfds_dir, tmp_path, capsys, monkeypatch):
  table = tiny_table(tfds_dir)
  workdir = tmp_path / "t"

  # Interrupted in the first pretraining after its step-2 checkpoint: nothing is recorded for the row.
  real = pipeline.make_train_iterator

  def dying_iterator(*args, **kwargs):
    it = real(*args, **kwargs)

    class Wrapper:
      n = 0
      get_state, set_state = it.get_state, it.set_state

      def __next__(self):
        self.n += 1
        if self.n > 3:
          raise _Interrupt()
        return next(it)

    return Wrapper()

  monkeypatch.setattr(pipeline, "make_train_iterator", dying_iterator)
  with pytest.raises(_Interrupt):
    runner.run_table(table, workdir=str(workdir))
  monkeypatch.setattr(pipeline, "make_train_iterator", real)
  assert not (workdir / "rows").exists() or not list((workdir / "rows").glob("*/result.json"))
  capsys.readouterr()

  out = runner.run_table(table, workdir=str(workdir))
  log = capsys.readouterr().out
  assert "table tiny: 4 rows, 2 pretraining run(s)" in log
  assert "[1/4] running" in log and "[4/4] running" in log and "resumed from" in log and "] cached" not in log
  # Once a row of a recipe has finished, the rows left are estimated by it.
  assert re.search(r"\[3/4\] done .* in [0-9.]+s; about \d+m\d\ds left", log), log
  assert [r["status"] for r in out["rows"]] == ["ran"] * 4

  # Rows that differ only in eval keys (the label subset) share one pretraining workdir per seed.
  pretrain_dirs = sorted(p.name for p in (workdir / "pretrain").iterdir())
  assert len(pretrain_dirs) == 2 and [d.split("-")[0] for d in pretrain_dirs] == ["seed=0", "seed=1"]
  assert sorted({r["pretrain_dir"] for r in out["rows"]}) == [f"pretrain/{d}" for d in pretrain_dirs]
  for d in pretrain_dirs:  # One pretraining of 4 steps each; probe results live with the rows.
    assert sorted(p.name for p in (workdir / "pretrain" / d / "checkpoints").iterdir() if p.name.isdigit()) == ["2", "4"]
    assert not list((workdir / "pretrain" / d).glob("probe_results*"))
  rows = _rows_dir(workdir)
  assert len(rows) == 4 and all((r / "result.json").exists() and list(r.glob("probe_results*.md")) for r in rows)
  assert rows[0].name.startswith("train_subset=50pct,seed=0-")

  # CSV: one line per (row, encoder) plus the published row; provenance columns filled.
  lines = list(csv.DictReader((workdir / "tiny.csv").open()))
  assert tuple(lines[0]) == runner.CSV_COLUMNS
  ours = [l for l in lines if l["source"] == "ours"]
  assert len(ours) == 8 and {l["encoder"] for l in ours} == {"simclr (pretrained)", "random init"}
  assert {(l["label_subset"], l["n_labelled"]) for l in ours} == {("50%", "32"), ("100%", "64")}
  assert {l["seed"] for l in ours} == {"0", "1"} and {l["dataset"] for l in ours} == {"synthetic_fundus/tiny"}
  assert all(0 <= float(l["accuracy"]) <= 1 and 0 <= float(l["auroc"]) <= 1 for l in ours)
  assert all(l["code_version"] and l["jax"] == jax.__version__ and l["numpy"] for l in ours)
  assert [l["source"] for l in lines if l["source"] != "ours"] == ["published: Yang et al. 2023"]

  md = (workdir / "tiny.md").read_text()
  assert "## Mean ± std over seeds" in md and "## Every run" in md and "![mean AUROC" in md
  assert md.count("(n=2) |") >= 8  # 2 subsets x 2 encoders, accuracy and AUROC each over 2 seeds.
  assert "| RetinaMNIST | ResNet-18 (28) |" in md and "0.717 | published: Yang et al. 2023 |" in md
  assert (workdir / "tiny.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

  # Rerunning runs nothing.
  again = runner.run_table(table, workdir=str(workdir))
  log = capsys.readouterr().out
  assert log.count("] cached ") == 4 and "] running" not in log
  assert [r["status"] for r in again["rows"]] == ["cached"] * 4

  # Narrowing the grid (one seed) or widening it again changes folder names' readable part, not the rows'
  # identity: every row is found cached.
  narrow = runner.set_axes(tiny_table(tfds_dir), ["seed=0"])
  assert runner.build_rows(narrow)[0]["slug"].split("-")[0] == "train_subset=50pct"
  runner.run_table(narrow, workdir=str(workdir))
  log = capsys.readouterr().out
  assert log.count("] cached ") == 2 and "] running" not in log
  with pytest.raises(ValueError, match=r"--grid='seed': expected <key>=<value>"):
    runner.set_axes(tiny_table(tfds_dir), ["seed"])
  assert runner.set_axes(tiny_table(tfds_dir), ["eval.train_subset=10%,", "eval.knn_k=5"]).grid.eval.to_dict() == {
      "train_subset": ("10%", ""), "knn_k": (5,)}

  # Deleting one row's result reruns that row only (its finished pretraining is reused, not repeated).
  (rows[1] / "result.json").unlink()
  # --report_only runs nothing: the table from the finished rows, the missing one named. It reports while another
  # runner holds the workdir (which stops a second run).
  held = locks.FileLock(str(workdir / workdir_lock.LOCK_FILE)).acquire()
  try:
    with pytest.raises(workdir_lock.WorkdirInUse, match=r"table workdir .* is in use by pid"):
      runner.run_table(table, workdir=str(workdir))
    report = runner.run_table(table, workdir=str(workdir), report_only=True)
  finally:
    held.release()
  log = capsys.readouterr().out
  assert report["missing"] == [rows[1].name] and len(report["rows"]) == 3
  assert f"missing  {rows[1].name}" in log and "] running" not in log and "step 1/" not in log
  assert "Not run yet (1 of 4 rows" in open(report["md"]).read() and not (rows[1] / "result.json").exists()
  runner.run_table(table, workdir=str(workdir))
  log = capsys.readouterr().out
  assert log.count("] cached ") == 3 and log.count("] running") == 1 and f"running  {rows[1].name}" in log
  assert "step 1/" not in log and (rows[1] / "result.json").exists()

  # The command line: a table file, and a --table.<key> override that changes no result (logging cadence)
  # finds every row cached.
  (tmp_path / "table_tiny.py").write_text(
      "from tests import test_tables\nimport os\nfrom medssl_jax import config as config_lib\n"
      "def get_table(arg=None):\n  return test_tables.tiny_table(os.environ['TINY_TFDS'])\n"
      "def get_config(arg=None):\n  return config_lib.table_base_config(get_table())\n")
  env = dict(os.environ, TINY_TFDS=str(tfds_dir), PYTHONPATH=str(ROOT))
  cli = subprocess.run([sys.executable, "-m", "medssl_jax.tables.runner", f"--table={tmp_path / 'table_tiny.py'}",
                        f"--workdir={workdir}", "--table.train.log_every=1"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
  assert cli.returncode == 0, cli.stderr[-3000:]
  assert cli.stdout.count("] cached ") == 4 and "0 row(s) run, 4 cached" in cli.stdout


@pytest.mark.parametrize("edit,match", [
    (lambda t: t.grid.update({"train": {"num_step": (1, 2)}}),
     r"table.grid: unknown config key 'train.num_step' \('num_step' is not in train; valid keys there: .*'num_steps'"),
    (lambda t: t.grid.update({"objectiv": {"name": ("byol",)}}), r"unknown config key 'objectiv.name'"),
    (lambda t: setattr(t, "grid", ml_collections.ConfigDict()), r"table.grid is empty"),
    (lambda t: t.grid.update({"seed": ()}), r"table.grid.seed must be a non-empty tuple"),
    (lambda t: t.grid.update({"seed": (0, 0)}), r"table.grid.seed lists a value twice"),
    (lambda t: setattr(t, "grid", ml_collections.ConfigDict({"eval": ("a", "b")})), r"'eval' is a config section"),
    (lambda t: t.grid.update({"mode": ("pretrain",)}), r"'mode' is set by the table runner"),
    (lambda t: t.grid.update({"objective": {"name": ("simclr", "simclear")}}),
     r"table row .*simclear.*config.objective.name='simclear' is not known"),
    (lambda t: t.overrides.update({"train": {"batch_siz": 8}}), r"table.overrides: unknown config key 'train.batch_siz'"),
    (lambda t: setattr(t, "nmae", "x"), r"Unknown table key 'nmae'; valid keys: \['name'"),
    (lambda t: setattr(t, "published", (dict(dataset="X", method="Y", source="Z", accuracy=76.5),)),
     r"published\[0\].accuracy=76.5 must be a fraction"),
    (lambda t: setattr(t, "published", (dict(dataset="X", method="Y", accuracy=0.7),)), r"published\[0\] needs 'source'"),
])
def test_bad_table_configs_name_the_key(tmp_path, edit, match):
  table = tiny_table(tmp_path)
  with table.unlocked():
    edit(table)
  with pytest.raises(ValueError, match=match):
    runner.run_table(table, workdir=str(tmp_path / "t"))
  assert not (tmp_path / "t").exists()  # Every row is checked before anything is written.


def test_example_table_config():
  """configs/table_fundus_quick.py: 2 objectives x 2 label subsets x 2 seeds, 4 shared pretrainings."""
  table = runner.load_table("configs/table_fundus_quick.py")
  rows = runner.build_rows(table)
  assert len(rows) == 8 and len({r["pretrain_slug"] for r in rows}) == 4
  assert {(r["config"].objective.name, r["config"].eval.train_subset, r["config"].seed) for r in rows} == {
      (o, s, k) for o in ("simclr", "byol") for s in ("10%", "") for k in (0, 1)}
  assert {r["config"].objective.momentum for r in rows if r["config"].objective.name == "byol"} == {0.99}
  assert all(p["source"] and p["accuracy"] for p in table.published)


def test_only_keeps_the_base_configs_naming_a_text_and_the_rows_identity():
  """--only=vesselmnist3d: one dataset of a table, on a machine of its own; its rows are the full table's (hashes)."""
  full = runner.build_rows(_load_table_module("table_medmnist3d_ssl").get_table("cpu"))
  vessel = runner.build_rows(runner.keep_bases(_load_table_module("table_medmnist3d_ssl").get_table("cpu"),
                                               ["vesselmnist3d"]))
  assert len(full) == 72 and len(vessel) == 36
  digest = lambda slug: slug.rsplit("-", 1)[-1]
  assert {digest(r["slug"]) for r in vessel} == {digest(r["slug"]) for r in full if "vessel" in r["base_config"]}
  assert {digest(r["pretrain_slug"]) for r in vessel} <= {digest(r["pretrain_slug"]) for r in full}
  # One base config and one seed left: the rows are named after the base config, not a bare hash.
  one = runner.build_rows(runner.keep_bases(runner.set_axes(
      _load_table_module("table_medmnist3d_supervised").get_table("cpu"), ["seed=1"]), ["vessel"]), open_data=False)
  assert len(one) == 1 and one[0]["slug"].startswith("volume_supervised.vesselmnist3d-"), one[0]["slug"]
  # So is a pretraining whose varying axes are all evaluation ones (protocol, label subset).
  simclr = runner.build_rows(runner.keep_bases(runner.set_axes(
      _load_table_module("table_medmnist3d_ssl").get_table("cpu"), ["seed=0"]), ["simclr.py:vessel"]), open_data=False)
  assert len(simclr) == 4 and {r["pretrain_slug"].rsplit("-", 1)[0] for r in simclr} == {"volume_simclr.vesselmnist3d"}
  two = runner.keep_bases(_load_table_module("table_medmnist3d_ssl").get_table("cpu"), ["volume_byol", "inflated"])
  assert len(two.base_config) == 4
  with pytest.raises(ValueError, match=r"--only=fundus matches none of the table's base configs \(configs/volume_"):
    runner.keep_bases(_load_table_module("table_medmnist3d_ssl").get_table("cpu"), ["fundus"])


def test_time_left_adds_each_recipes_median_and_what_pretraining_has_left():
  def rec(base, protocol, subset, eval_s, pretrain_s, table="t"):
    return dict(table=table, base_config=base, protocol=protocol, train_subset=subset, eval_wall_clock_s=eval_s,
                pretrain_wall_clock_s=pretrain_s)

  finished = [rec("a.py", "finetune", "10%", 100.0, 1000.0), rec("a.py", "finetune", "10%", 300.0, 1200.0),
              rec("a.py", "finetune", "10%", 200.0, 1100.0), rec("a.py", "linear_probe", "", 10.0, 1100.0),
              rec("a.py", "linear_probe", "", 999.0, 9999.0, table="other")]  # Another table: not this recipe.
  todo = lambda base, protocol, subset, pretrain=None, pretrained_s=None: dict(
      table="t", base_config=base, protocol=protocol, train_subset=subset, pretrain=pretrain, pretrained_s=pretrained_s)
  # Medians: 200 s per fine-tuning row and 10 s per probe row; a pretraining shared by two rows and 400 s along
  # has 1100 - 400 s left, counted once; a done one (pretrained_s None) nothing.
  assert runner.time_left([todo("a.py", "finetune", "10%", "p1", 400.0), todo("a.py", "linear_probe", "", "p1", 400.0),
                           todo("a.py", "finetune", "10%", "p0")], finished) == (200 + 10 + 700 + 200, 0)
  assert runner.time_left([todo("b.py", "finetune", "10%", "p2", 0.0), todo("a.py", "finetune", "")], finished) == (0, 2)
  assert runner.time_left([], finished) == (0, 0)


def test_supervised_rows_train_from_scratch_without_pretraining(tmp_path):
  """A table over configs/medmnist_supervised.py: rows have no pretraining; each trains in its own
  folder and the published MedMNIST rows stand beside ours."""
  import importlib.util
  from test_medmnist import write_npz
  manual = tmp_path / "manual"
  manual.mkdir()
  write_npz(manual / "retinamnist.npz", sizes=(40, 10, 12))
  path = pathlib.Path(__file__).resolve().parents[1] / "configs" / "table_medmnist_supervised.py"
  spec = importlib.util.spec_from_file_location("table_medmnist", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  table = module.get_table("quick")
  table.base_config = table.base_config[:1]  # RetinaMNIST only (the dummy npz).
  table.grid.seed = (0,)
  out = runner.run_table(table, workdir=str(tmp_path / "t"), overrides={
      "data.manual_dir": str(manual), "data.data_dir": str(tmp_path / "tfds"), "eval.finetune_epochs": 1,
      "eval.finetune_batch_size": 8})
  assert [r["status"] for r in out["rows"]] == ["ran"]
  # One epoch of the 40 images opened, in steps: the row's config says what ran.
  assert out["rows"][0]["config"]["eval"]["finetune_steps"] == 5 and out["rows"][0]["config"]["eval"]["finetune_eval_every"] == 5
  assert not (tmp_path / "t" / "pretrain").exists() or not any((tmp_path / "t" / "pretrain").iterdir())
  # The fine-tuning checkpoints (kept to resume an interrupted row) are removed once its results are written.
  assert not list((tmp_path / "t").rglob("finetune_checkpoints"))
  md = pathlib.Path(out["md"]).read_text()
  assert "supervised (random init)" in md and "published" in md and "0.717" in md


def _load_table_module(name):
  import importlib.util
  spec = importlib.util.spec_from_file_location(name, ROOT / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_medmnist_ssl_table_grid():
  """The MedMNIST label-fraction table: per dataset, SimCLR pretrainings shared by every protocol and label fraction of a
  seed; the seed also picks the label subset; the CPU variants override only the budget."""
  module = _load_table_module("table_medmnist_ssl")
  rows = runner.build_rows(module.get_table())
  assert len(rows) == 2 * 2 * 3 * 3 and len({r["pretrain_slug"] for r in rows}) == 2 * 3
  assert {(r["config"].data.builder_config, r["config"].eval.protocol, r["config"].eval.train_subset)
          for r in rows} == {(d, p, s) for d in ("retinamnist", "pneumoniamnist")
                             for p in ("linear_probe", "finetune") for s in ("1%", "10%", "")}
  assert all(r["config"].eval.subset_seed == r["config"].seed for r in rows)
  assert all(r["config"].objective.name == "simclr" and r["config"].eval.compare_random_init for r in rows)
  cpu = runner.build_rows(module.get_table("retina_cpu"))
  assert len(cpu) == 18 and {r["config"].model.width_multiplier for r in cpu} == {0.25}
  assert {r["config"].data.channels for r in runner.build_rows(module.get_table("pneumonia_cpu"))} == {1}
  with pytest.raises(ValueError, match="Unknown table variant 'retina'"):
    module.get_table("retina")


def test_subset_seed_from_seed_conflicts_with_a_subset_seed_axis(tfds_dir):
  table = tiny_table(tfds_dir)
  table.subset_seed_from_seed = True
  assert {r["config"].eval.subset_seed for r in runner.build_rows(table)} == {0, 1}
  table.grid.eval.subset_seed = (0, 1)
  with pytest.raises(ValueError, match="subset_seed_from_seed=True.*remove the grid axis eval.subset_seed"):
    runner.build_rows(table)


def test_medmnist_ssl_table_runs_on_a_dummy_npz(tmp_path):
  """The quick table on a dummy RetinaMNIST: one SimCLR pretraining, linear probe and fine-tune rows at 10%
  and 100%, with the random encoder (probe) and supervised-from-scratch (fine-tune) baselines named."""
  from test_medmnist import write_npz
  manual = tmp_path / "manual"
  manual.mkdir()
  write_npz(manual / "retinamnist.npz", sizes=(40, 10, 12))
  table = _load_table_module("table_medmnist_ssl").get_table("quick")
  table.base_config = table.base_config[:1]
  table.grid.seed = (0,)
  table.grid.eval.train_subset = ("50%", "")
  out = runner.run_table(table, workdir=str(tmp_path / "t"), overrides={
      "data.manual_dir": str(manual), "data.data_dir": str(tmp_path / "tfds"), "train.num_steps": 3,
      "train.checkpoint_every": 3, "train.batch_size": 8, "eval.finetune_steps": 2, "eval.finetune_eval_every": 2,
      "eval.finetune_batch_size": 8, "eval.max_iter": 5})
  assert [r["status"] for r in out["rows"]] == ["ran"] * 4
  assert len(list((tmp_path / "t" / "pretrain").iterdir())) == 1
  encoders = {(r["protocol"], e) for r in out["rows"] for e in r["results"]}
  assert encoders == {("linear_probe", "simclr (pretrained)"), ("linear_probe", "random init"),
                      ("finetune", "simclr (pretrained)"), ("finetune", "supervised (random init)")}
  subsets = {r["results"]["random init"]["label_subset"]["num_selected"] for r in out["rows"]
             if r["protocol"] == "linear_probe" and r["train_subset"] == "50%"}
  assert subsets == {20}
  md = pathlib.Path(out["md"]).read_text()
  assert "supervised (random init)" in md and "0.717" in md and out["png"] and os.path.exists(out["png"])
  # Another arm (BYOL) on the same rows: its fine-tuning rows take the supervised-from-scratch baseline the SimCLR
  # arm trained, from <workdir>/finetune_cache, instead of training it again.
  assert len(list((tmp_path / "t" / runner.FINETUNE_CACHE).iterdir())) == 2  # The baseline of each label subset.
  table.grid.eval.protocol, table.grid.eval.train_subset = ("finetune",), ("50%",)
  byol = runner.run_table(table, workdir=str(tmp_path / "t"), overrides={
      "data.manual_dir": str(manual), "data.data_dir": str(tmp_path / "tfds"), "train.num_steps": 3,
      "train.checkpoint_every": 3, "train.batch_size": 8, "eval.finetune_steps": 2, "eval.finetune_eval_every": 2,
      "eval.finetune_batch_size": 8, "eval.max_iter": 5, "objective.name": "byol"})
  assert [r["status"] for r in byol["rows"]] == ["ran"]
  simclr = {r["train_subset"]: r["results"]["supervised (random init)"] for r in out["rows"] if r["protocol"] == "finetune"}
  for r in byol["rows"]:
    baseline = r["results"]["supervised (random init)"]
    assert baseline.pop("reused_from").startswith(str(tmp_path / "t" / runner.FINETUNE_CACHE))
    assert baseline == simclr[r["train_subset"]]
    assert "reused_from" not in r["results"]["byol (pretrained)"]
  assert "1 fine-tuning result(s) were read from an identical earlier fine-tuning" in pathlib.Path(byol["md"]).read_text()


def test_an_image_size_override_moves_the_crop_size_of_every_row():
  module = _load_table_module("table_medmnist_ssl")
  rows = runner.build_rows(module.get_table("retina_cpu"))
  bigger = runner.build_rows(module.get_table("retina_cpu"), overrides={"data.image_size": 32})
  assert {v.crop_size for r in rows for v in r["config"].augment.views} == {28}
  assert {v.crop_size for r in bigger for v in r["config"].augment.views} == {32}
  assert not {r["slug"] for r in rows} & {r["slug"] for r in bigger}  # Other runs, other rows.


def test_epoch_schedules_follow_the_dataset_a_row_opens(tmp_path):
  """The MedMNIST recipe is 100 epochs: on another dataset, by override alone, its rows train for 100 epochs of
  that dataset (steps from the split opened), and the official datasets keep their row identities."""
  from test_medmnist import write_npz
  manual = tmp_path / "manual"
  manual.mkdir()
  write_npz(manual / "bloodmnist.npz", num_labels=8, sizes=(300, 20, 30))
  module = _load_table_module("table_medmnist_supervised")
  rows = runner.build_rows(module.get_table("retina"), overrides={
      "data.builder_config": "bloodmnist", "data.manual_dir": str(manual), "data.data_dir": str(tmp_path / "tfds")})
  e = rows[0]["config"].eval
  assert (e.finetune_steps, e.finetune_eval_every) == (100 * 3, 3)  # ceil(300 / 128) = 3 steps an epoch.
  assert (e.finetune_epochs, e.finetune_eval_every_epoch) == (0, False)  # Resolved: the row is what it runs.


def test_a_table_follows_the_dataset_its_rows_open(tmp_path, capsys):
  """table_medmnist_supervised:retina pointed at DermaMNIST by override alone: named after it, with DermaMNIST's
  published row and without RetinaMNIST's; a dataset with no published row on file is said to have none."""
  module = _load_table_module("table_medmnist_supervised")
  table = module.get_table("retina")
  derma = runner.follow_datasets(table, [dict(config=_with(runner.base_config(table), "dermamnist"))])
  assert derma.name == "medmnist_resnet18_28_derma" and derma.description.startswith("medmnist/dermamnist: ")
  assert [(p["dataset"], p["auroc"], p["accuracy"]) for p in derma.published] == [("medmnist/dermamnist", 0.917, 0.735)]
  assert table.name == "medmnist_resnet18_28_{dataset}"  # The table config itself is left as it was.
  organ = runner.follow_datasets(table, [dict(config=_with(runner.base_config(table), "organamnist"))])
  assert organ.name == "medmnist_resnet18_28_organa"
  assert [(p["auroc"], p["accuracy"]) for p in organ.published] == [(0.997, 0.935)]
  # The published rows are of 28 px images: a 64 px run gets none, and is told so.
  big = runner.follow_datasets(table, [dict(config=_with(runner.base_config(table), "retinamnist_64"))])
  assert not big.published
  assert "no published row on file for ['medmnist/retinamnist_64']" in capsys.readouterr().out


def test_published_medmnist_rows_cover_every_2d_dataset():
  assert set(published.MEDMNIST_V2_RESNET18_28) == set(medmnist_builder.DATASETS)
  assert all(0.5 < auc <= 1 and 0 < acc <= 1 for auc, acc in published.MEDMNIST_V2_RESNET18_28.values())


def test_published_medmnist_3d_rows():
  """Every 3D dataset has rows (ResNet-50 + 3D at least); ResNet-18 + 3D where a copy of the table was found."""
  table = published.MEDMNIST_V2_3D
  assert set(table) == set(medmnist3d_builder.DATASETS)
  assert all("ResNet-50 + 3D" in methods for methods in table.values())
  assert {d for d, methods in table.items() if "ResNet-18 + 3D" in methods} == set(table) - {"nodulemnist3d",
                                                                                          "adrenalmnist3d"}
  assert all(0.5 <= auc <= 1 and (acc is None or 0 < acc <= 1) and note.startswith("28³")
             for methods in table.values() for auc, acc, note in methods.values())

  found, missing = published.rows("medmnist_v2_3d", ["medmnist3d/organmnist3d", "medmnist3d/organmnist3d_64",
                                                     "medmnist/organamnist", "medmnist3d/vesselmnist3d"])
  assert missing == ["medmnist3d/organmnist3d_64", "medmnist/organamnist"]  # 28³ only; 2D is the other registry.
  by_method = {(r["dataset"].split("/")[1], r["method"]): r for r in found}
  assert [(r["auroc"], r["accuracy"]) for r in (by_method["organmnist3d", "ResNet-18 + 3D"],
                                                by_method["organmnist3d", "ResNet-18 + ACS"],
                                                by_method["vesselmnist3d", "ResNet-50 + 3D"])] == [
      (0.996, 0.907), (0.994, 0.900), (0.907, 0.918)]
  assert by_method["vesselmnist3d", "ResNet-18 + 3D"]["auroc"] == 0.874
  assert "accuracy" not in by_method["vesselmnist3d", "ResNet-18 + 3D"]  # Not found: shown as "—".
  assert all(r["protocol"] == "supervised" and r["labels"] == "100%" and "10.1038/s41597-022-01721-8" in r["source"]
             and r["note"] and set(r) <= set(runner.PUBLISHED_KEYS) for r in found)
  assert published.rows("medmnist_v2_resnet18_28", ["medmnist3d/organmnist3d"]) == ([], ["medmnist3d/organmnist3d"])


def _with(config, builder_config):
  config.data.builder_config = builder_config
  return config


def test_selection_diagnostic_reads_the_test_curves_of_a_table_run(tmp_path):
  for seed, (sel, curve) in enumerate([(0.70, [0.60, 0.72, 0.69]), (0.68, [0.71, 0.66, 0.65])]):
    row = tmp_path / "rows" / f"seed={seed}-x"
    row.mkdir(parents=True)
    result = {"auroc": sel, "selected_step": 10,
              "test_curve": [{"step": 10 * (i + 1), "accuracy": 0.5, "auroc": a} for i, a in enumerate(curve)]}
    (row / "result.json").write_text(json.dumps({"seed": seed, "results": {"supervised (random init)": result}}))
  found = selection.rows(str(tmp_path))
  assert [(r["oracle_step"], r["last step"], r["best test checkpoint (oracle)"]) for r in found] == [
      (20, 0.69, 0.72), (10, 0.65, 0.71)]
  assert found[0]["mean over the second half"] == pytest.approx((0.72 + 0.69) / 2)
  assert "| mean ± std | supervised (random init) |  | 0.690 ± 0.014 (n=2) | 0.670 ± 0.028 (n=2) |" in (
      selection.markdown(found))
  with pytest.raises(FileNotFoundError, match="table runner's workdir"):
    selection.rows(str(tmp_path / "nowhere"))
