"""What the table writers share about result records: the seed axes they aggregate over, label-subset names
and the grid axes that need a column of their own."""
from __future__ import annotations

SEED_AXES = ("seed", "eval.subset_seed")  # Aggregated over (mean ± std), never a table column.


def label_name(spec: str) -> str:
  return "100%" if spec in ("", "all", "100%") else spec


def extra_axes(records) -> list[str]:
  """Grid axes that need a column of their own (not dataset / objective / protocol / labels / seeds). The base
  config gets one only where two of them share a dataset and objective (e.g. with and without an augmentation)."""
  shown = {"base_config", "objective.name", "eval.protocol", "eval.train_subset", "data.builder",
           "data.builder_config", *SEED_AXES}
  bases: dict[tuple, set] = {}
  for r in records:
    if "base_config" in r["axes"]:
      bases.setdefault((r.get("dataset"), r.get("objective")), set()).add(r["axes"]["base_config"])
  keys = ["base_config"] if any(len(b) > 1 for b in bases.values()) else []
  for r in records:
    keys += [k for k in r["axes"] if k not in shown and k not in keys]
  return keys


def axis_text(key: str, value) -> str:
  """An axis value as a table cell: a base config by its variant argument ('pneumoniamnist,simclr,background'),
  or by its file name when it has none."""
  if key == "base_config" and isinstance(value, str):
    path, _, arg = value.partition(":")
    return arg or path.rsplit("/", 1)[-1].removesuffix(".py")
  return "" if value is None else str(value)
