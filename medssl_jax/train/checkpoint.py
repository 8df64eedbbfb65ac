"""orbax checkpoints of the train state and the data iterator state, plus the run's config.

Layout of a workdir:
  config.json         the config the run was started with (checked on resume)
  checkpoints/<step>/ orbax: "state" (TrainState arrays) and "data_iter" (grain iterator state, JSON)
"""
from __future__ import annotations

import json
import os

import jax
import orbax.checkpoint as ocp

from medssl_jax.augment import views as views_lib

CONFIG_FILE = "config.json"
# Keys that may differ between the run that wrote a workdir and a run that resumes it: they change
# what happens after pretraining or how it is reported, not the pretrained weights.
RESUMABLE_KEYS = ("mode", "eval", "analysis", "ood", "transfer", "segmentation", "train.log_every", "train.checkpoint_every", "train.keep_checkpoints",
                  "data.worker_count", "data.data_dir", "data.manual_dir", "data.val_split")


def _flatten(d, prefix=""):
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(_flatten(v, key + "."))
    else:
      out[key] = v
  return out


def _config_dict(config) -> dict:
  d = json.loads(config.to_json_best_effort()) if hasattr(config, "to_json_best_effort") else dict(config)
  return views_lib.strip_later_defaults(d)  # View keys added later, at their old-behaviour value, change nothing.


def save_or_check_config(config, workdir: str):
  """Writes config.json on a new run; on resume, refuses a workdir that holds a different run.

  Raises:
    ValueError naming every differing key, so nothing a user had is silently overwritten.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  current = _config_dict(config)
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    a, b = _flatten(saved), _flatten(current)
    allowed = lambda k: any(k == r or k.startswith(r + ".") for r in RESUMABLE_KEYS)
    # A key added to the schema after the run started is no difference while it holds its default
    # (its default keeps the old behaviour), so upgrading the code does not lock a user out of a workdir.
    from medssl_jax import config as config_lib
    defaults = _flatten(_config_dict(config_lib.base_config()))
    new_default = lambda k: k not in a and k in defaults and b.get(k) == defaults[k]
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and not allowed(k) and not new_default(k))
    if diff:
      details = "; ".join(f"{k}: saved={a.get(k)!r} now={b.get(k)!r}" for k in diff[:10])
      raise ValueError(f"workdir {workdir!r} holds a run with a different config ({details}). "
                       "Use a new --workdir, or delete that one if you no longer need it.")
    return
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(path, "w") as f:
      json.dump(current, f, indent=2, sort_keys=True)


def make_manager(workdir: str, *, keep: int = 3) -> ocp.CheckpointManager:
  """A CheckpointManager under workdir/checkpoints (orbax needs an absolute path)."""
  directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
  return ocp.CheckpointManager(directory, options=options, item_names=("state", "data_iter"))


def save(manager: ocp.CheckpointManager, step: int, state, data_iter_state=None):
  args = {"state": ocp.args.StandardSave(state)}
  if data_iter_state is not None:
    args["data_iter"] = ocp.args.JsonSave(data_iter_state)
  manager.save(int(step), args=ocp.args.Composite(**args))


def restore_latest(manager: ocp.CheckpointManager, abstract_state):
  """Returns (step, state, data_iter_state) of the latest checkpoint, or None when there is none.

  `abstract_state` gives the structure, shapes, dtypes and shardings to restore into.
  """
  step = manager.latest_step()
  if step is None:
    return None
  args = {"state": ocp.args.StandardRestore(abstract_state)}
  # A fresh manager has no handlers registered yet, so ask the directory rather than item_metadata.
  has_iter = os.path.isdir(os.path.join(str(manager.directory), str(step), "data_iter"))
  if has_iter:
    args["data_iter"] = ocp.args.JsonRestore()
  restored = manager.restore(step, args=ocp.args.Composite(**args))
  return step, restored["state"], (restored["data_iter"] if has_iter else None)
