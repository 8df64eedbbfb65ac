"""Executes every notebook in colabs/ top to bottom in a fresh kernel, as CI's notebook check.

Each notebook runs as Colab would run it: in a directory outside the checkout, with medssl_jax installed from a
wheel built from the checkout (PYTHONPATH=<the installed folder>), its data (TFDS_DATA_DIR) and workdir
(MEDSSL_COLAB_DIR) under the test's tmp_path, and the suite's XLA compilation cache; a notebook must be stored
without outputs, start with a setup cell and say in its markdown what it shows or reproduces. Notebooks are
discovered by glob, so a new one is picked up without touching this file.
"""
import json
import os
import pathlib
import subprocess
import sys

import pytest

import device_testing

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "colabs").glob("*.ipynb"))
CELL_TIMEOUT_S = 300


def _cells(path):
  with open(path) as f:
    return json.load(f)["cells"]


def _source(cell) -> str:
  s = cell.get("source", "")
  return "".join(s) if isinstance(s, list) else s


def test_notebooks_exist():
  names = [p.name for p in NOTEBOOKS]
  assert "quickstart.ipynb" in names and "representation_analysis.ipynb" in names, names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_clean_and_documented(path):
  """Stored without outputs (small diffs), a setup cell first, and markdown saying what it shows."""
  cells = _cells(path)
  with_outputs = [i for i, c in enumerate(cells)
                  if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count") is not None)]
  assert not with_outputs, f"{path.name}: clear the outputs of cells {with_outputs} before committing"
  code = [_source(c) for c in cells if c["cell_type"] == "code"]
  assert code and "PACKAGE" in code[0] and "TFDS_DATA_DIR" in code[0] and "sys.path" not in code[0], (
      f"{path.name}: the first code cell must be the setup cell (PACKAGE installed with pip, TFDS_DATA_DIR)")
  markdown = "\n".join(_source(c) for c in cells if c["cell_type"] == "markdown")
  assert markdown.lstrip().startswith("# "), f"{path.name}: the first markdown cell must be a '# title'"
  assert "what this shows" in markdown.lower() or "reproduces" in markdown.lower(), (
      f"{path.name}: the markdown must say what the notebook shows ('**What this shows:**') or reproduces")
  assert "runtime" in markdown.lower(), f"{path.name}: the markdown must state the runtime"


def test_colab_links_follow_the_repository_url():
  """Each notebook's Colab badge and default PACKAGE are the ones .ci/colab_links.py writes from pyproject.toml."""
  out = subprocess.run([sys.executable, str(ROOT / ".ci" / "colab_links.py"), "--check"], capture_output=True,
                       text=True, timeout=60)
  assert out.returncode == 0, out.stdout + out.stderr


def _kernel_env(tmp_path, tfds_dir, site) -> dict:
  env = dict(os.environ)
  # One CPU device, as in Colab (the suite simulates 8 for the sharding tests; not needed here).
  flags = device_testing.suite_xla_flags(env)
  if flags:
    env["XLA_FLAGS"] = flags
  else:
    env.pop("XLA_FLAGS", None)
  env.pop("MPLBACKEND", None)  # The notebooks plot inline.
  import jax
  env.update(TFDS_DATA_DIR=str(tfds_dir), MEDSSL_COLAB_DIR=str(tmp_path / "colab"),
             JAX_COMPILATION_CACHE_DIR=str(jax.config.jax_compilation_cache_dir),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
             PYTHONPATH=str(site),  # The installed wheel, not the checkout.
             MEDSSL_DOCS=str(ROOT / "docs"),  # As a user who points a notebook at a clone's docs/.
             MEDSSL_NOTEBOOK_SMOKE="1")  # The quickstart's 20-step run (its full run is the README demo), the volumes
             # notebook's tenth splits and 4 steps at batch 8, the table notebook's one seed at 10 steps.
  return env


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, tmp_path, fundus_small_dir, installed_package, monkeypatch):
  """Every cell runs without an error in a fresh kernel, as in Colab: in a directory outside the checkout, with
  medssl_jax installed from a wheel built from it (data: the suite's synthetic_fundus/small build)."""
  nbclient = pytest.importorskip("nbclient", reason="notebook runner packages (nbclient, nbformat, ipykernel) "
                                 "are not installed; pip install -r requirements.txt")
  nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed")
  pytest.importorskip("ipykernel", reason="ipykernel is not installed (the notebooks' kernel)")
  nb = nbformat.read(str(path), as_version=4)
  env = _kernel_env(tmp_path, fundus_small_dir, installed_package[1])
  for k in ("XLA_FLAGS", "MPLBACKEND"):  # The kernel inherits this process's environment.
    if k not in env:
      monkeypatch.delenv(k, raising=False)
  for k, v in env.items():
    if os.environ.get(k) != v:
      monkeypatch.setenv(k, v)
  before = _repo_files()
  client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                   resources={"metadata": {"path": str(tmp_path)}})
  try:
    client.execute()
  except nbclient.exceptions.CellExecutionError as e:
    pytest.fail(f"{path.name}: a cell failed:\n{e}")
  errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
  assert not errors, f"{path.name}: {errors[0].ename}: {errors[0].evalue}"
  if path.name == "quickstart.ipynb":  # The pretraining command's progress shows in the notebook, not only a log.
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "step 20/20" in text and "pretraining done" in text, text[-2000:]
  new = sorted(_repo_files() - before)
  assert not new, f"{path.name} wrote into the repository: {new} (write under a temp dir / MEDSSL_COLAB_DIR)"


def _repo_files() -> set:
  """Top-level entries and colabs/ files of the repository (where a careless notebook would write)."""
  return {p.name for p in ROOT.iterdir()} | {f"colabs/{p.name}" for p in (ROOT / "colabs").iterdir()}
