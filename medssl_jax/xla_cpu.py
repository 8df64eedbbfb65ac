"""XLA:CPU settings that make ResNet training 1.3-1.4x faster on CPU (set when medssl_jax is imported).

jaxlib 0.10.2 hands convolutions to YNNPACK ("__ynn_fusion"), which runs each convolution on ONE thread
(a 3x3 conv, 128 x 28 x 28 x 64: 33 ms on 1 or 2 cores alike), while XLA's own Eigen convolution uses
every core (21 ms on 2 cores, as PyTorch). We therefore keep YNNPACK for dots and reductions
and leave convolutions to Eigen:

  --xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE

(Adding LIBRARY_FUSION_TYPE_ELTWISE is another 5% faster on the model alone but fails at run time on parts of
the trainer's step: "unsupported layout in YNN fusion".)
(`benchmarks/README.md` has the measurements.) XLA reads XLA_FLAGS when the backend starts, so this only
takes effect if medssl_jax is imported before the first JAX computation (main.py, the benchmarks, the
tests and the notebooks do). It is skipped when XLA_FLAGS already names the option, when
MEDSSL_XLA_CPU_TUNING=0, and on jaxlib versions where the option has not been checked to exist (XLA aborts
on an unknown flag). The flag only concerns the CPU backend; on GPU / TPU it changes nothing.
"""
import os
import sys
import warnings

FLAG = "--xla_cpu_experimental_ynn_fusion_type"
VALUE = "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"
# jaxlib versions whose XLA has the flag (checked by tests/test_xla_cpu.py on the pinned one).
KNOWN_JAXLIB = ("0.10.2",)


def known_jaxlib(version=None) -> bool:
  """Whether this jaxlib (or `version`) is one whose XLA flags medssl_jax has checked."""
  return (version if version is not None else _jaxlib_version()) in KNOWN_JAXLIB


def _jaxlib_version():
  try:
    from importlib import metadata
    return metadata.version("jaxlib")
  except Exception:  # Not installed as a distribution (e.g. a source build): do not guess.
    return None


def tune(environ=None, jaxlib_version=None):
  """Adds the convolution setting to environ["XLA_FLAGS"] where it applies; returns the flag added or None."""
  environ = os.environ if environ is None else environ
  if environ.get("MEDSSL_XLA_CPU_TUNING", "1").strip().lower() in ("0", "false", "no", "off"):
    return None
  flags = environ.get("XLA_FLAGS", "")
  if FLAG in flags:  # The user's own choice wins.
    return None
  if not known_jaxlib(jaxlib_version):
    return None
  added = f"{FLAG}={VALUE}"
  environ["XLA_FLAGS"] = f"{flags} {added}".strip()
  if environ is os.environ and _backend_started():
    warnings.warn(
        "medssl_jax was imported after JAX started its backend, so XLA:CPU keeps running each convolution on "
        "one thread (about 1.3x slower ResNet training on CPU). Import medssl_jax before the first JAX "
        f"computation, or start Python with XLA_FLAGS='{added}'.", stacklevel=3)
  return added


def _backend_started():
  if "jax" not in sys.modules:
    return False
  try:
    from jax._src import xla_bridge  # Private, hence the guard: only a hint depends on it.
    return xla_bridge.backends_are_initialized() and xla_bridge.default_backend() == "cpu"
  except Exception:
    return False
