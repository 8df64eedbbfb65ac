"""What checkpoint selection costs: for each fine-tuning row of a table run with `eval.finetune_test_curve=True`,
the test AUROC of the checkpoint selected on validation data beside the test AUROC at the last step and the
highest test AUROC any validated checkpoint reached (an oracle no honest selection can beat: a diagnostic, never a
result).

  python -m medssl_jax.tables.runner --table=configs/table_medmnist_supervised.py:retina_cpu \\
      --workdir=/tmp/retina_tc --table.eval.finetune_test_curve=True
  python -m medssl_jax.tables.selection --workdir=/tmp/retina_tc [--out=selection.md]
"""
from __future__ import annotations

from absl import app
from absl import flags

from medssl_jax import errors
from medssl_jax import paths
from medssl_jax.evals import metrics as metrics_lib
from medssl_jax.evals import results as results_lib

COLUMNS = ("selected (validation)", "last step", "best test checkpoint (oracle)", "mean over the second half")


def rows(workdir: str) -> list[dict]:
  """{"row", "encoder", "seed", "selected_step", "oracle_step", column: test AUROC} per fine-tuned encoder of each
  finished row of the table run in `workdir` that recorded a test curve."""
  root = paths.join(workdir, "rows")
  if not paths.isdir(root):
    raise FileNotFoundError(f"{root} does not exist: --workdir must be a table runner's workdir")
  out = []
  for name in sorted(paths.listdir(root)):
    record = paths.read_json(paths.join(root, name, "result.json"))
    for encoder, r in ((record or {}).get("results") or {}).items():
      curve = r.get("test_curve") if isinstance(r, dict) else None
      if not curve:
        continue
      best = max(curve, key=lambda t: t["auroc"])
      half = curve[len(curve) // 2:]
      out.append({"row": name, "encoder": encoder, "seed": record.get("seed"), "selected_step": r["selected_step"],
                  "oracle_step": best["step"], COLUMNS[0]: r["auroc"], COLUMNS[1]: curve[-1]["auroc"],
                  COLUMNS[2]: best["auroc"], COLUMNS[3]: sum(t["auroc"] for t in half) / len(half)})
  if not out:
    raise ValueError(f"no finished row in {root} recorded a test curve: run the table with "
                     "--table.eval.finetune_test_curve=True")
  return out


def markdown(found: list[dict]) -> str:
  body = [[f"`{r['row']}`", r["encoder"], r["selected_step"],
           *(f"{r[c]:.4f}" + (f" (step {r['oracle_step']})" if c == COLUMNS[2] else "") for c in COLUMNS)]
          for r in found]
  for encoder in dict.fromkeys(r["encoder"] for r in found):
    mine = [r for r in found if r["encoder"] == encoder]
    body.append(["mean ± std", encoder, "", *(metrics_lib.format_mean_std([r[c] for r in mine]) for c in COLUMNS)])
  lines = ["Test AUROC of each fine-tuning run (diagnostic: the oracle column picks the checkpoint by its test score)",
           "", *results_lib.markdown_table(["row", "encoder", "selected step", *COLUMNS], body)]
  return "\n".join(lines) + "\n"


def main(argv):
  del argv
  try:
    found = rows(flags.FLAGS.workdir)
  except FileNotFoundError as e:
    errors.report(e, verbose=flags.FLAGS["verbosity"].present)
    return
  text = markdown(found)
  print(text)
  if flags.FLAGS.out:
    results_lib.write_text(flags.FLAGS.out, text)


if __name__ == "__main__":
  # Flags are defined here, not at import, so other table commands can be imported beside this one.
  flags.DEFINE_string("workdir", None, "The table runner's workdir.")
  flags.DEFINE_string("out", "", "Also write the Markdown table here.")
  flags.mark_flag_as_required("workdir")
  app.run(main)
