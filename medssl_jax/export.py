"""Exports a workdir's pretrained ResNet backbone as a portable .safetensors or .npz file.

  python -m medssl_jax.export --workdir=W --out=F.safetensors|F.npz [--step=N] [--include_head]

Key names and layouts are torchvision's (OIHW conv kernels, BatchNorm weight / bias / running_mean /
running_var / num_batches_tracked), so `torchvision.models.resnet18()` -style modules load them:

  conv1.weight, bn1.{weight,bias,running_mean,running_var,num_batches_tracked}       the stem
  layer{1-4}.{i}.conv{1,2}.weight, layer{1-4}.{i}.bn{1,2}.*                          ResNet-18/34 blocks
  layer{1-4}.{i}.conv{1,2,3}.weight, layer{1-4}.{i}.bn{1,2,3}.*                      ResNet-50/101 blocks
  layer{1-4}.{i}.downsample.0.weight, layer{1-4}.{i}.downsample.1.*                  projection shortcuts
  head.<name>.<layer>.{weight,bias,running_mean,running_var}                          only with --include_head

There is no `fc.*`: the backbone returns globally average-pooled features. Head Dense kernels are
written as torch.nn.Linear weights ([out, in]). Metadata (all strings; numbers and lists JSON-encoded)
says how to rebuild and feed the model: format, encoder, depth, width_multiplier, stem, padding,
num_features, in_channels, image_size, mean, std, step, config (the run's config.json), provenance,
include_head. A .safetensors file holds it in its header; an .npz gets it in the sidecar <out>.json.
medssl_jax/torch_resnet.py (numpy + torch only) builds the matching PyTorch module and loads a file.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from typing import Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from safetensors import numpy as safetensors_numpy

from medssl_jax import objectives
from medssl_jax import paths
from medssl_jax.models import convert_torch
from medssl_jax.models.resnet import STAGE_SIZES, BasicBlock, Bottleneck
from medssl_jax.train import checkpoint as ckpt_lib

FORMAT = "medssl_jax.resnet/1"
SUFFIXES = (".safetensors", ".npz")
RESNETS = {f"resnet{d}": d for d in STAGE_SIZES}
# Metadata values that are JSON (numbers, lists, dicts, booleans); the rest are plain strings.
JSON_KEYS = ("depth", "width_multiplier", "num_features", "in_channels", "image_size", "mean", "std", "step",
             "config", "provenance", "include_head")
_BN = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


def sidecar_path(out: str) -> str:
  """Where an .npz export's metadata goes: <out>.json."""
  return out + ".json"


def check_out(out: str) -> str:
  """`out`'s suffix, after checking it is a known type and that neither it nor its .npz sidecar exists."""
  suffix = os.path.splitext(out)[1].lower()
  if suffix not in SUFFIXES:
    raise ValueError(f"--out={out!r}: unknown file type {suffix!r}; expected one of {list(SUFFIXES)}")
  existing = [t for t in [out] + ([sidecar_path(out)] if suffix == ".npz" else []) if paths.exists(t)]
  if existing:
    raise FileExistsError(f"{existing[0]!r} already exists; refusing to overwrite it: pass a new --out or "
                          "delete that file")
  return suffix


def read_config(workdir: str) -> dict:
  """The run's config as saved in <workdir>/config.json (a plain dict)."""
  path = paths.join(workdir, "config.json")
  config = paths.read_json(path)
  if config is None:
    raise FileNotFoundError(f"{path!r} does not exist: --workdir must be a pretraining workdir "
                            "(one written by main.py, holding config.json and checkpoints/)")
  return config


def read_provenance(workdir: str, *, step: int) -> dict:
  """What the checkpoint records about how it was made (code / package versions, data fingerprint, devices),
  without its config and step, which are metadata keys of their own."""
  return {k: v for k, v in ckpt_lib.read_provenance(workdir, step=step).items() if k not in ("config", "step")}


