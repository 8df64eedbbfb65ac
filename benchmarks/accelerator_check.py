"""One-shot accelerator check: what one device of this machine trains at, as one Markdown table.

Usage:
  python benchmarks/accelerator_check.py                # on a GPU / TPU machine, within --budget_s (8 min)
  python benchmarks/accelerator_check.py --quick        # tiny models on any backend (the CI smoke test)
  python benchmarks/accelerator_check.py --peak_tflops=989 --batch=256 --out=check.md

Prints the device, then one row per workload on one device (a 1-device mesh, synthetic uint8 batches already
on the device; the input pipeline is measured apart):
  * SimCLR, BYOL and DINO with ResNet-50 at 224 px, 2 views per record, bf16 compute;
  * MAE with ViT-B/16 at 224 px (75% of the patches masked), bf16;
  * the host input pipeline at 224 px (decode + resize + batch, the trainer's own): real fundus JPEGs
    (HRF, from the shared data) where they are present, else the synthetic fundus builder, with 0 grain
    workers (one core) and with more.
Columns: step time, records/s (images/s for MAE), views/s through the encoder, GFLOP/step (XLA's cost
analysis of the compiled step), MFU (GFLOP/step / step time / the device's dense bf16 peak), XLA's memory of
the compiled step (arguments + temporaries), compile time. The batch starts at --batch and is halved until
it fits. The peak comes from the device's name (vendor datasheets, dense bf16: PEAK_TFLOPS) unless
--peak_tflops is given; on a CPU there is no MFU. Each workload runs its compiled step for --steps steps or
until its share of --budget_s is spent, whichever comes first (at least 2 timed steps).

The goals beside the table: SimCLR ResNet-50 at 224 px bf16 at 5,000 views/s or more on one H100-class GPU
(about two thirds of the per-GPU rate of the tuned MLPerf ResNet-50 training submissions), MAE ViT-B/16 at
40% MFU or more; and the host cores one device needs: the SimCLR records/s over the pipeline's records/s per
core.
"""
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app
from absl import flags

import bench_lib

_BATCH = flags.DEFINE_integer("batch", 256, "Records per step to try first (halved until the step fits).")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps per workload at most (median and best kept).")
_BUDGET = flags.DEFINE_float("budget_s", 420.0, "Wall-clock seconds for the whole check; workloads not started "
                             "within it are reported as skipped.")
_PEAK = flags.DEFINE_float("peak_tflops", 0.0, "Device peak TFLOP/s for MFU (0 = from the device's name).")
_DTYPE = flags.DEFINE_enum("compute_dtype", "bfloat16", ["float32", "bfloat16"], "config.model.compute_dtype.")
_PIPE_WORKERS = flags.DEFINE_list("pipeline_workers", [], "grain worker counts for the pipeline rows "
                                  "(default: 0 and min(8, host CPUs)).")
_DATA_DIR = flags.DEFINE_string("data_dir", "", "TFDS data dir for the pipeline's dataset (default: the usual one; "
                                "--quick: a temporary one).")
_OUT = flags.DEFINE_string("out", "", "Also write the table (with the device line) to this new Markdown file.")
_QUICK = flags.DEFINE_bool("quick", False, "Smoke preset for any backend (~1 min on 2 CPU cores): ResNet-18 x0.125 "
                           "and ViT-Ti at 32 px, batch 8, 2 steps, float32, the synthetic fundus builder.")

# Dense bf16 peak TFLOP/s per device (vendor datasheets), matched in order against the lower-cased device kind.
PEAK_TFLOPS = (
    ("b200", 2250.0), ("h100 pcie", 756.0), ("h100 nvl", 835.0), ("h100", 989.4), ("h200", 989.4), ("gh200", 989.4),
    ("a100", 312.0), ("l40s", 362.0), ("l40", 181.0), ("l4", 121.0),
    ("tpu v6 lite", 918.0), ("tpu v5 lite", 197.0), ("tpu v5", 459.0), ("tpu v4", 275.0), ("tpu v3", 123.0),
)
GOAL_SIMCLR_VIEWS_S = 5000  # SimCLR ResNet-50 224 px bf16 on one H100-class GPU.
GOAL_MAE_MFU = 40.0  # MAE ViT-B/16, percent.


