"""Result files, written one way: JSON records and Markdown / CSV tables, each replaced atomically, so an
interrupted write never leaves half a file where a finished one is expected (a rerun then redoes that work)."""
from __future__ import annotations

import json
import os


def write_text(path: str, text: str):
  """`text` to `path` through a temporary file beside it."""
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def write_json(path: str, data, *, indent: int = 2, default=None):
  """`data` as JSON to `path` (`default`: json.dump's fallback for other types, e.g. str or float)."""
  write_text(path, json.dumps(data, indent=indent, default=default))


def write_results(directory: str, name: str, data, table: str):
  """<directory>/<name>.json (the record) and <directory>/<name>.md (its Markdown table)."""
  write_json(os.path.join(directory, f"{name}.json"), data)
  write_text(os.path.join(directory, f"{name}.md"), table + "\n")