def restore_variables(workdir: str, *, step: int | None = None) -> tuple[int, dict]:
  """(step, {"params", "batch_stats"}) of the workdir's latest (or `step`'s) checkpoint, as numpy arrays.

  The train state is restored without a target structure (from the checkpoint's own metadata) and onto
  the host, so neither the config's model nor the devices it was trained on are needed.
  """
  steps = ckpt_lib.checkpoint_steps(workdir)
  if not steps:
    raise FileNotFoundError(f"No checkpoint in {paths.join(paths.absolute(workdir), 'checkpoints')}; run mode=pretrain "
                            "with this --workdir first")
  if step is None:
    step = steps[-1]
  elif step not in steps:
    raise ValueError(f"--step={step}: {workdir}/checkpoints has no checkpoint at that step; available: {steps}")
  path = paths.path(paths.join(paths.absolute(workdir), "checkpoints", str(step), "state"))
  checkpointer = ocp.PyTreeCheckpointer()
  absl_logger = logging.getLogger("absl")
  level = absl_logger.level
  absl_logger.setLevel(logging.ERROR)  # orbax warns that the item dir has no step metadata: it is one level up.
  try:
    meta = checkpointer.metadata(path)
  finally:
    absl_logger.setLevel(level)
  tree = getattr(meta, "item_metadata", meta)
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  state = checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=restore_args))
  params = state["params"]
  name = read_config(workdir).get("objective", {}).get("name")
  if name in objectives.OBJECTIVES and objectives.get_objective(name).evaluate_teacher:
    params = (state.get("objective_state") or {}).get("teacher", params)  # What the paper evaluates (DINO).
  return step, {"params": params, "batch_stats": state.get("batch_stats") or {}}


def split_backbone(variables: Mapping) -> tuple[dict, dict]:
  """(backbone, heads) of an SSLModel's (or a bare ResNet's) variables, each {"params", "batch_stats"}."""
  params = variables["params"]
  if "backbone" in params:
    cols = {col: dict(variables.get(col) or {}) for col in ("params", "batch_stats")}
    backbone = {col: tree.pop("backbone", {}) for col, tree in cols.items()}
    return backbone, cols
  if "stem_conv" in params:
    return {"params": params, "batch_stats": variables.get("batch_stats") or {}}, {}
  raise ValueError(f"the checkpoint's params hold neither a 'backbone' nor a ResNet ('stem_conv'); top-level "
                   f"keys: {sorted(params)}")


def backbone_state_dict(backbone: Mapping) -> dict[str, np.ndarray]:
  """A ResNet's {"params", "batch_stats"} under torchvision's names and layouts (convert_torch.torch_state_dict)."""
  return convert_torch.torch_state_dict(backbone)


def head_state_dict(heads: Mapping) -> dict[str, np.ndarray]:
  """Projector / predictor heads as head.<name>.<layer>.<weight|bias|running_*> (Linear weights [out, in])."""
  out = {}
  for col in ("params", "batch_stats"):
    for path, value in convert_torch._flat(heads.get(col) or {}):
      value = np.asarray(value, np.float32)
      if path[-1] == "kernel":
        value = value.T if value.ndim == 2 else value  # Dense [in, out] -> Linear [out, in].
      leaf = "weight" if path[-1] == "kernel" else _BN.get(path[-1], path[-1])
      out[".".join(("head",) + tuple(path[:-1]) + (leaf,))] = np.ascontiguousarray(value)
  return dict(sorted(out.items()))


def num_features(*, depth: int, width_multiplier: float) -> int:
  """Size of the pooled features (the last stage's channels)."""
  block = Bottleneck if depth >= 50 else BasicBlock
  return max(1, int(512 * width_multiplier)) * block.expansion


