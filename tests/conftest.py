"""Test setup shared by the whole suite.

Eight simulated CPU devices so sharding tests run anywhere, and a persistent compilation cache so
repeated runs of the suite skip most XLA compiles. Both must be set before jax is imported.
"""
import os
import pathlib
import sys

# The suite's models are tiny and run a few steps, so XLA's compiles are most of its time, and its optimisations most
# of each compile: without them (level 0) the suite runs about a quarter faster, steps about 2x slower. The values
# are the same computation's; medssl_jax's own runs keep XLA's default (tests of bit-level properties compile as
# they do: tests/device_testing.py).
_OWN_XLA_FLAGS = "XLA_FLAGS" not in os.environ
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# The suite's models are tiny: there a convolution on one thread (YNNPACK, jaxlib's default) is as fast or
# faster than on all threads, and the notebooks ran ~25% faster (tests/test_colabs.py: 140 vs 164 s with
# test_multihost), so the suite keeps jaxlib's default; MEDSSL_XLA_CPU_TUNING=1 runs it with medssl_jax's
# setting (the whole suite passes either way), and tests/test_xla_cpu.py checks the setting in subprocesses.
os.environ.setdefault("MEDSSL_XLA_CPU_TUNING", "0")

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

import medssl_jax  # noqa: E402,F401  Applies MEDSSL_XLA_CPU_TUNING (medssl_jax/xla_cpu.py) before jax starts.
from medssl_jax import xla_cpu  # noqa: E402

# XLA:CPU's older loop emitters compile much faster than its MLIR fusion emitters and run these small steps about as
# fast: 31 -> 25 min for the suite (docs/speed.md#the-test-suite). Only on a checked jaxlib: XLA aborts on an unknown
# flag.
if _OWN_XLA_FLAGS and xla_cpu.known_jaxlib():
  os.environ["XLA_FLAGS"] += " --xla_cpu_use_fusion_emitters=false"
import jax  # noqa: E402

_CACHE = os.environ.get("MEDSSL_JAX_CACHE", str(pathlib.Path.home() / ".cache" / "medssl_jax" / "xla"))
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

from absl import flags  # noqa: E402

# grain worker processes and some absl users read flags; pytest never parses them.
if not flags.FLAGS.is_parsed():
  flags.FLAGS.mark_as_parsed()


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def fundus_small_dir(tmp_path_factory):
  """A TFDS data dir holding synthetic_fundus/small (512 / 64 / 256 images at 28 px), built once per session."""
  from medssl_jax.data import pipeline
  d = tmp_path_factory.mktemp("tfds_fundus_small")
  pipeline.get_builder("synthetic_fundus", data_dir=str(d), config="small")
  return d


@pytest.fixture(scope="session")
def installed_package(tmp_path_factory):
  """(wheel, folder it is installed into): medssl_jax as pip builds and installs it from this checkout, for runs
  outside the checkout with PYTHONPATH=<folder> (tests/test_packaging.py, tests/test_colabs.py)."""
  import shutil
  import subprocess
  src, out, site = (tmp_path_factory.mktemp(n) for n in ("package_src", "wheel", "site"))
  for name in ("pyproject.toml", "setup.py", "README.md"):
    shutil.copy(ROOT / name, src / name)
  for name in ("medssl_jax", "tfds_builders", "configs"):
    shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
  pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
  subprocess.run(pip + ["wheel", str(src), "--no-deps", "--no-build-isolation", "-w", str(out)], check=True,
                 capture_output=True, timeout=300)
  wheel = next(out.glob("medssl_jax-*.whl"))
  subprocess.run(pip + ["install", "--no-deps", "--target", str(site), str(wheel)], check=True, capture_output=True,
                 timeout=300)
  return wheel, site


# Long checks (paper-scale compiles, the CPU benchmark scripts' smoke runs) are opt-in, so the default suite stays
# short: `MEDSSL_SLOW_TESTS=1 python -m pytest -q tests` runs them too.
SLOW = os.environ.get("MEDSSL_SLOW_TESTS") == "1"


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: a long check that runs only with MEDSSL_SLOW_TESTS=1")


def pytest_collection_modifyitems(config, items):
  if SLOW:
    return
  skip = pytest.mark.skip(reason="a long check: MEDSSL_SLOW_TESTS=1 runs it")
  for item in items:
    if "slow" in item.keywords:
      item.add_marker(skip)
