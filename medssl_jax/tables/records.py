"""What the table writers share about result records: the seed axes they aggregate over, label-subset names
and the grid axes that need a column of their own."""
from __future__ import annotations

SEED_AXES = ("seed", "eval.subset_seed")  # Aggregated over (mean ± std), never a table column.


def label_name(spec: str) -> str:
  return "100%" if spec in ("", "all", "100%") else spec


def extra_axes(records) -> list[str]:
  """Grid axes that need a column of their own (not dataset / objective / protocol / labels / seeds)."""
  shown = {"base_config", "objective.name", "eval.protocol", "eval.train_subset", "data.builder",
           "data.builder_config", *SEED_AXES}
  keys = []
  for r in records:
    keys += [k for k in r["axes"] if k not in shown and k not in keys]
  return keys
