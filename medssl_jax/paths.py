"""Paths of workdirs and result files, local or on any filesystem etils.epath knows (gs://bucket/run, ...).

Local paths are made absolute (orbax needs that); a URL is kept as it is. Writes are whole-file and atomic: locally
through a temporary file beside the target and a rename, on object stores as one object write (a reader sees the
old object or the new one).
"""
from __future__ import annotations

import os

from etils import epath


def is_url(path) -> bool:
  return "://" in str(path)


def absolute(path) -> str:
  """`path` made absolute when local; a URL (gs://...) unchanged."""
  return str(path) if is_url(path) else os.path.abspath(os.path.expanduser(str(path)))


def join(*parts) -> str:
  """os.path.join that keeps URLs intact."""
  return str(epath.Path(str(parts[0])).joinpath(*map(str, parts[1:])))


def path(p) -> epath.Path:
  return epath.Path(absolute(p))


def exists(p) -> bool:
  return path(p).exists()


def makedirs(p) -> None:
  path(p).mkdir(parents=True, exist_ok=True)


def read_text(p) -> str:
  return path(p).read_text()


def write_text(p, text: str) -> None:
  """`text` to `p` atomically (module docstring)."""
  if is_url(p):
    path(p).write_text(text)
    return
  tmp = f"{p}.tmp{os.getpid()}"  # Per process: two processes writing the same file never share a temp file.
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, p)
