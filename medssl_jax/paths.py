"""Paths of workdirs, data dirs and result files, local or on any filesystem etils.epath knows (gs://bucket/run, ...).

Local paths are made absolute (orbax needs that); a URL is kept as it is. Writes are whole-file and atomic: locally
through a temporary file beside the target and a rename, on object stores as one object write (a reader sees the
old object or the new one). Binary results (npz arrays, PNG figures and images) are built in memory and written
the same way, so every writer works on every filesystem.
"""
from __future__ import annotations

import io
import json
import os
import shutil

import numpy as np
from etils import epath


def is_url(path) -> bool:
  return "://" in str(path)


def absolute(path) -> str:
  """`path` made absolute when local; a URL (gs://...) unchanged."""
  return str(path) if is_url(path) else os.path.abspath(os.path.expanduser(str(path)))


def join(*parts) -> str:
  """os.path.join that keeps URLs intact."""
  return str(epath.Path(str(parts[0])).joinpath(*map(str, parts[1:])))


def relpath(p, start) -> str:
  """os.path.relpath of `p` under `start`; for URLs the part of `p` below `start`."""
  if is_url(p) or is_url(start):
    return str(epath.Path(str(p)).relative_to(epath.Path(str(start))))
  return os.path.relpath(p, start)


def path(p) -> epath.Path:
  return epath.Path(absolute(p))


def exists(p) -> bool:
  return path(p).exists()


def isdir(p) -> bool:
  return path(p).is_dir()


def makedirs(p) -> None:
  path(p).mkdir(parents=True, exist_ok=True)


def listdir(p) -> list[str]:
  """Names in folder `p`, sorted."""
  return sorted(c.name for c in path(p).iterdir())


def rmtree(p) -> None:
  """Deletes folder `p` and everything in it (nothing when absent)."""
  if not exists(p):
    return
  if is_url(p):
    path(p).rmtree()
  else:
    shutil.rmtree(absolute(p))


def rename(src, dst) -> None:
  """Moves file or folder `src` to `dst` (a file `dst` is replaced): one atomic rename locally; on object stores,
  which have no renames, each file is copied whole and then `src` deleted, so a reader may see both for a moment
  (and part of a folder's files) but never a partial file."""
  if not (is_url(src) or is_url(dst)):
    os.replace(absolute(src), absolute(dst))
    return
  # Not epath's rename: it needs dst's folder to exist, and an object store's empty "folder" never does.
  root = path(src)
  if not root.is_dir():
    write_bytes(dst, root.read_bytes())
    root.unlink()
    return
  copy_tree(src, dst)
  rmtree(src)


def copy_tree(src, dst, *, last: tuple[str, ...] = ()) -> int:
  """Copies every file under folder `src` to the same place under `dst`, across filesystems (local, gs://, ...);
  files named in `last` are copied after all others (a marker of a complete folder). Returns the number of files."""
  root = path(src)
  files = sorted(_files(root), key=lambda f: (f.name in last, str(f)))
  for f in files:
    write_bytes(join(dst, str(f.relative_to(root))), f.read_bytes())
  return len(files)


def _files(folder: epath.Path):
  """Every file under `folder`, depth first in name order."""
  for child in sorted(folder.iterdir(), key=str):
    if child.is_dir():
      yield from _files(child)
    else:
      yield child


def read_text(p) -> str:
  return path(p).read_text()


def read_bytes(p) -> bytes:
  return path(p).read_bytes()


def read_json(p, missing=None):
  """The JSON document at `p`, or `missing` when there is no such file."""
  return json.loads(read_text(p)) if exists(p) else missing


def write_bytes(p, data: bytes) -> None:
  """`data` to `p` atomically (module docstring); its folder is created."""
  if is_url(p):
    path(p).write_bytes(data)
    return
  p = absolute(p)
  os.makedirs(os.path.dirname(p), exist_ok=True)
  tmp = f"{p}.tmp{os.getpid()}"  # Per process: two processes writing the same file never share a temp file.
  with open(tmp, "wb") as f:
    f.write(data)
  os.replace(tmp, p)


def write_text(p, text: str) -> None:
  """`text` to `p` atomically (module docstring)."""
  write_bytes(p, text.encode("utf-8"))


def save_npz(p, *, compressed: bool = False, **arrays) -> None:
  """np.savez(_compressed) of `arrays` to `p`, atomically."""
  buf = io.BytesIO()
  (np.savez_compressed if compressed else np.savez)(buf, **arrays)
  write_bytes(p, buf.getvalue())


def load_npz(p) -> dict[str, np.ndarray]:
  """Every array of the npz file at `p` (read whole: it is closed when this returns)."""
  with np.load(io.BytesIO(read_bytes(p)), allow_pickle=False) as f:
    return {k: f[k] for k in f.files}


def save_figure(fig, p, **kwargs) -> None:
  """A matplotlib figure to `p` (format from the suffix, default PNG), atomically."""
  buf = io.BytesIO()
  fmt = os.path.splitext(str(p))[1].lstrip(".").lower() or "png"
  fig.savefig(buf, format=kwargs.pop("format", fmt), **kwargs)
  write_bytes(p, buf.getvalue())


def save_image(image, p, **kwargs) -> None:
  """A PIL image to `p` (format from the suffix), atomically."""
  buf = io.BytesIO()
  image.save(buf, format=kwargs.pop("format", None) or _pil_format(p), **kwargs)
  write_bytes(p, buf.getvalue())


def _pil_format(p) -> str:
  ext = os.path.splitext(str(p))[1].lower()
  return {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF"}.get(ext, "PNG")
