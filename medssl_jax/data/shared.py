"""Where the small real public datasets live: one setting, `MEDSSL_SHARED_DATA`.

Default: `../shared/data` relative to the repository root (the layout CI provides). Code that needs a
dataset calls `dataset_dir(name)`, which says exactly what is missing instead of failing obscurely.
Never copy these files, or arrays derived from them, into the repository.
"""
from __future__ import annotations

import os
import pathlib

ENV_VAR = "MEDSSL_SHARED_DATA"
_REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def shared_data_dir() -> pathlib.Path:
  """The folder named by $MEDSSL_SHARED_DATA, else <repo>/../shared/data (may not exist)."""
  return pathlib.Path(os.environ.get(ENV_VAR) or _REPO_ROOT.parent / "shared" / "data").expanduser()


def dataset_dir(name: str) -> pathlib.Path:
  """The folder of one shared dataset (e.g. "retinamnist").

  Raises:
    FileNotFoundError naming the path looked at and the setting that changes it.
  """
  root = shared_data_dir()
  path = root / name
  if not path.is_dir():
    have = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    raise FileNotFoundError(f"Shared dataset {name!r} not found at {path}; set {ENV_VAR} to the folder that "
                            f"holds it (found there: {have or 'nothing'})")
  return path
