"""orbax checkpoints of the train state and the data iterator state, plus the run's config.

Layout of a workdir:
  config.json         the config the run was started with (checked on resume)
  checkpoints/<step>/ orbax: "state" (TrainState arrays), "data_iters" (each process's grain iterator
                      state, process_<i>-of-<n>.json) and "provenance" (config, code and package
                      versions, dataset fingerprint: train/provenance.py). Checkpoints written before
                      multi-host support hold one "data_iter" JSON instead; they still restore.
On many processes every process calls these functions; orbax writes the replicated state once and
each process its own iterator file.
"""
from __future__ import annotations

import json

import grain
import jax
import orbax.checkpoint as ocp

from medssl_jax import config as config_lib
from medssl_jax import paths
from medssl_jax.augment import views as views_lib
from medssl_jax.train import distributed

CONFIG_FILE = "config.json"
# Keys that may differ between the run that wrote a workdir and a run that resumes it: they change
# what happens after pretraining or how it is reported, not the pretrained weights.
RESUMABLE_KEYS = ("mode", "eval", "analysis", "ood", "transfer", "segmentation", "train.log_every", "train.checkpoint_every", "train.keep_checkpoints",
                  "train.collapse_threshold", "train.collapse_patience", "train.allow_device_change", "distributed",
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


def config_dict(config) -> dict:
  d = json.loads(config.to_json_best_effort()) if hasattr(config, "to_json_best_effort") else dict(config)
  return views_lib.strip_later_defaults(d)  # View keys added later, at their old-behaviour value, change nothing.


def save_or_check_config(config, workdir: str):
  """Writes config.json on a new run; on resume, refuses a workdir that holds a different run.

  Raises:
    ValueError naming every differing key, so nothing a user had is silently overwritten.
  """
  path = paths.join(workdir, CONFIG_FILE)
  current = config_dict(config)
  exists = paths.exists(path)
  distributed.barrier("config.json checked")  # Every process decides before process 0 may write it.
  if exists:
    saved = config_lib.migrate(json.loads(paths.read_text(path)))  # Renamed keys count under their new names.
    a, b = _flatten(saved), _flatten(current)
    allowed = lambda k: any(k == r or k.startswith(r + ".") for r in RESUMABLE_KEYS)
    # A key added to the schema after the run started is no difference while it holds its default
    # (its default keeps the old behaviour), so upgrading the code does not lock a user out of a workdir.
    defaults = _flatten(config_dict(config_lib.default_config()))
    new_default = lambda k: k not in a and k in defaults and b.get(k) == defaults[k]
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and not allowed(k) and not new_default(k))
    if diff:
      details = "; ".join(f"{k}: saved={a.get(k)!r} now={b.get(k)!r}" for k in diff[:10])
      raise ValueError(f"workdir {workdir!r} holds a run with a different config ({details}). "
                       "Use a new --workdir, or delete that one if you no longer need it.")
    return
  if distributed.is_primary():
    paths.makedirs(workdir)
    # Atomic: never a half-written config.json for a resume to trip over.
    paths.write_text(path, json.dumps(current, indent=2, sort_keys=True))
  distributed.barrier("config.json written")  # Other processes may check it next.


def make_manager(workdir: str, *, keep: int = 3) -> ocp.CheckpointManager:
  """A CheckpointManager under workdir/checkpoints (orbax needs an absolute path or a URL)."""
  directory = paths.path(paths.join(workdir, "checkpoints"))
  # cleanup_tmp_directories: a save cut short (a kill during it) leaves a <step>.orbax-checkpoint-tmp folder,
  # removed when the next run opens the checkpoints.
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, cleanup_tmp_directories=True)
  return ocp.CheckpointManager(directory, options=options,
                               item_names=("state", "data_iters", "data_iter", "provenance", "metrics"))


class _IteratorJson:
  """What grain's orbax handler saves per process: our JSON form of a grain iterator state (grain's own
  json.dumps would turn mp_prefetch's int keys into strings; pipeline.iterator_state_to_json keeps them)."""

  def __init__(self, state_json=None):
    self.state_json = state_json

  def get_state(self) -> bytes:
    return json.dumps(self.state_json).encode()

  def set_state(self, state: bytes):
    self.state_json = json.loads(state)

  def start_prefetch(self):  # Called by grain's handler after set_state; nothing to start here.
    pass


def save(manager: ocp.CheckpointManager, step: int, state, data_iter_state=None, provenance=None, metrics=None):
  """Saves `state` (all processes), this process's `data_iter_state` (JSON, pipeline.iterator_state_to_json),
  the run's `provenance` record and `metrics`, the logged metrics' running sums since the last log
  (reporting.MetricAccumulator.state_json), at `step`."""
  args = {"state": ocp.args.StandardSave(state)}
  if data_iter_state is not None:
    args["data_iters"] = grain.checkpoint.CheckpointSave(item=_IteratorJson(data_iter_state))
  if provenance is not None:
    args["provenance"] = ocp.args.JsonSave(provenance)
  if metrics is not None:
    args["metrics"] = ocp.args.JsonSave(metrics)
  manager.save(int(step), args=ocp.args.Composite(**args))