def peak_tflops(device_kind: str) -> float | None:
  kind = device_kind.lower()
  return next((tf for name, tf in PEAK_TFLOPS if name in kind), None)


def workloads(quick: bool):
  """(label, bench_config kwargs) per train-step row."""
  if quick:
    conv = dict(encoder="resnet18", size=32, width=0.125)
    return [(f"{o} ResNet-18 x0.125, 32 px", dict(objective=o, **conv)) for o in ("simclr", "byol", "dino")] + [
        ("mae ViT-Ti/4, 32 px", dict(objective="mae", encoder="vit_tiny", size=32))]
  conv = dict(encoder="resnet50", size=224, width=1.0)
  return [(f"{o} ResNet-50, 224 px", dict(objective=o, **conv)) for o in ("simclr", "byol", "dino")] + [
      ("mae ViT-B/16, 224 px", dict(objective="mae", encoder="vit_base", size=224))]


def _out_of_memory(e: Exception) -> bool:
  text = str(e)
  return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def step_row(kwargs, *, batch, steps, seconds, dtype):
  """The train-step measurements at the largest batch <= `batch` (halving) that fits; adds "batch"."""
  import jax
  while True:
    try:
      config = bench_lib.bench_config(batch=batch, compute_dtype=dtype, **kwargs)
      r = bench_lib.train_step_cell(config, steps=steps, max_seconds=seconds)
      r["batch"], r["views"] = batch, len(config.augment.views) if kwargs["objective"] != "mae" else 1
      return r
    except Exception as e:  # noqa: BLE001  Only out-of-memory is retried; anything else is re-raised.
      if not _out_of_memory(e) or batch <= 1:
        raise
      print(f"  batch {batch} does not fit ({str(e).splitlines()[0][:80]}); trying {batch // 2}", flush=True)
      batch //= 2
      jax.clear_caches()


def pipeline_source(quick: bool, data_dir: str):
  """(label, builder) of the pipeline rows: HRF's fundus JPEGs from the shared data, else synthetic fundus."""
  from absl import logging
  import tensorflow_datasets as tfds
  logging.set_verbosity(logging.WARNING)  # TFDS logs every shard at INFO.
  tfds.disable_progress_bar()
  from medssl_jax.data import pipeline
  from medssl_jax.data import shared
  if not quick:
    try:
      manual = str(shared.dataset_dir("hrf"))
    except FileNotFoundError as e:
      print(f"pipeline: {e}; measuring the synthetic fundus builder (64 px PNGs) instead", flush=True)
    else:
      return ("HRF fundus JPEGs (stored at 512 px)",
              pipeline.get_builder("hrf", config="classification_512", data_dir=data_dir or None, manual_dir=manual))
  name = "tiny" if quick else "small"
  return (f"synthetic fundus/{name} PNGs",
          pipeline.get_builder("synthetic_fundus", config=name, data_dir=data_dir or None))


