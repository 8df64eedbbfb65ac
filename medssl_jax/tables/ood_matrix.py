"""The out-of-distribution matrix of a table: rows = where a classifier was trained, columns = where it is tested.

Input: the table runner's result records (rows/<slug>/result.json), whose results[encoder] may hold an
"ood" dict {target name: metrics} (medssl_jax/evals/ood.py). Each (record, encoder) gives one cell per
test set: the diagonal is the record's own test split (results[encoder]["auroc"], in-distribution), the
other columns its OOD targets. Cells are the mean ± sample std over seeds (tables/records.py SEED_AXES) of the runs of
one row group: source dataset, objective, encoder, protocol, label subset and any other grid axis.

`write_ood_outputs(table, records, workdir=...)` writes <workdir>/<name>_ood.md (AUROC and accuracy
matrices, the targets' label maps and counts, every run), <name>_ood.csv (one line per run and test set)
and <name>_ood.png (a heatmap of mean AUROC); None when no record has OOD results.
"""
from __future__ import annotations

import json
import math
import os

from medssl_jax import paths
from medssl_jax.evals import metrics as metrics_lib
from medssl_jax.evals import ood as ood_lib
from medssl_jax.evals import results as results_lib
from medssl_jax.tables import records as records_lib

CSV_COLUMNS = ("table", "row", "seed", "source", "objective", "encoder", "protocol", "label_subset", "test_set",
               "in_distribution", "auroc", "accuracy", "n", "n_dropped", "label_map", "target")


def _column(dataset: str, split: str) -> str:
  return dataset if split == "test" else f"{dataset} ({split})"


def has_ood(records) -> bool:
  """Whether any record's results carry OOD metrics."""
  return any((m or {}).get("ood") for r in records for m in r.get("results", {}).values())


def ood_entries(records) -> list[dict]:
  """One flat entry per (record, encoder, test set), in-distribution first, then the OOD targets.

  Keys: group (the row-group key), row_label, column, in_distribution, auroc, accuracy, n, n_dropped,
  label_map, target, seed, and the record's table / row / dataset / objective / encoder / protocol.
  An OOD target that is the record's own test split is left out (the record's own result is the cell).
  """
  extra = records_lib.extra_axes(records)
  out = []
  for r in records:
    own_split = ((r.get("config") or {}).get("data") or {}).get("test_split", "test")
    own = _column(r["dataset"], own_split)
    labels = records_lib.label_name(r.get("train_subset", ""))
    for encoder, m in r["results"].items():
      parts = [r["dataset"], encoder, r["protocol"]]
      if r.get("objective") and not encoder.startswith(r["objective"]) and "supervised" not in r["objective"]:
        parts[1] = f"{encoder} ({r['objective']} recipe)"
      if labels != "100%":
        parts.append(f"{labels} labels")
      parts += [f"{k}={records_lib.axis_text(k, r['axes'].get(k))}" for k in extra]
      group = (r["dataset"], r.get("objective"), encoder, r["protocol"], labels,
               *(json.dumps(r["axes"].get(k), default=str) for k in extra))
      base = dict(table=r.get("table"), row=r.get("row"), seed=r.get("seed"), source=r["dataset"],
                  objective=r.get("objective"), encoder=encoder, protocol=r["protocol"], label_subset=labels,
                  group=group, row_label=" · ".join(parts), own_column=own)
      out.append(dict(base, column=own, in_distribution=True, auroc=m.get("auroc"), accuracy=m.get("accuracy"),
                      n=None, n_dropped=None, label_map=None, target=f"{r['dataset']} ({own_split}, in-distribution)"))
      for name, t in (m.get("ood") or {}).items():
        column = _column(t["dataset"], t["split"])
        if column == own:
          continue
        out.append(dict(base, column=column, in_distribution=False, auroc=t.get("auroc"),
                        accuracy=t.get("accuracy"), n=t.get("n"), n_dropped=t.get("n_dropped"),
                        label_map=t.get("label_map"), target=t.get("target", name)))
  return out


def build_matrix(entries) -> dict:
  """{"rows": [row labels], "columns": [test sets], "cells": {(row, column): {"auroc": [...], "accuracy": [...],
  "in_distribution": bool}}}. Columns: the row datasets' own test sets in row order, then other targets."""
  rows, columns, cells = [], [], {}
  for e in entries:
    if e["row_label"] not in rows:
      rows.append(e["row_label"])
    if e["own_column"] not in columns:
      columns.append(e["own_column"])
  for e in entries:
    if e["column"] not in columns:
      columns.append(e["column"])
    cell = cells.setdefault((e["row_label"], e["column"]),
                            dict(auroc=[], accuracy=[], in_distribution=e["in_distribution"]))
    cell["auroc"].append(e["auroc"])
    cell["accuracy"].append(e["accuracy"])
  return dict(rows=rows, columns=columns, cells=cells)


def _finite(values) -> list[float]:
  return [float(v) for v in values if v is not None and math.isfinite(v)]


def _cell_text(cell, key) -> str:
  if cell is None:
    return "—"
  values = _finite(cell[key])
  text = metrics_lib.format_mean_std(values) if values else "nan"
  return f"**{text}**" if cell["in_distribution"] else text


