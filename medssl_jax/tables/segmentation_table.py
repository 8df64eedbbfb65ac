"""Segmentation transfer tables: run the experiments a table names, collect their segmentation results.

    python -m medssl_jax.tables.segmentation_table --table=configs/table_chase_db1_swcl.py[:variant] \
        --workdir=/tmp/chase_table [--out=docs/tables]

A table file's `get_table(arg)` returns a dict:
  name         file stem of the outputs (<out>/<name>.md / .csv / .png)
  description  a paragraph for the Markdown
  runs         {run name: "configs/<file>.py[:variant]"}: each is run with `experiment.run` in <workdir>/<run name>
               (mode "swcl" or "segmentation"; every stage resumes, so rerunning the command continues)
  rows         ({"label", "run", "encoder"}, ...): one table row per encoder of a run's segmentation results
  published    ({"method", "dice", "auroc", "accuracy", "source", "note"}, ...): rows shown beside ours
Rows report mean ± std over the run's config.segmentation.seeds.
"""
from __future__ import annotations

import os
import time

from absl import app
from absl import flags
from absl import logging
import jax

from medssl_jax import config as config_lib
from medssl_jax import experiment
from medssl_jax import paths
from medssl_jax.evals import results as results_lib

METRICS = (("dice", "Dice (F1)"), ("auroc", "AUROC"), ("accuracy", "accuracy"), ("sensitivity", "sensitivity"),
           ("specificity", "specificity"))
TABLE_KEYS = ("name", "description", "runs", "rows", "published")


def load_table(spec: str) -> dict:
  """The table dict of 'configs/<file>.py[:arg]', validated (unknown keys, rows naming unknown runs)."""
  module, arg = config_lib.load_module(spec)
  table = dict(module.get_table(arg or None))
  unknown = sorted(set(table) - set(TABLE_KEYS))
  if unknown or not table.get("name") or not table.get("runs") or not table.get("rows"):
    raise ValueError(f"table {spec!r}: keys {sorted(table)}; valid keys {list(TABLE_KEYS)} (name, runs and rows "
                     "required)")
  for i, row in enumerate(table["rows"]):
    if set(row) != {"label", "run", "encoder"} or row["run"] not in table["runs"]:
      raise ValueError(f"table {spec!r}: rows[{i}]={row!r} needs keys label, run (one of {sorted(table['runs'])}) "
                       "and encoder")
  for cfg in table["runs"].values():
    config_lib.load(cfg)  # Fails now, not an hour in, on a typo.
  return table


def run_table(table: dict, *, workdir: str) -> list[dict]:
  """Runs every run of the table (resuming) and returns the table's row records."""
  workdir = paths.absolute(workdir)  # A URL (gs://...) stays as it is.
  results, transfer = {}, {}
  for i, (name, spec) in enumerate(table["runs"].items()):
    rdir = paths.join(workdir, name)
    path = paths.join(rdir, "segmentation", "results.json")
    config = config_lib.load(spec)
    print(f"\n#### run {i + 1}/{len(table['runs'])}: {name} ({spec}) in {rdir}", flush=True)
    t0 = time.perf_counter()
    out = experiment.run(config, rdir)
    results[name] = paths.read_json(path)
    transfer[name] = out.get("transfer", {}) if isinstance(out, dict) else {}
    print(f"#### run {name}: {time.perf_counter() - t0:.0f} s", flush=True)
  rows = []
  for row in table["rows"]:
    entry = _encoder_entry(results[row["run"]], row["encoder"], where=f"run {row['run']!r}")
    rows.append({"label": row["label"], "run": row["run"], "config": table["runs"][row["run"]],
                 "encoder": row["encoder"], **entry,
                 "transfer": {t: r[row["encoder"]] for t, r in transfer[row["run"]].items() if row["encoder"] in r}})
  return rows


def _transfer_lines(rows: list[dict]) -> list[str]:
  """A second table: each row's encoder on the runs' classification transfer targets (config.transfer)."""
  targets = []
  for r in rows:
    targets += [t for t in r.get("transfer", {}) if t not in targets]
  if not targets:
    return []
  kappa = {t: any("kappa" in r.get("transfer", {}).get(t, {}) for r in rows) for t in targets}
  head = ["method"]
  for t in targets:
    head += [f"{t} AUROC"] + ([f"{t} kappa"] if kappa[t] else [])
  lines = ["", "## Classification transfer", "",
           "Each encoder on the runs' `config.transfer.targets` with the run's `eval.protocol` (the cpu configs: "
           "linear probe on frozen backbone features); one run per row, so no spread over seeds; in brackets the "
           "bootstrap 95% interval over test images where the run computed one.", ""]
  body = []
  for r in rows:
    cells = [r["label"]]
    for t in targets:
      m = r.get("transfer", {}).get(t)
      ci = m.get("auroc_ci") if m else None
      cells.append("—" if not m else f"{m['auroc']:.4f}" + (f" ({ci[0]:.3f}-{ci[1]:.3f})" if ci else ""))
      if kappa[t]:
        cells.append(f"{m['kappa']:.4f}" if m and "kappa" in m else "—")
    body.append(cells)
  return lines + results_lib.markdown_table(head, body)


