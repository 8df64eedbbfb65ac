"""Mean ± std over seeds of finished workdirs: linear-probe results and, where `mode=analyze` ran, attention
inside the analysis mask (e.g. attention-in-lung); for image-text workdirs, image->report retrieval.

For runs that are not table-runner rows (a curriculum, one main.py command per seed): each `--arm` names a label
and the workdirs of its seeds; every encoder found in their probe results becomes a row (the random-init
encoder's rows of all arms are pooled into one, once per seed as read from config.json). Reads <workdir>/<results>.json (default probe_results) and
<workdir>/analysis/<split>/summary.json.

  python -m medssl_jax.tables.collect --arm="curriculum=/w/c0,/w/c1,/w/c2" --arm="single stage=/w/s0,/w/s1" \\
      [--results=probe_results] [--split=test] [--out=table.md]
"""
from __future__ import annotations

from absl import app
from absl import flags

from medssl_jax import paths
from medssl_jax.evals import metrics as metrics_lib
from medssl_jax.evals import results as results_lib

RANDOM = "random init"
RETRIEVAL = {"i2t_R@1": "image->report R@1", "i2t_R@10": "image->report R@10", "label_match@1": "same-label report @1"}


def collect(arms: dict[str, list[str]], *, results: str = "probe_results", split: str = "test") -> list[dict]:
  """Rows {"arm", "encoder", "n", metric: [values]} over each arm's workdirs (one value per seed).

  A workdir without <results>.json is an error naming it (an unfinished seed must not shrink n silently).
  """
  rows: dict[tuple, dict] = {}
  random_seeds = set()
  for arm, workdirs in arms.items():
    for wd in workdirs:
      seed = (paths.read_json(paths.join(wd, "config.json")) or {}).get("seed", wd)
      res = paths.read_json(paths.join(wd, f"{results}.json"))
      if res is None:
        raise FileNotFoundError(f"{paths.join(wd, results + '.json')} does not exist: arm {arm!r} lists a workdir "
                                "whose evaluation has not finished")
      summary = paths.read_json(paths.join(wd, "analysis", split, "summary.json")) or {"encoders": {}}
      retrieved = paths.read_json(paths.join(wd, "retrieval.json")) or {}
      for enc, r in res.items():
        if enc == RANDOM:
          if seed in random_seeds:  # Same seed, same random encoder: count it once.
            continue
          random_seeds.add(seed)
        key = (RANDOM, RANDOM) if enc == RANDOM else (arm, enc)
        row = rows.setdefault(key, {"arm": key[0], "encoder": key[1], "workdirs": [], "accuracy": [], "auroc": [],
                                    "attention_inside": [], "mask_area": [],
                                    **{k: [] for k in RETRIEVAL}})
        row["workdirs"].append(wd)
        row["accuracy"].append(r["accuracy"])
        row["auroc"].append(r["auroc"])
        att = summary["encoders"].get(enc, {}).get("attention")
        if att is None and enc != RANDOM:  # mode=analyze names the workdir's encoder "<objective> (pretrained)".
          others = [v for k, v in summary["encoders"].items() if k != RANDOM]
          att = others[0].get("attention") if len(others) == 1 else None
        att = att or {}
        for k in RETRIEVAL:  # Image-text workdirs: image->report retrieval on the test split.
          if k in retrieved.get(enc, {}):
            row[k].append(retrieved[enc][k])
        if "fraction_inside" in att:
          row["attention_inside"].append(att["fraction_inside"]["mean"])
          row["mask_area"].append(att["mask_area"]["mean"])
  out = sorted(rows.values(), key=lambda r: r["arm"] == RANDOM)  # Random init last.
  for r in out:
    r["n"] = len(r["workdirs"])
  return out


def _pm(values) -> str:
  if not values:
    return "—"
  mean, std, n = metrics_lib.mean_std(values)  # The seeds column gives n.
  return f"{mean:.3f} ± {std:.3f}" if n > 1 else f"{mean:.3f}"


def format_rows(rows: list[dict]) -> str:
  """Markdown: accuracy, AUROC, attention inside the mask (beside the mask's area) and, where any workdir has
  retrieval.json, image->report retrieval; mean ± std (ddof 1) over seeds."""
  extra = [k for k in RETRIEVAL if any(r[k] for r in rows)]
  lines = ["| arm | encoder | seeds | accuracy | AUROC | attention inside mask | mask area |"
           + "".join(f" {RETRIEVAL[k]} |" for k in extra),
           "|---|---|---|---|---|---|---|" + "---|" * len(extra)]
  for r in rows:
    lines.append(f"| {r['arm']} | {r['encoder']} | {r['n']} | {_pm(r['accuracy'])} | {_pm(r['auroc'])} | "
                 f"{_pm(r['attention_inside'])} | {_pm(r['mask_area'])} |" + "".join(f" {_pm(r[k])} |" for k in extra))
  return "\n".join(lines)


def parse_arm(spec: str) -> tuple[str, list[str]]:
  """'label=dir1,dir2' -> (label, [dir1, dir2])."""
  label, sep, dirs = spec.partition("=")
  workdirs = [d for d in dirs.split(",") if d]
  if not sep or not label or not workdirs:
    raise ValueError(f"--arm={spec!r}: expected 'label=workdir1,workdir2,...'")
  return label, workdirs


def main(argv):
  del argv
  f = flags.FLAGS
  arms = dict(parse_arm(a) for a in f.arm or [])
  if not arms:
    raise app.UsageError("give at least one --arm=label=workdir1,workdir2,...")
  table = format_rows(collect(arms, results=f.results, split=f.split))
  print(table)
  if f.out:
    results_lib.write_text(f.out, table + "\n")


if __name__ == "__main__":
  # Flags only when run as a command: other table modules define --out too, and tests import them together.
  flags.DEFINE_multi_string("arm", None, "label=workdir1,workdir2,... (one workdir per seed)")
  flags.DEFINE_string("results", "probe_results", "Results file stem in each workdir.")
  flags.DEFINE_string("split", "test", "Analysis split whose summary.json holds the attention fractions.")
  flags.DEFINE_string("out", "", "Also write the table to this Markdown file.")
  app.run(main)
