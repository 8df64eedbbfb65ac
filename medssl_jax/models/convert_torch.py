"""ImageNet (or any) ResNet weights from a torchvision / timm state dict, and back.

torchvision and timm name a ResNet's tensors alike (conv1, bn1, layer1.0.conv1, layer2.0.downsample.0,
..., fc); this module maps them onto this repo's `ResNet` (models/resnet.py: stem_conv, stem_bn,
stage1_block1/conv1, stage2_block1/proj_conv, ...): conv kernels OIHW -> HWIO, BatchNorm weight / bias /
running_mean / running_var -> params scale / bias and batch_stats mean / var. Both libraries compute
cross-correlations, so kernels are transposed, never flipped.

A converted model computes torchvision's features only with torchvision's symmetric padding:
`ResNet(padding="torch")`, which `models.build_backbone` picks when config.model.init_checkpoint is set.

Getting a checkpoint (where torch is installed; this repo does not need torch):

  import numpy as np, torchvision
  sd = torchvision.models.resnet50(weights="IMAGENET1K_V2").state_dict()  # or timm.create_model(..., pretrained=True)
  np.savez("resnet50_in1k.npz", **{k: v.float().numpy() for k, v in sd.items()})

then set config.model.init_checkpoint = "resnet50_in1k.npz" (.safetensors and, with torch, .pth work too).
"""
from __future__ import annotations

import functools
import io
import os
import re
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from medssl_jax import paths
from medssl_jax.models.resnet import STAGE_SIZES, ResNet

# Checkpoint keys that do not belong to the backbone: torchvision's / timm's classifier.
_CLASSIFIER = re.compile(r"^fc\.")
_BN_PARAMS = {"scale": "weight", "bias": "bias"}
_BN_STATS = {"mean": "running_mean", "var": "running_var"}
_WRAPPERS = ("state_dict", "model")
_TORCH_SUFFIXES = (".pth", ".pt", ".bin")
SUFFIXES = (".safetensors", ".npz", *_TORCH_SUFFIXES)


def _torch_hint(path: str) -> str:
  return (f"torch is not installed, so {path!r} (a pickled PyTorch checkpoint) cannot be read here. Either "
          "`pip install torch`, or save the state dict as .npz (or .safetensors) once where torch is installed:\n"
          f"  import numpy as np, torch; sd = torch.load({path!r}, map_location='cpu'); sd = sd.get('state_dict', sd)\n"
          f"  np.savez({os.path.splitext(path)[0] + '.npz'!r}, **{{k: v.float().numpy() for k, v in sd.items()}})")


def _to_numpy(value):
  if isinstance(value, np.ndarray):
    return value
  if hasattr(value, "detach"):  # A torch tensor: bf16 / fp16 have no (or a lossy) numpy view, go via float32.
    value = value.detach().cpu()
    if value.is_floating_point():
      value = value.float()
    return value.numpy()
  return None  # Not an array (e.g. an epoch counter saved beside the weights).


