"""SWCL end to end (Yap & Ng 2021): the stages in order, each resumable, all outputs in one workdir.

  stage 1  mode "pseudo_label"  semi-supervised classifier (labelled set + unlabelled pool)  <workdir>/pseudo_labeller/
  stage 2  mode "propagate"     pseudo-labels + class activation maps of the pool            <workdir>/propagation/
  stage 3  mode "patches"       five patches per image, right eyes mirrored, abnormality     <workdir>/patches/
  stage 4  mode "pretrain"      objective "swcl" on the patches (label-aware contrastive)    <workdir>/checkpoints/
  stage 5  mode "transfer"      classification targets (config.transfer.targets)             <workdir>/transfer/
           mode "segmentation"  U-Net on the encoder (config.segmentation)                   <workdir>/segmentation/

mode "swcl" runs them all; every stage skips work it finds finished, so rerunning the same command after an
interruption continues where it stopped. The pseudo-labeller's backbone is registered as the transfer encoder
"pseudo_labeller" (the supervised-pretraining baseline), compared whenever a workdir holds one.
"""
from __future__ import annotations

import time

from matplotlib.figure import Figure
import numpy as np

from medssl_jax import paths
from medssl_jax.data import pipeline
from medssl_jax.evals import results as results_lib
from medssl_jax.modes import segmentation as segmentation_mode
from medssl_jax.modes import transfer as transfer_mode
from medssl_jax.projects.swcl import config as swcl_config
from medssl_jax.projects.swcl import propagate as propagate_lib
from medssl_jax.projects.swcl import pseudo_labeller
from medssl_jax.protocols import encoders as encoders_lib
from medssl_jax.train import pretrain as pretrain_lib

STAGE_MODES = ("pseudo_label", "propagate", "patches", "swcl")
STAGES = ("pseudo_label", "propagate", "patches", "pretrain", "transfer", "segmentation")
PATCH_BUILDER = "swcl_patches"


def patch_builder_config(config) -> str:
  """The swcl_patches builder config naming the patch size and eye mirroring, e.g. "p224_flip"."""
  s = config.swcl
  return f"p{int(s.patch_size)}_{'flip' if s.flip_right_eyes else 'noflip'}"


def resolve_patch_data(config, workdir: str):
  """For data.builder == "swcl_patches": a copy of config whose empty data fields point at this workdir's
  stage-3 dataset (builder_config from swcl.patch_size / flip_right_eyes, manual_dir <workdir>/propagation,
  data_dir <workdir>/patches). Other configs are returned unchanged."""
  d = config.data
  if d.builder != PATCH_BUILDER:
    return config
  cfg = config.copy_and_resolve_references()
  with cfg.unlocked():
    cfg.data.builder_config = d.builder_config or patch_builder_config(config)
    cfg.data.manual_dir = d.manual_dir or paths.join(workdir, "propagation")
    cfg.data.data_dir = d.data_dir or paths.join(workdir, "patches")
  return cfg


def build_patches(config, workdir: str):
  """Stage 3: the five-patch TFDS dataset from <workdir>/propagation (built once), plus
  <workdir>/patches/summary.json and a PNG grid of patches with their positions and abnormality scores."""
  manifest = paths.join(workdir, "propagation", "manifest.json")
  if not paths.exists(manifest):
    raise FileNotFoundError(f"{manifest} does not exist: run stage 2 first (mode 'propagate', or mode 'swcl' "
                            "which runs every stage in order)")
  cfg = resolve_patch_data(_with_patch_data(config), workdir)
  builder = pipeline.open_dataset(cfg.data)
  out_dir = paths.join(workdir, "patches")
  summary_path = paths.join(out_dir, "summary.json")
  if not paths.exists(summary_path):
    summary = _summarise_patches(builder, config, out_dir)
    results_lib.write_json(summary_path, summary)
  summary = paths.read_json(summary_path)
  print(f"patch dataset: {summary['num_patches']} patches of {summary['num_images']} images "
        f"({summary['num_patients']} patients), {100 * summary['abnormal_fraction']:.1f}% above the abnormality "
        f"threshold {summary['abnormality_threshold']}; grid: {summary['grid']}", flush=True)
  return builder


def _with_patch_data(config):
  """config with data.builder set to the patch dataset (stage 3 builds it whatever data.builder says)."""
  if config.data.builder == PATCH_BUILDER:
    return config
  cfg = config.copy_and_resolve_references()
  with cfg.unlocked():
    cfg.data.builder, cfg.data.builder_config, cfg.data.manual_dir, cfg.data.data_dir = PATCH_BUILDER, "", "", ""
  return cfg


