"""Result files, written one way: JSON records and Markdown / CSV tables, each replaced atomically, so an
interrupted write never leaves half a file where a finished one is expected (a rerun then redoes that work)."""
from __future__ import annotations

import csv
import io
import json
from typing import Iterable, Mapping, Sequence

from medssl_jax import paths


def write_text(path: str, text: str):
  """`text` to `path` atomically (local or a URL: medssl_jax/paths.py)."""
  paths.write_text(path, text)


def write_json(path: str, data, *, indent: int = 2, default=None):
  """`data` as JSON to `path` (`default`: json.dump's fallback for other types, e.g. str or float)."""
  write_text(path, json.dumps(data, indent=indent, default=default))


def write_results(directory: str, name: str, data, table: str):
  """<directory>/<name>.json (the record) and <directory>/<name>.md (its Markdown table)."""
  write_json(paths.join(directory, f"{name}.json"), data)
  write_text(paths.join(directory, f"{name}.md"), table + "\n")


def markdown_table(head: Sequence[str], rows: Iterable[Sequence]) -> list[str]:
  """The lines of a Markdown table: header, rule, then one line per row (cells as str)."""
  return (["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
          + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def csv_text(columns: Sequence[str], rows: Iterable[Mapping]) -> str:
  """CSV with a header of `columns`, one line per row dict (keys outside `columns` ignored, missing ones empty)."""
  buf = io.StringIO()
  w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
  w.writeheader()
  w.writerows(rows)
  return buf.getvalue()


def write_table(stem: str, *, markdown: str, csv: str | None = None) -> dict:
  """<stem>.md (and <stem>.csv when given); returns their paths {"md", "csv"}."""
  paths = {"md": stem + ".md", "csv": stem + ".csv" if csv is not None else None}
  write_text(paths["md"], markdown)
  if csv is not None:
    write_text(paths["csv"], csv)
  return paths