def _unwrap(obj, path: str) -> dict:
  """The state dict in a loaded checkpoint: under 'state_dict' / 'model' if wrapped, 'module.' stripped."""
  while isinstance(obj, Mapping):
    inner = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), Mapping)), None)
    if inner is None:
      break
    obj = inner
  if not isinstance(obj, Mapping):
    raise ValueError(f"{path!r} holds a {type(obj).__name__}, not a state dict (a mapping of tensor names to tensors)")
  out = {}
  for name, value in obj.items():
    array = _to_numpy(value)
    if array is None:
      continue
    while name.startswith("module."):  # torch.nn.DataParallel / DistributedDataParallel prefix.
      name = name[len("module."):]
    out[name] = array
  if not out:
    raise ValueError(f"{path!r} holds no arrays; top-level keys: {sorted(obj)[:20]}")
  return out


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads a PyTorch-style state dict into {name: numpy array}.

  `path`: .safetensors (needs the `safetensors` package), .npz (e.g. written by `export_npz` or np.savez),
  or .pth / .pt / .bin (needs torch; loaded with weights_only=True). A checkpoint that wraps the state dict
  under 'state_dict' or 'model' is unwrapped, and 'module.' prefixes are stripped.
  """
  if not paths.exists(path):
    raise FileNotFoundError(f"checkpoint {path!r} does not exist")
  suffix = os.path.splitext(path)[1].lower()
  if suffix == ".safetensors":
    try:
      from safetensors.numpy import load, load_file
    except ImportError:
      raise ImportError(f"reading {path!r} needs the safetensors package (pip install safetensors), or "
                        "save the state dict as .npz instead") from None
    return _unwrap(load(paths.read_bytes(path)) if paths.is_url(path) else load_file(path), path)
  if suffix == ".npz":
    return _unwrap(paths.load_npz(path), path)
  if suffix in _TORCH_SUFFIXES:
    try:
      import torch
    except ImportError:
      raise ImportError(_torch_hint(path)) from None
    source = io.BytesIO(paths.read_bytes(path)) if paths.is_url(path) else path  # torch opens local files itself.
    return _unwrap(torch.load(source, map_location="cpu", weights_only=True), path)
  raise ValueError(f"checkpoint {path!r}: unknown file type {suffix!r}; expected one of {list(SUFFIXES)}")


def _torch_name(module_path: tuple, leaf: str) -> str:
  """torchvision's name of one of our ResNet's leaves, e.g. ('stage2_block1', 'proj_bn'), 'var' ->
  'layer2.0.downsample.1.running_var'."""
  parts = []
  for p in module_path:
    if p == "stem_conv":
      parts.append("conv1")
    elif p == "stem_bn":
      parts.append("bn1")
    elif m := re.fullmatch(r"stage(\d+)_block(\d+)", p):
      parts.append(f"layer{m[1]}.{int(m[2]) - 1}")
    elif p == "proj_conv":
      parts.append("downsample.0")
    elif p == "proj_bn":
      parts.append("downsample.1")
    else:
      parts.append(p)  # conv1 / bn1 / conv2 ... inside a block: the same names.
  suffix = "weight" if leaf == "kernel" else (_BN_PARAMS.get(leaf) or _BN_STATS[leaf])
  return ".".join(parts + [suffix])


def _flat(tree, prefix=()):
  for k, v in tree.items():
    if isinstance(v, Mapping):
      yield from _flat(v, prefix + (k,))
    else:
      yield prefix + (k,), v


def _nest(items) -> dict:
  out = {}
  for path, value in items:
    node = out
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = value
  return out


def guess_depth(state_dict: Mapping[str, np.ndarray]) -> int | None:
  """The ResNet depth a torchvision-named state dict has (blocks per stage, bottleneck or not), or None."""
  blocks = []
  for i in range(1, 5):
    idx = {int(m[1]) for k in state_dict if (m := re.match(rf"layer{i}\.(\d+)\.", k))}
    blocks.append(max(idx) + 1 if idx else 0)
  bottleneck = "layer1.0.conv3.weight" in state_dict
  for depth, sizes in STAGE_SIZES.items():
    if tuple(blocks) == sizes and bottleneck == (depth >= 50):
      return depth
  return None


@functools.lru_cache(maxsize=None)
def _expected(depth: int) -> dict:
  """{collection: {path: shape}} of a width-1.0 ImageNet-stem ResNet of `depth` (shapes only, no compute)."""
  model = ResNet(depth=depth, stem="imagenet", padding="torch")
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32), train=False))
  return {col: dict(_flat(tree)) for col, tree in shapes.items()}


def resnet_variables_from_torch(state_dict: Mapping[str, np.ndarray], *, depth: int, verbose: bool = True) -> dict:
  """Flax variables {"params", "batch_stats"} of `ResNet(depth, stem="imagenet", width_multiplier=1.0)`
  from a torchvision / timm ResNet state dict (float32 numpy arrays).

  Every backbone tensor must be present with the right shape; `fc.*` (the classifier) and
  `num_batches_tracked` are ignored (the ignored names are printed when `verbose`); any other name is an
  error (e.g. a checkpoint of another depth or a variant such as resnet50d's deep stem).
  """
  if depth not in STAGE_SIZES:
    raise ValueError(f"depth={depth!r} is not a supported ResNet depth; valid: {sorted(STAGE_SIZES)}")
  used, missing, wrong, out = set(), [], [], {}
  for col, leaves in _expected(depth).items():
    items = []
    for path, spec in leaves.items():
      name = _torch_name(path[:-1], path[-1])
      if name not in state_dict:
        missing.append(name)
        continue
      used.add(name)
      value = np.asarray(state_dict[name], np.float32)
      if path[-1] == "kernel":
        value = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value  # OIHW -> HWIO.
      if value.shape != spec.shape:
        torch_shape = tuple(spec.shape[i] for i in (3, 2, 0, 1)) if path[-1] == "kernel" else spec.shape
        wrong.append(f"{name}: expected {torch_shape}, found {tuple(np.shape(state_dict[name]))}")
        continue
      items.append((path, value))
    out[col] = _nest(items)
  ignored = sorted(k for k in state_dict if _CLASSIFIER.match(k) or k.endswith("num_batches_tracked"))
  unexpected = sorted(set(state_dict) - used - set(ignored))
  if missing or wrong or unexpected:
    guess = guess_depth(state_dict)
    hint = (f" (the checkpoint looks like a ResNet-{guess})" if guess and guess != depth else "")
    more = lambda xs: f"{xs[:8]}{' ...' if len(xs) > 8 else ''}"
    problems = ([f"missing {len(missing)} key(s): {more(missing)}"] if missing else []) \
        + ([f"wrong shape(s) (torch layout): {more(wrong)}"] if wrong else []) \
        + ([f"{len(unexpected)} unexpected key(s): {more(unexpected)}"] if unexpected else [])
    raise ValueError(f"state dict does not fit a torchvision-layout ResNet-{depth} (ImageNet stem, width 1.0)"
                     f"{hint}: " + "; ".join(problems))
  if verbose:
    counters = sum(k.endswith("num_batches_tracked") for k in ignored)
    print(f"convert_torch: ResNet-{depth}, {len(used)} tensors converted; ignored "
          f"{[k for k in ignored if not k.endswith('num_batches_tracked')]} and {counters} num_batches_tracked",
          flush=True)
  return out


def init_backbone(config, variables: Mapping) -> dict:
  """`variables` with the backbone replaced by config.model.init_checkpoint's converted weights.

  `variables`: an SSLModel's (backbone under variables["params"]["backbone"] and
  variables["batch_stats"]["backbone"]) or a bare ResNet's. Other subtrees (heads) are kept as they are.
  The config's encoder must be a width-1.0 ImageNet-stem resnet18 / resnet50, which is what the
  checkpoint holds; the model applying the result should pad like torchvision (models.build_backbone does
  when init_checkpoint is set).
  """
  m = config.model
  if not m.get("init_checkpoint"):
    raise ValueError("init_backbone needs config.model.init_checkpoint (a torchvision / timm ResNet state dict)")
  depths = {"resnet18": 18, "resnet50": 50}
  if m.encoder not in depths or m.stem != "imagenet" or m.width_multiplier != 1.0:
    raise ValueError(f"config.model.init_checkpoint={m.init_checkpoint!r} holds a torchvision ResNet, which needs "
                     f"config.model.encoder in {sorted(depths)}, stem='imagenet' and width_multiplier=1.0; got "
                     f"encoder={m.encoder!r}, stem={m.stem!r}, width_multiplier={m.width_multiplier!r}")
  converted = resnet_variables_from_torch(load_state_dict(m.init_checkpoint), depth=depths[m.encoder])
  nested = "backbone" in variables.get("params", {})
  absent = [col for col in converted if col not in variables or (nested and "backbone" not in variables[col])]
  if absent:
    raise ValueError(f"init_backbone: variables have no {absent} backbone collection(s) (collections: "
                     f"{sorted(variables)}); pass an SSLModel's or a ResNet's full variables")
  out = {}
  for col, tree in variables.items():
    if col not in converted:
      out[col] = tree
      continue
    old = tree["backbone"] if nested else tree
    old_shapes = {p: tuple(np.shape(v)) for p, v in _flat(old)}
    new_shapes = {p: v.shape for p, v in _flat(converted[col])}
    if old_shapes != new_shapes:
      diff = sorted(set(old_shapes.items()) ^ set(new_shapes.items()))[:4]
      raise ValueError(f"init_backbone: the model's {col!r} backbone tree does not match a {m.encoder} "
                       f"(ImageNet stem, width 1.0); first differences (path, shape): {diff}")
    new = jax.tree.map(jnp.asarray, converted[col])
    out[col] = dict(tree, backbone=new) if nested else new
  print(f"init_backbone: {m.encoder} backbone from {m.init_checkpoint}", flush=True)
  return out


def torch_state_dict(backbone_variables: Mapping) -> dict[str, np.ndarray]:
  """A ResNet's variables under torchvision's names and layouts (float32, OIHW kernels, an int64
  num_batches_tracked = 0 beside each BatchNorm, which torch's strict loading expects), sorted by name; the
  inverse of `resnet_variables_from_torch`. An SSLModel's variables are accepted too: their backbone is taken."""
  v = backbone_variables
  if "backbone" in v.get("params", {}):
    v = {col: tree["backbone"] for col, tree in v.items() if isinstance(tree, Mapping) and "backbone" in tree}
  if "params" not in v or "batch_stats" not in v:
    raise ValueError(f"a ResNet's 'params' and 'batch_stats' are needed, got collections {sorted(v)}")
  out = {}
  for col in ("params", "batch_stats"):
    for p, value in _flat(v[col]):
      value = np.asarray(value, np.float32)
      if p[-1] == "kernel":
        value = value.transpose(3, 2, 0, 1)  # HWIO -> OIHW.
      out[_torch_name(p[:-1], p[-1])] = np.ascontiguousarray(value)
  for name in [k for k in out if k.endswith(".running_var")]:
    out[name[:-len("running_var")] + "num_batches_tracked"] = np.zeros((), np.int64)
  return dict(sorted(out.items()))


def export_npz(backbone_variables: Mapping, path: str) -> dict[str, np.ndarray]:
  """Writes `torch_state_dict(backbone_variables)` to `path` (.npz); returns it. (`python -m medssl_jax.export`
  exports a workdir's backbone with its metadata and provenance.)

  In PyTorch: `model.load_state_dict({k: torch.from_numpy(v) for k, v in np.load(path).items()}, strict=False)`
  (no fc). Any width / stem is written, but only a width-1.0 ImageNet-stem model has torchvision's shapes, and
  a model trained with padding="same" computes slightly different features under torchvision's symmetric
  padding (medssl_jax/torch_resnet.py rebuilds the exact model).
  """
  out = torch_state_dict(backbone_variables)
  paths.save_npz(path, **out)
  return out