def _summarise_patches(builder, config, out_dir: str) -> dict:
  keys = ("position", "abnormality", "patient", "eye", "flipped")
  data = pipeline.load_split_arrays(builder, split="train", extra_keys=keys)
  positions = builder.info.features["position"].names
  thr = float(config.objective.swcl.abnormality_threshold)
  abnormal = data["abnormality"] > thr
  summary = {
      "num_patches": int(len(data["id"])),
      "num_images": int(len(data["id"]) // len(positions)),
      "num_patients": int(len(np.unique(data["patient"]))),
      "patch_size": int(data["image"].shape[1]),
      "abnormality_threshold": thr,
      "abnormal_fraction": float(abnormal.mean()),
      "abnormal_fraction_by_position": {p: float(abnormal[data["position"] == i].mean())
                                        for i, p in enumerate(positions)},
      "abnormality_mean": float(data["abnormality"].mean()),
      "flipped_fraction": float(np.mean(data["flipped"])),
      "builder": f"{builder.name}/{builder.builder_config.name}",
  }
  summary["grid"] = _save_patch_grid(data, positions, thr, paths.join(out_dir, "patches_grid.png"))
  return summary


def _save_patch_grid(data, positions, thr, path, *, num_images: int = 6) -> str:
  """Rows = images (the most and the least abnormal ones), columns = the five positions."""
  # A pyplot-free Figure: no backend switch, so a notebook that calls this keeps its inline plots.
  k = len(positions)
  per_image = data["abnormality"].reshape(-1, k).max(axis=1)
  order = np.argsort(-per_image)
  rows = list(order[:num_images // 2]) + list(order[::-1][:num_images - num_images // 2])
  fig = Figure(figsize=(1.6 * k, 1.7 * len(rows)))
  axes = fig.subplots(len(rows), k, squeeze=False)
  for r, img in enumerate(rows):
    for c in range(k):
      i = img * k + c
      ax = axes[r][c]
      ax.imshow(data["image"][i].squeeze())
      score = float(data["abnormality"][i])
      ax.set_title(f"{positions[c]}\n{score:.2f}", fontsize=7, color="red" if score > thr else "black")
      ax.axis("off")
  fig.suptitle(f"SWCL patches (most / least abnormal images; red: abnormality > {thr})", fontsize=8)
  fig.tight_layout()
  paths.save_figure(fig, path, dpi=100)
  return path


def _stage(i: int, name: str, detail: str = ""):
  print(f"\n== SWCL stage {i}/{len(STAGES)}: {name}{' - ' + detail if detail else ''} ==", flush=True)


def run(config, workdir: str, *, mesh=None):
  """Runs config.mode: one of stages 1-3, or "swcl" = every stage in order (each resuming)."""
  paths.makedirs(workdir)
  mode = config.mode
  if mode == "pseudo_label":
    return pseudo_labeller.train(config, workdir, mesh=mesh)[2]
  if mode == "propagate":
    return propagate_lib.propagate(config, workdir, mesh=mesh)
  if mode == "patches":
    build_patches(config, workdir)
    return paths.read_json(paths.join(workdir, "patches", "summary.json"))
  if mode != "swcl":
    raise ValueError(f"medssl_jax.projects.swcl.modes.run: config.mode={mode!r} is not an SWCL stage {STAGE_MODES}")
  if config.data.builder != PATCH_BUILDER:
    raise ValueError(f"config.mode='swcl' pretrains on the stage-3 patches: set config.data.builder="
                     f"{PATCH_BUILDER!r} (got {config.data.builder!r})")
  t0 = time.perf_counter()
  out = {}
  _stage(1, "pseudo-labeller", "semi-supervised classifier on the labelled set + unlabelled pool")
  out["pseudo_label"] = pseudo_labeller.train(config, workdir, mesh=mesh)[2]
  _stage(2, "label propagation", "pseudo-labels and activation maps of the pool")
  out["propagate"] = propagate_lib.propagate(config, workdir, mesh=mesh)
  _stage(3, "patch dataset", "five patches per image")
  builder = build_patches(config, workdir)
  out["patches"] = paths.read_json(paths.join(workdir, "patches", "summary.json"))
  _stage(4, "pretraining", f"{config.objective.name}, scheme {tuple(config.objective.swcl.scheme)}")
  cfg = resolve_patch_data(config, workdir)
  pretrain_lib.pretrain(cfg, workdir, builder=builder, mesh=mesh)
  if config.transfer.targets:
    _stage(5, "transfer (classification)", ", ".join(t["name"] for t in config.transfer.targets))
    out["transfer"] = transfer_mode.transfer(cfg, workdir, mesh=mesh)
  if config.segmentation.encoders:
    _stage(6, "transfer (segmentation)", f"{config.segmentation.builder}, encoders "
           f"{tuple(config.segmentation.encoders)}")
    out["segmentation"] = segmentation_mode.segmentation(cfg, workdir, mesh=mesh)
  minutes = (time.perf_counter() - t0) / 60
  print(f"\nSWCL pipeline done in {minutes:.1f} min (this run; finished stages were reused). Outputs in {workdir}",
        flush=True)
  return out


def _load_pseudo_labeller(config, workdir: str):
  """SWCL stage 1's backbone (supervised cross-entropy on the labelled set plus FixMatch on the pool) in the
  pretraining model; heads stay random (probes use the backbone only)."""
  _, stage1, _ = pseudo_labeller.load(config, workdir)
  model, variables = encoders_lib.random_init_variables(config)
  variables = {col: dict(tree, backbone=stage1[col]["backbone"]) for col, tree in variables.items()}
  return "pseudo-labeller (CE + FixMatch)", (model, variables, False)


encoders_lib.register(encoders_lib.Encoder(
    name="pseudo_labeller", load=_load_pseudo_labeller,
    present=lambda workdir: paths.exists(paths.join(pseudo_labeller.stage_dir(workdir), "summary.json"))))


def resolve(config, workdir: str):
  """Applied to every run's config before its mode: points empty data fields of data.builder="swcl_patches" at
  the workdir's stage-3 dataset (`resolve_patch_data`); stage modes run on the config as given."""
  return config if config.mode in STAGE_MODES else resolve_patch_data(config, workdir)


check = swcl_config.check
MODES = {mode: run for mode in STAGE_MODES}
PRETRAINING_MODES = ("swcl",)


def dry_run_parts(config) -> list:
  """Mode "swcl"'s steps beyond pretraining and the probes: stage 1's classifier and, when asked, the U-Net."""
  if config.mode not in ("swcl", "pseudo_label"):
    return []
  parts = [pseudo_labeller.dry_run_part(config)]
  if config.mode == "swcl" and config.segmentation.encoders:
    parts.append(segmentation_mode.dry_run_part(config))
  return parts
