"""What made a checkpoint: code version, package versions, the dataset's fingerprint, the machines.

Every checkpoint of a pretraining run carries this record (checkpoint.py, item "provenance", beside the
config in <workdir>/config.json), so a backbone found on disk months later says which commit, which jax
and which exact data produced it (`python -m medssl_jax.train.provenance --workdir=W` prints it).
"""
from __future__ import annotations

import datetime
import functools
import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess

import jax
import numpy as np

import medssl_jax
from medssl_jax.data import pipeline
from medssl_jax.train import checkpoint as ckpt_lib

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "tensorflow-datasets", "ml-collections",
            "clu", "numpy", "pillow", "scikit-learn")


@functools.lru_cache(maxsize=1)
def code_version() -> dict:
  """{"version", "git_commit", "git_dirty"} of the medssl_jax source.

  Outside a git checkout (a copied tree on a cluster, an installed package) the commit is $MEDSSL_GIT_COMMIT when
  set, with git_dirty None (unknown); else both are None."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(medssl_jax.__file__)))
  out = {"version": medssl_jax.__version__, "git_commit": None, "git_dirty": None}
  try:
    run = lambda *a: subprocess.run(["git", "-C", root, *a], capture_output=True, text=True, timeout=10, check=True)
    out["git_commit"] = run("rev-parse", "HEAD").stdout.strip()
    # Uncommitted edits to tracked files make the commit an incomplete description of the code.
    out["git_dirty"] = bool(run("status", "--porcelain", "--untracked-files=no").stdout.strip())
  except (OSError, subprocess.SubprocessError):
    out["git_commit"] = os.environ.get("MEDSSL_GIT_COMMIT") or None
  return out


@functools.lru_cache(maxsize=1)
def package_versions() -> dict:
  out = {"python": platform.python_version()}
  for name in PACKAGES:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = None
  return out


def _canonical(value, h):
  """Feeds a record's values into hash `h` in a fixed order (bytes as is, arrays by dtype/shape/bytes)."""
  if isinstance(value, dict):
    for k in sorted(value):
      h.update(str(k).encode())
      _canonical(value[k], h)
  elif isinstance(value, (bytes, bytearray)):
    h.update(bytes(value))
  elif isinstance(value, str):
    h.update(value.encode())
  else:
    a = np.asarray(value)
    h.update(f"{a.dtype}{a.shape}".encode())
    h.update(np.ascontiguousarray(a).tobytes())


def dataset_fingerprint(builder, split: str, *, indices=None, samples: int = 16) -> dict:
  """Name, version, split size and a sha256 over the split's TFDS metadata and `samples` evenly spaced
  records (their encoded image bytes and labels): any rebuilt or edited data changes it, and it costs
  `samples` record reads however large the split is. `indices` (a subset of the split) enter the hash too."""
  info = builder.info
  s = info.splits[split]
  h = hashlib.sha256()
  meta = {"name": builder.name, "config": builder.builder_config.name if builder.builder_config else None,
          "version": str(info.version), "split": split, "num_examples": int(s.num_examples),
          "num_bytes": int(s.num_bytes), "shard_lengths": [int(n) for n in s.shard_lengths]}
  h.update(json.dumps(meta, sort_keys=True).encode())
  source = pipeline._data_source(builder, split)  # pylint: disable=protected-access
  n = len(source)
  for i in sorted({int(round(j)) for j in np.linspace(0, n - 1, min(samples, n))}):
    _canonical(source[i], h)
  if indices is not None:
    h.update(np.asarray(sorted(int(i) for i in indices), np.int64).tobytes())
    meta["subset_size"] = len(indices)
  return dict(meta, sha256=h.hexdigest(), sampled_records=min(samples, n))


def record(config, builder=None, *, split: str | None = None, indices=None) -> dict:
  """The provenance of a run: config, code, packages, dataset fingerprint (when `builder` is given), machines."""
  out = {"config": ckpt_lib.config_dict(config), "code": code_version(), "packages": package_versions(),
         "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
         "devices": {"platform": jax.devices()[0].platform, "device_kind": jax.devices()[0].device_kind,
                     "count": jax.device_count(), "processes": jax.process_count()}}
  if builder is not None:
    out["dataset"] = dataset_fingerprint(builder, split or config.data.train_split, indices=indices)
  return out


def main(argv):
  from absl import flags
  del argv
  rec = ckpt_lib.read_provenance(flags.FLAGS.workdir, step=flags.FLAGS.step)
  print(json.dumps({k: v for k, v in rec.items() if k != "config" or flags.FLAGS.with_config}, indent=2))


if __name__ == "__main__":
  from absl import app, flags
  flags.DEFINE_string("workdir", None, "A run's workdir.", required=True)
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
  flags.DEFINE_bool("with_config", False, "Print the config too.")
  app.run(main)
