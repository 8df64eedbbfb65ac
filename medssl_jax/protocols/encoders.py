"""The encoders a run evaluates: the workdir's pretrained checkpoint, the random init pretraining started
from, imported weights, a 2D pretrained encoder inflated into a 3D one, and encoders that projects register
(e.g. SWCL's pseudo-labeller).

An encoder is `(model, variables, recalibrate)`: `recalibrate` asks the probe to re-estimate BatchNorm
statistics on the training images first (a random init has none worth keeping).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections

from medssl_jax import config as config_lib
from medssl_jax import objectives
from medssl_jax import paths
from medssl_jax.models import convert_torch
from medssl_jax.models import inflate
from medssl_jax.train import checkpoint as ckpt_lib
from medssl_jax.train import pretrain as pretrain_lib


def load_pretrained(config, workdir):
  """The model and the latest checkpointed variables in `workdir` (error if there is none)."""
  model, _, tx, _ = pretrain_lib.build(config)
  state = pretrain_lib.init_train_state(config, model, tx, jax.random.key(0))
  manager = ckpt_lib.make_manager(workdir, keep=config.train.keep_checkpoints)
  restored = ckpt_lib.restore_latest(manager, jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state),
                                     data_iter=False)
  manager.close()
  if restored is None:
    raise FileNotFoundError(f"No checkpoint in {paths.join(paths.absolute(workdir), 'checkpoints')}; run mode=pretrain "
                            "with this --workdir first")
  step, state, _ = restored
  objective = objectives.get_objective(config.objective.name)
  which = " (the EMA teacher, as the paper evaluates it)" if objective.evaluate_teacher else ""
  print(f"loaded checkpoint at step {step} from {workdir}{which}", flush=True)
  return model, evaluated_variables(objective, state)


def evaluated_variables(objective, state) -> dict:
  """The {"params", "batch_stats"} of a train state that evaluations use: the student's, or the EMA teacher's
  params for objectives that evaluate it (`Objective.evaluate_teacher`; the teacher shares the BatchNorm
  statistics)."""
  if objective.evaluate_teacher and "teacher" in state.objective_state:
    return {"params": state.objective_state["teacher"], "batch_stats": state.batch_stats}
  return state.variables


def random_init_variables(config):
  """The variables pretraining started from (same seed and key split as pretrain)."""
  model, _, tx, _ = pretrain_lib.build(config)
  init_key, _ = jax.random.split(jax.random.key(config.seed))
  state = pretrain_lib.init_train_state(config, model, tx, init_key)
  return model, state.variables


def saved_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a pretraining workdir was run with (its config.json, renamed keys under their new names)."""
  path = paths.join(workdir, ckpt_lib.CONFIG_FILE)
  saved = paths.read_json(path)
  if saved is None:
    raise FileNotFoundError(f"{path} does not exist: expected a pretraining workdir (config.json and checkpoints/, "
                            "as main.py writes)")
  def section(node):  # Lists of sections (augment.views) become lists of ConfigDicts, as in a loaded config.
    if isinstance(node, dict):
      return ml_collections.ConfigDict({k: section(v) for k, v in node.items()})
    if isinstance(node, list) and node and all(isinstance(v, dict) for v in node):
      return [section(v) for v in node]
    return node

  return section(config_lib.migrate(saved))


# What an inflation source's 2D pretraining takes from the 3D row: the seed, the width (inflation needs it equal) and
# the pretraining budget (the inflated arm then costs what a 3D pretraining of the same config costs), and where the
# data lives.
SOURCE_KEYS = ("seed", "model.width_multiplier", "train.num_steps", "train.batch_size", "data.data_dir")


def is_config_spec(value: str) -> bool:
  """Whether a model.inflate_from names a config ('configs/medmnist_simclr.py:pneumoniamnist') rather than a
  workdir."""
  return str(value).split(":", 1)[0].endswith(".py")


def inflate_source(config) -> ml_collections.ConfigDict | None:
  """The 2D pretraining config that config.model.inflate_from names, when it names a config ('<path>.py[:variant]')
  rather than a workdir: that config in mode "pretrain", with SOURCE_KEYS taken from `config`. None for a workdir."""
  spec = config.model.inflate_from
  if not spec or not is_config_spec(spec):
    return None
  try:
    source = config_lib.load(spec)
  except (FileNotFoundError, ValueError) as e:
    raise ValueError(f"config.model.inflate_from={spec!r}: {e}") from None
  source.mode = "pretrain"
  for key in SOURCE_KEYS:
    *parents, leaf = key.split(".")
    src, dst = config, source
    for name in parents:
      src, dst = src[name], dst[name]
    dst[leaf] = src[leaf]
  if source.model.encoder.endswith("_3d") or not source.model.encoder.startswith("resnet"):
    raise ValueError(f"config.model.inflate_from={spec!r} pretrains {source.model.encoder}; inflation takes a 2D "
                     "ResNet's pretraining (e.g. configs/medmnist_simclr.py:pneumoniamnist)")
  return config_lib.validate(source)


INFLATE_SOURCE_DIR = "inflate_source"  # <workdir>/inflate_source: the 2D pretraining a config-named source makes.


def with_inflation_source(config, workdir: str, *, mesh=None):
  """`config` with model.inflate_from a 2D pretraining workdir: where it names a config, that config's pretraining
  runs first (resumable) in <workdir>/inflate_source (`inflate_source`: with the row's seed, width and budget)."""
  source = inflate_source(config)
  if source is None:
    return config
  source_dir = paths.join(workdir, INFLATE_SOURCE_DIR)
  pretrain_lib.pretrain(source, source_dir, mesh=mesh)
  config = config.copy_and_resolve_references()
  config.model.inflate_from = source_dir
  return config