def _encoder_entry(results: dict, encoder: str, *, where: str) -> dict:
  """{metric: mean, metric_std: std, seeds: n} of one encoder in a segmentation results.json."""
  encoders = results.get("encoders", results)
  if encoder not in encoders:
    raise KeyError(f"{where}: no segmentation results for encoder {encoder!r}; it has {sorted(encoders)}")
  r = encoders[encoder]
  out = {"seeds": len(r.get("seeds", {})) or 1}
  for key, _ in METRICS:  # Class-id (mask_mode "classes") results have no sensitivity / specificity.
    out[key] = r["mean"].get(key)
    out[key + "_std"] = r["std"].get(key)
  for key in ("protocol", "dataset", "fov"):
    if key in results:
      out[key] = results[key]
  return out


def _mean_std(mean, std) -> str:
  """'0.7012 ± 0.0123', or the mean alone when there is no spread to show (one seed: std is NaN)."""
  if mean is None:
    return "—"
  return f"{mean:.4f}" if std is None or std != std else f"{mean:.4f} ± {std:.4f}"


def format_markdown(table: dict, rows: list[dict]) -> str:
  head = ["method", "encoder run", *[label for _, label in METRICS], "seeds"]
  lines = [f"# {table['name']}", "", table.get("description", "").strip(), ""]
  protocol = next((r["protocol"] for r in rows if r.get("protocol")), "")
  if protocol:
    lines += [f"Protocol: {protocol}", ""]
  body = [[r["label"], f"{r['run']} (`{r['config']}`)", *(_mean_std(r[k], r[k + "_std"]) for k, _ in METRICS),
           str(r["seeds"])] for r in rows]
  body += [[f"{p['method']} (published)", p.get("source", ""),
            *(f"{p[k]:.4f}" if p.get(k) is not None else "—" for k, _ in METRICS), "—"]
           for p in table.get("published", ())]
  lines += results_lib.markdown_table(head, body)
  notes = [p["note"] for p in table.get("published", ()) if p.get("note")]
  if notes:
    lines += [""] + [f"Published rows: {n}" for n in notes]
  lines += _transfer_lines(rows)
  return "\n".join(lines) + "\n"


def write_outputs(table: dict, rows: list[dict], out_dir: str) -> list[str]:
  """<out_dir>/<name>.md, .csv and a bar chart .png; returns the paths."""
  paths.makedirs(out_dir)
  stem = paths.join(out_dir, table["name"])
  keys = ["label", "run", "config", "encoder", "seeds"] + [k for m, _ in METRICS for k in (m, m + "_std")]
  published = [{"label": p["method"] + " (published)", "config": p.get("source", ""), **{m: p.get(m) for m, _ in METRICS}}
               for p in table.get("published", ())]
  results_lib.write_table(stem, markdown=format_markdown(table, rows), csv=results_lib.csv_text(keys, rows + published))
  _plot(table, rows, stem + ".png")
  return [stem + ".md", stem + ".csv", stem + ".png"]


def _plot(table, rows, path):
  # A pyplot-free Figure: no backend switch, so a notebook that calls this keeps its inline plots.
  from matplotlib.figure import Figure
  import numpy as np

  fig = Figure(figsize=(9, 3.2))
  axes = fig.subplots(1, 2)
  x = np.arange(len(rows))
  for ax, (key, label) in zip(axes, METRICS[:2]):
    err = [0.0 if r[key + "_std"] != r[key + "_std"] else r[key + "_std"] for r in rows]  # NaN: one seed.
    ax.bar(x, [r[key] for r in rows], yerr=err, color="tab:blue", capsize=3)
    for p in table.get("published", ()):
      if p.get(key) is not None:
        ax.axhline(p[key], ls="--", lw=1, color="tab:red")
        ax.text(len(rows) - 0.5, p[key], p["method"].split(" (")[0], fontsize=7, color="tab:red", ha="right",
                va="bottom")
    ax.set_xticks(x, [r["label"] for r in rows], rotation=20, ha="right", fontsize=7)
    ax.set_ylabel(label)
    lo = min(r[key] - e for r, e in zip(rows, err))
    ax.set_ylim(max(0.0, lo - 0.1), 1.0)
  fig.suptitle(table["name"], fontsize=9)
  fig.tight_layout()
  paths.save_figure(fig, path, dpi=110)


def main(argv):
  del argv
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # As main.py: orbax / TFDS INFO lines drown the progress.
  if not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser("~/.cache/medssl_jax/xla"))
  table = load_table(flags.FLAGS.table)
  rows = run_table(table, workdir=flags.FLAGS.workdir)
  files = write_outputs(table, rows, paths.absolute(flags.FLAGS.workdir))
  if flags.FLAGS.out:
    files += write_outputs(table, rows, flags.FLAGS.out)
  print("\n" + format_markdown(table, rows), flush=True)
  print("wrote " + ", ".join(files), flush=True)


if __name__ == "__main__":
  # Flags are defined here, not at import, so other table commands can be imported beside this one.
  flags.DEFINE_string("table", None, "Table file: configs/<file>.py[:variant].")
  flags.DEFINE_string("workdir", None, "Where the runs live (one folder per run).")
  flags.DEFINE_string("out", "", "Also write the table here (e.g. docs/tables); default: the workdir only.")
  flags.mark_flags_as_required(["table", "workdir"])
  app.run(main)
