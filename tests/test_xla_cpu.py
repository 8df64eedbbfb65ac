"""The XLA:CPU convolution setting (medssl_jax/xla_cpu.py): when it is added, and that XLA obeys it."""
import os
import subprocess
import sys

import pytest

from medssl_jax import xla_cpu

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ADDED = f"{xla_cpu.FLAG}={xla_cpu.VALUE}"


def test_adds_the_flag_after_the_users_flags():
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  assert xla_cpu.tune(env, jaxlib_version=xla_cpu.KNOWN_JAXLIB[0]) == ADDED
  assert env["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=8 {ADDED}"
  env = {}
  xla_cpu.tune(env, jaxlib_version=xla_cpu.KNOWN_JAXLIB[0])
  assert env["XLA_FLAGS"] == ADDED


@pytest.mark.parametrize("env", [
    {"XLA_FLAGS": f"{xla_cpu.FLAG}=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"},  # The user's own choice.
    {"MEDSSL_XLA_CPU_TUNING": "0"},
    {"MEDSSL_XLA_CPU_TUNING": "off", "XLA_FLAGS": "--xla_cpu_enable_fast_math=true"},
])
def test_leaves_xla_flags_alone_when_told(env):
  before = dict(env)
  assert xla_cpu.tune(env, jaxlib_version=xla_cpu.KNOWN_JAXLIB[0]) is None
  assert env == before


def test_unchecked_jaxlib_gets_no_flag():
  # XLA aborts on a flag it does not know, so an unverified jaxlib is left as it is.
  env = {}
  assert xla_cpu.tune(env, jaxlib_version="0.0.1") is None
  assert "XLA_FLAGS" not in env


def test_pinned_jaxlib_is_known():
  from importlib import metadata
  assert metadata.version("jaxlib") in xla_cpu.KNOWN_JAXLIB, (
      f"jaxlib {metadata.version('jaxlib')} is not in medssl_jax/xla_cpu.py KNOWN_JAXLIB: check that "
      f"{xla_cpu.FLAG} still exists there (and still helps: benchmarks/torch_compare.py) before adding it")


_PROBE = """
import os, sys
{pre}
import jax, jax.numpy as jnp
{post}
conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
text = jax.jit(conv).lower(jnp.ones((8, 28, 28, 64)), jnp.ones((3, 3, 64, 64))).compile().as_text()
dot = jax.jit(jnp.dot).lower(jnp.ones((64, 64)), jnp.ones((64, 64))).compile().as_text()
print("FLAGS", os.environ.get("XLA_FLAGS", ""))
print("CONV_IN_YNN", any("__ynn_fusion" in l and "conv_general_dilated" in l for l in text.splitlines()))
print("DOT_IN_YNN", "__ynn_fusion" in dot)
"""


def _probe(env_extra, pre="import medssl_jax", post=""):
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "MEDSSL_XLA_CPU_TUNING")}
  env.update(env_extra, JAX_PLATFORMS="cpu")
  r = subprocess.run([sys.executable, "-c", _PROBE.format(pre=pre, post=post)], cwd=REPO, env=env,
                     capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stderr[-2000:]
  return dict(line.split(" ", 1) for line in r.stdout.splitlines() if line.split(" ", 1)[0].isupper()), r.stderr


def test_xla_accepts_the_flag_and_keeps_convolutions_out_of_ynnpack():
  out, _ = _probe({})
  assert ADDED in out["FLAGS"]
  assert out["CONV_IN_YNN"] == "False", "the convolution should stay an XLA convolution (Eigen, all threads)"
  assert out["DOT_IN_YNN"] == "True", "dots should still go to YNNPACK"


def test_without_the_flag_xla_hands_convolutions_to_ynnpack():
  # Why the flag exists: if a jaxlib stops doing this, the flag (and its warning) can go.
  out, _ = _probe({"MEDSSL_XLA_CPU_TUNING": "0"})
  assert ADDED not in out["FLAGS"]
  assert out["CONV_IN_YNN"] == "True"


def test_importing_after_jax_started_warns():
  out, err = _probe({}, pre="import jax; jax.numpy.ones(1).block_until_ready()", post="import medssl_jax")
  assert "imported after JAX started" in err
  assert out["CONV_IN_YNN"] == "True"  # Too late: XLA read its flags already.