def inflated_start(config, workdir: str, *, mesh=None) -> dict | None:
  """The variables a 3D pretraining in `workdir` starts from when config.model.inflate_from is set (the 2D backbone
  inflated, heads at their random init), else None (random init); None too when the run has a checkpoint to resume
  from, which it starts from instead."""
  if not config.model.inflate_from or ckpt_lib.checkpoint_steps(workdir):
    return None
  _, (_, variables, _) = inflated(with_inflation_source(config, workdir, mesh=mesh))
  return variables


def inflated(config) -> tuple[str, tuple]:
  """(display name, (model, variables, recalibrate)): the 3D model of `config` whose backbone is the 2D ResNet
  pretrained in config.model.inflate_from, inflated by config.model.inflate_method (models/inflate.py: "i3d"
  or "acs"; with "acs" the zeros are free to train, an ACS-structured initialisation). The heads keep their
  random init. BatchNorm statistics are re-estimated on the 3D training data (`recalibrate`): the 2D
  statistics describe slices, not volumes."""
  m = config.model
  source = saved_config(m.inflate_from)
  _, variables2d = load_pretrained(source, m.inflate_from)
  model, variables = random_init_variables(config)
  cols = [c for c in ("params", "batch_stats") if c in variables]
  try:
    new = inflate.inflate_variables({c: variables2d[c]["backbone"] for c in cols}, method=m.inflate_method,
                                    in_channels=config.data.channels,
                                    target={c: variables[c]["backbone"] for c in cols})
  except ValueError as e:
    raise ValueError(f"config.model.inflate_from={m.inflate_from!r} ({source.model.encoder}, stem "
                     f"{source.model.stem!r}, width {source.model.width_multiplier}) does not inflate into "
                     f"{m.encoder} (stem {m.stem!r}, width {m.width_multiplier}): {e}") from None
  variables = dict(variables, **{c: dict(variables[c], backbone=jax.tree.map(jnp.asarray, new[c])) for c in cols})
  name = f"inflated {m.inflate_method} ({source.objective.name}, 2D {os.path.basename(m.inflate_from.rstrip('/'))})"
  print(f"inflated the 2D {source.model.encoder} of {m.inflate_from} into {m.encoder} ({m.inflate_method})",
        flush=True)
  return name, (model, variables, True)


@dataclasses.dataclass(frozen=True)
class Encoder:
  """An encoder a project adds to the transfer / segmentation comparisons.

  load(config, workdir) -> (display name, (model, variables, recalibrate));
  present(workdir) -> whether `workdir` holds it (mode "transfer" then compares it without being asked).
  """
  name: str
  load: Callable
  present: Callable[[str], bool]


_REGISTERED: dict[str, Encoder] = {}
BUILTIN = ("pretrained", "random", "init_checkpoint")


def register(encoder: Encoder):
  """Adds a project's encoder by name (a project module calls this when imported)."""
  if encoder.name in BUILTIN:
    raise ValueError(f"encoder name {encoder.name!r} is built in; choose another")
  _REGISTERED[encoder.name] = encoder


def names() -> tuple[str, ...]:
  """Every encoder name `transfer_encoders` accepts."""
  return BUILTIN + tuple(_REGISTERED)


def present(workdir: str) -> list[str]:
  """Registered encoders that `workdir` holds (e.g. an SWCL workdir's pseudo-labeller)."""
  return [name for name, e in _REGISTERED.items() if e.present(workdir)]


def transfer_encoders(config, workdir: str, wanted) -> dict:
  """{display name: (model, variables, recalibrate)} for the encoders a transfer stage compares:
  "pretrained" (the checkpoint in `workdir`), "random" (random init), "init_checkpoint" (random init
  with the backbone from config.model.init_checkpoint, e.g. converted ImageNet weights) and any registered
  encoder (`register`)."""
  # Pretrained and random encoders keep the architecture pretraining used: model.init_checkpoint switches the
  # ResNet to torchvision's padding (models.build_backbone), which only the imported weights need.
  plain = config
  if config.model.init_checkpoint:
    plain = config.copy_and_resolve_references()
    with plain.unlocked():
      plain.model.init_checkpoint = ""
  out = {}
  for name in wanted:
    if name not in names():
      raise ValueError(f"unknown transfer encoder {name!r}; valid choices: {list(names())}")
    if name == "pretrained":
      model, variables = load_pretrained(plain, workdir)
      out[f"{config.objective.name} (pretrained)"] = (model, variables, False)
    elif name == "random":
      model, variables = random_init_variables(plain)
      out["random init"] = (model, variables, True)
    elif name == "init_checkpoint":
      if not config.model.init_checkpoint:
        raise ValueError("transfer encoder 'init_checkpoint' needs config.model.init_checkpoint (a torchvision / "
                         "timm ResNet state dict, see medssl_jax/models/convert_torch.py)")
      model, variables = random_init_variables(config)
      variables = convert_torch.init_backbone(config, variables)
      label = os.path.basename(config.model.init_checkpoint)
      out[f"imported ({label})"] = (model, variables, False)
    else:
      display, encoder = _REGISTERED[name].load(plain, workdir)
      out[display] = encoder
  return out
