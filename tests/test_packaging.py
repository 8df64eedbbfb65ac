"""The package as pip installs it: a wheel built from the checkout, installed into a folder of its own (the
`installed_package` fixture, tests/conftest.py), run from a directory outside the checkout (not on sys.path)."""
import os
import pathlib
import subprocess
import sys
import tomllib
import zipfile

import jax
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_wheel_contents(installed_package):
  wheel, _ = installed_package
  names = zipfile.ZipFile(wheel).namelist()
  tops = {n.split("/")[0] for n in names}
  assert tops == {"medssl_jax", "tfds_builders", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info"}
  shipped = {pathlib.Path(n).name for n in names if n.startswith("medssl_jax/configs/")}
  assert shipped == {p.name for p in (ROOT / "configs").glob("*.py")}  # Every config, no generic top-level name.
  entry = next(n for n in names if n.endswith("entry_points.txt"))
  entries = zipfile.ZipFile(wheel).read(entry).decode()
  assert "medssl = medssl_jax.cli:run" in entries and "medssl-table = medssl_jax.tables.runner:run" in entries
  assert "medssl-dry-run = medssl_jax.dry_run:run" in entries


def test_core_dependencies_leave_out_torch_tests_and_notebooks():
  project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
  core = " ".join(project["dependencies"]).lower()
  for heavy in ("torch", "pytest", "nbclient", "ipykernel", "jupyter", "tensorflow "):
    assert heavy not in core, heavy
  assert {"torch", "datasets", "notebooks", "test", "gcs", "cuda12", "tpu"} <= set(project["optional-dependencies"])


def test_requirements_lock_pins_everything_pyproject_asks_for():
  """requirements.txt (written by .ci/lock) pins every dependency of the core and of the extras CI installs, at a
  version inside pyproject.toml's range, and nothing twice."""
  project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
  lines = [l for l in (ROOT / "requirements.txt").read_text().splitlines() if l and not l.startswith("#")]
  pins = [l.split("==") for l in lines]
  assert all(len(p) == 2 for p in pins), [l for l in lines if "==" not in l]
  locked = {canonicalize_name(name): version for name, version in pins}
  assert len(locked) == len(pins)
  wanted = project["dependencies"] + [d for extra in ("torch", "datasets", "test")
                                      for d in project["optional-dependencies"][extra]]
  for dep in map(Requirement, wanted):
    name = canonicalize_name(dep.name)
    assert name in locked, f"{dep.name} is not in requirements.txt: run .ci/lock"
    assert dep.specifier.contains(locked[name], prereleases=True), f"{dep.name}=={locked[name]} is outside {dep}"


def test_runs_outside_the_checkout(installed_package, fundus_small_dir, tmp_path):
  _, site = installed_package
  env = dict(os.environ, PYTHONPATH=str(site), TFDS_DATA_DIR=str(fundus_small_dir),
             JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir)
  run = lambda *args: subprocess.run([sys.executable, "-m", *args], cwd=tmp_path, env=env, capture_output=True,
                                     text=True, timeout=600)
  where = run("medssl_jax", "--help")
  assert where.returncode == 0, where.stderr[-2000:]
  assert f"Shipped configs ({site / 'medssl_jax' / 'configs'})" in where.stdout
  out = run("medssl_jax", "--config=demo_simclr:quick", "--config.mode=pretrain", "--config.train.num_steps=2",
            "--config.train.checkpoint_every=2", f"--workdir={tmp_path / 'wd'}")
  assert out.returncode == 0, out.stderr[-3000:]
  assert "step 2/2" in out.stdout and (tmp_path / "wd" / "checkpoints" / "2").is_dir()
  # A table config by name, from the installed package.
  tables = run("medssl_jax.tables.runner", "--table=table_fundus_quik", f"--workdir={tmp_path / 't'}")
  assert tables.returncode != 0 and "did you mean" in tables.stderr and "table_fundus_quick" in tables.stderr