def main(_):
  import jax

  if _OUT.value and os.path.exists(_OUT.value):
    raise app.UsageError(f"--out={_OUT.value} exists; name a new file (the check never overwrites one)")
  start = time.perf_counter()
  quick = _QUICK.value
  batch, steps, dtype = (8, 2, "float32") if quick else (_BATCH.value, _STEPS.value, _DTYPE.value)
  size = 32 if quick else 224
  kind = jax.devices()[0].device_kind
  peak = _PEAK.value or peak_tflops(kind)
  lines = [bench_lib.device_line(),
           f"one device; {dtype} compute; peak {peak or 'unknown'} TFLOP/s"
           + ("" if _PEAK.value or not peak else " (dense bf16, from the device's name)")]
  print("\n".join(lines), flush=True)
  head = ("| workload | batch | ms/step (median / best) | records/s | views/s | GFLOP/step | MFU | "
          "XLA args+temp MiB | compile s |")
  rows = []
  results = {}
  loads = workloads(quick)
  for i, (label, kwargs) in enumerate(loads):
    left = _BUDGET.value - (time.perf_counter() - start)
    if left <= 0:
      rows.append(f"| {label} | skipped: --budget_s={_BUDGET.value:.0f} spent |" + " |" * 7)
      continue
    try:
      # Each step row gets an equal share of what is left; the pipeline rows keep a fifth of the budget.
      r = step_row(kwargs, batch=batch, steps=steps, dtype=dtype,
                   seconds=max(0.0, 0.8 * left / (len(loads) - i) - 30))
    except Exception as e:  # noqa: BLE001  One workload failing must not hide the others.
      msg = re.split(r"\n", str(e) or type(e).__name__)[0][:100]
      rows.append(f"| {label} | failed: {msg} |" + " |" * 7)
      print(rows[-1], flush=True)
      continue
    results[kwargs["objective"]] = r
    s = r["ms"] / 1e3
    mfu = r["gflop"] / s / (peak * 1e3) * 100 if peak and r["gflop"] else None
    r["mfu"] = mfu
    rows.append(f"| {label} | {r['batch']} | {r['ms']:.1f} / {r['min_ms']:.1f} | {r['images_s']:.0f} | "
                f"{r['images_s'] * r['views']:.0f} | {bench_lib.fmt(r['gflop'], '.1f')} | "
                f"{bench_lib.fmt(mfu, '.1f')}{'%' if mfu is not None else ''} | {bench_lib.fmt(r['xla_mib'])} | "
                f"{r['compile_s']:.0f} |")
    print(rows[-1], flush=True)
    jax.clear_caches()

  per_core = None
  tmp = tempfile.TemporaryDirectory(prefix="accel_check_tfds_") if quick and not _DATA_DIR.value else None
  try:
    label, builder = pipeline_source(quick, _DATA_DIR.value or (tmp.name if tmp else ""))
    workers = [int(w) for w in _PIPE_WORKERS.value] or ([0] if quick else [0, min(8, os.cpu_count() or 1)])
    for w in dict.fromkeys(workers):
      rate = bench_lib.pipeline_rate(builder, split="train", batch=batch if quick else 32, batches=3 if quick else 20,
                                     image_size=size, workers=w)
      if w == 0:
        per_core = rate
      rows.append(f"| input pipeline: {label} -> {size} px, {w} grain workers "
                  f"({'1 core' if w == 0 else f'{w} worker processes'}) | {batch if quick else 32} | | {rate:.0f} |"
                  + " |" * 5)
      print(rows[-1], flush=True)
  except Exception as e:  # noqa: BLE001
    rows.append(f"| input pipeline: failed: {str(e).splitlines()[0][:100]} |" + " |" * 8)
    print(rows[-1], flush=True)
  finally:
    if tmp:
      tmp.cleanup()

  notes = [f"Wall-clock: {time.perf_counter() - start:.0f} s."]
  peak_mib = bench_lib.device_peak_mib()
  if peak_mib is not None:
    notes.append(f"Device memory peak over the whole check: {peak_mib:.0f} MiB.")
  if "simclr" in results:
    r = results["simclr"]
    notes.append(f"SimCLR: {r['images_s'] * r['views']:.0f} views/s (goal for ResNet-50 at 224 px bf16 on one "
                 f"H100-class GPU: {GOAL_SIMCLR_VIEWS_S:,} or more).")
    if per_core:
      notes.append(f"Host cores one device needs to feed SimCLR at this rate: {r['images_s'] / per_core:.1f} "
                   f"(its {r['images_s']:.0f} records/s over {per_core:.0f} records/s per core).")
  if "mae" in results and results["mae"].get("mfu") is not None:
    notes.append(f"MAE: {results['mae']['mfu']:.1f}% MFU (goal for ViT-B/16: {GOAL_MAE_MFU:.0f}% or more).")
  table = "\n".join([head, "|---" * (head.count("|") - 1) + "|", *rows])
  text = "\n".join(lines) + "\n\n" + table + "\n\n" + "\n".join(notes) + "\n"
  print("\n" + table + "\n\n" + "\n".join(notes), flush=True)
  if _OUT.value:
    with open(_OUT.value, "x") as f:
      f.write(text)


if __name__ == "__main__":
  app.run(main)
