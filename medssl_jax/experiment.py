"""The mode registry: what `main.py` runs for each `config.mode`.

Each module below lists its modes (`MODES`: {mode name: function(config, workdir, *, mesh) -> results}),
checks its own settings (`check(config)`) and registers the config sections it owns; a project's module may
also adjust every run's config before its mode (`resolve(config, workdir)`). For the dry run, a module names its
modes that pretrain (`PRETRAINING_MODES`) and lists the steps only it knows (`dry_run_parts(config)`:
medssl_jax/train/dry_parts.py). A new mode is one module added
to MODULES. Importing this module registers every section, so `default_config()` is the whole schema.
"""
from __future__ import annotations

import jax

from medssl_jax import config as config_lib
from medssl_jax import paths
from medssl_jax.modes import analyze
from medssl_jax.modes import evaluate
from medssl_jax.modes import features
from medssl_jax.modes import pretrain
from medssl_jax.modes import segmentation
from medssl_jax.modes import transfer
from medssl_jax.projects.curriculum import modes as curriculum
from medssl_jax.projects.particles import modes as particles
from medssl_jax.projects.selection import modes as selection
from medssl_jax.projects.swcl import modes as swcl
from medssl_jax.protocols import probe
from medssl_jax.train import mesh as mesh_lib
from medssl_jax.train import workdir_lock

# The evaluation protocols (probe) first: their checks cover settings every evaluating mode reads.
MODULES = (probe, pretrain, evaluate, analyze, transfer, segmentation, features, swcl, particles, curriculum, selection)
MODES = {name: fn for module in MODULES for name, fn in getattr(module, "MODES", {}).items()}
PRETRAINING_MODES = tuple(m for module in MODULES for m in getattr(module, "PRETRAINING_MODES", ()))


def dry_run_parts(config) -> list:
  """The dry-run steps (train.dry_parts.Part) the modules add for `config`'s run beyond pretraining and the probes."""
  return [part for module in MODULES if hasattr(module, "dry_run_parts") for part in module.dry_run_parts(config)]


def default_config():
  """Defaults of every key: the core sections and every mode's and project's own section."""
  return config_lib.default_config()


def validate(config):
  """Checks keys and core values (medssl_jax/config.py), the mode, and each module's own settings."""
  config_lib.validate(config)
  config_lib.check_choice(config.mode, tuple(MODES), "config.mode")
  for module in MODULES:
    module.check(config)
  return config


def run(config, workdir: str):
  """Runs config.mode in `workdir`; returns what the mode returns (evaluation results {encoder: metrics},
  the analysis summary, a stage's summary; {} for pretraining)."""
  validate(config)
  workdir = paths.absolute(workdir)  # A URL (gs://...) stays as it is.
  if jax.process_count() > 1 and config.mode != "pretrain":
    raise ValueError(f"config.mode={config.mode!r} runs on one process; on {jax.process_count()} processes run "
                     "mode 'pretrain', then evaluate its workdir on one host (e.g. --config.mode=linear_eval), "
                     "which reads checkpoints written by any number of processes")
  mesh = mesh_lib.make_mesh()
  with workdir_lock.hold(workdir):  # One run per workdir: a second one stops here, naming the first.
    for module in MODULES:
      if hasattr(module, "resolve"):
        config = module.resolve(config, workdir)
    return MODES[config.mode](config, workdir, mesh=mesh)