def restore_latest(manager: ocp.CheckpointManager, abstract_state, *, data_iter: bool = True):
  """Returns (step, state, this process's data_iter_state) of the latest checkpoint, or None when there is none.

  `abstract_state` gives the structure, shapes, dtypes and shardings to restore into. `data_iter=False`
  (evaluation) skips the iterator state, so any process count can read any checkpoint.
  """
  step = manager.latest_step()
  if step is None:
    return None
  folder = paths.path(manager.directory) / str(step)
  args = {"state": ocp.args.StandardRestore(abstract_state)}
  # A fresh manager has no handlers registered yet, so ask the directory rather than item_metadata.
  iters = folder / "data_iters"
  if data_iter and iters.is_dir():
    n = jax.process_count()
    mine = iters / f"process_{jax.process_index()}-of-{n}.json"
    if not mine.exists():
      written = sorted(f.name for f in iters.iterdir() if f.name.endswith(".json"))
      raise ValueError(f"checkpoint {folder} holds the data iterator positions of other processes ({written}); "
                       f"this run has {n} process(es), and record shards would not continue where they stopped. "
                       "Resume with the process count that wrote it, or start a new --workdir")
    args["data_iters"] = grain.checkpoint.CheckpointRestore(item=_IteratorJson())
  elif data_iter and (folder / "data_iter").is_dir():
    if jax.process_count() > 1:
      raise ValueError(f"checkpoint {folder} has one data iterator state (written by a single-process run "
                       f"before multi-host support); resume it with one process")
    args["data_iter"] = ocp.args.JsonRestore()
  try:
    restored = manager.restore(step, args=ocp.args.Composite(**args))
  except (ValueError, KeyError, TypeError) as e:
    check_fits(str(folder / "state"), abstract_state)  # Names the first leaf that differs.
    raise ValueError(f"could not restore checkpoint {folder} into this run's train state: {e}. It was written by "
                     "a run with another model, objective or optimizer (config.json beside it says which); "
                     "use a new --workdir") from e
  if "data_iters" in args:
    it_state = restored["data_iters"].state_json
  else:
    it_state = restored["data_iter"] if "data_iter" in args else None
  return step, restored["state"], it_state


def _shapes(tree) -> dict:
  """{"a/b/0/c": shape} of a pytree of arrays or orbax metadata (dict keys, attributes and indices alike)."""
  name = lambda e: str(getattr(e, "key", getattr(e, "name", getattr(e, "idx", e))))
  return {"/".join(map(name, p)): tuple(x.shape) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
          if hasattr(x, "shape")}


def check_fits(state_dir: str, abstract_state):
  """A ValueError naming the first leaf whose saved shape differs from the run's (or that one side lacks):
  called when orbax failed to restore, whose own message names shapes but not the leaf."""
  try:
    with ocp.StandardCheckpointer() as reader:
      saved_tree = reader.metadata(state_dir).item_metadata
  except Exception:  # pylint: disable=broad-except
    return  # Unreadable metadata: the caller reports orbax's own error.
  saved, want = _shapes(saved_tree), _shapes(abstract_state)
  if not saved:
    return
  bad = sorted(k for k in set(saved) | set(want) if saved.get(k) != want.get(k))
  if bad:
    k = bad[0]
    raise ValueError(f"checkpoint {paths.path(state_dir).parent} does not fit this run: {k} is "
                     f"{saved.get(k, 'missing')} there but {want.get(k, 'absent')} here ({len(bad)} differing "
                     "leaves). It was written with another config.model.* / config.objective.* / optimizer (the "
                     "config.json beside the checkpoints says which); use that config, or a new --workdir")


def checkpoint_steps(workdir: str) -> list[int]:
  """The steps with a finished checkpoint (a "state" item) under <workdir>/checkpoints, ascending."""
  root = paths.path(paths.join(workdir, "checkpoints"))
  if not root.is_dir():
    return []
  return sorted(int(d.name) for d in root.iterdir() if d.name.isdigit() and (d / "state").is_dir())


def read_json_item(workdir: str, step: int, name: str):
  """A JSON item ("provenance", "metrics") of the checkpoint of `step` in `workdir`, or None when it has none."""
  folder = paths.path(paths.join(workdir, "checkpoints", str(step), name))
  for file in ("metadata", name):  # orbax's JSON handler names the file either way, depending on the item.
    if (folder / file).exists():
      return json.loads((folder / file).read_text())
  return None


def read_provenance(workdir: str, *, step: int | None = None) -> dict:
  """The provenance record of a checkpoint in `workdir` (default: the latest); checkpoints from before
  provenance records existed give {"config": config.json} only."""
  directory = paths.path(paths.join(workdir, "checkpoints"))
  steps = checkpoint_steps(workdir)
  if not steps:
    raise FileNotFoundError(f"no checkpoint in {directory}")
  step = steps[-1] if step is None else int(step)
  if step not in steps:
    raise FileNotFoundError(f"no checkpoint for step {step} in {directory}; there are {steps}")
  saved = read_json_item(workdir, step, "provenance")
  if saved is not None:
    return dict(saved, step=step)
  return {"config": json.loads(paths.read_text(paths.join(workdir, CONFIG_FILE))), "step": step}