def format_markdown(table, records, *, png: str | None = None) -> str:
  """The OOD matrices (AUROC, accuracy; the heatmap `png` linked), the targets' label maps and counts, then
  every run."""
  entries = ood_entries(records)
  mat = build_matrix(entries)
  lines = [f"# {table.name}: out-of-distribution matrix", ""]
  if table.get("description", None):
    lines += [table.description, ""]
  lines += ["Rows: the dataset a classifier was trained on, with its encoder and protocol; columns: the test split "
            "it is scored on. **Bold**: in-distribution (the row's own test split). Other cells: "
            f"{ood_lib.PROTOCOL}. Mean ± sample std over seeds (n = runs).", ""]
  for title, key in (("AUROC", "auroc"), ("Accuracy", "accuracy")):
    lines += [f"## {title}", "", "| trained on · encoder · protocol | " + " | ".join(mat["columns"]) + " |",
              "|" + "---|" * (len(mat["columns"]) + 1)]
    for row in mat["rows"]:
      lines.append(f"| {row} | " + " | ".join(_cell_text(mat["cells"].get((row, c)), key) for c in mat["columns"])
                   + " |")
    lines.append("")
  if png:
    lines += [f"![AUROC matrix]({os.path.basename(png)})", ""]
  lines += ["## Targets", "", "| trained on | tested on | label map (target ← source classes) | n scored | dropped |",
            "|---|---|---|---|---|"]
  seen = set()
  for e in entries:
    if e["in_distribution"]:
      continue
    lmap = "; ".join(f"{t} ← {' + '.join(v)}" for t, v in (e["label_map"] or {}).items())
    key = (e["source"], e["column"], lmap, e["n"], e["n_dropped"])
    if key not in seen:
      seen.add(key)
      lines.append(f"| {e['source']} | {e['column']} | {lmap} | {e['n']} | {e['n_dropped']} |")
  lines += ["", "## Every run", "", "| row | seed | encoder | test set | AUROC | accuracy | n | dropped |",
            "|---|---|---|---|---|---|---|---|"]
  fmt = lambda v: "—" if v is None else f"{v:.4f}"
  for e in entries:
    lines.append(f"| `{e['row']}` | {e['seed']} | {e['encoder']} | {e['column']}"
                 f"{' (in-dist.)' if e['in_distribution'] else ''} | {fmt(e['auroc'])} | {fmt(e['accuracy'])} | "
                 f"{'—' if e['n'] is None else e['n']} | {'—' if e['n_dropped'] is None else e['n_dropped']} |")
  return "\n".join(lines) + "\n"


def format_csv(records) -> str:
  """One CSV line per (run, encoder, test set)."""
  return results_lib.csv_text(CSV_COLUMNS, [
      dict(e, test_set=e["column"], label_map=json.dumps(e["label_map"]) if e["label_map"] else "")
      for e in ood_entries(records)])


def plot_heatmap(table, records, path: str) -> str:
  """PNG heatmap of mean AUROC (rows: trained on, columns: tested on), cells annotated mean ± std;
  in-distribution cells outlined, missing cells grey."""
  # A pyplot-free Figure: no backend switch, so a notebook that calls this keeps its inline plots.
  import matplotlib.patches
  from matplotlib.figure import Figure
  import numpy as np
  mat = build_matrix(ood_entries(records))
  rows, cols = mat["rows"], mat["columns"]
  grid = np.full((len(rows), len(cols)), np.nan)
  for (row, col), cell in mat["cells"].items():
    values = _finite(cell["auroc"])
    if values:
      grid[rows.index(row), cols.index(col)] = float(np.mean(values))
  fig = Figure(figsize=(2.2 + 2.0 * len(cols), 1.4 + 0.7 * len(rows)))
  ax = fig.subplots()
  cmap = matplotlib.colormaps["viridis"].with_extremes(bad="0.85")  # Missing cells grey.
  im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
  for (row, col), cell in mat["cells"].items():
    i, j = rows.index(row), cols.index(col)
    values = _finite(cell["auroc"])
    if values:
      mean, std, _ = metrics_lib.mean_std(values)
      text = f"{mean:.3f}" + (f"\n± {std:.3f}" if len(values) > 1 else "")
      ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if mean < 0.6 else "black")
    if cell["in_distribution"]:
      # Inset, so the outline of an in-distribution cell does not also frame its neighbours.
      ax.add_patch(matplotlib.patches.Rectangle((j - 0.45, i - 0.45), 0.9, 0.9, fill=False, edgecolor="red", linewidth=2))
  ax.set_xticks(range(len(cols)), [c.replace("/", "/\n") for c in cols], fontsize=7)
  ax.set_yticks(range(len(rows)), [r.replace(" · ", "\n", 1) for r in rows], fontsize=7)
  ax.set_xlabel("tested on (red: in-distribution)")
  ax.set_ylabel("trained on")
  ax.set_title(f"{table.name}: AUROC (mean ± std over seeds)", fontsize=9)
  fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
  fig.tight_layout()
  paths.save_figure(fig, path, dpi=120)
  return path


def write_ood_outputs(table, records, *, workdir: str) -> dict | None:
  """Writes <workdir>/<name>_ood.md, .csv and .png when any record has OOD results; returns their paths
  {"md", "csv", "png"}, or None (nothing written) otherwise."""
  if not has_ood(records):
    return None
  base = paths.join(workdir, f"{table.name}_ood")
  png = plot_heatmap(table, records, base + ".png")
  files = results_lib.write_table(base, markdown=format_markdown(table, records, png=png), csv=format_csv(records))
  return dict(files, png=png)