def make_metadata(config: Mapping, *, step: int, provenance: Mapping | None = None,
                  include_head: bool = False) -> dict[str, str]:
  """The export's metadata (str -> str) from a run's config dict: how to rebuild the backbone
  (encoder, depth, width, stem, padding) and how to feed it (image size, channels, mean / std)."""
  m = config["model"]
  encoder = m["encoder"]
  if encoder not in RESNETS:
    raise ValueError(f"config.model.encoder={encoder!r}: exporting is not supported yet for this encoder "
                     f"(only ResNets: {sorted(RESNETS)})")
  depth, d = RESNETS[encoder], config["data"]
  values = {
      "format": FORMAT, "key_names": "torchvision", "encoder": encoder, "depth": depth,
      "width_multiplier": float(m["width_multiplier"]), "stem": m["stem"],
      # models.build_backbone pads like torchvision exactly when the run started from converted weights.
      "padding": "torch" if m.get("init_checkpoint") else "same",
      "num_features": num_features(depth=depth, width_multiplier=float(m["width_multiplier"])),
      "in_channels": int(d["channels"]), "image_size": int(d["image_size"]),
      "mean": [float(x) for x in d["mean"]], "std": [float(x) for x in d["std"]], "step": int(step),
      "config": dict(config), "provenance": dict(provenance or {}), "include_head": bool(include_head),
  }
  return {k: json.dumps(v, sort_keys=True) if k in JSON_KEYS else str(v) for k, v in values.items()}


def write(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str], out: str) -> None:
  """Writes `tensors` + `metadata` to `out` (.safetensors, or .npz + <out>.json); never overwrites."""
  suffix = check_out(out)
  # Each file is written whole and atomically (paths.write_bytes), the tensors last: an interrupted export
  # leaves no truncated file at `out`.
  if suffix == ".safetensors":
    paths.write_bytes(out, safetensors_numpy.save(dict(tensors), metadata=dict(metadata)))
  else:
    paths.write_text(sidecar_path(out), json.dumps(dict(metadata), indent=2, sort_keys=True))
    paths.save_npz(out, **tensors)


def export(workdir: str, out: str, *, step: int | None = None, include_head: bool = False) -> dict:
  """Exports <workdir>'s backbone (latest checkpoint, or `step`'s) to `out`; returns a summary
  {out, metadata_file, step, num_tensors, num_params, metadata}."""
  config = read_config(workdir)
  if config.get("model", {}).get("encoder") not in RESNETS:  # Before restoring anything.
    make_metadata(config, step=0)
  suffix = check_out(out)  # Before the (possibly slow) restore, and again by `write`.
  step, variables = restore_variables(workdir, step=step)
  backbone, heads = split_backbone(variables)
  tensors = backbone_state_dict(backbone)
  metadata = make_metadata(config, step=step, provenance=read_provenance(workdir, step=step),
                           include_head=include_head)
  features = json.loads(metadata["num_features"])
  last_bn = max((k for k in tensors if k.startswith("layer4.") and k.endswith(".running_mean")),
                default=None)
  if last_bn is None or tensors[last_bn].shape[0] != features:
    raise ValueError(f"the checkpoint's backbone does not fit config.model (encoder / width_multiplier): expected "
                     f"{features} features, its last stage has {None if last_bn is None else tensors[last_bn].shape}")
  if include_head:
    tensors.update(head_state_dict(heads))
  write(tensors, metadata, out)
  num_params = sum(int(np.size(v)) for _, v in convert_torch._flat(backbone["params"]))
  summary = {"out": out, "metadata_file": sidecar_path(out) if suffix == ".npz" else out, "step": step,
             "num_tensors": len(tensors), "num_params": num_params, "metadata": metadata}
  heads_note = f", heads {sorted(heads.get('params', {}))}" if include_head else ""
  print(f"export: wrote {out}: {len(tensors)} tensors, {num_params:,} backbone parameters{heads_note} "
        f"({metadata['encoder']}, {metadata['stem']} stem, width x{metadata['width_multiplier']}, padding "
        f"{metadata['padding']!r}, {features} features) from {workdir} step {step}"
        + (f"; metadata in {sidecar_path(out)}" if suffix == ".npz" else ""), flush=True)
  return summary


def main(argv=None):
  parser = argparse.ArgumentParser(prog="python -m medssl_jax.export", description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True, help="pretraining workdir (config.json + checkpoints/)")
  parser.add_argument("--out", required=True, help="output file: .safetensors, or .npz (+ <out>.json metadata)")
  parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
  parser.add_argument("--include_head", action="store_true", help="also write the projector / predictor heads")
  args = parser.parse_args(argv)
  try:
    export(args.workdir, args.out, step=args.step, include_head=args.include_head)
  except (FileNotFoundError, FileExistsError, ValueError) as e:
    parser.exit(2, f"export: error: {e}\n")


if __name__ == "__main__":
  main()
